/**
 * AddressSpaceService (address_space.proto): mms, files and the mmap family.
 * Every RPC but ListMms is mutating and needs the session header.
 */
import {
  checkMmsLimit,
  checkVmasLimit,
  forkVmaGrowth,
  madviseVmaGrowth,
  mmapVmaGrowth,
  mprotectVmaGrowth,
  munmapVmaGrowth,
} from "./limits.js";
import {
  MAP_ANONYMOUS,
  MAP_FIXED,
  MAP_FIXED_NOREPLACE,
  MAP_HUGE_MASK,
  MAP_HUGE_SHIFT,
  MAP_HUGETLB,
  MAP_NORESERVE,
  MAP_POPULATE,
  MAP_PRIVATE,
  MAP_SHARED,
  PAGE_SIZE,
  PMD_SIZE,
  PROT_EXEC,
  PROT_READ,
  PROT_WRITE,
  PUD_SIZE,
} from "../mm/constants.js";
import { closeFile, createFile, doMadvise, doMmap, doMprotect, doMunmap, exitMm, forkMm, resizeFile } from "../mm/mmap.js";
import type { MmapRequest as ModelMmapRequest } from "../mm/mmap.js";
import { FileKind as MmFileKind } from "../mm/vma.js";
import {
  type AddressSpaceServiceServer,
  type CloseFileRequest,
  type CloseFileResponse,
  type CreateFileRequest,
  type CreateFileResponse,
  type CreateMmRequest,
  type CreateMmResponse,
  DeviceMapping,
  type ExitMmRequest,
  type ExitMmResponse,
  FileKind,
  type ForkMmRequest,
  type ForkMmResponse,
  type ListMmsRequest,
  type ListMmsResponse,
  type MadviseRequest,
  type MadviseResponse,
  type MmapRequest,
  type MmapResponse,
  type MprotectRequest,
  type MprotectResponse,
  type MunmapRequest,
  type MunmapResponse,
  type ResizeFileRequest,
  type ResizeFileResponse,
} from "../gen/mmsim/v1/address_space.js";
import { SessionNoticeKind } from "../gen/mmsim/v1/session.js";
import { ERRNO, errnoError, invalidArgument, notFoundError } from "./errors.js";
import { runModelOp, type ServiceDeps, unary } from "./handler.js";
import { knownFile, liveMm } from "./lookup.js";
import { enumValue, mask, objectId, pageAligned, positive, u64 } from "./validate.js";

const SVC = "AddressSpaceService";

const PROT_MASK = PROT_READ | PROT_WRITE | PROT_EXEC;
const MAP_HUGE_FIELD = MAP_HUGE_MASK << MAP_HUGE_SHIFT;
const MAP_MASK = MAP_SHARED | MAP_PRIVATE | MAP_FIXED | MAP_ANONYMOUS | MAP_NORESERVE | MAP_POPULATE | MAP_HUGETLB | MAP_FIXED_NOREPLACE | MAP_HUGE_FIELD;
/** log2 of the huge page sizes MAP_HUGE_2MB / MAP_HUGE_1GB encode. */
const MAP_HUGE_LOGS = [0, 21, 30];
/** MADV_NORMAL, RANDOM, SEQUENTIAL, WILLNEED (no effect) and enum Madvice. */
const MADVICE_VALUES = [0, 1, 2, 3, 4, 8, 10, 11, 14, 15, 18, 19, 22, 23, 24];
const FILE_KINDS = [FileKind.FILE_KIND_SHMEM, FileKind.FILE_KIND_HUGETLB, FileKind.FILE_KIND_DIRTY_TRACKED, FileKind.FILE_KIND_FSDAX];
const FILE_KIND_TO_MODEL: Record<number, MmFileKind> = {
  [FileKind.FILE_KIND_SHMEM]: MmFileKind.SHMEM,
  [FileKind.FILE_KIND_HUGETLB]: MmFileKind.HUGETLB,
  [FileKind.FILE_KIND_DIRTY_TRACKED]: MmFileKind.DIRTY_TRACKED,
  [FileKind.FILE_KIND_FSDAX]: MmFileKind.FSDAX,
};

