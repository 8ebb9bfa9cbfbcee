/**
 * W11 — hmm_range_fault snapshot (performance.md §4; §2 HMM anchors).
 *
 * 1 GiB of anonymous THP, populated and mapped by 512 PMDs, with an interval
 * notifier over it; hmm_range_fault in snapshot mode (no fault requested):
 *   order mode     the compact output: runs carrying the map order
 *   hmm_pfns       the product's per-page output (two words per page)
 *   reference      bench's per-page reporting: one walk and one entry per page
 * Then the forced page-at-a-time case: REQ_FAULT over unpopulated 4 KiB
 * memory (MADV_NOHUGEPAGE), every page faulted by hmm_range_fault.
 * Targets: order mode ≤512 entries, ≥20× faster than per-page reporting,
 * ≥10 GB/s in-process; faulting never below 128 MB/s.
 */
import { Level, MADV_NOHUGEPAGE, MAP_ANONYMOUS, MAP_PRIVATE, PAGE_SIZE, PROT_READ, PROT_WRITE } from "../../src/mm/constants.js";
import type { Kernel } from "../../src/mm/kernel.js";
import type { Mm } from "../../src/mm/mm.js";
import { doMadvise, doMmap, doMunmap } from "../../src/mm/mmap.js";
import { IntervalSub } from "../../src/mm/mmu-notifier.js";
import { E_PROTNONE, E_SPECIAL, E_WRITE, isPresentLeaf, levelSize, walk, WalkCursor } from "../../src/mm/pagetable.js";
import { importSource, missingExports } from "../lib/optional.js";
import { benchKernel, GiB, MiB, populate } from "../lib/setup.js";
import { timeAll, type Timed } from "../lib/stats.js";
import { absoluteRow, atLeast, atMost, row, type Workload } from "../lib/types.js";

const HMM = "src/mm/hmm.ts";

interface HmmRangeLike {
  notifier: IntervalSub;
  notifierSeq: number;
  start: number;
  end: number;
  hmmPfns: Uint32Array | null;
  runs: unknown[] | null;
  defaultFlags: number;
  pfnFlagsMask: number;
  devPrivateOwner: number;
}
interface HmmApi {
  hmmRangeFault(k: Kernel, mm: Mm, r: HmmRangeLike): { ret: number; walks: number; faults: number; last: number };
  HMM_PFN_REQ_FAULT: number;
}

const cursor = new WalkCursor();

/**
 * The per-page reference: for each page one walk from the PGD and one
 * entry (pfn word, flag word: VALID 0x80000000, WRITE 0x40000000, ERROR
 * 0x20000000 as the HMM high word; order 0). Returns the entries written.
 */
export function refHmmSnapshotPerPage(k: Kernel, mm: Mm, start: number, end: number, out: Uint32Array): number {
  let i = 0;
  for (let addr = start; addr < end; addr += PAGE_SIZE, i++) {
    walk(k.pt, mm.pgd, addr, cursor);
    const hi = cursor.hi;
    let pfn = 0;
    let flags = 0;
    if (cursor.level !== Level.PGD && isPresentLeaf(hi)) {
      if (hi & E_SPECIAL) flags = 0x2000_0000;
      else {
        pfn = cursor.level === Level.PTE ? cursor.lo : cursor.lo + (addr % levelSize(cursor.level)) / PAGE_SIZE;
        flags = hi & E_PROTNONE ? 0 : 0x8000_0000 | (hi & E_WRITE ? 0x4000_0000 : 0);
      }
    }
    out[2 * i] = pfn;
    out[2 * i + 1] = flags >>> 0;
  }
  return i;
}

/** A notifier over [start, end) of mm and its current read_begin value. */
function subscribe(mm: Mm, start: number, end: number): { sub: IntervalSub; seq: number } {
  const sub = new IntervalSub(1, mm.id, start, end - 1, { invalidate: () => true }, 0);
  mm.notifier.insert(sub, end - start, 1);
  const seq = mm.notifier.tryReadBegin(sub);
  if (seq === undefined) throw new Error("W11: notifier busy");
  return { sub, seq };
}

