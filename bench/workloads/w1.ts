/**
 * W1 — pin 1 GiB of 2 MiB THP (performance.md §4; anchors A1, A2, A4, A9).
 *
 * 512 PMD-mapped anonymous THPs, already faulted, pinned with
 * pin_user_pages_fast(FOLL_WRITE | FOLL_PIN | FOLL_LONGTERM) in-process.
 * Timed: the pin call only (gup_test's "get"); the unpin runs untimed after
 * each sample. Reference: the per-page path of bench/reference.
 * Targets: refcount/pincount updates = 512 (exact); ≥50× faster with range
 * output; ≥5× faster with the legacy page-array output.
 */
import { FOLL_LONGTERM, FOLL_WRITE } from "../../src/mm/constants.js";
import { type GupOutput, type GupResultLike, gup, gupUnavailable } from "../lib/gup-api.js";
import { GiB, populate } from "../lib/setup.js";
import { timeAll, type Timed } from "../lib/stats.js";
import { atLeast, countRow, row, type Row, type Workload } from "../lib/types.js";
import { refPinUserPages, refUnpinUserPages } from "../reference/per-page-pin.js";

export const W1_BYTES = GiB;
export const W1_PAGES = W1_BYTES / 4096;
export const W1_FLAGS = FOLL_WRITE | FOLL_LONGTERM;
const SESSION = 1;

export const w1: Workload = {
  id: "W1",
  title: "pin 1 GiB of 2 MiB THP, FOLL_LONGTERM, in-process",
  unavailable: gupUnavailable,
  async run(ctx) {
    const api = await gup();
    const s = populate(W1_BYTES, "thp");
    const { k, mm, addr } = s;
    const last: Record<GupOutput, GupResultLike | null> = { ranges: null, pages: null, none: null };
    const product = (output: GupOutput): Timed => {
      let r: GupResultLike | null = null;
      return {
        run: () => {
          r = api.pinUserPagesFast(k, mm, SESSION, addr, W1_PAGES, W1_FLAGS, output);
        },
        after: () => {
          if (r === null || r.ret !== W1_PAGES) throw new Error(`W1 pin (${output}) returned ${r?.ret}: ${r?.warning}`);
          last[output] = r;
          api.releasePinHandle(k, SESSION, r.handle);
        },
      };
    };
    const pages = new Uint32Array(W1_PAGES);
    let refUpdates = 0;
    const reference: Timed = {
      before: () => {
        refUpdates = k.phys.stats.gupRefUpdates;
      },
      run: () => refPinUserPages(k, mm, addr, W1_PAGES, W1_FLAGS, pages),
      after: () => {
        refUpdates = k.phys.stats.gupRefUpdates - refUpdates;
        refUnpinUserPages(k, pages, W1_PAGES);
      },
    };
    const [tRange, tPages, tRef] = await timeAll(ctx, [product("ranges"), product("pages"), reference]);
    const ref = tRef!.ms;
    const rRange = last.ranges!;
    const rPages = last.pages!;
    const folios = s.leaves.pmd;
    const rows: Row[] = [
      row({
        name: "W1 pin 1 GiB THP, range output",
        figure: tRange!.ms,
        figureUnit: "ms",
        reference: ref,
        referenceUnit: "ms",
        referenceLabel: "per-page pin, page array",
        ratio: ref / tRange!.ms,
        target: atLeast(50, "≥50× faster"),
        counts: { refUpdates: rRange.refUpdates, entries: rRange.ranges.end, pages: rRange.ret },
      }),
      row({
        name: "W1 pin 1 GiB THP, page-array output",
        figure: tPages!.ms,
        figureUnit: "ms",
        reference: ref,
        referenceUnit: "ms",
        referenceLabel: "per-page pin, page array",
        ratio: ref / tPages!.ms,
        target: atLeast(5, "≥5× faster"),
        counts: { refUpdates: rPages.refUpdates, pages: rPages.ret },
      }),
      countRow("W1 refcount/pincount updates", rRange.refUpdates, "updates", folios, `one per folio; reference makes ${refUpdates.toLocaleString("en-US")}`, {
        referenceUpdates: refUpdates,
        folios,
      }),
    ];
    return rows;
  },
};
