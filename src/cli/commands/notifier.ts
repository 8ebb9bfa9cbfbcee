/**
 * NotifierService and HmmService commands: a client mirror that watches
 * invalidations (watch: Subscribe, InsertIntervalNotifier, acknowledgements),
 * interval notifiers (notifier-insert, notifier-remove, notifiers),
 * the sequence protocol (read-begin, read-retry), the OOM reaper (reap),
 * hmm_range_fault (hmm-fault) and make_device_exclusive (make-exclusive).
 */
import type { ServiceError, StatusObject } from "@grpc/grpc-js";
import { HmmOutput, HmmRangeFaultRequest, HmmRangeFaultResponse, HmmServiceService as H, MakeDeviceExclusiveRequest, MakeDeviceExclusiveResponse } from "../../gen/mmsim/v1/hmm.js";
import {
  InsertIntervalNotifierRequest,
  InsertIntervalNotifierResponse,
  type Invalidation,
  ListIntervalNotifiersRequest,
  ListIntervalNotifiersResponse,
  mmuNotifyEventToJSON,
  NotifierServiceService as S,
  ReadBeginRequest,
  ReadBeginResponse,
  ReadRetryRequest,
  ReadRetryResponse,
  ReapMmRequest,
  ReapMmResponse,
  RemoveIntervalNotifierRequest,
  RemoveIntervalNotifierResponse,
  SubscribeRequest,
  SubscribeResponse,
} from "../../gen/mmsim/v1/notifier.js";
import { errnoName } from "../../mm/errors.js";
import { describeError } from "../conn.js";
import { enumName, hex0x, size, table } from "../format.js";
import { type CommandSpec, UsageError } from "../registry.js";
import { optNumber, parseNumber } from "../values.js";

const group = "NotifierService";
const hmmGroup = "HmmService";

/** Largest address the daemon accepts (ULONG_MAX stands as 2^53 - 1). */
const RANGE_END_ALL = Number.MAX_SAFE_INTEGER;

const HMM_PFN_VALID = 0x8000_0000;
const HMM_PFN_WRITE = 0x4000_0000;
const HMM_PFN_ERROR = 0x2000_0000;
const HMM_PFN_DMA_MAPPED = 0x1000_0000;
const HMM_PFN_ORDER_SHIFT_HI = 21;
const HMM_PFN_ORDER_MASK_HI = 0x1f << HMM_PFN_ORDER_SHIFT_HI;

/** "valid|write" etc. of the high word of an hmm_pfns entry (order not included). */
export function hmmFlagsText(flags: number): string {
  const f = flags >>> 0;
  const out: string[] = [];
  if (f & HMM_PFN_VALID) out.push("valid");
  if (f & HMM_PFN_WRITE) out.push("write");
  if (f & HMM_PFN_ERROR) out.push("error");
  if (f & HMM_PFN_DMA_MAPPED) out.push("dma");
  const rest = f & ~(HMM_PFN_VALID | HMM_PFN_WRITE | HMM_PFN_ERROR | HMM_PFN_DMA_MAPPED | HMM_PFN_ORDER_MASK_HI);
  if (rest !== 0) out.push(hex0x(rest >>> 0));
  return out.length > 0 ? out.join("|") : "-";
}

function errnoText(e: number): string {
  return e === 0 ? "0" : errnoName(e);
}

/** One line per invalidation: "unmap mm 1 [0x7f0000000000, 0x7f0000200000) seq 3 notifiers 4 blockable id 1". */
export function invalidationLine(inv: Invalidation): string {
  const ev = enumName(mmuNotifyEventToJSON(inv.event), "MMU_NOTIFY_EVENT_");
  const range = inv.wholeAddressSpace ? "[0, ULONG_MAX)" : `[${hex0x(inv.start)}, ${hex0x(inv.end)})`;
  const flags = [inv.blockable ? "blockable" : "non-blockable", inv.owner !== 0 ? `owner=${hex0x(inv.owner)}` : ""].filter(Boolean).join(" ");
  return `${ev} mm ${inv.mmId} ${range} seq ${inv.seq} notifiers ${inv.notifierIds.join(",")} ${flags} id ${inv.invalidationId}`;
}

