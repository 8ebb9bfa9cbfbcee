/**
 * get_user_pages / pin_user_pages (spec 2.2, 5.1-5.9): exact refcount,
 * _pincount, vmstat and per-folio update counts; validation per variant;
 * check_vma_flags; special PFNs; GUP-fast; FOLL_LONGTERM migration; the
 * bias-2019 accounting profile. Every kernel's invariants are checked after
 * each test (gup-helpers.ts).
 */
import { describe, expect, it } from "vitest";
import { readMemory, translate, writeMemory } from "../../src/mm/access.js";
import {
  FOLL_ANON,
  FOLL_DUMP,
  FOLL_FAST_ONLY,
  FOLL_FORCE,
  FOLL_GET,
  FOLL_HONOR_NUMA_FAULT,
  FOLL_LONGTERM,
  FOLL_NOFAULT,
  FOLL_PCI_P2PDMA,
  FOLL_PIN,
  FOLL_SPLIT_PMD,
  FOLL_TOUCH,
  FOLL_WRITE,
  Level,
  MAP_HUGETLB,
  MAP_HUGE_1GB,
  MAP_SHARED,
  MemoryType,
  MmuNotifyEvent,
  PAGE_SIZE,
  PMD_SIZE,
  PROT_NONE,
  PROT_READ,
  PUD_SIZE,
  TASK_SIZE_MAX,
  Zone,
} from "../../src/mm/constants.js";
import { MmError } from "../../src/mm/errors.js";
import { GUP_VARIANTS, folioMaybeDmaPinned, gupCall, type GupVariant } from "../../src/mm/gup.js";
import { insertPfnRange } from "../../src/mm/insert.js";
import type { Kernel } from "../../src/mm/kernel.js";
import type { Mm } from "../../src/mm/mm.js";
import type { NotifierRange } from "../../src/mm/mmu-notifier.js";
import { createFile, doMmap, doMunmap, forkMm } from "../../src/mm/mmap.js";
import { batchFolios, batchRuns } from "../../src/mm/pfn-batch.js";
import { PG_anon_exclusive, PG_dirty } from "../../src/mm/physmem.js";
import { FileKind } from "../../src/mm/vma.js";
import { RW, counters, gup, mapDeviceCoherentAnon, mmapAnon, mmapDevice, newKernel, vmInsertPage } from "./gup-helpers.js";

const EFAULT = -14;
const EINVAL = -22;
const EEXIST = -17;
const ENOMEM = -12;
const EOPNOTSUPP = -95;
const EREMOTEIO = -121;
const EOVERFLOW = -75;

function pfnAt(k: Kernel, mm: Mm, addr: number): number {
  return translate(k, mm, addr)!.pfn;
}

function clearEvents(k: Kernel): NotifierRange[] {
  const ev: NotifierRange[] = [];
  k.invalidationObservers.add((r, phase) => {
    if (phase === "start" && r.event === MmuNotifyEvent.CLEAR) ev.push(r);
  });
  return ev;
}

describe("small folio", () => {
  it("two pins of a mapped page: refcount 1 + 2*1024 = 2049, one update each", () => {
    const { k, mm } = newKernel();
    const a = mmapAnon(k, mm, PAGE_SIZE, { populate: true });
    const pfn = pfnAt(k, mm, a);
    const c0 = counters(k);
    const r1 = gup(k, mm, "pin_user_pages", a, 1);
    const r2 = gup(k, mm, "pin_user_pages_fast", a, 1);
    expect([r1.ret, r2.ret]).toEqual([1, 1]);
    expect([r1.refUpdates, r2.refUpdates]).toEqual([1, 1]);
    expect(r2.fastPinned).toBe(1);
    expect(k.phys.refcount(pfn)).toBe(2049);
    expect(folioMaybeDmaPinned(k, pfn)).toBe(true);
    const c1 = counters(k);
    expect(c1.acq - c0.acq).toBe(2);
    expect(c1.upd - c0.upd).toBe(2);
    expect(mm.hasPinned).toBe(true);
    expect(batchRuns(r1.ranges)).toEqual([{ pfn, count: 1 }]);
    k.pins.releaseHandle(1, r1.handle);
    k.pins.releaseHandle(1, r2.handle);
    expect(k.phys.refcount(pfn)).toBe(1);
    expect(counters(k).rel - c0.rel).toBe(2);
  });

  it("FOLL_GET adds one reference per page; 4 KiB folios are one update each", () => {
    const { k, mm } = newKernel();
    const a = mmapAnon(k, mm, 8 * PAGE_SIZE, { populate: true });
    const c0 = counters(k);
    const r = gup(k, mm, "get_user_pages", a, 8);
    expect(r.ret).toBe(8);
    expect(r.refUpdates).toBe(8);
    for (let i = 0; i < 8; i++) expect(k.phys.refcount(pfnAt(k, mm, a + i * PAGE_SIZE))).toBe(2);
    expect(counters(k).acq).toBe(c0.acq); // GET is not a pin
    k.pins.releaseHandle(1, r.handle);
    for (let i = 0; i < 8; i++) expect(k.phys.refcount(pfnAt(k, mm, a + i * PAGE_SIZE))).toBe(1);
  });
});

