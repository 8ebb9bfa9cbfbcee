/**
 * Page faults: handle_mm_fault and the paths behind it (spec section 3).
 *
 * Walk order as __handle_mm_fault: PUD slot (device huge_fault), PMD slot
 * (anonymous THP, huge zero folio, device huge_fault), then the PTE
 * (do_anonymous_page, do_fault, do_wp_page). hugetlb VMAs take their own path
 * (hugetlb_fault). Functions are named after the kernel's.
 */
import {
  alignDown,
  FAULT_FLAG_REMOTE,
  FAULT_FLAG_UNSHARE,
  FAULT_FLAG_USER,
  FAULT_FLAG_WRITE,
  FOLL_HWPOISON,
  HPAGE_PMD_NR,
  HPAGE_PMD_ORDER,
  Level,
  LEVEL_PAGES,
  MemoryType,
  MmuNotifyEvent,
  PAGE_SIZE,
  PMD_SIZE,
  PUD_SIZE,
  VM_EXEC,
  VM_FAULT_FALLBACK,
  VM_FAULT_HWPOISON,
  VM_FAULT_HWPOISON_LARGE,
  VM_FAULT_NOPAGE,
  VM_FAULT_OOM,
  VM_FAULT_SIGBUS,
  VM_FAULT_SIGSEGV,
  VM_HUGEPAGE,
  VM_NOHUGEPAGE,
  VM_READ,
  VM_SHARED,
  VM_WRITE,
} from "./constants.js";
import type { Kernel } from "./kernel.js";
import type { Mm } from "./mm.js";
import {
  E_DIRTY,
  E_EXEC,
  E_LEAF,
  E_PRESENT,
  E_PROTNONE,
  E_SPECIAL,
  E_USER,
  E_WRITE,
  E_YOUNG,
  PTE_MARKER_GUARD,
  PTE_MARKER_POISONED,
  SwpKind,
  ensureTable,
  isPresentLeaf,
  pmdIndex,
  pteIndex,
  pudIndex,
  swpKind,
} from "./pagetable.js";
import {
  GFP_MOVABLE,
  PG_anon,
  PG_anon_exclusive,
  PG_deferred_split,
  PG_dirty,
  PG_has_data,
  PG_hugetlb,
  PG_huge_zero,
  PG_lru,
  PG_pagecache,
  PG_shmem,
  SECTION_SHIFT,
} from "./physmem.js";
import { FileKind, type FileObject, type Vma } from "./vma.js";

/** Details of the last fault, for the fault RPC's answer. */
export const faultInfo = { cow: false, thp: false };

/** vm_fault_to_errno (spec 3.6); 0 when the fault succeeded. */
export function vmFaultToErrno(ret: number, follFlags: number): number {
  if (ret & VM_FAULT_OOM) return 12;
  if (ret & (VM_FAULT_HWPOISON | VM_FAULT_HWPOISON_LARGE)) return follFlags & FOLL_HWPOISON ? 133 : 14;
  if (ret & (VM_FAULT_SIGBUS | VM_FAULT_SIGSEGV)) return 14;
  return 0;
}

/** PTE bits for a present user mapping in `vma`. */
export function pteBits(vma: Vma, writable: boolean, dirty: boolean): number {
  let b = E_PRESENT | E_USER | E_YOUNG;
  if (writable) b |= E_WRITE;
  if (dirty) b |= E_DIRTY;
  if (vma.flags & VM_EXEC) b |= E_EXEC;
  if (!(vma.flags & (VM_READ | VM_WRITE | VM_EXEC))) b |= E_PROTNONE;
  return b;
}

/** __thp_vma_allowable_orders for the THP sysfs gate. */
function thpSysfsAllows(k: Kernel, vma: Vma): boolean {
  if (vma.flags & VM_NOHUGEPAGE) return false;
  const e = k.tunables.thpEnabled;
  return e === "always" || (e === "madvise" && (vma.flags & VM_HUGEPAGE) !== 0);
}

/** May an anonymous THP be mapped at the aligned block containing addr? */
export function anonThpAllowed(k: Kernel, vma: Vma, addr: number): boolean {
  if (!vma.isAnonymous || !thpSysfsAllows(k, vma)) return false;
  const h = alignDown(addr, PMD_SIZE);
  return h >= vma.start && h + PMD_SIZE <= vma.end;
}

