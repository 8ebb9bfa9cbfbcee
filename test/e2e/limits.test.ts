/**
 * Daemon limits end to end: --max-vmas-per-session,
 * --max-longterm-pages-per-session and --max-mirror-queue-depth. Each
 * refusal is RESOURCE_EXHAUSTED with errno ENOMEM and a reason naming the
 * flag, and leaves the state as it was; the same operation just within the
 * limit succeeds.
 */
import { status } from "@grpc/grpc-js";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { ConfigError, DEFAULT_CONFIG, loadConfig, USAGE } from "../../src/server/config.js";
import { type Clients, startDaemon, type TestDaemon } from "../helpers/daemon.js";
import { expectErrno } from "../helpers/errors.js";
import { FOLL_LONGTERM, FOLL_WRITE, pin, V } from "../helpers/gup.js";
import { fillInts, type HmmClients, hmmClients, subscribe } from "../helpers/hmm.js";

const PAGE = 4096;
const MAP_PRIVATE_ANON = 0x22;
const RW = 3;
const READ = 1;
const MADV_DONTNEED = 4;
const MADV_DONTFORK = 10;

const anon = (mmId: number, pages: number, prot = RW) => ({ mmId, addr: 0, length: pages * PAGE, prot, flags: MAP_PRIVATE_ANON, fileId: 0, offset: 0 });

async function stillPending(p: Promise<unknown>, ms = 80): Promise<"pending" | "settled"> {
  let settled = false;
  p.then(
    () => (settled = true),
    () => (settled = true),
  );
  await new Promise((r) => setTimeout(r, ms));
  return settled ? "settled" : "pending";
}

describe("limit options", () => {
  it("defaults, flags, environment and config file; bad values refused; --help lists them", () => {
    expect(DEFAULT_CONFIG).toMatchObject({ maxVmasPerSession: 1_048_576, maxLongtermPagesPerSession: 2 ** 24, maxMirrorQueueDepth: 1024 });
    const flags = loadConfig(["--max-vmas-per-session", "7", "--max-longterm-pages-per-session=9", "--max-mirror-queue-depth", "3"], {}).config;
    expect(flags).toMatchObject({ maxVmasPerSession: 7, maxLongtermPagesPerSession: 9, maxMirrorQueueDepth: 3 });
    const env = loadConfig([], { MMSIM_MAX_VMAS_PER_SESSION: "5", MMSIM_MAX_LONGTERM_PAGES_PER_SESSION: "6", MMSIM_MAX_MIRROR_QUEUE_DEPTH: "8" }).config;
    expect(env).toMatchObject({ maxVmasPerSession: 5, maxLongtermPagesPerSession: 6, maxMirrorQueueDepth: 8 });
    const file = loadConfig(["--config", "c.json"], {}, () => '{"maxVmasPerSession": 11, "maxLongtermPagesPerSession": 12, "maxMirrorQueueDepth": 13}').config;
    expect(file).toMatchObject({ maxVmasPerSession: 11, maxLongtermPagesPerSession: 12, maxMirrorQueueDepth: 13 });
    for (const f of ["--max-vmas-per-session", "--max-longterm-pages-per-session", "--max-mirror-queue-depth"]) {
      expect(() => loadConfig([f, "0"], {})).toThrow(ConfigError);
      expect(() => loadConfig([f, "lots"], {})).toThrow(new RegExp(f));
      expect(USAGE).toContain(f);
    }
    for (const e of ["MMSIM_MAX_VMAS_PER_SESSION", "MMSIM_MAX_LONGTERM_PAGES_PER_SESSION", "MMSIM_MAX_MIRROR_QUEUE_DEPTH"]) expect(USAGE).toContain(e);
  });
});

