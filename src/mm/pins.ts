/**
 * The pin registry: the GUP references (FOLL_GET) and pins (FOLL_PIN) that
 * each client session holds, so that they are released exactly - by handle,
 * by page list, by PFN range or by folio - and all at once when the session
 * ends (releaseSession).
 *
 * Vocabulary (as pfn-batch.ts and constants.ts):
 *  - A handle names what one GUP call took. Its pages are numbered
 *    [0, nrPages) in the order of the call's pages[] (virtual-address order).
 *  - A run is a stretch of one handle inside one folio: the pages
 *    [pfn, pfn + count) numbered [idx, idx + count) in the handle, all of one
 *    kind (RUN_PIN set: FOLL_PIN, else FOLL_GET). A RUN_SAME run is `count`
 *    references to the one page `pfn` (consecutive PTEs of the shared zero
 *    page). Runs live in typed arrays; there is no per-page object.
 *  - A RUN_SMALL run is `count` physically contiguous order-0 folios, one
 *    page each, [runPfn, runPfn + count) (runHead is not kept up to date):
 *    a stretch of small pages is one run, its references still counted and
 *    put per folio.
 *  - A 4 KiB zero-page pin is a no-op in the kernel (is_zero_folio): it is kept
 *    as a RUN_NOOP run so that the handle still covers those pages, and is
 *    released without any accounting.
 *
 * Release rules:
 *  - All or nothing: a request naming a page the session does not hold fails
 *    with MmError kind "precondition" and changes nothing, so no count can go
 *    negative. Teardown (releaseSession) never fails.
 *  - Arithmetic is gup_put_folio's (gup.ts), one update per folio group;
 *    with make_dirty the folio is dirtied once per group, before the put
 *    (unpin_user_pages_dirty_lock).
 *  - A per-folio index (head PFN -> runs) is built only when a release names
 *    pages rather than a handle, and kept up to date from then on.
 */
import { HPAGE_PUD_NR, PAGE_SIZE } from "./constants.js";
import { Errno, fail, invalid } from "./errors.js";
import * as G from "./gup.js";
import type { Kernel } from "./kernel.js";
import * as PM from "./physmem.js";
import { keepShape, shapesTick } from "./shapes.js";

export { RUN_BIAS2019, RUN_LONGTERM, RUN_NOOP, RUN_PIN, RUN_SAME, RUN_SMALL } from "./gup.js";

// Module-local bindings of names used per run (see the note in gup.ts).
const { RUN_BIAS2019, RUN_LONGTERM, RUN_NOOP, RUN_PIN, RUN_SAME, RUN_SMALL, gupPutFolio } = G;
/** Run flags that say what a reference is (RUN_SMALL only says how it is stored). */
const KIND_MASK = ~RUN_SMALL;
const { PG_dirty, PG_reserved } = PM;

interface Counters {
  livePages: number;
  pins: number;
  gets: number;
  locked: number;
}

/** Add `n` pages of a run with `flags` to (or, with n < 0, remove from) counters. */
function countInto(c: Counters, flags: number, n: number): void {
  c.livePages += n;
  if (flags & RUN_NOOP) return;
  if (flags & RUN_PIN) {
    c.pins += n;
    if (flags & RUN_LONGTERM) c.locked += n;
  } else {
    c.gets += n;
  }
}

/** Bytes of run storage per run: runIdx (f64), runPfn, runCount, runHead (u32), runFlags (u8). */
const RUN_BYTES = 21;
/** Smallest run storage a handle gets (runs). */
const MIN_RUN_CAPACITY = 16;
/** Largest run storage kept for reuse (runs), and the bytes kept at most in all. */
const SPARE_MAX_CAPACITY = 1 << 15;
const SPARE_MAX_BYTES = 32 << 20;
/**
 * Run storage of dropped handles, by capacity (a multiple of
 * MIN_RUN_CAPACITY), for the next handles: a steady stream of pins and
 * releases allocates no ArrayBuffer (each lives off the V8 heap, costly to
 * make and to collect).
 */
const spare = new Map<number, ArrayBuffer[]>();
let spareBytes = 0;

function takeRunBuffer(capacity: number): ArrayBuffer {
  const b = spare.get(capacity)?.pop();
  if (b === undefined) return new ArrayBuffer(RUN_BYTES * capacity);
  spareBytes -= b.byteLength;
  return b;
}

/** Keep the storage under `runIdx` (the start of a handle's shared buffer) for reuse, if it is one of ours. */
function giveRunBuffer(runIdx: Float64Array, capacity: number): void {
  if (capacity < MIN_RUN_CAPACITY || capacity > SPARE_MAX_CAPACITY || capacity % MIN_RUN_CAPACITY !== 0) return;
  const b = runIdx.buffer as ArrayBuffer;
  if (b.byteLength !== RUN_BYTES * capacity || runIdx.byteOffset !== 0 || spareBytes + b.byteLength > SPARE_MAX_BYTES) return;
  let l = spare.get(capacity);
  if (l === undefined) spare.set(capacity, (l = []));
  l.push(b);
  spareBytes += b.byteLength;
}

const NO_F64 = new Float64Array(0);
const NO_U32 = new Uint32Array(0);
const NO_U8 = new Uint8Array(0);

/**
 * What one GUP call holds, as runs, in arrays that share one ArrayBuffer
 * (none until the first run), handed back for reuse when the handle is
 * dropped.
 */