describe("THP", () => {
  it("PMD-mapped: pin of 512 pages = refcount 513, pincount 512, exactly 1 update", () => {
    const { k, mm } = newKernel();
    const a = mmapAnon(k, mm, PMD_SIZE, { populate: true });
    const t = translate(k, mm, a)!;
    expect(t.level).toBe(Level.PMD);
    const head = t.pfn;
    const c0 = counters(k);
    const r = gup(k, mm, "pin_user_pages", a, 512);
    expect(r.ret).toBe(512);
    expect(r.refUpdates).toBe(1);
    expect(k.phys.refcount(head)).toBe(513);
    expect(k.phys.pincount(head)).toBe(512);
    expect(counters(k).acq - c0.acq).toBe(512);
    expect(counters(k).upd - c0.upd).toBe(1);
    expect(batchRuns(r.ranges)).toEqual([{ pfn: head, count: 512 }]);
    expect(batchFolios(r.ranges)).toEqual([{ head, pfn: head, count: 512 }]);
    // three pages in the middle: +3 / +3, one update
    const m = gup(k, mm, "pin_user_pages_fast", a + 100 * PAGE_SIZE, 3, 0, { output: "pages" });
    expect(m.ret).toBe(3);
    expect(m.refUpdates).toBe(1);
    expect([...m.pages!]).toEqual([head + 100, head + 101, head + 102]);
    expect(k.phys.refcount(head)).toBe(516);
    expect(k.phys.pincount(head)).toBe(515);
    k.pins.releaseHandle(1, r.handle);
    k.pins.releaseHandle(1, m.handle);
    expect([k.phys.refcount(head), k.phys.pincount(head)]).toEqual([1, 0]);
    expect(counters(k).rel - c0.rel).toBe(515);
  });

  it("PTE-mapped after a partial munmap split: 511 pages of one folio are 1 update", () => {
    const { k, mm } = newKernel();
    const a = mmapAnon(k, mm, PMD_SIZE, { populate: true });
    const head = pfnAt(k, mm, a);
    doMunmap(k, mm, a + 511 * PAGE_SIZE, PAGE_SIZE);
    expect(translate(k, mm, a)!.level).toBe(Level.PTE);
    expect(k.phys.folioOrder(head)).toBe(9);
    expect(k.phys.refcount(head)).toBe(511);
    for (const variant of ["pin_user_pages", "pin_user_pages_fast"] as const) {
      const r = gup(k, mm, variant, a, 511);
      expect(r.ret).toBe(511);
      expect(r.refUpdates).toBe(1);
      expect(k.phys.refcount(head)).toBe(1022);
      expect(k.phys.pincount(head)).toBe(511);
      k.pins.releaseHandle(1, r.handle);
    }
    const g = gup(k, mm, "get_user_pages_fast", a, 511);
    expect(g.refUpdates).toBe(1);
    expect(k.phys.refcount(head)).toBe(1022);
    k.pins.releaseHandle(1, g.handle);
  });

  it("FOLL_SPLIT_PMD splits the PMD (CLEAR) and pins at PTE level with one update", () => {
    const { k, mm } = newKernel();
    const a = mmapAnon(k, mm, PMD_SIZE, { populate: true });
    const head = pfnAt(k, mm, a);
    const ev = clearEvents(k);
    const splits = k.vmstat.thp_split_pmd;
    const r = gup(k, mm, "pin_user_pages", a, 512, FOLL_SPLIT_PMD);
    expect(r.ret).toBe(512);
    expect(r.refUpdates).toBe(1);
    expect(k.vmstat.thp_split_pmd).toBe(splits + 1);
    expect(ev.map((e) => [e.start, e.end])).toEqual([[a, a + PMD_SIZE]]);
    expect(translate(k, mm, a)!.level).toBe(Level.PTE);
    expect(k.phys.refcount(head)).toBe(512 + 512);
    expect(k.phys.pincount(head)).toBe(512);
    k.pins.releaseHandle(1, r.handle);
  });

  it("1 GiB of PMD-mapped THP: 512 updates, ranges merged, 512 folio boundaries", () => {
    const { k, mm } = newKernel();
    const a = mmapAnon(k, mm, PUD_SIZE, { populate: true });
    const c0 = counters(k);
    const r = gup(k, mm, "pin_user_pages", a, PUD_SIZE / PAGE_SIZE, FOLL_LONGTERM | FOLL_WRITE);
    expect(r.ret).toBe(262144);
    expect(r.refUpdates).toBe(512);
    expect(counters(k).upd - c0.upd).toBe(512);
    expect(counters(k).acq - c0.acq).toBe(262144);
    expect(r.ranges.end).toBeLessThanOrEqual(512);
    expect(r.ranges.folioEnd).toBe(512);
    expect(r.ranges.totalPfns).toBe(262144);
    const head = pfnAt(k, mm, a + 7 * PMD_SIZE);
    expect([k.phys.refcount(head), k.phys.pincount(head)]).toEqual([513, 512]);
    const f = gup(k, mm, "pin_user_pages_fast", a, 262144, FOLL_WRITE);
    expect(f.fastPinned).toBe(262144);
    expect(f.refUpdates).toBe(512);
    k.pins.releaseHandle(1, r.handle);
    k.pins.releaseHandle(1, f.handle);
    expect(counters(k).rel - c0.rel).toBe(2 * 262144);
  });
});

describe("hugetlb 1 GiB", () => {
  function giant(k: Kernel, mm: Mm): number {
    return mmapAnon(k, mm, PUD_SIZE, { populate: true, flags: MAP_HUGETLB | MAP_HUGE_1GB });
  }

  it("pin of all 262144 pages is one update: refcount 1 + 262144, pincount 262144", () => {
    const { k, mm } = newKernel();
    const a = giant(k, mm);
    const t = translate(k, mm, a)!;
    expect(t.level).toBe(Level.PUD);
    const head = t.pfn;
    for (const variant of ["pin_user_pages", "pin_user_pages_fast", "pin_user_pages_remote"] as const) {
      const c0 = counters(k);
      const r = gup(k, mm, variant, a, 262144, FOLL_LONGTERM);
      expect(r.ret).toBe(262144);
      expect(r.refUpdates).toBe(1);
      expect(counters(k).acq - c0.acq).toBe(262144);
      expect(k.phys.refcount(head)).toBe(1 + 262144);
      expect(k.phys.pincount(head)).toBe(262144);
      expect(batchRuns(r.ranges)).toEqual([{ pfn: head, count: 262144 }]);
      k.pins.releaseHandle(1, r.handle);
      expect(k.phys.refcount(head)).toBe(1);
    }
  });
});

describe("zero pages", () => {
  it("4 KiB zero page: a pin is a no-op, FOLL_GET takes real references", () => {
    const { k, mm } = newKernel();
    const a = mmapAnon(k, mm, 16 * PAGE_SIZE);
    readMemory(k, mm, a, 16 * PAGE_SIZE);
    const zero = k.phys.zeroPfn;
    expect(pfnAt(k, mm, a)).toBe(zero);
    const ref0 = k.phys.refcount(zero);
    const c0 = counters(k);
    const p = gup(k, mm, "pin_user_pages_fast", a, 16, 0, { output: "pages" });
    expect(p.ret).toBe(16);
    expect(p.fastPinned).toBe(0); // special PTEs: GUP-fast falls back
    expect(p.handle).toBe(0); // nothing held
    expect([...p.pages!]).toEqual(new Array(16).fill(zero));
    expect(k.phys.refcount(zero)).toBe(ref0);
    expect(counters(k)).toEqual(c0);
    expect(mm.hasPinned).toBe(true);
    const g = gup(k, mm, "get_user_pages", a, 16);
    expect(g.ret).toBe(16);
    expect(g.refUpdates).toBe(1); // 16 consecutive references to one page
    expect(k.phys.refcount(zero)).toBe(ref0 + 16);
    k.pins.releaseHandle(1, g.handle);
    expect(k.phys.refcount(zero)).toBe(ref0);
  });

  it("a long-term R/O pin of the zero page unshares into exclusive anon pages", () => {
    const { k, mm } = newKernel();
    const a = mmapAnon(k, mm, 4 * PAGE_SIZE);
    readMemory(k, mm, a, 4 * PAGE_SIZE);
    const r = gup(k, mm, "pin_user_pages", a, 4, FOLL_LONGTERM, { output: "pages" });
    expect(r.ret).toBe(4);
    for (let i = 0; i < 4; i++) {
      const pfn = r.pages![i]!;
      expect(pfn).not.toBe(k.phys.zeroPfn);
      expect(pfnAt(k, mm, a + i * PAGE_SIZE)).toBe(pfn);
      expect(k.phys.refcount(pfn)).toBe(1025);
      expect(k.phys.flags(pfn) & PG_anon_exclusive).not.toBe(0);
      expect(translate(k, mm, a + i * PAGE_SIZE)!.hi & 2 /* E_WRITE */).toBe(0);
    }
    k.pins.releaseHandle(1, r.handle);
  });

  it("huge zero folio: pinned like a large folio (slow path; GUP-fast rejects the special PMD)", () => {
    const { k, mm } = newKernel();
    const a = mmapAnon(k, mm, PMD_SIZE);
    readMemory(k, mm, a, 1);
    const hz = k.phys.hugeZeroPfn;
    expect(hz).toBeGreaterThanOrEqual(0);
    expect(pfnAt(k, mm, a)).toBe(hz);
    const ref0 = k.phys.refcount(hz);
    const c0 = counters(k);
    const r = gup(k, mm, "pin_user_pages_fast", a, 512);
    expect(r.ret).toBe(512);
    expect(r.fastPinned).toBe(0);
    expect(r.refUpdates).toBe(1);
    expect(k.phys.refcount(hz)).toBe(ref0 + 512);
    expect(k.phys.pincount(hz)).toBe(512);
    expect(counters(k).acq - c0.acq).toBe(512);
    k.pins.releaseHandle(1, r.handle);
    expect([k.phys.refcount(hz), k.phys.pincount(hz)]).toEqual([ref0, 0]);
    expect(counters(k).rel - c0.rel).toBe(512);
  });

  it("a long-term R/O pin of the huge zero PMD unshares into a fresh THP", () => {
    const { k, mm } = newKernel();
    const a = mmapAnon(k, mm, PMD_SIZE);
    readMemory(k, mm, a, 1);
    const hz = k.phys.hugeZeroPfn;
    const r = gup(k, mm, "pin_user_pages", a, 512, FOLL_LONGTERM);
    expect(r.ret).toBe(512);
    const t = translate(k, mm, a)!;
    expect(t.level).toBe(Level.PMD);
    expect(t.pfn).not.toBe(hz);
    expect([k.phys.refcount(t.pfn), k.phys.pincount(t.pfn)]).toEqual([513, 512]);
    expect(k.phys.pincount(hz)).toBe(0);
    k.pins.releaseHandle(1, r.handle);
  });
});

