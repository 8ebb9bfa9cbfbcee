/**
 * Snapshots of the simulated kernel: the file format and the capture and
 * restore of a Kernel with the per-kernel state its modules keep beside it
 * (dmirror devices and mirrors, driver page allocations, notifier ids,
 * recorded notifier violations). No I/O: the service layer writes the
 * bytes where they go.
 *
 * File format (little endian):
 *
 *   magic "MMSIMSNP" (8 bytes) | format version u32 | header length u32 |
 *   header (JSON: daemonVersion, createdBy, sections [{name, length}],
 *   payloadLength, sha256 of the payload) | payload (the sections, in order)
 *
 * The only section today is "graph": the object graph of snapshot-codec.ts
 * whose root the caller builds (the service layer adds its sessions,
 * records and client mirrors to the kernel's part). Everything is checked
 * before anything is built: magic, version, header shape, lengths, then the
 * checksum, then the graph's structure; the caller then checks the rebuilt
 * kernel's invariants before it replaces anything live.
 *
 * Restore builds a scratch kernel (a Kernel whose fields are the decoded
 * ones, with its hooks installed by the same code as at start-up), checks
 * it, and only then moves the decoded fields into the live Kernel object:
 * every holder of the live kernel (services, sessions, metrics) keeps its
 * reference, and every decoded reference to the kernel is rebound to it.
 */
import { createHash } from "node:crypto";
import { adoptDmirrorState, Dmirror, DmirrorDevice, type DmirrorState, MirrorDir, MirrorLeaf, MirrorTable, peekDmirrorState } from "./dmirror.js";
import { DriverPages, driverPages, peekDriverPages } from "./driver-pages.js";
import { FaultInjector } from "./fault-inject.js";
import { adoptNotifierIds, peekNotifierIds } from "./hmm.js";
import { checkInvariants, type InvariantReport } from "./invariants.js";
import { Kernel } from "./kernel.js";
import { installDeviceMemory, peekDeviceMemory } from "./migrate-device.js";
import { Mm } from "./mm.js";
import { IntervalIndex, IntervalSub, MmNotifier } from "./mmu-notifier.js";
import { adoptNotifierRecords, peekNotifierRecords, type Recorded } from "./notifier-checks.js";
import { TablePool } from "./pagetable.js";
import { DevPagemap, PageData, PhysMem, Section } from "./physmem.js";
import { PinHandle, PinRegistry, SessionPins } from "./pins.js";
import { AnonVma, FileObject, PageCache, Vma } from "./vma.js";
import { ByteSource, ClassRegistry, decodeGraph, type DecodeResult, encodeGraph, type ExternalSlot, rebindExternals, SnapshotFormatError } from "./snapshot-codec.js";

export { ByteSource, ClassRegistry, SnapshotFormatError };

export const SNAPSHOT_MAGIC = "MMSIMSNP";
export const SNAPSHOT_FORMAT_VERSION = 1;
const PREFIX_BYTES = 16;
/** a header beyond this is not one of ours */
const MAX_HEADER_BYTES = 1 << 20;

/** The external name under which the kernel object itself is written. */
export const KERNEL_REF = "kernel";

/** Kernel fields that are hooks or per-operation state: never written, kept from the live kernel. */
const KERNEL_TRANSIENT = {
  deviceEntryFault: () => null,
  op: () => null,
  refHolders: () => [],
  extraChecks: () => [],
  invalidationObservers: () => new Set(),
} as const;