export class PinHandle implements Counters {
  /** 0 until committed to the registry */
  id = 0;
  /** pages of the call (its return value) */
  nrPages = 0;
  nRuns = 0;
  runPfn: Uint32Array = NO_U32;
  runCount: Uint32Array = NO_U32;
  runHead: Uint32Array = NO_U32;
  runIdx: Float64Array = NO_F64;
  runFlags: Uint8Array = NO_U8;
  livePages = 0;
  /** logical FOLL_PIN pins accounted in vmstat (no-op zero-page pins excluded) */
  pins = 0;
  gets = 0;
  /** pages counted against the session's memlock limit */
  locked = 0;

  constructor(
    readonly session: number,
    readonly mmId: number,
    capacity = 0,
  ) {
    if (capacity > 0) this.reserve(capacity);
  }

  /** Make room for at least `capacity` runs in all. */
  reserve(capacity: number): void {
    if (capacity > this.runPfn.length) this.resize(Math.ceil(capacity / MIN_RUN_CAPACITY) * MIN_RUN_CAPACITY);
  }

  /** Append a run (no counter change); returns its index. */
  push(pfn: number, count: number, head: number, idx: number, flags: number): number {
    if (this.nRuns === this.runPfn.length) this.resize(Math.max(MIN_RUN_CAPACITY, 2 * this.nRuns));
    const r = this.nRuns++;
    this.runPfn[r] = pfn;
    this.runCount[r] = count;
    this.runHead[r] = head;
    this.runIdx[r] = idx;
    this.runFlags[r] = flags;
    return r;
  }

  /** Counters for `n` pages of a run with `flags` (n < 0 removes). */
  count(flags: number, n: number): void {
    countInto(this, flags, n);
  }

  /** The handle is gone: its run storage goes back for reuse. */
  discard(): void {
    giveRunBuffer(this.runIdx, this.runPfn.length);
    this.nRuns = 0;
    this.runIdx = NO_F64;
    this.runPfn = this.runCount = this.runHead = NO_U32;
    this.runFlags = NO_U8;
  }

  /** Move the runs to arrays of `c` entries (a multiple of MIN_RUN_CAPACITY), sharing one backing store. */
  private resize(c: number): void {
    const old = this.runPfn.length;
    const buf = takeRunBuffer(c);
    const idx = new Float64Array(buf, 0, c);
    const pfn = new Uint32Array(buf, 8 * c, c);
    const count = new Uint32Array(buf, 12 * c, c);
    const head = new Uint32Array(buf, 16 * c, c);
    const fl = new Uint8Array(buf, 20 * c, c);
    const n = this.nRuns;
    if (n > 0) {
      idx.set(this.runIdx.subarray(0, n));
      pfn.set(this.runPfn.subarray(0, n));
      count.set(this.runCount.subarray(0, n));
      head.set(this.runHead.subarray(0, n));
      fl.set(this.runFlags.subarray(0, n));
    }
    giveRunBuffer(this.runIdx, old);
    this.runIdx = idx;
    this.runPfn = pfn;
    this.runCount = count;
    this.runHead = head;
    this.runFlags = fl;
  }
}

export class SessionPins implements Counters {
  readonly handles = new Set<PinHandle>();
  livePages = 0;
  pins = 0;
  gets = 0;
  locked = 0;
  /** head PFN -> [handleId, run, handleId, run, ...]; null until needed */
  index: Map<number, number[]> | null = null;
  /** the run last released from: in-order releases find the next one here */
  hintH: PinHandle | null = null;
  hintR = 0;
}

export interface ReleaseResult {
  /** pages released (including no-op zero-page pins) */
  pages: number;
  /** refcount/pincount updates made (one per folio group) */
  folios: number;
  /** folios marked dirty */
  dirtied: number;
}

export interface PinHandleInfo {
  id: number;
  session: number;
  mmId: number;
  nrPages: number;
  livePages: number;
  pins: number;
  gets: number;
  runs: { pfn: number; count: number; head: number; idx: number; flags: number }[];
}

/**
 * One release request: the pages taken off runs (per handle, head, kind), an
 * undo log of the runs it changed (so a request that turns out to name an
 * unheld page is undone), and the accounting done at commit. Typed arrays,
 * grown by doubling.
 */
class ReleaseTxn {
  /** handles involved; entries refer to them by position */
  readonly hs: PinHandle[] = [];
  private lastH: PinHandle | null = null;
  private lastHi = 0;
  n = 0;
  relH = new Uint32Array(16);
  relHead = new Uint32Array(16);
  relN = new Float64Array(16);
  relFlags = new Uint8Array(16);
  // undo log: before-images of changed runs, and run counts before appends
  private u = 0;
  private uH = new Uint32Array(16);
  private uR = new Float64Array(16);
  private uPfn = new Float64Array(16);
  private uCount = new Float64Array(16);
  private uIdx = new Float64Array(16);
  private readonly aH: PinHandle[] = [];
  private readonly aN: number[] = [];

  constructor(readonly undoable: boolean) {
    shapesTick();
  }

  private hIndex(h: PinHandle): number {
    if (h === this.lastH) return this.lastHi;
    let i = this.hs.indexOf(h);
    if (i < 0) {
      i = this.hs.length;
      this.hs.push(h);
    }
    this.lastH = h;
    this.lastHi = i;
    return i;
  }

