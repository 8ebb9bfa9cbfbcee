/**
 * The unpin family (spec 5.10) over the pin registry (pins.ts): release by
 * handle (all or a sub-range), by page list grouped per folio, by PFN range,
 * by folio; make_dirty once per folio; exact release arithmetic; what the
 * session does not hold is a "precondition" error that changes nothing.
 * Every kernel's invariants are checked after each test (gup-helpers.ts).
 */
import { describe, expect, it } from "vitest";
import { translate } from "../../src/mm/access.js";
import { FOLL_LONGTERM, FOLL_WRITE, PAGE_SIZE, PMD_SIZE } from "../../src/mm/constants.js";
import { MmError } from "../../src/mm/errors.js";
import type { Kernel } from "../../src/mm/kernel.js";
import type { Mm } from "../../src/mm/mm.js";
import { doMunmap, exitMm } from "../../src/mm/mmap.js";
import { readMemory } from "../../src/mm/access.js";
import { PG_dirty } from "../../src/mm/physmem.js";
import {
  putUserPages,
  releasePinHandle,
  releaseSession,
  unpinFolio,
  unpinFolios,
  unpinUserFolio,
  unpinUserPage,
  unpinUserPageRangeDirtyLock,
  unpinUserPages,
  unpinUserPagesDirtyLock,
} from "../../src/mm/pins.js";
import { counters, gup, mmapAnon, newKernel } from "./gup-helpers.js";

function pfnAt(k: Kernel, mm: Mm, addr: number): number {
  return translate(k, mm, addr)!.pfn;
}

function precondition(fn: () => unknown): MmError {
  let err: unknown;
  try {
    fn();
  } catch (e) {
    err = e;
  }
  expect(err).toBeInstanceOf(MmError);
  expect((err as MmError).kind).toBe("precondition");
  return err as MmError;
}

/** Two PMD-mapped THPs, both pinned whole (1024 pages, one handle). */
function twoThps() {
  const { k, mm } = newKernel();
  const a = mmapAnon(k, mm, 2 * PMD_SIZE, { populate: true });
  const h0 = pfnAt(k, mm, a);
  const h1 = pfnAt(k, mm, a + PMD_SIZE);
  const r = gup(k, mm, "pin_user_pages", a, 1024, 0, { output: "pages" });
  expect(r.ret).toBe(1024);
  return { k, mm, a, h0, h1, r };
}

describe("release by handle", () => {
  it("all of it: small folio -1024 per page, large -n/-n, vmstat released per page", () => {
    const { k, mm } = newKernel();
    const a = mmapAnon(k, mm, PMD_SIZE + 2 * PAGE_SIZE, { populate: true });
    const r = gup(k, mm, "pin_user_pages", a, 514);
    const c0 = counters(k);
    const res = releasePinHandle(k, 1, r.handle);
    expect(res).toEqual({ pages: 514, folios: res.folios, dirtied: 0 });
    const c1 = counters(k);
    expect(c1.rel - c0.rel).toBe(514);
    expect(c1.upd - c0.upd).toBe(res.folios);
    for (let i = 0; i < 514; i += 100) expect(k.phys.refcount(k.phys.folioHead(pfnAt(k, mm, a + i * PAGE_SIZE)))).toBe(1);
    expect(k.pins.handle(r.handle)).toBeUndefined();
    precondition(() => releasePinHandle(k, 1, r.handle));
  });

  it("a sub-range: [100, 200) of a 512-page THP pin is one update of -100/-100", () => {
    const { k, mm } = newKernel();
    const a = mmapAnon(k, mm, PMD_SIZE, { populate: true });
    const head = pfnAt(k, mm, a);
    const r = gup(k, mm, "pin_user_pages", a, 512);
    const c0 = counters(k);
    const res = releasePinHandle(k, 1, r.handle, 100, 100, true);
    expect(res).toEqual({ pages: 100, folios: 1, dirtied: 1 });
    expect([k.phys.refcount(head), k.phys.pincount(head)]).toEqual([413, 412]);
    expect(counters(k).rel - c0.rel).toBe(100);
    expect(counters(k).upd - c0.upd).toBe(1);
    expect(k.phys.flags(head) & PG_dirty).not.toBe(0);
    // [150, 250) overlaps what was released: refused, nothing changes
    precondition(() => releasePinHandle(k, 1, r.handle, 150, 100));
    expect([k.phys.refcount(head), k.phys.pincount(head)]).toEqual([413, 412]);
    expect(() => releasePinHandle(k, 1, r.handle, 500, 13)).toThrow(/outside handle/);
    releasePinHandle(k, 1, r.handle, 0, 100);
    releasePinHandle(k, 1, r.handle, 200, 312);
    expect([k.phys.refcount(head), k.phys.pincount(head)]).toEqual([1, 0]);
    expect(k.pins.handle(r.handle)).toBeUndefined();
  });

  it("another session cannot release it", () => {
    const { k, mm } = newKernel();
    const a = mmapAnon(k, mm, PAGE_SIZE, { populate: true });
    const r = gup(k, mm, "pin_user_pages", a, 1);
    precondition(() => releasePinHandle(k, 2, r.handle));
    precondition(() => unpinUserPage(k, 2, pfnAt(k, mm, a)));
    releasePinHandle(k, 1, r.handle);
  });
});

