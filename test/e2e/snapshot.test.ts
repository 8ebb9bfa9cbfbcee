/**
 * SnapshotService end to end: a rich state built over gRPC (anon 4 KiB and
 * THP, COW after fork, shmem and hugetlb pages, PFNMAP with PUD/PMD/PTE
 * leaves, device-private pages migrated by a dmirror device, long- and
 * short-term pins, client interval notifiers, written contents) is saved,
 * streamed, and restored into fresh daemons, which must answer every
 * inspection RPC with the same bytes and then evolve exactly as the
 * original under the same operations. Corrupt snapshots are refused with
 * the state unchanged; --restore at start-up, good and bad.
 */
import { spawn } from "node:child_process";
import { createHash } from "node:crypto";
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import path from "node:path";
import { credentials, Metadata, type ServiceError, status } from "@grpc/grpc-js";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { GetStateDigestResponse } from "../../src/gen/mmsim/v1/admin.js";
import { DeviceMapping, FileKind, ListMmsResponse } from "../../src/gen/mmsim/v1/address_space.js";
import { MemoryType } from "../../src/gen/mmsim/v1/common.js";
import { InsertMode, ListDevicesResponse } from "../../src/gen/mmsim/v1/device.js";
import { GetMirrorResponse, ListDmirrorDevicesResponse } from "../../src/gen/mmsim/v1/dmirror.js";
import { GupOutput, GupVariant, ListPinsResponse } from "../../src/gen/mmsim/v1/gup.js";
import {
  CheckInvariantsResponse,
  GetFolioResponse,
  GetMapsResponse,
  GetMeminfoResponse,
  GetSmapsResponse,
  GetVmstatResponse,
  WalkPageTableResponse,
} from "../../src/gen/mmsim/v1/inspect.js";
import { ReadMemoryResponse } from "../../src/gen/mmsim/v1/memory.js";
import { ListIntervalNotifiersResponse } from "../../src/gen/mmsim/v1/notifier.js";
import { ListSessionsResponse } from "../../src/gen/mmsim/v1/session.js";
import { type DownloadSnapshotResponse, SnapshotServiceClient, type UploadSnapshotResponse } from "../../src/gen/mmsim/v1/snapshot.js";
import { AdminServiceClient } from "../../src/gen/mmsim/v1/admin.js";
import { type Clients, sessionMetadata, startDaemon, type TestDaemon } from "../helpers/daemon.js";
import { type ClientMirror, hmmClients, type HmmClients, subscribe } from "../helpers/hmm.js";
import { ROOT } from "../helpers/spawn.js";

const PAGE = 4096;
const MiB = 2 ** 20;
const GiB = 2 ** 30;
const RW = 3;
const MAP_SHARED = 0x1;
const MAP_PRIVATE = 0x2;
const MAP_ANONYMOUS = 0x20;
const MADV_HUGEPAGE = 14;
const FOLL_WRITE = 0x1;
const FOLL_LONGTERM = 0x100;
const TASK_SIZE = 2 ** 47 - PAGE;

const dir = mkdtempSync(path.join(tmpdir(), "mmsim-snap-"));
const cfg = { ramBytes: 2 * GiB, snapshotDir: dir };

interface Built {
  drv: number;
  proc: number;
  mm1: number;
  mm2: number;
  anon: number;
  thp: number;
  shm: number;
  huge: number;
  bar: number;
  longHandle: number;
  shortHandle: number;
  notifierId: number;
  mirror: ClientMirror;
  dmirrorId: number;
  h: HmmClients;
}

function fill(n: number, seed: number): Buffer {
  const b = Buffer.alloc(n);
  for (let i = 0; i < n; i++) b[i] = (i * 31 + seed * 7 + (i >> 12)) & 0xff;
  return b;
}

