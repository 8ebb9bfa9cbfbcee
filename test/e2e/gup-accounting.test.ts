/**
 * GupService end to end: gup_test's basic commands (peer-tests.md §3-4),
 * exact refcount / pincount / vmstat / ref_updates for every kind of folio
 * (spec §2.2), device memory, special mappings, release rules and session
 * teardown. CheckInvariants runs after every test (test/setup/invariants.ts).
 */
import { status } from "@grpc/grpc-js";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { MemoryType } from "../../src/gen/mmsim/v1/common.js";
import { InsertMode } from "../../src/gen/mmsim/v1/device.js";
import { type Clients, startDaemon, type TestDaemon } from "../helpers/daemon.js";
import { expectErrno } from "../helpers/errors.js";
import {
  alignedAnon,
  DeviceMapping,
  EEXIST,
  EFAULT,
  EINVAL,
  EREMOTEIO,
  FileKind,
  FOLL_GET,
  FOLL_LONGTERM,
  FOLL_PCI_P2PDMA,
  FOLL_WRITE,
  folio,
  GiB,
  gupTestIoctl,
  MADV_NOHUGEPAGE,
  MAP_ANONYMOUS,
  MAP_PRIVATE,
  MAP_SHARED,
  MiB,
  mmap,
  OUT,
  PAGE,
  pfnAt,
  pin,
  pinStats,
  populate,
  PROT_READ,
  RW,
  TWOMEG,
  V,
} from "../helpers/gup.js";

let t: TestDaemon;
let c: Clients;
let sid: number;

beforeAll(async () => {
  t = await startDaemon({ ramBytes: 4 * GiB });
  sid = await t.newSession("gup-e2e");
  c = t.withSession(sid);
});
afterAll(async () => {
  await t.stop();
});

const newMm = async () => (await c.addressSpace.createMm({ name: "gup" })).mmId;

/** After a test: nothing held, acquired == released (invariant I3 at quiescence). */
async function expectQuiescent(): Promise<void> {
  const s = await pinStats(c);
  expect(s.out).toBe(0);
  expect(s.acq).toBe(s.rel);
  expect((await c.gup.listPins({ sessionId: sid, includeRuns: false })).handles).toEqual([]);
}

