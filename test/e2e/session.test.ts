/**
 * SessionService end to end (session.proto): create / attach / close / list,
 * the attach grace period, notices, metadata resolution on mutating calls,
 * and the release of what a session owns when it ends.
 */
import { status } from "@grpc/grpc-js";
import { afterEach, beforeEach, describe, expect, it } from "vitest";
import { FileKind } from "../../src/gen/mmsim/v1/address_space.js";
import { SessionNoticeKind } from "../../src/gen/mmsim/v1/session.js";
import { sessionMetadata, startDaemon, type TestDaemon } from "../helpers/daemon.js";
import { expectErrno } from "../helpers/errors.js";

const MAP_PRIVATE = 0x2;
const MAP_ANONYMOUS = 0x20;
const PROT_RW = 0x3;

async function until(cond: () => Promise<boolean> | boolean, what: string, timeoutMs = 5000): Promise<void> {
  const t0 = Date.now();
  while (!(await cond())) {
    if (Date.now() - t0 > timeoutMs) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 10));
  }
}

describe("SessionService", () => {
  let t: TestDaemon;
  beforeEach(async () => {
    t = await startDaemon({ sessionGraceMs: 300 });
  });
  afterEach(async () => {
    await t.stop();
  });

  it("creates sessions with increasing ids and lists them with their counters", async () => {
    const a = await t.clients.session.createSession({ name: "alpha", persistent: true });
    const b = await t.clients.session.createSession({ name: "beta", persistent: false });
    expect(a.sessionId).toBeGreaterThan(0);
    expect(b.sessionId).toBeGreaterThan(a.sessionId);

    const list = await t.clients.session.listSessions({});
    expect(list.sessions).toEqual([
      {
        sessionId: a.sessionId,
        name: "alpha",
        persistent: true,
        attachedStreams: 0,
        mmCount: 0,
        pinCount: 0,
        pinnedPages: 0,
        fileCount: 0,
        notifierCount: 0,
        mirrorCount: 0,
        lockedBytes: 0,
        tenant: "default",
      },
      {
        sessionId: b.sessionId,
        name: "beta",
        persistent: false,
        attachedStreams: 0,
        mmCount: 0,
        pinCount: 0,
        pinnedPages: 0,
        fileCount: 0,
        notifierCount: 0,
        mirrorCount: 0,
        lockedBytes: 0,
        tenant: "default",
      },
    ]);
  });

  it("counts the mms and files a session owns", async () => {
    const sid = await t.newSession("owner");
    const c = t.withSession(sid);
    await c.addressSpace.createMm({ name: "p1" });
    await c.addressSpace.createMm({ name: "p2" });
    await c.addressSpace.createFile({ name: "buf", sizeBytes: 8192, kind: FileKind.FILE_KIND_SHMEM, hugePageSize: 0, pgmapId: 0 });
    const [info] = (await t.clients.session.listSessions({})).sessions;
    expect(info).toMatchObject({ sessionId: sid, mmCount: 2, fileCount: 1 });
  });

  it("closing a session exits its mms and closes its files, and the ids stop working", async () => {
    const sid = await t.newSession("owner");
    const other = await t.newSession("other");
    const c = t.withSession(sid);
    const { mmId } = await c.addressSpace.createMm({ name: "proc" });
    const { addr } = await c.addressSpace.mmap({ mmId, addr: 0, length: 65536, prot: PROT_RW, flags: MAP_PRIVATE | MAP_ANONYMOUS, fileId: 0, offset: 0 });
    const w = await c.memory.writeMemory({ mmId, addr, data: Buffer.from("hello") });
    expect(w.bytesDone).toBe(5);
    const { fileId } = await c.addressSpace.createFile({ name: "f", sizeBytes: 4096, kind: FileKind.FILE_KIND_SHMEM, hugePageSize: 0, pgmapId: 0 });
    const freeBefore = (await t.clients.inspect.getMeminfo({})).freePages;

    await t.clients.session.closeSession({ sessionId: sid });

    const sessions = (await t.clients.session.listSessions({})).sessions.map((s) => s.sessionId);
    expect(sessions).toEqual([other]);
    const { mms } = await t.clients.addressSpace.listMms({});
    expect(mms).toHaveLength(1);
    expect(mms[0]).toMatchObject({ mmId, ownerSessionId: sid, exited: true, mapCount: 0, mmUsers: 0, rssAnonPages: 0 });
    expect(t.daemon.kernel.files.has(fileId)).toBe(false);
    // The anonymous page and the page tables went back to the allocator.
    expect((await t.clients.inspect.getMeminfo({})).freePages).toBeGreaterThan(freeBefore);
    // Another session sees the exited mm as NOT_FOUND / ESRCH.
    await expectErrno(
      t.withSession(other).memory.readMemory({ mmId, addr, length: 5 }),
      "ESRCH",
      status.NOT_FOUND,
    );
    await t.checkInvariants();
  });

  it("CloseSession of an unknown or already closed session is NOT_FOUND / ESRCH", async () => {
    await expectErrno(t.clients.session.closeSession({ sessionId: 4242 }), "ESRCH", status.NOT_FOUND);
    const sid = await t.newSession();
    await t.clients.session.closeSession({ sessionId: sid });
    await expectErrno(t.clients.session.closeSession({ sessionId: sid }), "ESRCH", status.NOT_FOUND);
  });

  it("AttachSession sends `attached` first and counts the streams", async () => {
    const { sessionId } = await t.clients.session.createSession({ name: "np", persistent: false });
    const s1 = t.attach(sessionId);
    expect(await s1.message(0)).toEqual({ attached: { sessionId, attachedStreams: 1 } });
    const s2 = t.attach(sessionId);
    expect(await s2.message(0)).toEqual({ attached: { sessionId, attachedStreams: 2 } });
    const [info] = (await t.clients.session.listSessions({})).sessions;
    expect(info).toMatchObject({ sessionId, attachedStreams: 2, persistent: false });
  });

  it("AttachSession to an unknown session fails with NOT_FOUND / ESRCH", async () => {
    const s = t.attach(777);
    const st = await s.status;
    expect(st.code).toBe(status.NOT_FOUND);
    expect(st.details).toMatch(/^ESRCH: /);
    expect(st.metadata.get("mmsim-errno-name")).toEqual(["ESRCH"]);
    expect(st.metadata.get("mmsim-errno")).toEqual(["3"]);
    expect(s.messages).toEqual([]);
  });

  it("a non-persistent session ends when its last stream closes", async () => {
    const { sessionId } = await t.clients.session.createSession({ name: "np", persistent: false });
    const { mmId } = await t.withSession(sessionId).addressSpace.createMm({ name: "proc" });
    const s1 = t.attach(sessionId);
    const s2 = t.attach(sessionId);
    await s1.message(0);
    await s2.message(0);
    s1.cancel();
    await until(async () => (await t.clients.session.listSessions({})).sessions[0]?.attachedStreams === 1, "one stream left");
    expect((await t.clients.session.listSessions({})).sessions.map((s) => s.sessionId)).toEqual([sessionId]);
    s2.cancel();
    await until(async () => (await t.clients.session.listSessions({})).sessions.length === 0, "session end");
    await expectErrno(t.withSession(sessionId).addressSpace.createMm({ name: "x" }), "ESRCH", status.UNAUTHENTICATED);
    expect((await t.clients.addressSpace.listMms({})).mms).toMatchObject([{ mmId, exited: true }]);
  });

  it("a persistent session outlives its streams", async () => {
    const sid = await t.newSession("keeper");
    const s = t.attach(sid);
    await s.message(0);
    s.cancel();
    await until(async () => (await t.clients.session.listSessions({})).sessions[0]?.attachedStreams === 0, "stream gone");
    const { mmId } = await t.withSession(sid).addressSpace.createMm({ name: "still-usable" });
    expect(mmId).toBeGreaterThan(0);
  });

  it("a non-persistent session that never attaches ends after the grace period", async () => {
    const { sessionId } = await t.clients.session.createSession({ name: "idle", persistent: false });
    // Usable while pending.
    await t.withSession(sessionId).addressSpace.createMm({ name: "p" });
    await until(async () => (await t.clients.session.listSessions({})).sessions.length === 0, "grace expiry", 3000);
    await expectErrno(t.withSession(sessionId).addressSpace.createMm({ name: "x" }), "ESRCH", status.UNAUTHENTICATED);
    expect((await t.clients.addressSpace.listMms({})).mms[0]).toMatchObject({ exited: true });
  });

  it("an attached session does not end at the grace period", async () => {
    const { sessionId } = await t.clients.session.createSession({ name: "np", persistent: false });
    const s = t.attach(sessionId);
    await s.message(0);
    await new Promise((r) => setTimeout(r, 500));
    expect((await t.clients.session.listSessions({})).sessions.map((x) => x.sessionId)).toEqual([sessionId]);
  });

  it("CloseSession sends SESSION_CLOSING, then every stream finishes with OK", async () => {
    const sid = await t.newSession();
    const s = t.attach(sid);
    await s.message(0);
    await t.clients.session.closeSession({ sessionId: sid });
    const st = await s.status;
    expect(st.code).toBe(status.OK);
    expect(s.messages).toHaveLength(2);
    expect(s.messages[1]!.notice).toMatchObject({ kind: SessionNoticeKind.SESSION_NOTICE_KIND_SESSION_CLOSING, objectId: 0, mmId: 0 });
  });

  it("ExitMm by another session notifies the owner's streams with MM_EXITED", async () => {
    const owner = await t.newSession("owner");
    const other = await t.newSession("other");
    const s = t.attach(owner);
    await s.message(0);
    const { mmId } = await t.withSession(owner).addressSpace.createMm({ name: "victim" });
    await t.withSession(other).addressSpace.exitMm({ mmId });
    const n = await s.message(1);
    expect(n.notice).toMatchObject({ kind: SessionNoticeKind.SESSION_NOTICE_KIND_MM_EXITED, mmId, objectId: 0 });
    await expectErrno(t.withSession(other).addressSpace.exitMm({ mmId }), "ESRCH", status.NOT_FOUND);
  });

  it("daemon shutdown sends SESSION_CLOSING and finishes every stream with OK", async () => {
    const sid = await t.newSession();
    const s = t.attach(sid);
    await s.message(0);
    await t.daemon.shutdown(1000);
    const st = await s.status;
    expect(st.code).toBe(status.OK);
    expect(s.messages[1]?.notice?.kind).toBe(SessionNoticeKind.SESSION_NOTICE_KIND_SESSION_CLOSING);
    expect(t.daemon.sessions.list()).toEqual([]);
  });
});

