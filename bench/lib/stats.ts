/** Medians, percentiles and the timed-sample loop of the harness. */
import { setFlagsFromString } from "node:v8";
import { runInNewContext } from "node:vm";
import type { WorkloadContext } from "./types.js";

export function median(xs: readonly number[]): number {
  if (xs.length === 0) return NaN;
  const s = [...xs].sort((a, b) => a - b);
  const m = s.length >> 1;
  return s.length % 2 === 1 ? s[m]! : (s[m - 1]! + s[m]!) / 2;
}

/** Nearest-rank percentile (p in 0..100) of an unsorted sample. */
export function percentile(xs: ArrayLike<number>, p: number): number {
  const n = xs.length;
  if (n === 0) return NaN;
  const s = Float64Array.from(xs as ArrayLike<number>).sort();
  const rank = Math.min(n - 1, Math.max(0, Math.ceil((p / 100) * n) - 1));
  return s[rank]!;
}

let gcFn: (() => void) | null | undefined;
/** A full GC between samples, so one sample's garbage is not another's pause. */
export function collectGarbage(): void {
  if (gcFn === undefined) {
    const g = (globalThis as { gc?: () => void }).gc;
    if (typeof g === "function") gcFn = g;
    else {
      try {
        setFlagsFromString("--expose-gc");
        gcFn = runInNewContext("gc") as () => void;
      } catch {
        gcFn = null;
      }
    }
  }
  gcFn?.();
}

/**
 * One timed operation. `run` is the only timed part; `before`/`after` set up
 * and tear down around every sample. `inner` operations per sample divide
 * the sample's time (for operations too short to time one at a time).
 */
export interface Timed {
  before?: () => void | Promise<void>;
  run: () => unknown;
  after?: () => void | Promise<void>;
  inner?: number;
}

export interface Sample {
  /** median time per operation, ms */
  ms: number;
  /** every measured sample, ms per operation */
  samples: number[];
}

async function once(t: Timed): Promise<number> {
  if (t.before) await t.before();
  const t0 = performance.now();
  const r = t.run();
  if (r instanceof Promise) await r;
  const dt = performance.now() - t0;
  if (t.after) await t.after();
  return dt / (t.inner ?? 1);
}

/** Operations faster than this get an untimed run right before each timed one. */
export const WARM_BELOW_MS = 5;
/**
 * Before the rounds, the operations faster than WARM_BELOW_MS run untimed,
 * in turn, until each has run WARM_CALLS times or for about WARM_BUDGET_MS
 * each: the JIT optimizes a function only after enough calls, so a few
 * dozen calls would time the interpreter's and baseline compiler's code
 * instead of the steady state a long-running daemon reaches (as gup_test's
 * repeats time the kernel warm). --quick warms with a twentieth of the
 * calls and an eighth of the time.
 */
export const WARM_CALLS = 10_000;
export const WARM_BUDGET_MS = 400;

/**
 * Time several operations in the same run: `ctx.warmup` discarded rounds,
 * then `ctx.runs` rounds, each round running every operation once in an
 * order that rotates per round (so drift favours none).
 *
 * Caches: an operation that takes under WARM_BELOW_MS is run once, untimed,
 * right before each timed run, so it is measured with warm CPU caches, as
 * gup_test's repeated runs (-r) measure the kernel. Without that, a short
 * operation that follows a long one (a per-page reference walking gigabytes
 * of struct pages) pays cache and TLB misses on every struct-page array it
 * touches: 4-15× slower for a 16 GiB PUD pin. Long operations are not
 * affected. One full GC before the warm-up, none between samples (a forced
 * GC evicts the caches too, and deoptimizes code); GC work caused by a
 * sample's own garbage stays in the samples, and the median absorbs the odd
 * collection.
 */
export async function timeAll(ctx: WorkloadContext, ops: Timed[], runs = ctx.runs, warmup = ctx.warmup): Promise<Sample[]> {
  // A full GC first: V8 throws away optimized code whose embedded objects
  // it collects ("weak objects" deoptimizations), so it comes before the
  // warm-up, never between it and the rounds.
  collectGarbage();
  const last: number[] = ops.map(() => Infinity);
  if (warmup > 0) {
    // Round robin over the fast operations, so that the code they share is
    // compiled with the type feedback of all of them (warming one after the
    // other lets the next deoptimize what the previous one warmed).
    for (let i = 0; i < ops.length; i++) last[i] = await once(ops[i]!);
    const fast = ops.map((op, i) => last[i]! * (op.inner ?? 1) < WARM_BELOW_MS);
    const t0 = performance.now();
    const calls = ctx.opts.quick ? WARM_CALLS / 20 : WARM_CALLS;
    const budget = (ctx.opts.quick ? WARM_BUDGET_MS / 8 : WARM_BUDGET_MS) * fast.filter(Boolean).length;
    for (let n = 1; n < calls && fast.includes(true) && performance.now() - t0 < budget; n++)
      for (let i = 0; i < ops.length; i++) if (fast[i]) last[i] = await once(ops[i]!);
  }
  const samples: number[][] = ops.map(() => []);
  for (let round = 0; round < warmup + runs; round++) {
    for (let j = 0; j < ops.length; j++) {
      const i = (j + round) % ops.length;
      const op = ops[i]!;
      if (last[i]! * (op.inner ?? 1) < WARM_BELOW_MS) await once(op);
      const dt = await once(op);
      last[i] = dt;
      if (round >= warmup) samples[i]!.push(dt);
    }
  }
  return samples.map((s) => ({ ms: median(s), samples: s }));
}

export function fmtMs(ms: number): string {
  if (!Number.isFinite(ms)) return String(ms);
  if (ms >= 1000) return `${(ms / 1000).toFixed(2)} s`;
  if (ms >= 1) return `${ms.toFixed(2)} ms`;
  if (ms >= 0.001) return `${(ms * 1000).toFixed(2)} µs`;
  return `${(ms * 1e6).toFixed(0)} ns`;
}
