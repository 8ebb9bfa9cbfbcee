import { describe, expect, it } from "vitest";
import { Level, MAP_FIXED_NOREPLACE, VM_FAULT_OOM } from "../../src/mm/constants.js";
import {
  E_LEAF,
  E_PRESENT,
  E_TABLE,
  TablePool,
  WalkCursor,
  ensureTable,
  findTable,
  pgdIndex,
  pmdIndex,
  pteIndex,
  pudIndex,
  walk,
} from "../../src/mm/pagetable.js";
import { cpuFault } from "../../src/mm/access.js";
import { vmFaultToErrno } from "../../src/mm/fault.js";
import { doMunmap } from "../../src/mm/mmap.js";
import { walkPageTable } from "../../src/mm/inspect.js";
import { Errno } from "../../src/mm/errors.js";
import { ANON_PRIVATE, GiB, MiB, bytes, expectClean, mkKernel, mkMm, mmap, runAt, write } from "./helpers.js";

describe("index arithmetic (x86-64, 4-level, 512 entries per level)", () => {
  it("splits a VA into PGD/PUD/PMD/PTE indices", () => {
    const va = 0x7f12_3456_7000;
    expect(pgdIndex(va)).toBe(Math.floor(va / 2 ** 39) & 511);
    expect(pgdIndex(va)).toBe(254);
    expect(pudIndex(va)).toBe(Math.floor(va / 2 ** 30) % 512);
    expect(pmdIndex(va)).toBe(Math.floor(va / 2 ** 21) % 512);
    expect(pteIndex(va)).toBe(Math.floor(va / 2 ** 12) % 512);
    expect(pgdIndex(2 ** 47 - 4096)).toBe(255); // user space is the lower half: PGD 0..255
    expect([pudIndex(2 ** 47 - 4096), pmdIndex(2 ** 47 - 4096), pteIndex(2 ** 47 - 4096)]).toEqual([511, 511, 511]);
    expect([pgdIndex(0), pudIndex(0), pmdIndex(0), pteIndex(0)]).toEqual([0, 0, 0, 0]);
    const k = mkKernel();
    expectClean(k);
  });
});

describe("TablePool and walks", () => {
  it("ensureTable allocates each missing level once; findTable and walk see them", () => {
    const pool = new TablePool();
    const root = pool.alloc(Level.PGD);
    const va = 0x40_1234_5000;
    expect(findTable(pool, root, va, Level.PTE)).toBe(0);
    const t = ensureTable(pool, root, va, Level.PTE);
    expect(t).toBeGreaterThan(0);
    expect(pool.levelOf(t)).toBe(Level.PTE);
    expect(pool.live).toBe(4);
    expect(ensureTable(pool, root, va + 4096, Level.PTE)).toBe(t);
    expect(pool.live).toBe(4);
    expect(findTable(pool, root, va, Level.PTE)).toBe(t);
    pool.set(t, pteIndex(va), 1234, E_PRESENT);
    expect(pool.usedCount(t)).toBe(1);
    const c = walk(pool, root, va, new WalkCursor());
    expect(c.level).toBe(Level.PTE);
    expect(c.lo).toBe(1234);
    expect(c.table).toBe(t);
    // a neighbouring 2 MiB block has no PTE table: the walk stops at the none PMD entry
    const c2 = walk(pool, root, va + 2 * MiB, new WalkCursor());
    expect(c2.level).toBe(Level.PMD);
    expect(c2.hi).toBe(0);
    pool.clear(t, pteIndex(va));
    expect(pool.usedCount(t)).toBe(0);
    const k = mkKernel();
    expectClean(k);
  });

  it("a huge leaf blocks lower tables (T1: leaf xor table); a released table comes back zeroed", () => {
    const pool = new TablePool();
    const root = pool.alloc(Level.PGD);
    const va = 0x40_0000_0000;
    const pmdT = ensureTable(pool, root, va, Level.PMD);
    pool.set(pmdT, pmdIndex(va), 512 * 7, E_PRESENT | E_LEAF);
    expect(ensureTable(pool, root, va + 4096, Level.PTE)).toBe(0);
    const c = walk(pool, root, va + 4096, new WalkCursor());
    expect(c.level).toBe(Level.PMD);
    expect(c.hi & (E_LEAF | E_TABLE)).toBe(E_LEAF);
    const extra = pool.alloc(Level.PTE);
    pool.set(extra, 3, 99, E_PRESENT);
    pool.release(extra);
    const again = pool.alloc(Level.PTE);
    expect(again).toBe(extra);
    expect(pool.lo(again, 3)).toBe(0);
    expect(pool.hi(again, 3)).toBe(0);
    expect(pool.usedCount(again)).toBe(0);
    const k = mkKernel();
    expectClean(k);
  });
});

