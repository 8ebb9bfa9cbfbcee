/**
 * GupService (gup.proto): the GUP family and the unpin family over gRPC.
 *
 * PinUserPages runs gupCall (src/mm/gup.ts) as one operation on the mm under
 * its mmap read lock; GUP outcomes travel in `ret`. Releases go through the
 * pin registry (src/mm/pins.ts) on behalf of the calling session: naming a
 * reference the session does not hold is the model's "precondition" error
 * (FAILED_PRECONDITION) and releases nothing. The long-term pin limit is the
 * model's memlock check ("exhausted": RESOURCE_EXHAUSTED, ENOMEM).
 *
 * Every reference a session holds is released at the "pins" stage of its
 * teardown (registerGupResources, called from here when the service is
 * built).
 */
import { batchFolios, batchRuns } from "../mm/pfn-batch.js";
import { GUP_VARIANTS, gupCall, type GupRequest, type GupVariant as MmGupVariant, isValidGupArgs } from "../mm/gup.js";
import { checkLongtermPinLimit } from "./limits.js";
import type { ReleaseResult } from "../mm/pins.js";
import { RUN_LONGTERM, RUN_NOOP, RUN_PIN, RUN_SAME } from "../mm/pins.js";
import {
  type GetPinStatsRequest,
  type GetPinStatsResponse,
  GupOutput,
  type GupServiceServer,
  GupVariant,
  type ListPinsRequest,
  type ListPinsResponse,
  type PinHandleInfo,
  type PinUserPagesRequest,
  type PinUserPagesResponse,
  type PutUserPagesRequest,
  type PutUserPagesResponse,
  type ReleaseCounts,
  type UnpinFoliosRequest,
  type UnpinFoliosResponse,
  type UnpinHandleRequest,
  type UnpinHandleResponse,
  type UnpinUserPageRangeRequest,
  type UnpinUserPageRangeResponse,
  type UnpinUserPagesRequest,
  type UnpinUserPagesResponse,
} from "../gen/mmsim/v1/gup.js";
import { invalidArgument } from "./errors.js";
import { modelOp, runModelOp, runModelRead, type ServiceDeps, thenMaybe, unary } from "./handler.js";
import { liveMm } from "./lookup.js";
import { objectId, u32, u64 } from "./validate.js";

const SVC = "GupService";

/** GUP_OUTPUT_PAGE_ARRAY limit per call (2 GiB of pages; ~2.5 MiB answer). */
export const MAX_PAGE_ARRAY_PAGES = 1 << 19;
/** Page-list releases take at most this many entries per call. */
export const MAX_RELEASE_ENTRIES = 1 << 22;

const VARIANTS: Partial<Record<GupVariant, MmGupVariant>> = {
  [GupVariant.GUP_VARIANT_PIN_USER_PAGES]: "pin_user_pages",
  [GupVariant.GUP_VARIANT_PIN_USER_PAGES_FAST]: "pin_user_pages_fast",
  [GupVariant.GUP_VARIANT_PIN_USER_PAGES_REMOTE]: "pin_user_pages_remote",
  [GupVariant.GUP_VARIANT_PIN_USER_PAGES_UNLOCKED]: "pin_user_pages_unlocked",
  [GupVariant.GUP_VARIANT_GET_USER_PAGES]: "get_user_pages",
  [GupVariant.GUP_VARIANT_GET_USER_PAGES_FAST]: "get_user_pages_fast",
  [GupVariant.GUP_VARIANT_GET_USER_PAGES_FAST_ONLY]: "get_user_pages_fast_only",
  [GupVariant.GUP_VARIANT_GET_USER_PAGES_REMOTE]: "get_user_pages_remote",
  [GupVariant.GUP_VARIANT_GET_USER_PAGES_UNLOCKED]: "get_user_pages_unlocked",
};

const OUTPUTS: Partial<Record<GupOutput, GupRequest["output"]>> = {
  [GupOutput.GUP_OUTPUT_UNSPECIFIED]: "ranges",
  [GupOutput.GUP_OUTPUT_RANGES]: "ranges",
  [GupOutput.GUP_OUTPUT_PAGE_ARRAY]: "pages",
  [GupOutput.GUP_OUTPUT_NONE]: "none",
};

