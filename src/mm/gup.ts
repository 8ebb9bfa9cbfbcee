/**
 * get_user_pages / pin_user_pages (spec section 5), laid out bottom-up as
 * mm/gup.c is: the reference primitives (try_grab_folio decides GET vs PIN
 * from the flags, gup_put_folio undoes it), argument validation and the one
 * public entry point gupCall, then the walkers - the slow path one function
 * per level (follow_pud_mask -> follow_pmd_mask -> follow_page_pte), the
 * FOLL_LONGTERM migrate-then-pin loop, and the lockless GUP-fast walk.
 *
 * Batching (spec performance.md W1-W4): a huge leaf is taken as a whole
 * folio, `refs` at once; the PTE walkers take a whole PTE table per step and
 * grab consecutive PTEs that map consecutive pages of one folio with one
 * update (record_subpages + try_grab_folio(refs)). So a call makes one
 * refcount/pincount update per folio it touches, counted in
 * phys.stats.gupRefUpdates.
 *
 * What a call holds is recorded as runs in a PinHandle of the pin registry
 * (pins.ts), reported as PfnBatch runs (pfn-batch.ts), and as a PFN array
 * only when the caller asks for one.
 *
 * Deviations, by design:
 *  - A huge *special* leaf reached by the slow path (only possible in a
 *    VM_MIXEDMAP VMA, spec 4.7) gets the PTE rule: -EEXIST with pages[],
 *    skipped without.
 *  - No signals, no mmap lock: FOLL_INTERRUPTIBLE/UNLOCKABLE/NOWAIT change
 *    nothing, VM_FAULT_RETRY never happens.
 *  - A fault that does not make the page followable is retried a few times,
 *    then the walk stops with -EFAULT (the kernel would loop).
 *  - The slow path grabs a huge leaf with one try_grab_folio(refs) (the kernel
 *    takes 1 in follow_huge_pmd, then page_increm - 1): same counts, one update.
 *  - try_grab_folio's P2PDMA refusal is checked where the walker reaches the
 *    page, and GUP-fast checks before grabbing instead of grab-then-undo: the
 *    same outcome without a put per refused page.
 *  - The 4 KiB zero-page pin no-op (6.5+) is kept under the "bias-2019"
 *    profile too; that profile only changes compound-page arithmetic.
 */
import * as C from "./constants.js";
import { Level, MemoryType, MmuNotifyEvent } from "./constants.js";
import { Errno, fail, invalid } from "./errors.js";
import * as F from "./fault.js";
import type { Kernel } from "./kernel.js";
import type { Mm } from "./mm.js";
import * as PT from "./pagetable.js";
import { WalkCursor } from "./pagetable.js";
import * as B from "./pfn-batch.js";
import type { PfnBatch } from "./pfn-batch.js";
import * as PM from "./physmem.js";
import type { PhysMem } from "./physmem.js";
import type { PinHandle } from "./pins.js";
import { keepShape, shapesTick } from "./shapes.js";
import { isCowMapping, type Vma } from "./vma.js";

// Module-local bindings of what the walkers use per page or per folio:
// loaders that compile ES imports to accessor calls (tsx, vite-node) would
// otherwise make every read of an imported name a getter call.
const {
  alignDown,
  offsetIn,
  FAULT_FLAG_REMOTE,
  FAULT_FLAG_UNSHARE,
  FAULT_FLAG_WRITE,
  FOLL_ANON,
  FOLL_DUMP,
  FOLL_FAST_ONLY,
  FOLL_FORCE,
  FOLL_GET,
  FOLL_HONOR_NUMA_FAULT,
  FOLL_INTERNAL_FLAGS,
  FOLL_LONGTERM,
  FOLL_MADV_POPULATE,
  FOLL_NOFAULT,
  FOLL_PCI_P2PDMA,
  FOLL_PIN,
  FOLL_REMOTE,
  FOLL_SPLIT_PMD,
  FOLL_TOUCH,
  FOLL_UNLOCKABLE,
  FOLL_WRITE,
  GUP_PIN_COUNTING_BIAS,
  HPAGE_PMD_NR,
  HPAGE_PMD_ORDER,
  HPAGE_PUD_NR,
  PAGEBLOCK_ORDER,
  PAGE_SIZE,
  PMD_SIZE,
  PTRS_PER_TABLE,
  PUD_SIZE,
  TASK_SIZE_MAX,
  VM_ACCESS_FLAGS,
  VM_IO,
  VM_MAYREAD,
  VM_PFNMAP,
  VM_READ,
  VM_SHARED,
  VM_WRITE,
} = C;
const { copyPageData, handleMmFault, splitHugePmd, vmFaultToErrno } = F;
const { E_DIRTY, E_PRESENT, E_PROTNONE, E_SPECIAL, E_TABLE, E_UFFD_WP, E_USER, E_WRITE, E_YOUNG, isPresentLeaf, walk } = PT;
const { batchAddPfnNum, batchAddSamePfn, batchAddSmallPfns, batchInit, batchReserveSegments, batchTruncate } = B;
const {
  PG_anon,
  PG_anon_exclusive,
  PG_dirty,
  PG_has_data,
  PG_hugetlb,
  PG_lazyfree,
  PG_lru,
  PG_mlocked,
  PG_pagecache,
  PG_referenced,
  PG_shmem,
  PG_swapcache,
} = PM;
const { SECTION_SHIFT, SECTION_PAGES } = PM;
const SECTION_MASK = SECTION_PAGES - 1;
const LEVEL_PTE = Level.PTE;
const LEVEL_PGD = Level.PGD;
const LEVEL_PMD = Level.PMD;
const LEVEL_PUD = Level.PUD;

// pagetable.ts's index arithmetic, on the local constants (same reason).
function pgdIndex(va: number): number {
  return Math.floor(va / 2 ** 39) & 511;
}
function pudIndex(va: number): number {
  return Math.floor(va / PUD_SIZE) & 511;
}
function pmdIndex(va: number): number {
  return Math.floor(va / PMD_SIZE) & 511;
}
function pteIndex(va: number): number {
  return Math.floor(va / PAGE_SIZE) & 511;
}
function levelSize(level: Level): number {
  return level === LEVEL_PUD ? PUD_SIZE : level === LEVEL_PMD ? PMD_SIZE : PAGE_SIZE;
}
const MEMORY_P2PDMA = MemoryType.PCI_P2PDMA;
const MEMORY_COHERENT = MemoryType.DEVICE_COHERENT;

const { EFAULT, ENOMEM, EINVAL, EEXIST, EMLINK, EREMOTEIO, EOPNOTSUPP, EOVERFLOW, EAGAIN, EBUSY } = Errno;

/** Largest value of the signed 32-bit _refcount / _pincount. */
const REF_MAX = 0x7fff_ffff;
/** faultin_page attempts per address before the walk gives up (see header). */
const MAX_FAULTS_PER_PAGE = 8;
/** rounds of the FOLL_LONGTERM migrate-then-pin loop before -ENOMEM */
const MAX_LONGTERM_ROUNDS = 8;

// ---------------------------------------------------------------------------
// Reference primitives

/**
 * Kinds of references a run of pages holds (pins.ts keeps them per run;
 * gup_put_folio needs them to undo the right arithmetic).
 */
export const RUN_PIN = 1; // FOLL_PIN (else FOLL_GET)
export const RUN_SAME = 2; // every page of the run is the same PFN (zero page)
export const RUN_LONGTERM = 4; // FOLL_LONGTERM: counted against the memlock limit
export const RUN_BIAS2019 = 8; // pinned under the "bias-2019" accounting profile
export const RUN_NOOP = 16; // 4 KiB zero-page pin: no accounting either way
/**
 * The run is `count` physically contiguous order-0 folios, one page each
 * (runHead is its first PFN): one run per stretch of small pages instead of
 * one per page; references are still counted, and put, per folio.
 */
export const RUN_SMALL = 32;

/**
 * try_grab_folio(folio, refs, flags) on the folio headed by `head`, as one
 * update (spec 2.2). Returns 0 or -errno. The P2PDMA refusal of the kernel's
 * try_grab_folio is checked by the walkers when they reach the page
 * (p2pdmaRefused), so that the walk stops at the right page.
 *
 * Under the "bias-2019" profile a pin adds refs * GUP_PIN_COUNTING_BIAS to the
 * head refcount of a compound page too; an overflow of the 31-bit refcount is
 * detected before it happens and thrown (the caller undoes the whole call).
 */
