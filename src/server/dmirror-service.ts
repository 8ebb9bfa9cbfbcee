/**
 * DmirrorService (dmirror.proto): the daemon-side test_hmm devices. Each
 * command is the dmirror ioctl: it runs its model steps as operations on the
 * mirrored mm (mmap read lock, acknowledgements of client mirrors awaited),
 * sleeps in read_begin between them, and fails the call with the ioctl's
 * errno.
 */
import { MAP_PRIVATE, MAP_SHARED, PAGE_SIZE, PROT_EXEC, PROT_READ, PROT_WRITE } from "../mm/constants.js";
import { MmError } from "../mm/errors.js";
import {
  type Dmirror,
  type DmirrorCmdResult,
  type DmirrorDevice,
  type DmirrorEnv,
  HMM_DMIRROR_MEMORY_DEVICE_COHERENT,
  HMM_DMIRROR_MEMORY_DEVICE_PRIVATE,
  closeDmirror,
  createDmirrorDevice,
  destroyDmirrorDevice,
  dmirrorCheckExclusive,
  dmirrorExclusive,
  dmirrorMigrateToDevice,
  dmirrorMigrateToSystem,
  dmirrorMmap,
  dmirrorRead,
  dmirrorSnapshot,
  dmirrorState,
  dmirrorWrite,
  openDmirror,
} from "../mm/dmirror.js";
import type { Kernel } from "../mm/kernel.js";
import { installDeviceMemory } from "../mm/migrate-device.js";
import { MemoryType } from "../gen/mmsim/v1/common.js";
import {
  type CheckExclusiveRequest,
  type CheckExclusiveResponse,
  type CloseMirrorRequest,
  type CloseMirrorResponse,
  type CreateDmirrorDeviceRequest,
  type CreateDmirrorDeviceResponse,
  type DestroyDmirrorDeviceRequest,
  type DestroyDmirrorDeviceResponse,
  type DmirrorDeviceInfo,
  type DmirrorServiceServer,
  type GetMirrorRequest,
  type GetMirrorResponse,
  type ListDmirrorDevicesRequest,
  type ListDmirrorDevicesResponse,
  type MakeExclusiveRequest,
  type MakeExclusiveResponse,
  type MigrateToDeviceRequest,
  type MigrateToDeviceResponse,
  type MigrateToSystemRequest,
  type MigrateToSystemResponse,
  type MmapDeviceRequest,
  type MmapDeviceResponse,
  type OpenMirrorRequest,
  type OpenMirrorResponse,
  type ReadMirrorRequest,
  type ReadMirrorResponse,
  type ReleaseDeviceMemoryRequest,
  type ReleaseDeviceMemoryResponse,
  type SetMirrorFlagsRequest,
  type SetMirrorFlagsResponse,
  type SnapshotMirrorRequest,
  type SnapshotMirrorResponse,
  type WriteMirrorRequest,
  type WriteMirrorResponse,
} from "../gen/mmsim/v1/dmirror.js";
import { errnoName, invalidArgument, notFoundError } from "./errors.js";
import { runModelOp, type ServiceDeps, unary } from "./handler.js";
import { knownMm, liveMm } from "./lookup.js";
import { enumValue, mask, objectId, positive, u64 } from "./validate.js";

const SVC = "DmirrorService";
/** A command moves at most this much through one call (1 GiB). */
const MAX_CMD_PAGES = 1 << 18;

