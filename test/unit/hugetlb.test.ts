import { describe, expect, it } from "vitest";
import {
  MADV_DONTNEED,
  MAP_HUGETLB,
  MAP_HUGE_1GB,
  MAP_PRIVATE,
  MAP_SHARED,
  MmuNotifyEvent,
  VM_FAULT_OOM,
  VM_FAULT_SIGBUS,
} from "../../src/mm/constants.js";
import { writeMemory } from "../../src/mm/access.js";
import { Errno } from "../../src/mm/errors.js";
import { createFile, doMadvise, doMunmap, exitMm, forkMm } from "../../src/mm/mmap.js";
import { getFolio } from "../../src/mm/inspect.js";
import { FileKind } from "../../src/mm/vma.js";
import {
  ANON_PRIVATE,
  GiB,
  Level,
  MiB,
  bytes,
  ev,
  expectClean,
  expectErrno,
  mkKernel,
  mkMm,
  mmap,
  pfnAt,
  read,
  recordEvents,
  runAt,
  starts,
  write,
} from "./helpers.js";

describe("private anonymous hugetlb", () => {
  it("fork of a private hugetlb VMA: CLEAR (not PROTECTION_PAGE) over the VMA, folio shared, child write copies the huge page", () => {
    const k = mkKernel();
    const parent = mkMm(k);
    const a = mmap(k, parent, 4 * MiB, { flags: ANON_PRIVATE | MAP_HUGETLB });
    write(k, parent, a + MiB, bytes(64, 1));
    const head = runAt(k, parent, a)!.pfn;
    const evs = recordEvents(k);
    const child = forkMm(k, parent, "child", 1);
    expect(starts(evs)).toEqual([ev(MmuNotifyEvent.CLEAR, a, a + 4 * MiB, parent.id)]);
    const f = getFolio(k, head);
    expect(f.refcount).toBe(2);
    expect(f.mapcount).toBe(2);
    expect(f.anonExclusive).toBe(false);
    expect(runAt(k, parent, a)!.write).toBe(false);
    expect(runAt(k, child, a)!.pfn).toBe(head);
    expect(read(k, child, a + MiB, 64)).toEqual(bytes(64, 1));
    write(k, child, a + 2, bytes(2, 9));
    const nh = runAt(k, child, a)!.pfn;
    expect(nh).not.toBe(head);
    expect(getFolio(k, nh).hugetlb).toBe(true);
    expect(getFolio(k, nh).order).toBe(9);
    expect(getFolio(k, nh).anonExclusive).toBe(true);
    expect(read(k, child, a + MiB, 64)).toEqual(bytes(64, 1));
    expect(read(k, parent, a, 4)).toEqual(new Uint8Array(4));
    expect(getFolio(k, head).refcount).toBe(1);
    expect(child.hugetlbPages).toBe(512);
    // the parent's write now reuses (sole reference)
    write(k, parent, a, bytes(4, 3));
    expect(runAt(k, parent, a)!.pfn).toBe(head);
    expect(runAt(k, parent, a)!.write).toBe(true);
    expectClean(k);
  });

  it("MADV_DONTNEED of a huge page drops it (CLEAR, folio freed); partial huge page ranges are ignored", () => {
    const k = mkKernel();
    const mm = mkMm(k);
    const a = mmap(k, mm, 4 * MiB, { flags: ANON_PRIVATE | MAP_HUGETLB });
    write(k, mm, a, bytes(8, 1));
    write(k, mm, a + 2 * MiB, bytes(8, 1));
    const h0 = runAt(k, mm, a)!.pfn;
    const evs = recordEvents(k);
    doMadvise(k, mm, a, 3 * MiB, MADV_DONTNEED);
    expect(starts(evs)).toEqual([ev(MmuNotifyEvent.CLEAR, a, a + 2 * MiB, mm.id)]);
    expect(getFolio(k, h0).free).toBe(true);
    expect(runAt(k, mm, a + 2 * MiB)!.level).toBe(Level.PMD);
    expect(mm.hugetlbPages).toBe(512);
    expectClean(k);
  });

  it("a 1 GiB hugetlb fault needs a free aligned GiB: the fault fails (OOM/SIGBUS) when none is left; freed at munmap", () => {
    const k = mkKernel({ phys: { ramBytes: 2 * GiB } });
    const mm = mkMm(k);
    const a = mmap(k, mm, 2 * GiB, { flags: ANON_PRIVATE | MAP_HUGETLB | MAP_HUGE_1GB });
    // GiB 0 holds the zero page: only one gigantic folio fits
    write(k, mm, a, bytes(8, 1));
    expect(runAt(k, mm, a)!.level).toBe(Level.PUD);
    expect(getMeminfoGigantic(k)).toBe(1);
    const w = writeMemory(k, mm, a + GiB, bytes(8, 1));
    expect(w.bytesDone).toBe(0);
    expect(w.vmFault & (VM_FAULT_OOM | VM_FAULT_SIGBUS)).not.toBe(0);
    expect(runAt(k, mm, a + GiB)).toBeUndefined();
    doMunmap(k, mm, a, 2 * GiB);
    expect(getMeminfoGigantic(k)).toBe(0);
    expectClean(k);
  });
});