  logRun(h: PinHandle, r: number): void {
    if (!this.undoable) return;
    if (this.u === this.uH.length) {
      this.uH = growU32(this.uH, this.u * 2);
      this.uR = growF64(this.uR, this.u * 2);
      this.uPfn = growF64(this.uPfn, this.u * 2);
      this.uCount = growF64(this.uCount, this.u * 2);
      this.uIdx = growF64(this.uIdx, this.u * 2);
    }
    const u = this.u++;
    this.uH[u] = this.hIndex(h);
    this.uR[u] = r;
    this.uPfn[u] = h.runPfn[r]!;
    this.uCount[u] = h.runCount[r]!;
    this.uIdx[u] = h.runIdx[r]!;
  }

  logAppend(h: PinHandle): void {
    if (!this.undoable) return;
    this.aH.push(h);
    this.aN.push(h.nRuns);
  }

  release(h: PinHandle, head: number, n: number, flags: number): void {
    const hi = this.hIndex(h);
    const last = this.n - 1;
    // A RUN_SMALL entry is [head, head + n) of order-0 folios: extended only by the next page.
    if (
      last >= 0 &&
      this.relH[last] === hi &&
      this.relFlags[last] === flags &&
      (flags & RUN_SMALL ? this.relHead[last]! + this.relN[last]! === head : this.relHead[last] === head)
    ) {
      this.relN[last]! += n;
      return;
    }
    if (this.n === this.relH.length) {
      this.relH = growU32(this.relH, this.n * 2);
      this.relHead = growU32(this.relHead, this.n * 2);
      this.relN = growF64(this.relN, this.n * 2);
      const f = new Uint8Array(this.n * 2);
      f.set(this.relFlags);
      this.relFlags = f;
    }
    const i = this.n++;
    this.relH[i] = hi;
    this.relHead[i] = head;
    this.relN[i] = n;
    this.relFlags[i] = flags;
  }

  rollback(): void {
    for (let i = this.u - 1; i >= 0; i--) {
      const h = this.hs[this.uH[i]!]!;
      const r = this.uR[i]!;
      h.runPfn[r] = this.uPfn[i]!;
      h.runCount[r] = this.uCount[i]!;
      h.runIdx[r] = this.uIdx[i]!;
    }
    for (let i = this.aH.length - 1; i >= 0; i--) this.aH[i]!.nRuns = this.aN[i]!;
  }
}

keepShape(() => new PinHandle(0, 0));
keepShape(() => new ReleaseTxn(true));

const notHeldMsg = (session: number, what: string) => `session ${session} does not hold ${what}`;

export class PinRegistry {
  private readonly handles = new Map<number, PinHandle>();
  private readonly sessions = new Map<number, SessionPins>();
  private nextId = 1;
  /** Σ outstanding logical pins, for I3 (zero-page pins excluded, as in vmstat). */
  outstandingPins = 0;

  constructor(private readonly k: Kernel) {}

  // ------------------------------------------------------------ handles

  /** A handle for a GUP call in progress (not registered until commit). */
  /** A handle for one call; `capacity`: the runs expected (arrays grow beyond it). */
  newHandle(session: number, mmId: number, capacity = 0): PinHandle {
    return new PinHandle(session, mmId, capacity);
  }

  /**
   * Register what a finished call holds. Returns the handle id, or 0 when it
   * holds no reference (nothing, or only no-op zero-page pins).
   */
  commit(h: PinHandle, nrPages: number): number {
    if (h.pins === 0 && h.gets === 0) {
      h.discard();
      return 0;
    }
    h.id = this.nextId++;
    h.nrPages = nrPages;
    this.handles.set(h.id, h);
    const s = this.session(h.session, true)!;
    s.handles.add(h);
    s.livePages += h.livePages;
    s.pins += h.pins;
    s.gets += h.gets;
    s.locked += h.locked;
    this.outstandingPins += h.pins;
    s.hintH = h; // releases usually start where the newest pin starts
    s.hintR = 0;
    if (s.index !== null) for (let r = 0; r < h.nRuns; r++) indexRun(s.index, h, r);
    return h.id;
  }

  handle(id: number): PinHandle | undefined {
    return this.handles.get(id);
  }

  /** Ids of the registered handles (of one session, or of all: session 0), ascending. */
  handleIds(session = 0): number[] {
    const out: number[] = [];
    for (const [id, h] of this.handles) if (session === 0 || h.session === session) out.push(id);
    return out.sort((a, b) => a - b);
  }

  handleInfo(id: number): PinHandleInfo | undefined {
    const h = this.handles.get(id);
    if (h === undefined) return undefined;
    const runs: PinHandleInfo["runs"] = [];
    for (let r = 0; r < h.nRuns; r++) {
      if (h.runCount[r] === 0) continue;
      const fl = h.runFlags[r]!;
      if (fl & RUN_SMALL) {
        // shown as before: one run per order-0 folio
        for (let j = 0; j < h.runCount[r]!; j++) {
          const pfn = h.runPfn[r]! + j;
          runs.push({ pfn, count: 1, head: pfn, idx: h.runIdx[r]! + j, flags: fl & KIND_MASK });
        }
        continue;
      }
      runs.push({ pfn: h.runPfn[r]!, count: h.runCount[r]!, head: h.runHead[r]!, idx: h.runIdx[r]!, flags: fl });
    }
    runs.sort((a, b) => a.idx - b.idx);
    return { id, session: h.session, mmId: h.mmId, nrPages: h.nrPages, livePages: h.livePages, pins: h.pins, gets: h.gets, runs };
  }

