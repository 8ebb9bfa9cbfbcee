/**
 * The simulated HMM test device (lib/test_hmm.c, "dmirror"): device memory
 * in dev_pagemap chunks, one mirror page table per open mirror (per mm), the
 * invalidate callback, and the commands READ, WRITE, MIGRATE_TO_DEV,
 * MIGRATE_TO_SYS, SNAPSHOT, EXCLUSIVE, CHECK_EXCLUSIVE, RELEASE and FLAGS,
 * with `cpages` and `faults` as the kernel reports them.
 *
 * Mirror state machine (one open file):
 *
 *   invalidate(range, cur_seq)             command (READ as an example)
 *   --------------------------             ----------------------------------
 *   MIGRATE event owned by this device:    s = read_begin(sub)  (may sleep)
 *     ignored (the migration handles it)   hmm_range_fault(range)   (mm op)
 *   device lock (trylock if the range is   device lock
 *     not blockable: may refuse)             if read_retry(sub, s): again
 *   set_seq(sub, cur_seq)                    store entries in the mirror
 *   erase entries [start>>12, end>>12]     unlock
 *   unlock
 *
 * The mirror holds no page references: invalidation keeps it coherent (N5,
 * checked by CheckInvariants for every daemon-side mirror). Everything here
 * is synchronous except the command drivers, which sleep in read_begin and
 * run each model step through a DmirrorEnv (the service layer's per-mm
 * lock and operation protocol; tests can run steps directly). The clock for
 * HMM_RANGE_DEFAULT_TIMEOUT comes from the env too.
 *
 * Deviations from test_hmm: device-private pages hold their contents
 * themselves (no backing system page is allocated); no device THP exists,
 * so HMM_DMIRROR_FLAG_FAIL_ALLOC, which only fails large allocations, never
 * takes effect.
 */
import {
  Level,
  MemoryType,
  MmuNotifyEvent,
  PAGE_SIZE,
  VM_READ,
  VM_WRITE,
} from "./constants.js";
import { Errno, MmError, fail, invalid } from "./errors.js";
import { copyPageData } from "./fault.js";
import {
  HMM_PFN_ERROR,
  HMM_PFN_REQ_FAULT,
  HMM_PFN_REQ_WRITE,
  HMM_PFN_VALID,
  HMM_PFN_WRITE,
  allocNotifierId,
  hmmPfnOrder,
  hmmRangeFault,
  mmuIntervalReadBegin,
} from "./hmm.js";
import type { Kernel } from "./kernel.js";
import type { Mm } from "./mm.js";
import { doMmap } from "./mmap.js";
import { installNotifierChecks, noteCallback } from "./notifier-checks.js";
import { IntervalSub, type IntervalOps, type NotifierRange, RANGE_END_ALL } from "./mmu-notifier.js";
import {
  MIGRATE_PFN_MIGRATE,
  MIGRATE_PFN_VALID,
  MIGRATE_PFN_WRITE,
  MIGRATE_VMA_SELECT_DEVICE_COHERENT,
  MIGRATE_VMA_SELECT_DEVICE_PRIVATE,
  MIGRATE_VMA_SELECT_SYSTEM,
  MigrateVma,
  evictDevicePages,
  makeDeviceExclusive,
  migrateRangeToRam,
  migrateToRamFault,
  migrateVmaFinalize,
  migrateVmaPages,
  migrateVmaSetup,
  setPagemapOps,
} from "./migrate-device.js";
import { E_LEAF, E_PRESENT, E_PROTNONE, E_TABLE, E_WRITE, SwpKind, WalkCursor, ensureTable, pteIndex, swpKind, walk } from "./pagetable.js";
import { type DevPagemap, PG_allocated, PG_has_data, SECTION_SHIFT } from "./physmem.js";
import type { Vma } from "./vma.js";

// lib/test_hmm_uapi.h
export const HMM_DMIRROR_MEMORY_DEVICE_PRIVATE = 1;
export const HMM_DMIRROR_MEMORY_DEVICE_COHERENT = 2;
export const HMM_DMIRROR_PROT_ERROR = 0xff;
export const HMM_DMIRROR_PROT_NONE = 0x00;
export const HMM_DMIRROR_PROT_READ = 0x01;
export const HMM_DMIRROR_PROT_WRITE = 0x02;
export const HMM_DMIRROR_PROT_PMD = 0x04;
export const HMM_DMIRROR_PROT_PUD = 0x08;
export const HMM_DMIRROR_PROT_ZERO = 0x10;
export const HMM_DMIRROR_PROT_DEV_PRIVATE_LOCAL = 0x20;
export const HMM_DMIRROR_PROT_DEV_PRIVATE_REMOTE = 0x30;
export const HMM_DMIRROR_PROT_DEV_COHERENT_LOCAL = 0x40;
export const HMM_DMIRROR_PROT_DEV_COHERENT_REMOTE = 0x50;
export const HMM_DMIRROR_FLAG_FAIL_ALLOC = 1;

/** DEVMEM_CHUNK_SIZE: 256 MiB of device pages per dev_pagemap. */
export const DMIRROR_CHUNK_PAGES = 65536;
const MAX_CHUNKS = 64;
/** ARRAY_SIZE(pfns): pages per hmm_range_fault / migrate_vma call. */
export const DMIRROR_BATCH_PAGES = 64;
/** HMM_RANGE_DEFAULT_TIMEOUT, ms */
export const HMM_RANGE_DEFAULT_TIMEOUT = 1000;
/** Device owner cookies start here (far from any client's small owners). */
export const DMIRROR_OWNER_BASE = 2 ** 52;

/** Mirror entry tags (the xarray pointer tags of test_hmm). */
export const enum MirrorTag {
  NONE = 0,
  READ = 1,
  WRITE = 2,
  ATOMIC = 3,
}

// ------------------------------------------------------------ mirror table

const FANOUT = 512;

export class MirrorLeaf {
  readonly pfn = new Uint32Array(FANOUT);
  readonly tag = new Uint8Array(FANOUT);
  count = 0;
}

