import { describe, expect, it } from "vitest";
import type { Kernel } from "../../src/mm/kernel.js";
import type { Mm } from "../../src/mm/mm.js";
import {
  MADV_DONTNEED,
  MADV_HUGEPAGE,
  MADV_NOHUGEPAGE,
  MAP_FIXED_NOREPLACE,
  MmuNotifyEvent,
  MAP_PRIVATE,
  MAP_SHARED,
  PROT_READ,
  VM_DONTDUMP,
  VM_DONTEXPAND,
  VM_FAULT_NOPAGE,
  VM_FAULT_SIGBUS,
  VM_IO,
  VM_PFNMAP,
} from "../../src/mm/constants.js";
import { Errno } from "../../src/mm/errors.js";
import { type InsertRequest, insertPfnRange } from "../../src/mm/insert.js";
import { getFolio } from "../../src/mm/inspect.js";
import { cpuFault } from "../../src/mm/access.js";
import { doMadvise, doMunmap, forkMm } from "../../src/mm/mmap.js";
import type { ThpEnabled } from "../../src/mm/kernel.js";
import {
  EntryKind,
  GiB,
  Level,
  MiB,
  catchMmError,
  ev,
  expectClean,
  mkKernel,
  mkMm,
  mmap,
  recordEvents,
  runAt,
  runs,
  starts,
} from "./helpers.js";

const NPAGES = 262144 + 1536 + 3; // 1 GiB + 6 MiB + 12 KiB

function setup(opts: { thp?: ThpEnabled; kind?: "pfnmap" | "mixedmap"; hugeFault?: boolean; len?: number; prot?: number; flags?: number } = {}) {
  const k = mkKernel({ tunables: { thpEnabled: opts.thp ?? "always" } });
  const mm = mkMm(k);
  const len = opts.len ?? NPAGES * 4096;
  const bar = k.phys.registerPfnRange("bar", len / 4096 + 1, 262144);
  const kind = opts.kind ?? "pfnmap";
  const va = mmap(k, mm, len, {
    flags: opts.flags ?? MAP_SHARED,
    prot: opts.prot,
    device: { kind, pfnRangeId: bar.id, basePfn: -1, hugeFault: opts.hugeFault ?? kind === "pfnmap" },
  });
  return { k, mm, bar, va, len };
}

function ins(k: Kernel, mm: Mm, req: Partial<InsertRequest> & { addr: number; pfn: number }) {
  return insertPfnRange(k, mm, { nrPages: 1, mode: "eager", write: false, prot: null, ...req });
}

