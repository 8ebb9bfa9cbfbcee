/**
 * The mirror_ack fault point on client mirrors (Subscribe streams): a
 * non-blockable invalidation is refused at once, as by a driver whose
 * mutex_trylock failed (the OOM reaper skips the VMA with EAGAIN, nothing is
 * sent, the notifier sequence is not set); a blockable one is delivered but
 * its acknowledgement is lost, so the dead-mirror path runs (MirrorDead,
 * MIRROR_DEAD session notice, warning logged) and the operation completes.
 */
import { Writable } from "node:stream";
import { status } from "@grpc/grpc-js";
import { pino } from "pino";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { FaultMode } from "../../src/gen/mmsim/v1/admin.js";
import { MmuNotifyEvent } from "../../src/gen/mmsim/v1/notifier.js";
import { SessionNoticeKind } from "../../src/gen/mmsim/v1/session.js";
import { type Clients, startDaemon, type TestDaemon } from "../helpers/daemon.js";
import { expectErrno } from "../helpers/errors.js";
import { fillInts, type HmmClients, hmmClients, subscribe } from "../helpers/hmm.js";

const PAGE = 4096;
const MAP_PRIVATE_ANON = 0x22;
const RW = 3;
const EAGAIN = 11;
const DEADLINE_MS = 200;