export function tryGrabFolio(k: Kernel, head: number, refs: number, flags: number): number {
  const p = k.phys;
  const ref = p.refcount(head);
  if (ref <= 0) return -ENOMEM; // WARN_ON_ONCE(folio_ref_count(folio) <= 0)
  if (flags & FOLL_GET) {
    if (ref + refs > REF_MAX) return -ENOMEM;
    p.folioRefAdd(head, refs);
  } else if (flags & FOLL_PIN) {
    // mm: Don't pin ZERO_PAGE in pin_user_pages()
    if (head === p.zeroPfn) return 0;
    if (k.tunables.pinAccounting === "bias-2019") {
      const delta = refs * GUP_PIN_COUNTING_BIAS;
      if (ref + delta > REF_MAX)
        fail(
          EOVERFLOW,
          `refcount overflow: pinning ${refs} pages of the ${p.folioOrder(head) > 0 ? "compound" : "small"} page at pfn ${head} ` +
            `would take its refcount from ${ref} to ${ref + delta} (> 2^31-1) under the late-2019 "mm/gup: track FOLL_PIN pages" ` +
            `scheme (bias-2019: GUP_PIN_COUNTING_BIAS=${GUP_PIN_COUNTING_BIAS} per pinned page on the compound head)`,
          "errno",
        );
      p.folioRefAdd(head, delta);
    } else if (p.folioOrder(head) > 0) {
      if (ref + refs > REF_MAX || p.pincount(head) + refs > REF_MAX) return -ENOMEM;
      p.folioRefAdd(head, refs);
      p.pincountAdd(head, refs);
    } else {
      const delta = refs * GUP_PIN_COUNTING_BIAS;
      if (ref + delta > REF_MAX) return -ENOMEM;
      p.folioRefAdd(head, delta);
    }
    k.vmstat.nr_foll_pin_acquired += refs;
  } else {
    return 0;
  }
  p.stats.gupRefUpdates++;
  return 0;
}

/**
 * gup_put_folio: drop `refs` references of the kind `runFlags` says, as one
 * update. With `undo`, a grab of the current call is taken back (acquired
 * goes down instead of released going up), so a failed call leaves no trace.
 */
export function gupPutFolio(k: Kernel, head: number, refs: number, runFlags: number, undo = false): void {
  if (runFlags & RUN_NOOP || refs === 0) return;
  const p = k.phys;
  if ((runFlags & (RUN_PIN | RUN_BIAS2019 | RUN_SMALL)) === RUN_PIN) {
    // The common unpin of a large folio that stays referenced, on one
    // struct-page lookup: _pincount and _refcount each go down by refs.
    const s = p.section(head);
    const i = head & SECTION_MASK;
    if (s !== undefined && s.order[i] !== 0 && s.pincount[i]! >= refs && s.refcount[i]! > refs) {
      s.pincount[i]! -= refs;
      s.refcount[i]! -= refs;
      if (undo) {
        k.vmstat.nr_foll_pin_acquired -= refs;
        p.stats.gupRefUpdates--;
      } else {
        k.vmstat.nr_foll_pin_released += refs;
        p.stats.gupRefUpdates++;
      }
      return;
    }
  }
  if (!(runFlags & RUN_PIN)) {
    p.folioRefAdd(head, -refs);
  } else {
    if (runFlags & (RUN_BIAS2019 | RUN_SMALL) || p.folioOrder(head) === 0) {
      p.folioRefAdd(head, -refs * GUP_PIN_COUNTING_BIAS);
    } else {
      if (p.pincount(head) < refs) fail(EINVAL, `kernel-bug:gup_put_folio: _pincount ${p.pincount(head)} < ${refs} at pfn ${head}`, "kernel-bug");
      p.pincountAdd(head, -refs);
      p.folioRefAdd(head, -refs);
    }
    if (undo) k.vmstat.nr_foll_pin_acquired -= refs;
    else k.vmstat.nr_foll_pin_released += refs;
  }
  if (undo) p.stats.gupRefUpdates--;
  else p.stats.gupRefUpdates++;
}

/** folio_maybe_dma_pinned (spec 2.2). */
export function folioMaybeDmaPinned(k: Kernel, head: number): boolean {
  const p = k.phys;
  return p.folioOrder(head) > 0 ? p.pincount(head) > 0 : p.refcount(head) >= GUP_PIN_COUNTING_BIAS;
}

/** P2PDMA pages need FOLL_PCI_P2PDMA (try_grab_folio's -EREMOTEIO). */
function p2pdmaRefused(p: PhysMem, head: number, flags: number): boolean {
  if (flags & FOLL_PCI_P2PDMA) return false;
  const pm = p.pagemapOf(head);
  return pm !== null && pm.type === MEMORY_P2PDMA;
}

/**
 * gup_must_unshare: a R/O pin of an anon page that is not AnonExclusive, or a
 * R/O long-term pin of a non-anon page in a COW mapping (vma null: GUP-fast,
 * which cannot tell, so every such page), must unshare first.
 */
export function gupMustUnshare(k: Kernel, vma: Vma | null, flags: number, pfn: number): boolean {
  if ((flags & (FOLL_WRITE | FOLL_PIN)) !== FOLL_PIN) return false;
  const p = k.phys;
  if (!(p.flags(p.folioHead(pfn)) & PG_anon)) {
    if (!(flags & FOLL_LONGTERM)) return false;
    if (vma === null) return true;
    return isCowMapping(vma.flags);
  }
  return (p.flags(pfn) & PG_anon_exclusive) === 0;
}

/** can_follow_write_pte / _pmd: FOLL_FORCE writes to a broken-COW page. */
function canFollowWrite(p: PhysMem, vma: Vma, flags: number, hi: number, pfn: number): boolean {
  if (hi & E_WRITE) return true;
  if (!(flags & FOLL_FORCE) || !isCowMapping(vma.flags) || vma.flags & VM_WRITE || pfn < 0) return false;
  if (!(p.flags(p.folioHead(pfn)) & PG_anon) || !(p.flags(pfn) & PG_anon_exclusive)) return false;
  return !(hi & E_UFFD_WP);
}

/** gup_can_follow_protnone */
function canFollowProtnone(vma: Vma, flags: number): boolean {
  return !(flags & FOLL_HONOR_NUMA_FAULT) || (vma.flags & VM_ACCESS_FLAGS) === 0;
}

/** check_vma_flags (spec 5.5, in its order). Returns 0 or -errno. */
export function checkVmaFlags(vma: Vma, flags: number): number {
  const vf = vma.flags;
  if (vf & (VM_IO | VM_PFNMAP)) return -EFAULT;
  if (flags & FOLL_ANON && !vma.isAnonymous) return -EFAULT;
  if (flags & FOLL_LONGTERM && vma.isFsdax) return -EOPNOTSUPP;
  if (flags & FOLL_SPLIT_PMD && vma.isHugetlb) return -EOPNOTSUPP;
  if (flags & FOLL_WRITE) {
    // writable_file_mapping_allowed: no long-term writable pins of files
    // that need dirty tracking (shared writable ext4/xfs/btrfs-like).
    if (
      !vma.isAnonymous &&
      (flags & (FOLL_PIN | FOLL_LONGTERM)) === (FOLL_PIN | FOLL_LONGTERM) &&
      vma.file !== null &&
      (vf & (VM_WRITE | VM_SHARED)) === (VM_WRITE | VM_SHARED) &&
      vma.file.needsDirtyTracking
    )
      return -EFAULT;
    if (!(vf & VM_WRITE)) {
      if (!(flags & FOLL_FORCE)) return -EFAULT;
      if (!isCowMapping(vf)) return -EFAULT;
    }
  } else if (!(vf & VM_READ)) {
    if (!(flags & FOLL_FORCE)) return -EFAULT;
    if (!(vf & VM_MAYREAD)) return -EFAULT;
  }
  return 0;
}

// ---------------------------------------------------------------------------
// The public API

export type GupVariant =
  | "pin_user_pages"
  | "pin_user_pages_fast"
  | "pin_user_pages_remote"
  | "pin_user_pages_unlocked"
  | "get_user_pages"
  | "get_user_pages_fast"
  | "get_user_pages_fast_only"
  | "get_user_pages_remote"
  | "get_user_pages_unlocked";

interface VariantInfo {
  /** flags the function adds (is_valid_gup_args' to_set) */
  readonly set: number;
  /** what it returns for invalid arguments (spec 5.1) */
  readonly invalidRet: number;
  readonly fast: boolean;
  /** takes `locked` */
  readonly remote: boolean;
}

/** Spec 5.1. */
export const GUP_VARIANTS: Readonly<Record<GupVariant, VariantInfo>> = {
  get_user_pages: { set: FOLL_TOUCH, invalidRet: -EINVAL, fast: false, remote: false },
  get_user_pages_remote: { set: FOLL_TOUCH | FOLL_REMOTE, invalidRet: -EINVAL, fast: false, remote: true },
  get_user_pages_unlocked: { set: FOLL_TOUCH | FOLL_UNLOCKABLE, invalidRet: -EINVAL, fast: false, remote: false },
  get_user_pages_fast: { set: FOLL_GET, invalidRet: -EINVAL, fast: true, remote: false },
  get_user_pages_fast_only: { set: FOLL_GET | FOLL_FAST_ONLY, invalidRet: -EINVAL, fast: true, remote: false },
  pin_user_pages: { set: FOLL_PIN, invalidRet: 0, fast: false, remote: false },
  pin_user_pages_remote: { set: FOLL_PIN | FOLL_TOUCH | FOLL_REMOTE, invalidRet: 0, fast: false, remote: true },
  pin_user_pages_unlocked: { set: FOLL_PIN | FOLL_TOUCH | FOLL_UNLOCKABLE, invalidRet: 0, fast: false, remote: false },
  pin_user_pages_fast: { set: FOLL_PIN, invalidRet: -EINVAL, fast: true, remote: false },
};

