/**
 * The address-space model over loopback gRPC: COW across fork with data,
 * zero page and THP behaviour, vmf_insert_pfn_range layouts, errnos of the
 * spec. CheckInvariants runs after every test (test/setup/invariants.ts).
 */
import { status } from "@grpc/grpc-js";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { DeviceMapping, FileKind } from "../../src/gen/mmsim/v1/address_space.js";
import { PageTableLevel, Signal } from "../../src/gen/mmsim/v1/common.js";
import { InsertMode } from "../../src/gen/mmsim/v1/device.js";
import { FaultAccess } from "../../src/gen/mmsim/v1/fault.js";
import { PageTableEntryKind } from "../../src/gen/mmsim/v1/inspect.js";
import { ThpEnabled } from "../../src/gen/mmsim/v1/system.js";
import { startDaemon, type Clients, type TestDaemon } from "../helpers/daemon.js";
import { expectErrno } from "../helpers/errors.js";

const MAP_SHARED = 0x1;
const MAP_PRIVATE = 0x2;
const MAP_FIXED = 0x10;
const MAP_ANONYMOUS = 0x20;
const MAP_HUGETLB = 0x40000;
const MAP_HUGE_1GB = 30 << 26;
const RW = 3;
const KiB = 1024;
const MiB = 2 ** 20;
const GiB = 2 ** 30;
const MADV_DONTNEED = 4;
const PTE = PageTableLevel.PAGE_TABLE_LEVEL_PTE;
const PMD = PageTableLevel.PAGE_TABLE_LEVEL_PMD;
const PUD = PageTableLevel.PAGE_TABLE_LEVEL_PUD;

let t: TestDaemon;
let c: Clients;

beforeAll(async () => {
  t = await startDaemon({ ramBytes: 4 * GiB });
  const sid = await t.newSession("address-space");
  c = t.withSession(sid);
});
afterAll(async () => {
  await t.stop();
});

async function newMm(name = "proc"): Promise<number> {
  return (await c.addressSpace.createMm({ name })).mmId;
}

async function anon(mmId: number, length: number, flags = 0, prot = RW): Promise<number> {
  return (await c.addressSpace.mmap({ mmId, addr: 0, length, prot, flags: MAP_PRIVATE | MAP_ANONYMOUS | flags, fileId: 0, offset: 0 })).addr;
}

async function walk(mmId: number, start: number, end: number) {
  return (await t.clients.inspect.walkPageTable({ mmId, start, end, maxRuns: 0 })).runs;
}

