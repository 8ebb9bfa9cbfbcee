/**
 * The simulated kernel: physical memory, page tables, address spaces, files,
 * tunables and counters. Deterministic and synchronous; knows nothing of
 * gRPC, logging or the clock. Operations live in their own modules (fault,
 * mmap, insert, access, ...) and take the Kernel as their first argument.
 */
import { MmuNotifyEvent, MMAP_BASE, PAGE_SIZE, PUD_SIZE } from "./constants.js";
import { Errno, fail, invalid, notFound } from "./errors.js";
import { Mm } from "./mm.js";
import { type NotifierRange, RANGE_END_ALL } from "./mmu-notifier.js";
import { Level } from "./constants.js";
import { DEFAULT_PHYS_CONFIG, type PhysConfig, PhysMem, PG_anon, PG_hugetlb, PG_shmem, PG_pagecache } from "./physmem.js";
import { TablePool } from "./pagetable.js";
import { PinRegistry } from "./pins.js";
import { keepShape, shapesTick } from "./shapes.js";
import { FaultInjector } from "./fault-inject.js";
import { AnonVma, type DeviceMapping, FileObject, type Vma } from "./vma.js";

export type ThpEnabled = "always" | "madvise" | "never";

export interface Tunables {
  /** /sys/kernel/mm/transparent_hugepage/enabled */
  thpEnabled: ThpEnabled;
  /** /sys/kernel/mm/transparent_hugepage/use_zero_page */
  thpUseZeroPage: boolean;
  /** vm.max_map_count */
  maxMapCount: number;
  /** per-session RLIMIT_MEMLOCK for long-term pins, bytes (0 = unlimited) */
  memlockLimitBytes: number;
  /** pin accounting profile: "current" or the late-2019 "bias-2019" scheme */
  pinAccounting: "current" | "bias-2019";
}

export const DEFAULT_TUNABLES: Tunables = {
  thpEnabled: "always",
  thpUseZeroPage: true,
  maxMapCount: 65530,
  memlockLimitBytes: 0,
  pinAccounting: "current",
};

/** /proc/vmstat-like counters (plus a few the simulator adds). */
export function newVmstat() {
  return {
    pgfault: 0,
    pgmajfault: 0,
    thp_fault_alloc: 0,
    thp_fault_fallback: 0,
    thp_split_pmd: 0,
    thp_split_pud: 0,
    thp_split_page: 0,
    thp_deferred_split_page: 0,
    thp_zero_page_alloc: 0,
    nr_anon_transparent_hugepages: 0,
    nr_anon_pages: 0,
    nr_file_pages: 0,
    nr_shmem: 0,
    nr_foll_pin_acquired: 0,
    nr_foll_pin_released: 0,
    pgmigrate_success: 0,
    pgmigrate_fail: 0,
    cow_faults: 0,
    zero_page_faults: 0,
    huge_zero_faults: 0,
    wp_reuse: 0,
    mmu_invalidations: 0,
    mmu_interval_callbacks: 0,
    pfn_inserts_pud: 0,
    pfn_inserts_pmd: 0,
    pfn_inserts_pte: 0,
  };
}
export type Vmstat = ReturnType<typeof newVmstat>;

/**
 * One mutating operation as the service layer runs it. Ends of invalidations
 * whose subscribers answer asynchronously, and the folio references that the
 * zap released (mmu_gather), are held here until every answer arrived.
 */
export class OpContext {
  /** async answers still awaited (incremented by remote subscribers) */
  pending: Promise<unknown>[] = [];
  readonly deferredEnds: { mm: Mm; range: NotifierRange }[] = [];
  readonly puts: number[] = [];
  readonly putCounts: number[] = [];

  constructor() {
    shapesTick();
  }
}
keepShape(() => new OpContext());

export interface KernelConfig {
  phys?: Partial<PhysConfig>;
  tunables?: Partial<Tunables>;
}