/** Flags GUP-fast accepts (gup_fast_fallback). */
export const FOLL_FAST_ALLOWED =
  FOLL_WRITE | FOLL_LONGTERM | FOLL_FORCE | FOLL_PIN | FOLL_GET | FOLL_FAST_ONLY | FOLL_NOFAULT | FOLL_PCI_P2PDMA | FOLL_HONOR_NUMA_FAULT;

export interface GupRequest {
  variant: GupVariant;
  /** user address; rounded down to its page */
  start: number;
  nrPages: number;
  /** external FOLL_* flags from the caller */
  gupFlags: number;
  /** pages != NULL */
  wantPages: boolean;
  output: "ranges" | "pages" | "none";
  session: number;
  /** `*locked` of the _remote variants; undefined = NULL */
  locked?: number;
  /** record folio segments in `ranges` (default true); false: merged runs only */
  folioSegments?: boolean;
}

export interface GupResult {
  /** pages processed, -errno, or 0 (also the invalid return of pin_user_pages*) */
  ret: number;
  /** pin registry handle of what the call holds; 0 if nothing */
  handle: number;
  /** the pages as runs (empty for output "none" or without pages[]) */
  ranges: PfnBatch;
  /** PFNs of pages[0..ret), only for output "pages" */
  pages: Uint32Array | null;
  /** refcount/pincount updates made by this call */
  refUpdates: number;
  /** pages the lockless walk took (fast variants) */
  fastPinned: number;
  /** WARN_ON_ONCE text when the kernel would warn; "" otherwise */
  warning: string;
}

/**
 * is_valid_gup_args: the flags to use, or a reason the arguments are invalid.
 */
export function isValidGupArgs(gupFlags: number, toSet: number, wantPages: boolean, locked: number | undefined): number | string {
  if (gupFlags & FOLL_INTERNAL_FLAGS) return `internal FOLL_ flags 0x${(gupFlags & FOLL_INTERNAL_FLAGS).toString(16)} passed by the caller`;
  let flags = gupFlags | toSet;
  if (locked !== undefined) {
    if (locked !== 1) return `*locked is ${locked}, not 1`;
    flags |= FOLL_UNLOCKABLE;
  }
  if ((flags & (FOLL_PIN | FOLL_GET)) === (FOLL_PIN | FOLL_GET)) return "FOLL_GET and FOLL_PIN are mutually exclusive";
  if (!(flags & FOLL_PIN) && flags & FOLL_LONGTERM) return "FOLL_LONGTERM without FOLL_PIN";
  if (flags & (FOLL_GET | FOLL_PIN) && !wantPages) return "FOLL_GET/FOLL_PIN without a pages array";
  if (flags & FOLL_LONGTERM && flags & FOLL_PCI_P2PDMA) return "FOLL_LONGTERM with FOLL_PCI_P2PDMA";
  return flags;
}

/** mm_set_has_pinned_flag: test first, write only when it changes (A5). */
function mmSetHasPinnedFlag(mm: Mm): void {
  if (!mm.hasPinned) mm.hasPinned = true;
}

/** RLIMIT_MEMLOCK-like limit on a session's long-term pins (drivers' account_locked_vm). */
function memlockCheck(k: Kernel, session: number, flags: number, nrPages: number): void {
  if ((flags & (FOLL_PIN | FOLL_LONGTERM)) !== (FOLL_PIN | FOLL_LONGTERM)) return;
  const limit = k.tunables.memlockLimitBytes;
  if (limit <= 0) return;
  const locked = k.pins.lockedPages(session);
  if ((locked + nrPages) * PAGE_SIZE > limit)
    fail(
      ENOMEM,
      `long-term pin of ${nrPages} pages would exceed the memlock limit of ${limit} bytes (session ${session} holds ${locked * PAGE_SIZE} bytes)`,
      "exhausted",
    );
}

/**
 * The GUP family (spec 5.1-5.10): validates as the named variant does, then
 * runs the slow path (with the FOLL_LONGTERM loop) or GUP-fast with fallback.
 * GUP outcomes are returned in `ret`; MmError is thrown only for malformed
 * requests, the memlock limit (kind "exhausted") and the bias-2019 refcount
 * overflow (EOVERFLOW), in which cases the call holds nothing.
 */
export function gupCall(k: Kernel, mm: Mm, req: GupRequest): GupResult {
  const info = GUP_VARIANTS[req.variant];
  if (info === undefined) invalid(`unknown GUP variant ${String(req.variant)}`);
  if (!Number.isSafeInteger(req.start) || req.start < 0) invalid(`start ${req.start} out of range`);
  if (!Number.isSafeInteger(req.nrPages) || req.nrPages < 0) invalid(`nr_pages ${req.nrPages} out of range`);
  if (!Number.isInteger(req.gupFlags) || req.gupFlags < 0 || req.gupFlags > 0xffff_ffff) invalid(`gup_flags ${req.gupFlags} out of range`);
  if (req.output !== "ranges" && req.output !== "pages" && req.output !== "none") invalid(`unknown output ${String(req.output)}`);
  const v = isValidGupArgs(req.gupFlags >>> 0, info.set, req.wantPages, info.remote ? req.locked : undefined);
  if (typeof v === "string") return { ret: info.invalidRet, handle: 0, ranges: batchInit(1), pages: null, refUpdates: 0, fastPinned: 0, warning: `WARN_ON_ONCE: ${v}` };
  let flags = v;
  const start = alignDown(req.start, PAGE_SIZE);
  const c = new GupCollector(k, mm, req);
  const res: GupResult = { ret: 0, handle: 0, ranges: c.batch, pages: null, refUpdates: 0, fastPinned: 0, warning: "" };
  const before = k.phys.stats.gupRefUpdates;
  let ret: number;
  try {
    if (info.fast) {
      if (flags & ~FOLL_FAST_ALLOWED) {
        res.ret = -EINVAL;
        res.warning = `WARN_ON_ONCE: flags 0x${(flags & ~FOLL_FAST_ALLOWED).toString(16)} not allowed in GUP-fast`;
        return res;
      }
      if (flags & FOLL_PIN) mmSetHasPinnedFlag(mm);
      memlockCheck(k, req.session, flags, req.nrPages);
      ret = gupFastFallback(c, start, req.nrPages, flags);
    } else if (req.nrPages === 0) {
      ret = 0;
    } else {
      // __get_user_pages_locked: FOLL_GET for callers with pages[].
      if (req.wantPages && !(flags & FOLL_PIN)) flags |= FOLL_GET;
      if (flags & FOLL_PIN) mmSetHasPinnedFlag(mm);
      memlockCheck(k, req.session, flags, req.nrPages);
      ret = gupLongtermLocked(c, start, req.nrPages, flags, 0);
    }
    if (ret <= 0) c.truncate(ZERO_MARK);
  } catch (e) {
    c.rollbackAll();
    throw e;
  }
  res.ret = ret;
  res.fastPinned = c.fastPinned;
  if (c.handle !== null) res.handle = k.pins.commit(c.handle, Math.max(0, ret));
  res.ranges = c.batch;
  if (c.pages !== null && req.output === "pages" && req.wantPages) res.pages = c.pages.subarray(0, Math.max(0, ret));
  res.refUpdates = k.phys.stats.gupRefUpdates - before;
  return res;
}

/** Convenience wrappers named as the kernel's functions. */
export function pinUserPages(k: Kernel, mm: Mm, session: number, start: number, nrPages: number, gupFlags: number, output: GupRequest["output"] = "ranges"): GupResult {
  return gupCall(k, mm, { variant: "pin_user_pages", start, nrPages, gupFlags, wantPages: true, output, session });
}

export function pinUserPagesFast(k: Kernel, mm: Mm, session: number, start: number, nrPages: number, gupFlags: number, output: GupRequest["output"] = "ranges"): GupResult {
  return gupCall(k, mm, { variant: "pin_user_pages_fast", start, nrPages, gupFlags, wantPages: true, output, session });
}

export function getUserPages(k: Kernel, mm: Mm, session: number, start: number, nrPages: number, gupFlags: number, output: GupRequest["output"] = "ranges"): GupResult {
  return gupCall(k, mm, { variant: "get_user_pages", start, nrPages, gupFlags, wantPages: output !== "none", output, session });
}

export function getUserPagesFast(k: Kernel, mm: Mm, session: number, start: number, nrPages: number, gupFlags: number, output: GupRequest["output"] = "ranges"): GupResult {
  return gupCall(k, mm, { variant: "get_user_pages_fast", start, nrPages, gupFlags, wantPages: true, output, session });
}

/**
 * try_grab_folio's arithmetic on a large folio (current accounting) whose
 * struct page is s[i]: `refs` more references, and as many pins with `pin`,
 * as one update; false (nothing changed) if a count would leave its range.
 */
function grabLargeRefs(s: PM.Section, i: number, refs: number, pin: boolean): boolean {
  const ref = s.refcount[i]!;
  if (ref <= 0 || ref + refs > REF_MAX) return false;
  if (pin) {
    const pc = s.pincount[i]!;
    if (pc + refs > REF_MAX) return false;
    s.pincount[i] = pc + refs;
  }
  s.refcount[i] = ref + refs;
  return true;
}

// ---------------------------------------------------------------------------
// What a call collects

interface Mark {
  runs: number;
  pages: number;
}
const ZERO_MARK: Mark = { runs: 0, pages: 0 };

