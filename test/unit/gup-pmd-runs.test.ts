/**
 * The PMD-leaf runs of GUP (GupCollector.grabPmdRun: consecutive PMD leaves
 * of one table taken in one loop, by the slow path and by GUP-fast) against
 * the per-leaf code: the same requests over the same layout, once as one
 * call over the whole range and once as one call per 2 MiB (a single leaf
 * never starts a run), on two kernels built by the same steps (the model is
 * deterministic, so they have the same PFNs). Afterwards every struct page
 * and every page-table entry of the two must be equal, and so must the
 * answers, the vmstat pin counters and the refcount/pincount update counts.
 */
import { describe, expect, it } from "vitest";
import { cpuFault } from "../../src/mm/access.js";
import {
  FOLL_FORCE,
  FOLL_LONGTERM,
  Level,
  FOLL_WRITE,
  MADV_DONTNEED,
  PAGE_SIZE,
  PMD_SIZE,
  PROT_READ,
} from "../../src/mm/constants.js";
import { GUP_VARIANTS, type GupVariant } from "../../src/mm/gup.js";
import { forEachLeaf } from "../../src/mm/inspect.js";
import type { Kernel } from "../../src/mm/kernel.js";
import type { Mm } from "../../src/mm/mm.js";
import { doMadvise, doMprotect, forkMm } from "../../src/mm/mmap.js";
import { E_DIRTY, E_PRESENT, E_TABLE, E_YOUNG, findTable, pmdIndex } from "../../src/mm/pagetable.js";
import { batchFolios, batchRuns } from "../../src/mm/pfn-batch.js";
import { counters, gup, mmapAnon, newKernel } from "./gup-helpers.js";

const PMDS = 12;
const NPAGES = (PMDS * PMD_SIZE) / PAGE_SIZE;

interface Layout {
  k: Kernel;
  mm: Mm;
  a: number;
}

/**
 * 12 PMDs of anonymous THP in one VMA, with leaves a run must stop at. For
 * the slow path ("mixed"): PMD 3 the huge zero folio (read fault), PMD 6
 * split to PTEs (MADV_DONTNEED of one page), PMD 8 never faulted, the rest
 * writable THPs. GUP-fast falls back to the slow path for the rest of the
 * range at the first entry it cannot take, so one call and calls per PMD
 * differ there by design (the slow path touches what GUP-fast does not):
 * its layout ("fast") keeps only what GUP-fast takes, a PTE-mapped PMD 6
 * (the page dropped refaulted as a 4 KiB page), and ends in the hole of
 * PMD 11.
 */
function layout(kind: "mixed" | "fast"): Layout {
  const { k, mm } = newKernel();
  const a = mmapAnon(k, mm, PMDS * PMD_SIZE + PMD_SIZE);
  const base = Math.ceil(a / PMD_SIZE) * PMD_SIZE;
  const hole = kind === "mixed" ? 8 : 11;
  for (let i = 0; i < PMDS; i++) {
    if (i === hole) continue;
    cpuFault(k, mm, base + i * PMD_SIZE, i === 3 && kind === "mixed" ? "read" : "write", 0, true);
  }
  doMadvise(k, mm, base + 6 * PMD_SIZE + 5 * PAGE_SIZE, PAGE_SIZE, MADV_DONTNEED);
  if (kind === "fast") cpuFault(k, mm, base + 6 * PMD_SIZE + 5 * PAGE_SIZE, "write", 0, true); // a 4 KiB page in the hole
  return { k, mm, a: base };
}

/** Clear the accessed and dirty bits of every PMD leaf (as page-idle tracking would), so that FOLL_TOUCH shows. */
function age(l: Layout): void {
  for (let i = 0; i < PMDS; i++) {
    const va = l.a + i * PMD_SIZE;
    const t = findTable(l.k.pt, l.mm.pgd, va, Level.PMD);
    const hi = l.k.pt.hi(t, pmdIndex(va));
    if (hi & E_PRESENT && !(hi & E_TABLE)) l.k.pt.setBits(t, pmdIndex(va), hi & ~(E_YOUNG | E_DIRTY));
  }
}

/** Everything GUP may change: struct pages of every section, page-table leaves. */
function state(l: Layout): { pages: number[][]; leaves: number[][] } {
  const p = l.k.phys;
  const pages: number[][] = [];
  forEachLeaf(l.k, l.mm, l.a, l.a + PMDS * PMD_SIZE, (level, addr, lo, hi) => {
    const s = p.section(lo);
    if (s === undefined) return;
    const head = p.folioHead(lo);
    pages.push([addr, head, p.refcount(head), p.pincount(head), p.mapcount(head), p.flags(head), p.flags(lo)]);
  });
  const leaves: number[][] = [];
  forEachLeaf(l.k, l.mm, l.a, l.a + PMDS * PMD_SIZE, (level, addr, lo, hi) => leaves.push([level, addr, lo, hi]));
  return { pages, leaves };
}

