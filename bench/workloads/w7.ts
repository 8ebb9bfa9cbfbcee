/**
 * W7 — range vs array answer (performance.md §4; anchor A11).
 *
 * pin_user_pages_fast over 1 GiB and over 100 GiB of 2 MiB THPs with range
 * output, the answer encoded as `repeated mmsim.v1.PfnRange` (bench/lib/wire.ts,
 * the product's protobuf runtime) against the same pages as a packed
 * `repeated uint64` PFN array.
 * Targets, 1 GiB: ≤512 entries, ≤8 KiB, encode+decode ≤1 ms (absolute).
 * 100 GiB: ≤51,200 entries and ≥500× fewer bytes than the PFN array (whose
 * size is computed exactly, not built). Physically adjacent folios merge.
 * --quick: 10 GiB instead of 100.
 */
import { FOLL_LONGTERM, FOLL_WRITE } from "../../src/mm/constants.js";
import { type GupResultLike, gup, gupUnavailable } from "../lib/gup-api.js";
import { GiB, populate } from "../lib/setup.js";
import { collectGarbage, timeAll, type Timed } from "../lib/stats.js";
import { absoluteRow, atLeast, atMost, row, type Workload } from "../lib/types.js";
import { decodePfnArray, decodeRanges, encodePfnArray, encodeRanges, pfnArrayBytes } from "../lib/wire.js";

const FLAGS = FOLL_WRITE | FOLL_LONGTERM;
const SESSION = 1;

export const w7: Workload = {
  id: "W7",
  title: "range vs PFN-array answer, 1 GiB and 100 GiB of THP",
  unavailable: gupUnavailable,
  async run(ctx) {
    const api = await gup();
    // 1 GiB: entries, bytes, encode+decode time of both shapes.
    const small = populate(GiB, "thp");
    const npages = GiB / 4096;
    const r = api.pinUserPagesFast(small.k, small.mm, SESSION, small.addr, npages, FLAGS, "pages");
    if (r.ret !== npages || r.pages === null) throw new Error(`W7 pin returned ${r.ret}`);
    const ranges = encodeRanges(r.ranges);
    const array = encodePfnArray(r.pages, npages);
    // The range answer is small: time many encode+decode rounds per sample.
    const INNER = 200;
    const codecRanges: Timed = {
      run: () => {
        for (let j = 0; j < INNER; j++) {
          const buf = encodeRanges(r.ranges);
          if (decodeRanges(buf).length !== r.ranges.end) throw new Error("W7 range decode");
        }
      },
      inner: INNER,
    };
    const codecArray: Timed = {
      run: () => {
        const buf = encodePfnArray(r.pages!, npages);
        if (decodePfnArray(buf).length !== npages) throw new Error("W7 array decode");
      },
    };
    const [tRanges, tArray] = await timeAll(ctx, [codecRanges, codecArray]);
    api.releasePinHandle(small.k, SESSION, r.handle);

    // 100 GiB: entries and bytes (the PFN array's size computed, not built).
    const gib = ctx.opts.quick ? 10 : 100;
    collectGarbage();
    const big = populate(gib * GiB, "thp");
    const bigPages = (gib * GiB) / 4096;
    const rb: GupResultLike = api.pinUserPagesFast(big.k, big.mm, SESSION, big.addr, bigPages, FLAGS, "ranges");
    if (rb.ret !== bigPages) throw new Error(`W7 big pin returned ${rb.ret}`);
    const bigRangeBytes = encodeRanges(rb.ranges).length;
    const bigArrayBytes = pfnArrayBytes(rb.ranges);
    const bigEntries = rb.ranges.end;
    const bigFolios = big.leaves.pmd;
    api.releasePinHandle(big.k, SESSION, rb.handle);

    return [
      absoluteRow("W7 1 GiB: answer entries", r.ranges.end, "entries", atMost(512, "≤512"), { counts: { entries: r.ranges.end, folios: small.leaves.pmd } }),
      row({
        name: "W7 1 GiB: answer bytes",
        figure: ranges.length,
        figureUnit: "B",
        reference: array.length,
        referenceUnit: "B",
        referenceLabel: "packed PFN array",
        ratio: ranges.length,
        ratioUnit: " B",
        target: atMost(8192, "≤8 KiB"),
      }),
      row({
        name: "W7 1 GiB: encode+decode",
        figure: tRanges!.ms,
        figureUnit: "ms",
        reference: tArray!.ms,
        referenceUnit: "ms",
        referenceLabel: "packed PFN array",
        ratio: tRanges!.ms,
        ratioUnit: " ms",
        target: atMost(1, "≤1 ms (absolute)"),
      }),
      absoluteRow(`W7 ${gib} GiB: answer entries`, bigEntries, "entries", atMost(51200 * (gib / 100), `≤${(51200 * (gib / 100)).toLocaleString("en-US")}`), {
        counts: { entries: bigEntries, folios: bigFolios },
        note: `${bigFolios} folios merged into ${bigEntries} runs`,
      }),
      row({
        name: `W7 ${gib} GiB: answer bytes`,
        figure: bigRangeBytes,
        figureUnit: "B",
        reference: bigArrayBytes,
        referenceUnit: "B",
        referenceLabel: "packed PFN array, computed",
        ratio: bigArrayBytes / bigRangeBytes,
        target: atLeast(500, "≥500× fewer bytes"),
      }),
    ];
  },
};
