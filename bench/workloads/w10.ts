/**
 * W10 — invalidation streaming (performance.md §4). Skeleton: needs the
 * notifier streaming service (NotifierService, src/gen/mmsim/v1/notifier.ts).
 *
 * Planned measurements, all against baselines of the same run:
 *  (a) messages per invalidation = intersecting notifiers k, each carrying
 *      [start, end) (exact count; munmap/mprotect over registered ranges);
 *  (b) invalidation cost with n = 10,000 notifiers ≤2× that with n = 10;
 *  (c) ≥50k events/s to one mirror on one core — reported next to
 *      `noopStreamRate` below, the rate of an empty-message no-op server
 *      stream on the same server (NoopService/Stream);
 *  (d) invalidate → mirror receive p50 ≤1× a no-op unary round trip.
 */
import type { BenchDaemon } from "../lib/daemon.js";
import { hasSource } from "../lib/optional.js";
import type { Workload } from "../lib/types.js";

const GEN = "src/gen/mmsim/v1/notifier.ts";

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

export const w10: Workload = {
  id: "W10",
  title: "invalidation streaming to device mirrors",
  unavailable: async () =>
    hasSource(GEN)
      ? "NotifierService landed: bind bench/workloads/w10.ts to it (skeleton)"
      : "notifier streaming is not there yet (no src/gen/mmsim/v1/notifier.ts)",
  async run() {
    throw new Error("W10 is a skeleton");
  },
};
