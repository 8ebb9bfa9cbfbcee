/**
 * Regressions found by the reliability tests (death at every step, property
 * test), each reduced to the smallest sequence that showed it.
 */
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { MemoryType } from "../../src/gen/mmsim/v1/common.js";
import { type Clients, startDaemon, type TestDaemon } from "../helpers/daemon.js";
import { fillInts, type HmmClients, hmmClients } from "../helpers/hmm.js";

const PAGE = 4096;
const MAP_PRIVATE_ANON = 0x22;
const MAP_FIXED = 0x10;
const RW = 3;
const MADV_DONTNEED = 4;

let t: TestDaemon;
let c: Clients;
let h: HmmClients;
beforeAll(async () => {
  t = await startDaemon({ ramBytes: 256 * 2 ** 20 });
  const sid = await t.newSession("regressions");
  c = t.withSession(sid);
  h = hmmClients(t, sid);
});
afterAll(async () => {
  h.close();
  await t.stop();
});

describe("regressions", () => {
  it("a dmirror invalidation of [start, end) leaves the mirror entry of the page at `end` (dmirror_do_update's end is exclusive)", async () => {
    // Found by reliability-death: a bystander's DONTNEED of the range just
    // below its mirrored data dropped the first mirrored page.
    const mmId = (await c.addressSpace.createMm({ name: "adjacent" })).mmId;
    const base = 0x4000_0000_0000;
    await c.addressSpace.mmap({ mmId, addr: base, length: 8 * PAGE, prot: RW, flags: MAP_PRIVATE_ANON | MAP_FIXED, fileId: 0, offset: 0 });
    await c.memory.writeMemory({ mmId, addr: base, data: fillInts(8 * PAGE, (i) => i) });
    const dev = (await h.dmirror.createDmirrorDevice({ name: "d", memoryType: MemoryType.MEMORY_TYPE_DEVICE_PRIVATE, chunkPages: 64 })).deviceId;
    const dm = (await h.dmirror.openMirror({ deviceId: dev, mmId })).mirrorId;
    expect((await h.dmirror.readMirror({ mirrorId: dm, addr: base + 4 * PAGE, npages: 4 })).cpages).toBe(4);
    expect((await h.dmirror.getMirror({ mirrorId: dm })).entries).toBe(4);
    // Invalidate the 4 pages just below the mirrored ones.
    await c.addressSpace.madvise({ mmId, addr: base, length: 4 * PAGE, advice: MADV_DONTNEED });
    expect((await h.dmirror.getMirror({ mirrorId: dm })).entries).toBe(4);
    // The mirrored pages themselves: invalidating one page drops exactly that entry.
    await c.addressSpace.madvise({ mmId, addr: base + 5 * PAGE, length: PAGE, advice: MADV_DONTNEED });
    expect((await h.dmirror.getMirror({ mirrorId: dm })).entries).toBe(3);
    await h.dmirror.closeMirror({ mirrorId: dm });
    await h.dmirror.destroyDmirrorDevice({ deviceId: dev });
    await c.addressSpace.exitMm({ mmId });
  });

  it("ListPins marks FOLL_GET references to the zero page as a zero-page run (count references to one PFN)", async () => {
    // Found by the property test: get_user_pages over never-written memory
    // took references to the zero page; ListPins reported them as a run
    // "pfn 0, count 64" without zero_page, i.e. as if PFNs 0..63.
    const mmId = (await c.addressSpace.createMm({ name: "zero-get" })).mmId;
    const { addr } = await c.addressSpace.mmap({ mmId, addr: 0, length: 8 * PAGE, prot: RW, flags: MAP_PRIVATE_ANON, fileId: 0, offset: 0 });
    await c.fault.handleMmFault({ mmId, addr: addr + PAGE, access: 1, flags: 0 });
    const r = await c.gup.pinUserPages({ variant: 5 /* GET_USER_PAGES */, mmId, start: addr, nrPages: 8, gupFlags: 0, output: 2 /* PAGE_ARRAY */, wantFolioRuns: false });
    expect(r.ret).toBe(8);
    expect(new Set(r.pages).size).toBe(1); // all the zero page
    const zero = r.pages[0]!;
    const h = (await c.gup.listPins({ sessionId: 0, includeRuns: true })).handles.find((x) => x.handle === r.handle)!;
    // Every run is on the zero page and says so; expanded, the runs are pages[].
    expect(h.runs.every((x) => x.pfn === zero && x.zeroPage && !x.pin)).toBe(true);
    const runs = [...h.runs].sort((a, b) => a.index - b.index);
    expect(runs.flatMap((x) => Array.from({ length: x.count }, (_, i) => (x.zeroPage ? x.pfn : x.pfn + i)))).toEqual(r.pages);
    await c.gup.unpinHandle({ handle: r.handle, makeDirty: false });
    await c.addressSpace.exitMm({ mmId });
  });

  it("pins taken and released leave the state digest as it was (nr_foll_pin_* count events)", async () => {
    // Found by reliability-death: the digest hashed nr_foll_pin_acquired and
    // _released, so a session that pinned and ended never compared equal.
    const d0 = await c.admin.getStateDigest({});
    const mmId = (await c.addressSpace.createMm({ name: "pins" })).mmId;
    const { addr } = await c.addressSpace.mmap({ mmId, addr: 0, length: 16 * PAGE, prot: RW, flags: MAP_PRIVATE_ANON, fileId: 0, offset: 0 });
    await c.memory.writeMemory({ mmId, addr, data: Buffer.alloc(16 * PAGE, 1) });
    const p = await c.gup.pinUserPages({ variant: 1, mmId, start: addr, nrPages: 16, gupFlags: 0x101, output: 1, wantFolioRuns: false });
    expect(p.ret).toBe(16);
    expect((await c.admin.getStateDigest({})).digest).not.toBe(d0.digest);
    await c.gup.unpinHandle({ handle: p.handle, makeDirty: false });
    await c.addressSpace.exitMm({ mmId });
    const st = await c.gup.getPinStats({ sessionId: 0 });
    expect(st.nrFollPinAcquired).toBe(st.nrFollPinReleased);
    expect(st.nrFollPinAcquired).toBeGreaterThanOrEqual(16);
    expect((await c.admin.getStateDigest({})).digest).toBe(d0.digest);
  });
});