describe("gup_test basic commands", () => {
  const PIN_VARIANTS = [V.GUP_VARIANT_PIN_USER_PAGES, V.GUP_VARIANT_PIN_USER_PAGES_FAST];
  const GET_VARIANTS = [V.GUP_VARIANT_GET_USER_PAGES, V.GUP_VARIANT_GET_USER_PAGES_FAST];

  for (const thp of [true, false]) {
    for (const perCall of [1, 512, 123, -1]) {
      it(`PIN_BASIC_TEST / GUP_BASIC_TEST / the fast benchmarks, ${thp ? "THP" : "4 KiB"} (-${thp ? "t" : "T"}), -n ${perCall}, -w and -W`, async () => {
        const mm = await newMm();
        const size = perCall === 1 ? TWOMEG : 4 * MiB;
        const a = await alignedAnon(c, mm, size, thp ? 14 : MADV_NOHUGEPAGE);
        await populate(c, mm, a, size); // gup_test pre-faults one byte per page
        const n = perCall < 0 ? size / PAGE : perCall;
        const s0 = await pinStats(c);
        for (const write of [FOLL_WRITE, 0]) {
          for (const v of [...PIN_VARIANTS, ...GET_VARIANTS]) {
            const r = await gupTestIoctl(c, mm, v, a, size, n, write);
            expect({ v: V[v], size: r.size, pages: r.pages }).toEqual({ v: V[v], size, pages: size / PAGE });
          }
        }
        const s1 = await pinStats(c);
        expect(s1.acq - s0.acq).toBe(2 * 2 * (size / PAGE));
        expect(s1.rel - s0.rel).toBe(s1.acq - s0.acq);
        await expectQuiescent();
        await c.addressSpace.exitMm({ mmId: mm });
      });
    }
  }

  it("PIN_LONGTERM_BENCHMARK: pages are dma-pinned and long-term pinnable", async () => {
    const mm = await newMm();
    const a = await alignedAnon(c, mm, 4 * MiB);
    await populate(c, mm, a, 4 * MiB);
    const r = await pin(c, V.GUP_VARIANT_PIN_USER_PAGES, mm, a, 1024, FOLL_WRITE | FOLL_LONGTERM);
    expect(r.ret).toBe(1024);
    for (const run of r.ranges) {
      const f = await folio(c, run.pfn);
      expect([f.maybeDmaPinned, f.longtermPinnable]).toEqual([true, true]);
    }
    await c.gup.unpinHandle({ handle: r.handle, makeDirty: false });
    await expectQuiescent();
  });

  it("gup_test -z quirk: FOLL_GET (0x02) with pin commands is invalid: pin_user_pages 0 (WARN), pin_user_pages_fast -EINVAL", async () => {
    const mm = await newMm();
    const a = await mmap(c, mm, 64 * PAGE, RW, MAP_PRIVATE | MAP_ANONYMOUS);
    const s0 = await pinStats(c);
    const slow = await pin(c, V.GUP_VARIANT_PIN_USER_PAGES, mm, a, 64, FOLL_GET);
    expect(slow.ret).toBe(0);
    expect(slow.warning).toMatch(/WARN_ON_ONCE/);
    const fast = await pin(c, V.GUP_VARIANT_PIN_USER_PAGES_FAST, mm, a, 64, FOLL_GET);
    expect(fast.ret).toBe(-EINVAL);
    const r = await gupTestIoctl(c, mm, V.GUP_VARIANT_PIN_USER_PAGES, a, 64 * PAGE, 1, FOLL_GET);
    expect(r).toEqual({ size: PAGE, pages: 0 }); // the walk stops at once: "truncated"
    expect(await pinStats(c)).toEqual(s0);
    const lt = await pin(c, V.GUP_VARIANT_GET_USER_PAGES, mm, a, 1, FOLL_LONGTERM);
    expect(lt.ret).toBe(-EINVAL); // FOLL_LONGTERM without FOLL_PIN
  });

  it("DUMP_USER_PAGES_TEST (-ct -F 0x1 0 19 0x1000): get_user_pages of a THP range, dump pages 0, 19 and 4096", async () => {
    const mm = await newMm();
    const size = 32 * MiB;
    const a = await alignedAnon(c, mm, size);
    await populate(c, mm, a, size);
    const r = await pin(c, V.GUP_VARIANT_GET_USER_PAGES, mm, a, size / PAGE, FOLL_WRITE, { output: OUT.GUP_OUTPUT_PAGE_ARRAY });
    expect(r.ret).toBe(size / PAGE);
    expect(r.pages.length).toBe(size / PAGE);
    expect(r.ranges).toEqual([]);
    for (const idx of [0, 19, 0x1000]) {
      const f = await folio(c, r.pages[idx]!);
      // the THP is mapped once by a PMD and held by 512 FOLL_GET references
      expect({ idx, order: f.order, refcount: f.refcount, pincount: f.pincount, pinned: f.maybeDmaPinned }).toEqual({
        idx,
        order: 9,
        refcount: 1 + 512,
        pincount: 0,
        pinned: false,
      });
    }
    expect(r.pages[19]).toBe(r.pages[0]! + 19);
    const put = await c.gup.putUserPages({ pages: r.pages });
    expect(put.released).toEqual({ pages: size / PAGE, refUpdates: size / TWOMEG, foliosDirtied: 0 });
    expect((await folio(c, r.pages[0]!)).refcount).toBe(1);
    await expectQuiescent();
  });

  it("DUMP_USER_PAGES_TEST with -p (pin): same pages, pins instead of references", async () => {
    const mm = await newMm();
    const a = await alignedAnon(c, mm, 4 * MiB);
    await populate(c, mm, a, 4 * MiB);
    const r = await pin(c, V.GUP_VARIANT_PIN_USER_PAGES, mm, a, 1024, FOLL_WRITE, { output: OUT.GUP_OUTPUT_PAGE_ARRAY });
    expect(r.ret).toBe(1024);
    const f = await folio(c, r.pages[19]!);
    expect([f.refcount, f.pincount, f.maybeDmaPinned]).toEqual([513, 512, true]);
    const u = await c.gup.unpinUserPages({ pages: r.pages, makeDirty: true });
    expect(u.released).toEqual({ pages: 1024, refUpdates: 2, foliosDirtied: 2 }); // one set_page_dirty per folio group
    await expectQuiescent();
  });
});

