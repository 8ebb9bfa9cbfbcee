/**
 * Device memory migration (spec 8): migrate_vma_setup/pages/finalize, the
 * selection and owner rules, what stays behind (pinned or referenced pages,
 * file pages), device-private entries under fork/munmap/mprotect, CPU
 * access through migrate_to_ram, THP splitting, eviction; device-exclusive
 * entries; the OOM reaper; the dmirror mirror table and its N5 check.
 */
import { describe, expect, it } from "vitest";
import { FOLL_LONGTERM, FOLL_WRITE, MAP_HUGETLB, MAP_PRIVATE, MAP_SHARED, MemoryType, MmuNotifyEvent, PROT_READ } from "../../src/mm/constants.js";
import { copyPageData } from "../../src/mm/fault.js";
import { checkInvariants } from "../../src/mm/invariants.js";
import type { Kernel } from "../../src/mm/kernel.js";
import type { Mm } from "../../src/mm/mm.js";
import { IntervalSub } from "../../src/mm/mmu-notifier.js";
import { createFile, doMprotect, doMunmap, exitMm, forkMm } from "../../src/mm/mmap.js";
import {
  MIGRATE_PFN_MIGRATE,
  MIGRATE_PFN_WRITE,
  MIGRATE_VMA_SELECT_DEVICE_PRIVATE,
  MIGRATE_VMA_SELECT_SYSTEM,
  MigrateVma,
  evictDevicePages,
  makeDeviceExclusive,
  migrateDeviceCoherentFolio,
  migrateRangeToRam,
  migrateVmaFinalize,
  migrateVmaPages,
  migrateVmaSetup,
  migratedCount,
  oomReapMm,
} from "../../src/mm/migrate-device.js";
import { MirrorTable, MirrorTag, createDmirrorDevice, dmirrorMigrateToDevice, dmirrorSnapshot, openDmirror } from "../../src/mm/dmirror.js";
import { getUserPages, getUserPagesFast, pinUserPages, pinUserPagesFast } from "../../src/mm/gup.js";
import type { DevPagemap } from "../../src/mm/physmem.js";
import { FileKind } from "../../src/mm/vma.js";
import { EntryKind, MiB, bytes, catchMmError, ev, expectClean, mkKernel, mkMm, mmap, pfnAt, read, recordEvents, runAt, starts, write } from "./helpers.js";

const PAGE = 4096;
const OWNER = 0xd0;

function setup(thp: "always" | "never" = "never", type = MemoryType.DEVICE_PRIVATE) {
  const k = mkKernel({ tunables: { thpEnabled: thp } });
  const mm = mkMm(k);
  const pm = k.phys.registerPagemap("dev", type, 1024, OWNER);
  return { k, mm, pm };
}

/** A driver migrating [a, a + n pages) to `pm`, copying the data. Returns the MigrateVma after finalize. */
function toDevice(k: Kernel, mm: Mm, pm: DevPagemap, a: number, n: number, owner = OWNER): MigrateVma {
  const mv = new MigrateVma(mm.findVma(a)!, a, a + n * PAGE, owner, MIGRATE_VMA_SELECT_SYSTEM);
  expect(migrateVmaSetup(k, mv)).toBe(0);
  for (let i = 0; i < mv.npages; i++) {
    if (!(mv.srcFlags[i]! & MIGRATE_PFN_MIGRATE)) continue;
    const d = k.phys.allocDevicePage(pm);
    if (mv.hasPage(i)) copyPageData(k, mv.srcPfn[i]!, d);
    mv.setDst(i, d, (mv.srcFlags[i]! & MIGRATE_PFN_WRITE) !== 0 || (!mv.hasPage(i) && true));
  }
  migrateVmaPages(k, mv);
  // Entries that moved, empty ones included.
  let moved = 0;
  for (let i = 0; i < mv.npages; i++) if (mv.srcFlags[i]! & MIGRATE_PFN_MIGRATE) moved++;
  expect(migratedCount(mv)).toBeLessThanOrEqual(moved);
  migrateVmaFinalize(k, mv);
  mv.cpages = moved;
  return mv;
}

const kindAt = (k: Kernel, mm: Mm, a: number) => runAt(k, mm, a)?.kind;

