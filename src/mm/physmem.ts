/**
 * Physical memory: struct pages as typed arrays indexed by PFN, zones, the
 * buddy allocator, ZONE_DEVICE pagemaps and raw PFN ranges (MMIO BARs).
 *
 * Per-page state lives in "sections" of SECTION_PAGES pages (128 MiB), each a
 * set of typed arrays allocated the first time a page of the section is
 * handed out (as SPARSEMEM allocates memmap per section). A section that was
 * never touched is implicitly all free, in MAX_PAGE_ORDER blocks.
 *
 * Folio fields live at the head page's index (refcount, mapcount, pincount,
 * entire mapcount, mapping, index); every page of a folio records the folio
 * order so that folio_head(pfn) = pfn & ~(2^order - 1): folios are naturally
 * aligned, so no per-page head pointer is needed.
 *
 * Mapcounts are stored as counts (0 = unmapped); the kernel's `_mapcount`
 * (count - 1, -1 = unmapped) is derived for display only.
 *
 * All PFNs are below 2^32 (physical addresses below 16 TiB).
 */
import {
  HPAGE_PUD_ORDER,
  MAX_PAGE_ORDER,
  MemoryType,
  MigrateType,
  PAGEBLOCK_ORDER,
  PAGE_SIZE,
  Zone,
} from "./constants.js";
import { Errno, fail, invalid, notFound } from "./errors.js";

export const SECTION_SHIFT = 15;
export const SECTION_PAGES = 1 << SECTION_SHIFT;
const SECTION_MASK = SECTION_PAGES - 1;
const MAX_ORDER_PAGES = 1 << MAX_PAGE_ORDER;

// Page flags (a subset of enum pageflags plus folio-level markers).
export const PG_anon = 1 << 0;
export const PG_anon_exclusive = 1 << 1;
export const PG_dirty = 1 << 2;
export const PG_referenced = 1 << 3;
export const PG_lru = 1 << 4;
export const PG_locked = 1 << 5;
export const PG_head = 1 << 6;
export const PG_hwpoison = 1 << 7;
export const PG_mlocked = 1 << 8;
export const PG_swapcache = 1 << 9;
export const PG_zero = 1 << 10; // the 4 KiB zero page
export const PG_huge_zero = 1 << 11; // the huge zero folio
export const PG_hugetlb = 1 << 12;
export const PG_device = 1 << 13; // ZONE_DEVICE page
export const PG_reserved = 1 << 14;
export const PG_pagecache = 1 << 15; // folio is in a file's page cache
export const PG_has_data = 1 << 16; // head: some page of the folio has stored bytes
export const PG_allocated = 1 << 17; // page belongs to an allocated folio
export const PG_lazyfree = 1 << 18; // MADV_FREE'd anon folio
export const PG_shmem = 1 << 19;
export const PG_deferred_split = 1 << 20; // head: on the deferred split queue

/** gfp-like allocation flags. */
export const GFP_MOVABLE = 1 << 0; // __GFP_MOVABLE: ZONE_MOVABLE and CMA allowed
export const GFP_DMA32 = 1 << 1; // only below 4 GiB
export const GFP_NOFAIL_ZONE_ORDER = 0;

export class Section {
  readonly refcount = new Int32Array(SECTION_PAGES);
  readonly mapcount = new Int32Array(SECTION_PAGES);
  readonly pincount = new Int32Array(SECTION_PAGES);
  readonly entire = new Int32Array(SECTION_PAGES);
  readonly flags = new Uint32Array(SECTION_PAGES);
  readonly order = new Uint8Array(SECTION_PAGES);
  readonly freeOrder = new Int8Array(SECTION_PAGES).fill(-1);
  readonly mapping = new Int32Array(SECTION_PAGES);
  readonly index = new Float64Array(SECTION_PAGES);
  readonly data = new Int32Array(SECTION_PAGES);
  constructor(
    readonly base: number,
    readonly zone: Zone,
    readonly pagemap: DevPagemap | null,
  ) {}
}

export interface ZoneState {
  readonly id: Zone;
  readonly startPfn: number;
  readonly endPfn: number;
  /** free lists [order][0 = regular, 1 = CMA]; stacks with lazy deletion. */
  readonly free: number[][][];
  /** live entries per list, to compact stale ones. */
  readonly live: number[][];
  freePages: number;
  freeCma: number;
  cmaPages: number;
}