describe("release by page list (unpin_user_pages*)", () => {
  it("groups consecutive entries per folio: 1024 pages of two THPs are 2 updates, dirtied once each", () => {
    const { k, h0, h1, r } = twoThps();
    const c0 = counters(k);
    const res = unpinUserPagesDirtyLock(k, 1, r.pages!, 1024, true);
    expect(res).toEqual({ pages: 1024, folios: 2, dirtied: 2 });
    expect(counters(k).upd - c0.upd).toBe(2);
    expect(counters(k).rel - c0.rel).toBe(1024);
    for (const h of [h0, h1]) {
      expect([k.phys.refcount(h), k.phys.pincount(h)]).toEqual([1, 0]);
      expect(k.phys.flags(h) & PG_dirty).not.toBe(0);
    }
    expect(k.pins.handle(r.handle)).toBeUndefined();
  });

  it("without make_dirty nothing is dirtied; NULL entries are skipped; a negative count does nothing", () => {
    const { k, mm } = newKernel();
    const a = mmapAnon(k, mm, 4 * PAGE_SIZE, { populate: true });
    const r = gup(k, mm, "pin_user_pages", a, 4, 0, { output: "pages" });
    for (let i = 0; i < 4; i++) k.phys.clearFlags(r.pages![i]!, PG_dirty);
    const c0 = counters(k);
    expect(unpinUserPages(k, 1, r.pages!, -14)).toEqual({ pages: 0, folios: 0, dirtied: 0 });
    expect(counters(k)).toEqual(c0);
    const list = [r.pages![0]!, -1, r.pages![2]!, -1];
    expect(unpinUserPagesDirtyLock(k, 1, list, 4, false)).toEqual({ pages: 2, folios: 2, dirtied: 0 });
    expect(k.phys.refcount(r.pages![0]!)).toBe(1);
    expect(k.phys.refcount(r.pages![1]!)).toBe(1025);
    expect(k.phys.flags(r.pages![0]!) & PG_dirty).toBe(0);
    unpinUserPages(k, 1, [r.pages![1]!, r.pages![3]!], 2);
    expect(k.pins.handle(r.handle)).toBeUndefined();
  });

  it("pages of one folio in any order, and the same page twice when pinned twice", () => {
    const { k, mm } = newKernel();
    const a = mmapAnon(k, mm, PMD_SIZE, { populate: true });
    const head = pfnAt(k, mm, a);
    const r1 = gup(k, mm, "pin_user_pages", a + 10 * PAGE_SIZE, 2);
    const r2 = gup(k, mm, "pin_user_pages", a + 10 * PAGE_SIZE, 1);
    expect(k.phys.pincount(head)).toBe(3);
    const c0 = counters(k);
    const res = unpinUserPages(k, 1, [head + 11, head + 10, head + 10], 3);
    expect(res.pages).toBe(3);
    expect([k.phys.refcount(head), k.phys.pincount(head)]).toEqual([1, 0]);
    expect(counters(k).rel - c0.rel).toBe(3);
    expect(k.pins.handle(r1.handle)).toBeUndefined();
    expect(k.pins.handle(r2.handle)).toBeUndefined();
  });

  it("a page in the middle of a run: the run is split, the rest stays held", () => {
    const { k, mm, h0, r } = twoThps();
    unpinUserPage(k, 1, h0 + 7);
    expect(k.phys.pincount(h0)).toBe(511);
    precondition(() => unpinUserPage(k, 1, h0 + 7));
    // the handle still releases exactly what is left of [0, 1024)
    precondition(() => releasePinHandle(k, 1, r.handle, 0, 8));
    releasePinHandle(k, 1, r.handle, 0, 7);
    releasePinHandle(k, 1, r.handle, 8, 1016);
    expect(k.pins.handle(r.handle)).toBeUndefined();
    expect(k.phys.pincount(h0)).toBe(0);
    void mm;
  });

  it("all or nothing: one unheld page in the list changes nothing", () => {
    const { k, mm } = newKernel();
    const a = mmapAnon(k, mm, 3 * PAGE_SIZE, { populate: true });
    const r = gup(k, mm, "pin_user_pages", a, 2, 0, { output: "pages" });
    const unheld = pfnAt(k, mm, a + 2 * PAGE_SIZE);
    const c0 = counters(k);
    const e = precondition(() => unpinUserPages(k, 1, [r.pages![0]!, r.pages![1]!, unheld], 3));
    expect(e.reason).toMatch(/does not hold/);
    expect(counters(k)).toEqual(c0);
    expect(k.phys.refcount(r.pages![0]!)).toBe(1025);
    expect(k.phys.refcount(unheld)).toBe(1);
    unpinUserPages(k, 1, r.pages!, 2);
  });

  it("FOLL_GET references are released with put_page, not unpin (and vice versa)", () => {
    const { k, mm } = newKernel();
    const a = mmapAnon(k, mm, PMD_SIZE, { populate: true });
    const head = pfnAt(k, mm, a);
    const g = gup(k, mm, "get_user_pages_fast", a, 512, 0, { output: "pages" });
    expect(k.phys.refcount(head)).toBe(513);
    precondition(() => unpinUserPages(k, 1, g.pages!, 512));
    const c0 = counters(k);
    expect(putUserPages(k, 1, g.pages!, 512)).toEqual({ pages: 512, folios: 1, dirtied: 0 });
    expect(k.phys.refcount(head)).toBe(1);
    expect(counters(k).rel).toBe(c0.rel);
    const p = gup(k, mm, "pin_user_pages", a, 1, 0, { output: "pages" });
    precondition(() => putUserPages(k, 1, p.pages!, 1));
    unpinUserPage(k, 1, p.pages![0]!);
  });

  it("unpinning the 4 KiB zero page is a no-op, held or not; FOLL_GET zero-page references are real", () => {
    const { k, mm } = newKernel();
    const a = mmapAnon(k, mm, 4 * PAGE_SIZE);
    readMemory(k, mm, a, 4 * PAGE_SIZE);
    const zero = k.phys.zeroPfn;
    const ref0 = k.phys.refcount(zero);
    const c0 = counters(k);
    expect(unpinUserPage(k, 1, zero).pages).toBe(0);
    expect(unpinUserPageRangeDirtyLock(k, 1, zero, 1, true).pages).toBe(0);
    expect(unpinFolio(k, 1, zero).pages).toBe(0);
    expect(counters(k)).toEqual(c0);
    const g = gup(k, mm, "get_user_pages", a, 4, 0, { output: "pages" });
    expect(k.phys.refcount(zero)).toBe(ref0 + 4);
    expect(putUserPages(k, 1, g.pages!, 4)).toEqual({ pages: 4, folios: 1, dirtied: 0 });
    expect(k.phys.refcount(zero)).toBe(ref0);
    precondition(() => putUserPages(k, 1, [zero], 1));
    // a pin handle made of zero pages only holds nothing
    expect(gup(k, mm, "pin_user_pages", a, 4).handle).toBe(0);
  });
});