/** May the driver's ->huge_fault be offered this level (spec 4.5 step 1)? */
export function deviceHugeAllowed(k: Kernel, vma: Vma): boolean {
  return vma.device !== null && vma.device.hugeFault && thpSysfsAllows(k, vma);
}

/** The PFN the driver maps at `addr` (vfio-pci style linear BAR mapping). */
export function devicePfn(vma: Vma, addr: number): number {
  return vma.device!.basePfn + vma.pgoff + (addr - vma.start) / PAGE_SIZE;
}

/** Initialise a freshly allocated folio as anonymous, exclusive memory. */
export function prepAnonFolio(k: Kernel, vma: Vma, head: number, order: number, addr: number): void {
  const p = k.phys;
  const av = k.anonVmaPrepare(vma);
  const n = 2 ** order;
  p.setFlagsRange(head, n, PG_anon_exclusive, true);
  p.orFlags(head, PG_anon | PG_lru);
  p.setMapping(head, -av.id, addr / PAGE_SIZE);
}

/**
 * handle_mm_fault. The caller has done its own VMA permission checks.
 * Returns vm_fault_t bits (0 or VM_FAULT_NOPAGE on success).
 */
export function handleMmFault(k: Kernel, mm: Mm, vma: Vma, addr: number, flags: number): number {
  k.vmstat.pgfault++;
  faultInfo.cow = false;
  faultInfo.thp = false;
  addr = alignDown(addr, PAGE_SIZE);
  if (vma.isHugetlb) return hugetlbFault(k, mm, vma, addr, flags);
  const pool = k.pt;
  const write = (flags & FAULT_FLAG_WRITE) !== 0;
  const unshare = (flags & FAULT_FLAG_UNSHARE) !== 0;

  // PUD level.
  const pudT = ensureTable(pool, mm.pgd, addr, Level.PUD);
  if (pudT < 0) return VM_FAULT_OOM;
  const ui = pudIndex(addr);
  let hi = pool.hi(pudT, ui);
  if (hi === 0 && pool.lo(pudT, ui) === 0) {
    if (deviceHugeAllowed(k, vma)) {
      const r = deviceHugeFault(k, vma, addr, Level.PUD, pudT, ui, write);
      if (r !== VM_FAULT_FALLBACK) return r;
    }
  } else if (isPresentLeaf(hi) && hi & E_LEAF) {
    if ((write || unshare) && !(hi & E_WRITE)) {
      if (vma.isShared && !unshare && hi & E_SPECIAL) {
        pool.setBits(pudT, ui, hi | E_WRITE | E_DIRTY | E_YOUNG);
        return 0;
      }
      splitHugePud(k, mm, vma, addr);
    } else {
      pool.setBits(pudT, ui, hi | E_YOUNG | (write ? E_DIRTY : 0));
      return 0;
    }
  }

  // PMD level.
  const pmdT = ensureTable(pool, mm.pgd, addr, Level.PMD);
  if (pmdT < 0) return VM_FAULT_OOM;
  if (pmdT === 0) return VM_FAULT_SIGBUS; // a leaf we cannot split stays in the way
  const mi = pmdIndex(addr);
  hi = pool.hi(pmdT, mi);
  if (hi === 0 && pool.lo(pmdT, mi) === 0) {
    if (vma.isAnonymous && anonThpAllowed(k, vma, addr)) {
      const r = doHugePmdAnonymousPage(k, mm, vma, addr, pmdT, mi, write);
      if (r !== VM_FAULT_FALLBACK) return r;
    } else if (deviceHugeAllowed(k, vma)) {
      const r = deviceHugeFault(k, vma, addr, Level.PMD, pmdT, mi, write);
      if (r !== VM_FAULT_FALLBACK) return r;
    }
  } else if (isPresentLeaf(hi) && hi & E_LEAF) {
    if ((write || unshare) && !(hi & E_WRITE)) {
      if (vma.isAnonymous) {
        const r = doHugePmdWpPage(k, mm, vma, addr, pmdT, mi, unshare);
        if (r !== VM_FAULT_FALLBACK) return r;
      } else if (vma.isShared && !unshare && hi & E_SPECIAL) {
        pool.setBits(pmdT, mi, hi | E_WRITE | E_DIRTY | E_YOUNG);
        return 0;
      } else if (!splitHugePmd(k, mm, vma, addr)) {
        return VM_FAULT_OOM; // no PTE table for the split (the kernel's is deposited)
      }
    } else {
      pool.setBits(pmdT, mi, hi | E_YOUNG | (write ? E_DIRTY : 0));
      return 0;
    }
  }

  // PTE level.
  const pteT = ensureTable(pool, mm.pgd, addr, Level.PTE);
  if (pteT < 0) return VM_FAULT_OOM;
  if (pteT === 0) return VM_FAULT_SIGBUS;
  const ti = pteIndex(addr);
  const lo = pool.lo(pteT, ti);
  hi = pool.hi(pteT, ti);
  if (hi === 0 && lo === 0) {
    if (vma.isAnonymous) return doAnonymousPage(k, mm, vma, addr, pteT, ti, write);
    return doFault(k, mm, vma, addr, pteT, ti, write);
  }
  if (!(hi & E_PRESENT)) return doSwapPage(k, mm, vma, addr, pteT, ti, lo, hi, flags);
  if (hi & E_PROTNONE) {
    // NUMA hinting entry in an accessible VMA: make it present again.
    if (vma.flags & (VM_READ | VM_WRITE | VM_EXEC)) pool.setBits(pteT, ti, hi & ~E_PROTNONE);
    return 0;
  }
  if ((write || unshare) && !(hi & E_WRITE)) return doWpPage(k, mm, vma, addr, pteT, ti, lo, hi, unshare);
  pool.setBits(pteT, ti, hi | E_YOUNG | (write ? E_DIRTY : 0));
  return 0;
}

