import { describe, expect, it } from "vitest";
import {
  MADV_DOFORK,
  MADV_DONTFORK,
  MADV_WIPEONFORK,
  MAP_FIXED_NOREPLACE,
  MAP_PRIVATE,
  MAP_SHARED,
  MmuNotifyEvent,
  PROT_READ,
  VM_WIPEONFORK,
} from "../../src/mm/constants.js";
import { Errno } from "../../src/mm/errors.js";
import { cpuFault, SEGV_MAPERR } from "../../src/mm/access.js";
import { createFile, doMadvise, doMprotect, exitMm, forkMm } from "../../src/mm/mmap.js";
import { FileKind } from "../../src/mm/vma.js";
import { getFolio } from "../../src/mm/inspect.js";
import {
  ANON_PRIVATE,
  ANON_SHARED,
  EntryKind,
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
  runs,
  starts,
  write,
} from "./helpers.js";

const BASE = 0x30_0000_0000;

describe("COW of small anonymous pages across fork", () => {
  it("shares pages read-only after fork, copies on the child's write, leaves the parent untouched", () => {
    const k = mkKernel();
    const parent = mkMm(k);
    const a = mmap(k, parent, 4 * 4096);
    for (let i = 0; i < 4; i++) write(k, parent, a + i * 4096, bytes(4096, i));
    const pfns = [0, 1, 2, 3].map((i) => pfnAt(k, parent, a + i * 4096));
    const child = forkMm(k, parent, "child", 1);
    for (let i = 0; i < 4; i++) {
      const f = getFolio(k, pfns[i]!);
      expect(f.refcount).toBe(2);
      expect(f.mapcount).toBe(2);
      expect(f.anonExclusive).toBe(false);
      expect(pfnAt(k, child, a + i * 4096)).toBe(pfns[i]);
    }
    for (const mm of [parent, child]) for (const r of runs(k, mm, a, a + 4 * 4096)) expect(r.write).toBe(false);
    expect(parent.rssAnon).toBe(4);
    expect(child.rssAnon).toBe(4);
    // the child reads the parent's bytes without faulting anything new
    for (let i = 0; i < 4; i++) expect(read(k, child, a + i * 4096, 4096)).toEqual(bytes(4096, i));
    const evs = recordEvents(k);
    write(k, child, a + 4096 + 10, bytes(5, 77));
    // wp_page_copy: one CLEAR of that single page, on the child's mm
    expect(starts(evs)).toEqual([ev(MmuNotifyEvent.CLEAR, a + 4096, a + 2 * 4096, child.id)]);
    const np = pfnAt(k, child, a + 4096);
    expect(np).not.toBe(pfns[1]);
    const nf = getFolio(k, np);
    expect(nf.refcount).toBe(1);
    expect(nf.mapcount).toBe(1);
    expect(nf.anonExclusive).toBe(true);
    expect(runAt(k, child, a + 4096)!.write).toBe(true);
    const old = getFolio(k, pfns[1]!);
    expect(old.refcount).toBe(1);
    expect(old.mapcount).toBe(1);
    // copy has the old contents plus the child's write
    const want = bytes(4096, 1);
    want.set(bytes(5, 77), 10);
    expect(read(k, child, a + 4096, 4096)).toEqual(want);
    expect(read(k, parent, a + 4096, 4096)).toEqual(bytes(4096, 1));
    expect(pfnAt(k, parent, a + 4096)).toBe(pfns[1]);
    expect(k.vmstat.cow_faults).toBe(1);
    expectClean(k);
  });

  it("the parent's later write to the page the child copied away reuses it (refcount 1): no copy, no event", () => {
    const k = mkKernel();
    const parent = mkMm(k);
    const a = mmap(k, parent, 2 * 4096);
    write(k, parent, a, bytes(64, 1));
    const p0 = pfnAt(k, parent, a);
    const child = forkMm(k, parent, "child", 1);
    write(k, child, a, bytes(4, 2));
    const evs = recordEvents(k);
    const reuse0 = k.vmstat.wp_reuse;
    write(k, parent, a, bytes(4, 3));
    expect(evs).toEqual([]);
    expect(pfnAt(k, parent, a)).toBe(p0);
    expect(k.vmstat.wp_reuse).toBe(reuse0 + 1);
    expect(getFolio(k, p0).anonExclusive).toBe(true);
    expect(runAt(k, parent, a)!.write).toBe(true);
    expectClean(k);
  });

  it("after the child exited the parent reuses its pages (refcount 1 → reuse, no copy)", () => {
    const k = mkKernel();
    const parent = mkMm(k);
    const a = mmap(k, parent, 4 * 4096);
    write(k, parent, a, bytes(4 * 4096, 5));
    const pfns = [0, 1, 2, 3].map((i) => pfnAt(k, parent, a + i * 4096));
    const child = forkMm(k, parent, "child", 1);
    exitMm(k, child);
    for (const p of pfns) {
      expect(getFolio(k, p).refcount).toBe(1);
      expect(getFolio(k, p).anonExclusive).toBe(false);
    }
    const evs = recordEvents(k);
    const free0 = k.phys.totalFreePages();
    write(k, parent, a, bytes(4 * 4096, 6));
    expect(evs).toEqual([]);
    expect(k.phys.totalFreePages()).toBe(free0);
    for (let i = 0; i < 4; i++) {
      expect(pfnAt(k, parent, a + i * 4096)).toBe(pfns[i]);
      expect(getFolio(k, pfns[i]!).anonExclusive).toBe(true);
    }
    expect(k.vmstat.cow_faults).toBe(0);
    expectClean(k);
  });

  it("fork write-protects with one PROTECTION_PAGE per copied COW VMA of the parent, and bumps write_protect_seq", () => {
    const k = mkKernel();
    const parent = mkMm(k);
    const a = mmap(k, parent, 8 * 4096, { addr: BASE, flags: ANON_PRIVATE | MAP_FIXED_NOREPLACE });
    const b = mmap(k, parent, 4 * 4096, { addr: BASE + 64 * 4096, flags: ANON_PRIVATE | MAP_FIXED_NOREPLACE });
    const untouched = mmap(k, parent, 4 * 4096, { addr: BASE + 128 * 4096, flags: ANON_PRIVATE | MAP_FIXED_NOREPLACE });
    const shm = mmap(k, parent, 4 * 4096, { addr: BASE + 192 * 4096, flags: ANON_SHARED | MAP_FIXED_NOREPLACE });
    write(k, parent, a + 4096, bytes(8, 1));
    write(k, parent, b, bytes(8, 2));
    write(k, parent, shm, bytes(8, 3));
    const evs = recordEvents(k);
    const wps0 = parent.writeProtectSeq;
    const child = forkMm(k, parent, "child", 1);
    expect(starts(evs)).toEqual([
      ev(MmuNotifyEvent.PROTECTION_PAGE, a, a + 8 * 4096, parent.id),
      ev(MmuNotifyEvent.PROTECTION_PAGE, b, b + 4 * 4096, parent.id),
    ]);
    expect(evs.map((e) => e.phase)).toEqual(["start", "end", "start", "end"]);
    expect(parent.writeProtectSeq).toBe(wps0 + 2);
    expect(child.mapCount).toBe(4);
    expect(runs(k, child, untouched, untouched + 4 * 4096)).toEqual([]);
    expect(runs(k, child, shm, shm + 4 * 4096)).toEqual([]);
    expectClean(k);
  });

  it("a VMA that only took zero-page read faults is not copied at fork (no anon_vma); the child refaults zero pages", () => {
    const k = mkKernel();
    const parent = mkMm(k);
    const a = mmap(k, parent, 8 * 4096);
    for (let i = 0; i < 8; i++) cpuFault(k, parent, a + i * 4096, "read", 0, true);
    expect(runs(k, parent, a, a + 8 * 4096)[0]!.kind).toBe(EntryKind.ZERO_PAGE);
    expect(parent.findVma(a)!.anonVma).toBeNull();
    const evs = recordEvents(k);
    const child = forkMm(k, parent, "child", 1);
    expect(evs).toEqual([]);
    expect(child.findVma(a)).toBeDefined();
    expect(runs(k, child, a, a + 8 * 4096)).toEqual([]);
    expect(read(k, child, a, 8)).toEqual(new Uint8Array(8));
    expect(runAt(k, child, a)!.kind).toBe(EntryKind.ZERO_PAGE);
    // parent entries unchanged
    expect(runs(k, parent, a, a + 8 * 4096)).toHaveLength(1);
    expectClean(k);
  });

  it("a huge-zero read fault does create the anon_vma: the child inherits the huge zero PMD", () => {
    const k = mkKernel();
    const parent = mkMm(k);
    const a = mmap(k, parent, 2 * MiB);
    cpuFault(k, parent, a, "read", 0, true);
    expect(parent.findVma(a)!.anonVma).not.toBeNull();
    const evs = recordEvents(k);
    const child = forkMm(k, parent, "child", 1);
    expect(starts(evs)).toEqual([ev(MmuNotifyEvent.PROTECTION_PAGE, a, a + 2 * MiB, parent.id)]);
    const r = runAt(k, child, a)!;
    expect(r.kind).toBe(EntryKind.HUGE_ZERO);
    expect(r.level).toBe(Level.PMD);
    expect(r.write).toBe(false);
    expectClean(k);
  });
});

