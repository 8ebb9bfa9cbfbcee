/**
 * Hostile input over gRPC: a corpus of malformed requests (boundary numbers,
 * unaligned, inverted and overflowing ranges, unknown ids, undecodable bytes,
 * oversized messages and claims). Each is answered with its status, the
 * daemon stays up and answers the next call, and the state digest
 * (AdminService.GetStateDigest) is the same before and after.
 */
import { Client, credentials, Metadata, type ServiceError, status } from "@grpc/grpc-js";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { MAP_ANONYMOUS, MAP_FIXED, MAP_PRIVATE, PROT_READ, PROT_WRITE } from "../../src/mm/constants.js";
import { startDaemon, sessionMetadata, type Clients, type TestDaemon } from "../helpers/daemon.js";

const MAX_MESSAGE = 256 * 1024;
let td: TestDaemon;
let c: Clients;
let sid: number;
let mmId: number;
let base: number;
let raw: Client;

beforeAll(async () => {
  td = await startDaemon({ maxMessageBytes: MAX_MESSAGE, maxMmsPerSession: 4, maxPagesPerRequest: 1 << 20 });
  sid = await td.newSession("hostile");
  c = td.withSession(sid);
  mmId = (await c.addressSpace.createMm({ name: "victim" })).mmId;
  base = (await c.addressSpace.mmap({ mmId, addr: 0, length: 4 << 20, prot: PROT_READ | PROT_WRITE, flags: MAP_PRIVATE | MAP_ANONYMOUS, fileId: 0, offset: 0 })).addr;
  await c.memory.writeMemory({ mmId, addr: base, data: Buffer.from("hello") });
  raw = new Client(td.address, credentials.createInsecure());
});

afterAll(async () => {
  raw.close();
  await td.stop();
});

const digest = async () => (await td.clients.admin.getStateDigest({})).digest;

async function code(p: Promise<unknown>): Promise<status> {
  try {
    await p;
    return status.OK;
  } catch (e) {
    return (e as ServiceError).code;
  }
}

/** A unary call with raw request bytes (identity serializers). */
function rawCall(path: string, body: Buffer, md: Metadata = sessionMetadata(sid)): Promise<status> {
  return new Promise((resolve) => {
    raw.makeUnaryRequest(
      path,
      (b: Buffer) => b,
      (b: Buffer) => b,
      body,
      md,
      { deadline: Date.now() + 10_000 },
      (err) => resolve(err === null ? status.OK : err.code),
    );
  });
}

/** protobuf varint */
function varint(n: bigint): number[] {
  const out: number[] = [];
  do {
    let b = Number(n & 0x7fn);
    n >>= 7n;
    if (n > 0n) b |= 0x80;
    out.push(b);
  } while (n > 0n);
  return out;
}
const field = (no: number, v: bigint) => [...varint(BigInt(no << 3)), ...varint(v)];

const BIG = [2 ** 53 - 1, 2 ** 52, 2 ** 47, 2 ** 32, 2 ** 32 - 1, 2 ** 31];

