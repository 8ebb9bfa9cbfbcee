import { describe, expect, it } from "vitest";
import {
  MADV_DONTNEED,
  MADV_FREE,
  MADV_POPULATE_READ,
  MADV_POPULATE_WRITE,
  MAP_FIXED_NOREPLACE,
  MAP_SHARED,
  MmuNotifyEvent,
  PROT_NONE,
  PROT_READ,
  PROT_WRITE,
} from "../../src/mm/constants.js";
import { Errno } from "../../src/mm/errors.js";
import { doMadvise, doMprotect, doMunmap, forkMm } from "../../src/mm/mmap.js";
import { getFolio, getSmaps } from "../../src/mm/inspect.js";
import { cpuFault, SEGV_ACCERR } from "../../src/mm/access.js";
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

const BASE = 0x40_0000_0000; // 256 GiB: 1 GiB aligned, inside the first PGD entry

function fixed(k: ReturnType<typeof mkKernel>, mm: ReturnType<typeof mkMm>, addr: number, len: number, prot = RW, flags = ANON_PRIVATE) {
  return mmap(k, mm, len, { addr, prot, flags: flags | MAP_FIXED_NOREPLACE });
}

describe("munmap events (spec 7.4, 8)", () => {
  it("one UNMAP over exactly [start, end), holes and several VMAs included; RSS and pages released", () => {
    const k = mkKernel({ tunables: { thpEnabled: "never" } });
    const mm = mkMm(k);
    fixed(k, mm, BASE, 8 * 4096);
    fixed(k, mm, BASE + 16 * 4096, 8 * 4096, PROT_READ);
    write(k, mm, BASE, bytes(8 * 4096, 1));
    cpuFault(k, mm, BASE + 16 * 4096, "read", 0, true);
    const free0 = k.phys.totalFreePages();
    const evs = recordEvents(k);
    doMunmap(k, mm, BASE + 2 * 4096, 20 * 4096);
    expect(starts(evs)).toEqual([ev(MmuNotifyEvent.UNMAP, BASE + 2 * 4096, BASE + 22 * 4096, mm.id)]);
    expect(evs.map((e) => e.phase)).toEqual(["start", "end"]);
    expect(mm.vmas.map((v) => [v.start, v.end])).toEqual([
      [BASE, BASE + 2 * 4096],
      [BASE + 22 * 4096, BASE + 24 * 4096],
    ]);
    expect(mm.rssAnon).toBe(2);
    expect(k.phys.totalFreePages()).toBe(free0 + 6);
    expect(read(k, mm, BASE + 4096, 4096)).toEqual(bytes(8 * 4096, 1).subarray(4096, 8192));
    expectClean(k);
  });

  it("UNMAP fires even when nothing was populated; no event and no error when no VMA overlaps", () => {
    const k = mkKernel();
    const mm = mkMm(k);
    fixed(k, mm, BASE, 8 * 4096);
    const evs = recordEvents(k);
    doMunmap(k, mm, BASE + 64 * 4096, 4 * 4096);
    expect(evs).toEqual([]);
    doMunmap(k, mm, BASE, 8 * 4096);
    expect(starts(evs)).toEqual([ev(MmuNotifyEvent.UNMAP, BASE, BASE + 8 * 4096, mm.id)]);
    expect(mm.mapCount).toBe(0);
    expectClean(k);
  });

  it("argument errors are EINVAL: unaligned start, length rounding to 0", () => {
    const k = mkKernel();
    const mm = mkMm(k);
    fixed(k, mm, BASE, 8 * 4096);
    expectErrno(() => doMunmap(k, mm, BASE + 1, 4096), Errno.EINVAL);
    expectErrno(() => doMunmap(k, mm, BASE, 0), Errno.EINVAL);
    expect(mm.mapCount).toBe(1);
    expectClean(k);
  });

  it("an unaligned split with no PMD table in that 1 GiB emits only the UNMAP", () => {
    const k = mkKernel();
    const mm = mkMm(k);
    fixed(k, mm, BASE, 8 * MiB);
    const evs = recordEvents(k);
    doMunmap(k, mm, BASE + 4096, 4096);
    expect(starts(evs)).toEqual([ev(MmuNotifyEvent.UNMAP, BASE + 4096, BASE + 2 * 4096, mm.id)]);
    expectClean(k);
  });

  it("an unaligned split inside a THP: CLEAR of the 2 MiB block first, then UNMAP; only the mapping is split (spec 8 THP split)", () => {
    const k = mkKernel();
    const mm = mkMm(k);
    fixed(k, mm, BASE, 4 * MiB);
    write(k, mm, BASE, bytes(4096, 1));
    const head = runAt(k, mm, BASE)!.pfn;
    expect(runAt(k, mm, BASE)!.level).toBe(Level.PMD);
    const vs0 = { ...k.vmstat };
    const evs = recordEvents(k);
    doMunmap(k, mm, BASE + 4096, 4096);
    expect(starts(evs)).toEqual([
      ev(MmuNotifyEvent.CLEAR, BASE, BASE + 2 * MiB, mm.id),
      ev(MmuNotifyEvent.UNMAP, BASE + 4096, BASE + 2 * 4096, mm.id),
    ]);
    expect(k.vmstat.thp_split_pmd).toBe(vs0.thp_split_pmd + 1);
    expect(k.vmstat.nr_anon_transparent_hugepages).toBe(vs0.nr_anon_transparent_hugepages - 1);
    expect(k.vmstat.thp_split_page).toBe(vs0.thp_split_page);
    const f = getFolio(k, head);
    expect(f.order).toBe(9);
    expect(f.mapcount).toBe(511);
    expect(f.refcount).toBe(511);
    expect(f.entireMapcount).toBe(0);
    expect(pfnAt(k, mm, BASE + 2 * 4096)).toBe(head + 2);
    expect(runAt(k, mm, BASE + 4096)).toBeUndefined();
    expect(mm.rssAnon).toBe(511);
    expect(getSmaps(k, mm).reduce((n, s) => n + s.anonHugePagesKib, 0)).toBe(0);
    expect(read(k, mm, BASE, 4096)).toEqual(bytes(4096, 1));
    expectClean(k);
  });

  it("munmap of one page of a THP queues it for deferred split: thp_deferred_split_page +1 (spec 8)", () => {
    const k = mkKernel();
    const mm = mkMm(k);
    fixed(k, mm, BASE, 4 * MiB);
    write(k, mm, BASE, bytes(16, 1));
    const d0 = k.vmstat.thp_deferred_split_page;
    doMunmap(k, mm, BASE + 4096, 4096);
    expect(k.vmstat.thp_deferred_split_page).toBe(d0 + 1);
    expectClean(k);
  });

  it("an unaligned split where a PMD table exists but no THP is mapped still emits the 2 MiB CLEAR first (spec 7.4)", () => {
    const k = mkKernel({ tunables: { thpEnabled: "never" } });
    const mm = mkMm(k);
    fixed(k, mm, BASE, 8 * MiB);
    write(k, mm, BASE + 5 * MiB, bytes(16, 1)); // creates the PMD table for this GiB
    const evs = recordEvents(k);
    doMunmap(k, mm, BASE + 4096, 4096);
    expect(starts(evs)).toEqual([
      ev(MmuNotifyEvent.CLEAR, BASE, BASE + 2 * MiB, mm.id),
      ev(MmuNotifyEvent.UNMAP, BASE + 4096, BASE + 2 * 4096, mm.id),
    ]);
    expectClean(k);
  });

  it("no CLEAR when the 2 MiB block around the split point is not entirely inside the VMA", () => {
    const k = mkKernel();
    const mm = mkMm(k);
    fixed(k, mm, BASE + 4096, 4 * MiB);
    write(k, mm, BASE + 3 * MiB, bytes(16, 1)); // THP at [BASE+2M, BASE+4M)
    const evs = recordEvents(k);
    doMunmap(k, mm, BASE + 8192, 4096);
    expect(starts(evs)).toEqual([ev(MmuNotifyEvent.UNMAP, BASE + 8192, BASE + 3 * 4096, mm.id)]);
    expect(runAt(k, mm, BASE + 3 * MiB)!.level).toBe(Level.PMD);
    expectClean(k);
  });

  it("munmap of a whole THP block splits nothing and frees the folio", () => {
    const k = mkKernel();
    const mm = mkMm(k);
    fixed(k, mm, BASE, 4 * MiB);
    write(k, mm, BASE, bytes(16, 1));
    const head = runAt(k, mm, BASE)!.pfn;
    const free0 = k.phys.totalFreePages();
    const evs = recordEvents(k);
    doMunmap(k, mm, BASE, 2 * MiB);
    expect(starts(evs)).toEqual([ev(MmuNotifyEvent.UNMAP, BASE, BASE + 2 * MiB, mm.id)]);
    expect(k.vmstat.thp_split_pmd).toBe(0);
    expect(k.vmstat.nr_anon_transparent_hugepages).toBe(0);
    expect(getFolio(k, head).free).toBe(true);
    expect(k.phys.totalFreePages()).toBe(free0 + 512);
    expectClean(k);
  });
});