describe("exact accounting per folio kind (spec 2.2)", () => {
  it("small anon page: refcount + 1024, vmstat + 1, one update; unpin restores", async () => {
    const mm = await newMm();
    const a = await alignedAnon(c, mm, TWOMEG, MADV_NOHUGEPAGE);
    await populate(c, mm, a, 4 * PAGE);
    const pfn = await pfnAt(c, mm, a);
    const s0 = await pinStats(c);
    const r = await pin(c, V.GUP_VARIANT_PIN_USER_PAGES, mm, a, 1, FOLL_WRITE);
    expect({ ret: r.ret, upd: r.refUpdates, ranges: r.ranges }).toEqual({ ret: 1, upd: 1, ranges: [{ pfn, count: 1 }] });
    let f = await folio(c, pfn);
    expect([f.refcount, f.pincount, f.maybeDmaPinned]).toEqual([1 + 1024, 0, true]);
    const r2 = await pin(c, V.GUP_VARIANT_PIN_USER_PAGES_FAST, mm, a, 1, 0);
    expect(r2.fastPinned).toBe(1);
    f = await folio(c, pfn);
    expect(f.refcount).toBe(1 + 2048); // pinned twice (spec 2.2 example)
    const s1 = await pinStats(c);
    expect([s1.acq - s0.acq, s1.out]).toEqual([2, 2]);
    await c.gup.unpinHandle({ handle: r.handle, makeDirty: false });
    await c.gup.unpinUserPageRange({ firstPfn: pfn, nrPages: 1, makeDirty: false });
    f = await folio(c, pfn);
    expect([f.refcount, f.maybeDmaPinned]).toEqual([1, false]);
    expect((await pinStats(c)).rel - s0.rel).toBe(2);
    await expectQuiescent();
  });

  it("PMD-mapped THP: 512 pages = refcount + 512, pincount 512, one update; 3 in the middle = + 3", async () => {
    const mm = await newMm();
    const a = await alignedAnon(c, mm, TWOMEG);
    await populate(c, mm, a, TWOMEG);
    const head = await pfnAt(c, mm, a);
    const s0 = await pinStats(c);
    const r = await pin(c, V.GUP_VARIANT_PIN_USER_PAGES, mm, a, 512, FOLL_WRITE, { folioRuns: true });
    expect({ ret: r.ret, upd: r.refUpdates, ranges: r.ranges, folios: r.folioRuns }).toEqual({
      ret: 512,
      upd: 1,
      ranges: [{ pfn: head, count: 512 }],
      folios: [{ headPfn: head, pfn: head, count: 512 }],
    });
    let f = await folio(c, head);
    expect([f.refcount, f.pincount]).toEqual([513, 512]);
    const mid = await pin(c, V.GUP_VARIANT_PIN_USER_PAGES_FAST, mm, a + 100 * PAGE, 3, FOLL_WRITE);
    expect([mid.ret, mid.fastPinned, mid.refUpdates]).toEqual([3, 3, 1]);
    f = await folio(c, head);
    expect([f.refcount, f.pincount]).toEqual([516, 515]);
    expect((await pinStats(c)).acq - s0.acq).toBe(515);
    // a sub-range of the handle, then the rest
    const part = await c.gup.unpinHandle({ handle: r.handle, first: 10, count: 100, makeDirty: false });
    expect(part.released).toEqual({ pages: 100, refUpdates: 1, foliosDirtied: 0 });
    await c.gup.unpinHandle({ handle: r.handle, makeDirty: false });
    await c.gup.unpinFolios({ folios: [head], npagesEach: 3 });
    f = await folio(c, head);
    expect([f.refcount, f.pincount]).toEqual([1, 0]);
    await expectQuiescent();
  });

  it("PTE-mapped THP (mprotect splits the PMD): still one update per folio", async () => {
    const mm = await newMm();
    const a = await alignedAnon(c, mm, TWOMEG);
    await populate(c, mm, a, TWOMEG);
    const head = await pfnAt(c, mm, a);
    await c.addressSpace.mprotect({ mmId: mm, addr: a, length: PAGE, prot: PROT_READ });
    const w = await c.inspect.walkPageTable({ mmId: mm, start: a, end: a + TWOMEG, maxRuns: 8 });
    expect(w.runs.every((run) => run.level === 1)).toBe(true); // PTE level
    const before = await folio(c, head);
    expect(before.order).toBe(9);
    const r = await pin(c, V.GUP_VARIANT_PIN_USER_PAGES, mm, a + PAGE, 511, FOLL_WRITE);
    expect([r.ret, r.refUpdates]).toEqual([511, 1]);
    const f = await folio(c, head);
    expect([f.refcount - before.refcount, f.pincount]).toEqual([511, 511]);
    const fast = await pin(c, V.GUP_VARIANT_PIN_USER_PAGES_FAST, mm, a + PAGE, 511, FOLL_WRITE);
    expect([fast.ret, fast.fastPinned, fast.refUpdates]).toEqual([511, 511, 1]);
    await c.gup.unpinHandle({ handle: r.handle, makeDirty: false });
    await c.gup.unpinHandle({ handle: fast.handle, makeDirty: false });
    expect((await folio(c, head)).refcount).toBe(before.refcount);
    await expectQuiescent();
  });

  for (const [label, hsize] of [
    ["2 MiB", TWOMEG],
    ["1 GiB", GiB],
  ] as const) {
    it(`hugetlb ${label}: one folio, one update, exact pincount`, async () => {
      const mm = await newMm();
      const file = (await c.addressSpace.createFile({ name: `huge${label}`, sizeBytes: hsize, kind: FileKind.FILE_KIND_HUGETLB, hugePageSize: hsize, pgmapId: 0 })).fileId;
      const a = await mmap(c, mm, hsize, RW, MAP_SHARED, file);
      await populate(c, mm, a, hsize);
      const head = await pfnAt(c, mm, a);
      const before = await folio(c, head);
      expect(before.hugetlb).toBe(true);
      const n = hsize / PAGE;
      const s0 = await pinStats(c);
      const r = await pin(c, V.GUP_VARIANT_PIN_USER_PAGES_FAST, mm, a, n, FOLL_WRITE | FOLL_LONGTERM);
      expect({ ret: r.ret, upd: r.refUpdates, ranges: r.ranges }).toEqual({ ret: n, upd: 1, ranges: [{ pfn: head, count: n }] });
      const f = await folio(c, head);
      expect([f.refcount - before.refcount, f.pincount]).toEqual([n, n]);
      expect((await pinStats(c)).acq - s0.acq).toBe(n);
      await c.gup.unpinHandle({ handle: r.handle, makeDirty: true });
      expect((await folio(c, head)).refcount).toBe(before.refcount);
      await c.addressSpace.exitMm({ mmId: mm });
      await c.addressSpace.closeFile({ fileId: file });
      await expectQuiescent();
    }, 60_000);
  }

  it("4 KiB zero page: R/O pins are no-ops (handle 0, no vmstat); FOLL_GET takes real references", async () => {
    const mm = await newMm();
    const a = await alignedAnon(c, mm, TWOMEG, MADV_NOHUGEPAGE);
    await populate(c, mm, a, 8 * PAGE, false);
    const zero = await pfnAt(c, mm, a);
    const z0 = await folio(c, zero);
    expect(z0.zeroPage).toBe(true);
    const s0 = await pinStats(c);
    const r = await pin(c, V.GUP_VARIANT_PIN_USER_PAGES, mm, a, 8, 0);
    expect({ ret: r.ret, handle: r.handle, upd: r.refUpdates }).toEqual({ ret: 8, handle: 0, upd: 0 });
    expect(r.ranges).toEqual(new Array(8).fill({ pfn: zero, count: 1 }));
    expect(await pinStats(c)).toEqual(s0);
    expect((await folio(c, zero)).refcount).toBe(z0.refcount);
    const g = await pin(c, V.GUP_VARIANT_GET_USER_PAGES, mm, a, 8, 0);
    expect([g.ret, (await folio(c, zero)).refcount - z0.refcount]).toEqual([8, 8]);
    await c.gup.putUserPages({ pages: new Array(8).fill(zero) });
    expect((await folio(c, zero)).refcount).toBe(z0.refcount);
    // a long-term R/O pin in a COW mapping unshares into fresh anon pages
    const lt = await pin(c, V.GUP_VARIANT_PIN_USER_PAGES, mm, a, 2, FOLL_LONGTERM);
    expect(lt.ret).toBe(2);
    expect(lt.ranges.every((run) => run.pfn !== zero)).toBe(true);
    await c.gup.unpinHandle({ handle: lt.handle, makeDirty: false });
    await expectQuiescent();
  });

  it("huge zero folio: a short-term R/O pin takes real references (slow path; GUP-fast falls back)", async () => {
    const mm = await newMm();
    const a = await alignedAnon(c, mm, TWOMEG);
    await populate(c, mm, a, TWOMEG, false);
    const hz = await pfnAt(c, mm, a);
    const before = await folio(c, hz);
    expect(before.hugeZero).toBe(true);
    const s0 = await pinStats(c);
    const r = await pin(c, V.GUP_VARIANT_PIN_USER_PAGES_FAST, mm, a, 512, 0);
    expect({ ret: r.ret, fast: r.fastPinned, upd: r.refUpdates }).toEqual({ ret: 512, fast: 0, upd: 1 });
    const f = await folio(c, hz);
    expect([f.refcount - before.refcount, f.pincount]).toEqual([512, 512]);
    expect((await pinStats(c)).acq - s0.acq).toBe(512);
    await c.gup.unpinHandle({ handle: r.handle, makeDirty: false });
    expect((await folio(c, hz)).pincount).toBe(0);
    await expectQuiescent();
  });

  it("pinning 1 GiB of PMD-mapped THP: exactly 512 ref_updates, a few ranges, no page array", async () => {
    const mm = await newMm();
    const a = await alignedAnon(c, mm, GiB);
    await populate(c, mm, a, GiB);
    const s0 = await pinStats(c);
    const r = await pin(c, V.GUP_VARIANT_PIN_USER_PAGES, mm, a, GiB / PAGE, FOLL_WRITE | FOLL_LONGTERM);
    expect([r.ret, r.refUpdates, r.pages.length]).toEqual([GiB / PAGE, 512, 0]);
    expect(r.ranges.length).toBeLessThanOrEqual(512);
    expect(r.ranges.reduce((s, run) => s + run.count, 0)).toBe(GiB / PAGE);
    expect((await pinStats(c)).acq - s0.acq).toBe(GiB / PAGE);
    const u = await c.gup.unpinHandle({ handle: r.handle, makeDirty: false });
    expect(u.released).toEqual({ pages: GiB / PAGE, refUpdates: 512, foliosDirtied: 0 });
    await c.addressSpace.exitMm({ mmId: mm });
    await expectQuiescent();
  }, 60_000);
});