export class MirrorDir {
  /** child index + 1 (leaves at the lowest directory level); 0 = none */
  readonly child = new Int32Array(FANOUT);
  count = 0;
}

/**
 * The device's page table: VA page number -> (PFN, tag), four levels of
 * 512-entry typed-array nodes like the CPU's. Emptied nodes stay until the
 * next trim (lazily, so an invalidation storm does not churn allocations);
 * discard drops everything.
 */
export class MirrorTable {
  private dirs: (MirrorDir | undefined)[] = [new MirrorDir()];
  private leaves: (MirrorLeaf | undefined)[] = [];
  private freeDirs: number[] = [];
  private freeLeaves: number[] = [];
  private emptied = 0;
  /** populated entries */
  size = 0;

  private static idx(vpn: number, level: number): number {
    return Math.floor(vpn / FANOUT ** level) % FANOUT;
  }

  /** last leaf looked up (sequential walks hit it 511 times in 512) */
  private cachedBase = -1;
  private cachedLeaf: MirrorLeaf | undefined = undefined;

  private leafOf(vpn: number, create: boolean): MirrorLeaf | undefined {
    const base = vpn - (vpn % FANOUT);
    if (base === this.cachedBase && this.cachedLeaf !== undefined) return this.cachedLeaf;
    let d = this.dirs[0]!;
    for (let level = 3; level >= 1; level--) {
      const i = MirrorTable.idx(vpn, level);
      let c = d.child[i]!;
      if (c === 0) {
        if (!create) return undefined;
        if (level > 1) {
          const id = this.freeDirs.pop() ?? this.dirs.length;
          this.dirs[id] = new MirrorDir();
          c = id + 1;
        } else {
          const id = this.freeLeaves.pop() ?? this.leaves.length;
          this.leaves[id] = new MirrorLeaf();
          c = id + 1;
        }
        d.child[i] = c;
        d.count++;
      }
      if (level === 1) {
        this.cachedBase = base;
        this.cachedLeaf = this.leaves[c - 1];
        return this.cachedLeaf;
      }
      d = this.dirs[c - 1]!;
    }
    return undefined;
  }

  /** The entry of `vpn` as pfn * 4 + tag, or 0 when there is none (no object per lookup). */
  entry(vpn: number): number {
    const l = this.leafOf(vpn, false);
    if (l === undefined) return 0;
    const j = vpn % FANOUT;
    const tag = l.tag[j]!;
    return tag === MirrorTag.NONE ? 0 : l.pfn[j]! * 4 + tag;
  }

  get(vpn: number): { pfn: number; tag: MirrorTag } | null {
    const e = this.entry(vpn);
    return e === 0 ? null : { pfn: Math.floor(e / 4), tag: (e % 4) as MirrorTag };
  }

  set(vpn: number, pfn: number, tag: MirrorTag): void {
    if (this.emptied > 64) this.trim();
    const l = this.leafOf(vpn, true)!;
    const j = vpn % FANOUT;
    if (l.tag[j] === MirrorTag.NONE) {
      l.count++;
      this.size++;
    }
    l.pfn[j] = pfn;
    l.tag[j] = tag;
  }

  /** Erase every entry with vpn in [first, last] (inclusive, as xa_for_each_range). */
  clearRange(first: number, last: number): void {
    if (this.size === 0) return;
    this.clearDir(this.dirs[0]!, 3, 0, first, last);
  }

  private clearDir(d: MirrorDir, level: number, base: number, first: number, last: number): void {
    const span = FANOUT ** level;
    const lo = Math.max(0, Math.floor((first - base) / span));
    const hi = Math.min(FANOUT - 1, Math.floor((last - base) / span));
    for (let i = lo; i <= hi; i++) {
      const c = d.child[i]!;
      if (c === 0) continue;
      const b = base + i * span;
      if (level > 1) {
        this.clearDir(this.dirs[c - 1]!, level - 1, b, first, last);
        continue;
      }
      const l = this.leaves[c - 1]!;
      if (l.count === 0) continue;
      const s = Math.max(0, first - b);
      const e = Math.min(FANOUT - 1, last - b);
      for (let j = s; j <= e; j++) {
        if (l.tag[j] !== MirrorTag.NONE) {
          l.tag[j] = MirrorTag.NONE;
          l.count--;
          this.size--;
        }
      }
      if (l.count === 0) this.emptied++;
    }
  }

  /** Free empty leaves and directories. */
  trim(): void {
    this.cachedBase = -1;
    this.cachedLeaf = undefined;
    this.trimDir(this.dirs[0]!, 3);
    this.emptied = 0;
  }

  private trimDir(d: MirrorDir, level: number): void {
    for (let i = 0; i < FANOUT; i++) {
      const c = d.child[i]!;
      if (c === 0) continue;
      let empty: boolean;
      if (level > 1) {
        const sub = this.dirs[c - 1]!;
        this.trimDir(sub, level - 1);
        empty = sub.count === 0;
        if (empty) {
          this.dirs[c - 1] = undefined;
          this.freeDirs.push(c - 1);
        }
      } else {
        empty = this.leaves[c - 1]!.count === 0;
        if (empty) {
          this.leaves[c - 1] = undefined;
          this.freeLeaves.push(c - 1);
        }
      }
      if (empty) {
        d.child[i] = 0;
        d.count--;
      }
    }
  }

  /** Drop every entry and node (xa_destroy). */
  discard(): void {
    this.cachedBase = -1;
    this.cachedLeaf = undefined;
    this.dirs = [new MirrorDir()];
    this.leaves = [];
    this.freeDirs = [];
    this.freeLeaves = [];
    this.emptied = 0;
    this.size = 0;
  }

  /** Nodes allocated (root included), for inspection. */
  get nodes(): number {
    return this.dirs.length - this.freeDirs.length + this.leaves.length - this.freeLeaves.length;
  }

