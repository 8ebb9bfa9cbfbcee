/**
 * The interval-notifier sequence protocol (spec 7.2) driven over the wire,
 * one interleaving per test: each test holds an invalidation open by not
 * acknowledging it on a client mirror's stream, does the other side's step,
 * then releases it, asserting the sequence values and outcomes the spec
 * prescribes.
 */
import { Writable } from "node:stream";
import { status } from "@grpc/grpc-js";
import { pino } from "pino";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { MemoryType } from "../../src/gen/mmsim/v1/common.js";
import { MmuNotifyEvent } from "../../src/gen/mmsim/v1/notifier.js";
import { SessionNoticeKind } from "../../src/gen/mmsim/v1/session.js";
import { DEFAULT_CONFIG } from "../../src/server/config.js";
import { createServer } from "../../src/server/server.js";
import { type Clients, startDaemon, type TestDaemon } from "../helpers/daemon.js";
import { expectErrno } from "../helpers/errors.js";
import { fillInts, type HmmClients, hmmClients, subscribe } from "../helpers/hmm.js";

const PAGE = 4096;
const MAP_PRIVATE_ANON = 0x22;
const RW = 3;
const MADV_DONTNEED = 4;
const REQ_FAULT = 0x8000_0000;
const EBUSY = 16;
const EAGAIN = 11;

/** Resolves to "pending" if `p` has not settled within `ms`. */
async function stillPending<T>(p: Promise<T>, ms = 60): Promise<"pending" | "settled"> {
  let settled = false;
  p.then(
    () => (settled = true),
    () => (settled = true),
  );
  await new Promise((r) => setTimeout(r, ms));
  return settled ? "settled" : "pending";
}

