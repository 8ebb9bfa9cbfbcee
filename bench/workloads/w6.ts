/**
 * W6 — PFNMAP huge insert + DMA walk (performance.md §4, anchor A10).
 *
 * vmf_insert_pfn_range over a 32 GiB, 1 GiB-aligned VM_PFNMAP mapping of a
 * raw PFN range (a PCI BAR), then a follow_pfnmap-style walk of the whole
 * range for DMA mapping. Three layouts of the same bytes:
 *   PUD  32 leaves (VA and PFN congruent modulo 1 GiB)
 *   PMD  16,384 leaves (PFN offset by 2 MiB, so only PMDs fit)
 *   PTE  8,388,608 leaves (no ->huge_fault): the reference path
 * Targets: leaf writes = 32 / 16,384, walk iterations the same; end to end
 * ≥1000× (PUD) and ≥300× (PMD) faster than the PTE path.
 */
import {
  HPAGE_PMD_NR,
  HPAGE_PUD_NR,
  MAP_SHARED,
  PAGE_SIZE,
  PROT_READ,
  PROT_WRITE,
  PUD_SIZE,
} from "../../src/mm/constants.js";
import { insertPfnRange } from "../../src/mm/insert.js";
import { Kernel } from "../../src/mm/kernel.js";
import type { Mm } from "../../src/mm/mm.js";
import { doMmap, doMunmap } from "../../src/mm/mmap.js";
import { followPfnmapRange } from "../lib/follow-pfnmap.js";
import { fmtMs, timeAll } from "../lib/stats.js";
import { atLeast, countRow, row, type Row, type Workload } from "../lib/types.js";

export const W6_BYTES = 32 * PUD_SIZE;
export const W6_PAGES = W6_BYTES / PAGE_SIZE;

export type W6Layout = "pud" | "pmd" | "pte";

export const W6_EXPECTED_LEAVES: Record<W6Layout, number> = {
  pud: W6_PAGES / HPAGE_PUD_NR,
  pmd: W6_PAGES / HPAGE_PMD_NR,
  pte: W6_PAGES,
};

export interface W6Target {
  mm: Mm;
  addr: number;
}

export interface W6Setup {
  k: Kernel;
  layout: W6Layout;
  /** PFN mapped at the start of each mapping */
  pfn: number;
  rangeId: number;
  targets: W6Target[];
}

export interface W6Counts {
  /** leaf entries written by the insert (page-table writes minus table links) */
  leafWrites: number;
  tablesAllocated: number;
  pud: number;
  pmd: number;
  pte: number;
  /** follow_pfnmap steps of the DMA walk */
  iterations: number;
  /** contiguous PFN runs the walk found */
  runs: number;
  pages: number;
}

function mapBar(s: W6Setup, mm: Mm): number {
  return doMmap(s.k, mm, {
    addr: 0,
    length: W6_BYTES,
    prot: PROT_READ | PROT_WRITE,
    flags: MAP_SHARED,
    fileId: 0,
    offset: 0,
    device: { kind: "pfnmap", pfnRangeId: s.rangeId, basePfn: s.pfn, hugeFault: s.layout !== "pte" },
  });
}

/** A kernel with one 32 GiB (+2 MiB) BAR mapped by `copies` mms, nothing inserted yet. */
export function w6Setup(layout: W6Layout, copies = 1): W6Setup {
  const k = new Kernel({ phys: { ramBytes: 256 * 2 ** 20 } });
  const bar = k.phys.registerPfnRange("w6 BAR", W6_PAGES + HPAGE_PMD_NR, HPAGE_PUD_NR);
  // PMD layout: shift the PFN by 2 MiB so VA and PFN are congruent modulo
  // 2 MiB but not 1 GiB (the largest fitting leaf is then a PMD).
  const pfn = layout === "pmd" ? bar.startPfn + HPAGE_PMD_NR : bar.startPfn;
  const s: W6Setup = { k, layout, pfn, rangeId: bar.id, targets: [] };
  for (let c = 0; c < copies; c++) {
    const mm = k.createMm(`w6-${c}`, 0);
    s.targets.push({ mm, addr: mapBar(s, mm) });
  }
  return s;
}