describe("release by PFN range (unpin_user_page_range_dirty_lock)", () => {
  it("a contiguous range over two THPs: one update per folio, no page array, dirty once per folio", () => {
    const { k, h0, h1, r } = twoThps();
    k.phys.clearFlags(h0, PG_dirty);
    k.phys.clearFlags(h1, PG_dirty);
    const c0 = counters(k);
    // [h0 + 500, h0 + 500 + 24): crosses into the second folio if adjacent
    const contiguous = h1 === h0 + 512;
    if (contiguous) {
      const res = unpinUserPageRangeDirtyLock(k, 1, h0 + 500, 24, true);
      expect(res).toEqual({ pages: 24, folios: 2, dirtied: 2 });
      expect([k.phys.pincount(h0), k.phys.pincount(h1)]).toEqual([500, 500]);
      expect(counters(k).upd - c0.upd).toBe(2);
      unpinUserPageRangeDirtyLock(k, 1, h0, 500, false);
      unpinUserPageRangeDirtyLock(k, 1, h1 + 12, 500, false);
    } else {
      unpinUserPageRangeDirtyLock(k, 1, h0, 512, true);
      unpinUserPageRangeDirtyLock(k, 1, h1, 512, true);
    }
    expect([k.phys.pincount(h0), k.phys.pincount(h1)]).toEqual([0, 0]);
    expect(counters(k).rel - c0.rel).toBe(1024);
    expect(k.pins.handle(r.handle)).toBeUndefined();
  });

  it("a range reaching past what is held is refused whole", () => {
    const { k, mm } = newKernel();
    const a = mmapAnon(k, mm, PMD_SIZE, { populate: true });
    const head = pfnAt(k, mm, a);
    const r = gup(k, mm, "pin_user_pages", a, 100);
    precondition(() => unpinUserPageRangeDirtyLock(k, 1, head + 50, 51, false));
    expect(k.phys.pincount(head)).toBe(100);
    precondition(() => unpinUserPageRangeDirtyLock(k, 1, 2 ** 31, 1, false)); // no struct page
    unpinUserPageRangeDirtyLock(k, 1, head, 100, false);
    expect(k.pins.handle(r.handle)).toBeUndefined();
  });

  it("small folios: -1024 each", () => {
    const { k, mm } = newKernel();
    const a = mmapAnon(k, mm, 2 * PAGE_SIZE, { populate: true });
    const r = gup(k, mm, "pin_user_pages", a, 2, FOLL_WRITE, { output: "pages" });
    const p0 = r.pages![0]!;
    gup(k, mm, "pin_user_pages", a, 1);
    expect(k.phys.refcount(p0)).toBe(2049);
    unpinUserPageRangeDirtyLock(k, 1, p0, 1, false);
    expect(k.phys.refcount(p0)).toBe(1025);
    releaseSession(k, 1);
    expect(k.phys.refcount(p0)).toBe(1);
  });
});

