/**
 * Device memory migration (mm/migrate_device.c, spec section 8) and
 * device-exclusive entries (make_device_exclusive, spec 7.4 / 8):
 *
 *  - migrate_vma_setup / migrate_vma_pages / migrate_vma_finalize, with the
 *    MIGRATE_VMA_SELECT_* selection and pgmap owner rules, migration entries
 *    in the page table between setup and finalize, try_to_migrate over the
 *    anon rmap for mappings in other mms, and restore of what cannot move
 *    (pinned or otherwise referenced pages);
 *  - migrate_to_ram: a CPU (or GUP/HMM) fault on a device-private entry calls
 *    the pagemap's migrate_to_ram (Kernel.deviceEntryFault dispatches here);
 *  - migrate_device_range (driver eviction), migrate_device_coherent_folio
 *    (FOLL_LONGTERM of device-coherent pages);
 *  - make_device_exclusive and its restore on CPU access;
 *  - the OOM reaper's non-blockable UNMAP per VMA.
 *
 * The src/dst arrays are the kernel's migrate pfns split into two typed
 * arrays each: a PFN (Uint32Array) and the MIGRATE_PFN_* flags (Uint8Array).
 * A device page is freed when its refcount drops to 0 (6.15+ page_free).
 */
import {
  FAULT_FLAG_REMOTE,
  FAULT_FLAG_WRITE,
  GUP_PIN_COUNTING_BIAS,
  HPAGE_PMD_NR,
  Level,
  MemoryType,
  MmuNotifyEvent,
  PAGE_SIZE,
  PMD_SIZE,
  VM_FAULT_ERROR,
  VM_FAULT_OOM,
  VM_FAULT_SIGBUS,
  VM_IO,
  VM_PFNMAP,
  VM_SHARED,
  VM_SPECIAL,
  VM_WRITE,
} from "./constants.js";
import { Errno, fail } from "./errors.js";
import { copyPageData, handleMmFault, pteBits, splitHugePmd } from "./fault.js";
import type { Kernel } from "./kernel.js";
import type { Mm } from "./mm.js";
import { zapRange } from "./mmap.js";
import {
  E_DIRTY,
  E_LEAF,
  E_PRESENT,
  E_PROTNONE,
  E_SOFT_DIRTY,
  E_SPECIAL,
  E_TABLE,
  E_WRITE,
  E_YOUNG,
  SwpKind,
  ensureTable,
  findTable,
  isPresentLeaf,
  pmdIndex,
  pteIndex,
  swpBits,
  swpKind,
} from "./pagetable.js";
import {
  GFP_MOVABLE,
  PG_allocated,
  PG_anon,
  PG_anon_exclusive,
  PG_dirty,
  PG_has_data,
  PG_head,
  PG_hugetlb,
  PG_lru,
  SECTION_PAGES,
} from "./physmem.js";
import { keepShape } from "./shapes.js";
import type { Vma } from "./vma.js";

// enum migrate_vma_direction
export const MIGRATE_VMA_SELECT_SYSTEM = 1 << 0;
export const MIGRATE_VMA_SELECT_DEVICE_PRIVATE = 1 << 1;
export const MIGRATE_VMA_SELECT_DEVICE_COHERENT = 1 << 2;
export const MIGRATE_VMA_SELECT_COMPOUND = 1 << 3;

// MIGRATE_PFN_* (include/linux/migrate.h), the low bits of a migrate pfn.
export const MIGRATE_PFN_VALID = 1 << 0;
export const MIGRATE_PFN_MIGRATE = 1 << 1;
export const MIGRATE_PFN_WRITE = 1 << 3;

const PAGE_MASK_IN_SECTION = SECTION_PAGES - 1;

/** A PTE that holds a migration entry of a page being migrated. */
interface Slot {
  mm: Mm;
  vma: Vma;
  addr: number;
}

/**
 * struct migrate_vma. src/dst PFNs with MIGRATE_PFN_* flags per page of
 * [start, end); `cpages` as migrate_vma_setup leaves it (pages collected and
 * unmapped, empty entries included).
 */
export class MigrateVma {
  readonly srcPfn: Uint32Array;
  readonly srcFlags: Uint8Array;
  readonly dstPfn: Uint32Array;
  readonly dstFlags: Uint8Array;
  npages = 0;
  cpages = 0;
  end: number;
  /** 1 when page i's own PTE (at start + i pages) holds its migration entry */
  readonly own: Uint8Array;
  /** PTEs of other mms holding a migration entry of page i (try_to_migrate), rare */
  readonly slots: (Slot[] | undefined)[];

  constructor(
    readonly vma: Vma,
    readonly start: number,
    end: number,
    readonly pgmapOwner: number,
    readonly flags: number,
    /** the device-private PFN whose CPU fault started this (fault_page), or -1 */
    readonly faultPage = -1,
  ) {
    this.end = end;
    const n = Math.max(0, Math.ceil((end - start) / PAGE_SIZE));
    this.srcPfn = new Uint32Array(n);
    this.srcFlags = new Uint8Array(n);
    this.dstPfn = new Uint32Array(n);
    this.dstFlags = new Uint8Array(n);
    this.own = new Uint8Array(n);
    this.slots = new Array<Slot[] | undefined>(n);
  }

  /** Page i has a source page (not an empty entry) selected for migration. */
  hasPage(i: number): boolean {
    return (this.srcFlags[i]! & MIGRATE_PFN_VALID) !== 0;
  }

  migrating(i: number): boolean {
    return (this.srcFlags[i]! & MIGRATE_PFN_MIGRATE) !== 0;
  }