export class Kernel {
  readonly phys: PhysMem;
  readonly pt = new TablePool();
  readonly tunables: Tunables;
  readonly vmstat: Vmstat = newVmstat();
  readonly mms = new Map<number, Mm>();
  readonly files = new Map<number, FileObject>();
  private nextMmId = 1;
  private nextFileId = 1;
  private nextAnonVmaId = 1;
  readonly anonVmas = new Map<number, AnonVma>();
  /**
   * do_swap_page for device-private and device-exclusive entries
   * (migrate_to_ram / restore); installed by the device-memory module.
   */
  deviceEntryFault: ((mm: Mm, vma: Vma, addr: number, flags: number) => number) | null = null;
  /** the operation the service layer is running, if any */
  op: OpContext | null = null;
  /**
   * Holders of folio references other than mappings and the page cache
   * (pins, GUP references, drivers): each returns head PFN -> {refs, pins}.
   */
  readonly refHolders: (() => Map<number, { refs: number; pins: number }>)[] = [];
  /** Further invariant checks registered by other modules. */
  readonly extraChecks: ((add: (v: { code: string; message: string; pfn?: number; mmId?: number; addr?: number }) => void) => void)[] = [];
  /** observers of every invalidation (metrics, event logs) */
  readonly invalidationObservers = new Set<(r: NotifierRange, phase: "start" | "end") => void>();
  /** GUP references and pins held by sessions (pins.ts). */
  readonly pins: PinRegistry;
  /** Named fault-injection points (fault-inject.ts); disabled by default. */
  readonly inject: FaultInjector;

  constructor(config: KernelConfig = {}) {
    this.phys = new PhysMem({ ...DEFAULT_PHYS_CONFIG, ...config.phys });
    this.tunables = { ...DEFAULT_TUNABLES, ...config.tunables };
    this.pins = new PinRegistry(this);
    this.inject = new FaultInjector(this.phys, this.pt);
    this.installCoreHooks();
  }

  /**
   * The pin registry's reference holder and checks. The constructor runs
   * it; a kernel rebuilt from a snapshot (snapshot.ts) runs it too.
   */
  installCoreHooks(): void {
    this.refHolders.push(() => this.pins.heldRefs());
    this.extraChecks.push((add) => this.pins.checkPinStats(add));
  }

  // ------------------------------------------------------------ objects

  createMm(name: string, session: number): Mm {
    const pgd = this.pt.alloc(Level.PGD);
    if (pgd < 0) fail(Errno.ENOMEM, "no memory for a page directory");
    const mm = new Mm(this.nextMmId++, name, session, pgd, MMAP_BASE);
    this.mms.set(mm.id, mm);
    return mm;
  }

  mm(id: number): Mm {
    const mm = this.mms.get(id);
    if (mm === undefined || mm.exited) notFound(`mm ${id}`);
    return mm;
  }

  file(id: number): FileObject {
    const f = this.files.get(id);
    if (f === undefined) notFound(`file ${id}`);
    return f;
  }

  newFileId(): number {
    return this.nextFileId++;
  }

  addFile(f: FileObject): void {
    this.files.set(f.id, f);
  }

  newAnonVma(): AnonVma {
    const av = new AnonVma(this.nextAnonVmaId++);
    this.anonVmas.set(av.id, av);
    return av;
  }

  anonVmaById(id: number): AnonVma | undefined {
    return this.anonVmas.get(id);
  }

  /** The mm a VMA belongs to. */
  vmaOwner(v: Vma): Mm | undefined {
    return this.mms.get(v.mmId);
  }

  /** Is [pfn, pfn+n) inside the PFN range a driver mapping is bound to? */
  devicePfnInRange(dev: DeviceMapping, pfn: number, n: number): boolean {
    if (dev.pfnRangeId === 0) return pfn >= 0 && pfn + n <= 2 ** 32;
    const r = this.phys.pfnRanges.get(dev.pfnRangeId);
    if (r !== undefined) return pfn >= r.startPfn && pfn + n <= r.startPfn + r.nrPages;
    const pm = this.phys.pagemaps.get(-dev.pfnRangeId);
    return pm !== undefined && pfn >= pm.startPfn && pfn + n <= pm.endPfn;
  }