  forEach(fn: (vpn: number, pfn: number, tag: MirrorTag) => void): void {
    const visit = (d: MirrorDir, level: number, base: number) => {
      for (let i = 0; i < FANOUT; i++) {
        const c = d.child[i]!;
        if (c === 0) continue;
        const b = base + i * FANOUT ** level;
        if (level > 1) visit(this.dirs[c - 1]!, level - 1, b);
        else {
          const l = this.leaves[c - 1]!;
          if (l.count === 0) continue;
          for (let j = 0; j < FANOUT; j++) if (l.tag[j] !== MirrorTag.NONE) fn(b + j, l.pfn[j]!, l.tag[j] as MirrorTag);
        }
      }
    };
    visit(this.dirs[0]!, 3, 0);
  }
}

// ------------------------------------------------------------------ device

interface Chunk {
  pm: DevPagemap;
  /** the mirror that migrated each page in (zone_device_data); 0 = none */
  readonly owner: Int32Array;
  remove: boolean;
}

/** One /dev/hmm_dmirrorN: its device memory and counters. */
export class DmirrorDevice {
  readonly chunks: Chunk[] = [];
  /** pages handed out / returned by the device allocator */
  calloc = 0;
  cfree = 0;
  constructor(
    private readonly k: Kernel,
    readonly id: number,
    readonly name: string,
    readonly type: MemoryType.DEVICE_PRIVATE | MemoryType.DEVICE_COHERENT,
    /** pgmap owner cookie (pgmap_owner / dev_private_owner) */
    readonly owner: number,
    readonly chunkPages: number,
    readonly session: number,
  ) {}

  get isPrivate(): boolean {
    return this.type === MemoryType.DEVICE_PRIVATE;
  }

  /** dmirror_select_device */
  get selectDevice(): number {
    return this.isPrivate ? MIGRATE_VMA_SELECT_DEVICE_PRIVATE : MIGRATE_VMA_SELECT_DEVICE_COHERENT;
  }

  /** The dev_pagemap_ops of every chunk (after a snapshot restore: closures are not saved). */
  reinstallPagemapOps(): void {
    for (const c of this.chunks) setPagemapOps(this.k, c.pm.id, { migrateToRam: (k, _mm, vma, addr, pfn) => this.migrateToRam(k, vma, addr, pfn) });
  }

  /** dmirror_allocate_chunk: memremap_pages of one more chunk. */
  allocateChunk(): Chunk {
    sweepOrphanChunks(this.k);
    if (this.chunks.length >= MAX_CHUNKS) fail(Errno.ENOMEM, `device ${this.name}: ${MAX_CHUNKS} memory chunks in use`);
    const pm = this.k.phys.registerPagemap(`${this.name}.${this.chunks.length}`, this.type, this.chunkPages, this.owner);
    const c: Chunk = { pm, owner: new Int32Array(this.chunkPages), remove: false };
    this.chunks.push(c);
    setPagemapOps(this.k, pm.id, { migrateToRam: (k, _mm, vma, addr, pfn) => this.migrateToRam(k, vma, addr, pfn) });
    return c;
  }

  private chunkOf(pfn: number): Chunk | undefined {
    for (const c of this.chunks) if (pfn >= c.pm.startPfn && pfn < c.pm.endPfn) return c;
    return undefined;
  }

  /** dmirror_devmem_alloc_page: a device page (refcount 1) owned by `mirror`, or -1. */
  allocPage(mirror: number): number {
    let c = this.chunks.find((x) => !x.remove && x.pm.freeCount > 0);
    if (c === undefined) {
      try {
        c = this.allocateChunk();
      } catch (e) {
        if (e instanceof MmError) return -1;
        throw e;
      }
    }
    const pfn = this.k.phys.allocDevicePage(c.pm);
    if (pfn < 0) return -1;
    c.owner[pfn - c.pm.startPfn] = mirror;
    this.calloc++;
    return pfn;
  }

  /** The mirror that migrated `pfn` in (zone_device_data), or 0. */
  pageMirror(pfn: number): number {
    const c = this.chunkOf(pfn);
    return c === undefined ? 0 : c.owner[pfn - c.pm.startPfn]!;
  }

  ownsPfn(pfn: number): boolean {
    return this.chunkOf(pfn) !== undefined;
  }

  /** dmirror_devmem_fault (dev_pagemap_ops.migrate_to_ram). */
  private migrateToRam(k: Kernel, vma: Vma, addr: number, pfn: number): number {
    const mirror = dmirrorState(k).mirrors.get(this.pageMirror(pfn));
    return migrateToRamFault(k, vma, addr, pfn, this.owner, (a) => mirror?.pt.clearRange(a / PAGE_SIZE, a / PAGE_SIZE));
  }

  /** Pages in use across the chunks. */
  get pagesInUse(): number {
    let n = 0;
    for (const c of this.chunks) n += c.pm.allocated;
    return n;
  }

  /**
   * dmirror_device_remove_chunks: evict every device page to RAM and unmap
   * the chunks; memory is allocated again on demand. Returns pages evicted.
   */
  removeChunks(): number {
    sweepOrphanChunks(this.k);
    const p = this.k.phys;
    let evicted = 0;
    for (const c of this.chunks) {
      c.remove = true;
      const inUse: number[] = [];
      for (let pfn = c.pm.startPfn; pfn < c.pm.endPfn; pfn++) if (p.flags(pfn) & PG_allocated && p.refcount(pfn) > 0) inUse.push(pfn);
      evicted += evictDevicePages(this.k, inUse);
    }
    for (const c of this.chunks.splice(0)) {
      setPagemapOps(this.k, c.pm.id, null);
      // memunmap_pages waits for the last reference: a page that could not
      // move keeps its pagemap alive until it is freed.
      if (c.pm.allocated === 0) p.unregisterPagemap(c.pm.id);
      else dmirrorState(this.k).orphanChunks.push(c.pm);
    }
    return evicted;
  }
}

// ------------------------------------------------------------------ mirror

/** One open mirror (struct dmirror): an mm, its notifier and its page table. */
export class Dmirror implements IntervalOps {
  readonly pt = new MirrorTable();
  flags = 0;
  /** device lock held across a step (only tests set it, to exercise refusal). */
  lockHeld = false;
  readonly sub: IntervalSub;
  closed = false;

