/**
 * vmf_insert_pfn_range (spec 4.6): the driver hands over the largest
 * physically contiguous range; the MM picks PUD, PMD or PTE leaves by the
 * "largest fitting leaf" rule (VA and PFN congruent, whole block inside the
 * VMA and the range, THP gate). Entries are special: no refcount, no
 * mapcount, no notifier. Populated slots are left as they are (NOPAGE).
 */
import {
  alignDown,
  HPAGE_PMD_NR,
  HPAGE_PUD_NR,
  Level,
  offsetIn,
  PAGE_SIZE,
  PMD_SIZE,
  PROT_EXEC,
  PROT_READ,
  PROT_WRITE,
  PUD_SIZE,
  VM_EXEC,
  VM_FAULT_NOPAGE,
  VM_FAULT_OOM,
  VM_FAULT_SIGBUS,
  VM_MIXEDMAP,
  VM_PFNMAP,
  VM_READ,
  VM_REMAP_FLAGS,
  VM_WRITE,
} from "./constants.js";
import { Errno, invalid, kernelBug } from "./errors.js";
import { deviceHugeAllowed, pteBits } from "./fault.js";
import type { Kernel } from "./kernel.js";
import type { Mm } from "./mm.js";
import { E_LEAF, E_SPECIAL, E_TABLE, E_WRITE, E_DIRTY, ensureTable, pmdIndex, pteIndex, pudIndex } from "./pagetable.js";
import { isCowMapping, type Vma } from "./vma.js";

export interface InsertRequest {
  addr: number;
  pfn: number;
  nrPages: number;
  mode: "eager" | "fault" | "remap";
  write: boolean;
  /** PROT_* override (PTE leaves only); null = the VMA's vm_page_prot */
  prot: number | null;
}

export interface LeafRun {
  level: Level;
  addr: number;
  pfn: number;
  count: number;
}

export interface InsertResult {
  vmFault: number;
  errno: number;
  leaves: LeafRun[];
  pud: number;
  pmd: number;
  pte: number;
  alreadyPopulated: number;
  warnings: string[];
}

function result(): InsertResult {
  return { vmFault: VM_FAULT_NOPAGE, errno: 0, leaves: [], pud: 0, pmd: 0, pte: 0, alreadyPopulated: 0, warnings: [] };
}

function addLeaf(r: InsertResult, level: Level, addr: number, pfn: number): void {
  const last = r.leaves[r.leaves.length - 1];
  const size = level === Level.PUD ? PUD_SIZE : level === Level.PMD ? PMD_SIZE : PAGE_SIZE;
  if (last !== undefined && last.level === level && last.addr + last.count * size === addr && last.pfn + (last.count * size) / PAGE_SIZE === pfn) {
    last.count++;
  } else {
    r.leaves.push({ level, addr, pfn, count: 1 });
  }
  if (level === Level.PUD) r.pud++;
  else if (level === Level.PMD) r.pmd++;
  else r.pte++;
}

