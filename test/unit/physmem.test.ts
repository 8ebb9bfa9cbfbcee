import { describe, expect, it } from "vitest";
import { Kernel } from "../../src/mm/kernel.js";
import { MemoryType, MigrateType, Zone } from "../../src/mm/constants.js";
import { GFP_DMA32, GFP_MOVABLE, PG_has_data, SECTION_SHIFT } from "../../src/mm/physmem.js";
import { getFolio, getMeminfo } from "../../src/mm/inspect.js";
import { doMunmap } from "../../src/mm/mmap.js";
import { GiB, MiB, bytes, expectClean, mkKernel, mkMm, mmap, write } from "./helpers.js";

const GIB_PAGES = 262144;

function freeByOrder(k: Kernel): number[][] {
  return getMeminfo(k).zones.map((z) => z.freeBlocksByOrder);
}

describe("buddy allocator", () => {
  it("is deterministic: the same calls give the same PFNs on two kernels", () => {
    const seq = [0, 3, 9, 0, 10, 1, 0, 5, 2, 9, 0];
    const run = () => {
      const k = mkKernel();
      const out: number[] = [];
      for (const o of seq) out.push(k.phys.allocFolio(o, GFP_MOVABLE));
      // free a few and allocate again: reuse must be deterministic too
      k.phys.folioPut(out[1]!);
      k.phys.folioPut(out[4]!);
      out.push(k.phys.allocFolio(0, GFP_MOVABLE), k.phys.allocFolio(4, 0));
      return { k, out };
    };
    const a = run();
    const b = run();
    expect(a.out).toEqual(b.out);
    expect(a.out.every((p) => p >= 0)).toBe(true);
    // natural alignment of every folio
    seq.forEach((o, i) => {
      if (i !== 1 && i !== 4) expect(a.out[i]! % 2 ** o).toBe(0);
    });
    for (const { k, out } of [a, b]) {
      for (let i = 0; i < out.length; i++) if (i !== 1 && i !== 4) k.phys.folioPut(out[i]!);
      expectClean(k);
    }
  });

  it("split and merge: freeing everything restores the free count and the per-order free lists", () => {
    const k = mkKernel();
    const free0 = k.phys.totalFreePages();
    const lists0 = freeByOrder(k);
    const got: number[] = [];
    for (const o of [0, 1, 2, 3, 9, 0, 0, 4, 10, 7]) {
      const pfn = k.phys.allocFolio(o, 0);
      expect(pfn).toBeGreaterThanOrEqual(0);
      expect(getFolio(k, pfn).order).toBe(o);
      expect(getFolio(k, pfn).refcount).toBe(1);
      got.push(pfn);
    }
    expect(k.phys.totalFreePages()).toBe(free0 - (1 + 2 + 4 + 8 + 512 + 1 + 1 + 16 + 1024 + 128));
    // free in a scrambled order
    for (const i of [3, 0, 8, 5, 1, 9, 2, 7, 4, 6]) k.phys.folioPut(got[i]!);
    expect(k.phys.totalFreePages()).toBe(free0);
    expect(freeByOrder(k)).toEqual(lists0);
    for (const p of got) expect(getFolio(k, p).free).toBe(true);
    expectClean(k);
  });

  it("two freed order-0 buddies merge back into their order-1 block", () => {
    const k = mkKernel();
    const got = [0, 1, 2, 3].map(() => k.phys.allocFolio(0, 0));
    const a = got.find((x) => x % 2 === 0 && got.includes(x + 1))!;
    expect(a).toBeDefined();
    const lists = freeByOrder(k);
    k.phys.folioPut(a);
    k.phys.folioPut(a + 1);
    // one more free order-1 block, no new order-0 entries
    const after = freeByOrder(k);
    const z = after.length - 1;
    expect(after[z]![0]).toBe(lists[z]![0]);
    expect(after[z]![1]).toBe(lists[z]![1]! + 1);
    expect(k.phys.allocFolio(1, 0)).toBe(a);
    k.phys.folioPut(a);
    for (const x of got) if (x !== a && x !== a + 1) k.phys.folioPut(x);
    expectClean(k);
  });
});

