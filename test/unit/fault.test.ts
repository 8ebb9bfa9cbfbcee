import { describe, expect, it } from "vitest";
import {
  MADV_HUGEPAGE,
  MADV_NOHUGEPAGE,
  MAP_FIXED_NOREPLACE,
  MAP_SHARED,
  MmuNotifyEvent,
  PROT_NONE,
  PROT_READ,
  VM_FAULT_SIGBUS,
  VM_FAULT_SIGSEGV,
} from "../../src/mm/constants.js";
import { SEGV_ACCERR, SEGV_MAPERR, SIGBUS, SIGSEGV, cpuFault } from "../../src/mm/access.js";
import { doMadvise } from "../../src/mm/mmap.js";
import { getFolio } from "../../src/mm/inspect.js";
import type { ThpEnabled } from "../../src/mm/kernel.js";
import {
  ANON_PRIVATE,
  EntryKind,
  GiB,
  Level,
  MiB,
  bytes,
  ev,
  expectClean,
  mkKernel,
  mkMm,
  mmap,
  read,
  recordEvents,
  runAt,
  runs,
  starts,
  write,
} from "./helpers.js";

describe("anonymous read and write faults", () => {
  it("a read fault maps the shared zero page: special, read-only, no refcount change, no RSS", () => {
    const k = mkKernel();
    const mm = mkMm(k);
    const a = mmap(k, mm, 16 * 4096);
    const zero = k.phys.zeroPfn;
    const ref0 = getFolio(k, zero).refcount;
    const free0 = k.phys.totalFreePages();
    const r = cpuFault(k, mm, a + 3 * 4096 + 17, "read", 0, true);
    expect(r.signal).toBe(0);
    expect(r.pfn).toBe(zero);
    expect(r.special).toBe(true);
    expect(r.writable).toBe(false);
    expect(r.level).toBe(Level.PTE);
    const run = runAt(k, mm, a + 3 * 4096)!;
    expect(run.kind).toBe(EntryKind.ZERO_PAGE);
    expect(run.special).toBe(true);
    expect(run.write).toBe(false);
    expect(getFolio(k, zero).refcount).toBe(ref0);
    expect(getFolio(k, zero).mapcount).toBe(0);
    expect(k.phys.totalFreePages()).toBe(free0);
    expect(mm.rssAnon).toBe(0);
    // reads of the zero page return zeros
    expect(read(k, mm, a + 3 * 4096, 32)).toEqual(new Uint8Array(32));
    // and it does not give the VMA an anon_vma (spec 3.3)
    expect(mm.findVma(a)!.anonVma).toBeNull();
    expectClean(k);
  });

  it("a write fault allocates an AnonExclusive folio with refcount 1 and mapcount 1", () => {
    const k = mkKernel();
    const mm = mkMm(k);
    const a = mmap(k, mm, 16 * 4096);
    const r = cpuFault(k, mm, a + 5 * 4096, "write", 0, true);
    expect(r.signal).toBe(0);
    expect(r.writable).toBe(true);
    expect(r.special).toBe(false);
    const f = getFolio(k, r.pfn);
    expect(f.refcount).toBe(1);
    expect(f.mapcount).toBe(1);
    expect(f.anon).toBe(true);
    expect(f.anonExclusive).toBe(true);
    expect(f.order).toBe(0);
    expect(mm.rssAnon).toBe(1);
    const run = runAt(k, mm, a + 5 * 4096)!;
    expect(run.kind).toBe(EntryKind.PRESENT);
    expect(run.dirty).toBe(true);
    expect(run.anonExclusive).toBe(true);
    expect(mm.findVma(a)!.anonVma).not.toBeNull();
    expectClean(k);
  });

  it("a write after a read replaces the zero page by a new page (no copy from the zero page's contents)", () => {
    const k = mkKernel();
    const mm = mkMm(k);
    const a = mmap(k, mm, 4 * 4096);
    cpuFault(k, mm, a, "read", 0, true);
    const evs = recordEvents(k);
    const r = cpuFault(k, mm, a, "write", 0, true);
    expect(r.pfn).not.toBe(k.phys.zeroPfn);
    expect(r.writable).toBe(true);
    expect(getFolio(k, r.pfn).anonExclusive).toBe(true);
    // wp_page_copy: CLEAR of the single page
    expect(starts(evs)).toEqual([ev(MmuNotifyEvent.CLEAR, a, a + 4096, mm.id)]);
    expect(read(k, mm, a, 16)).toEqual(new Uint8Array(16));
    expectClean(k);
  });
});