  /**
   * Every stretch of pages held with FOLL_PIN as (first pfn, pages); a
   * RUN_SAME run is one page. For CheckInvariants (I4, per pinned page).
   */
  forEachPinnedRun(fn: (pfn: number, count: number) => void): void {
    for (const h of this.handles.values()) {
      for (let r = 0; r < h.nRuns; r++) {
        const fl = h.runFlags[r]!;
        const cnt = h.runCount[r]!;
        if (cnt === 0 || !(fl & RUN_PIN) || fl & RUN_NOOP) continue;
        fn(h.runPfn[r]!, fl & RUN_SAME ? 1 : cnt);
      }
    }
  }

  /** Pages a session has pinned with FOLL_LONGTERM (its memlock usage). */
  lockedPages(session: number): number {
    return this.sessions.get(session)?.locked ?? 0;
  }

  sessionCounters(session: number): { pinCount: number; pinnedPages: number; getPages: number; lockedBytes: number } {
    const s = this.sessions.get(session);
    if (s === undefined) return { pinCount: 0, pinnedPages: 0, getPages: 0, lockedBytes: 0 };
    return { pinCount: s.handles.size, pinnedPages: s.pins, getPages: s.gets, lockedBytes: s.locked * PAGE_SIZE };
  }

  // ------------------------------------------------------------ release

  /**
   * Release a handle: all of it, or the pages [first, first + count) of the
   * call (every one of them must still be held).
   */
  releaseHandle(session: number, id: number, first?: number, count?: number, makeDirty = false): ReleaseResult {
    const h = this.handles.get(id);
    if (h === undefined || h.session !== session) fail(Errno.EINVAL, notHeldMsg(session, `handle ${id}`), "precondition");
    const s = this.session(session, false)!;
    if (first === undefined && count === undefined) {
      const res: ReleaseResult = { pages: 0, folios: 0, dirtied: 0 };
      this.dropHandle(s, h, makeDirty, res);
      return res;
    }
    const txn = new ReleaseTxn(false);
    const f = first ?? 0;
    const n = count ?? h.nrPages - f;
    if (!Number.isSafeInteger(f) || !Number.isSafeInteger(n) || f < 0 || n < 0 || f + n > h.nrPages)
      invalid(`pages [${f}, ${f + n}) are outside handle ${id} (${h.nrPages} pages)`);
    const end = f + n;
    let covered = 0;
    for (let r = 0; r < h.nRuns; r++) {
      const c = h.runCount[r]!;
      if (c === 0) continue;
      const a = h.runIdx[r]!;
      covered += Math.max(0, Math.min(end, a + c) - Math.max(f, a));
    }
    if (covered !== n) fail(Errno.EINVAL, notHeldMsg(session, `pages [${f}, ${end}) of handle ${id}: only ${covered} of them are held`), "precondition");
    const nRuns = h.nRuns; // runs appended by middle cuts lie outside the range
    for (let r = 0; r < nRuns; r++) {
      const c = h.runCount[r]!;
      if (c === 0) continue;
      const a = h.runIdx[r]!;
      const lo = Math.max(f, a);
      const hi = Math.min(end, a + c);
      if (lo < hi) this.cut(txn, s, h, r, lo - a, hi - lo);
    }
    return this.commitTxn(txn, s, makeDirty);
  }

  /**
   * unpin_user_pages / unpin_user_pages_dirty_lock (kind "pin") and the
   * put_page loop of FOLL_GET users (kind "get"): consecutive entries of one
   * folio form a group (gup_folio_next); negative entries are NULL and are
   * skipped; unpinning the 4 KiB zero page is a no-op.
   */
  releasePages(session: number, pages: ArrayLike<number>, npages: number, kind: "pin" | "get", makeDirty = false): ReleaseResult {
    if (!Number.isSafeInteger(npages)) invalid(`npages ${npages} is not an integer`);
    // A negative errno passed as a count: the kernel WARNs and does nothing.
    if (npages < 0) return { pages: 0, folios: 0, dirtied: 0 };
    if (npages > pages.length) invalid(`npages ${npages} exceeds the ${pages.length} entries given`);
    const p = this.k.phys;
    const pin = kind === "pin";
    const s = this.session(session, false);
    const txn = new ReleaseTxn(true);
    try {
      let i = 0;
      while (i < npages) {
        const pfn = pages[i]!;
        if (pfn < 0) {
          i++;
          continue;
        }
        if (s !== undefined && s.hintH !== null) {
          // pages[] in the order of a pin: a stretch that continues a SMALL
          // run of the last handle released from is taken in one checked step.
          const m = this.takeSmallStretch(txn, s, s.hintH, pages, i, npages, pin);
          if (m > 0) {
            i += m;
            continue;
          }
        }
        const head = this.folioOf(session, pfn);
        if (pin && head === p.zeroPfn) {
          i++;
          continue;
        }
        // gup_folio_next: the folio is naturally aligned, so membership is a range check
        const fend = head + p.folioNrPages(head);
        let j = i + 1;
        let contiguous = true;
        while (j < npages) {
          const q = pages[j]!;
          if (!(q >= head && q < fend) || !Number.isInteger(q)) break;
          if (q !== pfn + (j - i)) contiguous = false;
          j++;
        }
        if (s === undefined) fail(Errno.EINVAL, notHeldMsg(session, `a ${kind} reference on pfn ${pfn}`), "precondition");
        if (contiguous) {
          if (!this.takeRange(txn, s, head, pfn, pfn + (j - i), pin))
            fail(Errno.EINVAL, notHeldMsg(session, `${kind} references on pfns [${pfn}, ${pfn + j - i})`), "precondition");
        } else {
          for (let m = i; m < j; m++) {
            const q = pages[m]!;
            if (!this.takeRange(txn, s, head, q, q + 1, pin)) fail(Errno.EINVAL, notHeldMsg(session, `a ${kind} reference on pfn ${q}`), "precondition");
          }
        }
        i = j;
      }
    } catch (e) {
      txn.rollback();
      if (s !== undefined) s.index = null;
      throw e;
    }
    return s === undefined ? { pages: 0, folios: 0, dirtied: 0 } : this.commitTxn(txn, s, makeDirty);
  }