describe("gigantic folios", () => {
  it("a 1 GiB folio is 1 GiB aligned and returns all its memory on free", () => {
    const k = mkKernel({ phys: { ramBytes: 4 * GiB } });
    const free0 = k.phys.totalFreePages();
    const lists0 = freeByOrder(k);
    const g = k.phys.allocFolio(18, 0);
    expect(g).toBeGreaterThanOrEqual(0);
    expect(g % GIB_PAGES).toBe(0);
    // the first GiB holds the zero page, so it cannot be used
    expect(g).not.toBe(0);
    const f = getFolio(k, g + 12345);
    expect(f.headPfn).toBe(g);
    expect(f.order).toBe(18);
    expect(f.refcount).toBe(1);
    expect(k.phys.totalFreePages()).toBe(free0 - GIB_PAGES);
    expect(getMeminfo(k).giganticFoliosInUse).toBe(1);
    const g2 = k.phys.allocFolio(18, 0);
    expect(g2 % GIB_PAGES).toBe(0);
    expect(g2).not.toBe(g);
    k.phys.folioPut(g2);
    k.phys.folioPut(g);
    expect(k.phys.totalFreePages()).toBe(free0);
    expect(freeByOrder(k)).toEqual(lists0);
    expect(getMeminfo(k).giganticFoliosInUse).toBe(0);
    expectClean(k);
  });

  it("no gigantic folio when no aligned GiB is entirely free", () => {
    const k = mkKernel({ phys: { ramBytes: GiB } });
    // the only GiB holds the zero page
    expect(k.phys.allocFolio(18, 0)).toBe(-1);
    expectClean(k);
  });
});

describe("zones", () => {
  it("DMA32 ends at 4 GiB; ordinary allocations prefer Normal, GFP_DMA32 stays below 4 GiB", () => {
    const k = mkKernel({ phys: { ramBytes: 8 * GiB } });
    const zones = getMeminfo(k).zones;
    const dma32 = zones.find((z) => z.zone === Zone.DMA32)!;
    const normal = zones.find((z) => z.zone === Zone.NORMAL)!;
    expect(dma32.startPfn).toBe(0);
    expect(dma32.startPfn + dma32.nrPages).toBe((4 * GiB) / 4096);
    expect(normal.startPfn).toBe((4 * GiB) / 4096);
    expect(normal.nrPages).toBe((4 * GiB) / 4096);
    expect(zones.find((z) => z.zone === Zone.MOVABLE)).toBeUndefined();
    const a = k.phys.allocFolio(0, GFP_DMA32);
    const b = k.phys.allocFolio(0, 0);
    expect(a).toBeLessThan((4 * GiB) / 4096);
    expect(getFolio(k, a).zone).toBe(Zone.DMA32);
    expect(getFolio(k, b).zone).toBe(Zone.NORMAL);
    k.phys.folioPut(a);
    k.phys.folioPut(b);
    expectClean(k);
  });

  it("ZONE_MOVABLE sits at the top of RAM and takes only movable allocations", () => {
    const k = mkKernel({ phys: { ramBytes: 2 * GiB, movableBytes: 512 * MiB } });
    const zones = getMeminfo(k).zones;
    const mov = zones.find((z) => z.zone === Zone.MOVABLE)!;
    expect(mov.startPfn).toBe((1536 * MiB) / 4096);
    expect(mov.startPfn + mov.nrPages).toBe(k.phys.ramPages);
    const m = k.phys.allocFolio(0, GFP_MOVABLE);
    const u = k.phys.allocFolio(0, 0);
    expect(getFolio(k, m).zone).toBe(Zone.MOVABLE);
    expect(m).toBeGreaterThanOrEqual(mov.startPfn);
    expect(getFolio(k, u).zone).not.toBe(Zone.MOVABLE);
    expect(getFolio(k, m).longtermPinnable).toBe(false);
    expect(getFolio(k, u).longtermPinnable).toBe(true);
    k.phys.folioPut(m);
    k.phys.folioPut(u);
    expectClean(k);
  });

  it("CMA pageblocks: at the top of their zone, never used by unmovable allocations", () => {
    const k = mkKernel({ phys: { ramBytes: GiB, cmaBytes: 64 * MiB } });
    const cmaPages = (64 * MiB) / 4096;
    const z = getMeminfo(k).zones[0]!;
    expect(z.cmaPages).toBe(cmaPages);
    const top = k.phys.ramPages;
    expect(k.phys.migratetype(top - 1)).toBe(MigrateType.CMA);
    expect(k.phys.migratetype(top - cmaPages)).toBe(MigrateType.CMA);
    expect(k.phys.migratetype(top - cmaPages - 1)).toBe(MigrateType.MOVABLE);
    const free0 = k.phys.totalFreePages();
    // exhaust everything that is not CMA with unmovable allocations
    const held: number[] = [];
    for (const o of [10, 0]) {
      for (;;) {
        const p = k.phys.allocFolio(o, 0);
        if (p < 0) break;
        expect(k.phys.migratetype(p)).not.toBe(MigrateType.CMA);
        held.push(p);
      }
    }
    expect(k.phys.totalFreePages()).toBe(cmaPages);
    expect(k.phys.allocFolio(0, 0)).toBe(-1);
    // a movable allocation may still borrow CMA
    const m = k.phys.allocFolio(0, GFP_MOVABLE);
    expect(m).toBeGreaterThanOrEqual(top - cmaPages);
    expect(getFolio(k, m).migratetype).toBe(MigrateType.CMA);
    expect(getFolio(k, m).longtermPinnable).toBe(false);
    held.push(m);
    for (const p of held) k.phys.folioPut(p);
    expect(k.phys.totalFreePages()).toBe(free0);
    expectClean(k);
  });
});

