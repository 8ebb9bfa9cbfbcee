/**
 * Address-space operations (spec section 8): mmap, munmap, mprotect,
 * madvise, fork, exit; and what they share: VMA split/merge, zap of a range
 * (per folio, through the mmu_gather), freeing of page tables, populate.
 */
import {
  alignDown,
  FAULT_FLAG_WRITE,
  HPAGE_PMD_NR,
  Level,
  MADV_DOFORK,
  MADV_DONTFORK,
  MADV_DONTNEED,
  MADV_DONTNEED_LOCKED,
  MADV_FREE,
  MADV_HUGEPAGE,
  MADV_KEEPONFORK,
  MADV_NOHUGEPAGE,
  MADV_POPULATE_READ,
  MADV_POPULATE_WRITE,
  MADV_WIPEONFORK,
  MAP_ANONYMOUS,
  MAP_FIXED,
  MAP_FIXED_NOREPLACE,
  MAP_HUGE_MASK,
  MAP_HUGE_SHIFT,
  MAP_HUGETLB,
  MAP_NORESERVE,
  MAP_POPULATE,
  MAP_PRIVATE,
  MAP_SHARED,
  MAP_SHARED_VALIDATE,
  MAP_TYPE,
  MMAP_MIN_ADDR,
  MmuNotifyEvent,
  offsetIn,
  PAGE_SIZE,
  pageAlignUp,
  PMD_SIZE,
  PROT_EXEC,
  PROT_GROWSDOWN,
  PROT_GROWSUP,
  PROT_READ,
  PROT_WRITE,
  PUD_SIZE,
  TASK_SIZE_MAX,
  VM_ACCESS_FLAGS,
  VM_ACCOUNT,
  VM_COPY_ON_FORK,
  VM_DONTCOPY,
  VM_DONTDUMP,
  VM_DONTEXPAND,
  VM_EXEC,
  VM_HUGEPAGE,
  VM_HUGETLB,
  VM_IO,
  VM_LOCKED,
  VM_MAYEXEC,
  VM_MAYREAD,
  VM_MAYSHARE,
  VM_MAYWRITE,
  VM_MIXEDMAP,
  VM_NOHUGEPAGE,
  VM_NORESERVE,
  VM_PFNMAP,
  VM_READ,
  VM_SHARED,
  VM_WIPEONFORK,
  VM_WRITE,
} from "./constants.js";
import { Errno, fail, invalid, MmError } from "./errors.js";
import { copyPageData, handleMmFault, prepAnonFolio, splitHugePmd, splitHugePud, pteBits } from "./fault.js";
import type { Kernel } from "./kernel.js";
import { Mm } from "./mm.js";
import { RANGE_END_ALL } from "./mmu-notifier.js";
import {
  E_DIRTY,
  E_LEAF,
  E_PRESENT,
  E_PROTNONE,
  E_SPECIAL,
  E_SWP_EXCLUSIVE,
  E_TABLE,
  E_WRITE,
  E_YOUNG,
  SwpKind,
  findTable,
  pmdIndex,
  pudIndex,
  pgdIndex,
  swpBits,
  swpKind,
  ensureTable,
  isPresentLeaf,
  WalkCursor,
  walk,
} from "./pagetable.js";
import { GFP_MOVABLE, PG_anon, PG_anon_exclusive, PG_hugetlb, PG_lazyfree, PG_dirty } from "./physmem.js";
import { restoreExclusivePte } from "./migrate-device.js";
import { FileKind, FileObject, Vma, canMerge, hugetlbOrderForSize, isCowMapping, isSpecial } from "./vma.js";

// ------------------------------------------------------------------ files

export interface CreateFileRequest {
  name: string;
  sizeBytes: number;
  kind: FileKind;
  hugePageSize: number;
  pgmapId: number;
}

/** memfd_create / open of a tmpfs, hugetlbfs, dirty-tracked or DAX file. */
export function createFile(k: Kernel, req: CreateFileRequest, session: number): FileObject {
  if (!Number.isSafeInteger(req.sizeBytes) || req.sizeBytes < 0 || req.sizeBytes > 2 ** 46)
    invalid(`file size ${req.sizeBytes} out of range`);
  let order = 0;
  if (req.kind === FileKind.HUGETLB) {
    order = hugetlbOrderForSize(req.hugePageSize === 0 ? PMD_SIZE : req.hugePageSize);
    if (order < 0) invalid(`huge page size ${req.hugePageSize} is not 2 MiB or 1 GiB`);
    if (req.sizeBytes % (PAGE_SIZE * 2 ** order) !== 0) invalid("hugetlbfs file size must be a multiple of the huge page size");
  } else if (req.kind === FileKind.FSDAX) {
    const pm = k.phys.pagemaps.get(req.pgmapId);
    if (pm === undefined) invalid(`fsdax file needs a pagemap (pgmap ${req.pgmapId} unknown)`);
    if (pm.type !== 3) invalid(`pagemap ${req.pgmapId} is not MEMORY_DEVICE_FS_DAX`);
  } else if (req.kind !== FileKind.SHMEM && req.kind !== FileKind.DIRTY_TRACKED) {
    invalid(`unknown file kind ${req.kind}`);
  }
  const f = new FileObject(k.newFileId(), req.name, req.kind, pageAlignUp(req.sizeBytes), order, session, req.pgmapId);
  k.addFile(f);
  return f;
}

/** ftruncate: shrinking drops the page cache beyond the new size. */
export function resizeFile(k: Kernel, f: FileObject, sizeBytes: number): void {
  if (!Number.isSafeInteger(sizeBytes) || sizeBytes < 0 || sizeBytes > 2 ** 46) invalid(`file size ${sizeBytes} out of range`);
  const hsz = PAGE_SIZE * 2 ** f.folioOrder;
  if (sizeBytes % hsz !== 0 && f.kind === FileKind.HUGETLB) invalid("hugetlbfs size must be a multiple of the huge page size");
  const newSize = pageAlignUp(sizeBytes);
  if (newSize < f.size) {
    // unmap_mapping_range then truncate the page cache.
    const from = newSize / PAGE_SIZE;
    for (const v of [...f.vmas]) {
      const mm = k.vmaOwner(v);
      if (mm === undefined) continue;
      const s = Math.max(v.start, v.start + (from - v.pgoff) * PAGE_SIZE);
      if (s >= v.end) continue;
      k.withInvalidation(mm, s, v.end, MmuNotifyEvent.CLEAR, () => zapRange(k, mm, v, s, v.end));
    }
    truncatePageCache(k, f, from);
  }
  f.size = newSize;
}

