/**
 * VMAs (struct vm_area_struct), their flag predicates, and file objects
 * (shmem/memfd, hugetlbfs, dirty-tracked "ext4-like" files, fsdax files)
 * with a page cache indexed by file page offset.
 */
import {
  HPAGE_PMD_ORDER,
  HPAGE_PUD_ORDER,
  PAGE_SIZE,
  VM_HUGETLB,
  VM_IO,
  VM_MAYSHARE,
  VM_MAYWRITE,
  VM_MIXEDMAP,
  VM_PFNMAP,
  VM_SHARED,
  VM_SPECIAL,
  VM_WRITE,
} from "./constants.js";

export enum FileKind {
  SHMEM = 1, // tmpfs / memfd / MAP_SHARED|MAP_ANONYMOUS
  HUGETLB = 2, // hugetlbfs
  DIRTY_TRACKED = 3, // ext4/xfs/btrfs-like: needs writenotify, page_mkwrite
  FSDAX = 4, // a DAX file: pages are MEMORY_DEVICE_FS_DAX
}

/**
 * Page cache: file page index -> PFN. One slot per folio (as the kernel's
 * multi-index xarray entries): a 1 GiB hugetlb folio is one slot, not
 * 262,144. Slots live in 512-entry chunks and hold the head PFN + 1
 * (0 = none). `order` is the file's folio order; ranges are folio aligned.
 */
export class PageCache {
  private readonly chunks = new Map<number, Uint32Array>();
  /** pages cached (not slots) */
  pages = 0;
  constructor(readonly order: number) {}

  get(index: number): number {
    const slot = Math.floor(index / 2 ** this.order);
    const c = this.chunks.get(Math.floor(slot / 512));
    if (c === undefined) return -1;
    const v = c[slot % 512]!;
    return v === 0 ? -1 : v - 1 + (index - slot * 2 ** this.order);
  }

  /** Record the folios of `n` pages from `index` (folio aligned) at `pfn`. */
  setRange(index: number, pfn: number, n: number): void {
    const size = 2 ** this.order;
    for (let k = 0; k < n; k += size) {
      const slot = (index + k) / size;
      const ci = Math.floor(slot / 512);
      let c = this.chunks.get(ci);
      if (c === undefined) {
        c = new Uint32Array(512);
        this.chunks.set(ci, c);
      }
      if (c[slot % 512] === 0) this.pages += size;
      c[slot % 512] = pfn + k + 1;
    }
  }

  clearRange(index: number, n: number): void {
    const size = 2 ** this.order;
    for (let k = 0; k < n; k += size) {
      const slot = (index + k) / size;
      const ci = Math.floor(slot / 512);
      const c = this.chunks.get(ci);
      if (c === undefined || c[slot % 512] === 0) continue;
      c[slot % 512] = 0;
      this.pages -= size;
      if (c.every((v) => v === 0)) this.chunks.delete(ci);
    }
  }

  /** Each distinct folio head cached in [from, to) once, in index order. */
  *folios(from: number, to: number, headOf: (pfn: number) => number): Generator<[number, number]> {
    const size = 2 ** this.order;
    let last = -1;
    const keys = [...this.chunks.keys()].sort((a, b) => a - b);
    for (const ci of keys) {
      const c = this.chunks.get(ci)!;
      for (let j = 0; j < 512; j++) {
        const idx = (ci * 512 + j) * size;
        if (idx + size <= from || idx >= to || c[j] === 0) continue;
        const head = headOf(c[j]! - 1);
        if (head !== last) {
          last = head;
          yield [idx, head];
        }
      }
    }
  }
}

export class FileObject {
  readonly cache: PageCache;
  /** VMAs mapping this file (for rmap walks). */
  readonly vmas = new Set<Vma>();
  /** Open references: the creator's handle plus each mapping. */
  refs = 1;
  /** hidden file of a MAP_ANONYMOUS mapping (shmem or private hugetlb) */
  anonymous = false;
  constructor(
    readonly id: number,
    readonly name: string,
    readonly kind: FileKind,
    public size: number,
    /** folio order of the file's pages: 0, or 9/18 for hugetlbfs. */
    readonly folioOrder: number,
    readonly ownerSession: number,
    /** pagemap providing the pages of an fsdax file. */
    readonly daxPagemap: number = 0,
  ) {
    this.cache = new PageCache(folioOrder);
  }
  get needsDirtyTracking(): boolean {
    return this.kind === FileKind.DIRTY_TRACKED;
  }
  get hugePageSize(): number {
    return PAGE_SIZE * 2 ** this.folioOrder;
  }
}

export function hugetlbOrderForSize(bytes: number): number {
  if (bytes === 2 ** 21) return HPAGE_PMD_ORDER;
  if (bytes === 2 ** 30) return HPAGE_PUD_ORDER;
  return -1;
}