/**
 * The references one call takes, as it takes them: runs in a PinHandle (the
 * pages[] entries of the call, by index), the PfnBatch and, if asked, the
 * PFN array. Runs are appended in page order, so a LONGTERM round or a
 * failed GUP-fast is undone by truncating to a mark.
 */
class GupCollector {
  readonly handle: PinHandle | null = null;
  readonly batch: PfnBatch;
  pages: Uint32Array | null = null;
  /** pages an -EEXIST entry covers (skipped when no pages[] was given) */
  skip = 1;
  fastPinned = 0;
  readonly wantPages: boolean;
  /** pages the call asks for (sizes the run arrays when they fill up) */
  private readonly nrPages: number;
  private readonly outRanges: boolean;
  private readonly bias: boolean;
  /** runs below this index belong to an earlier mark: never extended */
  private mergeFloor = 0;

  constructor(
    readonly k: Kernel,
    readonly mm: Mm,
    req: GupRequest,
  ) {
    this.wantPages = req.wantPages;
    this.outRanges = req.wantPages && req.output !== "none";
    this.nrPages = req.nrPages;
    this.batch = batchInit(this.outRanges ? 16 : 1, req.folioSegments ?? true);
    if (req.wantPages && req.output === "pages") this.pages = new Uint32Array(Math.min(Math.max(req.nrPages, 1), 1 << 16));
    if (req.wantPages) this.handle = k.pins.newHandle(req.session, mm.id);
    this.bias = k.tunables.pinAccounting === "bias-2019";
    shapesTick();
  }

  /**
   * Grab `n` pages of the folio `head` starting at `pfn` (or `n` references
   * to the one page `pfn` when `same`), as pages[idx..idx+n). 0 or -errno.
   */
  grab(idx: number, pfn: number, head: number, n: number, same: boolean, flags: number): number {
    if (!(flags & (FOLL_GET | FOLL_PIN)) || this.handle === null) return 0;
    let rf = same ? RUN_SAME : 0;
    if (flags & FOLL_PIN) {
      rf |= RUN_PIN | (flags & FOLL_LONGTERM ? RUN_LONGTERM : 0);
      if (head === this.k.phys.zeroPfn) rf |= RUN_NOOP;
      else if (this.bias) rf |= RUN_BIAS2019;
    }
    if (!(rf & RUN_NOOP)) {
      const e = tryGrabFolio(this.k, head, n, flags);
      if (e !== 0) return e;
    }
    const h = this.handle;
    if (n === 1 && pfn === head && !same && !(rf & RUN_NOOP) && this.k.phys.folioOrder(head) === 0) {
      // An order-0 folio: continue the last run when it is a stretch of
      // small pages that ends right before this one (physically and in pages[]).
      rf |= RUN_SMALL;
      const r = h.nRuns - 1;
      if (r >= this.mergeFloor && h.runFlags[r] === rf && h.runPfn[r]! + h.runCount[r]! === pfn && h.runIdx[r]! + h.runCount[r]! === idx) h.runCount[r]!++;
      else h.push(pfn, 1, head, idx, rf);
    } else {
      h.push(pfn, n, head, idx, rf);
    }
    h.count(rf, n);
    if (this.outRanges) {
      if (same) batchAddSamePfn(this.batch, pfn, n, head);
      else batchAddPfnNum(this.batch, pfn, n, head);
    }
    if (this.pages !== null) this.putPages(idx, pfn, n, same);
    return 0;
  }

  /**
   * grab() of `n` pages of a large folio from a huge leaf, then (with
   * `touch`) folio_mark_accessed: for a folio of order > 0 that is not the
   * zero page, taken as FOLL_GET or FOLL_PIN under the current accounting,
   * the same updates with one struct-page section lookup; anything else goes
   * through grab(). 0 or -errno.
   */
  grabLarge(idx: number, pfn: number, head: number, n: number, flags: number, touch: boolean): number {
    const k = this.k;
    const p = k.phys;
    const h = this.handle;
    const kind = flags & (FOLL_GET | FOLL_PIN);
    const s = p.section(head);
    const i = head & SECTION_MASK;
    if (h === null || this.bias || s === undefined || (kind !== FOLL_GET && kind !== FOLL_PIN) || head === p.zeroPfn || s.order[i] === 0) {
      const e = this.grab(idx, pfn, head, n, false, flags);
      if (e === 0 && touch) p.orFlags(head, PG_referenced);
      return e;
    }
    if (!grabLargeRefs(s, i, n, kind === FOLL_PIN)) return -ENOMEM;
    let rf = 0;
    if (kind === FOLL_PIN) {
      k.vmstat.nr_foll_pin_acquired += n;
      rf = RUN_PIN | (flags & FOLL_LONGTERM ? RUN_LONGTERM : 0);
    }
    p.stats.gupRefUpdates++;
    if (h.nRuns === h.runPfn.length) {
      // Full: make room at once for the rest of the call in folios like this one.
      // (At most 4096 more at once; beyond that the arrays double as usual.)
      const more = Math.min(Math.ceil(Math.max(0, this.nrPages - idx) / n), 4096);
      h.reserve(Math.max(2 * h.nRuns, h.nRuns + more));
      if (this.outRanges) batchReserveSegments(this.batch, this.batch.folioEnd + more);
    }
    h.push(pfn, n, head, idx, rf);
    h.count(rf, n);
    if (this.outRanges) batchAddPfnNum(this.batch, pfn, n, head);
    if (this.pages !== null) this.putPages(idx, pfn, n);
    if (touch) s.flags[i]! |= PG_referenced;
    return 0;
  }

  /**
   * The common case of consecutive PMD leaves, in one loop: entries j0.. of
   * the PMD table `t`, for up to `max` pages as pages[idx..], while each is a
   * present leaf (user-accessible under GUP-fast), neither a table, special,
   * PROT_NONE nor the huge zero folio, that maps the whole of an order-9
   * folio with struct pages, writable if the call writes or pins read-only
   * (which would need gup_must_unshare). Each folio is grabbed as grabLarge
   * does (one refcount and pincount update), folio_mark_accessed; the slow
   * path (`fast` false) refuses P2PDMA without the flag and touches the
   * entry under FOLL_TOUCH, GUP-fast checks try_grab_folio_fast's refusals
   * and gup_fast_folio_allowed instead. Stops before the first entry outside
   * this case, which the caller takes through the general code; returns the
   * pages taken. Counters are added once for the run.
   */
  grabPmdRun(flags: number, t: number, j0: number, max: number, idx: number, fast: boolean): number {
    const h = this.handle;
    const kind = flags & (FOLL_GET | FOLL_PIN);
    if (h === null || this.bias || (kind !== FOLL_GET && kind !== FOLL_PIN) || flags & FOLL_SPLIT_PMD || max <= 0) return 0;
    const k = this.k;
    const p = k.phys;
    const pool = k.pt;
    const words = pool.chunk(t);
    const b = pool.base(t);
    const write = (flags & FOLL_WRITE) !== 0;
    const pin = kind === FOLL_PIN;
    const readOnlyOk = !write && !pin; // a read-only FOLL_GET: no unshare, no FOLL_FORCE question
    const touchEntry = !fast && (flags & FOLL_TOUCH) !== 0;
    const markAccessed = fast || (flags & FOLL_TOUCH) !== 0;
    const touchBits = E_YOUNG | (write ? E_DIRTY : 0);
    const need = fast ? E_PRESENT | E_USER : E_PRESENT;
    const hz = p.hugeZeroPfn;
    const rf = pin ? RUN_PIN | (flags & FOLL_LONGTERM ? RUN_LONGTERM : 0) : 0;
    const stop = Math.min(PTRS_PER_TABLE, j0 + Math.ceil(max / HPAGE_PMD_NR));
    if (h.nRuns + (stop - j0) > h.runPfn.length) h.reserve(Math.max(2 * h.nRuns, h.nRuns + (stop - j0)));
    if (this.outRanges) batchReserveSegments(this.batch, this.batch.folioEnd + (stop - j0));
    let secIdx = -1;
    let sec: PM.Section | undefined;
    let p2pOk = false;
    let done = 0;
    let updates = 0;
    for (let j = j0; j < stop; j++) {
      const o = b + 2 * j;
      const lo = words[o]!;
      const hi = words[o + 1]!;
      if ((hi & (need | E_TABLE | E_SPECIAL | E_PROTNONE)) !== need) break;
      if (!(hi & E_WRITE) && !readOnlyOk) break;
      if ((lo & (HPAGE_PMD_NR - 1)) !== 0 || (hz >= 0 && lo >= hz && lo < hz + HPAGE_PMD_NR)) break;
      if (lo >>> SECTION_SHIFT !== secIdx) {
        secIdx = lo >>> SECTION_SHIFT;
        sec = p.section(lo);
        if (sec === undefined) break;
        p2pOk = !p2pdmaRefused(p, lo, flags);
      }
      const s = sec!;
      const i = lo & SECTION_MASK;
      if (s.order[i] !== HPAGE_PMD_ORDER) break;
      if (fast ? !fastBlockOk(p, lo, flags) || !folioAllowed(flags, HPAGE_PMD_ORDER, s.flags[i]!, s.mapping[i]!) : !p2pOk) break;
      const n = Math.min(max - done, HPAGE_PMD_NR);
      if (!grabLargeRefs(s, i, n, pin)) break;
      updates++;
      h.push(lo, n, lo, idx + done, rf);
      if (this.outRanges) batchAddPfnNum(this.batch, lo, n, lo);
      if (this.pages !== null) this.putPages(idx + done, lo, n);
      if (markAccessed) s.flags[i]! |= PG_referenced;
      if (touchEntry) words[o + 1] = hi | touchBits; // touch_pmd
      done += n;
      if (done >= max) break;
    }
    if (done > 0) {
      if (pin) k.vmstat.nr_foll_pin_acquired += done;
      p.stats.gupRefUpdates += updates;
      h.count(rf, done);
    }
    return done;
  }

