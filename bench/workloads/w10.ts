/**
 * W10 — invalidation streaming (performance.md §4).
 *
 * In-process on the model's MmNotifier (src/mm/mmu-notifier.ts):
 *  (a) messages per invalidation = intersecting notifiers k, each carrying
 *      the invalidated [start, end), never per page (exact count, also in
 *      test/bench/counts.test.ts);
 *  (b) invalidation lookup cost with n = 10,000 notifiers ≤2× that with
 *      n = 10 (same k).
 * Over NotifierService on a real daemon process:
 *  (c) events/s delivered to one client mirror (a Subscribe stream in this
 *      process that acknowledges every batch at once) while client processes
 *      (bench/lib/load-pool.ts) send MADV_DONTNEED RPCs, each over
 *      W10_VMAS VMAs covered by the mirror's notifier: one CLEAR
 *      invalidation per VMA, every RPC waiting for its acknowledgements.
 *      Target ≥50k events/s; the no-op server stream's message rate on the
 *      same daemon is printed beside it.
 *  (d) delivery latency: from the invalidation's start in the daemon (the
 *      mirror's ->invalidate callback, timestamped by the bench daemon's hook
 *      NotifierHub.onQueued) to the 'data' event of the mirror's stream in
 *      this process, both on CLOCK_MONOTONIC (process.hrtime, one clock for
 *      every process of the host). One-VMA MADV_DONTNEED RPCs, one at a time;
 *      p50 compared with the p50 of no-op unary round trips from this
 *      process, measured in the same rounds (alternating). Target ≤1×.
 */
import { Metadata } from "@grpc/grpc-js";
import { MadviseRequest } from "../../src/gen/mmsim/v1/address_space.js";
import { NotifierServiceClient, type SubscribeResponse } from "../../src/gen/mmsim/v1/notifier.js";
import { MADV_DONTNEED, MAP_ANONYMOUS, MAP_PRIVATE, MmuNotifyEvent, PROT_READ, PROT_WRITE } from "../../src/mm/constants.js";
import { type BenchDaemon, call, startBenchDaemon } from "../lib/daemon.js";
import { type LoadPool, startLoadPool } from "../lib/load-pool.js";
import { median, percentile } from "../lib/stats.js";
import { IntervalSub, MmNotifier, type NotifierRange } from "../../src/mm/mmu-notifier.js";
import { timeAll } from "../lib/stats.js";
import { absoluteRow, atLeast, atMost, countRow, row, type Row } from "../lib/types.js";
import type { Workload } from "../lib/types.js";

/** Notifier interval size: one 2 MiB region per notifier, back to back. */
export const W10_SPAN = 2 * 1024 * 1024;
/** Notifiers an invalidation intersects (k). */
export const W10_K = 4;

export interface W10Setup {
  notifier: MmNotifier;
  /** messages delivered, each with its [start, end) */
  messages: { sub: number; start: number; end: number }[];
  /** a munmap-like range intersecting exactly W10_K notifiers (partially at both ends) */
  range: NotifierRange;
}

/** An mm notifier with `n` disjoint interval notifiers of W10_SPAN each. */
export function w10Setup(n: number, record = true): W10Setup {
  const notifier = new MmNotifier();
  const messages: W10Setup["messages"] = [];
  const ops = {
    invalidate(sub: IntervalSub, r: NotifierRange): boolean {
      if (record) messages.push({ sub: sub.id, start: r.start, end: r.end });
      return true;
    },
  };
  for (let i = 0; i < n; i++) notifier.insert(new IntervalSub(i + 1, 1, i * W10_SPAN, (i + 1) * W10_SPAN - 1, ops, 1), W10_SPAN, 1);
  // k notifiers in the middle of the set; the range starts and ends inside one
  const first = Math.floor((n - W10_K) / 2);
  const range: NotifierRange = {
    mmId: 1,
    start: first * W10_SPAN + 4096,
    end: (first + W10_K) * W10_SPAN - 4096,
    event: MmuNotifyEvent.UNMAP,
    owner: 0,
    blockable: true,
  };
  return { notifier, messages, range };
}