describe("--max-vmas-per-session", () => {
  let t: TestDaemon;
  let c: Clients;
  let mmId: number;
  let base: number;

  beforeAll(async () => {
    t = await startDaemon({ maxVmasPerSession: 4 });
    c = t.withSession(await t.newSession("vmas"));
    mmId = (await c.addressSpace.createMm({ name: "p" })).mmId;
    base = (await c.addressSpace.mmap(anon(mmId, 16))).addr;
  });
  afterAll(async () => {
    await t.checkInvariants();
    await t.stop();
  });

  const maps = async () => (await t.clients.inspect.getMaps({ mmId })).vmas;
  const refused = async (op: () => Promise<unknown>, what: string) => {
    const before = { maps: await maps(), mms: await t.clients.addressSpace.listMms({}), vmstat: await t.clients.inspect.getVmstat({}) };
    const e = await expectErrno(op(), "ENOMEM", status.RESOURCE_EXHAUSTED);
    expect(e.details).toMatch(new RegExp(`^ENOMEM: ${what} would add \\d+ VMAs? to the \\d+ of session \\d+, beyond the limit \\(--max-vmas-per-session 4\\)$`));
    expect({ maps: await maps(), mms: await t.clients.addressSpace.listMms({}), vmstat: await t.clients.inspect.getVmstat({}) }).toEqual(before);
  };

  it("counts splits before the operation: within the limit it succeeds, beyond it nothing changes", async () => {
    // Split in three: 1 + 2 = 3 VMAs.
    await c.addressSpace.mprotect({ mmId, addr: base + PAGE, length: PAGE, prot: READ });
    expect(await maps()).toHaveLength(3);
    // Another middle split would make 5.
    await refused(() => c.addressSpace.mprotect({ mmId, addr: base + 5 * PAGE, length: PAGE, prot: READ }), "Mprotect");
    await refused(() => c.addressSpace.madvise({ mmId, addr: base + 5 * PAGE, length: PAGE, advice: MADV_DONTFORK }), "Madvise");
    // A hole punched in the last piece: 4, exactly the limit.
    await c.addressSpace.munmap({ mmId, addr: base + 8 * PAGE, length: PAGE });
    expect(await maps()).toHaveLength(4);
    await refused(() => c.addressSpace.munmap({ mmId, addr: base + 11 * PAGE, length: PAGE }), "Munmap");
    await refused(() => c.addressSpace.mmap(anon(mmId, 1, READ)), "Mmap");
    await refused(() => c.addressSpace.forkMm({ mmId, name: "child" }), "ForkMm");
    // Changes that add no VMA still work at the limit.
    await c.addressSpace.mprotect({ mmId, addr: base + PAGE, length: PAGE, prot: READ });
    await c.addressSpace.madvise({ mmId, addr: base + 9 * PAGE, length: PAGE, advice: MADV_DONTNEED });
    // Unmapping a whole VMA makes room for one more mmap.
    await c.addressSpace.munmap({ mmId, addr: base + PAGE, length: PAGE });
    expect(await maps()).toHaveLength(3);
    await c.addressSpace.mmap(anon(mmId, 1, READ));
    expect(await maps()).toHaveLength(4);
  });

  it("is per session: another session maps freely, and exited mms do not count", async () => {
    const c2 = t.withSession(await t.newSession("other"));
    const mm2 = (await c2.addressSpace.createMm({ name: "q" })).mmId;
    for (let i = 0; i < 4; i++) await c2.addressSpace.mmap(anon(mm2, 1, i % 2 === 0 ? RW : READ));
    await expectErrno(c2.addressSpace.mmap(anon(mm2, 1, RW)), "ENOMEM", status.RESOURCE_EXHAUSTED);
    await c2.addressSpace.exitMm({ mmId: mm2 });
    const mm3 = (await c2.addressSpace.createMm({ name: "r" })).mmId;
    await c2.addressSpace.mmap(anon(mm3, 1));
  });
});

describe("--max-longterm-pages-per-session", () => {
  let t: TestDaemon;
  let c: Clients;
  let sid: number;
  let mmId: number;
  let base: number;

  beforeAll(async () => {
    t = await startDaemon({ maxLongtermPagesPerSession: 8 });
    sid = await t.newSession("pins");
    c = t.withSession(sid);
    mmId = (await c.addressSpace.createMm({ name: "p" })).mmId;
    base = (await c.addressSpace.mmap(anon(mmId, 32))).addr;
    await c.memory.writeMemory({ mmId, addr: base, data: fillInts(32 * PAGE, (i) => i) });
  });
  afterAll(async () => {
    await t.checkInvariants();
    await t.stop();
  });

  const snapshot = async () => ({
    pins: await c.gup.getPinStats({ sessionId: sid }),
    handles: await c.gup.listPins({ sessionId: sid, includeRuns: true }),
    vmstat: await t.clients.inspect.getVmstat({}),
  });
  const LT = FOLL_LONGTERM | FOLL_WRITE;

  it("refuses a long-term pin beyond the limit before pinning anything; up to the limit works", async () => {
    expect((await pin(c, V.GUP_VARIANT_PIN_USER_PAGES, mmId, base, 6, LT)).ret).toBe(6);
    const before = await snapshot();
    expect(before.pins.sessionLockedBytes).toBe(6 * PAGE);
    const e = await expectErrno(pin(c, V.GUP_VARIANT_PIN_USER_PAGES, mmId, base + 6 * PAGE, 3, LT), "ENOMEM", status.RESOURCE_EXHAUSTED);
    expect(e.details).toMatch(/^ENOMEM: long-term pin of 3 pages would give session \d+ 9 FOLL_LONGTERM pages, beyond the limit \(--max-longterm-pages-per-session 8\)$/);
    await expectErrno(pin(c, V.GUP_VARIANT_PIN_USER_PAGES_FAST, mmId, base + 6 * PAGE, 3, LT), "ENOMEM", status.RESOURCE_EXHAUSTED);
    expect(await snapshot()).toEqual(before);
    // Pins without FOLL_LONGTERM are not counted.
    expect((await pin(c, V.GUP_VARIANT_PIN_USER_PAGES, mmId, base + 16 * PAGE, 4, FOLL_WRITE)).ret).toBe(4);
    // Exactly the limit.
    expect((await pin(c, V.GUP_VARIANT_PIN_USER_PAGES, mmId, base + 6 * PAGE, 2, LT)).ret).toBe(2);
    expect((await c.gup.getPinStats({ sessionId: sid })).sessionLockedBytes).toBe(8 * PAGE);
    await expectErrno(pin(c, V.GUP_VARIANT_PIN_USER_PAGES, mmId, base + 8 * PAGE, 1, LT), "ENOMEM", status.RESOURCE_EXHAUSTED);
  });
});

