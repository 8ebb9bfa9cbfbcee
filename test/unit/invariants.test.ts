import { describe, expect, it } from "vitest";
import type { Kernel } from "../../src/mm/kernel.js";
import type { Mm } from "../../src/mm/mm.js";
import { checkInvariants } from "../../src/mm/invariants.js";
import { E_SPECIAL, E_WRITE, WalkCursor, walk } from "../../src/mm/pagetable.js";
import { forkMm } from "../../src/mm/mmap.js";
import { MiB, bytes, expectClean, mkKernel, mkMm, mmap, pfnAt, write } from "./helpers.js";

function codes(k: Kernel): string[] {
  return [...new Set(checkInvariants(k).violations.map((v) => v.code))].sort();
}

function entry(k: Kernel, mm: Mm, addr: number) {
  return walk(k.pt, mm.pgd, addr, new WalkCursor());
}

function workload() {
  const k = mkKernel();
  const mm = mkMm(k);
  const a = mmap(k, mm, 8 * 4096);
  write(k, mm, a, bytes(8 * 4096, 1));
  const t = mmap(k, mm, 2 * MiB);
  write(k, mm, t, bytes(16, 2));
  return { k, mm, a, t };
}

describe("checkInvariants", () => {
  it("is clean after a mixed workload and counts what it checked", () => {
    const { k, mm } = workload();
    const child = forkMm(k, mm, "child", 1);
    const r = checkInvariants(k);
    expect(r.violations).toEqual([]);
    expect(r.mmsChecked).toBe(2);
    expect(r.foliosChecked).toBeGreaterThanOrEqual(9);
    expect(checkInvariants(k, child.id).violations).toEqual([]);
    expectClean(k);
  });

  it("detects a leaked reference (L1) and a missing one (I1)", () => {
    const { k, mm, a } = workload();
    const p = pfnAt(k, mm, a);
    k.phys.folioRefAdd(p, 1);
    expect(codes(k)).toEqual(["L1"]);
    expect(checkInvariants(k).violations[0]!.pfn).toBe(p);
    k.phys.folioRefAdd(p, -1);
    const child = forkMm(k, mm, "c", 1);
    void child;
    k.phys.folioRefAdd(p, -1); // 2 mappings, refcount 1
    expect(codes(k)).toEqual(["I1"]);
    k.phys.folioRefAdd(p, 1);
    expectClean(k);
  });

  it("detects mapcount (M1), entire mapcount (M2) and NR_ANON_THPS (S1) mismatches", () => {
    const { k, mm, a, t } = workload();
    const p = pfnAt(k, mm, a);
    k.phys.mapcountAdd(p, 1);
    expect(codes(k)).toEqual(["M1"]);
    k.phys.mapcountAdd(p, -1);
    const head = pfnAt(k, mm, t);
    k.phys.entireMapcountAdd(head, 1);
    expect(codes(k)).toContain("M2");
    k.phys.entireMapcountAdd(head, -1);
    k.vmstat.nr_anon_transparent_hugepages++;
    expect(codes(k)).toEqual(["S1"]);
    k.vmstat.nr_anon_transparent_hugepages--;
    expectClean(k);
  });

  it("detects RSS counters that disagree with the page tables (R1)", () => {
    const { k, mm } = workload();
    mm.rssAnon++;
    expect(codes(k)).toEqual(["R1"]);
    mm.rssAnon--;
    mm.rssFile++;
    expect(codes(k)).toEqual(["R1"]);
    mm.rssFile--;
    expectClean(k);
  });

  it("detects a writable PTE of a shared page in a private mapping (T3) and a special entry in an anon VMA (T2)", () => {
    const { k, mm, a } = workload();
    forkMm(k, mm, "c", 1);
    const c = entry(k, mm, a);
    k.pt.setBits(c.table, c.idx, c.hi | E_WRITE);
    expect(codes(k)).toEqual(["T3"]);
    k.pt.setBits(c.table, c.idx, c.hi);
    const c2 = entry(k, mm, a + 4096);
    k.pt.setBits(c2.table, c2.idx, c2.hi | E_SPECIAL);
    expect(codes(k)).toContain("T2");
    k.pt.setBits(c2.table, c2.idx, c2.hi);
    expectClean(k);
  });

  it("detects present entries outside every VMA (T4) and a writable entry in a VMA without VM_WRITE", () => {
    const { k, mm, a } = workload();
    const v = mm.findVma(a)!;
    const end = v.end;
    v.end = a + 4 * 4096;
    // the stray entries are not counted as mappings either, so M1/R1 follow
    expect(codes(k)).toContain("T4");
    v.end = end;
    const flags = v.flags;
    v.flags &= ~0x2;
    expect(codes(k)).toEqual(["T4"]);
    v.flags = flags;
    expectClean(k);
  });

  it("detects an odd notifier seq with no invalidation active (N3) and buddy counters that do not add up (B1)", () => {
    const { k, mm } = workload();
    mm.notifier.seq++;
    expect(codes(k)).toEqual(["N3"]);
    mm.notifier.seq++;
    const z = k.phys.zones[0]!;
    z.freePages++;
    expect(codes(k)).toEqual(["B1"]);
    z.freePages--;
    expectClean(k);
  });

  it("references declared by a refHolder are expected (a driver's reference is not a leak)", () => {
    const { k } = workload();
    const pfn = k.phys.allocFolio(0, 0);
    expect(codes(k)).toEqual(["L1"]);
    k.refHolders.push(() => new Map([[pfn, { refs: 1, pins: 0 }]]));
    expectClean(k);
  });
});

describe("I4: pinned anon pages are AnonExclusive, page by page", () => {
  it("flags the one pinned subpage of a PTE-mapped THP that lost AnonExclusive, not its exclusive head", async () => {
    const { pinUserPages } = await import("../../src/mm/gup.js");
    const { FOLL_WRITE, MADV_DONTNEED } = await import("../../src/mm/constants.js");
    const { doMadvise } = await import("../../src/mm/mmap.js");
    const { PG_anon_exclusive } = await import("../../src/mm/physmem.js");
    const { releaseSession } = await import("../../src/mm/pins.js");
    const k = mkKernel();
    const mm = mkMm(k);
    const raw = mmap(k, mm, 4 * MiB);
    const a = raw - (raw % (2 * MiB)) + 2 * MiB;
    write(k, mm, a, bytes(64, 3));
    // Zap the first page: the THP becomes PTE-mapped.
    doMadvise(k, mm, a, 4096, MADV_DONTNEED);
    const sub = a + 5 * 4096;
    const pfn = pfnAt(k, mm, sub);
    const head = k.phys.folioHead(pfn);
    expect(head).not.toBe(pfn);
    expect(pinUserPages(k, mm, 1, sub, 1, FOLL_WRITE).ret).toBe(1);
    expect(checkInvariants(k).violations).toEqual([]);
    k.phys.clearFlags(pfn, PG_anon_exclusive);
    const v = checkInvariants(k).violations.filter((x) => x.code === "I4");
    expect(v.map((x) => x.pfn)).toEqual([pfn]);
    expect(k.phys.flags(head) & PG_anon_exclusive).not.toBe(0);
    k.phys.orFlags(pfn, PG_anon_exclusive);
    releaseSession(k, 1);
    expectClean(k);
  });
});