describe("device memory", () => {
  it("device-coherent: short-term pins in place; FOLL_LONGTERM migrates to RAM", () => {
    const { k, mm } = newKernel();
    const pm = k.phys.registerPagemap("coherent", MemoryType.DEVICE_COHERENT, 64, 7);
    const a = mmapAnon(k, mm, PAGE_SIZE);
    const dev = k.phys.allocDevicePage(pm);
    mapDeviceCoherentAnon(k, mm, a, dev);
    writeMemory(k, mm, a, new TextEncoder().encode("coherent"));
    const s = gup(k, mm, "pin_user_pages_fast", a, 1);
    expect(s.ret).toBe(1);
    expect(s.fastPinned).toBe(1);
    expect(k.phys.refcount(dev)).toBe(1025);
    k.pins.releaseHandle(1, s.handle);
    const ev = clearEvents(k);
    const mig = k.vmstat.pgmigrate_success;
    const r = gup(k, mm, "pin_user_pages_fast", a, 1, FOLL_LONGTERM, { output: "pages" });
    expect(r.ret).toBe(1);
    expect(r.fastPinned).toBe(0);
    const pfn = r.pages![0]!;
    expect(pfn).not.toBe(dev);
    expect(k.phys.zoneOf(pfn)).not.toBe(Zone.DEVICE);
    expect(k.phys.folioIsLongtermPinnable(pfn)).toBe(true);
    expect(pfnAt(k, mm, a)).toBe(pfn);
    expect(k.phys.refcount(pfn)).toBe(1025);
    expect(k.vmstat.pgmigrate_success).toBe(mig + 1);
    expect(ev.map((e) => [e.start, e.end])).toEqual([[a, a + PAGE_SIZE]]);
    expect(pm.allocated).toBe(0); // the device page went back to the driver
    expect(new TextDecoder().decode(readMemory(k, mm, a, 8).data)).toBe("coherent");
    k.pins.releaseHandle(1, r.handle);
  });

  it("device-coherent with an unexpected reference: the long-term pin fails with -EBUSY, nothing held", () => {
    const { k, mm } = newKernel();
    const pm = k.phys.registerPagemap("coherent", MemoryType.DEVICE_COHERENT, 16, 7);
    const a = mmapAnon(k, mm, PAGE_SIZE);
    const dev = k.phys.allocDevicePage(pm);
    mapDeviceCoherentAnon(k, mm, a, dev);
    const g = gup(k, mm, "get_user_pages", a, 1, 0, { session: 2 });
    const c0 = counters(k);
    const r = gup(k, mm, "pin_user_pages", a, 1, FOLL_LONGTERM);
    expect(r.ret).toBe(-16);
    expect(r.handle).toBe(0);
    expect(pfnAt(k, mm, a)).toBe(dev);
    expect(k.phys.refcount(dev)).toBe(2);
    const c1 = counters(k);
    expect(c1.acq - c0.acq).toBe(c1.rel - c0.rel);
    k.pins.releaseHandle(2, g.handle);
  });

  it("P2PDMA: -EREMOTEIO without FOLL_PCI_P2PDMA (even populate-only), pinned with it", () => {
    const { k, mm } = newKernel();
    const pm = k.phys.registerPagemap("p2p", MemoryType.PCI_P2PDMA, 16, 9);
    const a = mmapDevice(k, mm, 2 * PAGE_SIZE, { kind: "mixedmap", pfnRangeId: 0, basePfn: -1, hugeFault: false });
    const d0 = k.phys.allocDevicePage(pm);
    const d1 = k.phys.allocDevicePage(pm);
    vmInsertPage(k, mm, a, d0);
    vmInsertPage(k, mm, a + PAGE_SIZE, d1);
    expect(k.phys.refcount(d0)).toBe(1);
    for (const variant of ["pin_user_pages", "pin_user_pages_fast", "get_user_pages", "get_user_pages_fast"] as const) {
      const r = gup(k, mm, variant, a, 2);
      expect([variant, r.ret]).toEqual([variant, EREMOTEIO]);
    }
    const fo = gup(k, mm, "get_user_pages_fast_only", a, 2);
    expect(fo.ret).toBe(0);
    const pop = gup(k, mm, "get_user_pages", a, 2, 0, { wantPages: false, output: "none" });
    expect(pop.ret).toBe(EREMOTEIO);
    expect(k.phys.refcount(d0)).toBe(1);
    const ok = gup(k, mm, "pin_user_pages_fast", a, 2, FOLL_PCI_P2PDMA | FOLL_WRITE);
    expect(ok.ret).toBe(2);
    expect(ok.fastPinned).toBe(0); // folio->mapping NULL: gup_fast_folio_allowed says no
    expect([k.phys.refcount(d0), k.phys.refcount(d1)]).toEqual([1 + 1024, 1 + 1024]);
    const bad = gup(k, mm, "pin_user_pages_fast", a, 2, FOLL_PCI_P2PDMA | FOLL_LONGTERM);
    expect(bad.ret).toBe(EINVAL);
    k.pins.releaseHandle(1, ok.handle);
    expect(k.phys.refcount(d0)).toBe(1);
  });

  it("VM_PFNMAP: -EFAULT; nothing taken", () => {
    const { k, mm } = newKernel();
    const bar = k.phys.registerPfnRange("bar", 512, 512);
    const a = mmapDevice(k, mm, PMD_SIZE, { kind: "pfnmap", pfnRangeId: bar.id, basePfn: bar.startPfn, hugeFault: false });
    insertPfnRange(k, mm, { addr: a, pfn: bar.startPfn, nrPages: 512, mode: "eager", write: false, prot: null });
    const c0 = counters(k);
    for (const variant of ["pin_user_pages", "pin_user_pages_fast", "get_user_pages", "get_user_pages_fast"] as const) {
      expect(gup(k, mm, variant, a, 4).ret).toBe(EFAULT);
    }
    expect(gup(k, mm, "get_user_pages_fast_only", a, 4).ret).toBe(0);
    expect(counters(k)).toEqual(c0);
  });

  it("VM_MIXEDMAP special PTEs: -EEXIST with pages[], skipped (counted) without", () => {
    const { k, mm } = newKernel();
    const bar = k.phys.registerPfnRange("bar", 16, 16);
    const a = mmapDevice(k, mm, 8 * PAGE_SIZE, { kind: "mixedmap", pfnRangeId: bar.id, basePfn: -1, hugeFault: false });
    insertPfnRange(k, mm, { addr: a, pfn: bar.startPfn, nrPages: 8, mode: "eager", write: false, prot: null });
    expect(gup(k, mm, "pin_user_pages", a, 8).ret).toBe(EEXIST);
    expect(gup(k, mm, "get_user_pages", a, 8).ret).toBe(EEXIST);
    expect(gup(k, mm, "pin_user_pages_fast", a, 8).ret).toBe(EEXIST);
    const pop = gup(k, mm, "get_user_pages", a, 8, 0, { wantPages: false, output: "none" });
    expect(pop.ret).toBe(8);
    expect(pop.handle).toBe(0);
  });
});