describe("vmf_insert_pfn_range eager mode (spec 4.6)", () => {
  it("1 GiB + 6 MiB + 12 KiB at a 1 GiB aligned VA and PFN: 1 PUD, 3 PMD and 3 PTE leaves", () => {
    const { k, mm, bar, va } = setup();
    expect(va % GiB).toBe(0);
    const evs = recordEvents(k);
    const r = ins(k, mm, { addr: va, pfn: bar.startPfn, nrPages: NPAGES });
    expect(r.vmFault).toBe(VM_FAULT_NOPAGE);
    expect(r.errno).toBe(0);
    expect([r.pud, r.pmd, r.pte]).toEqual([1, 3, 3]);
    expect(r.alreadyPopulated).toBe(0);
    expect(r.leaves).toEqual([
      { level: Level.PUD, addr: va, pfn: bar.startPfn, count: 1 },
      { level: Level.PMD, addr: va + GiB, pfn: bar.startPfn + 262144, count: 3 },
      { level: Level.PTE, addr: va + GiB + 6 * MiB, pfn: bar.startPfn + 262144 + 1536, count: 3 },
    ]);
    const rs = runs(k, mm, va, va + NPAGES * 4096);
    expect(rs.map((x) => [x.level, x.addr, x.nr, x.pfn, x.kind, x.special])).toEqual([
      [Level.PUD, va, 1, bar.startPfn, EntryKind.SPECIAL, true],
      [Level.PMD, va + GiB, 3, bar.startPfn + 262144, EntryKind.SPECIAL, true],
      [Level.PTE, va + GiB + 6 * MiB, 3, bar.startPfn + 262144 + 1536, EntryKind.SPECIAL, true],
    ]);
    // MAP_SHARED read-write without write-notify: vm_page_prot is writable
    expect(rs.every((x) => x.write)).toBe(true);
    // establishing mappings never notifies
    expect(evs).toEqual([]);
    expect(k.vmstat.mmu_invalidations).toBe(0);
    expectClean(k);
  });

  it("the same range with the PFN off by one page gives only PTE leaves", () => {
    const { k, mm, bar, va } = setup();
    const r = ins(k, mm, { addr: va, pfn: bar.startPfn + 1, nrPages: NPAGES });
    expect([r.pud, r.pmd, r.pte]).toEqual([0, 0, NPAGES]);
    expect(r.leaves).toEqual([{ level: Level.PTE, addr: va, pfn: bar.startPfn + 1, count: NPAGES }]);
    const rs = runs(k, mm, va, va + NPAGES * 4096);
    expect(rs).toHaveLength(1);
    expect(rs[0]!.level).toBe(Level.PTE);
    expect(rs[0]!.nr).toBe(NPAGES);
    expectClean(k);
  });

  it("is idempotent: a second identical insert reports everything already populated and changes nothing", () => {
    const { k, mm, bar, va } = setup();
    ins(k, mm, { addr: va, pfn: bar.startPfn, nrPages: NPAGES });
    const before = runs(k, mm, va, va + NPAGES * 4096);
    const writes = k.pt.writes;
    const r = ins(k, mm, { addr: va, pfn: bar.startPfn, nrPages: NPAGES });
    expect(r.vmFault).toBe(VM_FAULT_NOPAGE);
    expect([r.pud, r.pmd, r.pte]).toEqual([0, 0, 0]);
    expect(r.leaves).toEqual([]);
    expect(r.alreadyPopulated).toBe(NPAGES);
    expect(k.pt.writes).toBe(writes);
    expect(runs(k, mm, va, va + NPAGES * 4096)).toEqual(before);
    // a different PFN over populated slots is also left alone (NOPAGE, no error)
    const r2 = ins(k, mm, { addr: va + GiB, pfn: bar.startPfn + 7, nrPages: 4 });
    expect(r2.errno).toBe(0);
    expect(r2.pte + r2.pmd + r2.pud).toBe(0);
    expect(runs(k, mm, va, va + NPAGES * 4096)).toEqual(before);
    expectClean(k);
  });

  it("a PMD slot with a PTE table below it is filled at PTE level (slot_is_none_at_level)", () => {
    const { k, mm, bar, va } = setup();
    // one PTE first, inside the second 2 MiB block
    const r0 = ins(k, mm, { addr: va + 2 * MiB + 4096, pfn: bar.startPfn + 512 + 1, nrPages: 1 });
    expect(r0.pte).toBe(1);
    const r = ins(k, mm, { addr: va, pfn: bar.startPfn, nrPages: 262144 });
    // PUD slot is a table now: no PUD leaf; the block with the PTE table gets PTEs
    expect(r.pud).toBe(0);
    expect(r.pmd).toBe(511);
    expect(r.pte).toBe(511);
    expect(r.alreadyPopulated).toBe(1);
    expect(runAt(k, mm, va + 2 * MiB)!.level).toBe(Level.PTE);
    expect(runAt(k, mm, va + 4 * MiB)!.level).toBe(Level.PMD);
    expectClean(k);
  });

  it("leaves are read-only in a PROT_READ mapping; `write` cannot make them writable", () => {
    const { k, mm, bar, va } = setup({ prot: PROT_READ, len: 4 * MiB });
    const r = ins(k, mm, { addr: va, pfn: bar.startPfn, nrPages: 1024, write: true });
    expect(r.pmd).toBe(2);
    for (const x of runs(k, mm, va, va + 4 * MiB)) expect(x.write).toBe(false);
    expectClean(k);
  });

  it("THP sysfs enabled=never: only PTEs, even for aligned PFNs", () => {
    const { k, mm, bar, va } = setup({ thp: "never", len: 4 * MiB });
    expect(va % (2 * MiB)).toBe(0);
    const r = ins(k, mm, { addr: va, pfn: bar.startPfn, nrPages: 1024 });
    expect([r.pud, r.pmd, r.pte]).toEqual([0, 0, 1024]);
    expect(runs(k, mm, va, va + 4 * MiB).every((x) => x.level === Level.PTE)).toBe(true);
    expectClean(k);
  });

  it("no refcount, mapcount or notifier activity even for PFNs that have struct pages", () => {
    const { k, mm, va } = setup({ len: 16 * 4096 });
    const pfn = k.phys.allocFolio(0, 0);
    k.refHolders.push(() => new Map([[pfn, { refs: 1, pins: 0 }]]));
    const evs = recordEvents(k);
    const before = getFolio(k, pfn);
    const r = ins(k, mm, { addr: va + 4096, pfn, nrPages: 1 });
    expect(r.pte).toBe(1);
    const after = getFolio(k, pfn);
    expect(after.refcount).toBe(before.refcount);
    expect(after.mapcount).toBe(0);
    expect(mm.rssFile + mm.rssAnon + mm.rssShmem).toBe(0);
    expect(evs).toEqual([]);
    expect(runAt(k, mm, va + 4096)!.special).toBe(true);
    // and tearing it down does not touch the folio either
    doMunmap(k, mm, va, 16 * 4096);
    expect(getFolio(k, pfn).refcount).toBe(1);
    expectClean(k);
  });
});