  constructor(
    private readonly k: Kernel,
    readonly id: number,
    readonly device: DmirrorDevice,
    readonly mm: Mm,
    session: number,
  ) {
    this.sub = new IntervalSub(allocNotifierId(k), mm.id, 0, RANGE_END_ALL - 1, this, session);
  }

  /** dmirror_interval_invalidate */
  invalidate(sub: IntervalSub, range: NotifierRange, curSeq: number): boolean {
    noteCallback(this.k, sub, range);
    if (range.event === MmuNotifyEvent.MIGRATE && range.owner === this.device.owner) return true;
    if (!range.blockable && (this.lockHeld || this.k.inject.fail("mirror_ack"))) return false;
    sub.seq = curSeq;
    // dmirror_do_update: pages [start, end), end exclusive (clearRange takes the last page).
    this.pt.clearRange(Math.floor(range.start / PAGE_SIZE), Math.ceil(Math.min(range.end, RANGE_END_ALL) / PAGE_SIZE) - 1);
    return true;
  }

  /**
   * Copy mirrored pages of [start, end) into `bounce` (zero-filled, `base`
   * at offset 0; null to only count) until the first missing one
   * (dmirror_do_read).
   */
  doRead(start: number, end: number, base: number, bounce: Uint8Array | null, counts: { cpages: number }): number {
    const p = this.k.phys;
    for (let a = start; a < end; a += PAGE_SIZE) {
      const e = this.pt.entry(a / PAGE_SIZE);
      if (e === 0) return -Errno.ENOENT;
      if (bounce !== null) {
        const pfn = Math.floor(e / 4);
        const s = p.section(pfn);
        const bytes = s === undefined ? null : p.data.read(s, pfn & ((1 << SECTION_SHIFT) - 1));
        if (bytes !== null) bounce.set(bytes, a - base);
      }
      counts.cpages++;
    }
    return 0;
  }

  /** dmirror_do_write: only WRITE-tagged entries may be written. */
  doWrite(start: number, end: number, base: number, bounce: Uint8Array, counts: { cpages: number }): number {
    const p = this.k.phys;
    for (let a = start; a < end; a += PAGE_SIZE) {
      const e = this.pt.entry(a / PAGE_SIZE);
      if (e === 0 || e % 4 !== MirrorTag.WRITE) return -Errno.ENOENT;
      const pfn = Math.floor(e / 4);
      const s = p.sec(pfn);
      p.data.writable(s, pfn & ((1 << SECTION_SHIFT) - 1)).set(bounce.subarray(a - base, a - base + PAGE_SIZE));
      p.orFlags(p.folioHead(pfn), PG_has_data);
      counts.cpages++;
    }
    return 0;
  }
}

// -------------------------------------------------------------- registry

export interface DmirrorState {
  readonly devices: Map<number, DmirrorDevice>;
  readonly mirrors: Map<number, Dmirror>;
  /** pagemaps of removed chunks still referenced */
  readonly orphanChunks: DevPagemap[];
  /** N4 violations seen at commit time (bounded) */
  readonly n4: { message: string; mmId: number; addr: number }[];
  nextDevice: number;
  nextMirror: number;
}

const dstates = new WeakMap<Kernel, DmirrorState>();

/** The dmirror registry of a kernel; registers the N4/N5 checks on first use. */
export function dmirrorState(k: Kernel): DmirrorState {
  let s = dstates.get(k);
  if (s === undefined) {
    const st: DmirrorState = { devices: new Map(), mirrors: new Map(), orphanChunks: [], n4: [], nextDevice: 1, nextMirror: 1 };
    s = st;
    dstates.set(k, st);
    installNotifierChecks(k);
    k.extraChecks.push((add) => checkMirrors(k, st, add));
  }
  return s;
}

/** Snapshot support: the registry if it was ever created. */
export function peekDmirrorState(k: Kernel): DmirrorState | undefined {
  return dstates.get(k);
}

/**
 * Snapshot restore: the restored registry's contents go into `k`'s
 * registry (created, with its checks, as on first use) and every device's
 * dev_pagemap_ops are installed again.
 */
export function adoptDmirrorState(k: Kernel, from: DmirrorState): void {
  const st = dmirrorState(k);
  Object.assign(st, from);
  for (const dev of st.devices.values()) dev.reinstallPagemapOps();
}

/** Unmap the chunks of removed devices whose last page has been freed since. */
export function sweepOrphanChunks(k: Kernel): void {
  const st = dmirrorState(k);
  for (let i = st.orphanChunks.length - 1; i >= 0; i--) {
    const pm = st.orphanChunks[i]!;
    if (pm.allocated > 0) continue;
    if (k.phys.pagemaps.has(pm.id)) k.phys.unregisterPagemap(pm.id);
    st.orphanChunks.splice(i, 1);
  }
}

export function createDmirrorDevice(
  k: Kernel,
  name: string,
  memory: typeof HMM_DMIRROR_MEMORY_DEVICE_PRIVATE | typeof HMM_DMIRROR_MEMORY_DEVICE_COHERENT,
  chunkPages: number,
  session: number,
): DmirrorDevice {
  const st = dmirrorState(k);
  if (memory !== HMM_DMIRROR_MEMORY_DEVICE_PRIVATE && memory !== HMM_DMIRROR_MEMORY_DEVICE_COHERENT) invalid(`unknown dmirror memory type ${memory}`);
  const pages = chunkPages === 0 ? DMIRROR_CHUNK_PAGES : chunkPages;
  if (!Number.isSafeInteger(pages) || pages < 1 || pages > 1 << 20) invalid(`chunk of ${pages} pages out of range (1 .. 4 GiB)`);
  const id = st.nextDevice++;
  const type = memory === HMM_DMIRROR_MEMORY_DEVICE_PRIVATE ? MemoryType.DEVICE_PRIVATE : MemoryType.DEVICE_COHERENT;
  const dev = new DmirrorDevice(k, id, name !== "" ? name : `hmm_dmirror${id - 1}`, type, DMIRROR_OWNER_BASE + id, pages, session);
  // dmirror_device_init allocates the first chunk up front.
  dev.allocateChunk();
  st.devices.set(id, dev);
  return dev;
}