async function build(t: TestDaemon): Promise<Built> {
  const drv = await t.newSession("drv");
  const proc = await t.newSession("proc");
  const p = t.withSession(proc);
  const dc = t.withSession(drv);
  const mm1 = (await p.addressSpace.createMm({ name: "app" })).mmId;
  const anon = (await p.addressSpace.mmap({ mmId: mm1, addr: 0, length: 64 * PAGE, prot: RW, flags: MAP_PRIVATE | MAP_ANONYMOUS, fileId: 0, offset: 0 })).addr;
  await p.memory.writeMemory({ mmId: mm1, addr: anon, data: fill(64 * PAGE, 1) });
  // THP: 4 MiB with MADV_HUGEPAGE, one 2 MiB-aligned write fault
  const raw = (await p.addressSpace.mmap({ mmId: mm1, addr: 0, length: 6 * MiB, prot: RW, flags: MAP_PRIVATE | MAP_ANONYMOUS, fileId: 0, offset: 0 })).addr;
  const thp = Math.ceil(raw / (2 * MiB)) * 2 * MiB;
  await p.addressSpace.madvise({ mmId: mm1, addr: thp, length: 4 * MiB, advice: MADV_HUGEPAGE });
  await p.memory.writeMemory({ mmId: mm1, addr: thp, data: fill(3 * PAGE, 2) });
  // COW after fork: the child writes one anon page
  const mm2 = (await p.addressSpace.forkMm({ mmId: mm1, name: "child" })).childMmId;
  await p.memory.writeMemory({ mmId: mm2, addr: anon + PAGE, data: fill(100, 3) });
  // shmem and hugetlb files
  const shmFile = (await p.addressSpace.createFile({ name: "shm", sizeBytes: 16 * PAGE, kind: FileKind.FILE_KIND_SHMEM, hugePageSize: 0, pgmapId: 0 })).fileId;
  const shm = (await p.addressSpace.mmap({ mmId: mm1, addr: 0, length: 16 * PAGE, prot: RW, flags: MAP_SHARED, fileId: shmFile, offset: 0 })).addr;
  await p.memory.writeMemory({ mmId: mm1, addr: shm + 2 * PAGE, data: fill(2 * PAGE, 4) });
  const hugeFile = (await p.addressSpace.createFile({ name: "huge", sizeBytes: 2 * MiB, kind: FileKind.FILE_KIND_HUGETLB, hugePageSize: 2 * MiB, pgmapId: 0 })).fileId;
  const huge = (await p.addressSpace.mmap({ mmId: mm1, addr: 0, length: 2 * MiB, prot: RW, flags: MAP_SHARED, fileId: hugeFile, offset: 0 })).addr;
  await p.memory.writeMemory({ mmId: mm1, addr: huge + 5, data: Buffer.from("hugetlb") });
  // PFNMAP: 1 GiB + 6 MiB + 12 KiB of a BAR -> 1 PUD, 3 PMD, 3 PTE leaves
  const pages = GiB / PAGE + (6 * MiB) / PAGE + 3;
  const bar = await dc.device.registerPfnRange({ name: "bar0", nrPages: pages, alignPages: 0 });
  const va = (
    await p.addressSpace.mmap({
      mmId: mm1,
      addr: 0,
      length: pages * PAGE,
      prot: RW,
      flags: MAP_SHARED,
      fileId: 0,
      offset: 0,
      device: { kind: DeviceMapping.DEVICE_MAPPING_PFNMAP, pfnRangeId: bar.pfnRangeId, hugeFault: true },
    })
  ).addr;
  const ins = await dc.device.insertPfnRange({ mmId: mm1, addr: va, pfn: bar.pfnStart, nrPages: pages, mode: InsertMode.INSERT_MODE_EAGER, write: false });
  expect(ins).toMatchObject({ pudLeaves: 1, pmdLeaves: 3, pteLeaves: 3 });
  // driver pages allocated from a P2PDMA dev_pagemap (the session holds their references)
  const pgmap = await dc.device.registerDevPagemap({ name: "p2p", type: MemoryType.MEMORY_TYPE_DEVICE_PCI_P2PDMA, nrPages: 512, owner: 0, folioOrder: 0 });
  const alloc = await dc.device.allocDevicePages({ pgmapId: pgmap.pgmapId, nrPages: 5 });
  expect(alloc.pfns).toHaveLength(5);
  // pins: long-term and short-term, by the driver session
  const longPin = await dc.gup.pinUserPages({ variant: GupVariant.GUP_VARIANT_PIN_USER_PAGES, mmId: mm1, start: anon + 8 * PAGE, nrPages: 8, gupFlags: FOLL_WRITE | FOLL_LONGTERM, output: GupOutput.GUP_OUTPUT_RANGES, wantFolioRuns: false });
  const shortPin = await dc.gup.pinUserPages({ variant: GupVariant.GUP_VARIANT_PIN_USER_PAGES_FAST, mmId: mm1, start: thp, nrPages: 16, gupFlags: FOLL_WRITE, output: GupOutput.GUP_OUTPUT_RANGES, wantFolioRuns: false });
  expect(longPin.handle).toBeGreaterThan(0);
  expect(shortPin.handle).toBeGreaterThan(0);
  // a client mirror with an interval notifier over the anon range
  const h = hmmClients(t, drv);
  const mirror = await subscribe(t, drv, "gpu0");
  const notifierId = (await h.notifier.insertIntervalNotifier({ mirrorId: mirror.mirrorId, mmId: mm1, start: anon, length: 64 * PAGE })).notifierId;
  // a dmirror device with 4 device-private pages and a populated mirror table
  const dev = await h.dmirror.createDmirrorDevice({ name: "", memoryType: MemoryType.MEMORY_TYPE_DEVICE_PRIVATE, chunkPages: 64 });
  const dmirrorId = (await h.dmirror.openMirror({ deviceId: dev.deviceId, mmId: mm1 })).mirrorId;
  const mig = await h.dmirror.migrateToDevice({ mirrorId: dmirrorId, addr: anon + 32 * PAGE, npages: 4, omitData: false });
  expect(mig.cpages).toBe(4);
  await h.dmirror.readMirror({ mirrorId: dmirrorId, addr: anon + 40 * PAGE, npages: 2 });
  return { drv, proc, mm1, mm2, anon, thp, shm, huge, bar: va, longHandle: longPin.handle, shortHandle: shortPin.handle, notifierId, mirror, dmirrorId, h };
}