function truncatePageCache(k: Kernel, f: FileObject, fromIndex: number): void {
  const p = k.phys;
  const list = [...f.cache.folios(fromIndex, Number.MAX_SAFE_INTEGER, (pfn) => p.folioHead(pfn))];
  for (const [idx, head] of list) {
    const n = p.folioNrPages(head);
    f.cache.clearRange(idx, n);
    k.pageCacheAccount(head, n, -1);
    p.setMapping(head, 0, 0);
    p.clearFlags(head, 1 << 15);
    p.folioRefAdd(head, -(f.kind === FileKind.HUGETLB ? 1 : n));
  }
}

/** close(): the file goes away with its last mapping. */
export function closeFile(k: Kernel, f: FileObject): void {
  if (f.refs <= 0) fail(Errno.EINVAL, `file ${f.id} already closed`, "precondition");
  fileRelease(k, f);
}

function fileRelease(k: Kernel, f: FileObject): void {
  f.refs--;
  if (f.refs > 0) return;
  truncatePageCache(k, f, 0);
  k.files.delete(f.id);
}

// ------------------------------------------------------------- VMA helpers

function vmaLink(k: Kernel, mm: Mm, v: Vma): void {
  mm.insertVma(v);
  if (v.file !== null) {
    v.file.vmas.add(v);
    v.file.refs++;
  }
  if (v.anonVma !== null) v.anonVma.vmas.add(v);
}

function vmaUnlink(k: Kernel, mm: Mm, v: Vma): void {
  mm.removeVma(v);
  if (v.file !== null) {
    v.file.vmas.delete(v);
    fileRelease(k, v.file);
  }
  if (v.anonVma !== null) {
    v.anonVma.vmas.delete(v);
    if (v.anonVma.vmas.size === 0) k.anonVmas.delete(v.anonVma.id);
  }
}

/**
 * vma_adjust_trans_huge: before a VMA boundary moves to `addr`, split a
 * huge mapping that straddles it. A 2 MiB block inside the VMA with a PMD
 * table present gets a CLEAR even when no THP is mapped there.
 */
function vmaAdjustTransHuge(k: Kernel, mm: Mm, vma: Vma, addr: number): void {
  if (offsetIn(addr, PUD_SIZE) !== 0) {
    const h = alignDown(addr, PUD_SIZE);
    if (h >= vma.start && h + PUD_SIZE <= vma.end) {
      const t = findTable(k.pt, mm.pgd, h, Level.PUD);
      if (t !== 0 && isPresentLeaf(k.pt.hi(t, pudIndex(h))) && k.pt.hi(t, pudIndex(h)) & E_LEAF) splitHugePud(k, mm, vma, h);
    }
  }
  if (offsetIn(addr, PMD_SIZE) !== 0) {
    const h = alignDown(addr, PMD_SIZE);
    if (h >= vma.start && h + PMD_SIZE <= vma.end && findTable(k.pt, mm.pgd, h, Level.PMD) !== 0) {
      // split_huge_pmd_address notifies even when no huge PMD is there.
      if (!splitHugePmd(k, mm, vma, h, true)) fail(Errno.ENOMEM, "no memory to split a huge PMD");
    }
  }
}

/** __split_vma: `vma` keeps [start, addr); returns the new [addr, end). */
function splitVma(k: Kernel, mm: Mm, vma: Vma, addr: number): Vma {
  if (vma.isHugetlb && addr % vma.file!.hugePageSize !== 0) invalid("hugetlb VMA split at an unaligned address");
  vmaAdjustTransHuge(k, mm, vma, addr);
  const upper = vma.clone();
  upper.start = addr;
  upper.pgoff = vma.pgoff + (addr - vma.start) / PAGE_SIZE;
  vma.end = addr;
  vmaLink(k, mm, upper);
  return upper;
}

/** Split so that a VMA boundary lies at `addr` (if a VMA straddles it). */
function splitAt(k: Kernel, mm: Mm, addr: number): void {
  const v = mm.findVma(addr);
  if (v !== undefined && v.start < addr) splitVma(k, mm, v, addr);
}

/** vma_merge around the VMAs in [start, end) after a flags change. */
function mergeRange(k: Kernel, mm: Mm, start: number, end: number): void {
  let i = Math.max(0, mm.vmaIndexAfter(start) - 1);
  while (i + 1 < mm.vmas.length) {
    const a = mm.vmas[i]!;
    const b = mm.vmas[i + 1]!;
    if (a.start > end) break;
    if (canMerge(a, b)) {
      const av = a.anonVma ?? b.anonVma;
      vmaUnlink(k, mm, b);
      a.end = b.end;
      if (a.anonVma === null && av !== null) {
        a.anonVma = av;
        av.vmas.add(a);
      }
      continue;
    }
    i++;
  }
}

function checkMapCount(k: Kernel, mm: Mm, extra: number): void {
  if (mm.mapCount + extra > k.tunables.maxMapCount) fail(Errno.ENOMEM, `map_count would exceed vm.max_map_count (${k.tunables.maxMapCount})`);
}

// ------------------------------------------------------------------- zap

const cursor = new WalkCursor();

/**
 * zap_page_range_single / unmap_page_range for [start, end) within `vma`:
 * entries cleared, rmap and RSS dropped per folio run, references handed to
 * the mmu_gather. Huge leaves partly inside the range are split first.
 */
export function zapRange(k: Kernel, mm: Mm, vma: Vma, start: number, end: number): void {
  const pool = k.pt;
  let addr = start;
  while (addr < end) {
    const pgdI = pgdIndex(addr);
    const nextPgd = (Math.floor(addr / 2 ** 39) + 1) * 2 ** 39;
    if (!(pool.hi(mm.pgd, pgdI) & E_TABLE)) {
      addr = Math.min(end, nextPgd);
      continue;
    }
    const pudT = pool.lo(mm.pgd, pgdI);
    const nextPud = (Math.floor(addr / PUD_SIZE) + 1) * PUD_SIZE;
    const ui = pudIndex(addr);
    const uhi = pool.hi(pudT, ui);
    if (uhi === 0 && pool.lo(pudT, ui) === 0) {
      addr = Math.min(end, nextPud);
      continue;
    }
    if (!(uhi & E_TABLE)) {
      const base = nextPud - PUD_SIZE;
      if (base >= start && nextPud <= end) {
        zapLeaf(k, mm, pudT, ui, uhi, 262144);
      } else if (vma.isHugetlb) {
        invalid("partial unmap of a hugetlb 1 GiB page");
      } else {
        splitHugePud(k, mm, vma, addr);
      }
      addr = Math.min(end, nextPud);
      continue;
    }
    const pmdT = pool.lo(pudT, ui);
    const pudEnd = Math.min(end, nextPud);
    while (addr < pudEnd) {
      const nextPmd = (Math.floor(addr / PMD_SIZE) + 1) * PMD_SIZE;
      const mi = pmdIndex(addr);
      const mhi = pool.hi(pmdT, mi);
      if (mhi === 0 && pool.lo(pmdT, mi) === 0) {
        addr = Math.min(pudEnd, nextPmd);
        continue;
      }
      if (!(mhi & E_TABLE)) {
        const base = nextPmd - PMD_SIZE;
        if (base >= start && nextPmd <= end) {
          zapLeaf(k, mm, pmdT, mi, mhi, HPAGE_PMD_NR);
          addr = Math.min(pudEnd, nextPmd);
          continue;
        }
        if (vma.isHugetlb) invalid("partial unmap of a hugetlb 2 MiB page");
        if (!splitHugePmd(k, mm, vma, addr)) fail(Errno.ENOMEM, "no memory to split a huge PMD");
        if (!(pool.hi(pmdT, mi) & E_TABLE)) {
          addr = Math.min(pudEnd, nextPmd);
          continue;
        }
      }
      const pteT = pool.lo(pmdT, mi);
      const stop = Math.min(pudEnd, nextPmd);
      zapPtes(k, mm, pteT, addr, stop);
      addr = stop;
    }
  }
}

