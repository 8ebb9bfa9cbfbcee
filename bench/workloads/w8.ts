/**
 * W8 — unary fault RPC vs no-op (performance.md §4; grpc-js anchors §3).
 *
 * A real daemon process (bench/lib/bench-daemon.ts) driven by client
 * processes (bench/lib/load-pool.ts: raw gRPC over HTTP/2, one connection
 * each, W8_CONCURRENCY calls in flight each), so that the daemon is the busy
 * side and the ratio measures the server. Each HandleMmFault is a write
 * fault on a fresh 4 KiB page of an existing private anonymous VMA
 * (MADV_NOHUGEPAGE), so every call allocates and maps one order-0 folio.
 * The no-op is NoopService/Unary on the same server with raw Buffer
 * messages of the same sizes as the fault's request and answer, sent by the
 * same clients. Each round runs both as A B B A (half the calls each, A
 * alternating between rounds); the ratios are the medians of the per-round
 * ratios.
 * Targets: throughput ≥0.8× of the no-op; p99 ≤1.25× of the no-op.
 */
import {
  FaultAccess,
  HandleMmFaultRequest,
  HandleMmFaultResponse,
} from "../../src/gen/mmsim/v1/fault.js";
import { MADV_NOHUGEPAGE, MAP_ANONYMOUS, MAP_PRIVATE, PROT_READ, PROT_WRITE } from "../../src/mm/constants.js";
import { type BenchDaemon, startBenchDaemon } from "../lib/daemon.js";
import type { LoadResult } from "../lib/load.js";
import { combine, type LoadPool, type PoolResult, startLoadPool } from "../lib/load-pool.js";
import { NOOP_UNARY_PATH } from "../lib/noop.js";
import { median } from "../lib/stats.js";
import { atLeast, atMost, countRow, row, type Workload } from "../lib/types.js";

/** Calls in flight per client process (bench/lib/load-pool.ts). */
export const W8_CONCURRENCY = 8;
const FAULT_PATH = "/mmsim.v1.FaultService/HandleMmFault";

export interface FaultTarget {
  mmId: number;
  base: number;
  pages: number;
}

/** A fresh mm with one NOHUGEPAGE anonymous VMA of `bytes`. */
export async function faultTarget(d: BenchDaemon, bytes: number): Promise<FaultTarget> {
  const { mmId } = await d.unary<object, { mmId: number }>(d.addressSpace, "createMm", { name: "w8" });
  const { addr } = await d.unary<object, { addr: number }>(d.addressSpace, "mmap", {
    mmId,
    addr: 0,
    length: bytes,
    prot: PROT_READ | PROT_WRITE,
    flags: MAP_PRIVATE | MAP_ANONYMOUS,
    fileId: 0,
    offset: 0,
  });
  await d.unary(d.addressSpace, "madvise", { mmId, addr, length: bytes, advice: MADV_NOHUGEPAGE });
  return { mmId, base: addr, pages: bytes / 4096 };
}