const hex = (b: Uint8Array) => createHash("sha256").update(b).digest("hex").slice(0, 24);

/** Every inspection answer as encoded protobuf bytes (hashed), labelled. */
async function inspectAll(t: TestDaemon, b: Built): Promise<[string, string][]> {
  const c = t.clients;
  const h = hmmClients(t, b.drv);
  const out: [string, string][] = [];
  const add = (label: string, bytes: Uint8Array) => out.push([label, hex(bytes)]);
  try {
    const mms = await c.addressSpace.listMms({});
    add("ListMms", ListMmsResponse.encode(mms).finish());
    for (const { mmId } of mms.mms) {
      add(`maps ${mmId}`, GetMapsResponse.encode(await c.inspect.getMaps({ mmId })).finish());
      add(`smaps ${mmId}`, GetSmapsResponse.encode(await c.inspect.getSmaps({ mmId })).finish());
      const walk = await c.inspect.walkPageTable({ mmId, start: 0, end: TASK_SIZE, maxRuns: 0 });
      add(`walk ${mmId}`, WalkPageTableResponse.encode(walk).finish());
      const pfns = new Set<number>();
      for (const r of walk.runs) if (r.pfn > 0 && r.pfn < 2 ** 31) pfns.add(r.pfn);
      for (const pfn of [...pfns].slice(0, 40)) add(`folio ${pfn}`, GetFolioResponse.encode(await c.inspect.getFolio({ pfn })).finish());
      add(`notifiers ${mmId}`, ListIntervalNotifiersResponse.encode(await h.notifier.listIntervalNotifiers({ mmId })).finish());
      add(`check ${mmId}`, CheckInvariantsResponse.encode(await c.inspect.checkInvariants({ mmId })).finish());
    }
    for (const [mmId, addr, len] of [
      [b.mm1, b.anon, 32 * PAGE],
      [b.mm1, b.anon + 36 * PAGE, 28 * PAGE],
      [b.mm2, b.anon, 8 * PAGE],
      [b.mm1, b.thp, 2 * MiB],
      [b.mm1, b.shm, 16 * PAGE],
      [b.mm1, b.huge, 8 * PAGE],
      [b.mm1, b.bar, 4 * PAGE],
    ] as const)
      add(`read ${mmId}@${addr}`, ReadMemoryResponse.encode(await t.withSession(b.proc).memory.readMemory({ mmId, addr, length: len })).finish());
    const devs = await c.device.listDevices({});
    add("devices", ListDevicesResponse.encode(devs).finish());
    for (const pm of devs.pagemaps ?? []) for (let i = 0; i < 6; i++) add(`devpage ${pm.pfnStart + i}`, GetFolioResponse.encode(await c.inspect.getFolio({ pfn: pm.pfnStart + i })).finish());
    add("vmstat", GetVmstatResponse.encode(await c.inspect.getVmstat({})).finish());
    add("meminfo", GetMeminfoResponse.encode(await c.inspect.getMeminfo({})).finish());
    add("pins", ListPinsResponse.encode(await c.gup.listPins({ sessionId: 0, includeRuns: true })).finish());
    add("sessions", ListSessionsResponse.encode(await c.session.listSessions({})).finish());
    add("digest", GetStateDigestResponse.encode(await c.admin.getStateDigest({})).finish());
    add("check", CheckInvariantsResponse.encode(await c.inspect.checkInvariants({})).finish());
    add("dmirror devices", ListDmirrorDevicesResponse.encode(await h.dmirror.listDmirrorDevices({})).finish());
    add("dmirror mirror", GetMirrorResponse.encode(await h.dmirror.getMirror({ mirrorId: b.dmirrorId })).finish());
  } finally {
    h.close();
  }
  return out;
}

