/**
 * SnapshotService (snapshot.proto): the whole daemon state to a file or a
 * stream, and back into a fresh daemon (at run time, or at start-up with
 * --restore).
 *
 * What is saved: the kernel's part (src/mm/snapshot.ts: the Kernel object
 * graph and its modules' state) plus the service layer's: live sessions
 * (ids, names, tenants) and the session id counter, the Registry (file,
 * pagemap and PFN-range ownership, fork parentage, RLIMIT_MEMLOCK), client
 * mirrors (id, session, name, their interval notifiers; the notifiers
 * themselves are in the mms' trees) and the mirror id counter, and the
 * state digest at capture time.
 *
 * Capture runs at a quiescent point: every mm's lock is taken as writer
 * (mms created while waiting are taken too), then the graph is encoded in
 * one synchronous step; nothing may be waiting for a client mirror's
 * acknowledgement, no session may be ending (FAILED_PRECONDITION / EBUSY).
 * The encoded parts that are views of live memory are copied before the
 * locks go.
 *
 * Restore never touches live state before the snapshot passed every check:
 * frame and checksum, graph structure, the kernel part's shape, the service
 * part's shape, CheckInvariants on a scratch kernel built from it, and its
 * recomputed state digest against the one saved. Only then are the decoded
 * fields moved into the live Kernel object (every holder keeps its
 * reference; see snapshot.ts), the sessions, registry and mirrors replaced,
 * and references to the kernel and to client mirrors rebound.
 */
import { open as fsOpen, rename, stat, unlink } from "node:fs/promises";
import { join } from "node:path";
import { type handleClientStreamingCall, type handleServerStreamingCall, type Metadata, status } from "@grpc/grpc-js";
import {
  type DownloadSnapshotRequest,
  type DownloadSnapshotResponse,
  type ReclaimSessionRequest,
  type ReclaimSessionResponse,
  type RestoreResult,
  type RestoreSnapshotRequest,
  type RestoreSnapshotResponse,
  type SaveSnapshotRequest,
  type SaveSnapshotResponse,
  type SnapshotServiceServer,
  type SnapshotSummary,
  type UploadSnapshotRequest,
  type UploadSnapshotResponse,
} from "../gen/mmsim/v1/snapshot.js";
import { checkInvariants } from "../mm/invariants.js";
import type { Kernel } from "../mm/kernel.js";
import type { Mm } from "../mm/mm.js";
import { IntervalSub, type IntervalOps } from "../mm/mmu-notifier.js";
import {
  captureKernel,
  checkKernelPart,
  ClassRegistry,
  ByteSource,
  decodeSnapshot,
  installKernel,
  KERNEL_REF,
  type KernelPart,
  modelClasses,
  packSnapshot,
  scratchKernel,
  scratchViolations,
  SnapshotBusyError,
  SnapshotFormatError,
  unpackSnapshot,
} from "../mm/snapshot.js";
import { rebindExternals } from "../mm/snapshot-codec.js";
import { MMSIM_VERSION } from "../version.js";
import { stateDigest } from "./admin-service.js";
import { callerOf } from "./auth.js";
import { ERRNO, StatusError, toStatus } from "./errors.js";
import { DecodeFailure, observeStream, rpcProbe, type ServiceDeps, unary } from "./handler.js";
import { modelOps } from "./model-op.js";
import { notifierHub, RemoteMirror } from "./notifier-service.js";
import { Registry } from "./registry.js";
import { parseSessionHeader, type Session } from "./session.js";

const SVC = "SnapshotService";
const DEFAULT_CHUNK = 1 << 20;
const MAX_CHUNK = 2 << 20;

/** What the snapshot's root holds besides the kernel part. */
interface SnapshotRoot {
  format: "mmsim-daemon";
  kernel: KernelPart;
  sessions: { nextId: number; list: { id: number; name: string; persistent: boolean; tenant: string }[] };
  registry: Registry;
  mirrors: { next: number; list: { id: number; session: number; name: string; notifiers: IntervalSub[] }[] };
  /** GetStateDigest of the state saved */
  digest: string;
}

/** The classes a daemon snapshot may hold. */
function daemonClasses(): ClassRegistry {
  return modelClasses().register({ name: "Registry", ctor: Registry });
}

