/**
 * 4-level x86-64 page tables (PGD -> PUD -> PMD -> PTE; P4D folded), all
 * tables of all mms in one pool of typed-array chunks.
 *
 * A table is 512 entries of two 32-bit words (8 bytes per entry, as on x86):
 *   word 0: the PFN of a leaf or non-present entry, or the child table id;
 *   word 1: the entry bits below.
 * An entry with both words 0 is pte_none. Table id 0 is never allocated.
 *
 * Leaves exist at PUD (1 GiB) and PMD (2 MiB) level with E_LEAF set, and at
 * PTE level. A slot holds either a table (E_TABLE) or a leaf, never both (T1).
 */
import * as C from "./constants.js";
import { Level } from "./constants.js";

// Module-local bindings of what the walk and the index arithmetic use per
// page: loaders that compile ES imports to accessor calls (tsx, vite-node)
// would otherwise make every read of an imported name a getter call.
const { PAGE_SHIFT, PMD_SHIFT, PTRS_PER_TABLE, PUD_SIZE } = C;
const LEVEL_PTE = Level.PTE;
const LEVEL_PMD = Level.PMD;
const LEVEL_PUD = Level.PUD;
const LEVEL_PGD = Level.PGD;

// Entry bits (word 1).
export const E_PRESENT = 1 << 0;
export const E_WRITE = 1 << 1;
export const E_USER = 1 << 2;
export const E_YOUNG = 1 << 3;
export const E_DIRTY = 1 << 4;
export const E_LEAF = 1 << 5; // huge leaf (PSE) at PMD/PUD
export const E_SPECIAL = 1 << 6; // pte_special: no struct page semantics
export const E_PROTNONE = 1 << 7; // present for the kernel, not for the hardware
export const E_TABLE = 1 << 8; // points to a lower-level table
export const E_SOFT_DIRTY = 1 << 9;
export const E_UFFD_WP = 1 << 10;
export const E_EXEC = 1 << 11;
/** swap-like entries: the page was AnonExclusive (migration read-exclusive). */
export const E_SWP_EXCLUSIVE = 1 << 12;
export const SWP_KIND_SHIFT = 16;
export const SWP_KIND_MASK = 0xf << SWP_KIND_SHIFT;

/** Non-present ("swap-like") entry kinds, spec 1.4 item 6. */
export enum SwpKind {
  NONE = 0,
  MIGRATION_READ = 1,
  MIGRATION_READ_EXCLUSIVE = 2,
  MIGRATION_WRITE = 3,
  DEVICE_PRIVATE_READ = 4,
  DEVICE_PRIVATE_WRITE = 5,
  DEVICE_EXCLUSIVE = 6,
  MARKER = 7,
  SWAP = 8,
}

/** PTE marker kinds (stored in the pfn word of a MARKER entry). */
export const PTE_MARKER_UFFD_WP = 1;
export const PTE_MARKER_POISONED = 2;
export const PTE_MARKER_GUARD = 4;

export function swpKind(bits: number): SwpKind {
  return ((bits & SWP_KIND_MASK) >>> SWP_KIND_SHIFT) as SwpKind;
}
export function swpBits(kind: SwpKind): number {
  return kind << SWP_KIND_SHIFT;
}

const TABLE_WORDS = PTRS_PER_TABLE * 2;
const TABLES_PER_CHUNK = 64;
const CHUNK_SHIFT = 6;

export class TablePool {
  private readonly chunks: Uint32Array[] = [];
  /** non-none entries per table. */
  private used = new Uint16Array(TABLES_PER_CHUNK);
  private level = new Uint8Array(TABLES_PER_CHUNK);
  private readonly freeIds: number[] = [];
  private next = 1;
  live = 0;
  /** leaf/table entry writes, for exact operation counts (W6). */
  writes = 0;
  /** Fault-injection hook: return true to fail a table allocation. */
  allocFailHook: (() => boolean) | null = null;

  /** Allocate a zeroed table for entries of `level`; -1 on (injected) failure. */
  alloc(level: Level): number {
    if (this.allocFailHook?.()) return -1;
    let id = this.freeIds.pop();
    if (id === undefined) {
      id = this.next++;
      const c = id >>> CHUNK_SHIFT;
      while (this.chunks.length <= c) this.chunks.push(new Uint32Array(TABLES_PER_CHUNK * TABLE_WORDS));
      if (id >= this.used.length) {
        const u = new Uint16Array(this.used.length * 2);
        u.set(this.used);
        this.used = u;
        const l = new Uint8Array(this.level.length * 2);
        l.set(this.level);
        this.level = l;
      }
    } else {
      this.chunks[id >>> CHUNK_SHIFT]!.fill(0, this.base(id), this.base(id) + TABLE_WORDS);
    }
    this.used[id] = 0;
    this.level[id] = level;
    this.live++;
    return id;
  }

  release(id: number): void {
    this.freeIds.push(id);
    this.used[id] = 0;
    this.live--;
  }

  chunk(id: number): Uint32Array {
    return this.chunks[id >>> CHUNK_SHIFT]!;
  }
  base(id: number): number {
    return (id & (TABLES_PER_CHUNK - 1)) * TABLE_WORDS;
  }
  levelOf(id: number): Level {
    return this.level[id] as Level;
  }
  usedCount(id: number): number {
    return this.used[id]!;
  }