describe("COW across fork", () => {
  it("the child sees the parent's bytes; a write by either side copies one page and leaves the other intact", async () => {
    await c.system.setTunables({ thpEnabled: ThpEnabled.THP_ENABLED_NEVER });
    const parent = await newMm("parent");
    const a = await anon(parent, 16 * 4096);
    await c.memory.writeMemory({ mmId: parent, addr: a, data: Buffer.from("parent data, page 0") });
    await c.memory.writeMemory({ mmId: parent, addr: a + 4096, data: Buffer.from("parent data, page 1") });
    const before = (await walk(parent, a, a + 4096))[0]!;
    expect(before).toMatchObject({ level: PTE, write: true, anonExclusive: true });

    const { childMmId: child } = await c.addressSpace.forkMm({ mmId: parent, name: "child" });
    // Shared read-only, AnonExclusive cleared, refcount 2, mapcount 2.
    const shared = await t.clients.inspect.getFolio({ pfn: before.pfn });
    expect(shared).toMatchObject({ refcount: 2, mapcount: 2, anonExclusive: false });
    expect((await walk(parent, a, a + 4096))[0]).toMatchObject({ write: false, pfn: before.pfn });
    expect((await walk(child, a, a + 4096))[0]).toMatchObject({ write: false, pfn: before.pfn });
    expect((await c.memory.readMemory({ mmId: child, addr: a, length: 19 })).data.toString()).toBe("parent data, page 0");

    // The child writes page 0: it gets a copy with the old bytes plus its own.
    await c.memory.writeMemory({ mmId: child, addr: a + 7, data: Buffer.from("CHILD") });
    const childPte = (await walk(child, a, a + 4096))[0]!;
    expect(childPte.pfn).not.toBe(before.pfn);
    expect(childPte).toMatchObject({ write: true, anonExclusive: true });
    expect((await c.memory.readMemory({ mmId: child, addr: a, length: 19 })).data.toString()).toBe("parent CHILD page 0");
    expect((await c.memory.readMemory({ mmId: parent, addr: a, length: 19 })).data.toString()).toBe("parent data, page 0");
    expect(await t.clients.inspect.getFolio({ pfn: before.pfn })).toMatchObject({ refcount: 1, mapcount: 1 });

    // The parent's write to page 0 now reuses its page (sole reference): no copy.
    const cow = (await t.clients.inspect.getVmstat({})).counters["mmsim_cow_faults"]!;
    await c.memory.writeMemory({ mmId: parent, addr: a, data: Buffer.from("P") });
    expect((await walk(parent, a, a + 4096))[0]).toMatchObject({ pfn: before.pfn, write: true, anonExclusive: true });
    expect((await t.clients.inspect.getVmstat({})).counters["mmsim_cow_faults"]).toBe(cow);

    // Page 1 is still shared; the parent's write copies it, the child keeps the original.
    const p1 = (await walk(parent, a + 4096, a + 8192))[0]!;
    await c.memory.writeMemory({ mmId: parent, addr: a + 4096, data: Buffer.from("X") });
    expect((await walk(parent, a + 4096, a + 8192))[0]!.pfn).not.toBe(p1.pfn);
    expect((await walk(child, a + 4096, a + 8192))[0]!.pfn).toBe(p1.pfn);
    expect((await c.memory.readMemory({ mmId: child, addr: a + 4096, length: 19 })).data.toString()).toBe("parent data, page 1");
    expect((await c.memory.readMemory({ mmId: parent, addr: a + 4096, length: 19 })).data.toString()).toBe("Xarent data, page 1");

    await c.addressSpace.exitMm({ mmId: child });
    await c.addressSpace.exitMm({ mmId: parent });
    await c.system.setTunables({ thpEnabled: ThpEnabled.THP_ENABLED_ALWAYS });
  });

  it("shared anonymous memory (shmem) stays shared across fork: writes are seen by both", async () => {
    const parent = await newMm("parent");
    const { addr: a } = await c.addressSpace.mmap({ mmId: parent, addr: 0, length: 8192, prot: RW, flags: MAP_SHARED | MAP_ANONYMOUS, fileId: 0, offset: 0 });
    await c.memory.writeMemory({ mmId: parent, addr: a, data: Buffer.from("before") });
    const { childMmId: child } = await c.addressSpace.forkMm({ mmId: parent, name: "child" });
    await c.memory.writeMemory({ mmId: child, addr: a, data: Buffer.from("AFTER!") });
    expect((await c.memory.readMemory({ mmId: parent, addr: a, length: 6 })).data.toString()).toBe("AFTER!");
    await c.addressSpace.exitMm({ mmId: child });
    await c.addressSpace.exitMm({ mmId: parent });
  });

  it("a memfd mapped shared by two processes shares its page cache", async () => {
    const p = await newMm("p");
    const q = await newMm("q");
    const { fileId } = await c.addressSpace.createFile({ name: "buf", sizeBytes: 64 * KiB, kind: FileKind.FILE_KIND_SHMEM, hugePageSize: 0, pgmapId: 0 });
    const mp = (await c.addressSpace.mmap({ mmId: p, addr: 0, length: 64 * KiB, prot: RW, flags: MAP_SHARED, fileId, offset: 0 })).addr;
    const mq = (await c.addressSpace.mmap({ mmId: q, addr: 0, length: 32 * KiB, prot: RW, flags: MAP_SHARED, fileId, offset: 32 * KiB })).addr;
    await c.memory.writeMemory({ mmId: p, addr: mp + 32 * KiB + 10, data: Buffer.from("via p") });
    expect((await c.memory.readMemory({ mmId: q, addr: mq + 10, length: 5 })).data.toString()).toBe("via p");
    const pp = (await walk(p, mp + 32 * KiB, mp + 36 * KiB))[0]!;
    const pq = (await walk(q, mq, mq + 4 * KiB))[0]!;
    expect(pq.pfn).toBe(pp.pfn);
    // One page-cache reference plus two mappings.
    expect(await t.clients.inspect.getFolio({ pfn: pp.pfn })).toMatchObject({ refcount: 3, mapcount: 2, fileId, fileIndex: 8 });
    await c.addressSpace.exitMm({ mmId: p });
    await c.addressSpace.exitMm({ mmId: q });
    await c.addressSpace.closeFile({ fileId });
  });
});