/** Remove a device: its memory is evicted to RAM (device removal). */
export function destroyDmirrorDevice(k: Kernel, dev: DmirrorDevice): void {
  const st = dmirrorState(k);
  dev.removeChunks();
  st.devices.delete(dev.id);
}

/** dmirror_fops_open: a mirror of `mm` with a notifier over the whole address space. */
export function openDmirror(k: Kernel, dev: DmirrorDevice, mm: Mm, session: number): Dmirror {
  const st = dmirrorState(k);
  if (mm.exited || mm.mmUsers <= 0) fail(Errno.EINVAL, `mm ${mm.id} has exited`);
  const m = new Dmirror(k, st.nextMirror++, dev, mm, session);
  mm.notifier.insert(m.sub, RANGE_END_ALL, mm.mmUsers);
  st.mirrors.set(m.id, m);
  return m;
}

/**
 * dmirror_fops_release: remove the notifier (resolves once no invalidation
 * is running) and destroy the mirror table.
 */
export async function closeDmirror(k: Kernel, m: Dmirror): Promise<void> {
  if (m.closed) return;
  m.closed = true;
  dmirrorState(k).mirrors.delete(m.id);
  const wait = m.mm.notifier.remove(m.sub);
  m.pt.discard();
  if (wait !== null) await wait;
}

// -------------------------------------------------------------- commands

/** How a command runs the model: each step is one operation on the mm. */
export interface DmirrorEnv {
  /** run `fn` synchronously as one model operation on `mm` (mmap read lock) */
  op<T>(mm: Mm, fn: () => T): Promise<T>;
  /** milliseconds (HMM_RANGE_DEFAULT_TIMEOUT) */
  now(): number;
}

export interface DmirrorCmdResult {
  /** 0 or a negative errno (the ioctl's return) */
  ret: number;
  cpages: number;
  faults: number;
  /** READ / MIGRATE_TO_DEV / EXCLUSIVE: the mirrored data; SNAPSHOT: one permission byte per page */
  data: Uint8Array;
}

function result(ret: number, cpages: number, faults: number, data: Uint8Array): DmirrorCmdResult {
  return { ret, cpages, faults, data };
}

/** The ioctl's common checks: page-aligned address, a non-empty range that does not wrap. */
export function checkCmd(addr: number, npages: number): number {
  if (!Number.isSafeInteger(addr) || addr < 0 || addr % PAGE_SIZE !== 0) return -Errno.EINVAL;
  if (!Number.isSafeInteger(npages) || npages <= 0 || addr + npages * PAGE_SIZE > Number.MAX_SAFE_INTEGER) return -Errno.EINVAL;
  return 0;
}

function mmLive(mm: Mm): boolean {
  return !mm.exited && mm.mmUsers > 0;
}

/**
 * dmirror_range_fault: the read_begin / hmm_range_fault / read_retry loop
 * for one batch, storing the result in the mirror.
 */
async function rangeFault(k: Kernel, env: DmirrorEnv, m: Dmirror, start: number, end: number, write: boolean): Promise<number> {
  const npages = (end - start) / PAGE_SIZE;
  const pfns = new Uint32Array(2 * npages);
  const deadline = env.now() + HMM_RANGE_DEFAULT_TIMEOUT;
  for (;;) {
    if (env.now() > deadline) return -Errno.EBUSY;
    const seq = await mmuIntervalReadBegin(m.mm, m.sub);
    if (!mmLive(m.mm)) return -Errno.EINVAL;
    const r = await env.op(m.mm, () =>
      hmmRangeFault(k, m.mm, {
        notifier: m.sub,
        notifierSeq: seq,
        start,
        end,
        hmmPfns: pfns,
        runs: null,
        defaultFlags: HMM_PFN_REQ_FAULT | (write ? HMM_PFN_REQ_WRITE : 0),
        pfnFlagsMask: 0,
        devPrivateOwner: m.device.owner,
      }),
    );
    if (r.ret === -Errno.EBUSY) continue;
    if (r.ret !== 0) return r.ret;
    // Device lock: read_retry and the update of the mirror, with no await.
    if (m.mm.notifier.readRetry(m.sub, seq)) continue;
    return commitFault(k, m, start, npages, pfns, write);
  }
}

/** dmirror_do_fault: store VALID entries (WRITE-tagged when writable). */
function commitFault(k: Kernel, m: Dmirror, start: number, npages: number, pfns: Uint32Array, write: boolean): number {
  noteN4(k, m, start);
  for (let i = 0; i < npages; i++) {
    const hi = pfns[2 * i + 1]!;
    if (hi & HMM_PFN_ERROR || !(hi & HMM_PFN_VALID)) return -Errno.EFAULT;
    if (!(hi & HMM_PFN_WRITE) && write) return -Errno.EFAULT;
    m.pt.set(start / PAGE_SIZE + i, pfns[2 * i]!, hi & HMM_PFN_WRITE ? MirrorTag.WRITE : MirrorTag.READ);
  }
  return 0;
}

/** N4: a commit while an invalidation that hit this mirror is still running. */
function noteN4(k: Kernel, m: Dmirror, addr: number): void {
  const n = m.mm.notifier;
  if (n.invalidating && m.sub.seq === n.seq) {
    const st = dmirrorState(k);
    if (st.n4.length < 50) st.n4.push({ message: `mirror ${m.id} committed an hmm_range_fault result during an invalidation`, mmId: m.mm.id, addr });
  }
}

/** dmirror_fault over [start, end) in batches. */
async function dmirrorFault(k: Kernel, env: DmirrorEnv, m: Dmirror, start: number, end: number, write: boolean): Promise<number> {
  if (!mmLive(m.mm)) return -Errno.EINVAL;
  for (let a = start; a < end; ) {
    const e = Math.min(end, a + DMIRROR_BATCH_PAGES * PAGE_SIZE);
    const r = await rangeFault(k, env, m, a, e, write);
    if (r !== 0) return r;
    a = e;
  }
  return 0;
}