/** A dev_pagemap: ZONE_DEVICE struct pages owned by a driver. */
export class DevPagemap {
  /** driver free list (pfns), LIFO; lowest PFNs handed out first. */
  private readonly freeList: number[] = [];
  allocated = 0;
  /** Set by tests / the dmirror device: fail the next N allocations. */
  failNext = 0;
  constructor(
    readonly id: number,
    readonly name: string,
    readonly type: MemoryType,
    readonly startPfn: number,
    readonly nrPages: number,
    readonly owner: number,
  ) {
    for (let i = nrPages - 1; i >= 0; i--) this.freeList.push(startPfn + i);
  }
  get endPfn(): number {
    return this.startPfn + this.nrPages;
  }
  popFree(): number {
    if (this.failNext > 0) {
      this.failNext--;
      return -1;
    }
    const p = this.freeList.pop();
    if (p === undefined) return -1;
    this.allocated++;
    return p;
  }
  pushFree(pfn: number): void {
    this.allocated--;
    this.freeList.push(pfn);
  }
  get freeCount(): number {
    return this.freeList.length;
  }
}

/** Raw PFNs without struct pages (an MMIO BAR), for VM_PFNMAP use. */
export interface PfnRange {
  readonly id: number;
  readonly name: string;
  readonly startPfn: number;
  readonly nrPages: number;
}

/** Where device struct pages and MMIO ranges are placed. */
const MMIO_BASE_PFN = 0x3800_0000; // physical 3.5 TiB, as BARs sit high

export interface PhysConfig {
  /** simulated RAM in bytes (multiple of 128 MiB). */
  ramBytes: number;
  /** size of ZONE_MOVABLE at the top of RAM (multiple of 128 MiB). */
  movableBytes: number;
  /** CMA area inside ZONE_NORMAL (multiple of 4 MiB), placed at its top. */
  cmaBytes: number;
}

export const DEFAULT_PHYS_CONFIG: PhysConfig = {
  ramBytes: 16 * 2 ** 30,
  movableBytes: 0,
  cmaBytes: 0,
};

const GIB_PAGES = 1 << HPAGE_PUD_ORDER;
const SECTION_BYTES = SECTION_PAGES * PAGE_SIZE;

export interface PhysStats {
  /** folio refcount/pincount updates made by GUP grab/unpin primitives. */
  gupRefUpdates: number;
  foliosAllocated: number;
  foliosFreed: number;
  giganticInUse: number;
}

export class PhysMem {
  readonly ramPages: number;
  readonly zones: ZoneState[] = [];
  private readonly sections: (Section | undefined)[] = [];
  /** migratetype per pageblock of RAM. */
  readonly pageblockMt: Uint8Array;
  readonly pagemaps = new Map<number, DevPagemap>();
  readonly pfnRanges = new Map<number, PfnRange>();
  private nextDevicePfn: number;
  private nextMmioPfn = MMIO_BASE_PFN;
  private nextPagemapId = 1;
  private nextPfnRangeId = 1;
  readonly data = new PageData();
  readonly stats: PhysStats = { gupRefUpdates: 0, foliosAllocated: 0, foliosFreed: 0, giganticInUse: 0 };
  readonly zeroPfn: number;
  private hugeZero = -1;
  /** Test/fault-injection hook: return true to fail an allocation. */
  allocFailHook: ((order: number) => boolean) | null = null;
  /** Fault-injection hook for driver allocations of device pages. */
  deviceAllocFailHook: (() => boolean) | null = null;