export function dmirrorService(d: ServiceDeps): DmirrorServiceServer {
  const k = d.kernel;
  installDeviceMemory(k);
  const st = dmirrorState(k);
  registerDmirrorResources(d);

  const env: DmirrorEnv = {
    op: (mm, fn) => runModelOp(k, [mm.id], "read", fn),
    now: () => performance.now(),
  };

  const device = (id: number): DmirrorDevice => {
    objectId(id, "device_id");
    const dev = st.devices.get(id);
    if (dev === undefined) notFoundError(`dmirror device ${id}`);
    return dev;
  };
  const mirror = (id: number): Dmirror => {
    objectId(id, "mirror_id");
    const m = st.mirrors.get(id);
    if (m === undefined) notFoundError(`mirror ${id}`);
    return m;
  };
  const range = (addr: number, npages: number) => {
    u64(addr, "addr");
    positive(npages, "npages");
    if (npages > MAX_CMD_PAGES) invalidArgument(`npages ${npages} exceeds ${MAX_CMD_PAGES}`);
  };
  /** The ioctl failed: the call fails with its errno, nothing is copied back. */
  const check = (what: string, r: DmirrorCmdResult): DmirrorCmdResult => {
    if (r.ret !== 0) throw new MmError(-r.ret, `${what}: the dmirror ioctl returned -${errnoName(-r.ret)}`);
    return r;
  };
  const deviceInfo = (dev: DmirrorDevice): DmirrorDeviceInfo => ({
    deviceId: dev.id,
    name: dev.name,
    memoryType: dev.isPrivate ? MemoryType.MEMORY_TYPE_DEVICE_PRIVATE : MemoryType.MEMORY_TYPE_DEVICE_COHERENT,
    owner: dev.owner,
    chunks: dev.chunks.length,
    chunkPages: dev.chunkPages,
    pagesInUse: dev.pagesInUse,
    calloc: dev.calloc,
    sessionId: dev.session,
    pgmapIds: dev.chunks.map((c) => c.pm.id),
  });

  return {
    createDmirrorDevice: unary<CreateDmirrorDeviceRequest, CreateDmirrorDeviceResponse>(d, `${SVC}/CreateDmirrorDevice`, "required", async (req, c) => {
      const t = enumValue(req.memoryType, [MemoryType.MEMORY_TYPE_DEVICE_PRIVATE, MemoryType.MEMORY_TYPE_DEVICE_COHERENT], "memory_type", MemoryType as unknown as Record<number, string>);
      u64(req.chunkPages, "chunk_pages");
      const dev = await runModelOp(k, [], "write", () =>
        createDmirrorDevice(k, req.name, t === MemoryType.MEMORY_TYPE_DEVICE_PRIVATE ? HMM_DMIRROR_MEMORY_DEVICE_PRIVATE : HMM_DMIRROR_MEMORY_DEVICE_COHERENT, req.chunkPages, c.sessionId),
      );
      return { deviceId: dev.id, owner: dev.owner, name: dev.name };
    }),

    destroyDmirrorDevice: unary<DestroyDmirrorDeviceRequest, DestroyDmirrorDeviceResponse>(d, `${SVC}/DestroyDmirrorDevice`, "required", async (req) => {
      const dev = device(req.deviceId);
      return { evictedPages: await destroyDevice(k, dev) };
    }),

    listDmirrorDevices: unary<ListDmirrorDevicesRequest, ListDmirrorDevicesResponse>(d, `${SVC}/ListDmirrorDevices`, "optional", () => ({
      devices: [...st.devices.values()].sort((a, b) => a.id - b.id).map(deviceInfo),
    })),

    openMirror: unary<OpenMirrorRequest, OpenMirrorResponse>(d, `${SVC}/OpenMirror`, "required", (req, c) => {
      const dev = device(req.deviceId);
      objectId(req.mmId, "mm_id");
      const mm = knownMm(k, req.mmId);
      const m = openDmirror(k, dev, mm, c.sessionId);
      return { mirrorId: m.id, notifierId: m.sub.id };
    }),

    closeMirror: unary<CloseMirrorRequest, CloseMirrorResponse>(d, `${SVC}/CloseMirror`, "required", async (req) => {
      await closeDmirror(k, mirror(req.mirrorId));
      return {};
    }),

    getMirror: unary<GetMirrorRequest, GetMirrorResponse>(d, `${SVC}/GetMirror`, "optional", (req) => {
      const m = mirror(req.mirrorId);
      return { mirrorId: m.id, deviceId: m.device.id, mmId: m.mm.id, notifierId: m.sub.id, entries: m.pt.size, tableNodes: m.pt.nodes, flags: m.flags };
    }),

    readMirror: unary<ReadMirrorRequest, ReadMirrorResponse>(d, `${SVC}/ReadMirror`, "required", async (req) => {
      const m = mirror(req.mirrorId);
      range(req.addr, req.npages);
      const r = check("HMM_DMIRROR_READ", await dmirrorRead(k, env, m, req.addr, req.npages));
      return { cpages: r.cpages, faults: r.faults, data: asBuffer(r.data) };
    }),

    writeMirror: unary<WriteMirrorRequest, WriteMirrorResponse>(d, `${SVC}/WriteMirror`, "required", async (req) => {
      const m = mirror(req.mirrorId);
      range(req.addr, req.npages);
      if (req.data.length > req.npages * PAGE_SIZE) invalidArgument(`data has ${req.data.length} bytes, more than npages * 4096`);
      const r = check("HMM_DMIRROR_WRITE", await dmirrorWrite(k, env, m, req.addr, req.npages, req.data));
      return { cpages: r.cpages, faults: r.faults };
    }),

    migrateToDevice: unary<MigrateToDeviceRequest, MigrateToDeviceResponse>(d, `${SVC}/MigrateToDevice`, "required", async (req) => {
      const m = mirror(req.mirrorId);
      range(req.addr, req.npages);
      const r = check("HMM_DMIRROR_MIGRATE_TO_DEV", await dmirrorMigrateToDevice(k, env, m, req.addr, req.npages, req.omitData));
      return { cpages: r.cpages, data: req.omitData ? Buffer.alloc(0) : asBuffer(r.data) };
    }),

    migrateToSystem: unary<MigrateToSystemRequest, MigrateToSystemResponse>(d, `${SVC}/MigrateToSystem`, "required", async (req) => {
      const m = mirror(req.mirrorId);
      range(req.addr, req.npages);
      const r = check("HMM_DMIRROR_MIGRATE_TO_SYS", await dmirrorMigrateToSystem(k, env, m, req.addr, req.npages));
      return { cpages: r.cpages };
    }),

    snapshotMirror: unary<SnapshotMirrorRequest, SnapshotMirrorResponse>(d, `${SVC}/SnapshotMirror`, "required", async (req) => {
      const m = mirror(req.mirrorId);
      range(req.addr, req.npages);
      const r = check("HMM_DMIRROR_SNAPSHOT", await dmirrorSnapshot(k, env, m, req.addr, req.npages));
      return { cpages: r.cpages, perms: asBuffer(r.data) };
    }),

    makeExclusive: unary<MakeExclusiveRequest, MakeExclusiveResponse>(d, `${SVC}/MakeExclusive`, "required", async (req) => {
      const m = mirror(req.mirrorId);
      range(req.addr, req.npages);
      const r = check("HMM_DMIRROR_EXCLUSIVE", await dmirrorExclusive(k, env, m, req.addr, req.npages));
      return { cpages: r.cpages, data: asBuffer(r.data) };
    }),

    checkExclusive: unary<CheckExclusiveRequest, CheckExclusiveResponse>(d, `${SVC}/CheckExclusive`, "required", (req) => {
      const m = mirror(req.mirrorId);
      range(req.addr, req.npages);
      check("HMM_DMIRROR_CHECK_EXCLUSIVE", dmirrorCheckExclusive(m, req.addr, req.npages));
      return {};
    }),

    releaseDeviceMemory: unary<ReleaseDeviceMemoryRequest, ReleaseDeviceMemoryResponse>(d, `${SVC}/ReleaseDeviceMemory`, "required", async (req) => {
      const m = mirror(req.mirrorId);
      const n = await runModelOp(k, [], "write", () => m.device.removeChunks());
      return { evictedPages: n };
    }),

    setMirrorFlags: unary<SetMirrorFlagsRequest, SetMirrorFlagsResponse>(d, `${SVC}/SetMirrorFlags`, "required", (req) => {
      const m = mirror(req.mirrorId);
      u64(req.flags, "flags");
      m.flags = req.flags;
      return {};
    }),

    mmapDevice: unary<MmapDeviceRequest, MmapDeviceResponse>(d, `${SVC}/MmapDevice`, "required", async (req) => {
      const m = mirror(req.mirrorId);
      positive(req.length, "length");
      mask(req.prot, PROT_READ | PROT_WRITE | PROT_EXEC, "prot");
      if (req.flags !== MAP_SHARED && req.flags !== MAP_PRIVATE) invalidArgument("flags must be MAP_SHARED (0x1) or MAP_PRIVATE (0x2)");
      const addr = await runModelOp(k, [m.mm.id], "write", () => dmirrorMmap(k, liveMm(k, m.mm.id), req.length, req.prot, req.flags));
      return { addr };
    }),
  };
}