describe("fault and remap modes", () => {
  it("fault mode inserts only the block holding the address, at the level the rule picks", () => {
    const { k, mm, bar, va } = setup();
    const r = insertPfnRange(k, mm, { addr: va + 5 * 4096, pfn: bar.startPfn + 5, nrPages: 1, mode: "fault", write: false, prot: null });
    expect(r.leaves).toEqual([{ level: Level.PUD, addr: va, pfn: bar.startPfn, count: 1 }]);
    const t = va + GiB + 2 * MiB + 77 * 4096;
    const r2 = insertPfnRange(k, mm, { addr: t, pfn: bar.startPfn + (t - va) / 4096, nrPages: 1, mode: "fault", write: false, prot: null });
    expect(r2.leaves).toEqual([{ level: Level.PMD, addr: va + GiB + 2 * MiB, pfn: bar.startPfn + 262144 + 512, count: 1 }]);
    // in the 12 KiB tail the 2 MiB block does not fit in the VMA: one PTE
    const t3 = va + GiB + 6 * MiB + 4096;
    const r3 = insertPfnRange(k, mm, { addr: t3, pfn: bar.startPfn + (t3 - va) / 4096, nrPages: 1, mode: "fault", write: false, prot: null });
    expect(r3.leaves).toEqual([{ level: Level.PTE, addr: t3, pfn: bar.startPfn + (t3 - va) / 4096, count: 1 }]);
    expect(runs(k, mm, va, va + NPAGES * 4096).map((x) => x.level)).toEqual([Level.PUD, Level.PMD, Level.PTE]);
    expectClean(k);
  });

  it("remap mode: PTEs only, sets VM_IO|VM_PFNMAP|VM_DONTEXPAND|VM_DONTDUMP, requires every PTE none", () => {
    const { k, mm, bar, va } = setup({ len: 4 * MiB });
    const r = insertPfnRange(k, mm, { addr: va, pfn: bar.startPfn, nrPages: 1024, mode: "remap", write: false, prot: null });
    expect(r.errno).toBe(0);
    expect([r.pud, r.pmd, r.pte]).toEqual([0, 0, 1024]);
    const rs = runs(k, mm, va, va + 4 * MiB);
    expect(rs).toHaveLength(1);
    expect(rs[0]!.level).toBe(Level.PTE);
    expect(rs[0]!.special).toBe(true);
    const flags = mm.findVma(va)!.flags;
    const want = VM_IO | VM_PFNMAP | VM_DONTEXPAND | VM_DONTDUMP;
    expect(flags & want).toBe(want);
    // a second remap over populated PTEs is a kernel bug
    const writes = k.pt.writes;
    const e = catchMmError(() =>
      insertPfnRange(k, mm, { addr: va + 4096, pfn: bar.startPfn + 1, nrPages: 4, mode: "remap", write: false, prot: null }),
    );
    expect(e.kind).toBe("kernel-bug");
    expect(k.pt.writes).toBe(writes);
    expectClean(k);
  });
});