  constructor(readonly config: PhysConfig = DEFAULT_PHYS_CONFIG) {
    const { ramBytes, movableBytes, cmaBytes } = config;
    if (ramBytes < 2 * SECTION_BYTES || ramBytes % SECTION_BYTES !== 0)
      invalid(`RAM size must be a multiple of 128 MiB and at least 256 MiB (got ${ramBytes})`);
    if (movableBytes % SECTION_BYTES !== 0 || movableBytes >= ramBytes)
      invalid("movable zone size must be a multiple of 128 MiB and below the RAM size");
    if (cmaBytes % (MAX_ORDER_PAGES * PAGE_SIZE) !== 0) invalid("CMA size must be a multiple of 4 MiB");
    this.ramPages = ramBytes / PAGE_SIZE;
    if (this.ramPages > MMIO_BASE_PFN / 2) invalid("RAM size too large for this model (max 1.75 TiB)");
    const movablePages = movableBytes / PAGE_SIZE;
    const dma32End = Math.min(this.ramPages - movablePages, (4 * 2 ** 30) / PAGE_SIZE);
    const normalEnd = this.ramPages - movablePages;
    this.pageblockMt = new Uint8Array(this.ramPages >>> PAGEBLOCK_ORDER).fill(MigrateType.MOVABLE);
    const cmaPages = cmaBytes / PAGE_SIZE;
    const cmaHost = normalEnd > dma32End ? [dma32End, normalEnd] : [0, dma32End];
    if (cmaPages > (cmaHost[1]! - cmaHost[0]!) / 2) invalid("CMA area larger than half its zone");
    const cmaStart = cmaHost[1]! - cmaPages;
    for (let pb = cmaStart >>> PAGEBLOCK_ORDER; pb < cmaHost[1]! >>> PAGEBLOCK_ORDER; pb++)
      this.pageblockMt[pb] = MigrateType.CMA;
    this.addZone(Zone.DMA32, 0, dma32End);
    if (normalEnd > dma32End) this.addZone(Zone.NORMAL, dma32End, normalEnd);
    if (movablePages > 0) this.addZone(Zone.MOVABLE, normalEnd, this.ramPages);
    this.nextDevicePfn = Math.ceil(this.ramPages / GIB_PAGES) * GIB_PAGES + GIB_PAGES;
    // The shared 4 KiB zero page: a reserved page, never freed.
    this.zeroPfn = this.allocFolio(0, 0);
    if (this.zeroPfn < 0) fail(Errno.ENOMEM, "no memory for the zero page");
    this.orFlags(this.zeroPfn, PG_zero | PG_reserved);
  }

  private addZone(id: Zone, startPfn: number, endPfn: number): void {
    const free: number[][][] = [];
    const live: number[][] = [];
    for (let o = 0; o <= MAX_PAGE_ORDER; o++) {
      free.push([[], []]);
      live.push([0, 0]);
    }
    const z: ZoneState = { id, startPfn, endPfn, free, live, freePages: 0, freeCma: 0, cmaPages: 0 };
    // Push in descending order so that pops hand out the lowest PFNs first.
    for (let pfn = endPfn - MAX_ORDER_PAGES; pfn >= startPfn; pfn -= MAX_ORDER_PAGES) {
      const cma = this.isCmaPfn(pfn) ? 1 : 0;
      z.free[MAX_PAGE_ORDER]![cma]!.push(pfn);
      z.live[MAX_PAGE_ORDER]![cma]!++;
      z.freePages += MAX_ORDER_PAGES;
      if (cma) {
        z.freeCma += MAX_ORDER_PAGES;
        z.cmaPages += MAX_ORDER_PAGES;
      }
    }
    this.zones.push(z);
  }

  // ---------------------------------------------------------------- sections

  /** The section holding `pfn`, or undefined when it has no struct pages yet. */
  section(pfn: number): Section | undefined {
    return this.sections[pfn >>> SECTION_SHIFT];
  }

  /** The section holding `pfn`; it must exist (an allocated page). */
  sec(pfn: number): Section {
    const s = this.sections[pfn >>> SECTION_SHIFT];
    if (s === undefined) throw new Error(`no struct page for pfn ${pfn}`);
    return s;
  }

  private materialize(pfn: number): Section {
    const idx = pfn >>> SECTION_SHIFT;
    let s = this.sections[idx];
    if (s === undefined) {
      const base = idx << SECTION_SHIFT;
      s = new Section(base, this.zoneOfRamPfn(base), null);
      // Pristine section: every MAX_ORDER block is free.
      for (let i = 0; i < SECTION_PAGES; i += MAX_ORDER_PAGES) s.freeOrder[i] = MAX_PAGE_ORDER;
      this.sections[idx] = s;
    }
    return s;
  }

  /** pfn_valid(): the pfn has a struct page (RAM or ZONE_DEVICE). */
  pfnValid(pfn: number): boolean {
    if (pfn < this.ramPages) return pfn >= 0;
    const s = this.sections[pfn >>> SECTION_SHIFT];
    return s !== undefined && s.pagemap !== null && pfn >= s.pagemap.startPfn && pfn < s.pagemap.endPfn;
  }

  /** Does any PFN of [pfn, pfn+n) have a struct page? Per section, not per page. */
  anyPfnValid(pfn: number, n: number): boolean {
    if (n <= 0) return false;
    if (pfn < this.ramPages) return true;
    const last = pfn + n - 1;
    for (let sidx = pfn >>> SECTION_SHIFT; sidx <= last >>> SECTION_SHIFT; sidx++) {
      const pm = this.sections[sidx]?.pagemap;
      if (pm != null && pm.startPfn <= last && pm.endPfn > pfn) return true;
    }
    return false;
  }