/** Non-present PTEs: device-private, device-exclusive, markers (do_swap_page). */
function doSwapPage(k: Kernel, mm: Mm, vma: Vma, addr: number, t: number, i: number, lo: number, hi: number, flags: number): number {
  const kind = swpKind(hi);
  switch (kind) {
    case SwpKind.MARKER:
      if (lo & PTE_MARKER_POISONED) return VM_FAULT_HWPOISON;
      if (lo & PTE_MARKER_GUARD) return VM_FAULT_SIGSEGV;
      k.pt.clear(t, i);
      return handleMmFault(k, mm, vma, addr, flags);
    case SwpKind.DEVICE_PRIVATE_READ:
    case SwpKind.DEVICE_PRIVATE_WRITE:
    case SwpKind.DEVICE_EXCLUSIVE:
      if (k.deviceEntryFault === null) return VM_FAULT_SIGBUS;
      return k.deviceEntryFault(mm, vma, addr, flags);
    default:
      // Migration entries exist only inside one synchronous operation.
      return VM_FAULT_SIGBUS;
  }
}

/** do_anonymous_page */
function doAnonymousPage(k: Kernel, mm: Mm, vma: Vma, addr: number, t: number, i: number, write: boolean): number {
  if (vma.flags & VM_SHARED) return VM_FAULT_SIGBUS;
  const pool = k.pt;
  if (!write) {
    // The shared zero page: special, read-only, no folio, no anon_vma.
    pool.set(t, i, k.phys.zeroPfn, pteBits(vma, false, false) | E_SPECIAL);
    k.vmstat.zero_page_faults++;
    return 0;
  }
  const head = k.phys.allocFolio(0, GFP_MOVABLE);
  if (head < 0) return VM_FAULT_OOM;
  prepAnonFolio(k, vma, head, 0, addr);
  pool.set(t, i, head, pteBits(vma, (vma.flags & VM_WRITE) !== 0, true));
  k.mapcountAdd(head, 1);
  k.rssAdd(mm, head, 1);
  return 0;
}

