/**
 * One pass over every RPC of every service, checking that answers are
 * converted as the proto comments say (enum offsets, units, zero values).
 * Behaviour of the model itself is tested elsewhere.
 */
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { DeviceMapping, FileKind } from "../../src/gen/mmsim/v1/address_space.js";
import { MemoryType, MigrateType, PageTableLevel, Signal, Zone } from "../../src/gen/mmsim/v1/common.js";
import { InsertMode } from "../../src/gen/mmsim/v1/device.js";
import { FaultAccess } from "../../src/gen/mmsim/v1/fault.js";
import { PageTableEntryKind } from "../../src/gen/mmsim/v1/inspect.js";
import { ThpEnabled } from "../../src/gen/mmsim/v1/system.js";
import { startDaemon, type Clients, type TestDaemon } from "../helpers/daemon.js";

const MAP_SHARED = 0x1;
const MAP_PRIVATE = 0x2;
const MAP_ANONYMOUS = 0x20;
const PMD = 2 ** 21;

describe("every service answers with converted fields", () => {
  let t: TestDaemon;
  let c: Clients;
  let sid: number;
  let mmId: number;

  beforeAll(async () => {
    t = await startDaemon({ ramBytes: 1 * 2 ** 30 });
    sid = await t.newSession("smoke");
    c = t.withSession(sid);
    mmId = (await c.addressSpace.createMm({ name: "proc" })).mmId;
  });
  afterAll(async () => {
    await t.checkInvariants();
    await t.stop();
  });

  it("faults, reads and writes anonymous memory; smaps and folio agree", async () => {
    const { addr } = await c.addressSpace.mmap({ mmId, addr: 0, length: 8192, prot: 3, flags: MAP_PRIVATE | MAP_ANONYMOUS, fileId: 0, offset: 0 });
    const rd = await c.fault.handleMmFault({ mmId, addr: addr + 5, access: FaultAccess.FAULT_ACCESS_READ, flags: 0 });
    expect(rd).toMatchObject({ vmFault: 0, signal: Signal.SIGNAL_UNSPECIFIED, errnoValue: 0, level: PageTableLevel.PAGE_TABLE_LEVEL_PTE, writable: false, special: true, cow: false, thp: false });
    const zero = await t.clients.inspect.getFolio({ pfn: rd.pfn });
    expect(zero).toMatchObject({ pfn: rd.pfn, hasStructPage: true, zeroPage: true, zone: Zone.ZONE_DMA32 });

    const wr = await c.memory.writeMemory({ mmId, addr: addr + 4090, data: Buffer.from("0123456789") });
    expect(wr).toEqual({ bytesDone: 10, signal: Signal.SIGNAL_UNSPECIFIED, siCode: 0, faultAddr: 0, vmFault: 0 });
    const back = await c.memory.readMemory({ mmId, addr: addr + 4090, length: 10 });
    expect(Buffer.from(back.data).toString()).toBe("0123456789");
    expect(back).toMatchObject({ bytesDone: 10, faultAddr: 0, signal: 0 });

    const past = await c.memory.readMemory({ mmId, addr: addr + 8190, length: 4 });
    expect(past).toMatchObject({ bytesDone: 2, signal: Signal.SIGNAL_SIGSEGV, siCode: 1, faultAddr: addr + 8192 });
    expect(past.data).toHaveLength(2);

    const wf = await c.fault.handleMmFault({ mmId, addr, access: FaultAccess.FAULT_ACCESS_WRITE, flags: 0 });
    expect(wf).toMatchObject({ level: PageTableLevel.PAGE_TABLE_LEVEL_PTE, writable: true, special: false });
    const folio = await t.clients.inspect.getFolio({ pfn: wf.pfn });
    expect(folio).toMatchObject({ anon: true, anonExclusive: true, refcount: 1, mapcount: 1, device: MemoryType.MEMORY_TYPE_UNSPECIFIED, migratetype: MigrateType.MIGRATE_TYPE_MOVABLE, free: false });
    expect([Zone.ZONE_DMA32, Zone.ZONE_NORMAL]).toContain(folio.zone);

    const [sm] = (await t.clients.inspect.getSmaps({ mmId })).vmas;
    expect(sm).toMatchObject({ sizeKib: 8, rssKib: 8, anonymousKib: 8, vma: { start: addr, name: "[anon]", perms: "rw-p", anonVma: true } });

    const walk = await t.clients.inspect.walkPageTable({ mmId, start: addr, end: addr + 8192, maxRuns: 0 });
    expect(walk.runs.map((r) => [r.level, r.kind, r.nr, r.write])).toEqual([[PageTableLevel.PAGE_TABLE_LEVEL_PTE, PageTableEntryKind.PAGE_TABLE_ENTRY_KIND_PRESENT, 2, true]]);
    expect(walk).toMatchObject({ truncated: false, nextAddr: addr + 8192, pudTables: 1, pmdTables: 1, pteTables: 1 });
  });

  it("fork, mprotect, madvise, munmap, exit", async () => {
    const { addr } = await c.addressSpace.mmap({ mmId, addr: 0, length: 3 * 4096, prot: 3, flags: MAP_PRIVATE | MAP_ANONYMOUS, fileId: 0, offset: 0 });
    await c.addressSpace.mprotect({ mmId, addr: addr + 4096, length: 4096, prot: 1 });
    // (the last page may have merged with the adjacent anonymous VMA above)
    expect((await t.clients.inspect.getMaps({ mmId })).vmas.filter((v) => v.end > addr && v.start < addr + 3 * 4096).map((v) => v.perms)).toEqual(["rw-p", "r--p", "rw-p"]);
    await c.addressSpace.madvise({ mmId, addr, length: 4096, advice: 10 });
    const { childMmId } = await c.addressSpace.forkMm({ mmId, name: "kid" });
    expect((await t.clients.addressSpace.listMms({})).mms.find((m) => m.mmId === childMmId)).toMatchObject({ parentMmId: mmId, name: "kid", exited: false, mmUsers: 1 });
    await c.addressSpace.munmap({ mmId, addr, length: 3 * 4096 });
    await c.addressSpace.exitMm({ mmId: childMmId });
    expect((await t.clients.inspect.getMaps({ mmId: childMmId })).vmas).toEqual([]);
  });

  it("files: create, map shared, resize, close", async () => {
    const { fileId } = await c.addressSpace.createFile({ name: "buf", sizeBytes: 16384, kind: FileKind.FILE_KIND_SHMEM, hugePageSize: 0, pgmapId: 0 });
    const { addr } = await c.addressSpace.mmap({ mmId, addr: 0, length: 16384, prot: 3, flags: MAP_SHARED, fileId, offset: 0 });
    expect((await t.clients.inspect.getMaps({ mmId })).vmas.find((v) => v.start === addr)).toMatchObject({ fileId, name: "memfd:buf", perms: "rw-s" });
    await c.memory.writeMemory({ mmId, addr, data: Buffer.from("x") });
    await c.addressSpace.resizeFile({ fileId, sizeBytes: 4096 });
    await c.addressSpace.closeFile({ fileId });
    expect(t.daemon.kernel.files.has(fileId)).toBe(true); // still mapped
    await c.addressSpace.munmap({ mmId, addr, length: 16384 });
    expect(t.daemon.kernel.files.has(fileId)).toBe(false);
  });

  it("devices: pagemap, PFN range, device mmap, insertion, revoke", async () => {
    const pm = await c.device.registerDevPagemap({ name: "gpu", type: MemoryType.MEMORY_TYPE_DEVICE_PRIVATE, nrPages: 1024, owner: 42, folioOrder: 0 });
    expect(pm.nrPages).toBe(1024);
    expect(pm.pfnStart % 262144).toBe(0);
    const r = await c.device.registerPfnRange({ name: "bar0", nrPages: 1024, alignPages: 0 });
    expect(r.pfnStart % 1024).toBe(0);
    const { addr } = await c.addressSpace.mmap({
      mmId, addr: 0, length: 4 * PMD, prot: 3, flags: MAP_SHARED, fileId: 0, offset: 0,
      device: { kind: DeviceMapping.DEVICE_MAPPING_PFNMAP, basePfn: undefined, pfnRangeId: undefined, hugeFault: false },
    });
    const ins = await c.device.insertPfnRange({ mmId, addr, pfn: r.pfnStart, nrPages: 3, mode: InsertMode.INSERT_MODE_EAGER, write: false });
    expect(ins).toEqual({
      vmFault: 0x100, errnoValue: 0, leaves: [{ level: PageTableLevel.PAGE_TABLE_LEVEL_PTE, addr, pfn: r.pfnStart, count: 3 }],
      pudLeaves: 0, pmdLeaves: 0, pteLeaves: 3, alreadyPopulated: 0, warnings: [],
    });
    const f = await t.clients.inspect.getFolio({ pfn: r.pfnStart + 1 });
    expect(f).toMatchObject({ hasStructPage: false, pfnRangeId: r.pfnRangeId, zone: Zone.ZONE_UNSPECIFIED, migratetype: 0, headPfn: 0 });
    // A mapping bound to the range gets revoked by UnregisterPfnRange.
    const bound = await c.addressSpace.mmap({
      mmId, addr: 0, length: 8 * 4096, prot: 3, flags: MAP_SHARED, fileId: 0, offset: 4096,
      device: { kind: DeviceMapping.DEVICE_MAPPING_PFNMAP, pfnRangeId: r.pfnRangeId, hugeFault: false },
    });
    const fl = await c.fault.handleMmFault({ mmId, addr: bound.addr, access: FaultAccess.FAULT_ACCESS_READ, flags: 0 });
    expect(fl).toMatchObject({ vmFault: 0x100, pfn: r.pfnStart + 1, special: true, level: PageTableLevel.PAGE_TABLE_LEVEL_PTE });
    await c.device.unregisterPfnRange({ pfnRangeId: r.pfnRangeId });
    expect((await t.clients.inspect.walkPageTable({ mmId, start: bound.addr, end: bound.addr + 8 * 4096, maxRuns: 0 })).runs).toEqual([]);
    const after = await c.fault.handleMmFault({ mmId, addr: bound.addr, access: FaultAccess.FAULT_ACCESS_READ, flags: 0 });
    expect(after).toMatchObject({ vmFault: 0x2, signal: Signal.SIGNAL_SIGBUS, siCode: 2, errnoValue: 14, level: 0 });
    const devs = await t.clients.device.listDevices({});
    expect(devs.pagemaps).toEqual([
      { pgmapId: pm.pgmapId, name: "gpu", type: MemoryType.MEMORY_TYPE_DEVICE_PRIVATE, pfnStart: pm.pfnStart, nrPages: 1024, owner: 42, folioOrder: 0, ownerSessionId: sid, pagesInUse: 0, orphaned: false },
    ]);
    expect(devs.pfnRanges).toEqual([]);
    await c.addressSpace.munmap({ mmId, addr, length: 4 * PMD });
    await c.addressSpace.munmap({ mmId, addr: bound.addr, length: 8 * 4096 });
    await c.device.unregisterDevPagemap({ pgmapId: pm.pgmapId });
    expect((await t.clients.device.listDevices({})).pagemaps).toEqual([]);
  });

  it("meminfo, vmstat, tunables, version", async () => {
    const mi = await t.clients.inspect.getMeminfo({});
    expect(mi.totalPages).toBe(262144);
    expect(mi.zones.map((z) => z.zone)).toEqual([Zone.ZONE_DMA32]);
    expect(mi.zones[0]!.freeBlocksByOrder).toHaveLength(11);
    expect(mi.freePages).toBeLessThan(mi.totalPages);
    const vs = await t.clients.inspect.getVmstat({});
    expect(vs.counters.pgfault).toBeGreaterThan(0);
    expect(vs.counters.nr_free_pages).toBe(mi.freePages);
    const set = await c.system.setTunables({ thpEnabled: ThpEnabled.THP_ENABLED_MADVISE });
    expect(set.tunables?.thpEnabled).toBe(ThpEnabled.THP_ENABLED_MADVISE);
    expect(t.daemon.kernel.tunables.thpEnabled).toBe("madvise");
    expect(await t.clients.system.getVersion({})).toEqual({ version: "0.1.0", kernelBaseline: "6.18", api: "mmsim.v1" });
  });
});