describe("migrate_vma to device-private memory", () => {
  it("anon pages, empty and zero-page entries move; the CPU sees device-private entries; one MIGRATE (+1 for empties)", () => {
    const { k, mm, pm } = setup();
    const a = mmap(k, mm, 4 * PAGE);
    write(k, mm, a, bytes(PAGE, 1));
    read(k, mm, a + PAGE, 1); // zero page; pages 2-3 none
    const evs = recordEvents(k);
    const mv = toDevice(k, mm, pm, a, 4);
    expect(mv.cpages).toBe(4);
    expect(starts(evs)).toEqual([ev(MmuNotifyEvent.MIGRATE, a, a + 4 * PAGE, mm.id), ev(MmuNotifyEvent.MIGRATE, a + PAGE, a + 4 * PAGE, mm.id)]);
    for (let i = 0; i < 4; i++) expect(kindAt(k, mm, a + i * PAGE)).toBe(EntryKind.DEVICE_PRIVATE_WRITE);
    expect(pm.allocated).toBe(4);
    expect(k.phys.refcount(pm.startPfn)).toBe(1);
    expect(k.phys.mapcount(pm.startPfn)).toBe(1);
    expect(mm.rssAnon).toBe(4);
    expectClean(k);
    // CPU access migrates back (migrate_to_ram); the device page is freed.
    expect(read(k, mm, a, PAGE)).toEqual(bytes(PAGE, 1));
    expect(kindAt(k, mm, a)).toBe(EntryKind.PRESENT);
    expect(pm.allocated).toBe(3);
    expectClean(k);
  });

  it("selection: owners must match; file pages, pinned and referenced pages stay; setup checks the VMA", () => {
    const { k, mm, pm } = setup();
    const a = mmap(k, mm, 4 * PAGE);
    write(k, mm, a, bytes(4 * PAGE, 2));
    // A GUP-style reference on page 1 and a FOLL_PIN-style bias on page 2.
    const p1 = pfnAt(k, mm, a + PAGE);
    const held = new Map<number, { refs: number; pins: number }>();
    const pinPfn = pfnAt(k, mm, a + 2 * PAGE);
    k.phys.folioRefAdd(p1, 1);
    k.phys.folioRefAdd(pinPfn, 1024);
    held.set(p1, { refs: 1, pins: 0 });
    held.set(pinPfn, { refs: 1024, pins: 0 });
    k.refHolders.push(() => held);
    const mv = toDevice(k, mm, pm, a, 4);
    expect(mv.cpages).toBe(2);
    expect([0, 1, 2, 3].map((i) => kindAt(k, mm, a + i * PAGE))).toEqual([
      EntryKind.DEVICE_PRIVATE_WRITE,
      EntryKind.PRESENT,
      EntryKind.PRESENT,
      EntryKind.DEVICE_PRIVATE_WRITE,
    ]);
    expect(read(k, mm, a + PAGE, PAGE)).toEqual(bytes(4 * PAGE, 2).subarray(PAGE, 2 * PAGE));
    k.phys.folioRefAdd(p1, -1);
    k.phys.folioRefAdd(pinPfn, -1024);
    held.clear();
    // Device pages of another owner are not selected back.
    const back = new MigrateVma(mm.findVma(a)!, a, a + 4 * PAGE, OWNER + 1, MIGRATE_VMA_SELECT_DEVICE_PRIVATE);
    expect(migrateVmaSetup(k, back)).toBe(0);
    expect(back.cpages).toBe(0);
    migrateVmaFinalize(k, back);
    // File (shmem) pages are never selected; hugetlb and special VMAs are -EINVAL.
    const f = createFile(k, { name: "f", sizeBytes: 2 * PAGE, kind: FileKind.SHMEM, hugePageSize: 0, pgmapId: 0 }, 1);
    const fv = mmap(k, mm, 2 * PAGE, { flags: MAP_SHARED, fileId: f.id });
    write(k, mm, fv, bytes(8, 3));
    const fm = new MigrateVma(mm.findVma(fv)!, fv, fv + 2 * PAGE, OWNER, MIGRATE_VMA_SELECT_SYSTEM);
    expect(migrateVmaSetup(k, fm)).toBe(0);
    expect(fm.cpages).toBe(0);
    migrateVmaFinalize(k, fm);
    const hv = mmap(k, mm, 2 * MiB, { flags: MAP_PRIVATE | 0x20 | MAP_HUGETLB });
    expect(migrateVmaSetup(k, new MigrateVma(mm.findVma(hv)!, hv, hv + PAGE, OWNER, MIGRATE_VMA_SELECT_SYSTEM))).toBe(-22);
    expect(migrateVmaSetup(k, new MigrateVma(mm.findVma(a)!, a, a + 8 * PAGE, OWNER, MIGRATE_VMA_SELECT_SYSTEM))).toBe(-22);
    expectClean(k);
  });

  it("fork shares device-private pages read-only; a CPU write in one process moves the page for both, then COWs", () => {
    const { k, mm, pm } = setup();
    const a = mmap(k, mm, 2 * PAGE);
    write(k, mm, a, bytes(2 * PAGE, 4));
    toDevice(k, mm, pm, a, 2);
    const child = forkMm(k, mm, "child", 1);
    expect(kindAt(k, mm, a)).toBe(EntryKind.DEVICE_PRIVATE_READ);
    expect(kindAt(k, child, a)).toBe(EntryKind.DEVICE_PRIVATE_READ);
    expect(k.phys.refcount(pm.startPfn)).toBe(2);
    expectClean(k);
    const evs = recordEvents(k);
    write(k, mm, a, bytes(8, 5));
    // migrate_to_ram unmapped the child's entry too (try_to_migrate: CLEAR),
    // then the parent's write copied the now shared RAM page.
    expect(starts(evs).map((e) => [e[0], e[3]])).toEqual([
      [MmuNotifyEvent.MIGRATE, mm.id],
      [MmuNotifyEvent.CLEAR, child.id],
      [MmuNotifyEvent.CLEAR, mm.id],
    ]);
    expect(kindAt(k, child, a)).toBe(EntryKind.PRESENT);
    expect(read(k, child, a, 8)).toEqual(bytes(2 * PAGE, 4).subarray(0, 8));
    expect(read(k, mm, a, 8)).toEqual(bytes(8, 5));
    expect(pm.allocated).toBe(1);
    exitMm(k, child);
    expect(pm.allocated).toBe(1);
    expectClean(k);
  });

  it("mprotect read-only downgrades writable device entries; munmap frees device pages", () => {
    const { k, mm, pm } = setup();
    const a = mmap(k, mm, 4 * PAGE);
    write(k, mm, a, bytes(4 * PAGE, 6));
    toDevice(k, mm, pm, a, 4);
    k.runOp(() => doMprotect(k, mm, a, 2 * PAGE, PROT_READ));
    expect(kindAt(k, mm, a)).toBe(EntryKind.DEVICE_PRIVATE_READ);
    expect(kindAt(k, mm, a + 3 * PAGE)).toBe(EntryKind.DEVICE_PRIVATE_WRITE);
    k.runOp(() => doMunmap(k, mm, a, 4 * PAGE));
    expect(pm.allocated).toBe(0);
    expect(mm.rssAnon).toBe(0);
    expectClean(k);
  });

  it("a PMD-mapped THP is split (folio and mapping) before its pages move; an extra reference keeps it whole", () => {
    const { k, mm, pm } = setup("always");
    const a = mmap(k, mm, 4 * MiB);
    write(k, mm, a, bytes(2 * MiB, 7));
    expect(runAt(k, mm, a)!.level).toBe(1);
    const splits = k.vmstat.thp_split_page;
    const mv = toDevice(k, mm, pm, a, 8);
    expect(mv.cpages).toBe(8);
    expect(k.vmstat.thp_split_page).toBe(splits + 1);
    expect(kindAt(k, mm, a + 8 * PAGE)).toBe(EntryKind.PRESENT);
    expect(Buffer.compare(read(k, mm, a, 2 * MiB), bytes(2 * MiB, 7))).toBe(0);
    expectClean(k);
    // A second THP with a held reference: skipped as a whole (no split).
    write(k, mm, a + 2 * MiB, bytes(8, 8));
    const head = runAt(k, mm, a + 2 * MiB)!.pfn;
    const held = new Map([[head, { refs: 1, pins: 0 }]]);
    k.phys.folioRefAdd(head, 1);
    k.refHolders.push(() => held);
    const skip = toDevice(k, mm, pm, a + 2 * MiB, 4);
    expect(skip.cpages).toBe(0);
    expect(runAt(k, mm, a + 2 * MiB)!.level).toBe(1);
    k.phys.folioRefAdd(head, -1);
    held.clear();
    expectClean(k);
  });

  it("migrating back to system memory, eviction, and device-coherent pages", () => {
    const { k, mm, pm } = setup();
    const a = mmap(k, mm, 4 * PAGE);
    write(k, mm, a, bytes(4 * PAGE, 9));
    toDevice(k, mm, pm, a, 4);
    expect(migrateRangeToRam(k, mm.findVma(a)!, a, a + 2 * PAGE, OWNER, MIGRATE_VMA_SELECT_DEVICE_PRIVATE, -1, null)).toBe(2);
    expect(pm.allocated).toBe(2);
    const inUse = [pm.startPfn, pm.startPfn + 1, pm.startPfn + 2, pm.startPfn + 3];
    expect(evictDevicePages(k, inUse)).toBe(2);
    expect(pm.allocated).toBe(0);
    expect(read(k, mm, a, 4 * PAGE)).toEqual(bytes(4 * PAGE, 9));
    const coh = k.phys.registerPagemap("coh", MemoryType.DEVICE_COHERENT, 16, OWNER);
    toDevice(k, mm, coh, a, 1);
    expect(kindAt(k, mm, a)).toBe(EntryKind.PRESENT);
    const pfn = runAt(k, mm, a)!.pfn;
    expect(k.phys.memoryType(pfn)).toBe(MemoryType.DEVICE_COHERENT);
    expect(read(k, mm, a, 8)).toEqual(bytes(8, 9));
    expect(migrateDeviceCoherentFolio(k, pfn)).toBe(0);
    expect(k.phys.memoryType(runAt(k, mm, a)!.pfn)).toBe(MemoryType.NONE);
    expect(coh.allocated).toBe(0);
    expectClean(k);
  });
});

