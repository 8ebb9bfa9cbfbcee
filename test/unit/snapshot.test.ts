/**
 * Snapshots at the model level: the object-graph codec (values, identity,
 * cycles, typed arrays, classes, refusals) and a kernel captured, framed,
 * checked and installed into another Kernel object, which must then answer
 * every inspection as the original and evolve identically.
 */
import { describe, expect, it } from "vitest";
import { readMemory, writeMemory } from "../../src/mm/access.js";
import { FOLL_LONGTERM, FOLL_WRITE, MAP_SHARED, PAGE_SIZE } from "../../src/mm/constants.js";
import { createDmirrorDevice, dmirrorMigrateToDevice, dmirrorState, openDmirror } from "../../src/mm/dmirror.js";
import { pinUserPages } from "../../src/mm/gup.js";
import { getMaps, getMeminfo, getSmaps, getVmstat, walkPageTable } from "../../src/mm/inspect.js";
import { checkInvariants } from "../../src/mm/invariants.js";
import { Kernel } from "../../src/mm/kernel.js";
import type { Mm } from "../../src/mm/mm.js";
import { createFile, doMunmap, exitMm as exitMmFn, forkMm } from "../../src/mm/mmap.js";
import {
  captureKernel,
  ClassRegistry,
  decodeSnapshot,
  installKernel,
  KERNEL_REF,
  type KernelPart,
  modelClasses,
  packSnapshot,
  scratchKernel,
  scratchViolations,
  SnapshotFormatError,
  unpackSnapshot,
} from "../../src/mm/snapshot.js";
import { decodeGraph, encodeGraph, rebindExternals } from "../../src/mm/snapshot-codec.js";
import { FileKind } from "../../src/mm/vma.js";
import { bytes, MiB, mmap, read, write } from "./helpers.js";

function concat(parts: readonly Uint8Array[]): Uint8Array {
  const n = parts.reduce((a, p) => a + p.length, 0);
  const out = new Uint8Array(n);
  let o = 0;
  for (const p of parts) {
    out.set(p, o);
    o += p.length;
  }
  return out;
}

function roundTrip(v: unknown, reg = new ClassRegistry()): unknown {
  const e = encodeGraph(v, reg);
  return decodeGraph(concat(e.parts), reg, { external: () => ({}) }).root;
}

class Point {
  cb: (() => void) | null = null;
  constructor(
    public x: number,
    public y: number,
  ) {}
  norm(): number {
    return Math.hypot(this.x, this.y);
  }
}
class Unregistered {
  v = 1;
}