  /** The driver sets the destination of page i (a freshly allocated page, refcount 1). */
  setDst(i: number, pfn: number, write: boolean): void {
    this.dstPfn[i] = pfn;
    this.dstFlags[i] = MIGRATE_PFN_VALID | (write ? MIGRATE_PFN_WRITE : 0);
  }
}

// ----------------------------------------------------------------- per kernel

/** dev_pagemap_ops of a driver: migrate_to_ram for one faulting address. */
export interface DevPagemapOps {
  /** Returns vm_fault_t bits (0 once the page is back in RAM or was not selected). */
  migrateToRam(k: Kernel, mm: Mm, vma: Vma, addr: number, pfn: number): number;
}

interface HmmKernelState {
  ops: Map<number, DevPagemapOps>;
  /** migrations between setup and finalize: their collect and allocation references. */
  inflight: Set<MigrateVma>;
}

const states = new WeakMap<Kernel, HmmKernelState>();

/**
 * The kernel's device-memory state; on first use installs the fault hook
 * (do_swap_page for device-private and device-exclusive entries) and the
 * reference holder for migrations in flight.
 */
function state(k: Kernel): HmmKernelState {
  let s = states.get(k);
  if (s === undefined) {
    const st: HmmKernelState = { ops: new Map(), inflight: new Set() };
    s = st;
    states.set(k, st);
    k.deviceEntryFault = (mm, vma, addr, flags) => deviceEntryFault(k, mm, vma, addr, flags);
    k.refHolders.push(() => inflightRefs(k, st));
  }
  return s;
}

/** Install the device-entry fault hook on `k` (idempotent). */
export function installDeviceMemory(k: Kernel): void {
  state(k);
}

/**
 * Snapshot support: whether device memory was installed, and the number of
 * migrations between setup and finalize (a snapshot needs none).
 */
export function peekDeviceMemory(k: Kernel): { inflight: number } | undefined {
  const s = states.get(k);
  return s === undefined ? undefined : { inflight: s.inflight.size };
}

/** Register the dev_pagemap_ops of a driver's pagemap. */
export function setPagemapOps(k: Kernel, pgmapId: number, ops: DevPagemapOps | null): void {
  if (ops === null) state(k).ops.delete(pgmapId);
  else state(k).ops.set(pgmapId, ops);
}

function inflightRefs(k: Kernel, st: HmmKernelState): Map<number, { refs: number; pins: number }> {
  const out = new Map<number, { refs: number; pins: number }>();
  const add = (pfn: number) => {
    const head = k.phys.folioHead(pfn);
    const e = out.get(head);
    if (e === undefined) out.set(head, { refs: 1, pins: 0 });
    else e.refs++;
  };
  for (const m of st.inflight) {
    for (let i = 0; i < m.npages; i++) {
      if (m.hasPage(i)) add(m.srcPfn[i]!);
      if (m.dstFlags[i]! & MIGRATE_PFN_VALID) add(m.dstPfn[i]!);
    }
  }
  return out;
}

// ------------------------------------------------------------------ helpers

/** The PTE table and index mapping `addr`, or null if there is none. */
function pteSlot(k: Kernel, mm: Mm, addr: number): { t: number; i: number } | null {
  const t = findTable(k.pt, mm.pgd, addr, Level.PTE);
  return t === 0 ? null : { t, i: pteIndex(addr) };
}

/** folio_maybe_dma_pinned */
function maybeDmaPinned(k: Kernel, head: number): boolean {
  const p = k.phys;
  return p.folioOrder(head) > 0 ? p.pincount(head) > 0 : p.refcount(head) >= GUP_PIN_COUNTING_BIAS;
}

function isDevicePrivateKind(kind: SwpKind): boolean {
  return kind === SwpKind.DEVICE_PRIVATE_READ || kind === SwpKind.DEVICE_PRIVATE_WRITE;
}

function isMigrationKind(kind: SwpKind): boolean {
  return kind === SwpKind.MIGRATION_READ || kind === SwpKind.MIGRATION_READ_EXCLUSIVE || kind === SwpKind.MIGRATION_WRITE;
}

/**
 * rmap_walk_anon for one small page: every PTE, in any mm of the folio's
 * anon_vma family, whose entry refers to `pfn` (present, device-private,
 * device-exclusive or migration).
 */
function forEachAnonMapping(k: Kernel, pfn: number, fn: (mm: Mm, vma: Vma, addr: number, t: number, i: number) => void): void {
  const p = k.phys;
  const head = p.folioHead(pfn);
  const mapping = p.mapping(head);
  if (mapping >= 0 || !(p.flags(head) & PG_anon)) return;
  const av = k.anonVmaById(-mapping);
  if (av === undefined) return;
  const index = p.folioIndex(head) + (pfn - head);
  for (const v of [...av.vmas]) {
    const mm = k.vmaOwner(v);
    if (mm === undefined || mm.exited) continue;
    const addr = v.start + (index - v.pgoff) * PAGE_SIZE;
    if (addr < v.start || addr >= v.end) continue;
    const s = pteSlot(k, mm, addr);
    if (s === null) continue;
    const lo = k.pt.lo(s.t, s.i);
    const hi = k.pt.hi(s.t, s.i);
    if (lo !== pfn || hi === 0) continue;
    if (hi & E_PRESENT) {
      if (hi & E_SPECIAL) continue;
    } else {
      const kind = swpKind(hi);
      if (!isDevicePrivateKind(kind) && kind !== SwpKind.DEVICE_EXCLUSIVE && !isMigrationKind(kind)) continue;
    }
    fn(mm, v, addr, s.t, s.i);
  }
}

/**
 * Replace the entry at (t, i), which maps page `pfn`, with a migration
 * entry: the rmap and the mapping's reference go, the caller's reference
 * keeps the page. Returns false when an exclusive anon page may be pinned
 * (folio_try_share_anon_rmap_pte fails) and nothing changed.
 */
