/**
 * InspectService (inspect.proto): read-only views. No session needed. Per-mm
 * views take the mm's lock for read, so they see the state between two
 * operations on it; CheckInvariants also waits until no operation is waiting
 * for device acknowledgements (half-finished operations are not violations).
 */
import { getFolio, getMaps, getMeminfo, getSmaps, getVmstat, type VmaInfo as MmVmaInfo, walkPageTable } from "../mm/inspect.js";
import { checkInvariants } from "../mm/invariants.js";
import {
  type CheckInvariantsRequest,
  type CheckInvariantsResponse,
  type GetFolioRequest,
  type GetFolioResponse,
  type GetMapsRequest,
  type GetMapsResponse,
  type GetMeminfoRequest,
  type GetMeminfoResponse,
  type GetSmapsRequest,
  type GetSmapsResponse,
  type GetVmstatRequest,
  type GetVmstatResponse,
  type InspectServiceServer,
  type PageTableEntryKind,
  type VmaInfo,
  type WalkPageTableRequest,
  type WalkPageTableResponse,
} from "../gen/mmsim/v1/inspect.js";
import { PAGE_SIZE } from "../mm/constants.js";
import { levelToProto, memoryTypeToProto, migrateTypeToProto, zoneToProto } from "./convert.js";
import { invalidArgument } from "./errors.js";
import { runModelRead, type ServiceDeps, unary } from "./handler.js";
import { knownMm, liveMm } from "./lookup.js";
import { modelOps } from "./model-op.js";
import { objectId, u32, u64 } from "./validate.js";

const SVC = "InspectService";
/** WalkPageTableRequest.max_runs 0 means this many. */
export const DEFAULT_MAX_RUNS = 65536;

function vmaToProto(v: MmVmaInfo): VmaInfo {
  return { start: v.start, end: v.end, perms: v.perms, vmFlags: v.vmFlags, pgoff: v.pgoff, fileId: v.fileId, name: v.name, anonVma: v.anonVma };
}

