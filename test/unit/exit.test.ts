import { describe, expect, it } from "vitest";
import { MAP_HUGETLB, MAP_SHARED, MmuNotifyEvent } from "../../src/mm/constants.js";
import { closeFile, createFile, doMunmap, exitMm, forkMm } from "../../src/mm/mmap.js";
import { IntervalSub, type NotifierRange } from "../../src/mm/mmu-notifier.js";
import { cpuFault } from "../../src/mm/access.js";
import { getFolio } from "../../src/mm/inspect.js";
import { FileKind } from "../../src/mm/vma.js";
import {
  ANON_PRIVATE,
  ANON_SHARED,
  MiB,
  RANGE_END_ALL,
  bytes,
  expectClean,
  mkKernel,
  mkMm,
  mmap,
  pfnAt,
  recordEvents,
  write,
} from "./helpers.js";

describe("exit_mmap", () => {
  it("with an interval subscription: RELEASE then UNMAP, both [0, ULONG_MAX), each seen by the subscription", () => {
    const k = mkKernel();
    const mm = mkMm(k);
    const a = mmap(k, mm, 8 * 4096);
    write(k, mm, a, bytes(16, 1));
    const seen: [MmuNotifyEvent, number, number, number][] = [];
    const sub = new IntervalSub(1, mm.id, a, a + 8 * 4096 - 1, {
      invalidate(s, r: NotifierRange, cur) {
        s.seq = cur;
        seen.push([r.event, r.start, r.end, cur]);
        return true;
      },
    }, 1);
    mm.notifier.insert(sub, 8 * 4096, mm.mmUsers);
    const evs = recordEvents(k);
    exitMm(k, mm);
    expect(evs.map((e) => [e.phase, e.event, e.start, e.end])).toEqual([
      ["start", MmuNotifyEvent.RELEASE, 0, RANGE_END_ALL],
      ["end", MmuNotifyEvent.RELEASE, 0, RANGE_END_ALL],
      ["start", MmuNotifyEvent.UNMAP, 0, RANGE_END_ALL],
      ["end", MmuNotifyEvent.UNMAP, 0, RANGE_END_ALL],
    ]);
    expect(seen).toEqual([
      [MmuNotifyEvent.RELEASE, 0, RANGE_END_ALL, 3],
      [MmuNotifyEvent.UNMAP, 0, RANGE_END_ALL, 5],
    ]);
    expect(mm.notifier.seq).toBe(6);
    expect(mm.notifier.active).toBe(0);
    // the subscription stays registered until its owner removes it
    expect(mm.notifier.subscriptions()).toContain(sub);
    expect(mm.exited).toBe(true);
    expectClean(k);
  });

  it("without notifier subscribers exit emits no event at all", () => {
    const k = mkKernel();
    const mm = mkMm(k);
    const a = mmap(k, mm, 8 * 4096);
    write(k, mm, a, bytes(16, 1));
    const evs = recordEvents(k);
    exitMm(k, mm);
    expect(evs).toEqual([]);
    expectClean(k);
  });

  it("with a classic notifier: the observer sees RELEASE then UNMAP, ->release runs once and the notifier is unlinked", () => {
    const k = mkKernel();
    const mm = mkMm(k);
    mmap(k, mm, 8 * 4096);
    const calls: string[] = [];
    mm.notifier.classic.add({ release: (id) => calls.push(`release:${id}`) });
    const evs = recordEvents(k);
    exitMm(k, mm);
    expect(evs.filter((e) => e.phase === "start").map((e) => [e.event, e.start, e.end])).toEqual([
      [MmuNotifyEvent.RELEASE, 0, RANGE_END_ALL],
      [MmuNotifyEvent.UNMAP, 0, RANGE_END_ALL],
    ]);
    expect(calls).toEqual([`release:${mm.id}`]);
    expect(mm.notifier.classic.size).toBe(0);
    expectClean(k);
  });

  it("a classic notifier sees only ->release at exit (no RELEASE or UNMAP range callbacks) (spec 7.2, 7.4)", () => {
    const k = mkKernel();
    const mm = mkMm(k);
    const a = mmap(k, mm, 8 * 4096);
    write(k, mm, a, bytes(16, 1));
    const calls: string[] = [];
    mm.notifier.classic.add({
      invalidateRangeStart: (r) => calls.push(`start:${MmuNotifyEvent[r.event]}`),
      invalidateRangeEnd: (r) => calls.push(`end:${MmuNotifyEvent[r.event]}`),
      release: () => calls.push("release"),
    });
    exitMm(k, mm);
    expect(calls).toEqual(["release"]);
    expectClean(k);
  });

  it("a classic notifier sees range start/end of ordinary invalidations while attached", () => {
    const k = mkKernel();
    const mm = mkMm(k);
    const a = mmap(k, mm, 8 * 4096);
    const calls: string[] = [];
    mm.notifier.classic.add({
      invalidateRangeStart: (r) => calls.push(`start:${MmuNotifyEvent[r.event]}:${r.start - a}:${r.end - a}`),
      invalidateRangeEnd: (r) => calls.push(`end:${MmuNotifyEvent[r.event]}:${r.start - a}:${r.end - a}`),
    });
    doMunmap(k, mm, a + 4096, 4096);
    expect(calls).toEqual(["start:UNMAP:4096:8192", "end:UNMAP:4096:8192"]);
    expectClean(k);
  });

  it("everything is freed: free pages return to the start value minus the huge zero folio; tables and data released", () => {
    const k = mkKernel();
    const free0 = k.phys.totalFreePages();
    const tables0 = k.pt.live;
    const parent = mkMm(k);
    // small anon pages, a THP, a huge zero PMD, shmem, hugetlb, a memfd file
    const a = mmap(k, parent, 16 * 4096);
    write(k, parent, a, bytes(16 * 4096, 1));
    const t = mmap(k, parent, 4 * MiB);
    write(k, parent, t, bytes(4096, 2));
    cpuFault(k, parent, t + 2 * MiB, "read", 0, true);
    const s = mmap(k, parent, 8 * 4096, { flags: ANON_SHARED });
    write(k, parent, s, bytes(8 * 4096, 3));
    const h = mmap(k, parent, 2 * MiB, { flags: ANON_PRIVATE | MAP_HUGETLB });
    write(k, parent, h, bytes(64, 4));
    const f = createFile(k, { name: "memfd", sizeBytes: 8 * 4096, kind: FileKind.SHMEM, hugePageSize: 0, pgmapId: 0 }, 1);
    const m = mmap(k, parent, 8 * 4096, { flags: MAP_SHARED, fileId: f.id });
    write(k, parent, m, bytes(8 * 4096, 5));
    const child = forkMm(k, parent, "child", 1);
    write(k, child, a, bytes(4096, 6)); // a COW copy owned by the child
    const hz = k.phys.hugeZeroPfn;
    expect(hz).toBeGreaterThanOrEqual(0);
    expect(getFolio(k, hz).refcount).toBe(3); // allocation + parent + child
    expect(k.phys.totalFreePages()).toBeLessThan(free0);
    exitMm(k, parent);
    expectClean(k);
    exitMm(k, child);
    expect(getFolio(k, hz).refcount).toBe(1);
    // the memfd file still holds its page cache until closed
    expect(k.phys.totalFreePages()).toBe(free0 - 512 - 8);
    closeFile(k, f);
    expect(k.phys.totalFreePages()).toBe(free0 - 512);
    expect(k.files.size).toBe(0);
    expect(k.pt.live).toBe(tables0);
    expect(k.phys.data.inUse).toBe(0);
    expect(k.anonVmas.size).toBe(0);
    expectClean(k);
  });

  it("pages of an exited mm that another mm still maps survive with the other mapping's counts", () => {
    const k = mkKernel();
    const parent = mkMm(k);
    const a = mmap(k, parent, 4 * 4096);
    write(k, parent, a, bytes(4 * 4096, 1));
    const p = pfnAt(k, parent, a);
    const child = forkMm(k, parent, "child", 1);
    exitMm(k, parent);
    const fi = getFolio(k, p);
    expect(fi.free).toBe(false);
    expect(fi.refcount).toBe(1);
    expect(fi.mapcount).toBe(1);
    expect(pfnAt(k, child, a)).toBe(p);
    expectClean(k);
  });
});