/** The model's classes, with their transient (function-valued) fields. */
export function modelClasses(): ClassRegistry {
  const reg = new ClassRegistry();
  reg
    .register({ name: "PhysMem", ctor: PhysMem, transient: { allocFailHook: () => null, deviceAllocFailHook: () => null } })
    .register({ name: "Section", ctor: Section })
    .register({ name: "DevPagemap", ctor: DevPagemap })
    .register({ name: "PageData", ctor: PageData })
    .register({ name: "TablePool", ctor: TablePool, transient: { allocFailHook: () => null } })
    .register({ name: "FaultInjector", ctor: FaultInjector })
    .register({ name: "PinRegistry", ctor: PinRegistry })
    .register({ name: "PinHandle", ctor: PinHandle })
    .register({ name: "Mm", ctor: Mm })
    .register({ name: "MmNotifier", ctor: MmNotifier })
    .register({ name: "IntervalIndex", ctor: IntervalIndex })
    .register({ name: "IntervalSub", ctor: IntervalSub })
    .register({ name: "Vma", ctor: Vma })
    .register({ name: "AnonVma", ctor: AnonVma })
    .register({ name: "FileObject", ctor: FileObject })
    .register({ name: "PageCache", ctor: PageCache })
    .register({ name: "DmirrorDevice", ctor: DmirrorDevice })
    .register({ name: "Dmirror", ctor: Dmirror })
    .register({ name: "MirrorTable", ctor: MirrorTable })
    .register({ name: "MirrorDir", ctor: MirrorDir })
    .register({ name: "MirrorLeaf", ctor: MirrorLeaf })
    .register({ name: "DriverPages", ctor: DriverPages })
    .register({ name: "SessionPins", ctor: SessionPins });
  return reg;
}

/** Why a kernel cannot be captured now (a snapshot needs a quiescent kernel). */
export class SnapshotBusyError extends Error {
  override readonly name = "SnapshotBusyError";
}

/** The kernel's part of a snapshot's root: its fields and its modules' state. */
export interface KernelPart {
  fields: Record<string, unknown>;
  ext: {
    dmirror?: DmirrorState;
    driverPages?: DriverPages;
    deviceMemory: boolean;
    nextNotifierId?: number;
    notifierRecords?: Recorded[];
  };
}

/** The kernel's part of a snapshot; throws SnapshotBusyError unless quiescent. */
export function captureKernel(k: Kernel): KernelPart {
  if (k.op !== null) throw new SnapshotBusyError("a model operation is running");
  for (const mm of k.mms.values()) {
    if (mm.notifier.active !== 0 || mm.notifier.invalidating)
      throw new SnapshotBusyError(`mm ${mm.id} has an invalidation in flight (seq ${mm.notifier.seq}, active ${mm.notifier.active})`);
  }
  const dm = peekDeviceMemory(k);
  if (dm !== undefined && dm.inflight > 0) throw new SnapshotBusyError(`${dm.inflight} device migration(s) between setup and finalize`);
  const fields: Record<string, unknown> = {};
  for (const key of Object.keys(k)) if (!(key in KERNEL_TRANSIENT)) fields[key] = (k as unknown as Record<string, unknown>)[key];
  return {
    fields,
    ext: {
      dmirror: peekDmirrorState(k),
      driverPages: peekDriverPages(k),
      deviceMemory: dm !== undefined,
      nextNotifierId: peekNotifierIds(k),
      notifierRecords: peekNotifierRecords(k),
    },
  };
}

/** Install the module state of a snapshot on `k` (hooks by the modules' own first-use code). */
function adoptExt(k: Kernel, ext: KernelPart["ext"]): void {
  if (ext.deviceMemory) installDeviceMemory(k);
  if (ext.notifierRecords !== undefined) adoptNotifierRecords(k, ext.notifierRecords);
  if (ext.nextNotifierId !== undefined) adoptNotifierIds(k, ext.nextNotifierId);
  if (ext.driverPages !== undefined) {
    const dp = driverPages(k);
    dp.held.clear();
    for (const [pfn, s] of ext.driverPages.held) dp.held.set(pfn, s);
  }
  if (ext.dmirror !== undefined) adoptDmirrorState(k, ext.dmirror);
  if (k.inject.enabled) k.inject.reinstallHooks();
}

/** A kernel built from decoded fields, for checking before anything live is touched. */
export function scratchKernel(part: KernelPart, externals: readonly ExternalSlot[]): Kernel {
  const p = Object.create(Kernel.prototype) as Kernel & Record<string, unknown>;
  for (const [key, init] of Object.entries(KERNEL_TRANSIENT)) p[key] = init();
  Object.assign(p, part.fields);
  rebindExternals(externals, KERNEL_REF, p);
  p.installCoreHooks();
  adoptExt(p, part.ext);
  return p;
}

