/**
 * Client death at every step of the pin, mirror and migration protocols.
 * A victim client on a connection of its own runs a protocol to step k, then
 * dies: its stream is cancelled (AttachSession, or the mirror's Subscribe)
 * or its connection is closed, also while a call or an invalidation is in
 * flight. A bystander session holds a long-term pin, a client mirror with a
 * notifier, a dmirror mirror with entries and data of its own throughout.
 *
 * After each death: the daemon released exactly what the victim held (the
 * state digest is the one from before the victim started, byte for byte;
 * pins outstanding, mms and devices are back to their counts), the
 * bystander's pins, notifiers, mirror table and page contents are unchanged,
 * and a bystander operation the victim's mirror was blocking completed.
 */
import { type ClientDuplexStream, type ClientReadableStream, type StatusObject, status } from "@grpc/grpc-js";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { MemoryType } from "../../src/gen/mmsim/v1/common.js";
import type { AttachSessionResponse } from "../../src/gen/mmsim/v1/session.js";
import type { SubscribeRequest, SubscribeResponse } from "../../src/gen/mmsim/v1/notifier.js";
import { sessionMetadata, startDaemon, type Clients, type TestDaemon } from "../helpers/daemon.js";
import { type Conn, connect, type Relay, relay } from "../helpers/conn.js";
import { type ClientMirror, fillInts, type HmmClients, hmmClients, subscribe } from "../helpers/hmm.js";
import { notifierHubOf } from "../../src/server/notifier-service.js";

const PAGE = 4096;
const MAP_PRIVATE_ANON = 0x22;
const RW = 3;
const MADV_DONTNEED = 4;
const FOLL_WRITE = 0x1;
const FOLL_LONGTERM = 0x100;
const GRACE_MS = 150;

type Kill = "stream" | "connection";

/** Wait (bounded) until `f` holds; the daemon ends sessions asynchronously. */
async function until(what: string, f: () => Promise<boolean>): Promise<void> {
  for (let i = 0; i < 500; i++) {
    if (await f()) return;
    await new Promise((r) => setTimeout(r, 10));
  }
  throw new Error(`timed out waiting for ${what}`);
}

let t: TestDaemon;
let bc: Clients;
let bh: HmmClients;
let bsid: number;
let bmm: number;
let bdata: number;
let bscratch: number;
let bmirror: ClientMirror;
let bdm: number;
const B_PAGES = 32;

/** Everything of the bystander that a victim must not touch. */
async function bystander() {
  const info = (await t.clients.session.listSessions({})).sessions.find((s) => s.sessionId === bsid);
  const pins = (await bc.gup.listPins({ sessionId: bsid, includeRuns: true })).handles;
  const stats = await bc.gup.getPinStats({ sessionId: bsid });
  const notifiers = (await bh.notifier.listIntervalNotifiers({ mmId: bmm })).notifiers.filter((n) => n.sessionId === bsid);
  const mirror = await bh.dmirror.getMirror({ mirrorId: bdm });
  const data = (await bc.memory.readMemory({ mmId: bmm, addr: bdata, length: B_PAGES * PAGE })).data;
  return {
    info,
    pins,
    stats: { sessionHandles: stats.sessionHandles, sessionPinnedPages: stats.sessionPinnedPages, sessionLockedBytes: stats.sessionLockedBytes },
    notifiers: notifiers.map((n) => ({ id: n.notifierId, start: n.start, last: n.last, mirrorId: n.mirrorId, dmirrorId: n.dmirrorId })),
    mirror: { entries: mirror.entries, notifierId: mirror.notifierId },
    data: Buffer.from(data).toString("base64"),
    mirrorDead: bmirror.dead,
  };
}

