/**
 * x86-64 geometry and the kernel's flag values, verbatim, so that numbers on
 * the wire mean what they mean in the kernel.
 *
 * Vocabulary used throughout src/mm (as iommufd's pages.c does):
 *  - `end` is exclusive, `last` is inclusive; ranges are [start, end).
 *  - addresses are byte addresses (numbers < 2^47), `pfn`s are page frame
 *    numbers (< 2^32 in this model), `nr`/`npages` count 4 KiB pages.
 *  - sizes are given as shifts; an order is log2 of a page count.
 */

export const PAGE_SHIFT = 12;
export const PAGE_SIZE = 4096;
export const PMD_SHIFT = 21;
export const PMD_SIZE = 1 << PMD_SHIFT;
export const PUD_SHIFT = 30;
export const PUD_SIZE = 2 ** PUD_SHIFT;
export const PGDIR_SHIFT = 39;
export const PTRS_PER_TABLE = 512;
export const HPAGE_PMD_ORDER = 9;
export const HPAGE_PMD_NR = 512;
export const HPAGE_PUD_ORDER = 18;
export const HPAGE_PUD_NR = 262144;
export const MAX_PAGE_ORDER = 10;
export const PAGEBLOCK_ORDER = 9;
export const TASK_SIZE_MAX = 2 ** 47 - PAGE_SIZE;
/** Where unhinted mmaps are placed (top-down from here, like mmap_base). */
export const MMAP_BASE = 0x7f00_0000_0000;
export const MMAP_MIN_ADDR = 0x10000;
export const ULONG_MAX = 2 ** 64 - 1;

/** Page-table levels, numbered as a leaf's order / 9. */
export enum Level {
  PTE = 0,
  PMD = 1,
  PUD = 2,
  PGD = 3,
}
export const LEVEL_SHIFT = [PAGE_SHIFT, PMD_SHIFT, PUD_SHIFT, PGDIR_SHIFT] as const;
export const LEVEL_PAGES = [1, HPAGE_PMD_NR, HPAGE_PUD_NR] as const;
export const LEVEL_NAME = ["PTE", "PMD", "PUD", "PGD"] as const;

// vm_flags (include/linux/mm.h)
export const VM_READ = 0x1;
export const VM_WRITE = 0x2;
export const VM_EXEC = 0x4;
export const VM_SHARED = 0x8;
export const VM_MAYREAD = 0x10;
export const VM_MAYWRITE = 0x20;
export const VM_MAYEXEC = 0x40;
export const VM_MAYSHARE = 0x80;
export const VM_GROWSDOWN = 0x100;
export const VM_UFFD_MISSING = 0x200;
export const VM_PFNMAP = 0x400;
export const VM_MAYBE_GUARD = 0x800;
export const VM_UFFD_WP = 0x1000;
export const VM_LOCKED = 0x2000;
export const VM_IO = 0x4000;
export const VM_DONTCOPY = 0x20000;
export const VM_DONTEXPAND = 0x40000;
export const VM_LOCKONFAULT = 0x80000;
export const VM_ACCOUNT = 0x100000;
export const VM_NORESERVE = 0x200000;
export const VM_HUGETLB = 0x400000;
export const VM_WIPEONFORK = 0x2000000;
export const VM_DONTDUMP = 0x4000000;
export const VM_SOFTDIRTY = 0x8000000;
export const VM_MIXEDMAP = 0x10000000;
export const VM_HUGEPAGE = 0x20000000;
export const VM_NOHUGEPAGE = 0x40000000;
// VM_MERGEABLE is bit 31: kept out of 32-bit arithmetic (never set here).

export const VM_SPECIAL = VM_IO | VM_DONTEXPAND | VM_PFNMAP | VM_MIXEDMAP;
export const VM_COPY_ON_FORK = VM_PFNMAP | VM_MIXEDMAP | VM_UFFD_WP | VM_MAYBE_GUARD;
export const VM_REMAP_FLAGS = VM_IO | VM_PFNMAP | VM_DONTEXPAND | VM_DONTDUMP;
export const VM_ACCESS_FLAGS = VM_READ | VM_WRITE | VM_EXEC;

// mmap(2)
export const PROT_NONE = 0;
export const PROT_READ = 0x1;
export const PROT_WRITE = 0x2;
export const PROT_EXEC = 0x4;
export const PROT_GROWSDOWN = 0x01000000;
export const PROT_GROWSUP = 0x02000000;
export const MAP_SHARED = 0x1;
export const MAP_PRIVATE = 0x2;
export const MAP_SHARED_VALIDATE = 0x3;
export const MAP_TYPE = 0xf;
export const MAP_FIXED = 0x10;
export const MAP_ANONYMOUS = 0x20;
export const MAP_NORESERVE = 0x4000;
export const MAP_POPULATE = 0x8000;
export const MAP_HUGETLB = 0x40000;
export const MAP_FIXED_NOREPLACE = 0x100000;
export const MAP_HUGE_SHIFT = 26;
export const MAP_HUGE_MASK = 0x3f;
export const MAP_HUGE_2MB = 21 << MAP_HUGE_SHIFT;
export const MAP_HUGE_1GB = 30 << MAP_HUGE_SHIFT;

// madvise(2)
export const MADV_NORMAL = 0;
export const MADV_DONTNEED = 4;
export const MADV_FREE = 8;
export const MADV_DONTFORK = 10;
export const MADV_DOFORK = 11;
export const MADV_HUGEPAGE = 14;
export const MADV_NOHUGEPAGE = 15;
export const MADV_WIPEONFORK = 18;
export const MADV_KEEPONFORK = 19;
export const MADV_POPULATE_READ = 22;
export const MADV_POPULATE_WRITE = 23;
export const MADV_DONTNEED_LOCKED = 24;

