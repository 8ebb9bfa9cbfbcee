/**
 * Load: 40 concurrent clients, each on a TCP connection of its own, for a
 * bounded time (MMSIM_LOAD_SECONDS, default 10) against one daemon with a
 * short mirror deadline. Each client has a non-persistent session, a private
 * mm and a window of one of four shared mms (owned by a host session), and
 * mixes writes and reads (checked against its own reference), MADV_DONTNEED,
 * mprotect, CPU faults, every GUP variant and release, fork (of its private
 * mm with COW writes in the child, and of the shared mm, which write-protects
 * every client's window and so invalidates every notifier on it), interval
 * notifiers with hmm_range_fault, dmirror migration to device memory and back
 * by CPU access, and PFNMAP insertion. Its client mirror acknowledges
 * promptly, slowly, never (declared dead after the deadline, then reopened)
 * or disconnects mid-invalidation. Clients end by CloseSession, by cancelling
 * their AttachSession stream, or by losing their TCP connection.
 *
 * Afterwards: no unexpected error, every invariant holds, each client's data
 * (private and in the shared mms) is what it wrote, nr_foll_pin_acquired ==
 * nr_foll_pin_released, no session, mm, pin, notifier, mirror or device is
 * left, free pages and page tables are back to the baseline, and the heap
 * after a forced GC is back near its baseline.
 */
import { runInNewContext } from "node:vm";
import v8 from "node:v8";
import type { ClientDuplexStream, ClientReadableStream } from "@grpc/grpc-js";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { DeviceMapping } from "../../src/gen/mmsim/v1/address_space.js";
import { MemoryType } from "../../src/gen/mmsim/v1/common.js";
import { InsertMode } from "../../src/gen/mmsim/v1/device.js";
import { GupOutput, GupVariant } from "../../src/gen/mmsim/v1/gup.js";
import type { AttachSessionResponse } from "../../src/gen/mmsim/v1/session.js";
import type { SubscribeRequest, SubscribeResponse } from "../../src/gen/mmsim/v1/notifier.js";
import { sessionMetadata, startDaemon, type Clients, type TestDaemon } from "../helpers/daemon.js";
import { type Conn, connect, type Relay, relay } from "../helpers/conn.js";
import { hmmClients } from "../helpers/hmm.js";
import { notifierHubOf } from "../../src/server/notifier-service.js";

const SECONDS = Number(process.env.MMSIM_LOAD_SECONDS ?? 10);
const CLIENTS = Number(process.env.MMSIM_LOAD_CLIENTS ?? 40);
const DEADLINE_MS = 250;
const PAGE = 4096;
const RW = 3;
const MAP_PRIVATE_ANON = 0x22;
const MAP_SHARED = 0x1;
const MAP_FIXED = 0x10;
const MADV_DONTNEED = 4;
const FOLL_WRITE = 0x1;
const FOLL_LONGTERM = 0x100;
const REQ_FAULT = 0x8000_0000;
const EBUSY = 16;
const PRIV_PAGES = 64;
const WIN_PAGES = 32;
const SHARED_BASE = 0x6000_0000_0000;
const SHARED_MMS = 4;

v8.setFlagsFromString("--expose-gc");
const gc = runInNewContext("gc") as () => void;
function heapAfterGc(): number {
  for (let i = 0; i < 3; i++) gc();
  return process.memoryUsage().heapUsed;
}

/** xorshift32, one per client: the mix is reproducible per client (not its interleaving). */
function rng(seed: number) {
  let s = seed >>> 0 || 1;
  return (n: number) => {
    s ^= s << 13;
    s ^= s >>> 17;
    s ^= s << 5;
    return (s >>> 0) % n;
  };
}

type MirrorMode = "prompt" | "slow" | "never" | "disconnect";
type Ending = "close" | "cancel-attach" | "cut-connection";

const stats = { ms: {} as Record<string, number>, ops: 0, errors: [] as string[], byOp: {} as Record<string, number>, mirrorsOpened: 0, invalidations: 0, pinCalls: 0, migrated: 0 };

let t: TestDaemon;
let host: Clients;
let hostSid: number;
const shared: number[] = [];