/** do_huge_pmd_anonymous_page */
function doHugePmdAnonymousPage(k: Kernel, mm: Mm, vma: Vma, addr: number, t: number, i: number, write: boolean): number {
  const haddr = alignDown(addr, PMD_SIZE);
  k.anonVmaPrepare(vma);
  if (!write && k.tunables.thpUseZeroPage) {
    const hz = k.phys.getHugeZeroFolio();
    if (hz >= 0) {
      if (!mm.hugeZeroRef) {
        mm.hugeZeroRef = true;
        k.phys.folioGet(hz);
        k.vmstat.thp_zero_page_alloc++;
      }
      k.pt.set(t, i, hz, pteBits(vma, false, false) | E_LEAF | E_SPECIAL);
      k.vmstat.huge_zero_faults++;
      faultInfo.thp = true;
      return 0;
    }
  }
  const head = k.phys.allocFolio(HPAGE_PMD_ORDER, GFP_MOVABLE);
  if (head < 0) {
    k.vmstat.thp_fault_fallback++;
    return VM_FAULT_FALLBACK;
  }
  prepAnonFolio(k, vma, head, HPAGE_PMD_ORDER, haddr);
  k.pt.set(t, i, head, pteBits(vma, (vma.flags & VM_WRITE) !== 0, true) | E_LEAF);
  k.rmapAddEntire(mm, head, HPAGE_PMD_NR, false);
  k.vmstat.thp_fault_alloc++;
  faultInfo.thp = true;
  return 0;
}

/**
 * A large anon folio is reusable when every reference is a mapping of this
 * mm (the kernel's mm-id tracking; here: its anon_vma family is this mm's).
 */
function largeFolioExclusiveToMm(k: Kernel, mm: Mm, head: number): boolean {
  const p = k.phys;
  if (p.refcount(head) !== p.mapcount(head)) return false;
  const av = k.anonVmaById(-p.mapping(head));
  if (av === undefined) return false;
  for (const v of av.vmas) if (k.vmaOwner(v) !== mm) return false;
  return true;
}

/** do_huge_pmd_wp_page (also FAULT_FLAG_UNSHARE). */
function doHugePmdWpPage(k: Kernel, mm: Mm, vma: Vma, addr: number, t: number, i: number, unshare: boolean): number {
  const pool = k.pt;
  const hi = pool.hi(t, i);
  const pfn = pool.lo(t, i);
  const haddr = alignDown(addr, PMD_SIZE);
  const p = k.phys;
  if (p.isHugeZeroPfn(pfn)) {
    // do_huge_zero_wp_pmd: a fresh THP replaces the huge zero PMD.
    const head = p.allocFolio(HPAGE_PMD_ORDER, GFP_MOVABLE);
    if (head < 0) {
      k.vmstat.thp_fault_fallback++;
      return splitHugePmd(k, mm, vma, addr) ? VM_FAULT_FALLBACK : VM_FAULT_OOM;
    }
    k.withInvalidation(mm, haddr, haddr + PMD_SIZE, MmuNotifyEvent.CLEAR, () => {
      prepAnonFolio(k, vma, head, HPAGE_PMD_ORDER, haddr);
      pool.set(t, i, head, pteBits(vma, !unshare && (vma.flags & VM_WRITE) !== 0, !unshare) | E_LEAF);
      k.rmapAddEntire(mm, head, HPAGE_PMD_NR, false);
    });
    k.vmstat.thp_fault_alloc++;
    faultInfo.thp = true;
    faultInfo.cow = true;
    return 0;
  }
  const head = p.folioHead(pfn);
  if (p.flags(head) & PG_anon_exclusive || largeFolioExclusiveToMm(k, mm, head)) {
    p.setFlagsRange(head, HPAGE_PMD_NR, PG_anon_exclusive, true);
    k.vmstat.wp_reuse++;
    if (!unshare && vma.flags & VM_WRITE) pool.setBits(t, i, hi | E_WRITE | E_DIRTY | E_YOUNG);
    faultInfo.thp = true;
    return 0;
  }
  // A split that cannot get its PTE table must not fall back to a PMD leaf.
  return splitHugePmd(k, mm, vma, addr) ? VM_FAULT_FALLBACK : VM_FAULT_OOM;
}