describe("object-graph codec", () => {
  it("keeps every primitive, including -0, NaN, undefined, bigint and holes", () => {
    // eslint-disable-next-line no-sparse-arrays
    const v = { a: -0, b: NaN, c: undefined, d: 2n ** 70n, e: -(2n ** 65n), f: "é ✓", g: [1, , 3], h: null, i: true, j: 2 ** 53 - 1, k: -1.5, l: Infinity };
    const r = roundTrip(v) as typeof v;
    expect(Object.is(r.a, -0)).toBe(true);
    expect(Number.isNaN(r.b)).toBe(true);
    expect("c" in r && r.c === undefined).toBe(true);
    expect(r.d).toBe(2n ** 70n);
    expect(r.e).toBe(-(2n ** 65n));
    expect(r.f).toBe("é ✓");
    expect(r.g.length).toBe(3);
    expect(1 in r.g).toBe(false);
    expect([r.h, r.i, r.j, r.k, r.l]).toEqual([null, true, 2 ** 53 - 1, -1.5, Infinity]);
  });

  it("keeps shared references, cycles, Map/Set order and typed arrays over one buffer", () => {
    const shared = { n: 1 };
    const buf = new ArrayBuffer(64);
    const u8 = new Uint8Array(buf, 8, 16);
    const f64 = new Float64Array(buf, 32, 4);
    u8.set([1, 2, 3]);
    f64[1] = -0.25;
    const cyc: Record<string, unknown> = { name: "c" };
    cyc.self = cyc;
    const m = new Map<unknown, unknown>([
      [3, shared],
      ["k", cyc],
      [shared, 7],
    ]);
    const s = new Set<unknown>([5, shared, "x"]);
    const big = Array.from({ length: 100 }, (_, i) => i * 1.5);
    const r = roundTrip({ a: shared, b: shared, u8, f64, m, s, cyc, big, bi: new BigInt64Array([-5n]) }) as Record<string, never>;
    const ra = r.a as { n: number };
    expect(r.b).toBe(ra);
    const rc = r.cyc as Record<string, unknown>;
    expect(rc.self).toBe(rc);
    const ru8 = r.u8 as Uint8Array;
    const rf = r.f64 as Float64Array;
    expect(ru8.buffer).toBe(rf.buffer);
    expect([ru8.byteOffset, ru8.length, rf.byteOffset, rf.length]).toEqual([8, 16, 32, 4]);
    expect([...ru8.subarray(0, 3)]).toEqual([1, 2, 3]);
    expect(rf[1]).toBe(-0.25);
    const rm = r.m as Map<unknown, unknown>;
    expect([...rm.keys()].slice(0, 2)).toEqual([3, "k"]);
    expect(rm.get(3)).toBe(ra);
    expect(rm.get("k")).toBe(rc);
    expect(rm.get([...rm.keys()][2])).toBe(7);
    expect([...rm.keys()][2]).toBe(ra);
    expect([...(r.s as Set<unknown>)]).toEqual([5, ra, "x"]);
    expect(r.big).toEqual(big);
    expect((r.bi as BigInt64Array)[0]).toBe(-5n);
  });

  it("rebuilds registered classes without their constructor, transient fields reset", () => {
    const reg = new ClassRegistry().register({ name: "Point", ctor: Point, transient: { cb: () => null } });
    const p = new Point(3, 4);
    p.cb = () => {};
    const r = roundTrip({ p }, reg) as { p: Point };
    expect(r.p).toBeInstanceOf(Point);
    expect(r.p.norm()).toBe(5);
    expect(r.p.cb).toBeNull();
  });

  it("refuses functions and unregistered classes, naming the field", () => {
    expect(() => encodeGraph({ a: { hook: () => 1 } }, new ClassRegistry())).toThrow(/function .* at \$\.a\.hook/);
    expect(() => encodeGraph({ list: [1, new Unregistered()] }, new ClassRegistry())).toThrow(/unregistered class Unregistered at \$\.list\[1\]/);
    expect(() => encodeGraph({ p: Promise.resolve(1) }, new ClassRegistry())).toThrow(/unregistered class Promise at \$\.p/);
    const reg = new ClassRegistry().register({ name: "Point", ctor: Point });
    const p = new Point(1, 1);
    p.cb = () => {};
    expect(() => encodeGraph(p, reg)).toThrow(/cannot write function \(anonymous\) at \$\.cb/);
  });

  it("an unknown class name on decode is an error, never a plain object", () => {
    const reg = new ClassRegistry().register({ name: "Point", ctor: Point });
    const e = concat(encodeGraph({ p: new Point(1, 2) }, reg).parts);
    expect(() => decodeGraph(e, new ClassRegistry(), { external: () => ({}) })).toThrow(/unknown class "Point"/);
  });

  it("writes externals by name and reports their slots for rebinding", () => {
    const live = { live: true };
    const m = new Map([[1, live]]);
    const e = concat(encodeGraph({ a: live, m, list: [live] }, new ClassRegistry(), { external: (o) => (o === live ? "L" : undefined) }).parts);
    const placeholder = {};
    const d = decodeGraph(e, new ClassRegistry(), { external: (n) => (n === "L" ? placeholder : {}) });
    const r = d.root as { a: object; m: Map<number, object>; list: object[] };
    expect(r.a).toBe(placeholder);
    expect(d.externals).toHaveLength(3);
    const target = { target: 1 };
    rebindExternals(d.externals, "L", target);
    expect(r.a).toBe(target);
    expect(r.m.get(1)).toBe(target);
    expect(r.list[0]).toBe(target);
  });

  it("every truncation and every flipped tag byte of a payload is a SnapshotFormatError or decodes", () => {
    const reg = new ClassRegistry().register({ name: "Point", ctor: Point });
    const v = { p: new Point(1, 2), m: new Map([[1, "a"]]), s: new Set([1]), t: new Int32Array([1, 2, 3]), arr: [1, "x", null] };
    const e = concat(encodeGraph(v, reg).parts);
    for (let cut = 0; cut < e.length; cut++) {
      expect(() => decodeGraph(e.subarray(0, cut), reg, { external: () => ({}) }), `cut at ${cut}`).toThrow(SnapshotFormatError);
    }
    for (let i = 0; i < e.length; i++) {
      const bad = e.slice();
      bad[i] ^= 0xff;
      try {
        decodeGraph(bad, reg, { external: () => ({}) });
      } catch (err) {
        expect(err, `byte ${i}`).toBeInstanceOf(SnapshotFormatError);
      }
    }
  });
});

