/**
 * hmm_range_fault (spec 6): the 6.16+ entry encoding, the per-page decision
 * table, faulting and restarts, return values, compact output; and the
 * notifier helpers it relies on.
 */
import { describe, expect, it } from "vitest";
import {
  MAP_HUGETLB,
  MAP_PRIVATE,
  MAP_SHARED,
  MemoryType,
  MmuNotifyEvent,
  PROT_NONE,
  PROT_READ,
} from "../../src/mm/constants.js";
import { copyPageData, handleMmFault } from "../../src/mm/fault.js";
import {
  HMM_PFN_DMA_MAPPED,
  HMM_PFN_ERROR,
  HMM_PFN_P2PDMA,
  HMM_PFN_REQ_FAULT,
  HMM_PFN_REQ_WRITE,
  HMM_PFN_VALID,
  HMM_PFN_WRITE,
  type HmmRange,
  type HmmRun,
  hmmPfnOrder,
  hmmPfnsFromBytes,
  hmmPfnsToBytes,
  hmmRangeFault,
  mmuIntervalReadBegin,
} from "../../src/mm/hmm.js";
import type { Kernel } from "../../src/mm/kernel.js";
import type { Mm } from "../../src/mm/mm.js";
import { IntervalSub, RANGE_END_ALL } from "../../src/mm/mmu-notifier.js";
import { doMadvise, doMprotect, forkMm } from "../../src/mm/mmap.js";
import { MIGRATE_VMA_SELECT_SYSTEM, MigrateVma, makeDeviceExclusive, migrateVmaFinalize, migrateVmaPages, migrateVmaSetup } from "../../src/mm/migrate-device.js";
import { ANON_SHARED, MiB, bytes, expectClean, mkKernel, mkMm, mmap, pfnAt, read, recordEvents, starts, write } from "./helpers.js";

const PAGE = 4096;
const VALID_WRITE = (HMM_PFN_VALID | HMM_PFN_WRITE) >>> 0;
const ORDER9 = 9 << 21;

/** A subscription over everything that does what a driver must (set_seq). */
function notifier(mm: Mm): IntervalSub {
  const s = new IntervalSub(1000 + mm.id, mm.id, 0, RANGE_END_ALL - 1, {
    invalidate(sub, _r, cur) {
      sub.seq = cur;
      return true;
    },
  }, 1);
  mm.notifier.insert(s, RANGE_END_ALL, mm.mmUsers);
  return s;
}

interface Out {
  ret: number;
  walks: number;
  faults: number;
  last: number;
  /** [pfn, high word] per page */
  e: [number, number][];
}

function fault(k: Kernel, mm: Mm, sub: IntervalSub, start: number, npages: number, o: Partial<HmmRange> = {}): Out {
  const pfns = o.hmmPfns ?? new Uint32Array(2 * npages);
  const r = hmmRangeFault(k, mm, {
    notifier: sub,
    notifierSeq: o.notifierSeq ?? sub.seq,
    start,
    end: o.end ?? start + npages * PAGE,
    hmmPfns: pfns,
    runs: null,
    defaultFlags: o.defaultFlags ?? 0,
    pfnFlagsMask: o.pfnFlagsMask ?? 0,
    devPrivateOwner: o.devPrivateOwner ?? 0,
  });
  const e: [number, number][] = [];
  for (let i = 0; i < npages; i++) e.push([pfns[2 * i]!, pfns[2 * i + 1]!]);
  return { ret: r.ret, walks: r.walks, faults: r.faults, last: r.last, e };
}

function compact(k: Kernel, mm: Mm, sub: IntervalSub, start: number, end: number, defaultFlags = 0): { ret: number; runs: HmmRun[] } {
  const runs: HmmRun[] = [];
  const r = hmmRangeFault(k, mm, { notifier: sub, notifierSeq: sub.seq, start, end, hmmPfns: null, runs, defaultFlags, pfnFlagsMask: 0, devPrivateOwner: 0 });
  return { ret: r.ret, runs };
}

function setup(thp: "always" | "never" = "never") {
  const k = mkKernel({ tunables: { thpEnabled: thp } });
  const mm = mkMm(k);
  const sub = notifier(mm);
  return { k, mm, sub };
}