/** An anon_vma family: the VMAs whose page tables may map its anon folios. */
export class AnonVma {
  readonly vmas = new Set<Vma>();
  constructor(readonly id: number) {}
}

/** A driver mapping (VM_PFNMAP / VM_MIXEDMAP) and its fault handler. */
export interface DeviceMapping {
  /** PFN that vm_start maps to when the handler inserts on CPU faults; -1: none. */
  basePfn: number;
  /** the driver implements ->huge_fault (vfio-pci style). */
  hugeFault: boolean;
  pfnRangeId: number;
}

export class Vma {
  anonVma: AnonVma | null = null;
  /** the mm this VMA belongs to (set on insertion) */
  mmId = 0;
  constructor(
    public start: number,
    public end: number,
    public flags: number,
    /** page offset: file page index of vm_start, or vm_start >> 12 for anon. */
    public pgoff: number,
    public file: FileObject | null,
    public device: DeviceMapping | null,
    /** the file is an internal shmem object of MAP_SHARED|MAP_ANONYMOUS. */
    public anonShared = false,
  ) {}

  get pages(): number {
    return (this.end - this.start) / PAGE_SIZE;
  }

  /** vma_is_anonymous: private anonymous memory (no vm_ops). */
  get isAnonymous(): boolean {
    return this.file === null && this.device === null;
  }

  get isHugetlb(): boolean {
    return (this.flags & VM_HUGETLB) !== 0;
  }

  get isShared(): boolean {
    return (this.flags & (VM_SHARED | VM_MAYSHARE)) !== 0;
  }

  get isPfnMapOrIo(): boolean {
    return (this.flags & (VM_PFNMAP | VM_IO)) !== 0;
  }

  get isFsdax(): boolean {
    return this.file !== null && this.file.kind === FileKind.FSDAX;
  }

  /** linear_page_index: the page index of `addr` in the mapped object. */
  pageIndex(addr: number): number {
    return this.pgoff + (addr - this.start) / PAGE_SIZE;
  }

  /** vm_page_prot's write bit: shared writable without writenotify. */
  get pageProtWritable(): boolean {
    return (
      (this.flags & (VM_SHARED | VM_WRITE)) === (VM_SHARED | VM_WRITE) &&
      !(this.file !== null && this.file.needsDirtyTracking)
    );
  }

  clone(): Vma {
    const v = new Vma(this.start, this.end, this.flags, this.pgoff, this.file, this.device, this.anonShared);
    v.anonVma = this.anonVma;
    v.mmId = this.mmId;
    return v;
  }
}

/** is_cow_mapping(): private and possibly writable. */
export function isCowMapping(flags: number): boolean {
  return (flags & (VM_SHARED | VM_MAYWRITE)) === VM_MAYWRITE;
}

export function isSpecial(flags: number): boolean {
  return (flags & VM_SPECIAL) !== 0;
}

export function isPfnOrMixed(flags: number): boolean {
  return (flags & (VM_PFNMAP | VM_MIXEDMAP)) !== 0;
}

/** Can `a` (below) and `b` (above, adjacent) merge into one VMA? */
export function canMerge(a: Vma, b: Vma): boolean {
  if (a.end !== b.start) return false;
  if (a.flags !== b.flags || isSpecial(a.flags)) return false;
  if (a.file !== b.file || a.device !== null || b.device !== null) return false;
  if (a.anonVma !== b.anonVma && a.anonVma !== null && b.anonVma !== null) return false;
  return b.pgoff === a.pgoff + a.pages;
}

/** "rw-p" as in /proc/PID/maps. */
export function permString(flags: number): string {
  return (
    (flags & 0x1 ? "r" : "-") +
    (flags & 0x2 ? "w" : "-") +
    (flags & 0x4 ? "x" : "-") +
    (flags & VM_MAYSHARE ? "s" : "p")
  );
}

const MNEMONICS: [number, string][] = [
  [0x1, "rd"],
  [0x2, "wr"],
  [0x4, "ex"],
  [0x8, "sh"],
  [0x10, "mr"],
  [0x20, "mw"],
  [0x40, "me"],
  [0x80, "ms"],
  [0x100, "gd"],
  [0x400, "pf"],
  [0x2000, "lo"],
  [0x4000, "io"],
  [0x20000, "dc"],
  [0x40000, "de"],
  [0x100000, "ac"],
  [0x200000, "nr"],
  [0x400000, "ht"],
  [0x2000000, "wf"],
  [0x4000000, "dd"],
  [0x8000000, "sd"],
  [0x10000000, "mm"],
  [0x20000000, "hg"],
  [0x40000000, "nh"],
];

/** The "VmFlags:" line of smaps. */
export function vmFlagsMnemonics(flags: number): string {
  return MNEMONICS.filter(([m]) => (flags & m) !== 0)
    .map(([, s]) => s)
    .join(" ");
}