describe("MADV_DONTFORK / MADV_WIPEONFORK", () => {
  it("MADV_DONTFORK: the child has no VMA there; MADV_DOFORK undoes it", () => {
    const k = mkKernel();
    const parent = mkMm(k);
    const a = mmap(k, parent, 8 * 4096);
    write(k, parent, a, bytes(8 * 4096, 1));
    doMadvise(k, parent, a + 2 * 4096, 2 * 4096, MADV_DONTFORK);
    expect(parent.mapCount).toBe(3);
    const evs = recordEvents(k);
    const child = forkMm(k, parent, "child", 1);
    // two COW VMAs copied, the DONTFORK one skipped
    expect(starts(evs).map((e) => [e[0], e[1], e[2]])).toEqual([
      [MmuNotifyEvent.PROTECTION_PAGE, a, a + 2 * 4096],
      [MmuNotifyEvent.PROTECTION_PAGE, a + 4 * 4096, a + 8 * 4096],
    ]);
    expect(child.findVma(a + 2 * 4096)).toBeUndefined();
    expect(cpuFault(k, child, a + 3 * 4096, "read", 0, true).siCode).toBe(SEGV_MAPERR);
    expect(read(k, child, a, 4096)).toEqual(bytes(8 * 4096, 1).subarray(0, 4096));
    // pages of the DONTFORK range stay exclusive to the parent
    const p2 = pfnAt(k, parent, a + 2 * 4096);
    expect(getFolio(k, p2).refcount).toBe(1);
    expect(getFolio(k, p2).anonExclusive).toBe(true);
    expect(runAt(k, parent, a + 2 * 4096)!.write).toBe(true);
    doMadvise(k, parent, a, 8 * 4096, MADV_DOFORK);
    expect(parent.mapCount).toBe(1);
    const child2 = forkMm(k, parent, "child2", 1);
    expect(read(k, child2, a + 2 * 4096, 4096)).toEqual(bytes(8 * 4096, 1).subarray(2 * 4096, 3 * 4096));
    expectClean(k);
  });

  it("MADV_WIPEONFORK: the child gets an empty anonymous VMA (zeros); the parent keeps its exclusive pages", () => {
    const k = mkKernel();
    const parent = mkMm(k);
    const a = mmap(k, parent, 4 * 4096);
    write(k, parent, a, bytes(4 * 4096, 4));
    doMadvise(k, parent, a, 4 * 4096, MADV_WIPEONFORK);
    const pfns = [0, 1, 2, 3].map((i) => pfnAt(k, parent, a + i * 4096));
    const evs = recordEvents(k);
    const child = forkMm(k, parent, "child", 1);
    expect(evs).toEqual([]);
    const cv = child.findVma(a)!;
    expect(cv.start).toBe(a);
    expect(cv.end).toBe(a + 4 * 4096);
    expect(cv.flags & VM_WIPEONFORK).toBe(VM_WIPEONFORK);
    expect(runs(k, child, a, a + 4 * 4096)).toEqual([]);
    expect(read(k, child, a, 4 * 4096)).toEqual(new Uint8Array(4 * 4096));
    for (const p of pfns) {
      expect(getFolio(k, p).refcount).toBe(1);
      expect(getFolio(k, p).mapcount).toBe(1);
      expect(getFolio(k, p).anonExclusive).toBe(true);
    }
    for (const r of runs(k, parent, a, a + 4 * 4096)) expect(r.write).toBe(true);
    expect(read(k, parent, a, 4 * 4096)).toEqual(bytes(4 * 4096, 4));
    // the child's writes do not reach the parent
    write(k, child, a, bytes(16, 9));
    expect(read(k, parent, a, 16)).toEqual(bytes(4 * 4096, 4).subarray(0, 16));
    expectClean(k);
  });

  it("MADV_WIPEONFORK on a shared mapping is EINVAL", () => {
    const k = mkKernel();
    const mm = mkMm(k);
    const a = mmap(k, mm, 4 * 4096, { flags: ANON_SHARED });
    expectErrno(() => doMadvise(k, mm, a, 4 * 4096, MADV_WIPEONFORK), Errno.EINVAL);
    expect(mm.findVma(a)!.flags & VM_WIPEONFORK).toBe(0);
    expectClean(k);
  });
});