describe("hmm_range_fault: snapshot entries (spec 6.1, 6.2)", () => {
  it("encodes VALID/WRITE/pfn per page; none is 0; the zero page is VALID read-only", () => {
    const { k, mm, sub } = setup();
    const a = mmap(k, mm, 4 * PAGE);
    write(k, mm, a, bytes(PAGE, 1));
    read(k, mm, a + PAGE, 1); // zero page
    doMprotect(k, mm, a + 2 * PAGE, PAGE, PROT_READ);
    const r = fault(k, mm, sub, a, 4);
    expect(r).toMatchObject({ ret: 0, walks: 1, faults: 0, last: a + 4 * PAGE });
    expect(r.e).toEqual([
      [pfnAt(k, mm, a), VALID_WRITE],
      [k.phys.zeroPfn, HMM_PFN_VALID >>> 0],
      [0, 0],
      [0, 0],
    ]);
    expectClean(k);
  });

  it("the wire form is little-endian uint64: VALID is the top bit of byte 7", () => {
    const a = new Uint32Array([0x1234, (HMM_PFN_VALID | (9 << 21)) >>> 0]);
    const b = hmmPfnsToBytes(a);
    expect([...b]).toEqual([0x34, 0x12, 0, 0, 0, 0, 0x20, 0x81]);
    expect(hmmPfnOrder(hmmPfnsFromBytes(b, 1)[1]!)).toBe(9);
    const big = new DataView(b.buffer, b.byteOffset).getBigUint64(0, true);
    expect(big).toBe((1n << 63n) | (9n << 53n) | 0x1234n);
  });

  it("holes, VM_PFNMAP/VM_IO and PROT_NONE VMAs are ERROR without faults, -EFAULT with", () => {
    const { k, mm, sub } = setup();
    const a = mmap(k, mm, 2 * PAGE);
    const none = mmap(k, mm, 2 * PAGE, { prot: PROT_NONE });
    const bar = k.phys.registerPfnRange("bar", 4, 4);
    const pf = mmap(k, mm, 2 * PAGE, { flags: MAP_SHARED, device: { kind: "pfnmap", pfnRangeId: bar.id, basePfn: -1, hugeFault: false } });
    for (const va of [none, pf, a - 16 * PAGE]) {
      expect(fault(k, mm, sub, va, 2).e).toEqual([
        [0, HMM_PFN_ERROR],
        [0, HMM_PFN_ERROR],
      ]);
      expect(fault(k, mm, sub, va, 2, { defaultFlags: HMM_PFN_REQ_FAULT }).ret).toBe(-14);
    }
    expectClean(k);
  });

  it("a special PTE (not the zero page) is ERROR; a fault request on it is -EFAULT", () => {
    const { k, mm, sub } = setup();
    const bar = k.phys.registerPfnRange("bar", 4, 4);
    const va = mmap(k, mm, 2 * PAGE, { flags: MAP_SHARED, device: { kind: "mixedmap", pfnRangeId: bar.id, basePfn: bar.startPfn, hugeFault: false } });
    handleMmFault(k, mm, mm.findVma(va)!, va, 0);
    expect(fault(k, mm, sub, va, 1).e).toEqual([[0, HMM_PFN_ERROR]]);
    expect(fault(k, mm, sub, va, 1, { defaultFlags: HMM_PFN_REQ_FAULT }).ret).toBe(-14);
    expectClean(k);
  });

  it("a PROT_NONE PTE (protnone) keeps its pfn without VALID", () => {
    const { k, mm, sub } = setup();
    const a = mmap(k, mm, PAGE);
    write(k, mm, a, bytes(8, 2));
    const pfn = pfnAt(k, mm, a);
    doMprotect(k, mm, a, PAGE, PROT_NONE);
    // The VMA lacks VM_READ: the whole VMA is ERROR (hmm_vma_walk_test).
    expect(fault(k, mm, sub, a, 1).e).toEqual([[0, HMM_PFN_ERROR]]);
    expect(pfn).toBeGreaterThan(0);
    expectClean(k);
  });

  it("a THP PMD is order 9 for every page, pfn + offset; a hugetlb page too", () => {
    const { k, mm, sub } = setup("always");
    const a = mmap(k, mm, 4 * MiB);
    write(k, mm, a, bytes(8, 3));
    const head = pfnAt(k, mm, a);
    const r = fault(k, mm, sub, a + 510 * PAGE, 4);
    expect(r.e.slice(0, 2)).toEqual([
      [head + 510, (VALID_WRITE | ORDER9) >>> 0],
      [head + 511, (VALID_WRITE | ORDER9) >>> 0],
    ]);
    expect(r.e.slice(2)).toEqual([
      [0, 0],
      [0, 0],
    ]);
    const hv = mmap(k, mm, 2 * MiB, { flags: MAP_PRIVATE | 0x20 | MAP_HUGETLB });
    write(k, mm, hv, bytes(8, 4));
    doMprotect(k, mm, hv, 2 * MiB, PROT_READ);
    const h = fault(k, mm, sub, hv + PAGE, 1);
    expect(h.e[0]![1]).toBe((HMM_PFN_VALID | ORDER9) >>> 0);
    expect(hmmPfnOrder(h.e[0]![1])).toBe(9);
    expectClean(k);
  });

  it("sticky DMA bits survive from input to output; everything else is replaced", () => {
    const { k, mm, sub } = setup();
    const a = mmap(k, mm, 2 * PAGE);
    write(k, mm, a, bytes(8, 5));
    const input = new Uint32Array([7, (HMM_PFN_DMA_MAPPED | HMM_PFN_ERROR) >>> 0, 9, (HMM_PFN_P2PDMA | HMM_PFN_VALID) >>> 0]);
    const r = fault(k, mm, sub, a, 2, { hmmPfns: input });
    expect(r.e).toEqual([
      [pfnAt(k, mm, a), (HMM_PFN_DMA_MAPPED | VALID_WRITE) >>> 0],
      [0, HMM_PFN_P2PDMA],
    ]);
    expectClean(k);
  });
});