/** Shape checks of the kernel part the invariant checker would trip over with a TypeError. */
export function checkKernelPart(part: unknown): asserts part is KernelPart {
  const bad = (what: string): never => {
    throw new SnapshotFormatError(`snapshot kernel part: ${what}`);
  };
  if (typeof part !== "object" || part === null) bad("missing");
  const p = part as Partial<KernelPart>;
  if (typeof p.fields !== "object" || p.fields === null || typeof p.ext !== "object" || p.ext === null) bad("fields or ext missing");
  const f = p.fields as Record<string, unknown>;
  const probe = new Kernel({ phys: { ramBytes: 256 * 2 ** 20, movableBytes: 0, cmaBytes: 0 } }) as unknown as Record<string, unknown>;
  for (const key of Object.keys(probe)) {
    if (key in KERNEL_TRANSIENT) continue;
    if (!(key in f)) bad(`field ${key} missing`);
    const want = probe[key];
    const got = f[key];
    const kind = (v: unknown) => (v === null ? "null" : typeof v === "object" ? Object.getPrototypeOf(v) : typeof v);
    if (kind(want) !== kind(got)) bad(`field ${key} has the wrong type`);
  }
  for (const key of Object.keys(f)) if (!(key in probe)) bad(`unknown field ${key}`);
  for (const [id, mm] of f.mms as Map<unknown, unknown>) if (!(mm instanceof Mm) || mm.id !== id) bad(`mms entry ${String(id)} is not mm ${String(id)}`);
}

/**
 * Move a checked kernel part into the live kernel `k`: its fields replace
 * k's (hooks stay), references to the kernel are rebound to `k`, and the
 * modules' state is installed on it.
 */
export function installKernel(k: Kernel, part: KernelPart, externals: readonly ExternalSlot[]): void {
  const live = k as unknown as Record<string, unknown>;
  for (const key of Object.keys(live)) if (!(key in KERNEL_TRANSIENT)) delete live[key];
  Object.assign(live, part.fields);
  rebindExternals(externals, KERNEL_REF, k);
  adoptExt(k, part.ext);
}

// ---------------------------------------------------------------- the file

export interface SnapshotHeader {
  daemonVersion: string;
  createdBy: string;
  sections: { name: string; length: number }[];
  payloadLength: number;
  sha256: string;
}

export interface PackedSnapshot {
  /** the file's bytes, in order (large parts may be views of live memory) */
  parts: Uint8Array[];
  length: number;
  header: SnapshotHeader;
}

/** Encode `root` with `reg` and frame it as a snapshot file. */
export function packSnapshot(root: unknown, reg: ClassRegistry, daemonVersion: string, external: (o: object) => string | undefined): PackedSnapshot & { objects: number } {
  const g = encodeGraph(root, reg, { external });
  const h = createHash("sha256");
  for (const p of g.parts) h.update(p);
  const header: SnapshotHeader = {
    daemonVersion,
    createdBy: "mmsimd",
    sections: [{ name: "graph", length: g.length }],
    payloadLength: g.length,
    sha256: h.digest("hex"),
  };
  const hb = new TextEncoder().encode(JSON.stringify(header));
  const prefix = new Uint8Array(PREFIX_BYTES);
  prefix.set(new TextEncoder().encode(SNAPSHOT_MAGIC), 0);
  const dv = new DataView(prefix.buffer);
  dv.setUint32(8, SNAPSHOT_FORMAT_VERSION, true);
  dv.setUint32(12, hb.length, true);
  return { parts: [prefix, hb, ...g.parts], length: PREFIX_BYTES + hb.length + g.length, header, objects: g.objects };
}

/**
 * Read and check a snapshot file's frame and checksum; returns its header
 * and payload. The file may come as one buffer or as chunks (a file read in
 * pieces, an upload's messages): nothing is concatenated.
 */