  /**
   * unpin_user_page_range_dirty_lock: one pin off each page of the physically
   * contiguous [firstPfn, firstPfn + npages), grouped by folio
   * (gup_folio_range_next), without any page array.
   */
  unpinPfnRange(session: number, firstPfn: number, npages: number, makeDirty = false): ReleaseResult {
    if (!Number.isSafeInteger(firstPfn) || !Number.isSafeInteger(npages) || firstPfn < 0 || npages < 0 || firstPfn + npages > 2 ** 32)
      invalid(`pfn range [${firstPfn}, ${firstPfn + npages}) out of range`);
    const p = this.k.phys;
    const s = this.session(session, false);
    const txn = new ReleaseTxn(true);
    const end = firstPfn + npages;
    try {
      let pfn = firstPfn;
      while (pfn < end) {
        const head = this.folioOf(session, pfn);
        const stop = Math.min(end, head + p.folioNrPages(head));
        if (head !== p.zeroPfn) {
          if (s === undefined || !this.takeRange(txn, s, head, pfn, stop, true))
            fail(Errno.EINVAL, notHeldMsg(session, `pins on pfns [${pfn}, ${stop})`), "precondition");
        }
        pfn = stop;
      }
    } catch (e) {
      txn.rollback();
      if (s !== undefined) s.index = null;
      throw e;
    }
    return s === undefined ? { pages: 0, folios: 0, dirtied: 0 } : this.commitTxn(txn, s, makeDirty);
  }

  /**
   * unpin_user_folio(folio, npages) / unpin_folios: `npages` pins off the
   * folio of each given PFN, whichever of its pages they were taken on.
   * Consecutive equal folios are grouped.
   */
  unpinFolios(session: number, folios: ArrayLike<number>, nfolios: number, npagesEach = 1): ReleaseResult {
    if (!Number.isSafeInteger(nfolios) || nfolios < 0 || nfolios > folios.length) invalid(`nfolios ${nfolios} out of range`);
    if (!Number.isSafeInteger(npagesEach) || npagesEach < 0 || npagesEach > HPAGE_PUD_NR) invalid(`npages ${npagesEach} out of range`);
    const p = this.k.phys;
    const s = this.session(session, false);
    const txn = new ReleaseTxn(true);
    try {
      let i = 0;
      while (i < nfolios) {
        const head = this.folioOf(session, folios[i]!);
        let j = i + 1;
        while (j < nfolios && Number.isSafeInteger(folios[j]!) && folios[j]! >= 0 && p.pfnValid(folios[j]!) && p.folioHead(folios[j]!) === head) j++;
        const n = (j - i) * npagesEach;
        if (head !== p.zeroPfn && n > 0 && (s === undefined || !this.takeAny(txn, s, head, n)))
          fail(Errno.EINVAL, notHeldMsg(session, `${n} pins on the folio at pfn ${head}`), "precondition");
        i = j;
      }
    } catch (e) {
      txn.rollback();
      if (s !== undefined) s.index = null;
      throw e;
    }
    return s === undefined ? { pages: 0, folios: 0, dirtied: 0 } : this.commitTxn(txn, s, false);
  }

  /** Drop everything a session holds (session end). Never fails. */
  releaseSession(session: number): ReleaseResult {
    const s = this.sessions.get(session);
    if (s === undefined) return { pages: 0, folios: 0, dirtied: 0 };
    const res: ReleaseResult = { pages: 0, folios: 0, dirtied: 0 };
    for (const h of [...s.handles]) this.dropHandle(s, h, false, res);
    this.sessions.delete(session);
    return res;
  }

  // ------------------------------------------------------- checker hooks

  /** refHolders entry: head PFN -> references and pins held by all sessions. */
  heldRefs(): Map<number, { refs: number; pins: number }> {
    const p = this.k.phys;
    const out = new Map<number, { refs: number; pins: number }>();
    for (const h of this.handles.values()) {
      for (let r = 0; r < h.nRuns; r++) {
        const cnt = h.runCount[r]!;
        const fl = h.runFlags[r]!;
        if (cnt === 0 || fl & RUN_NOOP) continue;
        const small = (fl & RUN_SMALL) !== 0;
        for (let j = 0; j < (small ? cnt : 1); j++) {
          const head = small ? h.runPfn[r]! + j : h.runHead[r]!;
          const n = small ? 1 : cnt;
          let e = out.get(head);
          if (e === undefined) {
            e = { refs: 0, pins: 0 };
            out.set(head, e);
          }
          if (!(fl & RUN_PIN)) e.refs += n;
          else if (fl & RUN_BIAS2019 || p.folioOrder(head) === 0) {
            e.refs += n * 1024;
            if (!(fl & RUN_BIAS2019)) e.pins += n;
          } else {
            e.refs += n;
            e.pins += n;
          }
        }
      }
    }
    return out;
  }

