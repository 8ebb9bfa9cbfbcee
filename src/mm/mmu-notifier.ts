/**
 * MMU notifiers: interval subscriptions with the sequence protocol of
 * mm/mmu_notifier.c, and classic notifiers (range start/end, release).
 *
 * The interval protocol, per mm (spec 7.2):
 *
 *   seq starts at 2; even = no interval invalidation in flight.
 *
 *   invalidator                          reader (device fault path)
 *   -----------                          ------------------------------
 *   start(range): active++,              s = read_begin(sub)
 *     seq |= 1 if any sub overlaps,        (sleeps while sub.seq == seq)
 *     sub->invalidate(range, seq)        hmm_range_fault(...)
 *       (driver lock; sub.seq = seq;     lock(driver)
 *        tear down device mappings)      if read_retry(sub, s): unlock, again
 *   ...CPU PTEs change...                program device page table
 *   end(range): active--; when 0 and     unlock(driver)
 *     seq odd: seq++, apply deferred
 *     inserts/removes, wake readers
 *
 * Any invalidation overlapping `sub` that starts after read_begin, or was in
 * flight during it, leaves sub.seq != s, so read_retry is true.
 *
 * Completion may be deferred: when an operation notified subscribers that
 * answer asynchronously (a client's mirror over a stream), the service layer
 * holds the operation's end (and the pages it freed, as mmu_gather holds
 * them until the TLB flush) until every answer arrived. See OpContext.
 */
import { MmuNotifyEvent, PAGE_SIZE } from "./constants.js";
import { Errno, fail } from "./errors.js";

export interface NotifierRange {
  readonly mmId: number;
  readonly start: number;
  /** exclusive; ULONG_MAX-sized ranges use Number.MAX_SAFE_INTEGER. */
  readonly end: number;
  readonly event: MmuNotifyEvent;
  /** pgmap owner cookie for MIGRATE / EXCLUSIVE; 0 = none. */
  readonly owner: number;
  readonly blockable: boolean;
}

/** An end this large stands for ULONG_MAX ([0, ULONG_MAX) ranges). */
export const RANGE_END_ALL = Number.MAX_SAFE_INTEGER;

export interface IntervalOps {
  /** mmu_interval_notifier_ops.invalidate; false only when !blockable. */
  invalidate(sub: IntervalSub, range: NotifierRange, curSeq: number): boolean;
}

export class IntervalSub {
  /** mmu_interval_notifier.invalidate_seq */
  seq = 0;
  /** on the deferred insert list, not yet in the tree */
  pendingInsert = false;
  removed = false;
  constructor(
    readonly id: number,
    readonly mmId: number,
    readonly start: number,
    /** inclusive */
    readonly last: number,
    readonly ops: IntervalOps,
    readonly session: number,
  ) {}
  overlaps(start: number, end: number): boolean {
    return this.start < end && start <= this.last;
  }
}

export interface ClassicNotifier {
  invalidateRangeStart?(range: NotifierRange): void;
  invalidateRangeEnd?(range: NotifierRange): void;
  release?(mmId: number): void;
}

/**
 * Interval subscriptions sorted by start, with a running maximum of `last`
 * per prefix block so that a stabbing query skips whole blocks: O(log n + k)
 * for the typical driver layout of disjoint or nested intervals.
 */
export class IntervalIndex {
  private subs: IntervalSub[] = [];
  private maxLast: number[] = [];
  private dirty = false;
  add(s: IntervalSub): void {
    this.subs.push(s);
    this.dirty = true;
  }
  remove(s: IntervalSub): void {
    const i = this.subs.indexOf(s);
    if (i >= 0) this.subs.splice(i, 1);
    this.dirty = true;
  }
  get size(): number {
    return this.subs.length;
  }
  all(): readonly IntervalSub[] {
    return this.subs;
  }
  private rebuild(): void {
    this.subs.sort((a, b) => a.start - b.start || a.id - b.id);
    this.maxLast = new Array<number>(this.subs.length);
    let m = -1;
    for (let i = 0; i < this.subs.length; i++) {
      m = Math.max(m, this.subs[i]!.last);
      this.maxLast[i] = m;
    }
    this.dirty = false;
  }
  /** Subscriptions overlapping [start, end), in start order. */
  query(start: number, end: number, out: IntervalSub[]): IntervalSub[] {
    if (this.subs.length === 0) return out;
    if (this.dirty) this.rebuild();
    // Only subs with start < end can overlap: binary search that bound.
    let lo = 0;
    let hi = this.subs.length;
    while (lo < hi) {
      const mid = (lo + hi) >>> 1;
      if (this.subs[mid]!.start < end) lo = mid + 1;
      else hi = mid;
    }
    // Walk backwards from the bound while some earlier sub may reach `start`.
    let first = lo;
    let l = 0;
    let h = lo;
    while (l < h) {
      const mid = (l + h) >>> 1;
      if (this.maxLast[mid]! >= start) h = mid;
      else l = mid + 1;
    }
    first = l;
    for (let i = first; i < lo; i++) {
      const s = this.subs[i]!;
      if (s.last >= start) out.push(s);
    }
    return out;
  }
}