function installMigrationEntry(k: Kernel, t: number, i: number, pfn: number, write: boolean): boolean {
  const p = k.phys;
  const pool = k.pt;
  const hi = pool.hi(t, i);
  const head = p.folioHead(pfn);
  const anonExclusive = (p.flags(head) & PG_anon) !== 0 && (p.flags(pfn) & PG_anon_exclusive) !== 0;
  if (anonExclusive) {
    if (maybeDmaPinned(k, head)) return false;
    p.clearFlags(pfn, PG_anon_exclusive);
  }
  const present = (hi & E_PRESENT) !== 0;
  if (present && hi & E_DIRTY) p.orFlags(head, PG_dirty);
  const kind = write ? SwpKind.MIGRATION_WRITE : anonExclusive ? SwpKind.MIGRATION_READ_EXCLUSIVE : SwpKind.MIGRATION_READ;
  const keep = (present ? hi & (E_YOUNG | E_DIRTY) : 0) | (hi & E_SOFT_DIRTY);
  pool.set(t, i, pfn, swpBits(kind) | keep);
  k.mapcountAdd(head, -1);
  p.folioRefAdd(head, -1);
  return true;
}

/** Is the entry writable (present PTE or device-private entry)? */
function entryWritable(hi: number): boolean {
  return hi & E_PRESENT ? (hi & E_WRITE) !== 0 : swpKind(hi) === SwpKind.DEVICE_PRIVATE_WRITE;
}

/**
 * remove_migration_pte for one slot: the migration entry of `src` becomes a
 * mapping of `dst` (device-private entry, or a present PTE for RAM and
 * device-coherent pages) with the writability and exclusivity the migration
 * entry recorded.
 */
function removeMigrationPte(k: Kernel, slot: Slot, src: number, dst: number): void {
  const s = pteSlot(k, slot.mm, slot.addr);
  if (s === null) return;
  const pool = k.pt;
  const p = k.phys;
  const hi = pool.hi(s.t, s.i);
  if (pool.lo(s.t, s.i) !== src || hi & E_PRESENT || !isMigrationKind(swpKind(hi))) return;
  const kind = swpKind(hi);
  const write = kind === SwpKind.MIGRATION_WRITE;
  const exclusive = kind !== SwpKind.MIGRATION_READ;
  let bits: number;
  if (p.memoryType(dst) === MemoryType.DEVICE_PRIVATE) {
    bits = swpBits(write ? SwpKind.DEVICE_PRIVATE_WRITE : SwpKind.DEVICE_PRIVATE_READ) | (hi & E_SOFT_DIRTY);
  } else {
    bits = pteBits(slot.vma, write, (hi & E_DIRTY) !== 0) | (hi & E_SOFT_DIRTY);
    if (!(hi & E_YOUNG)) bits &= ~E_YOUNG;
  }
  pool.set(s.t, s.i, dst, bits);
  const head = p.folioHead(dst);
  p.folioRefAdd(head, 1);
  k.mapcountAdd(head, 1);
  if (p.flags(head) & PG_anon) {
    if (exclusive) p.orFlags(dst, PG_anon_exclusive);
    else p.clearFlags(dst, PG_anon_exclusive);
  }
}

/**
 * try_to_migrate for a small page: every remaining mapping (other mms after
 * fork) gets a migration entry, each under a CLEAR notification of its page.
 * Mappings that cannot be converted stay; the caller sees the page still mapped.
 */
function tryToMigrate(k: Kernel, m: MigrateVma, i: number, pfn: number): void {
  forEachAnonMapping(k, pfn, (mm, vma, addr, t, j) => {
    const hi = k.pt.hi(t, j);
    if (!(hi & E_PRESENT) && !isDevicePrivateKind(swpKind(hi))) return; // exclusive / migration
    k.withInvalidation(mm, addr, addr + PAGE_SIZE, MmuNotifyEvent.CLEAR, () => {
      if (installMigrationEntry(k, t, j, pfn, entryWritable(hi))) (m.slots[i] ??= []).push({ mm, vma, addr });
    });
  });
}

// --------------------------------------------------------------- THP split

/**
 * split_folio of a PMD-mapped anonymous THP for migrate_vma_collect: the PMD
 * becomes 512 PTEs (CLEAR over the 2 MiB) and the folio 512 order-0 folios.
 * Only a folio mapped by this one PMD and otherwise unreferenced splits (the
 * kernel's can_split_folio); false leaves everything as it was.
 */
function splitAnonThp(k: Kernel, mm: Mm, vma: Vma, haddr: number, head: number): boolean {
  const p = k.phys;
  const f = p.flags(head);
  if ((f & (PG_anon | PG_hugetlb)) !== PG_anon || p.folioOrder(head) !== 9) return false;
  if (p.refcount(head) !== 1 || p.mapcount(head) !== 1 || p.entireMapcount(head) !== 1 || p.pincount(head) !== 0) return false;
  if (k.inject.fail("folio_split")) return false; // split_folio: -EAGAIN, the THP is skipped
  if (!splitHugePmd(k, mm, vma, haddr)) return false;
  // __split_folio_to_order: every page becomes its own folio.
  const s = p.sec(head);
  const base = head & PAGE_MASK_IN_SECTION;
  const mapping = s.mapping[base]!;
  const index = s.index[base]!;
  const carried = f & (PG_anon | PG_lru | PG_dirty);
  for (let j = 0; j < HPAGE_PMD_NR; j++) {
    const o = base + j;
    s.order[o] = 0;
    s.flags[o] = (s.flags[o]! & PG_anon_exclusive) | carried | PG_allocated | (s.data[o] !== 0 ? PG_has_data : 0);
    s.refcount[o] = 1;
    s.mapcount[o] = 1;
    s.entire[o] = 0;
    s.pincount[o] = 0;
    s.mapping[o] = mapping;
    s.index[o] = index + j;
  }
  s.flags[base]! &= ~PG_head;
  k.vmstat.thp_split_page++;
  return true;
}