  /** I3: nr_foll_pin_acquired - nr_foll_pin_released == outstanding logical pins. */
  checkPinStats(add: (v: { code: string; message: string }) => void): void {
    const v = this.k.vmstat;
    const diff = v.nr_foll_pin_acquired - v.nr_foll_pin_released;
    if (diff !== this.outstandingPins)
      add({ code: "I3", message: `nr_foll_pin_acquired - nr_foll_pin_released = ${diff}, but ${this.outstandingPins} logical pins are outstanding` });
    let held = 0;
    for (const s of this.sessions.values()) held += s.pins;
    if (held !== this.outstandingPins) add({ code: "I3", message: `sessions hold ${held} pins, registry counts ${this.outstandingPins}` });
  }

  // ------------------------------------------------------------ internals

  private session(id: number, create: boolean): SessionPins | undefined {
    let s = this.sessions.get(id);
    if (s === undefined && create) {
      s = new SessionPins();
      this.sessions.set(id, s);
    }
    return s;
  }

  /** Validate a PFN named by a release request; returns its folio head. */
  private folioOf(session: number, pfn: number): number {
    const p = this.k.phys;
    if (!Number.isSafeInteger(pfn) || pfn >= 2 ** 32) invalid(`pfn ${pfn} out of range`);
    if (!p.pfnValid(pfn) || p.section(pfn) === undefined) fail(Errno.EINVAL, notHeldMsg(session, `pfn ${pfn} (no struct page)`), "precondition");
    return p.folioHead(pfn);
  }

  private ensureIndex(s: SessionPins): Map<number, number[]> {
    if (s.index === null) {
      const idx = new Map<number, number[]>();
      for (const h of s.handles) for (let r = 0; r < h.nRuns; r++) indexRun(idx, h, r);
      s.index = idx;
    }
    return s.index;
  }

  /**
   * Take one reference of the right kind on every page of [a, b) (all in the
   * folio `head`) off the session's runs. Returns false when some page is not
   * held (the caller rolls the request back).
   */
  private takeRange(txn: ReleaseTxn, s: SessionPins, head: number, a: number, b: number, pin: boolean): boolean {
    // In-order releases (a PFN range or pages[] in the order of the pin):
    // the run last cut, or the one after it, holds all of [a, b).
    const hh = s.hintH;
    if (hh !== null) {
      const last = Math.min(s.hintR + 1, hh.nRuns - 1);
      for (let r = s.hintR; r <= last; r++) {
        const cnt = hh.runCount[r]!;
        const fl = hh.runFlags[r]!;
        if (cnt === 0 || !runHolds(hh, r, head) || ((fl & RUN_PIN) !== 0) !== pin) continue;
        const pfn = hh.runPfn[r]!;
        if (fl & RUN_SAME ? a === pfn && b === a + 1 : pfn <= a && b <= pfn + cnt) {
          this.cut(txn, s, hh, r, fl & RUN_SAME ? 0 : a - pfn, b - a);
          return true;
        }
      }
    }
    const refs = this.ensureIndex(s).get(head);
    if (refs === undefined) return false;
    let rem: number[] = [a, b]; // pages still to find, as sorted [x, y) pairs
    for (let q = 0; q < refs.length && rem.length > 0; q += 2) {
      const h = this.handles.get(refs[q]!);
      const r = refs[q + 1]!;
      if (h === undefined || r >= h.nRuns) continue;
      const cnt = h.runCount[r]!;
      const fl = h.runFlags[r]!;
      if (cnt === 0 || !runHolds(h, r, head) || ((fl & RUN_PIN) !== 0) !== pin) continue;
      const pfn = h.runPfn[r]!;
      const end = fl & RUN_SAME ? pfn + 1 : pfn + cnt;
      const next: number[] = [];
      const cuts: number[] = [];
      for (let m = 0; m < rem.length; m += 2) {
        const x = rem[m]!;
        const y = rem[m + 1]!;
        const lo = Math.max(x, pfn);
        const hi = Math.min(y, end);
        if (lo >= hi) {
          next.push(x, y);
          continue;
        }
        if (x < lo) next.push(x, lo);
        if (hi < y) next.push(hi, y);
        // A RUN_SAME run gives one reference to its page per pass.
        cuts.push(fl & RUN_SAME ? 0 : lo - pfn, hi - lo);
      }
      // Highest offset first, so that a middle cut does not move the others.
      for (let m = cuts.length - 2; m >= 0; m -= 2) this.cut(txn, s, h, r, cuts[m]!, cuts[m + 1]!);
      rem = next;
    }
    return rem.length === 0;
  }

  /**
   * If pages[i] lies in a SMALL run of `h` of the right kind (the hinted run
   * or the next), take the entries pages[i..i+m) that continue it page by
   * page, up to its end, with one cut. Returns m (0: not such a stretch).
   * Every page of a run is a held order-0 folio, so no other check is needed.
   */
  private takeSmallStretch(txn: ReleaseTxn, s: SessionPins, h: PinHandle, pages: ArrayLike<number>, i: number, npages: number, pin: boolean): number {
    const pfn = pages[i]!;
    if (pfn >>> 0 !== pfn) return 0;
    const last = Math.min(s.hintR + 1, h.nRuns - 1);
    for (let r = s.hintR; r <= last; r++) {
      const fl = h.runFlags[r]!;
      if (!(fl & RUN_SMALL) || ((fl & RUN_PIN) !== 0) !== pin) continue;
      const first = h.runPfn[r]!;
      const end = first + h.runCount[r]!;
      if (pfn < first || pfn >= end) continue;
      const max = Math.min(end - pfn, npages - i);
      let m = 1;
      while (m < max && pages[i + m] === pfn + m) m++;
      this.cut(txn, s, h, r, pfn - first, m);
      return m;
    }
    return 0;
  }

