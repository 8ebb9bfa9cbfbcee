/**
 * Driver-side page handling: a driver allocating pages from its dev_pagemap
 * (zone_device_page_init: refcount 1, the driver's reference) and mapping
 * struct pages into a user VMA with vm_insert_page (spec 4.2), as
 * p2pmem_alloc_mmap does for P2PDMA memory.
 *
 * The allocation references a client holds are recorded per session here
 * (DriverPages, one per kernel), declared to the invariant checker as a
 * reference holder, and released all at once when the session ends.
 *
 * Deviations, by design:
 *  - vm_insert_page into a VMA that is neither VM_MIXEDMAP nor a driver
 *    mapping (anon or file VMA) is refused as a kernel bug: the model's
 *    fault paths of those VMAs do not expect driver pages.
 *  - A slot covered by a huge leaf answers -EBUSY (the kernel would fail
 *    to find a PTE table under a huge PMD).
 */
import { Level, PAGE_SIZE, VM_MAYWRITE, VM_MIXEDMAP, VM_PFNMAP } from "./constants.js";
import { Errno, fail, invalid, kernelBug } from "./errors.js";
import { pteBits } from "./fault.js";
import type { Kernel } from "./kernel.js";
import type { Mm } from "./mm.js";
import { E_SPECIAL, ensureTable, pteIndex } from "./pagetable.js";
import { PG_anon, PG_hugetlb, type DevPagemap } from "./physmem.js";
import { isCowMapping } from "./vma.js";

/** Allocation references held by client sessions: pfn -> session. */
export class DriverPages {
  readonly held = new Map<number, number>();

  constructor(private readonly k: Kernel) {
    k.refHolders.push(() => {
      const m = new Map<number, { refs: number; pins: number }>();
      for (const pfn of this.held.keys()) m.set(pfn, { refs: 1, pins: 0 });
      return m;
    });
  }

  /** Pages `session` holds an allocation reference on, ascending. */
  sessionPages(session: number): number[] {
    const out: number[] = [];
    for (const [pfn, s] of this.held) if (s === session) out.push(pfn);
    return out.sort((a, b) => a - b);
  }

  /** Drop the allocation reference of `pfn` (put_page; the page may be freed). */
  drop(pfn: number): void {
    this.held.delete(pfn);
    this.k.phys.folioPut(pfn);
  }
}

const byKernel = new WeakMap<Kernel, DriverPages>();

/** The kernel's DriverPages (created, and declared to the checker, on first use). */
export function driverPages(k: Kernel): DriverPages {
  let d = byKernel.get(k);
  if (d === undefined) {
    d = new DriverPages(k);
    byKernel.set(k, d);
  }
  return d;
}

/** Snapshot support: the kernel's DriverPages if it was ever created. */
export function peekDriverPages(k: Kernel): DriverPages | undefined {
  return byKernel.get(k);
}

/**
 * The driver allocates `n` pages of `pm` for `session` (each refcount 1,
 * the session's reference). All or nothing: -ENOMEM ("exhausted") when the
 * pagemap cannot supply them all.
 */
export function allocDevicePages(k: Kernel, session: number, pm: DevPagemap, n: number): number[] {
  if (!Number.isSafeInteger(n) || n <= 0) invalid(`nr_pages ${n} must be > 0`);
  const d = driverPages(k);
  const out: number[] = [];
  for (let i = 0; i < n; i++) {
    const pfn = k.phys.allocDevicePage(pm);
    if (pfn < 0) {
      for (const p of out) d.drop(p);
      fail(Errno.ENOMEM, `dev_pagemap ${pm.id} cannot supply ${n} pages (${pm.freeCount + out.length} free)`, "exhausted");
    }
    d.held.set(pfn, session);
    out.push(pfn);
  }
  return out;
}

/**
 * The driver frees pages it allocated (put_page of its reference). All or
 * nothing: a page `session` does not hold is a precondition failure.
 */