function zapLeaf(k: Kernel, mm: Mm, t: number, i: number, hi: number, pages: number): void {
  const pfn = k.pt.lo(t, i);
  k.pt.clear(t, i);
  if (!(hi & E_PRESENT)) return;
  if (hi & E_SPECIAL) return; // raw PFNs and the huge zero folio: no refcount
  const head = k.phys.folioHead(pfn);
  k.rmapRemoveEntire(mm, head, pages);
}

/** zap_pte_range over [addr, stop) of one PTE table; per-folio batching. */
function zapPtes(k: Kernel, mm: Mm, t: number, addr: number, stop: number): void {
  const pool = k.pt;
  const p = k.phys;
  const c = pool.chunk(t);
  const b = pool.base(t);
  const first = Math.floor(addr / PAGE_SIZE) & 511;
  const n = (stop - addr) / PAGE_SIZE;
  let runHead = -1;
  let runLen = 0;
  for (let j = first; j < first + n; j++) {
    const lo = c[b + 2 * j]!;
    const hi = c[b + 2 * j + 1]!;
    if (lo === 0 && hi === 0) continue;
    pool.clear(t, j);
    if (!(hi & E_PRESENT)) {
      zapSwapEntry(k, mm, lo, hi);
      continue;
    }
    if (hi & E_SPECIAL) continue;
    const head = p.folioHead(lo);
    if (head === runHead) {
      runLen++;
      continue;
    }
    if (runLen > 0) k.rmapRemovePtes(mm, runHead, runLen);
    runHead = head;
    runLen = 1;
  }
  if (runLen > 0) k.rmapRemovePtes(mm, runHead, runLen);
}

/** Non-present entries: device-private/exclusive pages hold a reference. */
function zapSwapEntry(k: Kernel, mm: Mm, lo: number, hi: number): void {
  const kind = swpKind(hi);
  if (kind === SwpKind.DEVICE_PRIVATE_READ || kind === SwpKind.DEVICE_PRIVATE_WRITE || kind === SwpKind.DEVICE_EXCLUSIVE) {
    const head = k.phys.folioHead(lo);
    k.rmapRemovePtes(mm, head, 1);
  } else if (kind === SwpKind.SWAP) {
    mm.rssSwap--;
  }
}

/**
 * free_pgtables for [start, end): tables whose whole span lies inside
 * [floor, ceiling) (no VMA there any more) are freed.
 */
function freePgtables(k: Kernel, mm: Mm, start: number, end: number, floor: number, ceiling: number): void {
  const pool = k.pt;
  const inside = (s: number, size: number) => s >= floor && s + size <= ceiling;
  for (let g = Math.floor(start / 2 ** 39); g * 2 ** 39 < end; g++) {
    const gi = g & 511;
    if (!(pool.hi(mm.pgd, gi) & E_TABLE)) continue;
    const pudT = pool.lo(mm.pgd, gi);
    const g0 = g * 2 ** 39;
    for (let u = 0; u < 512; u++) {
      const ua = g0 + u * PUD_SIZE;
      if (ua + PUD_SIZE <= start || ua >= end) continue;
      if (!(pool.hi(pudT, u) & E_TABLE)) continue;
      const pmdT = pool.lo(pudT, u);
      for (let m = 0; m < 512; m++) {
        const ma = ua + m * PMD_SIZE;
        if (ma + PMD_SIZE <= start || ma >= end) continue;
        if (!(pool.hi(pmdT, m) & E_TABLE) || !inside(ma, PMD_SIZE)) continue;
        const pteT = pool.lo(pmdT, m);
        if (pool.usedCount(pteT) !== 0) continue;
        pool.clear(pmdT, m);
        pool.release(pteT);
      }
      if (inside(ua, PUD_SIZE) && pool.usedCount(pmdT) === 0) {
        pool.clear(pudT, u);
        pool.release(pmdT);
      }
    }
    if (inside(g0, 2 ** 39) && pool.usedCount(pudT) === 0) {
      pool.clear(mm.pgd, gi);
      pool.release(pudT);
    }
  }
}

// ------------------------------------------------------------------ mmap

export interface DeviceMmap {
  kind: "pfnmap" | "mixedmap";
  pfnRangeId: number;
  /** PFN of vm_start for the driver's fault handler; -1 = none */
  basePfn: number;
  hugeFault: boolean;
}

export interface MmapRequest {
  addr: number;
  length: number;
  prot: number;
  flags: number;
  fileId: number;
  offset: number;
  device: DeviceMmap | null;
}

const KNOWN_MAP_FLAGS =
  MAP_TYPE | MAP_FIXED | MAP_ANONYMOUS | MAP_NORESERVE | MAP_POPULATE | MAP_HUGETLB | MAP_FIXED_NOREPLACE | (MAP_HUGE_MASK << MAP_HUGE_SHIFT);

function calcVmProtBits(prot: number): number {
  return (prot & PROT_READ ? VM_READ : 0) | (prot & PROT_WRITE ? VM_WRITE : 0) | (prot & PROT_EXEC ? VM_EXEC : 0);
}

/** get_unmapped_area: top-down below mmap_base, aligned as asked. */
function getUnmappedArea(mm: Mm, len: number, align: number, hint: number): number {
  if (hint !== 0) {
    const a = Math.ceil(hint / align) * align;
    if (a >= MMAP_MIN_ADDR && a + len <= TASK_SIZE_MAX && mm.vmasIn(a, a + len).length === 0) return a;
  }
  let top = mm.mmapBase;
  for (let i = mm.vmaIndexAfter(top) - 1; ; i--) {
    const below = i >= 0 ? mm.vmas[i]! : undefined;
    const gapStart = below ? below.end : MMAP_MIN_ADDR;
    const cand = Math.floor((top - len) / align) * align;
    if (cand >= gapStart && cand + len <= top) return cand;
    if (below === undefined) break;
    top = Math.min(top, below.start);
  }
  fail(Errno.ENOMEM, `no ${len}-byte gap in the address space`);
}