export class MmNotifier {
  /** mmu_notifier_subscriptions.invalidate_seq */
  seq = 2;
  active = 0;
  readonly tree = new IntervalIndex();
  readonly deferred: { sub: IntervalSub; insert: boolean }[] = [];
  readonly classic = new Set<ClassicNotifier>();
  /** resolved whenever seq changes (read_begin / remove waiters). */
  private waiters: (() => void)[] = [];
  /** count of interval callbacks made (messages, for exact counts). */
  callbacks = 0;

  get invalidating(): boolean {
    return (this.seq & 1) === 1;
  }

  hasSubscribers(): boolean {
    return this.tree.size > 0 || this.classic.size > 0 || this.deferred.length > 0;
  }

  /** Wait until `seq` changes (used by async read_begin and remove). */
  waitSeqChange(): Promise<void> {
    return new Promise((resolve) => this.waiters.push(resolve));
  }

  private wake(): void {
    const w = this.waiters;
    this.waiters = [];
    for (const f of w) f();
  }

  /**
   * invalidate_range_start. Returns false when a non-blockable range was
   * refused (the caller fails with -EAGAIN and must not call end).
   */
  invalidateRangeStart(range: NotifierRange): boolean {
    this.active++;
    const hits = this.tree.query(range.start, range.end, []);
    if (hits.length > 0) this.seq |= 1;
    const curSeq = this.seq;
    for (const sub of hits) {
      this.callbacks++;
      const ok = sub.ops.invalidate(sub, range, curSeq);
      if (!ok) {
        if (range.blockable) continue; // WARN in the kernel; carry on
        this.invalidateEndInterval();
        return false;
      }
    }
    for (const c of this.classic) c.invalidateRangeStart?.(range);
    return true;
  }

  invalidateRangeEnd(range: NotifierRange): void {
    this.invalidateEndInterval();
    for (const c of this.classic) c.invalidateRangeEnd?.(range);
  }

  /** mn_itree_inv_end */
  private invalidateEndInterval(): void {
    this.active--;
    if (this.active > 0 || !this.invalidating) return;
    this.seq++;
    for (const d of this.deferred.splice(0)) {
      if (d.insert) {
        d.sub.pendingInsert = false;
        if (!d.sub.removed) this.tree.add(d.sub);
      } else {
        this.tree.remove(d.sub);
      }
    }
    this.wake();
  }

  /** mmu_interval_notifier_insert (spec 7.2 insert rules). */
  insert(sub: IntervalSub, length: number, mmUsers: number): void {
    if (length === 0 || sub.start + length - 1 > Number.MAX_SAFE_INTEGER)
      fail(Errno.EOVERFLOW, "notifier interval is empty or overflows");
    if (mmUsers <= 0) fail(Errno.EINVAL, "mm has no users (exiting)");
    if (this.active === 0) {
      sub.seq = this.seq - 1;
      this.tree.add(sub);
      return;
    }
    if (this.invalidating) {
      sub.pendingInsert = true;
      this.deferred.push({ sub, insert: true });
    } else {
      this.seq |= 1;
      this.tree.add(sub);
    }
    sub.seq = this.seq;
  }

  /**
   * mmu_interval_notifier_remove. Returns null when removed now, or a
   * promise that resolves once the running invalidation ended.
   */
  remove(sub: IntervalSub): Promise<void> | null {
    sub.removed = true;
    if (this.invalidating) {
      if (sub.pendingInsert) {
        const i = this.deferred.findIndex((d) => d.sub === sub && d.insert);
        if (i >= 0) this.deferred.splice(i, 1);
        sub.pendingInsert = false;
        return null;
      }
      this.deferred.push({ sub, insert: false });
      return this.waitSeqChange();
    }
    this.tree.remove(sub);
    return null;
  }

  /** mmu_interval_read_begin without sleeping: undefined means "must wait". */
  tryReadBegin(sub: IntervalSub): number | undefined {
    const s = sub.seq;
    if (s === this.seq && this.invalidating) return undefined;
    return s;
  }

  readRetry(sub: IntervalSub, s: number): boolean {
    return sub.seq !== s;
  }

  subscriptions(): readonly IntervalSub[] {
    return this.tree.all();
  }
}

export function rangePages(r: NotifierRange): number {
  return r.end === RANGE_END_ALL ? Infinity : (r.end - r.start) / PAGE_SIZE;
}
