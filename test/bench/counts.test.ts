/**
 * Exact operation counts of the benchmark workloads (performance.md §4,
 * "Suggested standing ratios for CI"): page-table leaf writes per insert,
 * refcount/pincount updates per folio, entries per answer. The benchmark
 * times these paths; these tests pin down how much work they do.
 */
import { describe, expect, it } from "vitest";
import { FOLL_LONGTERM, FOLL_WRITE, HPAGE_PMD_NR, Level, PAGE_SIZE } from "../../src/mm/constants.js";
import { forEachLeaf } from "../../src/mm/inspect.js";
import type { Kernel } from "../../src/mm/kernel.js";
import type { Mm } from "../../src/mm/mm.js";
import { PG_dirty } from "../../src/mm/physmem.js";
import { followPfnmapRange } from "../../bench/lib/follow-pfnmap.js";
import { gupUnavailable, gup } from "../../bench/lib/gup-api.js";
import { missingExports } from "../../bench/lib/optional.js";
import { GiB, MiB, populate } from "../../bench/lib/setup.js";
import { refPinUserPages, refUnpinUserPages } from "../../bench/reference/per-page-pin.js";
import { W6_BYTES, W6_EXPECTED_LEAVES, w6InsertAndWalk, w6Reset, w6Setup } from "../../bench/workloads/w6.js";

const SESSION = 1;
const FLAGS = FOLL_WRITE | FOLL_LONGTERM;

/** Physically contiguous runs of the leaves mapping [addr, addr + bytes), from the page tables. */
function physicalRuns(k: Kernel, mm: Mm, addr: number, bytes: number): number {
  let runs = 0;
  let next = -1;
  forEachLeaf(k, mm, addr, addr + bytes, (level, _a, lo) => {
    const n = level === Level.PTE ? 1 : level === Level.PMD ? HPAGE_PMD_NR : 262_144;
    if (lo !== next) runs++;
    next = lo + n;
  });
  return runs;
}

describe("W6: PFNMAP insert + follow_pfnmap walk of 32 GiB", () => {
  for (const layout of ["pud", "pmd", "pte"] as const) {
    it(`${layout.toUpperCase()}: leaf writes and walk iterations = ${W6_EXPECTED_LEAVES[layout]}`, { timeout: 60_000 }, () => {
      const s = w6Setup(layout);
      const t = s.targets[0]!;
      const c = w6InsertAndWalk(s, t);
      expect(c.leafWrites).toBe(W6_EXPECTED_LEAVES[layout]);
      expect(c[layout]).toBe(W6_EXPECTED_LEAVES[layout]);
      expect(c.iterations).toBe(W6_EXPECTED_LEAVES[layout]);
      expect(c.pages).toBe(W6_BYTES / PAGE_SIZE);
      expect(c.runs).toBe(1); // one BAR, one contiguous DMA run
      if (layout === "pte") return; // 8.4 M entries: once is enough
      // Fresh page tables after a reset: the same counts again.
      w6Reset(s, t);
      expect(w6InsertAndWalk(s, t).leafWrites).toBe(W6_EXPECTED_LEAVES[layout]);
    });
  }

  it("the walk fails on a hole, as vfio's follow_pfnmap does", () => {
    const s = w6Setup("pud");
    const t = s.targets[0]!;
    expect(() => followPfnmapRange(s.k, t.mm, t.addr, t.addr + GiB)).toThrow(/no PFN mapped/);
  });
});

describe("per-page reference (bench/reference)", () => {
  it("makes one update per page and restores every count", () => {
    const s = populate(64 * MiB, "thp");
    const p = s.k.phys;
    const n = (64 * MiB) / PAGE_SIZE;
    const pages = new Uint32Array(n);
    const u0 = p.stats.gupRefUpdates;
    expect(refPinUserPages(s.k, s.mm, s.addr, n, FLAGS, pages)).toBe(n);
    expect(p.stats.gupRefUpdates - u0).toBe(n);
    const h0 = p.folioHead(pages[0]!);
    expect(p.pincount(h0)).toBe(HPAGE_PMD_NR);
    expect(p.refcount(h0)).toBe(1 + HPAGE_PMD_NR);
    refUnpinUserPages(s.k, pages, n, true);
    expect(p.stats.gupRefUpdates - u0).toBe(2 * n);
    expect(p.pincount(h0)).toBe(0);
    expect(p.refcount(h0)).toBe(1);
    expect(p.flags(h0) & PG_dirty).toBe(PG_dirty);
  });
});

const noGup = await gupUnavailable();

