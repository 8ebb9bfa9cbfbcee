/**
 * The invalidations a client mirror receives for each operation of spec 7.4
 * (event, range, owner, blockability), in order, over the Subscribe stream;
 * and the message rule: one message per invalidation per client, however
 * many of its notifiers the range hits, never one per page.
 */
import { afterAll, beforeAll, beforeEach, describe, expect, it } from "vitest";
import { MemoryType } from "../../src/gen/mmsim/v1/common.js";
import { FileKind } from "../../src/gen/mmsim/v1/address_space.js";
import { type Invalidation, MmuNotifyEvent } from "../../src/gen/mmsim/v1/notifier.js";
import { type Clients, startDaemon, type TestDaemon } from "../helpers/daemon.js";
import { type ClientMirror, fillInts, type HmmClients, hmmClients, subscribe } from "../helpers/hmm.js";

const PAGE = 4096;
const PMD = 2 ** 21;
const ALL = Number.MAX_SAFE_INTEGER;
const TASK_SIZE = 2 ** 47;
const RW = 3;
const MAP_SHARED = 0x1;
const MAP_PRIVATE_ANON = 0x22;
const MADV_DONTNEED = 4;
const MADV_FREE = 8;

type Ev = [string, number, number] | [string, number, number, { owner?: number; blockable?: boolean; whole?: boolean }];

const name = (e: MmuNotifyEvent) => MmuNotifyEvent[e]!.replace("MMU_NOTIFY_EVENT_", "");

