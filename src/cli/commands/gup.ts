/**
 * GupService commands: pin (PinUserPages), unpin (UnpinHandle, or
 * UnpinUserPageRange with --pfn), pins (ListPins with GetPinStats).
 */
import {
  GetPinStatsRequest,
  GetPinStatsResponse,
  GupOutput,
  GupServiceService as S,
  GupVariant,
  ListPinsRequest,
  ListPinsResponse,
  PinUserPagesRequest,
  PinUserPagesResponse,
  UnpinHandleRequest,
  UnpinHandleResponse,
  UnpinUserPageRangeRequest,
  UnpinUserPageRangeResponse,
} from "../../gen/mmsim/v1/gup.js";
import { hex0x, size, table } from "../format.js";
import { type CommandSpec, UsageError } from "../registry.js";
import { optNumber, parseNumber, parsePages } from "../values.js";

const group = "GupService";

const VARIANTS = [
  "pin_user_pages",
  "pin_user_pages_fast",
  "pin_user_pages_remote",
  "pin_user_pages_unlocked",
  "get_user_pages",
  "get_user_pages_fast",
  "get_user_pages_fast_only",
  "get_user_pages_remote",
  "get_user_pages_unlocked",
] as const;
const VARIANT: Record<(typeof VARIANTS)[number], GupVariant> = {
  pin_user_pages: GupVariant.GUP_VARIANT_PIN_USER_PAGES,
  pin_user_pages_fast: GupVariant.GUP_VARIANT_PIN_USER_PAGES_FAST,
  pin_user_pages_remote: GupVariant.GUP_VARIANT_PIN_USER_PAGES_REMOTE,
  pin_user_pages_unlocked: GupVariant.GUP_VARIANT_PIN_USER_PAGES_UNLOCKED,
  get_user_pages: GupVariant.GUP_VARIANT_GET_USER_PAGES,
  get_user_pages_fast: GupVariant.GUP_VARIANT_GET_USER_PAGES_FAST,
  get_user_pages_fast_only: GupVariant.GUP_VARIANT_GET_USER_PAGES_FAST_ONLY,
  get_user_pages_remote: GupVariant.GUP_VARIANT_GET_USER_PAGES_REMOTE,
  get_user_pages_unlocked: GupVariant.GUP_VARIANT_GET_USER_PAGES_UNLOCKED,
};
const FOLL_WRITE = 0x1;
const FOLL_LONGTERM = 0x100;
const ERRNO_NAMES: Record<number, string> = { 1: "EPERM", 4: "EINTR", 11: "EAGAIN", 12: "ENOMEM", 14: "EFAULT", 16: "EBUSY", 17: "EEXIST", 22: "EINVAL", 75: "EOVERFLOW", 95: "EOPNOTSUPP", 121: "EREMOTEIO", 133: "EHWPOISON" };