async function digest() {
  const d = await t.clients.admin.getStateDigest({});
  const hub = notifierHubOf(t.daemon.kernel)!;
  const p = await t.clients.gup.getPinStats({ sessionId: 0 });
  const sessions = (await t.clients.session.listSessions({})).sessions.map((s) => s.sessionId);
  return { digest: d.digest, mms: d.mms, freePages: d.freePages, pageTables: d.pageTables, outstandingPins: p.outstandingPins, sessions, mirrors: hub.mirrors.size, notifiers: hub.notifiers.size };
}

beforeAll(async () => {
  t = await startDaemon({ ramBytes: 256 * 2 ** 20, sessionGraceMs: GRACE_MS });
  bsid = await t.newSession("bystander");
  bc = t.withSession(bsid);
  bh = hmmClients(t, bsid);
  bmm = (await bc.addressSpace.createMm({ name: "bystander" })).mmId;
  bdata = (await bc.addressSpace.mmap({ mmId: bmm, addr: 0, length: B_PAGES * PAGE, prot: RW, flags: MAP_PRIVATE_ANON, fileId: 0, offset: 0 })).addr;
  bscratch = (await bc.addressSpace.mmap({ mmId: bmm, addr: 0, length: 16 * PAGE, prot: RW | 4, flags: MAP_PRIVATE_ANON, fileId: 0, offset: 0 })).addr;
  await bc.memory.writeMemory({ mmId: bmm, addr: bdata, data: fillInts(B_PAGES * PAGE, (i) => 0x5eed0000 + i) });
  const pin = await bc.gup.pinUserPages({ variant: 1, mmId: bmm, start: bdata, nrPages: 8, gupFlags: FOLL_WRITE | FOLL_LONGTERM, output: 1, wantFolioRuns: false });
  expect(pin.ret).toBe(8);
  bmirror = await subscribe(t, bsid, "bystander");
  await bh.notifier.insertIntervalNotifier({ mirrorId: bmirror.mirrorId, mmId: bmm, start: bdata, length: B_PAGES * PAGE });
  const dev = (await bh.dmirror.createDmirrorDevice({ name: "b", memoryType: MemoryType.MEMORY_TYPE_DEVICE_PRIVATE, chunkPages: 256 })).deviceId;
  bdm = (await bh.dmirror.openMirror({ deviceId: dev, mmId: bmm })).mirrorId;
  expect((await bh.dmirror.readMirror({ mirrorId: bdm, addr: bdata, npages: B_PAGES })).cpages).toBe(B_PAGES);
  // The huge zero folio and other allocate-once state exist before the first baseline.
});
afterAll(async () => {
  bmirror.end();
  bh.close();
  await t.stop();
});

/** A victim: its own connection, a non-persistent session, its own streams. */
class Victim {
  conn!: Conn;
  private wire!: Relay;
  sid = 0;
  attach: ClientReadableStream<AttachSessionResponse> | null = null;
  sub: ClientDuplexStream<SubscribeRequest, SubscribeResponse> | null = null;
  subStatus: Promise<StatusObject> | null = null;
  mirrorId = 0;
  invalidations: number[] = [];
  private invWaiters: (() => void)[] = [];
  mm = 0;
  addr = 0;

  /** Connect through a relay of its own, so that its TCP connection can be cut. */
  static async create(): Promise<Victim> {
    const v = new Victim();
    v.wire = await relay(t.address);
    v.conn = connect(v.wire.address);
    return v;
  }

  async session(): Promise<void> {
    this.sid = (await this.conn.session.createSession({ name: "victim", persistent: false })).sessionId;
    this.conn.useSession(this.sid);
  }

  async attachStream(): Promise<void> {
    const call = this.conn.raw.session.attachSession({ sessionId: this.sid });
    call.on("error", () => {});
    await new Promise<void>((resolve) => call.once("data", () => resolve()));
    this.attach = call;
  }

