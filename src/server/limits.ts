/**
 * Daemon limits (config.ts): each refusal is RESOURCE_EXHAUSTED with errno
 * ENOMEM and a reason naming the limit and its flag, checked before the
 * request allocates anything in proportion to what it claims.
 */
import { status } from "@grpc/grpc-js";
import {
  FOLL_LONGTERM,
  FOLL_PIN,
  MADV_DOFORK,
  MADV_DONTFORK,
  MADV_HUGEPAGE,
  MADV_KEEPONFORK,
  MADV_NOHUGEPAGE,
  MADV_WIPEONFORK,
  MAP_FIXED,
  PAGE_SIZE,
  PROT_EXEC,
  PROT_READ,
  PROT_WRITE,
  VM_ACCESS_FLAGS,
  VM_DONTCOPY,
  VM_EXEC,
  VM_HUGEPAGE,
  VM_NOHUGEPAGE,
  VM_READ,
  VM_WIPEONFORK,
  VM_WRITE,
} from "../mm/constants.js";
import type { Kernel } from "../mm/kernel.js";
import type { Mm } from "../mm/mm.js";
import { ERRNO, StatusError } from "./errors.js";
import type { ServiceDeps } from "./handler.js";

export function limitExceeded(reason: string): never {
  throw new StatusError(status.RESOURCE_EXHAUSTED, ERRNO.ENOMEM, reason);
}

/** A page count a request names (nr_pages, npages) against --max-pages-per-request. */
export function checkPagesLimit(d: ServiceDeps, n: number, field: string): number {
  const max = d.config.maxPagesPerRequest ?? Number.MAX_SAFE_INTEGER;
  if (n > max) limitExceeded(`${field} ${n} exceeds the limit of ${max} pages per request (--max-pages-per-request)`);
  return n;
}

/** One more mm for `session` against --max-mms-per-session. */
export function checkMmsLimit(d: ServiceDeps, k: Kernel, session: number): void {
  const max = d.config.maxMmsPerSession ?? Number.MAX_SAFE_INTEGER;
  let n = 0;
  for (const mm of k.mms.values()) if (!mm.exited && mm.ownerSession === session) n++;
  if (n >= max) limitExceeded(`session ${session} owns ${n} mms, the limit (--max-mms-per-session ${max})`);
}

/** VMAs over the live mms `session` owns. */
function sessionVmas(k: Kernel, session: number): number {
  let n = 0;
  for (const mm of k.mms.values()) if (!mm.exited && mm.ownerSession === session) n += mm.mapCount;
  return n;
}

/**
 * `growth` more VMAs in an mm of `session` against --max-vmas-per-session.
 * Callers count the VMAs an operation adds before any merge, under the mm's
 * lock and before the model changes anything.
 */
export function checkVmasLimit(d: ServiceDeps, k: Kernel, session: number, growth: number, what: string): void {
  if (growth <= 0) return;
  const max = d.config.maxVmasPerSession ?? Number.MAX_SAFE_INTEGER;
  const n = sessionVmas(k, session);
  if (n + growth > max)
    limitExceeded(`${what} would add ${growth} VMA${growth === 1 ? "" : "s"} to the ${n} of session ${session}, beyond the limit (--max-vmas-per-session ${max})`);
}

const pageEnd = (addr: number, len: number): number => addr + Math.ceil(len / PAGE_SIZE) * PAGE_SIZE;

/** VMAs an unmap of [start, end) adds: the pieces left of split VMAs minus those removed. */
export function unmapVmaGrowth(mm: Mm, start: number, end: number): number {
  const vmas = mm.vmasIn(start, end);
  if (vmas.length === 0) return 0;
  return (vmas[0]!.start < start ? 1 : 0) + (vmas[vmas.length - 1]!.end > end ? 1 : 0) - vmas.length;
}

/** VMAs an mmap adds before merging: one, plus what MAP_FIXED's unmap of the range adds. */
export function mmapVmaGrowth(mm: Mm, addr: number, len: number, flags: number): number {
  return 1 + (flags & MAP_FIXED ? unmapVmaGrowth(mm, addr, pageEnd(addr, len)) : 0);
}

export function munmapVmaGrowth(mm: Mm, addr: number, len: number): number {
  return unmapVmaGrowth(mm, addr, pageEnd(addr, len));
}

/** VMAs a flags change over [start, end) adds by splitting the VMAs at its ends. */
function flagsVmaGrowth(mm: Mm, start: number, end: number, newFlags: (flags: number) => number): number {
  const vmas = mm.vmasIn(start, end);
  if (vmas.length === 0) return 0;
  const first = vmas[0]!;
  const last = vmas[vmas.length - 1]!;
  return (first.start < start && newFlags(first.flags) !== first.flags ? 1 : 0) + (last.end > end && newFlags(last.flags) !== last.flags ? 1 : 0);
}

export function mprotectVmaGrowth(mm: Mm, start: number, len: number, prot: number): number {
  const want = (prot & PROT_READ ? VM_READ : 0) | (prot & PROT_WRITE ? VM_WRITE : 0) | (prot & PROT_EXEC ? VM_EXEC : 0);
  return flagsVmaGrowth(mm, start, pageEnd(start, len), (f) => (f & ~VM_ACCESS_FLAGS) | want);
}

const MADVISE_FLAGS: Record<number, (f: number) => number> = {
  [MADV_HUGEPAGE]: (f) => (f & ~VM_NOHUGEPAGE) | VM_HUGEPAGE,
  [MADV_NOHUGEPAGE]: (f) => (f & ~VM_HUGEPAGE) | VM_NOHUGEPAGE,
  [MADV_DONTFORK]: (f) => f | VM_DONTCOPY,
  [MADV_DOFORK]: (f) => f & ~VM_DONTCOPY,
  [MADV_WIPEONFORK]: (f) => f | VM_WIPEONFORK,
  [MADV_KEEPONFORK]: (f) => f & ~VM_WIPEONFORK,
};

export function madviseVmaGrowth(mm: Mm, start: number, len: number, advice: number): number {
  const f = MADVISE_FLAGS[advice];
  return f === undefined ? 0 : flagsVmaGrowth(mm, start, pageEnd(start, len), f);
}

/** VMAs a fork gives the child: the parent's, but VM_DONTCOPY ones. */
export function forkVmaGrowth(parent: Mm): number {
  let n = 0;
  for (const v of parent.vmas) if (!(v.flags & VM_DONTCOPY)) n++;
  return n;
}

/** A FOLL_LONGTERM pin of `nrPages` more pages for `session` against --max-longterm-pages-per-session. */
export function checkLongtermPinLimit(d: ServiceDeps, k: Kernel, session: number, flags: number, nrPages: number): void {
  if ((flags & (FOLL_PIN | FOLL_LONGTERM)) !== (FOLL_PIN | FOLL_LONGTERM) || nrPages <= 0) return;
  const max = d.config.maxLongtermPagesPerSession ?? Number.MAX_SAFE_INTEGER;
  const held = k.pins.lockedPages(session);
  if (held + nrPages > max)
    limitExceeded(
      `long-term pin of ${nrPages} pages would give session ${session} ${held + nrPages} FOLL_LONGTERM pages, beyond the limit (--max-longterm-pages-per-session ${max})`,
    );
}