/** One invalidation (start + end); returns the messages it sent. */
export function w10Invalidate(s: W10Setup): number {
  const before = s.notifier.callbacks;
  if (!s.notifier.invalidateRangeStart(s.range)) throw new Error("W10 invalidation refused");
  s.notifier.invalidateRangeEnd(s.range);
  return s.notifier.callbacks - before;
}

/** Messages per second of NoopService/Stream sending `count` messages of `bytes`. */
export function noopStreamRate(d: BenchDaemon, count: number, bytes: number): Promise<number> {
  return new Promise((resolve, reject) => {
    const t0 = performance.now();
    let got = 0;
    const call = d.noop.stream!(Buffer.from(JSON.stringify({ count, bytes }))) as NodeJS.EventEmitter;
    call.on("data", () => got++);
    call.on("error", reject);
    call.on("end", () => resolve((got * 1000) / (performance.now() - t0)));
  });
}

/** VMAs (and so invalidations) per MADV_DONTNEED RPC of (c). */
export const W10_VMAS = 64;
/** RPCs in flight per client process in (c). */
const W10_CONCURRENCY = 8;
const MADVISE_PATH = "/mmsim.v1.AddressSpaceService/Madvise";
const PAGE = 4096;

/** A client mirror in this process: acknowledges each batch as it arrives. */
interface BenchMirror {
  mirrorId: number;
  /** invalidations received */
  events: number;
  /** InvalidationBatch messages received */
  batches: number;
  /** when recording: invalidation id -> receipt time (process.hrtime ns) */
  received: Map<number, number> | null;
  end(): void;
}

function openMirror(d: BenchDaemon): Promise<BenchMirror> {
  const client = d.client(NotifierServiceClient);
  const stream = client.subscribe(d.md);
  return new Promise((resolve, reject) => {
    const m: BenchMirror = { mirrorId: 0, events: 0, batches: 0, received: null, end: () => stream.end() };
    stream.on("error", (e: Error) => reject(e));
    stream.on("data", (msg: SubscribeResponse) => {
      if (msg.invalidations !== undefined) {
        const t = Number(process.hrtime.bigint());
        const invs = msg.invalidations.invalidations;
        const ids: number[] = new Array(invs.length);
        for (let i = 0; i < invs.length; i++) {
          const id = invs[i]!.invalidationId;
          ids[i] = id;
          m.received?.set(id, t);
        }
        m.events += invs.length;
        m.batches++;
        stream.write({ ack: { invalidationIds: ids, refusedIds: [] } });
      } else if (msg.subscribed !== undefined) {
        m.mirrorId = msg.subscribed.mirrorId;
        resolve(m);
      } else if (msg.dead !== undefined) {
        reject(new Error(`W10: mirror declared dead: ${msg.dead.reason}`));
      }
    });
    stream.write({ open: { name: "w10" } });
  });
}

/** An mm with `vmas` one-page VMAs back to back (alternating protections, so none merge), watched by the mirror. */
async function watchedMm(d: BenchDaemon, m: BenchMirror, vmas: number): Promise<{ mmId: number; addr: number; length: number }> {
  const { mmId } = await d.unary<object, { mmId: number }>(d.addressSpace, "createMm", { name: "w10" });
  const length = vmas * PAGE;
  const { addr } = await d.unary<object, { addr: number }>(d.addressSpace, "mmap", {
    mmId,
    addr: 0,
    length,
    prot: PROT_READ | PROT_WRITE,
    flags: MAP_PRIVATE | MAP_ANONYMOUS,
    fileId: 0,
    offset: 0,
  });
  for (let i = 1; i < vmas; i += 2) await d.unary(d.addressSpace, "mprotect", { mmId, addr: addr + i * PAGE, length: PAGE, prot: PROT_READ });
  await d.unary(d.client(NotifierServiceClient), "insertIntervalNotifier", { mirrorId: m.mirrorId, mmId, start: addr, length });
  return { mmId, addr, length };
}