describe("argument validation (is_valid_gup_args, spec 5.3)", () => {
  const variants = Object.keys(GUP_VARIANTS) as GupVariant[];
  const pinVariant = (v: GupVariant) => v.startsWith("pin_");
  const fastVariant = (v: GupVariant) => GUP_VARIANTS[v].fast;
  const remoteVariant = (v: GupVariant) => v.endsWith("_remote");
  const invalidRet = (v: GupVariant) => (v === "pin_user_pages" || v === "pin_user_pages_remote" || v === "pin_user_pages_unlocked" ? 0 : EINVAL);

  interface Case {
    what: string;
    flags: number;
    wantPages: boolean;
    locked?: number;
    valid: boolean;
  }
  const table: [GupVariant, Case][] = [];
  for (const v of variants) {
    const pin = pinVariant(v);
    const fast = fastVariant(v);
    table.push([v, { what: "internal FOLL_TOUCH from the caller", flags: FOLL_TOUCH, wantPages: true, valid: false }]);
    table.push([v, { what: "internal FOLL_PIN from the caller", flags: FOLL_PIN, wantPages: true, valid: false }]);
    table.push([v, { what: "FOLL_GET", flags: FOLL_GET, wantPages: true, valid: !pin }]);
    table.push([v, { what: "FOLL_LONGTERM", flags: FOLL_LONGTERM, wantPages: true, valid: pin }]);
    table.push([v, { what: "pages == NULL", flags: 0, wantPages: false, valid: !pin && !fast }]);
    table.push([v, { what: "FOLL_LONGTERM|FOLL_PCI_P2PDMA", flags: FOLL_LONGTERM | FOLL_PCI_P2PDMA, wantPages: true, valid: false }]);
    table.push([v, { what: "FOLL_DUMP (not in the GUP-fast whitelist)", flags: FOLL_DUMP, wantPages: true, valid: !fast }]);
    table.push([v, { what: "plain", flags: 0, wantPages: true, valid: true }]);
    if (remoteVariant(v)) {
      table.push([v, { what: "*locked == 0", flags: 0, wantPages: true, locked: 0, valid: false }]);
      table.push([v, { what: "*locked == 1", flags: 0, wantPages: true, locked: 1, valid: true }]);
    }
  }

  it.each(table.map(([v, c]) => [v, c.what, c] as const))("%s, %s", (v, _what, c) => {
    const { k, mm } = newKernel();
    const a = mmapAnon(k, mm, PAGE_SIZE, { populate: true });
    const pfn = pfnAt(k, mm, a);
    const r = gupCall(k, mm, { variant: v, start: a, nrPages: 1, gupFlags: c.flags, wantPages: c.wantPages, output: "ranges", session: 1, locked: c.locked });
    if (c.valid) {
      expect(r.ret).toBe(1);
      expect(r.warning).toBe("");
    } else {
      expect(r.ret).toBe(invalidRet(v));
      expect(r.warning).toMatch(/^WARN_ON_ONCE/);
      expect(r.handle).toBe(0);
      expect(mm.hasPinned).toBe(false); // I7: only calls that passed validation
      expect(k.phys.refcount(pfn)).toBe(1);
    }
    if (r.handle !== 0) k.pins.releaseHandle(1, r.handle);
  });

  it("nr_pages == 0 returns 0; only pin_user_pages_fast sets MMF_HAS_PINNED then (I7)", () => {
    for (const v of variants) {
      const { k, mm } = newKernel();
      const a = mmapAnon(k, mm, PAGE_SIZE, { populate: true });
      const r = gup(k, mm, v, a, 0);
      expect(r.ret).toBe(0);
      expect([v, mm.hasPinned]).toEqual([v, v === "pin_user_pages_fast"]);
    }
  });

  it("MMF_HAS_PINNED is set by a valid pin that pinned nothing, and never cleared", () => {
    const { k, mm } = newKernel();
    expect(gup(k, mm, "pin_user_pages", 0x10000, 1).ret).toBe(EFAULT);
    expect(mm.hasPinned).toBe(true);
    const { k: k2, mm: mm2 } = newKernel();
    expect(gup(k2, mm2, "get_user_pages", 0x10000, 1).ret).toBe(EFAULT);
    expect(mm2.hasPinned).toBe(false);
  });

  it("malformed requests are MmError 'invalid'", () => {
    const { k, mm } = newKernel();
    expect(() => gup(k, mm, "pin_user_pages", -1, 1)).toThrow(MmError);
    expect(() => gup(k, mm, "pin_user_pages", 0, 1.5)).toThrow(/nr_pages/);
  });
});