/** do_mmap: returns the address of the new mapping. */
export function doMmap(k: Kernel, mm: Mm, req: MmapRequest): number {
  const { prot, flags, offset } = req;
  let { addr, length: len } = req;
  if (!Number.isSafeInteger(addr) || !Number.isSafeInteger(len) || !Number.isSafeInteger(offset) || addr < 0 || len < 0 || offset < 0)
    invalid("address, length and offset must be non-negative integers below 2^53");
  if (len === 0) invalid("length is 0");
  if (prot & ~(PROT_READ | PROT_WRITE | PROT_EXEC | PROT_GROWSDOWN | PROT_GROWSUP)) invalid(`unknown prot bits 0x${prot.toString(16)}`);
  if (flags & ~KNOWN_MAP_FLAGS) invalid(`unknown or unsupported MAP_ flags 0x${(flags & ~KNOWN_MAP_FLAGS).toString(16)}`);
  const type = flags & MAP_TYPE;
  if (type !== MAP_SHARED && type !== MAP_PRIVATE && type !== MAP_SHARED_VALIDATE) invalid("MAP_SHARED or MAP_PRIVATE required");
  const shared = type !== MAP_PRIVATE;
  if (offset % PAGE_SIZE !== 0) invalid("offset is not page aligned");
  len = pageAlignUp(len);
  if (len > TASK_SIZE_MAX) fail(Errno.ENOMEM, "length exceeds the address space");
  const fixed = (flags & (MAP_FIXED | MAP_FIXED_NOREPLACE)) !== 0;
  const anon = (flags & MAP_ANONYMOUS) !== 0;

  let file: FileObject | null = null;
  let hugeSize = 0;
  let anonHidden = false;
  if (req.device !== null) {
    if (anon) invalid("a device mapping cannot be MAP_ANONYMOUS");
    if (req.device.kind === "pfnmap" && !shared) invalid("the driver requires MAP_SHARED for a PFNMAP mapping (as vfio-pci)");
    if (req.device.hugeFault && req.device.kind !== "pfnmap") invalid("huge_fault is only offered for PFNMAP mappings");
  } else if (anon) {
    if (flags & MAP_HUGETLB) {
      const log = (flags >>> MAP_HUGE_SHIFT) & MAP_HUGE_MASK;
      hugeSize = log === 0 ? PMD_SIZE : 2 ** log;
      if (hugetlbOrderForSize(hugeSize) < 0) invalid(`unsupported MAP_HUGE size 2^${log}`);
      file = createFile(k, { name: "anon_hugepage", sizeBytes: Math.ceil(len / hugeSize) * hugeSize, kind: FileKind.HUGETLB, hugePageSize: hugeSize, pgmapId: 0 }, mm.ownerSession);
      anonHidden = true;
    } else if (shared) {
      file = createFile(k, { name: "dev/zero", sizeBytes: len, kind: FileKind.SHMEM, hugePageSize: 0, pgmapId: 0 }, mm.ownerSession);
      anonHidden = true;
    }
  } else {
    file = k.file(req.fileId);
    if (file.kind === FileKind.HUGETLB) hugeSize = file.hugePageSize;
    else if (flags & MAP_HUGETLB) invalid("MAP_HUGETLB on a file that is not on hugetlbfs");
  }
  if (hugeSize > 0) {
    len = Math.ceil(len / hugeSize) * hugeSize;
    if (offset % hugeSize !== 0) invalid("hugetlb offset not aligned to the huge page size");
    if (fixed && addr % hugeSize !== 0) invalid("hugetlb address not aligned to the huge page size");
  }
  if (file !== null && anonHidden) file.anonymous = !shared;

  let vmFlags = calcVmProtBits(prot) | VM_MAYREAD | VM_MAYWRITE | VM_MAYEXEC;
  if (shared) vmFlags |= VM_SHARED | VM_MAYSHARE;
  if (flags & MAP_NORESERVE) vmFlags |= VM_NORESERVE;
  else if (!shared && prot & PROT_WRITE && hugeSize === 0) vmFlags |= VM_ACCOUNT;
  if (hugeSize > 0) vmFlags |= VM_HUGETLB;
  if (req.device !== null)
    vmFlags |= req.device.kind === "pfnmap" ? VM_IO | VM_PFNMAP | VM_DONTEXPAND | VM_DONTDUMP : VM_MIXEDMAP;

  const release = () => {
    if (anonHidden && file !== null) fileRelease(k, file);
  };
  try {
    if (fixed) {
      if (addr % PAGE_SIZE !== 0) invalid("MAP_FIXED address is not page aligned");
      if (addr + len > TASK_SIZE_MAX) fail(Errno.ENOMEM, "mapping would end beyond TASK_SIZE");
      if (flags & MAP_FIXED_NOREPLACE && mm.vmasIn(addr, addr + len).length > 0)
        fail(Errno.EEXIST, "MAP_FIXED_NOREPLACE over an existing mapping");
    } else {
      const align =
        hugeSize > 0 ? hugeSize : req.device !== null && len >= PUD_SIZE ? PUD_SIZE : len >= PMD_SIZE && (anon || req.device !== null) ? PMD_SIZE : PAGE_SIZE;
      addr = getUnmappedArea(mm, len, align, addr);
    }
    if (fixed && flags & MAP_FIXED) doMunmap(k, mm, addr, len);
    checkMapCount(k, mm, 1);
    const pgoff = file !== null || req.device !== null ? offset / PAGE_SIZE : addr / PAGE_SIZE;
    const dev =
      req.device === null
        ? null
        : { basePfn: req.device.basePfn, hugeFault: req.device.hugeFault, pfnRangeId: req.device.pfnRangeId };
    const v = new Vma(addr, addr + len, vmFlags, pgoff, file, dev, anonHidden);
    vmaLink(k, mm, v);
    if (anonHidden) fileRelease(k, file!); // the mapping holds the hidden file now
    mergeRange(k, mm, addr, addr + len);
    if (flags & MAP_POPULATE && !(vmFlags & (VM_IO | VM_PFNMAP))) {
      const write = (vmFlags & (VM_WRITE | VM_SHARED)) === VM_WRITE;
      try {
        populateRange(k, mm, addr, addr + len, write);
      } catch (e) {
        if (!(e instanceof MmError)) throw e; // mm_populate errors are ignored
      }
    }
    return addr;
  } catch (e) {
    if (mm.findVma(addr)?.file !== file) release();
    throw e;
  }
}

/**
 * Fault in [start, end) as GUP without pages[] would (populate_vma_page_range),
 * one fault per leaf. Throws the errno of the first failure.
 */