describe("hmm_range_fault: faulting and return values (spec 6.2, 6.3)", () => {
  it("REQ_FAULT faults the rest of the PMD range with FAULT_FLAG_REMOTE, then restarts", () => {
    const { k, mm, sub } = setup();
    const a = mmap(k, mm, 8 * PAGE);
    const before = k.vmstat.pgfault;
    const r = fault(k, mm, sub, a, 8, { defaultFlags: HMM_PFN_REQ_FAULT });
    expect(r).toMatchObject({ ret: 0, walks: 2, faults: 8 });
    expect(k.vmstat.pgfault - before).toBe(8);
    expect(r.e.every(([pfn, hi]) => pfn === k.phys.zeroPfn && hi === HMM_PFN_VALID >>> 0)).toBe(true);
    // Write faults replace the zero pages (COW, CLEAR): the restart sees the
    // new sequence; the caller starts again from read_begin.
    const rw = (HMM_PFN_REQ_FAULT | HMM_PFN_REQ_WRITE) >>> 0;
    expect(fault(k, mm, sub, a, 8, { defaultFlags: rw })).toMatchObject({ ret: -16, walks: 1, faults: 8 });
    const w = fault(k, mm, sub, a, 8, { defaultFlags: rw });
    expect(w).toMatchObject({ ret: 0, faults: 0 });
    expect(w.e.every(([, hi]) => hi === VALID_WRITE)).toBe(true);
    expectClean(k);
  });

  it("per-page requests through pfn_flags_mask fault only the pages that ask", () => {
    const { k, mm, sub } = setup();
    const a = mmap(k, mm, 4 * PAGE);
    write(k, mm, a, bytes(8, 11)); // the PTE table exists; pages 1-3 are none
    const input = new Uint32Array(8);
    input[2 * 3 + 1] = HMM_PFN_REQ_FAULT;
    // The walk faults from the first requesting PTE to the end of the range.
    const r = fault(k, mm, sub, a, 4, { hmmPfns: input, pfnFlagsMask: HMM_PFN_REQ_FAULT });
    expect(r).toMatchObject({ ret: 0, faults: 1 });
    expect(r.e.map(([, hi]) => hi)).toEqual([VALID_WRITE, 0, 0, HMM_PFN_VALID >>> 0]);
    // Without per-page input, a hole is faulted as a whole.
    const b = mmap(k, mm, 4 * PAGE);
    expect(fault(k, mm, sub, b, 4, { defaultFlags: HMM_PFN_REQ_FAULT })).toMatchObject({ ret: 0, faults: 4 });
    expectClean(k);
  });

  it("a write request on a VMA without VM_WRITE is -EPERM before faulting", () => {
    const { k, mm, sub } = setup();
    const a = mmap(k, mm, 2 * PAGE, { prot: PROT_READ });
    const r = fault(k, mm, sub, a, 2, { defaultFlags: (HMM_PFN_REQ_FAULT | HMM_PFN_REQ_WRITE) >>> 0 });
    expect(r).toMatchObject({ ret: -1, faults: 0 });
    expectClean(k);
  });

  it("-EBUSY when the sequence changed before a walk, including after its own COW fault", () => {
    const { k, mm, sub } = setup();
    const a = mmap(k, mm, 2 * PAGE);
    write(k, mm, a, bytes(8, 6));
    const seq = sub.seq;
    doMadvise(k, mm, a + PAGE, PAGE, 4);
    expect(fault(k, mm, sub, a, 2, { notifierSeq: seq })).toMatchObject({ ret: -16, walks: 0 });
    // After fork the page is COW-shared: the write fault replaces it (CLEAR),
    // which bumps the sequence; the restart sees it and returns -EBUSY.
    const child = forkMm(k, mm, "c", 1);
    const s = sub.seq;
    const r = fault(k, mm, sub, a, 1, { notifierSeq: s, defaultFlags: (HMM_PFN_REQ_FAULT | HMM_PFN_REQ_WRITE) >>> 0 });
    expect(r).toMatchObject({ ret: -16, walks: 1, faults: 1, last: a });
    k.runOp(() => {});
    void child;
    expectClean(k);
  });

  it("an empty range is -EINVAL", () => {
    const { k, mm, sub } = setup();
    const a = mmap(k, mm, PAGE);
    expect(fault(k, mm, sub, a, 0, { end: a })).toMatchObject({ ret: -22 });
    expectClean(k);
  });

  it("on a fault error, entries before `last` hold outputs and the rest keep their inputs", () => {
    const { k, mm, sub } = setup();
    const a = mmap(k, mm, 2 * PAGE);
    write(k, mm, a, bytes(8, 7));
    const input = new Uint32Array([0, 0, 0, 0, 42, HMM_PFN_DMA_MAPPED, 43, HMM_PFN_DMA_MAPPED]);
    // Pages 0-1 are mapped, 2-3 are a hole: the fault request there is -EFAULT.
    const r = fault(k, mm, sub, a, 4, { hmmPfns: input, defaultFlags: HMM_PFN_REQ_FAULT });
    expect(r.ret).toBe(-14);
    expect(r.e[0]![1]).toBe(VALID_WRITE);
    expect(r.e.slice(2)).toEqual([
      [42, HMM_PFN_DMA_MAPPED],
      [43, HMM_PFN_DMA_MAPPED],
    ]);
    expectClean(k);
  });

  it("hmm_range_fault notifies nothing when it only fills empty entries", () => {
    const { k, mm, sub } = setup();
    const a = mmap(k, mm, 4 * PAGE);
    const evs = recordEvents(k);
    expect(fault(k, mm, sub, a, 4, { defaultFlags: (HMM_PFN_REQ_FAULT | HMM_PFN_REQ_WRITE) >>> 0 }).ret).toBe(0);
    expect(starts(evs)).toEqual([]);
    expectClean(k);
  });
});