/** do_wp_page: write (or unshare) fault on a present, read-only PTE. */
export function doWpPage(k: Kernel, mm: Mm, vma: Vma, addr: number, t: number, i: number, lo: number, hi: number, unshare: boolean): number {
  const pool = k.pt;
  const p = k.phys;
  const special = (hi & E_SPECIAL) !== 0;
  if (vma.isShared) {
    if (unshare) return 0;
    // wp_pfn_shared / wp_page_shared: pfn_mkwrite or page_mkwrite, then dirty.
    pool.setBits(t, i, hi | E_WRITE | E_DIRTY | E_YOUNG);
    if (!special) p.orFlags(p.folioHead(lo), PG_dirty);
    return 0;
  }
  if (!special) {
    const head = p.folioHead(lo);
    if (p.flags(head) & PG_anon) {
      let reuse = (p.flags(lo) & PG_anon_exclusive) !== 0;
      if (!reuse) {
        const order = p.folioOrder(head);
        // wp_can_reuse_anon_folio: no other reference than this mapping.
        reuse = order === 0 ? p.refcount(head) === 1 : largeFolioExclusiveToMm(k, mm, head);
      }
      if (reuse) {
        p.orFlags(lo, PG_anon_exclusive);
        k.vmstat.wp_reuse++;
        if (!unshare && vma.flags & VM_WRITE) pool.setBits(t, i, hi | E_WRITE | E_DIRTY | E_YOUNG);
        return 0;
      }
    }
  }
  return wpPageCopy(k, mm, vma, addr, t, i, lo, hi, unshare);
}

/** wp_page_copy: COW (or unshare) into a new exclusive anon page. */
function wpPageCopy(k: Kernel, mm: Mm, vma: Vma, addr: number, t: number, i: number, lo: number, hi: number, unshare: boolean): number {
  const p = k.phys;
  const head = p.allocFolio(0, GFP_MOVABLE);
  if (head < 0) return VM_FAULT_OOM;
  const special = (hi & E_SPECIAL) !== 0;
  if (!p.isZeroPfn(lo)) copyPageData(k, lo, head);
  k.withInvalidation(mm, addr, addr + PAGE_SIZE, MmuNotifyEvent.CLEAR, () => {
    prepAnonFolio(k, vma, head, 0, addr);
    k.pt.set(t, i, head, pteBits(vma, !unshare && (vma.flags & VM_WRITE) !== 0, !unshare));
    k.mapcountAdd(head, 1);
    k.rssAdd(mm, head, 1);
    if (!special) {
      const old = p.folioHead(lo);
      k.mapcountAdd(old, -1);
      k.rssAdd(mm, old, -1);
      p.folioPut(old);
    }
  });
  k.vmstat.cow_faults++;
  faultInfo.cow = true;
  return 0;
}

/** Copy the bytes of page `src` (any PFN with struct page) to page `dst`. */
export function copyPageData(k: Kernel, src: number, dst: number): void {
  const p = k.phys;
  if (!p.pfnValid(src)) return; // MMIO has no simulated contents
  const ss = p.section(src);
  if (ss === undefined) return;
  const bytes = p.data.read(ss, src & ((1 << SECTION_SHIFT) - 1));
  if (bytes === null) return;
  const ds = p.sec(dst);
  p.data.writable(ds, dst & ((1 << SECTION_SHIFT) - 1)).set(bytes);
  p.orFlags(p.folioHead(dst), PG_has_data);
}

/** do_fault for file, shmem and driver VMAs (PTE level). */
function doFault(k: Kernel, mm: Mm, vma: Vma, addr: number, t: number, i: number, write: boolean): number {
  if (vma.device !== null) return deviceFault(k, vma, addr, t, i, write);
  const file = vma.file;
  if (file === null) return VM_FAULT_SIGBUS;
  const idx = vma.pageIndex(addr);
  if (idx * PAGE_SIZE >= file.size) return VM_FAULT_SIGBUS;
  const pfn = filePage(k, file, idx);
  if (pfn < 0) return VM_FAULT_OOM;
  const p = k.phys;
  if (write && !vma.isShared) {
    // do_cow_fault: a private copy of the page-cache page.
    const head = p.allocFolio(0, GFP_MOVABLE);
    if (head < 0) return VM_FAULT_OOM;
    copyPageData(k, pfn, head);
    prepAnonFolio(k, vma, head, 0, addr);
    k.pt.set(t, i, head, pteBits(vma, (vma.flags & VM_WRITE) !== 0, true));
    k.mapcountAdd(head, 1);
    k.rssAdd(mm, head, 1);
    k.vmstat.cow_faults++;
    faultInfo.cow = true;
    return 0;
  }
  const head = p.folioHead(pfn);
  const writable = write ? (vma.flags & VM_WRITE) !== 0 : vma.pageProtWritable;
  k.pt.set(t, i, pfn, pteBits(vma, writable && vma.isShared, write));
  k.rmapAddPtes(mm, head, 1);
  if (write) p.orFlags(head, PG_dirty);
  return 0;
}