export const gupCommands: CommandSpec[] = [
  {
    name: "pin",
    group,
    summary: "pin or get user pages (PinUserPages); prints the handle and the PFN ranges",
    args: ["MM", "ADDR", "LENGTH"],
    options: {
      variant: { type: "string", value: "NAME", help: `kernel function (default pin_user_pages): ${VARIANTS.join(", ")}` },
      write: { type: "bool", help: "FOLL_WRITE" },
      longterm: { type: "bool", help: "FOLL_LONGTERM" },
      flags: { type: "string", value: "N", help: "further raw FOLL_* bits (external values)" },
      folios: { type: "bool", help: "also print the folio boundaries" },
    },
    details: "LENGTH is bytes with a size suffix (2M) or a page count without. The references stay held by the CLI session until `mmsim unpin` or `mmsim session-close`.",
    async run(ctx, a) {
      const vname = (typeof a.opts.variant === "string" ? a.opts.variant : "pin_user_pages").trim().toLowerCase().replace(/-/g, "_");
      const variant = VARIANT[vname as (typeof VARIANTS)[number]];
      if (variant === undefined) throw new UsageError(`variant "${String(a.opts.variant)}" unknown (known: ${VARIANTS.join(", ")})`);
      const flags = optNumber(a.opts.flags, "--flags", 0) | (a.opts.write === true ? FOLL_WRITE : 0) | (a.opts.longterm === true ? FOLL_LONGTERM : 0);
      const req = PinUserPagesRequest.fromPartial({
        variant,
        mmId: parseNumber(a.pos.MM, "MM"),
        start: parseNumber(a.pos.ADDR, "ADDR"),
        nrPages: parsePages(a.pos.LENGTH, "LENGTH"),
        gupFlags: flags >>> 0,
        output: GupOutput.GUP_OUTPUT_RANGES,
        wantFolioRuns: a.opts.folios === true,
      });
      const r = await ctx.call(S.pinUserPages, req, { session: true });
      if (ctx.json) return ctx.printJson(PinUserPagesResponse.toJSON(r));
      const ret = r.ret < 0 ? `-${ERRNO_NAMES[-r.ret] ?? -r.ret}` : String(r.ret);
      ctx.out(`ret=${ret} handle=${r.handle} ref_updates=${r.refUpdates}${r.fastPinned ? ` fast=${r.fastPinned}` : ""}${r.warning ? ` warning="${r.warning}"` : ""}`);
      for (const run of r.ranges) ctx.out(`  pfn ${hex0x(run.pfn)}-${hex0x(run.pfn + run.count)} ${run.count} pages (${size(run.count * 4096)})`);
      for (const f of r.folioRuns) ctx.out(`  folio ${hex0x(f.headPfn)}: pfn ${hex0x(f.pfn)} +${f.count}`);
    },
  },
  {
    name: "unpin",
    group,
    summary: "release a handle, or a part of it (UnpinHandle); with --pfn N a PFN range (UnpinUserPageRange)",
    args: ["HANDLE_OR_PFN"],
    options: {
      pfn: { type: "string", value: "N", help: "HANDLE_OR_PFN is a first PFN; release N pages from it" },
      first: { type: "string", value: "I", help: "first page of the handle to release" },
      count: { type: "string", value: "N", help: "pages of the handle to release" },
      dirty: { type: "bool", help: "make_dirty (unpin_user_pages_dirty_lock)" },
    },
    async run(ctx, a) {
      const id = parseNumber(a.pos.HANDLE_OR_PFN, "HANDLE_OR_PFN");
      const makeDirty = a.opts.dirty === true;
      let released;
      if (a.opts.pfn !== undefined) {
        if (a.opts.first !== undefined || a.opts.count !== undefined) throw new UsageError("unpin: --pfn excludes --first and --count");
        const r = await ctx.call(S.unpinUserPageRange, UnpinUserPageRangeRequest.fromPartial({ firstPfn: id, nrPages: optNumber(a.opts.pfn, "--pfn", 1), makeDirty }), { session: true });
        if (ctx.json) return ctx.printJson(UnpinUserPageRangeResponse.toJSON(r));
        released = r.released;
      } else {
        const req = UnpinHandleRequest.fromPartial({
          handle: id,
          first: a.opts.first !== undefined ? optNumber(a.opts.first, "--first", 0) : undefined,
          count: a.opts.count !== undefined ? optNumber(a.opts.count, "--count", 0) : undefined,
          makeDirty,
        });
        const r = await ctx.call(S.unpinHandle, req, { session: true });
        if (ctx.json) return ctx.printJson(UnpinHandleResponse.toJSON(r));
        released = r.released;
      }
      ctx.out(`released ${released?.pages ?? 0} pages (${released?.refUpdates ?? 0} folio updates, ${released?.foliosDirtied ?? 0} dirtied)`);
    },
  },
  {
    name: "pins",
    group,
    summary: "list held GUP handles (ListPins) and the pin counters (GetPinStats)",
    options: {
      "of-session": { type: "string", value: "ID", help: "only the handles of this session id (default: all)" },
      runs: { type: "bool", help: "also list each handle's runs" },
    },
    async run(ctx, a) {
      const sessionId = optNumber(a.opts["of-session"], "--of-session", 0);
      const l = await ctx.call(S.listPins, ListPinsRequest.fromPartial({ sessionId, includeRuns: a.opts.runs === true }));
      const s = await ctx.call(S.getPinStats, GetPinStatsRequest.fromPartial({ sessionId }));
      if (ctx.json) return ctx.printJson({ ...(ListPinsResponse.toJSON(l) as object), stats: GetPinStatsResponse.toJSON(s) });
      ctx.out(`nr_foll_pin_acquired ${s.nrFollPinAcquired}, nr_foll_pin_released ${s.nrFollPinReleased}, outstanding ${s.outstandingPins}`);
      if (l.handles.length === 0) return;
      ctx.out(
        table(
          ["HANDLE", "SESSION", "MM", "PAGES", "LIVE", "PINS", "GETS"],
          l.handles.map((h) => [h.handle, h.sessionId, h.mmId, h.nrPages, h.livePages, h.pins, h.gets]),
          [true, true, true, true, true, true, true],
        ),
      );
      for (const h of l.handles)
        for (const r of h.runs) ctx.out(`  ${h.handle}: [${r.index}] pfn ${hex0x(r.pfn)} +${r.count} folio ${hex0x(r.headPfn)} ${r.pin ? "pin" : "get"}${r.longterm ? " longterm" : ""}${r.zeroPage ? " zero" : ""}`);
    },
  },
];