/** Close a device's mirrors, then evict its memory and drop it. */
async function destroyDevice(k: Kernel, dev: DmirrorDevice): Promise<number> {
  const st = dmirrorState(k);
  for (const m of [...st.mirrors.values()]) if (m.device === dev) await closeDmirror(k, m);
  const before = dev.pagesInUse;
  await runModelOp(k, [], "write", () => destroyDmirrorDevice(k, dev));
  return before - dev.pagesInUse;
}

const registered = new WeakMap<Kernel, boolean>();

/** A Buffer over the same bytes (no copy). */
function asBuffer(u: Uint8Array): Buffer {
  return Buffer.from(u.buffer, u.byteOffset, u.byteLength);
}

/** Session release: mirrors with the notifiers, devices after the mms exited. */
function registerDmirrorResources(d: ServiceDeps): void {
  const k = d.kernel;
  if (registered.get(k)) return;
  registered.set(k, true);
  const st = dmirrorState(k);
  d.sessions.onRelease("notifiers", "close dmirror mirrors", async (s) => {
    for (const m of [...st.mirrors.values()]) if (m.sub.session === s.id) await closeDmirror(k, m);
  });
  d.sessions.onRelease("pagemaps", "remove dmirror devices", async (s) => {
    for (const dev of [...st.devices.values()]) if (dev.session === s.id) await destroyDevice(k, dev);
  });
  d.sessions.addCounters((s) => {
    let mirrorCount = 0;
    for (const m of st.mirrors.values()) if (m.sub.session === s.id) mirrorCount++;
    return { mirrorCount, notifierCount: mirrorCount };
  });
}

