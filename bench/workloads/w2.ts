/**
 * W2 — pin 16 GiB of 1 GiB PUD folios (performance.md §4; anchors A2, A9, A10).
 *
 * Private anonymous hugetlb with 1 GiB pages (PUD leaves), already faulted,
 * pin_user_pages_fast(FOLL_WRITE | FOLL_LONGTERM) with range output. Timed:
 * the pin; unpin untimed. Compared with (a) the per-page reference over the
 * same 16 GiB and (b) the same product call over 16 GiB of 2 MiB THPs.
 * Targets: ≥1000× faster than per-page; 2 MiB → 1 GiB folios over the same
 * bytes cuts time ≥100× (time grows with folios, not pages); ≤2 µs per
 * 1 GiB folio in-process (an absolute figure of the spec).
 * --quick: 4 GiB instead of 16.
 */
import { FOLL_LONGTERM, FOLL_WRITE } from "../../src/mm/constants.js";
import { type GupResultLike, gup, gupUnavailable } from "../lib/gup-api.js";
import { GiB, populate, type Populated } from "../lib/setup.js";
import { collectGarbage, timeAll, type Timed } from "../lib/stats.js";
import { absoluteRow, atLeast, atMost, countRow, row, type Workload } from "../lib/types.js";
import { refPinUserPages, refUnpinUserPages } from "../reference/per-page-pin.js";

const FLAGS = FOLL_WRITE | FOLL_LONGTERM;
const SESSION = 1;

export const w2: Workload = {
  id: "W2",
  title: "pin 16 GiB of 1 GiB PUD folios (hugetlb), range output",
  unavailable: gupUnavailable,
  async run(ctx) {
    const api = await gup();
    const gib = ctx.opts.quick ? 4 : 16;
    const bytes = gib * GiB;
    const npages = bytes / 4096;
    const pud = populate(bytes, "hugetlb-1g");
    const thp = populate(bytes, "thp");
    const last = new Map<Populated, GupResultLike>();
    const product = (s: Populated): Timed => {
      let r: GupResultLike | null = null;
      return {
        run: () => {
          r = api.pinUserPagesFast(s.k, s.mm, SESSION, s.addr, npages, FLAGS, "ranges");
        },
        after: () => {
          if (r === null || r.ret !== npages) throw new Error(`W2 pin returned ${r?.ret}: ${r?.warning}`);
          last.set(s, r);
          api.releasePinHandle(s.k, SESSION, r.handle);
        },
      };
    };
    const pages = new Uint32Array(npages);
    const reference: Timed = {
      run: () => refPinUserPages(pud.k, pud.mm, pud.addr, npages, FLAGS, pages),
      after: () => refUnpinUserPages(pud.k, pages, npages),
    };
    const [tPud, tThp, tRef] = await timeAll(ctx, [product(pud), product(thp), reference]);
    const rPud = last.get(pud)!;
    const folios = pud.leaves.pud;
    const perFolioUs = (tPud!.ms * 1000) / folios;
    const rows = [
      row({
        name: `W2 pin ${gib} GiB of 1 GiB folios`,
        figure: tPud!.ms,
        figureUnit: "ms",
        reference: tRef!.ms,
        referenceUnit: "ms",
        referenceLabel: "per-page pin, page array",
        ratio: tRef!.ms / tPud!.ms,
        target: atLeast(1000, "≥1000× faster"),
        counts: { refUpdates: rPud.refUpdates, entries: rPud.ranges.end, folios },
      }),
      row({
        name: `W2 same ${gib} GiB, 1 GiB vs 2 MiB folios`,
        figure: tPud!.ms,
        figureUnit: "ms",
        reference: tThp!.ms,
        referenceUnit: "ms",
        referenceLabel: `${thp.leaves.pmd} THPs, same call`,
        ratio: tThp!.ms / tPud!.ms,
        target: atLeast(100, "≥100× faster"),
        counts: { thpRefUpdates: last.get(thp)!.refUpdates, thpFolios: thp.leaves.pmd },
      }),
      absoluteRow("W2 time per 1 GiB folio", perFolioUs, "µs", atMost(2, "≤2 µs (absolute)")),
      countRow("W2 refcount/pincount updates", rPud.refUpdates, "updates", folios, "one per 1 GiB folio"),
    ];
    last.clear();
    collectGarbage();
    return rows;
  },
};
