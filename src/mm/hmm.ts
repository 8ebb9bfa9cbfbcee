/**
 * hmm_range_fault (mm/hmm.c, spec section 6): snapshot the CPU page table of
 * a range for a device, faulting pages in on request.
 *
 * Encoding (6.16+, BITS_PER_LONG 64). Every output entry is the kernel's
 * unsigned long, held here as two 32-bit words (low, high) in a Uint32Array
 * so that no BigInt is made per page; on the wire it is a little-endian
 * uint64. All flag bits live in the high word:
 *
 *   bit 63 HMM_PFN_VALID  (hi 0x80000000)   out; as input HMM_PFN_REQ_FAULT
 *   bit 62 HMM_PFN_WRITE  (hi 0x40000000)   out; as input HMM_PFN_REQ_WRITE
 *   bit 61 HMM_PFN_ERROR  (hi 0x20000000)   out
 *   bits 60/59/58 DMA_MAPPED / P2PDMA / P2PDMA_BUS: sticky, input -> output
 *   bits 53..57 map order (hi bits 21..25)
 *   bits 0..52 pfn (PFNs are below 2^32 in this model: the low word)
 *
 * Vocabulary as in the rest of src/mm: [start, end) byte ranges, `last` is
 * the first address whose entry still holds its input (hmm_vma_walk.last).
 *
 * The walk is one function per level (range -> VMA -> PUD -> PMD -> PTE). A
 * PMD or PUD leaf is handled as one block: in compact mode it becomes one
 * output run without any per-page work; in per-page mode its pages are
 * filled in one typed-array loop.
 */
import {
  alignDown,
  FAULT_FLAG_REMOTE,
  FAULT_FLAG_WRITE,
  HPAGE_PMD_ORDER,
  HPAGE_PUD_ORDER,
  MemoryType,
  offsetIn,
  PAGE_SIZE,
  PMD_SIZE,
  PUD_SIZE,
  VM_FAULT_ERROR,
  VM_IO,
  VM_PFNMAP,
  VM_READ,
  VM_WRITE,
} from "./constants.js";
import { Errno } from "./errors.js";
import { handleMmFault } from "./fault.js";
import type { Kernel } from "./kernel.js";
import type { Mm } from "./mm.js";
import type { IntervalSub } from "./mmu-notifier.js";
import {
  E_LEAF,
  E_PRESENT,
  E_PROTNONE,
  E_SPECIAL,
  E_TABLE,
  E_WRITE,
  PTE_MARKER_UFFD_WP,
  SwpKind,
  pmdIndex,
  pudIndex,
  pgdIndex,
  swpKind,
} from "./pagetable.js";
import { keepShape, shapesTick } from "./shapes.js";
import type { Vma } from "./vma.js";

// High-word flag bits of an HMM pfn entry.
export const HMM_PFN_VALID = 0x8000_0000;
export const HMM_PFN_WRITE = 0x4000_0000;
export const HMM_PFN_ERROR = 0x2000_0000;
export const HMM_PFN_DMA_MAPPED = 0x1000_0000;
export const HMM_PFN_P2PDMA = 0x0800_0000;
export const HMM_PFN_P2PDMA_BUS = 0x0400_0000;
/** HMM_PFN_INOUT_FLAGS: preserved from input to output. */
export const HMM_PFN_STICKY = HMM_PFN_DMA_MAPPED | HMM_PFN_P2PDMA | HMM_PFN_P2PDMA_BUS;
export const HMM_PFN_REQ_FAULT = HMM_PFN_VALID;
export const HMM_PFN_REQ_WRITE = HMM_PFN_WRITE;
/** HMM_PFN_ORDER_SHIFT = 53, i.e. bit 21 of the high word. */
export const HMM_PFN_ORDER_SHIFT_HI = 21;
export const HMM_PFN_ORDER_MASK_HI = 0x1f << HMM_PFN_ORDER_SHIFT_HI;
/** HMM_PFN_FLAGS = ~((1 << 53) - 1): every bit of the high word above the pfn. */
export const HMM_PFN_FLAGS_HI = 0xffe0_0000;

