/**
 * Closed-loop RPC load: `concurrency` async callers on one channel, each
 * issuing its next call when the previous one answers, until `calls` calls
 * have been made. Measured from the client: wall time and per-call latency.
 */
import { percentile } from "./stats.js";

export interface LoadResult {
  calls: number;
  ms: number;
  /** calls per second */
  rate: number;
  p50Ms: number;
  p99Ms: number;
}

export async function closedLoop(calls: number, concurrency: number, one: (i: number) => Promise<unknown>): Promise<LoadResult> {
  const lat = new Float64Array(calls);
  let next = 0;
  const worker = async (): Promise<void> => {
    while (next < calls) {
      const i = next++;
      const t0 = performance.now();
      await one(i);
      lat[i] = performance.now() - t0;
    }
  };
  const t0 = performance.now();
  await Promise.all(Array.from({ length: Math.min(concurrency, calls) }, worker));
  const ms = performance.now() - t0;
  return { calls, ms, rate: (calls * 1000) / ms, p50Ms: percentile(lat, 50), p99Ms: percentile(lat, 99) };
}
