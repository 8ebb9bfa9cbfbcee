import { describe, expect, it } from "vitest";
import {
  Errno,
} from "../../src/mm/errors.js";
import {
  MAP_ANONYMOUS,
  MAP_FIXED,
  MAP_FIXED_NOREPLACE,
  MAP_HUGETLB,
  MAP_HUGE_1GB,
  MAP_HUGE_2MB,
  MAP_POPULATE,
  MAP_PRIVATE,
  MAP_SHARED,
  MmuNotifyEvent,
  PROT_READ,
  VM_HUGETLB,
  VM_MAYSHARE,
  VM_SHARED,
} from "../../src/mm/constants.js";
import { createFile, doMunmap, forkMm, resizeFile } from "../../src/mm/mmap.js";
import { FileKind } from "../../src/mm/vma.js";
import { getFolio } from "../../src/mm/inspect.js";
import { SIGBUS, cpuFault } from "../../src/mm/access.js";
import {
  ANON_PRIVATE,
  ANON_SHARED,
  EntryKind,
  GiB,
  Level,
  MiB,
  RW,
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

const FIXED_BASE = 0x10_0000_0000; // 64 GiB, 1 GiB aligned

describe("mmap argument errors", () => {
  it("length 0 is EINVAL", () => {
    const k = mkKernel();
    const mm = mkMm(k);
    expectErrno(() => mmap(k, mm, 0), Errno.EINVAL);
    expect(mm.mapCount).toBe(0);
    expectClean(k);
  });

  it("MAP_FIXED at an address that is not page aligned is EINVAL", () => {
    const k = mkKernel();
    const mm = mkMm(k);
    expectErrno(() => mmap(k, mm, 4096, { addr: FIXED_BASE + 12, flags: ANON_PRIVATE | MAP_FIXED }), Errno.EINVAL);
    expect(mm.mapCount).toBe(0);
    expectClean(k);
  });

  it("unknown flags, or neither MAP_SHARED nor MAP_PRIVATE, are EINVAL", () => {
    const k = mkKernel();
    const mm = mkMm(k);
    expectErrno(() => mmap(k, mm, 4096, { flags: ANON_PRIVATE | 0x200000 }), Errno.EINVAL);
    expectErrno(() => mmap(k, mm, 4096, { flags: MAP_ANONYMOUS }), Errno.EINVAL);
    expect(mm.mapCount).toBe(0);
    expectClean(k);
  });

  it("MAP_FIXED_NOREPLACE over an existing mapping is EEXIST and changes nothing", () => {
    const k = mkKernel();
    const mm = mkMm(k);
    const a = mmap(k, mm, 16 * 4096, { addr: FIXED_BASE, flags: ANON_PRIVATE | MAP_FIXED_NOREPLACE });
    expect(a).toBe(FIXED_BASE);
    write(k, mm, a, bytes(4096, 3));
    const evs = recordEvents(k);
    expectErrno(() => mmap(k, mm, 4096, { addr: a + 8 * 4096, flags: ANON_PRIVATE | MAP_FIXED_NOREPLACE }), Errno.EEXIST);
    expectErrno(() => mmap(k, mm, 64 * 4096, { addr: a - 4096, flags: ANON_PRIVATE | MAP_FIXED_NOREPLACE }), Errno.EEXIST);
    expect(evs).toEqual([]);
    expect(mm.mapCount).toBe(1);
    expect(read(k, mm, a, 4096)).toEqual(bytes(4096, 3));
    expectClean(k);
  });

  it("vm.max_map_count: mmap fails with ENOMEM once the limit is reached", () => {
    const k = mkKernel({ tunables: { maxMapCount: 4 } });
    const mm = mkMm(k);
    let err = 0;
    // alternate protections so that no two VMAs merge
    for (let i = 0; i < 10 && err === 0; i++) {
      try {
        mmap(k, mm, 4096, { addr: FIXED_BASE + 2 * i * 4096, flags: ANON_PRIVATE | MAP_FIXED_NOREPLACE, prot: i % 2 ? PROT_READ : RW });
      } catch (e) {
        err = (e as { errno: number }).errno;
      }
    }
    expect(err).toBe(Errno.ENOMEM);
    // do_mmap refuses when map_count already exceeds the limit (the kernel may end one above it)
    expect(mm.mapCount).toBeGreaterThanOrEqual(4);
    expect(mm.mapCount).toBeLessThanOrEqual(5);
    expectClean(k);
  });

  it("munmap that would split a VMA in the middle at map_count >= max_map_count is ENOMEM; nothing is zapped (spec 8)", () => {
    const k = mkKernel({ tunables: { maxMapCount: 2 } });
    const mm = mkMm(k);
    const a = mmap(k, mm, 8 * 4096, { addr: FIXED_BASE, flags: ANON_PRIVATE | MAP_FIXED_NOREPLACE });
    const b = mmap(k, mm, 8 * 4096, { addr: FIXED_BASE + GiB, flags: ANON_PRIVATE | MAP_FIXED_NOREPLACE });
    expect(mm.mapCount).toBe(2);
    write(k, mm, a + 3 * 4096, bytes(4096, 9));
    const evs = recordEvents(k);
    expectErrno(() => doMunmap(k, mm, a + 3 * 4096, 4096), Errno.ENOMEM);
    expect(evs.filter((e) => e.event === MmuNotifyEvent.UNMAP)).toEqual([]);
    expect(mm.mapCount).toBe(2);
    expect(read(k, mm, a + 3 * 4096, 4096)).toEqual(bytes(4096, 9));
    // unmapping a whole VMA or an edge needs no new VMA: allowed
    doMunmap(k, mm, b, 4096);
    expect(mm.findVma(b)).toBeUndefined();
    expect(mm.mapCount).toBe(2);
    expectClean(k);
  });
});

describe("placement", () => {
  it("anonymous mappings of 2 MiB multiples are 2 MiB aligned; distinct mappings do not overlap", () => {
    const k = mkKernel();
    const mm = mkMm(k);
    const seen: [number, number][] = [];
    for (const len of [4096, 2 * MiB, 3 * 4096, 4 * MiB, 6 * MiB]) {
      const a = mmap(k, mm, len, { prot: seen.length % 2 ? PROT_READ : RW });
      expect(a % 4096).toBe(0);
      if (len % (2 * MiB) === 0) expect(a % (2 * MiB)).toBe(0);
      for (const [s, e] of seen) expect(a + len <= s || a >= e).toBe(true);
      seen.push([a, a + len]);
    }
    expectClean(k);
  });

  it("a 2 MiB aligned anonymous mapping gets a THP on its first write fault", () => {
    const k = mkKernel();
    const mm = mkMm(k);
    const a = mmap(k, mm, 4 * MiB);
    write(k, mm, a + 5000, bytes(10, 1));
    expect(runAt(k, mm, a)!.level).toBe(Level.PMD);
    expectClean(k);
  });
});

describe("MAP_FIXED and merging", () => {
  it("MAP_FIXED over a populated range unmaps exactly that range (one UNMAP) and the new mapping is empty", () => {
    const k = mkKernel({ tunables: { thpEnabled: "never" } });
    const mm = mkMm(k);
    const a = mmap(k, mm, 8 * MiB, { addr: FIXED_BASE, flags: ANON_PRIVATE | MAP_FIXED_NOREPLACE });
    for (let off = 0; off < 8 * MiB; off += MiB) write(k, mm, a + off, bytes(64, off / MiB));
    expect(mm.rssAnon).toBe(8);
    const evs = recordEvents(k);
    const r = mmap(k, mm, 2 * MiB, { addr: a + 2 * MiB, flags: ANON_PRIVATE | MAP_FIXED });
    expect(r).toBe(a + 2 * MiB);
    expect(starts(evs)).toEqual([ev(MmuNotifyEvent.UNMAP, a + 2 * MiB, a + 4 * MiB, mm.id)]);
    expect(evs.map((e) => e.phase)).toEqual(["start", "end"]);
    expect(mm.rssAnon).toBe(6);
    expect(runs(k, mm, a + 2 * MiB, a + 4 * MiB)).toEqual([]);
    expect(read(k, mm, a + 2 * MiB, 64)).toEqual(new Uint8Array(64));
    expect(read(k, mm, a + 4 * MiB, 64)).toEqual(bytes(64, 4));
    expect(read(k, mm, a + MiB, 64)).toEqual(bytes(64, 1));
    expectClean(k);
  });

  it("MAP_FIXED over nothing emits no event", () => {
    const k = mkKernel();
    const mm = mkMm(k);
    const evs = recordEvents(k);
    mmap(k, mm, 4 * 4096, { addr: FIXED_BASE, flags: ANON_PRIVATE | MAP_FIXED });
    expect(evs).toEqual([]);
    expectClean(k);
  });

  it("adjacent anonymous mappings with the same flags merge into one VMA; different protections do not", () => {
    const k = mkKernel();
    const mm = mkMm(k);
    mmap(k, mm, 4 * 4096, { addr: FIXED_BASE, flags: ANON_PRIVATE | MAP_FIXED_NOREPLACE });
    mmap(k, mm, 4 * 4096, { addr: FIXED_BASE + 4 * 4096, flags: ANON_PRIVATE | MAP_FIXED_NOREPLACE });
    expect(mm.mapCount).toBe(1);
    expect(mm.vmas[0]!.start).toBe(FIXED_BASE);
    expect(mm.vmas[0]!.end).toBe(FIXED_BASE + 8 * 4096);
    mmap(k, mm, 4 * 4096, { addr: FIXED_BASE + 8 * 4096, flags: ANON_PRIVATE | MAP_FIXED_NOREPLACE, prot: PROT_READ });
    expect(mm.mapCount).toBe(2);
    // filling a hole between two compatible VMAs merges all three
    mmap(k, mm, 4096, { addr: FIXED_BASE + 20 * 4096, flags: ANON_PRIVATE | MAP_FIXED_NOREPLACE, prot: PROT_READ });
    mmap(k, mm, 8 * 4096, { addr: FIXED_BASE + 12 * 4096, flags: ANON_PRIVATE | MAP_FIXED_NOREPLACE, prot: PROT_READ });
    expect(mm.mapCount).toBe(2);
    expect(mm.vmas[1]!.start).toBe(FIXED_BASE + 8 * 4096);
    expect(mm.vmas[1]!.end).toBe(FIXED_BASE + 21 * 4096);
    expectClean(k);
  });
});

describe("MAP_POPULATE", () => {
  it("private writable anonymous: every page faulted in for write (RSS, exclusive anon pages)", () => {
    const k = mkKernel({ tunables: { thpEnabled: "never" } });
    const mm = mkMm(k);
    const a = mmap(k, mm, 32 * 4096, { flags: ANON_PRIVATE | MAP_POPULATE });
    expect(mm.rssAnon).toBe(32);
    const rs = runs(k, mm, a, a + 32 * 4096);
    expect(rs.reduce((n, r) => n + r.nr, 0)).toBe(32);
    for (const r of rs) {
      expect(r.kind).toBe(EntryKind.PRESENT);
      expect(r.write).toBe(true);
      expect(r.anonExclusive).toBe(true);
    }
    expectClean(k);
  });

  it("read-only private anonymous: populated with the zero page, RSS stays 0", () => {
    const k = mkKernel({ tunables: { thpEnabled: "never" } });
    const mm = mkMm(k);
    const a = mmap(k, mm, 8 * 4096, { flags: ANON_PRIVATE | MAP_POPULATE, prot: PROT_READ });
    expect(mm.rssAnon).toBe(0);
    const rs = runs(k, mm, a, a + 8 * 4096);
    expect(rs).toHaveLength(1);
    expect(rs[0]!.kind).toBe(EntryKind.ZERO_PAGE);
    expect(rs[0]!.nr).toBe(8);
    expectClean(k);
  });

  it("with THP always a 4 MiB populate maps two PMDs", () => {
    const k = mkKernel();
    const mm = mkMm(k);
    const a = mmap(k, mm, 4 * MiB, { flags: ANON_PRIVATE | MAP_POPULATE });
    const rs = runs(k, mm, a, a + 4 * MiB);
    expect(rs.map((r) => [r.level, r.nr])).toEqual([[Level.PMD, 2]]);
    expect(mm.rssAnon).toBe(1024);
    expect(k.vmstat.nr_anon_transparent_hugepages).toBe(2);
    expectClean(k);
  });
});

describe("hugetlb mappings", () => {
  it("MAP_HUGETLB (2 MiB): PMD leaves of hugetlb folios, counted as hugetlb not RSS", () => {
    const k = mkKernel();
    const mm = mkMm(k);
    const a = mmap(k, mm, 3 * MiB, { flags: ANON_PRIVATE | MAP_HUGETLB | MAP_HUGE_2MB });
    expect(a % (2 * MiB)).toBe(0);
    const v = mm.findVma(a)!;
    expect(v.end - v.start).toBe(4 * MiB); // rounded up to the huge page size
    expect(v.flags & VM_HUGETLB).toBe(VM_HUGETLB);
    write(k, mm, a + 3 * MiB, bytes(100, 5));
    const r = runAt(k, mm, a + 3 * MiB)!;
    expect(r.level).toBe(Level.PMD);
    expect(r.addr).toBe(a + 2 * MiB);
    expect(r.write).toBe(true);
    const f = getFolio(k, r.pfn);
    expect(f.hugetlb).toBe(true);
    expect(f.order).toBe(9);
    expect(f.refcount).toBe(1);
    expect(f.mapcount).toBe(1);
    expect(f.entireMapcount).toBe(1);
    expect(f.anonExclusive).toBe(true);
    expect(mm.hugetlbPages).toBe(512);
    expect(mm.rssAnon).toBe(0);
    expect(runAt(k, mm, a)).toBeUndefined();
    expect(read(k, mm, a + 3 * MiB, 100)).toEqual(bytes(100, 5));
    expectClean(k);
  });

  it("MAP_HUGETLB|MAP_HUGE_1GB: a 1 GiB aligned PUD leaf of an order-18 folio", () => {
    const k = mkKernel({ phys: { ramBytes: 4 * GiB } });
    const mm = mkMm(k);
    const free0 = k.phys.totalFreePages();
    const a = mmap(k, mm, GiB, { flags: ANON_PRIVATE | MAP_HUGETLB | MAP_HUGE_1GB });
    expect(a % GiB).toBe(0);
    write(k, mm, a + 123 * MiB, bytes(8, 2));
    const r = runAt(k, mm, a)!;
    expect(r.level).toBe(Level.PUD);
    expect(r.addr).toBe(a);
    expect(r.pfn % 262144).toBe(0);
    const f = getFolio(k, r.pfn);
    expect(f.order).toBe(18);
    expect(f.hugetlb).toBe(true);
    expect(mm.hugetlbPages).toBe(262144);
    expect(pfnAt(k, mm, a + 123 * MiB)).toBe(r.pfn + (123 * MiB) / 4096);
    expect(read(k, mm, a + 123 * MiB, 8)).toEqual(bytes(8, 2));
    doMunmap(k, mm, a, GiB);
    expect(k.phys.totalFreePages()).toBe(free0);
    expectClean(k);
  });

  it("munmap at an address not aligned to the huge page size is EINVAL", () => {
    const k = mkKernel();
    const mm = mkMm(k);
    const a = mmap(k, mm, 4 * MiB, { flags: ANON_PRIVATE | MAP_HUGETLB });
    write(k, mm, a, bytes(4, 1));
    expectErrno(() => doMunmap(k, mm, a + 4096, 4096), Errno.EINVAL);
    expect(mm.hugetlbPages).toBe(512);
    expectClean(k);
  });
});

describe("shared memory", () => {
  it("MAP_SHARED|MAP_ANONYMOUS (shmem) is visible across fork in both directions", () => {
    const k = mkKernel();
    const parent = mkMm(k);
    const a = mmap(k, parent, 4 * 4096, { flags: ANON_SHARED });
    const v = parent.findVma(a)!;
    expect(v.flags & (VM_SHARED | VM_MAYSHARE)).toBe(VM_SHARED | VM_MAYSHARE);
    expect(v.isAnonymous).toBe(false); // shmem is file-backed
    write(k, parent, a + 4096, bytes(64, 1));
    const pfn = pfnAt(k, parent, a + 4096);
    const child = forkMm(k, parent, "child", 1);
    // no anon_vma: page tables are not copied, the child refaults from the page cache
    expect(runs(k, child, a, a + 4 * 4096)).toEqual([]);
    expect(read(k, child, a + 4096, 64)).toEqual(bytes(64, 1));
    expect(pfnAt(k, child, a + 4096)).toBe(pfn);
    const f = getFolio(k, pfn);
    expect(f.anon).toBe(false);
    expect(f.mapcount).toBe(2);
    expect(f.refcount).toBe(3); // page cache + two mappings
    expect(parent.rssShmem).toBe(1);
    expect(child.rssShmem).toBe(1);
    write(k, child, a + 4096 + 8, bytes(4, 7));
    expect(read(k, parent, a + 4096 + 8, 4)).toEqual(bytes(4, 7));
    expect(pfnAt(k, child, a + 4096)).toBe(pfn);
    expectClean(k);
  });

  it("a memfd-like shmem file mapped MAP_SHARED in two mms: a write in one is read in the other", () => {
    const k = mkKernel();
    const m1 = mkMm(k, "a");
    const m2 = mkMm(k, "b");
    const f = createFile(k, { name: "memfd", sizeBytes: 64 * 1024, kind: FileKind.SHMEM, hugePageSize: 0, pgmapId: 0 }, 1);
    const a1 = mmap(k, m1, 64 * 1024, { flags: MAP_SHARED, fileId: f.id });
    const a2 = mmap(k, m2, 32 * 1024, { flags: MAP_SHARED, fileId: f.id, offset: 16 * 1024 });
    write(k, m1, a1 + 5 * 4096 + 10, bytes(32, 4));
    expect(read(k, m2, a2 + 4096 + 10, 32)).toEqual(bytes(32, 4));
    const pfn = pfnAt(k, m1, a1 + 5 * 4096);
    expect(pfnAt(k, m2, a2 + 4096)).toBe(pfn);
    const fi = getFolio(k, pfn);
    expect(fi.fileId).toBe(f.id);
    expect(fi.fileIndex).toBe(5);
    expect(fi.refcount).toBe(3);
    expect(fi.mapcount).toBe(2);
    // the other direction
    write(k, m2, a2, bytes(16, 8));
    expect(read(k, m1, a1 + 4 * 4096, 16)).toEqual(bytes(16, 8));
    // a private mapping of the same file sees the data but writes go to a private copy
    const a3 = mmap(k, m2, 64 * 1024, { flags: MAP_PRIVATE, fileId: f.id });
    expect(read(k, m2, a3 + 5 * 4096 + 10, 32)).toEqual(bytes(32, 4));
    write(k, m2, a3 + 5 * 4096 + 10, bytes(32, 99));
    expect(read(k, m1, a1 + 5 * 4096 + 10, 32)).toEqual(bytes(32, 4));
    expect(pfnAt(k, m2, a3 + 5 * 4096)).not.toBe(pfn);
    expect(cpuFault(k, m1, a1 + 15 * 4096, "read", 0, true).signal).toBe(0);
    expectClean(k);
  });
});

describe("file size and truncation", () => {
  it("an access beyond the end of a shared file mapping's file is SIGBUS", () => {
    const k = mkKernel();
    const mm = mkMm(k);
    const f = createFile(k, { name: "memfd", sizeBytes: 2 * 4096, kind: FileKind.SHMEM, hugePageSize: 0, pgmapId: 0 }, 1);
    const a = mmap(k, mm, 4 * 4096, { flags: MAP_SHARED, fileId: f.id });
    expect(cpuFault(k, mm, a + 4096, "read", 0, true).signal).toBe(0);
    expect(cpuFault(k, mm, a + 2 * 4096, "read", 0, true).signal).toBe(SIGBUS);
    expect(runAt(k, mm, a + 2 * 4096)).toBeUndefined();
    expectClean(k);
  });

  it("truncation zaps the mappings beyond the new size with CLEAR (unmap_mapping_range, spec 7.4) and frees the cache", () => {
    const k = mkKernel();
    const m1 = mkMm(k, "a");
    const m2 = mkMm(k, "b");
    const f = createFile(k, { name: "memfd", sizeBytes: 16 * 4096, kind: FileKind.SHMEM, hugePageSize: 0, pgmapId: 0 }, 1);
    const a1 = mmap(k, m1, 16 * 4096, { flags: MAP_SHARED, fileId: f.id });
    const a2 = mmap(k, m2, 8 * 4096, { flags: MAP_SHARED, fileId: f.id, offset: 8 * 4096 });
    const a3 = mmap(k, m2, 16 * 4096, { flags: MAP_PRIVATE, fileId: f.id });
    write(k, m1, a1, bytes(16 * 4096, 1));
    expect(read(k, m2, a2, 4096)).toEqual(bytes(16 * 4096, 1).subarray(8 * 4096, 9 * 4096));
    write(k, m2, a3 + 12 * 4096, bytes(8, 2)); // a private COW copy beyond the new size
    const free0 = k.phys.totalFreePages();
    const evs = recordEvents(k);
    resizeFile(k, f, 6 * 4096);
    const got = starts(evs);
    expect(got.length).toBeGreaterThanOrEqual(3);
    const want = new Set([
      JSON.stringify(ev(MmuNotifyEvent.CLEAR, a1 + 6 * 4096, a1 + 16 * 4096, m1.id)),
      JSON.stringify(ev(MmuNotifyEvent.CLEAR, a2, a2 + 8 * 4096, m2.id)),
      JSON.stringify(ev(MmuNotifyEvent.CLEAR, a3 + 6 * 4096, a3 + 16 * 4096, m2.id)),
    ]);
    expect(new Set(got.map((e) => JSON.stringify(e)))).toEqual(want);
    expect(runs(k, m1, a1 + 6 * 4096, a1 + 16 * 4096)).toEqual([]);
    expect(runs(k, m2, a2, a2 + 8 * 4096)).toEqual([]);
    expect(runs(k, m2, a3 + 6 * 4096, a3 + 16 * 4096)).toEqual([]); // even_cows: the private copy goes too
    expect(k.phys.totalFreePages()).toBe(free0 + 10 + 1);
    expect(cpuFault(k, m1, a1 + 6 * 4096, "read", 0, true).signal).toBe(SIGBUS);
    expect(read(k, m1, a1 + 5 * 4096, 4096)).toEqual(bytes(16 * 4096, 1).subarray(5 * 4096, 6 * 4096));
    expectClean(k);
  });
});