describe("folio_is_longterm_pinnable (spec 1.6, in order)", () => {
  it("CMA/ISOLATE first, then zero page, device coherent, FS_DAX, ZONE_MOVABLE", () => {
    const k = mkKernel({ phys: { ramBytes: GiB, movableBytes: 256 * MiB } });
    const p = k.phys;
    // 5. ordinary page outside ZONE_MOVABLE: pinnable; inside: not.
    const normal = p.allocFolio(0, 0);
    const movable = p.allocFolio(0, GFP_MOVABLE);
    expect(p.zoneOf(movable)).toBe(Zone.MOVABLE);
    expect(p.folioIsLongtermPinnable(normal)).toBe(true);
    expect(p.folioIsLongtermPinnable(movable)).toBe(false);
    // 2. zero page: pinnable
    expect(p.folioIsLongtermPinnable(p.zeroPfn)).toBe(true);
    // 1. before the zero-page test: a zero page in a CMA / ISOLATE pageblock is not pinnable
    const pb = p.zeroPfn >>> 9;
    const saved = p.pageblockMt[pb]!;
    p.pageblockMt[pb] = MigrateType.CMA;
    expect(p.folioIsLongtermPinnable(p.zeroPfn)).toBe(false);
    p.pageblockMt[pb] = MigrateType.ISOLATE;
    expect(p.folioIsLongtermPinnable(p.zeroPfn)).toBe(false);
    expect(p.folioIsLongtermPinnable(normal)).toBe(normal >>> 9 !== pb);
    p.pageblockMt[pb] = saved;
    // 3./4. device memory by type; GENERIC is pinnable
    const kinds: [MemoryType, boolean][] = [
      [MemoryType.DEVICE_COHERENT, false],
      [MemoryType.FS_DAX, false],
      [MemoryType.GENERIC, true],
    ];
    for (const [t, want] of kinds) {
      const pm = p.registerPagemap(`dev${t}`, t, 512, 7);
      const d = p.allocDevicePage(pm);
      expect(d).toBeGreaterThanOrEqual(pm.startPfn);
      expect(p.zoneOf(d)).toBe(Zone.DEVICE);
      expect(p.folioIsLongtermPinnable(d)).toBe(want);
      expect(getFolio(k, d).longtermPinnable).toBe(want);
      p.folioPut(d);
      expect(pm.allocated).toBe(0);
    }
    p.folioPut(normal);
    p.folioPut(movable);
    expectClean(k);
  });
});