describe("THP policy", () => {
  const cases: [ThpEnabled, number, Level][] = [
    ["always", 0, Level.PMD],
    ["always", MADV_NOHUGEPAGE, Level.PTE],
    ["madvise", 0, Level.PTE],
    ["madvise", MADV_HUGEPAGE, Level.PMD],
    ["never", 0, Level.PTE],
    ["never", MADV_HUGEPAGE, Level.PTE],
  ];
  for (const [mode, advice, level] of cases) {
    it(`enabled=${mode}${advice ? (advice === MADV_HUGEPAGE ? " + MADV_HUGEPAGE" : " + MADV_NOHUGEPAGE") : ""}: write fault maps a ${Level[level]}`, () => {
      const k = mkKernel({ tunables: { thpEnabled: mode } });
      const mm = mkMm(k);
      const a = mmap(k, mm, 4 * MiB);
      if (advice) doMadvise(k, mm, a, 4 * MiB, advice);
      const r = cpuFault(k, mm, a + 2 * MiB + 4096, "write", 0, true);
      expect(r.signal).toBe(0);
      expect(r.level).toBe(level);
      const f = getFolio(k, r.pfn);
      if (level === Level.PMD) {
        expect(f.order).toBe(9);
        expect(f.headPfn).toBe(r.pfn - 1);
        expect(f.refcount).toBe(1);
        expect(f.entireMapcount).toBe(1);
        expect(f.mapcount).toBe(1);
        expect(mm.rssAnon).toBe(512);
        expect(k.vmstat.nr_anon_transparent_hugepages).toBe(1);
        expect(k.vmstat.thp_fault_alloc).toBe(1);
      } else {
        expect(f.order).toBe(0);
        expect(mm.rssAnon).toBe(1);
        expect(k.vmstat.nr_anon_transparent_hugepages).toBe(0);
      }
      expectClean(k);
    });
  }

  it("no THP when the aligned 2 MiB block is not entirely inside the VMA", () => {
    const k = mkKernel();
    const mm = mkMm(k);
    const base = 0x20_0000_0000;
    mmap(k, mm, 2 * MiB, { addr: base + 4096, flags: ANON_PRIVATE | MAP_FIXED_NOREPLACE });
    const r = cpuFault(k, mm, base + MiB, "write", 0, true);
    expect(r.level).toBe(Level.PTE);
    expect(getFolio(k, r.pfn).order).toBe(0);
    expectClean(k);
  });

  it("a read fault maps the huge zero folio; a write then replaces it by a THP with one CLEAR over the 2 MiB", () => {
    const k = mkKernel();
    const mm = mkMm(k);
    const a = mmap(k, mm, 2 * MiB);
    expect(a % (2 * MiB)).toBe(0);
    const r = cpuFault(k, mm, a + 12345, "read", 0, true);
    expect(r.signal).toBe(0);
    expect(r.level).toBe(Level.PMD);
    const hz = runAt(k, mm, a)!;
    expect(hz.kind).toBe(EntryKind.HUGE_ZERO);
    expect(hz.special).toBe(true);
    expect(hz.write).toBe(false);
    expect(getFolio(k, hz.pfn).hugeZero).toBe(true);
    expect(mm.rssAnon).toBe(0);
    expect(read(k, mm, a + MiB, 8)).toEqual(new Uint8Array(8));
    const evs = recordEvents(k);
    const w = cpuFault(k, mm, a + MiB + 5, "write", 0, true);
    expect(w.signal).toBe(0);
    expect(w.level).toBe(Level.PMD);
    expect(w.writable).toBe(true);
    expect(starts(evs)).toEqual([ev(MmuNotifyEvent.CLEAR, a, a + 2 * MiB, mm.id)]);
    const thp = runAt(k, mm, a)!;
    expect(thp.kind).toBe(EntryKind.PRESENT);
    expect(thp.anonExclusive).toBe(true);
    const f = getFolio(k, thp.pfn);
    expect(f.order).toBe(9);
    expect(f.hugeZero).toBe(false);
    expect(f.refcount).toBe(1);
    expect(f.mapcount).toBe(1);
    expect(mm.rssAnon).toBe(512);
    expect(read(k, mm, a, 8)).toEqual(new Uint8Array(8));
    expectClean(k);
  });

  it("use_zero_page=0: a read fault allocates a THP right away", () => {
    const k = mkKernel({ tunables: { thpUseZeroPage: false } });
    const mm = mkMm(k);
    const a = mmap(k, mm, 2 * MiB);
    const r = cpuFault(k, mm, a, "read", 0, true);
    expect(r.level).toBe(Level.PMD);
    expect(runAt(k, mm, a)!.kind).toBe(EntryKind.PRESENT);
    expect(getFolio(k, r.pfn).order).toBe(9);
    expectClean(k);
  });
});

