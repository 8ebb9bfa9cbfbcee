/**
 * W9 — pin RPC of 1 GiB THP (range output) vs the no-op unary
 * (performance.md §4; A1, A4). Closed loop, CONCURRENCY in flight, one
 * channel; every call pins the same populated 1 GiB (FOLL_PIN, not
 * long-term, so no memlock limit), handles are released after each run.
 * The no-op carries messages of the pin's request and answer sizes.
 * Target: throughput ≥0.5× of the no-op (≤~40 µs of MM work per 512 folios).
 */
import { FOLL_WRITE } from "../../src/mm/constants.js";
import { startBenchDaemon } from "../lib/daemon.js";
import { gupRpc, gupRpcUnavailable } from "../lib/gup-rpc.js";
import { closedLoop, type LoadResult } from "../lib/load.js";
import { rpcAnon } from "../lib/rpc-setup.js";
import { GiB } from "../lib/setup.js";
import { median } from "../lib/stats.js";
import { atLeast, row, type Workload } from "../lib/types.js";

const CONCURRENCY = 8;
const NPAGES = GiB / 4096;

export const w9: Workload = {
  id: "W9",
  title: "pin RPC of 1 GiB THP (range output) vs no-op unary",
  unavailable: gupRpcUnavailable,
  async run(ctx) {
    const calls = ctx.opts.quick ? 200 : 1500;
    const d = await startBenchDaemon();
    try {
      const r = await rpcAnon(d, GiB, "thp");
      const pin = await gupRpc(d, r.mmId, r.addr);
      const probe = await pin.pin(r.mmId, r.addr, NPAGES, FOLL_WRITE);
      await pin.release(probe.handle);
      await d.configureNoop(probe.bytes);
      const reqBuf = Buffer.alloc(pin.requestBytes(r.mmId, r.addr, NPAGES, FOLL_WRITE), 0x08);
      const handles: number[] = [];
      const pins = (): Promise<LoadResult> =>
        closedLoop(calls, CONCURRENCY, async () => {
          const a = await pin.pin(r.mmId, r.addr, NPAGES, FOLL_WRITE);
          handles.push(a.handle);
        });
      const noop = (): Promise<LoadResult> => closedLoop(calls, CONCURRENCY, () => d.noopUnary(reqBuf));
      const p: LoadResult[] = [];
      const n: LoadResult[] = [];
      for (let round = 0; round < ctx.warmup + ctx.runs; round++) {
        for (const run of round % 2 === 0 ? [pins, noop] : [noop, pins]) {
          const res = await run();
          for (const h of handles.splice(0)) await pin.release(h);
          if (round >= ctx.warmup) (run === pins ? p : n).push(res);
        }
      }
      const pr = median(p.map((x) => x.rate));
      const nr = median(n.map((x) => x.rate));
      return [
        row({
          name: `W9 pin 1 GiB THP RPC throughput (${CONCURRENCY} in flight)`,
          figure: pr,
          figureUnit: "calls/s",
          reference: nr,
          referenceUnit: "calls/s",
          referenceLabel: "no-op unary",
          ratio: pr / nr,
          target: atLeast(0.5, "≥0.5× of no-op"),
          counts: { answerEntries: probe.entries, answerBytes: probe.bytes },
        }),
      ];
    } finally {
      await d.stop();
    }
  },
};
