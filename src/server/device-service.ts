/**
 * DeviceService (device.proto): dev_pagemaps, raw PFN ranges and driver PFN
 * insertion. All RPCs but ListDevices are mutating.
 */
import { checkPagesLimit } from "./limits.js";
import { HPAGE_PUD_NR, MemoryType as MmMemoryType } from "../mm/constants.js";
import { allocDevicePages, freeDevicePages, releaseSessionDevicePages, vmInsertPage } from "../mm/driver-pages.js";
import { insertPfnRange } from "../mm/insert.js";
import type { InsertRequest } from "../mm/insert.js";
import { MemoryType } from "../gen/mmsim/v1/common.js";
import {
  type AllocDevicePagesRequest,
  type AllocDevicePagesResponse,
  type DeviceServiceServer,
  type FreeDevicePagesRequest,
  type FreeDevicePagesResponse,
  type VmInsertPageRequest,
  type VmInsertPageResponse,
  InsertMode,
  type InsertPfnRangeRequest,
  type InsertPfnRangeResponse,
  type ListDevicesRequest,
  type ListDevicesResponse,
  type RegisterDevPagemapRequest,
  type RegisterDevPagemapResponse,
  type RegisterPfnRangeRequest,
  type RegisterPfnRangeResponse,
  type UnregisterDevPagemapRequest,
  type UnregisterDevPagemapResponse,
  type UnregisterPfnRangeRequest,
  type UnregisterPfnRangeResponse,
} from "../gen/mmsim/v1/device.js";
import { levelToProto, memoryTypeFromProto, memoryTypeToProto } from "./convert.js";
import { pfnRangeVmas, revokePfnRange } from "./device-ops.js";
import { ERRNO, errnoError, invalidArgument, notFoundError } from "./errors.js";
import { runModelOp, type ServiceDeps, unary } from "./handler.js";
import { liveMm } from "./lookup.js";
import { enumValue, isPowerOfTwo, mask, objectId, pageAligned, positive, u32, u64 } from "./validate.js";

const SVC = "DeviceService";
const MEMORY_TYPES = [
  MemoryType.MEMORY_TYPE_DEVICE_PRIVATE,
  MemoryType.MEMORY_TYPE_DEVICE_COHERENT,
  MemoryType.MEMORY_TYPE_DEVICE_FS_DAX,
  MemoryType.MEMORY_TYPE_DEVICE_GENERIC,
  MemoryType.MEMORY_TYPE_DEVICE_PCI_P2PDMA,
];
const INSERT_MODES = { [InsertMode.INSERT_MODE_EAGER]: "eager", [InsertMode.INSERT_MODE_FAULT]: "fault", [InsertMode.INSERT_MODE_REMAP]: "remap" } as const;
/** vmemmap_shift up to a PUD-sized folio. */
const MAX_FOLIO_ORDER = 18;

/** RegisterPfnRange align_pages 0: the smallest power of two >= nr_pages, at most 1 GiB. */
export function naturalAlignment(nrPages: number): number {
  let a = 1;
  while (a < nrPages && a < HPAGE_PUD_NR) a *= 2;
  return a;
}

/** Driver allocation references (AllocDevicePages) go at the "pins" stage of a session's end. */
function registerDriverPageRelease(d: ServiceDeps): void {
  const k = d.kernel;
  d.sessions.onRelease("pins", "free driver-allocated device pages", async (s) => {
    await runModelOp(k, [], "write", () => releaseSessionDevicePages(k, s.id));
  });
}