  /** Take `n` pins on any pages of the folio `head` (unpin_user_folio). */
  private takeAny(txn: ReleaseTxn, s: SessionPins, head: number, n: number): boolean {
    const refs = this.ensureIndex(s).get(head);
    if (refs === undefined) return false;
    for (let q = 0; q < refs.length && n > 0; q += 2) {
      const h = this.handles.get(refs[q]!);
      const r = refs[q + 1]!;
      if (h === undefined || r >= h.nRuns) continue;
      const cnt = h.runCount[r]!;
      const fl = h.runFlags[r]!;
      if (cnt === 0 || !runHolds(h, r, head) || !(fl & RUN_PIN)) continue;
      if (fl & RUN_SMALL) {
        // the one page of the order-0 folio `head`
        this.cut(txn, s, h, r, head - h.runPfn[r]!, 1);
        n--;
        continue;
      }
      const take = Math.min(cnt, n);
      this.cut(txn, s, h, r, cnt - take, take);
      n -= take;
    }
    return n === 0;
  }

  /** Take positions [off, off + len) out of run r of handle h. */
  private cut(txn: ReleaseTxn, s: SessionPins, h: PinHandle, r: number, off: number, len: number): void {
    const cnt = h.runCount[r]!;
    const fl = h.runFlags[r]!;
    const pfn = h.runPfn[r]!;
    const idx = h.runIdx[r]!;
    const same = (fl & RUN_SAME) !== 0;
    const small = (fl & RUN_SMALL) !== 0;
    s.hintH = h;
    s.hintR = r;
    txn.logRun(h, r);
    txn.release(h, small ? pfn + off : h.runHead[r]!, len, fl);
    if (off === 0 && len === cnt) {
      h.runCount[r] = 0;
    } else if (off === 0) {
      if (!same) h.runPfn[r] = pfn + len;
      h.runIdx[r] = idx + len;
      h.runCount[r] = cnt - len;
    } else if (off + len === cnt) {
      h.runCount[r] = off;
    } else {
      txn.logAppend(h);
      const head = small ? pfn + off + len : h.runHead[r]!;
      const nr = h.push(same ? pfn : pfn + off + len, cnt - off - len, head, idx + off + len, fl);
      h.runCount[r] = off;
      // the index lists a SMALL run under each of its pages: rebuild it when needed
      if (s.index !== null) {
        if (small) s.index = null;
        else addRef(s.index, head, h.id, nr);
      }
    }
  }

  /** Do the accounting of a request: puts per folio group, counters, empty handles. */
  private commitTxn(txn: ReleaseTxn, s: SessionPins, makeDirty: boolean): ReleaseResult {
    const res: ReleaseResult = { pages: 0, folios: 0, dirtied: 0 };
    const n = txn.n;
    // One folio group: consecutive releases (pages of a SMALL release) of the same folio and kind.
    let head = -1;
    let fl = 0;
    let total = 0;
    for (let i = 0; i < n; i++) {
      const hd = txn.relHead[i]!;
      const f = txn.relFlags[i]!;
      const m = txn.relN[i]!;
      const kind = f & KIND_MASK;
      txn.hs[txn.relH[i]!]!.count(f, -m);
      countInto(s, f, -m);
      if (f & RUN_PIN && !(f & RUN_NOOP)) this.outstandingPins -= m;
      if (f & RUN_SMALL) {
        for (let j = 0; j < m; j++) {
          if (hd + j === head && kind === (fl & KIND_MASK)) {
            total++;
            continue;
          }
          if (total > 0) this.putGroup(head, total, fl, makeDirty, res);
          head = hd + j;
          fl = f;
          total = 1;
        }
        continue;
      }
      if (hd === head && kind === (fl & KIND_MASK)) {
        total += m;
        continue;
      }
      if (total > 0) this.putGroup(head, total, fl, makeDirty, res);
      head = hd;
      fl = f;
      total = m;
    }
    if (total > 0) this.putGroup(head, total, fl, makeDirty, res);
    for (const h of txn.hs) if (h.livePages === 0) this.forget(s, h);
    return res;
  }

  /** gup_put_folio for one folio group, dirtying it first if asked. */
  private putGroup(head: number, total: number, fl: number, makeDirty: boolean, res: ReleaseResult): void {
    res.pages += total;
    if (fl & RUN_NOOP) return;
    // set_page_dirty_lock once per folio, before the pins go
    if (makeDirty) {
      const p = this.k.phys;
      if (!(p.flags(head) & (PG_dirty | PG_reserved))) {
        p.orFlags(head, PG_dirty);
        res.dirtied++;
      }
    }
    gupPutFolio(this.k, head, total, fl);
    res.folios++;
  }

