/**
 * Notifier invariants for CheckInvariants (spec 9):
 *
 *  N1  every notification has start < end, page-aligned bounds (except the
 *      [0, ULONG_MAX) form) and an event value 0..7 (checked as each
 *      invalidation starts, through Kernel.invalidationObservers);
 *  N2  a subscription's callback runs only for ranges overlapping
 *      [start, last] (checked by the callbacks of client mirrors and
 *      dmirrors, which call noteCallback);
 *  N3  every subscription's invalidate_seq is odd and not beyond its mm's
 *      seq, strictly below it when no invalidation is active, and deferred
 *      inserts exist only while one is (checked at CheckInvariants time; the
 *      "seq even when idle" half is in invariants.ts).
 *
 * N4 and N5 are the mirrors' own (dmirror.ts). Violations seen as they
 * happen are kept (bounded) and reported by every later check.
 */
import { PAGE_SIZE } from "./constants.js";
import type { Kernel } from "./kernel.js";
import { type IntervalSub, type NotifierRange, RANGE_END_ALL } from "./mmu-notifier.js";

export interface Recorded {
  code: string;
  message: string;
  mmId: number;
  addr?: number;
}

const MAX_RECORDED = 50;
const recorded = new WeakMap<Kernel, Recorded[]>();

/** Register the N1-N3 checks on `k` (idempotent). */
export function installNotifierChecks(k: Kernel): void {
  if (recorded.has(k)) return;
  const list: Recorded[] = [];
  recorded.set(k, list);
  const note = (v: Recorded) => {
    if (list.length < MAX_RECORDED) list.push(v);
  };
  k.invalidationObservers.add((r, phase) => {
    if (phase !== "start") return;
    const whole = r.start === 0 && r.end === RANGE_END_ALL;
    if (!(r.start < r.end) || (!whole && (r.start % PAGE_SIZE !== 0 || r.end % PAGE_SIZE !== 0)) || !(r.event >= 0 && r.event <= 7))
      note({ code: "N1", message: `malformed notification [${r.start}, ${r.end}) event ${r.event}`, mmId: r.mmId, addr: r.start });
  });
  k.extraChecks.push((add) => {
    for (const v of list) add(v);
    for (const mm of k.mms.values()) {
      if (mm.exited) continue;
      const n = mm.notifier;
      const subs: IntervalSub[] = [...n.subscriptions()];
      for (const d of n.deferred) {
        if (!d.insert) continue;
        subs.push(d.sub);
        if (!n.invalidating) add({ code: "N3", message: `notifier ${d.sub.id} still on the deferred insert list with no invalidation running`, mmId: mm.id });
      }
      for (const s of subs) {
        const bad = s.seq % 2 !== 1 || s.seq > n.seq || (n.active === 0 && s.seq >= n.seq);
        if (bad) add({ code: "N3", message: `notifier ${s.id} invalidate_seq ${s.seq} against mm seq ${n.seq} (active ${n.active})`, mmId: mm.id });
      }
    }
  });
}

/** Snapshot support: the violations recorded so far (undefined: checks not installed). */
export function peekNotifierRecords(k: Kernel): Recorded[] | undefined {
  return recorded.get(k);
}

/** Snapshot restore: install the checks on `k` and take over the recorded violations. */
export function adoptNotifierRecords(k: Kernel, from: readonly Recorded[]): void {
  installNotifierChecks(k);
  const list = recorded.get(k)!;
  list.length = 0;
  list.push(...from);
}

/** N2: record a callback for a range that does not overlap the subscription. */
export function noteCallback(k: Kernel, sub: IntervalSub, range: NotifierRange): void {
  if (sub.overlaps(range.start, range.end)) return;
  const list = recorded.get(k);
  if (list !== undefined && list.length < MAX_RECORDED)
    list.push({ code: "N2", message: `notifier ${sub.id} [${sub.start}, ${sub.last}] called for [${range.start}, ${range.end})`, mmId: range.mmId, addr: range.start });
}