describe("COW of anonymous THPs across fork (spec 3.5 observed behaviour)", () => {
  function setup() {
    const k = mkKernel();
    const parent = mkMm(k);
    const a = mmap(k, parent, 2 * MiB);
    write(k, parent, a, bytes(2 * MiB, 1));
    const r = runAt(k, parent, a)!;
    expect(r.level).toBe(Level.PMD);
    return { k, parent, a, head: r.pfn };
  }

  it("fork shares the PMD: refcount 2, mapcount 2, entire mapcount 2, not AnonExclusive, both read-only", () => {
    const { k, parent, a, head } = setup();
    const child = forkMm(k, parent, "child", 1);
    const c = runAt(k, child, a)!;
    expect(c.level).toBe(Level.PMD);
    expect(c.pfn).toBe(head);
    expect(c.write).toBe(false);
    expect(runAt(k, parent, a)!.write).toBe(false);
    const f = getFolio(k, head);
    expect(f.refcount).toBe(2);
    expect(f.mapcount).toBe(2);
    expect(f.entireMapcount).toBe(2);
    expect(f.anonExclusive).toBe(false);
    expect(k.vmstat.nr_anon_transparent_hugepages).toBe(1);
    expect(child.rssAnon).toBe(512);
    expect(read(k, child, a + MiB, 4096)).toEqual(bytes(2 * MiB, 1).subarray(MiB, MiB + 4096));
    expectClean(k);
  });

  it("the child's write splits only the child's PMD and copies only the written 4 KiB page", () => {
    const { k, parent, a, head } = setup();
    const child = forkMm(k, parent, "child", 1);
    const evs = recordEvents(k);
    const split0 = k.vmstat.thp_split_pmd;
    const off = 300 * 4096;
    write(k, child, a + off + 1, bytes(3, 9));
    expect(starts(evs)).toEqual([
      ev(MmuNotifyEvent.CLEAR, a, a + 2 * MiB, child.id),
      ev(MmuNotifyEvent.CLEAR, a + off, a + off + 4096, child.id),
    ]);
    expect(k.vmstat.thp_split_pmd).toBe(split0 + 1);
    // parent keeps its PMD
    expect(runAt(k, parent, a)!.level).toBe(Level.PMD);
    // child: 511 PTEs on the parent's subpages, one private copy
    const cr = runs(k, child, a, a + 2 * MiB);
    expect(cr.every((r) => r.level === Level.PTE)).toBe(true);
    expect(cr.reduce((n, r) => n + r.nr, 0)).toBe(512);
    for (let i = 0; i < 512; i += 37) if (i !== 300) expect(pfnAt(k, child, a + i * 4096)).toBe(head + i);
    const np = pfnAt(k, child, a + off);
    expect(np).not.toBe(head + 300);
    expect(getFolio(k, np).order).toBe(0);
    expect(getFolio(k, np).anonExclusive).toBe(true);
    const f = getFolio(k, head);
    expect(f.order).toBe(9);
    expect(f.refcount).toBe(512); // parent PMD + 511 child PTEs
    expect(f.mapcount).toBe(512);
    expect(f.entireMapcount).toBe(1);
    expect(child.rssAnon).toBe(512);
    expect(k.vmstat.nr_anon_transparent_hugepages).toBe(1);
    const want = bytes(2 * MiB, 1).slice(off, off + 4096);
    want.set(bytes(3, 9), 1);
    expect(read(k, child, a + off, 4096)).toEqual(want);
    expect(read(k, parent, a + off, 4096)).toEqual(bytes(2 * MiB, 1).subarray(off, off + 4096));
    // the parent's write now splits its PMD and copies likewise
    evs.length = 0;
    write(k, parent, a + 4096, bytes(2, 4));
    expect(starts(evs)).toEqual([
      ev(MmuNotifyEvent.CLEAR, a, a + 2 * MiB, parent.id),
      ev(MmuNotifyEvent.CLEAR, a + 4096, a + 2 * 4096, parent.id),
    ]);
    expect(runAt(k, parent, a)!.level).toBe(Level.PTE);
    expect(pfnAt(k, parent, a + 4096)).not.toBe(head + 1);
    expect(pfnAt(k, parent, a)).toBe(head);
    expect(k.vmstat.nr_anon_transparent_hugepages).toBe(0);
    expectClean(k);
  });

  it("once the child is gone, a parent write reuses the PMD", () => {
    const { k, parent, a, head } = setup();
    const child = forkMm(k, parent, "child", 1);
    exitMm(k, child);
    expect(getFolio(k, head).refcount).toBe(1);
    const evs = recordEvents(k);
    const reuse0 = k.vmstat.wp_reuse;
    write(k, parent, a + MiB, bytes(4, 1));
    expect(evs).toEqual([]);
    const r = runAt(k, parent, a)!;
    expect(r.level).toBe(Level.PMD);
    expect(r.pfn).toBe(head);
    expect(r.write).toBe(true);
    expect(r.anonExclusive).toBe(true);
    expect(k.vmstat.wp_reuse).toBe(reuse0 + 1);
    expectClean(k);
  });
});

