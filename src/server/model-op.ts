/**
 * How the service layer runs a mutating model call (the OpContext protocol
 * of src/mm/kernel.ts):
 *
 *   lock the mms (mmap_lock read or write)
 *   k.op = new OpContext(); result = fn(); k.op = null     synchronous
 *   await every op.pending (device mirror acknowledgements)
 *   k.finishOp(op)   deferred invalidate_range_end, mmu_gather puts
 *   after-op hooks (e.g. free orphaned dev_pagemaps), unlock
 *
 * finishOp runs even when fn threw: a failing call may already have started
 * invalidations whose ends and gathered pages must not be lost.
 */
import { type Kernel, OpContext } from "../mm/kernel.js";
import { type LockMode, MmLocks } from "./mm-lock.js";
import { traceCommit } from "./trace.js";

/** Per-kernel state of the service layer's operation runner. */
export class ModelOps {
  readonly locks = new MmLocks();
  /** Run after every operation, in registration order (must not throw). */
  readonly afterOp = new Set<() => void>();
  /** Operations between their synchronous part and finishOp. */
  private awaiting = 0;
  private idleWaiters: (() => void)[] = [];

  constructor(readonly kernel: Kernel) {}

  /** Operations waiting for acknowledgements now (a snapshot needs none). */
  get awaitingOps(): number {
    return this.awaiting;
  }

  enterAwait(): void {
    this.awaiting++;
  }

  leaveAwait(): void {
    this.awaiting--;
    if (this.awaiting === 0) {
      const w = this.idleWaiters;
      this.idleWaiters = [];
      for (const f of w) f();
    }
  }

  /** Resolves when no operation is waiting for acknowledgements. */
  whenQuiescent(): Promise<void> {
    if (this.awaiting === 0) return Promise.resolve();
    return new Promise((resolve) => this.idleWaiters.push(resolve));
  }
}

const opsByKernel = new WeakMap<Kernel, ModelOps>();

export function modelOps(k: Kernel): ModelOps {
  let ops = opsByKernel.get(k);
  if (ops === undefined) {
    ops = new ModelOps(k);
    opsByKernel.set(k, ops);
  }
  return ops;
}

/** Await every pending answer, including ones added while waiting. */
async function settlePending(op: OpContext): Promise<void> {
  for (let done = 0; done < op.pending.length; ) {
    const batch = op.pending.slice(done);
    done = op.pending.length;
    await Promise.allSettled(batch);
  }
}

/**
 * Run the synchronous model call `fn` as one operation on `mmIds` (mmap lock
 * in `mode`), following the OpContext protocol. Returns fn's result or
 * rethrows its error after the operation has been finished.
 */
export async function runModelOp<T>(k: Kernel, mmIds: readonly number[], mode: LockMode, fn: () => T): Promise<T> {
  const ops = modelOps(k);
  const release = await ops.locks.acquire(mmIds, mode);
  return runLocked(k, ops, fn, release);
}

/**
 * `runModelOp` with a synchronous fast path: when every lock of `mmIds` can
 * be granted without waiting and the operation leaves nothing pending, the
 * lock is taken, fn runs, finishOp and the after-op hooks run and the lock
 * is released within this call, which returns (or throws) fn's result
 * directly. Otherwise it returns a promise, exactly as `runModelOp`.
 */
export function modelOp<T>(k: Kernel, mmIds: readonly number[], mode: LockMode, fn: () => T): T | Promise<T> {
  const ops = modelOps(k);
  const ids = ops.locks.tryAcquire(mmIds, mode);
  if (ids === null) return runModelOp(k, mmIds, mode, fn);
  return runLocked(k, ops, fn, () => ops.locks.releaseNow(ids, mode));
}

/** The operation once its locks are held; `release` runs exactly once, at its end. */
function runLocked<T>(k: Kernel, ops: ModelOps, fn: () => T, release: () => void): T | Promise<T> {
  let op: OpContext;
  let result: T | undefined;
  let error: unknown;
  let failed = false;
  try {
    if (k.op !== null) throw new Error("runModelOp: another model operation is running synchronously (nested call)");
    op = new OpContext();
    k.op = op;
    traceCommit(); // the step number of a traced call is its commit order
    try {
      result = fn();
    } catch (e) {
      failed = true;
      error = e;
    } finally {
      k.op = null;
    }
  } catch (e) {
    release();
    throw e;
  }
  if (op.pending.length > 0) return finishLater(k, ops, op, failed, error, result, release);
  try {
    k.finishOp(op);
    for (const hook of ops.afterOp) hook();
  } finally {
    release();
  }
  if (failed) throw error;
  return result as T;
}

async function finishLater<T>(
  k: Kernel,
  ops: ModelOps,
  op: OpContext,
  failed: boolean,
  error: unknown,
  result: T | undefined,
  release: () => void,
): Promise<T> {
  try {
    ops.enterAwait();
    try {
      await settlePending(op);
    } finally {
      ops.leaveAwait();
    }
    k.finishOp(op);
    for (const hook of ops.afterOp) hook();
    if (failed) throw error;
    return result as T;
  } finally {
    release();
  }
}

/** Apply `f` to a value that may still be pending, without a tick when it is not. */
export function thenMaybe<T, U>(v: T | Promise<T>, f: (t: T) => U): U | Promise<U> {
  return v instanceof Promise ? v.then(f) : f(v);
}

/** Run a read-only model call under read locks of `mmIds` (no OpContext). */
export async function runModelRead<T>(k: Kernel, mmIds: readonly number[], fn: () => T): Promise<T> {
  const ops = modelOps(k);
  const release = await ops.locks.acquire(mmIds, "read");
  try {
    return fn();
  } finally {
    release();
  }
}
