/**
 * Inspection: /proc/PID/maps and smaps, a pagemap-style walk reported as
 * runs, folio info, meminfo and vmstat. Read-only.
 */
import { Level, MAX_PAGE_ORDER, MemoryType, MigrateType, PAGE_SIZE, PMD_SIZE, PUD_SIZE, VM_LOCKED, Zone } from "./constants.js";
import { invalid, notFound } from "./errors.js";
import { anonThpAllowed } from "./fault.js";
import type { Kernel } from "./kernel.js";
import type { Mm } from "./mm.js";
import {
  E_DIRTY,
  E_LEAF,
  E_PRESENT,
  E_PROTNONE,
  E_SPECIAL,
  E_TABLE,
  E_WRITE,
  E_YOUNG,
  SwpKind,
  swpKind,
} from "./pagetable.js";
import {
  PG_allocated,
  PG_anon,
  PG_anon_exclusive,
  PG_dirty,
  PG_hugetlb,
  PG_lru,
  PG_pagecache,
  PG_referenced,
  PG_shmem,
} from "./physmem.js";
import { FileKind, permString, vmFlagsMnemonics, type Vma } from "./vma.js";

export interface VmaInfo {
  start: number;
  end: number;
  perms: string;
  vmFlags: number;
  pgoff: number;
  fileId: number;
  name: string;
  anonVma: boolean;
}

export function vmaName(v: Vma): string {
  if (v.device !== null) return v.flags & 0x400 ? "[pfnmap]" : "[mixedmap]";
  if (v.file === null) return "[anon]";
  if (v.file.anonymous || v.anonShared) return v.file.kind === FileKind.HUGETLB ? "anon_hugepage" : "/dev/zero (deleted)";
  const prefix = v.file.kind === FileKind.SHMEM ? "memfd:" : v.file.kind === FileKind.HUGETLB ? "hugetlbfs:" : v.file.kind === FileKind.FSDAX ? "dax:" : "file:";
  return prefix + v.file.name;
}

export function vmaInfo(v: Vma): VmaInfo {
  return {
    start: v.start,
    end: v.end,
    perms: permString(v.flags),
    vmFlags: v.flags >>> 0,
    pgoff: v.pgoff,
    fileId: v.file !== null && !v.anonShared && !v.file.anonymous ? v.file.id : 0,
    name: vmaName(v),
    anonVma: v.anonVma !== null,
  };
}

export function getMaps(_k: Kernel, mm: Mm): VmaInfo[] {
  return mm.vmas.map(vmaInfo);
}

export interface SmapsInfo {
  vma: VmaInfo;
  sizeKib: number;
  rssKib: number;
  pssKib: number;
  sharedCleanKib: number;
  sharedDirtyKib: number;
  privateCleanKib: number;
  privateDirtyKib: number;
  referencedKib: number;
  anonymousKib: number;
  anonHugePagesKib: number;
  shmemPmdMappedKib: number;
  filePmdMappedKib: number;
  sharedHugetlbKib: number;
  privateHugetlbKib: number;
  swapKib: number;
  lockedKib: number;
  thpEligible: boolean;
  vmFlagsMnemonics: string;
}