describe("--max-mirror-queue-depth", () => {
  let t: TestDaemon;
  let c: Clients;
  let h: HmmClients;
  let sid: number;

  beforeAll(async () => {
    t = await startDaemon({ ramBytes: 2 ** 30, maxMirrorQueueDepth: 2, mirrorDeadlineMs: 60_000 });
    sid = await t.newSession("queue");
    c = t.withSession(sid);
    h = hmmClients(t, sid);
  });
  afterAll(async () => {
    h.close();
    await t.stop();
  });

  const newMm = async () => {
    const mmId = (await c.addressSpace.createMm({ name: "m" })).mmId;
    const { addr } = await c.addressSpace.mmap(anon(mmId, 4));
    await c.memory.writeMemory({ mmId, addr, data: fillInts(4 * PAGE, (i) => i) });
    return { mmId, addr };
  };

  it("a mirror that never acknowledges is dead once its queue would exceed the limit; another mirror keeps working", async () => {
    const mms = [await newMm(), await newMm(), await newMm()];
    const silent = await subscribe(t, sid, "silent", { autoAck: false });
    const live = await subscribe(t, sid, "live");
    const silentNotifiers = [];
    for (const m of mms) silentNotifiers.push((await h.notifier.insertIntervalNotifier({ mirrorId: silent.mirrorId, mmId: m.mmId, start: m.addr, length: 4 * PAGE })).notifierId);
    await h.notifier.insertIntervalNotifier({ mirrorId: live.mirrorId, mmId: mms[0]!.mmId, start: mms[0]!.addr, length: 4 * PAGE });

    // Two unacknowledged invalidations: the limit, the operations wait.
    const op0 = c.addressSpace.madvise({ mmId: mms[0]!.mmId, addr: mms[0]!.addr, length: PAGE, advice: MADV_DONTNEED });
    const op1 = c.addressSpace.madvise({ mmId: mms[1]!.mmId, addr: mms[1]!.addr, length: PAGE, advice: MADV_DONTNEED });
    await silent.waitFor(2);
    expect(await stillPending(op0)).toBe("pending");
    expect(await stillPending(op1)).toBe("pending");
    expect(await stillPending(silent.status)).toBe("pending");
    expect(live.invalidations).toHaveLength(1);

    // A third would exceed it: the mirror is dead, every operation completes.
    await c.addressSpace.madvise({ mmId: mms[2]!.mmId, addr: mms[2]!.addr, length: PAGE, advice: MADV_DONTNEED });
    await Promise.all([op0, op1]);
    const st = await silent.status;
    expect(status[st.code]).toBe("RESOURCE_EXHAUSTED");
    expect(st.details).toMatch(/^ENOMEM: mirror \d+ declared dead: 2 invalidations not acknowledged, one more would exceed the limit \(--max-mirror-queue-depth 2\)$/);
    expect(st.metadata.get("mmsim-errno-name")).toEqual(["ENOMEM"]);
    expect(silent.invalidations).toHaveLength(2);
    expect(silent.dead?.notifierIds).toEqual(silentNotifiers);
    expect(silent.dead?.reason).toMatch(/--max-mirror-queue-depth 2/);
    for (const id of silentNotifiers) await expectErrno(h.notifier.getIntervalNotifier({ notifierId: id }), "ENOENT", status.NOT_FOUND);

    // The other mirror is untouched.
    await c.addressSpace.madvise({ mmId: mms[0]!.mmId, addr: mms[0]!.addr + PAGE, length: PAGE, advice: MADV_DONTNEED });
    expect(live.invalidations).toHaveLength(2);
    expect(live.dead).toBeNull();
    expect(await stillPending(live.status)).toBe("pending");
    live.end();
    expect((await live.status).code).toBe(status.OK);
    await t.checkInvariants();
  });
});
