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

/** Per-kernel state of the service layer's operation runner. */
export class ModelOps {
  readonly locks = new MmLocks();
  /** Run after every operation, in registration order (must not throw). */
  readonly afterOp = new Set<() => void>();
  /** Operations between their synchronous part and finishOp. */
  private awaiting = 0;
  private idleWaiters: (() => void)[] = [];

  constructor(readonly kernel: Kernel) {}

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
  try {
    if (k.op !== null) throw new Error("runModelOp: another model operation is running synchronously (nested call)");
    const op = new OpContext();
    let result: T | undefined;
    let error: unknown;
    let failed = false;
    k.op = op;
    try {
      result = fn();
    } catch (e) {
      failed = true;
      error = e;
    } finally {
      k.op = null;
    }
    if (op.pending.length > 0) {
      ops.enterAwait();
      try {
        await settlePending(op);
      } finally {
        ops.leaveAwait();
      }
    }
    k.finishOp(op);
    for (const hook of ops.afterOp) hook();
    if (failed) throw error;
    return result as T;
  } finally {
    release();
  }
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
