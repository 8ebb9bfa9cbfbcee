/**
 * W8 — unary fault RPC vs no-op (performance.md §4; grpc-js anchors §3).
 *
 * A real daemon process (bench/lib/bench-daemon.ts) and a client in this
 * process over loopback, one channel, CONCURRENCY calls in flight. Each
 * HandleMmFault is a write fault on a fresh 4 KiB page of an existing
 * private anonymous VMA (MADV_NOHUGEPAGE), so every call allocates and maps
 * one order-0 folio. The no-op is NoopService/Unary on the same server with
 * raw Buffer messages of the same sizes as the fault's request and answer.
 * Runs alternate between the two; median of per-run throughput and p99.
 * Targets: throughput ≥0.8× of the no-op; p99 ≤1.25× of the no-op.
 */
import {
  FaultAccess,
  HandleMmFaultRequest,
  HandleMmFaultResponse,
} from "../../src/gen/mmsim/v1/fault.js";
import { MADV_NOHUGEPAGE, MAP_ANONYMOUS, MAP_PRIVATE, PROT_READ, PROT_WRITE } from "../../src/mm/constants.js";
import { type BenchDaemon, startBenchDaemon } from "../lib/daemon.js";
import { closedLoop, type LoadResult } from "../lib/load.js";
import { median } from "../lib/stats.js";
import { atLeast, atMost, countRow, row, type Workload } from "../lib/types.js";

export const W8_CONCURRENCY = 8;

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
    const calls = ctx.opts.quick ? 600 : 4000;
    const rounds = ctx.warmup + ctx.runs;
    const d = await startBenchDaemon();
    try {
      const t = await faultTarget(d, 2 ** 30);
      if (rounds * calls > t.pages) throw new Error("W8: VMA too small for the planned faults");
      let page = 0;
      const faultReq = (i: number): HandleMmFaultRequest => ({
        mmId: t.mmId,
        addr: t.base + i * 4096,
        access: FaultAccess.FAULT_ACCESS_WRITE,
        flags: 0,
      });
      // Message sizes of a typical fault, for the no-op.
      const probe = await d.unary<HandleMmFaultRequest, HandleMmFaultResponse>(d.fault, "handleMmFault", faultReq(page++));
      if (probe.vmFault !== 0 || probe.pfn === 0) throw new Error(`W8: probe fault failed: ${JSON.stringify(probe)}`);
      const reqBytes = Buffer.from(HandleMmFaultRequest.encode(faultReq(t.pages - 1)).finish());
      const resBytes = HandleMmFaultResponse.encode(probe).finish().length;
      await d.configureNoop(resBytes);

      const vm0 = await d.unary<object, { counters: Record<string, number> }>(d.inspect, "getVmstat", {});
      let faults = 0;
      let bad = 0;
      const fault = (): Promise<LoadResult> =>
        closedLoop(calls, W8_CONCURRENCY, async () => {
          const r = await d.unary<HandleMmFaultRequest, HandleMmFaultResponse>(d.fault, "handleMmFault", faultReq(page++));
          faults++;
          if (r.vmFault !== 0 || r.pfn === 0) bad++;
        });
      const noop = (): Promise<LoadResult> => closedLoop(calls, W8_CONCURRENCY, () => d.noopUnary(reqBytes));
      const f: LoadResult[] = [];
      const n: LoadResult[] = [];
      // CPU µs per call in the daemon and in this client, per run (diagnostics).
      const cpu = { fault: { server: [] as number[], client: [] as number[] }, noop: { server: [] as number[], client: [] as number[] } };
      for (let round = 0; round < rounds; round++) {
        const order = round % 2 === 0 ? [fault, noop] : [noop, fault];
        for (const run of order) {
          const s0 = await d.memory();
          const c0 = process.cpuUsage();
          const r = await run();
          const c1 = process.cpuUsage(c0);
          const s1 = await d.memory();
          if (round < ctx.warmup) continue;
          const which = run === fault ? "fault" : "noop";
          (run === fault ? f : n).push(r);
          cpu[which].server.push((s1.cpuUserUs + s1.cpuSystemUs - s0.cpuUserUs - s0.cpuSystemUs) / calls);
          cpu[which].client.push((c1.user + c1.system) / calls);
        }
      }
      const cpuNote =
        `CPU per call: daemon ${median(cpu.fault.server).toFixed(0)} µs (fault) vs ${median(cpu.noop.server).toFixed(0)} µs (no-op); ` +
        `client ${median(cpu.fault.client).toFixed(0)} vs ${median(cpu.noop.client).toFixed(0)} µs`;
      ctx.log(cpuNote);
      const vm1 = await d.unary<object, { counters: Record<string, number> }>(d.inspect, "getVmstat", {});
      const pgfault = Number(vm1.counters.pgfault) - Number(vm0.counters.pgfault);
      const fr = median(f.map((r) => r.rate));
      const nr = median(n.map((r) => r.rate));
      const fp = median(f.map((r) => r.p99Ms));
      const np = median(n.map((r) => r.p99Ms));
      ctx.log(`fault ${fr.toFixed(0)}/s p99 ${fp.toFixed(3)} ms; no-op ${nr.toFixed(0)}/s p99 ${np.toFixed(3)} ms; ${bad} bad answers`);
      if (bad > 0) throw new Error(`W8: ${bad} faults did not map a page`);
      return [
        row({
          name: `W8 HandleMmFault throughput (${W8_CONCURRENCY} in flight)`,
          figure: fr,
          figureUnit: "calls/s",
          reference: nr,
          referenceUnit: "calls/s",
          referenceLabel: "no-op unary",
          ratio: fr / nr,
          target: atLeast(0.8, "≥0.8× of no-op"),
          counts: {
            requestBytes: reqBytes.length,
            responseBytes: resBytes,
            callsPerRun: calls,
            daemonCpuUsPerFault: median(cpu.fault.server),
            daemonCpuUsPerNoop: median(cpu.noop.server),
            clientCpuUsPerFault: median(cpu.fault.client),
            clientCpuUsPerNoop: median(cpu.noop.client),
          },
          note: cpuNote,
        }),
        row({
          name: "W8 HandleMmFault p99 latency",
          figure: fp,
          figureUnit: "ms",
          reference: np,
          referenceUnit: "ms",
          referenceLabel: "no-op unary",
          ratio: fp / np,
          target: atMost(1.25, "≤1.25× of no-op"),
        }),
        countRow("W8 page faults taken", pgfault, "faults", faults, "one per fault RPC (vmstat pgfault)"),
      ];
    } finally {
      await d.stop();
    }
  },
};
