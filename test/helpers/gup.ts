/**
 * Shared set-up of the GupService end-to-end tests: flag values, mappings
 * made over AddressSpaceService, folio inspection and the gup_test /
 * gup_longterm front-ends (peer-tests.md §3-5) built from GupService calls.
 */
import { expect } from "vitest";
import { DeviceMapping, FileKind } from "../../src/gen/mmsim/v1/address_space.js";
import { GupOutput, GupVariant, type PinUserPagesResponse } from "../../src/gen/mmsim/v1/gup.js";
import type { Clients } from "./daemon.js";

export const PAGE = 4096;
export const MiB = 2 ** 20;
export const GiB = 2 ** 30;
export const TWOMEG = 2 * MiB;

export const PROT_READ = 1;
export const PROT_WRITE = 2;
export const RW = PROT_READ | PROT_WRITE;
export const MAP_SHARED = 0x1;
export const MAP_PRIVATE = 0x2;
export const MAP_ANONYMOUS = 0x20;
export const MADV_HUGEPAGE = 14;
export const MADV_NOHUGEPAGE = 15;
export const MADV_POPULATE_READ = 22;
export const MADV_POPULATE_WRITE = 23;

export const FOLL_WRITE = 0x1;
export const FOLL_GET = 0x2;
export const FOLL_LONGTERM = 0x100;
export const FOLL_SPLIT_PMD = 0x200;
export const FOLL_PCI_P2PDMA = 0x400;

export const EFAULT = 14;
export const EEXIST = 17;
export const EINVAL = 22;
export const EREMOTEIO = 121;

export const V = GupVariant;
export const OUT = GupOutput;
export { DeviceMapping, FileKind };

/** mmap; returns the address. */
export async function mmap(c: Clients, mm: number, length: number, prot: number, flags: number, fileId = 0): Promise<number> {
  return (await c.addressSpace.mmap({ mmId: mm, addr: 0, length, prot, flags, fileId, offset: 0 })).addr;
}

/** A `size`-aligned private anonymous window of `size` bytes (THP set-up), with `advice`. */
export async function alignedAnon(c: Clients, mm: number, size: number, advice = MADV_HUGEPAGE): Promise<number> {
  const raw = await mmap(c, mm, 2 * size, RW, MAP_PRIVATE | MAP_ANONYMOUS);
  const a = Math.ceil(raw / TWOMEG) * TWOMEG;
  await c.addressSpace.madvise({ mmId: mm, addr: a, length: size, advice });
  return a;
}

export async function populate(c: Clients, mm: number, addr: number, length: number, write = true): Promise<void> {
  await c.addressSpace.madvise({ mmId: mm, addr, length, advice: write ? MADV_POPULATE_WRITE : MADV_POPULATE_READ });
}

/** The PFN that `addr` maps (first leaf of a page-table walk). */
export async function pfnAt(c: Clients, mm: number, addr: number): Promise<number> {
  const w = await c.inspect.walkPageTable({ mmId: mm, start: addr, end: addr + PAGE, maxRuns: 1 });
  const r = w.runs[0];
  expect(r, `a mapping at 0x${addr.toString(16)}`).toBeDefined();
  return r!.pfn + (r!.addr < addr ? (addr - r!.addr) / PAGE : 0);
}

export async function folio(c: Clients, pfn: number) {
  return c.inspect.getFolio({ pfn });
}

export async function pinStats(c: Clients) {
  const s = await c.gup.getPinStats({ sessionId: 0 });
  return { acq: s.nrFollPinAcquired, rel: s.nrFollPinReleased, out: s.outstandingPins };
}

export interface PinOpts {
  output?: GupOutput;
  wantPages?: boolean;
  folioRuns?: boolean;
}

export function pin(c: Clients, variant: GupVariant, mm: number, start: number, nrPages: number, gupFlags = 0, o: PinOpts = {}): Promise<PinUserPagesResponse> {
  return c.gup.pinUserPages({
    variant,
    mmId: mm,
    start,
    nrPages,
    gupFlags,
    output: o.output ?? GupOutput.GUP_OUTPUT_RANGES,
    wantPages: o.wantPages,
    wantFolioRuns: o.folioRuns ?? false,
  });
}

export const isPin = (v: GupVariant) => v >= V.GUP_VARIANT_PIN_USER_PAGES && v <= V.GUP_VARIANT_PIN_USER_PAGES_UNLOCKED;

/**
 * gup_test's __gup_test_ioctl for one command: walk [addr, addr + size) in
 * chunks of `perCall` pages, stop at a return <= 0 or a short one, verify
 * every pinned folio is dma-pinned (PIN_* commands), release all pages as
 * the driver does (unpin_user_pages / put_page over its pages[] array), and
 * report the bytes spanned by the attempted chunks.
 */
export async function gupTestIoctl(c: Clients, mm: number, variant: GupVariant, addr: number, size: number, perCall: number, gupFlags: number): Promise<{ size: number; pages: number }> {
  const npages = size / PAGE;
  let spanned = 0;
  const pages: number[] = [];
  for (let i = 0; i < npages; i += perCall) {
    const n = Math.min(perCall, npages - i);
    spanned += n * PAGE;
    const r = await pin(c, variant, mm, addr + i * PAGE, n, gupFlags);
    if (r.ret <= 0) break;
    for (const run of r.ranges) for (let j = 0; j < run.count; j++) pages.push(run.pfn + j);
    if (r.ret < n) break;
  }
  if (isPin(variant)) {
    const heads = new Set<number>();
    for (const p of pages) {
      const f = await folio(c, p);
      if (heads.has(f.headPfn)) continue;
      heads.add(f.headPfn);
      if (!f.zeroPage) expect(f.maybeDmaPinned, `pfn ${p} dma-pinned`).toBe(true);
    }
    if (pages.length > 0) await c.gup.unpinUserPages({ pages, makeDirty: false });
  } else if (pages.length > 0) {
    await c.gup.putUserPages({ pages });
  }
  return { size: spanned, pages: pages.length };
}