describe("notifier events per operation (spec 7.4)", () => {
  let t: TestDaemon;
  let c: Clients;
  let h: HmmClients;
  let sid: number;
  let m: ClientMirror;
  let dev: { deviceId: number; owner: number };

  beforeAll(async () => {
    t = await startDaemon({ ramBytes: 1 * 2 ** 30 });
    sid = await t.newSession("events");
    c = t.withSession(sid);
    h = hmmClients(t, sid);
    m = await subscribe(t, sid, "events");
    dev = await h.dmirror.createDmirrorDevice({ name: "", memoryType: MemoryType.MEMORY_TYPE_DEVICE_PRIVATE, chunkPages: 1024 });
  });
  afterAll(async () => {
    m.end();
    h.close();
    await t.stop();
  });
  beforeEach(async () => {
    await t.checkInvariants();
  });

  /** A new process whose whole address space the mirror watches. */
  const proc = async (): Promise<{ mmId: number; notifierId: number }> => {
    const mmId = (await c.addressSpace.createMm({ name: "p" })).mmId;
    const { notifierId } = await h.notifier.insertIntervalNotifier({ mirrorId: m.mirrorId, mmId, start: 0, length: TASK_SIZE });
    return { mmId, notifierId };
  };
  const mmap = async (mmId: number, length: number, prot = RW, flags = MAP_PRIVATE_ANON, fileId = 0) =>
    (await c.addressSpace.mmap({ mmId, addr: 0, length, prot, flags, fileId, offset: 0 })).addr;
  const touch = (mmId: number, addr: number, len: number) => c.memory.writeMemory({ mmId, addr, data: fillInts(len, (i) => i + 1) });

  /** The invalidations `op` caused (all arrived: the op waited for their acknowledgements). */
  const events = async (op: () => Promise<unknown>): Promise<Ev[]> => {
    const before = m.invalidations.length;
    await op();
    return m.invalidations.slice(before).map(fmt);
  };
  const fmt = (i: Invalidation): Ev => {
    const extra: { owner?: number; blockable?: boolean; whole?: boolean } = {};
    if (i.owner !== 0) extra.owner = i.owner;
    if (!i.blockable) extra.blockable = false;
    if (i.wholeAddressSpace) extra.whole = true;
    return Object.keys(extra).length > 0 ? [name(i.event), i.start, i.end, extra] : [name(i.event), i.start, i.end];
  };

  it("munmap: one UNMAP over exactly the unmapped span, holes included; nothing without a VMA", async () => {
    const { mmId } = await proc();
    const a = await mmap(mmId, 8 * PAGE);
    await touch(mmId, a, 8 * PAGE);
    expect(await events(() => c.addressSpace.munmap({ mmId, addr: a + 3 * PAGE, length: PAGE }))).toEqual([["UNMAP", a + 3 * PAGE, a + 4 * PAGE]]);
    // Unpopulated, with the hole: still one UNMAP for the whole span.
    expect(await events(() => c.addressSpace.munmap({ mmId, addr: a, length: 8 * PAGE }))).toEqual([["UNMAP", a, a + 8 * PAGE]]);
    expect(await events(() => c.addressSpace.munmap({ mmId, addr: a, length: 8 * PAGE }))).toEqual([]);
  });

  it("munmap splitting a THP-backed VMA: the split's 2 MiB CLEAR comes first", async () => {
    const { mmId } = await proc();
    const a = await mmap(mmId, 2 * PMD);
    expect(a % PMD).toBe(0);
    await touch(mmId, a, PAGE); // a THP
    expect(await events(() => c.addressSpace.munmap({ mmId, addr: a + PAGE, length: PAGE }))).toEqual([
      ["CLEAR", a, a + PMD],
      ["UNMAP", a + PAGE, a + 2 * PAGE],
    ]);
  });

  it("exit: RELEASE then UNMAP, both over [0, ULONG_MAX)", async () => {
    const { mmId } = await proc();
    const a = await mmap(mmId, 4 * PAGE);
    await touch(mmId, a, 4 * PAGE);
    expect(await events(() => c.addressSpace.exitMm({ mmId }))).toEqual([
      ["RELEASE", 0, ALL, { whole: true }],
      ["UNMAP", 0, ALL, { whole: true }],
    ]);
  });

  it("MADV_DONTNEED and MADV_FREE: CLEAR per VMA over the advised part", async () => {
    const { mmId } = await proc();
    const a = await mmap(mmId, 8 * PAGE);
    await c.addressSpace.mprotect({ mmId, addr: a + 4 * PAGE, length: 4 * PAGE, prot: 1 });
    await touch(mmId, a, 4 * PAGE);
    expect(await events(() => c.addressSpace.madvise({ mmId, addr: a + 2 * PAGE, length: 4 * PAGE, advice: MADV_DONTNEED }))).toEqual([
      ["CLEAR", a + 2 * PAGE, a + 4 * PAGE],
      ["CLEAR", a + 4 * PAGE, a + 6 * PAGE],
    ]);
    expect(await events(() => c.addressSpace.madvise({ mmId, addr: a, length: 2 * PAGE, advice: MADV_FREE }))).toEqual([["CLEAR", a, a + 2 * PAGE]]);
  });

  it("mprotect: PROTECTION_VMA over the populated range; none for a no-op or an empty page table", async () => {
    const fresh = await proc();
    const b = await mmap(fresh.mmId, 4 * PAGE);
    expect(await events(() => c.addressSpace.mprotect({ mmId: fresh.mmId, addr: b, length: 4 * PAGE, prot: 1 }))).toEqual([]);
    const { mmId } = await proc();
    const a = await mmap(mmId, 8 * PAGE);
    await touch(mmId, a, 8 * PAGE);
    expect(await events(() => c.addressSpace.mprotect({ mmId, addr: a, length: 8 * PAGE, prot: 1 }))).toEqual([["PROTECTION_VMA", a, a + 8 * PAGE]]);
    expect(await events(() => c.addressSpace.mprotect({ mmId, addr: a, length: 8 * PAGE, prot: 1 }))).toEqual([]);
  });

  it("fork: PROTECTION_PAGE over each COW VMA that is copied; a COW write fault: CLEAR of the page", async () => {
    const { mmId } = await proc();
    const untouched = await mmap(mmId, 4 * PAGE, RW);
    const a = await mmap(mmId, 4 * PAGE, RW | 4); // a separate VMA
    await touch(mmId, a, 4 * PAGE);
    let child = 0;
    expect(
      await events(async () => {
        child = (await c.addressSpace.forkMm({ mmId, name: "child" })).childMmId;
      }),
    ).toEqual([["PROTECTION_PAGE", a, a + 4 * PAGE]]);
    void untouched;
    expect(await events(() => touch(mmId, a + PAGE, 4))).toEqual([["CLEAR", a + PAGE, a + 2 * PAGE]]);
    await c.addressSpace.exitMm({ mmId: child });
  });

  it("write fault on the huge zero PMD: CLEAR of the aligned 2 MiB", async () => {
    const { mmId } = await proc();
    const a = await mmap(mmId, 2 * PMD);
    expect(await events(() => c.memory.readMemory({ mmId, addr: a + 5 * PAGE, length: 4 }))).toEqual([]);
    expect(await events(() => touch(mmId, a + 5 * PAGE, 4))).toEqual([["CLEAR", a, a + PMD]]);
  });

  it("OOM reaper: a non-blockable UNMAP per anonymous VMA", async () => {
    const { mmId } = await proc();
    const a = await mmap(mmId, 4 * PAGE);
    const b = await mmap(mmId, 4 * PAGE, RW | 4);
    await touch(mmId, a, 4 * PAGE);
    const [lo, hi] = a < b ? [a, b] : [b, a];
    expect(await events(() => h.notifier.reapMm({ mmId }))).toEqual([
      ["UNMAP", lo, lo + 4 * PAGE, { blockable: false }],
      ["UNMAP", hi, hi + 4 * PAGE, { blockable: false }],
    ]);
  });

  it("device migration: MIGRATE with the pgmap owner, a second MIGRATE from the first empty entry; CPU access: MIGRATE of the page", async () => {
    const { mmId } = await proc();
    const fd = (await h.dmirror.openMirror({ deviceId: dev.deviceId, mmId })).mirrorId;
    const a = await mmap(mmId, 4 * PAGE);
    await touch(mmId, a, 2 * PAGE);
    expect(await events(() => h.dmirror.migrateToDevice({ mirrorId: fd, addr: a, npages: 4, omitData: true }))).toEqual([
      ["MIGRATE", a, a + 4 * PAGE, { owner: dev.owner }],
      ["MIGRATE", a + 2 * PAGE, a + 4 * PAGE, { owner: dev.owner }],
    ]);
    // migrate_to_ram of the faulting page (dmirror_devmem_fault).
    expect(await events(() => c.memory.readMemory({ mmId, addr: a + PAGE, length: 4 }))).toEqual([["MIGRATE", a + PAGE, a + 2 * PAGE, { owner: dev.owner }]]);
    await h.dmirror.closeMirror({ mirrorId: fd });
  });

  it("make_device_exclusive: EXCLUSIVE with the caller's owner; the CPU access that restores it: CLEAR with no owner", async () => {
    const { mmId } = await proc();
    const a = await mmap(mmId, 4 * PAGE);
    await touch(mmId, a, 4 * PAGE);
    let pfn = 0;
    expect(
      await events(async () => {
        const r = await h.hmm.makeDeviceExclusive({ mmId, addr: a + 2 * PAGE + 100, owner: 0x5eed });
        expect(r.errnoValue).toBe(0);
        pfn = r.pfn;
      }),
    ).toEqual([["EXCLUSIVE", a + 2 * PAGE, a + 3 * PAGE, { owner: 0x5eed }]]);
    expect(pfn).toBeGreaterThan(0);
    expect(await events(() => c.memory.readMemory({ mmId, addr: a + 2 * PAGE, length: 4 }))).toEqual([["CLEAR", a + 2 * PAGE, a + 3 * PAGE]]);
  });

  it("faults that only fill empty entries (hmm_range_fault, CPU) notify nothing", async () => {
    const { mmId, notifierId } = await proc();
    const a = await mmap(mmId, 8 * PAGE);
    const { seq } = await h.notifier.readBegin({ notifierId });
    expect(
      await events(async () => {
        const r = await h.hmm.hmmRangeFault({ notifierId, notifierSeq: seq, start: a, end: a + 8 * PAGE, defaultFlags: 0xc000_0000 /* REQ_FAULT | REQ_WRITE */, pfnFlagsMask: 0, hmmPfns: Buffer.alloc(0), devPrivateOwner: 0, output: 0 });
        expect(r.errnoValue).toBe(0);
      }),
    ).toEqual([]);
    expect(await events(() => touch(mmId, a, PAGE))).toEqual([]);
  });

  it("file truncation: CLEAR over the mapped part beyond the new size", async () => {
    const { mmId } = await proc();
    const { fileId } = await c.addressSpace.createFile({ name: "f", sizeBytes: 8 * PAGE, kind: FileKind.FILE_KIND_SHMEM, hugePageSize: 0, pgmapId: 0 });
    const a = await mmap(mmId, 8 * PAGE, RW, MAP_SHARED, fileId);
    await touch(mmId, a, 8 * PAGE);
    expect(await events(() => c.addressSpace.resizeFile({ fileId, sizeBytes: 3 * PAGE }))).toEqual([["CLEAR", a + 3 * PAGE, a + 8 * PAGE]]);
    await c.addressSpace.closeFile({ fileId });
  });

  it("one invalidation hitting three notifiers of one client is one message; another client gets its own", async () => {
    const mmId = (await c.addressSpace.createMm({ name: "p" })).mmId;
    const a = await mmap(mmId, 16 * PAGE);
    await touch(mmId, a, 16 * PAGE);
    const one = await subscribe(t, sid, "three-notifiers");
    const two = await subscribe(t, sid, "one-notifier");
    const ids: number[] = [];
    for (const off of [0, 4, 8]) ids.push((await h.notifier.insertIntervalNotifier({ mirrorId: one.mirrorId, mmId, start: a + off * PAGE, length: 4 * PAGE })).notifierId);
    const other = (await h.notifier.insertIntervalNotifier({ mirrorId: two.mirrorId, mmId, start: a, length: 16 * PAGE })).notifierId;
    await c.addressSpace.madvise({ mmId, addr: a, length: 16 * PAGE, advice: MADV_DONTNEED });
    expect(one.invalidations).toHaveLength(1);
    expect(one.batches).toBe(1);
    expect(one.invalidations[0]).toMatchObject({ event: MmuNotifyEvent.MMU_NOTIFY_EVENT_CLEAR, start: a, end: a + 16 * PAGE, mmId });
    expect([...one.invalidations[0]!.notifierIds].sort((x, y) => x - y)).toEqual(ids);
    expect(two.invalidations.map((i) => i.notifierIds)).toEqual([[other]]);
    // A range hitting only the middle notifier: one message naming it.
    await c.addressSpace.madvise({ mmId, addr: a + 5 * PAGE, length: PAGE, advice: MADV_DONTNEED });
    expect(one.invalidations.slice(1).map((i) => i.notifierIds)).toEqual([[ids[1]]]);
    one.end();
    two.end();
    await c.addressSpace.exitMm({ mmId });
  });
});