describe("hmm-tests hmm_gup_test at the model level (GUP of device memory)", () => {
  for (const coherent of [false, true]) {
    it(`${coherent ? "coherent" : "private"}: GUP faults private pages back; short-term GUP keeps coherent pages, FOLL_LONGTERM moves them`, async () => {
      const k = mkKernel();
      const mm = mkMm(k);
      const dev = createDmirrorDevice(k, "", coherent ? 2 : 1, 64, 1);
      const m = openDmirror(k, dev, mm, 1);
      const env = { op: async <T>(_mm: Mm, fn: () => T) => k.runOp(fn), now: () => performance.now() };
      const npages = 4;
      const a = mmap(k, mm, npages * PAGE);
      const data = bytes(npages * PAGE, 17);
      write(k, mm, a, data);
      const mig = await dmirrorMigrateToDevice(k, env, m, a, npages);
      expect(mig).toMatchObject({ ret: 0, cpages: npages });
      // gup_test: GUP_BASIC_TEST, GUP_FAST_BENCHMARK, PIN_FAST_BENCHMARK
      // (LONGTERM), PIN_LONGTERM_BENCHMARK, one page each, FOLL_WRITE.
      const calls = [
        () => getUserPages(k, mm, 1, a, 1, FOLL_WRITE),
        () => getUserPagesFast(k, mm, 1, a + PAGE, 1, FOLL_WRITE),
        () => pinUserPagesFast(k, mm, 1, a + 2 * PAGE, 1, FOLL_WRITE | FOLL_LONGTERM),
        () => pinUserPages(k, mm, 1, a + 3 * PAGE, 1, FOLL_WRITE | FOLL_LONGTERM),
      ];
      for (const call of calls) {
        const r = k.runOp(call);
        expect(r.ret).toBe(1);
        k.runOp(() => k.pins.releaseHandle(1, r.handle));
      }
      const snap = await dmirrorSnapshot(k, env, m, a, npages);
      expect(snap.ret).toBe(0);
      const W = 0x02;
      expect([...snap.data]).toEqual(coherent ? [0x40 | W, 0x40 | W, W, W] : [W, W, W, W]);
      expect(Buffer.compare(read(k, mm, a, npages * PAGE), data)).toBe(0);
      expectClean(k);
    });
  }
});