describe("hugetlbfs files", () => {
  it("a hugetlbfs file mapped MAP_SHARED in two mms shares one folio; writes are visible both ways", () => {
    const k = mkKernel();
    const m1 = mkMm(k, "a");
    const m2 = mkMm(k, "b");
    const f = createFile(k, { name: "huge", sizeBytes: 4 * MiB, kind: FileKind.HUGETLB, hugePageSize: 2 * MiB, pgmapId: 0 }, 1);
    const a1 = mmap(k, m1, 4 * MiB, { flags: MAP_SHARED, fileId: f.id });
    const a2 = mmap(k, m2, 2 * MiB, { flags: MAP_SHARED, fileId: f.id, offset: 2 * MiB });
    expect(a1 % (2 * MiB)).toBe(0);
    expect(a2 % (2 * MiB)).toBe(0);
    write(k, m1, a1 + 2 * MiB + 100, bytes(50, 1));
    const head = runAt(k, m1, a1 + 2 * MiB)!.pfn;
    const ref1 = getFolio(k, head).refcount;
    expect(read(k, m2, a2 + 100, 50)).toEqual(bytes(50, 1));
    expect(runAt(k, m2, a2)!.pfn).toBe(head);
    expect(runAt(k, m2, a2)!.level).toBe(Level.PMD);
    const fi = getFolio(k, head);
    expect(fi.refcount).toBe(ref1 + 1);
    expect(fi.mapcount).toBe(2);
    expect(fi.hugetlb).toBe(true);
    expect(fi.fileId).toBe(f.id);
    write(k, m2, a2, bytes(4, 2));
    expect(read(k, m1, a1 + 2 * MiB, 4)).toEqual(bytes(4, 2));
    expect(m1.hugetlbPages).toBe(512);
    expect(m2.hugetlbPages).toBe(512);
    exitMm(k, m2);
    expect(getFolio(k, head).refcount).toBe(ref1);
    expect(getFolio(k, head).mapcount).toBe(1);
    expectClean(k);
  });

  it("a MAP_PRIVATE mapping of a hugetlbfs file copies on write; the file keeps its data", () => {
    const k = mkKernel();
    const m1 = mkMm(k);
    const f = createFile(k, { name: "huge", sizeBytes: 2 * MiB, kind: FileKind.HUGETLB, hugePageSize: 0, pgmapId: 0 }, 1);
    const s = mmap(k, m1, 2 * MiB, { flags: MAP_SHARED, fileId: f.id });
    write(k, m1, s, bytes(16, 1));
    const p = mmap(k, m1, 2 * MiB, { flags: MAP_PRIVATE, fileId: f.id });
    expect(read(k, m1, p, 16)).toEqual(bytes(16, 1));
    expect(pfnAt(k, m1, p)).toBe(pfnAt(k, m1, s));
    write(k, m1, p, bytes(4, 7));
    expect(pfnAt(k, m1, p)).not.toBe(pfnAt(k, m1, s));
    expect(read(k, m1, s, 4)).toEqual(bytes(16, 1).subarray(0, 4));
    expect(read(k, m1, p, 4)).toEqual(bytes(4, 7));
    expectClean(k);
  });

  it("hugetlbfs files must be sized in huge pages; MAP_HUGETLB with an unsupported size is EINVAL", () => {
    const k = mkKernel();
    const mm = mkMm(k);
    expectErrno(
      () => createFile(k, { name: "h", sizeBytes: 3 * MiB, kind: FileKind.HUGETLB, hugePageSize: 2 * MiB, pgmapId: 0 }, 1),
      Errno.EINVAL,
    );
    expectErrno(() => mmap(k, mm, 4 * MiB, { flags: ANON_PRIVATE | MAP_HUGETLB | (22 << 26) }), Errno.EINVAL);
    expect(mm.mapCount).toBe(0);
    expectClean(k);
  });
});

function getMeminfoGigantic(k: ReturnType<typeof mkKernel>): number {
  return k.phys.stats.giganticInUse;
}