class LoadClient {
  conn!: Conn;
  wire!: Relay;
  sid = 0;
  attach!: ClientReadableStream<AttachSessionResponse>;
  mirror: { call: ClientDuplexStream<SubscribeRequest, SubscribeResponse>; id: number; alive: boolean; ended: Promise<void> } | null = null;
  reopen = 2;
  priv = 0;
  privAddr = 0;
  privRef = Buffer.alloc(PRIV_PAGES * PAGE);
  sharedMm: number;
  winAddr: number;
  winRef = Buffer.alloc(WIN_PAGES * PAGE);
  handles: number[] = [];
  notifiers: number[] = [];
  device = 0;
  dm = 0;
  bar = { id: 0, pfn: 0 };
  readonly r: (n: number) => number;

  constructor(
    readonly ix: number,
    readonly mode: MirrorMode,
    readonly ending: Ending,
  ) {
    this.r = rng(0x9e3779b9 ^ (ix * 7919));
    this.sharedMm = shared[ix % SHARED_MMS]!;
    this.winAddr = SHARED_BASE + ix * WIN_PAGES * PAGE * 2;
  }

  async start(): Promise<void> {
    this.wire = await relay(t.address);
    this.conn = connect(this.wire.address);
    this.sid = (await this.conn.session.createSession({ name: `load-${this.ix}`, persistent: false })).sessionId;
    this.conn.useSession(this.sid);
    this.attach = this.conn.raw.session.attachSession({ sessionId: this.sid });
    this.attach.on("error", () => {});
    await new Promise<void>((resolve) => this.attach.once("data", () => resolve()));
    const c = this.conn;
    this.priv = (await c.addressSpace.createMm({ name: `priv-${this.ix}` })).mmId;
    this.privAddr = (await c.addressSpace.mmap({ mmId: this.priv, addr: 0, length: PRIV_PAGES * PAGE, prot: RW, flags: MAP_PRIVATE_ANON, fileId: 0, offset: 0 })).addr;
    await c.addressSpace.mmap({ mmId: this.sharedMm, addr: this.winAddr, length: WIN_PAGES * PAGE, prot: RW, flags: MAP_PRIVATE_ANON | MAP_FIXED, fileId: 0, offset: 0 });
    const b = await c.device.registerPfnRange({ name: `bar-${this.ix}`, nrPages: 16, alignPages: 0 });
    this.bar = { id: b.pfnRangeId, pfn: b.pfnStart };
    await this.openMirror();
  }

  async openMirror(): Promise<void> {
    const call = this.conn.raw.notifier.subscribe(sessionMetadata(this.sid));
    let ended!: () => void;
    const m = { call, id: 0, alive: true, ended: new Promise<void>((r) => (ended = r)) };
    call.on("error", () => {});
    call.on("status", () => {
      m.alive = false;
      ended();
    });
    call.on("data", (msg: SubscribeResponse) => {
      if (msg.dead !== undefined) m.alive = false;
      if (msg.invalidations === undefined) return;
      const ids = msg.invalidations.invalidations.map((i) => i.invalidationId);
      stats.invalidations += ids.length;
      switch (this.mode) {
        case "prompt":
          call.write({ ack: { invalidationIds: ids, refusedIds: [] } });
          break;
        case "slow":
          setTimeout(() => m.alive && call.write({ ack: { invalidationIds: ids, refusedIds: [] } }), 5 + this.r(40));
          break;
        case "never":
          break;
        case "disconnect":
          m.alive = false;
          call.cancel();
          break;
      }
    });
    const opened = new Promise<number>((resolve) => call.once("data", (msg: SubscribeResponse) => resolve(msg.subscribed?.mirrorId ?? 0)));
    call.write({ open: { name: `m-${this.ix}` } });
    m.id = await opened;
    this.mirror = m;
    this.notifiers = [];
    stats.mirrorsOpened++;
  }

  private write(mm: "priv" | "win", off: number, len: number): Promise<unknown> {
    const data = Buffer.alloc(len);
    for (let i = 0; i < len; i++) data[i] = (this.ix * 13 + off + i * 7 + stats.ops) & 0xff;
    const [mmId, addr, ref] = mm === "priv" ? [this.priv, this.privAddr, this.privRef] : [this.sharedMm, this.winAddr, this.winRef];
    return this.conn.memory.writeMemory({ mmId, addr: addr + off, data }).then((r) => {
      if (r.bytesDone !== len) throw new Error(`write of ${len} bytes did ${r.bytesDone}`);
      data.copy(ref, off);
    });
  }

