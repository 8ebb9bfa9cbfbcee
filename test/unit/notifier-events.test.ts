import { describe, expect, it } from "vitest";
import { MmuNotifyEvent } from "../../src/mm/constants.js";
import { Errno } from "../../src/mm/errors.js";
import { IntervalSub, MmNotifier, type NotifierRange } from "../../src/mm/mmu-notifier.js";
import { doMunmap } from "../../src/mm/mmap.js";
import { bytes, expectClean, expectErrno, mkKernel, mkMm, mmap, write } from "./helpers.js";

/** A kernel with one mm whose notifier the protocol tests drive directly. */
function fresh() {
  const k = mkKernel();
  const mm = mkMm(k);
  return { k, n: mm.notifier as MmNotifier };
}

function range(start: number, end: number, blockable = true, event = MmuNotifyEvent.CLEAR): NotifierRange {
  return { mmId: 1, start, end, event, owner: 0, blockable };
}

interface Rec {
  calls: [number, number, number][]; // start, end, cur_seq
  answer: boolean;
}

/** An interval subscription whose callback does what drivers must: set_seq, then answer. */
function sub(id: number, start: number, last: number, rec: Rec = { calls: [], answer: true }): [IntervalSub, Rec] {
  const s = new IntervalSub(id, 1, start, last, {
    invalidate(me, r, cur) {
      rec.calls.push([r.start, r.end, cur]);
      if (rec.answer) me.seq = cur; // mmu_interval_set_seq
      return rec.answer;
    },
  }, 1);
  return [s, rec];
}