  sectionsAllocated(): number {
    let n = 0;
    for (const s of this.sections) if (s !== undefined) n++;
    return n;
  }

  zoneOfRamPfn(pfn: number): Zone {
    const zones = this.zones;
    for (let i = 0; i < zones.length; i++) if (pfn >= zones[i]!.startPfn && pfn < zones[i]!.endPfn) return zones[i]!.id;
    return Zone.NORMAL;
  }

  zoneOf(pfn: number): Zone {
    if (pfn >= this.ramPages) return Zone.DEVICE;
    // zones are section-aligned: a section records its zone
    const s = this.sections[pfn >>> SECTION_SHIFT];
    return s !== undefined ? s.zone : this.zoneOfRamPfn(pfn);
  }

  isCmaPfn(pfn: number): boolean {
    return pfn < this.ramPages && this.pageblockMt[pfn >>> PAGEBLOCK_ORDER] === MigrateType.CMA;
  }

  migratetype(pfn: number): MigrateType {
    if (pfn >= this.ramPages) return MigrateType.MOVABLE;
    return this.pageblockMt[pfn >>> PAGEBLOCK_ORDER] as MigrateType;
  }

  // ------------------------------------------------------------- buddy core

  private freeOrderOf(pfn: number): number {
    const s = this.sections[pfn >>> SECTION_SHIFT];
    if (s === undefined) return (pfn & (MAX_ORDER_PAGES - 1)) === 0 ? MAX_PAGE_ORDER : -1;
    return s.freeOrder[pfn & SECTION_MASK]!;
  }

  private setFreeOrder(pfn: number, order: number): void {
    this.materialize(pfn).freeOrder[pfn & SECTION_MASK] = order;
  }

  private zoneState(id: Zone): ZoneState | undefined {
    for (const z of this.zones) if (z.id === id) return z;
    return undefined;
  }

  private pushFree(z: ZoneState, pfn: number, order: number): void {
    const cma = this.isCmaPfn(pfn) ? 1 : 0;
    this.setFreeOrder(pfn, order);
    const list = z.free[order]![cma]!;
    list.push(pfn);
    z.live[order]![cma]!++;
    // Compact stale entries left by lazy deletion.
    if (list.length > 64 && list.length > 2 * z.live[order]![cma]!) {
      const keep = list.filter((p) => this.freeOrderOf(p) === order);
      list.length = 0;
      // Keep lowest PFNs on top of the stack.
      keep.sort((a, b) => b - a);
      for (const p of keep) list.push(p);
    }
  }

  /** Remove a free block that is known to be free at `order`. */
  private unlinkFree(z: ZoneState, pfn: number, order: number): void {
    this.setFreeOrder(pfn, -1);
    z.live[order]![this.isCmaPfn(pfn) ? 1 : 0]!--;
  }

  private popFree(z: ZoneState, order: number, cma: number): number {
    const list = z.free[order]![cma]!;
    while (list.length > 0) {
      const pfn = list.pop()!;
      if (this.freeOrderOf(pfn) === order) {
        this.materialize(pfn);
        this.unlinkFree(z, pfn, order);
        return pfn;
      }
    }
    return -1;
  }

  /** __rmqueue from one zone: smallest order >= `order`, then split. */
  private rmqueue(z: ZoneState, order: number, allowCma: boolean): number {
    // As __rmqueue balances movable allocations: take CMA first when more
    // than half of the zone's free memory is CMA.
    const preferCma = allowCma && z.freeCma > z.freePages - z.freeCma;
    const kinds = allowCma ? (preferCma ? [1, 0] : [0, 1]) : [0];
    for (const cma of kinds) {
      for (let o = order; o <= MAX_PAGE_ORDER; o++) {
        const pfn = this.popFree(z, o, cma);
        if (pfn < 0) continue;
        for (let k = o - 1; k >= order; k--) this.pushFree(z, pfn + (1 << k), k);
        const n = 1 << order;
        z.freePages -= n;
        if (cma) z.freeCma -= n;
        return pfn;
      }
    }
    return -1;
  }

  private zonelist(gfp: number): ZoneState[] {
    const out: ZoneState[] = [];
    const order: Zone[] =
      gfp & GFP_DMA32
        ? [Zone.DMA32]
        : gfp & GFP_MOVABLE
          ? [Zone.MOVABLE, Zone.NORMAL, Zone.DMA32]
          : [Zone.NORMAL, Zone.DMA32];
    for (const id of order) {
      const z = this.zoneState(id);
      if (z) out.push(z);
    }
    return out;
  }