export function populateRange(k: Kernel, mm: Mm, start: number, end: number, write: boolean): void {
  let addr = start;
  let vma: Vma | undefined;
  while (addr < end) {
    if (vma === undefined || addr >= vma.end) {
      vma = mm.findVma(addr);
      if (vma === undefined) fail(Errno.ENOMEM, `no VMA at 0x${addr.toString(16)}`);
    }
    walk(k.pt, mm.pgd, addr, cursor);
    const hi = cursor.hi;
    const ok = isPresentLeaf(hi) && !(hi & E_PROTNONE) && (!write || hi & E_WRITE);
    if (!ok) {
      const r = handleMmFault(k, mm, vma, addr, write ? FAULT_FLAG_WRITE : 0);
      if (r & 0x873 /* VM_FAULT_ERROR without FALLBACK handled inside */) {
        fail(r & 0x1 ? Errno.ENOMEM : Errno.EFAULT, `fault at 0x${addr.toString(16)} failed (vm_fault 0x${r.toString(16)})`);
      }
      walk(k.pt, mm.pgd, addr, cursor);
      if (!isPresentLeaf(cursor.hi)) fail(Errno.EFAULT, `nothing mapped at 0x${addr.toString(16)} after a fault`);
    }
    const size = cursor.level === Level.PUD ? PUD_SIZE : cursor.level === Level.PMD ? PMD_SIZE : PAGE_SIZE;
    addr = alignDown(addr, size) + size;
  }
}

// ---------------------------------------------------------------- munmap

export function doMunmap(k: Kernel, mm: Mm, addr: number, len: number): void {
  if (!Number.isSafeInteger(addr) || !Number.isSafeInteger(len) || addr < 0 || len < 0) invalid("address/length out of range");
  if (addr % PAGE_SIZE !== 0) invalid("munmap address is not page aligned");
  if (addr > TASK_SIZE_MAX || len > TASK_SIZE_MAX - addr) invalid("range beyond TASK_SIZE");
  len = pageAlignUp(len);
  if (len === 0) invalid("length rounds to 0");
  const end = addr + len;
  const vmas = mm.vmasIn(addr, end);
  if (vmas.length === 0) return;
  const first = vmas[0]!;
  const last = vmas[vmas.length - 1]!;
  if (first.isHugetlb && addr % first.file!.hugePageSize !== 0) invalid("munmap of a hugetlb VMA at an unaligned address");
  if (last.isHugetlb && end % last.file!.hugePageSize !== 0 && end < last.end) invalid("munmap of a hugetlb VMA with an unaligned end");
  if (first.start < addr && first.end > end) checkMapCount(k, mm, 1);
  if (first.start < addr) splitVma(k, mm, first, addr);
  const lastNow = mm.findVma(end - 1);
  if (lastNow !== undefined && lastNow.end > end) splitVma(k, mm, lastNow, end);
  const doomed = mm.vmasIn(addr, end);
  const floor = (() => {
    const i = mm.vmaIndexAfter(addr) - 1;
    return i >= 0 && mm.vmas[i]!.end <= addr ? mm.vmas[i]!.end : 0;
  })();
  const next = mm.vmas[mm.vmaIndexAfter(end)];
  const ceiling = next !== undefined && next.start >= end ? next.start : TASK_SIZE_MAX + PAGE_SIZE;
  k.withInvalidation(mm, addr, end, MmuNotifyEvent.UNMAP, () => {
    for (const v of doomed) zapRange(k, mm, v, v.start, v.end);
  });
  for (const v of doomed) vmaUnlink(k, mm, v);
  freePgtables(k, mm, addr, end, floor, ceiling);
}

// -------------------------------------------------------------- mprotect

export function doMprotect(k: Kernel, mm: Mm, start: number, len: number, prot: number): void {
  if (!Number.isSafeInteger(start) || !Number.isSafeInteger(len) || start < 0 || len < 0) invalid("address/length out of range");
  if ((prot & (PROT_GROWSDOWN | PROT_GROWSUP)) === (PROT_GROWSDOWN | PROT_GROWSUP)) invalid("PROT_GROWSDOWN with PROT_GROWSUP");
  if (prot & ~(PROT_READ | PROT_WRITE | PROT_EXEC | PROT_GROWSDOWN | PROT_GROWSUP)) invalid(`unknown prot bits 0x${prot.toString(16)}`);
  if (start % PAGE_SIZE !== 0) invalid("mprotect address is not page aligned");
  if (len === 0) return;
  len = pageAlignUp(len);
  const end = start + len;
  if (end > TASK_SIZE_MAX + PAGE_SIZE) fail(Errno.ENOMEM, "range beyond TASK_SIZE");
  if (mm.findVma(start) === undefined) fail(Errno.ENOMEM, `no VMA at 0x${start.toString(16)}`);
  const want = calcVmProtBits(prot);
  let addr = start;
  while (addr < end) {
    const v = mm.findVma(addr);
    if (v === undefined) fail(Errno.ENOMEM, `hole at 0x${addr.toString(16)} inside the range`);
    const newFlags = (v.flags & ~VM_ACCESS_FLAGS) | want;
    if ((newFlags & ~(newFlags >>> 4)) & VM_ACCESS_FLAGS) fail(Errno.EACCES, "protection beyond VM_MAY* of the mapping");
    const segEnd = Math.min(end, v.end);
    if (newFlags !== v.flags) {
      if (v.isHugetlb) {
        const hs = v.file!.hugePageSize;
        if (addr % hs !== 0 || (segEnd % hs !== 0 && segEnd < v.end)) invalid("mprotect of a hugetlb VMA at unaligned bounds");
      }
      if (v.start < addr) splitVma(k, mm, v, addr);
      const cur = mm.findVma(addr)!;
      if (cur.end > segEnd) splitVma(k, mm, cur, segEnd);
      cur.flags = newFlags;
      if (cur.flags & VM_WRITE && !(cur.flags & VM_SHARED)) cur.flags |= VM_ACCOUNT;
      changeProtection(k, mm, cur, addr, segEnd);
    }
    addr = segEnd;
  }
  mergeRange(k, mm, start, end);
}

/**
 * change_protection over [start, end) of `vma` after its flags changed. The
 * PROTECTION_VMA notification starts at the first populated PUD slot of each
 * top-level chunk and runs to the chunk's end in the range.
 */
function changeProtection(k: Kernel, mm: Mm, vma: Vma, start: number, end: number): void {
  const pool = k.pt;
  let addr = start;
  while (addr < end) {
    const chunkEnd = Math.min(end, (Math.floor(addr / 2 ** 39) + 1) * 2 ** 39);
    const gi = pgdIndex(addr);
    if (!(pool.hi(mm.pgd, gi) & E_TABLE)) {
      addr = chunkEnd;
      continue;
    }
    const pudT = pool.lo(mm.pgd, gi);
    let first = -1;
    for (let a = addr; a < chunkEnd; a = (Math.floor(a / PUD_SIZE) + 1) * PUD_SIZE) {
      const ui = pudIndex(a);
      if (pool.hi(pudT, ui) !== 0 || pool.lo(pudT, ui) !== 0) {
        first = a;
        break;
      }
    }
    if (first >= 0) {
      k.withInvalidation(mm, first, chunkEnd, MmuNotifyEvent.PROTECTION_VMA, () => protectRange(k, mm, vma, first, chunkEnd));
    }
    addr = chunkEnd;
  }
}