describe("zero page and THP", () => {
  it("an anonymous read maps the shared zero page; a write allocates an exclusive page", async () => {
    await c.system.setTunables({ thpEnabled: ThpEnabled.THP_ENABLED_NEVER });
    const mm = await newMm();
    const a = await anon(mm, 4 * 4096);
    const r = await c.fault.handleMmFault({ mmId: mm, addr: a, access: FaultAccess.FAULT_ACCESS_READ, flags: 0 });
    expect(r).toMatchObject({ vmFault: 0, level: PTE, special: true, writable: false, thp: false });
    const zero = await t.clients.inspect.getFolio({ pfn: r.pfn });
    expect(zero.zeroPage).toBe(true);
    const r2 = await c.fault.handleMmFault({ mmId: mm, addr: a + 4096, access: FaultAccess.FAULT_ACCESS_READ, flags: 0 });
    expect(r2.pfn).toBe(r.pfn);
    const w = await c.fault.handleMmFault({ mmId: mm, addr: a, access: FaultAccess.FAULT_ACCESS_WRITE, flags: 0 });
    expect(w).toMatchObject({ level: PTE, special: false, writable: true, cow: true });
    expect(await t.clients.inspect.getFolio({ pfn: w.pfn })).toMatchObject({ anon: true, anonExclusive: true, refcount: 1, mapcount: 1, order: 0 });
    expect((await t.clients.inspect.getFolio({ pfn: r.pfn })).refcount).toBe(zero.refcount);
    await c.addressSpace.exitMm({ mmId: mm });
    await c.system.setTunables({ thpEnabled: ThpEnabled.THP_ENABLED_ALWAYS });
  });

  it("THP: a read maps the huge zero folio, a write replaces it with a 2 MiB folio, smaps counts AnonHugePages", async () => {
    const mm = await newMm();
    const a = await anon(mm, 4 * MiB);
    expect(a % (2 * MiB)).toBe(0);
    const r = await c.fault.handleMmFault({ mmId: mm, addr: a + 12345, access: FaultAccess.FAULT_ACCESS_READ, flags: 0 });
    expect(r).toMatchObject({ level: PMD, thp: true, writable: false });
    expect((await walk(mm, a, a + 2 * MiB))[0]).toMatchObject({ level: PMD, kind: PageTableEntryKind.PAGE_TABLE_ENTRY_KIND_HUGE_ZERO });
    const vm0 = (await t.clients.inspect.getVmstat({})).counters;
    const w = await c.fault.handleMmFault({ mmId: mm, addr: a, access: FaultAccess.FAULT_ACCESS_WRITE, flags: 0 });
    expect(w).toMatchObject({ level: PMD, thp: true, writable: true });
    const f = await t.clients.inspect.getFolio({ pfn: w.pfn });
    expect(f).toMatchObject({ order: 9, refcount: 1, mapcount: 1, entireMapcount: 1, anon: true, large: true });
    const vm1 = (await t.clients.inspect.getVmstat({})).counters;
    expect(vm1["thp_fault_alloc"]! - vm0["thp_fault_alloc"]!).toBe(1);
    expect(vm1["nr_anon_transparent_hugepages"]! - vm0["nr_anon_transparent_hugepages"]!).toBe(1);
    const sm = (await t.clients.inspect.getSmaps({ mmId: mm })).vmas[0]!;
    expect(sm.anonHugePagesKib).toBe(2048);
    expect(sm.rssKib).toBe(2048);

    // Unmapping one page splits the PMD mapping only: the folio stays large.
    await c.addressSpace.munmap({ mmId: mm, addr: a + 4096, length: 4096 });
    const vm2 = (await t.clients.inspect.getVmstat({})).counters;
    expect(vm2["thp_split_pmd"]! - vm1["thp_split_pmd"]!).toBe(1);
    expect(vm2["nr_anon_transparent_hugepages"]! - vm1["nr_anon_transparent_hugepages"]!).toBe(-1);
    expect(await t.clients.inspect.getFolio({ pfn: w.pfn })).toMatchObject({ order: 9, mapcount: 511, refcount: 511, entireMapcount: 0 });
    expect((await t.clients.inspect.getSmaps({ mmId: mm })).vmas[0]!.anonHugePagesKib).toBe(0);
    await c.addressSpace.exitMm({ mmId: mm });
  });

  it("THP policy never and MADV_NOHUGEPAGE fall back to 4 KiB pages", async () => {
    const mm = await newMm();
    const a = await anon(mm, 2 * MiB);
    await c.addressSpace.madvise({ mmId: mm, addr: a, length: 2 * MiB, advice: 15 });
    const w = await c.fault.handleMmFault({ mmId: mm, addr: a, access: FaultAccess.FAULT_ACCESS_WRITE, flags: 0 });
    expect(w).toMatchObject({ level: PTE, thp: false });
    await c.addressSpace.exitMm({ mmId: mm });
  });

  it("hugetlb 1 GiB: one PUD leaf, hugetlb pages outside RSS", async () => {
    const mm = await newMm();
    const a = await anon(mm, GiB, MAP_HUGETLB | MAP_HUGE_1GB);
    expect(a % GiB).toBe(0);
    await c.memory.writeMemory({ mmId: mm, addr: a + GiB - 3, data: Buffer.from("end") });
    const runs = await walk(mm, a, a + GiB);
    expect(runs).toHaveLength(1);
    expect(runs[0]).toMatchObject({ level: PUD, nr: 1, write: true });
    expect(await t.clients.inspect.getFolio({ pfn: runs[0]!.pfn })).toMatchObject({ order: 18, hugetlb: true, refcount: 1 });
    const sm = (await t.clients.inspect.getSmaps({ mmId: mm })).vmas[0]!;
    expect(sm).toMatchObject({ rssKib: 0, privateHugetlbKib: GiB / KiB });
    expect((await c.memory.readMemory({ mmId: mm, addr: a + GiB - 3, length: 3 })).data.toString()).toBe("end");
    await c.addressSpace.exitMm({ mmId: mm });
  });
});