function counts(r: ReleaseResult): ReleaseCounts {
  return { pages: r.pages, refUpdates: r.folios, foliosDirtied: r.dirtied };
}

function pfnList(v: readonly number[], field: string): number[] {
  if (v.length > MAX_RELEASE_ENTRIES) invalidArgument(`${field} has ${v.length} entries; at most ${MAX_RELEASE_ENTRIES} per call`);
  for (const p of v) u64(p, field);
  return v as number[];
}

/** The "pins" teardown stage: everything a session holds goes. */
function registerGupResources(d: ServiceDeps): void {
  const k = d.kernel;
  d.sessions.onRelease("pins", "release GUP references and pins", async (s) => {
    if (k.pins.sessionCounters(s.id).pinCount === 0) return;
    const r = await runModelOp(k, [], "write", () => k.pins.releaseSession(s.id));
    s.log.debug({ pages: r.pages, refUpdates: r.folios }, "session pins released");
  });
  d.sessions.addCounters((s) => {
    const c = k.pins.sessionCounters(s.id);
    return { pinCount: c.pinCount, pinnedPages: c.pinnedPages + c.getPages, lockedBytes: c.lockedBytes };
  });
}

export function gupService(d: ServiceDeps): GupServiceServer {
  const k = d.kernel;
  registerGupResources(d);
  return {
    pinUserPages: unary<PinUserPagesRequest, PinUserPagesResponse>(d, `${SVC}/PinUserPages`, "required", (req, c) => {
      const variant = VARIANTS[req.variant];
      if (variant === undefined) invalidArgument(`variant ${GupVariant[req.variant] ?? req.variant} is not a GupVariant`);
      const output = OUTPUTS[req.output];
      if (output === undefined) invalidArgument(`output ${req.output} is not a GupOutput`);
      objectId(req.mmId, "mm_id");
      u64(req.start, "start");
      u64(req.nrPages, "nr_pages");
      u32(req.gupFlags, "gup_flags");
      if (output === "pages" && req.nrPages > MAX_PAGE_ARRAY_PAGES)
        invalidArgument(`GUP_OUTPUT_PAGE_ARRAY of ${req.nrPages} pages exceeds ${MAX_PAGE_ARRAY_PAGES}; use GUP_OUTPUT_RANGES`);
      const wantPages = req.wantPages ?? true;
      const gr: GupRequest = {
        variant,
        start: req.start,
        nrPages: req.nrPages,
        gupFlags: req.gupFlags,
        wantPages,
        output,
        session: c.sessionId,
        folioSegments: output === "ranges" && req.wantFolioRuns,
      };
      if (req.locked !== undefined) gr.locked = req.locked;
      return thenMaybe(modelOp(k, [req.mmId], "read", () => {
          const mm = liveMm(k, req.mmId);
          const info = GUP_VARIANTS[variant];
          const flags = isValidGupArgs(req.gupFlags >>> 0, info.set, wantPages, info.remote ? gr.locked : undefined);
          if (typeof flags === "number") checkLongtermPinLimit(d, k, c.sessionId, flags, req.nrPages);
          return gupCall(k, mm, gr);
        }), (r): PinUserPagesResponse => {
        const ranges = output === "ranges" && r.ret > 0 ? batchRuns(r.ranges) : [];
        const folioRuns =
          output === "ranges" && req.wantFolioRuns && r.ret > 0 ? batchFolios(r.ranges).map((f) => ({ headPfn: f.head, pfn: f.pfn, count: f.count })) : [];
        return {
          ret: r.ret,
          handle: r.handle,
          ranges,
          folioRuns,
          pages: r.pages !== null ? Array.from(r.pages) : [],
          refUpdates: r.refUpdates,
          fastPinned: r.fastPinned,
          warning: r.warning,
        };
      });
    }),

    unpinHandle: unary<UnpinHandleRequest, UnpinHandleResponse>(d, `${SVC}/UnpinHandle`, "required", (req, c) => {
      objectId(req.handle, "handle");
      if (req.first !== undefined) u64(req.first, "first");
      if (req.count !== undefined) u64(req.count, "count");
      return thenMaybe(modelOp(k, [], "write", () => k.pins.releaseHandle(c.sessionId, req.handle, req.first, req.count, req.makeDirty)), (r) => ({
        released: counts(r),
      }));
    }),

    unpinUserPages: unary<UnpinUserPagesRequest, UnpinUserPagesResponse>(d, `${SVC}/UnpinUserPages`, "required", async (req, c) => {
      const pages = pfnList(req.pages, "pages");
      const r = await runModelOp(k, [], "write", () => k.pins.releasePages(c.sessionId, pages, pages.length, "pin", req.makeDirty));
      return { released: counts(r) };
    }),

    unpinUserPageRange: unary<UnpinUserPageRangeRequest, UnpinUserPageRangeResponse>(d, `${SVC}/UnpinUserPageRange`, "required", async (req, c) => {
      u64(req.firstPfn, "first_pfn");
      u64(req.nrPages, "nr_pages");
      const r = await runModelOp(k, [], "write", () => k.pins.unpinPfnRange(c.sessionId, req.firstPfn, req.nrPages, req.makeDirty));
      return { released: counts(r) };
    }),

    unpinFolios: unary<UnpinFoliosRequest, UnpinFoliosResponse>(d, `${SVC}/UnpinFolios`, "required", async (req, c) => {
      const folios = pfnList(req.folios, "folios");
      u64(req.npagesEach, "npages_each");
      const each = req.npagesEach === 0 ? 1 : req.npagesEach;
      const r = await runModelOp(k, [], "write", () => k.pins.unpinFolios(c.sessionId, folios, folios.length, each));
      return { released: counts(r) };
    }),

    putUserPages: unary<PutUserPagesRequest, PutUserPagesResponse>(d, `${SVC}/PutUserPages`, "required", async (req, c) => {
      const pages = pfnList(req.pages, "pages");
      const r = await runModelOp(k, [], "write", () => k.pins.releasePages(c.sessionId, pages, pages.length, "get", false));
      return { released: counts(r) };
    }),

    listPins: unary<ListPinsRequest, ListPinsResponse>(d, `${SVC}/ListPins`, "optional", async (req) => {
      u64(req.sessionId, "session_id");
      return runModelRead(k, [], () => {
        const handles: PinHandleInfo[] = [];
        for (const id of k.pins.handleIds(req.sessionId)) {
          const h = k.pins.handleInfo(id);
          if (h === undefined) continue;
          handles.push({
            handle: h.id,
            sessionId: h.session,
            mmId: h.mmId,
            nrPages: h.nrPages,
            livePages: h.livePages,
            pins: h.pins,
            gets: h.gets,
            runs: req.includeRuns
              ? h.runs.map((r) => ({
                  pfn: r.pfn,
                  count: r.count,
                  headPfn: r.head,
                  index: r.idx,
                  pin: (r.flags & RUN_PIN) !== 0,
                  longterm: (r.flags & RUN_LONGTERM) !== 0,
                  // RUN_SAME: FOLL_GET references to the zero page, `count` of the one PFN
                  zeroPage: (r.flags & (RUN_NOOP | RUN_SAME)) !== 0,
                }))
              : [],
          });
        }
        return { handles };
      });
    }),

    getPinStats: unary<GetPinStatsRequest, GetPinStatsResponse>(d, `${SVC}/GetPinStats`, "optional", async (req) => {
      u64(req.sessionId, "session_id");
      const s = req.sessionId !== 0 ? k.pins.sessionCounters(req.sessionId) : { pinCount: 0, pinnedPages: 0, getPages: 0, lockedBytes: 0 };
      return {
        nrFollPinAcquired: k.vmstat.nr_foll_pin_acquired,
        nrFollPinReleased: k.vmstat.nr_foll_pin_released,
        outstandingPins: k.pins.outstandingPins,
        sessionHandles: s.pinCount,
        sessionPinnedPages: s.pinnedPages,
        sessionGetPages: s.getPages,
        sessionLockedBytes: s.lockedBytes,
      };
    }),
  };
}