let classes: ClassRegistry | null = null;
function registry(): ClassRegistry {
  classes ??= daemonClasses();
  return classes;
}

function busy(reason: string): never {
  throw new StatusError(status.FAILED_PRECONDITION, ERRNO.EBUSY, reason);
}

/** A snapshot format problem as a status: DATA_LOSS for damaged bytes, else INVALID_ARGUMENT. */
function formatError(e: SnapshotFormatError): StatusError {
  return new StatusError(e.dataLoss ? status.DATA_LOSS : status.INVALID_ARGUMENT, ERRNO.EINVAL, `snapshot refused: ${e.message}`);
}

// ----------------------------------------------------------------- capture

/** Take every mm's lock as writer, including mms created while waiting. */
async function lockAll(k: Kernel): Promise<() => void> {
  const ops = modelOps(k);
  for (let attempt = 0; attempt < 50; attempt++) {
    const ids = [...k.mms.keys()];
    const release = await ops.locks.acquire(ids, "write");
    const extra = [...k.mms.keys()].filter((id) => !ids.includes(id));
    if (extra.length === 0) return release;
    const got = ops.locks.tryAcquire(extra, "write");
    if (got !== null)
      return () => {
        ops.locks.releaseNow(got, "write");
        release();
      };
    release();
  }
  busy("mms keep being created: no quiescent point for a snapshot");
}

export interface CapturedSnapshot {
  /** the file's bytes (copies: safe to write after the locks are gone) */
  parts: Uint8Array[];
  summary: SnapshotSummary;
}

/** A consistent snapshot of the daemon `d`. */
export async function captureDaemon(d: ServiceDeps): Promise<CapturedSnapshot> {
  const k = d.kernel;
  const ops = modelOps(k);
  const hub = notifierHub(d);
  // Refused at once rather than waiting behind an mm lock held until a client answers.
  const unacked = () => {
    if (ops.awaitingOps > 0) busy(`${ops.awaitingOps} operation(s) still wait for client mirror acknowledgements`);
    for (const m of hub.mirrors.values())
      if (m.outstandingCount > 0) busy(`client mirror ${m.id} has ${m.outstandingCount} unacknowledged invalidation(s)`);
  };
  unacked();
  const release = await lockAll(k);
  try {
    unacked();
    const ss = d.sessions.snapshotState();
    if (ss.ending > 0) busy(`${ss.ending} session(s) are ending`);
    let part: KernelPart;
    try {
      part = captureKernel(k);
    } catch (e) {
      if (e instanceof SnapshotBusyError) busy(e.message);
      throw e;
    }
    const digest = stateDigest(k);
    const root: SnapshotRoot = {
      format: "mmsim-daemon",
      kernel: part,
      sessions: { nextId: ss.nextId, list: ss.sessions },
      registry: d.registry,
      mirrors: {
        next: hub.nextMirrorId,
        list: [...hub.mirrors.values()]
          .filter((m) => m.state === "open" || m.state === "detached")
          .map((m) => ({ id: m.id, session: m.session.id, name: m.name, notifiers: [...m.subs.values()].map((s) => s.sub) })),
      },
      digest: digest.digest,
    };
    const packed = packSnapshot(root, registry(), MMSIM_VERSION, (o) => {
      if (o === k) return KERNEL_REF;
      if (o instanceof RemoteMirror) return `mirror:${o.id}`;
      return undefined;
    });
    // Large parts are views of live typed arrays: copy them while locked.
    const parts = packed.parts.map((p) => (p.byteLength < 1 << 16 ? p : p.slice()));
    return { parts, summary: summarize(packed.length, packed.header, packed.objects, part, root) };
  } finally {
    release();
  }
}

function summarize(length: number, header: { sha256: string; daemonVersion: string }, objects: number, part: KernelPart, root: SnapshotRoot): SnapshotSummary {
  const k = part.fields as unknown as Kernel;
  let mms = 0;
  for (const mm of k.mms.values()) if (!mm.exited) mms++;
  return {
    sizeBytes: length,
    sha256: header.sha256,
    daemonVersion: header.daemonVersion,
    mms,
    sessions: root.sessions.list.length,
    objects,
    pagesInUse: k.phys.ramPages - k.phys.totalFreePages(),
    dataPages: k.phys.data.inUse,
    stateDigest: root.digest,
  };
}

