/**
 * Model-based random testing against a real daemon over gRPC: a seeded
 * sequence of mmap (MAP_FIXED in a small arena), munmap, mprotect,
 * MADV_DONTNEED, fork, exit, writes and reads, checked against a reference
 * model (which pages each mm maps, with what protection and contents), with
 * CheckInvariants after every step. MMSIM_FUZZ_STEPS sets the number of steps
 * (default 300) and MMSIM_FUZZ_SEED the seed; a failure prints both.
 */
import fc from "fast-check";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { MADV_DONTNEED, MAP_ANONYMOUS, MAP_FIXED, MAP_PRIVATE, PROT_READ, PROT_WRITE } from "../../src/mm/constants.js";
import { startDaemon, type Clients, type TestDaemon } from "../helpers/daemon.js";

const STEPS = Number(process.env.MMSIM_FUZZ_STEPS ?? 300);
const SEED = Number(process.env.MMSIM_FUZZ_SEED ?? 20240611);
const PAGE = 4096;
const ARENA = 0x5000_0000_0000;
const ARENA_PAGES = 1024; // 4 MiB: THP-sized regions occur
const RW = PROT_READ | PROT_WRITE;

type Op =
  | { t: "mmap"; mm: number; page: number; n: number; ro: boolean }
  | { t: "munmap" | "dontneed"; mm: number; page: number; n: number }
  | { t: "mprotect"; mm: number; page: number; n: number; ro: boolean }
  | { t: "write"; mm: number; page: number; off: number; len: number; seed: number }
  | { t: "read"; mm: number; page: number; off: number; len: number }
  | { t: "fork" | "exit"; mm: number };

const mmIx = fc.integer({ min: 0, max: 2 });
const page = fc.integer({ min: 0, max: ARENA_PAGES - 1 });
const n = fc.oneof(fc.integer({ min: 1, max: 16 }), fc.constantFrom(512, 513));
const opArb: fc.Arbitrary<Op> = fc.oneof(
  { weight: 3, arbitrary: fc.record({ t: fc.constant("mmap" as const), mm: mmIx, page, n, ro: fc.boolean() }) },
  { weight: 2, arbitrary: fc.record({ t: fc.constantFrom("munmap" as const, "dontneed" as const), mm: mmIx, page, n }) },
  { weight: 1, arbitrary: fc.record({ t: fc.constant("mprotect" as const), mm: mmIx, page, n, ro: fc.boolean() }) },
  { weight: 5, arbitrary: fc.record({ t: fc.constant("write" as const), mm: mmIx, page, off: fc.integer({ min: 0, max: 4095 }), len: fc.integer({ min: 1, max: 9000 }), seed: fc.integer({ min: 1, max: 250 }) }) },
  { weight: 4, arbitrary: fc.record({ t: fc.constant("read" as const), mm: mmIx, page, off: fc.integer({ min: 0, max: 4095 }), len: fc.integer({ min: 1, max: 9000 }) }) },
  { weight: 1, arbitrary: fc.record({ t: fc.constantFrom("fork" as const, "exit" as const), mm: mmIx }) },
);

/** Reference: per page index, its protection and contents (null = zeros). */
interface RefPage {
  ro: boolean;
  data: Uint8Array | null;
}
type RefMm = Map<number, RefPage>;

let td: TestDaemon;
let c: Clients;
beforeAll(async () => {
  td = await startDaemon({ ramBytes: 512 * 2 ** 20 });
  c = td.withSession(await td.newSession("property"));
});
afterAll(async () => td.stop());

