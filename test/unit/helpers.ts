/**
 * Shared helpers for the model unit tests: small kernels, mmap wrappers,
 * notifier event capture, errno assertions and the closing invariant check.
 */
import { expect } from "vitest";
import { Kernel, type KernelConfig, RANGE_END_ALL } from "../../src/mm/kernel.js";
import type { Mm } from "../../src/mm/mm.js";
import {
  Level,
  MAP_ANONYMOUS,
  MAP_PRIVATE,
  MAP_SHARED,
  MmuNotifyEvent,
  PROT_READ,
  PROT_WRITE,
} from "../../src/mm/constants.js";
import { MmError } from "../../src/mm/errors.js";
import { checkInvariants } from "../../src/mm/invariants.js";
import { type DeviceMmap, doMmap } from "../../src/mm/mmap.js";
import { EntryKind, type PageTableRun, walkPageTable } from "../../src/mm/inspect.js";
import { readMemory, writeMemory } from "../../src/mm/access.js";
import type { NotifierRange } from "../../src/mm/mmu-notifier.js";

export const KiB = 1024;
export const MiB = 1024 * KiB;
export const GiB = 1024 * MiB;
export const RW = PROT_READ | PROT_WRITE;
export const ANON_PRIVATE = MAP_PRIVATE | MAP_ANONYMOUS;
export const ANON_SHARED = MAP_SHARED | MAP_ANONYMOUS;
export { RANGE_END_ALL };

/** A 1 GiB kernel unless told otherwise. */
export function mkKernel(cfg: KernelConfig = {}): Kernel {
  return new Kernel({ ...cfg, phys: { ramBytes: GiB, ...cfg.phys } });
}

export function mkMm(k: Kernel, name = "p"): Mm {
  return k.createMm(name, 1);
}

export interface MmapOpts {
  addr?: number;
  prot?: number;
  flags?: number;
  fileId?: number;
  offset?: number;
  device?: DeviceMmap | null;
}

export function mmap(k: Kernel, mm: Mm, length: number, o: MmapOpts = {}): number {
  return doMmap(k, mm, {
    addr: o.addr ?? 0,
    length,
    prot: o.prot ?? RW,
    flags: o.flags ?? ANON_PRIVATE,
    fileId: o.fileId ?? 0,
    offset: o.offset ?? 0,
    device: o.device ?? null,
  });
}

/** The MmError thrown by `fn` (fails the test if it does not throw one). */
export function catchMmError(fn: () => unknown): MmError {
  try {
    fn();
  } catch (e) {
    if (e instanceof MmError) return e;
    throw e;
  }
  throw new Error("expected an MmError, nothing was thrown");
}

export function expectErrno(fn: () => unknown, errno: number): MmError {
  const e = catchMmError(fn);
  expect(e.errno, e.message).toBe(errno);
  return e;
}

/** Every test ends here: the model's own consistency checker finds nothing. */
export function expectClean(k: Kernel): void {
  const r = checkInvariants(k);
  expect(r.violations).toEqual([]);
}

export interface Ev {
  phase: "start" | "end";
  event: MmuNotifyEvent;
  start: number;
  end: number;
  mmId: number;
  blockable: boolean;
}

/** Record every invalidation start/end from now on. */
export function recordEvents(k: Kernel): Ev[] {
  const evs: Ev[] = [];
  k.invalidationObservers.add((r: NotifierRange, phase) => {
    evs.push({ phase, event: r.event, start: r.start, end: r.end, mmId: r.mmId, blockable: r.blockable });
  });
  return evs;
}

/** Only the start notifications, as [event, start, end, mmId]. */
export function starts(evs: Ev[]): [MmuNotifyEvent, number, number, number][] {
  return evs.filter((e) => e.phase === "start").map((e) => [e.event, e.start, e.end, e.mmId]);
}

export function ev(event: MmuNotifyEvent, start: number, end: number, mmId: number): [MmuNotifyEvent, number, number, number] {
  return [event, start, end, mmId];
}

export function runs(k: Kernel, mm: Mm, start: number, end: number): PageTableRun[] {
  return walkPageTable(k, mm, start, end, 0).runs;
}

/** The single run covering `addr` (undefined when nothing maps it). */
export function runAt(k: Kernel, mm: Mm, addr: number): PageTableRun | undefined {
  const size = (r: PageTableRun) => (r.level === Level.PUD ? GiB : r.level === Level.PMD ? 2 * MiB : 4 * KiB);
  const base = addr - (addr % GiB);
  for (const r of runs(k, mm, base, base + GiB)) {
    if (addr >= r.addr && addr < r.addr + r.nr * size(r)) return r;
  }
  return undefined;
}

/** PFN mapped at `addr` (4 KiB page granularity). */
export function pfnAt(k: Kernel, mm: Mm, addr: number): number {
  const r = runAt(k, mm, addr);
  if (r === undefined) throw new Error(`nothing mapped at 0x${addr.toString(16)}`);
  if (r.kind === EntryKind.ZERO_PAGE) return r.pfn;
  const size = r.level === Level.PUD ? GiB : r.level === Level.PMD ? 2 * MiB : 4 * KiB;
  const entry = Math.floor((addr - r.addr) / size);
  const pagesPerEntry = size / 4096;
  return r.pfn + entry * pagesPerEntry + Math.floor((addr % size) / 4096);
}

export function bytes(n: number, seed: number): Uint8Array {
  const b = new Uint8Array(n);
  for (let i = 0; i < n; i++) b[i] = (seed * 31 + i * 7) & 0xff;
  return b;
}

export function write(k: Kernel, mm: Mm, addr: number, data: Uint8Array): void {
  const r = writeMemory(k, mm, addr, data);
  expect(r.signal, `write at 0x${addr.toString(16)}`).toBe(0);
  expect(r.bytesDone).toBe(data.length);
}

export function read(k: Kernel, mm: Mm, addr: number, len: number): Uint8Array {
  const r = readMemory(k, mm, addr, len);
  expect(r.signal, `read at 0x${addr.toString(16)}`).toBe(0);
  return r.data;
}

export { EntryKind, Level };