const NEED_FAULT = 1;
const NEED_WRITE_FAULT = 2;
const NEED_ALL = NEED_FAULT | NEED_WRITE_FAULT;
/** The walk's internal "fault done or migration seen, restart at last" (-EBUSY). */
const RESTART = 1;

export function hmmPfnOrder(hi: number): number {
  return (hi & HMM_PFN_ORDER_MASK_HI) >>> HMM_PFN_ORDER_SHIFT_HI;
}

function orderBits(order: number): number {
  return order << HMM_PFN_ORDER_SHIFT_HI;
}

/** One run of the compact output: `nrPages` pages from `addr`, all with the same flags. */
export interface HmmRun {
  addr: number;
  nrPages: number;
  /** PFN of the first page; page i maps pfn + i, or pfn itself when samePfn. */
  pfn: number;
  /** high word of each entry: VALID/WRITE/ERROR and the order field. */
  flags: number;
  order: number;
  /** every page maps the same PFN (the shared zero page). */
  samePfn: boolean;
}

export interface HmmRange {
  notifier: IntervalSub;
  /** mmu_interval_read_begin() value the caller obtained. */
  notifierSeq: number;
  start: number;
  end: number;
  /**
   * Per-page mode: two words per page, input request flags (and sticky bits)
   * in, outputs out. null in compact mode.
   */
  hmmPfns: Uint32Array | null;
  /** compact mode: runs are appended here (hmmPfns must be null). */
  runs: HmmRun[] | null;
  /** high word of default_flags */
  defaultFlags: number;
  /** high word of pfn_flags_mask */
  pfnFlagsMask: number;
  /** dev_private_owner cookie; 0 matches no pagemap. */
  devPrivateOwner: number;
}

export interface HmmResult {
  /** 0 or a negative errno: -EBUSY, -EFAULT, -EPERM, -EINVAL. */
  ret: number;
  /** walks made (1 + restarts after faults). */
  walks: number;
  /** handle_mm_fault calls made. */
  faults: number;
  /** first address whose entry still holds its input (range end on success). */
  last: number;
}

/** A walk that makes no progress this many times in a row gives up with -EFAULT. */
const MAX_RESTARTS_IN_PLACE = 32;

/**
 * hmm_range_fault. The caller holds the mm (mmap read lock) and got
 * notifierSeq from read_begin; -EBUSY means the sequence changed before a
 * (re)walk and the caller must start again from read_begin.
 */
export function hmmRangeFault(k: Kernel, mm: Mm, range: HmmRange): HmmResult {
  const w = new HmmWalk(k, mm, range);
  const res: HmmResult = { ret: 0, walks: 0, faults: 0, last: range.start };
  if (range.start >= range.end) {
    res.ret = -Errno.EINVAL;
    return res;
  }
  let stuck = 0;
  for (;;) {
    // mmu_interval_check_retry before every (re)walk.
    if (range.notifier.seq !== range.notifierSeq) {
      res.ret = -Errno.EBUSY;
      break;
    }
    const from = w.last;
    res.walks++;
    const r = w.walkRange(w.last, range.end);
    if (r !== RESTART) {
      res.ret = r;
      if (r === 0) w.last = range.end;
      break;
    }
    stuck = w.last === from ? stuck + 1 : 0;
    if (stuck >= MAX_RESTARTS_IN_PLACE) {
      res.ret = -Errno.EFAULT;
      break;
    }
  }
  res.faults = w.faults;
  res.last = w.last;
  return res;
}

class HmmWalk {
  last: number;
  faults = 0;
  private readonly pfns: Uint32Array | null;
  /** (default_flags | pfn_flags_mask) asks for faults at all */
  private readonly mayFault: boolean;

  constructor(
    private readonly k: Kernel,
    private readonly mm: Mm,
    private readonly r: HmmRange,
  ) {
    this.last = r.start;
    this.pfns = r.hmmPfns;
    this.mayFault = ((r.defaultFlags | r.pfnFlagsMask) & HMM_PFN_REQ_FAULT) !== 0;
    shapesTick();
  }

  // ------------------------------------------------------------- requests

