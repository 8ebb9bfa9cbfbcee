/**
 * W4 — 4 KiB regression guard (performance.md §4; anchor A4: the kernel
 * accepted +1.5 % on order-0 folios for 3-4× on large ones).
 *
 * 1 GiB of order-0 anonymous pages (MADV_NOHUGEPAGE), faulted; timed: pin
 * (FOLL_WRITE | FOLL_LONGTERM, pin_user_pages_fast) plus unpin, i.e. get+put.
 *   batched, page array  pages output + unpin_user_pages (same shape as the reference)
 *   batched, ranges      range output + release by handle
 *   reference            per-page pin + per-page unpin
 * Targets: ≤3 % slower than the reference; ≤100 ns per page for get+put
 * (absolute, in-process); updates = one per order-0 folio per direction.
 */
import { FOLL_LONGTERM, FOLL_WRITE } from "../../src/mm/constants.js";
import { type GupOutput, gup, gupUnavailable } from "../lib/gup-api.js";
import { GiB, populate } from "../lib/setup.js";
import { timeAll, type Timed } from "../lib/stats.js";
import { absoluteRow, atMost, countRow, row, type Row, type Workload } from "../lib/types.js";
import { refPinUserPages, refUnpinUserPages } from "../reference/per-page-pin.js";

const BYTES = GiB;
const NPAGES = BYTES / 4096;
const FLAGS = FOLL_WRITE | FOLL_LONGTERM;
const SESSION = 1;

export const w4: Workload = {
  id: "W4",
  title: "4 KiB regression guard: pin+unpin 1 GiB of order-0 folios",
  unavailable: gupUnavailable,
  async run(ctx) {
    const api = await gup();
    const s = populate(BYTES, "4k");
    const { k, mm, addr } = s;
    const p = k.phys;
    const updates: Record<string, number> = {};
    const product = (output: GupOutput): Timed => {
      let u0 = 0;
      return {
        before: () => {
          u0 = p.stats.gupRefUpdates;
        },
        run: () => {
          const r = api.pinUserPagesFast(k, mm, SESSION, addr, NPAGES, FLAGS, output);
          if (r.ret !== NPAGES) throw new Error(`W4 pin returned ${r.ret}: ${r.warning}`);
          if (output === "pages") api.unpinUserPages(k, SESSION, r.pages!, NPAGES);
          else api.releasePinHandle(k, SESSION, r.handle);
        },
        after: () => {
          updates[output] = p.stats.gupRefUpdates - u0;
        },
      };
    };
    const pages = new Uint32Array(NPAGES);
    let u0 = 0;
    const reference: Timed = {
      before: () => {
        u0 = p.stats.gupRefUpdates;
      },
      run: () => {
        if (refPinUserPages(k, mm, addr, NPAGES, FLAGS, pages) !== NPAGES) throw new Error("W4 reference pin failed");
        refUnpinUserPages(k, pages, NPAGES);
      },
      after: () => {
        updates.reference = p.stats.gupRefUpdates - u0;
      },
    };
    const [tPages, tRanges, tRef] = await timeAll(ctx, [product("pages"), product("ranges"), reference]);
    const ref = tRef!.ms;
    const nsPerPage = (ms: number) => (ms * 1e6) / NPAGES;
    const rows: Row[] = [];
    for (const [label, t] of [
      ["page array", tPages!],
      ["ranges", tRanges!],
    ] as const) {
      rows.push(
        row({
          name: `W4 get+put 1 GiB 4 KiB, batched (${label})`,
          figure: t.ms,
          figureUnit: "ms",
          reference: ref,
          referenceUnit: "ms",
          referenceLabel: "per-page pin+unpin",
          ratio: t.ms / ref,
          target: atMost(1.03, "≤1.03× (≤3 % slower)"),
        }),
      );
    }
    rows.push(
      absoluteRow("W4 get+put per 4 KiB page (ranges)", nsPerPage(tRanges!.ms), "ns", atMost(100, "≤100 ns (absolute)"), {
        note: `page array: ${nsPerPage(tPages!.ms).toFixed(1)} ns; reference: ${nsPerPage(ref).toFixed(1)} ns`,
      }),
      countRow("W4 updates per get+put (ranges)", updates.ranges!, "updates", 2 * NPAGES, "one per order-0 folio, pin and unpin", { ...updates }),
    );
    return rows;
  },
};