describe("slow path: check_vma_flags and follow_page_mask", () => {
  it("no VMA: -EFAULT; partial success is a count", () => {
    const { k, mm } = newKernel();
    const a = mmapAnon(k, mm, 2 * PAGE_SIZE, { populate: true });
    doMunmap(k, mm, a + 2 * PAGE_SIZE, PAGE_SIZE);
    const r = gup(k, mm, "pin_user_pages", a, 4);
    expect(r.ret).toBe(2);
    expect(r.ranges.totalPfns).toBe(2);
    k.pins.releaseHandle(1, r.handle);
    expect(gup(k, mm, "pin_user_pages", a + 16 * PAGE_SIZE, 1).ret).toBe(EFAULT);
  });

  it("faults in what is not mapped (write fault for FOLL_WRITE), FOLL_NOFAULT refuses", () => {
    const { k, mm } = newKernel();
    const a = mmapAnon(k, mm, 4 * PAGE_SIZE);
    writeMemory(k, mm, a, new Uint8Array([1]));
    writeMemory(k, mm, a + PAGE_SIZE, new Uint8Array([1]));
    const nf = gup(k, mm, "pin_user_pages", a, 4, FOLL_NOFAULT | FOLL_WRITE);
    expect(nf.ret).toBe(2);
    k.pins.releaseHandle(1, nf.handle);
    expect(gup(k, mm, "pin_user_pages", a + 2 * PAGE_SIZE, 2, FOLL_NOFAULT).ret).toBe(EFAULT);
    const faults = k.vmstat.pgfault;
    const w = gup(k, mm, "pin_user_pages", a, 4, FOLL_WRITE);
    expect(w.ret).toBe(4);
    expect(k.vmstat.pgfault).toBe(faults + 2);
    expect(pfnAt(k, mm, a + 3 * PAGE_SIZE)).not.toBe(k.phys.zeroPfn);
    k.pins.releaseHandle(1, w.handle);
  });

  it("FOLL_DUMP: holes and zero pages are -EFAULT", () => {
    const { k, mm } = newKernel();
    const a = mmapAnon(k, mm, 2 * PAGE_SIZE);
    expect(gup(k, mm, "get_user_pages", a, 2, FOLL_DUMP).ret).toBe(EFAULT);
    readMemory(k, mm, a, 1);
    expect(gup(k, mm, "get_user_pages", a, 2, FOLL_DUMP).ret).toBe(EFAULT);
  });

  it("permissions: PROT_NONE and read-only write need FOLL_FORCE; FORCE writes COW privately", () => {
    const { k, mm } = newKernel();
    const none = mmapAnon(k, mm, PAGE_SIZE, { prot: PROT_NONE });
    expect(gup(k, mm, "pin_user_pages", none, 1).ret).toBe(EFAULT);
    const forced = gup(k, mm, "pin_user_pages", none, 1, FOLL_FORCE);
    expect(forced.ret).toBe(1); // the (protnone) zero page, a no-op pin
    expect(gup(k, mm, "pin_user_pages", none, 1, FOLL_FORCE | FOLL_HONOR_NUMA_FAULT).ret).toBe(1);
    const ro = mmapAnon(k, mm, PAGE_SIZE, { prot: PROT_READ });
    expect(gup(k, mm, "pin_user_pages", ro, 1, FOLL_WRITE).ret).toBe(EFAULT);
    const fw = gup(k, mm, "pin_user_pages", ro, 1, FOLL_WRITE | FOLL_FORCE, { output: "pages" });
    expect(fw.ret).toBe(1);
    const pfn = fw.pages![0]!;
    expect(pfn).not.toBe(k.phys.zeroPfn);
    expect(k.phys.flags(pfn) & PG_anon_exclusive).not.toBe(0);
    expect(translate(k, mm, ro)!.hi & 2).toBe(0); // the PTE stays read-only
    k.pins.releaseHandle(1, fw.handle);
    // FOLL_FORCE writes are refused in shared mappings without VM_WRITE
    const shm = doMmap(k, mm, { addr: 0, length: PAGE_SIZE, prot: PROT_READ, flags: MAP_SHARED | 0x20, fileId: 0, offset: 0, device: null });
    expect(gup(k, mm, "get_user_pages", shm, 1, FOLL_WRITE | FOLL_FORCE).ret).toBe(EFAULT);
  });

  it("FOLL_ANON, fsdax LONGTERM, SPLIT_PMD on hugetlb, LONGTERM writes of dirty-tracked files", () => {
    const { k, mm } = newKernel();
    const shm = doMmap(k, mm, { addr: 0, length: PAGE_SIZE, prot: RW, flags: MAP_SHARED | 0x20, fileId: 0, offset: 0, device: null });
    expect(gup(k, mm, "get_user_pages", shm, 1, FOLL_ANON).ret).toBe(EFAULT);
    const pm = k.phys.registerPagemap("pmem", MemoryType.FS_DAX, 64, 1);
    const dax = createFile(k, { name: "dax", sizeBytes: 8 * PAGE_SIZE, kind: FileKind.FSDAX, hugePageSize: 0, pgmapId: pm.id }, 1);
    const d = doMmap(k, mm, { addr: 0, length: 8 * PAGE_SIZE, prot: RW, flags: MAP_SHARED, fileId: dax.id, offset: 0, device: null });
    expect(gup(k, mm, "pin_user_pages", d, 1, FOLL_LONGTERM).ret).toBe(EOPNOTSUPP);
    const sd = gup(k, mm, "pin_user_pages", d, 1); // short-term is fine
    expect(sd.ret).toBe(1);
    k.pins.releaseHandle(1, sd.handle);
    const h = mmapAnon(k, mm, PMD_SIZE, { populate: true, flags: MAP_HUGETLB });
    expect(gup(k, mm, "pin_user_pages", h, 1, FOLL_SPLIT_PMD).ret).toBe(EOPNOTSUPP);
    const ext4 = createFile(k, { name: "f", sizeBytes: 2 * PAGE_SIZE, kind: FileKind.DIRTY_TRACKED, hugePageSize: 0, pgmapId: 0 }, 1);
    const f = doMmap(k, mm, { addr: 0, length: 2 * PAGE_SIZE, prot: RW, flags: MAP_SHARED, fileId: ext4.id, offset: 0, device: null });
    expect(gup(k, mm, "pin_user_pages", f, 1, FOLL_LONGTERM | FOLL_WRITE).ret).toBe(EFAULT);
    const st = gup(k, mm, "pin_user_pages", f, 1, FOLL_WRITE);
    expect(st.ret).toBe(1);
    expect(k.phys.flags(pfnAt(k, mm, f)) & PG_dirty).not.toBe(0);
    k.pins.releaseHandle(1, st.handle);
    const lr = gup(k, mm, "pin_user_pages", f, 1, FOLL_LONGTERM);
    expect(lr.ret).toBe(1); // R/O long-term pins of a shared file mapping are allowed
    k.pins.releaseHandle(1, lr.handle);
  });

  it("R/O pin of a page shared after fork unshares it (pinned pages are AnonExclusive)", () => {
    const { k, mm } = newKernel();
    const a = mmapAnon(k, mm, PAGE_SIZE, { populate: true });
    writeMemory(k, mm, a, new TextEncoder().encode("shared"));
    const old = pfnAt(k, mm, a);
    const child = forkMm(k, mm, "child", 1);
    expect(k.phys.flags(old) & PG_anon_exclusive).toBe(0);
    const r = gup(k, mm, "pin_user_pages", a, 1, 0, { output: "pages" });
    expect(r.ret).toBe(1);
    const pfn = r.pages![0]!;
    expect(pfn).not.toBe(old);
    expect(pfnAt(k, child, a)).toBe(old);
    expect(k.phys.flags(pfn) & PG_anon_exclusive).not.toBe(0);
    expect(k.phys.refcount(pfn)).toBe(1025);
    expect(new TextDecoder().decode(readMemory(k, mm, a, 6).data)).toBe("shared");
    k.pins.releaseHandle(1, r.handle);
  });
});