/** New entry bits under the VMA's new protection (pte_modify + try writable). */
function newProtBits(k: Kernel, vma: Vma, lo: number, hi: number): number {
  const keep = hi & ~(E_WRITE | E_PROTNONE | 0x800 /* E_EXEC */ | 0x4 /* E_USER */);
  const accessible = (vma.flags & (VM_READ | VM_WRITE | 0x4)) !== 0;
  let b = keep | (accessible ? 0x4 : 0) | (vma.flags & VM_EXEC ? 0x800 : 0) | (accessible ? 0 : E_PROTNONE);
  if (vma.flags & VM_WRITE && accessible) {
    if (vma.isShared) {
      if (vma.pageProtWritable || hi & E_DIRTY) b |= E_WRITE;
    } else if (!(hi & E_SPECIAL) && k.phys.pfnValid(lo) && k.phys.flags(lo) & PG_anon_exclusive && k.phys.flags(k.phys.folioHead(lo)) & PG_anon) {
      // can_change_pte_writable: exclusive anon pages need no write fault.
      b |= E_WRITE;
    }
  }
  return b;
}

function protectRange(k: Kernel, mm: Mm, vma: Vma, start: number, end: number): void {
  const pool = k.pt;
  let addr = start;
  while (addr < end) {
    walk(pool, mm.pgd, addr, cursor);
    const size = cursor.level === Level.PUD ? PUD_SIZE : cursor.level === Level.PMD ? PMD_SIZE : cursor.level === Level.PTE ? PAGE_SIZE : 2 ** 39;
    const next = alignDown(addr, size) + size;
    const { table: t, idx: i, lo, hi } = cursor;
    if (cursor.level === Level.PTE) {
      // Walk the rest of this PTE table in one go.
      const stop = Math.min(end, alignDown(addr, PMD_SIZE) + PMD_SIZE);
      for (let a = addr, j = i; a < stop; a += PAGE_SIZE, j++) {
        const l = pool.lo(t, j);
        const h = pool.hi(t, j);
        if (h === 0 && l === 0) continue;
        if (h & E_PRESENT) pool.setBits(t, j, newProtBits(k, vma, l, h));
        else if (swpKind(h) === SwpKind.DEVICE_PRIVATE_WRITE && !(vma.flags & VM_WRITE))
          pool.setBits(t, j, (h & ~(0xf << 16)) | swpBits(SwpKind.DEVICE_PRIVATE_READ));
        else if (swpKind(h) === SwpKind.MIGRATION_WRITE && !(vma.flags & VM_WRITE))
          pool.setBits(t, j, (h & ~(0xf << 16)) | swpBits(SwpKind.MIGRATION_READ) | E_SWP_EXCLUSIVE);
      }
      addr = stop;
      continue;
    }
    if (cursor.level !== Level.PGD && hi & E_PRESENT && !(hi & E_TABLE)) {
      const b = newProtBits(k, vma, lo, hi);
      // The huge zero PMD never becomes writable.
      pool.setBits(t, i, k.phys.isHugeZeroPfn(lo) ? b & ~E_WRITE : b);
    }
    addr = Math.min(end, next);
  }
}

// --------------------------------------------------------------- madvise

const KNOWN_ADVICE = new Set([
  0, 1, 2, 3, MADV_DONTNEED, MADV_FREE, MADV_DONTFORK, MADV_DOFORK, MADV_HUGEPAGE, MADV_NOHUGEPAGE,
  MADV_WIPEONFORK, MADV_KEEPONFORK, MADV_POPULATE_READ, MADV_POPULATE_WRITE, MADV_DONTNEED_LOCKED,
]);

export function doMadvise(k: Kernel, mm: Mm, start: number, len: number, advice: number): void {
  if (!KNOWN_ADVICE.has(advice)) invalid(`unknown advice ${advice}`);
  if (!Number.isSafeInteger(start) || !Number.isSafeInteger(len) || start < 0 || len < 0) invalid("address/length out of range");
  if (start % PAGE_SIZE !== 0) invalid("madvise address is not page aligned");
  len = pageAlignUp(len);
  const end = start + len;
  if (end > TASK_SIZE_MAX + PAGE_SIZE) invalid("range overflows");
  if (len === 0 || advice <= 3) return;
  if (advice === MADV_POPULATE_READ || advice === MADV_POPULATE_WRITE) return madvisePopulate(k, mm, start, end, advice === MADV_POPULATE_WRITE);
  let hole = false;
  let addr = start;
  while (addr < end) {
    const i = mm.vmaIndexAfter(addr);
    const v = mm.vmas[i];
    if (v === undefined || v.start >= end) {
      hole = true;
      break;
    }
    if (v.start > addr) hole = true;
    const s = Math.max(addr, v.start);
    const e = Math.min(end, v.end);
    madviseVma(k, mm, v, s, e, advice);
    addr = e;
  }
  if (hole) fail(Errno.ENOMEM, "the range contains unmapped holes");
}

function madviseVma(k: Kernel, mm: Mm, v: Vma, s: number, e: number, advice: number): void {
  switch (advice) {
    case MADV_DONTNEED:
    case MADV_DONTNEED_LOCKED:
    case MADV_FREE: {
      if (v.flags & VM_PFNMAP) invalid("MADV_DONTNEED/FREE on a VM_PFNMAP mapping");
      if (v.flags & VM_LOCKED && advice !== MADV_DONTNEED_LOCKED) invalid("discard advice on a VM_LOCKED mapping");
      if (advice === MADV_FREE && !v.isAnonymous) invalid("MADV_FREE on a mapping that is not private anonymous");
      if (v.isHugetlb) {
        const hs = v.file!.hugePageSize;
        if (s % hs !== 0) invalid("hugetlb madvise start not aligned to the huge page size");
        e = alignDown(e, hs);
        if (e <= s) return;
      }
      k.withInvalidation(mm, s, e, MmuNotifyEvent.CLEAR, () => {
        if (advice === MADV_FREE) lazyFreeRange(k, mm, v, s, e);
        else zapRange(k, mm, v, s, e);
      });
      return;
    }
    case MADV_HUGEPAGE:
    case MADV_NOHUGEPAGE: {
      const f = advice === MADV_HUGEPAGE ? (v.flags & ~VM_NOHUGEPAGE) | VM_HUGEPAGE : (v.flags & ~VM_HUGEPAGE) | VM_NOHUGEPAGE;
      return setVmaFlags(k, mm, v, s, e, f);
    }
    case MADV_DONTFORK:
      return setVmaFlags(k, mm, v, s, e, v.flags | VM_DONTCOPY);
    case MADV_DOFORK:
      if (v.flags & VM_IO) invalid("MADV_DOFORK on a VM_IO mapping");
      return setVmaFlags(k, mm, v, s, e, v.flags & ~VM_DONTCOPY);
    case MADV_WIPEONFORK:
      if (v.file !== null || v.device !== null || v.flags & VM_SHARED) invalid("MADV_WIPEONFORK on a mapping that is not private anonymous");
      return setVmaFlags(k, mm, v, s, e, v.flags | VM_WIPEONFORK);
    case MADV_KEEPONFORK:
      return setVmaFlags(k, mm, v, s, e, v.flags & ~VM_WIPEONFORK);
  }
}

