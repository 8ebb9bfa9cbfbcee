/**
 * Closed-loop RPC load from client processes (bench/lib/h2-client.ts), so
 * that the daemon, not the client, is the busy side. Each process holds one
 * HTTP/2 connection (a channel) and `concurrency` calls in flight; all start
 * a run together. Throughput is the calls of all processes over the span
 * from the first start to the last end, on the host's monotonic clock;
 * latencies are merged.
 */
import { type ChildProcess, fork } from "node:child_process";
import path from "node:path";
import { ROOT } from "./daemon.js";
import { percentile } from "./stats.js";
import type { LoadResult } from "./load.js";

/** Client processes of the RPC workloads (the machine has 2 cores: daemon + clients). */
export const LOAD_PROCESSES = 2;

interface Done {
  type: "done";
  t0: bigint;
  t1: bigint;
  lat: Float64Array;
  errors: number;
  firstError: string;
}

/** A run's result with every call's latency (ms). */
export interface PoolResult extends LoadResult {
  lat: Float64Array;
}

/** Two runs of the same calls taken as one (rate over both spans, percentiles over all calls). */
export function combine(a: PoolResult, b: PoolResult): PoolResult {
  const lat = new Float64Array(a.lat.length + b.lat.length);
  lat.set(a.lat);
  lat.set(b.lat, a.lat.length);
  const calls = a.calls + b.calls;
  const ms = a.ms + b.ms;
  return { calls, ms, rate: (calls * 1000) / ms, p50Ms: percentile(lat, 50), p99Ms: percentile(lat, 99), lat };
}

export interface LoadPool {
  /**
   * `calls` calls of `path` per process; process p sends msgs[p] (or the
   * last list) in turn, as `session` (default: the pool's session).
   */
  run(path: string, msgs: Uint8Array[][], calls: number, concurrency: number, session?: number): Promise<PoolResult>;
  close(): Promise<void>;
  readonly size: number;
}

function next<T>(c: ChildProcess, type: string): Promise<T> {
  return new Promise((resolve, reject) => {
    const onMsg = (m: { type: string }): void => {
      if (m.type !== type) return;
      c.off("message", onMsg);
      c.off("exit", onExit);
      resolve(m as T);
    };
    const onExit = (code: number | null): void => {
      c.off("message", onMsg);
      reject(new Error(`load client exited (${code})`));
    };
    c.on("message", onMsg);
    c.once("exit", onExit);
  });
}

export async function startLoadPool(address: string, session: number, processes = LOAD_PROCESSES): Promise<LoadPool> {
  const kids: ChildProcess[] = [];
  for (let i = 0; i < processes; i++) {
    kids.push(
      fork(path.join(ROOT, "bench/lib/h2-client.ts"), [], {
        execArgv: ["--import", "tsx"],
        serialization: "advanced",
        stdio: ["ignore", "inherit", "inherit", "ipc"],
      }),
    );
  }
  await Promise.all(
    kids.map((c) => {
      const r = next(c, "ready");
      c.send({ type: "connect", address, session });
      return r;
    }),
  );
  return {
    size: processes,
    async run(p, msgs, calls, concurrency, session) {
      const done = await Promise.all(
        kids.map((c, i) => {
          const r = next<Done>(c, "done");
          c.send({ type: "run", path: p, msgs: msgs[Math.min(i, msgs.length - 1)], calls, concurrency, session });
          return r;
        }),
      );
      const bad = done.find((d) => d.errors > 0);
      if (bad !== undefined) throw new Error(`${p}: ${bad.errors} calls failed, first: ${bad.firstError}`);
      let t0 = done[0]!.t0;
      let t1 = done[0]!.t1;
      for (const d of done) {
        if (d.t0 < t0) t0 = d.t0;
        if (d.t1 > t1) t1 = d.t1;
      }
      const ms = Number(t1 - t0) / 1e6;
      const all = new Float64Array(calls * done.length);
      done.forEach((d, i) => all.set(d.lat, i * calls));
      const n = calls * done.length;
      return { calls: n, ms, rate: (n * 1000) / ms, p50Ms: percentile(all, 50), p99Ms: percentile(all, 99), lat: all };
    },
    async close() {
      await Promise.all(
        kids.map(
          (c) =>
            new Promise<void>((resolve) => {
              if (c.exitCode !== null || c.signalCode !== null) return resolve();
              c.once("exit", () => resolve());
              c.disconnect();
            }),
        ),
      );
    },
  };
}