export const w8: Workload = {
  id: "W8",
  title: "unary HandleMmFault RPC vs no-op unary, same server",
  unavailable: async () => null,
  async run(ctx) {
    const calls = ctx.opts.quick ? 300 : 2000; // per client process, kind and round
    const half = calls / 2;
    const rounds = ctx.warmup + ctx.runs;
    const d = await startBenchDaemon();
    let pool: LoadPool | null = null;
    try {
      const t = await faultTarget(d, 2 ** 30);
      pool = await startLoadPool(d.address, d.sessionId);
      const procs = pool.size;
      if (1 + rounds * calls * procs > t.pages) throw new Error("W8: VMA too small for the planned faults");
      const faultReq = (i: number): HandleMmFaultRequest => ({
        mmId: t.mmId,
        addr: t.base + i * 4096,
        access: FaultAccess.FAULT_ACCESS_WRITE,
        flags: 0,
      });
      // Message sizes of a typical fault, for the no-op.
      const probe = await d.unary<HandleMmFaultRequest, HandleMmFaultResponse>(d.fault, "handleMmFault", faultReq(0));
      if (probe.vmFault !== 0 || probe.pfn === 0) throw new Error(`W8: probe fault failed: ${JSON.stringify(probe)}`);
      let page = 1;
      const reqBytes = HandleMmFaultRequest.encode(faultReq(t.pages - 1)).finish();
      const resBytes = HandleMmFaultResponse.encode(probe).finish().length;
      await d.configureNoop(resBytes);

      const vm0 = await d.unary<object, { counters: Record<string, number> }>(d.inspect, "getVmstat", {});
      // Every fault RPC of a run names a fresh page: process p faults its own stretch.
      const fault = (): Promise<PoolResult> => {
        const msgs: Uint8Array[][] = [];
        for (let p = 0; p < procs; p++) {
          const m: Uint8Array[] = [];
          for (let i = 0; i < half; i++) m.push(HandleMmFaultRequest.encode(faultReq(page++)).finish());
          msgs.push(m);
        }
        return pool!.run(FAULT_PATH, msgs, half, W8_CONCURRENCY);
      };
      const noop = (): Promise<PoolResult> => pool!.run(NOOP_UNARY_PATH, [[reqBytes]], half, W8_CONCURRENCY);
      const f: LoadResult[] = [];
      const n: LoadResult[] = [];
      // Daemon CPU µs per call, per round (diagnostics).
      const cpu = { fault: [] as number[], noop: [] as number[] };
      for (let round = 0; round < rounds; round++) {
        // A B B A, half the calls each: a drift of the machine's load weighs on both alike.
        const [a, b] = round % 2 === 0 ? [fault, noop] : [noop, fault];
        const got = new Map<() => Promise<PoolResult>, { r: PoolResult | null; us: number }>([
          [fault, { r: null, us: 0 }],
          [noop, { r: null, us: 0 }],
        ]);
        for (const run of [a, b, b, a]) {
          const s0 = await d.memory();
          const r = await run();
          const s1 = await d.memory();
          const g = got.get(run)!;
          g.r = g.r === null ? r : combine(g.r, r);
          g.us += s1.cpuUserUs + s1.cpuSystemUs - s0.cpuUserUs - s0.cpuSystemUs;
        }
        if (round < ctx.warmup) continue;
        const gf = got.get(fault)!;
        const gn = got.get(noop)!;
        f.push(gf.r!);
        n.push(gn.r!);
        cpu.fault.push(gf.us / gf.r!.calls);
        cpu.noop.push(gn.us / gn.r!.calls);
      }
      const faults = page - 1;
      const cpuNote = `daemon CPU per call ${median(cpu.fault).toFixed(0)} µs (fault) vs ${median(cpu.noop).toFixed(0)} µs (no-op)`;
      ctx.log(cpuNote);
      const vm1 = await d.unary<object, { counters: Record<string, number> }>(d.inspect, "getVmstat", {});
      const pgfault = Number(vm1.counters.pgfault) - Number(vm0.counters.pgfault);
      const rateRatio = median(f.map((r, i) => r.rate / n[i]!.rate));
      const p99Ratio = median(f.map((r, i) => r.p99Ms / n[i]!.p99Ms));
      const fr = median(f.map((r) => r.rate));
      const nr = median(n.map((r) => r.rate));
      const fp = median(f.map((r) => r.p99Ms));
      const np = median(n.map((r) => r.p99Ms));
      ctx.log(`fault ${fr.toFixed(0)}/s p99 ${fp.toFixed(3)} ms; no-op ${nr.toFixed(0)}/s p99 ${np.toFixed(3)} ms; per-round ratios ${f.map((r, i) => (r.rate / n[i]!.rate).toFixed(2)).join(" ")}`);
      const inFlight = `${procs}×${W8_CONCURRENCY} in flight`;
      return [
        row({
          name: `W8 HandleMmFault throughput (${inFlight})`,
          figure: fr,
          figureUnit: "calls/s",
          reference: nr,
          referenceUnit: "calls/s",
          referenceLabel: "no-op unary",
          ratio: rateRatio,
          target: atLeast(0.8, "≥0.8× of no-op"),
          counts: {
            requestBytes: reqBytes.length,
            responseBytes: resBytes,
            callsPerRun: calls * procs,
            clientProcesses: procs,
            daemonCpuUsPerFault: median(cpu.fault),
            daemonCpuUsPerNoop: median(cpu.noop),
          },
          note: `median of per-round ratios; ${cpuNote}`,
        }),
        row({
          name: "W8 HandleMmFault p99 latency",
          figure: fp,
          figureUnit: "ms",
          reference: np,
          referenceUnit: "ms",
          referenceLabel: "no-op unary",
          ratio: p99Ratio,
          target: atMost(1.25, "≤1.25× of no-op"),
          note: "median of per-round ratios",
        }),
        countRow("W8 page faults taken", pgfault, "faults", faults, "one per fault RPC (vmstat pgfault)"),
      ];
    } finally {
      await pool?.close();
      await d.stop();
    }
  },
};