export function freeDevicePages(k: Kernel, session: number, pfns: readonly number[]): number {
  const d = driverPages(k);
  const seen = new Set<number>();
  for (const pfn of pfns) {
    if (d.held.get(pfn) !== session || seen.has(pfn)) fail(Errno.EINVAL, `session ${session} does not hold an allocation reference on pfn ${pfn}`, "precondition");
    seen.add(pfn);
  }
  for (const pfn of pfns) d.drop(pfn);
  return pfns.length;
}

/** Session end: every allocation reference of `session` is dropped. */
export function releaseSessionDevicePages(k: Kernel, session: number): number {
  const d = byKernel.get(k);
  if (d === undefined) return 0;
  const pages = d.sessionPages(session);
  for (const pfn of pages) d.drop(pfn);
  return pages.length;
}

/** vm_mixed_zeropage_allowed, as far as the model's VMAs can say. */
function mixedZeropageAllowed(vmaFlags: number): boolean {
  return isCowMapping(vmaFlags) || !(vmaFlags & VM_MAYWRITE);
}

export interface VmInsertPageResult {
  /** 0 or -errno (vm_insert_page's return) */
  ret: number;
  /** the caller's allocation reference was handed to the mapping */
  allocationTransferred: boolean;
}

/**
 * vm_insert_page(vma, addr, page) (spec 4.2): a normal, refcounted PTE
 * (folio ref +1, mapcount +1, MM_FILEPAGES) for a struct page; the zero page
 * as a special PTE where allowed. -EFAULT outside a VMA, -EINVAL for anon,
 * hugetlb or unreferenced pages, -EBUSY if the slot is populated.
 *
 * With `session`, a page that session holds an allocation reference on has
 * that reference dropped after the insert (p2pmem_alloc_mmap's put_page), so
 * the mapping holds the only one.
 */
export function vmInsertPage(k: Kernel, mm: Mm, addr: number, pfn: number, session = 0): VmInsertPageResult {
  if (!Number.isSafeInteger(addr) || addr < 0 || addr % PAGE_SIZE !== 0) invalid(`addr ${addr} is not a page-aligned address`);
  if (!Number.isSafeInteger(pfn) || pfn < 0) invalid(`pfn ${pfn} out of range`);
  const p = k.phys;
  const res: VmInsertPageResult = { ret: 0, allocationTransferred: false };
  const vma = mm.findVma(addr);
  if (vma === undefined) return { ...res, ret: -Errno.EFAULT };
  if (!(vma.flags & VM_MIXEDMAP)) {
    if (vma.flags & VM_PFNMAP) kernelBug("vm_insert_page", "VM_PFNMAP vma");
    if (vma.device === null) kernelBug("vm_insert_page", "vma is not a driver mapping (mmsim maps driver pages only into device VMAs)");
  }
  if (!p.pfnValid(pfn)) return { ...res, ret: -Errno.EINVAL };
  const zero = pfn === p.zeroPfn;
  if (zero) {
    if (!mixedZeropageAllowed(vma.flags)) return { ...res, ret: -Errno.EINVAL };
  } else {
    const head = p.folioHead(pfn);
    if (p.refcount(head) <= 0 || p.flags(head) & (PG_anon | PG_hugetlb)) return { ...res, ret: -Errno.EINVAL };
  }
  const t = ensureTable(k.pt, mm.pgd, addr, Level.PTE);
  if (t === 0) return { ...res, ret: -Errno.EBUSY };
  if (t < 0) return { ...res, ret: -Errno.ENOMEM };
  const i = pteIndex(addr);
  if (k.pt.hi(t, i) !== 0 || k.pt.lo(t, i) !== 0) return { ...res, ret: -Errno.EBUSY };
  if (!(vma.flags & VM_MIXEDMAP)) vma.flags |= VM_MIXEDMAP;
  if (zero) {
    k.pt.set(t, i, pfn, pteBits(vma, false, false) | E_SPECIAL);
    return res;
  }
  const head = p.folioHead(pfn);
  k.pt.set(t, i, pfn, pteBits(vma, vma.pageProtWritable, false));
  k.rmapAddPtes(mm, head, 1);
  if (session !== 0) {
    const d = byKernel.get(k);
    if (d !== undefined && d.held.get(pfn) === session) {
      d.drop(pfn);
      res.allocationTransferred = true;
    }
  }
  return res;
}