// ---------------------------------------------------------------- collect

/** migrate_vma_setup: returns 0 or -EINVAL. */
export function migrateVmaSetup(k: Kernel, m: MigrateVma): number {
  state(k);
  const vma = m.vma;
  const mm = k.vmaOwner(vma);
  if (mm === undefined || mm.exited) return -Errno.EINVAL;
  if (vma.isHugetlb || vma.flags & VM_SPECIAL || vma.isFsdax) return -Errno.EINVAL;
  if (m.end <= m.start || m.start % PAGE_SIZE !== 0 || m.end % PAGE_SIZE !== 0) return -Errno.EINVAL;
  if (m.start < vma.start || m.start >= vma.end || m.end <= vma.start || m.end > vma.end) return -Errno.EINVAL;
  if (m.faultPage >= 0 && k.phys.memoryType(m.faultPage) !== MemoryType.DEVICE_PRIVATE) return -Errno.EINVAL;
  m.srcPfn.fill(0);
  m.srcFlags.fill(0);
  m.dstPfn.fill(0);
  m.dstFlags.fill(0);
  m.own.fill(0);
  m.slots.fill(undefined);
  m.cpages = 0;
  m.npages = 0;
  state(k).inflight.add(m);
  collect(k, mm, m);
  if (m.cpages > 0) unmap(k, m);
  return 0;
}

/** migrate_vma_collect: one MIGRATE notification over the range. */
function collect(k: Kernel, mm: Mm, m: MigrateVma): void {
  const range = k.invalidateStart(mm, m.start, m.end, MmuNotifyEvent.MIGRATE, m.pgmapOwner, true)!;
  try {
    let addr = m.start;
    while (addr < m.end) {
      const e = Math.min(m.end, addr - (addr % PMD_SIZE) + PMD_SIZE);
      collectPmd(k, mm, m, addr, e);
      addr = e;
    }
  } finally {
    k.invalidateEnd(mm, range);
  }
  m.end = m.start + m.npages * PAGE_SIZE;
}

function collectHole(m: MigrateVma, addr: number, end: number): void {
  const anon = m.vma.isAnonymous;
  for (let a = addr; a < end; a += PAGE_SIZE) {
    const i = m.npages++;
    if (anon) {
      m.srcFlags[i] = MIGRATE_PFN_MIGRATE;
      m.cpages++;
    }
  }
}

function collectSkip(m: MigrateVma, addr: number, end: number): void {
  m.npages += (end - addr) / PAGE_SIZE;
}

/** migrate_vma_collect_pmd for [addr, end) inside one PMD slot. */
function collectPmd(k: Kernel, mm: Mm, m: MigrateVma, addr: number, end: number): void {
  const pool = k.pt;
  const p = k.phys;
  const pmdT = findTable(pool, mm.pgd, addr, Level.PMD);
  if (pmdT === 0) {
    // No PMD table: a hole, unless a PUD leaf is in the way (never in an
    // anonymous VMA).
    const pudT = findTable(pool, mm.pgd, addr, Level.PUD);
    const ui = Math.floor(addr / 2 ** 30) & 511;
    if (pudT !== 0 && pool.hi(pudT, ui) !== 0) return collectSkip(m, addr, end);
    return collectHole(m, addr, end);
  }
  const mi = pmdIndex(addr);
  let mhi = pool.hi(pmdT, mi);
  if (mhi === 0 && pool.lo(pmdT, mi) === 0) return collectHole(m, addr, end);
  if (!(mhi & E_TABLE)) {
    if (!isPresentLeaf(mhi) || !(mhi & E_LEAF)) return collectSkip(m, addr, end);
    const lo = pool.lo(pmdT, mi);
    const haddr = addr - (addr % PMD_SIZE);
    if (p.isHugeZeroPfn(lo)) {
      if (!splitHugePmd(k, mm, m.vma, haddr)) return collectSkip(m, addr, end);
    } else if (mhi & E_SPECIAL || !splitAnonThp(k, mm, m.vma, haddr, p.folioHead(lo))) {
      return collectSkip(m, addr, end);
    }
    mhi = pool.hi(pmdT, mi);
    if (!(mhi & E_TABLE)) return collectSkip(m, addr, end);
  }
  const pteT = pool.lo(pmdT, mi);
  const anon = m.vma.isAnonymous;
  for (let a = addr; a < end; a += PAGE_SIZE) {
    const i = m.npages++;
    const j = pteIndex(a);
    const lo = pool.lo(pteT, j);
    const hi = pool.hi(pteT, j);
    if (lo === 0 && hi === 0) {
      if (anon) {
        m.srcFlags[i] = MIGRATE_PFN_MIGRATE;
        m.cpages++;
      }
      continue;
    }
    let write: boolean;
    if (!(hi & E_PRESENT)) {
      const kind = swpKind(hi);
      if (!isDevicePrivateKind(kind)) continue;
      const pm = p.pagemapOf(lo);
      if (!(m.flags & MIGRATE_VMA_SELECT_DEVICE_PRIVATE) || pm === null || pm.owner !== m.pgmapOwner) continue;
      write = kind === SwpKind.DEVICE_PRIVATE_WRITE;
    } else {
      if (p.isZeroPfn(lo)) {
        if (m.flags & MIGRATE_VMA_SELECT_SYSTEM) {
          m.srcFlags[i] = MIGRATE_PFN_MIGRATE;
          m.cpages++;
        }
        continue;
      }
      if (hi & E_SPECIAL || !p.pfnValid(lo)) continue; // vm_normal_page() == NULL
      const mt = p.memoryType(lo);
      if (mt === MemoryType.NONE) {
        if (!(m.flags & MIGRATE_VMA_SELECT_SYSTEM)) continue;
      } else if (mt === MemoryType.DEVICE_COHERENT) {
        const pm = p.pagemapOf(lo)!;
        if (!(m.flags & MIGRATE_VMA_SELECT_DEVICE_COHERENT) || pm.owner !== m.pgmapOwner) continue;
      } else {
        continue; // other ZONE_DEVICE pages are not migratable
      }
      write = (hi & E_WRITE) !== 0;
    }
    // Only small anonymous folios move (file/shmem pages and PTE-mapped
    // large folios are left where they are).
    const head = p.folioHead(lo);
    if (!(p.flags(head) & PG_anon) || p.folioOrder(head) > 0) continue;
    p.folioRefAdd(head, 1); // the collect reference
    if (!installMigrationEntry(k, pteT, j, lo, write)) {
      p.folioRefAdd(head, -1);
      continue;
    }
    m.srcPfn[i] = lo;
    m.srcFlags[i] = MIGRATE_PFN_VALID | MIGRATE_PFN_MIGRATE | (write ? MIGRATE_PFN_WRITE : 0);
    m.own[i] = 1;
    m.cpages++;
  }
}