describe("fork after pin (spec 8: early COW)", () => {
  it("a pinned exclusive page is copied for the child instead of shared", () => {
    const { k, mm } = newKernel();
    const a = mmapAnon(k, mm, PAGE_SIZE, { populate: true });
    writeMemory(k, mm, a, new TextEncoder().encode("pinned"));
    const pfn = pfnAt(k, mm, a);
    const r = gup(k, mm, "pin_user_pages_fast", a, 1, FOLL_WRITE | FOLL_LONGTERM);
    expect(r.ret).toBe(1);
    const child = forkMm(k, mm, "child", 1);
    const cp = pfnAt(k, child, a);
    expect(cp).not.toBe(pfn);
    expect(pfnAt(k, mm, a)).toBe(pfn);
    expect(k.phys.refcount(pfn)).toBe(1025);
    expect(k.phys.refcount(cp)).toBe(1);
    expect(k.phys.flags(pfn) & PG_anon_exclusive).not.toBe(0);
    expect(translate(k, mm, a)!.hi & 2).not.toBe(0); // the parent keeps its writable PTE
    expect(new TextDecoder().decode(readMemory(k, child, a, 6).data)).toBe("pinned");
    k.pins.releaseHandle(1, r.handle);
  });

  it("a pinned THP: the parent PMD is split and every exclusive page copied for the child", () => {
    const { k, mm } = newKernel();
    const a = mmapAnon(k, mm, PMD_SIZE, { populate: true });
    const head = pfnAt(k, mm, a);
    const r = gup(k, mm, "pin_user_pages", a + 5 * PAGE_SIZE, 1);
    const child = forkMm(k, mm, "child", 1);
    for (const i of [0, 5, 511]) {
      expect(pfnAt(k, child, a + i * PAGE_SIZE)).not.toBe(head + i);
      expect(pfnAt(k, mm, a + i * PAGE_SIZE)).toBe(head + i);
    }
    expect(k.phys.pincount(head)).toBe(1);
    k.pins.releaseHandle(1, r.handle);
  });
});

describe("GUP-fast", () => {
  it("FOLL_FAST_ONLY stops at the first unpopulated page (no fallback)", () => {
    const { k, mm } = newKernel();
    const a = mmapAnon(k, mm, 4 * PAGE_SIZE);
    writeMemory(k, mm, a, new Uint8Array(2 * PAGE_SIZE));
    const r = gup(k, mm, "get_user_pages_fast_only", a, 4);
    expect(r.ret).toBe(2);
    k.pins.releaseHandle(1, r.handle);
    expect(gup(k, mm, "get_user_pages_fast", a, 4, FOLL_FAST_ONLY).ret).toBe(EINVAL); // internal flag
    const f = gup(k, mm, "get_user_pages_fast", a, 4);
    expect([f.ret, f.fastPinned]).toEqual([4, 2]);
    k.pins.releaseHandle(1, f.handle);
  });

  it("end beyond TASK_SIZE_MAX is -EFAULT, start + len overflowing 2^64 is -EOVERFLOW", () => {
    const { k, mm } = newKernel();
    expect(gup(k, mm, "pin_user_pages_fast", TASK_SIZE_MAX - PAGE_SIZE, 2).ret).toBe(EFAULT);
    expect(gup(k, mm, "pin_user_pages_fast", TASK_SIZE_MAX - PAGE_SIZE, 1).ret).toBe(EFAULT); // no VMA (slow path)
    expect(gup(k, mm, "get_user_pages_fast", PAGE_SIZE, 2 ** 52).ret).toBe(EOVERFLOW);
    expect(mm.hasPinned).toBe(true);
  });

  it("write_protect_seq odd (fork write-protecting): FOLL_PIN walk takes 0, the slow path does the work", () => {
    const { k, mm } = newKernel();
    const a = mmapAnon(k, mm, PMD_SIZE, { populate: true });
    mm.writeProtectSeq = 1;
    const c0 = counters(k);
    const r = gup(k, mm, "pin_user_pages_fast", a, 512);
    expect([r.ret, r.fastPinned]).toEqual([512, 0]);
    expect(counters(k).acq - c0.acq).toBe(512);
    const g = gup(k, mm, "get_user_pages_fast_only", a, 512); // FOLL_GET does not look at the seqcount
    expect(g.ret).toBe(512);
    mm.writeProtectSeq = 2;
    const f = gup(k, mm, "pin_user_pages_fast", a, 512);
    expect(f.fastPinned).toBe(512);
    for (const h of [r.handle, g.handle, f.handle]) k.pins.releaseHandle(1, h);
  });

  it("R/O long-term pins of read-only file PTEs fall back (no VMA to tell COW); the slow path pins shared ones", () => {
    const { k, mm } = newKernel();
    const memfd = createFile(k, { name: "m", sizeBytes: 4 * PAGE_SIZE, kind: FileKind.SHMEM, hugePageSize: 0, pgmapId: 0 }, 1);
    const ro = doMmap(k, mm, { addr: 0, length: 4 * PAGE_SIZE, prot: PROT_READ, flags: MAP_SHARED | 0x8000, fileId: memfd.id, offset: 0, device: null });
    const pfn = pfnAt(k, mm, ro);
    const r = gup(k, mm, "pin_user_pages_fast", ro, 4, FOLL_LONGTERM);
    expect([r.ret, r.fastPinned]).toEqual([4, 0]);
    expect(pfnAt(k, mm, ro)).toBe(pfn); // shared mapping: no COW break
    const s = gup(k, mm, "pin_user_pages_fast", ro, 4); // short-term R/O: not unshared
    expect([s.ret, s.fastPinned]).toEqual([4, 4]);
    const rw = doMmap(k, mm, { addr: 0, length: 4 * PAGE_SIZE, prot: RW, flags: MAP_SHARED | 0x8000, fileId: memfd.id, offset: 0, device: null });
    const w = gup(k, mm, "pin_user_pages_fast", rw, 4, FOLL_LONGTERM | FOLL_WRITE);
    expect([w.ret, w.fastPinned]).toEqual([4, 4]); // shmem is allowed for writable long-term pins
    expect(k.phys.refcount(pfn)).toBe(1 + 2 + 3 * 1024);
    for (const h of [r.handle, s.handle, w.handle]) k.pins.releaseHandle(1, h);
  });

  it("a R/O long-term pin in a private file mapping breaks COW (gup_must_unshare on a non-anon page)", () => {
    const { k, mm } = newKernel();
    const memfd = createFile(k, { name: "m", sizeBytes: PAGE_SIZE, kind: FileKind.SHMEM, hugePageSize: 0, pgmapId: 0 }, 1);
    const a = doMmap(k, mm, { addr: 0, length: PAGE_SIZE, prot: RW, flags: 0x2, fileId: memfd.id, offset: 0, device: null });
    readMemory(k, mm, a, 1); // maps the page-cache page read-only
    const cached = memfd.cache.get(0);
    expect(pfnAt(k, mm, a)).toBe(cached);
    const short = gup(k, mm, "pin_user_pages", a, 1, 0, { output: "pages" });
    expect(short.pages![0]).toBe(cached);
    const r = gup(k, mm, "pin_user_pages", a, 1, FOLL_LONGTERM, { output: "pages" });
    const pfn = r.pages![0]!;
    expect(pfn).not.toBe(cached);
    expect(k.phys.flags(pfn) & PG_anon_exclusive).not.toBe(0);
    expect(pfnAt(k, mm, a)).toBe(pfn);
    for (const h of [short.handle, r.handle]) k.pins.releaseHandle(1, h);
  });
});