describe("access errors (spec 3.1)", () => {
  it("a write to a PROT_READ VMA is SIGSEGV/SEGV_ACCERR and maps nothing", () => {
    const k = mkKernel();
    const mm = mkMm(k);
    const a = mmap(k, mm, 4 * 4096, { prot: PROT_READ });
    const r = cpuFault(k, mm, a, "write", 0, true);
    expect(r.signal).toBe(SIGSEGV);
    expect(r.siCode).toBe(SEGV_ACCERR);
    // The arch entry check refuses it: handle_mm_fault never runs.
    expect(r.vmFault).toBe(0);
    expect(runs(k, mm, a, a + 4 * 4096)).toEqual([]);
    // a read is fine
    expect(cpuFault(k, mm, a, "read", 0, true).signal).toBe(0);
    expectClean(k);
  });

  it("any access to a PROT_NONE VMA is SEGV_ACCERR", () => {
    const k = mkKernel();
    const mm = mkMm(k);
    const a = mmap(k, mm, 4 * 4096, { prot: PROT_NONE });
    for (const acc of ["read", "write", "exec"] as const) {
      const r = cpuFault(k, mm, a, acc, 0, true);
      expect(r.signal).toBe(SIGSEGV);
      expect(r.siCode).toBe(SEGV_ACCERR);
    }
    expectClean(k);
  });

  it("no VMA at the address is SIGSEGV/SEGV_MAPERR", () => {
    const k = mkKernel();
    const mm = mkMm(k);
    const a = mmap(k, mm, 4 * 4096);
    const r = cpuFault(k, mm, a + 4 * 4096, "read", 0, true);
    expect(r.signal).toBe(SIGSEGV);
    expect(r.siCode).toBe(SEGV_MAPERR);
    const r2 = cpuFault(k, mm, 0x1000, "write", 0, true);
    expect(r2.siCode).toBe(SEGV_MAPERR);
    expectClean(k);
  });
});

