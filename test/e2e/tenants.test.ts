/**
 * Tenant isolation over real loopback gRPC. Tenant A creates one object of
 * every kind (session, mm, file, VMAs, pages, a pin, a client mirror with an
 * interval notifier, a dmirror device and mirror, a dev_pagemap with driver
 * pages, a PFN range). Tenant B then calls every unary method of every
 * mmsim.v1 service, enumerated from the generated service definitions (a
 * new RPC is covered without touching this file), with every id field set
 * to A's ids, and again with ids that exist nowhere: each answer for A's
 * ids is PERMISSION_DENIED (EACCES, or EPERM for admin-only methods) and
 * indistinguishable from the answer for the missing ids, and A's objects
 * are unchanged afterwards. A second client of tenant A shares A's objects;
 * the admin sees everything.
 */
import { credentials, Metadata, status, type StatusObject } from "@grpc/grpc-js";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { AdminServiceService, type GetStateDigestResponse } from "../../src/gen/mmsim/v1/admin.js";
import { AddressSpaceServiceService, DeviceMapping, DeviceMmap, FileKind, type ListMmsResponse } from "../../src/gen/mmsim/v1/address_space.js";
import { MemoryType } from "../../src/gen/mmsim/v1/common.js";
import { DeviceServiceService, type ListDevicesResponse } from "../../src/gen/mmsim/v1/device.js";
import { DmirrorServiceService, type ListDmirrorDevicesResponse } from "../../src/gen/mmsim/v1/dmirror.js";
import { GupServiceService, GupVariant, type ListPinsResponse, PinUserPagesRequest } from "../../src/gen/mmsim/v1/gup.js";
import { InspectServiceService } from "../../src/gen/mmsim/v1/inspect.js";
import { MemoryServiceService } from "../../src/gen/mmsim/v1/memory.js";
import { NotifierServiceClient, NotifierServiceService, type SubscribeResponse } from "../../src/gen/mmsim/v1/notifier.js";
import { type ListSessionsResponse, SessionServiceClient, SessionServiceService } from "../../src/gen/mmsim/v1/session.js";
import { methodAccess } from "../../src/server/tenancy.js";
import { type AnyUnary, Caller, generatedMethods, type Outcome } from "../helpers/auth.js";
import { startDaemon, type TestDaemon } from "../helpers/daemon.js";

const TOKENS = {
  a: "tenant-a-token-000000000001",
  a2: "tenant-a-token-000000000002",
  b: "tenant-b-token-000000000001",
  admin: "operator-token-00000000001",
};

const AS = AddressSpaceServiceService;
const PROT_RW = 3;
const MAP_SHARED = 0x1;
const MAP_PRIVATE_ANON = 0x22;

interface Ids {
  session: number;
  mm: number;
  file: number;
  pgmap: number;
  pfnRange: number;
  pfnRangeStart: number;
  pinHandle: number;
  pinnedPfn: number;
  devicePfn: number;
  clientMirror: number;
  notifier: number;
  dmirrorDevice: number;
  dmirror: number;
  /** the interval notifier the dmirror mirror registered */
  dmirrorNotifier: number;
  addr: number;
}

/**
 * Request fields that name objects, and the id of A's object to put there.
 * "held" fields name what the calling session holds (pins, GUP references):
 * the model looks only at the caller's own references.
 */
function idFill(service: string, a: Ids): Record<string, { value: number | number[]; held?: boolean }> {
  return {
    mmId: { value: a.mm },
    fileId: { value: a.file },
    pgmapId: { value: a.pgmap },
    pfnRangeId: { value: a.pfnRange },
    handle: { value: a.pinHandle },
    sessionId: { value: a.session },
    notifierId: { value: a.notifier },
    mirrorId: { value: service === "DmirrorService" ? a.dmirror : a.clientMirror },
    deviceId: { value: a.dmirrorDevice },
    pfn: { value: a.devicePfn },
    pfns: { value: [a.devicePfn] },
    pages: { value: [a.pinnedPfn], held: true },
    folios: { value: [a.pinnedPfn], held: true },
    firstPfn: { value: a.pinnedPfn, held: true },
  };
}

/** Fields whose names look like ids but are not: HmmRangeFault's input flags per page. */
const NOT_IDS = new Set(["hmmPfns"]);