/**
 * migrate_device_unmap: unmap the pages from every other mm
 * (try_to_migrate), check that nothing else holds them, restore the ones
 * that must stay. cpages becomes the number of entries still migrating.
 */
function unmap(k: Kernel, m: MigrateVma): void {
  const p = k.phys;
  let unmapped = 0;
  for (let i = 0; i < m.npages; i++) {
    if (!m.hasPage(i)) {
      if (m.migrating(i)) unmapped++;
      continue;
    }
    const pfn = m.srcPfn[i]!;
    if (p.mapcount(pfn) > 0) tryToMigrate(k, m, i, pfn);
    // migrate_vma_check_page: only our own reference may remain.
    if (p.mapcount(pfn) > 0 || p.refcount(pfn) - 1 > 0) {
      m.srcFlags[i]! &= ~MIGRATE_PFN_MIGRATE;
      restorePage(k, m, i, pfn);
      k.vmstat.pgmigrate_fail++;
      continue;
    }
    unmapped++;
  }
  m.cpages = unmapped;
}

/** remove_migration_ptes(src -> dst) for every PTE holding page i's migration entry. */
function removeMigrationPtes(k: Kernel, m: MigrateVma, i: number, src: number, dst: number): void {
  if (m.own[i]) {
    const mm = k.vmaOwner(m.vma);
    if (mm !== undefined) removeMigrationPte(k, { mm, vma: m.vma, addr: m.start + i * PAGE_SIZE }, src, dst);
    m.own[i] = 0;
  }
  const extra = m.slots[i];
  if (extra !== undefined) for (const s of extra) removeMigrationPte(k, s, src, dst);
  m.slots[i] = undefined;
}

/** remove_migration_ptes(folio, folio) and drop the collect reference. */
function restorePage(k: Kernel, m: MigrateVma, i: number, pfn: number): void {
  removeMigrationPtes(k, m, i, pfn, pfn);
  m.srcPfn[i] = 0;
  m.srcFlags[i] = 0;
  k.phys.folioRefAdd(pfn, -1);
}

// ------------------------------------------------------------------ pages

/**
 * migrate_vma_pages: move the struct page state to the destinations; empty
 * entries get their new page inserted under one MIGRATE notification from
 * the first such address to the end.
 */
export function migrateVmaPages(k: Kernel, m: MigrateVma): void {
  const mm = k.vmaOwner(m.vma)!;
  const p = k.phys;
  let notified: ReturnType<Kernel["invalidateStart"]> = null;
  try {
    for (let i = 0; i < m.npages; i++) {
      if (!(m.dstFlags[i]! & MIGRATE_PFN_VALID)) {
        m.srcFlags[i]! &= ~MIGRATE_PFN_MIGRATE;
        continue;
      }
      const dst = m.dstPfn[i]!;
      if (!m.hasPage(i)) {
        if (!m.migrating(i)) continue;
        const addr = m.start + i * PAGE_SIZE;
        if (notified === null) notified = k.invalidateStart(mm, addr, m.end, MmuNotifyEvent.MIGRATE, m.pgmapOwner, true);
        insertPage(k, mm, m, i, addr, dst);
        continue;
      }
      if (!m.migrating(i)) continue;
      const src = m.srcPfn[i]!;
      const dt = p.memoryType(dst);
      if (dt !== MemoryType.NONE && dt !== MemoryType.DEVICE_PRIVATE && dt !== MemoryType.DEVICE_COHERENT) {
        m.srcFlags[i]! &= ~MIGRATE_PFN_MIGRATE;
        continue;
      }
      // folio_migrate_mapping: exactly our reference must remain.
      if (p.refcount(src) !== 1 || !(p.flags(src) & PG_anon) || k.inject.fail("migrate")) {
        m.srcFlags[i]! &= ~MIGRATE_PFN_MIGRATE;
        continue;
      }
      p.setMapping(dst, p.mapping(src), p.folioIndex(src));
      p.orFlags(dst, PG_anon | (p.flags(src) & PG_dirty) | (dt === MemoryType.NONE ? PG_lru : 0));
    }
  } finally {
    if (notified !== null) k.invalidateEnd(mm, notified);
  }
}