/** The same further operations, applied to a daemon whose sessions are `b`'s. */
async function evolve(t: TestDaemon, b: Built): Promise<void> {
  const p = t.withSession(b.proc);
  const dc = t.withSession(b.drv);
  await dc.gup.unpinHandle({ handle: b.longHandle, makeDirty: false });
  await p.memory.writeMemory({ mmId: b.mm1, addr: b.anon + 2 * PAGE, data: fill(PAGE, 9) }); // invalidation for the notifier
  await p.memory.writeMemory({ mmId: b.mm1, addr: b.thp + 2 * MiB, data: fill(PAGE, 10) }); // a new THP
  await p.memory.readMemory({ mmId: b.mm1, addr: b.anon + 32 * PAGE, length: PAGE }); // device page back to RAM
  await p.addressSpace.munmap({ mmId: b.mm2, addr: b.anon, length: 16 * PAGE });
  const mm3 = (await p.addressSpace.createMm({ name: "later" })).mmId;
  const a = (await p.addressSpace.mmap({ mmId: mm3, addr: 0, length: 32 * PAGE, prot: RW, flags: MAP_PRIVATE | MAP_ANONYMOUS, fileId: 0, offset: 0 })).addr;
  await p.memory.writeMemory({ mmId: mm3, addr: a, data: fill(32 * PAGE, 11) });
  const pin = await dc.gup.pinUserPages({ variant: GupVariant.GUP_VARIANT_PIN_USER_PAGES, mmId: mm3, start: a, nrPages: 4, gupFlags: FOLL_WRITE | FOLL_LONGTERM, output: GupOutput.GUP_OUTPUT_RANGES, wantFolioRuns: false });
  expect(pin.handle).toBeGreaterThan(0);
  const f = (await p.addressSpace.createFile({ name: "later", sizeBytes: 4 * PAGE, kind: FileKind.FILE_KIND_SHMEM, hugePageSize: 0, pgmapId: 0 })).fileId;
  expect(f).toBeGreaterThan(0);
  const h = hmmClients(t, b.drv);
  try {
    await h.dmirror.createDmirrorDevice({ name: "", memoryType: MemoryType.MEMORY_TYPE_DEVICE_PRIVATE, chunkPages: 16 });
  } finally {
    h.close();
  }
}

function download(t: TestDaemon): Promise<{ header: DownloadSnapshotResponse["header"]; bytes: Buffer }> {
  const client = new SnapshotServiceClient(t.address, credentials.createInsecure());
  const call = client.downloadSnapshot({ chunkBytes: 64 * 1024 });
  const chunks: Buffer[] = [];
  let header: DownloadSnapshotResponse["header"];
  return new Promise((resolve, reject) => {
    call.on("data", (m: DownloadSnapshotResponse) => {
      if (m.header !== undefined) header = m.header;
      if (m.chunk !== undefined) chunks.push(m.chunk);
    });
    call.on("error", (e) => {
      client.close();
      reject(e);
    });
    call.on("end", () => {
      client.close();
      resolve({ header, bytes: Buffer.concat(chunks) });
    });
  });
}

function upload(t: TestDaemon, bytes: Uint8Array, md = new Metadata(), chunk = 256 * 1024): Promise<UploadSnapshotResponse> {
  const client = new SnapshotServiceClient(t.address, credentials.createInsecure());
  return new Promise((resolve, reject) => {
    const call = client.uploadSnapshot(md, (err: ServiceError | null, res?: UploadSnapshotResponse) => {
      client.close();
      if (err) reject(err);
      else resolve(res!);
    });
    for (let off = 0; off < bytes.length || off === 0; off += chunk) {
      call.write({ totalBytes: off === 0 ? bytes.length : 0, chunk: Buffer.from(bytes.subarray(off, Math.min(bytes.length, off + chunk))) });
      if (bytes.length === 0) break;
    }
    call.end();
  });
}

async function refused(p: Promise<unknown>): Promise<{ code: number; errno: string; details: string }> {
  try {
    await p;
  } catch (e) {
    const se = e as ServiceError;
    return { code: se.code, errno: String(se.metadata?.get("mmsim-errno-name")[0] ?? ""), details: se.details };
  }
  throw new Error("expected a refusal");
}