describe("dmirror device allocation failure (DevPagemap.failNext)", () => {
  it("a page the device cannot allocate stays in RAM; MIGRATE_TO_DEV then finds it missing (-ENOENT)", async () => {
    const k = mkKernel();
    const mm = mkMm(k);
    const dev = createDmirrorDevice(k, "", 1, 64, 1);
    const m = openDmirror(k, dev, mm, 1);
    const env = { op: async <T>(_mm: Mm, fn: () => T) => k.runOp(fn), now: () => performance.now() };
    const a = mmap(k, mm, 4 * PAGE);
    write(k, mm, a, bytes(4 * PAGE, 18));
    dev.chunks[0]!.pm.failNext = 1;
    const r = await dmirrorMigrateToDevice(k, env, m, a, 4);
    expect(r.ret).toBe(-2);
    expect(kindAt(k, mm, a)).toBe(EntryKind.PRESENT);
    expect(kindAt(k, mm, a + PAGE)).toBe(EntryKind.DEVICE_PRIVATE_WRITE);
    expect(Buffer.compare(read(k, mm, a, 4 * PAGE), bytes(4 * PAGE, 18))).toBe(0);
    expectClean(k);
  });
});

describe("make_device_exclusive", () => {
  it("EXCLUSIVE with the owner; a CPU access restores the PTE (CLEAR, no owner), writable again", () => {
    const { k, mm } = setup();
    const a = mmap(k, mm, 2 * PAGE);
    write(k, mm, a, bytes(2 * PAGE, 10));
    const evs = recordEvents(k);
    const pfn = makeDeviceExclusive(k, mm, a + 100, 0x77);
    expect(kindAt(k, mm, a)).toBe(EntryKind.DEVICE_EXCLUSIVE);
    expect(k.phys.mapcount(pfn)).toBe(1);
    expectClean(k);
    write(k, mm, a, bytes(8, 11));
    expect(evs.filter((e) => e.phase === "start").map((e) => [e.event, e.start])).toEqual([
      [MmuNotifyEvent.EXCLUSIVE, a],
      [MmuNotifyEvent.CLEAR, a],
    ]);
    expect(runAt(k, mm, a)).toMatchObject({ kind: EntryKind.PRESENT, write: true, pfn });
    expectClean(k);
  });

  it("fork restores the entry first, then copies it as COW", () => {
    const { k, mm } = setup();
    const a = mmap(k, mm, PAGE);
    write(k, mm, a, bytes(8, 12));
    makeDeviceExclusive(k, mm, a, 0);
    const child = forkMm(k, mm, "c", 1);
    expect(runAt(k, mm, a)).toMatchObject({ kind: EntryKind.PRESENT, write: false });
    expect(runAt(k, child, a)).toMatchObject({ kind: EntryKind.PRESENT, write: false });
    expect(read(k, child, a, 8)).toEqual(bytes(8, 12));
    expectClean(k);
  });

  it("errors: no write access (EFAULT), shared or hugetlb memory (EOPNOTSUPP)", () => {
    const { k, mm } = setup();
    const ro = mmap(k, mm, PAGE, { prot: PROT_READ });
    expect(catchMmError(() => makeDeviceExclusive(k, mm, ro, 0)).errno).toBe(14);
    const sh = mmap(k, mm, PAGE, { flags: MAP_SHARED | 0x20 });
    expect(catchMmError(() => makeDeviceExclusive(k, mm, sh, 0)).errno).toBe(95);
    const hv = mmap(k, mm, 2 * MiB, { flags: MAP_PRIVATE | 0x20 | MAP_HUGETLB });
    expect(catchMmError(() => makeDeviceExclusive(k, mm, hv, 0)).errno).toBe(95);
    expectClean(k);
  });
});