describe("insert errors", () => {
  it("a range that ends beyond the VMA is VM_FAULT_SIGBUS/EFAULT and inserts nothing", () => {
    const { k, mm, bar, va } = setup({ len: 4 * MiB });
    const writes = k.pt.writes;
    const r = ins(k, mm, { addr: va + 4 * MiB - 2 * 4096, pfn: bar.startPfn, nrPages: 3 });
    expect(r.vmFault).toBe(VM_FAULT_SIGBUS);
    expect(r.errno).toBe(Errno.EFAULT);
    expect(r.leaves).toEqual([]);
    expect(runs(k, mm, va, va + 4 * MiB)).toEqual([]);
    expect(k.pt.writes).toBe(writes);
    // no VMA at all
    const r2 = ins(k, mm, { addr: va + 8 * MiB, pfn: bar.startPfn, nrPages: 1 });
    expect(r2.vmFault).toBe(VM_FAULT_SIGBUS);
    expect(r2.errno).toBe(Errno.EFAULT);
    expectClean(k);
  });

  it("a VMA without VM_PFNMAP or VM_MIXEDMAP is a kernel bug", () => {
    const k = mkKernel();
    const mm = mkMm(k);
    const a = mmap(k, mm, 16 * 4096);
    const e = catchMmError(() => ins(k, mm, { addr: a, pfn: 0x3800_0000, nrPages: 1 }));
    expect(e.kind).toBe("kernel-bug");
    expect(runs(k, mm, a, a + 16 * 4096)).toEqual([]);
    expectClean(k);
  });

  it("VM_MIXEDMAP: raw PFNs are inserted as special PTEs (no huge leaves)", () => {
    const { k, mm, bar, va } = setup({ kind: "mixedmap", len: 4 * MiB, flags: MAP_PRIVATE });
    const r = ins(k, mm, { addr: va, pfn: bar.startPfn, nrPages: 1024 });
    expect([r.pud, r.pmd, r.pte]).toEqual([0, 0, 1024]);
    expect(runs(k, mm, va, va + 4 * MiB).every((x) => x.special && x.level === Level.PTE)).toBe(true);
    expectClean(k);
  });

  it("VM_MIXEDMAP receiving a PFN that has a struct page is a kernel bug (spec 4.1)", () => {
    const { k, mm, va } = setup({ kind: "mixedmap", len: 16 * 4096, flags: MAP_SHARED });
    const pfn = k.phys.allocFolio(0, 0);
    k.refHolders.push(() => new Map([[pfn, { refs: 1, pins: 0 }]]));
    const e = catchMmError(() => ins(k, mm, { addr: va, pfn, nrPages: 1 }));
    expect(e.kind).toBe("kernel-bug");
    expect(runs(k, mm, va, va + 16 * 4096)).toEqual([]);
    expectClean(k);
  });

  it("inserted entries are what a CPU access then uses (no further fault)", () => {
    const { k, mm, bar, va } = setup({ len: 4 * MiB });
    ins(k, mm, { addr: va, pfn: bar.startPfn, nrPages: 1024 });
    const r = cpuFault(k, mm, va + MiB + 4096, "read", 0, true);
    expect(r.signal).toBe(0);
    expect(r.level).toBe(Level.PMD);
    expect(r.pfn).toBe(bar.startPfn + 256 + 1);
    expectClean(k);
  });
});