let A: TestDaemon;
let B: TestDaemon;
let built: Built;
let snap: Buffer;

beforeAll(async () => {
  A = await startDaemon(cfg);
  built = await build(A);
});

afterAll(async () => {
  built?.mirror.end();
  built?.h.close();
  await A?.stop();
  await B?.stop();
  rmSync(dir, { recursive: true, force: true });
});

describe("snapshot round trip", () => {
  it("save, download and restore: every inspection answer is byte for byte the original's", async () => {
    const saved = await A.clients.snapshot.saveSnapshot({ fileName: "rich.snap", overwrite: false });
    const digestA = (await A.clients.admin.getStateDigest({})).digest;
    expect(saved.summary).toMatchObject({ mms: 2, sessions: 2, stateDigest: digestA });
    expect(saved.summary!.dataPages).toBeGreaterThan(64);
    const dl = await download(A);
    snap = dl.bytes;
    expect(dl.header!.sizeBytes).toBe(snap.length);
    // the same state encodes to the same bytes
    expect(hex(snap)).toBe(hex(readFileSync(path.join(dir, "rich.snap"))));
    // a second save without overwrite: EEXIST
    const again = await refused(A.clients.snapshot.saveSnapshot({ fileName: "rich.snap", overwrite: false }));
    expect([again.code, again.errno]).toEqual([status.ALREADY_EXISTS, "EEXIST"]);

    B = await startDaemon(cfg);
    const r = await upload(B, snap);
    expect(r.result!.summary!.stateDigest).toBe(digestA);
    expect(r.result!.sessions.map((s) => [s.sessionId, s.name, s.detachedMirrors])).toEqual([
      [built.drv, "drv", 1],
      [built.proc, "proc", 0],
    ]);
    const before = await inspectAll(A, built);
    const after = await inspectAll(B, built);
    expect(after).toEqual(before);
    expect(before.length).toBeGreaterThan(40);
    await B.checkInvariants();

    // restore from the file into a third daemon as well
    const C = await startDaemon(cfg);
    try {
      const rc = await C.clients.snapshot.restoreSnapshot({ fileName: "rich.snap" });
      expect(rc.result!.summary!.stateDigest).toBe(digestA);
      expect((await C.clients.admin.getStateDigest({})).digest).toBe(digestA);
    } finally {
      await C.stop();
    }
  });

  it("reclaimed sessions, a reattached mirror, and the same operations on both daemons give the same state", async () => {
    const rec = await B.clients.snapshot.reclaimSession({ name: "drv" });
    expect(rec).toMatchObject({ sessionId: built.drv, mmCount: 0, pinCount: 2, detachedMirrors: 1 });
    const rec2 = await B.clients.snapshot.reclaimSession({ name: "proc" });
    expect(rec2.sessionId).toBe(built.proc);
    const twice = await refused(B.clients.snapshot.reclaimSession({ name: "drv" }));
    expect([twice.code, twice.errno]).toEqual([status.NOT_FOUND, "ESRCH"]);

    // re-subscribing with the same name reattaches the mirror (same id, same notifier)
    const back = await subscribe(B, built.drv, "gpu0");
    try {
      expect(back.mirrorId).toBe(built.mirror.mirrorId);
      const sentA = built.mirror.invalidations.length;
      await evolve(A, built);
      await evolve(B, built);
      expect(built.mirror.invalidations.length).toBeGreaterThan(sentA);
      expect(back.invalidations.map((i) => [i.event, i.start, i.end, i.notifierIds, i.seq])).toEqual(
        built.mirror.invalidations.slice(sentA).map((i) => [i.event, i.start, i.end, i.notifierIds, i.seq]),
      );
      const a = await inspectAll(A, built);
      const b = await inspectAll(B, built);
      expect(b).toEqual(a);
      // the id counters continued: the new mm, device and mirror have the same ids on both
      expect((await B.clients.addressSpace.listMms({})).mms.map((m) => m.mmId)).toEqual((await A.clients.addressSpace.listMms({})).mms.map((m) => m.mmId));
      const [nA, nB] = [await subscribe(A, built.drv, "later"), await subscribe(B, built.drv, "later")];
      expect(nB.mirrorId).toBe(nA.mirrorId);
      expect(nA.mirrorId).toBeGreaterThan(built.mirror.mirrorId);
      nA.end();
      nB.end();
    } finally {
      back.end();
    }
    // the reclaimed session closes as usual and releases what it holds
    await B.clients.session.closeSession({ sessionId: built.drv });
    const pins = await B.clients.gup.listPins({ sessionId: built.drv, includeRuns: false });
    expect(pins.handles ?? []).toEqual([]);
    await B.checkInvariants();
  });

  it("a detached client notifier advances its sequence without a message until its session subscribes again", async () => {
    const D = await startDaemon(cfg);
    try {
      await upload(D, snap);
      const drv = (await D.clients.snapshot.reclaimSession({ name: "drv" })).sessionId;
      const h = hmmClients(D, drv);
      try {
        const info = await h.notifier.getIntervalNotifier({ notifierId: built.notifierId });
        expect(info.notifier).toMatchObject({ mirrorId: built.mirror.mirrorId, mmId: built.mm1, sessionId: drv });
        const seq = (await h.notifier.readBegin({ notifierId: built.notifierId })).seq;
        expect((await h.notifier.readRetry({ notifierId: built.notifierId, seq })).retry).toBe(false);
        // COW break of a page shared with the child: CLEAR over the notifier's range
        await D.withSession(built.proc).memory.writeMemory({ mmId: built.mm1, addr: built.anon + 5 * PAGE, data: fill(PAGE, 13) });
        const r = await h.notifier.readRetry({ notifierId: built.notifierId, seq });
        expect(r.retry).toBe(true);
        expect(r.notifierSeq).toBeGreaterThan(seq);
        // new notifiers need an open mirror
        const closed = await refused(h.notifier.insertIntervalNotifier({ mirrorId: built.mirror.mirrorId, mmId: built.mm1, start: built.anon, length: PAGE }));
        expect(closed.code).toBe(status.NOT_FOUND);
        const back = await subscribe(D, drv, "gpu0");
        try {
          expect(back.mirrorId).toBe(built.mirror.mirrorId);
          await D.withSession(built.proc).memory.writeMemory({ mmId: built.mm1, addr: built.anon + 6 * PAGE, data: fill(PAGE, 14) });
          const got = await back.waitFor(1);
          expect(got[0]!.notifierIds).toEqual([built.notifierId]);
          expect(back.invalidations).toHaveLength(1); // nothing queued from the detached time
          const more = await h.notifier.insertIntervalNotifier({ mirrorId: back.mirrorId, mmId: built.mm1, start: built.anon, length: PAGE });
          expect(more.notifierId).toBeGreaterThan(built.notifierId);
        } finally {
          back.end();
        }
      } finally {
        h.close();
      }
      await D.checkInvariants();
    } finally {
      await D.stop();
    }
  });

  it("a snapshot is refused while an invalidation waits for a client's acknowledgement", async () => {
    const E = await startDaemon(cfg);
    try {
      const sid = await E.newSession("slow");
      const c = E.withSession(sid);
      const mm = (await c.addressSpace.createMm({ name: "m" })).mmId;
      const a = (await c.addressSpace.mmap({ mmId: mm, addr: 0, length: 8 * PAGE, prot: RW, flags: MAP_PRIVATE | MAP_ANONYMOUS, fileId: 0, offset: 0 })).addr;
      await c.memory.writeMemory({ mmId: mm, addr: a, data: fill(8 * PAGE, 1) });
      const m = await subscribe(E, sid, "slow", { autoAck: false });
      const h = hmmClients(E, sid);
      try {
        await h.notifier.insertIntervalNotifier({ mirrorId: m.mirrorId, mmId: mm, start: a, length: 8 * PAGE });
        const unmap = c.addressSpace.munmap({ mmId: mm, addr: a, length: 8 * PAGE });
        const [inv] = await m.waitFor(1);
        const r = await refused(E.clients.snapshot.saveSnapshot({ fileName: "busy.snap", overwrite: true }));
        expect([r.code, r.errno]).toEqual([status.FAILED_PRECONDITION, "EBUSY"]);
        expect(r.details).toMatch(/acknowledgement/);
        m.ack([inv!.invalidationId]);
        await unmap;
        const ok = await E.clients.snapshot.saveSnapshot({ fileName: "busy.snap", overwrite: true });
        expect(ok.summary!.mms).toBe(1);
      } finally {
        m.end();
        h.close();
      }
    } finally {
      await E.stop();
    }
  });

  it("restore is refused unless the daemon is fresh", async () => {
    const d0 = (await A.clients.admin.getStateDigest({})).digest;
    const r = await refused(upload(A, snap));
    expect([r.code, r.errno]).toEqual([status.FAILED_PRECONDITION, "EBUSY"]);
    expect(r.details).toMatch(/fresh daemon/);
    expect((await A.clients.admin.getStateDigest({})).digest).toBe(d0);
    const bad = await refused(A.clients.snapshot.saveSnapshot({ fileName: "../escape", overwrite: true }));
    expect([bad.code, bad.errno]).toEqual([status.INVALID_ARGUMENT, "EINVAL"]);
    const missing = await refused((async () => {
      const F = await startDaemon(cfg);
      try {
        return await F.clients.snapshot.restoreSnapshot({ fileName: "nope.snap" });
      } finally {
        await F.stop();
      }
    })());
    expect([missing.code, missing.errno]).toEqual([status.NOT_FOUND, "ENOENT"]);
  });
});