  /** Release every run of a handle and forget it (no undo needed). */
  private dropHandle(s: SessionPins, h: PinHandle, makeDirty: boolean, res: ReleaseResult): void {
    let head = -1;
    let fl = 0;
    let total = 0;
    for (let r = 0; r < h.nRuns; r++) {
      const n = h.runCount[r]!;
      if (n === 0) continue;
      const f = h.runFlags[r]!;
      const kind = f & KIND_MASK;
      if (f & RUN_SMALL) {
        // one folio per page; counters for the whole run at once
        const pfn = h.runPfn[r]!;
        let j = 0;
        if (pfn === head && kind === (fl & KIND_MASK)) {
          total++;
          j = 1;
        }
        if (total > 0 && j < n) {
          this.dropGroup(s, h, head, total, fl, makeDirty, res);
          total = 0;
        }
        if (j < n) {
          const last = n - 1;
          h.count(f, -(last - j));
          countInto(s, f, -(last - j));
          if (f & RUN_PIN && !(f & RUN_NOOP)) this.outstandingPins -= last - j;
          for (; j < last; j++) this.putGroup(pfn + j, 1, f, makeDirty, res);
          head = pfn + last;
          fl = f;
          total = 1;
        }
        continue;
      }
      const hd = h.runHead[r]!;
      if (hd === head && kind === (fl & KIND_MASK)) {
        total += n;
        continue;
      }
      if (total > 0) this.dropGroup(s, h, head, total, fl, makeDirty, res);
      head = hd;
      fl = f;
      total = n;
    }
    if (total > 0) this.dropGroup(s, h, head, total, fl, makeDirty, res);
    h.nRuns = 0;
    this.forget(s, h);
  }

  private dropGroup(s: SessionPins, h: PinHandle, head: number, total: number, fl: number, makeDirty: boolean, res: ReleaseResult): void {
    h.count(fl, -total);
    countInto(s, fl, -total);
    if (fl & RUN_PIN && !(fl & RUN_NOOP)) this.outstandingPins -= total;
    this.putGroup(head, total, fl, makeDirty, res);
  }

  private forget(s: SessionPins, h: PinHandle): void {
    this.handles.delete(h.id);
    s.handles.delete(h);
    s.index = null; // its runs would linger in the index
    if (s.hintH === h) s.hintH = null;
    h.discard();
  }
}

function growU32(a: Uint32Array, c: number): Uint32Array<ArrayBuffer> {
  const b = new Uint32Array(c);
  b.set(a);
  return b;
}

function growF64(a: Float64Array, c: number): Float64Array<ArrayBuffer> {
  const b = new Float64Array(c);
  b.set(a);
  return b;
}

/** Does run r of h hold pages of the folio `head`? */
function runHolds(h: PinHandle, r: number, head: number): boolean {
  if (!(h.runFlags[r]! & RUN_SMALL)) return h.runHead[r] === head;
  const pfn = h.runPfn[r]!;
  return head >= pfn && head < pfn + h.runCount[r]!;
}

/** List run r of h in the per-folio index (a SMALL run under each of its pages). */
function indexRun(idx: Map<number, number[]>, h: PinHandle, r: number): void {
  const cnt = h.runCount[r]!;
  if (cnt === 0) return;
  if (!(h.runFlags[r]! & RUN_SMALL)) {
    addRef(idx, h.runHead[r]!, h.id, r);
    return;
  }
  const pfn = h.runPfn[r]!;
  for (let j = 0; j < cnt; j++) addRef(idx, pfn + j, h.id, r);
}

function addRef(idx: Map<number, number[]>, head: number, id: number, r: number): void {
  const l = idx.get(head);
  if (l === undefined) idx.set(head, [id, r]);
  else l.push(id, r);
}

// ----------------------------------------------- kernel-named entry points

/** Release a handle (all of it, or pages [first, first + count) of the call). */
export function releasePinHandle(k: Kernel, session: number, handle: number, first?: number, count?: number, makeDirty = false): ReleaseResult {
  return k.pins.releaseHandle(session, handle, first, count, makeDirty);
}

/** unpin_user_page */
export function unpinUserPage(k: Kernel, session: number, pfn: number): ReleaseResult {
  return k.pins.releasePages(session, [pfn], 1, "pin", false);
}

/** unpin_user_pages */
export function unpinUserPages(k: Kernel, session: number, pages: ArrayLike<number>, npages: number): ReleaseResult {
  return k.pins.releasePages(session, pages, npages, "pin", false);
}

/** unpin_user_pages_dirty_lock */
export function unpinUserPagesDirtyLock(k: Kernel, session: number, pages: ArrayLike<number>, npages: number, makeDirty: boolean): ReleaseResult {
  return k.pins.releasePages(session, pages, npages, "pin", makeDirty);
}

/** put_page on each FOLL_GET page, grouped per folio. */
export function putUserPages(k: Kernel, session: number, pages: ArrayLike<number>, npages: number): ReleaseResult {
  return k.pins.releasePages(session, pages, npages, "get", false);
}

/** unpin_user_page_range_dirty_lock */
export function unpinUserPageRangeDirtyLock(k: Kernel, session: number, firstPfn: number, npages: number, makeDirty: boolean): ReleaseResult {
  return k.pins.unpinPfnRange(session, firstPfn, npages, makeDirty);
}

/** unpin_folio: one pin off the folio of `pfn`. */
export function unpinFolio(k: Kernel, session: number, pfn: number): ReleaseResult {
  return k.pins.unpinFolios(session, [pfn], 1, 1);
}

/** unpin_folios: one pin off each listed folio (consecutive equal folios grouped). */
export function unpinFolios(k: Kernel, session: number, folios: ArrayLike<number>, nfolios: number): ReleaseResult {
  return k.pins.unpinFolios(session, folios, nfolios, 1);
}

/** unpin_user_folio(folio, npages) */
export function unpinUserFolio(k: Kernel, session: number, pfn: number, npages: number): ReleaseResult {
  return k.pins.unpinFolios(session, [pfn], 1, npages);
}

/** Everything the session holds (session end). */
export function releaseSession(k: Kernel, session: number): ReleaseResult {
  return k.pins.releaseSession(session);
}