describe("mirror_ack fault injection on client mirrors", () => {
  let t: TestDaemon;
  let c: Clients;
  let h: HmmClients;
  let sid: number;
  const lines: string[] = [];

  beforeAll(async () => {
    const sink = new Writable({
      write(chunk, _enc, cb) {
        lines.push(String(chunk));
        cb();
      },
    });
    t = await startDaemon({ ramBytes: 2 ** 30, faultInjection: true, mirrorDeadlineMs: DEADLINE_MS }, { logger: pino({ level: "warn" }, sink) });
    sid = await t.newSession("mirror-ack");
    c = t.withSession(sid);
    h = hmmClients(t, sid);
  });
  afterAll(async () => {
    h.close();
    await t.stop();
  });

  const point = async () => (await t.clients.admin.listFaultPoints({})).points.find((p) => p.name === "mirror_ack")!;
  const failNext = (count: number) => t.clients.admin.configureFaultPoint({ point: "mirror_ack", mode: FaultMode.FAULT_MODE_TIMES, count, probability: 0, seed: 0 });

  it("non-blockable (OOM reaper): refused at once, VMA skipped with EAGAIN, nothing sent, seq not set", async () => {
    await t.clients.admin.clearFaultInjection({ resetCounters: true });
    const mmId = (await c.addressSpace.createMm({ name: "victim" })).mmId;
    const map = async () => (await c.addressSpace.mmap({ mmId, addr: 0, length: 4 * PAGE, prot: RW, flags: MAP_PRIVATE_ANON, fileId: 0, offset: 0 })).addr;
    const v1 = await map();
    const v2 = await map();
    await c.addressSpace.mprotect({ mmId, addr: v2, length: 4 * PAGE, prot: 1 | 2 | 4 }); // keep the VMAs apart
    const [lo, hi] = v1 < v2 ? [v1, v2] : [v2, v1];
    await c.memory.writeMemory({ mmId, addr: lo, data: fillInts(4 * PAGE, (i) => i + 1) });
    await c.memory.writeMemory({ mmId, addr: hi, data: fillInts(4 * PAGE, (i) => i + 1) });
    const a = await subscribe(t, sid, "prompt"); // acknowledges everything it gets
    const n = await h.notifier.insertIntervalNotifier({ mirrorId: a.mirrorId, mmId, start: lo, length: 4 * PAGE });
    expect(n.seq).toBe(1);
    await failNext(1);
    const r = await h.notifier.reapMm({ mmId });
    expect(r.vmas).toEqual([
      { start: lo, end: lo + 4 * PAGE, reaped: false, errnoValue: EAGAIN },
      { start: hi, end: hi + 4 * PAGE, reaped: true, errnoValue: 0 },
    ]);
    expect(a.invalidations).toEqual([]);
    expect(await point()).toMatchObject({ hits: 1, injected: 1 });
    // The refusing callback did not set its sequence; the interval part ended (seq even).
    expect(await h.notifier.getIntervalNotifier({ notifierId: n.notifierId })).toMatchObject({ notifier: { seq: 1 }, mmSeq: 4, mmActive: 0 });
    expect((await c.memory.readMemory({ mmId, addr: lo, length: 8 })).data.readInt32LE(4)).toBe(2);
    expect((await c.memory.readMemory({ mmId, addr: hi, length: 8 })).data.readInt32LE(4)).toBe(0);
    // The budget is spent: the next reap reaches the mirror, which acknowledges.
    const again = await h.notifier.reapMm({ mmId });
    expect(again.vmas.map((v) => [v.reaped, v.errnoValue])).toEqual([
      [true, 0],
      [true, 0],
    ]);
    expect(a.invalidations.map((i) => [i.event, i.start, i.end, i.blockable, i.notifierIds])).toEqual([[MmuNotifyEvent.MMU_NOTIFY_EVENT_UNMAP, lo, lo + 4 * PAGE, false, [n.notifierId]]]);
    expect(await point()).toMatchObject({ hits: 2, injected: 1 });
    expect(a.dead).toBeNull();
    a.end();
    expect((await a.status).code).toBe(status.OK);
    await t.clients.admin.clearFaultInjection({ resetCounters: true });
    await c.addressSpace.exitMm({ mmId });
  });

  it("blockable: the acknowledgement is lost, the mirror is declared dead after the deadline, the munmap completes", async () => {
    await t.clients.admin.clearFaultInjection({ resetCounters: true });
    const notices: { kind: number; objectId: number; count: number; message: string }[] = [];
    const att = t.attach(sid);
    await att.message(0);
    const mmId = (await c.addressSpace.createMm({ name: "p" })).mmId;
    const { addr } = await c.addressSpace.mmap({ mmId, addr: 0, length: 8 * PAGE, prot: RW, flags: MAP_PRIVATE_ANON, fileId: 0, offset: 0 });
    await c.memory.writeMemory({ mmId, addr, data: fillInts(8 * PAGE, (i) => i) });
    const a = await subscribe(t, sid, "victim"); // acknowledges at once; the daemon drops it
    const n1 = await h.notifier.insertIntervalNotifier({ mirrorId: a.mirrorId, mmId, start: addr, length: 4 * PAGE });
    const n2 = await h.notifier.insertIntervalNotifier({ mirrorId: a.mirrorId, mmId, start: addr + 4 * PAGE, length: 4 * PAGE });
    await failNext(1);
    lines.length = 0;
    await c.addressSpace.munmap({ mmId, addr, length: 8 * PAGE });
    const st = await a.status;
    expect(st.code).toBe(status.OK);
    // One message for both notifiers, acknowledged by the client, and still dead.
    expect(a.invalidations.map((i) => [i.event, i.start, i.end, i.blockable, i.notifierIds])).toEqual([[MmuNotifyEvent.MMU_NOTIFY_EVENT_UNMAP, addr, addr + 8 * PAGE, true, [n1.notifierId, n2.notifierId]]]);
    expect(a.unacked()).toEqual([]);
    expect(a.dead?.notifierIds).toEqual([n1.notifierId, n2.notifierId]);
    expect(a.dead?.reason).toMatch(new RegExp(`^invalidation ${a.invalidations[0]!.invalidationId} \\(UNMAP .* not acknowledged within ${DEADLINE_MS} ms \\(its acknowledgement was dropped by mirror_ack fault injection\\)$`));
    expect(await point()).toMatchObject({ hits: 1, injected: 1 });
    await expectErrno(h.notifier.getIntervalNotifier({ notifierId: n1.notifierId }), "ENOENT", status.NOT_FOUND);
    expect((await h.notifier.listIntervalNotifiers({ mmId })).notifiers).toEqual([]);
    // The unmap happened.
    expect((await c.memory.readMemory({ mmId, addr, length: 8 })).bytesDone).toBe(0);
    // Notice on the session's stream, warning in the log.
    await att.message(1);
    for (const m of att.messages) if (m.notice !== undefined) notices.push(m.notice);
    expect(notices).toEqual([expect.objectContaining({ kind: SessionNoticeKind.SESSION_NOTICE_KIND_MIRROR_DEAD, objectId: a.mirrorId, count: 2 })]);
    const warn = lines.map((l) => JSON.parse(l) as { level: number; msg: string; mirror?: number; notifiers?: number[] }).filter((l) => l.msg === "mirror declared dead");
    expect(warn).toEqual([expect.objectContaining({ level: 40, mirror: a.mirrorId, notifiers: [n1.notifierId, n2.notifierId] })]);
    // The session itself is unaffected: a new mirror works once the budget is spent.
    const b = await subscribe(t, sid, "next");
    await c.addressSpace.mmap({ mmId, addr, length: 2 * PAGE, prot: RW, flags: MAP_PRIVATE_ANON | 0x10 /* MAP_FIXED */, fileId: 0, offset: 0 });
    await c.memory.writeMemory({ mmId, addr, data: Buffer.from("x") });
    const nb = await h.notifier.insertIntervalNotifier({ mirrorId: b.mirrorId, mmId, start: addr, length: 2 * PAGE });
    await c.addressSpace.munmap({ mmId, addr, length: 2 * PAGE });
    expect(b.invalidations.map((i) => i.notifierIds)).toEqual([[nb.notifierId]]);
    expect(b.dead).toBeNull();
    expect(await point()).toMatchObject({ hits: 2, injected: 1 });
    expect((await t.clients.session.listSessions({})).sessions.find((s) => s.sessionId === sid)).toMatchObject({ mirrorCount: 1, notifierCount: 1 });
    b.end();
    await b.status;
    att.cancel();
    await t.clients.admin.clearFaultInjection({ resetCounters: true });
    await c.addressSpace.exitMm({ mmId });
  });

  it("every other message lost (INTERVAL 2): each mirror hit on an even message dies, the others live", async () => {
    await t.clients.admin.clearFaultInjection({ resetCounters: true });
    const mmId = (await c.addressSpace.createMm({ name: "q" })).mmId;
    const { addr } = await c.addressSpace.mmap({ mmId, addr: 0, length: 16 * PAGE, prot: RW, flags: MAP_PRIVATE_ANON, fileId: 0, offset: 0 });
    await c.memory.writeMemory({ mmId, addr, data: fillInts(16 * PAGE, (i) => i) });
    // Four mirrors on disjoint pages: one message each per DONTNEED.
    const ms = [];
    for (let i = 0; i < 4; i++) {
      const m = await subscribe(t, sid, `m${i}`);
      await h.notifier.insertIntervalNotifier({ mirrorId: m.mirrorId, mmId, start: addr + i * 4 * PAGE, length: 4 * PAGE });
      ms.push(m);
    }
    await t.clients.admin.configureFaultPoint({ point: "mirror_ack", mode: FaultMode.FAULT_MODE_INTERVAL, count: 2, probability: 0, seed: 0 });
    // Mirrors are hit one range at a time, in address order.
    for (let i = 0; i < 4; i++) await c.addressSpace.madvise({ mmId, addr: addr + i * 4 * PAGE, length: 4 * PAGE, advice: 4 /* MADV_DONTNEED */ });
    const dead = [];
    for (const m of ms) {
      expect(m.invalidations).toHaveLength(1);
      if (m.dead !== null || ms.indexOf(m) % 2 === 1) {
        expect((await m.status).code).toBe(status.OK);
        dead.push(m.dead !== null);
      } else dead.push(false);
    }
    expect(dead).toEqual([false, true, false, true]);
    expect(await point()).toMatchObject({ hits: 4, injected: 2 });
    expect((await h.notifier.listIntervalNotifiers({ mmId })).notifiers.map((x) => x.mirrorId)).toEqual([ms[0]!.mirrorId, ms[2]!.mirrorId]);
    for (const m of [ms[0]!, ms[2]!]) {
      m.end();
      await m.status;
    }
    await t.clients.admin.clearFaultInjection({ resetCounters: true });
    await c.addressSpace.exitMm({ mmId });
  });
});
