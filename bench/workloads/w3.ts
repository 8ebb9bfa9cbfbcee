/**
 * W3 — unpin 1 GiB of 2 MiB folios three ways (performance.md §4; A3, A4, A8).
 *
 *   range     unpin_user_page_range_dirty_lock over each physically
 *             contiguous run of the pin's range answer (no page array)
 *   array     unpin_user_pages_dirty_lock over the page array (grouped by folio)
 *   per-page  the reference: one unpin_user_page (and dirtying) per entry
 * Every sample pins first (untimed; range or array output as the unpin
 * needs) and clears PG_dirty, so each timed unpin dirties every folio.
 * Targets: range ≥3× faster than the grouped array and ≥20× faster than
 * per-page; updates = folio count; dirty set once per folio.
 */
import { FOLL_LONGTERM, FOLL_WRITE } from "../../src/mm/constants.js";
import { PG_dirty } from "../../src/mm/physmem.js";
import { type GupResultLike, gup, gupUnavailable, type ReleaseResultLike } from "../lib/gup-api.js";
import { GiB, populate } from "../lib/setup.js";
import { timeAll, type Timed } from "../lib/stats.js";
import { atLeast, countRow, row, type Workload } from "../lib/types.js";
import { refPinUserPages, refUnpinUserPages } from "../reference/per-page-pin.js";

const BYTES = GiB;
const NPAGES = BYTES / 4096;
const FLAGS = FOLL_WRITE | FOLL_LONGTERM;
const SESSION = 1;

export const w3: Workload = {
  id: "W3",
  title: "unpin 1 GiB of 2 MiB folios: range vs grouped array vs per page",
  unavailable: gupUnavailable,
  async run(ctx) {
    const api = await gup();
    const s = populate(BYTES, "thp");
    const { k, mm, addr } = s;
    const folios = s.leaves.pmd;
    const p = k.phys;
    const clearDirty = (r: GupResultLike | null, pages: Uint32Array | null) => {
      // every folio of the pinned range, found from the answer
      if (r !== null) {
        for (let i = 0; i < r.ranges.end; i++)
          for (let pfn = r.ranges.pfns[i]!, e = pfn + r.ranges.npfns[i]!; pfn < e; pfn += 512) p.clearFlags(p.folioHead(pfn), PG_dirty);
      } else if (pages !== null) {
        for (let i = 0; i < NPAGES; i += 512) p.clearFlags(p.folioHead(pages[i]!), PG_dirty);
      }
    };
    const sum = (a: ReleaseResultLike[]) => ({
      folios: a.reduce((x, r) => x + r.folios, 0),
      dirtied: a.reduce((x, r) => x + r.dirtied, 0),
      pages: a.reduce((x, r) => x + r.pages, 0),
    });
    const counts = { range: { folios: 0, dirtied: 0, pages: 0, updates: 0, runs: 0 }, array: { folios: 0, dirtied: 0, pages: 0, updates: 0 }, perPage: { updates: 0 } };

    let rr: GupResultLike | null = null;
    let u0 = 0;
    const range: Timed = {
      before: () => {
        rr = api.pinUserPagesFast(k, mm, SESSION, addr, NPAGES, FLAGS, "ranges");
        if (rr.ret !== NPAGES) throw new Error(`W3 pin returned ${rr.ret}`);
        clearDirty(rr, null);
        u0 = p.stats.gupRefUpdates;
      },
      run: () => {
        const b = rr!.ranges;
        const res: ReleaseResultLike[] = [];
        for (let i = 0; i < b.end; i++) res.push(api.unpinUserPageRangeDirtyLock(k, SESSION, b.pfns[i]!, b.npfns[i]!, true));
        counts.range = { ...sum(res), updates: 0, runs: b.end };
      },
      after: () => {
        counts.range.updates = p.stats.gupRefUpdates - u0;
      },
    };
    let ra: GupResultLike | null = null;
    const array: Timed = {
      before: () => {
        ra = api.pinUserPagesFast(k, mm, SESSION, addr, NPAGES, FLAGS, "pages");
        if (ra.ret !== NPAGES || ra.pages === null) throw new Error(`W3 pin returned ${ra.ret}`);
        clearDirty(null, ra.pages);
        u0 = p.stats.gupRefUpdates;
      },
      run: () => {
        counts.array = { ...sum([api.unpinUserPagesDirtyLock(k, SESSION, ra!.pages!, NPAGES, true)]), updates: 0 };
      },
      after: () => {
        counts.array.updates = p.stats.gupRefUpdates - u0;
      },
    };
    const pages = new Uint32Array(NPAGES);
    const perPage: Timed = {
      before: () => {
        if (refPinUserPages(k, mm, addr, NPAGES, FLAGS, pages) !== NPAGES) throw new Error("W3 reference pin failed");
        clearDirty(null, pages);
        u0 = p.stats.gupRefUpdates;
      },
      run: () => refUnpinUserPages(k, pages, NPAGES, true),
      after: () => {
        counts.perPage.updates = p.stats.gupRefUpdates - u0;
      },
    };
    const [tRange, tArray, tPer] = await timeAll(ctx, [range, array, perPage]);
    return [
      row({
        name: "W3 unpin 1 GiB THP: range vs grouped array",
        figure: tRange!.ms,
        figureUnit: "ms",
        reference: tArray!.ms,
        referenceUnit: "ms",
        referenceLabel: "unpin_user_pages_dirty_lock",
        ratio: tArray!.ms / tRange!.ms,
        target: atLeast(3, "≥3× faster"),
        counts: { ...counts.range },
      }),
      row({
        name: "W3 unpin 1 GiB THP: range vs per page",
        figure: tRange!.ms,
        figureUnit: "ms",
        reference: tPer!.ms,
        referenceUnit: "ms",
        referenceLabel: "per-page unpin",
        ratio: tPer!.ms / tRange!.ms,
        target: atLeast(20, "≥20× faster"),
      }),
      countRow("W3 range unpin: updates", counts.range.updates, "updates", folios, "one per folio", { ...counts.range }),
      countRow("W3 range unpin: folios dirtied", counts.range.dirtied, "folios", folios, "once per folio"),
      countRow("W3 array unpin: updates", counts.array.updates, "updates", folios, `one per folio; per page makes ${counts.perPage.updates.toLocaleString("en-US")}`, {
        ...counts.array,
        perPageUpdates: counts.perPage.updates,
      }),
    ];
  },
};