/** find_get_page or allocate: the page-cache page at `idx` (PFN), -1 on OOM. */
export function filePage(k: Kernel, file: FileObject, idx: number): number {
  const cached = file.cache.get(idx);
  if (cached >= 0) return cached;
  const p = k.phys;
  const order = file.folioOrder;
  const n = 2 ** order;
  const hidx = alignDown(idx, n);
  let head: number;
  if (file.kind === FileKind.FSDAX) {
    const pm = p.pagemaps.get(file.daxPagemap);
    head = pm === undefined ? -1 : p.allocDevicePage(pm);
  } else {
    // hugetlb: 2 MiB folios are migratable, gigantic ones are not.
    head = p.allocFolio(order, order === 18 ? 0 : GFP_MOVABLE);
  }
  if (head < 0) return -1;
  let f = PG_pagecache;
  if (file.kind === FileKind.SHMEM) f |= PG_shmem | PG_lru;
  if (file.kind === FileKind.HUGETLB) f |= PG_hugetlb;
  if (file.kind === FileKind.DIRTY_TRACKED) f |= PG_lru;
  p.orFlags(head, f);
  p.setMapping(head, file.id, hidx);
  // The page cache holds 2^order references (hugetlb: one per folio).
  if (file.kind !== FileKind.HUGETLB && n > 1) p.folioRefAdd(head, n - 1);
  file.cache.setRange(hidx, head, n);
  k.pageCacheAccount(head, n, 1);
  return head + (idx - hidx);
}

/** The driver's ->fault: insert the linear BAR PFN (vmf_insert_pfn/mixed). */
function deviceFault(k: Kernel, vma: Vma, addr: number, t: number, i: number, write: boolean): number {
  const dev = vma.device!;
  if (dev.basePfn < 0) return VM_FAULT_SIGBUS;
  const pfn = devicePfn(vma, addr);
  if (!k.devicePfnInRange(dev, pfn, 1)) return VM_FAULT_SIGBUS;
  const mkwrite = write && (vma.flags & VM_WRITE) !== 0 && vma.isShared;
  k.pt.set(t, i, pfn, pteBits(vma, vma.pageProtWritable || mkwrite, mkwrite) | E_SPECIAL);
  k.vmstat.pfn_inserts_pte++;
  return VM_FAULT_NOPAGE;
}

/** A vfio-pci style ->huge_fault at PMD or PUD level (spec 4.5 step 3). */
function deviceHugeFault(k: Kernel, vma: Vma, addr: number, level: Level, t: number, i: number, write: boolean): number {
  const dev = vma.device!;
  if (dev.basePfn < 0) return VM_FAULT_FALLBACK;
  const size = level === Level.PUD ? PUD_SIZE : PMD_SIZE;
  const npages = level === Level.PUD ? 262144 : 512;
  const b = alignDown(addr, size);
  if (b < vma.start || b + size > vma.end) return VM_FAULT_FALLBACK;
  const pfn = devicePfn(vma, b);
  if (pfn % npages !== 0 || !k.devicePfnInRange(dev, pfn, npages)) return VM_FAULT_FALLBACK;
  const mkwrite = write && (vma.flags & VM_WRITE) !== 0 && vma.isShared;
  k.pt.set(t, i, pfn, pteBits(vma, vma.pageProtWritable || mkwrite, mkwrite) | E_LEAF | E_SPECIAL);
  if (level === Level.PUD) k.vmstat.pfn_inserts_pud++;
  else k.vmstat.pfn_inserts_pmd++;
  return VM_FAULT_NOPAGE;
}

