/**
 * MEM — daemon memory per populated 4 KiB page (the simulator's struct page
 * and page-table cost) against the kernel's 72 bytes per page (64-byte
 * struct page + 8-byte PTE).
 *
 * Each case gets a fresh bench daemon (node --expose-gc) with 8 GiB of RAM:
 * full GC, memory reading, populate 4 GiB over RPC, full GC, memory reading.
 *   anon 4 KiB   private anonymous, MADV_NOHUGEPAGE, MADV_POPULATE_WRITE
 *   THP          private anonymous, THP always, MADV_POPULATE_WRITE
 *   PUD PFNMAP   a 4 GiB raw PFN range (BAR), mmap'ed with huge_fault, eager
 *                InsertPfnRange: four 1 GiB special leaves, no struct pages
 * Figures: (heapUsed + external) and RSS growth divided by 1,048,576 pages.
 * Target: at most the kernel's 72 B/page (a harness choice; performance.md
 * states the comparison, not a bound). --quick: 1 GiB.
 */
import { InsertMode } from "../../src/gen/mmsim/v1/device.js";
import {
  MADV_NOHUGEPAGE,
  MADV_POPULATE_WRITE,
  MAP_ANONYMOUS,
  MAP_PRIVATE,
  MAP_SHARED,
  PROT_READ,
  PROT_WRITE,
} from "../../src/mm/constants.js";
import { type BenchDaemon, startBenchDaemon } from "../lib/daemon.js";
import { GiB } from "../lib/setup.js";
import { atMost, row, type Row, type Workload } from "../lib/types.js";

export const KERNEL_BYTES_PER_PAGE = 72;

type Case = "anon 4 KiB" | "THP" | "PUD PFNMAP";

async function populateCase(d: BenchDaemon, c: Case, bytes: number): Promise<void> {
  const { mmId } = await d.unary<object, { mmId: number }>(d.addressSpace, "createMm", { name: `mem ${c}` });
  if (c === "PUD PFNMAP") {
    const bar = await d.unary<object, { pfnRangeId: number; pfnStart: number }>(d.device, "registerPfnRange", {
      name: "mem BAR",
      nrPages: bytes / 4096,
      alignPages: GiB / 4096,
    });
    const { addr } = await d.unary<object, { addr: number }>(d.addressSpace, "mmap", {
      mmId,
      addr: 0,
      length: bytes,
      prot: PROT_READ | PROT_WRITE,
      flags: MAP_SHARED,
      fileId: 0,
      offset: 0,
      device: { kind: 1, pfnRangeId: bar.pfnRangeId, hugeFault: true },
    });
    const r = await d.unary<object, { pudLeaves: number; errnoValue: number }>(d.device, "insertPfnRange", {
      mmId,
      addr,
      pfn: bar.pfnStart,
      nrPages: bytes / 4096,
      mode: InsertMode.INSERT_MODE_EAGER,
      write: false,
    });
    if (r.errnoValue !== 0 || r.pudLeaves !== bytes / GiB) throw new Error(`MEM: PFNMAP insert gave ${JSON.stringify(r)}`);
    return;
  }
  const { addr } = await d.unary<object, { addr: number }>(d.addressSpace, "mmap", {
    mmId,
    addr: 0,
    length: bytes,
    prot: PROT_READ | PROT_WRITE,
    flags: MAP_PRIVATE | MAP_ANONYMOUS,
    fileId: 0,
    offset: 0,
  });
  if (c === "anon 4 KiB") await d.unary(d.addressSpace, "madvise", { mmId, addr, length: bytes, advice: MADV_NOHUGEPAGE });
  await d.unary(d.addressSpace, "madvise", { mmId, addr, length: bytes, advice: MADV_POPULATE_WRITE });
}

export const mem: Workload = {
  id: "MEM",
  title: "daemon heap and RSS per populated 4 KiB page vs the kernel's 72 B",
  unavailable: async () => null,
  async run(ctx) {
    const gib = ctx.opts.quick ? 1 : 4;
    const bytes = gib * GiB;
    const pages = bytes / 4096;
    const rows: Row[] = [];
    for (const c of ["anon 4 KiB", "THP", "PUD PFNMAP"] as const) {
      const d = await startBenchDaemon({ ram: "8G", exposeGc: true });
      try {
        const m0 = await d.memory(true);
        if (!m0.gc) throw new Error("MEM: the daemon has no gc()");
        await populateCase(d, c, bytes);
        const m1 = await d.memory(true);
        const heap = (m1.heapUsed + m1.external - m0.heapUsed - m0.external) / pages;
        const rss = (m1.rss - m0.rss) / pages;
        ctx.log(`${c}: heap+external ${heap.toFixed(1)} B/page, RSS ${rss.toFixed(1)} B/page`);
        const counts = { pages, heapBytes: m1.heapUsed - m0.heapUsed, externalBytes: m1.external - m0.external, rssBytes: m1.rss - m0.rss };
        for (const [what, v] of [
          ["heap+external", heap],
          ["RSS", rss],
        ] as const) {
          rows.push(
            row({
              name: `MEM ${c} ${gib} GiB: ${what} per page`,
              figure: v,
              figureUnit: "B",
              reference: KERNEL_BYTES_PER_PAGE,
              referenceUnit: "B",
              referenceLabel: "kernel struct page + PTE",
              ratio: v / KERNEL_BYTES_PER_PAGE,
              target: atMost(1, "≤1× kernel"),
              counts,
            }),
          );
        }
      } finally {
        await d.stop();
      }
    }
    return rows;
  },
};