/** The timed part: eager vmf_insert_pfn_range of the whole BAR, then the DMA walk. */
export function w6InsertAndWalk(s: W6Setup, t: W6Target): W6Counts {
  const { k } = s;
  const writes0 = k.pt.writes;
  const live0 = k.pt.live;
  const r = insertPfnRange(k, t.mm, { addr: t.addr, pfn: s.pfn, nrPages: W6_PAGES, mode: "eager", write: false, prot: null });
  if (r.errno !== 0) throw new Error(`W6 insert failed: errno ${r.errno}`);
  const tablesAllocated = k.pt.live - live0;
  const leafWrites = k.pt.writes - writes0 - tablesAllocated;
  const w = followPfnmapRange(k, t.mm, t.addr, t.addr + W6_BYTES);
  if (w.pages !== W6_PAGES || w.firstPfn !== s.pfn) throw new Error("W6 walk returned the wrong PFNs");
  return { leafWrites, tablesAllocated, pud: r.pud, pmd: r.pmd, pte: r.pte, iterations: w.iterations, runs: w.runs, pages: w.pages };
}

/** Unmap and map the BAR again (fresh page tables for the next sample). */
export function w6Reset(s: W6Setup, t: W6Target): void {
  doMunmap(s.k, t.mm, t.addr, W6_BYTES);
  t.addr = mapBar(s, t.mm);
}

function op(layout: W6Layout, copies: number, last: { counts?: W6Counts }) {
  const s = w6Setup(layout, copies);
  return {
    run: () => {
      for (const t of s.targets) last.counts = w6InsertAndWalk(s, t);
    },
    after: () => {
      for (const t of s.targets) w6Reset(s, t);
    },
    inner: copies,
  };
}

export const w6: Workload = {
  id: "W6",
  title: "PFNMAP 32 GiB huge insert + follow_pfnmap walk vs the PTE path",
  unavailable: async () => null,
  async run(ctx) {
    const pud: { counts?: W6Counts } = {};
    const pmd: { counts?: W6Counts } = {};
    const pte: { counts?: W6Counts } = {};
    // Short operations run several copies per sample (one mm each).
    const [tPud, tPmd, tPte] = await timeAll(ctx, [
      op("pud", ctx.opts.quick ? 16 : 64, pud),
      op("pmd", ctx.opts.quick ? 2 : 4, pmd),
      op("pte", 1, pte),
    ], ctx.opts.quick ? ctx.runs : Math.max(10, ctx.runs));
    const ref = tPte!.ms;
    const rows: Row[] = [];
    for (const [layout, t, c, target] of [
      ["pud", tPud!, pud.counts!, 1000],
      ["pmd", tPmd!, pmd.counts!, 300],
    ] as const) {
      const L = layout.toUpperCase();
      rows.push(
        row({
          name: `W6 ${L} insert+walk 32 GiB`,
          figure: t.ms,
          figureUnit: "ms",
          reference: ref,
          referenceUnit: "ms",
          referenceLabel: "PTE path: 8.4 M PTEs, per-page walk",
          ratio: ref / t.ms,
          target: atLeast(target, `≥${target}× faster`),
          counts: { ...c },
          note: `${fmtMs(t.ms)} vs ${fmtMs(ref)}`,
        }),
        countRow(`W6 ${L} leaf writes`, c.leafWrites, "writes", W6_EXPECTED_LEAVES[layout], `32 GiB / ${layout === "pud" ? "1 GiB" : "2 MiB"}`, { ...c }),
        countRow(`W6 ${L} walk iterations`, c.iterations, "steps", W6_EXPECTED_LEAVES[layout], "= leaves", { ...c }),
      );
    }
    const pc = pte.counts!;
    rows.push(countRow("W6 PTE leaf writes (reference)", pc.leafWrites, "writes", W6_EXPECTED_LEAVES.pte, "32 GiB / 4 KiB", { ...pc }));
    return rows;
  },
};