describe("FOLL_LONGTERM migrate-then-pin (spec 5.8)", () => {
  it("migrates a page out of ZONE_MOVABLE: new pfn, data preserved, CLEAR, long-term pinnable", () => {
    const { k, mm } = newKernel({ phys: { ramBytes: 2 ** 30, movableBytes: 2 ** 29 } });
    const a = mmapAnon(k, mm, 2 * PAGE_SIZE);
    writeMemory(k, mm, a, new TextEncoder().encode("movable!"));
    writeMemory(k, mm, a + PAGE_SIZE, new TextEncoder().encode("second"));
    const old = pfnAt(k, mm, a);
    expect(k.phys.zoneOf(old)).toBe(Zone.MOVABLE);
    const ev = clearEvents(k);
    const c0 = counters(k);
    const r = gup(k, mm, "pin_user_pages", a, 2, FOLL_LONGTERM | FOLL_WRITE, { output: "pages" });
    expect(r.ret).toBe(2);
    const pfn = r.pages![0]!;
    expect(pfn).not.toBe(old);
    expect(k.phys.zoneOf(pfn)).not.toBe(Zone.MOVABLE);
    expect(k.phys.folioIsLongtermPinnable(pfn)).toBe(true);
    expect(pfnAt(k, mm, a)).toBe(pfn);
    expect(k.phys.isFree(old)).toBe(true);
    expect(k.phys.refcount(pfn)).toBe(1025);
    expect(k.vmstat.pgmigrate_success).toBe(2);
    expect(ev.map((e) => [e.start, e.end])).toEqual([
      [a, a + PAGE_SIZE],
      [a + PAGE_SIZE, a + 2 * PAGE_SIZE],
    ]);
    // the first round's pins were dropped before migrating
    const c1 = counters(k);
    expect([c1.acq - c0.acq, c1.rel - c0.rel]).toEqual([4, 2]);
    expect(new TextDecoder().decode(readMemory(k, mm, a, 8).data)).toBe("movable!");
    expect(new TextDecoder().decode(readMemory(k, mm, a + PAGE_SIZE, 6).data)).toBe("second");
    k.pins.releaseHandle(1, r.handle);
  });

  it("migrates a PMD-mapped THP as one folio (GUP-fast falls back first)", () => {
    const { k, mm } = newKernel({ phys: { ramBytes: 2 ** 30, movableBytes: 2 ** 29 } });
    const a = mmapAnon(k, mm, PMD_SIZE, { populate: true });
    writeMemory(k, mm, a + 300 * PAGE_SIZE, new TextEncoder().encode("thp"));
    const old = pfnAt(k, mm, a);
    expect(k.phys.zoneOf(old)).toBe(Zone.MOVABLE);
    const ev = clearEvents(k);
    const r = gup(k, mm, "pin_user_pages_fast", a, 512, FOLL_LONGTERM);
    expect([r.ret, r.fastPinned]).toEqual([512, 0]);
    const t = translate(k, mm, a)!;
    expect(t.level).toBe(Level.PMD);
    expect(t.pfn).not.toBe(old);
    expect(k.phys.folioOrder(t.pfn)).toBe(9);
    expect([k.phys.refcount(t.pfn), k.phys.pincount(t.pfn)]).toEqual([513, 512]);
    expect(k.phys.folioIsLongtermPinnable(t.pfn)).toBe(true);
    expect(ev.map((e) => [e.start, e.end])).toEqual([[a, a + PMD_SIZE]]);
    expect(k.vmstat.pgmigrate_success).toBe(512);
    expect(new TextDecoder().decode(readMemory(k, mm, a + 300 * PAGE_SIZE, 3).data)).toBe("thp");
    k.pins.releaseHandle(1, r.handle);
  });

  it("migrates a shared file page out of ZONE_MOVABLE: page cache and every mapping follow", () => {
    const { k, mm } = newKernel({ phys: { ramBytes: 2 ** 30, movableBytes: 2 ** 29 } });
    const memfd = createFile(k, { name: "m", sizeBytes: PAGE_SIZE, kind: FileKind.SHMEM, hugePageSize: 0, pgmapId: 0 }, 1);
    const a = doMmap(k, mm, { addr: 0, length: PAGE_SIZE, prot: RW, flags: MAP_SHARED, fileId: memfd.id, offset: 0, device: null });
    const mm2 = k.createMm("other", 1);
    const b = doMmap(k, mm2, { addr: 0, length: PAGE_SIZE, prot: RW, flags: MAP_SHARED, fileId: memfd.id, offset: 0, device: null });
    writeMemory(k, mm, a, new TextEncoder().encode("memfd"));
    readMemory(k, mm2, b, 1);
    const old = pfnAt(k, mm, a);
    expect(pfnAt(k, mm2, b)).toBe(old);
    const ev = clearEvents(k);
    const r = gup(k, mm, "pin_user_pages", a, 1, FOLL_LONGTERM | FOLL_WRITE, { output: "pages" });
    const pfn = r.pages![0]!;
    expect(pfn).not.toBe(old);
    expect(memfd.cache.get(0)).toBe(pfn);
    expect(pfnAt(k, mm2, b)).toBe(pfn);
    expect(k.phys.refcount(pfn)).toBe(1 + 2 + 1024);
    expect(ev.map((e) => e.mmId).sort()).toEqual([mm.id, mm2.id].sort());
    expect(new TextDecoder().decode(readMemory(k, mm2, b, 5).data)).toBe("memfd");
    k.pins.releaseHandle(1, r.handle);
  });

  it("migrates out of CMA", () => {
    const { k, mm } = newKernel({ phys: { ramBytes: 2 ** 29, cmaBytes: 2 ** 28 } });
    const a = mmapAnon(k, mm, PAGE_SIZE);
    writeMemory(k, mm, a, new TextEncoder().encode("cma"));
    const old = pfnAt(k, mm, a);
    expect(k.phys.isCmaPfn(old)).toBe(true);
    const r = gup(k, mm, "pin_user_pages_fast", a, 1, FOLL_LONGTERM, { output: "pages" });
    const pfn = r.pages![0]!;
    expect(k.phys.isCmaPfn(pfn)).toBe(false);
    expect(k.phys.folioIsLongtermPinnable(pfn)).toBe(true);
    expect(new TextDecoder().decode(readMemory(k, mm, a, 3).data)).toBe("cma");
    k.pins.releaseHandle(1, r.handle);
  });

  it("a folio with unexpected references fails to migrate: -ENOMEM, nothing held", () => {
    const { k, mm } = newKernel({ phys: { ramBytes: 2 ** 30, movableBytes: 2 ** 29 } });
    const a = mmapAnon(k, mm, PAGE_SIZE, { populate: true });
    const old = pfnAt(k, mm, a);
    const g = gupCall(k, mm, { variant: "get_user_pages", start: a, nrPages: 1, gupFlags: 0, wantPages: true, output: "none", session: 2 });
    const c0 = counters(k);
    const r = gup(k, mm, "pin_user_pages", a, 1, FOLL_LONGTERM);
    expect(r.ret).toBe(ENOMEM);
    expect(r.handle).toBe(0);
    expect(k.vmstat.pgmigrate_fail).toBe(1);
    expect(pfnAt(k, mm, a)).toBe(old);
    expect(k.phys.refcount(old)).toBe(2);
    const c1 = counters(k);
    expect(c1.acq - c0.acq).toBe(1);
    expect(c1.rel - c0.rel).toBe(1);
    k.pins.releaseHandle(2, g.handle);
  });

  it("RLIMIT_MEMLOCK-like limit per session: past it MmError 'exhausted', nothing pinned", () => {
    const { k, mm } = newKernel({ tunables: { memlockLimitBytes: 4 * PAGE_SIZE } });
    const a = mmapAnon(k, mm, 8 * PAGE_SIZE, { populate: true });
    const r = gup(k, mm, "pin_user_pages", a, 4, FOLL_LONGTERM);
    expect(r.ret).toBe(4);
    expect(k.pins.sessionCounters(1).lockedBytes).toBe(4 * PAGE_SIZE);
    const c0 = counters(k);
    let err: unknown;
    try {
      gup(k, mm, "pin_user_pages_fast", a + 4 * PAGE_SIZE, 1, FOLL_LONGTERM);
    } catch (e) {
      err = e;
    }
    expect(err).toBeInstanceOf(MmError);
    expect((err as MmError).kind).toBe("exhausted");
    expect((err as MmError).errno).toBe(12);
    expect(counters(k)).toEqual(c0);
    expect(k.phys.refcount(pfnAt(k, mm, a + 4 * PAGE_SIZE))).toBe(1);
    // short-term pins and other sessions are not limited by it
    const s = gup(k, mm, "pin_user_pages", a + 4 * PAGE_SIZE, 4);
    const o = gup(k, mm, "pin_user_pages", a + 4 * PAGE_SIZE, 4, FOLL_LONGTERM, { session: 2 });
    expect([s.ret, o.ret]).toEqual([4, 4]);
    k.pins.releaseHandle(1, r.handle);
    const again = gup(k, mm, "pin_user_pages", a + 4 * PAGE_SIZE, 4, FOLL_LONGTERM);
    expect(again.ret).toBe(4);
    for (const h of [s.handle, again.handle]) k.pins.releaseHandle(1, h);
    k.pins.releaseHandle(2, o.handle);
    expect(k.pins.sessionCounters(1).lockedBytes).toBe(0);
  });
});