  /** hmm_pte_need_fault for page index i. */
  private needFault(i: number, cpu: number): number {
    const r = this.r;
    const input = this.pfns === null ? 0 : this.pfns[2 * i + 1]!;
    const req = (input & r.pfnFlagsMask) | r.defaultFlags;
    if (!(req & HMM_PFN_REQ_FAULT)) return 0;
    if (req & HMM_PFN_REQ_WRITE && !(cpu & HMM_PFN_WRITE)) return NEED_ALL;
    if (!(cpu & HMM_PFN_VALID)) return NEED_FAULT;
    return 0;
  }

  /** hmm_range_need_fault over [addr, end). */
  private rangeNeedFault(addr: number, end: number, cpu: number): number {
    if (!this.mayFault) return 0;
    const i0 = (addr - this.r.start) / PAGE_SIZE;
    // Without per-page input every page asks the same thing.
    if (this.pfns === null || this.r.pfnFlagsMask === 0) return this.needFault(i0, cpu);
    const n = (end - addr) / PAGE_SIZE;
    let need = 0;
    for (let j = 0; j < n; j++) {
      need |= this.needFault(i0 + j, cpu);
      if (need === NEED_ALL) break;
    }
    return need;
  }

  // --------------------------------------------------------------- output

  /**
   * Fill [addr, addr + n pages): entry j = (pfn + j * stride) | flags, the
   * sticky input bits kept.
   */
  private fill(addr: number, n: number, pfn: number, stride: 0 | 1, flags: number): void {
    const i0 = (addr - this.r.start) / PAGE_SIZE;
    const a = this.pfns;
    if (a !== null) {
      if (stride === 1) {
        for (let j = 0, o = 2 * i0; j < n; j++, o += 2) {
          a[o] = pfn + j;
          a[o + 1] = (a[o + 1]! & HMM_PFN_STICKY) | flags;
        }
      } else {
        for (let j = 0, o = 2 * i0; j < n; j++, o += 2) {
          a[o] = pfn;
          a[o + 1] = (a[o + 1]! & HMM_PFN_STICKY) | flags;
        }
      }
      return;
    }
    const runs = this.r.runs!;
    const order = hmmPfnOrder(flags);
    const samePfn = stride === 0 && (flags & HMM_PFN_VALID) !== 0;
    const prev = runs[runs.length - 1];
    if (prev !== undefined && prev.addr + prev.nrPages * PAGE_SIZE === addr && prev.flags === flags >>> 0) {
      const valid = (flags & HMM_PFN_VALID) !== 0;
      const joins = !valid || (samePfn ? prev.samePfn && prev.pfn === pfn : !prev.samePfn && prev.pfn + prev.nrPages === pfn);
      if (joins) {
        prev.nrPages += n;
        return;
      }
    }
    runs.push({ addr, nrPages: n, pfn: (flags & HMM_PFN_VALID) !== 0 || pfn !== 0 ? pfn : 0, flags: flags >>> 0, order, samePfn });
  }

  // ---------------------------------------------------------------- walk

  /** walk_page_range over [from, to): VMAs and the holes between them. */
  walkRange(from: number, to: number): number {
    const mm = this.mm;
    let addr = from;
    while (addr < to) {
      const v = mm.vmas[mm.vmaIndexAfter(addr)];
      if (v === undefined || v.start >= to) return this.holeNoVma(addr, to);
      if (v.start > addr) {
        const r = this.holeNoVma(addr, v.start);
        if (r !== 0) return r;
        addr = v.start;
      }
      const end = Math.min(to, v.end);
      const r = this.walkVma(v, addr, end);
      if (r !== 0) return r;
      addr = end;
    }
    return 0;
  }

  /** pte_hole with walk->vma == NULL: outside any VMA. */
  private holeNoVma(addr: number, end: number): number {
    if (this.rangeNeedFault(addr, end, 0)) return -Errno.EFAULT;
    this.fill(addr, (end - addr) / PAGE_SIZE, 0, 0, HMM_PFN_ERROR);
    return 0;
  }

