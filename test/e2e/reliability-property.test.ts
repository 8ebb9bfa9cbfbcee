/**
 * Model-based random testing against a real daemon over gRPC. A seeded
 * sequence of operations runs in a fresh session: mmap (MAP_FIXED in a small
 * anonymous arena), munmap, mprotect, MADV_DONTNEED, fork, exit, CPU faults,
 * memory writes and reads, every PinUserPages variant and every release
 * (UnpinHandle whole and partial, UnpinUserPages, UnpinUserPageRange,
 * UnpinFolios, PutUserPages, and a release of something not held), interval
 * notifiers inserted and removed on a client mirror that acknowledges,
 * hmm_range_fault through them, dmirror migration to device memory and back,
 * and driver PFNMAP mappings filled by vmf_insert_pfn_range (eager and
 * fault) in a second arena.
 *
 * The reference model knows which pages each mm maps, with which protection
 * and contents, which PFNMAP pages it has and which PFN each must map, the
 * notifiers of the mirror, and the pins and references the session holds
 * (per folio). After every step: CheckInvariants, the session's pins
 * (ListPins) against the reference, every invalidation the mirror received
 * names a live notifier overlapping its range (and a munmap of mapped pages
 * under a notifier names it). After every sequence: contents of every
 * mapped page, then the session ends and the daemon's state (free pages,
 * page tables, mms, pins, notifiers) is back to its baseline.
 *
 * fast-check generates and shrinks the sequences: a failure prints the seed
 * and the shrunk sequence. MMSIM_PROPERTY_STEPS is the longest sequence
 * (default 300), MMSIM_PROPERTY_RUNS the number of sequences (default 32),
 * MMSIM_PROPERTY_SEED the seed (MMSIM_FUZZ_STEPS / MMSIM_FUZZ_SEED are
 * accepted too).
 */
import { type ServiceError, status } from "@grpc/grpc-js";
import fc from "fast-check";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { DeviceMapping } from "../../src/gen/mmsim/v1/address_space.js";
import { MemoryType } from "../../src/gen/mmsim/v1/common.js";
import { InsertMode } from "../../src/gen/mmsim/v1/device.js";
import { FaultAccess } from "../../src/gen/mmsim/v1/fault.js";
import { GupOutput, GupVariant } from "../../src/gen/mmsim/v1/gup.js";
import type { Invalidation } from "../../src/gen/mmsim/v1/notifier.js";
import { MADV_DONTNEED, MAP_ANONYMOUS, MAP_FIXED, MAP_PRIVATE, MAP_SHARED, PROT_READ, PROT_WRITE } from "../../src/mm/constants.js";
import { type Clients, startDaemon, type TestDaemon } from "../helpers/daemon.js";
import { type ClientMirror, type HmmClients, hmmClients, subscribe } from "../helpers/hmm.js";

const env = process.env;
const STEPS = Number(env.MMSIM_PROPERTY_STEPS ?? env.MMSIM_FUZZ_STEPS ?? 300);
const RUNS = Number(env.MMSIM_PROPERTY_RUNS ?? 32);
const SEED = Number(env.MMSIM_PROPERTY_SEED ?? env.MMSIM_FUZZ_SEED ?? 20240611);
/** fast-check's time limit for the whole property, shrinking included */
const SHRINK_MS = Number(env.MMSIM_PROPERTY_TIME_LIMIT_MS ?? Math.max(240_000, STEPS * RUNS * 100));
const PAGE = 4096;
const ARENA = 0x5000_0000_0000;
const ARENA_PAGES = 1024; // 4 MiB: THP-sized regions occur
const PFN_ARENA = 0x5100_0000_0000; // driver PFNMAP mappings
const PFN_PAGES = 1024;
const RW = PROT_READ | PROT_WRITE;
const FOLL_WRITE = 0x1;
const FOLL_LONGTERM = 0x100;
const REQ_FAULT = 0x8000_0000;
const REQ_WRITE = 0x4000_0000;
const EBUSY = 16;

type Op =
  | { t: "mmap"; mm: number; page: number; n: number; ro: boolean }
  | { t: "munmap" | "dontneed"; mm: number; page: number; n: number }
  | { t: "mprotect"; mm: number; page: number; n: number; ro: boolean }
  | { t: "write"; mm: number; page: number; off: number; len: number; seed: number }
  | { t: "read"; mm: number; page: number; off: number; len: number }
  | { t: "fault"; mm: number; page: number; write: boolean }
  | { t: "fork" | "exit"; mm: number }
  | { t: "pin"; mm: number; page: number; n: number; variant: GupVariant; write: boolean; longterm: boolean; array: boolean }
  | { t: "unpin"; how: "handle" | "handle-part" | "pages" | "range" | "folios" | "put" | "not-held"; pick: number; part: number; dirty: boolean }
  | { t: "ninsert"; mm: number; page: number; n: number }
  | { t: "nremove"; pick: number }
  | { t: "hmm"; pick: number; off: number; n: number; write: boolean }
  | { t: "migrate" | "migrate-back"; mm: number; page: number; n: number }
  | { t: "pfnmap"; mm: number; page: number; n: number; huge: boolean }
  | { t: "pfninsert"; mm: number; page: number; n: number; fault: boolean }
  | { t: "pfnunmap"; mm: number; page: number; n: number };