// ----------------------------------------------------------------- restore

/** Is the daemon fresh (nothing but `caller`'s empty session)? FAILED_PRECONDITION otherwise. */
function checkFresh(d: ServiceDeps, caller: number): void {
  const k = d.kernel;
  for (const mm of k.mms.values()) if (!mm.exited) busy(`restore needs a fresh daemon: mm ${mm.id} exists`);
  if (k.files.size > 0) busy(`restore needs a fresh daemon: ${k.files.size} file(s) exist`);
  if (k.phys.pagemaps.size > 0 || k.phys.pfnRanges.size > 0) busy("restore needs a fresh daemon: device memory or PFN ranges are registered");
  if (k.vmstat.nr_foll_pin_acquired !== k.vmstat.nr_foll_pin_released || k.pins.outstandingPins !== 0) busy("restore needs a fresh daemon: pins are held");
  if (notifierHub(d).mirrors.size > 0) busy("restore needs a fresh daemon: client mirrors are open");
  for (const s of d.sessions.list()) {
    if (s.id === caller) {
      const c = d.sessions.counters(s);
      if (c.mmCount + c.pinCount + c.fileCount + c.mirrorCount + c.notifierCount > 0) busy(`restore needs a fresh daemon: the caller's session ${s.id} holds objects`);
      continue;
    }
    busy(`restore needs a fresh daemon: session ${s.id} (${JSON.stringify(s.name)}) is live`);
  }
  if (modelOps(k).awaitingOps > 0) busy("restore needs a fresh daemon: operations are running");
  const ending = d.sessions.snapshotState().ending;
  if (ending > 0) busy(`restore needs a fresh daemon: ${ending} session(s) are still releasing what they held`);
}

/** Detached stand-in for a client mirror while the snapshot is checked. */
function detachedOps(): IntervalOps {
  return {
    invalidate(sub, _range, curSeq) {
      sub.seq = curSeq;
      return true;
    },
  };
}

function bad(what: string): never {
  throw new SnapshotFormatError(`snapshot service part: ${what}`);
}

const isId = (v: unknown): v is number => typeof v === "number" && Number.isSafeInteger(v) && v >= 1;

/** Shape checks of the service part, against the decoded kernel part. */
function checkRoot(root: unknown, mirrorRefs: Map<number, IntervalOps>): asserts root is SnapshotRoot {
  if (typeof root !== "object" || root === null || (root as { format?: unknown }).format !== "mmsim-daemon") bad("not a daemon snapshot");
  const r = root as SnapshotRoot;
  checkKernelPart(r.kernel);
  if (typeof r.digest !== "string") bad("digest missing");
  const s = r.sessions;
  if (typeof s !== "object" || s === null || !isId(s.nextId) || !Array.isArray(s.list)) bad("sessions malformed");
  const ids = new Set<number>();
  for (const e of s.list) {
    if (typeof e !== "object" || e === null || !isId(e.id) || typeof e.name !== "string" || typeof e.tenant !== "string" || typeof e.persistent !== "boolean")
      bad("session entry malformed");
    if (ids.has(e.id) || e.id >= s.nextId) bad(`session id ${e.id} repeated or beyond the counter`);
    ids.add(e.id);
  }
  if (!(r.registry instanceof Registry)) bad("registry missing");
  for (const key of ["files", "mmParent", "pagemaps", "pfnRanges"] as const) if (!(r.registry[key] instanceof Map)) bad(`registry.${key} malformed`);
  const m = r.mirrors;
  if (typeof m !== "object" || m === null || !isId(m.next) || !Array.isArray(m.list)) bad("mirrors malformed");
  const mms = (r.kernel.fields as unknown as Kernel).mms;
  const seen = new Set<number>();
  for (const e of m.list) {
    if (typeof e !== "object" || e === null || !isId(e.id) || e.id >= m.next || seen.has(e.id) || !ids.has(e.session) || typeof e.name !== "string" || !Array.isArray(e.notifiers))
      bad("mirror entry malformed");
    seen.add(e.id);
    for (const sub of e.notifiers) {
      if (!(sub instanceof IntervalSub)) bad(`mirror ${e.id}: notifier is not an interval subscription`);
      const mm = mms.get(sub.mmId);
      if (mm === undefined) bad(`mirror ${e.id}: notifier ${sub.id} names mm ${sub.mmId}, which the snapshot does not hold`);
      if (sub.ops !== mirrorRefs.get(e.id)) bad(`mirror ${e.id}: notifier ${sub.id} belongs to another mirror`);
    }
  }
  for (const id of mirrorRefs.keys()) if (!seen.has(id)) bad(`mirror ${id} is referenced but not listed`);
}