describe("mprotect (spec 7.4, 8)", () => {
  it("PROTECTION_VMA starts at the first populated PUD slot and runs to the end of the range", () => {
    const k = mkKernel({ tunables: { thpEnabled: "never" } });
    const mm = mkMm(k);
    fixed(k, mm, BASE, 2 * GiB);
    write(k, mm, BASE + GiB + 4096, bytes(16, 1));
    const evs = recordEvents(k);
    doMprotect(k, mm, BASE, 2 * GiB, PROT_READ);
    expect(starts(evs)).toEqual([ev(MmuNotifyEvent.PROTECTION_VMA, BASE + GiB, BASE + 2 * GiB, mm.id)]);
    expect(runAt(k, mm, BASE + GiB + 4096)!.write).toBe(false);
    expect(cpuFault(k, mm, BASE + GiB + 4096, "write", 0, true).siCode).toBe(SEGV_ACCERR);
    expectClean(k);
  });

  it("the event starts at the range start when the first PUD slot is populated", () => {
    const k = mkKernel({ tunables: { thpEnabled: "never" } });
    const mm = mkMm(k);
    fixed(k, mm, BASE, 2 * GiB);
    write(k, mm, BASE + 4096, bytes(16, 1));
    const evs = recordEvents(k);
    doMprotect(k, mm, BASE, 2 * GiB, PROT_READ);
    expect(starts(evs)).toEqual([ev(MmuNotifyEvent.PROTECTION_VMA, BASE, BASE + 2 * GiB, mm.id)]);
    expectClean(k);
  });

  it("no event for a no-op mprotect (same flags) nor when nothing in the range is populated", () => {
    const k = mkKernel();
    const mm = mkMm(k);
    fixed(k, mm, BASE, 8 * 4096);
    write(k, mm, BASE, bytes(16, 1));
    const evs = recordEvents(k);
    doMprotect(k, mm, BASE, 8 * 4096, RW);
    expect(evs).toEqual([]);
    expect(mm.mapCount).toBe(1);
    const other = fixed(k, mm, BASE + 4 * GiB, 8 * 4096);
    doMprotect(k, mm, other, 8 * 4096, PROT_READ);
    expect(evs).toEqual([]);
    expect(mm.findVma(other)!.flags & PROT_WRITE).toBe(0);
    expectClean(k);
  });

  it("RW→RO makes PTEs read-only; RO→RW makes exclusive anon PTEs writable at once, shared ones stay RO", () => {
    const k = mkKernel({ tunables: { thpEnabled: "never" } });
    const mm = mkMm(k);
    const a = fixed(k, mm, BASE, 8 * 4096);
    write(k, mm, a, bytes(4 * 4096, 1)); // pages 0..3 exclusive
    cpuFault(k, mm, a + 5 * 4096, "read", 0, true); // zero page
    doMprotect(k, mm, a, 8 * 4096, PROT_READ);
    for (const r of runs(k, mm, a, a + 8 * 4096)) expect(r.write).toBe(false);
    expect(cpuFault(k, mm, a, "write", 0, true).siCode).toBe(SEGV_ACCERR);
    // fork shares pages 0..3 with a child: no longer AnonExclusive
    const child = forkMm(k, mm, "child", 1);
    // the child copies page 1 away; the parent's page 1 is still not AnonExclusive (reuse happens on a write fault)
    doMprotect(k, child, a, 8 * 4096, RW);
    write(k, child, a + 4096, bytes(4, 9));
    doMprotect(k, mm, a, 8 * 4096, RW);
    for (let i = 0; i < 4; i++) {
      expect(runAt(k, mm, a + i * 4096)!.write).toBe(false);
      expect(runAt(k, mm, a + i * 4096)!.anonExclusive).toBe(false);
    }
    // a write fault on page 1 reuses it (sole reference) and makes it writable
    write(k, mm, a + 4096, bytes(4, 8));
    expect(runAt(k, mm, a + 4096)!.write).toBe(true);
    expect(runAt(k, mm, a + 4096)!.anonExclusive).toBe(true);
    // RW->RO->RW again: page 1 (exclusive now) becomes writable at once, page 0 (shared) does not
    doMprotect(k, mm, a, 8 * 4096, PROT_READ);
    doMprotect(k, mm, a, 8 * 4096, RW);
    expect(runAt(k, mm, a + 4096)!.write).toBe(true);
    expect(runAt(k, mm, a)!.write).toBe(false);
    expect(runAt(k, mm, a + 5 * 4096)!.kind).toBe(EntryKind.ZERO_PAGE);
    expect(runAt(k, mm, a + 5 * 4096)!.write).toBe(false);
    expectClean(k);
  });

  it("RO→RW without fork: every AnonExclusive PTE becomes writable immediately, without a fault", () => {
    const k = mkKernel({ tunables: { thpEnabled: "never" } });
    const mm = mkMm(k);
    const a = fixed(k, mm, BASE, 8 * 4096);
    write(k, mm, a, bytes(4 * 4096, 1));
    doMprotect(k, mm, a, 8 * 4096, PROT_READ);
    const pgfault = k.vmstat.pgfault;
    const evs = recordEvents(k);
    doMprotect(k, mm, a, 8 * 4096, RW);
    expect(starts(evs)).toEqual([ev(MmuNotifyEvent.PROTECTION_VMA, a, a + 8 * 4096, mm.id)]);
    const rs = runs(k, mm, a, a + 8 * 4096);
    expect(rs).toHaveLength(1);
    expect(rs[0]!.nr).toBe(4);
    expect(rs[0]!.write).toBe(true);
    expect(k.vmstat.pgfault).toBe(pgfault);
    expectClean(k);
  });

  it("PROT_NONE keeps the pages (protnone entries) and access faults SEGV_ACCERR", () => {
    const k = mkKernel({ tunables: { thpEnabled: "never" } });
    const mm = mkMm(k);
    const a = fixed(k, mm, BASE, 4 * 4096);
    write(k, mm, a, bytes(4096, 3));
    const p = pfnAt(k, mm, a);
    doMprotect(k, mm, a, 4096, PROT_NONE);
    expect(mm.mapCount).toBe(2);
    const r = runAt(k, mm, a)!;
    expect(r.kind).toBe(EntryKind.PROTNONE);
    expect(r.pfn).toBe(p);
    expect(getFolio(k, p).mapcount).toBe(1);
    expect(cpuFault(k, mm, a, "read", 0, true).siCode).toBe(SEGV_ACCERR);
    doMprotect(k, mm, a, 4096, RW);
    expect(mm.mapCount).toBe(1); // merged back
    expect(read(k, mm, a, 4096)).toEqual(bytes(4096, 3));
    expectClean(k);
  });

  it("errors: unaligned start EINVAL, hole ENOMEM with earlier VMAs keeping their new protection", () => {
    const k = mkKernel();
    const mm = mkMm(k);
    fixed(k, mm, BASE, 4 * 4096);
    fixed(k, mm, BASE + 8 * 4096, 4 * 4096);
    expectErrno(() => doMprotect(k, mm, BASE + 1, 4096, PROT_READ), Errno.EINVAL);
    expectErrno(() => doMprotect(k, mm, BASE - 4096, 2 * 4096, PROT_READ), Errno.ENOMEM);
    expectErrno(() => doMprotect(k, mm, BASE, 12 * 4096, PROT_READ), Errno.ENOMEM);
    expect(mm.findVma(BASE)!.flags & PROT_WRITE).toBe(0);
    expect(mm.findVma(BASE + 8 * 4096)!.flags & PROT_WRITE).toBe(PROT_WRITE);
    // len 0 is a no-op
    doMprotect(k, mm, BASE + 64 * 4096, 0, PROT_READ);
    expectClean(k);
  });

  it("mprotect of part of a THP splits the PMD (CLEAR nested before the PROTECTION_VMA)", () => {
    const k = mkKernel();
    const mm = mkMm(k);
    fixed(k, mm, BASE, 2 * MiB);
    write(k, mm, BASE, bytes(16, 1));
    const head = runAt(k, mm, BASE)!.pfn;
    const evs = recordEvents(k);
    doMprotect(k, mm, BASE, 4096, PROT_READ);
    expect(starts(evs)).toEqual([
      ev(MmuNotifyEvent.CLEAR, BASE, BASE + 2 * MiB, mm.id),
      ev(MmuNotifyEvent.PROTECTION_VMA, BASE, BASE + 4096, mm.id),
    ]);
    expect(k.vmstat.thp_split_pmd).toBe(1);
    expect(runAt(k, mm, BASE)!.write).toBe(false);
    expect(runAt(k, mm, BASE + 4096)!.write).toBe(true);
    expect(getFolio(k, head).order).toBe(9);
    expect(getFolio(k, head).mapcount).toBe(512);
    expectClean(k);
  });
});