/** Visit every leaf entry in [start, end): (level, addr, lo, hi, pages). */
export function forEachLeaf(
  k: Kernel,
  mm: Mm,
  start: number,
  end: number,
  fn: (level: Level, addr: number, lo: number, hi: number) => void,
): void {
  const pool = k.pt;
  let addr = start;
  while (addr < end) {
    const gi = Math.floor(addr / 2 ** 39) & 511;
    const gEnd = (Math.floor(addr / 2 ** 39) + 1) * 2 ** 39;
    if (!(pool.hi(mm.pgd, gi) & E_TABLE)) {
      addr = gEnd;
      continue;
    }
    const pudT = pool.lo(mm.pgd, gi);
    const uEnd = (Math.floor(addr / PUD_SIZE) + 1) * PUD_SIZE;
    const ui = Math.floor(addr / PUD_SIZE) & 511;
    const uhi = pool.hi(pudT, ui);
    const ulo = pool.lo(pudT, ui);
    if (!(uhi & E_TABLE)) {
      if (uhi !== 0 || ulo !== 0) fn(Level.PUD, uEnd - PUD_SIZE, ulo, uhi);
      addr = uEnd;
      continue;
    }
    const pmdT = ulo;
    const mEnd = (Math.floor(addr / PMD_SIZE) + 1) * PMD_SIZE;
    const mi = ((addr % PUD_SIZE) >>> 21) & 511;
    const mhi = pool.hi(pmdT, mi);
    const mlo = pool.lo(pmdT, mi);
    if (!(mhi & E_TABLE)) {
      if (mhi !== 0 || mlo !== 0) fn(Level.PMD, mEnd - PMD_SIZE, mlo, mhi);
      addr = mEnd;
      continue;
    }
    const pteT = mlo;
    const c = pool.chunk(pteT);
    const b = pool.base(pteT);
    const stop = Math.min(end, mEnd);
    for (let a = addr; a < stop; a += PAGE_SIZE) {
      const j = ((a % PUD_SIZE) >>> 12) & 511;
      const lo = c[b + 2 * j]!;
      const hi = c[b + 2 * j + 1]!;
      if (lo !== 0 || hi !== 0) fn(Level.PTE, a, lo, hi);
    }
    addr = mEnd;
  }
}

export function getSmaps(k: Kernel, mm: Mm): SmapsInfo[] {
  const p = k.phys;
  return mm.vmas.map((v) => {
    const s: SmapsInfo = {
      vma: vmaInfo(v),
      sizeKib: (v.end - v.start) / 1024,
      rssKib: 0,
      pssKib: 0,
      sharedCleanKib: 0,
      sharedDirtyKib: 0,
      privateCleanKib: 0,
      privateDirtyKib: 0,
      referencedKib: 0,
      anonymousKib: 0,
      anonHugePagesKib: 0,
      shmemPmdMappedKib: 0,
      filePmdMappedKib: 0,
      sharedHugetlbKib: 0,
      privateHugetlbKib: 0,
      swapKib: 0,
      lockedKib: 0,
      thpEligible: v.isAnonymous && anonThpAllowed(k, v, v.start - (v.start % PMD_SIZE) + PMD_SIZE),
      vmFlagsMnemonics: vmFlagsMnemonics(v.flags),
    };
    let pss = 0;
    forEachLeaf(k, mm, v.start, v.end, (level, _addr, lo, hi) => {
      if (!(hi & E_PRESENT)) {
        if (swpKind(hi) === SwpKind.SWAP) s.swapKib += 4;
        return;
      }
      if (hi & E_SPECIAL || !p.pfnValid(lo)) return; // vm_normal_page() == NULL
      const head = p.folioHead(lo);
      const kib = level === Level.PUD ? 1048576 : level === Level.PMD ? 2048 : 4;
      const f = p.flags(head);
      if (f & PG_hugetlb) {
        if (p.mapcount(head) > 1) s.sharedHugetlbKib += kib;
        else s.privateHugetlbKib += kib;
        return;
      }
      s.rssKib += kib;
      const mc = Math.max(1, p.mapcount(head));
      pss += kib / mc;
      const dirty = (hi & E_DIRTY) !== 0 || (f & PG_dirty) !== 0;
      if (mc > 1) {
        if (dirty) s.sharedDirtyKib += kib;
        else s.sharedCleanKib += kib;
      } else if (dirty) s.privateDirtyKib += kib;
      else s.privateCleanKib += kib;
      if (hi & E_YOUNG || f & PG_referenced) s.referencedKib += kib;
      if (f & PG_anon) s.anonymousKib += kib;
      if (level === Level.PMD) {
        if (f & PG_anon) s.anonHugePagesKib += kib;
        else if (f & PG_shmem) s.shmemPmdMappedKib += kib;
        else s.filePmdMappedKib += kib;
      }
      if (v.flags & VM_LOCKED) s.lockedKib += kib;
    });
    s.pssKib = Math.floor(pss);
    return s;
  });
}