describe("vmf_insert_pfn_range layouts", () => {
  async function deviceMapping(mm: number, length: number, pfnRangeId: number) {
    return (
      await c.addressSpace.mmap({
        mmId: mm,
        addr: 0,
        length,
        prot: RW,
        flags: MAP_SHARED,
        fileId: 0,
        offset: 0,
        device: { kind: DeviceMapping.DEVICE_MAPPING_PFNMAP, pfnRangeId, hugeFault: true },
      })
    ).addr;
  }

  it("1 GiB + 6 MiB + 12 KiB at a 1 GiB-aligned VA and PFN: 1 PUD, 3 PMD and 3 PTE leaves", async () => {
    const mm = await newMm();
    const pages = GiB / 4096 + (6 * MiB) / 4096 + 3;
    const bar = await c.device.registerPfnRange({ name: "bar0", nrPages: pages, alignPages: 0 });
    expect(bar.pfnStart % (GiB / 4096)).toBe(0);
    const va = await deviceMapping(mm, pages * 4096, bar.pfnRangeId);
    expect(va % GiB).toBe(0);
    const vm0 = (await t.clients.inspect.getVmstat({})).counters;
    const r = await c.device.insertPfnRange({ mmId: mm, addr: va, pfn: bar.pfnStart, nrPages: pages, mode: InsertMode.INSERT_MODE_EAGER, write: false });
    expect(r).toMatchObject({ pudLeaves: 1, pmdLeaves: 3, pteLeaves: 3, alreadyPopulated: 0, errnoValue: 0 });
    expect(r.leaves).toEqual([
      { level: PUD, addr: va, pfn: bar.pfnStart, count: 1 },
      { level: PMD, addr: va + GiB, pfn: bar.pfnStart + GiB / 4096, count: 3 },
      { level: PTE, addr: va + GiB + 6 * MiB, pfn: bar.pfnStart + (GiB + 6 * MiB) / 4096, count: 3 },
    ]);
    const runs = await walk(mm, va, va + pages * 4096);
    expect(runs.map((x) => [x.level, x.nr, x.special, x.write])).toEqual([
      [PUD, 1, true, true],
      [PMD, 3, true, true],
      [PTE, 3, true, true],
    ]);
    // Special entries take no references and emit nothing.
    const vm1 = (await t.clients.inspect.getVmstat({})).counters;
    expect(vm1["mmsim_mmu_invalidations"]).toBe(vm0["mmsim_mmu_invalidations"]);
    expect(vm1["mmsim_folio_ref_updates"]).toBe(vm0["mmsim_folio_ref_updates"]);
    // A second insertion is idempotent.
    const again = await c.device.insertPfnRange({ mmId: mm, addr: va, pfn: bar.pfnStart, nrPages: pages, mode: InsertMode.INSERT_MODE_EAGER, write: false });
    expect(again).toMatchObject({ pudLeaves: 0, pmdLeaves: 0, pteLeaves: 0, alreadyPopulated: pages });
    await c.addressSpace.exitMm({ mmId: mm });
    await c.device.unregisterPfnRange({ pfnRangeId: bar.pfnRangeId });
  });

  it("the same range with the PFN off by one page gives only PTE leaves", async () => {
    const mm = await newMm();
    const pages = GiB / 4096 + (6 * MiB) / 4096 + 3;
    const bar = await c.device.registerPfnRange({ name: "bar1", nrPages: pages + 1, alignPages: 0 });
    const va = await deviceMapping(mm, pages * 4096, bar.pfnRangeId);
    const r = await c.device.insertPfnRange({ mmId: mm, addr: va, pfn: bar.pfnStart + 1, nrPages: pages, mode: InsertMode.INSERT_MODE_EAGER, write: false });
    expect(r).toMatchObject({ pudLeaves: 0, pmdLeaves: 0, pteLeaves: pages });
    expect(r.leaves).toEqual([{ level: PTE, addr: va, pfn: bar.pfnStart + 1, count: pages }]);
    await c.addressSpace.exitMm({ mmId: mm });
    await c.device.unregisterPfnRange({ pfnRangeId: bar.pfnRangeId });
  });

  it("fault mode inserts the block holding the address; CPU faults on a bound mapping do the same", async () => {
    const mm = await newMm();
    const bar = await c.device.registerPfnRange({ name: "bar2", nrPages: 4 * 512, alignPages: 512 });
    const va = await deviceMapping(mm, 4 * 2 * MiB, bar.pfnRangeId);
    const r = await c.device.insertPfnRange({ mmId: mm, addr: va + 2 * MiB + 8192, pfn: bar.pfnStart + 512 + 2, nrPages: 1, mode: InsertMode.INSERT_MODE_FAULT, write: false });
    expect(r.leaves).toEqual([{ level: PMD, addr: va + 2 * MiB, pfn: bar.pfnStart + 512, count: 1 }]);
    const f = await c.fault.handleMmFault({ mmId: mm, addr: va + 3 * 2 * MiB + 5, access: FaultAccess.FAULT_ACCESS_READ, flags: 0 });
    expect(f).toMatchObject({ level: PMD, special: true, pfn: bar.pfnStart + 3 * 512 });
    await c.addressSpace.exitMm({ mmId: mm });
    await c.device.unregisterPfnRange({ pfnRangeId: bar.pfnRangeId });
  });

  it("a range beyond the VMA is VM_FAULT_SIGBUS / EFAULT and inserts nothing", async () => {
    const mm = await newMm();
    const bar = await c.device.registerPfnRange({ name: "bar3", nrPages: 16, alignPages: 0 });
    const va = await deviceMapping(mm, 8 * 4096, bar.pfnRangeId);
    const r = await c.device.insertPfnRange({ mmId: mm, addr: va, pfn: bar.pfnStart, nrPages: 9, mode: InsertMode.INSERT_MODE_EAGER, write: false });
    expect(r).toMatchObject({ vmFault: 0x2, errnoValue: 14, pteLeaves: 0 });
    expect(await walk(mm, va, va + 8 * 4096)).toEqual([]);
    await c.addressSpace.exitMm({ mmId: mm });
    await c.device.unregisterPfnRange({ pfnRangeId: bar.pfnRangeId });
  });
});