  /** pages[idx..idx+n) = pfn..pfn+n (all pfn if `same`), growing the page array as needed. */
  private putPages(idx: number, pfn: number, n: number, same = false): void {
    let a = this.pages!;
    const need = idx + n;
    if (need > a.length) {
      let cap = a.length * 2;
      while (cap < need) cap *= 2;
      const b = new Uint32Array(cap);
      b.set(a);
      this.pages = a = b;
    }
    if (same) a.fill(pfn, idx, need);
    else for (let j = 0; j < n; j++) a[idx + j] = pfn + j;
  }

  /**
   * GUP-fast's grab of `n` physically contiguous order-0 folios [pfn, pfn + n)
   * (not the zero page) as pages[idx..idx+n): try_grab_folio on each, with
   * folio_mark_accessed, as one run. Returns the folios taken (stops before
   * the first that cannot be grabbed).
   */
  grabSmall(idx: number, pfn: number, n: number, flags: number): number {
    const p = this.k.phys;
    if (!(flags & (FOLL_GET | FOLL_PIN)) || this.handle === null || this.bias) {
      // bias-2019 overflows are thrown by tryGrabFolio: keep its path
      for (let j = 0; j < n; j++) {
        if (this.grab(idx + j, pfn + j, pfn + j, 1, false, flags) !== 0) return j;
        p.orFlags(pfn + j, PG_referenced);
      }
      return n;
    }
    const pin = (flags & FOLL_PIN) !== 0;
    const got = p.smallFoliosGrab(pfn, n, pin ? GUP_PIN_COUNTING_BIAS : 1, REF_MAX, PG_referenced);
    if (got === 0) return 0;
    if (pin) this.k.vmstat.nr_foll_pin_acquired += got;
    p.stats.gupRefUpdates += got;
    const rf = RUN_SMALL | (pin ? RUN_PIN | (flags & FOLL_LONGTERM ? RUN_LONGTERM : 0) : 0);
    const h = this.handle;
    const r = h.nRuns - 1;
    if (r >= this.mergeFloor && h.runFlags[r] === rf && h.runPfn[r]! + h.runCount[r]! === pfn && h.runIdx[r]! + h.runCount[r]! === idx) h.runCount[r]! += got;
    else h.push(pfn, got, pfn, idx, rf);
    h.count(rf, got);
    if (this.outRanges) batchAddSmallPfns(this.batch, pfn, got);
    if (this.pages !== null) this.putPages(idx, pfn, got);
    return got;
  }

  mark(): Mark {
    const runs = this.handle?.nRuns ?? 0;
    this.mergeFloor = runs; // truncating to the mark must not cut into a run
    return { runs, pages: this.batch.totalPfns };
  }

  /** Release (unpin_user_pages) everything taken since `m`; pages[] past it is stale. */
  truncate(m: Mark): void {
    this.dropRuns(m.runs, false);
    batchTruncate(this.batch, m.pages);
  }

  /** Take back every grab of the call (an exception aborts it). */
  rollbackAll(): void {
    this.dropRuns(0, true);
    batchTruncate(this.batch, 0);
  }

  private dropRuns(from: number, undo: boolean): void {
    const h = this.handle;
    if (h === null) return;
    // One update per folio: consecutive runs (or pages of SMALL runs) of the
    // same folio and kind are merged, walking back from the newest.
    let head = -1;
    let fl = 0;
    let total = 0;
    for (let r = h.nRuns - 1; r >= from; r--) {
      const n = h.runCount[r]!;
      const f = h.runFlags[r]!;
      const kind = f & ~RUN_SMALL;
      h.count(f, -n);
      if (f & RUN_SMALL) {
        const pfn = h.runPfn[r]!;
        for (let j = n - 1; j >= 0; j--) {
          if (pfn + j === head && kind === (fl & ~RUN_SMALL)) {
            total++;
            continue;
          }
          if (total > 0) gupPutFolio(this.k, head, total, fl, undo);
          head = pfn + j;
          fl = f;
          total = 1;
        }
        continue;
      }
      const hd = h.runHead[r]!;
      if (hd === head && kind === (fl & ~RUN_SMALL)) {
        total += n;
        continue;
      }
      if (total > 0) gupPutFolio(this.k, head, total, fl, undo);
      head = hd;
      fl = f;
      total = n;
    }
    if (total > 0) gupPutFolio(this.k, head, total, fl, undo);
    if (from < h.nRuns) h.nRuns = from;
  }
}

// ---------------------------------------------------------------------------
// Slow path: __get_user_pages and the per-level walkers

/** no_page_table: NULL (fault it in), or -EFAULT for FOLL_DUMP holes that would read as zeros. */
function noPageTable(vma: Vma, flags: number, addr: number): number {
  if (!(flags & FOLL_DUMP)) return 0;
  if (vma.isHugetlb) return vma.file!.cache.get(vma.pageIndex(addr)) >= 0 ? 0 : -EFAULT;
  if (vma.isAnonymous || (vma.device !== null && vma.device.basePfn < 0)) return -EFAULT;
  return 0;
}

/**
 * follow_page_mask for up to `max` pages from `addr` (all inside `vma`),
 * grabbing them as pages[idx..]. Returns the pages handled (> 0), 0 for
 * "nothing usable mapped, fault it in" (NULL), or -errno (-EMLINK: unshare).
 */
function followPageMask(c: GupCollector, vma: Vma, flags: number, addr: number, max: number, idx: number): number {
  const pool = c.k.pt;
  const gi = pgdIndex(addr);
  if (!(pool.hi(c.mm.pgd, gi) & E_TABLE)) return noPageTable(vma, flags, addr);
  return followPudMask(c, vma, flags, pool.lo(c.mm.pgd, gi), addr, max, idx);
}

function followPudMask(c: GupCollector, vma: Vma, flags: number, t: number, addr: number, max: number, idx: number): number {
  const pool = c.k.pt;
  const i = pudIndex(addr);
  const hi = pool.hi(t, i);
  if (hi & E_TABLE) return followPmdMask(c, vma, flags, pool.lo(t, i), addr, max, idx);
  if (!(hi & E_PRESENT)) return noPageTable(vma, flags, addr);
  return followHugeLeaf(c, vma, flags, LEVEL_PUD, t, i, addr, max, idx);
}

function followPmdMask(c: GupCollector, vma: Vma, flags: number, t: number, addr: number, max: number, idx: number): number {
  const pool = c.k.pt;
  const i = pmdIndex(addr);
  const hi = pool.hi(t, i);
  if (hi & E_TABLE) return followPageTable(c, vma, flags, pool.lo(t, i), addr, max, idx);
  // none, migration or device-private PMD: the fault resolves it
  if (!(hi & E_PRESENT)) return noPageTable(vma, flags, addr);
  if (hi & E_PROTNONE && !canFollowProtnone(vma, flags)) return noPageTable(vma, flags, addr);
  if (flags & FOLL_SPLIT_PMD) {
    if (!splitHugePmd(c.k, c.mm, vma, addr)) return -ENOMEM;
    const nhi = pool.hi(t, i);
    if (nhi & E_TABLE) return followPageTable(c, vma, flags, pool.lo(t, i), addr, max, idx);
    return noPageTable(vma, flags, addr); // a special leaf was cleared
  }
  let done = followHugeLeaf(c, vma, flags, LEVEL_PMD, t, i, addr, max, idx);
  // The PMD leaves that follow in the same table are taken in this step too
  // (one walk per PMD table, not per leaf): the common case in the collector's
  // loop, any other leaf through followHugeLeaf. The first entry that is not
  // a present huge leaf, or that followHugeLeaf does not take, ends the step;
  // the caller's next step walks to it again and handles it in full
  // (followHugeLeaf's refusals leave nothing behind but idempotent touches).
  let j = i + 1;
  while (done > 0 && done < max && j < PTRS_PER_TABLE) {
    const got = c.grabPmdRun(flags, t, j, max - done, idx + done, false);
    done += got;
    j += Math.ceil(got / HPAGE_PMD_NR);
    if (done >= max || j >= PTRS_PER_TABLE) break;
    const h = pool.hi(t, j);
    if (h & E_TABLE || !(h & E_PRESENT) || (h & E_PROTNONE && !canFollowProtnone(vma, flags))) break;
    const r = followHugeLeaf(c, vma, flags, LEVEL_PMD, t, j, addr + done * PAGE_SIZE, max - done, idx + done);
    if (r <= 0) break;
    done += r;
    j++;
  }
  return done;
}

/**
 * follow_huge_pud / follow_huge_pmd: the leaf's folio is taken as a whole,
 * every page of it from `addr` up to `max` with one try_grab_folio.
 */
