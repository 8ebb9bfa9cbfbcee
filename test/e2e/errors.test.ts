/**
 * Error statuses end to end (common.proto "Errors"): malformed requests are
 * INVALID_ARGUMENT / EINVAL and change nothing; unknown ids NOT_FOUND;
 * kernel-bug misuse FAILED_PRECONDITION with a "kernel-bug:" reason; values
 * that do not fit below 2^53 are refused at decode time.
 */
import { BinaryWriter } from "@bufbuild/protobuf/wire";
import { Metadata, status, type ServiceError } from "@grpc/grpc-js";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { DeviceMapping, FileKind } from "../../src/gen/mmsim/v1/address_space.js";
import { InsertMode } from "../../src/gen/mmsim/v1/device.js";
import { FaultAccess } from "../../src/gen/mmsim/v1/fault.js";
import { MemoryType } from "../../src/gen/mmsim/v1/common.js";
import { PinAccounting, ThpEnabled } from "../../src/gen/mmsim/v1/system.js";
import { sessionMetadata, startDaemon, type Clients, type TestDaemon } from "../helpers/daemon.js";
import { expectErrno } from "../helpers/errors.js";

const MAP_SHARED = 0x1;
const MAP_PRIVATE = 0x2;
const MAP_ANONYMOUS = 0x20;
const PROT_RW = 0x3;
const anonMmap = (mmId: number, length = 65536) => ({ mmId, addr: 0, length, prot: PROT_RW, flags: MAP_PRIVATE | MAP_ANONYMOUS, fileId: 0, offset: 0 });

