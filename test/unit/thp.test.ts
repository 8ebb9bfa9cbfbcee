import { describe, expect, it } from "vitest";
import { MADV_HUGEPAGE, MmuNotifyEvent, PROT_READ, VM_HUGEPAGE } from "../../src/mm/constants.js";
import { cpuFault } from "../../src/mm/access.js";
import { doMadvise, doMprotect, doMunmap, exitMm } from "../../src/mm/mmap.js";
import { getFolio, getSmaps } from "../../src/mm/inspect.js";
import {
  EntryKind,
  Level,
  MiB,
  RW,
  bytes,
  ev,
  expectClean,
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

describe("anonymous THP faults", () => {
  it("a failed order-9 allocation falls back to a 4 KiB page (thp_fault_fallback +1)", () => {
    const k = mkKernel();
    const mm = mkMm(k);
    const a = mmap(k, mm, 2 * MiB);
    k.phys.allocFailHook = (order) => order === 9;
    const r = cpuFault(k, mm, a + 8192, "write", 0, true);
    k.phys.allocFailHook = null;
    expect(r.signal).toBe(0);
    expect(r.level).toBe(Level.PTE);
    expect(getFolio(k, r.pfn).order).toBe(0);
    expect(k.vmstat.thp_fault_fallback).toBe(1);
    expect(k.vmstat.thp_fault_alloc).toBe(0);
    expect(mm.rssAnon).toBe(1);
    // once a PTE table exists, later faults in the block stay at PTE level
    const r2 = cpuFault(k, mm, a + MiB, "write", 0, true);
    expect(r2.level).toBe(Level.PTE);
    expectClean(k);
  });

  it("huge zero PMD write when no THP can be allocated: split to zero-page PTEs, then a 4 KiB COW", () => {
    const k = mkKernel();
    const mm = mkMm(k);
    const a = mmap(k, mm, 2 * MiB);
    cpuFault(k, mm, a, "read", 0, true);
    expect(runAt(k, mm, a)!.kind).toBe(EntryKind.HUGE_ZERO);
    const evs = recordEvents(k);
    k.phys.allocFailHook = (order) => order === 9;
    const r = cpuFault(k, mm, a + 5 * 4096, "write", 0, true);
    k.phys.allocFailHook = null;
    expect(r.signal).toBe(0);
    expect(r.level).toBe(Level.PTE);
    expect(starts(evs)).toEqual([
      ev(MmuNotifyEvent.CLEAR, a, a + 2 * MiB, mm.id),
      ev(MmuNotifyEvent.CLEAR, a + 5 * 4096, a + 6 * 4096, mm.id),
    ]);
    const rs = runs(k, mm, a, a + 2 * MiB);
    const zero = rs.filter((x) => x.kind === EntryKind.ZERO_PAGE).reduce((n, x) => n + x.nr, 0);
    expect(zero).toBe(511);
    expect(runAt(k, mm, a + 5 * 4096)!.kind).toBe(EntryKind.PRESENT);
    expect(mm.rssAnon).toBe(1);
    expectClean(k);
  });

  it("each mm takes one reference on the huge zero folio (MMF_HUGE_ZERO_FOLIO), dropped at exit", () => {
    const k = mkKernel();
    const m1 = mkMm(k, "a");
    const m2 = mkMm(k, "b");
    const a1 = mmap(k, m1, 4 * MiB);
    const a2 = mmap(k, m2, 2 * MiB);
    cpuFault(k, m1, a1, "read", 0, true);
    cpuFault(k, m1, a1 + 2 * MiB, "read", 0, true);
    const hz = k.phys.hugeZeroPfn;
    expect(getFolio(k, hz).refcount).toBe(2); // allocation + m1
    expect(pfnAt(k, m1, a1 + 2 * MiB)).toBe(hz);
    cpuFault(k, m2, a2, "read", 0, true);
    expect(getFolio(k, hz).refcount).toBe(3);
    expect(getFolio(k, hz).mapcount).toBe(0); // special PMDs: no mapcount
    exitMm(k, m1);
    expect(getFolio(k, hz).refcount).toBe(2);
    exitMm(k, m2);
    expect(getFolio(k, hz).refcount).toBe(1);
    expect(getFolio(k, hz).free).toBe(false);
    expectClean(k);
  });

  it("a write to an exclusive, write-protected THP (after mprotect RO→RW round trip) is reused at PMD level", () => {
    const k = mkKernel();
    const mm = mkMm(k);
    const a = mmap(k, mm, 2 * MiB);
    write(k, mm, a, bytes(64, 1));
    const head = runAt(k, mm, a)!.pfn;
    doMprotect(k, mm, a, 2 * MiB, PROT_READ);
    expect(runAt(k, mm, a)!.level).toBe(Level.PMD);
    expect(runAt(k, mm, a)!.write).toBe(false);
    doMprotect(k, mm, a, 2 * MiB, RW);
    // AnonExclusive: writable again at once
    expect(runAt(k, mm, a)!.write).toBe(true);
    expect(runAt(k, mm, a)!.pfn).toBe(head);
    expect(k.vmstat.thp_split_pmd).toBe(0);
    write(k, mm, a + MiB, bytes(8, 2));
    expect(runAt(k, mm, a)!.level).toBe(Level.PMD);
    expect(read(k, mm, a, 64)).toEqual(bytes(64, 1));
    expectClean(k);
  });

  it("smaps reports AnonHugePages for PMD-mapped THPs and drops it after a partial unmap", () => {
    const k = mkKernel();
    const mm = mkMm(k);
    const a = mmap(k, mm, 4 * MiB);
    write(k, mm, a, bytes(8, 1));
    write(k, mm, a + 2 * MiB, bytes(8, 1));
    const sm = () => getSmaps(k, mm).find((s) => s.vma.start <= a && a < s.vma.end)!;
    expect(sm().anonHugePagesKib).toBe(4096);
    expect(sm().rssKib).toBe(4096);
    expect(sm().anonymousKib).toBe(4096);
    expect(sm().thpEligible).toBe(true);
    doMunmap(k, mm, a + 2 * MiB + 4096, 4096);
    const total = getSmaps(k, mm).reduce((n, s) => n + s.anonHugePagesKib, 0);
    expect(total).toBe(2048);
    expect(getSmaps(k, mm).reduce((n, s) => n + s.rssKib, 0)).toBe(4096 - 4);
    expect(k.vmstat.nr_anon_transparent_hugepages).toBe(1);
    expectClean(k);
  });

  it("MADV_HUGEPAGE sets VM_HUGEPAGE on exactly the advised range (VMA split)", () => {
    const k = mkKernel({ tunables: { thpEnabled: "madvise" } });
    const mm = mkMm(k);
    const a = mmap(k, mm, 8 * MiB);
    doMadvise(k, mm, a + 2 * MiB, 2 * MiB, MADV_HUGEPAGE);
    expect(mm.vmas.map((v) => [v.start - a, v.end - a, (v.flags & VM_HUGEPAGE) !== 0])).toEqual([
      [0, 2 * MiB, false],
      [2 * MiB, 4 * MiB, true],
      [4 * MiB, 8 * MiB, false],
    ]);
    expect(cpuFault(k, mm, a + 2 * MiB, "write", 0, true).level).toBe(Level.PMD);
    expect(cpuFault(k, mm, a + 4 * MiB, "write", 0, true).level).toBe(Level.PTE);
    expect(cpuFault(k, mm, a, "write", 0, true).level).toBe(Level.PTE);
    expectClean(k);
  });

  it("a THP's subpages read back what was written across the whole 2 MiB", () => {
    const k = mkKernel();
    const mm = mkMm(k);
    const a = mmap(k, mm, 2 * MiB);
    const data = bytes(2 * MiB, 5);
    write(k, mm, a, data);
    expect(runAt(k, mm, a)!.level).toBe(Level.PMD);
    expect(k.phys.data.inUse).toBe(512);
    expect(read(k, mm, a + MiB - 100, 200)).toEqual(data.subarray(MiB - 100, MiB + 100));
    doMunmap(k, mm, a, 2 * MiB);
    expect(k.phys.data.inUse).toBe(0);
    expectClean(k);
  });
});