function followHugeLeaf(c: GupCollector, vma: Vma, flags: number, level: Level, t: number, i: number, addr: number, max: number, idx: number): number {
  const k = c.k;
  const pool = k.pt;
  const p = k.phys;
  const lo = pool.lo(t, i);
  const hi = pool.hi(t, i);
  const pages = level === LEVEL_PUD ? HPAGE_PUD_NR : HPAGE_PMD_NR;
  const off = Math.floor(offsetIn(addr, levelSize(level)) / PAGE_SIZE);
  const n = Math.min(max, pages - off);
  const hz = level === LEVEL_PMD && p.isHugeZeroPfn(lo);
  const touched = hi | E_YOUNG | (flags & FOLL_WRITE ? E_DIRTY : 0);
  if (hi & E_SPECIAL && !hz) {
    // Deviation (spec 4.7): raw PFNs behind a huge leaf get the PTE rule.
    if (flags & FOLL_TOUCH) pool.setBits(t, i, touched);
    c.skip = n;
    return -EEXIST;
  }
  const head = p.folioHead(lo);
  if (flags & FOLL_WRITE && !canFollowWrite(p, vma, flags, hi, head)) return 0;
  if (flags & FOLL_DUMP && hz) return -EFAULT; // avoid dumping the huge zero folio
  if (hi & E_PROTNONE && !canFollowProtnone(vma, flags)) return 0;
  if (!(hi & E_WRITE) && gupMustUnshare(k, vma, flags, head)) return -EMLINK;
  if (p2pdmaRefused(p, head, flags)) return -EREMOTEIO;
  const touch = (flags & FOLL_TOUCH) !== 0;
  const e = c.grabLarge(idx, lo + off, head, n, flags, touch); // with folio_mark_accessed
  if (e !== 0) return e;
  if (touch) pool.setBits(t, i, touched); // touch_pmd / touch_pud
  return n;
}

/**
 * follow_page_pte over the rest of one PTE table (up to `max` pages): stops
 * before the first entry it cannot take; consecutive PTEs mapping
 * consecutive pages of one folio (or the zero page again) are grabbed as one
 * group with one update.
 */
function followPageTable(c: GupCollector, vma: Vma, flags: number, t: number, addr: number, max: number, idx: number): number {
  const k = c.k;
  const pool = k.pt;
  const p = k.phys;
  const words = pool.chunk(t);
  const b = pool.base(t);
  const i0 = pteIndex(addr);
  const n = Math.min(max, PTRS_PER_TABLE - i0);
  const write = (flags & FOLL_WRITE) !== 0;
  const zeroPfn = p.zeroPfn;
  const g = slowGroup;
  g.len = 0;
  g.head = -1;
  let checked = -1; // folio whose P2PDMA check passed
  let j = 0;
  let code = 0;
  for (; j < n; j++) {
    const o = b + 2 * (i0 + j);
    const lo = words[o]!;
    const hi = words[o + 1]!;
    if (lo === 0 && hi === 0) {
      code = noPageTable(vma, flags, addr + j * PAGE_SIZE);
      break;
    }
    if (!(hi & E_PRESENT) || (hi & E_PROTNONE && !canFollowProtnone(vma, flags))) {
      code = 0; // swap-like entries are resolved by the fault
      break;
    }
    const special = (hi & E_SPECIAL) !== 0;
    if (write && !canFollowWrite(p, vma, flags, hi, special ? -1 : lo)) {
      code = 0;
      break;
    }
    if (special) {
      if (flags & FOLL_DUMP) {
        code = -EFAULT;
        break;
      }
      if (lo !== zeroPfn) {
        if (j === 0) {
          // follow_pfn_pte: FOLL_TOUCH still marks the PTE, then -EEXIST
          if (flags & FOLL_TOUCH) pool.setBits(t, i0, hi | E_YOUNG | (write ? E_DIRTY : 0));
          c.skip = 1;
          code = -EEXIST;
        }
        break;
      }
    }
    const head = special ? lo : p.folioHead(lo);
    if (!(hi & E_WRITE) && gupMustUnshare(k, vma, flags, lo)) {
      code = -EMLINK;
      break;
    }
    if (head !== checked) {
      if (p2pdmaRefused(p, head, flags)) {
        code = -EREMOTEIO;
        break;
      }
      checked = head;
    }
    if (g.len > 0 && head === g.head && lo === (g.same ? g.pfn : g.pfn + g.len)) {
      g.len++;
      if (write && !(hi & E_DIRTY)) g.dirty = true;
      continue;
    }
    const e = flushSlowGroup(c, g, idx, flags);
    if (e !== 0) return g.j > 0 ? g.j : e;
    g.head = head;
    g.pfn = lo;
    g.len = 1;
    g.j = j;
    g.same = special;
    g.dirty = write && !(hi & E_DIRTY) && !(p.flags(head) & PG_dirty);
  }
  const e = flushSlowGroup(c, g, idx, flags);
  if (e !== 0) return g.j > 0 ? g.j : e;
  return j > 0 ? j : code;
}

/**
 * A group of consecutive PTEs mapping consecutive pages of one folio (or the
 * zero page again): record_subpages' batch. One per walker; the walkers do
 * not nest (faults run between follow steps, never inside one).
 */
class PteGroup {
  head = -1;
  pfn = 0;
  len = 0;
  /** index of the group's first entry in the step */
  j = 0;
  same = false;
  dirty = false;
}
const slowGroup = new PteGroup();
const fastGroup = new PteGroup();
keepShape(() => {
  // needs of the constructor only: no pages[], so no pin handle
  const k = { tunables: { pinAccounting: "current" } } as unknown as Kernel;
  const req: GupRequest = { variant: "get_user_pages", start: 0, nrPages: 0, gupFlags: 0, wantPages: false, output: "none", session: 0 };
  return new GupCollector(k, { id: 0 } as unknown as Mm, req);
});

/** try_grab_folio for the group, then FOLL_TOUCH's folio marks. 0 or -errno. */
function flushSlowGroup(c: GupCollector, g: PteGroup, idx: number, flags: number): number {
  if (g.len === 0) return 0;
  const e = c.grab(idx + g.j, g.pfn, g.head, g.len, g.same, flags);
  if (e !== 0) return e;
  if (flags & FOLL_TOUCH && !g.same) {
    // folio_mark_dirty for a write through a clean PTE; folio_mark_accessed
    const p = c.k.phys;
    if (g.dirty) p.orFlags(g.head, PG_dirty);
    p.orFlags(g.head, PG_referenced);
  }
  g.len = 0;
  return 0;
}

/** faultin_page: handle_mm_fault with GUP's fault flags. 0 or -errno. */
function faultinPage(c: GupCollector, vma: Vma, flags: number, addr: number, unshare: boolean): number {
  if (flags & FOLL_NOFAULT) return -EFAULT;
  let ff = 0;
  if (flags & FOLL_WRITE) ff |= FAULT_FLAG_WRITE;
  if (flags & FOLL_REMOTE) ff |= FAULT_FLAG_REMOTE;
  if (unshare) ff |= FAULT_FLAG_UNSHARE; // never together with WRITE: -EMLINK needs !FOLL_WRITE
  const r = handleMmFault(c.k, c.mm, vma, addr, ff);
  const e = vmFaultToErrno(r, flags);
  return e === 0 ? 0 : -e;
}

/**
 * __get_user_pages: walk [start, start + nrPages pages) VMA by VMA. Returns
 * the pages processed if any (partial success), else -errno.
 */
function getUserPagesLocked(c: GupCollector, start: number, nrPages: number, flags: number, idxBase: number): number {
  const mm = c.mm;
  let i = 0;
  let ret = 0;
  let vma: Vma | undefined;
  let faults = 0;
  while (i < nrPages) {
    const addr = start + i * PAGE_SIZE;
    if (vma === undefined || addr >= vma.end) {
      vma = addr < TASK_SIZE_MAX ? mm.findVma(addr) : undefined;
      if (vma === undefined) {
        ret = flags & FOLL_MADV_POPULATE ? -ENOMEM : -EFAULT;
        break;
      }
      const e = checkVmaFlags(vma, flags);
      if (e !== 0) {
        ret = flags & FOLL_MADV_POPULATE ? -EINVAL : e;
        break;
      }
    }
    const max = Math.min(nrPages - i, (vma.end - addr) / PAGE_SIZE);
    const r = followPageMask(c, vma, flags, addr, max, idxBase + i);
    if (r > 0) {
      i += r;
      faults = 0;
      continue;
    }
    if (r === 0 || r === -EMLINK) {
      if (faults++ >= MAX_FAULTS_PER_PAGE) {
        ret = -EFAULT;
        break;
      }
      const e = faultinPage(c, vma, flags, addr, r === -EMLINK);
      if (e !== 0) {
        ret = e;
        break;
      }
      continue;
    }
    if (r === -EEXIST && !c.wantPages) {
      // no struct page and no pages[] to fill: skip it
      i += c.skip;
      continue;
    }
    ret = r;
    break;
  }
  return i > 0 ? i : ret;
}

// ---------------------------------------------------------------------------
// FOLL_LONGTERM: migrate-then-pin (__gup_longterm_locked)