export function addressSpaceService(d: ServiceDeps): AddressSpaceServiceServer {
  const k = d.kernel;

  /** A file created by CreateFile whose creator reference is still held. */
  const openFile = (id: number, field: string) => {
    objectId(id, field);
    const rec = d.registry.files.get(id);
    if (rec === undefined) notFoundError(`file ${id}`);
    if (rec.closed) errnoError(ERRNO.EBADF, `file ${id} is closed`);
    return knownFile(k, id);
  };

  /** Validate MmapRequest and build the model's request (nothing changes on error). */
  const mmapRequest = (req: MmapRequest): ModelMmapRequest => {
    u64(req.addr, "addr");
    positive(req.length, "length");
    mask(req.prot, PROT_MASK, "prot");
    mask(req.flags, MAP_MASK, "flags");
    const type = req.flags & (MAP_SHARED | MAP_PRIVATE);
    if (type !== MAP_SHARED && type !== MAP_PRIVATE) invalidArgument("flags must contain exactly one of MAP_SHARED (0x1) and MAP_PRIVATE (0x2)");
    const hugeLog = (req.flags >>> MAP_HUGE_SHIFT) & MAP_HUGE_MASK;
    if (!MAP_HUGE_LOGS.includes(hugeLog)) invalidArgument(`flags: MAP_HUGE field ${hugeLog} is neither MAP_HUGE_2MB (21) nor MAP_HUGE_1GB (30)`);
    u64(req.fileId, "file_id");
    pageAligned(req.offset, "offset");
    const anon = (req.flags & MAP_ANONYMOUS) !== 0;
    const dev = req.device;
    if (dev !== undefined && anon) invalidArgument("device is set but flags contain MAP_ANONYMOUS");
    if (req.fileId !== 0 && anon) invalidArgument("file_id must be 0 with MAP_ANONYMOUS");
    if (req.fileId !== 0 && dev !== undefined) invalidArgument("file_id must be 0 for a device mapping");
    if (req.fileId === 0 && !anon && dev === undefined) errnoError(ERRNO.EBADF, "no file_id, no MAP_ANONYMOUS and no device");
    if (req.fileId !== 0) openFile(req.fileId, "file_id");
    if (dev === undefined) return { addr: req.addr, length: req.length, prot: req.prot, flags: req.flags, fileId: req.fileId, offset: req.offset, device: null };

    const kind = enumValue(dev.kind, [DeviceMapping.DEVICE_MAPPING_PFNMAP, DeviceMapping.DEVICE_MAPPING_MIXEDMAP], "device.kind");
    if (dev.pfnRangeId !== undefined && dev.basePfn !== undefined) invalidArgument("device: set at most one of pfn_range_id and base_pfn");
    const pgoff = req.offset / PAGE_SIZE;
    // The model's fault handler maps va -> basePfn + vm_pgoff + (va - vm_start) / 4096.
    let basePfn = -1;
    let pfnRangeId = 0;
    if (dev.pfnRangeId !== undefined) {
      pfnRangeId = objectId(dev.pfnRangeId, "device.pfn_range_id");
      const r = k.phys.pfnRanges.get(pfnRangeId);
      if (r === undefined) notFoundError(`pfn range ${pfnRangeId}`);
      const pages = Math.ceil(req.length / PAGE_SIZE);
      if (pgoff + pages > r.nrPages)
        invalidArgument(`offset + length (${pgoff + pages} pages) exceeds pfn range ${pfnRangeId} (${r.nrPages} pages)`);
      basePfn = r.startPfn;
    } else if (dev.basePfn !== undefined) {
      u64(dev.basePfn, "device.base_pfn");
      basePfn = dev.basePfn - pgoff;
      if (basePfn < 0) invalidArgument(`device.base_pfn ${dev.basePfn} below offset / 4096 (${pgoff}) is not supported`);
    }
    if (dev.hugeFault) {
      if (basePfn < 0) invalidArgument("device.huge_fault needs a pfn_range_id or base_pfn");
      if (kind !== DeviceMapping.DEVICE_MAPPING_PFNMAP) invalidArgument("device.huge_fault needs kind PFNMAP");
      if (type !== MAP_SHARED) invalidArgument("device.huge_fault needs MAP_SHARED");
    }
    return {
      addr: req.addr,
      length: req.length,
      prot: req.prot,
      flags: req.flags,
      fileId: 0,
      offset: req.offset,
      device: { kind: kind === DeviceMapping.DEVICE_MAPPING_PFNMAP ? "pfnmap" : "mixedmap", pfnRangeId, basePfn, hugeFault: dev.hugeFault },
    };
  };

  return {
    createMm: unary<CreateMmRequest, CreateMmResponse>(d, `${SVC}/CreateMm`, "required", async (req, c) => {
      checkMmsLimit(d, k, c.sessionId);
      const mm = await runModelOp(k, [], "write", () => k.createMm(req.name, c.sessionId));
      return { mmId: mm.id };
    }),

    forkMm: unary<ForkMmRequest, ForkMmResponse>(d, `${SVC}/ForkMm`, "required", async (req, c) => {
      objectId(req.mmId, "mm_id");
      checkMmsLimit(d, k, c.sessionId);
      const child = await runModelOp(k, [req.mmId], "write", () => {
        const parent = liveMm(k, req.mmId);
        checkVmasLimit(d, k, c.sessionId, forkVmaGrowth(parent), "ForkMm");
        return forkMm(k, parent, req.name !== "" ? req.name : `${parent.name}-child`, c.sessionId);
      });
      d.registry.mmParent.set(child.id, req.mmId);
      return { childMmId: child.id };
    }),

    exitMm: unary<ExitMmRequest, ExitMmResponse>(d, `${SVC}/ExitMm`, "required", async (req) => {
      objectId(req.mmId, "mm_id");
      const owner = await runModelOp(k, [req.mmId], "write", () => {
        const mm = liveMm(k, req.mmId);
        exitMm(k, mm);
        return mm.ownerSession;
      });
      d.sessions.notify(owner, { kind: SessionNoticeKind.SESSION_NOTICE_KIND_MM_EXITED, mmId: req.mmId, message: "exit_mmap" });
      return {};
    }),

    listMms: unary<ListMmsRequest, ListMmsResponse>(d, `${SVC}/ListMms`, "optional", () => ({
      mms: [...k.mms.values()]
        .sort((a, b) => a.id - b.id)
        .map((mm) => ({
          mmId: mm.id,
          name: mm.name,
          ownerSessionId: mm.ownerSession,
          parentMmId: d.registry.mmParent.get(mm.id) ?? 0,
          exited: mm.exited,
          mapCount: mm.mapCount,
          rssFilePages: mm.rssFile,
          rssAnonPages: mm.rssAnon,
          rssSwapEntries: mm.rssSwap,
          rssShmemPages: mm.rssShmem,
          hasPinned: mm.hasPinned,
          hasHugeZeroFolio: mm.hugeZeroRef,
          mmUsers: mm.mmUsers,
          mmCount: mm.mmCount,
        })),
    })),

    createFile: unary<CreateFileRequest, CreateFileResponse>(d, `${SVC}/CreateFile`, "required", async (req, c) => {
      const kind = enumValue(req.kind, FILE_KINDS, "kind");
      u64(req.sizeBytes, "size_bytes");
      u64(req.hugePageSize, "huge_page_size");
      u64(req.pgmapId, "pgmap_id");
      if (kind === FileKind.FILE_KIND_HUGETLB) {
        const hps = req.hugePageSize === 0 ? PMD_SIZE : req.hugePageSize;
        if (hps !== PMD_SIZE && hps !== PUD_SIZE) invalidArgument(`huge_page_size ${req.hugePageSize} is neither 2097152 nor 1073741824`);
        if (req.sizeBytes % hps !== 0) invalidArgument(`size_bytes ${req.sizeBytes} is not a multiple of the huge page size ${hps}`);
      } else if (req.hugePageSize !== 0) invalidArgument("huge_page_size must be 0 unless kind is FILE_KIND_HUGETLB");
      if (kind === FileKind.FILE_KIND_FSDAX) {
        if (req.pgmapId === 0) invalidArgument("pgmap_id must be set for FILE_KIND_FSDAX");
      } else if (req.pgmapId !== 0) invalidArgument("pgmap_id must be 0 unless kind is FILE_KIND_FSDAX");
      const f = await runModelOp(k, [], "write", () =>
        createFile(
          k,
          { name: req.name, sizeBytes: req.sizeBytes, kind: FILE_KIND_TO_MODEL[kind]!, hugePageSize: req.hugePageSize, pgmapId: req.pgmapId },
          c.sessionId,
        ),
      );
      d.registry.files.set(f.id, { ownerSession: c.sessionId, closed: false });
      return { fileId: f.id };
    }),

    resizeFile: unary<ResizeFileRequest, ResizeFileResponse>(d, `${SVC}/ResizeFile`, "required", async (req) => {
      u64(req.sizeBytes, "size_bytes");
      openFile(req.fileId, "file_id");
      // unmap_mapping_range takes no mmap_lock: no mm is locked here.
      await runModelOp(k, [], "write", () => resizeFile(k, openFile(req.fileId, "file_id"), req.sizeBytes));
      return {};
    }),

    closeFile: unary<CloseFileRequest, CloseFileResponse>(d, `${SVC}/CloseFile`, "required", async (req) => {
      openFile(req.fileId, "file_id");
      await runModelOp(k, [], "write", () => {
        const f = openFile(req.fileId, "file_id");
        closeFile(k, f);
        d.registry.files.get(req.fileId)!.closed = true;
      });
      return {};
    }),

    mmap: unary<MmapRequest, MmapResponse>(d, `${SVC}/Mmap`, "required", async (req) => {
      objectId(req.mmId, "mm_id");
      mmapRequest(req);
      const addr = await runModelOp(k, [req.mmId], "write", () => {
        const mm = liveMm(k, req.mmId);
        const mr = mmapRequest(req);
        checkVmasLimit(d, k, mm.ownerSession, mmapVmaGrowth(mm, mr.addr, mr.length, mr.flags), "Mmap");
        return doMmap(k, mm, mr);
      });
      return { addr };
    }),

    munmap: unary<MunmapRequest, MunmapResponse>(d, `${SVC}/Munmap`, "required", async (req) => {
      objectId(req.mmId, "mm_id");
      pageAligned(req.addr, "addr");
      positive(req.length, "length");
      await runModelOp(k, [req.mmId], "write", () => {
        const mm = liveMm(k, req.mmId);
        checkVmasLimit(d, k, mm.ownerSession, munmapVmaGrowth(mm, req.addr, req.length), "Munmap");
        doMunmap(k, mm, req.addr, req.length);
      });
      return {};
    }),

    mprotect: unary<MprotectRequest, MprotectResponse>(d, `${SVC}/Mprotect`, "required", async (req) => {
      objectId(req.mmId, "mm_id");
      pageAligned(req.addr, "addr");
      u64(req.length, "length");
      mask(req.prot, PROT_MASK, "prot");
      await runModelOp(k, [req.mmId], "write", () => {
        const mm = liveMm(k, req.mmId);
        checkVmasLimit(d, k, mm.ownerSession, mprotectVmaGrowth(mm, req.addr, req.length, req.prot), "Mprotect");
        doMprotect(k, mm, req.addr, req.length, req.prot);
      });
      return {};
    }),

    madvise: unary<MadviseRequest, MadviseResponse>(d, `${SVC}/Madvise`, "required", async (req) => {
      objectId(req.mmId, "mm_id");
      pageAligned(req.addr, "addr");
      u64(req.length, "length");
      enumValue(req.advice, MADVICE_VALUES, "advice");
      await runModelOp(k, [req.mmId], "write", () => {
        const mm = liveMm(k, req.mmId);
        checkVmasLimit(d, k, mm.ownerSession, madviseVmaGrowth(mm, req.addr, req.length, req.advice), "Madvise");
        doMadvise(k, mm, req.addr, req.length, req.advice);
      });
      return {};
    }),
  };
}