/** migrate_vma_insert_page: a new anonymous page where the entry was empty. */
function insertPage(k: Kernel, mm: Mm, m: MigrateVma, i: number, addr: number, dst: number): void {
  const abort = () => {
    m.srcFlags[i]! &= ~MIGRATE_PFN_MIGRATE;
  };
  const vma = m.vma;
  if (!vma.isAnonymous) return abort();
  const p = k.phys;
  const pool = k.pt;
  const t = ensureTable(pool, mm.pgd, addr, Level.PTE);
  if (t <= 0) return abort(); // a huge leaf in the way, or no memory for a table
  const j = pteIndex(addr);
  const lo = pool.lo(t, j);
  const hi = pool.hi(t, j);
  if (hi & E_PRESENT) {
    if (!p.isZeroPfn(lo)) return abort();
  } else if (lo !== 0 || hi !== 0) {
    return abort();
  }
  const dt = p.memoryType(dst);
  let bits: number;
  const writable = (vma.flags & VM_WRITE) !== 0;
  if (dt === MemoryType.DEVICE_PRIVATE) bits = swpBits(writable ? SwpKind.DEVICE_PRIVATE_WRITE : SwpKind.DEVICE_PRIVATE_READ);
  else if (dt === MemoryType.NONE || dt === MemoryType.DEVICE_COHERENT) bits = pteBits(vma, writable, writable);
  else return abort();
  const av = k.anonVmaPrepare(vma);
  // folio_add_new_anon_rmap(RMAP_EXCLUSIVE) + folio_get
  p.setMapping(dst, -av.id, addr / PAGE_SIZE);
  p.orFlags(dst, PG_anon | PG_anon_exclusive | (dt === MemoryType.NONE ? PG_lru : 0));
  pool.set(t, j, dst, bits);
  k.mapcountAdd(dst, 1);
  k.rssAdd(mm, dst, 1);
  p.folioRefAdd(dst, 1);
}

// --------------------------------------------------------------- finalize

/**
 * migrate_vma_finalize: migration entries point to the new page where the
 * migration succeeded, to the old one otherwise; references of the old
 * pages and of the drivers' allocations are dropped.
 */
export function migrateVmaFinalize(k: Kernel, m: MigrateVma): void {
  const p = k.phys;
  try {
    for (let i = 0; i < m.npages; i++) {
      const hasDst = (m.dstFlags[i]! & MIGRATE_PFN_VALID) !== 0;
      let dst = m.dstPfn[i]!;
      if (!m.hasPage(i)) {
        if (hasDst) p.folioRefAdd(dst, -1);
        continue;
      }
      const src = m.srcPfn[i]!;
      const moved = m.migrating(i) && hasDst;
      if (!moved) {
        if (hasDst) p.folioRefAdd(dst, -1);
        dst = src;
      }
      removeMigrationPtes(k, m, i, src, dst);
      if (moved) k.vmstat.pgmigrate_success++;
      p.folioRefAdd(src, -1);
      if (dst !== src) p.folioRefAdd(dst, -1);
    }
  } finally {
    // The arrays keep their outcome for the driver; the references are gone.
    m.dstFlags.fill(0);
    for (let i = 0; i < m.npages; i++) m.srcFlags[i]! &= ~MIGRATE_PFN_VALID;
    state(k).inflight.delete(m);
  }
}

/** Pages whose migration succeeded (MIGRATE still set after migrate_vma_pages). */
export function migratedCount(m: MigrateVma): number {
  let n = 0;
  for (let i = 0; i < m.npages; i++) if ((m.srcFlags[i]! & (MIGRATE_PFN_VALID | MIGRATE_PFN_MIGRATE)) === (MIGRATE_PFN_VALID | MIGRATE_PFN_MIGRATE)) n++;
  return n;
}

// ------------------------------------------------------- device to system

/**
 * The common body of a driver's migrate_to_ram and of migrate-to-system:
 * every selected device page of [start, end) in `vma` goes to a new RAM
 * page. `erase(addr)` runs before each copy (drivers drop their own mapping
 * there, as dmirror does). Returns the pages moved, or a negative errno from
 * migrate_vma_setup.
 */
export function migrateRangeToRam(
  k: Kernel,
  vma: Vma,
  start: number,
  end: number,
  owner: number,
  select: number,
  faultPage: number,
  erase: ((addr: number, srcPfn: number) => void) | null,
  allocFail: () => boolean = () => false,
): number {
  const m = new MigrateVma(vma, start, end, owner, select, faultPage);
  const r = migrateVmaSetup(k, m);
  if (r !== 0) return r;
  const p = k.phys;
  for (let i = 0; i < m.npages; i++) {
    if (!m.hasPage(i) || !m.migrating(i)) continue;
    const src = m.srcPfn[i]!;
    const t = p.memoryType(src);
    if (t !== MemoryType.DEVICE_PRIVATE && t !== MemoryType.DEVICE_COHERENT) continue;
    const dpage = allocFail() ? -1 : p.allocFolio(0, GFP_MOVABLE);
    if (dpage < 0) continue;
    erase?.(m.start + i * PAGE_SIZE, src);
    copyPageData(k, src, dpage);
    m.setDst(i, dpage, (m.srcFlags[i]! & MIGRATE_PFN_WRITE) !== 0);
  }
  migrateVmaPages(k, m);
  const moved = migratedCount(m);
  migrateVmaFinalize(k, m);
  return moved;
}

/**
 * migrate_to_ram for one faulting address (dmirror_devmem_fault shape):
 * returns vm_fault_t bits.
 */
