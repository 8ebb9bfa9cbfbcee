/**
 * Shared set-up for the GUP / unpin tests: kernels whose invariants are
 * checked after every test, mappings, and stand-ins for the two ways device
 * pages get into user page tables that the model has no operation for yet
 * (migrate_vma into device-coherent memory, vm_insert_page of P2PDMA pages).
 */
import { afterEach, expect } from "vitest";
import {
  Level,
  MAP_ANONYMOUS,
  MAP_POPULATE,
  MAP_PRIVATE,
  MAP_SHARED,
  PAGE_SIZE,
  PROT_READ,
  PROT_WRITE,
} from "../../src/mm/constants.js";
import { vmInsertPage as modelVmInsertPage } from "../../src/mm/driver-pages.js";
import { pteBits } from "../../src/mm/fault.js";
import { gupCall, type GupRequest, type GupResult, type GupVariant } from "../../src/mm/gup.js";
import { checkInvariants } from "../../src/mm/invariants.js";
import { Kernel, type KernelConfig } from "../../src/mm/kernel.js";
import type { Mm } from "../../src/mm/mm.js";
import { doMmap, type DeviceMmap } from "../../src/mm/mmap.js";
import { ensureTable, pteIndex } from "../../src/mm/pagetable.js";
import { PG_anon, PG_anon_exclusive } from "../../src/mm/physmem.js";

const live: Kernel[] = [];

/** Every kernel a test creates has its invariants checked when the test ends. */
afterEach(() => {
  for (const k of live.splice(0)) expect(checkInvariants(k).violations).toEqual([]);
});

export function newKernel(config: KernelConfig = {}): { k: Kernel; mm: Mm } {
  const k = new Kernel(config);
  live.push(k);
  return { k, mm: k.createMm("test", 1) };
}

export const RW = PROT_READ | PROT_WRITE;

/** mmap(MAP_PRIVATE|MAP_ANONYMOUS), optionally populated (write faults for RW). */
export function mmapAnon(k: Kernel, mm: Mm, length: number, opts: { populate?: boolean; prot?: number; flags?: number } = {}): number {
  return doMmap(k, mm, {
    addr: 0,
    length,
    prot: opts.prot ?? RW,
    flags: MAP_PRIVATE | MAP_ANONYMOUS | (opts.populate ? MAP_POPULATE : 0) | (opts.flags ?? 0),
    fileId: 0,
    offset: 0,
    device: null,
  });
}

export function mmapDevice(k: Kernel, mm: Mm, length: number, device: DeviceMmap, prot = RW): number {
  return doMmap(k, mm, { addr: 0, length, prot, flags: MAP_SHARED, fileId: 0, offset: 0, device });
}

export function gup(
  k: Kernel,
  mm: Mm,
  variant: GupVariant,
  start: number,
  nrPages: number,
  gupFlags = 0,
  extra: Partial<GupRequest> = {},
): GupResult {
  return gupCall(k, mm, { variant, start, nrPages, gupFlags, wantPages: true, output: "ranges", session: 1, ...extra });
}

/** vmstat and operation counters, for exact deltas. */
export function counters(k: Kernel) {
  return { acq: k.vmstat.nr_foll_pin_acquired, rel: k.vmstat.nr_foll_pin_released, upd: k.phys.stats.gupRefUpdates };
}

/**
 * Stand-in for migrate_vma_pages into MEMORY_DEVICE_COHERENT memory: the
 * device page (refcount 1 from the driver's allocation, which becomes the
 * mapping's reference) is mapped by a present, writable, AnonExclusive PTE.
 */
export function mapDeviceCoherentAnon(k: Kernel, mm: Mm, addr: number, pfn: number): void {
  const vma = mm.findVma(addr)!;
  const av = k.anonVmaPrepare(vma);
  const t = ensureTable(k.pt, mm.pgd, addr, Level.PTE);
  k.pt.set(t, pteIndex(addr), pfn, pteBits(vma, true, true));
  k.phys.orFlags(pfn, PG_anon | PG_anon_exclusive);
  k.phys.setMapping(pfn, -av.id, addr / PAGE_SIZE);
  k.mapcountAdd(pfn, 1);
  k.rssAdd(mm, pfn, 1);
}

/**
 * p2pmem_alloc_mmap: vm_insert_page (src/mm/driver-pages.ts: a normal,
 * refcounted PTE for a struct page in a VM_MIXEDMAP VMA; folio->mapping
 * stays NULL), then put_page of the allocation's reference, so the mapping
 * holds the only one.
 */
export function vmInsertPage(k: Kernel, mm: Mm, addr: number, pfn: number): void {
  expect(modelVmInsertPage(k, mm, addr, pfn).ret).toBe(0);
  k.phys.folioPut(pfn);
}