/**
 * Restore `bytes` into the daemon `d`, which must be fresh (only the
 * session `caller`, empty, may exist; 0 = none). Checks everything first;
 * throws a StatusError and changes nothing when the snapshot is refused.
 */
export function restoreDaemon(d: ServiceDeps, file: Uint8Array | readonly Uint8Array[], caller: number): RestoreResult {
  const bytes = ByteSource.of(file);
  const k = d.kernel;
  checkFresh(d, caller);
  const mirrorRefs = new Map<number, IntervalOps>();
  const kernelRef = {};
  let root: SnapshotRoot;
  let externals;
  let packed: { length: number; header: { sha256: string; daemonVersion: string } };
  let objects: number;
  let scratch: Kernel;
  try {
    const { header, payload } = unpackSnapshot(bytes);
    packed = { length: bytes.length, header };
    const dec = decodeSnapshot(payload, registry(), (name) => {
      if (name === KERNEL_REF) return kernelRef;
      const m = /^mirror:([1-9][0-9]{0,15})$/.exec(name);
      if (m === null) throw new SnapshotFormatError(`unknown external reference ${JSON.stringify(name)}`);
      const id = Number(m[1]);
      let ops = mirrorRefs.get(id);
      if (ops === undefined) mirrorRefs.set(id, (ops = detachedOps()));
      return ops;
    });
    objects = dec.objects;
    externals = dec.externals;
    checkRoot(dec.root, mirrorRefs);
    root = dec.root;
    try {
      scratch = scratchKernel(root.kernel, externals);
    } catch (e) {
      throw new SnapshotFormatError(`the kernel cannot be rebuilt: ${e instanceof Error ? e.message : String(e)}`);
    }
    const why = scratchViolations(scratch);
    if (why !== null) throw new SnapshotFormatError(`the restored kernel fails CheckInvariants: ${why}`);
    let digest: string;
    try {
      digest = stateDigest(scratch).digest;
    } catch (e) {
      throw new SnapshotFormatError(`the restored state cannot be digested: ${e instanceof Error ? e.message : String(e)}`);
    }
    if (digest !== root.digest) throw new SnapshotFormatError(`the restored state's digest ${digest.slice(0, 16)}… differs from the saved ${root.digest.slice(0, 16)}…`);
  } catch (e) {
    if (e instanceof SnapshotFormatError) throw formatError(e);
    // Nothing live was touched yet: whatever the checks tripped over, the snapshot is bad.
    throw new StatusError(status.INVALID_ARGUMENT, ERRNO.EINVAL, `snapshot refused: structurally invalid (${e instanceof Error ? `${e.name}: ${e.message}` : String(e)})`);
  }

  // Checked: replace the live state.
  installKernel(k, root.kernel, externals);
  const restored = d.sessions.restoreState(
    root.sessions.nextId,
    root.sessions.list.map((s) => ({ id: s.id, name: s.name, tenant: s.tenant })),
    caller,
  );
  const byId = new Map<number, Session>(restored.map((s) => [s.id, s]));
  for (const s of restored) d.tenancy?.sessionCreated(s);
  // The registry is filled in place (services hold it); every field, so new ones come along.
  const reg = d.registry as unknown as Record<string, unknown>;
  for (const [key, v] of Object.entries(root.registry)) {
    const live = reg[key];
    if (live instanceof Map && v instanceof Map) {
      live.clear();
      for (const [id, x] of v) live.set(id, x);
    } else if (typeof live === "object" && live !== null && typeof v === "object" && v !== null) Object.assign(live, v);
    else reg[key] = v;
  }
  const hub = notifierHub(d);
  hub.nextMirrorId = root.mirrors.next;
  const detached = new Map<number, number>();
  for (const e of root.mirrors.list) {
    const subs: { sub: IntervalSub; mm: Mm }[] = e.notifiers.map((sub) => ({ sub, mm: k.mms.get(sub.mmId)! }));
    const m = hub.restoreDetached(e.id, byId.get(e.session)!, e.name, subs, root.mirrors.next);
    rebindExternals(externals, `mirror:${e.id}`, m);
    detached.set(e.session, (detached.get(e.session) ?? 0) + 1);
  }
  reclaimable(d).clear();
  for (const s of restored) reclaimable(d).add(s.id);
  const after = checkInvariants(k);
  if (after.violations.length > 0) d.log.error({ violations: after.violations.slice(0, 5) }, "restored state fails CheckInvariants");
  const summary = summarize(packed.length, packed.header, objects, root.kernel, root);
  d.log.info({ sessions: restored.length, mms: summary.mms, bytes: packed.length, digest: root.digest }, "snapshot restored");
  return {
    summary,
    sessions: root.sessions.list.map((s) => ({ sessionId: s.id, name: s.name, tenant: s.tenant, wasAttached: !s.persistent, detachedMirrors: detached.get(s.id) ?? 0 })),
  };
}