/** HMM_DMIRROR_READ */
export async function dmirrorRead(k: Kernel, env: DmirrorEnv, m: Dmirror, addr: number, npages: number): Promise<DmirrorCmdResult> {
  const bad = checkCmd(addr, npages);
  if (bad) return result(bad, 0, 0, new Uint8Array(0));
  const end = addr + npages * PAGE_SIZE;
  const bounce = new Uint8Array(npages * PAGE_SIZE);
  const counts = { cpages: 0 };
  let faults = 0;
  let start = addr;
  let ret: number;
  for (;;) {
    ret = m.doRead(start, end, addr, bounce, counts);
    if (ret !== -Errno.ENOENT) break;
    start = addr + counts.cpages * PAGE_SIZE;
    ret = await dmirrorFault(k, env, m, start, end, false);
    if (ret !== 0) break;
    faults++;
  }
  return result(ret, counts.cpages, faults, ret === 0 ? bounce : new Uint8Array(0));
}

/** HMM_DMIRROR_WRITE */
export async function dmirrorWrite(k: Kernel, env: DmirrorEnv, m: Dmirror, addr: number, npages: number, data: Uint8Array): Promise<DmirrorCmdResult> {
  const bad = checkCmd(addr, npages);
  if (bad) return result(bad, 0, 0, new Uint8Array(0));
  const end = addr + npages * PAGE_SIZE;
  const bounce = new Uint8Array(npages * PAGE_SIZE);
  bounce.set(data.subarray(0, bounce.length));
  const counts = { cpages: 0 };
  let faults = 0;
  let start = addr;
  let ret: number;
  for (;;) {
    ret = m.doWrite(start, end, addr, bounce, counts);
    if (ret !== -Errno.ENOENT) break;
    start = addr + counts.cpages * PAGE_SIZE;
    ret = await dmirrorFault(k, env, m, start, end, true);
    if (ret !== 0) break;
    faults++;
  }
  return result(ret, counts.cpages, faults, new Uint8Array(0));
}

/** The VMA chunks of a migration command: vma_lookup + VM_READ, at most a batch each. */
function migrateChunks(m: Dmirror, addr: number, end: number, each: (vma: Vma, a: number, next: number) => void): number {
  for (let a = addr; a < end; ) {
    const vma = m.mm.findVma(a);
    if (vma === undefined || !(vma.flags & VM_READ)) return -Errno.EINVAL;
    const next = Math.min(end, a + DMIRROR_BATCH_PAGES * PAGE_SIZE, vma.end);
    each(vma, a, next);
    a = next;
  }
  return 0;
}

/** HMM_DMIRROR_MIGRATE_TO_DEV */
export async function dmirrorMigrateToDevice(k: Kernel, env: DmirrorEnv, m: Dmirror, addr: number, npages: number, omitData = false): Promise<DmirrorCmdResult> {
  const bad = checkCmd(addr, npages);
  if (bad) return result(bad, 0, 0, new Uint8Array(0));
  if (!mmLive(m.mm)) return result(-Errno.EINVAL, 0, 0, new Uint8Array(0));
  const end = addr + npages * PAGE_SIZE;
  const dev = m.device;
  const ret = await env.op(m.mm, () =>
    migrateChunks(m, addr, end, (vma, a, next) => {
      const mv = new MigrateVma(vma, a, next, dev.owner, MIGRATE_VMA_SELECT_SYSTEM);
      if (migrateVmaSetup(k, mv) !== 0) return;
      allocAndCopyToDevice(k, m, mv);
      migrateVmaPages(k, mv);
      finalizeAndMap(m, mv);
      migrateVmaFinalize(k, mv);
    }),
  );
  if (ret !== 0) return result(ret, 0, 0, new Uint8Array(0));
  // Return the migrated data for verification (no faulting).
  const bounce = omitData ? null : new Uint8Array(npages * PAGE_SIZE);
  const counts = { cpages: 0 };
  const r = m.doRead(addr, end, addr, bounce, counts);
  return result(r, counts.cpages, 0, r === 0 && bounce !== null ? bounce : new Uint8Array(0));
}

/** dmirror_migrate_alloc_and_copy */
function allocAndCopyToDevice(k: Kernel, m: Dmirror, mv: MigrateVma): void {
  const p = k.phys;
  for (let i = 0; i < mv.npages; i++) {
    if (!(mv.srcFlags[i]! & MIGRATE_PFN_MIGRATE)) continue;
    const spage = mv.hasPage(i) ? mv.srcPfn[i]! : -1;
    if (spage >= 0 && p.memoryType(spage) !== MemoryType.NONE) continue; // already device memory
    const dpage = m.device.allocPage(m.id);
    if (dpage < 0) continue;
    if (spage >= 0) copyPageData(k, spage, dpage);
    const write = (mv.srcFlags[i]! & MIGRATE_PFN_WRITE) !== 0 || (spage < 0 && (mv.vma.flags & VM_WRITE) !== 0);
    mv.setDst(i, dpage, write);
  }
}

/** dmirror_migrate_finalize_and_map: the new device pages go into the mirror. */
function finalizeAndMap(m: Dmirror, mv: MigrateVma): void {
  for (let i = 0; i < mv.npages; i++) {
    if (!(mv.srcFlags[i]! & MIGRATE_PFN_MIGRATE) || !(mv.dstFlags[i]! & MIGRATE_PFN_VALID)) continue;
    m.pt.set(mv.start / PAGE_SIZE + i, mv.dstPfn[i]!, mv.dstFlags[i]! & MIGRATE_PFN_WRITE ? MirrorTag.WRITE : MirrorTag.READ);
  }
}