// ---------------------------------------------------------------- kernel

const env = (k: Kernel) => ({ op: async <T>(_mm: Mm, fn: () => T) => k.runOp(fn), now: () => performance.now() });

async function richKernel(): Promise<{ k: Kernel; mm: Mm; child: Mm; a: number; thp: number }> {
  const k = new Kernel({ phys: { ramBytes: 512 * MiB } });
  const mm = k.createMm("parent", 1);
  const a = mmap(k, mm, 64 * PAGE_SIZE);
  k.runOp(() => write(k, mm, a, bytes(64 * PAGE_SIZE, 3)));
  const thp = mmap(k, mm, 4 * MiB);
  k.runOp(() => write(k, mm, thp + 2 * MiB, bytes(PAGE_SIZE, 9)));
  const child = k.runOp(() => forkMm(k, mm, "child", 1));
  k.runOp(() => write(k, child, a, bytes(PAGE_SIZE, 11))); // COW break
  const f = k.runOp(() => createFile(k, { name: "shm", sizeBytes: 8 * PAGE_SIZE, kind: FileKind.SHMEM, hugePageSize: 0, pgmapId: 0 }, 1));
  const s = mmap(k, mm, 8 * PAGE_SIZE, { flags: MAP_SHARED, fileId: f.id });
  k.runOp(() => write(k, mm, s, bytes(3 * PAGE_SIZE, 5)));
  const pin = k.runOp(() => pinUserPages(k, mm, 2, a + 8 * PAGE_SIZE, 8, FOLL_WRITE | FOLL_LONGTERM));
  expect(pin.ret).toBe(8);
  const dev = createDmirrorDevice(k, "", 1, 64, 1);
  const m = openDmirror(k, dev, mm, 1);
  const mig = await dmirrorMigrateToDevice(k, env(k), m, a + 32 * PAGE_SIZE, 4);
  expect(mig.ret).toBe(0);
  return { k, mm, child, a, thp };
}

function view(k: Kernel): unknown {
  const out: unknown[] = [getVmstat(k), getMeminfo(k), k.pins.handleIds().map((id) => k.pins.handleInfo(id)), checkInvariants(k).violations];
  for (const mm of [...k.mms.values()].filter((x) => !x.exited)) {
    out.push(getMaps(k, mm), getSmaps(k, mm), walkPageTable(k, mm, 0, 2 ** 47, 0).runs);
  }
  return JSON.parse(JSON.stringify(out, (_k, v: unknown) => (typeof v === "bigint" ? v.toString() : v)));
}

function snapshotOf(k: Kernel): Uint8Array {
  const p = packSnapshot({ kernel: captureKernel(k) }, modelClasses(), "test", (o) => (o === k ? KERNEL_REF : undefined));
  return concat(p.parts);
}

function restoreInto(target: Kernel, file: Uint8Array | Uint8Array[]): void {
  const { payload } = unpackSnapshot(file);
  const ref = {};
  const d = decodeSnapshot(payload, modelClasses(), (n) => {
    if (n !== KERNEL_REF) throw new SnapshotFormatError(`unknown external ${n}`);
    return ref;
  });
  const part = (d.root as { kernel: KernelPart }).kernel;
  const scratch = scratchKernel(part, d.externals);
  expect(scratchViolations(scratch)).toBeNull();
  installKernel(target, part, d.externals);
}