describe("device (PFN) mappings and data", () => {
  it("a device mapping whose driver has no PFN source raises SIGBUS", () => {
    const k = mkKernel();
    const mm = mkMm(k);
    const a = mmap(k, mm, 16 * 4096, {
      flags: MAP_SHARED,
      device: { kind: "pfnmap", pfnRangeId: 0, basePfn: -1, hugeFault: false },
    });
    const r = cpuFault(k, mm, a + 4096, "read", 0, true);
    expect(r.signal).toBe(SIGBUS);
    expect(r.vmFault & VM_FAULT_SIGBUS).toBe(VM_FAULT_SIGBUS);
    expect(runs(k, mm, a, a + 16 * 4096)).toEqual([]);
    expectClean(k);
  });

  it("huge_fault picks PUD, PMD or PTE by VA/PFN congruence and whether the block fits in the VMA", () => {
    const k = mkKernel();
    const mm = mkMm(k);
    const len = GiB + 2 * MiB + 2 * 4096;
    const bar = k.phys.registerPfnRange("bar", len / 4096 + 1, 262144);
    expect(bar.startPfn % 262144).toBe(0);
    const a = mmap(k, mm, len, {
      flags: MAP_SHARED,
      device: { kind: "pfnmap", pfnRangeId: bar.id, basePfn: bar.startPfn, hugeFault: true },
    });
    expect(a % GiB).toBe(0);
    const expectLeaf = (addr: number, level: Level, leafAddr: number, pfn: number) => {
      const r = cpuFault(k, mm, addr, "read", 0, true);
      expect(r.signal).toBe(0);
      expect(r.level).toBe(level);
      expect(r.special).toBe(true);
      const run = runAt(k, mm, addr)!;
      expect(run.level).toBe(level);
      expect(run.addr).toBe(leafAddr);
      expect(run.pfn).toBe(pfn);
      expect(run.kind).toBe(EntryKind.SPECIAL);
    };
    expectLeaf(a + 300 * MiB, Level.PUD, a, bar.startPfn);
    expectLeaf(a + GiB + 4096, Level.PMD, a + GiB, bar.startPfn + 262144);
    // the 2 MiB block at a+1G+2M does not fit in the VMA: PTE
    expectLeaf(a + GiB + 2 * MiB + 4096, Level.PTE, a + GiB + 2 * MiB + 4096, bar.startPfn + 262144 + 512 + 1);
    expect(k.vmstat.pfn_inserts_pud).toBe(1);
    expect(k.vmstat.pfn_inserts_pmd).toBe(1);
    expect(k.vmstat.pfn_inserts_pte).toBe(1);
    // writable: MAP_SHARED|PROT_WRITE without write-notify
    expect(runAt(k, mm, a)!.write).toBe(true);
    expectClean(k);
  });

  it("huge_fault falls back to PTEs when the PFN is not congruent with the VA", () => {
    const k = mkKernel();
    const mm = mkMm(k);
    const len = GiB + 2 * MiB;
    const bar = k.phys.registerPfnRange("bar", len / 4096 + 1, 262144);
    const a = mmap(k, mm, len, {
      flags: MAP_SHARED,
      device: { kind: "pfnmap", pfnRangeId: bar.id, basePfn: bar.startPfn + 1, hugeFault: true },
    });
    for (const off of [0, 300 * MiB, GiB + 4096]) {
      const r = cpuFault(k, mm, a + off, "read", 0, true);
      expect(r.level).toBe(Level.PTE);
      expect(r.pfn).toBe(bar.startPfn + 1 + off / 4096);
    }
    expect(k.vmstat.pfn_inserts_pud + k.vmstat.pfn_inserts_pmd).toBe(0);
    expectClean(k);
  });

  it("without ->huge_fault, or with THP disabled, only PTEs are used", () => {
    for (const [hugeFault, thp] of [[false, "always"], [true, "never"]] as [boolean, ThpEnabled][]) {
      const k = mkKernel({ tunables: { thpEnabled: thp } });
      const mm = mkMm(k);
      const bar = k.phys.registerPfnRange("bar", 1024, 512);
      const a = mmap(k, mm, 4 * MiB, {
        flags: MAP_SHARED,
        device: { kind: "pfnmap", pfnRangeId: bar.id, basePfn: bar.startPfn, hugeFault },
      });
      expect(a % (2 * MiB)).toBe(0);
      const r = cpuFault(k, mm, a, "read", 0, true);
      expect(r.level).toBe(Level.PTE);
      expect(r.pfn).toBe(bar.startPfn);
      expectClean(k);
    }
  });

  it("bytes written across a page boundary are read back (two faulted pages)", () => {
    const k = mkKernel();
    const mm = mkMm(k);
    const a = mmap(k, mm, 8 * 4096);
    write(k, mm, a + 4000, bytes(200, 3));
    expect(read(k, mm, a + 4000, 200)).toEqual(bytes(200, 3));
    expect(mm.rssAnon).toBe(2);
    expectClean(k);
  });
});