export enum EntryKind {
  PRESENT = 1,
  ZERO_PAGE = 2,
  HUGE_ZERO = 3,
  SPECIAL = 4,
  PROTNONE = 5,
  SWAP = 6,
  MIGRATION_READ = 7,
  MIGRATION_WRITE = 8,
  DEVICE_PRIVATE_READ = 9,
  DEVICE_PRIVATE_WRITE = 10,
  DEVICE_EXCLUSIVE = 11,
  MARKER = 12,
}

export interface PageTableRun {
  level: Level;
  addr: number;
  nr: number;
  pfn: number;
  kind: EntryKind;
  write: boolean;
  young: boolean;
  dirty: boolean;
  special: boolean;
  anonExclusive: boolean;
  marker: number;
}

export interface WalkResult {
  runs: PageTableRun[];
  truncated: boolean;
  nextAddr: number;
  pudTables: number;
  pmdTables: number;
  pteTables: number;
}

function entryKind(k: Kernel, lo: number, hi: number): EntryKind {
  if (!(hi & E_PRESENT)) {
    switch (swpKind(hi)) {
      case SwpKind.MIGRATION_READ:
      case SwpKind.MIGRATION_READ_EXCLUSIVE:
        return EntryKind.MIGRATION_READ;
      case SwpKind.MIGRATION_WRITE:
        return EntryKind.MIGRATION_WRITE;
      case SwpKind.DEVICE_PRIVATE_READ:
        return EntryKind.DEVICE_PRIVATE_READ;
      case SwpKind.DEVICE_PRIVATE_WRITE:
        return EntryKind.DEVICE_PRIVATE_WRITE;
      case SwpKind.DEVICE_EXCLUSIVE:
        return EntryKind.DEVICE_EXCLUSIVE;
      case SwpKind.MARKER:
        return EntryKind.MARKER;
      default:
        return EntryKind.SWAP;
    }
  }
  if (k.phys.isZeroPfn(lo)) return EntryKind.ZERO_PAGE;
  if (hi & E_LEAF && k.phys.isHugeZeroPfn(lo)) return EntryKind.HUGE_ZERO;
  if (hi & E_PROTNONE) return EntryKind.PROTNONE;
  if (hi & E_SPECIAL) return EntryKind.SPECIAL;
  return EntryKind.PRESENT;
}

/** A pagemap-style walk of [start, end) reported as runs of like entries. */
export function walkPageTable(k: Kernel, mm: Mm, start: number, end: number, maxRuns: number): WalkResult {
  if (!Number.isSafeInteger(start) || !Number.isSafeInteger(end) || start < 0 || end < start) invalid("bad range");
  const limit = maxRuns > 0 ? Math.min(maxRuns, 1_000_000) : 100_000;
  const runs: PageTableRun[] = [];
  let truncated = false;
  let nextAddr = 0;
  const p = k.phys;
  const s0 = start - (start % PAGE_SIZE);
  try {
    forEachLeaf(k, mm, s0, end, (level, addr, lo, hi) => {
      const kind = entryKind(k, lo, hi);
      const size = level === Level.PUD ? PUD_SIZE : level === Level.PMD ? PMD_SIZE : PAGE_SIZE;
      const excl = hi & E_PRESENT && kind === EntryKind.PRESENT && p.pfnValid(lo) ? (p.flags(lo) & PG_anon_exclusive) !== 0 : false;
      const run: PageTableRun = {
        level,
        addr,
        nr: 1,
        pfn: lo,
        kind,
        write: (hi & E_WRITE) !== 0 && (hi & E_PRESENT) !== 0,
        young: (hi & E_YOUNG) !== 0,
        dirty: (hi & E_DIRTY) !== 0,
        special: (hi & E_SPECIAL) !== 0,
        anonExclusive: excl,
        marker: kind === EntryKind.MARKER ? lo : 0,
      };
      const last = runs[runs.length - 1];
      const step = kind === EntryKind.ZERO_PAGE ? 0 : size / PAGE_SIZE;
      if (
        last !== undefined &&
        last.level === level &&
        last.kind === kind &&
        last.write === run.write &&
        last.young === run.young &&
        last.dirty === run.dirty &&
        last.special === run.special &&
        last.anonExclusive === run.anonExclusive &&
        last.marker === run.marker &&
        last.addr + last.nr * size === addr &&
        last.pfn + last.nr * step === lo
      ) {
        last.nr++;
        return;
      }
      if (runs.length >= limit) {
        truncated = true;
        nextAddr = addr;
        throw STOP;
      }
      runs.push(run);
    });
  } catch (e) {
    if (e !== STOP) throw e;
  }
  const counts = countTables(k, mm);
  return { runs, truncated, nextAddr, ...counts };
}
const STOP = new Error("stop");