export function unpackSnapshot(file: Uint8Array | readonly Uint8Array[] | ByteSource): { header: SnapshotHeader; payload: ByteSource } {
  const bytes = ByteSource.of(file);
  if (bytes.length < PREFIX_BYTES) throw new SnapshotFormatError(`not a snapshot: ${bytes.length} bytes, shorter than the ${PREFIX_BYTES}-byte prefix`, true);
  const prefix = bytes.view(0, PREFIX_BYTES);
  const magic = new TextDecoder().decode(prefix.subarray(0, 8));
  if (magic !== SNAPSHOT_MAGIC) throw new SnapshotFormatError(`not a snapshot: magic ${JSON.stringify(magic)}, expected ${JSON.stringify(SNAPSHOT_MAGIC)}`);
  const dv = new DataView(prefix.buffer, prefix.byteOffset, prefix.byteLength);
  const version = dv.getUint32(8, true);
  if (version !== SNAPSHOT_FORMAT_VERSION) throw new SnapshotFormatError(`snapshot format version ${version} is not supported (this daemon reads version ${SNAPSHOT_FORMAT_VERSION})`);
  const hlen = dv.getUint32(12, true);
  if (hlen === 0 || hlen > MAX_HEADER_BYTES) throw new SnapshotFormatError(`snapshot header length ${hlen} out of range`);
  if (PREFIX_BYTES + hlen > bytes.length) throw new SnapshotFormatError(`snapshot truncated: header of ${hlen} bytes, file of ${bytes.length}`, true);
  let header: SnapshotHeader;
  try {
    header = JSON.parse(new TextDecoder("utf-8", { fatal: true }).decode(bytes.view(PREFIX_BYTES, hlen))) as SnapshotHeader;
  } catch {
    throw new SnapshotFormatError("snapshot header is not valid JSON");
  }
  const okSection = (s: unknown) =>
    typeof s === "object" && s !== null && typeof (s as { name: unknown }).name === "string" && Number.isSafeInteger((s as { length: unknown }).length) && (s as { length: number }).length >= 0;
  if (
    typeof header !== "object" ||
    header === null ||
    typeof header.daemonVersion !== "string" ||
    typeof header.sha256 !== "string" ||
    !/^[0-9a-f]{64}$/.test(header.sha256) ||
    !Number.isSafeInteger(header.payloadLength) ||
    !Array.isArray(header.sections) ||
    !header.sections.every(okSection)
  )
    throw new SnapshotFormatError("snapshot header is malformed");
  const sum = header.sections.reduce((a, s) => a + s.length, 0);
  if (sum !== header.payloadLength || header.sections.length !== 1 || header.sections[0]!.name !== "graph")
    throw new SnapshotFormatError(`snapshot sections ${JSON.stringify(header.sections.map((s) => s.name))} do not match the payload`);
  const start = PREFIX_BYTES + hlen;
  const have = bytes.length - start;
  if (have < header.payloadLength) throw new SnapshotFormatError(`snapshot truncated: payload has ${have} of ${header.payloadLength} bytes`, true);
  if (have > header.payloadLength) throw new SnapshotFormatError(`snapshot has ${have - header.payloadLength} bytes after its payload`, true);
  const payload = bytes.from(start);
  const h = createHash("sha256");
  for (const c of payload.chunks) h.update(c);
  const digest = h.digest("hex");
  if (digest !== header.sha256)
    throw new SnapshotFormatError(`snapshot checksum mismatch (payload sha256 ${digest.slice(0, 16)}…, header says ${header.sha256.slice(0, 16)}…): the file is corrupt`, true);
  return { header, payload };
}

/** Decode a checked payload. */
export function decodeSnapshot(payload: ByteSource, reg: ClassRegistry, external: (name: string) => object): DecodeResult {
  return decodeGraph(payload, reg, { external });
}

/** Invariants of a scratch kernel, as a reason string, or null when clean. */
export function scratchViolations(k: Kernel): string | null {
  let rep: InvariantReport;
  try {
    rep = checkInvariants(k);
  } catch (e) {
    return `the invariant check failed: ${e instanceof Error ? e.message : String(e)}`;
  }
  if (rep.violations.length === 0) return null;
  const first = rep.violations.slice(0, 3).map((v) => `${v.code}: ${v.message}`);
  return `${rep.violations.length} invariant violation(s): ${first.join("; ")}`;
}