  /** word 0 (pfn or child table) of entry `i`. */
  lo(id: number, i: number): number {
    return this.chunks[id >>> CHUNK_SHIFT]![this.base(id) + 2 * i]!;
  }
  /** word 1 (bits) of entry `i`. */
  hi(id: number, i: number): number {
    return this.chunks[id >>> CHUNK_SHIFT]![this.base(id) + 2 * i + 1]!;
  }

  /** Write an entry, keeping the table's used count. */
  set(id: number, i: number, lo: number, hi: number): void {
    const c = this.chunks[id >>> CHUNK_SHIFT]!;
    const o = this.base(id) + 2 * i;
    const was = c[o + 1] !== 0 || c[o] !== 0;
    const now = hi !== 0 || lo !== 0;
    c[o] = lo;
    c[o + 1] = hi;
    if (was !== now) this.used[id]! += now ? 1 : -1;
    this.writes++;
  }

  /** Update the bits of a populated entry (no used-count change). */
  setBits(id: number, i: number, hi: number): void {
    this.chunks[id >>> CHUNK_SHIFT]![this.base(id) + 2 * i + 1] = hi;
  }

  clear(id: number, i: number): void {
    this.set(id, i, 0, 0);
  }

  /** Number of table slots allocated (for memory accounting). */
  get capacityTables(): number {
    return this.chunks.length * TABLES_PER_CHUNK;
  }
}

// Index arithmetic. Addresses exceed 2^32, so the split uses division.
export function pgdIndex(va: number): number {
  return Math.floor(va / 2 ** 39) & 511;
}
export function pudIndex(va: number): number {
  return Math.floor(va / PUD_SIZE) & 511;
}
export function pmdIndex(va: number): number {
  return Math.floor(va / 2 ** PMD_SHIFT) & 511;
}
export function pteIndex(va: number): number {
  return Math.floor(va / 2 ** PAGE_SHIFT) & 511;
}
export function indexAt(level: Level, va: number): number {
  switch (level) {
    case LEVEL_PTE:
      return pteIndex(va);
    case LEVEL_PMD:
      return pmdIndex(va);
    case LEVEL_PUD:
      return pudIndex(va);
    default:
      return pgdIndex(va);
  }
}

/**
 * Result of a walk: the entry that decides the translation of an address.
 * `level` is where the walk stopped; (table, idx) is that entry. The entry
 * is a leaf, a non-present entry, or none (a missing lower table shows as
 * a none entry at the level above).
 */
export class WalkCursor {
  level: Level = Level.PGD;
  table = 0;
  idx = 0;
  lo = 0;
  hi = 0;
}

/** Walk from `root` to the entry governing `va` (no allocation). */
export function walk(pool: TablePool, root: number, va: number, c: WalkCursor): WalkCursor {
  let t = root;
  let i = pgdIndex(va);
  let hi = pool.hi(t, i);
  let lo = pool.lo(t, i);
  let level: Level = LEVEL_PGD;
  if (hi & E_TABLE) {
    t = lo;
    i = pudIndex(va);
    hi = pool.hi(t, i);
    lo = pool.lo(t, i);
    level = LEVEL_PUD;
    if (hi & E_TABLE) {
      t = lo;
      i = pmdIndex(va);
      hi = pool.hi(t, i);
      lo = pool.lo(t, i);
      level = LEVEL_PMD;
      if (hi & E_TABLE) {
        t = lo;
        i = pteIndex(va);
        hi = pool.hi(t, i);
        lo = pool.lo(t, i);
        level = LEVEL_PTE;
      }
    }
  }
  c.level = level;
  c.table = t;
  c.idx = i;
  c.lo = lo;
  c.hi = hi;
  return c;
}

/**
 * Allocate tables down to the table holding entries of `level` for `va`.
 * Returns that table id, 0 if a leaf or non-present entry above is in the
 * way, or -1 if a table allocation failed.
 */
export function ensureTable(pool: TablePool, root: number, va: number, level: Level): number {
  let t = root;
  for (let l: Level = LEVEL_PGD; l > level; l--) {
    const i = indexAt(l, va);
    const hi = pool.hi(t, i);
    if (hi & E_TABLE) {
      t = pool.lo(t, i);
      continue;
    }
    if (hi !== 0 || pool.lo(t, i) !== 0) return 0;
    const child = pool.alloc((l - 1) as Level);
    if (child < 0) return -1;
    pool.set(t, i, child, E_TABLE | E_PRESENT);
    t = child;
  }
  return t;
}

/** Lookup without allocation of the table holding `level` entries; 0 if absent. */
export function findTable(pool: TablePool, root: number, va: number, level: Level): number {
  let t = root;
  for (let l: Level = LEVEL_PGD; l > level; l--) {
    const i = indexAt(l, va);
    if (!(pool.hi(t, i) & E_TABLE)) return 0;
    t = pool.lo(t, i);
  }
  return t;
}

export function isNone(lo: number, hi: number): boolean {
  return lo === 0 && hi === 0;
}

/** A present leaf (includes protnone, which the kernel treats as present). */
export function isPresentLeaf(hi: number): boolean {
  return (hi & (E_PRESENT | E_TABLE)) === E_PRESENT;
}

export function levelSize(level: Level): number {
  return level === LEVEL_PTE ? 4096 : level === LEVEL_PMD ? 2 ** 21 : 2 ** 30;
}