  async verify(mm: "priv" | "win", off = 0, len = (mm === "priv" ? PRIV_PAGES : WIN_PAGES) * PAGE): Promise<void> {
    const [mmId, addr, ref] = mm === "priv" ? [this.priv, this.privAddr, this.privRef] : [this.sharedMm, this.winAddr, this.winRef];
    const r = await this.conn.memory.readMemory({ mmId, addr: addr + off, length: len });
    if (r.bytesDone !== len || !Buffer.from(r.data).equals(ref.subarray(off, off + len))) throw new Error(`client ${this.ix}: ${mm} contents differ at [${off}, +${len})`);
  }

  /** One operation of the mix. */
  async step(): Promise<string> {
    const c = this.conn;
    const r = this.r;
    const pg = r(PRIV_PAGES);
    const n = 1 + r(Math.min(8, PRIV_PAGES - pg));
    switch (r(16)) {
      case 0:
      case 1: {
        const off = r(PRIV_PAGES * PAGE - 100);
        await this.write("priv", off, 1 + r(Math.min(9000, PRIV_PAGES * PAGE - off)));
        return "write";
      }
      case 2: {
        const off = r(WIN_PAGES * PAGE - 100);
        await this.write("win", off, 1 + r(Math.min(9000, WIN_PAGES * PAGE - off)));
        return "write-shared";
      }
      case 3:
        await this.verify(r(2) === 0 ? "priv" : "win");
        return "read";
      case 4:
        await c.addressSpace.madvise({ mmId: this.priv, addr: this.privAddr + pg * PAGE, length: n * PAGE, advice: MADV_DONTNEED });
        this.privRef.fill(0, pg * PAGE, (pg + n) * PAGE);
        return "dontneed";
      case 5:
        await c.addressSpace.mprotect({ mmId: this.priv, addr: this.privAddr + pg * PAGE, length: n * PAGE, prot: 1 });
        await c.addressSpace.mprotect({ mmId: this.priv, addr: this.privAddr + pg * PAGE, length: n * PAGE, prot: RW });
        await c.fault.handleMmFault({ mmId: this.priv, addr: this.privAddr + pg * PAGE, access: 1 + r(2), flags: 0 });
        return "mprotect+fault";
      case 6:
      case 7: {
        const variant = 1 + r(9);
        const long = variant <= GupVariant.GUP_VARIANT_PIN_USER_PAGES_UNLOCKED && r(2) === 0;
        const onWin = r(3) === 0;
        const res = await c.gup.pinUserPages({ variant, mmId: onWin ? this.sharedMm : this.priv, start: (onWin ? this.winAddr : this.privAddr) + pg * PAGE % (WIN_PAGES * PAGE), nrPages: n, gupFlags: FOLL_WRITE | (long ? FOLL_LONGTERM : 0), output: GupOutput.GUP_OUTPUT_RANGES, wantFolioRuns: false });
        stats.pinCalls++;
        if (res.handle !== 0) this.handles.push(res.handle);
        return "pin";
      }
      case 8: {
        const h = this.handles.splice(r(this.handles.length + 1), 1)[0];
        if (h === undefined) return "unpin-none";
        if (r(2) === 0) await c.gup.unpinHandle({ handle: h, makeDirty: r(2) === 0 });
        else {
          const info = (await c.gup.listPins({ sessionId: this.sid, includeRuns: true })).handles.find((x) => x.handle === h)!;
          // A zero-page run counts references to the one page.
          const pfns = (x: { pfn: number; count: number; zeroPage: boolean }) => Array.from({ length: x.count }, (_, i) => (x.zeroPage ? x.pfn : x.pfn + i));
          const pins = info.runs.filter((x) => x.pin && !x.zeroPage).flatMap(pfns);
          const gets = info.runs.filter((x) => !x.pin).flatMap(pfns);
          if (pins.length > 0) await c.gup.unpinUserPages({ pages: pins, makeDirty: false });
          if (gets.length > 0) await c.gup.putUserPages({ pages: gets });
          await c.gup.unpinHandle({ handle: h, makeDirty: false }).catch(() => undefined); // only zero-page entries may be left
          // A page-list release takes the session's references wherever they
          // were taken, so other handles may have emptied: ask which live.
          this.handles = (await c.gup.listPins({ sessionId: this.sid, includeRuns: false })).handles.map((x) => x.handle);
        }
        return "unpin";
      }
      case 9: {
        // fork the private mm; the child's writes must not reach the parent
        const child = (await c.addressSpace.forkMm({ mmId: this.priv, name: "" })).childMmId;
        await c.memory.writeMemory({ mmId: child, addr: this.privAddr + pg * PAGE, data: Buffer.alloc(n * PAGE, 0xee) });
        await c.addressSpace.exitMm({ mmId: child });
        await this.verify("priv", pg * PAGE, n * PAGE);
        return "fork";
      }
      case 10: {
        // fork of the shared mm: every client's window is write-protected (invalidations for all)
        const child = (await c.addressSpace.forkMm({ mmId: this.sharedMm, name: "" })).childMmId;
        await c.addressSpace.exitMm({ mmId: child });
        return "fork-shared";
      }
      case 11: {
        if (this.mirror === null || !this.mirror.alive) {
          if (this.reopen-- <= 0) return "mirror-gone";
          await this.openMirror();
        }
        const onWin = r(2) === 0;
        const mirror = this.mirror!;
        const res = await c.notifier
          .insertIntervalNotifier({ mirrorId: mirror.id, mmId: onWin ? this.sharedMm : this.priv, start: onWin ? this.winAddr : this.privAddr, length: (onWin ? WIN_PAGES : PRIV_PAGES) * PAGE })
          .catch(async (e: { code?: number }) => {
            if (e.code !== 5) throw e;
            return gone(mirror, e); // the mirror died meanwhile (NOT_FOUND)
          });
        if (res === null) return "notifier-mirror-gone";
        this.notifiers.push(res.notifierId);
        if (this.notifiers.length > 3)
          await c.notifier.removeIntervalNotifier({ notifierId: this.notifiers.shift()! }).catch((e: { code?: number }) => {
            if (e.code !== 5) throw e; // NOT_FOUND: gone with an earlier mirror
          });
        return "notifier";
      }
      case 12: {
        const id = this.notifiers[r(this.notifiers.length + 1)];
        if (id === undefined || this.mirror === null || !this.mirror.alive) return "hmm-none";
        const mirror = this.mirror;
        try {
          for (let i = 0; i < 8; i++) {
            const info = await c.notifier.getIntervalNotifier({ notifierId: id });
            const { seq } = await c.notifier.readBegin({ notifierId: id });
            const start = info.notifier!.start;
            const res = await c.hmm.hmmRangeFault({ notifierId: id, notifierSeq: seq, start, end: start + 4 * PAGE, defaultFlags: REQ_FAULT, pfnFlagsMask: 0, hmmPfns: Buffer.alloc(0), devPrivateOwner: 0, output: 2 });
            if (res.errnoValue === 0) return "hmm";
            if (res.errnoValue !== EBUSY) throw new Error(`hmm_range_fault errno ${res.errnoValue}`);
          }
        } catch (e) {
          // A mirror declared dead loses its notifiers at any point (NOT_FOUND).
          if ((e as { code?: number }).code !== 5) throw e;
          await gone(mirror, e);
          return "hmm-mirror-gone";
        }
        return "hmm-busy";
      }
      case 13: {
        {
          if (this.device === 0) {
            this.device = (await c.dmirror.createDmirrorDevice({ name: `d-${this.ix}`, memoryType: MemoryType.MEMORY_TYPE_DEVICE_PRIVATE, chunkPages: 64 })).deviceId;
            this.dm = (await c.dmirror.openMirror({ deviceId: this.device, mmId: this.priv })).mirrorId;
          }
          const res = await c.dmirror.migrateToDevice({ mirrorId: this.dm, addr: this.privAddr + pg * PAGE, npages: n, omitData: true }).catch((e: { details?: string }) => {
            if (!/^(ENOENT|EBUSY|ENOMEM)/.test(e.details ?? "")) throw e; // pinned pages stay
            return { cpages: 0 };
          });
          stats.migrated += res.cpages;
          await this.verify("priv", pg * PAGE, n * PAGE); // CPU access faults them back
        }
        return "migrate";
      }
      case 14: {
        const va = (await c.addressSpace.mmap({ mmId: this.priv, addr: 0, length: 16 * PAGE, prot: RW, flags: MAP_SHARED, fileId: 0, offset: 0, device: { kind: DeviceMapping.DEVICE_MAPPING_PFNMAP, pfnRangeId: this.bar.id, hugeFault: false } })).addr;
        const res = await c.device.insertPfnRange({ mmId: this.priv, addr: va, pfn: this.bar.pfn, nrPages: 16, mode: InsertMode.INSERT_MODE_EAGER, write: true });
        if (res.errnoValue !== 0 || (res.vmFault & ~0x100) !== 0) throw new Error(`insert_pfn_range ${JSON.stringify(res)}`);
        await c.addressSpace.munmap({ mmId: this.priv, addr: va, length: 16 * PAGE });
        return "pfn-insert";
      }
      default: {
        const off = r(PRIV_PAGES * PAGE - 100);
        await this.verify("priv", off, 1 + r(Math.min(9000, PRIV_PAGES * PAGE - off)));
        return "read-part";
      }
    }
  }