/** __gup_longterm_locked: pin; if any folio is not long-term pinnable, unpin all, migrate, repeat. */
function gupLongtermLocked(c: GupCollector, start: number, nrPages: number, flags: number, idxBase: number): number {
  if (!(flags & FOLL_LONGTERM)) return getUserPagesLocked(c, start, nrPages, flags, idxBase);
  for (let round = 0; ; round++) {
    const mark = c.mark();
    const n = getUserPagesLocked(c, start, nrPages, flags, idxBase);
    if (n <= 0) return n;
    const rc = checkAndMigrateMovable(c, mark);
    if (rc === 0) return n;
    if (rc !== -EAGAIN) return rc;
    if (round + 1 >= MAX_LONGTERM_ROUNDS) return -ENOMEM;
  }
}

/**
 * check_and_migrate_movable_pages for the runs taken since `mark`: 0 when all
 * are long-term pinnable; else the round's pins are dropped, the folios
 * migrated, and -EAGAIN (repeat) or the migration error returned.
 */
function checkAndMigrateMovable(c: GupCollector, mark: Mark): number {
  const h = c.handle;
  if (h === null) return 0;
  const p = c.k.phys;
  const collected: number[] = [];
  const seen = new Set<number>();
  let last = -1;
  for (let r = mark.runs; r < h.nRuns; r++) {
    const fl = h.runFlags[r]!;
    if (fl & RUN_NOOP) continue;
    // a SMALL run is one folio per page
    const n = fl & RUN_SMALL ? h.runCount[r]! : 1;
    for (let j = 0; j < n; j++) {
      const head = fl & RUN_SMALL ? h.runPfn[r]! + j : h.runHead[r]!;
      if (head === last) continue;
      last = head;
      if (!p.folioIsLongtermPinnable(head) && !seen.has(head)) {
        seen.add(head);
        collected.push(head);
      }
    }
  }
  if (collected.length === 0) return 0;
  // Device-coherent folios first (migrate_device_coherent_folio), then the rest.
  collected.sort((a, b) => Number(p.memoryType(b) === MEMORY_COHERENT) - Number(p.memoryType(a) === MEMORY_COHERENT));
  // Isolation takes a reference, so dropping the pins cannot free them.
  for (const head of collected) p.folioRefAdd(head, 1);
  c.truncate(mark);
  let rc = -EAGAIN;
  for (const head of collected) {
    if (rc === -EBUSY) {
      p.folioRefAdd(head, -1); // putback
      continue;
    }
    const e = migrateFolioForPin(c.k, head);
    if (e !== 0) {
      p.folioRefAdd(head, -1);
      if (rc === -EAGAIN || e === -EBUSY) rc = e;
    }
  }
  return rc;
}

/** Folio flags a migration carries over (the per-page ones are copied separately). */
const MIGRATE_HEAD_FLAGS = PG_anon | PG_dirty | PG_referenced | PG_lru | PG_mlocked | PG_swapcache | PG_pagecache | PG_lazyfree | PG_shmem | PG_hugetlb;

/**
 * Migrate one isolated folio to memory allocated without __GFP_MOVABLE
 * (memalloc_pin_save): copy contents and flags, move every mapping found by
 * rmap (MMU_NOTIFY_CLEAR over its range in each mm, as try_to_migrate), the
 * page-cache slot, mapcounts and references, free the old folio. Consumes the
 * isolation reference on success. 0, -ENOMEM, or -EBUSY (device-coherent).
 */
function migrateFolioForPin(k: Kernel, old: number): number {
  const p = k.phys;
  const order = p.folioOrder(old);
  const n = 2 ** order;
  const f = p.flags(old);
  const failErr = p.memoryType(old) === MEMORY_COHERENT ? -EBUSY : -ENOMEM;
  const ref = p.refcount(old);
  if (ref === 1) {
    // Only the isolation reference is left: it went away under us.
    p.folioRefAdd(old, -1);
    return 0;
  }
  const cacheRefs = f & PG_pagecache ? (f & PG_hugetlb ? 1 : n) : 0;
  const mapped = p.mapcount(old);
  if (ref !== mapped + cacheRefs + 1) {
    // folio_expected_ref_count + isolation: someone else holds it (GUP, pins)
    k.vmstat.pgmigrate_fail += n;
    return failErr;
  }
  const nw = k.inject.fail("migrate") ? -1 : p.allocFolio(order, 0);
  if (nw < 0) {
    k.vmstat.pgmigrate_fail += n;
    return failErr;
  }
  if (f & PG_has_data) for (let j = 0; j < n; j++) copyPageData(k, old + j, nw + j);
  p.orFlags(nw, f & MIGRATE_HEAD_FLAGS);
  if (f & PG_anon) for (let j = 0; j < n; j++) if (p.flags(old + j) & PG_anon_exclusive) p.orFlags(nw + j, PG_anon_exclusive);
  const mapping = p.mapping(old);
  const index = p.folioIndex(old);
  p.setMapping(nw, mapping, index);
  remapFolio(k, old, nw, n);
  k.mapcountAdd(nw, mapped);
  k.mapcountAdd(old, -mapped);
  const ent = p.entireMapcount(old);
  p.entireMapcountAdd(nw, ent);
  p.entireMapcountAdd(old, -ent);
  if (cacheRefs > 0) k.files.get(mapping)?.cache.setRange(index, nw, n);
  // The new folio takes the mappings' and the cache's references.
  p.folioRefAdd(nw, mapped + cacheRefs - 1);
  p.folioRefAdd(old, -ref);
  k.vmstat.pgmigrate_success += n;
  return 0;
}

const rmapCursor = new WalkCursor();

/** rmap walk of `old`: point every entry that maps it at `nw` (same bits). */
function remapFolio(k: Kernel, old: number, nw: number, n: number): void {
  const p = k.phys;
  const mapping = p.mapping(old);
  const index = p.folioIndex(old);
  const targets: { mm: Mm; s: number; e: number }[] = [];
  const add = (v: Vma, va0: number) => {
    const mm = k.vmaOwner(v);
    if (mm === undefined || mm.exited) return;
    const s = Math.max(v.start, va0);
    const e = Math.min(v.end, va0 + n * PAGE_SIZE);
    if (s < e) targets.push({ mm, s, e });
  };
  if (mapping < 0) {
    // anon: every VMA of the anon_vma family, at the folio's address
    const av = k.anonVmaById(-mapping);
    if (av !== undefined) for (const v of av.vmas) add(v, index * PAGE_SIZE);
  } else if (mapping > 0) {
    const file = k.files.get(mapping);
    if (file !== undefined) for (const v of file.vmas) add(v, v.start + (index - v.pgoff) * PAGE_SIZE);
  }
  for (const t of targets) {
    if (!retarget(k, t.mm, t.s, t.e, old, nw, n, false)) continue;
    k.withInvalidation(t.mm, t.s, t.e, MmuNotifyEvent.CLEAR, () => retarget(k, t.mm, t.s, t.e, old, nw, n, true));
  }
}

/** Find (and with `apply`, rewrite) the entries in [s, e) that map [old, old + n). */
function retarget(k: Kernel, mm: Mm, s: number, e: number, old: number, nw: number, n: number, apply: boolean): boolean {
  const pool = k.pt;
  const cur = rmapCursor;
  let found = false;
  let a = s;
  while (a < e) {
    walk(pool, mm.pgd, a, cur);
    if (cur.level === LEVEL_PTE) {
      const stop = Math.min(e, alignDown(a, PMD_SIZE) + PMD_SIZE);
      for (let x = a, j = cur.idx; x < stop; x += PAGE_SIZE, j++) {
        const lo = pool.lo(cur.table, j);
        const hi = pool.hi(cur.table, j);
        if (hi & E_PRESENT && !(hi & E_SPECIAL) && lo >= old && lo < old + n) {
          found = true;
          if (apply) pool.set(cur.table, j, nw + (lo - old), hi);
        }
      }
      a = stop;
      continue;
    }
    const size = cur.level === LEVEL_PGD ? 2 ** 39 : levelSize(cur.level);
    if (cur.level !== LEVEL_PGD && isPresentLeaf(cur.hi) && !(cur.hi & E_SPECIAL) && cur.lo >= old && cur.lo < old + n) {
      found = true;
      if (apply) pool.set(cur.table, cur.idx, nw + (cur.lo - old), cur.hi);
    }
    a = Math.min(e, alignDown(a, size) + size);
  }
  return found;
}

// ---------------------------------------------------------------------------
// GUP-fast (gup_fast_fallback / gup_fast)

/** gup_fast_fallback: the lockless walk, then the slow path for the rest. */
function gupFastFallback(c: GupCollector, start: number, nrPages: number, flags: number): number {
  const end = start + nrPages * PAGE_SIZE;
  if (end >= 2 ** 64) return -EOVERFLOW;
  if (end > TASK_SIZE_MAX) return -EFAULT;
  const nrPinned = gupFast(c, start, end, flags);
  c.fastPinned = nrPinned;
  if (nrPinned === nrPages || flags & FOLL_FAST_ONLY) return nrPinned;
  const ret = gupLongtermLocked(c, start + nrPinned * PAGE_SIZE, nrPages - nrPinned, flags | FOLL_TOUCH | FOLL_UNLOCKABLE, nrPinned);
  if (ret < 0) return nrPinned > 0 ? nrPinned : ret;
  return ret + nrPinned;
}