export function migrateToRamFault(
  k: Kernel,
  vma: Vma,
  addr: number,
  pfn: number,
  owner: number,
  erase: ((addr: number, srcPfn: number) => void) | null,
  allocFail: () => boolean = () => false,
): number {
  const a = addr - (addr % PAGE_SIZE);
  const moved = migrateRangeToRam(k, vma, a, a + PAGE_SIZE, owner, MIGRATE_VMA_SELECT_DEVICE_PRIVATE, pfn, erase, allocFail);
  if (moved < 0) return VM_FAULT_SIGBUS;
  if (moved === 0) {
    // Not moved: the entry may have changed under us (then the fault is
    // simply retried), or no RAM page could be allocated.
    const s = pteSlot(k, k.vmaOwner(vma)!, a);
    const hi = s === null ? 0 : k.pt.hi(s.t, s.i);
    if (!(hi & E_PRESENT) && isDevicePrivateKind(swpKind(hi)) && k.pt.lo(s!.t, s!.i) === pfn) return VM_FAULT_OOM;
  }
  return 0;
}

/**
 * do_swap_page for device-private and device-exclusive entries
 * (Kernel.deviceEntryFault).
 */
function deviceEntryFault(k: Kernel, mm: Mm, vma: Vma, addr: number, _flags: number): number {
  const a = addr - (addr % PAGE_SIZE);
  const s = pteSlot(k, mm, a);
  if (s === null) return 0;
  const lo = k.pt.lo(s.t, s.i);
  const hi = k.pt.hi(s.t, s.i);
  if (hi & E_PRESENT) return 0;
  const kind = swpKind(hi);
  if (kind === SwpKind.DEVICE_EXCLUSIVE) return removeDeviceExclusiveEntry(k, mm, vma, a);
  if (!isDevicePrivateKind(kind)) return 0;
  const pm = k.phys.pagemapOf(lo);
  if (pm === null) return VM_FAULT_SIGBUS;
  const ops = state(k).ops.get(pm.id);
  if (ops !== undefined) return ops.migrateToRam(k, mm, vma, a, lo);
  // A pagemap without a driver: move the page back with the pagemap's owner.
  return migrateToRamFault(k, vma, a, lo, pm.owner, null);
}

/**
 * migrate_device_range + copy + migrate_device_pages + finalize: evict the
 * in-use device pages of `pfns` to RAM (driver unbind / RELEASE). Pages
 * that cannot move (still referenced) stay. Returns the pages evicted.
 */
export function evictDevicePages(k: Kernel, pfns: readonly number[]): number {
  state(k);
  const p = k.phys;
  let moved = 0;
  for (const pfn of pfns) {
    if (!(p.flags(pfn) & PG_allocated) || p.refcount(pfn) <= 0) continue;
    const mt = p.memoryType(pfn);
    if (mt !== MemoryType.DEVICE_PRIVATE && mt !== MemoryType.DEVICE_COHERENT) continue;
    // A one-page migrate_vma without a VMA (migrate_device_pfn_lock).
    const m = new MigrateVma(DUMMY_VMA, 0, PAGE_SIZE, 0, 0);
    state(k).inflight.add(m);
    m.npages = 1;
    p.folioRefAdd(pfn, 1);
    m.srcPfn[0] = pfn;
    m.srcFlags[0] = MIGRATE_PFN_VALID | MIGRATE_PFN_MIGRATE;
    tryToMigrate(k, m, 0, pfn);
    if (p.mapcount(pfn) > 0 || p.refcount(pfn) !== 1) {
      m.srcFlags[0]! &= ~MIGRATE_PFN_MIGRATE;
      restorePage(k, m, 0, pfn);
      state(k).inflight.delete(m);
      continue;
    }
    const dpage = p.allocFolio(0, GFP_MOVABLE);
    if (dpage >= 0) {
      copyPageData(k, pfn, dpage);
      m.setDst(0, dpage, false);
      p.setMapping(dpage, p.mapping(pfn), p.folioIndex(pfn));
      p.orFlags(dpage, PG_anon | PG_lru | (p.flags(pfn) & PG_dirty));
    } else {
      m.srcFlags[0]! &= ~MIGRATE_PFN_MIGRATE;
    }
    if (m.migrating(0)) moved++;
    migrateVmaFinalize(k, m);
  }
  return moved;
}

/** A placeholder VMA for migrations without one (never dereferenced for mapping). */
const DUMMY_VMA = { start: 0, end: 0, flags: 0 } as unknown as Vma;
keepShape(() => new MigrateVma(DUMMY_VMA, 0, 0, 0, 0));

/**
 * migrate_device_coherent_folio: move a device-coherent page to RAM (as
 * FOLL_LONGTERM must). Returns 0 or -EBUSY.
 */
export function migrateDeviceCoherentFolio(k: Kernel, pfn: number): number {
  if (k.phys.memoryType(pfn) !== MemoryType.DEVICE_COHERENT) return -Errno.EBUSY;
  return evictDevicePages(k, [pfn]) === 1 ? 0 : -Errno.EBUSY;
}

// -------------------------------------------------------- device exclusive

/**
 * make_device_exclusive (6.15+, one page): fault the page in writable
 * (FOLL_GET | FOLL_WRITE | FOLL_SPLIT_PMD), notify EXCLUSIVE with `owner`,
 * replace the PTE by a device-exclusive entry. Returns the page's PFN; the
 * page keeps its mapping's reference and mapcount. Throws EFAULT / ENOMEM
 * (GUP) or EOPNOTSUPP (not anonymous, or hugetlb).
 */