describe("OOM reaper (model)", () => {
  it("a non-blockable UNMAP per VMA; a refusing notifier keeps its VMA (EAGAIN)", () => {
    const { k, mm } = setup();
    const a = mmap(k, mm, 2 * PAGE);
    const b = mmap(k, mm, 2 * PAGE, { prot: 7 });
    write(k, mm, a, bytes(2 * PAGE, 13));
    write(k, mm, b, bytes(2 * PAGE, 14));
    const refuse = new IntervalSub(9, mm.id, a, a + 2 * PAGE - 1, { invalidate: (_s, r) => r.blockable }, 1);
    mm.notifier.insert(refuse, 2 * PAGE, 1);
    const evs = recordEvents(k);
    const res = k.runOp(() => oomReapMm(k, mm));
    const [lo, hi] = a < b ? [a, b] : [b, a];
    expect(res).toEqual([
      { start: lo, end: lo + 2 * PAGE, reaped: lo !== a, errno: lo === a ? 11 : 0 },
      { start: hi, end: hi + 2 * PAGE, reaped: hi !== a, errno: hi === a ? 11 : 0 },
    ]);
    expect(evs.filter((e) => e.phase === "start").every((e) => e.event === MmuNotifyEvent.UNMAP && !e.blockable)).toBe(true);
    expect(read(k, mm, a, 8)).toEqual(bytes(8, 13));
    expect(read(k, mm, b, 8)).toEqual(new Uint8Array(8));
    expect(mm.notifier.seq % 2).toBe(0);
    expectClean(k);
  });
});