describe.skipIf(noGup !== null)(`GUP counts${noGup === null ? "" : ` (skipped: ${noGup})`}`, () => {
  it("W1: pinning 1 GiB of THP makes one update per folio (512), the reference 262,144", async () => {
    const api = await gup();
    const s = populate(GiB, "thp");
    const n = GiB / PAGE_SIZE;
    for (const output of ["ranges", "pages"] as const) {
      const r = api.pinUserPagesFast(s.k, s.mm, SESSION, s.addr, n, FLAGS, output);
      expect(r.ret).toBe(n);
      expect(r.refUpdates).toBe(s.leaves.pmd);
      expect(s.leaves.pmd).toBe(512);
      if (output === "pages") expect(r.pages?.length).toBe(n);
      api.releasePinHandle(s.k, SESSION, r.handle);
    }
  });

  it("W2: pinning 2 GiB of 1 GiB hugetlb folios makes 2 updates", async () => {
    const api = await gup();
    const s = populate(2 * GiB, "hugetlb-1g");
    const r = api.pinUserPagesFast(s.k, s.mm, SESSION, s.addr, (2 * GiB) / PAGE_SIZE, FLAGS, "ranges");
    expect(r.ret).toBe((2 * GiB) / PAGE_SIZE);
    expect(r.refUpdates).toBe(2);
    api.releasePinHandle(s.k, SESSION, r.handle);
  });

  it("W3: range and grouped-array unpin make one update and one dirtying per folio", async () => {
    const api = await gup();
    const s = populate(GiB, "thp");
    const p = s.k.phys;
    const n = GiB / PAGE_SIZE;
    const r = api.pinUserPagesFast(s.k, s.mm, SESSION, s.addr, n, FLAGS, "ranges");
    let folios = 0;
    let dirtied = 0;
    const u0 = p.stats.gupRefUpdates;
    for (let i = 0; i < r.ranges.end; i++) {
      const res = api.unpinUserPageRangeDirtyLock(s.k, SESSION, r.ranges.pfns[i]!, r.ranges.npfns[i]!, true);
      folios += res.folios;
      dirtied += res.dirtied;
    }
    expect(p.stats.gupRefUpdates - u0).toBe(512);
    expect(folios).toBe(512);
    expect(dirtied).toBe(512);
    const ra = api.pinUserPagesFast(s.k, s.mm, SESSION, s.addr, n, FLAGS, "pages");
    const u1 = p.stats.gupRefUpdates;
    const res = api.unpinUserPagesDirtyLock(s.k, SESSION, ra.pages!, n, true);
    expect(p.stats.gupRefUpdates - u1).toBe(512);
    expect(res.folios).toBe(512);
    expect(res.dirtied).toBe(0); // already dirty from the range unpin
  });

  it("W4: order-0 folios take one update each, pin and unpin", async () => {
    const api = await gup();
    const s = populate(64 * MiB, "4k");
    const n = (64 * MiB) / PAGE_SIZE;
    const p = s.k.phys;
    const u0 = p.stats.gupRefUpdates;
    const r = api.pinUserPagesFast(s.k, s.mm, SESSION, s.addr, n, FLAGS, "ranges");
    expect(r.refUpdates).toBe(n);
    api.releasePinHandle(s.k, SESSION, r.handle);
    expect(p.stats.gupRefUpdates - u0).toBe(2 * n);
  });

  it("W7: the range answer has one entry per physically contiguous run of leaves", async () => {
    const api = await gup();
    const s = populate(GiB, "thp");
    const r = api.pinUserPagesFast(s.k, s.mm, SESSION, s.addr, GiB / PAGE_SIZE, FLAGS, "ranges");
    expect(r.ranges.end).toBe(physicalRuns(s.k, s.mm, s.addr, GiB));
    expect(r.ranges.end).toBeLessThanOrEqual(512);
    expect(r.ranges.totalPfns).toBe(GiB / PAGE_SIZE);
    api.releasePinHandle(s.k, SESSION, r.handle);
  });
});

const noHmm = await missingExports("src/mm/hmm.ts", ["hmmRangeFault"]);

describe.skipIf(noHmm !== null)(`W11 counts${noHmm === null ? "" : ` (skipped: ${noHmm})`}`, () => {
  it("order mode answers 1 GiB of PMDs with one entry per contiguous run (≤512)", async () => {
    const { w11 } = await import("../../bench/workloads/w11.js");
    expect(w11.id).toBe("W11");
    const { hmmRangeFault } = (await import("../../src/mm/hmm.js")) as unknown as {
      hmmRangeFault: (k: Kernel, mm: Mm, r: object) => { ret: number };
    };
    const { IntervalSub } = await import("../../src/mm/mmu-notifier.js");
    const s = populate(GiB, "thp");
    const sub = new IntervalSub(1, s.mm.id, s.addr, s.addr + GiB - 1, { invalidate: () => true }, 0);
    s.mm.notifier.insert(sub, GiB, 1);
    const runs: unknown[] = [];
    const r = hmmRangeFault(s.k, s.mm, {
      notifier: sub,
      notifierSeq: s.mm.notifier.tryReadBegin(sub)!,
      start: s.addr,
      end: s.addr + GiB,
      hmmPfns: null,
      runs,
      defaultFlags: 0,
      pfnFlagsMask: 0,
      devPrivateOwner: 0,
    });
    expect(r.ret).toBe(0);
    expect(runs.length).toBe(physicalRuns(s.k, s.mm, s.addr, GiB));
    expect(runs.length).toBeLessThanOrEqual(512);
  });
});

describe("W10: invalidation messages", () => {
  it("messages per invalidation = intersecting notifiers, each with the whole [start, end)", async () => {
    const { w10Setup, w10Invalidate, W10_K } = await import("../../bench/workloads/w10.js");
    for (const n of [10, 10_000]) {
      const s = w10Setup(n);
      expect(w10Invalidate(s)).toBe(W10_K);
      expect(s.messages).toHaveLength(W10_K);
      for (const m of s.messages) expect([m.start, m.end]).toEqual([s.range.start, s.range.end]);
    }
  });
});