/** HMM_DMIRROR_MIGRATE_TO_SYS: cpages = pages actually migrated. */
export async function dmirrorMigrateToSystem(k: Kernel, env: DmirrorEnv, m: Dmirror, addr: number, npages: number): Promise<DmirrorCmdResult> {
  const bad = checkCmd(addr, npages);
  if (bad) return result(bad, 0, 0, new Uint8Array(0));
  if (!mmLive(m.mm)) return result(-Errno.EINVAL, 0, 0, new Uint8Array(0));
  const end = addr + npages * PAGE_SIZE;
  const dev = m.device;
  let cpages = 0;
  const ret = await env.op(m.mm, () =>
    migrateChunks(m, addr, end, (vma, a, next) => {
      const moved = migrateRangeToRam(k, vma, a, next, dev.owner, dev.selectDevice, -1, (va) => m.pt.clearRange(va / PAGE_SIZE, va / PAGE_SIZE));
      if (moved > 0) cpages += moved;
    }),
  );
  return result(ret, ret === 0 ? cpages : 0, 0, new Uint8Array(0));
}

/** HMM_DMIRROR_SNAPSHOT: one permission byte per page, never faulting. */
export async function dmirrorSnapshot(k: Kernel, env: DmirrorEnv, m: Dmirror, addr: number, npages: number): Promise<DmirrorCmdResult> {
  const bad = checkCmd(addr, npages);
  if (bad) return result(bad, 0, 0, new Uint8Array(0));
  if (!mmLive(m.mm)) return result(-Errno.EINVAL, 0, 0, new Uint8Array(0));
  const end = addr + npages * PAGE_SIZE;
  const out = new Uint8Array(npages);
  let cpages = 0;
  for (let a = addr; a < end; ) {
    const next = Math.min(end, a + DMIRROR_BATCH_PAGES * PAGE_SIZE);
    const r = await rangeSnapshot(k, env, m, a, next, out.subarray((a - addr) / PAGE_SIZE));
    if (r !== 0) return result(r, 0, 0, new Uint8Array(0));
    cpages += (next - a) / PAGE_SIZE;
    a = next;
  }
  return result(0, cpages, 0, out);
}

/** A snapshot's temporary notifier only records the sequence. */
const snapshotOps: IntervalOps = {
  invalidate(sub, _range, curSeq) {
    sub.seq = curSeq;
    return true;
  },
};

/** dmirror_range_snapshot */
async function rangeSnapshot(k: Kernel, env: DmirrorEnv, m: Dmirror, start: number, end: number, perm: Uint8Array): Promise<number> {
  const mm = m.mm;
  const npages = (end - start) / PAGE_SIZE;
  const sub = new IntervalSub(allocNotifierId(k), mm.id, start, end - 1, snapshotOps, m.sub.session);
  try {
    mm.notifier.insert(sub, end - start, mm.mmUsers);
  } catch (e) {
    if (e instanceof MmError) return -e.errno;
    throw e;
  }
  const pfns = new Uint32Array(2 * npages);
  const deadline = env.now() + HMM_RANGE_DEFAULT_TIMEOUT;
  let ret = 0;
  try {
    for (;;) {
      if (env.now() > deadline) {
        ret = -Errno.EBUSY;
        break;
      }
      const seq = await mmuIntervalReadBegin(mm, sub);
      const r = await env.op(mm, () =>
        hmmRangeFault(k, mm, {
          notifier: sub,
          notifierSeq: seq,
          start,
          end,
          hmmPfns: pfns,
          runs: null,
          defaultFlags: 0,
          pfnFlagsMask: 0,
          devPrivateOwner: m.device.owner,
        }),
      );
      if (r.ret === -Errno.EBUSY) continue;
      if (r.ret !== 0) {
        ret = r.ret;
        break;
      }
      if (mm.notifier.readRetry(sub, seq)) continue;
      for (let i = 0; i < npages; i++) perm[i] = mkentry(k, m, pfns[2 * i]!, pfns[2 * i + 1]!);
      break;
    }
  } finally {
    const wait = mm.notifier.remove(sub);
    if (wait !== null) await wait;
  }
  return ret;
}

/** dmirror_mkentry: an HMM pfn entry as a HMM_DMIRROR_PROT_* byte. */
export function mkentry(k: Kernel, m: Dmirror, pfn: number, hi: number): number {
  if (hi & HMM_PFN_ERROR) return HMM_DMIRROR_PROT_ERROR;
  if (!(hi & HMM_PFN_VALID)) return HMM_DMIRROR_PROT_NONE;
  const p = k.phys;
  const t = p.memoryType(pfn);
  let perm: number;
  if (t === MemoryType.DEVICE_PRIVATE) perm = m.device.ownsPfn(pfn) ? HMM_DMIRROR_PROT_DEV_PRIVATE_LOCAL : HMM_DMIRROR_PROT_DEV_PRIVATE_REMOTE;
  else if (t === MemoryType.DEVICE_COHERENT) perm = m.device.ownsPfn(pfn) ? HMM_DMIRROR_PROT_DEV_COHERENT_LOCAL : HMM_DMIRROR_PROT_DEV_COHERENT_REMOTE;
  else if (p.isZeroPfn(pfn)) perm = HMM_DMIRROR_PROT_ZERO;
  else perm = HMM_DMIRROR_PROT_NONE;
  perm |= hi & HMM_PFN_WRITE ? HMM_DMIRROR_PROT_WRITE : HMM_DMIRROR_PROT_READ;
  const order = hmmPfnOrder(hi);
  if (order === 9) perm |= HMM_DMIRROR_PROT_PMD;
  else if (order === 18) perm |= HMM_DMIRROR_PROT_PUD;
  return perm;
}

/** HMM_DMIRROR_EXCLUSIVE */
export async function dmirrorExclusive(k: Kernel, env: DmirrorEnv, m: Dmirror, addr: number, npages: number): Promise<DmirrorCmdResult> {
  const bad = checkCmd(addr, npages);
  if (bad) return result(bad, 0, 0, new Uint8Array(0));
  if (!mmLive(m.mm)) return result(-Errno.EINVAL, 0, 0, new Uint8Array(0));
  const end = addr + npages * PAGE_SIZE;
  const ret = await env.op(m.mm, () => {
    for (let a = addr; a < end; a += PAGE_SIZE) {
      try {
        // test_hmm passes a NULL owner: its own callback sees the event too.
        const pfn = makeDeviceExclusive(k, m.mm, a, 0);
        m.pt.set(a / PAGE_SIZE, pfn, MirrorTag.ATOMIC);
      } catch (e) {
        if (e instanceof MmError) return -e.errno;
        throw e;
      }
    }
    return 0;
  });
  if (ret !== 0) return result(ret, 0, 0, new Uint8Array(0));
  const bounce = new Uint8Array(npages * PAGE_SIZE);
  const counts = { cpages: 0 };
  const r = m.doRead(addr, end, addr, bounce, counts);
  return result(r, counts.cpages, 0, r === 0 ? bounce : new Uint8Array(0));
}