/** pte/pmd/pud_access_permitted: present for the hardware, user, writable if needed. */
function accessPermitted(hi: number, write: boolean): boolean {
  return (hi & (E_PRESENT | E_USER | E_PROTNONE)) === (E_PRESENT | E_USER) && (!write || (hi & E_WRITE) !== 0);
}

/**
 * try_grab_folio_fast's refusals (P2PDMA without the flag; a FOLL_LONGTERM pin
 * of a folio that is not long-term pinnable) and gup_fast_folio_allowed.
 */
function fastFolioOk(k: Kernel, head: number, flags: number): boolean {
  const p = k.phys;
  return fastBlockOk(p, head, flags) && fastFolioAllowed(p, head, flags);
}

/**
 * The refusals of try_grab_folio_fast, which depend only on where the head
 * lies: its section's pagemap (P2PDMA, device memory) and its pageblock's
 * migratetype and zone (folio_is_longterm_pinnable), so a walk may reuse the
 * answer for every head of one pageblock (except the zero page).
 */
function fastBlockOk(p: PhysMem, head: number, flags: number): boolean {
  if (p2pdmaRefused(p, head, flags)) return false;
  return !(flags & FOLL_PIN && flags & FOLL_LONGTERM && head !== p.zeroPfn && !p.folioIsLongtermPinnable(head));
}

/** gup_fast_folio_allowed */
function fastFolioAllowed(p: PhysMem, head: number, flags: number): boolean {
  return folioAllowed(flags, p.folioOrder(head), p.flags(head), p.mapping(head));
}

/** gup_fast_folio_allowed on the head's order, flags and mapping. */
function folioAllowed(flags: number, order: number, f: number, mapping: number): boolean {
  const rejectFileBacked = (flags & (FOLL_PIN | FOLL_LONGTERM | FOLL_WRITE)) === (FOLL_PIN | FOLL_LONGTERM | FOLL_WRITE);
  const checkSecretmem = order === 0; // CONFIG_SECRETMEM=y
  if (!rejectFileBacked && !checkSecretmem) return true;
  if (f & PG_hugetlb) return true;
  if (mapping === 0) return false; // truncated, or a driver page (vm_insert_page)
  if (mapping < 0) return true; // anonymous
  return !rejectFileBacked || (f & PG_shmem) !== 0;
}

/**
 * gup_fast: lockless walk of [start, end), stopping at the first entry it
 * cannot handle. Returns the pages taken. A FOLL_PIN walk during (or
 * racing with) fork's write-protect section takes nothing.
 */
function gupFast(c: GupCollector, start: number, end: number, flags: number): number {
  const mm = c.mm;
  const pool = c.k.pt;
  let seq = 0;
  if (flags & FOLL_PIN) {
    seq = mm.writeProtectSeq;
    if (seq & 1) return 0;
  }
  const mark = c.mark();
  let addr = start;
  let nr = 0;
  while (addr < end) {
    const gi = pgdIndex(addr);
    if (!(pool.hi(mm.pgd, gi) & E_TABLE)) break;
    const pudT = pool.lo(mm.pgd, gi);
    const ui = pudIndex(addr);
    const uhi = pool.hi(pudT, ui);
    const ulo = pool.lo(pudT, ui);
    if (!(uhi & E_TABLE)) {
      const leafEnd = Math.min(end, alignDown(addr, PUD_SIZE) + PUD_SIZE);
      const got = gupFastLeaf(c, flags, LEVEL_PUD, ulo, uhi, addr, leafEnd, nr);
      if (got === 0) break;
      nr += got;
      addr = leafEnd;
      continue;
    }
    const mi = pmdIndex(addr);
    const mhi = pool.hi(ulo, mi);
    const mlo = pool.lo(ulo, mi);
    const pmdEnd = Math.min(end, alignDown(addr, PMD_SIZE) + PMD_SIZE);
    if (!(mhi & E_TABLE)) {
      const got = gupFastLeaf(c, flags, LEVEL_PMD, mlo, mhi, addr, pmdEnd, nr);
      if (got === 0) break;
      nr += got;
      addr = pmdEnd;
      // the PMD leaves that follow in this table: their common case in one loop
      if (addr < end && mi + 1 < PTRS_PER_TABLE) {
        const more = c.grabPmdRun(flags, ulo, mi + 1, (end - addr) / PAGE_SIZE, nr, true);
        nr += more;
        addr += more * PAGE_SIZE;
      }
      continue;
    }
    const got = gupFastPteRange(c, flags, mlo, addr, pmdEnd, nr);
    nr += got;
    if (addr + got * PAGE_SIZE < pmdEnd) break;
    addr = pmdEnd;
  }
  if (flags & FOLL_PIN && mm.writeProtectSeq !== seq) {
    c.truncate(mark);
    return 0;
  }
  return nr;
}

/** gup_fast_pud_leaf / gup_fast_pmd_leaf: all of [addr, leafEnd) in one grab, or nothing. */
function gupFastLeaf(c: GupCollector, flags: number, level: Level, lo: number, hi: number, addr: number, leafEnd: number, idx: number): number {
  if (!accessPermitted(hi, (flags & FOLL_WRITE) !== 0)) return 0;
  if (hi & E_SPECIAL) return 0; // PFN maps and (6.18+) the huge zero folio
  const k = c.k;
  const p = k.phys;
  const head = p.folioHead(lo);
  if (!fastFolioOk(k, head, flags)) return 0;
  if (!(hi & E_WRITE) && gupMustUnshare(k, null, flags, head)) return 0;
  const off = Math.floor(offsetIn(addr, levelSize(level)) / PAGE_SIZE);
  const refs = (leafEnd - addr) / PAGE_SIZE;
  if (c.grabLarge(idx, lo + off, head, refs, flags, true) !== 0) return 0; // with folio_mark_accessed
  return refs;
}

/**
 * gup_fast_pte_range over [addr, stop) of one PTE table, grouped per folio;
 * consecutive order-0 folios that are physically contiguous form one group
 * too (grabbed folio by folio in one pass, recorded as one run).
 */
function gupFastPteRange(c: GupCollector, flags: number, t: number, addr: number, stop: number, idx: number): number {
  const k = c.k;
  const pool = k.pt;
  const p = k.phys;
  const words = pool.chunk(t);
  const b = pool.base(t);
  const i0 = pteIndex(addr);
  const n = (stop - addr) / PAGE_SIZE;
  const write = (flags & FOLL_WRITE) !== 0;
  const g = fastGroup;
  g.len = 0;
  g.head = -1;
  g.same = false; // here: the group is a stretch of order-0 folios
  const zeroPfn = p.zeroPfn;
  let okHead = -1;
  let okBlock = -1; // pageblock whose fastBlockOk passed
  let small = false; // okHead is an order-0 folio other than the zero page
  let secIdx = -1;
  let sec: PM.Section | undefined;
  let j = 0;
  for (; j < n; j++) {
    const o = b + 2 * (i0 + j);
    const lo = words[o]!;
    const hi = words[o + 1]!;
    if (!accessPermitted(hi, write) || hi & E_SPECIAL) break;
    // struct page fields straight from the section (page_folio and the
    // folio's order, flags and mapping), looked up once per section
    if (lo >>> SECTION_SHIFT !== secIdx) {
      secIdx = lo >>> SECTION_SHIFT;
      sec = p.section(lo);
    }
    let head = lo;
    let order = 0;
    if (sec !== undefined) {
      order = sec.order[lo & SECTION_MASK]!;
      if (order !== 0) head = lo - (lo % 2 ** order);
    }
    if (head !== okHead) {
      const block = head >>> PAGEBLOCK_ORDER;
      if (head === zeroPfn || block !== okBlock) {
        if (!fastBlockOk(p, head, flags)) break;
        if (head !== zeroPfn) okBlock = block;
      }
      if (order === 0 && sec !== undefined) {
        const si = head & SECTION_MASK;
        if (!folioAllowed(flags, 0, sec.flags[si]!, sec.mapping[si]!)) break;
      } else if (!fastFolioAllowed(p, head, flags)) break;
      okHead = head;
      small = order === 0 && sec !== undefined && head !== zeroPfn;
    }
    if (!(hi & E_WRITE) && gupMustUnshare(k, null, flags, lo)) break;
    if (g.len > 0 && lo === g.pfn + g.len && (small ? g.same : head === g.head)) {
      g.len++;
      continue;
    }
    if (g.len > 0) {
      const e = flushFastGroup(c, g, idx, flags);
      if (e >= 0) return e;
    }
    g.head = head;
    g.pfn = lo;
    g.len = 1;
    g.j = j;
    g.same = small;
  }
  if (g.len > 0) {
    const e = flushFastGroup(c, g, idx, flags);
    if (e >= 0) return e;
  }
  return j;
}

/** Grab a GUP-fast group; -1 when all of it was taken, else the pages of the step taken. */
function flushFastGroup(c: GupCollector, g: PteGroup, idx: number, flags: number): number {
  if (g.same) {
    const got = c.grabSmall(idx + g.j, g.pfn, g.len, flags);
    return got === g.len ? -1 : g.j + got;
  }
  if (c.grab(idx + g.j, g.pfn, g.head, g.len, false, flags) !== 0) return g.j;
  c.k.phys.orFlags(g.head, PG_referenced);
  return -1;
}