describe("device memory and special mappings", () => {
  const mixedmap = (mm: number, length: number, extra: { pfnRangeId?: number } = {}) =>
    c.addressSpace.mmap({
      mmId: mm,
      addr: 0,
      length,
      prot: RW,
      flags: MAP_SHARED,
      fileId: 0,
      offset: 0,
      device: { kind: DeviceMapping.DEVICE_MAPPING_MIXEDMAP, hugeFault: false, ...extra },
    });

  it("P2PDMA pages mapped by vm_insert_page: -EREMOTEIO without FOLL_PCI_P2PDMA, pinned with it (slow path)", async () => {
    const mm = await newMm();
    const pm = await c.device.registerDevPagemap({ name: "p2p", type: MemoryType.MEMORY_TYPE_DEVICE_PCI_P2PDMA, nrPages: 16, owner: 0, folioOrder: 0 });
    const { pfns } = await c.device.allocDevicePages({ pgmapId: pm.pgmapId, nrPages: 2 });
    expect((await folio(c, pfns[0]!)).refcount).toBe(1);
    const a = (await mixedmap(mm, 2 * PAGE)).addr;
    for (let i = 0; i < 2; i++) {
      const ins = await c.device.vmInsertPage({ mmId: mm, addr: a + i * PAGE, pfn: pfns[i]! });
      expect(ins).toEqual({ errnoValue: 0, allocationTransferred: true });
    }
    expect((await folio(c, pfns[0]!)).refcount).toBe(1); // the mapping holds the only reference
    for (const v of [V.GUP_VARIANT_PIN_USER_PAGES, V.GUP_VARIANT_PIN_USER_PAGES_FAST, V.GUP_VARIANT_GET_USER_PAGES, V.GUP_VARIANT_GET_USER_PAGES_FAST]) {
      const r = await pin(c, v, mm, a, 2, 0);
      expect([V[v], r.ret, r.handle]).toEqual([V[v], -EREMOTEIO, 0]);
    }
    const ok = await pin(c, V.GUP_VARIANT_PIN_USER_PAGES_FAST, mm, a, 2, FOLL_PCI_P2PDMA | FOLL_WRITE);
    expect([ok.ret, ok.fastPinned, ok.refUpdates]).toEqual([2, 0, 2]);
    expect((await folio(c, pfns[1]!)).refcount).toBe(1 + 1024);
    const bad = await pin(c, V.GUP_VARIANT_PIN_USER_PAGES_FAST, mm, a, 2, FOLL_PCI_P2PDMA | FOLL_LONGTERM);
    expect(bad.ret).toBe(-EINVAL);
    await c.gup.unpinUserPages({ pages: pfns, makeDirty: false });
    expect((await folio(c, pfns[0]!)).refcount).toBe(1);
    // vm_insert_page errors: populated slot, outside any VMA
    expect((await c.device.vmInsertPage({ mmId: mm, addr: a, pfn: pfns[0]! })).errnoValue).toBe(16);
    expect((await c.device.vmInsertPage({ mmId: mm, addr: 0x1000, pfn: pfns[0]! })).errnoValue).toBe(EFAULT);
    await c.addressSpace.exitMm({ mmId: mm });
    expect((await c.device.listDevices({})).pagemaps.find((p) => p.pgmapId === pm.pgmapId)?.pagesInUse).toBe(0);
    await c.device.unregisterDevPagemap({ pgmapId: pm.pgmapId });
    await expectQuiescent();
  });

  it("device-coherent pages mapped by a driver: short-term pins in place (refcount + 1024)", async () => {
    const mm = await newMm();
    const pm = await c.device.registerDevPagemap({ name: "coherent", type: MemoryType.MEMORY_TYPE_DEVICE_COHERENT, nrPages: 8, owner: 7, folioOrder: 0 });
    const { pfns } = await c.device.allocDevicePages({ pgmapId: pm.pgmapId, nrPages: 1 });
    const a = (await mixedmap(mm, PAGE)).addr;
    expect((await c.device.vmInsertPage({ mmId: mm, addr: a, pfn: pfns[0]! })).errnoValue).toBe(0);
    const r = await pin(c, V.GUP_VARIANT_PIN_USER_PAGES, mm, a, 1, FOLL_WRITE);
    expect(r.ret).toBe(1);
    expect(r.ranges).toEqual([{ pfn: pfns[0]!, count: 1 }]);
    const f = await folio(c, pfns[0]!);
    expect([f.refcount, f.device, f.maybeDmaPinned]).toEqual([1 + 1024, MemoryType.MEMORY_TYPE_DEVICE_COHERENT, true]);
    await c.gup.unpinHandle({ handle: r.handle, makeDirty: false });
    await c.addressSpace.exitMm({ mmId: mm });
    await c.device.unregisterDevPagemap({ pgmapId: pm.pgmapId });
    await expectQuiescent();
  });

  it("AllocDevicePages / FreeDevicePages: all or nothing, only what the session holds", async () => {
    const pm = await c.device.registerDevPagemap({ name: "generic", type: MemoryType.MEMORY_TYPE_DEVICE_GENERIC, nrPages: 4, owner: 0, folioOrder: 0 });
    await expectErrno(c.device.allocDevicePages({ pgmapId: pm.pgmapId, nrPages: 5 }), "ENOMEM", status.RESOURCE_EXHAUSTED);
    const { pfns } = await c.device.allocDevicePages({ pgmapId: pm.pgmapId, nrPages: 4 });
    const other = t.withSession(await t.newSession("other"));
    await expectErrno(other.device.freeDevicePages({ pfns: [pfns[0]!] }), "EINVAL", status.FAILED_PRECONDITION);
    expect((await c.device.freeDevicePages({ pfns })).freed).toBe(4);
    await expectErrno(c.device.freeDevicePages({ pfns: [pfns[0]!] }), "EINVAL", status.FAILED_PRECONDITION);
    await c.device.unregisterDevPagemap({ pgmapId: pm.pgmapId });
  });

  it("PFNMAP: -EFAULT; MIXEDMAP special PTE: -EEXIST with pages[], skipped without", async () => {
    const mm = await newMm();
    const range = await c.device.registerPfnRange({ name: "bar", nrPages: 16, alignPages: 0 });
    const pfnmap = (
      await c.addressSpace.mmap({
        mmId: mm,
        addr: 0,
        length: 16 * PAGE,
        prot: RW,
        flags: MAP_SHARED,
        fileId: 0,
        offset: 0,
        device: { kind: DeviceMapping.DEVICE_MAPPING_PFNMAP, pfnRangeId: range.pfnRangeId, hugeFault: false },
      })
    ).addr;
    await c.device.insertPfnRange({ mmId: mm, addr: pfnmap, pfn: range.pfnStart, nrPages: 16, mode: InsertMode.INSERT_MODE_EAGER, write: true });
    for (const v of [V.GUP_VARIANT_PIN_USER_PAGES, V.GUP_VARIANT_PIN_USER_PAGES_FAST, V.GUP_VARIANT_GET_USER_PAGES]) {
      expect((await pin(c, v, mm, pfnmap, 16, FOLL_WRITE)).ret).toBe(-EFAULT);
    }
    const mixed = (await mixedmap(mm, 4 * PAGE)).addr;
    await c.device.insertPfnRange({ mmId: mm, addr: mixed, pfn: range.pfnStart, nrPages: 4, mode: InsertMode.INSERT_MODE_EAGER, write: true });
    expect((await pin(c, V.GUP_VARIANT_PIN_USER_PAGES, mm, mixed, 4, FOLL_WRITE)).ret).toBe(-EEXIST);
    expect((await pin(c, V.GUP_VARIANT_GET_USER_PAGES, mm, mixed, 4, 0)).ret).toBe(-EEXIST);
    const pop = await pin(c, V.GUP_VARIANT_GET_USER_PAGES, mm, mixed, 4, 0, { wantPages: false, output: OUT.GUP_OUTPUT_NONE });
    expect([pop.ret, pop.handle]).toEqual([4, 0]);
    await c.addressSpace.exitMm({ mmId: mm });
    await c.device.unregisterPfnRange({ pfnRangeId: range.pfnRangeId });
    await expectQuiescent();
  });
});

