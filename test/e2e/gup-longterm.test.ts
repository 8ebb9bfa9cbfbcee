/**
 * tools/testing/selftests/mm/gup_longterm.c over GupService (peer-tests.md
 * §5): which long-term pins of file-backed memory succeed. The 8 GUP test
 * cases (R/W and R/O, GUP and GUP-fast, MAP_SHARED and MAP_PRIVATE) on each
 * backing the model can express: memfd (tmpfs), a tmpfile on a filesystem
 * that needs dirty tracking (ext4-like: FILE_KIND_DIRTY_TRACKED), and memfd
 * hugetlb of 2 MiB and 1 GiB. The io_uring cases are not ported (no
 * io_uring in the model).
 *
 * PIN_LONGTERM_TEST_START pins the range with FOLL_LONGTERM (+FOLL_WRITE for
 * R/W), fast or slow, repeatedly until every page is pinned; a negative
 * result unpins what was pinned and is the outcome; STOP unpins.
 */
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { type Clients, startDaemon, type TestDaemon } from "../helpers/daemon.js";
import {
  EFAULT,
  FileKind,
  FOLL_LONGTERM,
  FOLL_WRITE,
  folio,
  GiB,
  MAP_PRIVATE,
  MAP_SHARED,
  mmap,
  PAGE,
  pfnAt,
  pin,
  pinStats,
  populate,
  PROT_READ,
  RW,
  TWOMEG,
  V,
} from "../helpers/gup.js";

let t: TestDaemon;
let c: Clients;

beforeAll(async () => {
  t = await startDaemon({ ramBytes: 4 * GiB });
  c = t.withSession(await t.newSession("gup_longterm"));
});
afterAll(async () => {
  await t.stop();
});

interface Backing {
  name: string;
  kind: FileKind;
  size: number;
  hugePageSize: number;
  /** fs in {tmpfs, hugetlbfs}: no dirty tracking needed */
  knownNoDirtyTracking: boolean;
}

const BACKINGS: Backing[] = [
  { name: "memfd", kind: FileKind.FILE_KIND_SHMEM, size: PAGE, hugePageSize: 0, knownNoDirtyTracking: true },
  { name: "tmpfile (ext4-like, dirty-tracked)", kind: FileKind.FILE_KIND_DIRTY_TRACKED, size: PAGE, hugePageSize: 0, knownNoDirtyTracking: false },
  { name: "memfd hugetlb (2048 kB)", kind: FileKind.FILE_KIND_HUGETLB, size: TWOMEG, hugePageSize: TWOMEG, knownNoDirtyTracking: true },
  { name: "memfd hugetlb (1048576 kB)", kind: FileKind.FILE_KIND_HUGETLB, size: GiB, hugePageSize: GiB, knownNoDirtyTracking: true },
];

interface Case {
  desc: string;
  rw: boolean;
  fast: boolean;
  shared: boolean;
}

const CASES: Case[] = [
  { desc: "R/W longterm GUP pin in MAP_SHARED file mapping", rw: true, fast: false, shared: true },
  { desc: "R/W longterm GUP-fast pin in MAP_SHARED file mapping", rw: true, fast: true, shared: true },
  { desc: "R/O longterm GUP pin in MAP_SHARED file mapping", rw: false, fast: false, shared: true },
  { desc: "R/O longterm GUP-fast pin in MAP_SHARED file mapping", rw: false, fast: true, shared: true },
  { desc: "R/W longterm GUP pin in MAP_PRIVATE file mapping", rw: true, fast: false, shared: false },
  { desc: "R/W longterm GUP-fast pin in MAP_PRIVATE file mapping", rw: true, fast: true, shared: false },
  { desc: "R/O longterm GUP pin in MAP_PRIVATE file mapping", rw: false, fast: false, shared: false },
  { desc: "R/O longterm GUP-fast pin in MAP_PRIVATE file mapping", rw: false, fast: true, shared: false },
];

/** PIN_LONGTERM_TEST_START then STOP: 0 on success, else the negative errno. */
async function pinLongtermTest(mm: number, addr: number, size: number, write: boolean, fast: boolean): Promise<{ ret: number; pfns: number[] }> {
  const npages = size / PAGE;
  const handles: number[] = [];
  const pfns: number[] = [];
  let pinned = 0;
  let ret = 0;
  while (pinned < npages) {
    const r = await pin(c, fast ? V.GUP_VARIANT_PIN_USER_PAGES_FAST : V.GUP_VARIANT_PIN_USER_PAGES, mm, addr + pinned * PAGE, npages - pinned, FOLL_LONGTERM | (write ? FOLL_WRITE : 0));
    if (r.ret <= 0) {
      ret = r.ret === 0 ? -EFAULT : r.ret;
      break;
    }
    pinned += r.ret;
    if (r.handle !== 0) handles.push(r.handle);
    for (const run of r.ranges) pfns.push(run.pfn);
  }
  if (ret === 0) {
    // the driver's check: every pinned folio is dma-pinned and long-term pinnable
    for (const p of pfns) {
      const f = await folio(c, p);
      expect([f.maybeDmaPinned || f.zeroPage, f.longtermPinnable || f.zeroPage]).toEqual([true, true]);
    }
  }
  for (const h of handles) await c.gup.unpinHandle({ handle: h, makeDirty: false }); // STOP, or the unwinding of a failed START
  return { ret, pfns };
}

for (const b of BACKINGS) {
  describe(`gup_longterm with ${b.name}`, () => {
    for (const tc of CASES) {
      const shouldWork = !tc.shared || !tc.rw || b.knownNoDirtyTracking;
      it(`${tc.desc} ... with ${b.name}: ${shouldWork ? "pinned" : "-EFAULT"}`, async () => {
        const mm = (await c.addressSpace.createMm({ name: "gup_longterm" })).mmId;
        const file = (await c.addressSpace.createFile({ name: b.name, sizeBytes: b.size, kind: b.kind, hugePageSize: b.hugePageSize, pgmapId: 0 })).fileId;
        const a = await mmap(c, mm, b.size, RW, tc.shared ? MAP_SHARED : MAP_PRIVATE, file);
        await populate(c, mm, a, b.size); // memset(mem, 0, size)
        const fileFolio = tc.shared ? await pfnAt(c, mm, a) : -1;
        if (!tc.rw) await c.addressSpace.mprotect({ mmId: mm, addr: a, length: b.size, prot: PROT_READ });
        const s0 = await pinStats(c);
        const r = await pinLongtermTest(mm, a, b.size, tc.rw, tc.fast);
        expect(r.ret).toBe(shouldWork ? 0 : -EFAULT);
        if (shouldWork && tc.shared) expect(r.pfns[0]).toBe(fileFolio); // shared: the page-cache folio itself
        const s1 = await pinStats(c);
        expect([s1.out, s1.acq - s0.acq]).toEqual([0, s1.rel - s0.rel]);
        await c.addressSpace.exitMm({ mmId: mm });
        await c.addressSpace.closeFile({ fileId: file });
      }, 60_000);
    }
  });
}