export function makeDeviceExclusive(k: Kernel, mm: Mm, addr: number, owner: number): number {
  state(k);
  const a = addr - (addr % PAGE_SIZE);
  const p = k.phys;
  const pool = k.pt;
  for (let tries = 0; tries < 8; tries++) {
    const vma = mm.findVma(a);
    if (vma === undefined) fail(Errno.EFAULT, `no VMA at 0x${a.toString(16)}`);
    if (vma.flags & (VM_IO | VM_PFNMAP) || !(vma.flags & VM_WRITE)) fail(Errno.EFAULT, "make_device_exclusive: the VMA does not allow a write (check_vma_flags)");
    if (vma.isHugetlb) fail(Errno.EOPNOTSUPP, "make_device_exclusive: hugetlb folio");
    const pmdT = findTable(pool, mm.pgd, a, Level.PMD);
    if (pmdT !== 0) {
      const mhi = pool.hi(pmdT, pmdIndex(a));
      if (isPresentLeaf(mhi) && mhi & E_LEAF && !(mhi & E_SPECIAL && !p.isHugeZeroPfn(pool.lo(pmdT, pmdIndex(a))))) {
        // FOLL_SPLIT_PMD
        if (!splitHugePmd(k, mm, vma, a)) fail(Errno.ENOMEM, "no memory to split a huge PMD");
      }
    }
    const s = pteSlot(k, mm, a);
    const hi = s === null ? 0 : pool.hi(s.t, s.i);
    const lo = s === null ? 0 : pool.lo(s.t, s.i);
    const ok = hi & E_PRESENT && hi & E_WRITE && !(hi & E_PROTNONE);
    if (!ok) {
      if (hi & E_PRESENT && hi & E_SPECIAL && !p.isZeroPfn(lo)) fail(Errno.EFAULT, "make_device_exclusive: no struct page (special PFN)");
      const r = handleMmFault(k, mm, vma, a, FAULT_FLAG_WRITE | FAULT_FLAG_REMOTE);
      if (r & VM_FAULT_ERROR) fail(r & VM_FAULT_OOM ? Errno.ENOMEM : Errno.EFAULT, `make_device_exclusive: fault failed (vm_fault 0x${r.toString(16)})`);
      continue;
    }
    if (hi & E_SPECIAL) fail(Errno.EFAULT, "make_device_exclusive: no struct page (special PFN)");
    const head = p.folioHead(lo);
    if (!(p.flags(head) & PG_anon) || p.flags(head) & PG_hugetlb) fail(Errno.EOPNOTSUPP, "make_device_exclusive: not an anonymous folio");
    p.folioRefAdd(head, 1); // FOLL_GET
    try {
      k.withInvalidation(mm, a, a + PAGE_SIZE, MmuNotifyEvent.EXCLUSIVE, () => {
        if (hi & E_DIRTY) p.orFlags(head, PG_dirty);
        pool.set(s!.t, s!.i, lo, swpBits(SwpKind.DEVICE_EXCLUSIVE) | (hi & E_SOFT_DIRTY));
      }, owner);
    } finally {
      p.folioRefAdd(head, -1); // the caller's folio_put
    }
    return lo;
  }
  fail(Errno.EFAULT, `make_device_exclusive: 0x${a.toString(16)} did not become writable`);
}

/**
 * remove_device_exclusive_entry: a CPU access revokes the device's atomic
 * access (CLEAR, owner NULL) and the original PTE comes back.
 */
export function removeDeviceExclusiveEntry(k: Kernel, mm: Mm, vma: Vma, addr: number): number {
  const a = addr - (addr % PAGE_SIZE);
  k.withInvalidation(mm, a, a + PAGE_SIZE, MmuNotifyEvent.CLEAR, () => {
    const s = pteSlot(k, mm, a);
    if (s !== null) restoreExclusivePte(k, vma, s.t, s.i);
  });
  return 0;
}

/**
 * restore_exclusive_pte at (t, i) if it holds a device-exclusive entry:
 * writable again when the VMA allows writes and the page is AnonExclusive.
 */
export function restoreExclusivePte(k: Kernel, vma: Vma, t: number, i: number): void {
  const pool = k.pt;
  const p = k.phys;
  const hi = pool.hi(t, i);
  if (hi & E_PRESENT || swpKind(hi) !== SwpKind.DEVICE_EXCLUSIVE) return;
  const pfn = pool.lo(t, i);
  const head = p.folioHead(pfn);
  const writable = (vma.flags & VM_WRITE) !== 0 && (p.flags(pfn) & PG_anon_exclusive) !== 0;
  const dirty = writable && (p.flags(head) & PG_dirty) !== 0;
  pool.set(t, i, pfn, (pteBits(vma, writable, dirty) & ~E_YOUNG) | (hi & E_SOFT_DIRTY));
}

// ---------------------------------------------------------------- OOM reaper

/** VMAs __oom_reap_task_mm unmaps: not hugetlb or PFNMAP; anonymous or private. */
export function oomReapCandidates(mm: Mm): Vma[] {
  return mm.vmas.filter((v) => !v.isHugetlb && !(v.flags & VM_PFNMAP) && (v.isAnonymous || !(v.flags & VM_SHARED)));
}

export interface OomReapResult {
  start: number;
  end: number;
  reaped: boolean;
  /** 0, or EAGAIN when a notifier refused the non-blockable range. */
  errno: number;
}

/**
 * __oom_reap_task_mm with synchronous subscribers: per VMA a non-blockable
 * UNMAP; a refusal skips that VMA (EAGAIN), the others are zapped.
 */
export function oomReapMm(k: Kernel, mm: Mm): OomReapResult[] {
  const out: OomReapResult[] = [];
  for (const v of oomReapCandidates(mm)) {
    const r = k.invalidateStart(mm, v.start, v.end, MmuNotifyEvent.UNMAP, 0, false);
    if (r === null) {
      out.push({ start: v.start, end: v.end, reaped: false, errno: Errno.EAGAIN });
      continue;
    }
    try {
      zapRange(k, mm, v, v.start, v.end);
    } finally {
      k.invalidateEnd(mm, r);
    }
    out.push({ start: v.start, end: v.end, reaped: true, errno: 0 });
  }
  return out;
}
