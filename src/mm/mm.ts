/**
 * struct mm_struct: the VMA list (sorted, non-overlapping), the page-table
 * root, RSS counters, MMF_* flags, write_protect_seq and the notifier state.
 */
import { MmNotifier } from "./mmu-notifier.js";
import type { Vma } from "./vma.js";

export class Mm {
  /** sorted by start; map_count = vmas.length */
  readonly vmas: Vma[] = [];
  rssAnon = 0;
  rssFile = 0;
  rssShmem = 0;
  rssSwap = 0;
  /** hugetlb pages mapped (hugetlb_usage; not part of RSS) */
  hugetlbPages = 0;
  /** MMF_HAS_PINNED: sticky once any FOLL_PIN call passed validation. */
  hasPinned = false;
  /** MMF_HUGE_ZERO_FOLIO: this mm holds a reference on the huge zero folio. */
  hugeZeroRef = false;
  /** seqcount bumped by fork while it write-protects COW PTEs. */
  writeProtectSeq = 0;
  mmUsers = 1;
  mmCount = 1;
  exited = false;
  readonly notifier = new MmNotifier();
  /** rough mmap_base for top-down unhinted placement */
  mmapBase: number;

  constructor(
    readonly id: number,
    readonly name: string,
    readonly ownerSession: number,
    /** PGD table id */
    readonly pgd: number,
    mmapBase: number,
  ) {
    this.mmapBase = mmapBase;
  }

  get mapCount(): number {
    return this.vmas.length;
  }

  /** Index of the first VMA with end > addr (vmas.length if none). */
  vmaIndexAfter(addr: number): number {
    const v = this.vmas;
    let lo = 0;
    let hi = v.length;
    while (lo < hi) {
      const mid = (lo + hi) >>> 1;
      if (v[mid]!.end <= addr) lo = mid + 1;
      else hi = mid;
    }
    return lo;
  }

  /** find_vma_intersection(addr, addr+1): the VMA containing addr. */
  findVma(addr: number): Vma | undefined {
    const i = this.vmaIndexAfter(addr);
    const v = this.vmas[i];
    return v !== undefined && v.start <= addr ? v : undefined;
  }

  /** VMAs intersecting [start, end), in order. */
  vmasIn(start: number, end: number): Vma[] {
    const out: Vma[] = [];
    for (let i = this.vmaIndexAfter(start); i < this.vmas.length; i++) {
      const v = this.vmas[i]!;
      if (v.start >= end) break;
      out.push(v);
    }
    return out;
  }

  insertVma(v: Vma): void {
    v.mmId = this.id;
    const i = this.vmaIndexAfter(v.start);
    this.vmas.splice(i, 0, v);
  }

  removeVma(v: Vma): void {
    const i = this.vmas.indexOf(v);
    if (i >= 0) this.vmas.splice(i, 1);
  }

  get rssPages(): number {
    return this.rssAnon + this.rssFile + this.rssShmem;
  }
}
