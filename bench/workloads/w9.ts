/**
 * W9 — pin RPC of 1 GiB THP (range output) vs the no-op unary
 * (performance.md §4; A1, A4). Closed loop from client processes
 * (bench/lib/load-pool.ts, CONCURRENCY in flight each), so that the daemon
 * is the busy side; every call pins the same populated 1 GiB (FOLL_PIN, not
 * long-term, so no memlock limit). Each round's pins are made by a session
 * of their own, closed after the run (which releases them, untimed). The
 * no-op carries messages of the pin's request and answer sizes and is sent
 * by the same clients. Each round runs both as A B B A (half the calls
 * each, A alternating between rounds). Ratio: median of the per-round ratios.
 * Target: throughput ≥0.5× of the no-op (≤~40 µs of MM work per 512 folios).
 */
import { GupOutput, GupVariant, PinUserPagesRequest } from "../../src/gen/mmsim/v1/gup.js";
import { FOLL_WRITE } from "../../src/mm/constants.js";
import { call, startBenchDaemon } from "../lib/daemon.js";
import { gupRpc, gupRpcUnavailable } from "../lib/gup-rpc.js";
import type { LoadResult } from "../lib/load.js";
import { combine, type LoadPool, type PoolResult, startLoadPool } from "../lib/load-pool.js";
import { NOOP_UNARY_PATH } from "../lib/noop.js";
import { rpcAnon } from "../lib/rpc-setup.js";
import { GiB } from "../lib/setup.js";
import { median } from "../lib/stats.js";
import { atLeast, row, type Workload } from "../lib/types.js";
import { Metadata } from "@grpc/grpc-js";

const CONCURRENCY = 8;
const NPAGES = GiB / 4096;
const PIN_PATH = "/mmsim.v1.GupService/PinUserPages";

export const w9: Workload = {
  id: "W9",
  title: "pin RPC of 1 GiB THP (range output) vs no-op unary",
  unavailable: gupRpcUnavailable,
  async run(ctx) {
    const calls = ctx.opts.quick ? 100 : 750; // per client process, kind and round
    const d = await startBenchDaemon();
    let pool: LoadPool | null = null;
    try {
      const r = await rpcAnon(d, GiB, "thp");
      const pin = await gupRpc(d, r.mmId, r.addr);
      const probe = await pin.pin(r.mmId, r.addr, NPAGES, FOLL_WRITE);
      await pin.release(probe.handle);
      await d.configureNoop(probe.bytes);
      const req = PinUserPagesRequest.encode({
        variant: GupVariant.GUP_VARIANT_PIN_USER_PAGES,
        mmId: r.mmId,
        start: r.addr,
        nrPages: NPAGES,
        gupFlags: FOLL_WRITE,
        output: GupOutput.GUP_OUTPUT_RANGES,
        wantFolioRuns: false,
      }).finish();
      pool = await startLoadPool(d.address, d.sessionId);
      const empty = new Metadata();
      const half = calls / 2;
      const pins = async (): Promise<PoolResult> => {
        const { sessionId } = await call<object, { sessionId: number }>(d.session, "createSession", { name: "w9", persistent: true }, empty);
        try {
          return await pool!.run(PIN_PATH, [[req]], half, CONCURRENCY, sessionId);
        } finally {
          await call(d.session, "closeSession", { sessionId }, empty);
        }
      };
      const noop = (): Promise<PoolResult> => pool!.run(NOOP_UNARY_PATH, [[req]], half, CONCURRENCY);
      const p: LoadResult[] = [];
      const n: LoadResult[] = [];
      const cpu = { pin: [] as number[], noop: [] as number[] };
      for (let round = 0; round < ctx.warmup + ctx.runs; round++) {
        // A B B A, half the calls each: a drift of the machine's load weighs on both alike.
        const [a, b] = round % 2 === 0 ? [pins, noop] : [noop, pins];
        const got = new Map<() => Promise<PoolResult>, { r: PoolResult | null; us: number }>([
          [pins, { r: null, us: 0 }],
          [noop, { r: null, us: 0 }],
        ]);
        for (const run of [a, b, b, a]) {
          const s0 = await d.memory();
          const res = await run();
          const s1 = await d.memory();
          const g = got.get(run)!;
          g.r = g.r === null ? res : combine(g.r, res);
          g.us += s1.cpuUserUs + s1.cpuSystemUs - s0.cpuUserUs - s0.cpuSystemUs;
        }
        if (round < ctx.warmup) continue;
        const gp = got.get(pins)!;
        const gn = got.get(noop)!;
        p.push(gp.r!);
        n.push(gn.r!);
        cpu.pin.push(gp.us / gp.r!.calls);
        cpu.noop.push(gn.us / gn.r!.calls);
      }
      const pr = median(p.map((x) => x.rate));
      const nr = median(n.map((x) => x.rate));
      const ratios = p.map((x, i) => x.rate / n[i]!.rate);
      const cpuNote = `daemon CPU per call ${median(cpu.pin).toFixed(0)} µs (pin, incl. session close) vs ${median(cpu.noop).toFixed(0)} µs (no-op)`;
      ctx.log(`${cpuNote}; per-round ratios ${ratios.map((x) => x.toFixed(2)).join(" ")}`);
      return [
        row({
          name: `W9 pin 1 GiB THP RPC throughput (${pool.size}×${CONCURRENCY} in flight)`,
          figure: pr,
          figureUnit: "calls/s",
          reference: nr,
          referenceUnit: "calls/s",
          referenceLabel: "no-op unary",
          ratio: median(ratios),
          target: atLeast(0.5, "≥0.5× of no-op"),
          counts: { answerEntries: probe.entries, answerBytes: probe.bytes, daemonCpuUsPerPin: median(cpu.pin), daemonCpuUsPerNoop: median(cpu.noop) },
          note: `median of per-round ratios; ${cpuNote}`,
        }),
      ];
    } finally {
      await pool?.close();
      await d.stop();
    }
  },
};