describe("interval notifier sequence protocol (spec 7.2)", () => {
  it("seq starts at 2; an insert with no active invalidation sets sub.seq = seq - 1", () => {
    const { k, n } = fresh();
    expect(n.seq).toBe(2);
    expect(n.active).toBe(0);
    const [s] = sub(1, 0x1000, 0x1fff);
    n.insert(s, 0x1000, 1);
    expect(s.seq).toBe(1);
    expect(n.seq).toBe(2);
    expect(n.subscriptions()).toEqual([s]);
    expect(n.tryReadBegin(s)).toBe(1);
    expectClean(k);
  });

  it("an overlapping invalidation makes seq odd while active; sub.seq takes that odd value; seq is even after", () => {
    const { k, n } = fresh();
    const [s, rec] = sub(1, 0x10000, 0x1ffff);
    n.insert(s, 0x10000, 1);
    const r = range(0x18000, 0x30000);
    expect(n.invalidateRangeStart(r)).toBe(true);
    expect(n.active).toBe(1);
    expect(n.seq).toBe(3);
    expect(rec.calls).toEqual([[0x18000, 0x30000, 3]]);
    expect(s.seq).toBe(3);
    n.invalidateRangeEnd(r);
    expect(n.active).toBe(0);
    expect(n.seq).toBe(4);
    expect(s.seq).toBe(3);
    expectClean(k);
  });

  it("a non-overlapping invalidation neither calls the subscription nor makes seq odd (closed interval bounds)", () => {
    const { k, n } = fresh();
    const [s, rec] = sub(1, 0x10000, 0x1ffff);
    n.insert(s, 0x10000, 1);
    for (const r of [range(0x20000, 0x30000), range(0x0, 0x10000)]) {
      expect(n.invalidateRangeStart(r)).toBe(true);
      expect(n.seq).toBe(2);
      n.invalidateRangeEnd(r);
    }
    expect(rec.calls).toEqual([]);
    // last byte inclusive: [0x1f000, 0x20000) overlaps [.., 0x1ffff]
    const r = range(0x1f000, 0x20000);
    n.invalidateRangeStart(r);
    expect(rec.calls).toHaveLength(1);
    n.invalidateRangeEnd(r);
    expect(n.seq).toBe(4);
    expectClean(k);
  });

  it("read_begin / read_retry: collisions are reported, quiet periods are not", () => {
    const { k, n } = fresh();
    const [s] = sub(1, 0, 0xffff);
    n.insert(s, 0x10000, 1);
    const s0 = n.tryReadBegin(s)!;
    expect(s0).toBe(1);
    expect(n.readRetry(s, s0)).toBe(false);
    // a non-overlapping invalidation does not disturb the reader
    const far = range(0x100000, 0x200000);
    n.invalidateRangeStart(far);
    n.invalidateRangeEnd(far);
    expect(n.readRetry(s, s0)).toBe(false);
    // an overlapping one does; while it runs read_begin must wait
    const r = range(0x1000, 0x2000);
    n.invalidateRangeStart(r);
    expect(n.readRetry(s, s0)).toBe(true);
    expect(n.tryReadBegin(s)).toBeUndefined();
    n.invalidateRangeEnd(r);
    const s1 = n.tryReadBegin(s)!;
    expect(s1).toBe(3);
    expect(n.readRetry(s, s1)).toBe(false);
    expect(n.readRetry(s, s0)).toBe(true);
    expectClean(k);
  });

  it("nested invalidations: seq stays odd until the last end; both callbacks get the same cur_seq", () => {
    const { k, n } = fresh();
    const [s, rec] = sub(1, 0, 0xffff);
    n.insert(s, 0x10000, 1);
    const a = range(0, 0x1000);
    const b = range(0x2000, 0x3000);
    n.invalidateRangeStart(a);
    n.invalidateRangeStart(b);
    expect(n.active).toBe(2);
    n.invalidateRangeEnd(a);
    expect(n.seq).toBe(3);
    expect(n.tryReadBegin(s)).toBeUndefined();
    n.invalidateRangeEnd(b);
    expect(n.seq).toBe(4);
    expect(rec.calls.map((c) => c[2])).toEqual([3, 3]);
    expectClean(k);
  });

  it("insert during an active invalidation with seq odd is deferred to the final end; its first read_begin waits", () => {
    const { k, n } = fresh();
    const [s1] = sub(1, 0, 0xffff);
    n.insert(s1, 0x10000, 1);
    const r = range(0, 0x1000);
    n.invalidateRangeStart(r);
    expect(n.seq).toBe(3);
    const [s2, rec2] = sub(2, 0, 0xffff);
    n.insert(s2, 0x10000, 1);
    expect(s2.seq).toBe(3);
    expect(s2.pendingInsert).toBe(true);
    expect(n.subscriptions()).not.toContain(s2);
    expect(n.tryReadBegin(s2)).toBeUndefined();
    // a nested invalidation does not reach the deferred subscription
    const r2 = range(0, 0x1000);
    n.invalidateRangeStart(r2);
    n.invalidateRangeEnd(r2);
    expect(rec2.calls).toEqual([]);
    n.invalidateRangeEnd(r);
    expect(n.seq).toBe(4);
    expect(s2.pendingInsert).toBe(false);
    expect(n.subscriptions()).toContain(s2);
    const b = n.tryReadBegin(s2)!;
    expect(b).toBe(3);
    expect(n.readRetry(s2, b)).toBe(false);
    // and from now on it is invalidated like any other
    const r3 = range(0x10, 0x20);
    n.invalidateRangeStart(r3);
    expect(rec2.calls).toEqual([[0x10, 0x20, 5]]);
    n.invalidateRangeEnd(r3);
    expectClean(k);
  });

  it("insert during an active invalidation with seq even makes seq odd and inserts now", () => {
    const { k, n } = fresh();
    const r = range(0, 0x1000); // nobody subscribed: seq stays even
    n.invalidateRangeStart(r);
    expect(n.seq).toBe(2);
    const [s, rec] = sub(1, 0, 0xffff);
    n.insert(s, 0x10000, 1);
    expect(n.seq).toBe(3);
    expect(s.seq).toBe(3);
    expect(n.subscriptions()).toContain(s);
    expect(rec.calls).toEqual([]); // it missed the running invalidation...
    expect(n.tryReadBegin(s)).toBeUndefined(); // ...but its first read_begin waits for its end
    n.invalidateRangeEnd(r);
    expect(n.seq).toBe(4);
    expect(n.tryReadBegin(s)).toBe(3);
    expectClean(k);
  });

  it("remove during an invalidation returns a promise resolved only at the end; no callback after", async () => {
    const { k, n } = fresh();
    const [s, rec] = sub(1, 0, 0xffff);
    n.insert(s, 0x10000, 1);
    const r = range(0, 0x1000);
    n.invalidateRangeStart(r);
    const p = n.remove(s);
    expect(p).not.toBeNull();
    let done = false;
    void p!.then(() => {
      done = true;
    });
    await Promise.resolve();
    await Promise.resolve();
    expect(done).toBe(false);
    n.invalidateRangeEnd(r);
    await p;
    expect(done).toBe(true);
    expect(n.subscriptions()).not.toContain(s);
    const r2 = range(0, 0x1000);
    n.invalidateRangeStart(r2);
    n.invalidateRangeEnd(r2);
    expect(rec.calls).toHaveLength(1);
    expect(n.seq).toBe(4); // the second invalidation hit no subscription
    expectClean(k);
  });

  it("remove with no invalidation running is immediate; remove of a deferred insert just drops it", () => {
    const { k, n } = fresh();
    const [s] = sub(1, 0, 0xffff);
    n.insert(s, 0x10000, 1);
    expect(n.remove(s)).toBeNull();
    expect(n.subscriptions()).toEqual([]);
    const [a] = sub(2, 0, 0xffff);
    n.insert(a, 0x10000, 1);
    const r = range(0, 0x1000);
    n.invalidateRangeStart(r);
    const [b, recb] = sub(3, 0, 0xffff);
    n.insert(b, 0x10000, 1);
    expect(n.remove(b)).toBeNull();
    n.invalidateRangeEnd(r);
    expect(n.subscriptions()).toEqual([a]);
    n.invalidateRangeStart(r);
    n.invalidateRangeEnd(r);
    expect(recb.calls).toEqual([]);
    expectClean(k);
  });

  it("a non-blockable range refused by a subscription: start returns false, active drops, seq is even again, classic not called", () => {
    const { k, n } = fresh();
    const [s, rec] = sub(1, 0, 0xffff, { calls: [], answer: false });
    n.insert(s, 0x10000, 1);
    const classic: string[] = [];
    n.classic.add({ invalidateRangeStart: () => classic.push("start"), invalidateRangeEnd: () => classic.push("end") });
    expect(n.invalidateRangeStart(range(0, 0x1000, false))).toBe(false);
    expect(n.active).toBe(0);
    expect(n.seq).toBe(4);
    expect(rec.calls).toEqual([[0, 0x1000, 3]]);
    expect(classic).toEqual([]);
    // a blockable range whose callback returns false only WARNs: the invalidation proceeds
    const r = range(0, 0x1000, true);
    expect(n.invalidateRangeStart(r)).toBe(true);
    expect(n.active).toBe(1);
    expect(classic).toEqual(["start"]);
    n.invalidateRangeEnd(r);
    expect(n.seq).toBe(6);
    expect(classic).toEqual(["start", "end"]);
    expectClean(k);
  });

  it("insert errors: length 0 or overflow is EOVERFLOW, an mm without users is EINVAL", () => {
    const { k, n } = fresh();
    const [s] = sub(1, 0x1000, 0x1fff);
    expectErrno(() => n.insert(s, 0, 1), Errno.EOVERFLOW);
    const [big] = sub(2, Number.MAX_SAFE_INTEGER - 10, Number.MAX_SAFE_INTEGER);
    expectErrno(() => n.insert(big, 100, 1), Errno.EOVERFLOW);
    expectErrno(() => n.insert(s, 0x1000, 0), Errno.EINVAL);
    expect(n.subscriptions()).toEqual([]);
    expectClean(k);
  });
});