describe("lazy struct pages and page data", () => {
  it("sections are materialised only where pages were handed out", () => {
    const k = new Kernel({ phys: { ramBytes: 16 * GiB } });
    // the zero page lives in the first section
    expect(k.phys.sectionsAllocated()).toBe(1);
    const got: number[] = [];
    for (let i = 0; i < 64; i++) got.push(k.phys.allocFolio(i % 4, GFP_MOVABLE));
    expect(k.phys.sectionsAllocated()).toBeLessThanOrEqual(2);
    // a gigantic folio needs the struct pages of its whole GiB (8 sections of 128 MiB)
    const before = k.phys.sectionsAllocated();
    const g = k.phys.allocFolio(18, 0);
    expect(g % GIB_PAGES).toBe(0);
    expect(k.phys.sectionsAllocated()).toBe(before + GiB / (4096 << SECTION_SHIFT));
    k.phys.folioPut(g);
    for (const p of got) k.phys.folioPut(p);
    expectClean(k);
  });

  it("page data slots are released when the folio is freed", () => {
    const k = mkKernel();
    const p = k.phys;
    expect(p.data.inUse).toBe(0);
    const head = p.allocFolio(2, 0);
    for (const j of [1, 3]) {
      const s = p.sec(head + j);
      p.data.writable(s, (head + j) & ((1 << SECTION_SHIFT) - 1)).fill(0xab);
    }
    p.orFlags(head, PG_has_data);
    expect(p.data.inUse).toBe(2);
    p.folioPut(head);
    expect(p.data.inUse).toBe(0);
    // through an address space: written pages keep data until unmapped
    const mm = mkMm(k);
    const a = mmap(k, mm, 5 * 4096);
    write(k, mm, a + 100, bytes(3 * 4096, 1));
    expect(p.data.inUse).toBe(4); // bytes span pages 0..3
    doMunmap(k, mm, a, 5 * 4096);
    expect(p.data.inUse).toBe(0);
    // a reused slot reads as zeros again
    const h2 = p.allocFolio(0, 0);
    expect(p.data.read(p.sec(h2), h2 & ((1 << SECTION_SHIFT) - 1))).toBeNull();
    p.folioPut(h2);
    expectClean(k);
  });
});

describe("pfn_valid over ranges", () => {
  it("anyPfnValid: RAM and pagemap PFNs have struct pages, MMIO ranges and gaps do not", () => {
    const k = mkKernel();
    const pm = k.phys.registerPagemap("dev", MemoryType.DEVICE_PRIVATE, 1024, 7);
    const bar = k.phys.registerPfnRange("bar", 4096, 0);
    expect(k.phys.anyPfnValid(0, 1)).toBe(true);
    expect(k.phys.anyPfnValid(k.phys.ramPages - 1, 10)).toBe(true);
    expect(k.phys.anyPfnValid(k.phys.ramPages, pm.startPfn - k.phys.ramPages)).toBe(false);
    expect(k.phys.anyPfnValid(pm.startPfn - 5, 6)).toBe(true);
    expect(k.phys.anyPfnValid(pm.endPfn, 100)).toBe(false);
    expect(k.phys.anyPfnValid(bar.startPfn, bar.nrPages)).toBe(false);
    expect(k.phys.anyPfnValid(bar.startPfn, 0)).toBe(false);
    expectClean(k);
  });
});