/**
 * The same request with every id moved to one that names nothing; a page
 * reference becomes a RAM page nobody holds (pfn 1).
 */
const MISSING = 7_000_000;
function missing(v: number | number[], held: boolean): number | number[] {
  if (held) return Array.isArray(v) ? v.map(() => 1) : 1;
  return Array.isArray(v) ? v.map((x) => x + MISSING) : v + MISSING;
}

/** Numbers in a status message replaced, so two answers that differ only in the id compare equal. */
function shape(o: Outcome): unknown {
  return { code: o.code, errno: o.errno, errnoName: o.errnoName, details: o.details.replace(/\b(0x[0-9a-f]+|\d+)\b/g, "#"), ok: o.code === 0 };
}

interface OpenMirror {
  mirrorId: number;
  status: Promise<StatusObject>;
  end(): void;
}

/** A Subscribe stream that acknowledges every invalidation. */
function subscribe(address: string, token: string, sessionId: number): Promise<OpenMirror> {
  const client = new NotifierServiceClient(address, credentials.createInsecure());
  const md = new Metadata();
  md.set("authorization", `Bearer ${token}`);
  md.set("mmsim-session", String(sessionId));
  const call = client.subscribe(md);
  const st = new Promise<StatusObject>((resolve) => call.on("status", (s: StatusObject) => (client.close(), resolve(s))));
  call.on("error", () => {});
  return new Promise((resolve, reject) => {
    call.on("data", (msg: SubscribeResponse) => {
      if (msg.subscribed !== undefined) resolve({ mirrorId: msg.subscribed.mirrorId, status: st, end: () => call.end() });
      else if (msg.invalidations !== undefined)
        call.write({ ack: { invalidationIds: msg.invalidations.invalidations.map((i) => i.invalidationId), refusedIds: [] } });
    });
    void st.then((s) => reject(new Error(`subscribe ended: ${s.code} ${s.details}`)));
    call.write({ open: { name: "a-mirror" } });
  });
}