  async openMirror(): Promise<void> {
    const call = this.conn.raw.notifier.subscribe(sessionMetadata(this.sid));
    call.on("error", () => {});
    this.subStatus = new Promise((resolve) => call.on("status", resolve));
    call.on("data", (m: SubscribeResponse) => {
      if (m.invalidations !== undefined) {
        for (const inv of m.invalidations.invalidations) this.invalidations.push(inv.invalidationId);
        for (const w of this.invWaiters.splice(0)) w();
      }
    });
    const opened = new Promise<number>((resolve) => call.once("data", (m: SubscribeResponse) => resolve(m.subscribed?.mirrorId ?? 0)));
    call.write({ open: { name: "victim" } });
    this.mirrorId = await opened;
    this.sub = call;
  }

  waitInvalidation(): Promise<void> {
    return this.invalidations.length > 0 ? Promise.resolve() : new Promise((r) => this.invWaiters.push(r));
  }

  ack(): void {
    this.sub!.write({ ack: { invalidationIds: this.invalidations, refusedIds: [] } });
  }

  async mmWithData(pages: number): Promise<void> {
    this.mm = (await this.conn.addressSpace.createMm({ name: "victim" })).mmId;
    this.addr = (await this.conn.addressSpace.mmap({ mmId: this.mm, addr: 0, length: pages * PAGE, prot: RW, flags: MAP_PRIVATE_ANON, fileId: 0, offset: 0 })).addr;
  }

  /** Die: cancel the stream the protocol is on, or drop the whole connection. */
  kill(how: Kill, stream: "attach" | "subscribe"): void {
    if (how === "connection") {
      this.wire.cut();
      this.conn.close();
    } else if (stream === "subscribe") this.sub?.cancel();
    else this.attach?.cancel();
  }

  async sessionGone(): Promise<void> {
    await until(`session ${this.sid} to end`, async () => !(await t.clients.session.listSessions({})).sessions.some((s) => s.sessionId === this.sid));
  }

  /** Ends the session if it still lives (after a stream-only death). */
  async finish(): Promise<void> {
    if (this.sid !== 0 && (await t.clients.session.listSessions({})).sessions.some((s) => s.sessionId === this.sid))
      await t.clients.session.closeSession({ sessionId: this.sid }).catch((e: { code?: number }) => {
        if (e.code !== 5) throw e; // ended meanwhile (NOT_FOUND)
      });
    this.conn.close();
    this.wire.cut();
    await this.sessionGone();
  }
}