describe("errnos of the spec", () => {
  it("mmap: length 0 and unaligned MAP_FIXED are EINVAL; MAP_FIXED_NOREPLACE over a mapping is EEXIST", async () => {
    const mm = await newMm();
    await expectErrno(c.addressSpace.mmap({ mmId: mm, addr: 0, length: 0, prot: RW, flags: MAP_PRIVATE | MAP_ANONYMOUS, fileId: 0, offset: 0 }), "EINVAL", status.INVALID_ARGUMENT);
    await expectErrno(c.addressSpace.mmap({ mmId: mm, addr: 0x10001000 + 1, length: 4096, prot: RW, flags: MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED, fileId: 0, offset: 0 }), "EINVAL", status.INVALID_ARGUMENT);
    const a = await anon(mm, 8192);
    await expectErrno(c.addressSpace.mmap({ mmId: mm, addr: a, length: 4096, prot: RW, flags: MAP_PRIVATE | MAP_ANONYMOUS | 0x100000, fileId: 0, offset: 0 }), "EEXIST");
    expect((await t.clients.inspect.getMaps({ mmId: mm })).vmas).toHaveLength(1);
    await c.addressSpace.exitMm({ mmId: mm });
  });

  it("munmap of nothing is 0; mprotect over a hole is ENOMEM and is not rolled back; RO→RW on a shared file mapping", async () => {
    const mm = await newMm();
    await c.addressSpace.munmap({ mmId: mm, addr: 0x20000000, length: 4096 });
    const a = await anon(mm, 4 * 4096);
    await c.addressSpace.munmap({ mmId: mm, addr: a + 4096, length: 4096 });
    await expectErrno(c.addressSpace.mprotect({ mmId: mm, addr: a, length: 4 * 4096, prot: 1 }), "ENOMEM");
    // Not rolled back: the VMA before the hole got the new protection.
    const maps = (await t.clients.inspect.getMaps({ mmId: mm })).vmas;
    expect(maps.map((v) => v.perms)).toEqual(["r--p", "rw-p"]);
    const { fileId } = await c.addressSpace.createFile({ name: "ro", sizeBytes: 4096, kind: FileKind.FILE_KIND_SHMEM, hugePageSize: 0, pgmapId: 0 });
    const s = (await c.addressSpace.mmap({ mmId: mm, addr: 0, length: 4096, prot: 1, flags: MAP_SHARED, fileId, offset: 0 })).addr;
    await c.addressSpace.mprotect({ mmId: mm, addr: s, length: 4096, prot: RW });
    expect((await t.clients.inspect.getMaps({ mmId: mm })).vmas.find((v) => v.start === s)!.perms).toBe("rw-s");
    await c.addressSpace.exitMm({ mmId: mm });
    await c.addressSpace.closeFile({ fileId });
  });

  it("MADV_DONTNEED on a PFNMAP mapping is EINVAL; on anonymous memory it refaults zeros", async () => {
    const mm = await newMm();
    const a = await anon(mm, 4 * 4096);
    await c.memory.writeMemory({ mmId: mm, addr: a, data: Buffer.from("gone") });
    await c.addressSpace.madvise({ mmId: mm, addr: a, length: 4 * 4096, advice: MADV_DONTNEED });
    expect(await walk(mm, a, a + 4 * 4096)).toEqual([]);
    expect((await c.memory.readMemory({ mmId: mm, addr: a, length: 4 })).data).toEqual(Buffer.alloc(4));
    const bar = await c.device.registerPfnRange({ name: "bar4", nrPages: 4, alignPages: 0 });
    const d = (
      await c.addressSpace.mmap({ mmId: mm, addr: 0, length: 4 * 4096, prot: RW, flags: MAP_SHARED, fileId: 0, offset: 0, device: { kind: DeviceMapping.DEVICE_MAPPING_PFNMAP, pfnRangeId: bar.pfnRangeId, hugeFault: false } })
    ).addr;
    await expectErrno(c.addressSpace.madvise({ mmId: mm, addr: d, length: 4096, advice: MADV_DONTNEED }), "EINVAL", status.INVALID_ARGUMENT);
    await c.addressSpace.exitMm({ mmId: mm });
    await c.device.unregisterPfnRange({ pfnRangeId: bar.pfnRangeId });
  });

  it("a write to a read-only mapping is SIGSEGV/SEGV_ACCERR and changes nothing", async () => {
    const mm = await newMm();
    const a = await anon(mm, 4096, 0, 1);
    const w = await c.memory.writeMemory({ mmId: mm, addr: a, data: Buffer.from("x") });
    expect(w).toMatchObject({ bytesDone: 0, signal: Signal.SIGNAL_SIGSEGV, siCode: 2, faultAddr: a });
    expect(await walk(mm, a, a + 4096)).toEqual([]);
    await c.addressSpace.exitMm({ mmId: mm });
  });
});
