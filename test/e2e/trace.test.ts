/**
 * Trace record and replay: a real client run recorded by a daemon started
 * with --trace, replayed into fresh daemons (in process and through the
 * `mmsim replay` CLI as a child process), a tampered trace, a daemon with a
 * different tunable, id mapping into a daemon that already holds objects,
 * torn and damaged files, and run-time StartTrace / StopTrace.
 */
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import path from "node:path";
import { credentials, Metadata, status } from "@grpc/grpc-js";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { runCli } from "../../src/cli/cli.js";
import { MmapResponse } from "../../src/gen/mmsim/v1/address_space.js";
import { Invalidation, MmuNotifyEvent } from "../../src/gen/mmsim/v1/notifier.js";
import { TraceAnswer, TraceRecordKind, TraceServiceClient } from "../../src/gen/mmsim/v1/trace.js";
import { encodeTrace, parseTrace, readTraceFile, type TraceContents, TraceFormatError } from "../../src/trace/file.js";
import { REPLAYED_CONFIG } from "../../src/server/trace.js";
import { METHODS } from "../../src/trace/methods.js";
import { replayTrace } from "../../src/trace/replay.js";
import { sessionMetadata, startDaemon, type TestDaemon } from "../helpers/daemon.js";
import { expectErrno } from "../helpers/errors.js";
import { hmmClients, subscribe } from "../helpers/hmm.js";
import { runCliProcess } from "../helpers/spawn.js";

const PAGE = 4096;
const MB2 = 2 ** 21;
const MAP_PRIVATE_ANON = 0x22;
const RW = 3;
const FOLL_WRITE = 0x1;
const FOLL_LONGTERM = 0x100;
const GUP_VARIANT_PIN_USER_PAGES = 1;
const GUP_OUTPUT_RANGES = 1;
const FAULT_ACCESS_WRITE = 2;

/** Methods of the recorded run, in commit order. */
const EXPECTED = [
  "SessionService/CreateSession",
  "SessionService/CreateSession",
  "SessionService/AttachSession",
  "AddressSpaceService/CreateMm",
  "AddressSpaceService/Mmap",
  "FaultService/HandleMmFault",
  "MemoryService/WriteMemory",
  "MemoryService/ReadMemory",
  "AddressSpaceService/CreateMm",
  "AddressSpaceService/Mmap",
  "MemoryService/WriteMemory",
  "GupService/PinUserPages",
  "GupService/UnpinHandle",
  "NotifierService/Subscribe",
  "NotifierService/InsertIntervalNotifier",
  "NotifierService/ReadBegin",
  "AddressSpaceService/Munmap",
  "NotifierService/ReadRetry",
  "NotifierService/InsertIntervalNotifier",
  "AddressSpaceService/Munmap",
  "AddressSpaceService/ExitMm",
  "SessionService/AttachSession",
  "NotifierService/Subscribe",
];
const STEP_MMAP = 5;
const STEP_FAULT = 6;
const STEP_INVALIDATING_MUNMAP = 17;
/** the close of driver-b's AttachSession stream: its release exits mm 2, which a's mirror watches */
const STEP_B_DETACH = 22;

function MmapRequestDecode(method: string, bytes: Uint8Array): unknown {
  return METHODS.get(method)!.requestDeserialize(Buffer.from(bytes));
}