describe("page tables of an address space", () => {
  it("one fault builds one PUD, PMD and PTE table; munmap of the last VMA frees them all", () => {
    const k = mkKernel({ tunables: { thpEnabled: "never" } });
    const mm = mkMm(k);
    const live0 = k.pt.live;
    const a = mmap(k, mm, 16 * 4096);
    write(k, mm, a, bytes(8, 1));
    const w = walkPageTable(k, mm, 0, 2 ** 47, 0);
    expect([w.pudTables, w.pmdTables, w.pteTables]).toEqual([1, 1, 1]);
    expect(k.pt.live).toBe(live0 + 3);
    doMunmap(k, mm, a, 16 * 4096);
    const w2 = walkPageTable(k, mm, 0, 2 ** 47, 0);
    expect([w2.pudTables, w2.pmdTables, w2.pteTables]).toEqual([0, 0, 0]);
    expect(k.pt.live).toBe(live0);
    expectClean(k);
  });

  it("page tables still spanning another VMA are kept by munmap", () => {
    const k = mkKernel({ tunables: { thpEnabled: "never" } });
    const mm = mkMm(k);
    const a = mmap(k, mm, 16 * 4096);
    write(k, mm, a, bytes(16 * 4096, 1));
    doMunmap(k, mm, a, 4 * 4096);
    const w = walkPageTable(k, mm, 0, 2 ** 47, 0);
    expect([w.pudTables, w.pmdTables, w.pteTables]).toEqual([1, 1, 1]);
    expect(runAt(k, mm, a + 4 * 4096)!.nr).toBe(12);
    expectClean(k);
  });

  it("a THP occupies a PMD leaf, no PTE table; its split installs a PTE table in the same slot", () => {
    const k = mkKernel();
    const mm = mkMm(k);
    const a = mmap(k, mm, 2 * MiB);
    write(k, mm, a, bytes(8, 1));
    let w = walkPageTable(k, mm, a, a + 2 * MiB, 0);
    expect(w.pteTables).toBe(0);
    expect(w.runs.map((r) => r.level)).toEqual([Level.PMD]);
    doMunmap(k, mm, a + MiB, 4096);
    w = walkPageTable(k, mm, a, a + 2 * MiB, 0);
    expect(w.pteTables).toBe(1);
    expect(w.runs.every((r) => r.level === Level.PTE)).toBe(true);
    expectClean(k);
  });

  it("a failing page-table allocation makes the fault VM_FAULT_OOM (errno ENOMEM) and maps nothing", () => {
    const k = mkKernel();
    const mm = mkMm(k);
    const a = mmap(k, mm, 4 * 4096, { addr: 5 * GiB + 0x10_0000_0000, flags: ANON_PRIVATE | MAP_FIXED_NOREPLACE });
    k.pt.allocFailHook = () => true;
    const r = cpuFault(k, mm, a, "write", 0, true);
    k.pt.allocFailHook = null;
    expect(r.vmFault & VM_FAULT_OOM).toBe(VM_FAULT_OOM);
    expect(r.errno).toBe(Errno.ENOMEM);
    expect(vmFaultToErrno(VM_FAULT_OOM, 0)).toBe(Errno.ENOMEM);
    expect(runAt(k, mm, a)).toBeUndefined();
    expect(mm.rssAnon).toBe(0);
    expectClean(k);
  });
});