const reclaimSets = new WeakMap<ServiceDeps["sessions"], Set<number>>();
/** Restored sessions not reclaimed yet. */
function reclaimable(d: ServiceDeps): Set<number> {
  let s = reclaimSets.get(d.sessions);
  if (s === undefined) reclaimSets.set(d.sessions, (s = new Set()));
  return s;
}

// -------------------------------------------------------------------- files

const FILE_NAME = /^[A-Za-z0-9_-][A-Za-z0-9._-]{0,254}$/;

function snapshotPath(d: ServiceDeps, name: string): string {
  if (d.config.snapshotDir === "") throw new StatusError(status.FAILED_PRECONDITION, ERRNO.EPERM, "no snapshot directory (start the daemon with --snapshot-dir)");
  if (!FILE_NAME.test(name) || name === "." || name === "..")
    throw new StatusError(status.INVALID_ARGUMENT, ERRNO.EINVAL, `file name ${JSON.stringify(name)} is not a plain file name ([A-Za-z0-9._-], no leading dot, no path)`);
  return join(d.config.snapshotDir, name);
}

const READ_CHUNK = 256 << 20;

/** Read a whole file as chunks of at most 256 MiB (no single-buffer limit). */
export async function readSnapshotFile(path: string): Promise<Buffer[]> {
  const fh = await fsOpen(path, "r");
  try {
    const { size } = await fh.stat();
    const out: Buffer[] = [];
    let off = 0;
    while (off < size) {
      const buf = Buffer.allocUnsafe(Math.min(size - off, READ_CHUNK));
      let got = 0;
      while (got < buf.length) {
        const { bytesRead } = await fh.read(buf, got, buf.length - got, off + got);
        if (bytesRead === 0) break;
        got += bytesRead;
      }
      out.push(got === buf.length ? buf : buf.subarray(0, got));
      off += got;
      if (got < buf.length) break;
    }
    return out;
  } finally {
    await fh.close();
  }
}

async function writeParts(path: string, parts: readonly Uint8Array[], overwrite: boolean): Promise<void> {
  if (!overwrite) {
    const exists = await stat(path).then(
      () => true,
      () => false,
    );
    if (exists) throw new StatusError(status.ALREADY_EXISTS, ERRNO.EEXIST, `${path.slice(path.lastIndexOf("/") + 1)} exists (set overwrite)`);
  }
  const tmp = `${path}.tmp-${process.pid}`;
  const fh = await fsOpen(tmp, "w");
  try {
    for (const p of parts) await fh.write(p);
    await fh.sync();
  } catch (e) {
    await fh.close().catch(() => {});
    await unlink(tmp).catch(() => {});
    throw e;
  }
  await fh.close();
  await rename(tmp, path);
}