/** A client run touching sessions, mms, faults, memory, pins, a mirror with an invalidation, and failing calls. */
async function clientRun(t: TestDaemon): Promise<void> {
  const a = (await t.clients.session.createSession({ name: "driver-a", persistent: true })).sessionId;
  const b = (await t.clients.session.createSession({ name: "driver-b", persistent: false })).sessionId;
  const attached = t.attach(b);
  await attached.message(0);
  const ca = t.withSession(a);
  const cb = t.withSession(b);
  const mm = (await ca.addressSpace.createMm({ name: "a" })).mmId;
  const { addr } = await ca.addressSpace.mmap({ mmId: mm, addr: 0, length: 8 * 2 ** 20, prot: RW, flags: MAP_PRIVATE_ANON, fileId: 0, offset: 0 });
  const huge = Math.ceil(addr / MB2) * MB2;
  const f = await ca.fault.handleMmFault({ mmId: mm, addr: huge, access: FAULT_ACCESS_WRITE, flags: 0 });
  expect(f.thp).toBe(true);
  await ca.memory.writeMemory({ mmId: mm, addr: huge + PAGE, data: Buffer.from("hello, trace") });
  expect(Buffer.from((await ca.memory.readMemory({ mmId: mm, addr: huge + PAGE, length: 12 })).data).toString()).toBe("hello, trace");
  const mmB = (await cb.addressSpace.createMm({ name: "b" })).mmId;
  const b0 = (await cb.addressSpace.mmap({ mmId: mmB, addr: 0, length: 16 * PAGE, prot: RW, flags: MAP_PRIVATE_ANON, fileId: 0, offset: 0 })).addr;
  await cb.memory.writeMemory({ mmId: mmB, addr: b0, data: Buffer.alloc(3 * PAGE, 7) });
  const pin = await ca.gup.pinUserPages({
    variant: GUP_VARIANT_PIN_USER_PAGES,
    mmId: mm,
    start: huge,
    nrPages: 16,
    gupFlags: FOLL_WRITE | FOLL_LONGTERM,
    output: GUP_OUTPUT_RANGES,
    wantFolioRuns: false,
  });
  expect(pin.ret).toBe(16);
  await ca.gup.unpinHandle({ handle: pin.handle, makeDirty: false });
  const h = hmmClients(t, a);
  try {
    const mirror = await subscribe(t, a, "trace-mirror");
    const n = await h.notifier.insertIntervalNotifier({ mirrorId: mirror.mirrorId, mmId: mm, start: huge, length: MB2 });
    const { seq } = await h.notifier.readBegin({ notifierId: n.notifierId });
    await ca.addressSpace.munmap({ mmId: mm, addr: huge, length: MB2 });
    expect(mirror.invalidations.map((i) => i.event)).toEqual([MmuNotifyEvent.MMU_NOTIFY_EVENT_UNMAP]);
    expect((await h.notifier.readRetry({ notifierId: n.notifierId, seq })).retry).toBe(true);
    await h.notifier.insertIntervalNotifier({ mirrorId: mirror.mirrorId, mmId: mmB, start: b0, length: 16 * PAGE });
    await expectErrno(ca.addressSpace.munmap({ mmId: mm, addr: huge + 1, length: PAGE }), "EINVAL", status.INVALID_ARGUMENT);
    await expectErrno(ca.addressSpace.exitMm({ mmId: 999 }), "ENOENT", status.NOT_FOUND);
    // driver-b goes away: the session ends with its last stream and its mm exits
    attached.cancel();
    await attached.status;
    await mirror.waitFor(3);
    for (let i = 0; i < 200 && (await t.clients.session.listSessions({})).sessions.some((s) => s.sessionId === b); i++) await new Promise((r) => setTimeout(r, 5));
    mirror.end();
    await mirror.status;
  } finally {
    h.close();
  }
}