export function countTables(k: Kernel, mm: Mm): { pudTables: number; pmdTables: number; pteTables: number } {
  const pool = k.pt;
  let pud = 0;
  let pmd = 0;
  let pte = 0;
  for (let g = 0; g < 512; g++) {
    if (!(pool.hi(mm.pgd, g) & E_TABLE)) continue;
    pud++;
    const u = pool.lo(mm.pgd, g);
    for (let i = 0; i < 512; i++) {
      if (!(pool.hi(u, i) & E_TABLE)) continue;
      pmd++;
      const m = pool.lo(u, i);
      for (let j = 0; j < 512; j++) if (pool.hi(m, j) & E_TABLE) pte++;
    }
  }
  return { pudTables: pud, pmdTables: pmd, pteTables: pte };
}

export interface FolioInfo {
  pfn: number;
  hasStructPage: boolean;
  headPfn: number;
  order: number;
  refcount: number;
  mapcount: number;
  pageMapcount: number;
  largeMapcount: number;
  entireMapcount: number;
  pincount: number;
  maybeDmaPinned: boolean;
  anon: boolean;
  anonExclusive: boolean;
  dirty: boolean;
  referenced: boolean;
  lru: boolean;
  large: boolean;
  zeroPage: boolean;
  hugeZero: boolean;
  device: MemoryType;
  zone: Zone;
  migratetype: MigrateType;
  free: boolean;
  hugetlb: boolean;
  fileId: number;
  fileIndex: number;
  pgmapId: number;
  pfnRangeId: number;
  longtermPinnable: boolean;
}

export function getFolio(k: Kernel, pfn: number): FolioInfo {
  if (!Number.isSafeInteger(pfn) || pfn < 0 || pfn >= 2 ** 32) invalid(`pfn ${pfn} out of range`);
  const p = k.phys;
  if (!p.pfnValid(pfn)) {
    for (const r of p.pfnRanges.values()) {
      if (pfn >= r.startPfn && pfn < r.startPfn + r.nrPages) {
        return { ...emptyFolio(pfn), pfnRangeId: r.id, zone: Zone.DEVICE };
      }
    }
    notFound(`pfn ${pfn}`);
  }
  const s = p.section(pfn);
  if (s === undefined) return { ...emptyFolio(pfn), hasStructPage: true, free: true, zone: p.zoneOf(pfn), migratetype: p.migratetype(pfn), headPfn: pfn };
  const head = p.folioHead(pfn);
  const f = p.flags(head);
  const order = p.folioOrder(head);
  const large = order > 0;
  const ref = p.refcount(head);
  const pin = p.pincount(head);
  const mc = p.mapcount(head);
  const pm = p.pagemapOf(pfn);
  const mapping = p.mapping(head);
  return {
    pfn,
    hasStructPage: true,
    headPfn: head,
    order,
    refcount: ref,
    mapcount: mc,
    pageMapcount: large ? p.entireMapcount(head) : mc,
    largeMapcount: large ? mc : 0,
    entireMapcount: large ? p.entireMapcount(head) : 0,
    pincount: large ? pin : 0,
    maybeDmaPinned: large ? pin > 0 : ref >= 1024,
    anon: (f & PG_anon) !== 0,
    anonExclusive: (p.flags(pfn) & PG_anon_exclusive) !== 0,
    dirty: (f & PG_dirty) !== 0,
    referenced: (f & PG_referenced) !== 0,
    lru: (f & PG_lru) !== 0,
    large,
    zeroPage: p.isZeroPfn(pfn),
    hugeZero: p.isHugeZeroPfn(pfn),
    device: p.memoryType(pfn),
    zone: p.zoneOf(pfn),
    migratetype: p.migratetype(pfn),
    free: !(p.flags(pfn) & PG_allocated) || ref === 0,
    hugetlb: (f & PG_hugetlb) !== 0,
    fileId: f & PG_pagecache && mapping > 0 ? mapping : 0,
    fileIndex: f & PG_pagecache && mapping > 0 ? p.folioIndex(head) + (pfn - head) : 0,
    pgmapId: pm?.id ?? 0,
    pfnRangeId: 0,
    longtermPinnable: p.folioIsLongtermPinnable(head),
  };
}