describe("error statuses", () => {
  let t: TestDaemon;
  let c: Clients;
  let sid: number;
  let mmId: number;
  let base: number;

  beforeAll(async () => {
    t = await startDaemon();
    sid = await t.newSession("errors");
    c = t.withSession(sid);
    mmId = (await c.addressSpace.createMm({ name: "proc" })).mmId;
    base = (await c.addressSpace.mmap(anonMmap(mmId))).addr;
  });
  afterAll(async () => {
    await t.checkInvariants();
    await t.stop();
  });

  const maps = async () => (await t.clients.inspect.getMaps({ mmId })).vmas;

  it("munmap of an unaligned address: INVALID_ARGUMENT, EINVAL in message and trailers", async () => {
    const before = await maps();
    const e = await expectErrno(c.addressSpace.munmap({ mmId, addr: base + 1, length: 4096 }), "EINVAL", status.INVALID_ARGUMENT);
    expect(e.details).toMatch(/^EINVAL: addr 0x[0-9a-f]+ is not page aligned$/);
    expect(e.metadata.get("mmsim-errno")).toEqual(["22"]);
    expect(await maps()).toEqual(before);
  });

  it("mmap with unknown prot or flag bits, or both MAP_SHARED and MAP_PRIVATE, is refused and maps nothing", async () => {
    const before = await maps();
    expect(before).toHaveLength(1);
    await expectErrno(c.addressSpace.mmap({ ...anonMmap(mmId), prot: 0x8 }), "EINVAL", status.INVALID_ARGUMENT);
    await expectErrno(c.addressSpace.mmap({ ...anonMmap(mmId), prot: 0x01000000 }), "EINVAL", status.INVALID_ARGUMENT);
    await expectErrno(c.addressSpace.mmap({ ...anonMmap(mmId), flags: MAP_PRIVATE | MAP_ANONYMOUS | 0x40 }), "EINVAL", status.INVALID_ARGUMENT);
    await expectErrno(c.addressSpace.mmap({ ...anonMmap(mmId), flags: MAP_SHARED | MAP_PRIVATE | MAP_ANONYMOUS }), "EINVAL", status.INVALID_ARGUMENT);
    await expectErrno(c.addressSpace.mmap({ ...anonMmap(mmId), flags: MAP_ANONYMOUS }), "EINVAL", status.INVALID_ARGUMENT);
    await expectErrno(c.addressSpace.mmap({ ...anonMmap(mmId), length: 0 }), "EINVAL", status.INVALID_ARGUMENT);
    await expectErrno(c.addressSpace.mmap({ ...anonMmap(mmId), offset: 100 }), "EINVAL", status.INVALID_ARGUMENT);
    expect(await maps()).toEqual(before);
  });

  it("mmap without file, MAP_ANONYMOUS or device is EBADF; a file with MAP_ANONYMOUS is EINVAL", async () => {
    await expectErrno(c.addressSpace.mmap({ ...anonMmap(mmId), flags: MAP_PRIVATE }), "EBADF", status.INVALID_ARGUMENT);
    await expectErrno(c.addressSpace.mmap({ ...anonMmap(mmId), fileId: 99 }), "EINVAL", status.INVALID_ARGUMENT);
    expect(await maps()).toHaveLength(1);
  });

  it("a closed file is EBADF for mmap and close", async () => {
    const { fileId } = await c.addressSpace.createFile({ name: "f", sizeBytes: 8192, kind: FileKind.FILE_KIND_SHMEM, hugePageSize: 0, pgmapId: 0 });
    await c.addressSpace.closeFile({ fileId });
    await expectErrno(c.addressSpace.mmap({ mmId, addr: 0, length: 4096, prot: 1, flags: MAP_SHARED, fileId, offset: 0 }), "EBADF", status.INVALID_ARGUMENT);
    await expectErrno(c.addressSpace.closeFile({ fileId }), "EBADF", status.INVALID_ARGUMENT);
    await expectErrno(c.addressSpace.closeFile({ fileId: 5000 }), "ENOENT", status.NOT_FOUND);
  });

  it("enum values out of range are INVALID_ARGUMENT", async () => {
    await expectErrno(
      c.addressSpace.createFile({ name: "f", sizeBytes: 4096, kind: 0 as FileKind, hugePageSize: 0, pgmapId: 0 }),
      "EINVAL",
      status.INVALID_ARGUMENT,
    );
    await expectErrno(
      c.addressSpace.createFile({ name: "f", sizeBytes: 4096, kind: 9 as FileKind, hugePageSize: 0, pgmapId: 0 }),
      "EINVAL",
      status.INVALID_ARGUMENT,
    );
    await expectErrno(
      c.addressSpace.createFile({ name: "f", sizeBytes: 4096, kind: FileKind.FILE_KIND_SHMEM, hugePageSize: 2097152, pgmapId: 0 }),
      "EINVAL",
      status.INVALID_ARGUMENT,
    );
    await expectErrno(c.addressSpace.madvise({ mmId, addr: base, length: 4096, advice: 5 }), "EINVAL", status.INVALID_ARGUMENT);
    await expectErrno(
      c.fault.handleMmFault({ mmId, addr: base, access: FaultAccess.FAULT_ACCESS_UNSPECIFIED, flags: 0 }),
      "EINVAL",
      status.INVALID_ARGUMENT,
    );
    await expectErrno(
      c.device.registerDevPagemap({ name: "d", type: MemoryType.MEMORY_TYPE_UNSPECIFIED, nrPages: 512, owner: 1, folioOrder: 0 }),
      "EINVAL",
      status.INVALID_ARGUMENT,
    );
    // The only file so far was closed (previous test); the refused calls created none.
    expect((await t.clients.session.listSessions({})).sessions[0]).toMatchObject({ fileCount: 0 });
    expect((await t.clients.device.listDevices({})).pagemaps).toEqual([]);
  });

  it("fault flags: unknown bits and WRITE with a read access are EINVAL; nothing is faulted", async () => {
    await expectErrno(c.fault.handleMmFault({ mmId, addr: base, access: FaultAccess.FAULT_ACCESS_READ, flags: 0x40 }), "EINVAL", status.INVALID_ARGUMENT);
    await expectErrno(c.fault.handleMmFault({ mmId, addr: base, access: FaultAccess.FAULT_ACCESS_READ, flags: 0x1 }), "EINVAL", status.INVALID_ARGUMENT);
    const walk = await t.clients.inspect.walkPageTable({ mmId, start: base, end: base + 65536, maxRuns: 0 });
    expect(walk.runs).toEqual([]);
  });

  it("a fault outcome is a response, not an error", async () => {
    const r = await c.fault.handleMmFault({ mmId, addr: 0x1000, access: FaultAccess.FAULT_ACCESS_READ, flags: 0 });
    expect(r).toMatchObject({ signal: 11, siCode: 1, errnoValue: 14, vmFault: 0, level: 0, pfn: 0 });
    const g = await c.fault.handleMmFault({ mmId, addr: 0x1000, access: FaultAccess.FAULT_ACCESS_READ, flags: 0, user: false });
    expect(g).toMatchObject({ signal: 0, siCode: 0, errnoValue: 14, vmFault: 0x40 });
  });

  it("reads above 2 MiB are EINVAL", async () => {
    await expectErrno(c.memory.readMemory({ mmId, addr: base, length: 2 * 2 ** 20 + 1 }), "EINVAL", status.INVALID_ARGUMENT);
    await expectErrno(c.memory.writeMemory({ mmId, addr: base, data: Buffer.alloc(2 * 2 ** 20 + 1) }), "EINVAL", status.INVALID_ARGUMENT);
    expect((await t.clients.inspect.walkPageTable({ mmId, start: base, end: base + 65536, maxRuns: 0 })).runs).toEqual([]);
  });

  it("unknown ids are NOT_FOUND / ENOENT; id 0 is EINVAL", async () => {
    await expectErrno(c.addressSpace.munmap({ mmId: 999, addr: 0x10000, length: 4096 }), "ENOENT", status.NOT_FOUND);
    await expectErrno(t.clients.inspect.getMaps({ mmId: 999 }), "ENOENT", status.NOT_FOUND);
    await expectErrno(c.addressSpace.munmap({ mmId: 0, addr: 0x10000, length: 4096 }), "EINVAL", status.INVALID_ARGUMENT);
    await expectErrno(c.device.unregisterPfnRange({ pfnRangeId: 77 }), "ENOENT", status.NOT_FOUND);
  });

  it("SetTunables with an invalid value changes nothing", async () => {
    const before = (await t.clients.system.getTunables({})).tunables;
    expect(before).toEqual({ thpEnabled: ThpEnabled.THP_ENABLED_ALWAYS, thpUseZeroPage: true, maxMapCount: 65530, memlockLimitBytes: 8388608, memlockUnlimited: true, pinAccounting: PinAccounting.PIN_ACCOUNTING_CURRENT });
    await expectErrno(c.system.setTunables({ thpEnabled: ThpEnabled.THP_ENABLED_UNSPECIFIED, maxMapCount: 10 }), "EINVAL", status.INVALID_ARGUMENT);
    await expectErrno(c.system.setTunables({ maxMapCount: 0 }), "EINVAL", status.INVALID_ARGUMENT);
    await expectErrno(c.system.setTunables({ memlockLimitBytes: 4096, memlockUnlimited: true }), "EINVAL", status.INVALID_ARGUMENT);
    expect((await t.clients.system.getTunables({})).tunables).toEqual(before);
    const after = await c.system.setTunables({ memlockLimitBytes: 65536 });
    expect(after.tunables).toEqual({ ...before, memlockLimitBytes: 65536, memlockUnlimited: false });
    expect(t.daemon.kernel.tunables.memlockLimitBytes).toBe(65536);
    await c.system.setTunables({ memlockUnlimited: true });
    expect(t.daemon.kernel.tunables.memlockLimitBytes).toBe(0);
  });

  it("RegisterPfnRange with a non-power-of-two alignment is EINVAL and registers nothing", async () => {
    await expectErrno(c.device.registerPfnRange({ name: "bar", nrPages: 16, alignPages: 3 }), "EINVAL", status.INVALID_ARGUMENT);
    await expectErrno(c.device.registerPfnRange({ name: "bar", nrPages: 0, alignPages: 0 }), "EINVAL", status.INVALID_ARGUMENT);
    expect((await t.clients.device.listDevices({})).pfnRanges).toEqual([]);
  });

  it("kernel-bug misuse: FAILED_PRECONDITION, EINVAL, reason starting with kernel-bug:", async () => {
    // vmf_insert_pfn into an anonymous VMA (neither VM_PFNMAP nor VM_MIXEDMAP).
    const e = await expectErrno(
      c.device.insertPfnRange({ mmId, addr: base, pfn: 0x3800_0000, nrPages: 1, mode: InsertMode.INSERT_MODE_EAGER, write: false }),
      "EINVAL",
      status.FAILED_PRECONDITION,
    );
    expect(e.details).toMatch(/^EINVAL: kernel-bug:[a-z_]+: /);
  });

  it("a device mapping must fit its PFN range", async () => {
    const r = await c.device.registerPfnRange({ name: "bar0", nrPages: 16, alignPages: 0 });
    expect(r.nrPages).toBe(16);
    expect(r.pfnStart % 16).toBe(0);
    const req = { mmId, addr: 0, length: 17 * 4096, prot: PROT_RW, flags: MAP_SHARED, fileId: 0, offset: 0 };
    const device = { kind: DeviceMapping.DEVICE_MAPPING_PFNMAP, pfnRangeId: r.pfnRangeId, hugeFault: false };
    await expectErrno(c.addressSpace.mmap({ ...req, device }), "EINVAL", status.INVALID_ARGUMENT);
    await expectErrno(c.addressSpace.mmap({ ...req, length: 4096, offset: 16 * 4096, device }), "EINVAL", status.INVALID_ARGUMENT);
    expect(await maps()).toHaveLength(1);
    const ok = await c.addressSpace.mmap({ ...req, length: 16 * 4096, device });
    const vmas = await maps();
    expect(vmas.find((v) => v.start === ok.addr)).toMatchObject({ name: "[pfnmap]", end: ok.addr + 16 * 4096 });
    expect((await t.clients.device.listDevices({})).pfnRanges).toEqual([
      { pfnRangeId: r.pfnRangeId, name: "bar0", pfnStart: r.pfnStart, nrPages: 16, ownerSessionId: sid, vmaCount: 1 },
    ]);
    await c.addressSpace.munmap({ mmId, addr: ok.addr, length: 16 * 4096 });
    await c.device.unregisterPfnRange({ pfnRangeId: r.pfnRangeId });
  });

  it("a uint64 at or above 2^53 on the wire is INVALID_ARGUMENT / EINVAL", async () => {
    // MunmapRequest { mm_id = 2^60, addr = 0x10000, length = 4096 }, encoded by hand.
    const bytes = new BinaryWriter().uint32(8).uint64(2n ** 60n).uint32(16).uint64(0x10000).uint32(24).uint64(4096).finish();
    const err = await new Promise<ServiceError>((resolve, reject) => {
      t.raw.addressSpace.makeUnaryRequest(
        "/mmsim.v1.AddressSpaceService/Munmap",
        (b: Buffer) => b,
        (b: Buffer) => b,
        Buffer.from(bytes),
        sessionMetadata(sid),
        {},
        (e) => (e ? resolve(e) : reject(new Error("call succeeded"))),
      );
    });
    expect(err.code).toBe(status.INVALID_ARGUMENT);
    expect(err.details).toMatch(/^EINVAL: cannot decode the request/);
    expect(err.metadata.get("mmsim-errno-name")).toEqual(["EINVAL"]);
  });

  it("state after all the refused calls: one anonymous VMA, no page mapped", async () => {
    const vmas = await maps();
    expect(vmas).toEqual([
      { start: base, end: base + 65536, perms: "rw-p", vmFlags: expect.any(Number), pgoff: base / 4096, fileId: 0, name: "[anon]", anonVma: false },
    ]);
    expect((await t.clients.addressSpace.listMms({}, new Metadata())).mms[0]).toMatchObject({ mmId, mapCount: 1, rssAnonPages: 0 });
  });
});