const mmIx = fc.integer({ min: 0, max: 2 });
const page = fc.integer({ min: 0, max: ARENA_PAGES - 1 });
const n = fc.oneof(fc.integer({ min: 1, max: 16 }), fc.constantFrom(64, 512, 513));
const small = fc.integer({ min: 1, max: 16 });
const pick = fc.nat({ max: 1000 });
const opArb: fc.Arbitrary<Op> = fc.oneof(
  { weight: 4, arbitrary: fc.record({ t: fc.constant("mmap" as const), mm: mmIx, page, n, ro: fc.boolean() }) },
  { weight: 2, arbitrary: fc.record({ t: fc.constantFrom("munmap" as const, "dontneed" as const), mm: mmIx, page, n }) },
  { weight: 1, arbitrary: fc.record({ t: fc.constant("mprotect" as const), mm: mmIx, page, n, ro: fc.boolean() }) },
  { weight: 4, arbitrary: fc.record({ t: fc.constant("write" as const), mm: mmIx, page, off: fc.integer({ min: 0, max: 4095 }), len: fc.integer({ min: 1, max: 9000 }), seed: fc.integer({ min: 1, max: 250 }) }) },
  { weight: 3, arbitrary: fc.record({ t: fc.constant("read" as const), mm: mmIx, page, off: fc.integer({ min: 0, max: 4095 }), len: fc.integer({ min: 1, max: 9000 }) }) },
  { weight: 1, arbitrary: fc.record({ t: fc.constant("fault" as const), mm: mmIx, page, write: fc.boolean() }) },
  { weight: 1, arbitrary: fc.record({ t: fc.constantFrom("fork" as const, "exit" as const), mm: mmIx }) },
  {
    weight: 4,
    arbitrary: fc.record({
      t: fc.constant("pin" as const),
      mm: mmIx,
      page,
      n: fc.oneof(small, fc.constantFrom(512, 600)),
      variant: fc.integer({ min: GupVariant.GUP_VARIANT_PIN_USER_PAGES, max: GupVariant.GUP_VARIANT_GET_USER_PAGES_UNLOCKED }),
      write: fc.boolean(),
      longterm: fc.boolean(),
      array: fc.boolean(),
    }),
  },
  {
    weight: 4,
    arbitrary: fc.record({
      t: fc.constant("unpin" as const),
      how: fc.constantFrom("handle" as const, "handle-part" as const, "pages" as const, "range" as const, "folios" as const, "put" as const, "not-held" as const),
      pick,
      part: pick,
      dirty: fc.boolean(),
    }),
  },
  { weight: 2, arbitrary: fc.record({ t: fc.constant("ninsert" as const), mm: mmIx, page, n }) },
  { weight: 1, arbitrary: fc.record({ t: fc.constant("nremove" as const), pick }) },
  { weight: 2, arbitrary: fc.record({ t: fc.constant("hmm" as const), pick, off: fc.nat({ max: 600 }), n: small, write: fc.boolean() }) },
  { weight: 2, arbitrary: fc.record({ t: fc.constantFrom("migrate" as const, "migrate-back" as const), mm: mmIx, page, n: small }) },
  { weight: 1, arbitrary: fc.record({ t: fc.constant("pfnmap" as const), mm: mmIx, page: fc.integer({ min: 0, max: PFN_PAGES - 1 }), n, huge: fc.boolean() }) },
  { weight: 2, arbitrary: fc.record({ t: fc.constant("pfninsert" as const), mm: mmIx, page: fc.integer({ min: 0, max: PFN_PAGES - 1 }), n, fault: fc.boolean() }) },
  { weight: 1, arbitrary: fc.record({ t: fc.constant("pfnunmap" as const), mm: mmIx, page: fc.integer({ min: 0, max: PFN_PAGES - 1 }), n }) },
);

/** Reference: per page index, its protection and contents (null = zeros). */
interface RefPage {
  ro: boolean;
  data: Uint8Array | null;
}
interface Slot {
  id: number;
  pages: Map<number, RefPage>;
  /** pages of PFN_ARENA covered by PFNMAP VMAs -> the mmap call that made it (VM_PFNMAP VMAs never merge) */
  pfnVmas: Map<number, number>;
  /** dmirror mirror on this mm, opened on first use */
  dmirror: number;
}
interface RefNotifier {
  id: number;
  mmId: number;
  start: number;
  end: number;
}

function errnoName(e: unknown): string {
  const err = e as ServiceError;
  return String(err.metadata?.get("mmsim-errno-name")[0] ?? `code ${err.code}: ${err.details}`);
}