describe("fork of read-only and special mappings", () => {
  it("a PROT_READ private anon VMA with pages is still a COW mapping: PROTECTION_PAGE and sharing", () => {
    const k = mkKernel();
    const parent = mkMm(k);
    const a = mmap(k, parent, 4 * 4096);
    write(k, parent, a, bytes(16, 1));
    doMprotect(k, parent, a, 4 * 4096, PROT_READ);
    const evs = recordEvents(k);
    const child = forkMm(k, parent, "child", 1);
    expect(starts(evs)).toEqual([ev(MmuNotifyEvent.PROTECTION_PAGE, a, a + 4 * 4096, parent.id)]);
    const p = pfnAt(k, parent, a);
    expect(pfnAt(k, child, a)).toBe(p);
    expect(getFolio(k, p).refcount).toBe(2);
    expect(getFolio(k, p).anonExclusive).toBe(false);
    expectClean(k);
  });

  it("PFNMAP entries are copied verbatim (no event: not a COW mapping), special and writable in both", () => {
    const k = mkKernel();
    const parent = mkMm(k);
    const bar = k.phys.registerPfnRange("bar", 64, 1);
    const a = mmap(k, parent, 16 * 4096, {
      flags: MAP_SHARED,
      device: { kind: "pfnmap", pfnRangeId: bar.id, basePfn: bar.startPfn, hugeFault: false },
    });
    cpuFault(k, parent, a + 4096, "read", 0, true);
    const evs = recordEvents(k);
    const child = forkMm(k, parent, "child", 1);
    expect(evs).toEqual([]);
    const r = runAt(k, child, a + 4096)!;
    expect(r.kind).toBe(EntryKind.SPECIAL);
    expect(r.pfn).toBe(bar.startPfn + 1);
    expect(r.write).toBe(true);
    expect(runAt(k, parent, a + 4096)!.write).toBe(true);
    expectClean(k);
  });
});