/** Re-sign a tampered payload: recompute the SHA-256 the header names. */
function resign(file: Buffer): Buffer {
  const hlen = file.readUInt32LE(12);
  const header = JSON.parse(file.subarray(16, 16 + hlen).toString()) as { sha256: string };
  const payload = file.subarray(16 + hlen);
  const sum = createHash("sha256").update(payload).digest("hex");
  const text = file.subarray(16, 16 + hlen).toString().replace(header.sha256, sum);
  return Buffer.concat([file.subarray(0, 16), Buffer.from(text), payload]);
}

/** The offset just after the first occurrence of a length-prefixed string in the payload. */
function afterString(file: Buffer, s: string, from = 0): number {
  const len = Buffer.alloc(8);
  len.writeDoubleLE(s.length);
  const at = file.indexOf(Buffer.concat([len, Buffer.from(s)]), from);
  if (at < 0) throw new Error(`${s} not found`);
  return at + 8 + s.length;
}

describe("corrupt snapshots", () => {
  let F: TestDaemon;
  let sid: number;
  beforeAll(async () => {
    F = await startDaemon(cfg);
    sid = await F.newSession("restorer");
  });
  afterAll(async () => {
    await F?.stop();
  });

  const cases: [string, () => Buffer, number, RegExp][] = [
    ["a flipped payload byte", () => {
      const b = Buffer.from(snap);
      b[b.length - 5000]! ^= 0x10;
      return b;
    }, status.DATA_LOSS, /checksum mismatch/],
    ["wrong magic", () => Buffer.concat([Buffer.from("NOTASNAP"), snap.subarray(8)]), status.INVALID_ARGUMENT, /magic/],
    ["a future format version", () => {
      const b = Buffer.from(snap);
      b.writeUInt32LE(2, 8);
      return b;
    }, status.INVALID_ARGUMENT, /version 2 is not supported/],
    ["a header that is not JSON", () => {
      const b = Buffer.from(snap);
      b[17] = 0x7b;
      b[16] = 0x5d;
      return b;
    }, status.INVALID_ARGUMENT, /header is not valid JSON/],
    ["trailing bytes", () => Buffer.concat([snap, Buffer.from([0])]), status.DATA_LOSS, /after its payload/],
    ["a re-signed payload naming an unknown class", () => {
      const b = Buffer.from(snap);
      const at = afterString(b, "DmirrorDevice");
      b.write("X", at - 1);
      return resign(b);
    }, status.INVALID_ARGUMENT, /unknown class "DmirrorDevicX"/],
    ["a re-signed payload with an RSS counter off by one", () => {
      const b = Buffer.from(snap);
      const at = afterString(b, "rssAnon");
      expect(b[at]).toBe(10); // INT tag
      b.writeInt32LE(b.readInt32LE(at + 1) + 1, at + 1);
      return resign(b);
    }, status.INVALID_ARGUMENT, /fails CheckInvariants|digest/],
    ["a re-signed payload with a reference out of range", () => {
      const b = Buffer.from(snap);
      const at = afterString(b, "phys");
      expect(b[at]).toBe(7); // REF tag
      b.writeDoubleLE(1e9, at + 1);
      return resign(b);
    }, status.INVALID_ARGUMENT, /reference 1000000000 out of range/],
  ];

  for (const [name, make, code, why] of cases) {
    it(`${name}: refused, state unchanged`, async () => {
      const d0 = await F.clients.admin.getStateDigest({});
      const s0 = await F.clients.session.listSessions({});
      const r = await refused(upload(F, make(), sessionMetadata(sid)));
      expect(r.code, r.details).toBe(code);
      expect(r.errno).toBe("EINVAL");
      expect(r.details).toMatch(why);
      expect(await F.clients.admin.getStateDigest({})).toEqual(d0);
      expect(await F.clients.session.listSessions({})).toEqual(s0);
    });
  }

  it("truncation at every kind of boundary: refused, state unchanged", async () => {
    const d0 = await F.clients.admin.getStateDigest({});
    const hlen = snap.readUInt32LE(12);
    for (const cut of [0, 7, 15, 16 + Math.floor(hlen / 2), 16 + hlen, 16 + hlen + 1, Math.floor(snap.length / 2), snap.length - 1]) {
      const r = await refused(upload(F, snap.subarray(0, cut), sessionMetadata(sid)));
      expect([status.DATA_LOSS, status.INVALID_ARGUMENT], `cut ${cut}: ${r.details}`).toContain(r.code);
      expect(r.errno).toBe("EINVAL");
    }
    // an upload that ends before the announced size
    const client = new SnapshotServiceClient(F.address, credentials.createInsecure());
    const short = await refused(
      new Promise((resolve, reject) => {
        const call = client.uploadSnapshot(sessionMetadata(sid), (err: ServiceError | null, res?: unknown) => (err ? reject(err) : resolve(res)));
        call.write({ totalBytes: snap.length, chunk: snap.subarray(0, 1000) });
        call.end();
      }),
    );
    client.close();
    expect([short.code, short.errno]).toEqual([status.DATA_LOSS, "EINVAL"]);
    expect(await F.clients.admin.getStateDigest({})).toEqual(d0);
    // and the good snapshot still restores into this daemon afterwards
    const ok = await upload(F, snap, sessionMetadata(sid));
    expect(ok.result!.sessions.map((s) => s.name)).toEqual(["drv", "proc"]);
    await F.checkInvariants();
  });
});