describe("kernel snapshot", () => {
  it("a kernel installed from a snapshot answers every inspection the same, and evolves the same", async () => {
    const { k, mm, child, a, thp } = await richKernel();
    const file = snapshotOf(k);
    const k2 = new Kernel({ phys: { ramBytes: 512 * MiB } });
    restoreInto(k2, file);
    expect(view(k2)).toEqual(view(k));
    expect(checkInvariants(k2).violations).toEqual([]);
    const mm2 = k2.mm(mm.id);
    const child2 = k2.mm(child.id);
    expect(Buffer.compare(read(k2, mm2, a, 64 * PAGE_SIZE), read(k, mm, a, 64 * PAGE_SIZE))).toBe(0);
    expect(Buffer.compare(read(k2, child2, a, 4 * PAGE_SIZE), read(k, child, a, 4 * PAGE_SIZE))).toBe(0);
    // references inside the graph point at the kernel they now live in
    const dev2 = [...dmirrorState(k2).devices.values()][0]!;
    expect((dev2 as unknown as { k: Kernel }).k).toBe(k2);
    expect((k2.pins as unknown as { k: Kernel }).k).toBe(k2);

    // the same operations on both: new faults, munmap, a new mm, a new file
    for (const kk of [k, k2]) {
      const m1 = kk.mm(mm.id);
      kk.runOp(() => write(kk, m1, thp, bytes(PAGE_SIZE, 21)));
      kk.runOp(() => doMunmap(kk, m1, a, 4 * PAGE_SIZE));
      const n = kk.createMm("new", 3);
      const b = mmap(kk, n, 16 * PAGE_SIZE);
      kk.runOp(() => write(kk, n, b, bytes(16 * PAGE_SIZE, 1)));
      kk.runOp(() => kk.pins.releaseSession(2));
      kk.runOp(() => read(kk, kk.mm(mm.id), a + 32 * PAGE_SIZE, PAGE_SIZE)); // device page back to RAM
    }
    expect(view(k2)).toEqual(view(k));
    expect([...k2.mms.keys()]).toEqual([...k.mms.keys()]);
    expect(checkInvariants(k2).violations).toEqual([]);
  });

  it("a snapshot read as many small chunks (values split across them) restores the same", async () => {
    const { k } = await richKernel();
    const file = snapshotOf(k);
    const chunks: Uint8Array[] = [];
    for (let off = 0, i = 0; off < file.length; i++) {
      const n = [7, 1, 13, 0, 4093, 65537][i % 6]!;
      chunks.push(file.subarray(off, off + n));
      off += n;
    }
    const k2 = new Kernel({ phys: { ramBytes: 512 * MiB } });
    restoreInto(k2, chunks);
    expect(view(k2)).toEqual(view(k));
    // and a truncated chunk list is refused like a truncated buffer
    expect(() => unpackSnapshot(chunks.slice(0, chunks.length - 3))).toThrow(SnapshotFormatError);
  });

  it("refuses a checksum-valid snapshot whose kernel breaks invariants", async () => {
    const { k } = await richKernel();
    const part = captureKernel(k);
    const p = packSnapshot({ kernel: part }, modelClasses(), "t", (o) => (o === k ? KERNEL_REF : undefined));
    const file = concat(p.parts);
    // decode, tamper the decoded copy (an RSS counter off by one), check
    const { payload } = unpackSnapshot(file);
    const ref = {};
    const d = decodeSnapshot(payload, modelClasses(), () => ref);
    const kp = (d.root as { kernel: KernelPart }).kernel;
    const mm = [...(kp.fields.mms as Map<number, Mm>).values()][0]!;
    mm.rssAnon += 1;
    const scratch = scratchKernel(kp, d.externals);
    expect(scratchViolations(scratch)).toMatch(/invariant violation/);
    expect(checkInvariants(k).violations).toEqual([]);
  });

  it("the frame refuses wrong magic, wrong version, truncation and flipped payload bytes", async () => {
    const { k } = await richKernel();
    const file = snapshotOf(k);
    const magic = file.slice();
    magic[0] = 0x58;
    expect(() => unpackSnapshot(magic)).toThrow(/magic/);
    const ver = file.slice();
    ver[8] = 9;
    expect(() => unpackSnapshot(ver)).toThrow(/version 9 is not supported/);
    for (const cut of [0, 10, 17, 40, Math.floor(file.length / 2), file.length - 1]) {
      const err = (() => {
        try {
          unpackSnapshot(file.subarray(0, cut));
        } catch (e) {
          return e;
        }
        return null;
      })();
      expect(err, `cut ${cut}`).toBeInstanceOf(SnapshotFormatError);
    }
    const flip = file.slice();
    flip[file.length - 100]! ^= 1;
    expect(() => unpackSnapshot(flip)).toThrow(/checksum mismatch/);
    expect((() => {
      try {
        unpackSnapshot(flip);
      } catch (e) {
        return (e as SnapshotFormatError).dataLoss;
      }
      return false;
    })()).toBe(true);
  });
});

// ------------------------------------------------------ random workloads

const ARENA = 0x60_0000_0000;