describe("hmm_range_fault: device entries", () => {
  function migrated(k: Kernel, mm: Mm, a: number, n: number, owner: number) {
    const pm = k.phys.registerPagemap("dev", MemoryType.DEVICE_PRIVATE, 64, owner);
    const mv = new MigrateVma(mm.findVma(a)!, a, a + n * PAGE, owner, MIGRATE_VMA_SELECT_SYSTEM);
    expect(migrateVmaSetup(k, mv)).toBe(0);
    for (let i = 0; i < n; i++) {
      const d = k.phys.allocDevicePage(pm);
      copyPageData(k, mv.srcPfn[i]!, d);
      mv.setDst(i, d, (mv.srcFlags[i]! & 8) !== 0);
    }
    migrateVmaPages(k, mv);
    migrateVmaFinalize(k, mv);
    return pm;
  }

  it("device-private pages of dev_private_owner are VALID (WRITE when writable), never faulted", () => {
    const { k, mm, sub } = setup();
    const a = mmap(k, mm, 2 * PAGE);
    write(k, mm, a, bytes(2 * PAGE, 8));
    const pm = migrated(k, mm, a, 2, 77);
    doMprotect(k, mm, a + PAGE, PAGE, PROT_READ);
    const r = fault(k, mm, sub, a, 2, { devPrivateOwner: 77, defaultFlags: HMM_PFN_REQ_FAULT });
    expect(r).toMatchObject({ ret: 0, faults: 0 });
    expect(r.e.map(([pfn]) => pfn >= pm.startPfn && pfn < pm.endPfn)).toEqual([true, true]);
    expect(r.e.map(([, hi]) => hi)).toEqual([VALID_WRITE, HMM_PFN_VALID >>> 0]);
    expectClean(k);
  });

  it("device-private pages of another owner are 0; a fault request migrates them back to RAM", () => {
    const { k, mm, sub } = setup();
    const a = mmap(k, mm, 2 * PAGE);
    write(k, mm, a, bytes(2 * PAGE, 9));
    const pm = migrated(k, mm, a, 2, 77);
    expect(fault(k, mm, sub, a, 2, { devPrivateOwner: 78 }).e).toEqual([
      [0, 0],
      [0, 0],
    ]);
    const r = fault(k, mm, sub, a, 2, { devPrivateOwner: 78, defaultFlags: HMM_PFN_REQ_FAULT, notifierSeq: sub.seq });
    // The migration notified the mirror: the restart saw a new sequence.
    expect(r.ret).toBe(-16);
    const again = fault(k, mm, sub, a, 2, { devPrivateOwner: 78, defaultFlags: HMM_PFN_REQ_FAULT });
    expect(again.ret).toBe(0);
    expect(again.e.every(([pfn, hi]) => pfn < pm.startPfn && hi === VALID_WRITE)).toBe(true);
    expect(pm.allocated).toBe(0);
    expect(read(k, mm, a, 2 * PAGE)).toEqual(bytes(2 * PAGE, 9));
    expectClean(k);
  });

  it("a device-exclusive entry is 0; a fault request restores it (CLEAR)", () => {
    const { k, mm, sub } = setup();
    const a = mmap(k, mm, PAGE);
    write(k, mm, a, bytes(8, 10));
    const pfn = makeDeviceExclusive(k, mm, a, 5);
    expect(fault(k, mm, sub, a, 1).e).toEqual([[0, 0]]);
    const evs = recordEvents(k);
    expect(fault(k, mm, sub, a, 1, { defaultFlags: HMM_PFN_REQ_FAULT }).ret).toBe(-16);
    expect(starts(evs)).toEqual([[MmuNotifyEvent.CLEAR, a, a + PAGE, mm.id]]);
    expect(fault(k, mm, sub, a, 1, { defaultFlags: HMM_PFN_REQ_FAULT }).e).toEqual([[pfn, VALID_WRITE]]);
    expectClean(k);
  });
});