  /** hmm_vma_walk_test, then the page-table walk of one VMA. */
  private walkVma(v: Vma, addr: number, end: number): number {
    if (v.flags & (VM_IO | VM_PFNMAP) || !(v.flags & VM_READ)) {
      // No struct pages, or no read access: ERROR for the whole VMA part.
      if (this.rangeNeedFault(addr, end, 0)) return -Errno.EFAULT;
      this.fill(addr, (end - addr) / PAGE_SIZE, 0, 0, HMM_PFN_ERROR);
      return 0;
    }
    if (v.isHugetlb) return this.walkHugetlb(v, addr, end);
    const pool = this.k.pt;
    while (addr < end) {
      const nextPgd = (Math.floor(addr / 2 ** 39) + 1) * 2 ** 39;
      const gi = pgdIndex(addr);
      if (!(pool.hi(this.mm.pgd, gi) & E_TABLE)) {
        const e = Math.min(end, nextPgd);
        const r = this.hole(v, addr, e);
        if (r !== 0) return r;
        addr = e;
        continue;
      }
      const pudT = pool.lo(this.mm.pgd, gi);
      const stop = Math.min(end, nextPgd);
      while (addr < stop) {
        const e = Math.min(stop, (Math.floor(addr / PUD_SIZE) + 1) * PUD_SIZE);
        const r = this.walkPud(v, pudT, addr, e);
        if (r !== 0) return r;
        addr = e;
      }
    }
    return 0;
  }

  /** One PUD slot, [addr, end) inside it. */
  private walkPud(v: Vma, pudT: number, addr: number, end: number): number {
    const pool = this.k.pt;
    const ui = pudIndex(addr);
    const hi = pool.hi(pudT, ui);
    const lo = pool.lo(pudT, ui);
    if (hi === 0 && lo === 0) return this.hole(v, addr, end);
    if (!(hi & E_TABLE)) {
      // A PUD leaf, as one block (pud_to_hmm_pfn_flags: present -> VALID).
      if (!(hi & E_PRESENT)) return this.badHuge(addr, end);
      const cpu = (HMM_PFN_VALID | (hi & E_WRITE ? HMM_PFN_WRITE : 0) | orderBits(HPAGE_PUD_ORDER)) >>> 0;
      const need = this.rangeNeedFault(addr, end, cpu);
      if (need) return this.fault(v, addr, end, need);
      this.fill(addr, (end - addr) / PAGE_SIZE, lo + offsetIn(addr, PUD_SIZE) / PAGE_SIZE, 1, cpu);
      return 0;
    }
    const pmdT = lo;
    while (addr < end) {
      const e = Math.min(end, (Math.floor(addr / PMD_SIZE) + 1) * PMD_SIZE);
      const r = this.walkPmd(v, pmdT, addr, e);
      if (r !== 0) return r;
      addr = e;
    }
    return 0;
  }

  /** hmm_vma_walk_pmd: one PMD slot, [addr, end) inside it. */
  private walkPmd(v: Vma, pmdT: number, addr: number, end: number): number {
    const pool = this.k.pt;
    const mi = pmdIndex(addr);
    const hi = pool.hi(pmdT, mi);
    const lo = pool.lo(pmdT, mi);
    if (hi === 0 && lo === 0) return this.hole(v, addr, end);
    if (!(hi & E_TABLE)) {
      if (!(hi & E_PRESENT) || !(hi & E_LEAF)) return this.badHuge(addr, end);
      // hmm_vma_handle_pmd: any present PMD leaf, no special check.
      const cpu = hi & E_PROTNONE ? 0 : (HMM_PFN_VALID | (hi & E_WRITE ? HMM_PFN_WRITE : 0) | orderBits(HPAGE_PMD_ORDER)) >>> 0;
      const need = this.rangeNeedFault(addr, end, cpu);
      if (need) return this.fault(v, addr, end, need);
      this.fill(addr, (end - addr) / PAGE_SIZE, lo + offsetIn(addr, PMD_SIZE) / PAGE_SIZE, 1, cpu);
      return 0;
    }
    return this.walkPtes(v, lo, addr, end);
  }

  /** A non-present PMD/PUD leaf of a kind HMM does not know: ERROR / -EFAULT. */
  private badHuge(addr: number, end: number): number {
    if (this.rangeNeedFault(addr, end, 0)) return -Errno.EFAULT;
    this.fill(addr, (end - addr) / PAGE_SIZE, 0, 0, HMM_PFN_ERROR);
    return 0;
  }

  /** hmm_vma_walk_hole inside a VMA: none entries at some level. */
  private hole(v: Vma, addr: number, end: number): number {
    const need = this.rangeNeedFault(addr, end, 0);
    if (need) return this.fault(v, addr, end, need);
    this.fill(addr, (end - addr) / PAGE_SIZE, 0, 0, 0);
    return 0;
  }