function setVmaFlags(k: Kernel, mm: Mm, v: Vma, s: number, e: number, flags: number): void {
  if (flags === v.flags) return;
  const extra = (v.start < s ? 1 : 0) + (v.end > e ? 1 : 0);
  checkMapCount(k, mm, extra);
  if (v.start < s) splitVma(k, mm, v, s);
  const cur = mm.findVma(s)!;
  if (cur.end > e) splitVma(k, mm, cur, e);
  cur.flags = flags;
  mergeRange(k, mm, s, e);
}

/** madvise_free_pte_range: exclusive anon folios become clean and lazyfree. */
function lazyFreeRange(k: Kernel, mm: Mm, v: Vma, s: number, e: number): void {
  const pool = k.pt;
  const p = k.phys;
  for (let a = s; a < e; ) {
    walk(pool, mm.pgd, a, cursor);
    const { level, table: t, idx: i, lo, hi } = cursor;
    if (level === Level.PMD && isPresentLeaf(hi) && hi & E_LEAF) {
      const base = alignDown(a, PMD_SIZE);
      if (base < s || base + PMD_SIZE > e) {
        // MADV_FREE is advisory: a PMD that cannot be split stays as it is.
        if (splitHugePmd(k, mm, v, a)) continue;
        a = base + PMD_SIZE;
        continue;
      }
      if (!(hi & E_SPECIAL) && p.mapcount(lo) === 1) {
        pool.setBits(t, i, hi & ~(E_DIRTY | E_YOUNG));
        p.orFlags(lo, PG_lazyfree);
        p.clearFlags(lo, PG_dirty);
      }
      a = base + PMD_SIZE;
      continue;
    }
    if (level === Level.PTE && isPresentLeaf(hi) && !(hi & E_SPECIAL)) {
      const head = p.folioHead(lo);
      if (p.flags(head) & PG_anon && p.mapcount(head) === 1) {
        pool.setBits(t, i, hi & ~(E_DIRTY | E_YOUNG));
        p.orFlags(head, PG_lazyfree);
        p.clearFlags(head, PG_dirty);
      }
    }
    const size = level === Level.PTE ? PAGE_SIZE : level === Level.PMD ? PMD_SIZE : level === Level.PUD ? PUD_SIZE : 2 ** 39;
    a = alignDown(a, size) + size;
  }
}

function madvisePopulate(k: Kernel, mm: Mm, start: number, end: number, write: boolean): void {
  let addr = start;
  while (addr < end) {
    const v = mm.findVma(addr);
    if (v === undefined) fail(Errno.ENOMEM, `no VMA at 0x${addr.toString(16)}`);
    if (v.flags & (VM_IO | VM_PFNMAP)) invalid("MADV_POPULATE on a VM_IO/VM_PFNMAP mapping");
    if (write && !(v.flags & VM_WRITE)) invalid("MADV_POPULATE_WRITE on a read-only mapping");
    if (!write && !(v.flags & VM_READ)) invalid("MADV_POPULATE_READ on an unreadable mapping");
    const e = Math.min(end, v.end);
    try {
      populateRange(k, mm, addr, e, write);
    } catch (err) {
      if (err instanceof MmError && err.errno === Errno.ENOMEM && err.message.includes("no VMA")) throw err;
      if (err instanceof MmError && err.errno === Errno.ENOMEM) throw err;
      if (err instanceof MmError) fail(Errno.EFAULT, err.reason);
      throw err;
    }
    addr = e;
  }
}

// ------------------------------------------------------------------ fork

/** dup_mmap: the child address space of `parent`. */
export function forkMm(k: Kernel, parent: Mm, name: string, session: number): Mm {
  const child = k.createMm(name, session);
  child.mmapBase = parent.mmapBase;
  try {
    parent.writeProtectSeq++; // odd: fork is write-protecting
    for (const v of parent.vmas) {
      if (v.flags & VM_DONTCOPY) continue;
      const c = v.clone();
      c.flags &= ~VM_LOCKED;
      if (v.flags & VM_WIPEONFORK) {
        c.anonVma = null;
        vmaLink(k, child, c);
        continue;
      }
      vmaLink(k, child, c);
      const copy = v.anonVma !== null || (v.flags & VM_COPY_ON_FORK) !== 0;
      if (!copy) continue;
      const cow = isCowMapping(v.flags);
      if (cow && !v.isHugetlb) {
        k.withInvalidation(parent, v.start, v.end, MmuNotifyEvent.PROTECTION_PAGE, () => copyPageRange(k, parent, child, v, c, true));
      } else if (cow && v.isHugetlb) {
        k.withInvalidation(parent, v.start, v.end, MmuNotifyEvent.CLEAR, () => copyPageRange(k, parent, child, v, c, true));
      } else {
        copyPageRange(k, parent, child, v, c, false);
      }
    }
  } catch (e) {
    parent.writeProtectSeq++;
    exitMm(k, child);
    throw e;
  }
  parent.writeProtectSeq++;
  if (parent.hugeZeroRef) {
    child.hugeZeroRef = true;
    k.phys.folioGet(k.phys.hugeZeroPfn);
  }
  return child;
}

/** Does fork have to copy this anon page now (folio_needs_cow_for_dma)? */
function needsCowForDma(k: Kernel, mm: Mm, pfn: number, head: number): boolean {
  const p = k.phys;
  if (!(p.flags(pfn) & PG_anon_exclusive) || !mm.hasPinned) return false;
  return p.folioOrder(head) > 0 ? p.pincount(head) > 0 : p.refcount(head) >= 1024;
}