describe("the THP gate for PFN mappings (spec 4.5 step 1)", () => {
  it("enabled=madvise: huge leaves only after MADV_HUGEPAGE; MADV_NOHUGEPAGE disables them under enabled=always", () => {
    {
      const { k, mm, bar, va } = setup({ thp: "madvise", len: 4 * MiB });
      expect(ins(k, mm, { addr: va, pfn: bar.startPfn, nrPages: 512 }).pte).toBe(512);
      doMadvise(k, mm, va + 2 * MiB, 2 * MiB, MADV_HUGEPAGE);
      const r = ins(k, mm, { addr: va + 2 * MiB, pfn: bar.startPfn + 512, nrPages: 512 });
      expect([r.pmd, r.pte]).toEqual([1, 0]);
      expectClean(k);
    }
    {
      const { k, mm, bar, va } = setup({ thp: "always", len: 4 * MiB });
      doMadvise(k, mm, va, 4 * MiB, MADV_NOHUGEPAGE);
      const r = ins(k, mm, { addr: va, pfn: bar.startPfn, nrPages: 1024 });
      expect([r.pmd, r.pte]).toEqual([0, 1024]);
      expectClean(k);
    }
  });
});

describe("huge special leaves elsewhere (spec 4.7)", () => {
  it("a partial munmap inside a PUD leaf clears the whole leaf (CLEAR over the aligned GiB) before the UNMAP; the rest refaults smaller", () => {
    const { k, mm, bar, va } = setup({ len: GiB + 2 * MiB });
    const dev = mm.findVma(va)!.device!;
    dev.basePfn = bar.startPfn; // let the driver's fault handler refault the rest
    ins(k, mm, { addr: va, pfn: bar.startPfn, nrPages: 262144 });
    expect(runAt(k, mm, va)!.level).toBe(Level.PUD);
    const evs = recordEvents(k);
    doMunmap(k, mm, va + 4096, 4096);
    expect(starts(evs)).toEqual([
      ev(MmuNotifyEvent.CLEAR, va, va + GiB, mm.id),
      ev(MmuNotifyEvent.UNMAP, va + 4096, va + 2 * 4096, mm.id),
    ]);
    expect(runs(k, mm, va, va + GiB)).toEqual([]);
    expect(cpuFault(k, mm, va + 2 * MiB, "read", 0, true).level).toBe(Level.PMD);
    expect(cpuFault(k, mm, va + 3 * 4096, "read", 0, true).level).toBe(Level.PTE);
    expect(cpuFault(k, mm, va, "read", 0, true).level).toBe(Level.PTE);
    expectClean(k);
  });

  it("fork copies special PUD/PMD leaves of a shared PFNMAP VMA as they are (writable, no event)", () => {
    const { k, mm, bar, va } = setup();
    ins(k, mm, { addr: va, pfn: bar.startPfn, nrPages: NPAGES });
    const evs = recordEvents(k);
    const child = forkMm(k, mm, "child", 1);
    expect(evs).toEqual([]);
    expect(runs(k, child, va, va + NPAGES * 4096)).toEqual(runs(k, mm, va, va + NPAGES * 4096));
    expect(runAt(k, child, va)!.write).toBe(true);
    expectClean(k);
  });

  it("MADV_DONTNEED is allowed on VM_MIXEDMAP: special PTEs cleared with one CLEAR, no refcount effect", () => {
    const { k, mm, bar, va } = setup({ kind: "mixedmap", len: 16 * 4096, flags: MAP_SHARED });
    ins(k, mm, { addr: va, pfn: bar.startPfn, nrPages: 16 });
    const evs = recordEvents(k);
    doMadvise(k, mm, va + 4 * 4096, 8 * 4096, MADV_DONTNEED);
    expect(starts(evs)).toEqual([ev(MmuNotifyEvent.CLEAR, va + 4 * 4096, va + 12 * 4096, mm.id)]);
    expect(runs(k, mm, va, va + 16 * 4096).map((x) => [x.addr - va, x.nr])).toEqual([
      [0, 4],
      [12 * 4096, 4],
    ]);
    expectClean(k);
  });

  it("adjacent VM_SPECIAL mappings never merge", () => {
    const k = mkKernel();
    const mm = mkMm(k);
    const bar = k.phys.registerPfnRange("bar", 64, 1);
    const base = 0x50_0000_0000;
    for (const off of [0, 8 * 4096]) {
      mmap(k, mm, 8 * 4096, {
        addr: base + off,
        flags: MAP_SHARED | MAP_FIXED_NOREPLACE,
        device: { kind: "pfnmap", pfnRangeId: bar.id, basePfn: -1, hugeFault: false },
      });
    }
    expect(mm.mapCount).toBe(2);
    expectClean(k);
  });
});