/** (c): events/s to the mirror under MADV_DONTNEED load from the client processes. */
async function streamRate(
  ctx: Parameters<Workload["run"]>[0],
  d: BenchDaemon,
  m: BenchMirror,
  pool: LoadPool,
): Promise<{ rate: number; events: number; expected: number; batches: number; calls: number; daemonUs: number; mirrorUs: number }> {
  const msgs: Uint8Array[][] = [];
  for (let p = 0; p < pool.size; p++) {
    const list: Uint8Array[] = [];
    for (let j = 0; j < W10_CONCURRENCY; j++) {
      const t = await watchedMm(d, m, W10_VMAS);
      list.push(MadviseRequest.encode({ mmId: t.mmId, addr: t.addr, length: t.length, advice: MADV_DONTNEED }).finish());
    }
    msgs.push(list);
  }
  const calls = ctx.opts.quick ? 150 : 1000; // per process and run
  const rates: number[] = [];
  let events = 0;
  let expected = 0;
  let batches = 0;
  const daemonUs: number[] = [];
  const mirrorUs: number[] = [];
  for (let round = 0; round < ctx.warmup + ctx.runs; round++) {
    const e0 = m.events;
    const b0 = m.batches;
    const s0 = await d.memory();
    const c0 = process.cpuUsage();
    const r = await pool.run(MADVISE_PATH, msgs, calls, W10_CONCURRENCY);
    const c1 = process.cpuUsage(c0);
    const s1 = await d.memory();
    const got = m.events - e0;
    if (round < ctx.warmup) continue;
    daemonUs.push((s1.cpuUserUs + s1.cpuSystemUs - s0.cpuUserUs - s0.cpuSystemUs) / got);
    mirrorUs.push((c1.user + c1.system) / got);
    rates.push((got * 1000) / r.ms);
    events += got;
    expected += r.calls * W10_VMAS;
    batches += m.batches - b0;
  }
  return { rate: median(rates), events, expected, batches, calls: calls * pool.size, daemonUs: median(daemonUs), mirrorUs: median(mirrorUs) };
}

/** (d): per round, p50 of invalidation delivery and of a no-op unary round trip. */
async function deliveryLatency(ctx: Parameters<Workload["run"]>[0], d: BenchDaemon, m: BenchMirror): Promise<{ inv: number[]; noop: number[]; ratios: number[] }> {
  const t = await watchedMm(d, m, 1);
  const req = { mmId: t.mmId, addr: t.addr, length: t.length, advice: MADV_DONTNEED };
  const noopReq = Buffer.from(MadviseRequest.encode(req).finish());
  const n = ctx.opts.quick ? 40 : 200;
  const empty = new Metadata();
  const inv: number[] = [];
  const noop: number[] = [];
  const ratios: number[] = [];
  const invalidations = async (): Promise<number> => {
    m.received = new Map();
    await call(d.bench, "configure", Buffer.from(JSON.stringify({ recordInvalidations: true })), empty);
    for (let i = 0; i < n; i++) await d.unary(d.addressSpace, "madvise", req);
    const times = JSON.parse((await call<Buffer, Buffer>(d.bench, "invalidationTimes", Buffer.alloc(0), empty)).toString("utf8")) as { ids: number[]; ns: number[] };
    await call(d.bench, "configure", Buffer.from(JSON.stringify({ recordInvalidations: false })), empty);
    const lat: number[] = [];
    times.ids.forEach((id, i) => {
      const r = m.received!.get(id);
      if (r !== undefined) lat.push((r - times.ns[i]!) / 1e6);
    });
    m.received = null;
    if (lat.length !== n) throw new Error(`W10 (d): ${lat.length} of ${n} invalidations timed`);
    return percentile(lat, 50);
  };
  const noops = async (): Promise<number> => {
    const lat = new Float64Array(n);
    for (let i = 0; i < n; i++) {
      const a = process.hrtime.bigint();
      await d.noopUnary(noopReq);
      lat[i] = Number(process.hrtime.bigint() - a) / 1e6;
    }
    return percentile(lat, 50);
  };
  for (let round = 0; round < ctx.warmup + ctx.runs; round++) {
    let a = 0;
    let b = 0;
    if (round % 2 === 0) {
      a = await invalidations();
      b = await noops();
    } else {
      b = await noops();
      a = await invalidations();
    }
    if (round < ctx.warmup) continue;
    inv.push(a);
    noop.push(b);
    ratios.push(a / b);
  }
  return { inv, noop, ratios };
}