export function deviceService(d: ServiceDeps): DeviceServiceServer {
  const k = d.kernel;
  registerDriverPageRelease(d);
  return {
    allocDevicePages: unary<AllocDevicePagesRequest, AllocDevicePagesResponse>(d, `${SVC}/AllocDevicePages`, "required", async (req, c) => {
      objectId(req.pgmapId, "pgmap_id");
      positive(req.nrPages, "nr_pages");
      checkPagesLimit(d, req.nrPages, "nr_pages");
      const pfns = await runModelOp(k, [], "write", () => {
        const pm = k.phys.pagemaps.get(req.pgmapId);
        if (pm === undefined) notFoundError(`dev_pagemap ${req.pgmapId}`);
        if (pm.type === MmMemoryType.DEVICE_PRIVATE) invalidArgument("DEVICE_PRIVATE pages are never mapped by PTEs; allocate them through device migration");
        return allocDevicePages(k, c.sessionId, pm, req.nrPages);
      });
      return { pfns };
    }),

    freeDevicePages: unary<FreeDevicePagesRequest, FreeDevicePagesResponse>(d, `${SVC}/FreeDevicePages`, "required", async (req, c) => {
      for (const p of req.pfns) u64(p, "pfns");
      const freed = await runModelOp(k, [], "write", () => freeDevicePages(k, c.sessionId, req.pfns));
      return { freed };
    }),

    vmInsertPage: unary<VmInsertPageRequest, VmInsertPageResponse>(d, `${SVC}/VmInsertPage`, "required", async (req, c) => {
      objectId(req.mmId, "mm_id");
      pageAligned(req.addr, "addr");
      u64(req.pfn, "pfn");
      const r = await runModelOp(k, [req.mmId], "write", () => vmInsertPage(k, liveMm(k, req.mmId), req.addr, req.pfn, c.sessionId));
      return { errnoValue: Math.abs(r.ret), allocationTransferred: r.allocationTransferred };
    }),

    registerDevPagemap: unary<RegisterDevPagemapRequest, RegisterDevPagemapResponse>(d, `${SVC}/RegisterDevPagemap`, "required", async (req, c) => {
      const type = enumValue(req.type, MEMORY_TYPES, "type", MemoryType as unknown as Record<number, string>);
      positive(req.nrPages, "nr_pages");
      checkPagesLimit(d, req.nrPages, "nr_pages");
      u64(req.owner, "owner");
      u32(req.folioOrder, "folio_order");
      if ((type === MemoryType.MEMORY_TYPE_DEVICE_PRIVATE || type === MemoryType.MEMORY_TYPE_DEVICE_COHERENT) && req.owner === 0)
        invalidArgument("owner must be non-zero for DEVICE_PRIVATE and DEVICE_COHERENT (memremap_pages: Missing owner)");
      if (req.folioOrder > MAX_FOLIO_ORDER) invalidArgument(`folio_order ${req.folioOrder} exceeds ${MAX_FOLIO_ORDER}`);
      if (req.nrPages % 2 ** req.folioOrder !== 0) invalidArgument(`nr_pages ${req.nrPages} is not a multiple of 2^folio_order (${2 ** req.folioOrder})`);
      // The model's pagemaps have order-0 pages only; refuse rather than differ.
      if (req.folioOrder !== 0) errnoError(ERRNO.EOPNOTSUPP, "compound dev_pagemap folios (folio_order > 0) are not modelled yet");
      const pm = await runModelOp(k, [], "write", () => k.phys.registerPagemap(req.name, memoryTypeFromProto(type), req.nrPages, req.owner));
      d.registry.pagemaps.set(pm.id, { ownerSession: c.sessionId, folioOrder: req.folioOrder, orphaned: false });
      return { pgmapId: pm.id, pfnStart: pm.startPfn, nrPages: pm.nrPages };
    }),

    unregisterDevPagemap: unary<UnregisterDevPagemapRequest, UnregisterDevPagemapResponse>(d, `${SVC}/UnregisterDevPagemap`, "required", async (req) => {
      objectId(req.pgmapId, "pgmap_id");
      await runModelOp(k, [], "write", () => k.phys.unregisterPagemap(req.pgmapId));
      d.registry.pagemaps.delete(req.pgmapId);
      return {};
    }),

    registerPfnRange: unary<RegisterPfnRangeRequest, RegisterPfnRangeResponse>(d, `${SVC}/RegisterPfnRange`, "required", async (req, c) => {
      positive(req.nrPages, "nr_pages");
      checkPagesLimit(d, req.nrPages, "nr_pages");
      u64(req.alignPages, "align_pages");
      if (req.alignPages !== 0 && !isPowerOfTwo(req.alignPages)) invalidArgument(`align_pages ${req.alignPages} is not a power of two`);
      const align = req.alignPages === 0 ? naturalAlignment(req.nrPages) : req.alignPages;
      const r = await runModelOp(k, [], "write", () => k.phys.registerPfnRange(req.name, req.nrPages, align));
      d.registry.pfnRanges.set(r.id, { ownerSession: c.sessionId });
      return { pfnRangeId: r.id, pfnStart: r.startPfn, nrPages: r.nrPages };
    }),

    unregisterPfnRange: unary<UnregisterPfnRangeRequest, UnregisterPfnRangeResponse>(d, `${SVC}/UnregisterPfnRange`, "required", async (req) => {
      objectId(req.pfnRangeId, "pfn_range_id");
      // unmap_mapping_range takes no mmap_lock: no mm is locked here.
      await runModelOp(k, [], "write", () => revokePfnRange(k, req.pfnRangeId));
      d.registry.pfnRanges.delete(req.pfnRangeId);
      return {};
    }),

    insertPfnRange: unary<InsertPfnRangeRequest, InsertPfnRangeResponse>(d, `${SVC}/InsertPfnRange`, "required", async (req) => {
      objectId(req.mmId, "mm_id");
      pageAligned(req.addr, "addr");
      u64(req.pfn, "pfn");
      u64(req.nrPages, "nr_pages");
      checkPagesLimit(d, req.nrPages, "nr_pages");
      const mode = enumValue(req.mode, [InsertMode.INSERT_MODE_EAGER, InsertMode.INSERT_MODE_FAULT, InsertMode.INSERT_MODE_REMAP], "mode");
      if (mode === InsertMode.INSERT_MODE_FAULT) {
        if (req.nrPages > 1) invalidArgument("nr_pages must be 0 or 1 for INSERT_MODE_FAULT");
      } else if (req.nrPages === 0) invalidArgument("nr_pages must be >= 1 for INSERT_MODE_EAGER and INSERT_MODE_REMAP");
      if (req.prot !== undefined) mask(req.prot, 0x7, "prot");
      const ir: InsertRequest = {
        addr: req.addr,
        pfn: req.pfn,
        nrPages: mode === InsertMode.INSERT_MODE_FAULT ? 1 : req.nrPages,
        mode: INSERT_MODES[mode],
        write: req.write,
        prot: req.prot ?? null,
      };
      const r = await runModelOp(k, [req.mmId], "read", () => insertPfnRange(k, liveMm(k, req.mmId), ir));
      return {
        vmFault: r.vmFault >>> 0,
        errnoValue: Math.abs(r.errno),
        leaves: r.leaves.map((l) => ({ level: levelToProto(l.level), addr: l.addr, pfn: l.pfn, count: l.count })),
        pudLeaves: r.pud,
        pmdLeaves: r.pmd,
        pteLeaves: r.pte,
        alreadyPopulated: r.alreadyPopulated,
        warnings: [...r.warnings],
      };
    }),

    listDevices: unary<ListDevicesRequest, ListDevicesResponse>(d, `${SVC}/ListDevices`, "optional", () => ({
      pagemaps: [...k.phys.pagemaps.values()]
        .sort((a, b) => a.id - b.id)
        .map((pm) => {
          const rec = d.registry.pagemaps.get(pm.id);
          return {
            pgmapId: pm.id,
            name: pm.name,
            type: memoryTypeToProto(pm.type as MmMemoryType),
            pfnStart: pm.startPfn,
            nrPages: pm.nrPages,
            owner: pm.owner,
            folioOrder: rec?.folioOrder ?? 0,
            ownerSessionId: rec?.ownerSession ?? 0,
            pagesInUse: pm.allocated,
            orphaned: rec?.orphaned ?? false,
          };
        }),
      pfnRanges: [...k.phys.pfnRanges.values()]
        .sort((a, b) => a.id - b.id)
        .map((r) => ({
          pfnRangeId: r.id,
          name: r.name,
          pfnStart: r.startPfn,
          nrPages: r.nrPages,
          ownerSessionId: d.registry.pfnRanges.get(r.id)?.ownerSession ?? 0,
          vmaCount: pfnRangeVmas(k, r.id).length,
        })),
    })),
  };
}