function emptyFolio(pfn: number): FolioInfo {
  return {
    pfn, hasStructPage: false, headPfn: pfn, order: 0, refcount: 0, mapcount: 0, pageMapcount: 0, largeMapcount: 0,
    entireMapcount: 0, pincount: 0, maybeDmaPinned: false, anon: false, anonExclusive: false, dirty: false,
    referenced: false, lru: false, large: false, zeroPage: false, hugeZero: false, device: MemoryType.NONE,
    zone: Zone.NORMAL, migratetype: MigrateType.MOVABLE, free: false, hugetlb: false, fileId: 0, fileIndex: 0,
    pgmapId: 0, pfnRangeId: 0, longtermPinnable: false,
  };
}

export interface ZoneInfo {
  zone: Zone;
  startPfn: number;
  nrPages: number;
  freePages: number;
  cmaPages: number;
  freeBlocksByOrder: number[];
}

export interface MeminfoResult {
  zones: ZoneInfo[];
  totalPages: number;
  freePages: number;
  giganticFoliosInUse: number;
}

export function getMeminfo(k: Kernel): MeminfoResult {
  const p = k.phys;
  return {
    zones: p.zones.map((z) => ({
      zone: z.id,
      startPfn: z.startPfn,
      nrPages: z.endPfn - z.startPfn,
      freePages: z.freePages,
      cmaPages: z.cmaPages,
      freeBlocksByOrder: p.zoneFreeByOrder(z).slice(0, MAX_PAGE_ORDER + 1),
    })),
    totalPages: p.ramPages,
    freePages: p.totalFreePages(),
    giganticFoliosInUse: p.stats.giganticInUse,
  };
}

/** Counters the kernel's /proc/vmstat does not have: reported as mmsim_*. */
const SIMULATOR_ONLY = new Set([
  "cow_faults",
  "zero_page_faults",
  "huge_zero_faults",
  "wp_reuse",
  "mmu_invalidations",
  "mmu_interval_callbacks",
  "pfn_inserts_pud",
  "pfn_inserts_pmd",
  "pfn_inserts_pte",
]);

export function getVmstat(k: Kernel): Record<string, number> {
  const out: Record<string, number> = {};
  for (const [name, v] of Object.entries(k.vmstat)) out[SIMULATOR_ONLY.has(name) ? `mmsim_${name}` : name] = v;
  out.nr_free_pages = k.phys.totalFreePages();
  out.mmsim_folio_ref_updates = k.phys.stats.gupRefUpdates;
  out.mmsim_folios_allocated = k.phys.stats.foliosAllocated;
  out.mmsim_folios_freed = k.phys.stats.foliosFreed;
  out.mmsim_page_tables = k.pt.live;
  out.mmsim_pt_entry_writes = k.pt.writes;
  out.mmsim_data_pages = k.phys.data.inUse;
  return out;
}