  /**
   * Allocate a folio of 2^order pages (order 0..10, or 18 for a gigantic
   * 1 GiB folio). Returns the head PFN with refcount 1, or -1.
   */
  allocFolio(order: number, gfp: number): number {
    if (this.allocFailHook?.(order)) return -1;
    let pfn = -1;
    if (order === HPAGE_PUD_ORDER) pfn = this.allocGigantic(gfp);
    else if (order >= 0 && order <= MAX_PAGE_ORDER) {
      for (const z of this.zonelist(gfp)) {
        pfn = this.rmqueue(z, order, (gfp & GFP_MOVABLE) !== 0);
        if (pfn >= 0) break;
      }
    } else invalid(`unsupported folio order ${order}`);
    if (pfn < 0) return -1;
    this.prepNewFolio(pfn, order);
    return pfn;
  }

  /** alloc_contig_pages for a 1 GiB folio: 256 free, aligned MAX_ORDER blocks. */
  private allocGigantic(gfp: number): number {
    for (const z of this.zonelist(gfp)) {
      const first = Math.ceil(z.startPfn / GIB_PAGES) * GIB_PAGES;
      for (let base = first; base + GIB_PAGES <= z.endPfn; base += GIB_PAGES) {
        let ok = true;
        for (let p = base; p < base + GIB_PAGES; p += MAX_ORDER_PAGES) {
          if (this.freeOrderOf(p) !== MAX_PAGE_ORDER || (this.isCmaPfn(p) && !(gfp & GFP_MOVABLE))) {
            ok = false;
            break;
          }
        }
        if (!ok) continue;
        for (let p = base; p < base + GIB_PAGES; p += MAX_ORDER_PAGES) {
          const cma = this.isCmaPfn(p);
          this.unlinkFree(z, p, MAX_PAGE_ORDER);
          if (cma) z.freeCma -= MAX_ORDER_PAGES;
        }
        z.freePages -= GIB_PAGES;
        this.stats.giganticInUse++;
        return base;
      }
    }
    return -1;
  }

  /** prep_new_page + prep_compound_page. */
  private prepNewFolio(head: number, order: number): void {
    const n = 2 ** order;
    for (let pfn = head; pfn < head + n; ) {
      const s = this.materialize(pfn);
      const lo = pfn & SECTION_MASK;
      const hi = Math.min(SECTION_PAGES, lo + (head + n - pfn));
      s.order.fill(order, lo, hi);
      s.flags.fill(PG_allocated, lo, hi);
      pfn += hi - lo;
    }
    const s = this.sec(head);
    const i = head & SECTION_MASK;
    s.refcount[i] = 1;
    if (order > 0) s.flags[i]! |= PG_head;
    this.stats.foliosAllocated++;
  }

  /** Return a folio whose refcount reached 0 to its allocator. */
  private freeFolio(head: number): void {
    const s = this.sec(head);
    const i = head & SECTION_MASK;
    const order = s.order[i]!;
    const n = 2 ** order;
    const hadData = (s.flags[i]! & PG_has_data) !== 0;
    if (s.pagemap !== null) {
      // ZONE_DEVICE: dev_pagemap_ops.page_free hands it back to the driver.
      if (hadData) this.data.release(s, i);
      s.flags[i] = PG_device;
      s.mapping[i] = 0;
      s.index[i] = 0;
      s.mapcount[i] = 0;
      s.pincount[i] = 0;
      s.entire[i] = 0;
      s.pagemap.pushFree(head);
      this.stats.foliosFreed++;
      return;
    }
    for (let pfn = head; pfn < head + n; ) {
      const t = this.sec(pfn);
      const lo = pfn & SECTION_MASK;
      const hi = Math.min(SECTION_PAGES, lo + (head + n - pfn));
      if (hadData) for (let j = lo; j < hi; j++) if (t.data[j] !== 0) this.data.release(t, j);
      t.flags.fill(0, lo, hi);
      t.order.fill(0, lo, hi);
      t.mapcount.fill(0, lo, hi);
      t.refcount.fill(0, lo, hi);
      pfn += hi - lo;
    }
    s.pincount[i] = 0;
    s.entire[i] = 0;
    s.mapping[i] = 0;
    s.index[i] = 0;
    this.stats.foliosFreed++;
    if (order === HPAGE_PUD_ORDER) {
      const z = this.zoneState(this.zoneOfRamPfn(head))!;
      for (let p = head; p < head + GIB_PAGES; p += MAX_ORDER_PAGES) {
        this.pushFree(z, p, MAX_PAGE_ORDER);
        if (this.isCmaPfn(p)) z.freeCma += MAX_ORDER_PAGES;
      }
      z.freePages += GIB_PAGES;
      this.stats.giganticInUse--;
      return;
    }
    this.freeBlock(head, order);
  }