  /** hmm_vma_handle_pte for every PTE of [addr, end) in one PTE table. */
  private walkPtes(v: Vma, pteT: number, addr: number, end: number): number {
    const k = this.k;
    const pool = k.pt;
    const c = pool.chunk(pteT);
    const b = pool.base(pteT);
    const zero = k.phys.zeroPfn;
    let j = Math.floor(addr / PAGE_SIZE) & 511;
    for (; addr < end; addr += PAGE_SIZE, j++) {
      const lo = c[b + 2 * j]!;
      const hi = c[b + 2 * j + 1]!;
      const i = (addr - this.r.start) / PAGE_SIZE;
      if ((lo === 0 && hi === 0) || (swpKind(hi) === SwpKind.MARKER && !(hi & E_PRESENT) && lo === PTE_MARKER_UFFD_WP)) {
        const need = this.mayFault ? this.needFault(i, 0) : 0;
        if (need) return this.fault(v, addr, end, need);
        this.fill(addr, 1, 0, 0, 0);
        continue;
      }
      if (!(hi & E_PRESENT)) {
        const kind = swpKind(hi);
        if (kind === SwpKind.DEVICE_PRIVATE_READ || kind === SwpKind.DEVICE_PRIVATE_WRITE) {
          const pm = k.phys.pagemapOf(lo);
          if (pm !== null && pm.type === MemoryType.DEVICE_PRIVATE && pm.owner !== 0 && pm.owner === this.r.devPrivateOwner) {
            // Never fault in the caller's own device memory: report its PFN.
            this.fill(addr, 1, lo, 1, kind === SwpKind.DEVICE_PRIVATE_WRITE ? HMM_PFN_VALID | HMM_PFN_WRITE : HMM_PFN_VALID);
            continue;
          }
        }
        const need = this.mayFault ? this.needFault(i, 0) : 0;
        if (!need) {
          this.fill(addr, 1, 0, 0, 0);
          continue;
        }
        switch (kind) {
          case SwpKind.SWAP:
          case SwpKind.DEVICE_PRIVATE_READ:
          case SwpKind.DEVICE_PRIVATE_WRITE:
          case SwpKind.DEVICE_EXCLUSIVE:
            return this.fault(v, addr, end, need);
          case SwpKind.MIGRATION_READ:
          case SwpKind.MIGRATION_READ_EXCLUSIVE:
          case SwpKind.MIGRATION_WRITE:
            // migration_entry_wait, then restart here.
            this.last = addr;
            return RESTART;
          default:
            // hwpoison, guard and poison markers.
            return -Errno.EFAULT;
        }
      }
      const cpu = hi & E_PROTNONE ? 0 : hi & E_WRITE ? HMM_PFN_VALID | HMM_PFN_WRITE : HMM_PFN_VALID;
      const need = this.mayFault ? this.needFault(i, cpu) : 0;
      if (need) return this.fault(v, addr, end, need);
      if (hi & E_SPECIAL && lo !== zero) {
        if (this.mayFault && this.needFault(i, 0)) return -Errno.EFAULT;
        this.fill(addr, 1, 0, 0, HMM_PFN_ERROR);
        continue;
      }
      this.fill(addr, 1, lo, lo === zero ? 0 : 1, cpu);
    }
    return 0;
  }

  /** hmm_vma_walk_hugetlb_entry per huge page (request of the first page only). */
  private walkHugetlb(v: Vma, addr: number, end: number): number {
    const k = this.k;
    const size = v.file!.hugePageSize;
    const order = v.file!.folioOrder;
    while (addr < end) {
      const h = alignDown(addr, size);
      const e = Math.min(end, h + size);
      const leaf = hugetlbEntry(k, this.mm, h, size);
      const hi = leaf.hi;
      const present = hi & E_PRESENT && !(hi & E_PROTNONE);
      const cpu = ((present ? (hi & E_WRITE ? HMM_PFN_VALID | HMM_PFN_WRITE : HMM_PFN_VALID) : 0) | orderBits(order)) >>> 0;
      const need = this.mayFault ? this.needFault((addr - this.r.start) / PAGE_SIZE, cpu) : 0;
      if (need) return this.fault(v, addr, e, need);
      this.fill(addr, (e - addr) / PAGE_SIZE, leaf.lo + (addr - h) / PAGE_SIZE, 1, cpu);
      addr = e;
    }
    return 0;
  }