export const w11: Workload = {
  id: "W11",
  title: "hmm_range_fault snapshot of 1 GiB PMD-mapped, order mode",
  unavailable: () => missingExports(HMM, ["hmmRangeFault", "HMM_PFN_REQ_FAULT"]),
  async run(ctx) {
    const hmm = await importSource<HmmApi>(HMM);
    const s = populate(GiB, "thp");
    const { k, mm, addr } = s;
    const end = addr + GiB;
    const npages = GiB / PAGE_SIZE;
    const { sub, seq } = subscribe(mm, addr, end);
    const range = (pfns: Uint32Array | null, runs: unknown[] | null, defaultFlags = 0): HmmRangeLike => ({
      notifier: sub,
      notifierSeq: seq,
      start: addr,
      end,
      hmmPfns: pfns,
      runs,
      defaultFlags,
      pfnFlagsMask: 0,
      devPrivateOwner: 0,
    });
    let entries = 0;
    const INNER = 20;
    const order: Timed = {
      run: () => {
        for (let j = 0; j < INNER; j++) {
          const runs: unknown[] = [];
          const r = hmm.hmmRangeFault(k, mm, range(null, runs));
          if (r.ret !== 0) throw new Error(`W11 order mode returned ${r.ret}`);
          entries = runs.length;
        }
      },
      inner: INNER,
    };
    const pfns = new Uint32Array(2 * npages);
    const perPage: Timed = {
      run: () => {
        const r = hmm.hmmRangeFault(k, mm, range(pfns, null));
        if (r.ret !== 0) throw new Error(`W11 hmm_pfns mode returned ${r.ret}`);
      },
    };
    const ref = new Uint32Array(2 * npages);
    const reference: Timed = { run: () => refHmmSnapshotPerPage(k, mm, addr, end, ref) };
    const [tOrder, tPfns, tRef] = await timeAll(ctx, [order, perPage, reference]);
    for (let i = 0; i < 2 * npages; i += 2 * 4099) {
      if (pfns[i] !== ref[i] || ((pfns[i + 1]! & 0xe000_0000) >>> 0) !== ref[i + 1]) throw new Error(`W11: hmm_pfns and the reference disagree at page ${i / 2}`);
    }

    // Forced page-at-a-time faulting over unpopulated 4 KiB memory.
    const fbytes = (ctx.opts.quick ? 16 : 64) * MiB;
    const fk = benchKernel(fbytes, "4k");
    const fmm = fk.createMm("w11-fault", 0);
    let fa = 0;
    let fsub: { sub: IntervalSub; seq: number } | null = null;
    let faults = 0;
    const faulting: Timed = {
      before: () => {
        fa = fk.runOp(() => doMmap(fk, fmm, { addr: 0, length: fbytes, prot: PROT_READ | PROT_WRITE, flags: MAP_PRIVATE | MAP_ANONYMOUS, fileId: 0, offset: 0, device: null }));
        fk.runOp(() => doMadvise(fk, fmm, fa, fbytes, MADV_NOHUGEPAGE));
        if (fsub !== null) fmm.notifier.remove(fsub.sub);
        fsub = subscribe(fmm, fa, fa + fbytes);
      },
      run: () => {
        const r = fk.runOp(() =>
          hmm.hmmRangeFault(fk, fmm, { ...range(new Uint32Array((2 * fbytes) / PAGE_SIZE), null, hmm.HMM_PFN_REQ_FAULT), notifier: fsub!.sub, notifierSeq: fsub!.seq, start: fa, end: fa + fbytes }),
        );
        if (r.ret !== 0) throw new Error(`W11 faulting returned ${r.ret}`);
        faults = r.faults;
      },
      after: () => {
        fk.runOp(() => doMunmap(fk, fmm, fa, fbytes));
      },
    };
    const [tFault] = await timeAll(ctx, [faulting]);
    const gbps = (bytes: number, ms: number) => bytes / 1e9 / (ms / 1000);
    return [
      absoluteRow("W11 order mode: entries for 1 GiB", entries, "entries", atMost(512, "≤512"), { counts: { entries, pmdLeaves: s.leaves.pmd } }),
      row({
        name: "W11 order mode vs per-page reporting (reference)",
        figure: tOrder!.ms,
        figureUnit: "ms",
        reference: tRef!.ms,
        referenceUnit: "ms",
        referenceLabel: "per-page walk + entry",
        ratio: tRef!.ms / tOrder!.ms,
        target: atLeast(20, "≥20× faster"),
      }),
      row({
        name: "W11 order mode vs hmm_pfns per-page output",
        figure: tOrder!.ms,
        figureUnit: "ms",
        reference: tPfns!.ms,
        referenceUnit: "ms",
        referenceLabel: "product, one entry per page",
        ratio: tPfns!.ms / tOrder!.ms,
        target: atLeast(20, "≥20× faster"),
      }),
      absoluteRow("W11 order-mode snapshot rate", gbps(GiB, tOrder!.ms), "GB/s", atLeast(10, "≥10 GB/s (absolute)")),
      absoluteRow(`W11 page-at-a-time faulting (${fbytes / MiB} MiB)`, gbps(fbytes, tFault!.ms) * 1000, "MB/s", atLeast(128, "≥128 MB/s (absolute)"), {
        counts: { faults, pages: fbytes / PAGE_SIZE },
      }),
    ];
  },
};