  /** __free_one_page: merge with free buddies up to MAX_PAGE_ORDER. */
  private freeBlock(pfn: number, order: number): void {
    const z = this.zoneState(this.zoneOfRamPfn(pfn))!;
    const n = 1 << order;
    z.freePages += n;
    if (this.isCmaPfn(pfn)) z.freeCma += n;
    while (order < MAX_PAGE_ORDER) {
      const buddy = pfn ^ (1 << order);
      if (buddy < z.startPfn || buddy >= z.endPfn) break;
      if (this.freeOrderOf(buddy) !== order) break;
      if (this.isCmaPfn(buddy) !== this.isCmaPfn(pfn)) break;
      this.unlinkFree(z, buddy, order);
      pfn = Math.min(pfn, buddy);
      order++;
    }
    this.pushFree(z, pfn, order);
  }

  // ------------------------------------------------------- folio accessors

  folioOrder(pfn: number): number {
    return this.sec(pfn).order[pfn & SECTION_MASK]!;
  }

  /** page_folio(): head PFN of the folio containing `pfn`. */
  folioHead(pfn: number): number {
    const s = this.sections[pfn >>> SECTION_SHIFT];
    if (s === undefined) return pfn;
    const o = s.order[pfn & SECTION_MASK]!;
    // orders stay below 31: the mask is a small non-negative int32
    return o === 0 ? pfn : pfn - (pfn & ((1 << o) - 1));
  }

  folioNrPages(head: number): number {
    return 2 ** this.folioOrder(head);
  }

  refcount(head: number): number {
    return this.sec(head).refcount[head & SECTION_MASK]!;
  }

  flags(pfn: number): number {
    return this.sec(pfn).flags[pfn & SECTION_MASK]!;
  }

  orFlags(pfn: number, f: number): void {
    this.sec(pfn).flags[pfn & SECTION_MASK]! |= f;
  }

  clearFlags(pfn: number, f: number): void {
    this.sec(pfn).flags[pfn & SECTION_MASK]! &= ~f;
  }

  /** Set or clear `f` on pages [pfn, pfn+n), per section with typed-array loops. */
  setFlagsRange(pfn: number, n: number, f: number, on: boolean): void {
    const end = pfn + n;
    while (pfn < end) {
      const s = this.sec(pfn);
      const lo = pfn & SECTION_MASK;
      const hi = Math.min(SECTION_PAGES, lo + (end - pfn));
      const a = s.flags;
      if (on) for (let j = lo; j < hi; j++) a[j]! |= f;
      else for (let j = lo; j < hi; j++) a[j]! &= ~f;
      pfn += hi - lo;
    }
  }

  isFree(pfn: number): boolean {
    const s = this.sections[pfn >>> SECTION_SHIFT];
    if (s === undefined) return pfn < this.ramPages;
    return (s.flags[pfn & SECTION_MASK]! & PG_allocated) === 0 && s.refcount[this.folioHead(pfn) & SECTION_MASK] === 0;
  }

  /** folio_ref_add; frees the folio when the count reaches 0. */
  folioRefAdd(head: number, n: number): void {
    const s = this.sec(head);
    const i = head & SECTION_MASK;
    const v = s.refcount[i]! + n;
    if (v < 0) throw new Error(`refcount underflow on pfn ${head}: ${s.refcount[i]} + ${n}`);
    s.refcount[i] = v;
    if (v === 0) this.freeFolio(head);
  }

  /**
   * try_grab_folio on each of the `n` order-0 folios [pfn, pfn + n), for a
   * GUP batch of small pages: adds `delta` to each refcount and ORs `f` into
   * each page's flags, stopping before the first folio whose refcount is
   * <= 0 or would exceed `max`. Returns the folios updated.
   */
  smallFoliosGrab(pfn: number, n: number, delta: number, max: number, f: number): number {
    let done = 0;
    while (done < n) {
      const s = this.sec(pfn + done);
      const lo = (pfn + done) & SECTION_MASK;
      const hi = Math.min(SECTION_PAGES, lo + (n - done));
      const rc = s.refcount;
      const fl = s.flags;
      for (let j = lo; j < hi; j++) {
        const v = rc[j]!;
        if (v <= 0 || v + delta > max) return done + (j - lo);
        rc[j] = v + delta;
        fl[j]! |= f;
      }
      done += hi - lo;
    }
    return done;
  }