/** HMM_DMIRROR_CHECK_EXCLUSIVE: -EPERM while any entry of the range is still atomic. */
export function dmirrorCheckExclusive(m: Dmirror, addr: number, npages: number): DmirrorCmdResult {
  const bad = checkCmd(addr, npages);
  if (bad) return result(bad, 0, 0, new Uint8Array(0));
  for (let i = 0; i < npages; i++) {
    const e = m.pt.get(addr / PAGE_SIZE + i);
    if (e !== null && e.tag === MirrorTag.ATOMIC) return result(-Errno.EPERM, 0, 0, new Uint8Array(0));
  }
  return result(0, 0, 0, new Uint8Array(0));
}

/**
 * dmirror_fops_mmap: one zeroed kernel page per page of a new VM_MIXEDMAP
 * mapping, inserted with vm_insert_page (a refcounted, non-special PTE with
 * the VMA's page protection). Returns the address.
 */
export function dmirrorMmap(k: Kernel, mm: Mm, length: number, prot: number, flags: number): number {
  const addr = doMmap(k, mm, { addr: 0, length, prot, flags, fileId: 0, offset: 0, device: { kind: "mixedmap", pfnRangeId: 0, basePfn: -1, hugeFault: false } });
  const vma = mm.findVma(addr)!;
  const p = k.phys;
  for (let a = vma.start; a < vma.end; a += PAGE_SIZE) {
    const page = p.allocFolio(0, 0);
    if (page < 0) fail(Errno.ENOMEM, "no memory for the device's pages");
    const t = ensureTable(k.pt, mm.pgd, a, Level.PTE);
    if (t <= 0) {
      p.folioPut(page);
      fail(Errno.ENOMEM, "no memory for a page table");
    }
    // insert_page: folio_get + file rmap + the VMA's protection; then put_page.
    k.pt.set(t, pteIndex(a), page, vmInsertPageBits(vma));
    k.rmapAddPtes(mm, page, 1);
    p.folioPut(page);
  }
  return addr;
}

function vmInsertPageBits(vma: Vma): number {
  // mk_pte(page, vma->vm_page_prot): writable only for shared writable mappings.
  let b = E_PRESENT | 0x4 /* E_USER */ | 0x8 /* E_YOUNG */;
  if (vma.pageProtWritable) b |= E_WRITE;
  if (!(vma.flags & 0x7)) b |= E_PROTNONE;
  if (vma.flags & 0x4) b |= 0x800; // E_EXEC
  return b;
}

// ---------------------------------------------------------------- checks

const cursor = new WalkCursor();

/** N4 (recorded at commit) and N5: every daemon-side mirror entry matches the CPU. */
function checkMirrors(k: Kernel, st: DmirrorState, add: (v: { code: string; message: string; pfn?: number; mmId?: number; addr?: number }) => void): void {
  for (const v of st.n4) add({ code: "N4", message: v.message, mmId: v.mmId, addr: v.addr });
  for (const m of st.mirrors.values()) {
    if (m.mm.exited) {
      if (m.pt.size > 0) add({ code: "N5", message: `mirror ${m.id} holds ${m.pt.size} entries of an exited mm`, mmId: m.mm.id });
      continue;
    }
    m.pt.forEach((vpn, pfn, tag) => {
      const addr = vpn * PAGE_SIZE;
      const why = mirrorMismatch(k, m.mm, addr, pfn, tag);
      if (why !== null) add({ code: "N5", message: `mirror ${m.id} (device ${m.device.name}) entry for PFN ${pfn}: ${why}`, mmId: m.mm.id, addr, pfn });
    });
  }
}

/** Why the mirror entry (pfn, tag) at addr disagrees with the CPU page table, or null. */
function mirrorMismatch(k: Kernel, mm: Mm, addr: number, pfn: number, tag: MirrorTag): string | null {
  walk(k.pt, mm.pgd, addr, cursor);
  const { level, lo, hi } = cursor;
  if (level === Level.PGD || (hi === 0 && lo === 0) || hi & E_TABLE) return "the CPU maps nothing there";
  if (!(hi & E_PRESENT)) {
    const kind = swpKind(hi);
    if (tag === MirrorTag.ATOMIC) return kind === SwpKind.DEVICE_EXCLUSIVE && lo === pfn ? null : "atomic entry without the device-exclusive CPU entry";
    if (kind !== SwpKind.DEVICE_PRIVATE_READ && kind !== SwpKind.DEVICE_PRIVATE_WRITE) return `CPU entry is a non-present entry of kind ${kind}`;
    if (lo !== pfn) return `CPU maps device PFN ${lo}`;
    if (tag === MirrorTag.WRITE && kind !== SwpKind.DEVICE_PRIVATE_WRITE) return "writable in the mirror, read-only for the CPU";
    return null;
  }
  if (tag === MirrorTag.ATOMIC) return "atomic entry but the CPU entry is present";
  if (hi & E_PROTNONE) return "CPU entry is PROT_NONE";
  let cpuPfn = lo;
  if (level !== Level.PTE && hi & E_LEAF) cpuPfn = lo + Math.floor((addr % (level === Level.PUD ? 2 ** 30 : 2 ** 21)) / PAGE_SIZE);
  if (cpuPfn !== pfn) return `CPU maps PFN ${cpuPfn}`;
  if (tag === MirrorTag.WRITE && !(hi & E_WRITE)) return "writable in the mirror, read-only for the CPU";
  return null;
}

