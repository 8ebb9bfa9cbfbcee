/**
 * A follow_pfnmap_start-style walk for DMA-mapping a VM_PFNMAP range, as
 * vfio/type1 does since "Use mapping page mask for pfnmaps" (A10): each step
 * walks from the PGD to the leaf governing the address and takes the whole
 * rest of that leaf (the level's address mask), so a PUD leaf is one step.
 * With PTE leaves the same walk takes one step per 4 KiB page, which is the
 * pre-patch behaviour the W6 reference measures.
 *
 * Contiguous PFNs merge into runs (what the IOMMU would map in one go).
 */
import { Level, PAGE_SIZE } from "../../src/mm/constants.js";
import type { Kernel } from "../../src/mm/kernel.js";
import type { Mm } from "../../src/mm/mm.js";
import { isPresentLeaf, levelSize, walk, WalkCursor } from "../../src/mm/pagetable.js";

export interface PfnmapWalk {
  /** walk steps (follow_pfnmap_start calls) */
  iterations: number;
  /** physically contiguous runs */
  runs: number;
  pages: number;
  firstPfn: number;
}

const cursor = new WalkCursor();

/** Walk [start, end); throws if an address has no present leaf (vfio: -EFAULT). */
export function followPfnmapRange(k: Kernel, mm: Mm, start: number, end: number): PfnmapWalk {
  const pool = k.pt;
  let iterations = 0;
  let runs = 0;
  let pages = 0;
  let firstPfn = -1;
  let nextPfn = -1;
  for (let addr = start; addr < end; ) {
    walk(pool, mm.pgd, addr, cursor);
    if (cursor.level === Level.PGD || !isPresentLeaf(cursor.hi)) throw new Error(`no PFN mapped at 0x${addr.toString(16)}`);
    const size = levelSize(cursor.level);
    const off = addr % size;
    const pfn = cursor.lo + off / PAGE_SIZE;
    const stop = Math.min(end, addr - off + size);
    const n = (stop - addr) / PAGE_SIZE;
    if (pfn !== nextPfn) runs++;
    if (firstPfn < 0) firstPfn = pfn;
    nextPfn = pfn + n;
    pages += n;
    iterations++;
    addr = stop;
  }
  return { iterations, runs, pages, firstPfn };
}