describe("kernel-level invalidations", () => {
  it("Kernel.invalidateStart with a refused non-blockable range returns null and leaves no invalidation active", () => {
    const k = mkKernel();
    const mm = mkMm(k);
    const s = new IntervalSub(1, mm.id, 0, 0xffff_ffff, { invalidate: () => false }, 1);
    mm.notifier.insert(s, 0x1_0000_0000, mm.mmUsers);
    const phases: string[] = [];
    k.invalidationObservers.add((_r, ph) => phases.push(ph));
    expect(k.invalidateStart(mm, 0x1000, 0x2000, MmuNotifyEvent.UNMAP, 0, false)).toBeNull();
    expect(mm.notifier.active).toBe(0);
    expect(mm.notifier.seq % 2).toBe(0);
    expect(phases).toEqual(["start"]);
    expectClean(k);
  });

  it("munmap calls only the overlapping subscriptions, with the UNMAP range and an odd cur_seq", () => {
    const k = mkKernel();
    const mm = mkMm(k);
    const a = mmap(k, mm, 16 * 4096);
    write(k, mm, a, bytes(16 * 4096, 1));
    const got: [number, MmuNotifyEvent, number, number, number][] = [];
    const mk = (id: number, start: number, last: number) => {
      const s = new IntervalSub(id, mm.id, start, last, {
        invalidate(me, r, cur) {
          me.seq = cur;
          got.push([id, r.event, r.start, r.end, cur]);
          return true;
        },
      }, 1);
      mm.notifier.insert(s, last - start + 1, mm.mmUsers);
      return s;
    };
    mk(1, a, a + 4 * 4096 - 1); // pages 0..3
    mk(2, a + 4 * 4096, a + 8 * 4096 - 1); // pages 4..7
    mk(3, a + 12 * 4096, a + 16 * 4096 - 1); // pages 12..15
    doMunmap(k, mm, a + 2 * 4096, 4 * 4096); // pages 2..5
    expect(got).toEqual([
      [1, MmuNotifyEvent.UNMAP, a + 2 * 4096, a + 6 * 4096, 3],
      [2, MmuNotifyEvent.UNMAP, a + 2 * 4096, a + 6 * 4096, 3],
    ]);
    expect(mm.notifier.seq).toBe(4);
    expect(k.vmstat.mmu_interval_callbacks).toBe(2);
    expectClean(k);
  });
});