describe("notifier sequence protocol over the wire", () => {
  let t: TestDaemon;
  let c: Clients;
  let h: HmmClients;
  let sid: number;

  beforeAll(async () => {
    t = await startDaemon({ ramBytes: 1 * 2 ** 30 });
    sid = await t.newSession("protocol");
    c = t.withSession(sid);
    h = hmmClients(t, sid);
  });
  afterAll(async () => {
    h.close();
    await t.stop();
  });

  const newMm = async (pages = 16) => {
    const mmId = (await c.addressSpace.createMm({ name: "p" })).mmId;
    const { addr } = await c.addressSpace.mmap({ mmId, addr: 0, length: pages * PAGE, prot: RW, flags: MAP_PRIVATE_ANON, fileId: 0, offset: 0 });
    await c.memory.writeMemory({ mmId, addr, data: fillInts(pages * PAGE, (i) => i) });
    return { mmId, addr };
  };
  const insert = (mirrorId: number, mmId: number, start: number, length: number) => h.notifier.insertIntervalNotifier({ mirrorId, mmId, start, length });
  const state = async (notifierId: number) => h.notifier.getIntervalNotifier({ notifierId });

  it("an invalidation between read_begin and read_retry makes read_retry true", async () => {
    const { mmId, addr } = await newMm();
    const m = await subscribe(t, sid, "a");
    const n = await insert(m.mirrorId, mmId, addr, 16 * PAGE);
    // No invalidation active: sub.seq = seq - 1 = 1, seq stays 2.
    expect(n).toMatchObject({ seq: 1, deferred: false });
    expect(await state(n.notifierId)).toMatchObject({ mmSeq: 2, mmActive: 0 });
    const begin = await h.notifier.readBegin({ notifierId: n.notifierId });
    expect(begin).toEqual({ seq: 1, waited: false });
    // The device faults the range in: hmm_range_fault with that sequence works.
    const f = await h.hmm.hmmRangeFault({ notifierId: n.notifierId, notifierSeq: 1, start: addr, end: addr + 16 * PAGE, defaultFlags: REQ_FAULT, pfnFlagsMask: 0, hmmPfns: Buffer.alloc(0), devPrivateOwner: 0, output: 0 });
    expect(f.errnoValue).toBe(0);
    // ... an invalidation hits before the device commits.
    await c.addressSpace.madvise({ mmId, addr, length: PAGE, advice: MADV_DONTNEED });
    expect(m.invalidations.map((i) => [i.event, i.start, i.end, i.seq, i.notifierIds])).toEqual([[MmuNotifyEvent.MMU_NOTIFY_EVENT_CLEAR, addr, addr + PAGE, 3, [n.notifierId]]]);
    expect(await state(n.notifierId)).toMatchObject({ mmSeq: 4, mmActive: 0, notifier: { seq: 3 } });
    expect(await h.notifier.readRetry({ notifierId: n.notifierId, seq: 1 })).toEqual({ retry: true, notifierSeq: 3 });
    // hmm_range_fault with the stale sequence: EBUSY before walking.
    const stale = await h.hmm.hmmRangeFault({ notifierId: n.notifierId, notifierSeq: 1, start: addr, end: addr + PAGE, defaultFlags: REQ_FAULT, pfnFlagsMask: 0, hmmPfns: Buffer.alloc(0), devPrivateOwner: 0, output: 0 });
    expect(stale).toMatchObject({ errnoValue: EBUSY, walks: 0 });
    // Again from read_begin: the new sequence holds.
    expect(await h.notifier.readBegin({ notifierId: n.notifierId })).toEqual({ seq: 3, waited: false });
    expect(await h.notifier.readRetry({ notifierId: n.notifierId, seq: 3 })).toEqual({ retry: false, notifierSeq: 3 });
    m.end();
    await m.status;
    await t.checkInvariants();
  });

  it("the driver loop over the wire: read_begin, hmm_range_fault (per page and compact), read_retry", async () => {
    const mmId = (await c.addressSpace.createMm({ name: "thp" })).mmId;
    const len = 8 * 2 ** 21;
    const { addr } = await c.addressSpace.mmap({ mmId, addr: 0, length: len, prot: RW, flags: MAP_PRIVATE_ANON, fileId: 0, offset: 0 });
    await c.addressSpace.madvise({ mmId, addr, length: len, advice: 23 /* MADV_POPULATE_WRITE */ });
    const m = await subscribe(t, sid, "driver");
    const n = await insert(m.mirrorId, mmId, addr, len);
    const { seq } = await h.notifier.readBegin({ notifierId: n.notifierId });
    const base = { notifierId: n.notifierId, notifierSeq: seq, start: addr, end: addr + len, defaultFlags: REQ_FAULT, pfnFlagsMask: 0, hmmPfns: Buffer.alloc(0), devPrivateOwner: 0 };
    const compact = await h.hmm.hmmRangeFault({ ...base, output: 2 /* HMM_OUTPUT_COMPACT */ });
    expect(compact).toMatchObject({ errnoValue: 0, walks: 1, faults: 0, last: addr + len, hmmPfns: Buffer.alloc(0) });
    expect(compact.runs.length).toBeLessThanOrEqual(8);
    expect(compact.runs.every((r) => r.order === 9 && r.flags === 0xc1200000)).toBe(true);
    expect(compact.runs.reduce((x, r) => x + r.nrPages, 0)).toBe(len / PAGE);
    const perPage = await h.hmm.hmmRangeFault({ ...base, output: 1 /* HMM_OUTPUT_PER_PAGE */ });
    expect(perPage.hmmPfns).toHaveLength((8 * len) / PAGE);
    const first = perPage.hmmPfns.readBigUInt64LE(0);
    expect(first >> 53n).toBe((3n << 9n) | 9n); // VALID (bit 63) | WRITE (bit 62), order 9 (bits 53..57)
    expect(Number(first & ((1n << 53n) - 1n))).toBe(compact.runs[0]!.pfn);
    expect(await h.notifier.readRetry({ notifierId: n.notifierId, seq })).toEqual({ retry: false, notifierSeq: seq });
    m.end();
    await c.addressSpace.exitMm({ mmId });
    await t.checkInvariants();
  });

  it("read_begin waits while an invalidation that hit the notifier is in flight", async () => {
    const { mmId, addr } = await newMm();
    const m = await subscribe(t, sid, "a", { autoAck: false });
    const n = await insert(m.mirrorId, mmId, addr, 16 * PAGE);
    const op = c.addressSpace.madvise({ mmId, addr, length: 16 * PAGE, advice: MADV_DONTNEED });
    const [inv] = await m.waitFor(1);
    expect(inv).toMatchObject({ event: MmuNotifyEvent.MMU_NOTIFY_EVENT_CLEAR, seq: 3, blockable: true });
    expect(await state(n.notifierId)).toMatchObject({ mmSeq: 3, mmActive: 1, notifier: { seq: 3 } });
    const begin = h.notifier.readBegin({ notifierId: n.notifierId });
    expect(await stillPending(begin)).toBe("pending");
    expect(await stillPending(op)).toBe("pending");
    m.ack([inv!.invalidationId]);
    await op;
    expect(await begin).toEqual({ seq: 3, waited: true });
    expect(await state(n.notifierId)).toMatchObject({ mmSeq: 4, mmActive: 0 });
    m.end();
    await t.checkInvariants();
  });

  it("an insert during a running invalidation is deferred to its end; the first read_begin waits for it", async () => {
    const { mmId, addr } = await newMm();
    const a = await subscribe(t, sid, "a", { autoAck: false });
    const b = await subscribe(t, sid, "b");
    await insert(a.mirrorId, mmId, addr, 16 * PAGE);
    const op = c.addressSpace.madvise({ mmId, addr, length: 16 * PAGE, advice: MADV_DONTNEED });
    const [inv] = await a.waitFor(1);
    // seq is odd: the insert goes on the deferred list with sub.seq = seq.
    const nb = await insert(b.mirrorId, mmId, addr, 4 * PAGE);
    expect(nb).toMatchObject({ seq: 3, deferred: true });
    expect(await state(nb.notifierId)).toMatchObject({ notifier: { pendingInsert: true, seq: 3 }, mmSeq: 3, mmActive: 1 });
    const begin = h.notifier.readBegin({ notifierId: nb.notifierId });
    expect(await stillPending(begin)).toBe("pending");
    // B missed the running invalidation (it was not in the tree yet).
    expect(b.invalidations).toEqual([]);
    a.ack([inv!.invalidationId]);
    await op;
    expect(await begin).toEqual({ seq: 3, waited: true });
    expect(await state(nb.notifierId)).toMatchObject({ notifier: { pendingInsert: false, seq: 3 }, mmSeq: 4, mmActive: 0 });
    expect(await h.notifier.readRetry({ notifierId: nb.notifierId, seq: 3 })).toEqual({ retry: false, notifierSeq: 3 });
    // Now in the tree: the next invalidation reaches it.
    a.autoAck = true;
    await c.addressSpace.madvise({ mmId, addr, length: PAGE, advice: MADV_DONTNEED });
    expect(b.invalidations.map((i) => [i.seq, i.notifierIds])).toEqual([[5, [nb.notifierId]]]);
    a.end();
    b.end();
    await t.checkInvariants();
  });

  it("an insert while an invalidation that hit no notifier runs makes seq odd and inserts at once", async () => {
    // A private device page shared by parent and child after fork: moving it
    // back to RAM from the parent unmaps the child's copy too (CLEAR in the
    // child while the parent's MIGRATE waits for mirror A).
    const parent = await newMm(4);
    const dev = (await h.dmirror.createDmirrorDevice({ name: "", memoryType: MemoryType.MEMORY_TYPE_DEVICE_PRIVATE, chunkPages: 1024 })).deviceId;
    const fd = (await h.dmirror.openMirror({ deviceId: dev, mmId: parent.mmId })).mirrorId;
    expect((await h.dmirror.migrateToDevice({ mirrorId: fd, addr: parent.addr, npages: 4, omitData: true })).cpages).toBe(4);
    const child = (await c.addressSpace.forkMm({ mmId: parent.mmId, name: "child" })).childMmId;
    const a = await subscribe(t, sid, "a", { autoAck: false });
    const b = await subscribe(t, sid, "b");
    await insert(a.mirrorId, parent.mmId, parent.addr, 4 * PAGE);
    const op = h.dmirror.migrateToSystem({ mirrorId: fd, addr: parent.addr, npages: 4 });
    const [inv] = await a.waitFor(1);
    expect(inv).toMatchObject({ event: MmuNotifyEvent.MMU_NOTIFY_EVENT_MIGRATE, mmId: parent.mmId });
    const childState = await h.notifier.listIntervalNotifiers({ mmId: child });
    // One CLEAR per page unmapped in the child, each end deferred.
    expect(childState).toMatchObject({ mmSeq: 2, mmActive: 4, notifiers: [] });
    // Active, seq even: seq |= 1, inserted now, sub.seq = seq.
    const nb = await insert(b.mirrorId, child, parent.addr, 4 * PAGE);
    expect(nb).toMatchObject({ seq: 3, deferred: false });
    const begin = h.notifier.readBegin({ notifierId: nb.notifierId });
    expect(await stillPending(begin)).toBe("pending");
    a.ack(a.unacked().map((i) => i.invalidationId));
    expect((await op).cpages).toBe(4);
    expect(await begin).toEqual({ seq: 3, waited: true });
    expect((await h.notifier.listIntervalNotifiers({ mmId: child })).mmSeq).toBe(4);
    a.end();
    b.end();
    await h.dmirror.closeMirror({ mirrorId: fd });
    await c.addressSpace.exitMm({ mmId: child });
    await t.checkInvariants();
  });

  it("a remove during a running invalidation waits for its end; no callback afterwards", async () => {
    const { mmId, addr } = await newMm();
    const a = await subscribe(t, sid, "a", { autoAck: false });
    const na = await insert(a.mirrorId, mmId, addr, 16 * PAGE);
    const op = c.addressSpace.madvise({ mmId, addr, length: 2 * PAGE, advice: MADV_DONTNEED });
    const [inv] = await a.waitFor(1);
    const remove = h.notifier.removeIntervalNotifier({ notifierId: na.notifierId });
    expect(await stillPending(remove)).toBe("pending");
    a.ack([inv!.invalidationId]);
    expect(await remove).toEqual({ waited: true });
    await op;
    await expectErrno(h.notifier.getIntervalNotifier({ notifierId: na.notifierId }), "ENOENT", status.NOT_FOUND);
    await c.addressSpace.madvise({ mmId, addr, length: 16 * PAGE, advice: MADV_DONTNEED });
    expect(a.invalidations).toHaveLength(1);
    // Removing when nothing runs returns at once.
    const again = await insert(a.mirrorId, mmId, addr, PAGE);
    expect(await h.notifier.removeIntervalNotifier({ notifierId: again.notifierId })).toEqual({ waited: false });
    a.end();
    await t.checkInvariants();
  });

  it("a non-blockable invalidation refused by the mirror skips that VMA with EAGAIN (OOM reaper)", async () => {
    const mmId = (await c.addressSpace.createMm({ name: "victim" })).mmId;
    const map = async () => (await c.addressSpace.mmap({ mmId, addr: 0, length: 4 * PAGE, prot: RW, flags: MAP_PRIVATE_ANON, fileId: 0, offset: 0 })).addr;
    const v1 = await map();
    const v2 = await map();
    // PROT differences keep the two VMAs apart.
    await c.addressSpace.mprotect({ mmId, addr: v2, length: 4 * PAGE, prot: 1 | 2 | 4 });
    const [lo, hi] = v1 < v2 ? [v1, v2] : [v2, v1];
    await c.memory.writeMemory({ mmId, addr: lo, data: fillInts(4 * PAGE, (i) => i + 1) });
    await c.memory.writeMemory({ mmId, addr: hi, data: fillInts(4 * PAGE, (i) => i + 1) });
    const a = await subscribe(t, sid, "a", { autoAck: false });
    const n = await insert(a.mirrorId, mmId, lo, 4 * PAGE); // only the lower VMA
    a.onInvalidation = (inv) => (inv.blockable ? a.ack([inv.invalidationId]) : a.refuse([inv.invalidationId]));
    const r = await h.notifier.reapMm({ mmId });
    expect(r.vmas).toEqual([
      { start: lo, end: lo + 4 * PAGE, reaped: false, errnoValue: EAGAIN },
      { start: hi, end: hi + 4 * PAGE, reaped: true, errnoValue: 0 },
    ]);
    expect(a.invalidations.map((i) => [i.event, i.start, i.end, i.blockable, i.seq])).toEqual([[MmuNotifyEvent.MMU_NOTIFY_EVENT_UNMAP, lo, lo + 4 * PAGE, false, 3]]);
    // The refused VMA keeps its pages; the other lost them. seq is even again.
    expect((await c.memory.readMemory({ mmId, addr: lo, length: 8 })).data.readInt32LE(4)).toBe(2);
    expect((await c.memory.readMemory({ mmId, addr: hi, length: 8 })).data.readInt32LE(4)).toBe(0);
    expect(await state(n.notifierId)).toMatchObject({ mmSeq: 4, mmActive: 0 });
    // Accepted, the same VMA is reaped.
    a.onInvalidation = null;
    a.autoAck = true;
    const again = await h.notifier.reapMm({ mmId });
    expect(again.vmas.map((v) => v.reaped)).toEqual([true, true]);
    a.end();
    await t.checkInvariants();
  });

  it("a mirror that does not acknowledge in time is declared dead; the operation proceeds", async () => {
    const lines: string[] = [];
    const sink = new Writable({
      write(chunk, _enc, cb) {
        lines.push(String(chunk));
        cb();
      },
    });
    const daemon = await createServer({ ...DEFAULT_CONFIG, listen: "127.0.0.1:0", ramBytes: 2 ** 30, metricsListen: "off", mirrorDeadlineMs: 150 }, { logger: pino({ level: "warn" }, sink) });
    const td = { ...t, address: daemon.address } as TestDaemon;
    try {
      const { SessionServiceClient } = await import("../../src/gen/mmsim/v1/session.js");
      const { credentials } = await import("@grpc/grpc-js");
      const sc = new SessionServiceClient(daemon.address, credentials.createInsecure());
      const session = await new Promise<number>((res, rej) => sc.createSession({ name: "dead", persistent: true }, (e, r) => (e ? rej(e) : res(r.sessionId))));
      const notices: { kind: number; objectId: number; message: string }[] = [];
      const attach = sc.attachSession({ sessionId: session });
      attach.on("data", (msg: { notice?: { kind: number; objectId: number; message: string } }) => {
        if (msg.notice !== undefined) notices.push(msg.notice);
      });
      attach.on("error", () => {});
      const hc = hmmClients(td, session);
      const a = await subscribe(td, session, "sleepy", { autoAck: false });
      expect(a.deadlineMs).toBe(150);
      const { AddressSpaceServiceClient } = await import("../../src/gen/mmsim/v1/address_space.js");
      const { sessionMetadata } = await import("../helpers/daemon.js");
      const asc = new AddressSpaceServiceClient(daemon.address, credentials.createInsecure());
      const md = sessionMetadata(session);
      const call = <R>(f: (cb: (e: Error | null, r: R) => void) => void) => new Promise<R>((res, rej) => f((e, r) => (e ? rej(e) : res(r))));
      const mmId = (await call<{ mmId: number }>((cb) => asc.createMm({ name: "p" }, md, cb))).mmId;
      const addr = (await call<{ addr: number }>((cb) => asc.mmap({ mmId, addr: 0, length: 8 * PAGE, prot: RW, flags: MAP_PRIVATE_ANON, fileId: 0, offset: 0 }, md, cb))).addr;
      const n = await hc.notifier.insertIntervalNotifier({ mirrorId: a.mirrorId, mmId, start: addr, length: 8 * PAGE });
      const t0 = performance.now();
      await call((cb) => asc.munmap({ mmId, addr, length: 8 * PAGE }, md, cb));
      const waited = performance.now() - t0;
      expect(waited).toBeGreaterThanOrEqual(140);
      const st = await a.status;
      expect(st.code).toBe(status.OK);
      expect(a.invalidations).toHaveLength(1);
      expect(a.dead?.notifierIds).toEqual([n.notifierId]);
      expect(a.dead?.reason).toMatch(/not acknowledged within 150 ms/);
      await expectErrno(hc.notifier.getIntervalNotifier({ notifierId: n.notifierId }), "ENOENT", status.NOT_FOUND);
      expect((await hc.notifier.listIntervalNotifiers({ mmId })).notifiers).toEqual([]);
      await new Promise((r) => setTimeout(r, 20));
      expect(notices).toContainEqual(expect.objectContaining({ kind: SessionNoticeKind.SESSION_NOTICE_KIND_MIRROR_DEAD, objectId: a.mirrorId }));
      const warn = lines.map((l) => JSON.parse(l) as { level: number; msg: string; mirror?: number }).find((l) => l.msg === "mirror declared dead");
      expect(warn).toMatchObject({ level: 40, mirror: a.mirrorId });
      attach.cancel();
      hc.close();
      asc.close();
      sc.close();
    } finally {
      await daemon.shutdown(500);
    }
  });

  it("Subscribe refuses a missing session (UNAUTHENTICATED) and an ack before open (INVALID_ARGUMENT)", async () => {
    const { NotifierServiceClient } = await import("../../src/gen/mmsim/v1/notifier.js");
    const { credentials, Metadata } = await import("@grpc/grpc-js");
    const { sessionMetadata } = await import("../helpers/daemon.js");
    const client = new NotifierServiceClient(t.address, credentials.createInsecure());
    const outcome = (md: InstanceType<typeof Metadata>, first: object) =>
      new Promise<{ code: number; details: string }>((resolve) => {
        const call = client.subscribe(md);
        call.on("data", () => {});
        call.on("error", () => {});
        call.on("status", (st) => resolve({ code: st.code, details: st.details }));
        call.write(first);
      });
    expect(await outcome(new Metadata(), { open: { name: "x" } })).toMatchObject({ code: status.UNAUTHENTICATED });
    expect(await outcome(sessionMetadata(sid), { ack: { invalidationIds: [1], refusedIds: [] } })).toMatchObject({ code: status.INVALID_ARGUMENT, details: expect.stringMatching(/^EINVAL: `open` must be the first message/) });
    client.close();
  });

  it("a closed stream and an ended session remove their notifiers", async () => {
    const { mmId, addr } = await newMm();
    const a = await subscribe(t, sid, "a");
    const na = await insert(a.mirrorId, mmId, addr, PAGE);
    a.end();
    await a.status;
    await expectErrno(h.notifier.getIntervalNotifier({ notifierId: na.notifierId }), "ENOENT", status.NOT_FOUND);
    // A second session's mirror on the same mm goes with its session.
    const other = await t.newSession("other");
    const b = await subscribe(t, other, "b");
    const hb = hmmClients(t, other);
    const nb = await hb.notifier.insertIntervalNotifier({ mirrorId: b.mirrorId, mmId, start: addr, length: PAGE });
    const listed = await t.clients.session.listSessions({});
    expect(listed.sessions.find((s) => s.sessionId === other)).toMatchObject({ mirrorCount: 1, notifierCount: 1 });
    await t.clients.session.closeSession({ sessionId: other });
    expect((await b.status).code).toBe(status.OK);
    await expectErrno(h.notifier.getIntervalNotifier({ notifierId: nb.notifierId }), "ENOENT", status.NOT_FOUND);
    expect((await h.notifier.listIntervalNotifiers({ mmId })).notifiers).toEqual([]);
    hb.close();
    await t.checkInvariants();
  });
});
