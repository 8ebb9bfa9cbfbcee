/**
 * The per-page reference path of W1-W4, kept deliberately per page like
 * gup_test's "-n 1" baseline (performance.md A6): for every 4 KiB page a
 * follow_page_mask walk from the PGD, the FOLL_LONGTERM pinnability check,
 * one try_grab_folio(folio, 1), one page-array slot; unpin walks the page
 * array and drops one pin per page (unpin_user_page in a loop), dirtying
 * the folio per page when asked.
 *
 * Built only from the model's public primitives (page-table walk, struct
 * page arrays), with the arithmetic of spec 2.2: a large folio takes
 * refcount += 1 and _pincount += 1 per page, a small one refcount += 1024;
 * the 4 KiB zero page is not pinned. Every update counts in
 * phys.stats.gupRefUpdates, as the product's primitives count theirs.
 *
 * Memory must be populated (and writable for FOLL_WRITE): the reference
 * never faults, as the workloads keep populate and pin apart (A7).
 */
import { FOLL_LONGTERM, FOLL_PIN, FOLL_WRITE, GUP_PIN_COUNTING_BIAS, Level, PAGE_SIZE } from "../../src/mm/constants.js";
import type { Kernel } from "../../src/mm/kernel.js";
import type { Mm } from "../../src/mm/mm.js";
import { E_SPECIAL, E_WRITE, isPresentLeaf, levelSize, walk, WalkCursor } from "../../src/mm/pagetable.js";
import { PG_dirty } from "../../src/mm/physmem.js";

const cursor = new WalkCursor();

/** try_grab_folio(folio, 1, FOLL_PIN) on the folio headed by `head`. */
export function refGrabOne(k: Kernel, head: number): void {
  const p = k.phys;
  if (head === p.zeroPfn) return;
  if (p.folioOrder(head) > 0) {
    p.folioRefAdd(head, 1);
    p.pincountAdd(head, 1);
  } else {
    p.folioRefAdd(head, GUP_PIN_COUNTING_BIAS);
  }
  k.vmstat.nr_foll_pin_acquired++;
  p.stats.gupRefUpdates++;
}

/** unpin_user_page: one pin off the folio of `pfn`. */
export function refUnpinOne(k: Kernel, pfn: number, makeDirty: boolean): void {
  const p = k.phys;
  const head = p.folioHead(pfn);
  if (head === p.zeroPfn) return;
  if (makeDirty && !(p.flags(head) & PG_dirty)) p.orFlags(head, PG_dirty);
  if (p.folioOrder(head) > 0) {
    p.pincountAdd(head, -1);
    p.folioRefAdd(head, -1);
  } else {
    p.folioRefAdd(head, -GUP_PIN_COUNTING_BIAS);
  }
  k.vmstat.nr_foll_pin_released++;
  p.stats.gupRefUpdates++;
}

/**
 * Pin `nrPages` pages from `start`, one page per step, into `pages`.
 * Returns the pages pinned (stops at the first page it cannot take).
 */
export function refPinUserPages(k: Kernel, mm: Mm, start: number, nrPages: number, gupFlags: number, pages: Uint32Array): number {
  const flags = gupFlags | FOLL_PIN;
  const p = k.phys;
  const pool = k.pt;
  if (!mm.hasPinned) mm.hasPinned = true;
  for (let i = 0; i < nrPages; i++) {
    const addr = start + i * PAGE_SIZE;
    walk(pool, mm.pgd, addr, cursor);
    const hi = cursor.hi;
    if (cursor.level === Level.PGD || !isPresentLeaf(hi) || hi & E_SPECIAL) return i;
    if (flags & FOLL_WRITE && !(hi & E_WRITE)) return i;
    const pfn = cursor.level === Level.PTE ? cursor.lo : cursor.lo + (addr % levelSize(cursor.level)) / PAGE_SIZE;
    const head = p.folioHead(pfn);
    if (flags & FOLL_LONGTERM && !p.folioIsLongtermPinnable(head)) return i;
    refGrabOne(k, head);
    pages[i] = pfn;
  }
  return nrPages;
}

/** unpin_user_page for every entry of the page array. */
export function refUnpinUserPages(k: Kernel, pages: Uint32Array, npages: number, makeDirty = false): void {
  for (let i = 0; i < npages; i++) refUnpinOne(k, pages[i]!, makeDirty);
}