  folioGet(head: number): void {
    this.folioRefAdd(head, 1);
  }

  folioPut(head: number): void {
    this.folioRefAdd(head, -1);
  }

  mapcount(head: number): number {
    return this.sec(head).mapcount[head & SECTION_MASK]!;
  }

  mapcountAdd(head: number, n: number): void {
    this.sec(head).mapcount[head & SECTION_MASK]! += n;
  }

  entireMapcount(head: number): number {
    return this.sec(head).entire[head & SECTION_MASK]!;
  }

  entireMapcountAdd(head: number, n: number): void {
    this.sec(head).entire[head & SECTION_MASK]! += n;
  }

  pincount(head: number): number {
    return this.sec(head).pincount[head & SECTION_MASK]!;
  }

  pincountAdd(head: number, n: number): void {
    this.sec(head).pincount[head & SECTION_MASK]! += n;
  }

  mapping(head: number): number {
    return this.sec(head).mapping[head & SECTION_MASK]!;
  }

  setMapping(head: number, mapping: number, index: number): void {
    const s = this.sec(head);
    s.mapping[head & SECTION_MASK] = mapping;
    s.index[head & SECTION_MASK] = index;
  }

  folioIndex(head: number): number {
    return this.sec(head).index[head & SECTION_MASK]!;
  }

  isZeroPfn(pfn: number): boolean {
    return pfn === this.zeroPfn;
  }

  isHugeZeroPfn(pfn: number): boolean {
    return this.hugeZero >= 0 && pfn >= this.hugeZero && pfn < this.hugeZero + 512;
  }

  get hugeZeroPfn(): number {
    return this.hugeZero;
  }

  /** mm_get_huge_zero_folio: allocated on first use, kept for the daemon's life. */
  getHugeZeroFolio(): number {
    if (this.hugeZero < 0) {
      const pfn = this.allocFolio(9, 0);
      if (pfn < 0) return -1;
      this.orFlags(pfn, PG_huge_zero | PG_reserved);
      this.hugeZero = pfn;
    }
    return this.hugeZero;
  }

  pagemapOf(pfn: number): DevPagemap | null {
    const s = this.sections[pfn >>> SECTION_SHIFT];
    return s === undefined ? null : s.pagemap;
  }

  memoryType(pfn: number): MemoryType {
    const pm = this.pagemapOf(pfn);
    return pm === null ? MemoryType.NONE : pm.type;
  }

  /** folio_is_longterm_pinnable, in the kernel's order (spec 1.6). */
  folioIsLongtermPinnable(head: number): boolean {
    const mt = this.migratetype(head);
    if (mt === MigrateType.CMA || mt === MigrateType.ISOLATE) return false;
    if (head === this.zeroPfn) return true;
    const t = this.memoryType(head);
    if (t === MemoryType.DEVICE_COHERENT || t === MemoryType.FS_DAX) return false;
    return this.zoneOf(head) !== Zone.MOVABLE;
  }

  // -------------------------------------------------------- device memory

  registerPagemap(name: string, type: MemoryType, nrPages: number, owner: number): DevPagemap {
    if (type < MemoryType.DEVICE_PRIVATE || type > MemoryType.PCI_P2PDMA) invalid(`bad memory type ${type}`);
    if (!Number.isSafeInteger(nrPages) || nrPages <= 0 || nrPages > 64 * GIB_PAGES)
      invalid(`pagemap size ${nrPages} pages out of range (1 .. 64 GiB)`);
    const start = this.nextDevicePfn;
    const end = start + nrPages;
    if (end >= MMIO_BASE_PFN) fail(Errno.ENOSPC, "device physical address space exhausted", "exhausted");
    const pm = new DevPagemap(this.nextPagemapId++, name, type, start, nrPages, owner);
    for (let base = start; base < end; base += SECTION_PAGES) {
      const s = new Section(base, Zone.DEVICE, pm);
      s.flags.fill(PG_device);
      this.sections[base >>> SECTION_SHIFT] = s;
    }
    // Keep device ranges section- and GiB-aligned, as memremap_pages wants.
    this.nextDevicePfn = Math.ceil(end / GIB_PAGES) * GIB_PAGES;
    this.pagemaps.set(pm.id, pm);
    return pm;
  }