/** hugetlb_fault: PMD (2 MiB) or PUD (1 GiB) leaves of hugetlb folios. */
function hugetlbFault(k: Kernel, mm: Mm, vma: Vma, addr: number, flags: number): number {
  const file = vma.file!;
  const order = file.folioOrder;
  const level = order === HPAGE_PMD_ORDER ? Level.PMD : Level.PUD;
  const size = PAGE_SIZE * 2 ** order;
  const npages = 2 ** order;
  const haddr = alignDown(addr, size);
  const write = (flags & FAULT_FLAG_WRITE) !== 0;
  const unshare = (flags & FAULT_FLAG_UNSHARE) !== 0;
  const pool = k.pt;
  const p = k.phys;
  const t = ensureTable(pool, mm.pgd, haddr, level);
  if (t < 0) return VM_FAULT_OOM;
  if (t === 0) return VM_FAULT_SIGBUS;
  const i = level === Level.PMD ? pmdIndex(haddr) : pudIndex(haddr);
  const hi = pool.hi(t, i);
  const lo = pool.lo(t, i);
  const idx = vma.pageIndex(haddr);
  if (hi === 0 && lo === 0) {
    if (idx * PAGE_SIZE >= file.size) return VM_FAULT_SIGBUS;
    if (vma.isShared || !vma.anonShared) {
      // Shared mappings and private file mappings start from the page cache;
      // private anonymous hugetlb (anonShared=false, internal file) below.
    }
    if (vma.isShared) {
      const pfn = filePage(k, file, idx);
      if (pfn < 0) return VM_FAULT_OOM;
      const head = p.folioHead(pfn);
      const w = vma.pageProtWritable || (write && (vma.flags & VM_WRITE) !== 0);
      pool.set(t, i, head, pteBits(vma, w, write) | E_LEAF);
      k.rmapAddEntire(mm, head, npages, true);
      if (write) p.orFlags(head, PG_dirty);
      return 0;
    }
    if (k.isInternalHugetlbFile(file)) {
      // Private anonymous hugetlb: a new exclusive anon folio.
      const head = p.allocFolio(order, order === 18 ? 0 : GFP_MOVABLE);
      if (head < 0) return VM_FAULT_OOM;
      prepAnonFolio(k, vma, head, order, haddr);
      p.orFlags(head, PG_hugetlb);
      pool.set(t, i, head, pteBits(vma, write && (vma.flags & VM_WRITE) !== 0, write) | E_LEAF);
      k.rmapAddEntire(mm, head, npages, false);
      return 0;
    }
    // Private mapping of a hugetlbfs file: read maps the cache folio.
    const pfn = filePage(k, file, idx);
    if (pfn < 0) return VM_FAULT_OOM;
    const head = p.folioHead(pfn);
    pool.set(t, i, head, pteBits(vma, false, false) | E_LEAF);
    k.rmapAddEntire(mm, head, npages, true);
    if (!write && !unshare) return 0;
    return hugetlbWp(k, mm, vma, haddr, t, i, level, order, unshare);
  }
  if ((write || unshare) && !(hi & E_WRITE)) {
    if (vma.isShared) {
      if (!unshare) pool.setBits(t, i, hi | E_WRITE | E_DIRTY | E_YOUNG);
      return 0;
    }
    return hugetlbWp(k, mm, vma, haddr, t, i, level, order, unshare);
  }
  pool.setBits(t, i, hi | E_YOUNG | (write ? E_DIRTY : 0));
  return 0;
}

/** hugetlb_wp: reuse an exclusive anon hugetlb folio or copy it. */
function hugetlbWp(k: Kernel, mm: Mm, vma: Vma, haddr: number, t: number, i: number, level: Level, order: number, unshare: boolean): number {
  const pool = k.pt;
  const p = k.phys;
  const hi = pool.hi(t, i);
  const old = pool.lo(t, i);
  const npages = 2 ** order;
  if (p.flags(old) & PG_anon && (p.flags(old) & PG_anon_exclusive || p.refcount(old) === 1)) {
    p.setFlagsRange(old, npages, PG_anon_exclusive, true);
    if (!unshare && vma.flags & VM_WRITE) pool.setBits(t, i, hi | E_WRITE | E_DIRTY | E_YOUNG);
    return 0;
  }
  const head = p.allocFolio(order, order === 18 ? 0 : GFP_MOVABLE);
  if (head < 0) return VM_FAULT_OOM;
  if (p.flags(old) & PG_has_data) for (let j = 0; j < npages; j++) copyPageData(k, old + j, head + j);
  k.withInvalidation(mm, haddr, haddr + PAGE_SIZE * npages, MmuNotifyEvent.CLEAR, () => {
    prepAnonFolio(k, vma, head, order, haddr);
    p.orFlags(head, PG_hugetlb);
    pool.set(t, i, head, pteBits(vma, !unshare && (vma.flags & VM_WRITE) !== 0, !unshare) | E_LEAF);
    k.rmapAddEntire(mm, head, npages, false);
    k.rmapRemoveEntireNow(mm, old, npages);
  });
  k.vmstat.cow_faults++;
  faultInfo.cow = true;
  void level;
  return 0;
}

