/**
 * HmmService (hmm.proto): hmm_range_fault and make_device_exclusive for
 * client mirrors. Both run as operations on the mm under its mmap read lock
 * (faults inside may notify mirrors and wait for their answers).
 */
import { checkPagesLimit } from "./limits.js";
import { PAGE_SIZE } from "../mm/constants.js";
import { MmError } from "../mm/errors.js";
import { HMM_PFN_FLAGS_HI, type HmmRun, hmmPfnsFromBytes, hmmPfnsToBytes, hmmRangeFault } from "../mm/hmm.js";
import { makeDeviceExclusive } from "../mm/migrate-device.js";
import {
  HmmOutput,
  type HmmRangeFaultRequest,
  type HmmRangeFaultResponse,
  type HmmServiceServer,
  type MakeDeviceExclusiveRequest,
  type MakeDeviceExclusiveResponse,
} from "../gen/mmsim/v1/hmm.js";
import { invalidArgument } from "./errors.js";
import { runModelOp, type ServiceDeps, unary } from "./handler.js";
import { liveMm } from "./lookup.js";
import { notifierHub } from "./notifier-service.js";
import { objectId, pageAligned, u32, u64 } from "./validate.js";

const SVC = "HmmService";
/** Per-page output is 8 bytes a page: at most 64 GiB of range per call. */
export const MAX_PER_PAGE_PAGES = 1 << 24;

export function hmmService(d: ServiceDeps): HmmServiceServer {
  const k = d.kernel;
  const hub = notifierHub(d);
  return {
    hmmRangeFault: unary<HmmRangeFaultRequest, HmmRangeFaultResponse>(d, `${SVC}/HmmRangeFault`, "required", async (req) => {
      objectId(req.notifierId, "notifier_id");
      u64(req.notifierSeq, "notifier_seq");
      pageAligned(req.start, "start");
      pageAligned(req.end, "end");
      u32(req.defaultFlags, "default_flags");
      u32(req.pfnFlagsMask, "pfn_flags_mask");
      u64(req.devPrivateOwner, "dev_private_owner");
      if ((req.defaultFlags & ~HMM_PFN_FLAGS_HI) >>> 0 !== 0) invalidArgument("default_flags has bits below bit 53 (the pfn field)");
      const compact = req.output === HmmOutput.HMM_OUTPUT_COMPACT;
      if (req.output !== HmmOutput.HMM_OUTPUT_UNSPECIFIED && req.output !== HmmOutput.HMM_OUTPUT_PER_PAGE && !compact)
        invalidArgument(`output ${req.output} is not a HmmOutput`);
      const r = hub.notifier(req.notifierId);
      const npages = req.end > req.start ? (req.end - req.start) / PAGE_SIZE : 0;
      checkPagesLimit(d, npages, "(end - start) / 4096");
      if (compact && (req.pfnFlagsMask !== 0 || req.hmmPfns.length > 0))
        invalidArgument("compact output takes no per-page input: pfn_flags_mask must be 0 and hmm_pfns empty");
      if (!compact && npages > MAX_PER_PAGE_PAGES) invalidArgument(`per-page output of ${npages} pages exceeds ${MAX_PER_PAGE_PAGES}; use HMM_OUTPUT_COMPACT`);
      if (req.hmmPfns.length !== 0 && req.hmmPfns.length !== 8 * npages)
        invalidArgument(`hmm_pfns has ${req.hmmPfns.length} bytes; expected 0 or ${8 * npages} (8 per page)`);
      const pfns = compact ? null : req.hmmPfns.length > 0 ? hmmPfnsFromBytes(req.hmmPfns, npages) : new Uint32Array(2 * npages);
      const runs: HmmRun[] | null = compact ? [] : null;
      const res = await runModelOp(k, [r.mm.id], "read", () => {
        liveMm(k, r.mm.id);
        return hmmRangeFault(k, r.mm, {
          notifier: r.sub,
          notifierSeq: req.notifierSeq,
          start: req.start,
          end: req.end,
          hmmPfns: pfns,
          runs,
          defaultFlags: req.defaultFlags,
          pfnFlagsMask: req.pfnFlagsMask,
          devPrivateOwner: req.devPrivateOwner,
        });
      });
      return {
        errnoValue: -res.ret,
        hmmPfns: pfns === null ? Buffer.alloc(0) : asBuffer(hmmPfnsToBytes(pfns)),
        runs: runs ?? [],
        last: res.last,
        walks: res.walks,
        faults: res.faults,
      };
    }),

    makeDeviceExclusive: unary<MakeDeviceExclusiveRequest, MakeDeviceExclusiveResponse>(d, `${SVC}/MakeDeviceExclusive`, "required", async (req) => {
      objectId(req.mmId, "mm_id");
      u64(req.addr, "addr");
      u64(req.owner, "owner");
      return runModelOp(k, [req.mmId], "read", () => {
        const mm = liveMm(k, req.mmId);
        try {
          return { errnoValue: 0, pfn: makeDeviceExclusive(k, mm, req.addr, req.owner) };
        } catch (e) {
          if (e instanceof MmError && e.kind === "errno") return { errnoValue: e.errno, pfn: 0 };
          throw e;
        }
      });
    }),
  };
}

/** A Buffer over the same bytes (no copy). */
function asBuffer(u: Uint8Array): Buffer {
  return Buffer.from(u.buffer, u.byteOffset, u.byteLength);
}