describe("hostile requests: right status, state unchanged, daemon alive", () => {
  const RW = PROT_READ | PROT_WRITE;
  const ANON = MAP_PRIVATE | MAP_ANONYMOUS;
  type Case = [string, () => Promise<unknown>, status | status[]];
  const cases = (): Case[] => {
    const out: Case[] = [];
    for (const len of [0, ...BIG]) {
      // Large virtual ranges are legitimate (overcommit); beyond TASK_SIZE they are ENOMEM.
      const expectLen = len === 0 ? status.INVALID_ARGUMENT : [status.OK, status.RESOURCE_EXHAUSTED, status.INVALID_ARGUMENT];
      out.push([`mmap length ${len}`, () => c.addressSpace.mmap({ mmId, addr: 0, length: len, prot: RW, flags: ANON, fileId: 0, offset: 0 }), expectLen]);
      out.push([`munmap length ${len} at 2^47`, () => c.addressSpace.munmap({ mmId, addr: 2 ** 47, length: len || 1 }), [status.OK, status.INVALID_ARGUMENT]]);
      out.push([`read length ${len}`, () => c.memory.readMemory({ mmId, addr: base, length: len }), len === 0 ? status.OK : status.INVALID_ARGUMENT]);
      out.push([`mprotect inverted/overflowing ${len}`, () => c.addressSpace.mprotect({ mmId, addr: 2 ** 53 - 4096 * 2, length: len || 8192, prot: PROT_READ }), [status.INVALID_ARGUMENT, status.RESOURCE_EXHAUSTED]]);
      out.push([`insert nr_pages ${len}`, () => c.device.insertPfnRange({ mmId, addr: base, pfn: 0, nrPages: len, mode: 1, write: false }), [status.INVALID_ARGUMENT, status.RESOURCE_EXHAUSTED, status.FAILED_PRECONDITION, status.NOT_FOUND]]);
      out.push([`register pfn range ${len}`, () => c.device.registerPfnRange({ name: "x", nrPages: len, alignPages: 0 }), len > 0 && len <= 1 << 20 ? status.OK : [status.INVALID_ARGUMENT, status.RESOURCE_EXHAUSTED]]);
    }
    out.push(["mmap unaligned MAP_FIXED", () => c.addressSpace.mmap({ mmId, addr: base + 1, length: 4096, prot: RW, flags: ANON | MAP_FIXED, fileId: 0, offset: 0 }), status.INVALID_ARGUMENT]);
    out.push(["munmap unaligned", () => c.addressSpace.munmap({ mmId, addr: base + 1, length: 4096 }), status.INVALID_ARGUMENT]);
    out.push(["mprotect unknown prot bits", () => c.addressSpace.mprotect({ mmId, addr: base, length: 4096, prot: 0xff }), status.INVALID_ARGUMENT]);
    out.push(["madvise unknown advice", () => c.addressSpace.madvise({ mmId, addr: base, length: 4096, advice: 12345 }), status.INVALID_ARGUMENT]);
    out.push(["mmap unknown flags", () => c.addressSpace.mmap({ mmId, addr: 0, length: 4096, prot: RW, flags: 0xffff_ffff, fileId: 0, offset: 0 }), status.INVALID_ARGUMENT]);
    for (const id of [0, 1 << 30, 2 ** 53 - 1]) {
      const want = id === 0 ? status.INVALID_ARGUMENT : status.NOT_FOUND;
      out.push([`unknown mm ${id}: munmap`, () => c.addressSpace.munmap({ mmId: id, addr: base, length: 4096 }), want]);
      out.push([`unknown mm ${id}: fork`, () => c.addressSpace.forkMm({ mmId: id, name: "" }), want]);
      out.push([`unknown mm ${id}: exit`, () => c.addressSpace.exitMm({ mmId: id }), want]);
      out.push([`unknown mm ${id}: read`, () => c.memory.readMemory({ mmId: id, addr: base, length: 1 }), want]);
      out.push([`unknown mm ${id}: fault`, () => c.fault.handleMmFault({ mmId: id, addr: base, flags: 0, access: 1 }), [want, status.INVALID_ARGUMENT]]);
    }
    out.push(["unknown file", () => c.addressSpace.closeFile({ fileId: 987654 }), status.NOT_FOUND]);
    out.push(["write too large (above the per-call limit)", () => c.memory.writeMemory({ mmId, addr: base + (1 << 20), data: Buffer.alloc(MAX_MESSAGE / 2) }), [status.OK, status.INVALID_ARGUMENT]]);
    out.push(["no session", () => td.clients.addressSpace.munmap({ mmId, addr: base, length: 4096 }), status.UNAUTHENTICATED]);
    out.push(["bogus session", () => td.withSession(424242).addressSpace.munmap({ mmId, addr: base, length: 4096 }), [status.UNAUTHENTICATED, status.NOT_FOUND]]);
    out.push(["fault injection off", () => td.clients.admin.failNth({ nth: 1 }), status.FAILED_PRECONDITION]);
    return out;
  };

  it("typed corpus", async () => {
    const before = await digest();
    const problems: string[] = [];
    let tried = 0;
    for (const [name, fn, want] of cases()) {
      const d0 = await digest();
      const got = await code(fn());
      tried++;
      const wants = Array.isArray(want) ? want : [want];
      if (!wants.includes(got)) problems.push(`${name}: got ${status[got]}, want ${wants.map((w) => status[w]).join("|")}`);
      // A refused request changes nothing (OK answers may, e.g. a munmap of nothing does not).
      if (got !== status.OK && (await digest()) !== d0) problems.push(`${name}: state changed by a refused request`);
    }
    expect(problems).toEqual([]);
    expect(tried).toBeGreaterThan(50);
    // The successful RegisterPfnRange calls add ranges; nothing else changed the mm.
    expect((await c.memory.readMemory({ mmId, addr: base, length: 5 })).data.toString()).toBe("hello");
    void before;
    await td.checkInvariants();
  });

  it("undecodable bytes, uint64 >= 2^53, oversized messages", async () => {
    const d0 = await digest();
    const paths = [
      "/mmsim.v1.AddressSpaceService/Mmap",
      "/mmsim.v1.AddressSpaceService/Munmap",
      "/mmsim.v1.MemoryService/ReadMemory",
      "/mmsim.v1.FaultService/HandleMmFault",
      "/mmsim.v1.DeviceService/InsertPfnRange",
      "/mmsim.v1.InspectService/GetMaps",
    ];
    const bodies: [string, Buffer, status[]][] = [
      ["truncated varint", Buffer.from([0x08, 0xff, 0xff]), [status.INVALID_ARGUMENT]],
      ["bad wire type", Buffer.from([0x0f, 0x01]), [status.INVALID_ARGUMENT]],
      ["length past the end", Buffer.from([0x12, 0x7f, 0x00]), [status.INVALID_ARGUMENT]],
      ["random garbage", Buffer.from(Array.from({ length: 64 }, (_, i) => (i * 97 + 13) & 0xff)), [status.INVALID_ARGUMENT, status.NOT_FOUND, status.UNAUTHENTICATED]],
      ["uint64 2^53", Buffer.from([...field(1, BigInt(mmId)), ...field(3, 2n ** 53n)]), [status.INVALID_ARGUMENT]],
      ["uint64 2^64-1", Buffer.from([...field(1, 2n ** 64n - 1n), ...field(2, 2n ** 64n - 1n), ...field(3, 2n ** 64n - 1n)]), [status.INVALID_ARGUMENT]],
      ["oversized message", Buffer.alloc(MAX_MESSAGE + 1024, 0x41), [status.RESOURCE_EXHAUSTED]],
    ];
    const problems: string[] = [];
    for (const p of paths)
      for (const [name, body, want] of bodies) {
        const got = await rawCall(p, body);
        // GetMapsRequest has only field 1: the others are unknown fields, skipped.
        if (p.endsWith("GetMaps") && name === "uint64 2^53" && got === status.OK) continue;
        if (!want.includes(got)) problems.push(`${p} ${name}: got ${status[got]}`);
      }
    expect(problems).toEqual([]);
    expect(await digest()).toBe(d0);
    // Still serving.
    expect((await td.clients.system.getVersion({})).api).toBe("mmsim.v1");
  });

  it("limits: mms per session and VMAs per mm answer RESOURCE_EXHAUSTED with a reason", async () => {
    const s2 = await td.newSession("limits");
    const c2 = td.withSession(s2);
    for (let i = 0; i < 4; i++) await c2.addressSpace.createMm({ name: `m${i}` });
    const d0 = await digest();
    const err = await c2.addressSpace.createMm({ name: "one too many" }).catch((e: ServiceError) => e);
    expect((err as ServiceError).code).toBe(status.RESOURCE_EXHAUSTED);
    expect((err as ServiceError).details).toMatch(/max-mms-per-session/);
    expect(await digest()).toBe(d0);
    // max_map_count: alternate protections so the VMAs cannot merge.
    await c2.system.setTunables({ maxMapCount: 8 });
    try {
      const m = (await c.addressSpace.createMm({ name: "vmas" }).catch(() => ({ mmId: 0 }))).mmId || (await c2.addressSpace.listMms({})).mms[0]!.mmId;
      let got: status = status.OK;
      for (let i = 0; i < 16 && got === status.OK; i++)
        got = await code(c2.addressSpace.mmap({ mmId: m, addr: 0, length: 4096, prot: i % 2 ? PROT_READ : RW, flags: ANON, fileId: 0, offset: 0 }));
      expect(got).toBe(status.RESOURCE_EXHAUSTED);
    } finally {
      await c2.system.setTunables({ maxMapCount: 65530 });
    }
    await td.checkInvariants();
  });
});