/** Start `mmsimd` from source with `args`; resolves with its address once listening, or its exit. */
function spawnDaemon(args: string[]): Promise<{ address?: string; code?: number | null; output: string; kill: () => Promise<number | null> }> {
  const child = spawn(process.execPath, ["--import", "tsx", path.join(ROOT, "src/server/main.ts"), "--listen", "127.0.0.1:0", "--metrics-listen", "off", "--ram", "2G", ...args], {
    cwd: ROOT,
    stdio: ["ignore", "pipe", "pipe"],
  });
  let output = "";
  const exited = new Promise<number | null>((resolve) => child.on("close", (code) => resolve(code)));
  const kill = () => {
    child.kill("SIGTERM");
    return exited;
  };
  return new Promise((resolve) => {
    const onData = (d: Buffer) => {
      output += d.toString();
      const m = /"address":"([^"]+)"/.exec(output);
      if (m !== null) resolve({ address: m[1], output, kill });
    };
    child.stdout.on("data", onData);
    child.stderr.on("data", onData);
    void exited.then((code) => resolve({ code, output, kill }));
  });
}

describe("mmsimd --restore", () => {
  it("starts with the snapshot's state from a good file", async () => {
    const file = path.join(dir, "start.snap");
    writeFileSync(file, snap);
    const r = await spawnDaemon(["--restore", file]);
    expect(r.address, r.output).toBeDefined();
    try {
      const admin = new AdminServiceClient(r.address!, credentials.createInsecure());
      const digest = await new Promise<string>((resolve, reject) =>
        admin.getStateDigest({}, (e: ServiceError | null, res?: { digest: string }) => (e ? reject(e) : resolve(res!.digest))),
      );
      admin.close();
      const d = (await startDaemonDigestOf(snap)).digest;
      expect(digest).toBe(d);
      expect(r.output).toMatch(/restored at start-up/);
    } finally {
      expect(await r.kill()).toBe(0);
    }
  }, 60_000);

  it("refuses to start from a bad file, saying why", async () => {
    const file = path.join(dir, "bad.snap");
    const b = Buffer.from(snap);
    b[b.length - 10]! ^= 1;
    writeFileSync(file, b);
    const r = await spawnDaemon(["--restore", file]);
    expect(r.address).toBeUndefined();
    expect(r.code).not.toBe(0);
    expect(r.output).toMatch(/cannot restore .*bad\.snap: .*checksum mismatch/);
    const none = await spawnDaemon(["--restore", path.join(dir, "absent.snap")]);
    expect(none.code).not.toBe(0);
    expect(none.output).toMatch(/cannot restore .*absent\.snap/);
  }, 60_000);
});

/** The digest a snapshot's state has (from its own summary). */
async function startDaemonDigestOf(bytes: Buffer): Promise<{ digest: string }> {
  const T = await startDaemon(cfg);
  try {
    const r = await upload(T, bytes);
    return { digest: r.result!.summary!.stateDigest };
  } finally {
    await T.stop();
  }
}

export type { Clients };