describe("dmirror mirror table and coherence (N5)", () => {
  it("stores, erases [first, last] inclusively, trims empty nodes lazily, discards", () => {
    const t = new MirrorTable();
    for (let v = 0; v < 1500; v++) t.set(v, 100 + v, v % 2 ? MirrorTag.WRITE : MirrorTag.READ);
    t.set(2 ** 34, 7, MirrorTag.ATOMIC);
    expect(t.size).toBe(1501);
    expect(t.get(3)).toEqual({ pfn: 103, tag: MirrorTag.WRITE });
    t.clearRange(0, 1023);
    expect(t.size).toBe(477);
    expect(t.get(1023)).toBeNull();
    expect(t.get(1024)).toEqual({ pfn: 1124, tag: MirrorTag.READ });
    const nodes = t.nodes;
    t.trim();
    expect(t.nodes).toBe(nodes - 2);
    t.clearRange(0, Number.MAX_SAFE_INTEGER / 4096);
    expect(t.size).toBe(0);
    t.discard();
    expect(t.nodes).toBe(1);
  });

  it("CheckInvariants reports a mirror entry that disagrees with the CPU page table", () => {
    const { k, mm } = setup();
    const dev = createDmirrorDevice(k, "", 1, 64, 1);
    const m = openDmirror(k, dev, mm, 1);
    const a = mmap(k, mm, 2 * PAGE);
    write(k, mm, a, bytes(8, 15));
    const pfn = runAt(k, mm, a)!.pfn;
    m.pt.set(a / PAGE, pfn, MirrorTag.WRITE);
    expectClean(k);
    m.pt.set(a / PAGE + 3, pfn, MirrorTag.READ); // nothing mapped there
    // The callback erases [a >> 12, (a + 4096) >> 12]: page 0 and, as
    // test_hmm's inclusive bound does, page 1.
    k.runOp(() => doMprotect(k, mm, a, PAGE, PROT_READ));
    expect(m.pt.get(a / PAGE)).toBeNull();
    expect(checkInvariants(k).violations.map((v) => [v.code, v.addr])).toEqual([["N5", a + 3 * PAGE]]);
    m.pt.discard();
    expectClean(k);
  });

  it("N1-N3: malformed notifications, callbacks for non-overlapping ranges and bad sequences are reported", () => {
    const { k, mm } = setup();
    const dev = createDmirrorDevice(k, "", 1, 64, 1);
    const m = openDmirror(k, dev, mm, 1);
    expectClean(k);
    const r = k.invalidateStart(mm, 0x1001, 0x3000, MmuNotifyEvent.CLEAR)!;
    k.invalidateEnd(mm, r);
    m.invalidate(new IntervalSub(99, mm.id, 0x10000, 0x1ffff, m, 1), { ...r, start: 0x20000, end: 0x30000 }, 5);
    const seq = m.sub.seq;
    m.sub.seq = 2;
    expect(checkInvariants(k).violations.map((v) => v.code).sort()).toEqual(["N1", "N2", "N3"]);
    m.sub.seq = seq;
  });

  it("CheckInvariants catches a leaked reference on a device page", () => {
    const { k, mm, pm } = setup();
    const a = mmap(k, mm, PAGE);
    write(k, mm, a, bytes(8, 16));
    toDevice(k, mm, pm, a, 1);
    k.phys.folioRefAdd(pm.startPfn, 1);
    expect(checkInvariants(k).violations.map((v) => v.code)).toEqual(["L1"]);
    k.phys.folioRefAdd(pm.startPfn, -1);
    expectClean(k);
  });
});