describe("unpin_folio(s) / unpin_user_folio", () => {
  it("pins come off the folio whichever pages they were taken on", () => {
    const { k, mm } = newKernel();
    const a = mmapAnon(k, mm, PMD_SIZE, { populate: true });
    const head = pfnAt(k, mm, a);
    gup(k, mm, "pin_user_pages", a + 3 * PAGE_SIZE, 10);
    expect(unpinFolio(k, 1, head + 200)).toEqual({ pages: 1, folios: 1, dirtied: 0 });
    expect(k.phys.pincount(head)).toBe(9);
    expect(unpinFolios(k, 1, [head, head + 1, head + 2], 3).folios).toBe(1);
    expect(k.phys.pincount(head)).toBe(6);
    precondition(() => unpinUserFolio(k, 1, head, 7));
    expect(k.phys.pincount(head)).toBe(6);
    unpinUserFolio(k, 1, head, 6);
    expect([k.phys.refcount(head), k.phys.pincount(head)]).toEqual([1, 0]);
    expect(k.pins.sessionCounters(1).pinCount).toBe(0);
  });
});

describe("lifetimes", () => {
  it("releaseSession drops everything of that session only", () => {
    const { k, mm } = newKernel();
    const a = mmapAnon(k, mm, PMD_SIZE, { populate: true });
    const head = pfnAt(k, mm, a);
    gup(k, mm, "pin_user_pages", a, 512, FOLL_LONGTERM);
    gup(k, mm, "get_user_pages", a, 7);
    const other = gup(k, mm, "pin_user_pages", a, 5, 0, { session: 2 });
    expect(k.pins.sessionCounters(1)).toEqual({ pinCount: 2, pinnedPages: 512, getPages: 7, lockedBytes: 512 * PAGE_SIZE });
    const c0 = counters(k);
    const res = releaseSession(k, 1);
    expect(res.pages).toBe(519);
    expect(counters(k).rel - c0.rel).toBe(512);
    expect([k.phys.refcount(head), k.phys.pincount(head)]).toEqual([6, 5]);
    expect(k.pins.sessionCounters(1).pinCount).toBe(0);
    expect(releaseSession(k, 1).pages).toBe(0);
    releasePinHandle(k, 2, other.handle);
  });

  it("pins survive munmap and exit; the folio is freed by the last unpin", () => {
    const { k, mm } = newKernel();
    const a = mmapAnon(k, mm, PMD_SIZE + PAGE_SIZE, { populate: true });
    const thp = pfnAt(k, mm, a);
    const small = pfnAt(k, mm, a + PMD_SIZE);
    const r = gup(k, mm, "pin_user_pages", a, 513);
    doMunmap(k, mm, a, PMD_SIZE);
    expect([k.phys.refcount(thp), k.phys.pincount(thp), k.phys.mapcount(thp)]).toEqual([512, 512, 0]);
    exitMm(k, mm);
    expect(k.phys.refcount(small)).toBe(1024);
    const freed = k.phys.stats.foliosFreed;
    releasePinHandle(k, 1, r.handle);
    expect(k.phys.isFree(thp)).toBe(true);
    expect(k.phys.isFree(small)).toBe(true);
    expect(k.phys.stats.foliosFreed).toBe(freed + 2);
  });

  it('"bias-2019" pins are released with the same arithmetic they were taken with', () => {
    const { k, mm } = newKernel({ tunables: { pinAccounting: "bias-2019" } });
    const a = mmapAnon(k, mm, PMD_SIZE, { populate: true });
    const head = pfnAt(k, mm, a);
    const r = gup(k, mm, "pin_user_pages", a, 512, 0, { output: "pages" });
    expect([k.phys.refcount(head), k.phys.pincount(head)]).toEqual([1 + 512 * 1024, 0]);
    k.tunables.pinAccounting = "current"; // switching profiles later does not change old pins
    const p = gup(k, mm, "pin_user_pages", a, 2);
    expect([k.phys.refcount(head), k.phys.pincount(head)]).toEqual([3 + 512 * 1024, 2]);
    unpinUserPages(k, 1, r.pages!, 512);
    expect([k.phys.refcount(head), k.phys.pincount(head)]).toEqual([3, 2]);
    releasePinHandle(k, 1, p.handle);
    expect(k.phys.refcount(head)).toBe(1);
  });
});