describe("COW of private file mappings (spec 3.4, 3.5)", () => {
  it("read maps the page-cache page read-only; a later write copies it (CLEAR one page) and drops the file mapping", () => {
    const k = mkKernel();
    const mm = mkMm(k);
    const f = createFile(k, { name: "memfd", sizeBytes: 8 * 4096, kind: FileKind.SHMEM, hugePageSize: 0, pgmapId: 0 }, 1);
    const s = mmap(k, mm, 8 * 4096, { flags: MAP_SHARED, fileId: f.id });
    write(k, mm, s + 4096, bytes(4096, 1));
    const cachePfn = pfnAt(k, mm, s + 4096);
    const p = mmap(k, mm, 8 * 4096, { flags: MAP_PRIVATE, fileId: f.id });
    expect(read(k, mm, p + 4096, 4096)).toEqual(bytes(4096, 1));
    expect(pfnAt(k, mm, p + 4096)).toBe(cachePfn);
    expect(runAt(k, mm, p + 4096)!.write).toBe(false);
    expect(getFolio(k, cachePfn).mapcount).toBe(2);
    expect(mm.rssShmem).toBe(2);
    const evs = recordEvents(k);
    write(k, mm, p + 4096 + 8, bytes(4, 2));
    expect(starts(evs)).toEqual([ev(MmuNotifyEvent.CLEAR, p + 4096, p + 2 * 4096, mm.id)]);
    const np = pfnAt(k, mm, p + 4096);
    expect(np).not.toBe(cachePfn);
    expect(getFolio(k, np).anon).toBe(true);
    expect(getFolio(k, np).anonExclusive).toBe(true);
    expect(getFolio(k, cachePfn).mapcount).toBe(1);
    expect(getFolio(k, cachePfn).refcount).toBe(2); // page cache + the shared mapping
    expect(mm.rssShmem).toBe(1);
    expect(mm.rssAnon).toBe(1);
    const want = bytes(4096, 1);
    want.set(bytes(4, 2), 8);
    expect(read(k, mm, p + 4096, 4096)).toEqual(want);
    expect(read(k, mm, s + 4096, 4096)).toEqual(bytes(4096, 1));
    expectClean(k);
  });
});