describe("client death at every step of a protocol", () => {
  const PIN_STEPS = ["create session", "attach", "create mm", "mmap", "fault (write)", "pin long-term", "unpin"] as const;
  for (const kill of ["stream", "connection"] as const) {
    it(`pin protocol, ${kill} killed after each of ${PIN_STEPS.length} steps (and during the pin call)`, async () => {
      for (let k = 0; k <= PIN_STEPS.length; k++) {
        for (const inFlight of k === 5 ? [false, true] : [false]) {
          const before = await digest();
          const b0 = await bystander();
          const v = await Victim.create();
          let handle = 0;
          let pending: Promise<unknown> | null = null;
          const steps: (() => Promise<void>)[] = [
            () => v.session(),
            () => v.attachStream(),
            async () => void (v.mm = (await v.conn.addressSpace.createMm({ name: "victim" })).mmId),
            async () => void (v.addr = (await v.conn.addressSpace.mmap({ mmId: v.mm, addr: 0, length: 64 * PAGE, prot: RW, flags: MAP_PRIVATE_ANON, fileId: 0, offset: 0 })).addr),
            async () => void (await v.conn.memory.writeMemory({ mmId: v.mm, addr: v.addr, data: fillInts(64 * PAGE, (i) => i) })),
            async () => {
              const p = v.conn.gup.pinUserPages({ variant: 1, mmId: v.mm, start: v.addr, nrPages: 64, gupFlags: FOLL_WRITE | FOLL_LONGTERM, output: 1, wantFolioRuns: false });
              if (inFlight) {
                pending = p.catch(() => undefined);
                return;
              }
              const r = await p;
              expect(r.ret).toBe(64);
              handle = r.handle;
            },
            async () => void (await v.conn.gup.unpinHandle({ handle, makeDirty: true })),
          ];
          for (let i = 0; i < k; i++) await steps[i]!();
          const where = `${kill} killed after ${k} steps${inFlight ? " (pin in flight)" : ""}`;
          if (k >= 6) {
            // Held right before the death: exactly the victim's one mm and its pins.
            const info = (await t.clients.session.listSessions({})).sessions.find((s) => s.sessionId === v.sid);
            expect(info, where).toMatchObject({ mmCount: 1, pinCount: k === 6 ? 1 : 0, pinnedPages: k === 6 ? 64 : 0 });
            expect((await digest()).outstandingPins, where).toBe(before.outstandingPins + (k === 6 ? 64 : 0));
          }
          v.kill(kill, "attach");
          if (pending !== null) await pending;
          // An unattached session ends after the grace period, an attached one with its stream.
          if (k >= 1 || kill === "connection") await v.sessionGone();
          await v.finish();
          const after = await digest();
          expect(after, where).toEqual(before);
          expect(await bystander(), where).toEqual(b0);
          await t.checkInvariants();
        }
      }
    });
  }

  const MIRROR_STEPS = ["session + attach", "Subscribe open", "insert notifiers", "invalidation delivered", "ack", "remove notifier"] as const;
  for (const kill of ["stream", "connection"] as const) {
    it(`mirror protocol, ${kill} killed after each of ${MIRROR_STEPS.length} steps (also mid-invalidation, before the ack)`, async () => {
      for (let k = 1; k <= MIRROR_STEPS.length; k++) {
        const before = await digest();
        const b0 = await bystander();
        const v = await Victim.create();
        let onB = 0;
        let onV = 0;
        let blocked: Promise<unknown> | null = null;
        const steps: (() => Promise<void>)[] = [
          async () => {
            await v.session();
            await v.attachStream();
            await v.mmWithData(16);
            await v.conn.memory.writeMemory({ mmId: v.mm, addr: v.addr, data: fillInts(16 * PAGE, (i) => i) });
          },
          () => v.openMirror(),
          async () => {
            // One notifier on the bystander's scratch range, one on its own mm.
            onB = (await v.conn.notifier.insertIntervalNotifier({ mirrorId: v.mirrorId, mmId: bmm, start: bscratch, length: 16 * PAGE })).notifierId;
            onV = (await v.conn.notifier.insertIntervalNotifier({ mirrorId: v.mirrorId, mmId: v.mm, start: v.addr, length: 16 * PAGE })).notifierId;
          },
          async () => {
            // The bystander's own operation reaches the victim's mirror and waits for it.
            blocked = bc.addressSpace.madvise({ mmId: bmm, addr: bscratch, length: 16 * PAGE, advice: MADV_DONTNEED });
            await v.waitInvalidation();
          },
          async () => {
            v.ack();
            await blocked;
          },
          async () => {
            expect(await v.conn.notifier.removeIntervalNotifier({ notifierId: onB })).toEqual({ waited: false });
          },
        ];
        for (let i = 0; i < k; i++) await steps[i]!();
        const where = `${kill} killed after ${k} steps (${MIRROR_STEPS[k - 1]})`;
        if (k >= 2) {
          const info = (await t.clients.session.listSessions({})).sessions.find((s) => s.sessionId === v.sid);
          expect(info, where).toMatchObject({ mirrorCount: 1, notifierCount: k < 3 ? 0 : k === 6 ? 1 : 2, mmCount: 1 });
        }
        v.kill(kill, k >= 2 ? "subscribe" : "attach");
        // The blocked bystander call completes once the mirror is gone.
        if (blocked !== null) await blocked;
        if (kill === "connection") await v.sessionGone();
        if (kill === "stream" && k >= 2) {
          // Only the mirror went: its notifiers are gone, the session and its mm live on.
          expect((await v.subStatus)?.code, where).toBe(status.CANCELLED);
          await until("the mirror to close", async () => (await t.clients.session.listSessions({})).sessions.find((s) => s.sessionId === v.sid)?.mirrorCount === 0);
          const info = (await t.clients.session.listSessions({})).sessions.find((s) => s.sessionId === v.sid);
          expect(info, where).toMatchObject({ mirrorCount: 0, notifierCount: 0, mmCount: 1 });
          const onVictimMm = (await v.conn.notifier.listIntervalNotifiers({ mmId: v.mm })).notifiers;
          expect(onVictimMm, where).toEqual([]);
          expect((await v.conn.memory.readMemory({ mmId: v.mm, addr: v.addr, length: 8 })).data.readInt32LE(4), where).toBe(1);
        }
        if (onV !== 0) expect((await bh.notifier.listIntervalNotifiers({ mmId: bmm })).notifiers.map((n) => n.notifierId), where).not.toContain(onB);
        await v.finish();
        expect(await digest(), where).toEqual(before);
        expect(await bystander(), where).toEqual(b0);
        await t.checkInvariants();
      }
    });
  }

  const MIGRATE_STEPS = ["session + attach", "mm with data", "dmirror device", "open mirror", "migrate to device", "device fault back", "close mirror"] as const;
  for (const kill of ["stream", "connection"] as const) {
    it(`migration protocol, ${kill} killed after each of ${MIGRATE_STEPS.length} steps (and during the migration)`, async () => {
      for (let k = 1; k <= MIGRATE_STEPS.length; k++) {
        for (const inFlight of k === 5 ? [false, true] : [false]) {
          const before = await digest();
          const b0 = await bystander();
          const v = await Victim.create();
          let dev = 0;
          let dm = 0;
          let pending: Promise<unknown> | null = null;
          const steps: (() => Promise<void>)[] = [
            async () => {
              await v.session();
              await v.attachStream();
            },
            async () => {
              await v.mmWithData(32);
              await v.conn.memory.writeMemory({ mmId: v.mm, addr: v.addr, data: fillInts(32 * PAGE, (i) => 7 * i) });
            },
            async () => void (dev = (await v.conn.dmirror.createDmirrorDevice({ name: "v", memoryType: MemoryType.MEMORY_TYPE_DEVICE_PRIVATE, chunkPages: 64 })).deviceId),
            async () => void (dm = (await v.conn.dmirror.openMirror({ deviceId: dev, mmId: v.mm })).mirrorId),
            async () => {
              const p = v.conn.dmirror.migrateToDevice({ mirrorId: dm, addr: v.addr, npages: 32, omitData: true });
              if (inFlight) {
                pending = p.catch(() => undefined);
                return;
              }
              expect((await p).cpages).toBe(32);
            },
            async () => {
              // A CPU access to a device-private page migrates it back.
              expect((await v.conn.memory.readMemory({ mmId: v.mm, addr: v.addr + 5 * PAGE, length: 8 })).data.readInt32LE(0)).toBe(7 * 5 * 1024);
            },
            async () => void (await v.conn.dmirror.closeMirror({ mirrorId: dm })),
          ];
          for (let i = 0; i < k; i++) await steps[i]!();
          const where = `${kill} killed after ${k} steps (${MIGRATE_STEPS[k - 1]})${inFlight ? ", migration in flight" : ""}`;
          if (k >= 5 && !inFlight) {
            const devs = (await v.conn.dmirror.listDmirrorDevices({})).devices.find((d) => d.deviceId === dev);
            expect(devs?.pagesInUse, where).toBe(k === 5 ? 32 : 31);
          }
          v.kill(kill, "attach");
          if (pending !== null) await pending;
          await v.sessionGone();
          await v.finish();
          expect(await digest(), where).toEqual(before);
          expect(await bystander(), where).toEqual(b0);
          expect((await bh.dmirror.listDmirrorDevices({})).devices.map((d) => d.sessionId), where).toEqual([bsid]);
          await t.checkInvariants();
        }
      }
    });
  }
});