  unregisterPagemap(id: number): void {
    const pm = this.pagemaps.get(id);
    if (pm === undefined) notFound(`pagemap ${id}`);
    if (pm.allocated > 0)
      fail(Errno.EBUSY, `pagemap ${id} still has ${pm.allocated} pages in use`, "precondition");
    for (let base = pm.startPfn; base < pm.endPfn; base += SECTION_PAGES) this.sections[base >>> SECTION_SHIFT] = undefined;
    this.pagemaps.delete(id);
  }

  /** A driver allocates one device page (zone_device_page_init: refcount 1). */
  allocDevicePage(pm: DevPagemap): number {
    if (this.deviceAllocFailHook?.()) return -1;
    const pfn = pm.popFree();
    if (pfn < 0) return -1;
    const s = this.sec(pfn);
    const i = pfn & SECTION_MASK;
    s.refcount[i] = 1;
    s.flags[i] = PG_device | PG_allocated;
    s.order[i] = 0;
    this.stats.foliosAllocated++;
    return pfn;
  }

  registerPfnRange(name: string, nrPages: number, alignPages: number): PfnRange {
    if (!Number.isSafeInteger(nrPages) || nrPages <= 0 || nrPages > 1024 * GIB_PAGES)
      invalid(`PFN range of ${nrPages} pages out of range (1 .. 4 TiB)`);
    const align = alignPages > 0 ? alignPages : GIB_PAGES;
    if (!Number.isSafeInteger(align) || (align & (align - 1)) !== 0 || align > GIB_PAGES)
      invalid(`alignment ${alignPages} must be a power of two of at most 1 GiB of pages`);
    const start = Math.ceil(this.nextMmioPfn / align) * align;
    if (start + nrPages > 2 ** 32) fail(Errno.ENOSPC, "MMIO physical address space exhausted", "exhausted");
    this.nextMmioPfn = start + nrPages;
    const r: PfnRange = { id: this.nextPfnRangeId++, name, startPfn: start, nrPages };
    this.pfnRanges.set(r.id, r);
    return r;
  }

  unregisterPfnRange(id: number): void {
    if (!this.pfnRanges.delete(id)) notFound(`pfn range ${id}`);
  }

  // ----------------------------------------------------------- reporting

  zoneFreeByOrder(z: ZoneState): number[] {
    const out = new Array<number>(MAX_PAGE_ORDER + 1).fill(0);
    for (let o = 0; o <= MAX_PAGE_ORDER; o++) out[o] = z.live[o]![0]! + z.live[o]![1]!;
    return out;
  }

  totalFreePages(): number {
    let n = 0;
    for (const z of this.zones) n += z.freePages;
    return n;
  }
}

/**
 * Page contents: 4 KiB slots in 256 KiB slabs, allocated on the first write
 * to a page; a page without a slot reads as zeros. section.data[i] holds
 * slot + 1 (0 = none).
 */
export class PageData {
  private static readonly SLOTS_PER_SLAB = 64;
  private readonly slabs: Uint8Array[] = [];
  private readonly freeSlots: number[] = [];
  inUse = 0;

  private allocSlot(): number {
    let slot = this.freeSlots.pop();
    if (slot === undefined) {
      const slab = this.slabs.length;
      this.slabs.push(new Uint8Array(PageData.SLOTS_PER_SLAB * PAGE_SIZE));
      for (let k = PageData.SLOTS_PER_SLAB - 1; k > 0; k--) this.freeSlots.push(slab * PageData.SLOTS_PER_SLAB + k);
      slot = slab * PageData.SLOTS_PER_SLAB;
    } else {
      this.view(slot).fill(0);
    }
    this.inUse++;
    return slot;
  }

  private view(slot: number): Uint8Array {
    const slab = this.slabs[Math.floor(slot / PageData.SLOTS_PER_SLAB)]!;
    const off = (slot % PageData.SLOTS_PER_SLAB) * PAGE_SIZE;
    return slab.subarray(off, off + PAGE_SIZE);
  }

  /** The page's bytes, or null if it was never written (all zero). */
  read(s: Section, i: number): Uint8Array | null {
    const v = s.data[i]!;
    return v === 0 ? null : this.view(v - 1);
  }

  /** A writable view of the page's bytes, allocating a zeroed slot. */
  writable(s: Section, i: number): Uint8Array {
    let v = s.data[i]!;
    if (v === 0) {
      v = this.allocSlot() + 1;
      s.data[i] = v;
    }
    return this.view(v - 1);
  }

  release(s: Section, i: number): void {
    const v = s.data[i]!;
    if (v === 0) return;
    s.data[i] = 0;
    this.freeSlots.push(v - 1);
    this.inUse--;
  }

  get slabCount(): number {
    return this.slabs.length;
  }
}