describe("mprotect: more ranges", () => {
  it("one PROTECTION_VMA per top-level (512 GiB PGD) chunk of the range", () => {
    const k = mkKernel({ tunables: { thpEnabled: "never" } });
    const mm = mkMm(k);
    const pgd = 2 ** 39;
    const start = pgd - 2 * MiB;
    fixed(k, mm, start, 4 * MiB);
    write(k, mm, start, bytes(8, 1));
    write(k, mm, pgd + MiB, bytes(8, 1));
    const evs = recordEvents(k);
    doMprotect(k, mm, start, 4 * MiB, PROT_READ);
    expect(starts(evs)).toEqual([
      ev(MmuNotifyEvent.PROTECTION_VMA, start, pgd, mm.id),
      ev(MmuNotifyEvent.PROTECTION_VMA, pgd, pgd + 2 * MiB, mm.id),
    ]);
    expectClean(k);
  });

  it("mprotect of part of a THP: thp_deferred_split_page +1, nr_anon_transparent_hugepages -1 (spec 8 THP split)", () => {
    const k = mkKernel();
    const mm = mkMm(k);
    fixed(k, mm, BASE, 2 * MiB);
    write(k, mm, BASE, bytes(16, 1));
    const vs0 = { ...k.vmstat };
    doMprotect(k, mm, BASE + MiB, MiB, PROT_READ);
    expect(k.vmstat.thp_split_pmd).toBe(vs0.thp_split_pmd + 1);
    expect(k.vmstat.nr_anon_transparent_hugepages).toBe(vs0.nr_anon_transparent_hugepages - 1);
    expect(k.vmstat.thp_split_page).toBe(vs0.thp_split_page);
    expect(k.vmstat.thp_deferred_split_page).toBe(vs0.thp_deferred_split_page + 1);
    expectClean(k);
  });
});