  /** The hidden hugetlbfs file behind MAP_PRIVATE|MAP_ANONYMOUS|MAP_HUGETLB. */
  isInternalHugetlbFile(f: FileObject): boolean {
    return f.anonymous;
  }

  /** anon_vma_prepare(): an anon VMA gets its rmap family on first use. */
  anonVmaPrepare(vma: Vma): AnonVma {
    if (vma.anonVma === null) {
      vma.anonVma = this.newAnonVma();
      vma.anonVma.vmas.add(vma);
    }
    return vma.anonVma;
  }

  // ------------------------------------------------------- invalidations

  /**
   * mmu_notifier_invalidate_range_start. Returns false only for a refused
   * non-blockable range.
   */
  invalidateStart(mm: Mm, start: number, end: number, event: MmuNotifyEvent, owner = 0, blockable = true): NotifierRange | null {
    const range: NotifierRange = { mmId: mm.id, start, end, event, owner, blockable };
    this.vmstat.mmu_invalidations++;
    const before = mm.notifier.callbacks;
    const ok = mm.notifier.invalidateRangeStart(range);
    this.vmstat.mmu_interval_callbacks += mm.notifier.callbacks - before;
    for (const o of this.invalidationObservers) o(range, "start");
    return ok ? range : null;
  }

  invalidateEnd(mm: Mm, range: NotifierRange): void {
    if (this.op !== null && this.op.pending.length > 0) {
      this.op.deferredEnds.push({ mm, range });
      return;
    }
    mm.notifier.invalidateRangeEnd(range);
    for (const o of this.invalidationObservers) o(range, "end");
  }

  /** start + end around `fn`, for blockable invalidations. */
  withInvalidation<T>(mm: Mm, start: number, end: number, event: MmuNotifyEvent, fn: () => T, owner = 0): T {
    const r = this.invalidateStart(mm, start, end, event, owner, true)!;
    try {
      return fn();
    } finally {
      this.invalidateEnd(mm, r);
    }
  }

  /** Drop `n` references of a folio the zap unmapped (tlb_remove_page). */
  tlbPut(head: number, n: number): void {
    const op = this.op;
    if (op !== null) {
      op.puts.push(head);
      op.putCounts.push(n);
      return;
    }
    this.phys.folioRefAdd(head, -n);
  }

  /** Finish an operation: run deferred ends and release gathered pages. */
  finishOp(op: OpContext): void {
    for (const { mm, range } of op.deferredEnds.splice(0)) {
      mm.notifier.invalidateRangeEnd(range);
      for (const o of this.invalidationObservers) o(range, "end");
    }
    for (let i = 0; i < op.puts.length; i++) this.phys.folioRefAdd(op.puts[i]!, -op.putCounts[i]!);
    op.puts.length = 0;
    op.putCounts.length = 0;
  }

  /** Run a synchronous model operation under an OpContext (no async waits). */
  runOp<T>(fn: () => T): T {
    const prev = this.op;
    const op = new OpContext();
    this.op = op;
    try {
      return fn();
    } finally {
      this.op = prev;
      this.finishOp(op);
    }
  }

  // --------------------------------------------------- rmap accounting

  /** RSS counter bump for a mapping of `nr` pages of folio `head`. */
  rssAdd(mm: Mm, head: number, nr: number): void {
    const f = this.phys.flags(head);
    if (f & PG_hugetlb) mm.hugetlbPages += nr;
    else if (f & PG_anon) mm.rssAnon += nr;
    else if (f & PG_shmem) mm.rssShmem += nr;
    else mm.rssFile += nr;
  }

