/**
 * mmap_lock for the service layer: an async reader/writer lock per mm id.
 *
 * The model's calls are synchronous, so only one runs at a time; the lock
 * matters because an operation may wait after its synchronous part (for
 * acknowledgements of device mirrors) and must keep its mm to itself, as the
 * kernel holds mmap_lock across the invalidation it waits on.
 *
 * Fairness is FIFO, as rwsem hand-off: once a writer waits, readers that
 * arrive later queue behind it, so a stream of faults cannot starve munmap.
 * Several mms are locked in ascending id order, so two multi-mm operations
 * cannot deadlock.
 */

export type LockMode = "read" | "write";

interface Waiter {
  mode: LockMode;
  grant: () => void;
}

class RwLock {
  readers = 0;
  writer = false;
  readonly queue: Waiter[] = [];

  get idle(): boolean {
    return this.readers === 0 && !this.writer && this.queue.length === 0;
  }

  private compatible(mode: LockMode): boolean {
    return mode === "read" ? !this.writer : !this.writer && this.readers === 0;
  }

  private take(mode: LockMode): void {
    if (mode === "read") this.readers++;
    else this.writer = true;
  }

  /** Grantable right now (no waiter queued ahead, compatible with the holders). */
  grantable(mode: LockMode): boolean {
    return this.queue.length === 0 && this.compatible(mode);
  }

  /** Take the lock without waiting; only after `grantable(mode)`. */
  takeNow(mode: LockMode): void {
    this.take(mode);
  }

  acquire(mode: LockMode): Promise<void> | null {
    if (this.queue.length === 0 && this.compatible(mode)) {
      this.take(mode);
      return null;
    }
    return new Promise((resolve) => this.queue.push({ mode, grant: resolve }));
  }

  release(mode: LockMode): void {
    if (mode === "read") this.readers--;
    else this.writer = false;
    // Hand the lock to the head of the queue, and to the readers right
    // behind a granted reader.
    while (this.queue.length > 0 && this.compatible(this.queue[0]!.mode)) {
      const w = this.queue.shift()!;
      this.take(w.mode);
      w.grant();
    }
  }
}

/** A held set of mm locks; `release` is idempotent. */
export type LockRelease = () => void;

export class MmLocks {
  private readonly locks = new Map<number, RwLock>();

  /** Lock every mm of `mmIds` (duplicates allowed) in `mode`. */
  async acquire(mmIds: readonly number[], mode: LockMode): Promise<LockRelease> {
    const ids = [...new Set(mmIds)].sort((a, b) => a - b);
    const held: number[] = [];
    for (const id of ids) {
      let l = this.locks.get(id);
      if (l === undefined) {
        l = new RwLock();
        this.locks.set(id, l);
      }
      const wait = l.acquire(mode);
      if (wait !== null) await wait;
      held.push(id);
    }
    let released = false;
    return () => {
      if (released) return;
      released = true;
      for (const id of held.reverse()) {
        const l = this.locks.get(id)!;
        l.release(mode);
        if (l.idle) this.locks.delete(id);
      }
    };
  }

  /**
   * The synchronous fast path of `acquire`: take every lock of `mmIds` now
   * if each is grantable without waiting (the case in which `acquire` would
   * take them all in its first synchronous step anyway), else take none.
   * Returns the ids taken (ascending, without duplicates; release them with
   * `releaseNow`), or null. Same FIFO / writer-preference semantics.
   */
  tryAcquire(mmIds: readonly number[], mode: LockMode): readonly number[] | null {
    const ids = mmIds.length <= 1 ? mmIds : [...new Set(mmIds)].sort((a, b) => a - b);
    for (let i = 0; i < ids.length; i++) {
      const l = this.locks.get(ids[i]!);
      if (l !== undefined && !l.grantable(mode)) return null;
    }
    for (let i = 0; i < ids.length; i++) {
      const id = ids[i]!;
      let l = this.locks.get(id);
      if (l === undefined) {
        l = new RwLock();
        this.locks.set(id, l);
      }
      l.takeNow(mode);
    }
    return ids;
  }

  /** Release locks taken by `tryAcquire` (in reverse order). */
  releaseNow(ids: readonly number[], mode: LockMode): void {
    for (let i = ids.length - 1; i >= 0; i--) {
      const id = ids[i]!;
      const l = this.locks.get(id)!;
      l.release(mode);
      if (l.idle) this.locks.delete(id);
    }
  }

  /** Run `fn` with the locks held. */
  async with<T>(mmIds: readonly number[], mode: LockMode, fn: () => Promise<T> | T): Promise<T> {
    const release = await this.acquire(mmIds, mode);
    try {
      return await fn();
    } finally {
      release();
    }
  }

  /** For tests and diagnostics: readers, writer and queue length of one mm. */
  state(mmId: number): { readers: number; writer: boolean; waiting: number } {
    const l = this.locks.get(mmId);
    return l === undefined ? { readers: 0, writer: false, waiting: 0 } : { readers: l.readers, writer: l.writer, waiting: l.queue.length };
  }
}