export function insertPfnRange(k: Kernel, mm: Mm, req: InsertRequest): InsertResult {
  const { addr, pfn, mode, write } = req;
  let n = req.nrPages;
  if (!Number.isSafeInteger(addr) || !Number.isSafeInteger(pfn) || !Number.isSafeInteger(n) || addr < 0 || pfn < 0 || n < 0)
    invalid("address, pfn and page count must be non-negative integers");
  if (addr % PAGE_SIZE !== 0) invalid("address is not page aligned");
  if (mode === "fault") {
    if (n > 1) invalid("fault mode inserts the block of one faulting address: nr_pages must be 0 or 1");
    n = 1;
  }
  if (n === 0) invalid("nr_pages is 0");
  if (pfn + n > 2 ** 32) invalid("PFN range beyond the physical address space of the model");
  const r = result();
  const vma = mm.findVma(addr);
  if (vma === undefined) {
    r.vmFault = VM_FAULT_SIGBUS;
    r.errno = Errno.EFAULT;
    return r;
  }
  const kind = vma.flags & (VM_PFNMAP | VM_MIXEDMAP);
  if (kind === 0 || kind === (VM_PFNMAP | VM_MIXEDMAP))
    kernelBug("insert_pfn", "the VMA must have exactly one of VM_PFNMAP and VM_MIXEDMAP");
  if (mode !== "remap" && kind === VM_PFNMAP && isCowMapping(vma.flags))
    kernelBug("insert_pfn", "vmf_insert_pfn into a COW VM_PFNMAP mapping");
  if (kind === VM_MIXEDMAP && mode !== "remap") {
    // vmf_insert_pfn into VM_MIXEDMAP must not get a pfn with a struct page
    // (drivers use vmf_insert_mixed / vm_insert_page for those).
    if (k.phys.anyPfnValid(pfn, n)) kernelBug("vmf_insert_pfn", `VM_MIXEDMAP given a PFN in [${pfn}, ${pfn + n}) that has a struct page`);
  }
  const end = addr + n * PAGE_SIZE;
  if (end > vma.end) {
    r.vmFault = VM_FAULT_SIGBUS;
    r.errno = Errno.EFAULT;
    return r;
  }
  let writable = vma.pageProtWritable || (write && vma.isShared && (vma.flags & VM_WRITE) !== 0);
  let extra = 0;
  if (req.prot !== null) {
    const prot = req.prot;
    if (prot & ~(PROT_READ | PROT_WRITE | PROT_EXEC)) invalid(`unknown prot bits 0x${prot.toString(16)}`);
    const have = (vma.flags & VM_READ ? PROT_READ : 0) | (vma.flags & VM_WRITE ? PROT_WRITE : 0) | (vma.flags & VM_EXEC ? PROT_EXEC : 0);
    if (prot & ~have) invalid("prot grants more than the VMA allows");
    writable = (prot & PROT_WRITE) !== 0 && vma.isShared;
  }
  if (write && writable) extra = E_DIRTY;
  const bits = (pteBits(vma, writable, false) | E_SPECIAL | extra) & (writable ? ~0 : ~E_WRITE);
  const huge = req.prot === null && kind === VM_PFNMAP && deviceHugeAllowed(k, vma);
  if (mode === "remap") return remap(k, mm, vma, addr, pfn, n, bits, r);
  if (mode === "fault") {
    insertBlock(k, mm, vma, addr, pfn, bits, huge, r, true);
    return r;
  }
  let cur = addr;
  let p = pfn;
  while (cur < end) {
    const step = insertBlock(k, mm, vma, cur, p, bits, huge, r, false, end);
    if (step < 0) return r;
    cur += step * PAGE_SIZE;
    p += step;
  }
  return r;
}

// Module-local bindings of what insertBlock uses per leaf: loaders that
// compile ES imports to accessor calls (tsx, vite-node) would otherwise make
// every read of an imported name a getter call.
const LEVEL_PUD = Level.PUD;
const LEVEL_PMD = Level.PMD;
const PUD_BYTES = PUD_SIZE;
const PMD_BYTES = PMD_SIZE;
const PUD_NR = HPAGE_PUD_NR;
const PMD_NR = HPAGE_PMD_NR;

/**
 * Insert the largest leaf that fits at `cur` (eager) or the block holding
 * `cur` (fault mode). Returns the pages advanced, -1 on allocation failure.
 * In eager mode a PMD leaf is followed by the next PMD slots of the same
 * table in one pass (as the PTE branch fills a PTE table), as long as whole
 * 2 MiB blocks fit; each slot gets the same checks as a first one.
 */