describe("model-based random operations over gRPC", () => {
  it(`${STEPS} steps, seed ${SEED}: reference model agrees, invariants hold after every step`, async () => {
    const [ops] = fc.sample(fc.array(opArb, { minLength: STEPS, maxLength: STEPS }), { seed: SEED, numRuns: 1 });
    const slots: ({ id: number; ref: RefMm } | null)[] = [null, null, null];
    const ensure = async (i: number) => {
      if (slots[i] === null) slots[i] = { id: (await c.addressSpace.createMm({ name: `p${i}` })).mmId, ref: new Map() };
      return slots[i]!;
    };
    let step = 0;
    const ctx = () => `seed ${SEED} step ${step} ${JSON.stringify(ops![step])}`;
    for (; step < ops!.length; step++) {
      const op = ops![step]!;
      const s = await ensure(op.mm);
      const addrOf = (p: number) => ARENA + p * PAGE;
      switch (op.t) {
        case "mmap": {
          const cnt = Math.min(op.n, ARENA_PAGES - op.page);
          await c.addressSpace.mmap({ mmId: s.id, addr: addrOf(op.page), length: cnt * PAGE, prot: op.ro ? PROT_READ : RW, flags: MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED, fileId: 0, offset: 0 });
          for (let p = op.page; p < op.page + cnt; p++) s.ref.set(p, { ro: op.ro, data: null });
          break;
        }
        case "munmap":
        case "dontneed": {
          const cnt = Math.min(op.n, ARENA_PAGES - op.page);
          if (op.t === "munmap") {
            await c.addressSpace.munmap({ mmId: s.id, addr: addrOf(op.page), length: cnt * PAGE });
            for (let p = op.page; p < op.page + cnt; p++) s.ref.delete(p);
          } else {
            let all = true;
            for (let p = op.page; p < op.page + cnt; p++) if (!s.ref.has(p)) all = false;
            const r = c.addressSpace.madvise({ mmId: s.id, addr: addrOf(op.page), length: cnt * PAGE, advice: MADV_DONTNEED });
            // madvise acts on every mapped part, then reports the hole (ENOMEM).
            if (all) await r;
            else await expect(r, ctx()).rejects.toMatchObject({ details: expect.stringMatching(/ENOMEM/) });
            for (let p = op.page; p < op.page + cnt; p++) {
              const pg = s.ref.get(p);
              if (pg !== undefined) pg.data = null;
            }
          }
          break;
        }
        case "mprotect": {
          const cnt = Math.min(op.n, ARENA_PAGES - op.page);
          let all = true;
          for (let p = op.page; p < op.page + cnt; p++) if (!s.ref.has(p)) all = false;
          const r = c.addressSpace.mprotect({ mmId: s.id, addr: addrOf(op.page), length: cnt * PAGE, prot: op.ro ? PROT_READ : RW });
          if (all) await r;
          else await expect(r, ctx()).rejects.toMatchObject({ details: expect.stringMatching(/ENOMEM/) });
          // do_mprotect_pkey changes the VMAs up to the first hole, then fails.
          for (let p = op.page; p < op.page + cnt && s.ref.has(p); p++) s.ref.get(p)!.ro = op.ro;
          break;
        }
        case "write":
        case "read": {
          const start = addrOf(op.page) + op.off;
          const len = Math.min(op.len, ARENA + ARENA_PAGES * PAGE - start);
          // Bytes the reference says are accessible before the first fault.
          let ok = 0;
          while (ok < len) {
            const pg = s.ref.get(Math.floor((start + ok - ARENA) / PAGE));
            if (pg === undefined || (op.t === "write" && pg.ro)) break;
            ok += Math.min(PAGE - ((start + ok) % PAGE), len - ok);
          }
          if (op.t === "write") {
            const data = Buffer.alloc(len);
            for (let i = 0; i < len; i++) data[i] = (op.seed * 31 + i * 7) & 0xff;
            const r = await c.memory.writeMemory({ mmId: s.id, addr: start, data });
            expect(r.bytesDone, ctx()).toBe(ok);
            for (let i = 0; i < ok; i++) {
              const a = start + i;
              const pg = s.ref.get(Math.floor((a - ARENA) / PAGE))!;
              pg.data ??= new Uint8Array(PAGE);
              pg.data[a % PAGE] = data[i]!;
            }
          } else {
            const r = await c.memory.readMemory({ mmId: s.id, addr: start, length: len });
            expect(r.bytesDone, ctx()).toBe(ok);
            const want = Buffer.alloc(ok);
            for (let i = 0; i < ok; i++) {
              const a = start + i;
              want[i] = s.ref.get(Math.floor((a - ARENA) / PAGE))!.data?.[a % PAGE] ?? 0;
            }
            expect(Buffer.from(r.data).equals(want), ctx()).toBe(true);
          }
          break;
        }
        case "fork": {
          const free = slots.findIndex((x) => x === null);
          if (free < 0) break;
          const child = (await c.addressSpace.forkMm({ mmId: s.id, name: "" })).childMmId;
          const ref: RefMm = new Map();
          for (const [p, pg] of s.ref) ref.set(p, { ro: pg.ro, data: pg.data === null ? null : pg.data.slice() });
          slots[free] = { id: child, ref };
          break;
        }
        case "exit":
          await c.addressSpace.exitMm({ mmId: s.id });
          slots[op.mm] = null;
          break;
      }
      const inv = await td.clients.inspect.checkInvariants({});
      expect(inv.violations, ctx()).toEqual([]);
    }
  }, 120_000);
});
