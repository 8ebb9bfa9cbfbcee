/**
 * tools/testing/selftests/mm/hmm-tests.c, ported case by case to the
 * daemon's dmirror devices over loopback gRPC (peer-tests.md §2). Each
 * kernel TEST_F is one test with the same name and expectations, in both
 * fixture variants (hmm_device_private: devices 0/1 private; and
 * hmm_device_coherent: devices 2/3 coherent, which the daemon can always
 * create). A "process" is an mm; fork is ForkMm, exit/kill is ExitMm;
 * the test's `buffer->mirror` is a local buffer; CPU accesses go through
 * MemoryService. Every test ends with CheckInvariants (which includes the
 * N5 coherence of every mirror).
 *
 * Not ported: migrate_remap_fault (needs mremap, which the model does not
 * have). hmm_gup_test drives GupService as the gup_test ioctls do.
 */
import { type ServiceError } from "@grpc/grpc-js";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { FileKind } from "../../src/gen/mmsim/v1/address_space.js";
import { MemoryType } from "../../src/gen/mmsim/v1/common.js";
import { GupOutput, GupVariant } from "../../src/gen/mmsim/v1/gup.js";
import { type Clients, startDaemon, type TestDaemon } from "../helpers/daemon.js";
import { fillInts, firstMismatch, type HmmClients, hmmClients, ints } from "../helpers/hmm.js";

const PAGE = 4096;
const NPAGES = 1024; // HMM_BUFFER_SIZE >> page_shift
const HMM_BUFFER_SIZE = NPAGES * PAGE;
const TWOMEG = 2 * 2 ** 20;
const ONEMEG = 2 ** 20;
const PROT_NONE = 0;
const PROT_READ = 1;
const PROT_WRITE = 2;
const MAP_SHARED = 0x1;
const MAP_PRIVATE = 0x2;
const MAP_ANONYMOUS = 0x20;
const MAP_HUGETLB = 0x40000;
const MADV_FREE = 8;
const MADV_HUGEPAGE = 14;
const MADV_NOHUGEPAGE = 15;
const EPERM = 1;
const ENOENT = 2;
const EFAULT = 14;
const EINVAL = 22;
const HMM_DMIRROR_FLAG_FAIL_ALLOC = 1;
const PROT = {
  ERROR: 0xff,
  NONE: 0x00,
  READ: 0x01,
  WRITE: 0x02,
  PMD: 0x04,
  ZERO: 0x10,
  DEV_PRIVATE_LOCAL: 0x20,
  DEV_COHERENT_LOCAL: 0x40,
  DEV_COHERENT_REMOTE: 0x50,
};

type Cmd = "read" | "write" | "migrate_to_dev" | "migrate_to_sys" | "snapshot" | "exclusive" | "check_exclusive" | "release";

interface CmdResult {
  ret: number;
  cpages: number;
  faults: number;
  data: Buffer;
}

interface Variant {
  name: "hmm_device_private" | "hmm_device_coherent";
  memoryType: MemoryType;
  coherent: boolean;
}

const VARIANTS: Variant[] = [
  { name: "hmm_device_private", memoryType: MemoryType.MEMORY_TYPE_DEVICE_PRIVATE, coherent: false },
  { name: "hmm_device_coherent", memoryType: MemoryType.MEMORY_TYPE_DEVICE_COHERENT, coherent: true },
];