describe("madvise (spec 7.4, 8)", () => {
  it("MADV_DONTNEED: one CLEAR per VMA over the zapped sub-range; memory refaults as zeros", () => {
    const k = mkKernel({ tunables: { thpEnabled: "never" } });
    const mm = mkMm(k);
    fixed(k, mm, BASE, 8 * 4096);
    fixed(k, mm, BASE + 8 * 4096, 8 * 4096, PROT_READ | PROT_WRITE | 0x4);
    write(k, mm, BASE, bytes(16 * 4096, 2));
    expect(mm.mapCount).toBe(2);
    const free0 = k.phys.totalFreePages();
    const evs = recordEvents(k);
    doMadvise(k, mm, BASE + 4 * 4096, 8 * 4096, MADV_DONTNEED);
    expect(starts(evs)).toEqual([
      ev(MmuNotifyEvent.CLEAR, BASE + 4 * 4096, BASE + 8 * 4096, mm.id),
      ev(MmuNotifyEvent.CLEAR, BASE + 8 * 4096, BASE + 12 * 4096, mm.id),
    ]);
    expect(mm.rssAnon).toBe(8);
    expect(k.phys.totalFreePages()).toBe(free0 + 8);
    expect(mm.mapCount).toBe(2); // no VMA split
    expect(read(k, mm, BASE + 4 * 4096, 8 * 4096)).toEqual(new Uint8Array(8 * 4096));
    expect(read(k, mm, BASE, 4096)).toEqual(bytes(16 * 4096, 2).subarray(0, 4096));
    expectClean(k);
  });

  it("MADV_DONTNEED on part of a THP splits the PMD inside the CLEAR and queues a deferred split", () => {
    const k = mkKernel();
    const mm = mkMm(k);
    fixed(k, mm, BASE, 2 * MiB);
    write(k, mm, BASE, bytes(16, 1));
    const head = runAt(k, mm, BASE)!.pfn;
    const evs = recordEvents(k);
    doMadvise(k, mm, BASE + 4096, 4096, MADV_DONTNEED);
    expect(evs.map((e) => [e.phase, e.event, e.start, e.end])).toEqual([
      ["start", MmuNotifyEvent.CLEAR, BASE + 4096, BASE + 2 * 4096],
      ["start", MmuNotifyEvent.CLEAR, BASE, BASE + 2 * MiB],
      ["end", MmuNotifyEvent.CLEAR, BASE, BASE + 2 * MiB],
      ["end", MmuNotifyEvent.CLEAR, BASE + 4096, BASE + 2 * 4096],
    ]);
    expect(k.vmstat.thp_split_pmd).toBe(1);
    expect(k.vmstat.thp_deferred_split_page).toBe(1);
    expect(k.vmstat.nr_anon_transparent_hugepages).toBe(0);
    expect(k.vmstat.thp_split_page).toBe(0);
    expect(getFolio(k, head).order).toBe(9);
    expect(getFolio(k, head).mapcount).toBe(511);
    expectClean(k);
  });

  it("a per-VMA error stops the walk: earlier VMAs stay processed, later ones untouched (EINVAL, not ENOMEM)", () => {
    const k = mkKernel({ tunables: { thpEnabled: "never" } });
    const mm = mkMm(k);
    fixed(k, mm, BASE, 4 * 4096);
    const bar = k.phys.registerPfnRange("bar", 16, 1);
    mmap(k, mm, 4 * 4096, {
      addr: BASE + 8 * 4096,
      flags: MAP_SHARED | MAP_FIXED_NOREPLACE,
      device: { kind: "pfnmap", pfnRangeId: bar.id, basePfn: bar.startPfn, hugeFault: false },
    });
    fixed(k, mm, BASE + 12 * 4096, 4 * 4096, PROT_READ);
    write(k, mm, BASE, bytes(4 * 4096, 1));
    cpuFault(k, mm, BASE + 12 * 4096, "read", 0, true);
    const evs = recordEvents(k);
    expectErrno(() => doMadvise(k, mm, BASE, 16 * 4096, MADV_DONTNEED), Errno.EINVAL);
    expect(starts(evs)).toEqual([ev(MmuNotifyEvent.CLEAR, BASE, BASE + 4 * 4096, mm.id)]);
    expect(mm.rssAnon).toBe(0);
    expect(runAt(k, mm, BASE + 12 * 4096)!.kind).toBe(EntryKind.ZERO_PAGE);
    expectClean(k);
  });

  it("MADV_DONTNEED on a VM_PFNMAP mapping is EINVAL with no event", () => {
    const k = mkKernel();
    const mm = mkMm(k);
    const bar = k.phys.registerPfnRange("bar", 16, 1);
    const a = mmap(k, mm, 16 * 4096, {
      flags: MAP_SHARED,
      device: { kind: "pfnmap", pfnRangeId: bar.id, basePfn: bar.startPfn, hugeFault: false },
    });
    cpuFault(k, mm, a, "read", 0, true);
    const evs = recordEvents(k);
    expectErrno(() => doMadvise(k, mm, a, 16 * 4096, MADV_DONTNEED), Errno.EINVAL);
    expect(evs).toEqual([]);
    expect(runAt(k, mm, a)!.pfn).toBe(bar.startPfn);
    expectClean(k);
  });

  it("a hole in the range is ENOMEM, reported after every mapped VMA was processed", () => {
    const k = mkKernel({ tunables: { thpEnabled: "never" } });
    const mm = mkMm(k);
    fixed(k, mm, BASE, 4 * 4096);
    fixed(k, mm, BASE + 8 * 4096, 4 * 4096);
    write(k, mm, BASE, bytes(4 * 4096, 1));
    write(k, mm, BASE + 8 * 4096, bytes(4 * 4096, 1));
    const evs = recordEvents(k);
    expectErrno(() => doMadvise(k, mm, BASE, 12 * 4096, MADV_DONTNEED), Errno.ENOMEM);
    expect(starts(evs)).toEqual([
      ev(MmuNotifyEvent.CLEAR, BASE, BASE + 4 * 4096, mm.id),
      ev(MmuNotifyEvent.CLEAR, BASE + 8 * 4096, BASE + 12 * 4096, mm.id),
    ]);
    expect(mm.rssAnon).toBe(0);
    expectClean(k);
  });

  it("MADV_FREE on a shared mapping is EINVAL; on private anon it is a CLEAR and keeps the pages mapped (lazy)", () => {
    const k = mkKernel({ tunables: { thpEnabled: "never" } });
    const mm = mkMm(k);
    const s = mmap(k, mm, 4 * 4096, { flags: ANON_SHARED });
    write(k, mm, s, bytes(16, 1));
    const evs = recordEvents(k);
    expectErrno(() => doMadvise(k, mm, s, 4 * 4096, MADV_FREE), Errno.EINVAL);
    expect(evs).toEqual([]);
    const a = fixed(k, mm, BASE, 4 * 4096);
    write(k, mm, a, bytes(16, 1));
    doMadvise(k, mm, a, 4 * 4096, MADV_FREE);
    expect(starts(evs)).toEqual([ev(MmuNotifyEvent.CLEAR, a, a + 4 * 4096, mm.id)]);
    expect(runAt(k, mm, a)!.dirty).toBe(false);
    expect(getFolio(k, pfnAt(k, mm, a)).dirty).toBe(false);
    expectClean(k);
  });

  it("unknown advice or unaligned start is EINVAL; len 0 is a no-op", () => {
    const k = mkKernel();
    const mm = mkMm(k);
    fixed(k, mm, BASE, 4 * 4096);
    expectErrno(() => doMadvise(k, mm, BASE, 4096, 12345), Errno.EINVAL);
    expectErrno(() => doMadvise(k, mm, BASE + 7, 4096, MADV_DONTNEED), Errno.EINVAL);
    doMadvise(k, mm, BASE + 64 * 4096, 0, MADV_DONTNEED);
    expectClean(k);
  });
});