let td: TestDaemon;
let c0: Clients;
let h0: HmmClients;
beforeAll(async () => {
  td = await startDaemon({ ramBytes: 256 * 2 ** 20 });
  c0 = td.clients;
  const obs = await td.newSession("observer");
  h0 = hmmClients(td, obs);
  // The huge zero folio, once allocated, stays (as in the kernel): allocate it now.
  const c = td.withSession(obs);
  const mmId = (await c.addressSpace.createMm({ name: "hzp" })).mmId;
  await c.addressSpace.mmap({ mmId, addr: ARENA, length: 2 ** 21, prot: PROT_READ, flags: MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED, fileId: 0, offset: 0 });
  await c.fault.handleMmFault({ mmId, addr: ARENA, access: FaultAccess.FAULT_ACCESS_READ, flags: 0 });
  await c.addressSpace.exitMm({ mmId });
});
afterAll(async () => {
  h0.close();
  await td.stop();
});

/** Totals over every sequence run (reported at the end). */
const totals = { sequences: 0, steps: 0, pins: 0, invalidations: 0, migrated: 0, hmmFaults: 0, pfnInserts: 0 };

async function runSequence(ops: Op[]): Promise<void> {
  totals.sequences++;
  const base = await c0.admin.getStateDigest({});
  const sid = await td.newSession("property");
  const c = td.withSession(sid);
  const h: HmmClients = hmmClients(td, sid);
  let mirror: ClientMirror | null = null;
  let step = 0;
  const ctx = () => `seed ${SEED} step ${step} ${JSON.stringify(ops[step])}`;
  try {
    mirror = await subscribe(td, sid, "property");
    const device = (await h.dmirror.createDmirrorDevice({ name: "prop", memoryType: MemoryType.MEMORY_TYPE_DEVICE_PRIVATE, chunkPages: 256 })).deviceId;
    const bar = await c.device.registerPfnRange({ name: "bar", nrPages: PFN_PAGES, alignPages: 512 });
    const slots: (Slot | null)[] = [null, null, null];
    const notifiers: RefNotifier[] = [];
    /** per folio head: pins and FOLL_GET references held by the session */
    const held = new Map<number, { pins: number; gets: number }>();
    let handles: Awaited<ReturnType<typeof c.gup.listPins>>["handles"] = [];
    let seen = 0; // invalidations checked so far
    let pfnMmaps = 0;

    const ensure = async (i: number): Promise<Slot> => {
      if (slots[i] === null) slots[i] = { id: (await c.addressSpace.createMm({ name: `p${i}` })).mmId, pages: new Map(), pfnVmas: new Map(), dmirror: 0 };
      return slots[i]!;
    };
    const addrOf = (p: number) => ARENA + p * PAGE;
    const clip = (p: number, cnt: number) => Math.min(cnt, ARENA_PAGES - p);
    const accessible = (s: Slot, p: number, write: boolean) => {
      const pg = s.pages.get(p);
      return pg !== undefined && (!write || !pg.ro);
    };
    const prefix = (s: Slot, p: number, cnt: number, write: boolean) => {
      let k = 0;
      while (k < cnt && accessible(s, p + k, write)) k++;
      return k;
    };
    const addHeld = (head: number, pin: boolean, cnt: number) => {
      const e = held.get(head) ?? { pins: 0, gets: 0 };
      if (pin) e.pins += cnt;
      else e.gets += cnt;
      if (e.pins === 0 && e.gets === 0) held.delete(head);
      else held.set(head, e);
    };
    const checkPins = async () => {
      handles = (await c.gup.listPins({ sessionId: sid, includeRuns: true })).handles;
      const got = new Map<number, { pins: number; gets: number }>();
      let outstanding = 0;
      for (const hd of handles)
        for (const r of hd.runs) {
          const e = got.get(r.headPfn) ?? { pins: 0, gets: 0 };
          if (r.pin) e.pins += r.count;
          else e.gets += r.count;
          got.set(r.headPfn, e);
          if (r.pin && !r.zeroPage) outstanding += r.count;
        }
      const sort = (m: Map<number, unknown>) => [...m.entries()].sort((a, b) => a[0] - b[0]);
      expect(sort(got), `${ctx()}: pins held`).toEqual(sort(held));
      const st = await c.gup.getPinStats({ sessionId: sid });
      expect(st.outstandingPins, ctx()).toBe(outstanding);
      expect(st.nrFollPinAcquired - st.nrFollPinReleased, ctx()).toBe(outstanding);
    };
    /** Every new invalidation names live notifiers of its mm whose interval overlaps it. */
    const checkInvalidations = (before: RefNotifier[]): Invalidation[] => {
      const fresh = mirror!.invalidations.slice(seen);
      seen = mirror!.invalidations.length;
      totals.invalidations += fresh.length;
      for (const inv of fresh)
        for (const id of inv.notifierIds) {
          const nt = before.find((x) => x.id === id);
          expect(nt, `${ctx()}: invalidation ${JSON.stringify(inv)} names notifier ${id}`).toBeDefined();
          expect(nt!.mmId, ctx()).toBe(inv.mmId);
          if (!inv.wholeAddressSpace) expect(nt!.start < inv.end && inv.start < nt!.end, `${ctx()}: ${JSON.stringify(inv)} overlaps ${JSON.stringify(nt)}`).toBe(true);
        }
      return fresh;
    };
    const checkNotifierList = async (mmIds: number[]) => {
      for (const mmId of new Set(mmIds)) {
        const listed = (await h.notifier.listIntervalNotifiers({ mmId })).notifiers.filter((x) => x.mirrorId === mirror!.mirrorId).map((x) => x.notifierId);
        expect(listed, `${ctx()}: notifiers of mm ${mmId}`).toEqual(notifiers.filter((x) => x.mmId === mmId).map((x) => x.id));
      }
    };
    const checkPfnArena = async (s: Slot, eager: [number, number] | null) => {
      const w = await c.inspect.walkPageTable({ mmId: s.id, start: PFN_ARENA, end: PFN_ARENA + PFN_PAGES * PAGE, maxRuns: 0 });
      const covered = new Set<number>();
      for (const r of w.runs) {
        const per = r.level === 3 ? 262144 : r.level === 2 ? 512 : 1;
        for (let e = 0; e < r.nr; e++)
          for (let k = 0; k < per; k++) {
            const p = (r.addr - PFN_ARENA) / PAGE + e * per + k;
            expect(s.pfnVmas.has(p), `${ctx()}: PFN arena page ${p} mapped outside a PFNMAP VMA`).toBe(true);
            expect(r.pfn + e * per + k, `${ctx()}: PFN arena page ${p}`).toBe(bar.pfnStart + p);
            covered.add(p);
          }
      }
      if (eager !== null) for (let p = eager[0]; p < eager[1]; p++) expect(covered.has(p), `${ctx()}: page ${p} inserted`).toBe(true);
    };
    /** Most operations aim at a mapped page (one in five at the page drawn). */
    const anchor = (set: Iterable<number>, p: number) => {
      if (p % 5 === 0) return p;
      const all = [...set].sort((a, b) => a - b);
      return all.length === 0 ? p : all[p % all.length]!;
    };
    const liveNotifier = (k: number) => {
      const live = notifiers.filter((x) => slots.some((s) => s !== null && s.id === x.mmId));
      return live.length === 0 ? undefined : live[k % live.length];
    };

    for (; step < ops.length; step++) {
      totals.steps++;
      const op = { ...ops[step]! }; // a copy: the anchoring below must not change the generated value
      const before = notifiers.slice();
      let pinsChanged = false;
      let listMms: number[] = [];
      switch (op.t) {
        case "mmap": {
          const s = await ensure(op.mm);
          const cnt = clip(op.page, op.n);
          await c.addressSpace.mmap({ mmId: s.id, addr: addrOf(op.page), length: cnt * PAGE, prot: op.ro ? PROT_READ : RW, flags: MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED, fileId: 0, offset: 0 });
          for (let p = op.page; p < op.page + cnt; p++) s.pages.set(p, { ro: op.ro, data: null });
          break;
        }
        case "munmap":
        case "dontneed": {
          const s = await ensure(op.mm);
          const cnt = clip(op.page, op.n);
          let all = true;
          const mapped: number[] = [];
          for (let p = op.page; p < op.page + cnt; p++) {
            if (s.pages.has(p)) mapped.push(p);
            else all = false;
          }
          if (op.t === "munmap") {
            await c.addressSpace.munmap({ mmId: s.id, addr: addrOf(op.page), length: cnt * PAGE });
            for (let p = op.page; p < op.page + cnt; p++) s.pages.delete(p);
            // Every notifier over a page that was mapped is told.
            const fresh = checkInvalidations(before);
            for (const nt of before) {
              if (nt.mmId !== s.id || !mapped.some((p) => addrOf(p) < nt.end && nt.start < addrOf(p) + PAGE)) continue;
              expect(fresh.some((i) => i.notifierIds.includes(nt.id)), `${ctx()}: notifier ${nt.id} told of the munmap`).toBe(true);
            }
          } else {
            const r = c.addressSpace.madvise({ mmId: s.id, addr: addrOf(op.page), length: cnt * PAGE, advice: MADV_DONTNEED });
            // madvise acts on every mapped part, then reports the hole (ENOMEM).
            if (all) await r;
            else await expect(r, ctx()).rejects.toMatchObject({ details: expect.stringMatching(/ENOMEM/) });
            for (const p of mapped) s.pages.get(p)!.data = null;
          }
          break;
        }
        case "mprotect": {
          const s = await ensure(op.mm);
          const cnt = clip(op.page, op.n);
          let all = true;
          for (let p = op.page; p < op.page + cnt; p++) if (!s.pages.has(p)) all = false;
          const r = c.addressSpace.mprotect({ mmId: s.id, addr: addrOf(op.page), length: cnt * PAGE, prot: op.ro ? PROT_READ : RW });
          if (all) await r;
          else await expect(r, ctx()).rejects.toMatchObject({ details: expect.stringMatching(/ENOMEM/) });
          // do_mprotect_pkey changes the VMAs up to the first hole, then fails.
          for (let p = op.page; p < op.page + cnt && s.pages.has(p); p++) s.pages.get(p)!.ro = op.ro;
          break;
        }
        case "write":
        case "read": {
          const s = await ensure(op.mm);
          const start = addrOf(op.page) + op.off;
          const len = Math.min(op.len, ARENA + ARENA_PAGES * PAGE - start);
          // Bytes the reference says are accessible before the first fault.
          let ok = 0;
          while (ok < len) {
            if (!accessible(s, Math.floor((start + ok - ARENA) / PAGE), op.t === "write")) break;
            ok += Math.min(PAGE - ((start + ok) % PAGE), len - ok);
          }
          if (op.t === "write") {
            const data = Buffer.alloc(len);
            for (let i = 0; i < len; i++) data[i] = (op.seed * 31 + i * 7) & 0xff;
            const r = await c.memory.writeMemory({ mmId: s.id, addr: start, data });
            expect(r.bytesDone, ctx()).toBe(ok);
            for (let i = 0; i < ok; i++) {
              const a = start + i;
              const pg = s.pages.get(Math.floor((a - ARENA) / PAGE))!;
              pg.data ??= new Uint8Array(PAGE);
              pg.data[a % PAGE] = data[i]!;
            }
          } else {
            const r = await c.memory.readMemory({ mmId: s.id, addr: start, length: len });
            expect(r.bytesDone, ctx()).toBe(ok);
            const want = Buffer.alloc(ok);
            for (let i = 0; i < ok; i++) {
              const a = start + i;
              want[i] = s.pages.get(Math.floor((a - ARENA) / PAGE))!.data?.[a % PAGE] ?? 0;
            }
            expect(Buffer.from(r.data).equals(want), ctx()).toBe(true);
          }
          break;
        }
        case "fault": {
          const s = await ensure(op.mm);
          op.page = anchor(s.pages.keys(), op.page);
          const r = await c.fault.handleMmFault({ mmId: s.id, addr: addrOf(op.page) + 8, access: op.write ? FaultAccess.FAULT_ACCESS_WRITE : FaultAccess.FAULT_ACCESS_READ, flags: 0 });
          if (accessible(s, op.page, op.write)) expect(r, ctx()).toMatchObject({ signal: 0, errnoValue: 0 });
          else expect(r.signal, ctx()).not.toBe(0);
          break;
        }
        case "fork": {
          const s = await ensure(op.mm);
          const free = slots.findIndex((x) => x === null);
          if (free < 0) break;
          const child = (await c.addressSpace.forkMm({ mmId: s.id, name: "" })).childMmId;
          const pages = new Map<number, RefPage>();
          for (const [p, pg] of s.pages) pages.set(p, { ro: pg.ro, data: pg.data === null ? null : pg.data.slice() });
          slots[free] = { id: child, pages, pfnVmas: new Map(s.pfnVmas), dmirror: 0 };
          await checkPfnArena(slots[free]!, null);
          listMms = [child];
          break;
        }
        case "exit": {
          const s = await ensure(op.mm);
          await c.addressSpace.exitMm({ mmId: s.id });
          slots[op.mm] = null;
          checkInvalidations(before);
          listMms = [s.id];
          break;
        }
        case "pin": {
          const s = await ensure(op.mm);
          op.page = anchor(s.pages.keys(), op.page);
          const cnt = clip(op.page, op.n);
          const isPin = op.variant <= GupVariant.GUP_VARIANT_PIN_USER_PAGES_UNLOCKED;
          const flags = (op.write ? FOLL_WRITE : 0) | (op.longterm && isPin ? FOLL_LONGTERM : 0);
          let r;
          try {
            r = await c.gup.pinUserPages({ variant: op.variant, mmId: s.id, start: addrOf(op.page), nrPages: cnt, gupFlags: flags, output: op.array ? GupOutput.GUP_OUTPUT_PAGE_ARRAY : GupOutput.GUP_OUTPUT_RANGES, wantFolioRuns: !op.array });
          } catch (e) {
            // RLIMIT_MEMLOCK for long-term pins; nothing taken then.
            expect(errnoName(e), ctx()).toBe("ENOMEM");
            expect((e as ServiceError).code, ctx()).toBe(status.RESOURCE_EXHAUSTED);
            break;
          }
          const want = prefix(s, op.page, cnt, op.write);
          if (op.variant === GupVariant.GUP_VARIANT_GET_USER_PAGES_FAST_ONLY) expect(r.ret >= 0 && r.ret <= want, `${ctx()}: ret ${r.ret} of ${want}`).toBe(true);
          else if (want === 0) expect(r.ret, ctx()).toBeLessThanOrEqual(0);
          else expect(r.ret, ctx()).toBe(want);
          if (r.ret > 0 && r.handle !== 0) {
            totals.pins++;
            if (op.array) {
              // pages[] against the handle's record, folio heads from it.
              const hd = (await c.gup.listPins({ sessionId: sid, includeRuns: true })).handles.find((x) => x.handle === r.handle)!;
              const runs = [...hd.runs].sort((a, b) => a.index - b.index);
              // A zero-page run counts references to the one page.
              expect(runs.flatMap((x) => Array.from({ length: x.count }, (_, i) => (x.zeroPage ? x.pfn : x.pfn + i))), ctx()).toEqual(r.pages);
              for (const x of runs) addHeld(x.headPfn, isPin, x.count);
            } else {
              expect(r.folioRuns.reduce((x, f) => x + f.count, 0), ctx()).toBe(r.ret);
              for (const f of r.folioRuns) addHeld(f.headPfn, isPin, f.count);
            }
          }
          pinsChanged = true;
          break;
        }
        case "unpin": {
          pinsChanged = true;
          if (op.how === "not-held") {
            // A page the session does not hold: refused, nothing released.
            const covered = new Set<number>();
            for (const hd of handles) for (const r of hd.runs) for (let i = 0; i < r.count; i++) covered.add(r.pfn + i);
            let free = 1 + (op.pick % 64);
            while (covered.has(free) || held.has(free)) free++;
            const e = await c.gup.unpinUserPages({ pages: [free], makeDirty: false }).then(
              () => null,
              (x: unknown) => x,
            );
            expect(e, `${ctx()}: unpin of pfn ${free}`).not.toBeNull();
            expect([(e as ServiceError).code, errnoName(e)], ctx()).toEqual([status.FAILED_PRECONDITION, "EINVAL"]);
            break;
          }
          if (handles.length === 0) break;
          const hd = handles[op.pick % handles.length]!;
          const runs = hd.runs.filter((r) => !r.zeroPage);
          if (op.how === "handle") {
            const r = await c.gup.unpinHandle({ handle: hd.handle, makeDirty: op.dirty });
            expect(r.released?.pages, ctx()).toBe(hd.livePages);
            for (const run of hd.runs) addHeld(run.headPfn, run.pin, -run.count);
            break;
          }
          if (runs.length === 0) break;
          const run = runs[op.part % runs.length]!;
          // A stretch of the run: [first, first + cnt) within one folio stretch.
          const first = op.part % run.count;
          const cnt = 1 + ((op.pick >> 3) % (run.count - first));
          const pfns = Array.from({ length: cnt }, (_, i) => run.pfn + first + i);
          if (op.how === "handle-part") {
            const r = await c.gup.unpinHandle({ handle: hd.handle, first: run.index + first, count: cnt, makeDirty: op.dirty });
            expect(r.released?.pages, ctx()).toBe(cnt);
            addHeld(run.headPfn, run.pin, -cnt);
          } else if (op.how === "put" || !run.pin) {
            if (run.pin) break;
            const r = await c.gup.putUserPages({ pages: pfns });
            expect(r.released?.pages, ctx()).toBe(cnt);
            addHeld(run.headPfn, false, -cnt);
          } else if (op.how === "pages") {
            const r = await c.gup.unpinUserPages({ pages: pfns, makeDirty: op.dirty });
            expect(r.released?.pages, ctx()).toBe(cnt);
            addHeld(run.headPfn, true, -cnt);
          } else if (op.how === "range") {
            const r = await c.gup.unpinUserPageRange({ firstPfn: pfns[0]!, nrPages: cnt, makeDirty: op.dirty });
            expect(r.released?.pages, ctx()).toBe(cnt);
            addHeld(run.headPfn, true, -cnt);
          } else {
            const r = await c.gup.unpinFolios({ folios: [run.headPfn], npagesEach: cnt });
            expect(r.released?.pages, ctx()).toBe(cnt);
            addHeld(run.headPfn, true, -cnt);
          }
          break;
        }
        case "ninsert": {
          const s = await ensure(op.mm);
          op.page = anchor(s.pages.keys(), op.page);
          const cnt = clip(op.page, op.n);
          const r = await h.notifier.insertIntervalNotifier({ mirrorId: mirror.mirrorId, mmId: s.id, start: addrOf(op.page), length: cnt * PAGE });
          expect(r.deferred, ctx()).toBe(false);
          notifiers.push({ id: r.notifierId, mmId: s.id, start: addrOf(op.page), end: addrOf(op.page + cnt) });
          listMms = [s.id];
          break;
        }
        case "nremove": {
          if (notifiers.length === 0) break;
          const [nt] = notifiers.splice(op.pick % notifiers.length, 1);
          expect(await h.notifier.removeIntervalNotifier({ notifierId: nt!.id }), ctx()).toEqual({ waited: false });
          listMms = [nt!.mmId];
          break;
        }
        case "hmm": {
          const nt = liveNotifier(op.pick);
          if (nt === undefined) break;
          const s = slots.find((x) => x !== null && x.id === nt.mmId)!;
          const first = (nt.start - ARENA) / PAGE + (op.off % ((nt.end - nt.start) / PAGE));
          const cnt = Math.min(op.n, (nt.end - ARENA) / PAGE - first);
          const want = (REQ_FAULT | (op.write ? REQ_WRITE : 0)) >>> 0;
          let r;
          for (let tries = 0; ; tries++) {
            const { seq } = await h.notifier.readBegin({ notifierId: nt.id });
            r = await h.hmm.hmmRangeFault({ notifierId: nt.id, notifierSeq: seq, start: addrOf(first), end: addrOf(first + cnt), defaultFlags: want, pfnFlagsMask: 0, hmmPfns: Buffer.alloc(0), devPrivateOwner: 0, output: 2 });
            // Its own faults may invalidate the range (COW): the driver loops.
            if (r.errnoValue !== EBUSY || tries >= 8) break;
          }
          totals.hmmFaults++;
          if (prefix(s, first, cnt, op.write) === cnt) {
            expect(r.errnoValue, ctx()).toBe(0);
            expect(r.runs.reduce((x, y) => x + y.nrPages, 0), ctx()).toBe(cnt);
            // HMM_PFN_VALID (and HMM_PFN_WRITE) have the bits of the requests.
            for (const run of r.runs) expect((run.flags & want) >>> 0, `${ctx()}: ${JSON.stringify(run)}`).toBe(want);
          } else expect(r.errnoValue, ctx()).not.toBe(0);
          checkInvalidations(before);
          break;
        }
        case "migrate":
        case "migrate-back": {
          const s = await ensure(op.mm);
          op.page = anchor(s.pages.keys(), op.page);
          const cnt = clip(op.page, op.n);
          if (s.dmirror === 0) s.dmirror = (await h.dmirror.openMirror({ deviceId: device, mmId: s.id })).mirrorId;
          const all = prefix(s, op.page, cnt, false) === cnt;
          try {
            const r =
              op.t === "migrate"
                ? await h.dmirror.migrateToDevice({ mirrorId: s.dmirror, addr: addrOf(op.page), npages: cnt, omitData: true })
                : await h.dmirror.migrateToSystem({ mirrorId: s.dmirror, addr: addrOf(op.page), npages: cnt });
            expect(r.cpages, ctx()).toBeLessThanOrEqual(cnt);
            if (op.t === "migrate") totals.migrated += r.cpages;
          } catch (e) {
            // ENOENT: a page stayed (pinned, zero page), so the read-back of
            // dmirror_migrate_to_device finds it missing in the mirror. A
            // hole in the range: dmirror's vma_lookup fails (EINVAL/EFAULT).
            const name = errnoName(e);
            if (name !== "ENOENT") {
              expect(all, `${ctx()}: ${name}`).toBe(false);
              expect(["EINVAL", "EFAULT"], ctx()).toContain(name);
            } else expect(op.t, ctx()).toBe("migrate");
          }
          checkInvalidations(before);
          break;
        }
        case "pfnmap": {
          const s = await ensure(op.mm);
          const cnt = Math.min(op.n, PFN_PAGES - op.page);
          await c.addressSpace.mmap({
            mmId: s.id,
            addr: PFN_ARENA + op.page * PAGE,
            length: cnt * PAGE,
            prot: RW,
            flags: MAP_SHARED | MAP_FIXED,
            fileId: 0,
            offset: op.page * PAGE,
            device: { kind: DeviceMapping.DEVICE_MAPPING_PFNMAP, pfnRangeId: bar.pfnRangeId, hugeFault: op.huge },
          });
          pfnMmaps++;
          for (let p = op.page; p < op.page + cnt; p++) s.pfnVmas.set(p, pfnMmaps);
          await checkPfnArena(s, null);
          break;
        }
        case "pfninsert": {
          const s = await ensure(op.mm);
          op.page = anchor(s.pfnVmas.keys(), op.page);
          const cnt = Math.min(op.fault ? 1 : op.n, PFN_PAGES - op.page);
          // vmf_insert_pfn_range works inside one VMA (else VM_FAULT_SIGBUS).
          let inside = s.pfnVmas.has(op.page);
          for (let p = op.page; p < op.page + cnt; p++) if (s.pfnVmas.get(p) !== s.pfnVmas.get(op.page)) inside = false;
          const r = await c.device.insertPfnRange({ mmId: s.id, addr: PFN_ARENA + op.page * PAGE, pfn: bar.pfnStart + op.page, nrPages: cnt, mode: op.fault ? InsertMode.INSERT_MODE_FAULT : InsertMode.INSERT_MODE_EAGER, write: true });
          // VM_FAULT_NOPAGE (0x100) is the insertion's success.
          if (inside) {
            expect({ vmFault: r.vmFault & ~0x100, errnoValue: r.errnoValue }, ctx()).toEqual({ vmFault: 0, errnoValue: 0 });
            totals.pfnInserts++;
          } else expect((r.vmFault & ~0x100) !== 0 || r.errnoValue !== 0, `${ctx()}: ${JSON.stringify(r)}`).toBe(true);
          await checkPfnArena(s, inside && !op.fault ? [op.page, op.page + cnt] : null);
          break;
        }
        case "pfnunmap": {
          const s = await ensure(op.mm);
          const cnt = Math.min(op.n, PFN_PAGES - op.page);
          await c.addressSpace.munmap({ mmId: s.id, addr: PFN_ARENA + op.page * PAGE, length: cnt * PAGE });
          for (let p = op.page; p < op.page + cnt; p++) s.pfnVmas.delete(p);
          await checkPfnArena(s, null);
          break;
        }
      }
      checkInvalidations(before);
      if (listMms.length > 0) await checkNotifierList(listMms);
      if (pinsChanged || op.t === "exit" || op.t === "fork" || op.t === "munmap") await checkPins();
      const inv = await c0.inspect.checkInvariants({});
      expect(inv.violations, ctx()).toEqual([]);
    }
    step = ops.length;
    await checkPins();
    // Every mapped page of every live mm holds what the reference says.
    for (const s of slots) {
      if (s === null) continue;
      for (const [p, pg] of s.pages) {
        const r = await c.memory.readMemory({ mmId: s.id, addr: addrOf(p), length: PAGE });
        expect(r.bytesDone, `${ctx()}: final read of mm ${s.id} page ${p}`).toBe(PAGE);
        expect(Buffer.from(r.data).equals(Buffer.from(pg.data ?? new Uint8Array(PAGE))), `${ctx()}: final contents of mm ${s.id} page ${p}`).toBe(true);
      }
    }
  } finally {
    mirror?.end();
    h.close();
    await c0.session.closeSession({ sessionId: sid });
    if (mirror !== null) await mirror.status;
  }
  // Everything the session held is gone: back to the baseline.
  const d = await c0.admin.getStateDigest({});
  expect({ freePages: d.freePages, pageTables: d.pageTables, mms: d.mms }, `seed ${SEED}: after the session ended`).toEqual({ freePages: base.freePages, pageTables: base.pageTables, mms: base.mms });
  const st = await c0.gup.getPinStats({ sessionId: 0 });
  expect(st.nrFollPinAcquired, `seed ${SEED}: pins`).toBe(st.nrFollPinReleased);
  expect((await h0.dmirror.listDmirrorDevices({})).devices).toEqual([]);
  const inv = await c0.inspect.checkInvariants({});
  expect(inv.violations).toEqual([]);
}