  async run(until: number): Promise<void> {
    while (performance.now() < until) {
      let what = "?";
      const t1 = performance.now();
      try {
        what = await this.step();
        stats.ms[what] = (stats.ms[what] ?? 0) + Math.round(performance.now() - t1);
      } catch (e) {
        const err = e as { details?: string; message?: string };
        stats.errors.push(`client ${this.ix} (${this.mode}): ${err.details ?? err.message}`);
        if (stats.errors.length > 20) return;
      }
      stats.ops++;
      stats.byOp[what] = (stats.byOp[what] ?? 0) + 1;
    }
    // Final check of everything it wrote, then the end of the client.
    await this.verify("priv");
    await this.verify("win");
  }

  async end(): Promise<void> {
    if (this.ending === "close") await this.conn.session.closeSession({ sessionId: this.sid });
    else if (this.ending === "cancel-attach") this.attach.cancel();
    else this.wire.cut();
    this.conn.close();
    if (this.ending !== "cut-connection") this.wire.cut();
  }
}

/** A NOT_FOUND for a notifier or mirror is expected only if the mirror's stream ends (dead or cancelled). */
async function gone(m: { alive: boolean; ended: Promise<void> }, e: unknown): Promise<null> {
  await Promise.race([m.ended, new Promise((r) => setTimeout(r, 5 * DEADLINE_MS))]);
  if (m.alive) throw e;
  return null;
}