describe("MADV_POPULATE_READ / MADV_POPULATE_WRITE (spec 8)", () => {
  it("POPULATE_WRITE faults every page writable; POPULATE_READ maps zero pages", () => {
    const k = mkKernel({ tunables: { thpEnabled: "never" } });
    const mm = mkMm(k);
    const a = fixed(k, mm, BASE, 8 * 4096);
    doMadvise(k, mm, a, 4 * 4096, MADV_POPULATE_WRITE);
    doMadvise(k, mm, a + 4 * 4096, 4 * 4096, MADV_POPULATE_READ);
    expect(mm.rssAnon).toBe(4);
    const rs = runs(k, mm, a, a + 8 * 4096);
    expect(rs.map((r) => [r.kind, r.nr, r.write])).toEqual([
      [EntryKind.PRESENT, 4, true],
      [EntryKind.ZERO_PAGE, 4, false],
    ]);
    expectClean(k);
  });

  it("stops at the first hole with ENOMEM; later VMAs are left untouched", () => {
    const k = mkKernel({ tunables: { thpEnabled: "never" } });
    const mm = mkMm(k);
    fixed(k, mm, BASE, 4 * 4096);
    fixed(k, mm, BASE + 8 * 4096, 4 * 4096);
    expectErrno(() => doMadvise(k, mm, BASE, 12 * 4096, MADV_POPULATE_WRITE), Errno.ENOMEM);
    expect(runs(k, mm, BASE, BASE + 4 * 4096).reduce((n, r) => n + r.nr, 0)).toBe(4);
    expect(runs(k, mm, BASE + 8 * 4096, BASE + 12 * 4096)).toEqual([]);
    expectClean(k);
  });

  it("an incompatible VMA (write to PROT_READ, VM_PFNMAP) is EINVAL", () => {
    const k = mkKernel();
    const mm = mkMm(k);
    const a = fixed(k, mm, BASE, 4 * 4096, PROT_READ);
    expectErrno(() => doMadvise(k, mm, a, 4 * 4096, MADV_POPULATE_WRITE), Errno.EINVAL);
    expect(runs(k, mm, a, a + 4 * 4096)).toEqual([]);
    const bar = k.phys.registerPfnRange("bar", 16, 1);
    const d = mmap(k, mm, 16 * 4096, {
      flags: MAP_SHARED,
      device: { kind: "pfnmap", pfnRangeId: bar.id, basePfn: bar.startPfn, hugeFault: false },
    });
    expectErrno(() => doMadvise(k, mm, d, 4096, MADV_POPULATE_READ), Errno.EINVAL);
    expectClean(k);
  });

  it("a fault that raises SIGBUS is EFAULT", () => {
    const k = mkKernel();
    const mm = mkMm(k);
    const d = mmap(k, mm, 16 * 4096, {
      flags: MAP_SHARED,
      device: { kind: "mixedmap", pfnRangeId: 0, basePfn: -1, hugeFault: false },
    });
    expectErrno(() => doMadvise(k, mm, d, 4096, MADV_POPULATE_READ), Errno.EFAULT);
    expectClean(k);
  });
});