describe('accounting profile "bias-2019"', () => {
  it("refs*1024 on the compound head, no _pincount; the 31-bit overflow is an error with nothing changed", () => {
    const { k, mm } = newKernel({ tunables: { pinAccounting: "bias-2019" } });
    const a = mmapAnon(k, mm, PUD_SIZE, { populate: true, flags: MAP_HUGETLB | MAP_HUGE_1GB });
    const head = pfnAt(k, mm, a);
    const handles: number[] = [];
    for (let i = 0; i < 7; i++) {
      const r = gup(k, mm, "pin_user_pages", a, 262144, 0, { output: "none" });
      expect(r.ret).toBe(262144);
      handles.push(r.handle);
    }
    expect(k.phys.refcount(head)).toBe(1 + 7 * 2 ** 28);
    expect(k.phys.pincount(head)).toBe(0);
    const c0 = counters(k);
    const ref0 = k.phys.refcount(head);
    let err: unknown;
    try {
      gup(k, mm, "pin_user_pages_fast", a, 262144);
    } catch (e) {
      err = e;
    }
    expect(err).toBeInstanceOf(MmError);
    expect((err as MmError).errno).toBe(75);
    expect((err as MmError).kind).toBe("errno");
    expect((err as MmError).reason).toMatch(/2019/);
    expect(k.phys.refcount(head)).toBe(ref0);
    expect(counters(k)).toEqual(c0);
    for (const h of handles) k.pins.releaseHandle(1, h);
    expect(k.phys.refcount(head)).toBe(1);
  });

  it("the same pins under the current scheme are exact and cannot overflow", () => {
    const { k, mm } = newKernel();
    const a = mmapAnon(k, mm, PUD_SIZE, { populate: true, flags: MAP_HUGETLB | MAP_HUGE_1GB });
    const head = pfnAt(k, mm, a);
    const handles: number[] = [];
    for (let i = 0; i < 8; i++) handles.push(gup(k, mm, "pin_user_pages", a, 262144, 0, { output: "none" }).handle);
    expect([k.phys.refcount(head), k.phys.pincount(head)]).toEqual([1 + 8 * 262144, 8 * 262144]);
    for (const h of handles) k.pins.releaseHandle(1, h);
  });
});

describe("outputs", () => {
  it("ranges merge physically contiguous folios; pages only when asked", () => {
    const { k, mm } = newKernel();
    const a = mmapAnon(k, mm, 2 * PMD_SIZE, { populate: true });
    const h0 = pfnAt(k, mm, a);
    const h1 = pfnAt(k, mm, a + PMD_SIZE);
    const r = gup(k, mm, "pin_user_pages", a, 1024);
    expect(r.pages).toBeNull();
    expect(batchFolios(r.ranges)).toEqual([
      { head: h0, pfn: h0, count: 512 },
      { head: h1, pfn: h1, count: 512 },
    ]);
    expect(r.ranges.end).toBe(h1 === h0 + 512 ? 1 : 2);
    const info = k.pins.handleInfo(r.handle)!;
    expect(info.runs.map((x) => [x.head, x.count, x.idx])).toEqual([
      [h0, 512, 0],
      [h1, 512, 512],
    ]);
    const none = gup(k, mm, "pin_user_pages", a, 1024, 0, { output: "none" });
    expect(none.ranges.totalPfns).toBe(0);
    expect(none.handle).not.toBe(0);
    for (const h of [r.handle, none.handle]) k.pins.releaseHandle(1, h);
  });
});