/** (c) and (d) over a real daemon. */
async function overRpc(ctx: Parameters<Workload["run"]>[0]): Promise<Row[]> {
  const d = await startBenchDaemon({ ram: "2G" });
  let pool: LoadPool | null = null;
  let m: BenchMirror | null = null;
  try {
    m = await openMirror(d);
    pool = await startLoadPool(d.address, d.sessionId);
    const c = await streamRate(ctx, d, m, pool);
    const streamRef = median(await Promise.all([0, 1, 2].map(() => noopStreamRate(d, 20_000, 64))));
    const cpuNote = `CPU per event: daemon ${c.daemonUs.toFixed(1)} µs (${(1e6 / c.daemonUs).toFixed(0)} events per daemon CPU-second), mirror process ${c.mirrorUs.toFixed(1)} µs`;
    ctx.log(`(c) ${c.rate.toFixed(0)} events/s in ${c.batches} messages for ${c.events} events; no-op stream ${streamRef.toFixed(0)} msgs/s; ${cpuNote}`);
    const l = await deliveryLatency(ctx, d, m);
    const li = median(l.inv);
    const ln = median(l.noop);
    ctx.log(`(d) delivery p50 ${(li * 1000).toFixed(0)} µs vs no-op unary p50 ${(ln * 1000).toFixed(0)} µs; per-round ratios ${l.ratios.map((x) => x.toFixed(2)).join(" ")}`);
    return [
      absoluteRow(`W10 (c) events/s to one mirror (${W10_VMAS} per RPC, ${pool.size}×${W10_CONCURRENCY} RPCs in flight)`, c.rate, "events/s", atLeast(50_000, "≥50k events/s"), {
        reference: streamRef,
        referenceUnit: "msgs/s",
        referenceLabel: "no-op server stream",
        counts: { events: c.events, batches: c.batches, rpcsPerRun: c.calls, daemonCpuUsPerEvent: c.daemonUs, mirrorCpuUsPerEvent: c.mirrorUs },
        note: cpuNote,
      }),
      countRow("W10 (c) invalidations received", c.events, "events", c.expected, `one per VMA per RPC (${W10_VMAS} × RPCs)`),
      row({
        name: "W10 (d) invalidate → mirror receive p50",
        figure: li * 1000,
        figureUnit: "µs",
        reference: ln * 1000,
        referenceUnit: "µs",
        referenceLabel: "no-op unary round trip p50",
        ratio: median(l.ratios),
        target: atMost(1, "≤1× of a no-op round trip"),
        note: "median of per-round ratios",
      }),
    ];
  } finally {
    m?.end();
    await pool?.close();
    await d.stop();
  }
}

export const w10: Workload = {
  id: "W10",
  title: "invalidation streaming to device mirrors",
  unavailable: async () => null,
  async run(ctx) {
    const a = w10Setup(10_000);
    const sent = w10Invalidate(a);
    const perPage = a.messages.some((m) => m.start !== a.range.start || m.end !== a.range.end);
    const inner = 2000;
    const small = w10Setup(10, false);
    const large = w10Setup(10_000, false);
    const loop = (s: W10Setup) => () => {
      for (let i = 0; i < inner; i++) w10Invalidate(s);
    };
    const [ts, tl] = await timeAll(ctx, [
      { run: loop(small), inner },
      { run: loop(large), inner },
    ]);
    const rpcRows = await overRpc(ctx);
    return [
      countRow(`W10 (a) messages per invalidation (n = 10,000, k = ${W10_K})`, perPage ? -1 : sent, "messages", W10_K, "intersecting notifiers, [start,end) each"),
      row({
        name: `W10 (b) invalidation with 10,000 notifiers (k = ${W10_K})`,
        figure: tl!.ms * 1000,
        figureUnit: "µs",
        reference: ts!.ms * 1000,
        referenceUnit: "µs",
        referenceLabel: "10 notifiers",
        ratio: tl!.ms / ts!.ms,
        target: atMost(2, "≤2× of n = 10"),
      }),
      ...rpcRows,
    ];
  },
};