/**
 * Shrunk sequences of earlier failures, run first on every run (all were
 * mistakes of this reference model, now fixed; the daemon bugs found
 * alongside are in reliability-regressions.test.ts).
 */
const REGRESSIONS: Op[][] = [
  // HMM_PFN_REQ_FAULT | REQ_WRITE must travel as an unsigned 32-bit value.
  [{ t: "ninsert", mm: 0, page: 0, n: 1 }, { t: "hmm", pick: 0, off: 0, n: 1, write: true }, { t: "pfninsert", mm: 0, page: 0, n: 1, fault: false }],
  // A page pinned long-term stays in RAM: dmirror's read-back answers ENOENT.
  [
    { t: "mmap", mm: 0, page: 0, n: 512, ro: false },
    { t: "pin", mm: 0, page: 0, n: 512, variant: GupVariant.GUP_VARIANT_PIN_USER_PAGES, write: false, longterm: true, array: false },
    { t: "migrate", mm: 0, page: 0, n: 1 },
    { t: "ninsert", mm: 0, page: 0, n: 1 },
  ],
  // Low PFNs can be user pages: "not held" must pick one the session does not hold.
  [
    { t: "mmap", mm: 0, page: 0, n: 16, ro: false },
    { t: "pin", mm: 0, page: 0, n: 16, variant: GupVariant.GUP_VARIANT_PIN_USER_PAGES_FAST, write: true, longterm: false, array: true },
    { t: "unpin", how: "not-held", pick: 0, part: 0, dirty: false },
  ],
  // ListPins: a zero-page run of count n is n references to one PFN.
  [
    { t: "mmap", mm: 1, page: 0, n: 64, ro: false },
    { t: "fault", mm: 1, page: 1, write: false },
    { t: "pin", mm: 1, page: 0, n: 512, variant: GupVariant.GUP_VARIANT_GET_USER_PAGES, write: false, longterm: false, array: true },
    { t: "pfnunmap", mm: 0, page: 0, n: 1 },
  ],
  // VM_PFNMAP VMAs never merge: an insertion across two of them is VM_FAULT_SIGBUS.
  [
    { t: "pfnmap", mm: 0, page: 526, n: 513, huge: false },
    { t: "pfnmap", mm: 0, page: 526, n: 1, huge: false },
    { t: "pfninsert", mm: 0, page: 498, n: 64, fault: false },
    { t: "ninsert", mm: 0, page: 0, n: 1 },
  ],
];

describe("model-based random operations over gRPC", () => {
  it(`${RUNS} sequences of up to ${STEPS} steps, seed ${SEED}: reference model agrees, invariants hold, session end returns to the baseline`, async () => {
    const t0 = performance.now();
    await fc.assert(
      fc.asyncProperty(fc.array(opArb, { minLength: 1, maxLength: STEPS, size: "max" }), (ops) => runSequence(ops)),
      // Shrinking re-runs sequences against the daemon: bounded in time.
      { seed: SEED, numRuns: RUNS, verbose: 1, interruptAfterTimeLimit: SHRINK_MS, markInterruptAsFailure: true, examples: REGRESSIONS.map((ops) => [ops]) },
    );
    console.log(`property: seed ${SEED}, ${totals.sequences} sequences, ${totals.steps} steps, ${totals.pins} pin calls holding pages, ${totals.invalidations} invalidations, ${totals.hmmFaults} hmm faults, ${totals.migrated} pages migrated to the device, ${totals.pfnInserts} PFN insertions, ${Math.round(performance.now() - t0)} ms`);
    expect(totals.steps).toBeGreaterThan(RUNS);
  }, 3_600_000);
});