// vm_fault_t (include/linux/mm_types.h)
export const VM_FAULT_OOM = 0x1;
export const VM_FAULT_SIGBUS = 0x2;
export const VM_FAULT_MAJOR = 0x4;
export const VM_FAULT_HWPOISON = 0x10;
export const VM_FAULT_HWPOISON_LARGE = 0x20;
export const VM_FAULT_SIGSEGV = 0x40;
export const VM_FAULT_NOPAGE = 0x100;
export const VM_FAULT_LOCKED = 0x200;
export const VM_FAULT_RETRY = 0x400;
export const VM_FAULT_FALLBACK = 0x800;
export const VM_FAULT_DONE_COW = 0x1000;
export const VM_FAULT_NEEDDSYNC = 0x2000;
export const VM_FAULT_COMPLETED = 0x4000;
export const VM_FAULT_ERROR =
  VM_FAULT_OOM | VM_FAULT_SIGBUS | VM_FAULT_SIGSEGV | VM_FAULT_HWPOISON | VM_FAULT_HWPOISON_LARGE | VM_FAULT_FALLBACK;

// enum fault_flag
export const FAULT_FLAG_WRITE = 0x1;
export const FAULT_FLAG_MKWRITE = 0x2;
export const FAULT_FLAG_ALLOW_RETRY = 0x4;
export const FAULT_FLAG_RETRY_NOWAIT = 0x8;
export const FAULT_FLAG_KILLABLE = 0x10;
export const FAULT_FLAG_TRIED = 0x20;
export const FAULT_FLAG_USER = 0x40;
export const FAULT_FLAG_REMOTE = 0x80;
export const FAULT_FLAG_INSTRUCTION = 0x100;
export const FAULT_FLAG_INTERRUPTIBLE = 0x200;
export const FAULT_FLAG_UNSHARE = 0x400;

// FOLL_* (mm_types.h external, mm/internal.h internal)
export const FOLL_WRITE = 0x1;
export const FOLL_GET = 0x2;
export const FOLL_DUMP = 0x4;
export const FOLL_FORCE = 0x8;
export const FOLL_NOWAIT = 0x10;
export const FOLL_NOFAULT = 0x20;
export const FOLL_HWPOISON = 0x40;
export const FOLL_ANON = 0x80;
export const FOLL_LONGTERM = 0x100;
export const FOLL_SPLIT_PMD = 0x200;
export const FOLL_PCI_P2PDMA = 0x400;
export const FOLL_INTERRUPTIBLE = 0x800;
export const FOLL_HONOR_NUMA_FAULT = 0x1000;
export const FOLL_TOUCH = 1 << 16;
export const FOLL_TRIED = 1 << 17;
export const FOLL_REMOTE = 1 << 18;
export const FOLL_PIN = 1 << 19;
export const FOLL_FAST_ONLY = 1 << 20;
export const FOLL_UNLOCKABLE = 1 << 21;
export const FOLL_MADV_POPULATE = 1 << 22;
export const FOLL_INTERNAL_FLAGS =
  FOLL_TOUCH | FOLL_TRIED | FOLL_REMOTE | FOLL_PIN | FOLL_FAST_ONLY | FOLL_UNLOCKABLE | FOLL_MADV_POPULATE;

export const GUP_PIN_COUNTING_BIAS = 1024;

// enum mmu_notifier_event
export enum MmuNotifyEvent {
  UNMAP = 0,
  CLEAR = 1,
  PROTECTION_VMA = 2,
  PROTECTION_PAGE = 3,
  SOFT_DIRTY = 4,
  RELEASE = 5,
  MIGRATE = 6,
  EXCLUSIVE = 7,
}
export const MMU_NOTIFY_EVENT_NAMES = [
  "UNMAP",
  "CLEAR",
  "PROTECTION_VMA",
  "PROTECTION_PAGE",
  "SOFT_DIRTY",
  "RELEASE",
  "MIGRATE",
  "EXCLUSIVE",
] as const;

// enum memory_type (dev_pagemap)
export enum MemoryType {
  NONE = 0,
  DEVICE_PRIVATE = 1,
  DEVICE_COHERENT = 2,
  FS_DAX = 3,
  GENERIC = 4,
  PCI_P2PDMA = 5,
}

export enum Zone {
  DMA32 = 0,
  NORMAL = 1,
  MOVABLE = 2,
  DEVICE = 3,
}
export const ZONE_NAMES = ["DMA32", "Normal", "Movable", "Device"] as const;

export enum MigrateType {
  UNMOVABLE = 0,
  MOVABLE = 1,
  RECLAIMABLE = 2,
  CMA = 3,
  ISOLATE = 4,
}

export function pageAligned(x: number): boolean {
  return x % PAGE_SIZE === 0;
}
export function pageAlignUp(x: number): number {
  return Math.ceil(x / PAGE_SIZE) * PAGE_SIZE;
}
/**
 * `x` rounded down to a multiple of the power of two `size`, for a
 * non-negative integer `x` below 2^53. Written with a division instead of
 * `x - (x % size)`: V8 compiles `%` on numbers beyond int32 (every user
 * address) to a call of the C library's fmod, about 17 ns, against about
 * 1 ns for a division by a power of two and a floor.
 */
export function alignDown(x: number, size: number): number {
  return Math.floor(x / size) * size;
}
/** `x % size` for a non-negative integer `x` below 2^53 and a power of two `size`, without fmod (see alignDown). */
export function offsetIn(x: number, size: number): number {
  return x - Math.floor(x / size) * size;
}