describe("release rules, limits and session teardown", () => {
  it("releasing what the session does not hold is FAILED_PRECONDITION and changes nothing", async () => {
    const mm = await newMm();
    const a = await alignedAnon(c, mm, TWOMEG, MADV_NOHUGEPAGE);
    await populate(c, mm, a, 4 * PAGE);
    const r = await pin(c, V.GUP_VARIANT_PIN_USER_PAGES, mm, a, 4, FOLL_WRITE, { output: OUT.GUP_OUTPUT_PAGE_ARRAY });
    const other = t.withSession(await t.newSession("thief"));
    await expectErrno(other.gup.unpinHandle({ handle: r.handle, makeDirty: false }), "EINVAL", status.FAILED_PRECONDITION);
    await expectErrno(other.gup.unpinUserPages({ pages: [r.pages[0]!], makeDirty: false }), "EINVAL", status.FAILED_PRECONDITION);
    await expectErrno(c.gup.unpinHandle({ handle: 999_999, makeDirty: false }), "EINVAL", status.FAILED_PRECONDITION);
    // one page too many: nothing released
    await expectErrno(c.gup.unpinUserPages({ pages: [...r.pages, r.pages[0]!], makeDirty: false }), "EINVAL", status.FAILED_PRECONDITION);
    await expectErrno(c.gup.putUserPages({ pages: [r.pages[0]!] }), "EINVAL", status.FAILED_PRECONDITION);
    expect((await pinStats(c)).out).toBe(4);
    const l = await c.gup.listPins({ sessionId: sid, includeRuns: true });
    expect(l.handles).toHaveLength(1);
    expect(l.handles[0]).toMatchObject({ handle: r.handle, sessionId: sid, mmId: mm, nrPages: 4, livePages: 4, pins: 4, gets: 0 });
    expect(l.handles[0]!.runs.every((run) => run.pin && !run.longterm)).toBe(true);
    await c.gup.unpinUserPages({ pages: r.pages, makeDirty: false });
    await expectErrno(c.gup.unpinHandle({ handle: r.handle, makeDirty: false }), "EINVAL", status.FAILED_PRECONDITION);
    await expectQuiescent();
  });

  it("RLIMIT_MEMLOCK: long-term pins beyond the session's limit are RESOURCE_EXHAUSTED (ENOMEM); short-term pins are not charged", async () => {
    const mm = await newMm();
    const a = await alignedAnon(c, mm, 8 * MiB);
    await populate(c, mm, a, 8 * MiB);
    await c.system.setTunables({ memlockLimitBytes: 4 * MiB });
    try {
      const ok = await pin(c, V.GUP_VARIANT_PIN_USER_PAGES, mm, a, 1024, FOLL_WRITE | FOLL_LONGTERM);
      expect(ok.ret).toBe(1024);
      expect((await c.gup.getPinStats({ sessionId: sid })).sessionLockedBytes).toBe(4 * MiB);
      await expectErrno(pin(c, V.GUP_VARIANT_PIN_USER_PAGES_FAST, mm, a + 4 * MiB, 1, FOLL_LONGTERM), "ENOMEM", status.RESOURCE_EXHAUSTED);
      const short = await pin(c, V.GUP_VARIANT_PIN_USER_PAGES, mm, a + 4 * MiB, 1024, FOLL_WRITE);
      expect(short.ret).toBe(1024);
      await c.gup.unpinHandle({ handle: ok.handle, makeDirty: false });
      await c.gup.unpinHandle({ handle: short.handle, makeDirty: false });
      const again = await pin(c, V.GUP_VARIANT_PIN_USER_PAGES, mm, a + 4 * MiB, 1024, FOLL_LONGTERM);
      expect(again.ret).toBe(1024);
      await c.gup.unpinHandle({ handle: again.handle, makeDirty: false });
    } finally {
      await c.system.setTunables({ memlockUnlimited: true });
    }
    await expectQuiescent();
  });

  it("a session's end releases every pin and reference it holds (acquired == released after)", async () => {
    const other = await t.newSession("short-lived");
    const o = t.withSession(other);
    const mm = (await o.addressSpace.createMm({ name: "victim" })).mmId;
    const a = await alignedAnon(o, mm, 4 * MiB);
    await populate(o, mm, a, 4 * MiB);
    const p1 = await pin(o, V.GUP_VARIANT_PIN_USER_PAGES, mm, a, 1024, FOLL_WRITE | FOLL_LONGTERM);
    const p2 = await pin(o, V.GUP_VARIANT_PIN_USER_PAGES_FAST, mm, a, 100, 0);
    const g = await pin(o, V.GUP_VARIANT_GET_USER_PAGES, mm, a, 10, 0);
    expect([p1.ret, p2.ret, g.ret]).toEqual([1024, 100, 10]);
    const sess = (await c.session.listSessions({})).sessions.find((s) => s.sessionId === other)!;
    expect(sess).toMatchObject({ pinCount: 3, pinnedPages: 1134, lockedBytes: 4 * MiB });
    const s0 = await pinStats(c);
    expect(s0.out).toBe(1124);
    await c.session.closeSession({ sessionId: other });
    const s1 = await pinStats(c);
    expect([s1.out, s1.acq - s1.rel, s1.rel - s0.rel]).toEqual([0, 0, 1124]);
    expect((await c.gup.listPins({ sessionId: 0, includeRuns: false })).handles).toEqual([]);
  });

  it("a non-persistent session's pins go when its AttachSession stream is cancelled", async () => {
    const { sessionId } = await c.session.createSession({ name: "attached", persistent: false });
    const stream = t.attach(sessionId);
    await stream.message(0);
    const o = t.withSession(sessionId);
    const mm = await newMm();
    const a = await alignedAnon(c, mm, TWOMEG);
    await populate(c, mm, a, TWOMEG);
    const r = await pin(o, V.GUP_VARIANT_PIN_USER_PAGES, mm, a, 512, FOLL_WRITE);
    expect(r.ret).toBe(512);
    stream.cancel();
    await stream.status;
    for (let i = 0; i < 100 && (await pinStats(c)).out !== 0; i++) await new Promise((res) => setTimeout(res, 20));
    await expectQuiescent();
    expect((await folio(c, r.ranges[0]!.pfn)).pincount).toBe(0);
  });

  it("malformed requests are INVALID_ARGUMENT; an unknown mm is NOT_FOUND", async () => {
    await expectErrno(c.gup.pinUserPages({ variant: V.GUP_VARIANT_UNSPECIFIED, mmId: 1, start: 0, nrPages: 1, gupFlags: 0, output: 0, wantFolioRuns: false }), "EINVAL", status.INVALID_ARGUMENT);
    await expectErrno(pin(c, V.GUP_VARIANT_PIN_USER_PAGES, 424242, 0x10000, 1, 0), "ENOENT", status.NOT_FOUND);
    const mm = await newMm();
    await expectErrno(pin(c, V.GUP_VARIANT_PIN_USER_PAGES, mm, 0x10000, 2 ** 20, 0, { output: OUT.GUP_OUTPUT_PAGE_ARRAY }), "EINVAL", status.INVALID_ARGUMENT);
    expect((await pin(c, V.GUP_VARIANT_PIN_USER_PAGES, mm, 0x10000, 0, 0)).ret).toBe(0);
    expect((await pin(c, V.GUP_VARIANT_PIN_USER_PAGES, mm, 0x10000, 1, 0)).ret).toBe(-EFAULT); // no VMA
  });
});