export function inspectService(d: ServiceDeps): InspectServiceServer {
  const k = d.kernel;
  return {
    getMaps: unary<GetMapsRequest, GetMapsResponse>(d, `${SVC}/GetMaps`, "optional", async (req) => {
      objectId(req.mmId, "mm_id");
      return runModelRead(k, [req.mmId], () => {
        const mm = knownMm(k, req.mmId);
        return { vmas: mm.exited ? [] : getMaps(k, mm).map(vmaToProto) };
      });
    }),

    getSmaps: unary<GetSmapsRequest, GetSmapsResponse>(d, `${SVC}/GetSmaps`, "optional", async (req) => {
      objectId(req.mmId, "mm_id");
      return runModelRead(k, [req.mmId], () => {
        const mm = knownMm(k, req.mmId);
        if (mm.exited) return { vmas: [] };
        return {
          vmas: getSmaps(k, mm).map((s) => ({
            vma: vmaToProto(s.vma),
            sizeKib: s.sizeKib,
            rssKib: s.rssKib,
            pssKib: s.pssKib,
            sharedCleanKib: s.sharedCleanKib,
            sharedDirtyKib: s.sharedDirtyKib,
            privateCleanKib: s.privateCleanKib,
            privateDirtyKib: s.privateDirtyKib,
            referencedKib: s.referencedKib,
            anonymousKib: s.anonymousKib,
            anonHugePagesKib: s.anonHugePagesKib,
            shmemPmdMappedKib: s.shmemPmdMappedKib,
            filePmdMappedKib: s.filePmdMappedKib,
            sharedHugetlbKib: s.sharedHugetlbKib,
            privateHugetlbKib: s.privateHugetlbKib,
            swapKib: s.swapKib,
            lockedKib: s.lockedKib,
            thpEligible: s.thpEligible,
            vmFlagsMnemonics: s.vmFlagsMnemonics,
          })),
        };
      });
    }),

    walkPageTable: unary<WalkPageTableRequest, WalkPageTableResponse>(d, `${SVC}/WalkPageTable`, "optional", async (req) => {
      objectId(req.mmId, "mm_id");
      u64(req.start, "start");
      u64(req.end, "end");
      u32(req.maxRuns, "max_runs");
      if (req.end <= req.start) invalidArgument(`end 0x${req.end.toString(16)} must be > start 0x${req.start.toString(16)}`);
      const start = req.start - (req.start % PAGE_SIZE);
      const end = Math.ceil(req.end / PAGE_SIZE) * PAGE_SIZE;
      if (!Number.isSafeInteger(end)) invalidArgument("end out of range");
      const maxRuns = req.maxRuns === 0 ? DEFAULT_MAX_RUNS : req.maxRuns;
      const w = await runModelRead(k, [req.mmId], () => walkPageTable(k, liveMm(k, req.mmId), start, end, maxRuns));
      return {
        runs: w.runs.map((r) => ({
          level: levelToProto(r.level),
          addr: r.addr,
          nr: r.nr,
          pfn: r.pfn,
          // EntryKind uses the proto's PageTableEntryKind values.
          kind: r.kind as number as PageTableEntryKind,
          write: r.write,
          young: r.young,
          dirty: r.dirty,
          special: r.special,
          anonExclusive: r.anonExclusive,
          marker: r.marker,
        })),
        truncated: w.truncated,
        nextAddr: w.truncated ? w.nextAddr : end,
        pudTables: w.pudTables,
        pmdTables: w.pmdTables,
        pteTables: w.pteTables,
      };
    }),

    getFolio: unary<GetFolioRequest, GetFolioResponse>(d, `${SVC}/GetFolio`, "optional", (req) => {
      u64(req.pfn, "pfn");
      const f = getFolio(k, req.pfn);
      const page = f.hasStructPage;
      return {
        pfn: f.pfn,
        hasStructPage: f.hasStructPage,
        headPfn: page ? f.headPfn : 0,
        order: f.order,
        refcount: f.refcount,
        mapcount: f.mapcount,
        pageMapcount: f.pageMapcount,
        largeMapcount: f.largeMapcount,
        entireMapcount: f.entireMapcount,
        pincount: f.pincount,
        maybeDmaPinned: f.maybeDmaPinned,
        anon: f.anon,
        anonExclusive: f.anonExclusive,
        dirty: f.dirty,
        referenced: f.referenced,
        lru: f.lru,
        large: f.large,
        zeroPage: f.zeroPage,
        hugeZero: f.hugeZero,
        device: memoryTypeToProto(f.device),
        // A raw PFN has every field zero except pfn_range_id (inspect.proto).
        zone: page ? zoneToProto(f.zone) : 0,
        migratetype: page && f.device === 0 ? migrateTypeToProto(f.migratetype) : 0,
        free: f.free,
        hugetlb: f.hugetlb,
        fileId: f.fileId,
        fileIndex: f.fileIndex,
        pgmapId: f.pgmapId,
        pfnRangeId: f.pfnRangeId,
        longtermPinnable: f.longtermPinnable,
      };
    }),

    getVmstat: unary<GetVmstatRequest, GetVmstatResponse>(d, `${SVC}/GetVmstat`, "optional", () => ({ counters: getVmstat(k) })),

    getMeminfo: unary<GetMeminfoRequest, GetMeminfoResponse>(d, `${SVC}/GetMeminfo`, "optional", () => {
      const m = getMeminfo(k);
      return {
        zones: m.zones.map((z) => ({
          zone: zoneToProto(z.zone),
          startPfn: z.startPfn,
          nrPages: z.nrPages,
          freePages: z.freePages,
          cmaPages: z.cmaPages,
          freeBlocksByOrder: [...z.freeBlocksByOrder],
        })),
        totalPages: m.totalPages,
        freePages: m.freePages,
        giganticFoliosInUse: m.giganticFoliosInUse,
      };
    }),

    checkInvariants: unary<CheckInvariantsRequest, CheckInvariantsResponse>(d, `${SVC}/CheckInvariants`, "optional", async (req) => {
      if (req.mmId !== undefined) {
        objectId(req.mmId, "mm_id");
        knownMm(k, req.mmId);
      }
      await modelOps(k).whenQuiescent();
      const r = checkInvariants(k, req.mmId);
      return {
        violations: r.violations.map((v) => ({ code: v.code, message: v.message, pfn: v.pfn, mmId: v.mmId ?? 0, addr: v.addr })),
        foliosChecked: r.foliosChecked,
        mmsChecked: r.mmsChecked,
      };
    }),
  };
}