/** copy_page_range for one VMA: entries copied level by level. */
function copyPageRange(k: Kernel, src: Mm, dst: Mm, sv: Vma, dv: Vma, cow: boolean): void {
  const pool = k.pt;
  const p = k.phys;
  let addr = sv.start;
  while (addr < sv.end) {
    walk(pool, src.pgd, addr, cursor);
    const { level, table: t, idx: i, lo, hi } = cursor;
    const size = level === Level.PTE ? PAGE_SIZE : level === Level.PMD ? PMD_SIZE : level === Level.PUD ? PUD_SIZE : 2 ** 39;
    const base = alignDown(addr, size);
    const next = Math.min(sv.end, base + size);
    if ((hi === 0 && lo === 0) || level === Level.PGD) {
      addr = next;
      continue;
    }
    if (level === Level.PUD || level === Level.PMD) {
      const dt = ensureTable(pool, dst.pgd, base, level);
      if (dt <= 0) fail(Errno.ENOMEM, "no memory for page tables in the child");
      const di = level === Level.PUD ? pudIndex(base) : pmdIndex(base);
      const pages = level === Level.PUD ? 262144 : HPAGE_PMD_NR;
      if (hi & E_SPECIAL || !p.pfnValid(lo)) {
        // Raw PFNs and the huge zero folio: copied as they are (COW: write-protected).
        const nb = cow ? hi & ~E_WRITE : hi;
        if (cow) pool.setBits(t, i, nb);
        pool.set(dt, di, lo, nb);
        addr = next;
        continue;
      }
      const head = p.folioHead(lo);
      if (p.flags(head) & PG_anon && cow) {
        if (needsCowForDma(k, src, lo, head)) {
          if (p.flags(head) & PG_hugetlb) {
            // copy_hugetlb_page_range: a pinned exclusive hugetlb folio is copied.
            const order = p.folioOrder(head);
            const nh = p.allocFolio(order, order === 18 ? 0 : GFP_MOVABLE);
            if (nh < 0) fail(Errno.ENOMEM, "no memory to copy a pinned hugetlb folio at fork");
            for (let j = 0; j < pages; j++) copyPageData(k, head + j, nh + j);
            prepAnonFolio(k, dv, nh, order, base);
            p.orFlags(nh, PG_hugetlb);
            pool.set(dt, di, nh, hi | E_DIRTY);
            k.rmapAddEntire(dst, nh, pages, false);
            addr = next;
            continue;
          }
          // A pinned exclusive THP: split the parent's PMD, copy at PTE level.
          if (!splitHugePmd(k, src, sv, base)) fail(Errno.ENOMEM, "no memory to split a pinned huge PMD at fork");
          continue;
        }
        p.setFlagsRange(head, pages, PG_anon_exclusive, false);
      }
      const nb = cow ? hi & ~E_WRITE : hi;
      if (cow) pool.setBits(t, i, nb);
      pool.set(dt, di, lo, nb);
      k.rmapAddEntire(dst, head, pages, true);
      addr = next;
      continue;
    }
    // PTE level: the rest of this PTE table.
    const stop = Math.min(sv.end, alignDown(base, PMD_SIZE) + PMD_SIZE);
    const dt = ensureTable(pool, dst.pgd, base, Level.PTE);
    if (dt <= 0) fail(Errno.ENOMEM, "no memory for page tables in the child");
    let runHead = -1;
    let runLen = 0;
    const flush = () => {
      if (runLen > 0) k.rmapAddPtes(dst, runHead, runLen);
      runLen = 0;
    };
    for (let a = addr, j = i; a < stop; a += PAGE_SIZE, j++) {
      let l = pool.lo(t, j);
      let h = pool.hi(t, j);
      if (l === 0 && h === 0) continue;
      if (!(h & E_PRESENT) && swpKind(h) === SwpKind.DEVICE_EXCLUSIVE) {
        // copy_nonpresent_pte: the original PTE is restored, then copied as present.
        restoreExclusivePte(k, sv, t, j);
        l = pool.lo(t, j);
        h = pool.hi(t, j);
      }
      if (!(h & E_PRESENT)) {
        const kind = swpKind(h);
        if (kind === SwpKind.DEVICE_PRIVATE_READ || kind === SwpKind.DEVICE_PRIVATE_WRITE) {
          const nb = cow && kind === SwpKind.DEVICE_PRIVATE_WRITE ? (h & ~(0xf << 16)) | swpBits(SwpKind.DEVICE_PRIVATE_READ) : h;
          pool.setBits(t, j, nb);
          pool.set(dt, j, l, nb);
          const head = p.folioHead(l);
          p.clearFlags(l, PG_anon_exclusive);
          k.rmapAddPtes(dst, head, 1);
        } else if (kind === SwpKind.MARKER) {
          pool.set(dt, j, l, h);
        }
        continue;
      }
      if (h & E_SPECIAL || !p.pfnValid(l)) {
        const nb = cow ? h & ~E_WRITE : h;
        if (cow) pool.setBits(t, j, nb);
        pool.set(dt, j, l, nb);
        continue;
      }
      const head = p.folioHead(l);
      if (cow && p.flags(head) & PG_anon) {
        if (needsCowForDma(k, src, l, head)) {
          // Early COW: the child gets its own copy, the parent keeps its page.
          flush();
          const nh = p.allocFolio(0, GFP_MOVABLE);
          if (nh < 0) fail(Errno.ENOMEM, "no memory for an early COW copy at fork");
          copyPageData(k, l, nh);
          prepAnonFolio(k, dv, nh, 0, a);
          pool.set(dt, j, nh, pteBits(dv, (dv.flags & VM_WRITE) !== 0, true));
          k.mapcountAdd(nh, 1);
          k.rssAdd(dst, nh, 1);
          continue;
        }
        p.clearFlags(l, PG_anon_exclusive);
      }
      const nb = cow ? h & ~E_WRITE : h;
      if (cow) pool.setBits(t, j, nb);
      pool.set(dt, j, l, nb);
      if (head !== runHead) {
        flush();
        runHead = head;
      }
      runLen++;
    }
    flush();
    addr = stop;
  }
}

// ------------------------------------------------------------------ exit

/** exit_mmap: RELEASE then UNMAP over everything, teardown of all VMAs. */
export function exitMm(k: Kernel, mm: Mm): void {
  if (mm.exited) return;
  const notify = mm.notifier.hasSubscribers();
  if (notify) {
    // mmu_notifier_release: RELEASE goes to interval subscriptions only;
    // classic notifiers get ->release, are unlinked, and see nothing more.
    const classic = [...mm.notifier.classic];
    mm.notifier.classic.clear();
    k.withInvalidation(mm, 0, RANGE_END_ALL, MmuNotifyEvent.RELEASE, () => {});
    for (const c of classic) c.release?.(mm.id);
  }
  mm.mmUsers = 0;
  const zapAll = () => {
    for (const v of mm.vmas) zapRange(k, mm, v, v.start, v.end);
  };
  if (notify) k.withInvalidation(mm, 0, RANGE_END_ALL, MmuNotifyEvent.UNMAP, zapAll);
  else zapAll();
  for (const v of [...mm.vmas]) vmaUnlink(k, mm, v);
  freePgtables(k, mm, 0, TASK_SIZE_MAX + PAGE_SIZE, 0, TASK_SIZE_MAX + PAGE_SIZE);
  k.pt.release(mm.pgd);
  if (mm.hugeZeroRef) {
    mm.hugeZeroRef = false;
    k.phys.folioPut(k.phys.hugeZeroPfn);
  }
  mm.exited = true;
}

export { isSpecial, VM_MIXEDMAP, FAULT_FLAG_WRITE, E_YOUNG };