describe("tenant isolation", () => {
  let t: TestDaemon;
  let A: Caller;
  let A2: Caller;
  let B: Caller;
  let ADM: Caller;
  let a: Ids;
  let bSession: number;
  let mirror: OpenMirror;

  const snapshotOfA = async () => ({
    // free_pages is daemon-wide: B's own allocations move it
    digest: { ...(await A.ok<GetStateDigestResponse>(AdminServiceService.getStateDigest, {})), freePages: 0 },
    pins: await A.ok<ListPinsResponse>(GupServiceService.listPins, { sessionId: 0, includeRuns: true }),
    mms: await A.ok<ListMmsResponse>(AS.listMms, {}),
    devices: await A.ok<ListDevicesResponse>(DeviceServiceService.listDevices, {}),
    dmirrors: await A.ok<ListDmirrorDevicesResponse>(DmirrorServiceService.listDmirrorDevices, {}),
    sessions: await A.ok<ListSessionsResponse>(SessionServiceService.listSessions, {}),
    bytes: await A.ok<{ data: Buffer }>(MemoryServiceService.readMemory, { mmId: a.mm, addr: a.addr, length: 16 }, a.session),
  });

  beforeAll(async () => {
    t = await startDaemon(
      { authTokens: [`${TOKENS.a}:a`, `${TOKENS.a2}:a`, `${TOKENS.b}:b`, `${TOKENS.admin}:ops:admin`] },
      {},
      { token: TOKENS.admin },
    );
    A = new Caller(t.address, TOKENS.a);
    A2 = new Caller(t.address, TOKENS.a2);
    B = new Caller(t.address, TOKENS.b);
    ADM = new Caller(t.address, TOKENS.admin);

    // Tenant A: one object of every kind.
    const session = (await A.ok<{ sessionId: number }>(SessionServiceService.createSession, { name: "a", persistent: true })).sessionId;
    const mm = (await A.ok<{ mmId: number }>(AS.createMm, { name: "a-mm" }, session)).mmId;
    const addr = (await A.ok<{ addr: number }>(AS.mmap, { mmId: mm, addr: 0, length: 2 ** 21, prot: PROT_RW, flags: MAP_PRIVATE_ANON, fileId: 0, offset: 0 }, session)).addr;
    await A.ok(MemoryServiceService.writeMemory, { mmId: mm, addr, data: Buffer.from("tenant a secret!") }, session);
    const file = (await A.ok<{ fileId: number }>(AS.createFile, { name: "a-file", kind: FileKind.FILE_KIND_SHMEM, sizeBytes: 2 ** 20, hugePageSize: 0, pgmapId: 0 }, session)).fileId;
    await A.ok(AS.mmap, { mmId: mm, addr: 0, length: 2 ** 20, prot: PROT_RW, flags: MAP_SHARED, fileId: file, offset: 0 }, session);
    const pin = await A.ok<{ ret: number; handle: number; ranges: { pfn: number }[] }>(
      GupServiceService.pinUserPages,
      PinUserPagesRequest.fromPartial({ variant: GupVariant.GUP_VARIANT_PIN_USER_PAGES, mmId: mm, start: addr, nrPages: 1, gupFlags: 1 }),
      session,
    );
    expect(pin.ret).toBe(1);
    const pg = await A.ok<{ pgmapId: number }>(
      DeviceServiceService.registerDevPagemap,
      { name: "a-pgmap", type: MemoryType.MEMORY_TYPE_DEVICE_GENERIC, nrPages: 512, owner: 0, folioOrder: 0 },
      session,
    );
    const devPages = await A.ok<{ pfns: number[] }>(DeviceServiceService.allocDevicePages, { pgmapId: pg.pgmapId, nrPages: 1 }, session);
    const range = await A.ok<{ pfnRangeId: number; pfnStart: number }>(DeviceServiceService.registerPfnRange, { name: "a-bar", nrPages: 16, alignPages: 0 }, session);
    mirror = await subscribe(t.address, TOKENS.a, session);
    const notifier = (await A.ok<{ notifierId: number }>(NotifierServiceService.insertIntervalNotifier, { mirrorId: mirror.mirrorId, mmId: mm, start: addr, length: 2 ** 21 }, session)).notifierId;
    const dev = (await A.ok<{ deviceId: number }>(DmirrorServiceService.createDmirrorDevice, { name: "", memoryType: MemoryType.MEMORY_TYPE_DEVICE_PRIVATE, chunkPages: 0 }, session)).deviceId;
    const dm = await A.ok<{ mirrorId: number; notifierId: number }>(DmirrorServiceService.openMirror, { deviceId: dev, mmId: mm }, session);
    a = {
      session,
      mm,
      file,
      pgmap: pg.pgmapId,
      pfnRange: range.pfnRangeId,
      pfnRangeStart: range.pfnStart,
      pinHandle: pin.handle,
      pinnedPfn: pin.ranges[0]!.pfn,
      devicePfn: devPages.pfns[0]!,
      clientMirror: mirror.mirrorId,
      notifier,
      dmirrorDevice: dev,
      dmirror: dm.mirrorId,
      dmirrorNotifier: dm.notifierId,
      addr,
    };
    bSession = (await B.ok<{ sessionId: number }>(SessionServiceService.createSession, { name: "b", persistent: true })).sessionId;
  });

  afterAll(async () => {
    mirror?.end();
    for (const c of [A, A2, B, ADM]) c?.close();
    await t.stop();
  });

  it("tenant B calling every unary RPC with A's ids: PERMISSION_DENIED, the same answer as for ids that do not exist, and A unchanged", async () => {
    const before = await snapshotOfA();
    const methods = (await generatedMethods()).filter((m) => !m.def.requestStream && !m.def.responseStream);
    expect(methods.length).toBeGreaterThan(60);
    const seen: string[] = [];
    const served = new Set(t.daemon.ops.appServices);
    for (const { service, method, def } of methods) {
      const name = `${service}/${method}`;
      if (!served.has(`mmsim.v1.${service}`)) {
        // generated but not (yet) served by this daemon
        expect((await B.call(def as AnyUnary, def.requestDeserialize(Buffer.alloc(0)), bSession)).code, name).toBe(status.UNIMPLEMENTED);
        continue;
      }
      const access = methodAccess(def.path);
      const base = def.requestDeserialize(Buffer.alloc(0)) as Record<string, unknown>;
      const fill = idFill(service, a);
      const variants: { foreign: Record<string, unknown>; absent: Record<string, unknown>; names: boolean; onlyHeld: boolean }[] = [];
      const foreign = { ...base };
      const absent = { ...base };
      let names = false;
      let onlyHeld = true;
      for (const key of Object.keys(base)) {
        const f = fill[key];
        if (f === undefined) {
          // every id-like field of a method users may call must be classified here
          if (access !== "admin" && !NOT_IDS.has(key)) expect(/(Id|Ids|Pfn|Pfns|handle)$/.test(key), `${name}: unclassified id field ${key}`).toBe(false);
          continue;
        }
        foreign[key] = f.value;
        absent[key] = missing(f.value, f.held === true);
        names = true;
        if (!f.held) onlyHeld = false;
      }
      // a page range of one page (0 would be a no-op)
      if (names && onlyHeld && "nrPages" in base) foreign.nrPages = absent.nrPages = 1;
      variants.push({ foreign, absent, names, onlyHeld });
      if (name === "AddressSpaceService/Mmap") {
        // the nested device mapping: A's PFN range, and A's device memory by raw PFN
        const dev = (d: Partial<DeviceMmap>) => DeviceMmap.fromPartial({ kind: DeviceMapping.DEVICE_MAPPING_PFNMAP, ...d });
        const mm = { ...base, mmId: 0, length: 4096, prot: PROT_RW, flags: MAP_SHARED };
        variants.push({ foreign: { ...mm, device: dev({ pfnRangeId: a.pfnRange }) }, absent: { ...mm, device: dev({ pfnRangeId: a.pfnRange + MISSING }) }, names: true, onlyHeld: false });
        variants.push({ foreign: { ...mm, device: dev({ basePfn: a.devicePfn }) }, absent: { ...mm, device: dev({ basePfn: a.devicePfn + MISSING }) }, names: true, onlyHeld: false });
      }
      for (const v of variants) {
        const got = await B.call(def as AnyUnary, v.foreign, bSession);
        const none = await B.call(def as AnyUnary, v.absent, bSession);
        seen.push(name);
        if (access === "admin") {
          expect(got, name).toMatchObject({ code: status.PERMISSION_DENIED, errnoName: "EPERM" });
          expect(got.details, name).toMatch(/needs the admin role \(tenant b is a user\)$/);
        } else if (v.names && !v.onlyHeld) {
          expect(got, `${name} ${JSON.stringify(v.foreign)}`).toMatchObject({ code: status.PERMISSION_DENIED, errno: "13", errnoName: "EACCES" });
          expect(got.details, name).toMatch(/^EACCES: [a-z_ ]+ (0x[0-9a-f]+|\d+): no such object in tenant b$/);
        } else if (v.names) {
          // references of the calling session only: B holds none of A's
          expect(got.code, `${name}: ${got.details}`).not.toBe(status.OK);
        }
        expect(shape(got), `${name}: A's ids vs missing ids`).toEqual(shape(none));
      }
    }
    for (const m of ["GupService/UnpinHandle", "DmirrorService/ReadMirror", "NotifierService/ReadBegin", "SessionService/CloseSession", "AdminService/FailNth"])
      expect(seen, m).toContain(m);
    expect(await snapshotOfA()).toEqual(before);
  });

  it("streaming methods that need the admin role are refused to a user before any message", async () => {
    const streams = (await generatedMethods()).filter((m) => (m.def.requestStream || m.def.responseStream) && methodAccess(m.def.path) === "admin");
    expect(streams.map((m) => m.method)).toContain("DownloadSnapshot");
    for (const { service, method, def } of streams) {
      const st = await new Promise<StatusObject>((resolve) => {
        const call = B.client.makeBidiStreamRequest(
          def.path,
          def.requestSerialize as (v: unknown) => Buffer,
          def.responseDeserialize as (b: Buffer) => unknown,
          (() => {
            const md = new Metadata();
            md.set("authorization", `Bearer ${TOKENS.b}`);
            return md;
          })(),
        );
        call.on("data", () => {});
        call.on("error", () => {});
        call.on("status", resolve);
        call.end();
      });
      expect(st.code, `${service}/${method}`).toBe(status.PERMISSION_DENIED);
      expect(st.metadata.get("mmsim-errno-name"), `${service}/${method}`).toEqual(["EPERM"]);
    }
  });

  it("A's session in B's mmsim-session header is refused as an unknown session", async () => {
    const got = await B.call(AS.createMm, { name: "x" }, a.session);
    const none = await B.call(AS.createMm, { name: "x" }, a.session + MISSING);
    expect(got).toMatchObject({ code: status.UNAUTHENTICATED, errnoName: "ESRCH", details: `ESRCH: session ${a.session} does not exist or has ended` });
    expect(shape(got)).toEqual(shape(none));
    // the same for a stream (Subscribe)
    await expect(subscribe(t.address, TOKENS.b, a.session)).rejects.toThrow(/^subscribe ended: 16 ESRCH: session \d+ does not exist or has ended$/);
  });

  it("AttachSession to A's session: PERMISSION_DENIED, as for a session that does not exist", async () => {
    const attach = (sessionId: number) =>
      new Promise<StatusObject>((resolve) => {
        const c = new SessionServiceClient(t.address, credentials.createInsecure());
        const md = new Metadata();
        md.set("authorization", `Bearer ${TOKENS.b}`);
        const call = c.attachSession({ sessionId }, md);
        call.on("data", () => {});
        call.on("error", () => {});
        call.on("status", (s: StatusObject) => (c.close(), resolve(s)));
      });
    const got = await attach(a.session);
    const none = await attach(a.session + MISSING);
    expect(got.code).toBe(status.PERMISSION_DENIED);
    expect(got.details).toBe(`EACCES: session ${a.session}: no such object in tenant b`);
    expect(got.metadata.get("mmsim-errno")).toEqual(["13"]);
    expect(none.details).toBe(`EACCES: session ${a.session + MISSING}: no such object in tenant b`);
  });

  it("listings show B only its own tenant", async () => {
    const bMm = (await B.ok<{ mmId: number }>(AS.createMm, { name: "b-mm" }, bSession)).mmId;
    const sessions = await B.ok<ListSessionsResponse>(SessionServiceService.listSessions, {});
    expect(sessions.sessions.map((s) => s.sessionId)).toContain(bSession);
    expect(sessions.sessions.every((s) => s.tenant === "b")).toBe(true);
    const mms = await B.ok<ListMmsResponse>(AS.listMms, {});
    expect(mms.mms.every((m) => m.ownerSessionId === bSession)).toBe(true);
    expect(mms.mms.map((m) => m.mmId)).toContain(bMm);
    const devices = await B.ok<ListDevicesResponse>(DeviceServiceService.listDevices, {});
    expect(devices.pagemaps).toEqual([]);
    expect(devices.pfnRanges).toEqual([]);
    expect((await B.ok<ListPinsResponse>(GupServiceService.listPins, { sessionId: 0, includeRuns: false })).handles).toEqual([]);
    expect((await B.ok<ListDmirrorDevicesResponse>(DmirrorServiceService.listDmirrorDevices, {})).devices).toEqual([]);
    // B's digest covers B's objects only: it differs from A's and does not move when A changes
    const bDigest = await B.ok<GetStateDigestResponse>(AdminServiceService.getStateDigest, {});
    const aDigest = await A.ok<GetStateDigestResponse>(AdminServiceService.getStateDigest, {});
    expect(bDigest.digest).not.toBe(aDigest.digest);
    expect(bDigest.mms).toBe(mms.mms.filter((m) => !m.exited).length);
    const extra = (await A.ok<{ addr: number }>(AS.mmap, { mmId: a.mm, addr: 0, length: 4096, prot: PROT_RW, flags: MAP_PRIVATE_ANON, fileId: 0, offset: 0 }, a.session)).addr;
    expect(await B.ok<GetStateDigestResponse>(AdminServiceService.getStateDigest, {})).toEqual(bDigest);
    expect((await A.ok<GetStateDigestResponse>(AdminServiceService.getStateDigest, {})).digest).not.toBe(aDigest.digest);
    await A.ok(AS.munmap, { mmId: a.mm, addr: extra, length: 4096 }, a.session);
    expect((await A.ok<GetStateDigestResponse>(AdminServiceService.getStateDigest, {})).digest).toBe(aDigest.digest);
    await B.ok(AS.exitMm, { mmId: bMm }, bSession);
  });

  it("another client of tenant A shares A's objects", async () => {
    const s2 = (await A2.ok<{ sessionId: number }>(SessionServiceService.createSession, { name: "a2", persistent: true })).sessionId;
    const maps = await A2.ok<{ vmas: unknown[] }>(InspectServiceService.getMaps, { mmId: a.mm });
    expect(maps.vmas.length).toBeGreaterThan(0);
    const read = await A2.ok<{ data: Buffer }>(MemoryServiceService.readMemory, { mmId: a.mm, addr: a.addr, length: 16 }, s2);
    expect(Buffer.from(read.data).toString()).toBe("tenant a secret!");
    // the dmirror mirror's notifier is A's too
    const n = await A2.ok<{ notifier: { notifierId: number } }>(NotifierServiceService.getIntervalNotifier, { notifierId: a.dmirrorNotifier });
    expect(n.notifier.notifierId).toBe(a.dmirrorNotifier);
    expect(await B.call(NotifierServiceService.getIntervalNotifier, { notifierId: a.dmirrorNotifier })).toMatchObject({
      code: status.PERMISSION_DENIED,
      details: `EACCES: interval notifier ${a.dmirrorNotifier}: no such object in tenant b`,
    });
    const sessions = await A2.ok<ListSessionsResponse>(SessionServiceService.listSessions, {});
    expect(sessions.sessions.map((s) => s.sessionId).sort((x, y) => x - y)).toEqual([a.session, s2]);
    await A2.ok(SessionServiceService.closeSession, { sessionId: s2 });
  });

  it("device memory by raw PFN: the tenant's own is usable, another tenant's is not", async () => {
    const req = (mmId: number, basePfn: number) => ({
      mmId,
      addr: 0,
      length: 4 * 4096,
      prot: PROT_RW,
      flags: MAP_SHARED,
      fileId: 0,
      offset: 0,
      device: DeviceMmap.fromPartial({ kind: DeviceMapping.DEVICE_MAPPING_PFNMAP, basePfn }),
    });
    const s2 = (await A2.ok<{ sessionId: number }>(SessionServiceService.createSession, { name: "a2-dev", persistent: true })).sessionId;
    const addr = (await A2.ok<{ addr: number }>(AS.mmap, req(a.mm, a.pfnRangeStart), s2)).addr;
    expect(addr).toBeGreaterThan(0);
    await A2.ok(AS.munmap, { mmId: a.mm, addr, length: 4 * 4096 }, s2);
    await A2.ok(SessionServiceService.closeSession, { sessionId: s2 });
    const bMm = (await B.ok<{ mmId: number }>(AS.createMm, { name: "b-dev" }, bSession)).mmId;
    // a span reaching into A's range from below is refused as well
    for (const pfn of [a.pfnRangeStart, a.pfnRangeStart + 12, a.pfnRangeStart - 2])
      expect(await B.call(AS.mmap, req(bMm, pfn), bSession), `pfn ${pfn}`).toMatchObject({
        code: status.PERMISSION_DENIED,
        details: `EACCES: pfn 0x${pfn.toString(16)}: no such object in tenant b`,
      });
    // RAM by raw PFN is not the tenant's device memory either
    expect((await B.call(AS.mmap, req(bMm, a.pinnedPfn), bSession)).code).toBe(status.PERMISSION_DENIED);
    await B.ok(AS.exitMm, { mmId: bMm }, bSession);
  });

  it("the admin sees and may inspect every tenant's objects", async () => {
    const sessions = await ADM.ok<ListSessionsResponse>(SessionServiceService.listSessions, {});
    expect(sessions.sessions.map((s) => s.tenant)).toEqual(expect.arrayContaining(["a", "b"]));
    const maps = await ADM.ok<{ vmas: unknown[] }>(InspectServiceService.getMaps, { mmId: a.mm });
    expect(maps.vmas.length).toBeGreaterThan(0);
    const pins = await ADM.ok<ListPinsResponse>(GupServiceService.listPins, { sessionId: a.session, includeRuns: false });
    expect(pins.handles.map((h) => h.handle)).toEqual([a.pinHandle]);
    const devices = await ADM.ok<ListDevicesResponse>(DeviceServiceService.listDevices, {});
    expect(devices.pagemaps.map((p) => p.pgmapId)).toContain(a.pgmap);
    expect(devices.pfnRanges.map((r) => r.pfnRangeId)).toContain(a.pfnRange);
    const folio = await ADM.ok<{ pgmapId: number }>(InspectServiceService.getFolio, { pfn: a.devicePfn });
    expect(folio.pgmapId).toBe(a.pgmap);
    expect((await B.call(InspectServiceService.getFolio, { pfn: a.devicePfn })).code).toBe(status.PERMISSION_DENIED);
  });
});