function xorshift(seed: number): () => number {
  let s = seed >>> 0 || 1;
  return () => {
    s ^= s << 13;
    s ^= s >>> 17;
    s ^= s << 5;
    return (s >>> 0) / 2 ** 32;
  };
}

/** One random operation on `k`, chosen by `rnd`; errnos are outcomes, not failures. */
function randomOp(k: Kernel, rnd: () => number): void {
  const live = [...k.mms.values()].filter((m) => !m.exited);
  const pick = <T>(a: T[]): T => a[Math.floor(rnd() * a.length)]!;
  const r = rnd();
  const page = Math.floor(rnd() * 2048);
  const n = rnd() < 0.2 ? 512 : 1 + Math.floor(rnd() * 24);
  try {
    if (live.length === 0 || r < 0.05) {
      k.createMm(`m${k.mms.size}`, 1 + Math.floor(rnd() * 3));
      return;
    }
    const mm = pick(live);
    // mostly inside an existing VMA, so that writes, pins and munmaps land
    const v = mm.vmas.length > 0 && rnd() < 0.8 ? pick(mm.vmas) : null;
    const addr = v !== null ? v.start + Math.floor(rnd() * ((v.end - v.start) / PAGE_SIZE)) * PAGE_SIZE : ARENA + page * PAGE_SIZE;
    if (r < 0.25) mmap(k, mm, n * PAGE_SIZE, { addr: ARENA + page * PAGE_SIZE, flags: 0x22 | 0x10 /* MAP_FIXED */ });
    else if (r < 0.55) k.runOp(() => writeMemory(k, mm, addr, bytes(1 + Math.floor(rnd() * 9000), 1 + Math.floor(rnd() * 200))));
    else if (r < 0.65) k.runOp(() => doMunmap(k, mm, addr, n * PAGE_SIZE));
    else if (r < 0.72) k.runOp(() => forkMm(k, mm, "f", mm.ownerSession));
    else if (r < 0.8) k.runOp(() => pinUserPages(k, mm, 1 + Math.floor(rnd() * 3), addr, n, rnd() < 0.5 ? FOLL_WRITE | FOLL_LONGTERM : FOLL_WRITE));
    else if (r < 0.86) {
      const ids = k.pins.handleIds();
      if (ids.length > 0) {
        const h = k.pins.handleInfo(pick(ids))!;
        k.runOp(() => k.pins.releaseHandle(h.session, h.id));
      }
    } else if (r < 0.9) k.runOp(() => readMemory(k, mm, addr, 1 + Math.floor(rnd() * 9000)));
    else if (r < 0.93 && live.length > 1) k.runOp(() => exitMmFn(k, mm));
    else k.runOp(() => writeMemory(k, mm, addr, bytes(PAGE_SIZE, 7)));
  } catch (e) {
    if (!(e instanceof Error) || e.name !== "MmError") throw e;
  }
}

describe("kernel snapshot of random workloads", () => {
  for (const seed of [1, 7, 2024]) {
    it(`seed ${seed}: 150 random steps, snapshot, then 150 more steps on both kernels give the same state`, () => {
      const k = new Kernel({ phys: { ramBytes: 512 * MiB } });
      const rndA = xorshift(seed);
      for (let i = 0; i < 150; i++) randomOp(k, rndA);
      expect(checkInvariants(k).violations).toEqual([]);
      // the workload built something worth restoring
      expect([...k.mms.values()].filter((m) => !m.exited).length).toBeGreaterThan(1);
      expect(k.phys.data.inUse).toBeGreaterThan(10);
      expect(k.memoryInUsePages()).toBeGreaterThan(40);
      const k2 = new Kernel({ phys: { ramBytes: 512 * MiB } });
      restoreInto(k2, snapshotOf(k));
      expect(view(k2)).toEqual(view(k));
      const r1 = xorshift(seed * 31 + 1);
      const r2 = xorshift(seed * 31 + 1);
      for (let i = 0; i < 150; i++) {
        randomOp(k, r1);
        randomOp(k2, r2);
        if (i % 50 === 49) expect(view(k2)).toEqual(view(k));
      }
      expect(checkInvariants(k2).violations).toEqual([]);
      // a second generation: a snapshot of the restored kernel restores the same
      const k3 = new Kernel({ phys: { ramBytes: 512 * MiB } });
      restoreInto(k3, snapshotOf(k2));
      expect(view(k3)).toEqual(view(k));
    });
  }
});