/**
 * __split_huge_pmd at `addr`: a THP PMD becomes 512 PTEs of its subpages,
 * the huge zero PMD becomes 512 zero-page PTEs, a special leaf is cleared.
 * Emits MMU_NOTIFY_CLEAR over the aligned 2 MiB. Returns false on OOM.
 */
export function splitHugePmd(k: Kernel, mm: Mm, vma: Vma, addr: number, alwaysNotify = false): boolean {
  const pool = k.pt;
  const haddr = alignDown(addr, PMD_SIZE);
  const pmdT = ensureTable(pool, mm.pgd, haddr, Level.PMD);
  if (pmdT <= 0) return pmdT === 0;
  const mi = pmdIndex(haddr);
  const hi = pool.hi(pmdT, mi);
  const pfn = pool.lo(pmdT, mi);
  if (!isPresentLeaf(hi) || !(hi & E_LEAF)) {
    // __split_huge_pmd starts the notifier before it looks at the entry.
    if (alwaysNotify) k.withInvalidation(mm, haddr, haddr + PMD_SIZE, MmuNotifyEvent.CLEAR, () => {});
    return true;
  }
  const p = k.phys;
  if (hi & E_SPECIAL && !p.isHugeZeroPfn(pfn)) {
    k.withInvalidation(mm, haddr, haddr + PMD_SIZE, MmuNotifyEvent.CLEAR, () => pool.clear(pmdT, mi));
    return true;
  }
  const pte = pool.alloc(Level.PTE);
  if (pte < 0) return false;
  k.withInvalidation(mm, haddr, haddr + PMD_SIZE, MmuNotifyEvent.CLEAR, () => {
    const bits = hi & ~E_LEAF;
    if (p.isHugeZeroPfn(pfn)) {
      for (let j = 0; j < HPAGE_PMD_NR; j++) pool.set(pte, j, p.zeroPfn, bits | E_SPECIAL);
    } else {
      for (let j = 0; j < HPAGE_PMD_NR; j++) pool.set(pte, j, pfn + j, bits);
      const head = p.folioHead(pfn);
      // One PMD mapping (one ref) becomes 512 PTE mappings (512 refs).
      p.folioRefAdd(head, HPAGE_PMD_NR);
      k.mapcountAdd(head, HPAGE_PMD_NR);
      k.rmapRemoveEntireNow(mm, head, 0);
      k.vmstat.thp_split_pmd++;
      // Now PTE-mapped, the anon THP is queued for deferred split (once).
      if (p.flags(head) & PG_anon && !(p.flags(head) & PG_deferred_split)) {
        p.orFlags(head, PG_deferred_split);
        k.vmstat.thp_deferred_split_page++;
      }
    }
    pool.set(pmdT, mi, pte, 0x101 /* E_TABLE | E_PRESENT */);
  });
  return true;
}

/** __split_huge_pud: only special (PFN) PUD leaves exist outside hugetlb. */
export function splitHugePud(k: Kernel, mm: Mm, _vma: Vma, addr: number): void {
  const pool = k.pt;
  const haddr = alignDown(addr, PUD_SIZE);
  const t = ensureTable(pool, mm.pgd, haddr, Level.PUD);
  if (t <= 0) return;
  const i = pudIndex(haddr);
  const hi = pool.hi(t, i);
  if (!isPresentLeaf(hi) || !(hi & E_LEAF)) return;
  k.withInvalidation(mm, haddr, haddr + PUD_SIZE, MmuNotifyEvent.CLEAR, () => pool.clear(t, i));
  k.vmstat.thp_split_pud++;
}

export { PG_huge_zero, MemoryType, FAULT_FLAG_REMOTE, FAULT_FLAG_USER };