describe("hmm_range_fault: compact output", () => {
  it("a PMD-mapped range is one run per physically contiguous stretch, with order 9", () => {
    const { k, mm, sub } = setup("always");
    const len = 64 * MiB;
    const a = mmap(k, mm, len);
    doMadvise(k, mm, a, len, 23); // MADV_POPULATE_WRITE
    const { ret, runs } = compact(k, mm, sub, a, a + len);
    expect(ret).toBe(0);
    expect(runs.length).toBeLessThanOrEqual(32);
    expect(runs.reduce((n, r) => n + r.nrPages, 0)).toBe(len / PAGE);
    expect(runs.every((r) => r.order === 9 && r.flags === (VALID_WRITE | ORDER9) >>> 0 && !r.samePfn)).toBe(true);
    expectClean(k);
  });

  it("zero-page runs report the same PFN; holes merge into one run", () => {
    const { k, mm, sub } = setup();
    const a = mmap(k, mm, 8 * PAGE);
    read(k, mm, a, 1);
    read(k, mm, a + PAGE, 1);
    const { runs } = compact(k, mm, sub, a, a + 8 * PAGE);
    expect(runs).toEqual([
      { addr: a, nrPages: 2, pfn: k.phys.zeroPfn, flags: HMM_PFN_VALID >>> 0, order: 0, samePfn: true },
      { addr: a + 2 * PAGE, nrPages: 6, pfn: 0, flags: 0, order: 0, samePfn: false },
    ]);
    expectClean(k);
  });
});

describe("mmu_interval_read_begin (async)", () => {
  it("waits while an invalidation that hit the subscription runs, then returns its sequence", async () => {
    const k = mkKernel();
    const mm = mkMm(k);
    const sub = notifier(mm);
    const a = mmap(k, mm, PAGE, { flags: ANON_SHARED });
    void a;
    const r = k.invalidateStart(mm, 0, PAGE, MmuNotifyEvent.CLEAR)!;
    let got = -1;
    const p = mmuIntervalReadBegin(mm, sub).then((s) => (got = s));
    await Promise.resolve();
    expect(got).toBe(-1);
    k.invalidateEnd(mm, r);
    await p;
    expect(got).toBe(3);
    expectClean(k);
  });
});