describe("mmsim-session metadata on mutating calls", () => {
  let t: TestDaemon;
  beforeEach(async () => {
    t = await startDaemon();
  });
  afterEach(async () => {
    await t.stop();
  });

  it("missing header: UNAUTHENTICATED / EINVAL, nothing created", async () => {
    const e = await expectErrno(t.clients.addressSpace.createMm({ name: "x" }), "EINVAL", status.UNAUTHENTICATED);
    expect(e.details).toContain("mmsim-session");
    expect((await t.clients.addressSpace.listMms({})).mms).toEqual([]);
  });

  it("malformed header: UNAUTHENTICATED / EINVAL", async () => {
    for (const bad of ["abc", "0", "-3", "1.5", "99999999999999999999"]) {
      await expectErrno(t.clients.addressSpace.createMm({ name: "x" }, sessionMetadata(bad)), "EINVAL", status.UNAUTHENTICATED);
    }
    expect((await t.clients.addressSpace.listMms({})).mms).toEqual([]);
  });

  it("unknown session: UNAUTHENTICATED / ESRCH", async () => {
    await expectErrno(t.withSession(12345).addressSpace.createMm({ name: "x" }), "ESRCH", status.UNAUTHENTICATED);
    await expectErrno(t.withSession(12345).system.setTunables({ maxMapCount: 100 }), "ESRCH", status.UNAUTHENTICATED);
    expect((await t.clients.system.getTunables({})).tunables?.maxMapCount).toBe(65530);
  });

  it("read-only calls need no header and ignore a bad one", async () => {
    const sid = await t.newSession();
    const { mmId } = await t.withSession(sid).addressSpace.createMm({ name: "p" });
    expect((await t.clients.addressSpace.listMms({})).mms.map((m) => m.mmId)).toEqual([mmId]);
    expect((await t.clients.inspect.getMaps({ mmId }, sessionMetadata("garbage"))).vmas).toEqual([]);
    expect((await t.clients.system.getVersion({})).api).toBe("mmsim.v1");
  });

  it("objects record the session that created them", async () => {
    const a = await t.newSession("a");
    const b = await t.newSession("b");
    const m1 = await t.withSession(a).addressSpace.createMm({ name: "one" });
    const m2 = await t.withSession(b).addressSpace.createMm({ name: "two" });
    const { mms } = await t.clients.addressSpace.listMms({});
    expect(mms.map((m) => [m.mmId, m.ownerSessionId, m.name])).toEqual([
      [m1.mmId, a, "one"],
      [m2.mmId, b, "two"],
    ]);
    // Ids are daemon-wide: b may fork a's mm; the child is b's.
    const { childMmId } = await t.withSession(b).addressSpace.forkMm({ mmId: m1.mmId, name: "" });
    const child = (await t.clients.addressSpace.listMms({})).mms.find((m) => m.mmId === childMmId);
    expect(child).toMatchObject({ ownerSessionId: b, parentMmId: m1.mmId, name: "one-child", exited: false });
  });
});