function insertBlock(k: Kernel, mm: Mm, vma: Vma, cur: number, p: number, bits: number, huge: boolean, r: InsertResult, faultMode: boolean, end = 0): number {
  const pool = k.pt;
  if (huge) {
    // PUD first: only at a 1 GiB boundary (eager) with a congruent PFN.
    const b = faultMode ? alignDown(cur, PUD_BYTES) : cur;
    const bp = p - (cur - b) / PAGE_SIZE;
    if (offsetIn(b, PUD_BYTES) === 0 && bp % PUD_NR === 0 && b >= vma.start && b + PUD_BYTES <= vma.end && (faultMode || b + PUD_BYTES <= end)) {
      const t = ensureTable(pool, mm.pgd, b, LEVEL_PUD);
      if (t < 0) {
        r.vmFault = VM_FAULT_OOM;
        r.errno = Errno.ENOMEM;
        return -1;
      }
      if (t !== 0) {
        const i = pudIndex(b);
        const hi = pool.hi(t, i);
        if (hi !== 0 || pool.lo(t, i) !== 0) {
          if (!(hi & E_TABLE)) {
            r.alreadyPopulated += PUD_NR;
            return faultMode ? 1 : PUD_NR;
          }
          // a lower table exists: smaller leaves
        } else {
          pool.set(t, i, bp, bits | E_LEAF);
          k.vmstat.pfn_inserts_pud++;
          addLeaf(r, LEVEL_PUD, b, bp);
          return PUD_NR;
        }
      }
    }
    const mb = faultMode ? alignDown(cur, PMD_BYTES) : cur;
    const mbp = p - (cur - mb) / PAGE_SIZE;
    const limit = faultMode ? vma.end : Math.min(end, vma.end);
    if (offsetIn(mb, PMD_BYTES) === 0 && mbp % PMD_NR === 0 && mb >= vma.start && mb + PMD_BYTES <= limit) {
      const t = ensureTable(pool, mm.pgd, mb, LEVEL_PMD);
      if (t < 0) {
        r.vmFault = VM_FAULT_OOM;
        r.errno = Errno.ENOMEM;
        return -1;
      }
      if (t !== 0) {
        // Whole 2 MiB blocks of this PMD table (one table covers one PUD range).
        const i0 = pmdIndex(mb);
        const iEnd = faultMode ? i0 + 1 : Math.min(512, i0 + Math.floor((limit - mb) / PMD_BYTES));
        const words = pool.chunk(t);
        const base = pool.base(t);
        let i = i0;
        let a = mb;
        let q = mbp;
        let inserted = 0;
        for (; i < iEnd; i++, a += PMD_BYTES, q += PMD_NR) {
          const o = base + 2 * i;
          const hi = words[o + 1]!;
          if (hi !== 0 || words[o] !== 0) {
            if (hi & E_TABLE) break; // a lower table exists: smaller leaves
            r.alreadyPopulated += PMD_NR;
            if (faultMode) return 1;
            continue;
          }
          pool.set(t, i, q, bits | E_LEAF);
          inserted++;
          addLeaf(r, LEVEL_PMD, a, q);
        }
        k.vmstat.pfn_inserts_pmd += inserted;
        if (i > i0) return faultMode ? PMD_NR : (i - i0) * PMD_NR;
      }
    }
  }
  // PTE level: fill this PTE table in one pass.
  const t = ensureTable(pool, mm.pgd, cur, Level.PTE);
  if (t < 0) {
    r.vmFault = VM_FAULT_OOM;
    r.errno = Errno.ENOMEM;
    return -1;
  }
  if (t === 0) {
    // A huge leaf above already maps this address: it stays (NOPAGE).
    const span = PMD_SIZE - offsetIn(cur, PMD_SIZE);
    const pages = faultMode ? 1 : Math.min(span, end - cur) / PAGE_SIZE;
    r.alreadyPopulated += pages;
    return pages;
  }
  const stop = faultMode ? cur + PAGE_SIZE : Math.min(end, alignDown(cur, PMD_SIZE) + PMD_SIZE);
  let i = pteIndex(cur);
  let q = p;
  for (let a = cur; a < stop; a += PAGE_SIZE, i++, q++) {
    if (pool.hi(t, i) !== 0 || pool.lo(t, i) !== 0) {
      r.alreadyPopulated++;
      continue;
    }
    pool.set(t, i, q, bits);
    k.vmstat.pfn_inserts_pte++;
    addLeaf(r, Level.PTE, a, q);
  }
  return (stop - cur) / PAGE_SIZE;
}

/** remap_pfn_range: PTE leaves only, every PTE must be none (else KBUG). */
function remap(k: Kernel, mm: Mm, vma: Vma, addr: number, pfn: number, n: number, bits: number, r: InsertResult): InsertResult {
  if (vma.flags & VM_MIXEDMAP) kernelBug("remap_pfn_range", "remap into a VM_MIXEDMAP mapping");
  const end = addr + n * PAGE_SIZE;
  if (isCowMapping(vma.flags) && (addr !== vma.start || end !== vma.end)) {
    r.vmFault = 0;
    r.errno = Errno.EINVAL;
    return r;
  }
  const pool = k.pt;
  for (let a = addr; a < end; a += PAGE_SIZE) {
    const t = ensureTable(pool, mm.pgd, a, Level.PTE);
    if (t === 0) kernelBug("remap_pte_range", `a huge leaf maps 0x${a.toString(16)}`);
    if (t > 0 && (pool.hi(t, pteIndex(a)) !== 0 || pool.lo(t, pteIndex(a)) !== 0))
      kernelBug("remap_pte_range", `PTE at 0x${a.toString(16)} is not none`);
  }
  vma.flags |= VM_REMAP_FLAGS;
  if (isCowMapping(vma.flags)) vma.pgoff = pfn;
  const b = bits & ~E_WRITE | (vma.pageProtWritable ? E_WRITE : 0);
  let q = pfn;
  for (let a = addr; a < end; a += PAGE_SIZE, q++) {
    const t = ensureTable(pool, mm.pgd, a, Level.PTE);
    if (t < 0) {
      r.vmFault = 0;
      r.errno = Errno.ENOMEM;
      return r;
    }
    pool.set(t, pteIndex(a), q, b);
    k.vmstat.pfn_inserts_pte++;
    addLeaf(r, Level.PTE, a, q);
  }
  r.vmFault = 0;
  return r;
}