describe("trace record and replay", () => {
  let dir: string;
  let file: string;
  let trace: TraceContents;
  const config = { ramBytes: 2 ** 30 };

  beforeAll(async () => {
    dir = mkdtempSync(path.join(tmpdir(), "mmsim-trace-"));
    file = path.join(dir, "run.trace");
    const t = await startDaemon({ ...config, trace: file });
    try {
      await clientRun(t);
    } finally {
      await t.stop();
    }
    trace = readTraceFile(file);
  });
  afterAll(() => rmSync(dir, { recursive: true, force: true }));

  it("records every mutating call once, in commit order, with its outcome and the invalidations it delivered", () => {
    expect(trace.torn).toBeUndefined();
    expect(trace.header.fromStart).toBe(true);
    expect(JSON.parse(trace.header.configJson)).toMatchObject({ ramBytes: 2 ** 30, thp: "always" });
    expect(Object.keys(JSON.parse(trace.header.configJson)).sort()).toEqual([...REPLAYED_CONFIG].sort()); // no addresses, logging or security
    expect(trace.records.map((r) => r.method.replace("/mmsim.v1.", ""))).toEqual(EXPECTED);
    expect(trace.records.map((r) => r.seq)).toEqual(EXPECTED.map((_, i) => i + 1));
    const kinds = trace.records.map((r) => r.kind);
    expect(kinds[2]).toBe(TraceRecordKind.TRACE_RECORD_KIND_STREAM_OPEN);
    expect(kinds[13]).toBe(TraceRecordKind.TRACE_RECORD_KIND_STREAM_OPEN);
    expect(kinds[21]).toBe(TraceRecordKind.TRACE_RECORD_KIND_STREAM_CLOSE);
    expect(kinds[22]).toBe(TraceRecordKind.TRACE_RECORD_KIND_STREAM_CLOSE);
    expect(trace.records[21]!.streamId).toBe(3);
    expect(trace.records[22]!.streamId).toBe(14);
    const mmap = MmapResponse.decode(trace.records[STEP_MMAP - 1]!.response);
    expect(mmap.addr).toBeGreaterThan(0);
    // the session of each mutating call
    expect(trace.records[STEP_MMAP - 1]!.sessionId).toBe(1);
    expect(trace.records[9]!.sessionId).toBe(2);
    const unmap = trace.records[STEP_INVALIDATING_MUNMAP - 1]!;
    expect(unmap.deliveries).toHaveLength(1);
    expect(unmap.deliveries[0]!.answer).toBe(TraceAnswer.TRACE_ANSWER_ACKED);
    const inv = Invalidation.decode(unmap.deliveries[0]!.invalidation);
    expect(inv).toMatchObject({ mmId: 1, event: MmuNotifyEvent.MMU_NOTIFY_EVENT_UNMAP, blockable: true, notifierIds: [inv.notifierIds[0]] });
    expect(inv.end - inv.start).toBe(MB2);
    const einval = trace.records[19]!;
    expect({ code: einval.code, errno: einval.errnoValue, response: einval.response.length }).toEqual({ code: status.INVALID_ARGUMENT, errno: 22, response: 0 });
    expect(einval.message).toMatch(/^EINVAL: /);
    expect({ code: trace.records[20]!.code, errno: trace.records[20]!.errnoValue }).toEqual({ code: status.NOT_FOUND, errno: 2 });
    // the munmap and driver-b's release (exit of mm 2: RELEASE, then UNMAP) delivered invalidations
    expect(trace.records.filter((r) => r.deliveries.length > 0).map((r) => r.seq)).toEqual([STEP_INVALIDATING_MUNMAP, STEP_B_DETACH]);
    const release = trace.records[STEP_B_DETACH - 1]!.deliveries.map((d) => Invalidation.decode(d.invalidation));
    expect(release.map((i) => [i.mmId, i.event, i.wholeAddressSpace])).toEqual([
      [2, MmuNotifyEvent.MMU_NOTIFY_EVENT_RELEASE, true],
      [2, MmuNotifyEvent.MMU_NOTIFY_EVENT_UNMAP, true],
    ]);
  });

  it("replays into a fresh daemon: every step matches", async () => {
    const t = await startDaemon(config);
    try {
      const r = await replayTrace(trace, { target: t.address });
      expect(r.mismatch).toBeUndefined();
      expect({ records: r.records, matched: r.matched }).toEqual({ records: EXPECTED.length, matched: EXPECTED.length });
      await t.checkInvariants();
    } finally {
      await t.stop();
    }
  });

  it("maps daemon-allocated ids when the target already holds objects", async () => {
    const t = await startDaemon(config);
    try {
      const s = await t.newSession("already-here");
      await t.withSession(s).addressSpace.createMm({ name: "pre" });
      await t.withSession(s).addressSpace.createMm({ name: "pre2" });
      const r = await replayTrace(trace, { target: t.address });
      expect(r.mismatch).toBeUndefined();
      expect(r.matched).toBe(EXPECTED.length);
      // the replayed driver-a is session 2 with mm 3 (not 1 and 1 as recorded)
      const mine = (await t.clients.session.listSessions({})).sessions.find((x) => x.name === "driver-a");
      expect(mine).toMatchObject({ sessionId: 2, mmCount: 1 });
      expect((await t.clients.addressSpace.listMms({})).mms.map((m) => m.mmId)).toContain(3);
    } finally {
      await t.stop();
    }
  });

  it("reports exactly the step whose recorded response was tampered with", async () => {
    const records = trace.records.map((r) => ({ ...r }));
    const mm = MmapResponse.decode(records[STEP_MMAP - 1]!.response);
    records[STEP_MMAP - 1]!.response = Buffer.from(MmapResponse.encode({ addr: mm.addr + PAGE }).finish());
    const t = await startDaemon(config);
    try {
      const r = await replayTrace({ ...trace, records }, { target: t.address });
      expect(r.matched).toBe(STEP_MMAP - 1);
      expect(r.mismatch).toMatchObject({ step: STEP_MMAP, method: "/mmsim.v1.AddressSpaceService/Mmap" });
      expect(r.mismatch!.diffs).toEqual([{ path: "response.addr", recorded: mm.addr + PAGE, replayed: mm.addr }]);
      expect(r.mismatch!.recorded.response).toEqual({ addr: mm.addr + PAGE });
      expect(r.mismatch!.replayed.response).toEqual({ addr: mm.addr });
    } finally {
      await t.stop();
    }
  });

  it("compares the invalidations a step delivered to client mirrors", async () => {
    const records = trace.records.map((r) => ({ ...r, deliveries: r.deliveries.map((d) => ({ ...d })) }));
    const d = records[STEP_INVALIDATING_MUNMAP - 1]!.deliveries[0]!;
    const inv = Invalidation.decode(d.invalidation);
    d.invalidation = Buffer.from(Invalidation.encode({ ...inv, start: inv.start + PAGE }).finish());
    const t = await startDaemon(config);
    try {
      const r = await replayTrace({ ...trace, records }, { target: t.address });
      expect(r.matched).toBe(STEP_INVALIDATING_MUNMAP - 1);
      expect(r.mismatch).toMatchObject({ step: STEP_INVALIDATING_MUNMAP, method: "/mmsim.v1.AddressSpaceService/Munmap" });
      expect(r.mismatch!.diffs).toEqual([{ path: "deliveries[0].start", recorded: inv.start + PAGE, replayed: inv.start }]);
    } finally {
      await t.stop();
    }
  });

  it("reports the first step whose result depends on a different tunable (THP never)", async () => {
    const t = await startDaemon({ ...config, thp: "never" });
    try {
      const r = await replayTrace(trace, { target: t.address });
      expect(r.matched).toBe(STEP_FAULT - 1);
      expect(r.mismatch).toMatchObject({ step: STEP_FAULT, method: "/mmsim.v1.FaultService/HandleMmFault" });
      const pfn = r.mismatch!.diffs.find((x) => x.path === "response.pfn")!;
      expect(r.mismatch!.diffs).toEqual([
        { path: "response.level", recorded: "PAGE_TABLE_LEVEL_PMD", replayed: "PAGE_TABLE_LEVEL_PTE" },
        { path: "response.pfn", recorded: pfn.recorded, replayed: pfn.replayed },
        { path: "response.thp", recorded: true, replayed: false },
      ]);
      expect((pfn.recorded as number) % 512).toBe(0);
      expect(r.mismatch!.recorded.response).toMatchObject({ level: "PAGE_TABLE_LEVEL_PMD", thp: true, writable: true });
      expect(r.mismatch!.replayed.response).toMatchObject({ level: "PAGE_TABLE_LEVEL_PTE", writable: true });
    } finally {
      await t.stop();
    }
  });

  it("a torn last record is reported and the complete records replay; damage before the end is an error", async () => {
    const buf = readFileSync(file);
    const torn = parseTrace(buf.subarray(0, buf.length - 3));
    expect(torn.records).toHaveLength(EXPECTED.length - 1);
    expect(torn.torn).toMatch(/announced/);
    const t = await startDaemon(config);
    try {
      const r = await replayTrace(torn, { target: t.address });
      expect({ matched: r.matched, mismatch: r.mismatch, torn: r.torn }).toEqual({ matched: EXPECTED.length - 1, mismatch: undefined, torn: torn.torn });
    } finally {
      await t.stop();
    }
    // a flipped byte in the last frame: torn, not fatal
    const flipLast = Buffer.from(buf);
    flipLast[flipLast.length - 6]! ^= 0xff;
    expect(parseTrace(flipLast).torn).toMatch(/checksum/);
    // a flipped byte in the middle: the file is damaged
    const flipMid = Buffer.from(buf);
    flipMid[Math.floor(buf.length / 2)]! ^= 0xff;
    expect(() => parseTrace(flipMid)).toThrow(TraceFormatError);
    expect(() => parseTrace(Buffer.from("not a trace at all"))).toThrow(/no MMSIMTRC magic/);
    expect(() => parseTrace(buf.subarray(0, 14))).toThrow(/header is torn/);
  });

  it("mmsim replay: exit 0 when every step matches, 1 at the first difference, 2 for a bad trace file", async () => {
    const ok = await runCliProcess(["replay", file]);
    expect(ok.stderr).toBe("");
    expect({ code: ok.code, stdout: ok.stdout }).toEqual({ code: 0, stdout: `replayed ${EXPECTED.length} of ${EXPECTED.length} steps: all match\n` });

    const records = trace.records.map((r) => ({ ...r }));
    const mm = MmapResponse.decode(records[STEP_MMAP - 1]!.response);
    records[STEP_MMAP - 1]!.response = Buffer.from(MmapResponse.encode({ addr: mm.addr + PAGE }).finish());
    const tampered = path.join(dir, "tampered.trace");
    writeFileSync(tampered, encodeTrace(trace.header, records));
    const bad = await runCliProcess(["replay", tampered]);
    expect(bad.code).toBe(1);
    const lines = bad.stdout.split("\n");
    expect(lines[0]).toBe(`step ${STEP_MMAP} differs: /mmsim.v1.AddressSpaceService/Mmap`);
    expect(lines[1]).toBe("  differences:");
    expect(lines[2]).toBe(`    response.addr: ${mm.addr + PAGE} -> ${mm.addr}`);
    expect(JSON.parse(lines[3]!.replace(/^ {2}recorded: /, ""))).toMatchObject({ codeName: "OK", errno: 0, response: { addr: mm.addr + PAGE } });
    expect(JSON.parse(lines[4]!.replace(/^ {2}replayed: /, ""))).toMatchObject({ codeName: "OK", errno: 0, response: { addr: mm.addr } });
    expect(lines[5]).toBe(`${STEP_MMAP - 1} of ${EXPECTED.length} steps matched before it`);

    const junk = path.join(dir, "junk.trace");
    writeFileSync(junk, "definitely not a trace");
    const j = await runCliProcess(["replay", junk]);
    expect({ code: j.code, stdout: j.stdout }).toEqual({ code: 2, stdout: "" });
    expect(j.stderr).toMatch(/^mmsim: replay: .*junk\.trace: not a trace file \(no MMSIMTRC magic\)\n$/);

    const cut = path.join(dir, "cut.trace");
    const buf = readFileSync(file);
    writeFileSync(cut, buf.subarray(0, buf.length - 3));
    const c = await runCliProcess(["replay", cut, "--json"]);
    expect(c.code).toBe(0);
    expect(c.stderr).toMatch(new RegExp(`torn last record \\(frame at byte \\d+: \\d+ bytes announced, \\d+ present\\); replaying the ${EXPECTED.length - 1} complete records`));
    expect(JSON.parse(c.stdout)).toMatchObject({ records: EXPECTED.length - 1, matched: EXPECTED.length - 1 });
  }, 60_000);

  it("numbers steps in commit order: a call waiting for an mm lock is recorded after a later call on another mm", async () => {
    const live = path.join(dir, "order.trace");
    const t = await startDaemon({ ...config, trace: live });
    const traceClient = new TraceServiceClient(t.address, credentials.createInsecure());
    const traceStatus = () =>
      new Promise<{ pending: number }>((res, rej) => traceClient.getTraceStatus({}, new Metadata(), (e, r) => (e ? rej(e) : res(r!))));
    const h = hmmClients(t, 0);
    try {
      const s = await t.newSession("order");
      const c = t.withSession(s);
      const hs = hmmClients(t, s);
      const mm1 = (await c.addressSpace.createMm({ name: "one" })).mmId;
      const mm2 = (await c.addressSpace.createMm({ name: "two" })).mmId;
      const a1 = (await c.addressSpace.mmap({ mmId: mm1, addr: 0, length: 4 * PAGE, prot: RW, flags: MAP_PRIVATE_ANON, fileId: 0, offset: 0 })).addr;
      await c.memory.writeMemory({ mmId: mm1, addr: a1, data: Buffer.alloc(PAGE, 1) });
      const mirror = await subscribe(t, s, "slow", { autoAck: false });
      await hs.notifier.insertIntervalNotifier({ mirrorId: mirror.mirrorId, mmId: mm1, start: a1, length: 4 * PAGE });
      // 1: munmap of mm1 waits for the mirror's acknowledgement, holding mm1's lock
      const unmap = c.addressSpace.munmap({ mmId: mm1, addr: a1, length: PAGE });
      await mirror.waitFor(1);
      // 2: an mmap of mm1 arrives and waits for the lock
      const blocked = c.addressSpace.mmap({ mmId: mm1, addr: 0, length: PAGE, prot: RW, flags: MAP_PRIVATE_ANON, fileId: 0, offset: 0 });
      while ((await traceStatus()).pending < 2) await new Promise((r) => setTimeout(r, 2));
      // 3: an mmap of mm2 arrives last and completes at once
      await c.addressSpace.mmap({ mmId: mm2, addr: 0, length: PAGE, prot: RW, flags: MAP_PRIVATE_ANON, fileId: 0, offset: 0 });
      mirror.ack([mirror.invalidations[0]!.invalidationId]);
      await unmap;
      await blocked;
      mirror.end();
      await mirror.status;
      hs.close();
    } finally {
      h.close();
      traceClient.close();
      await t.stop();
    }
    const got = readTraceFile(live);
    const tail = got.records.slice(-4).map((r) => {
      const req = r.request.length > 0 && r.kind === TraceRecordKind.TRACE_RECORD_KIND_UNARY ? (MmapRequestDecode(r.method, r.request) as { mmId: number }) : { mmId: 0 };
      return `${r.method.replace("/mmsim.v1.", "")} mm ${req.mmId}`;
    });
    expect(tail).toEqual(["AddressSpaceService/Munmap mm 1", "AddressSpaceService/Mmap mm 2", "AddressSpaceService/Mmap mm 1", "NotifierService/Subscribe mm 0"]);
    expect(got.records.map((r) => r.seq)).toEqual(got.records.map((_, i) => i + 1));
    // and the sequential replay of that run matches
    const t2 = await startDaemon(config);
    try {
      const r = await replayTrace(got, { target: t2.address });
      expect(r.mismatch).toBeUndefined();
      expect(r.matched).toBe(got.records.length);
    } finally {
      await t2.stop();
    }
  });

  it("replays dmirror devices, hmm_range_fault through the CLI, and a mirror's refusal of the OOM reaper's invalidation", async () => {
    const live = path.join(dir, "hmm.trace");
    const t = await startDaemon({ ...config, trace: live });
    const cli = async (...args: string[]) => {
      let stdout = "";
      let stderr = "";
      const code = await runCli(args, {
        stdout: { write: (x: string | Uint8Array) => (stdout += typeof x === "string" ? x : Buffer.from(x).toString("latin1")) },
        stderr: { write: (x: string) => (stderr += x), isTTY: false },
        env: { MMSIM_ADDR: t.address, MMSIM_SESSION: "traced-cli" },
      });
      expect(code, stderr).toBe(0);
      return stdout;
    };
    try {
      const mm = (await cli("create-mm", "hmm")).trim();
      const addr = Number((await cli("mmap", mm, "2M")).trim());
      await cli("populate", mm, String(addr), "64K", "--write");
      const dev = /^device (\d+)/.exec(await cli("dmirror-create", "hmm0"))![1]!;
      const mid = /^mirror (\d+)/.exec(await cli("dmirror-open", dev, mm))![1]!;
      expect(await cli("dmirror-migrate", mid, String(addr), "4")).toBe("cpages=4\n");
      await cli("dmirror-read", mid, String(addr), "8");
      const s = await t.newSession("refuser");
      const h = hmmClients(t, s);
      const mirror = await subscribe(t, s, "refuser", { autoAck: false });
      mirror.onInvalidation = (inv) => (inv.blockable ? mirror.ack([inv.invalidationId]) : mirror.refuse([inv.invalidationId]));
      const n = await h.notifier.insertIntervalNotifier({ mirrorId: mirror.mirrorId, mmId: Number(mm), start: addr, length: 2 ** 21 });
      expect(await cli("hmm-fault", String(n.notifierId), String(addr), "16K")).toMatch(/^errno=0 /);
      const reaped = await h.notifier.reapMm({ mmId: Number(mm) });
      expect(reaped.vmas.map((v) => [v.reaped, v.errnoValue])).toEqual([[false, 11]]);
      mirror.end();
      await mirror.status;
      h.close();
    } finally {
      await t.stop();
    }
    const got = readTraceFile(live);
    const methods = got.records.map((r) => r.method.replace("/mmsim.v1.", ""));
    expect(methods).toEqual(expect.arrayContaining(["DmirrorService/CreateDmirrorDevice", "DmirrorService/OpenMirror", "DmirrorService/MigrateToDevice", "HmmService/HmmRangeFault", "NotifierService/ReapMm"]));
    expect(methods).not.toContain("SessionService/ListSessions");
    const reap = got.records.find((r) => r.method === "/mmsim.v1.NotifierService/ReapMm")!;
    expect(reap.deliveries.map((d) => d.answer)).toEqual([TraceAnswer.TRACE_ANSWER_REFUSED]);
    const t2 = await startDaemon(config);
    try {
      const r = await replayTrace(got, { target: t2.address });
      expect(r.mismatch).toBeUndefined();
      expect(r.matched).toBe(got.records.length);
    } finally {
      await t2.stop();
    }
    // had the mirror acknowledged, the reaper would have zapped the VMA
    const acked = got.records.map((r) => (r === reap ? { ...r, deliveries: r.deliveries.map((d) => ({ ...d, answer: TraceAnswer.TRACE_ANSWER_ACKED })) } : r));
    const t3 = await startDaemon(config);
    try {
      const r = await replayTrace({ ...got, records: acked }, { target: t3.address });
      expect(r.mismatch).toMatchObject({ step: reap.seq, method: "/mmsim.v1.NotifierService/ReapMm" });
      expect(r.mismatch!.diffs).toEqual([
        { path: "response.vmas[0].reaped", recorded: false, replayed: true },
        { path: "response.vmas[0].errnoValue", recorded: 11, replayed: 0 },
      ]);
    } finally {
      await t3.stop();
    }
  });

  it("StartTrace / StopTrace record at run time; a second StartTrace is refused", async () => {
    const t = await startDaemon(config);
    const client = new TraceServiceClient(t.address, credentials.createInsecure());
    const call = <R>(f: (cb: (e: Error | null, r: R) => void) => void) => new Promise<R>((res, rej) => f((e, r) => (e ? rej(e) : res(r))));
    try {
      const s = await t.newSession("runtime");
      const md = sessionMetadata(s);
      const live = path.join(dir, "live.trace");
      // before recording: not traced
      const mm = (await t.withSession(s).addressSpace.createMm({ name: "before" })).mmId;
      expect(await call((cb) => client.startTrace({ path: live }, md, cb))).toEqual({ firstSeq: 1 });
      await expectErrno(call((cb) => client.startTrace({ path: live }, md, cb)), "EBUSY", status.ALREADY_EXISTS);
      await t.withSession(s).addressSpace.mmap({ mmId: mm, addr: 0, length: 4 * PAGE, prot: RW, flags: MAP_PRIVATE_ANON, fileId: 0, offset: 0 });
      await t.clients.inspect.getMaps({ mmId: mm }); // inspection: not traced
      expect(await call((cb) => client.getTraceStatus({}, new Metadata(), cb))).toEqual({ recording: true, path: live, records: 1, pending: 0 });
      expect(await call((cb) => client.stopTrace({}, md, cb))).toEqual({ path: live, records: 1 });
      await expectErrno(call((cb) => client.stopTrace({}, md, cb)), "EINVAL", status.FAILED_PRECONDITION);
      const got = readTraceFile(live);
      expect(got.header.fromStart).toBe(false);
      expect(got.records.map((r) => [r.seq, r.method, r.sessionId])).toEqual([[1, "/mmsim.v1.AddressSpaceService/Mmap", s]]);
      // and again, into another file: numbering starts over
      const again = path.join(dir, "live2.trace");
      expect(await call((cb) => client.startTrace({ path: again }, md, cb))).toEqual({ firstSeq: 1 });
      await t.withSession(s).addressSpace.exitMm({ mmId: mm });
      expect(await call((cb) => client.stopTrace({}, md, cb))).toEqual({ path: again, records: 1 });
      expect(readTraceFile(again).records.map((r) => [r.seq, r.method])).toEqual([[1, "/mmsim.v1.AddressSpaceService/ExitMm"]]);
      expect(readTraceFile(live).records).toHaveLength(1);
    } finally {
      client.close();
      await t.stop();
    }
  });
});