  /** folio_add_*_rmap_ptes + the mapping's references. */
  rmapAddPtes(mm: Mm, head: number, nr: number): void {
    const p = this.phys;
    p.folioRefAdd(head, nr);
    this.mapcountAdd(head, nr);
    this.rssAdd(mm, head, nr);
  }

  mapcountAdd(head: number, nr: number): void {
    const p = this.phys;
    const before = p.mapcount(head);
    p.mapcountAdd(head, nr);
    const after = before + nr;
    const f = p.flags(head);
    if ((before === 0) !== (after === 0) && f & PG_anon) {
      this.vmstat.nr_anon_pages += (after === 0 ? -1 : 1) * p.folioNrPages(head);
    }
  }

  /** Remove `nr` PTE mappings; the references go to the mmu_gather. */
  rmapRemovePtes(mm: Mm, head: number, nr: number): void {
    this.mapcountAdd(head, -nr);
    this.rssAdd(mm, head, -nr);
    this.tlbPut(head, nr);
  }

  /** Is `head` an anonymous THP (order 9, not hugetlb), for NR_ANON_THPS? */
  private isAnonThp(head: number): boolean {
    const f = this.phys.flags(head);
    return (f & (PG_anon | PG_hugetlb)) === PG_anon && this.phys.folioOrder(head) === 9;
  }

  /** A PMD or PUD leaf mapping of a whole folio (+1 ref when `takeRef`). */
  rmapAddEntire(mm: Mm, head: number, pages: number, takeRef: boolean): void {
    const p = this.phys;
    if (takeRef) p.folioRefAdd(head, 1);
    p.entireMapcountAdd(head, 1);
    this.mapcountAdd(head, 1);
    this.rssAdd(mm, head, pages);
    if (p.entireMapcount(head) === 1 && this.isAnonThp(head)) this.vmstat.nr_anon_transparent_hugepages++;
  }

  /** Remove a PMD/PUD leaf mapping; its reference goes to the mmu_gather. */
  rmapRemoveEntire(mm: Mm, head: number, rssPages: number): void {
    this.rmapRemoveEntireNoPut(mm, head, rssPages);
    this.tlbPut(head, 1);
  }

  /** Remove a PMD/PUD leaf mapping and drop its reference now. */
  rmapRemoveEntireNow(mm: Mm, head: number, rssPages: number): void {
    this.rmapRemoveEntireNoPut(mm, head, rssPages);
    this.phys.folioRefAdd(head, -1);
  }

  private rmapRemoveEntireNoPut(mm: Mm, head: number, rssPages: number): void {
    const p = this.phys;
    p.entireMapcountAdd(head, -1);
    this.mapcountAdd(head, -1);
    if (rssPages !== 0) this.rssAdd(mm, head, -rssPages);
    if (p.entireMapcount(head) === 0 && this.isAnonThp(head)) this.vmstat.nr_anon_transparent_hugepages--;
  }

  /** Page-cache insertion bookkeeping (refcount 2^order for the cache). */
  pageCacheAccount(head: number, pages: number, sign: 1 | -1): void {
    const f = this.phys.flags(head);
    if (!(f & PG_pagecache)) return;
    this.vmstat.nr_file_pages += sign * pages;
    if (f & PG_shmem) this.vmstat.nr_shmem += sign * pages;
  }

  // ---------------------------------------------------------- helpers

  checkUserRange(addr: number, len: number): void {
    if (!Number.isSafeInteger(addr) || !Number.isSafeInteger(len) || addr < 0 || len < 0)
      invalid(`address ${addr} / length ${len} not representable`);
    if (addr % PAGE_SIZE !== 0) invalid(`address 0x${addr.toString(16)} is not page aligned`);
  }

  /** rough totals for inspection */
  memoryInUsePages(): number {
    return this.phys.ramPages - this.phys.totalFreePages();
  }
}

export { RANGE_END_ALL, PUD_SIZE };