for (const variant of VARIANTS) {
  describe(`hmm-tests, ${variant.name}`, () => {
    let t: TestDaemon;
    let c: Clients;
    let h: HmmClients;
    let devices: number[];

    beforeAll(async () => {
      t = await startDaemon({ ramBytes: 2 * 2 ** 30 });
      const sid = await t.newSession(variant.name);
      c = t.withSession(sid);
      h = hmmClients(t, sid);
      devices = [];
      for (let i = 0; i < 2; i++) devices.push((await h.dmirror.createDmirrorDevice({ name: `hmm_dmirror${variant.coherent ? i + 2 : i}`, memoryType: variant.memoryType, chunkPages: 0 })).deviceId);
    });
    afterAll(async () => {
      h.close();
      await t.stop();
    });

    // ------------------------------------------------------------ helpers

    /** A process: an mm with `ndev` open device files (fds). */
    interface Proc {
      mm: number;
      fds: number[];
      fd: number;
      fd0: number;
      fd1: number;
    }

    const newProc = async (ndev = 1): Promise<Proc> => {
      const mm = (await c.addressSpace.createMm({ name: "hmm-tests" })).mmId;
      const fds: number[] = [];
      for (let i = 0; i < ndev; i++) fds.push((await h.dmirror.openMirror({ deviceId: devices[i]!, mmId: mm })).mirrorId);
      return { mm, fds, fd: fds[0]!, fd0: fds[0]!, fd1: fds[1] ?? 0 };
    };

    const endProc = async (p: Proc): Promise<void> => {
      await t.checkInvariants();
      for (const fd of p.fds) await h.dmirror.closeMirror({ mirrorId: fd });
      await c.addressSpace.exitMm({ mmId: p.mm });
      await t.checkInvariants();
    };

    /** TEST_F(hmm, name) / TEST_F(hmm2, name): the fixture around the body. */
    const testF = (name: string, body: (p: Proc) => Promise<void>, ndev = 1, timeout?: number) =>
      it(
        name,
        async () => {
          const p = await newProc(ndev);
          try {
            await body(p);
          } finally {
            await endProc(p);
          }
        },
        timeout,
      );

    const errnoOf = (e: unknown): number => {
      const v = (e as ServiceError).metadata?.get("mmsim-errno")[0];
      if (v === undefined) throw e;
      return Number(v);
    };

    /** hmm_dmirror_cmd: the ioctl, -errno on failure. */
    const cmd = async (fd: number, what: Cmd, addr: number, npages: number, data?: Buffer): Promise<CmdResult> => {
      const none = Buffer.alloc(0);
      try {
        switch (what) {
          case "read": {
            const r = await h.dmirror.readMirror({ mirrorId: fd, addr, npages });
            return { ret: 0, cpages: r.cpages, faults: r.faults, data: r.data };
          }
          case "write": {
            const r = await h.dmirror.writeMirror({ mirrorId: fd, addr, npages, data: data ?? none });
            return { ret: 0, cpages: r.cpages, faults: r.faults, data: none };
          }
          case "migrate_to_dev": {
            const r = await h.dmirror.migrateToDevice({ mirrorId: fd, addr, npages, omitData: false });
            return { ret: 0, cpages: r.cpages, faults: 0, data: r.data };
          }
          case "migrate_to_sys": {
            const r = await h.dmirror.migrateToSystem({ mirrorId: fd, addr, npages });
            return { ret: 0, cpages: r.cpages, faults: 0, data: none };
          }
          case "snapshot": {
            const r = await h.dmirror.snapshotMirror({ mirrorId: fd, addr, npages });
            return { ret: 0, cpages: r.cpages, faults: 0, data: r.perms };
          }
          case "exclusive": {
            const r = await h.dmirror.makeExclusive({ mirrorId: fd, addr, npages });
            return { ret: 0, cpages: r.cpages, faults: 0, data: r.data };
          }
          case "check_exclusive":
            await h.dmirror.checkExclusive({ mirrorId: fd, addr, npages });
            return { ret: 0, cpages: 0, faults: 0, data: none };
          case "release":
            await h.dmirror.releaseDeviceMemory({ mirrorId: fd });
            return { ret: 0, cpages: 0, faults: 0, data: none };
        }
      } catch (e) {
        return { ret: -errnoOf(e), cpages: 0, faults: 0, data: none };
      }
    };

    const setFlags = (fd: number, flags: number) => h.dmirror.setMirrorFlags({ mirrorId: fd, flags });

    const mmap = async (mm: number, length: number, prot: number, flags: number, fileId = 0): Promise<number> =>
      (await c.addressSpace.mmap({ mmId: mm, addr: 0, length, prot, flags, fileId, offset: 0 })).addr;
    const munmap = (mm: number, addr: number, length: number) => c.addressSpace.munmap({ mmId: mm, addr, length });
    const mprotect = (mm: number, addr: number, length: number, prot: number) => c.addressSpace.mprotect({ mmId: mm, addr, length, prot });
    const madvise = (mm: number, addr: number, length: number, advice: number) => c.addressSpace.madvise({ mmId: mm, addr, length, advice });
    const fork = async (mm: number): Promise<number> => (await c.addressSpace.forkMm({ mmId: mm, name: "child" })).childMmId;
    const exit = (mm: number) => c.addressSpace.exitMm({ mmId: mm });

    /** CPU stores (1 MiB per call). */
    const cpuWrite = async (mm: number, addr: number, data: Buffer): Promise<void> => {
      for (let o = 0; o < data.length; o += ONEMEG) {
        const part = data.subarray(o, Math.min(data.length, o + ONEMEG));
        const r = await c.memory.writeMemory({ mmId: mm, addr: addr + o, data: part });
        expect({ signal: r.signal, bytesDone: r.bytesDone }).toEqual({ signal: 0, bytesDone: part.length });
      }
    };
    /** CPU loads (1 MiB per call). */
    const cpuRead = async (mm: number, addr: number, len: number): Promise<Buffer> => {
      const parts: Buffer[] = [];
      for (let o = 0; o < len; o += ONEMEG) {
        const n = Math.min(ONEMEG, len - o);
        const r = await c.memory.readMemory({ mmId: mm, addr: addr + o, length: n });
        expect({ signal: r.signal, bytesDone: r.bytesDone }).toEqual({ signal: 0, bytesDone: n });
        parts.push(r.data);
      }
      return Buffer.concat(parts);
    };
    const cpuReadInt = async (mm: number, addr: number): Promise<number> => (await cpuRead(mm, addr, 4)).readInt32LE(0);
    /** "for each int: ASSERT_EQ(ptr[i], f(i))" */
    const expectInts = (b: Uint8Array, f: (i: number) => number, what = "ints") => expect(firstMismatch(b, f), what).toBe(-1);
    const expectCpuInts = async (mm: number, addr: number, len: number, f: (i: number) => number) => expectInts(await cpuRead(mm, addr, len), f, "CPU view");
    const ident = (i: number) => i;
    const neg = (i: number) => -i;

    /** THP setup: mmap 2 * size, align up to the PMD, madvise the window (returns both). */
    const thpBuffer = async (mm: number, size: number, prot: number, advice = MADV_HUGEPAGE): Promise<{ ptr: number; map: number }> => {
      const ptr = await mmap(mm, 2 * size, prot, MAP_PRIVATE | MAP_ANONYMOUS);
      const map = Math.ceil(ptr / size) * size;
      await madvise(mm, map, size, advice);
      return { ptr, map };
    };
    const thpWindow = async (mm: number, size: number, prot: number, advice = MADV_HUGEPAGE): Promise<number> => (await thpBuffer(mm, size, prot, advice)).map;

    /** hmm_create_file + pwrite: a file of `size` bytes holding `data`. */
    const createFile = async (mm: number, size: number, data?: Buffer): Promise<number> => {
      const { fileId } = await c.addressSpace.createFile({ name: "hmm-test-tmpfile", sizeBytes: size, kind: FileKind.FILE_KIND_DIRTY_TRACKED, hugePageSize: 0, pgmapId: 0 });
      if (data !== undefined) {
        const a = await mmap(mm, size, PROT_READ | PROT_WRITE, MAP_SHARED, fileId);
        await cpuWrite(mm, a, data);
        await munmap(mm, a, size);
      }
      return fileId;
    };
    /** pread of the whole file. */
    const pread = async (mm: number, fileId: number, size: number): Promise<Buffer> => {
      const a = await mmap(mm, size, PROT_READ, MAP_SHARED, fileId);
      const b = await cpuRead(mm, a, size);
      await munmap(mm, a, size);
      return b;
    };

    // -------------------------------------------------------------- tests

    testF("open_close", async () => {
      // Fixture setup and teardown only: open succeeds, close returns 0.
    });

    testF("anon_read", async (p) => {
      const size = HMM_BUFFER_SIZE;
      const ptr = await mmap(p.mm, size, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS);
      // Initialize buffer in system memory but leave the first two pages zero.
      await cpuWrite(p.mm, ptr + 2 * PAGE, fillInts(size - 2 * PAGE, (i) => i + 2 * (PAGE / 4)));
      await mprotect(p.mm, ptr, size, PROT_READ);
      // Page 1 becomes the zero page; page 0 stays pte_none.
      expect(await cpuReadInt(p.mm, ptr + PAGE)).toBe(0);
      const r = await cmd(p.fd, "read", ptr, NPAGES);
      expect(r).toMatchObject({ ret: 0, cpages: NPAGES, faults: 1 });
      expectInts(r.data, (i) => (i < (2 * PAGE) / 4 ? 0 : i));
    });

    testF("anon_read_prot", async (p) => {
      const size = HMM_BUFFER_SIZE;
      const ptr = await mmap(p.mm, size, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS);
      await cpuWrite(p.mm, ptr, fillInts(size, ident));
      const mirror = fillInts(size, neg);
      await mprotect(p.mm, ptr, size, PROT_NONE);
      const r = await cmd(p.fd, "read", ptr, NPAGES);
      expect(r.ret).toBe(-EFAULT);
      await mprotect(p.mm, ptr, size, PROT_READ);
      await expectCpuInts(p.mm, ptr, size, ident);
      // Nothing was copied to the device buffer.
      expectInts(mirror, neg);
    });

    testF("anon_write", async (p) => {
      const size = HMM_BUFFER_SIZE;
      const ptr = await mmap(p.mm, size, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS);
      const r = await cmd(p.fd, "write", ptr, NPAGES, fillInts(size, ident));
      expect(r).toMatchObject({ ret: 0, cpages: NPAGES, faults: 1 });
      await expectCpuInts(p.mm, ptr, size, ident);
    });

    testF("anon_write_prot", async (p) => {
      const size = HMM_BUFFER_SIZE;
      const ptr = await mmap(p.mm, size, PROT_READ, MAP_PRIVATE | MAP_ANONYMOUS);
      // Simulate a device reading a zero page of memory.
      let r = await cmd(p.fd, "read", ptr, 1);
      expect(r).toMatchObject({ ret: 0, cpages: 1, faults: 1 });
      expect(ints(r.data)[0]).toBe(0);
      r = await cmd(p.fd, "write", ptr, NPAGES, fillInts(size, ident));
      expect(r.ret).toBe(-EPERM);
      await expectCpuInts(p.mm, ptr, size, () => 0);
      // Now allow writing and see that the zero page is replaced.
      await mprotect(p.mm, ptr, size, PROT_WRITE | PROT_READ);
      r = await cmd(p.fd, "write", ptr, NPAGES, fillInts(size, ident));
      expect(r).toMatchObject({ ret: 0, cpages: NPAGES, faults: 1 });
      await expectCpuInts(p.mm, ptr, size, ident);
    });

    testF("anon_write_child", async (p) => {
      for (const migrate of [false, true]) {
        for (const useThp of [false, true]) {
          const npages = useThp ? TWOMEG / PAGE : NPAGES;
          const size = npages * PAGE;
          const old = await mmap(p.mm, 2 * size, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS);
          let ptr = old;
          if (useThp) {
            ptr = Math.ceil(old / size) * size;
            await madvise(p.mm, ptr, size, MADV_HUGEPAGE);
          }
          await cpuWrite(p.mm, ptr, fillInts(size, ident));
          const mirror = fillInts(size, neg);
          if (migrate) {
            const r = await cmd(p.fd, "migrate_to_dev", ptr, npages);
            expect(r).toMatchObject({ ret: 0, cpages: npages });
          }
          const child = await fork(p.mm);
          {
            // The child: check that it sees what the parent wrote.
            await expectCpuInts(child, ptr, size, ident);
            if (!migrate) expectInts(mirror, neg);
            const childFd = (await h.dmirror.openMirror({ deviceId: devices[0]!, mmId: child })).mirrorId;
            const r = await cmd(childFd, "write", ptr, npages, mirror);
            expect(r).toMatchObject({ ret: 0, cpages: npages, faults: 1 });
            if (!migrate) await expectCpuInts(child, ptr, size, neg);
            await h.dmirror.closeMirror({ mirrorId: childFd });
            await exit(child); // _exit(0); the parent's waitpid sees WIFEXITED
          }
          // The parent is not affected by the child's writes (COW).
          await expectCpuInts(p.mm, ptr, size, ident);
          await munmap(p.mm, old, 2 * size);
          await t.checkInvariants();
        }
      }
    });

    testF("anon_write_child_shared", async (p) => {
      const size = HMM_BUFFER_SIZE;
      const ptr = await mmap(p.mm, size, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS);
      await cpuWrite(p.mm, ptr, fillInts(size, ident));
      const mirror = fillInts(size, neg);
      const child = await fork(p.mm);
      await expectCpuInts(child, ptr, size, ident);
      expectInts(mirror, neg);
      const childFd = (await h.dmirror.openMirror({ deviceId: devices[0]!, mmId: child })).mirrorId;
      const r = await cmd(childFd, "write", ptr, NPAGES, mirror);
      expect(r).toMatchObject({ ret: 0, cpages: NPAGES, faults: 1 });
      await expectCpuInts(child, ptr, size, neg);
      await h.dmirror.closeMirror({ mirrorId: childFd });
      await exit(child);
      // Shared memory: the parent sees the child's device writes.
      await expectCpuInts(p.mm, ptr, size, neg);
    });

    testF("anon_write_huge", async (p) => {
      const size = TWOMEG;
      const npages = size / PAGE;
      const ptr = await thpWindow(p.mm, size, PROT_READ | PROT_WRITE);
      const r = await cmd(p.fd, "write", ptr, npages, fillInts(size, ident));
      expect(r).toMatchObject({ ret: 0, cpages: npages, faults: 1 });
      await expectCpuInts(p.mm, ptr, size, ident);
    });

    testF("anon_write_hugetlbfs", async (p) => {
      const size = TWOMEG; // ALIGN(TWOMEG, default_hsize) with 2 MiB huge pages
      const npages = size / PAGE;
      const ptr = await mmap(p.mm, size, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_HUGETLB);
      const r = await cmd(p.fd, "write", ptr, npages, fillInts(size, ident));
      expect(r).toMatchObject({ ret: 0, cpages: npages, faults: 1 });
      await expectCpuInts(p.mm, ptr, size, ident);
    });

    testF("file_read", async (p) => {
      const size = HMM_BUFFER_SIZE;
      const file = await createFile(p.mm, size, fillInts(size, ident));
      const ptr = await mmap(p.mm, size, PROT_READ, MAP_SHARED, file);
      const r = await cmd(p.fd, "read", ptr, NPAGES);
      expect(r).toMatchObject({ ret: 0, cpages: NPAGES, faults: 1 });
      expectInts(r.data, ident);
      await c.addressSpace.closeFile({ fileId: file });
    });

    testF("file_write", async (p) => {
      const size = HMM_BUFFER_SIZE;
      const file = await createFile(p.mm, size);
      const ptr = await mmap(p.mm, size, PROT_READ | PROT_WRITE, MAP_SHARED, file);
      const r = await cmd(p.fd, "write", ptr, NPAGES, fillInts(size, ident));
      expect(r).toMatchObject({ ret: 0, cpages: NPAGES, faults: 1 });
      await expectCpuInts(p.mm, ptr, size, ident);
      expectInts(await pread(p.mm, file, size), ident);
      await c.addressSpace.closeFile({ fileId: file });
    });

    testF("migrate", async (p) => {
      const size = HMM_BUFFER_SIZE;
      const ptr = await mmap(p.mm, size, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS);
      await cpuWrite(p.mm, ptr, fillInts(size, ident));
      const r = await cmd(p.fd, "migrate_to_dev", ptr, NPAGES);
      expect(r).toMatchObject({ ret: 0, cpages: NPAGES });
      expectInts(r.data, ident);
    });

    testF("migrate_file_private", async (p) => {
      const size = HMM_BUFFER_SIZE;
      const file = await createFile(p.mm, size);
      const ptr = await mmap(p.mm, size, PROT_READ | PROT_WRITE, MAP_PRIVATE, file);
      // Private writes make anonymous COW copies of the file's pages.
      await cpuWrite(p.mm, ptr, fillInts(size, ident));
      const r = await cmd(p.fd, "migrate_to_dev", ptr, NPAGES);
      expect(r).toMatchObject({ ret: 0, cpages: NPAGES });
      expectInts(r.data, ident);
      await c.addressSpace.closeFile({ fileId: file });
    });

    testF("migrate_fault", async (p) => {
      const size = HMM_BUFFER_SIZE;
      const ptr = await mmap(p.mm, size, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS);
      await cpuWrite(p.mm, ptr, fillInts(size, ident));
      let r = await cmd(p.fd, "migrate_to_dev", ptr, NPAGES);
      expect(r).toMatchObject({ ret: 0, cpages: NPAGES });
      expectInts(r.data, ident);
      // Fault half the pages back to system memory and check them.
      await expectCpuInts(p.mm, ptr, size / 2, ident);
      // Migrate memory to the device again.
      r = await cmd(p.fd, "migrate_to_dev", ptr, NPAGES);
      expect(r).toMatchObject({ ret: 0, cpages: NPAGES });
      expectInts(r.data, ident);
    });

    testF("migrate_release", async (p) => {
      const size = HMM_BUFFER_SIZE;
      const ptr = await mmap(p.mm, size, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS);
      await cpuWrite(p.mm, ptr, fillInts(size, ident));
      const r = await cmd(p.fd, "migrate_to_dev", ptr, NPAGES);
      expect(r).toMatchObject({ ret: 0, cpages: NPAGES });
      expectInts(r.data, ident);
      // Release device memory.
      expect((await cmd(p.fd, "release", ptr, NPAGES)).ret).toBe(0);
      // Fault half the pages back to system memory and check them.
      await expectCpuInts(p.mm, ptr, size / 2, ident);
    });

    testF("migrate_shared", async (p) => {
      const size = HMM_BUFFER_SIZE;
      const ptr = await mmap(p.mm, size, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS);
      const r = await cmd(p.fd, "migrate_to_dev", ptr, NPAGES);
      expect(r.ret).toBe(-ENOENT);
    });

    testF(
      "migrate_mixed",
      async (p) => {
        const npages = 6;
        const size = npages * PAGE;
        const ptr = await mmap(p.mm, size, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS);
        // Migrating a protected area should be an error.
        expect((await cmd(p.fd1, "migrate_to_dev", ptr, npages)).ret).toBe(-EINVAL);
        // Punch a hole after the first page address.
        await munmap(p.mm, ptr + PAGE, PAGE);
        // We expect an error if the vma doesn't cover the range.
        expect((await cmd(p.fd1, "migrate_to_dev", ptr, 3)).ret).toBe(-EINVAL);
        // Page 2 will be a read-only zero page.
        await mprotect(p.mm, ptr + 2 * PAGE, PAGE, PROT_READ);
        expect(await cpuReadInt(p.mm, ptr + 2 * PAGE)).toBe(0);
        // Page 3 will be read-only.
        await mprotect(p.mm, ptr + 3 * PAGE, PAGE, PROT_READ | PROT_WRITE);
        await cpuWrite(p.mm, ptr + 3 * PAGE, fillInts(4, () => 3));
        await mprotect(p.mm, ptr + 3 * PAGE, PAGE, PROT_READ);
        // Page 4-5 will be read-write.
        await mprotect(p.mm, ptr + 4 * PAGE, 2 * PAGE, PROT_READ | PROT_WRITE);
        await cpuWrite(p.mm, ptr + 4 * PAGE, fillInts(4, () => 3));
        await cpuWrite(p.mm, ptr + 5 * PAGE, fillInts(4, () => 3));
        // Now try to migrate pages 2-5 to device 1.
        const r = await cmd(p.fd1, "migrate_to_dev", ptr + 2 * PAGE, 4);
        expect(r).toMatchObject({ ret: 0, cpages: 4 });
        // Page 5 won't be migrated to device 0 because it's on device 1.
        expect((await cmd(p.fd0, "migrate_to_dev", ptr + 5 * PAGE, 1)).ret).toBe(-ENOENT);
      },
      2,
    );

    testF("migrate_multiple", async (p) => {
      const size = HMM_BUFFER_SIZE;
      for (let k = 0; k < 10; k++) {
        const ptr = await mmap(p.mm, size, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS);
        await cpuWrite(p.mm, ptr, fillInts(size, ident));
        let r = await cmd(p.fd, "migrate_to_dev", ptr, NPAGES);
        expect(r).toMatchObject({ ret: 0, cpages: NPAGES });
        expectInts(r.data, ident);
        // Migrate back to system memory and check them.
        if (variant.coherent) {
          r = await cmd(p.fd, "migrate_to_sys", ptr, NPAGES);
          expect(r).toMatchObject({ ret: 0, cpages: NPAGES });
        }
        await expectCpuInts(p.mm, ptr, size, ident);
        await munmap(p.mm, ptr, size);
      }
    });

    testF("anon_read_multiple", async (p) => {
      const size = HMM_BUFFER_SIZE;
      for (let k = 0; k < 10; k++) {
        const ptr = await mmap(p.mm, size, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS);
        await cpuWrite(p.mm, ptr, fillInts(size, (i) => i + k));
        const r = await cmd(p.fd, "read", ptr, NPAGES);
        expect(r).toMatchObject({ ret: 0, cpages: NPAGES, faults: 1 });
        expectInts(r.data, (i) => i + k);
        await munmap(p.mm, ptr, size);
      }
    });

    testF("anon_teardown", async (p) => {
      const size = HMM_BUFFER_SIZE;
      for (let k = 0; k < 10; k++) {
        const ptr = await mmap(p.mm, size, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS);
        await cpuWrite(p.mm, ptr, fillInts(size, (i) => i + k));
        // A "thread" unmaps the second half after a random delay while the
        // device reads: any error is acceptable, a success must be complete.
        const unmapper = (async () => {
          const us = Math.floor(Math.random() * 33);
          if (us > 0) await new Promise((res) => setTimeout(res, us / 1000));
          await munmap(p.mm, ptr + size / 2, size / 2);
        })();
        const r = await cmd(p.fd, "read", ptr, NPAGES);
        await unmapper;
        if (r.ret === 0) {
          expect(r).toMatchObject({ cpages: NPAGES, faults: 1 });
          expectInts(r.data, (i) => i + k);
        }
        await munmap(p.mm, ptr, size);
      }
    });

    testF("mixedmap", async (p) => {
      const npages = 1;
      const { addr } = await h.dmirror.mmapDevice({ mirrorId: p.fd, length: npages * PAGE, prot: PROT_READ | PROT_WRITE, flags: MAP_PRIVATE });
      const r = await cmd(p.fd, "snapshot", addr, npages);
      expect(r).toMatchObject({ ret: 0, cpages: npages });
      expect(r.data[0]).toBe(PROT.READ);
    });

    testF(
      "snapshot",
      async (p) => {
        const npages = 7;
        const size = npages * PAGE;
        const ptr = await mmap(p.mm, size, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS);
        // Punch a hole after the first page address.
        await munmap(p.mm, ptr + PAGE, PAGE);
        // Page 2 will be a read-only zero page.
        await mprotect(p.mm, ptr + 2 * PAGE, PAGE, PROT_READ);
        expect(await cpuReadInt(p.mm, ptr + 2 * PAGE)).toBe(0);
        // Page 3 will be read-only.
        await mprotect(p.mm, ptr + 3 * PAGE, PAGE, PROT_READ | PROT_WRITE);
        await cpuWrite(p.mm, ptr + 3 * PAGE, fillInts(4, () => 3));
        await mprotect(p.mm, ptr + 3 * PAGE, PAGE, PROT_READ);
        // Page 4-6 will be read-write.
        await mprotect(p.mm, ptr + 4 * PAGE, 3 * PAGE, PROT_READ | PROT_WRITE);
        await cpuWrite(p.mm, ptr + 4 * PAGE, fillInts(4, () => 3));
        // Page 5 will be migrated to device 0.
        expect(await cmd(p.fd0, "migrate_to_dev", ptr + 5 * PAGE, 1)).toMatchObject({ ret: 0, cpages: 1 });
        // Page 6 will be migrated to device 1.
        expect(await cmd(p.fd1, "migrate_to_dev", ptr + 6 * PAGE, 1)).toMatchObject({ ret: 0, cpages: 1 });
        // Simulate a device snapshotting CPU pagetables.
        const r = await cmd(p.fd0, "snapshot", ptr, npages);
        expect(r).toMatchObject({ ret: 0, cpages: npages });
        const m = [...r.data];
        expect(m.slice(0, 5)).toEqual([PROT.ERROR, PROT.ERROR, PROT.ZERO | PROT.READ, PROT.READ, PROT.WRITE]);
        if (!variant.coherent) {
          expect(m[5]).toBe(PROT.DEV_PRIVATE_LOCAL | PROT.WRITE);
          expect(m[6]).toBe(PROT.NONE);
        } else {
          expect(m[5]).toBe(PROT.DEV_COHERENT_LOCAL | PROT.WRITE);
          expect(m[6]).toBe(PROT.DEV_COHERENT_REMOTE | PROT.WRITE);
        }
      },
      2,
    );

    testF("compound", async (p) => {
      const size = TWOMEG; // ALIGN(TWOMEG, default_hsize)
      const npages = size / PAGE;
      const ptr = await mmap(p.mm, size, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_HUGETLB);
      await cpuWrite(p.mm, ptr, fillInts(size, ident));
      let r = await cmd(p.fd, "snapshot", ptr, npages);
      expect(r).toMatchObject({ ret: 0, cpages: npages });
      expect(new Set(r.data)).toEqual(new Set([PROT.WRITE | PROT.PMD]));
      // Make the region read-only.
      await mprotect(p.mm, ptr, size, PROT_READ);
      r = await cmd(p.fd, "snapshot", ptr, npages);
      expect(r).toMatchObject({ ret: 0, cpages: npages });
      expect(new Set(r.data)).toEqual(new Set([PROT.READ | PROT.PMD]));
    });

    testF(
      "double_map",
      async (p) => {
        const npages = 6;
        const size = npages * PAGE;
        const ptr = await mmap(p.mm, size, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS);
        await cpuWrite(p.mm, ptr, fillInts(size, ident));
        // Make region read-only.
        await mprotect(p.mm, ptr, size, PROT_READ);
        // Simulate device 0 reading system memory.
        let r = await cmd(p.fd0, "read", ptr, npages);
        expect(r).toMatchObject({ ret: 0, cpages: npages, faults: 1 });
        expectInts(r.data, ident);
        // Simulate device 1 reading system memory.
        r = await cmd(p.fd1, "read", ptr, npages);
        expect(r).toMatchObject({ ret: 0, cpages: npages, faults: 1 });
        expectInts(r.data, ident);
        // Migrate pages to device 1 and try to read from device 0.
        r = await cmd(p.fd1, "migrate_to_dev", ptr, npages);
        expect(r).toMatchObject({ ret: 0, cpages: npages });
        r = await cmd(p.fd0, "read", ptr, npages);
        expect(r).toMatchObject({ ret: 0, cpages: npages, faults: 1 });
        expectInts(r.data, ident);
      },
      2,
    );

    /** CPU read-modify-write of every int: each read sees i, then i + 1. */
    const cpuIncrement = async (mm: number, ptr: number, size: number): Promise<void> => {
      const b = await cpuRead(mm, ptr, size);
      expectInts(b, ident);
      await cpuWrite(mm, ptr, fillInts(size, (i) => i + 1));
    };

    testF("exclusive", async (p) => {
      const size = HMM_BUFFER_SIZE;
      const ptr = await mmap(p.mm, size, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS);
      await cpuWrite(p.mm, ptr, fillInts(size, ident));
      const r = await cmd(p.fd, "exclusive", ptr, NPAGES);
      expect(r).toMatchObject({ ret: 0, cpages: NPAGES });
      expectInts(r.data, ident);
      // Fault pages back to system memory and check them.
      await cpuIncrement(p.mm, ptr, size);
      await expectCpuInts(p.mm, ptr, size, (i) => i + 1);
      expect((await cmd(p.fd, "check_exclusive", ptr, NPAGES)).ret).toBe(0);
    });

    testF("exclusive_mprotect", async (p) => {
      const size = HMM_BUFFER_SIZE;
      const ptr = await mmap(p.mm, size, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS);
      await cpuWrite(p.mm, ptr, fillInts(size, ident));
      const r = await cmd(p.fd, "exclusive", ptr, NPAGES);
      expect(r).toMatchObject({ ret: 0, cpages: NPAGES });
      expectInts(r.data, ident);
      await mprotect(p.mm, ptr, size, PROT_READ);
      expect((await cmd(p.fd, "write", ptr, NPAGES, fillInts(size, ident))).ret).toBe(-EPERM);
    });

    testF("exclusive_cow", async (p) => {
      const size = HMM_BUFFER_SIZE;
      const ptr = await mmap(p.mm, size, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS);
      await cpuWrite(p.mm, ptr, fillInts(size, ident));
      const r = await cmd(p.fd, "exclusive", ptr, NPAGES);
      expect(r).toMatchObject({ ret: 0, cpages: NPAGES });
      expectInts(r.data, ident);
      const child = await fork(p.mm);
      // Both processes continue the test body.
      for (const mm of [p.mm, child]) {
        await cpuIncrement(mm, ptr, size);
        await expectCpuInts(mm, ptr, size, (i) => i + 1);
      }
      await exit(child);
    });

    testF("hmm_cow_in_device", async (p) => {
      const npages = 4;
      const size = npages * PAGE;
      const ptr = await mmap(p.mm, size, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS);
      await cpuWrite(p.mm, ptr, fillInts(size, ident));
      const r = await cmd(p.fd, "migrate_to_dev", ptr, npages);
      expect(r).toMatchObject({ ret: 0, cpages: npages });
      const child = await fork(p.mm); // the child spins until killed
      // The parent writes to COW pages and gets a new copy in system memory
      // (device-private pages migrate back to RAM first).
      await cpuWrite(p.mm, ptr, fillInts(size, ident));
      await exit(child); // kill(SIGTERM) + waitpid
      const s = await cmd(p.fd, "snapshot", ptr, npages);
      expect(s).toMatchObject({ ret: 0, cpages: npages });
      expect([...s.data]).toEqual(new Array(npages).fill(PROT.WRITE));
    });

    testF("hmm_gup_test", async (p) => {
      const npages = 4;
      const size = npages * PAGE;
      const ptr = await mmap(p.mm, size, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS);
      await cpuWrite(p.mm, ptr, fillInts(size, ident));
      const r = await cmd(p.fd, "migrate_to_dev", ptr, npages);
      expect(r).toMatchObject({ ret: 0, cpages: npages });
      expectInts(r.data, ident);
      // gup_test ioctls, one page each, gup_flags FOLL_WRITE (| FOLL_LONGTERM):
      // GUP_BASIC_TEST, GUP_FAST_BENCHMARK, PIN_FAST_BENCHMARK, PIN_LONGTERM_BENCHMARK.
      const FOLL_WRITE = 0x1;
      const FOLL_LONGTERM = 0x100;
      const ioctls: [GupVariant, number, boolean][] = [
        [GupVariant.GUP_VARIANT_GET_USER_PAGES, FOLL_WRITE, false],
        [GupVariant.GUP_VARIANT_GET_USER_PAGES_FAST, FOLL_WRITE, false],
        [GupVariant.GUP_VARIANT_PIN_USER_PAGES_FAST, FOLL_WRITE | FOLL_LONGTERM, true],
        [GupVariant.GUP_VARIANT_PIN_USER_PAGES, FOLL_WRITE | FOLL_LONGTERM, true],
      ];
      for (const [i, [variant, flags, isPin]] of ioctls.entries()) {
        const g = await c.gup.pinUserPages({
          variant,
          mmId: p.mm,
          start: ptr + i * PAGE,
          nrPages: 1,
          gupFlags: flags,
          output: GupOutput.GUP_OUTPUT_PAGE_ARRAY,
          wantFolioRuns: false,
        });
        expect([GupVariant[variant], g.ret]).toEqual([GupVariant[variant], 1]);
        if (isPin) {
          const f = await c.inspect.getFolio({ pfn: g.pages[0]! });
          expect([f.maybeDmaPinned, f.longtermPinnable]).toEqual([true, true]);
          await c.gup.unpinUserPages({ pages: g.pages, makeDirty: false });
        } else {
          await c.gup.putUserPages({ pages: g.pages });
        }
      }
      const s = await cmd(p.fd, "snapshot", ptr, npages);
      expect(s).toMatchObject({ ret: 0, cpages: npages });
      // private: every GUP faulted the page back to RAM; coherent: short-term
      // GUP leaves the device page in place, FOLL_LONGTERM migrates it.
      const W = PROT.WRITE;
      const expected = variant.coherent ? [PROT.DEV_COHERENT_LOCAL | W, PROT.DEV_COHERENT_LOCAL | W, W, W] : [W, W, W, W];
      expect([...s.data]).toEqual(expected);
      await expectCpuInts(p.mm, ptr, size, ident);
      const st = await c.gup.getPinStats({ sessionId: 0 });
      expect([st.outstandingPins, st.nrFollPinAcquired - st.nrFollPinReleased]).toEqual([0, 0]);
    });

    testF("migrate_anon_huge_empty", async (p) => {
      const size = TWOMEG;
      const npages = size / PAGE;
      const map = await thpWindow(p.mm, size, PROT_READ);
      const r = await cmd(p.fd, "migrate_to_dev", map, npages);
      expect(r).toMatchObject({ ret: 0, cpages: npages });
      // The mirror buffer was 0xFF; the device read zeros.
      expectInts(r.data, () => 0);
    });

    testF("migrate_anon_huge_zero", async (p) => {
      const size = TWOMEG;
      const npages = size / PAGE;
      const map = await thpWindow(p.mm, size, PROT_READ);
      // Initialize a read-only zero huge page.
      expect(await cpuReadInt(p.mm, map)).toBe(0);
      const r = await cmd(p.fd, "migrate_to_dev", map, npages);
      expect(r).toMatchObject({ ret: 0, cpages: npages });
      expectInts(r.data, () => 0);
      // Fault pages back to system memory and check them.
      await expectCpuInts(p.mm, map, size, () => 0);
    });

    testF("migrate_anon_huge_free", async (p) => {
      const size = TWOMEG;
      const npages = size / PAGE;
      const map = await thpWindow(p.mm, size, PROT_READ | PROT_WRITE);
      await cpuWrite(p.mm, map, fillInts(size, ident));
      const r = await cmd(p.fd, "migrate_to_dev", map, npages);
      expect(r).toMatchObject({ ret: 0, cpages: npages });
      expectInts(r.data, ident);
      // Try freeing it.
      await madvise(p.mm, map, size, MADV_FREE);
    });

    testF("migrate_anon_huge_fault", async (p) => {
      const size = TWOMEG;
      const npages = size / PAGE;
      const map = await thpWindow(p.mm, size, PROT_READ | PROT_WRITE);
      await cpuWrite(p.mm, map, fillInts(size, ident));
      const r = await cmd(p.fd, "migrate_to_dev", map, npages);
      expect(r).toMatchObject({ ret: 0, cpages: npages });
      expectInts(r.data, ident);
      await expectCpuInts(p.mm, map, size, ident);
    });

    testF("migrate_partial_unmap_fault", async (p) => {
      const size = TWOMEG;
      const npages = size / PAGE;
      for (const advice of [MADV_NOHUGEPAGE, MADV_HUGEPAGE]) {
        for (const offset of [0, 512 * 1024, ONEMEG]) {
          const map = await thpWindow(p.mm, size, PROT_READ | PROT_WRITE, advice);
          await cpuWrite(p.mm, map, fillInts(size, ident));
          const r = await cmd(p.fd, "migrate_to_dev", map, npages);
          expect(r).toMatchObject({ ret: 0, cpages: npages });
          expectInts(r.data, ident);
          await munmap(p.mm, map + offset, ONEMEG);
          // Fault pages back to system memory and check them.
          if (offset > 0) await expectCpuInts(p.mm, map, offset, ident);
          if (offset + ONEMEG < size) {
            const b = await cpuRead(p.mm, map + offset + ONEMEG, size - offset - ONEMEG);
            expectInts(b, (i) => i + (offset + ONEMEG) / 4);
          }
          await munmap(p.mm, map, size);
          await t.checkInvariants();
        }
      }
    });

    testF("migrate_anon_huge_err", async (p) => {
      const size = TWOMEG;
      const npages = size / PAGE;
      let map = await thpWindow(p.mm, size, PROT_READ | PROT_WRITE);
      await cpuWrite(p.mm, map, fillInts(size, ident));
      // Migrate memory to device but force a THP allocation error.
      await setFlags(p.fd, HMM_DMIRROR_FLAG_FAIL_ALLOC);
      let r = await cmd(p.fd, "migrate_to_dev", map, npages);
      expect(r).toMatchObject({ ret: 0, cpages: npages });
      expectInts(r.data, ident);
      expect(await cpuReadInt(p.mm, map + 2048 * 4)).toBe(2048);
      await munmap(p.mm, map, size);
      // Try again with a fresh mapping; now fail the allocation back to RAM.
      map = await thpWindow(p.mm, size, PROT_READ | PROT_WRITE);
      await cpuWrite(p.mm, map, fillInts(size, ident));
      r = await cmd(p.fd, "migrate_to_dev", map, npages);
      expect(r).toMatchObject({ ret: 0, cpages: npages });
      expectInts(r.data, ident);
      await setFlags(p.fd, HMM_DMIRROR_FLAG_FAIL_ALLOC);
      r = await cmd(p.fd, "migrate_to_sys", map, npages);
      expect(r.ret).toBe(0);
      expect(await cpuReadInt(p.mm, map + 2048 * 4)).toBe(2048);
    });

    testF("migrate_anon_huge_zero_err", async (p) => {
      const size = TWOMEG;
      const npages = size / PAGE;
      const first = await thpBuffer(p.mm, size, PROT_READ);
      let map = first.map;
      // Migrate memory to device but force a THP allocation error.
      await setFlags(p.fd, HMM_DMIRROR_FLAG_FAIL_ALLOC);
      let r = await cmd(p.fd, "migrate_to_dev", map, npages);
      expect(r).toMatchObject({ ret: 0, cpages: npages });
      expectInts(r.data, () => 0);
      // Try faulting back a single (PAGE_SIZE) page.
      expect(await cpuReadInt(p.mm, map + 2048 * 4)).toBe(0);
      // Unmap and remap the region to reset things.
      const oldMap = map;
      await munmap(p.mm, first.ptr, 2 * size);
      map = await thpWindow(p.mm, size, PROT_READ);
      // Initialize the buffer through the old pointer (it lands in the new
      // mapping at the same address, as in the kernel test).
      expect(oldMap).toBe(map);
      expect(await cpuReadInt(p.mm, oldMap)).toBe(0);
      await setFlags(p.fd, HMM_DMIRROR_FLAG_FAIL_ALLOC);
      r = await cmd(p.fd, "migrate_to_dev", map, npages);
      expect(r).toMatchObject({ ret: 0, cpages: npages });
      // Fault pages back to system memory and check them.
      await expectCpuInts(p.mm, map, size, () => 0);
    });

    testF(
      "benchmark_thp_migration",
      async (p) => {
        // Timings are not meaningful in a simulator: only "every call returns 0".
        const sizes = [512 * 1024, ONEMEG, TWOMEG, 4 * ONEMEG, 8 * ONEMEG, 16 * ONEMEG, 256 * ONEMEG];
        for (const useThp of [true, false]) {
          for (const size of sizes) {
            const npages = size / PAGE;
            const map = useThp ? await thpWindow(p.mm, size, PROT_READ | PROT_WRITE) : await mmap(p.mm, size, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS);
            // Touch every page (the kernel test memsets the buffer).
            await madvise(p.mm, map, size, 23 /* MADV_POPULATE_WRITE */);
            // Warm-up plus 5 timed round trips; the 256 MiB size makes one
            // timed trip only, to keep the suite fast (timings are not asserted).
            const rounds = size > 16 * ONEMEG ? 2 : 6;
            for (let round = 0; round < rounds; round++) {
              const to = await h.dmirror.migrateToDevice({ mirrorId: p.fd, addr: map, npages, omitData: true });
              expect(to.cpages).toBe(npages);
              expect((await cmd(p.fd, "migrate_to_sys", map, npages)).ret).toBe(0);
            }
            await munmap(p.mm, map, size);
          }
        }
      },
      1,
      120_000,
    );
  });
}