/** Daemon start-up: restore `path` or throw an Error saying why not. */
export async function restoreAtStartup(d: ServiceDeps, path: string): Promise<RestoreResult> {
  let bytes: Buffer[];
  try {
    bytes = await readSnapshotFile(path);
  } catch (e) {
    throw new Error(`cannot restore ${path}: ${e instanceof Error ? e.message : String(e)}`);
  }
  try {
    return restoreDaemon(d, bytes, 0);
  } catch (e) {
    throw new Error(`cannot restore ${path}: ${toStatus(e).details}`);
  }
}

// ------------------------------------------------------------------ service

/** The caller's own session id from optional `mmsim-session` metadata (0 = none). */
function callerSession(md: Metadata): number {
  if (md.get("mmsim-session").length === 0) return 0;
  return parseSessionHeader(md);
}

export function snapshotService(d: ServiceDeps): SnapshotServiceServer {
  /** one save or restore at a time */
  let running = false;
  const exclusive = async <T>(what: string, fn: () => Promise<T>): Promise<T> => {
    if (running) busy(`another snapshot save or restore is running (${what} refused)`);
    running = true;
    try {
      return await fn();
    } finally {
      running = false;
    }
  };

  const downloadSnapshot: handleServerStreamingCall<DownloadSnapshotRequest, DownloadSnapshotResponse> = (call) => {
    const method = `${SVC}/DownloadSnapshot`;
    const done = observeStream(rpcProbe(d, method, "server_stream"));
    let cancelled = false;
    call.on("cancelled", () => {
      cancelled = true;
      done(status.CANCELLED);
    });
    const fail = (e: unknown) => {
      const st = toStatus(e);
      if (st.internal) d.log.error({ method, err: e }, "internal error");
      done(st.code);
      call.emit("error", { code: st.code, details: st.details, metadata: st.metadata });
    };
    const req = call.request as DownloadSnapshotRequest | DecodeFailure;
    if (req instanceof DecodeFailure) {
      fail(new StatusError(status.INVALID_ARGUMENT, ERRNO.EINVAL, `cannot decode the request: ${req.reason}`));
      return;
    }
    const chunk = req.chunkBytes === 0 ? DEFAULT_CHUNK : req.chunkBytes;
    if (chunk > MAX_CHUNK) {
      fail(new StatusError(status.INVALID_ARGUMENT, ERRNO.EINVAL, `chunk_bytes ${chunk} is above ${MAX_CHUNK}`));
      return;
    }
    // a client that goes away while the stream is full must not leave the copy pinned
    const drain = () =>
      new Promise<void>((resolve) => {
        if (cancelled) return resolve();
        call.once("drain", resolve);
        call.once("cancelled", resolve);
      });
    void exclusive("DownloadSnapshot", () => captureDaemon(d))
      .then(async (snap) => {
        if (cancelled) return;
        call.write({ header: snap.summary });
        for (const p of snap.parts) {
          for (let off = 0; off < p.length; off += chunk) {
            if (cancelled) return;
            const piece = p.subarray(off, Math.min(p.length, off + chunk));
            if (!call.write({ chunk: Buffer.from(piece.buffer, piece.byteOffset, piece.byteLength) })) await drain();
          }
        }
        d.log.info({ bytes: snap.summary.sizeBytes, digest: snap.summary.stateDigest }, "snapshot streamed");
        done(status.OK);
        call.end();
      })
      .catch(fail);
  };

  const uploadSnapshot: handleClientStreamingCall<UploadSnapshotRequest, UploadSnapshotResponse> = (call, callback) => {
    const method = `${SVC}/UploadSnapshot`;
    const done = observeStream(rpcProbe(d, method, "client_stream"));
    const parts: Buffer[] = [];
    let total = 0;
    let announced = 0;
    let first = true;
    let failed = false;
    const limit = 4 * d.config.ramBytes + 2 ** 30;
    const fail = (e: unknown) => {
      if (failed) return;
      failed = true;
      const st = toStatus(e);
      if (st.internal) d.log.error({ method, err: e }, "internal error");
      else d.log.warn({ method, code: status[st.code], errno: st.errno, details: st.details }, "rpc refused");
      done(st.code);
      callback({ code: st.code, details: st.details, metadata: st.metadata });
    };
    let caller: number;
    try {
      caller = callerSession(call.metadata);
    } catch (e) {
      fail(e);
      return;
    }
    call.on("data", (req: UploadSnapshotRequest | DecodeFailure) => {
      if (failed) return;
      try {
        if (req instanceof DecodeFailure) throw new StatusError(status.INVALID_ARGUMENT, ERRNO.EINVAL, `cannot decode the request: ${req.reason}`);
        if (first) announced = req.totalBytes;
        else if (req.totalBytes !== 0) throw new StatusError(status.INVALID_ARGUMENT, ERRNO.EINVAL, "total_bytes is only allowed in the first message");
        first = false;
        total += req.chunk.length;
        if (total > limit || (announced !== 0 && total > announced))
          throw new StatusError(status.RESOURCE_EXHAUSTED, ERRNO.ENOMEM, `upload of ${total} bytes exceeds ${announced !== 0 ? `the announced ${announced}` : `the limit of ${limit}`}`);
        parts.push(req.chunk);
      } catch (e) {
        fail(e);
      }
    });
    const gone = () => {
      if (failed) return;
      failed = true;
      parts.length = 0;
      done(status.CANCELLED);
    };
    call.on("error", gone);
    call.on("cancelled", gone);
    call.on("end", () => {
      if (failed) return;
      if (announced !== 0 && total !== announced) {
        fail(new StatusError(status.DATA_LOSS, ERRNO.EINVAL, `snapshot refused: upload ended after ${total} of the announced ${announced} bytes`));
        return;
      }
      void exclusive("UploadSnapshot", async () => restoreDaemon(d, parts, caller)).then((result) => {
        if (failed) return;
        done(status.OK);
        callback(null, { result });
      }, fail);
    });
  };

  return {
    saveSnapshot: unary<SaveSnapshotRequest, SaveSnapshotResponse>(d, `${SVC}/SaveSnapshot`, "optional", (req) =>
      exclusive("SaveSnapshot", async () => {
        const path = snapshotPath(d, req.fileName);
        const snap = await captureDaemon(d);
        await writeParts(path, snap.parts, req.overwrite);
        d.log.info({ file: req.fileName, bytes: snap.summary.sizeBytes, digest: snap.summary.stateDigest }, "snapshot saved");
        return { summary: snap.summary };
      }),
    ),

    downloadSnapshot,

    restoreSnapshot: unary<RestoreSnapshotRequest, RestoreSnapshotResponse>(d, `${SVC}/RestoreSnapshot`, "optional", (req, c) =>
      exclusive("RestoreSnapshot", async () => {
        const caller = callerSession(c.metadata);
        const path = snapshotPath(d, req.fileName);
        checkFresh(d, caller);
        let bytes: Buffer[];
        try {
          bytes = await readSnapshotFile(path);
        } catch (e) {
          const code = (e as { code?: string }).code;
          if (code === "ENOENT") throw new StatusError(status.NOT_FOUND, ERRNO.ENOENT, `snapshot file ${req.fileName} not found`);
          throw e;
        }
        return { result: restoreDaemon(d, bytes, caller) };
      }),
    ),

    uploadSnapshot,

    reclaimSession: unary<ReclaimSessionRequest, ReclaimSessionResponse>(d, `${SVC}/ReclaimSession`, "optional", (req, c) => {
      const pending = reclaimable(d);
      // With authentication on, a user reclaims only its tenant's sessions.
      const caller = d.tenancy !== undefined ? callerOf(c.metadata) : undefined;
      for (const s of d.sessions.list()) {
        if (!pending.has(s.id) || s.name !== req.name) continue;
        if (caller !== undefined && caller.role !== "admin" && s.tenant !== caller.tenant) continue;
        pending.delete(s.id);
        const cnt = d.sessions.counters(s);
        let detachedMirrors = 0;
        for (const m of notifierHub(d).mirrors.values()) if (m.session === s && m.state === "detached") detachedMirrors++;
        s.log.info("restored session reclaimed");
        return { sessionId: s.id, mmCount: cnt.mmCount, pinCount: cnt.pinCount, detachedMirrors };
      }
      throw new StatusError(status.NOT_FOUND, ERRNO.ESRCH, `no restored session named ${JSON.stringify(req.name)} is waiting to be reclaimed`);
    }),
  };
}