function parseRange(a: { pos: Record<string, string | undefined> }): { start: number; length: number } {
  if (a.pos.ADDR === undefined) return { start: 0, length: RANGE_END_ALL };
  const start = parseNumber(a.pos.ADDR, "ADDR");
  if (a.pos.LENGTH === undefined) throw new UsageError("LENGTH is needed with ADDR");
  return { start, length: parseNumber(a.pos.LENGTH, "LENGTH") };
}

export const notifierCommands: CommandSpec[] = [
  {
    name: "watch",
    group,
    summary: "open a client mirror, watch an mm range and print each invalidation as it arrives, acknowledging it (Subscribe)",
    args: ["MM", "[ADDR]", "[LENGTH]"],
    options: {
      count: { type: "string", value: "N", help: "stop after N invalidations (default: until Ctrl-C)" },
      name: { type: "string", value: "NAME", help: "mirror name shown in logs (default mmsim-watch)" },
      refuse: { type: "bool", help: "refuse non-blockable invalidations (OOM reaper) instead of acknowledging them" },
    },
    details:
      "Without ADDR and LENGTH the whole address space is watched. The first line is `watching mm MM [START, END) mirror M notifier N`; then one line per invalidation: event, mm, [start, end), seq, the mirror's notifiers it hit, blockable or not, owner, id. With --json: one JSON object per line (the Invalidation message).",
    async run(ctx, a) {
      const mmId = parseNumber(a.pos.MM, "MM");
      const { start, length } = parseRange(a);
      const limit = a.opts.count !== undefined ? optNumber(a.opts.count, "--count", 1) : Infinity;
      if (limit < 1) throw new UsageError("--count must be at least 1");
      const md = ctx.conn.withToken(await ctx.sessionMetadata());
      const call = ctx.conn.client.makeBidiStreamRequest(
        S.subscribe.path,
        S.subscribe.requestSerialize,
        S.subscribe.responseDeserialize,
        md,
        {},
      );
      let seen = 0;
      let failure: ServiceError | null = null;
      let stopped = false;
      const stop = () => {
        if (stopped) return;
        stopped = true;
        call.end();
      };
      process.once("SIGINT", stop);
      try {
        const st = await new Promise<StatusObject>((resolve) => {
          call.on("status", resolve);
          call.on("error", (e: ServiceError) => {
            if (e.code !== 1 /* CANCELLED */) failure = e;
          });
          call.on("data", (m: SubscribeResponse) => {
            if (m.subscribed !== undefined) {
              const mirrorId = m.subscribed.mirrorId;
              ctx.conn
                .unary(S.insertIntervalNotifier, InsertIntervalNotifierRequest.fromPartial({ mirrorId, mmId, start, length }), md)
                .then((r) => {
                  if (ctx.json) ctx.printJson({ watching: { mmId, start, end: start + length, mirrorId, notifierId: r.notifierId, seq: r.seq } });
                  else ctx.out(`watching mm ${mmId} ${length === RANGE_END_ALL ? "[0, ULONG_MAX)" : `[${hex0x(start)}, ${hex0x(start + length)})`} mirror ${mirrorId} notifier ${r.notifierId}`);
                })
                .catch((e: ServiceError) => {
                  failure = e;
                  stop();
                });
              return;
            }
            if (m.dead !== undefined) {
              ctx.err(`mirror declared dead: ${m.dead.reason}`);
              return;
            }
            if (m.invalidations === undefined) return;
            const ack: number[] = [];
            const refused: number[] = [];
            for (const inv of m.invalidations.invalidations) {
              if (seen >= limit) break;
              seen++;
              if (ctx.json) ctx.printJson(SubscribeResponse.toJSON({ invalidations: { invalidations: [inv] } }));
              else ctx.out(invalidationLine(inv));
              (a.opts.refuse === true && !inv.blockable ? refused : ack).push(inv.invalidationId);
            }
            // Answer every invalidation received, also past --count, so no operation waits on us.
            for (const inv of m.invalidations.invalidations.slice(ack.length + refused.length)) ack.push(inv.invalidationId);
            if (!stopped) call.write(SubscribeRequest.fromPartial({ ack: { invalidationIds: ack, refusedIds: refused } }));
            if (seen >= limit) stop();
          });
          call.write(SubscribeRequest.fromPartial({ open: { name: typeof a.opts.name === "string" ? a.opts.name : "mmsim-watch" } }));
        });
        if (failure !== null) {
          ctx.err(describeError(failure));
          return 1;
        }
        if (st.code !== 0 && st.code !== 1) {
          ctx.err(`stream ended: ${st.details}`);
          return 1;
        }
        if (!ctx.json) ctx.out(`${seen} invalidation(s)`);
      } finally {
        process.off("SIGINT", stop);
      }
    },
  },
  {
    name: "notifier-insert",
    group,
    summary: "insert an interval notifier for an open client mirror (InsertIntervalNotifier)",
    args: ["MIRROR", "MM", "ADDR", "LENGTH"],
    details: "The mirror is a Subscribe stream another client (or `mmsim watch`) holds open.",
    async run(ctx, a) {
      const req = InsertIntervalNotifierRequest.fromPartial({
        mirrorId: parseNumber(a.pos.MIRROR, "MIRROR"),
        mmId: parseNumber(a.pos.MM, "MM"),
        start: parseNumber(a.pos.ADDR, "ADDR"),
        length: parseNumber(a.pos.LENGTH, "LENGTH"),
      });
      const r = await ctx.call(S.insertIntervalNotifier, req, { session: true });
      if (ctx.json) return ctx.printJson(InsertIntervalNotifierResponse.toJSON(r));
      ctx.out(`notifier ${r.notifierId} seq ${r.seq}${r.deferred ? " (insert deferred to the end of the running invalidation)" : ""}`);
    },
  },
  {
    name: "notifier-remove",
    group,
    summary: "remove an interval notifier (RemoveIntervalNotifier)",
    args: ["NOTIFIER"],
    async run(ctx, a) {
      const r = await ctx.call(S.removeIntervalNotifier, RemoveIntervalNotifierRequest.fromPartial({ notifierId: parseNumber(a.pos.NOTIFIER, "NOTIFIER") }), { session: true });
      if (ctx.json) return ctx.printJson(RemoveIntervalNotifierResponse.toJSON(r));
      ctx.out(`removed${r.waited ? " (waited for an invalidation in flight)" : ""}`);
    },
  },
  {
    name: "notifiers",
    group,
    summary: "list the interval notifiers of an mm and its sequence state (ListIntervalNotifiers)",
    args: ["MM"],
    async run(ctx, a) {
      const r = await ctx.call(S.listIntervalNotifiers, ListIntervalNotifiersRequest.fromPartial({ mmId: parseNumber(a.pos.MM, "MM") }));
      if (ctx.json) return ctx.printJson(ListIntervalNotifiersResponse.toJSON(r));
      ctx.out(`mm seq ${r.mmSeq}, ${r.mmActive} invalidation(s) in flight`);
      if (r.notifiers.length === 0) return;
      ctx.out(
        table(
          ["ID", "START", "LAST", "SEQ", "OWNER", "SESSION", "PENDING"],
          r.notifiers.map((n) => [n.notifierId, hex0x(n.start), hex0x(n.last), n.seq, n.mirrorId !== 0 ? `mirror ${n.mirrorId}` : `dmirror ${n.dmirrorId}`, n.sessionId, n.pendingInsert ? "yes" : "no"]),
          [true, true, true, true, false, true, false],
        ),
      );
    },
  },
  {
    name: "read-begin",
    group,
    summary: "mmu_interval_read_begin: the sequence to pass to hmm-fault and read-retry (ReadBegin)",
    args: ["NOTIFIER"],
    async run(ctx, a) {
      const r = await ctx.call(S.readBegin, ReadBeginRequest.fromPartial({ notifierId: parseNumber(a.pos.NOTIFIER, "NOTIFIER") }));
      if (ctx.json) return ctx.printJson(ReadBeginResponse.toJSON(r));
      ctx.out(`seq ${r.seq}${r.waited ? " (waited for an invalidation to end)" : ""}`);
    },
  },
  {
    name: "read-retry",
    group,
    summary: "mmu_interval_read_retry: did an invalidation start since read-begin? (ReadRetry)",
    args: ["NOTIFIER", "SEQ"],
    details: "Prints `retry` or `valid`; exit status 0 either way.",
    async run(ctx, a) {
      const r = await ctx.call(S.readRetry, ReadRetryRequest.fromPartial({ notifierId: parseNumber(a.pos.NOTIFIER, "NOTIFIER"), seq: parseNumber(a.pos.SEQ, "SEQ") }));
      if (ctx.json) return ctx.printJson(ReadRetryResponse.toJSON(r));
      ctx.out(`${r.retry ? "retry" : "valid"} (notifier seq ${r.notifierSeq})`);
    },
  },
  {
    name: "reap",
    group,
    summary: "run the OOM reaper on an mm (ReapMm)",
    args: ["MM"],
    async run(ctx, a) {
      const r = await ctx.call(S.reapMm, ReapMmRequest.fromPartial({ mmId: parseNumber(a.pos.MM, "MM") }), { session: true });
      if (ctx.json) return ctx.printJson(ReapMmResponse.toJSON(r));
      for (const v of r.vmas) ctx.out(`${hex0x(v.start)}-${hex0x(v.end)} ${v.reaped ? "reaped" : `skipped (${errnoText(v.errnoValue)})`}`);
      if (r.vmas.length === 0) ctx.out("nothing to reap");
    },
  },
  {
    name: "hmm-fault",
    group: hmmGroup,
    summary: "hmm_range_fault over [ADDR, ADDR+LENGTH) through a notifier, as a driver does (ReadBegin, HmmRangeFault, retry on EBUSY)",
    args: ["NOTIFIER", "ADDR", "LENGTH"],
    options: {
      write: { type: "bool", help: "HMM_PFN_REQ_WRITE (with fault)" },
      snapshot: { type: "bool", help: "no HMM_PFN_REQ_FAULT: report what is mapped, fault nothing" },
      seq: { type: "string", value: "N", help: "notifier sequence from read-begin (default: call ReadBegin, retry on EBUSY)" },
      owner: { type: "string", value: "N", help: "dev_private_owner" },
      "per-page": { type: "bool", help: "ask for per-page entries (printed merged into runs)" },
    },
    details:
      "Prints one line per run of pages with the same flags and consecutive PFNs: address range, pages, PFN, flags (valid, write, error), map order. An errno in the answer (EFAULT, EPERM, EBUSY with --seq) is printed as `errno=NAME` with exit status 0, as `pin` does.",
    async run(ctx, a) {
      if (a.opts.write === true && a.opts.snapshot === true) throw new UsageError("hmm-fault: --write and --snapshot exclude each other");
      const notifierId = parseNumber(a.pos.NOTIFIER, "NOTIFIER");
      const start = parseNumber(a.pos.ADDR, "ADDR");
      const end = start + parseNumber(a.pos.LENGTH, "LENGTH");
      const perPage = a.opts["per-page"] === true;
      const defaultFlags = a.opts.snapshot === true ? 0 : (HMM_PFN_VALID | (a.opts.write === true ? HMM_PFN_WRITE : 0)) >>> 0;
      let r: HmmRangeFaultResponse;
      let tries = 0;
      for (;;) {
        tries++;
        const seq = a.opts.seq !== undefined ? optNumber(a.opts.seq, "--seq", 0) : (await ctx.call(S.readBegin, ReadBeginRequest.fromPartial({ notifierId }))).seq;
        const req = HmmRangeFaultRequest.fromPartial({
          notifierId,
          notifierSeq: seq,
          start,
          end,
          defaultFlags,
          devPrivateOwner: optNumber(a.opts.owner, "--owner", 0),
          output: perPage ? HmmOutput.HMM_OUTPUT_PER_PAGE : HmmOutput.HMM_OUTPUT_COMPACT,
        });
        r = await ctx.call(H.hmmRangeFault, req, { session: true });
        if (r.errnoValue !== 16 /* EBUSY */ || a.opts.seq !== undefined || tries >= 16) break;
      }
      if (ctx.json) return ctx.printJson(HmmRangeFaultResponse.toJSON(r));
      let runs = r.runs.map((x) => ({ addr: x.addr, nrPages: x.nrPages, pfn: x.pfn, flags: x.flags, order: x.order, samePfn: x.samePfn }));
      if (perPage) {
        runs = [];
        const b = Buffer.from(r.hmmPfns);
        const n = Math.min(b.length / 8, Math.max(0, (r.last - start) / 4096));
        for (let i = 0; i < n; i++) {
          const lo = b.readUInt32LE(i * 8);
          const hi = b.readUInt32LE(i * 8 + 4);
          const pfn = (hi & 0x1fffff) * 2 ** 32 + lo;
          const flags = (hi & ~0x1fffff) >>> 0;
          const order = (hi & HMM_PFN_ORDER_MASK_HI) >>> HMM_PFN_ORDER_SHIFT_HI;
          const prev = runs[runs.length - 1];
          const valid = (flags & HMM_PFN_VALID) !== 0;
          if (prev !== undefined && prev.flags === flags && prev.order === order && (!valid || prev.pfn + prev.nrPages === pfn)) prev.nrPages++;
          else runs.push({ addr: start + i * 4096, nrPages: 1, pfn, flags, order, samePfn: false });
        }
      }
      ctx.out(`errno=${errnoText(r.errnoValue)} last=${hex0x(r.last)} walks=${r.walks} faults=${r.faults}${tries > 1 ? ` tries=${tries}` : ""}`);
      if (runs.length === 0) return;
      ctx.out(
        table(
          ["START", "END", "PAGES", "SIZE", "PFN", "FLAGS", "ORDER"],
          runs.map((x) => [hex0x(x.addr), hex0x(x.addr + x.nrPages * 4096), x.nrPages, size(x.nrPages * 4096), x.flags & HMM_PFN_VALID ? `${hex0x(x.pfn)}${x.samePfn ? " (same)" : ""}` : "-", hmmFlagsText(x.flags), x.order]),
          [false, false, true, true, false, false, true],
        ),
      );
    },
  },
  {
    name: "make-exclusive",
    group: hmmGroup,
    summary: "make_device_exclusive on one page (MakeDeviceExclusive)",
    args: ["MM", "ADDR"],
    options: { owner: { type: "string", value: "N", help: "owner cookie passed with MMU_NOTIFY_EXCLUSIVE (default 0 = NULL)" } },
    async run(ctx, a) {
      const r = await ctx.call(
        H.makeDeviceExclusive,
        MakeDeviceExclusiveRequest.fromPartial({ mmId: parseNumber(a.pos.MM, "MM"), addr: parseNumber(a.pos.ADDR, "ADDR"), owner: optNumber(a.opts.owner, "--owner", 0) }),
        { session: true },
      );
      if (ctx.json) return ctx.printJson(MakeDeviceExclusiveResponse.toJSON(r));
      ctx.out(r.errnoValue === 0 ? `exclusive: pfn ${hex0x(r.pfn)}` : `errno=${errnoText(r.errnoValue)}`);
    },
  },
];