  /**
   * hmm_vma_fault: fault every page of [addr, end) (FAULT_FLAG_REMOTE, plus
   * WRITE when asked), then restart the walk at addr.
   */
  private fault(v: Vma, addr: number, end: number, need: number): number {
    this.last = addr;
    let flags = FAULT_FLAG_REMOTE;
    if (need & NEED_WRITE_FAULT) {
      if (!(v.flags & VM_WRITE)) return -Errno.EPERM;
      flags |= FAULT_FLAG_WRITE;
    }
    for (let a = addr; a < end; a += PAGE_SIZE) {
      this.faults++;
      if (handleMmFault(this.k, this.mm, v, a, flags) & VM_FAULT_ERROR) return -Errno.EFAULT;
    }
    return RESTART;
  }
}
keepShape(() => {
  const range = { start: 0, end: 0, hmmPfns: null, runs: null, defaultFlags: 0, pfnFlagsMask: 0, devPrivateOwner: 0 } as unknown as HmmRange;
  return new HmmWalk({} as Kernel, {} as Mm, range);
});

/** The PMD or PUD entry of a hugetlb page at `h` (none if no table). */
function hugetlbEntry(k: Kernel, mm: Mm, h: number, size: number): { lo: number; hi: number } {
  const pool = k.pt;
  const gi = pgdIndex(h);
  if (!(pool.hi(mm.pgd, gi) & E_TABLE)) return { lo: 0, hi: 0 };
  const pudT = pool.lo(mm.pgd, gi);
  const ui = pudIndex(h);
  const uhi = pool.hi(pudT, ui);
  if (size === PUD_SIZE) return { lo: pool.lo(pudT, ui), hi: uhi };
  if (!(uhi & E_TABLE)) return { lo: 0, hi: 0 };
  const pmdT = pool.lo(pudT, ui);
  const mi = pmdIndex(h);
  return { lo: pool.lo(pmdT, mi), hi: pool.hi(pmdT, mi) };
}

/** Encode per-page output as little-endian uint64s (the wire form). */
export function hmmPfnsToBytes(a: Uint32Array): Uint8Array {
  // Uint32Array is host-endian; every supported host is little-endian.
  return new Uint8Array(a.buffer, a.byteOffset, a.byteLength);
}

/** Decode little-endian uint64 entries into words (a copy, so outputs can be written). */
export function hmmPfnsFromBytes(b: Uint8Array, npages: number): Uint32Array {
  const out = new Uint32Array(2 * npages);
  new Uint8Array(out.buffer).set(b.subarray(0, Math.min(b.length, 8 * npages)));
  return out;
}

export { HPAGE_PMD_ORDER, HPAGE_PUD_ORDER };

// ------------------------------------------------------- notifier helpers

const notifierIds = new WeakMap<Kernel, { next: number }>();

/** Daemon-wide interval notifier ids (client notifiers, mirrors, snapshots). */
export function allocNotifierId(k: Kernel): number {
  let s = notifierIds.get(k);
  if (s === undefined) {
    s = { next: 1 };
    notifierIds.set(k, s);
  }
  return s.next++;
}

/** Snapshot support: the next notifier id (undefined: none allocated yet). */
export function peekNotifierIds(k: Kernel): number | undefined {
  return notifierIds.get(k)?.next;
}

/** Snapshot restore: notifier ids continue from `next`. */
export function adoptNotifierIds(k: Kernel, next: number): void {
  notifierIds.set(k, { next });
}

/**
 * mmu_interval_read_begin: sleeps while an invalidation that hit `sub` is
 * in flight (sub.seq == seq, odd), then returns sub.seq.
 */
export async function mmuIntervalReadBegin(mm: Mm, sub: IntervalSub): Promise<number> {
  for (;;) {
    const s = mm.notifier.tryReadBegin(sub);
    if (s !== undefined) return s;
    await mm.notifier.waitSeqChange();
  }
}