async function until(what: string, f: () => Promise<boolean>): Promise<void> {
  for (let i = 0; i < 1000; i++) {
    if (await f()) return;
    await new Promise((r) => setTimeout(r, 20));
  }
  throw new Error(`timed out waiting for ${what}`);
}

beforeAll(async () => {
  t = await startDaemon({ ramBytes: 1024 * 2 ** 20, mirrorDeadlineMs: DEADLINE_MS });
});
afterAll(async () => t.stop());

describe("load", () => {
  it(`${CLIENTS} clients for ${SECONDS} s: no unexpected error, no leak, no client's data touched by another`, async () => {
    const c0 = t.clients;
    // Allocate-once state first (huge zero folio, code paths), then the baselines.
    {
      hostSid = await t.newSession("host");
      host = t.withSession(hostSid);
      shared.push((await host.addressSpace.createMm({ name: "warm" })).mmId);
      const warm = new LoadClient(0, "prompt", "close");
      await warm.start();
      const z = (await warm.conn.addressSpace.mmap({ mmId: warm.priv, addr: 0, length: 4 * 2 ** 20, prot: 1, flags: MAP_PRIVATE_ANON, fileId: 0, offset: 0 })).addr;
      await warm.conn.fault.handleMmFault({ mmId: warm.priv, addr: Math.ceil(z / 2 ** 21) * 2 ** 21, access: 1, flags: 0 });
      for (let i = 0; i < 40; i++) await warm.step();
      await warm.end();
      await host.addressSpace.exitMm({ mmId: shared.pop()! });
      await until("the warm-up session to end", async () => (await c0.session.listSessions({})).sessions.length === 1);
    }
    const base = await c0.admin.getStateDigest({});
    const heap0 = heapAfterGc();
    const mms0 = t.daemon.kernel.mms.size;
    for (let i = 0; i < SHARED_MMS; i++) shared.push((await host.addressSpace.createMm({ name: `shared-${i}` })).mmId);

    const modes: MirrorMode[] = (process.env.MMSIM_LOAD_MODES?.split(",") as MirrorMode[] | undefined) ?? ["prompt", "slow", "never", "disconnect"];
    const endings: Ending[] = ["close", "cancel-attach", "cut-connection"];
    const clients = Array.from({ length: CLIENTS }, (_, i) => new LoadClient(i, modes[i % 4]!, endings[i % 3]!));
    await Promise.all(clients.map((cl) => cl.start()));
    const t0 = performance.now();
    await Promise.all(clients.map((cl) => cl.run(t0 + SECONDS * 1000)));
    const elapsed = performance.now() - t0;
    expect(stats.errors).toEqual([]);
    const live = (await c0.session.listSessions({})).sessions;
    expect(live).toHaveLength(CLIENTS + 1);
    await t.checkInvariants();
    await Promise.all(clients.map((cl) => cl.end()));
    await until("every client session to end", async () => (await c0.session.listSessions({})).sessions.length === 1);

    // Each client's window in the shared mms holds exactly what that client wrote.
    for (const cl of clients) {
      const r = await host.memory.readMemory({ mmId: cl.sharedMm, addr: cl.winAddr, length: WIN_PAGES * PAGE });
      expect(Buffer.from(r.data).equals(cl.winRef), `client ${cl.ix}'s window`).toBe(true);
    }
    // Nothing of the clients is left on the shared mms.
    const hh = hmmClients(t, hostSid);
    for (const mmId of shared) expect((await hh.notifier.listIntervalNotifiers({ mmId })).notifiers).toEqual([]);
    hh.close();
    const pins = await c0.gup.getPinStats({ sessionId: 0 });
    expect(pins.nrFollPinAcquired).toBe(pins.nrFollPinReleased);
    expect(pins.outstandingPins).toBe(0);
    for (const mmId of shared) await host.addressSpace.exitMm({ mmId });
    await c0.session.closeSession({ sessionId: hostSid });
    expect((await c0.session.listSessions({})).sessions).toEqual([]);
    await t.checkInvariants();
    const end = await c0.admin.getStateDigest({});
    expect({ freePages: end.freePages, pageTables: end.pageTables, mms: end.mms, vmas: end.vmas }).toEqual({ freePages: base.freePages, pageTables: base.pageTables, mms: 0, vmas: 0 });
    expect((await c0.device.listDevices({})).pfnRanges).toEqual([]);
    // The daemon's own tables of client mirrors and their notifiers are empty.
    const hub = notifierHubOf(t.daemon.kernel)!;
    expect({ mirrors: hub.mirrors.size, notifiers: hub.notifiers.size }).toEqual({ mirrors: 0, notifiers: 0 });
    const heap1 = heapAfterGc();
    const mms1 = t.daemon.kernel.mms.size;
    console.log(
      `load: ${CLIENTS} clients, ${(elapsed / 1000).toFixed(1)} s, ${stats.ops} operations (${JSON.stringify(stats.byOp)}; ms per kind ${JSON.stringify(stats.ms)}), ${stats.pinCalls} GUP calls, ${stats.invalidations} invalidations delivered, ${stats.mirrorsOpened} mirrors opened, ${stats.migrated} pages migrated; ` +
        `errors ${stats.errors.length}; heap after GC ${(heap0 / 2 ** 20).toFixed(1)} MiB -> ${(heap1 / 2 ** 20).toFixed(1)} MiB; mm structs kept ${mms0} -> ${mms1}`,
    );
    expect(stats.ops).toBeGreaterThan(CLIENTS);
    // Exited mms stay known (ESRCH answers) as small husks: allow 4 KiB each, plus 16 MiB of slack.
    expect(heap1 - heap0).toBeLessThan(16 * 2 ** 20 + (mms1 - mms0) * 4096);
  }, 120_000 + SECONDS * 1000);
});