const CASES: [string, GupVariant, number][] = [
  ["pin_user_pages, write", "pin_user_pages", FOLL_WRITE],
  ["pin_user_pages, read-only", "pin_user_pages", 0],
  ["pin_user_pages, long-term write", "pin_user_pages", FOLL_WRITE | FOLL_LONGTERM],
  ["pin_user_pages_fast, write", "pin_user_pages_fast", FOLL_WRITE],
  ["pin_user_pages_fast, long-term read-only", "pin_user_pages_fast", FOLL_LONGTERM],
  ["get_user_pages, read", "get_user_pages", 0],
  ["get_user_pages, forced write", "get_user_pages", FOLL_WRITE | FOLL_FORCE],
  ["get_user_pages_fast, write", "get_user_pages_fast", FOLL_WRITE],
];

describe("PMD-leaf runs equal the per-leaf path", () => {
  for (const [name, variant, flags] of CASES) {
    const fast = GUP_VARIANTS[variant].fast;
    for (const forked of fast ? [false] : [false, true]) {
      it(`${name}${forked ? ", after fork" : ""}`, () => {
        const one = layout(fast ? "fast" : "mixed");
        const per = layout(fast ? "fast" : "mixed");
        if (forked) {
          for (const l of [one, per]) {
            // every PMD COW-shared with a child, then all but PMD 10 made
            // exclusive again by write faults (PMD 3 stays the huge zero folio)
            forkMm(l.k, l.mm, "child", 1);
            for (let i = 0; i < PMDS; i++) if (i !== 10 && i !== 8) cpuFault(l.k, l.mm, l.a + i * PMD_SIZE, i === 3 ? "read" : "write", 0, true);
          }
        }
        age(one);
        age(per);
        const c0 = [counters(one.k), counters(per.k)];
        const whole = gup(one.k, one.mm, variant, one.a, NPAGES, flags);
        const parts = [];
        let ret = 0;
        for (let i = 0; i < PMDS; i++) {
          const r = gup(per.k, per.mm, variant, per.a + i * PMD_SIZE, PMD_SIZE / PAGE_SIZE, flags);
          parts.push(r);
          if (r.ret <= 0) break;
          ret += r.ret;
          if (r.ret < PMD_SIZE / PAGE_SIZE) break;
        }
        expect(whole.ret).toBe(ret);
        expect(whole.ret).toBe(NPAGES); // every case pins it all (faulting or unsharing where needed)
        expect(state(one)).toEqual(state(per));
        const d = (k: Kernel, c: ReturnType<typeof counters>) => {
          const n = counters(k);
          return [n.acq - c.acq, n.rel - c.rel];
        };
        expect(d(one.k, c0[0]!)).toEqual(d(per.k, c0[1]!));
        // the same folios and PFNs, in the same order
        expect(batchFolios(whole.ranges)).toEqual(parts.flatMap((r) => batchFolios(r.ranges)));
        expect(batchRuns(whole.ranges).reduce((s, r) => s + r.count, 0)).toBe(NPAGES);
        // one update per folio taken, whichever path
        expect(whole.refUpdates).toBe(parts.reduce((s, r) => s + r.refUpdates, 0));
        one.k.pins.releaseHandle(1, whole.handle);
        for (const r of parts) if (r.handle !== 0) per.k.pins.releaseHandle(1, r.handle);
        expect(state(one)).toEqual(state(per));
      });
    }
  }

  it("a read-only pin across a PROT_READ VMA in the middle: every page pinned in place, nothing copied", () => {
    const l = layout("mixed");
    doMprotect(l.k, l.mm, l.a + 2 * PMD_SIZE, 2 * PMD_SIZE, PROT_READ);
    const before = state(l);
    const r = gup(l.k, l.mm, "pin_user_pages", l.a, NPAGES, 0);
    expect(r.ret).toBe(NPAGES);
    expect(batchRuns(r.ranges).reduce((s, x) => s + x.count, 0)).toBe(NPAGES);
    // PMDs 2 and 3 of the read-only VMA: the exclusive THP and the huge zero
    // folio (a short-term pin does not unshare it) are pinned in place; the
    // read fault of the pin maps the unfaulted PMD 8 to the huge zero folio too
    const headAt = (st: ReturnType<typeof state>, pmd: number) => st.pages.find((x) => x[0] === l.a + pmd * PMD_SIZE)?.[1];
    const after = state(l);
    const hz = l.k.phys.hugeZeroPfn;
    expect([headAt(after, 2), headAt(after, 3), headAt(after, 8)]).toEqual([headAt(before, 2), hz, hz]);
    expect(l.k.phys.pincount(headAt(after, 2)!)).toBe(PMD_SIZE / PAGE_SIZE);
    expect(l.k.phys.pincount(hz)).toBe((2 * PMD_SIZE) / PAGE_SIZE);
    l.k.pins.releaseHandle(1, r.handle);
    expect([l.k.phys.pincount(headAt(after, 2)!), l.k.phys.pincount(hz)]).toEqual([0, 0]);
  });
});
