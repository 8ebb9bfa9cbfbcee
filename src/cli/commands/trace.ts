/**
 * TraceService commands (trace-start, trace-stop, trace-status) and
 * `replay`: feed a recorded trace into a daemon (a fresh in-process one by
 * default) and report the first step whose result differs.
 * Exit status of replay: 0 every step matches, 1 a step differs,
 * 2 the trace file is unusable.
 */
import {
  GetTraceStatusRequest,
  GetTraceStatusResponse,
  StartTraceRequest,
  StartTraceResponse,
  StopTraceRequest,
  StopTraceResponse,
  TraceServiceService as S,
} from "../../gen/mmsim/v1/trace.js";
import { DEFAULT_CONFIG, type DaemonConfig } from "../../server/config.js";
import type { Daemon } from "../../server/server.js";
import { readTraceFile, type TraceContents, TraceFormatError } from "../../trace/file.js";
import { describeMismatch, ReplayError, replayTrace } from "../../trace/replay.js";
import { type CommandSpec } from "../registry.js";

const group = "TraceService";

/** A fresh daemon configured as the recorded one (sizes, THP policy, limits), on a free loopback port. */
async function freshDaemon(trace: TraceContents): Promise<Daemon> {
  let recorded: Record<string, unknown> = {};
  try {
    recorded = JSON.parse(trace.header.configJson || "{}") as Record<string, unknown>;
  } catch {
    // a header without a usable configuration: defaults
  }
  // Loaded only here: other commands do not pay for the daemon's modules.
  const [{ createServer }, { REPLAYED_CONFIG }, { pino }] = await Promise.all([import("../../server/server.js"), import("../../server/trace.js"), import("pino")]);
  const config: DaemonConfig = { ...DEFAULT_CONFIG, listen: "127.0.0.1:0", metricsListen: "off", logLevel: "silent", trace: "" };
  for (const k of REPLAYED_CONFIG) if (typeof recorded[k] === typeof DEFAULT_CONFIG[k]) (config as unknown as Record<string, unknown>)[k] = recorded[k];
  return createServer(config, { logger: pino({ level: "silent" }) });
}

export const traceCommands: CommandSpec[] = [
  {
    name: "replay",
    group,
    summary: "replay a trace into a daemon and report the first step whose result differs",
    args: ["TRACE"],
    options: {
      target: { type: "string", value: "ADDR", help: "daemon to replay into (default: a fresh in-process daemon configured as the recorded one)" },
      verbose: { type: "bool", help: "print each matching step" },
    },
    details:
      "Exit status: 0 every step matches, 1 a step differs (its number, method, the recorded and the replayed result as JSON and the differing fields are printed), 2 the trace file is unusable. A torn last record (a daemon that died while writing) is reported on stderr and the complete records are replayed.",
    async run(ctx, a) {
      const path = a.pos.TRACE!;
      let trace: TraceContents;
      try {
        trace = readTraceFile(path);
      } catch (e) {
        if (!(e instanceof TraceFormatError)) throw e;
        ctx.err(`mmsim: replay: ${path}: ${e.message}`);
        return 2;
      }
      if (trace.torn !== undefined) ctx.err(`mmsim: replay: ${path}: torn last record (${trace.torn}); replaying the ${trace.records.length} complete records`);
      if (!trace.header.fromStart && !ctx.json) ctx.err("mmsim: replay: the trace was started at run time: objects created before it are missing from the replay");
      const target = typeof a.opts.target === "string" ? a.opts.target : undefined;
      const daemon = target === undefined ? await freshDaemon(trace) : undefined;
      try {
        const report = await replayTrace(trace, {
          target: target ?? daemon!.address,
          // a --target daemon is reached as the global options say (TLS, token)
          ...(target !== undefined
            ? { credentials: ctx.conn.channelCredentials, headers: ctx.conn.security.token ? { authorization: `Bearer ${ctx.conn.security.token}` } : {} }
            : {}),
          onStep: a.opts.verbose === true && !ctx.json ? (i, r) => ctx.out(`step ${r.seq} ok: ${r.method}`) : undefined,
        });
        if (ctx.json) ctx.printJson(report);
        else if (report.mismatch === undefined) ctx.out(`replayed ${report.matched} of ${report.records} steps: all match`);
        else {
          ctx.out(describeMismatch(report.mismatch));
          ctx.out(`${report.matched} of ${report.records} steps matched before it`);
        }
        return report.mismatch === undefined ? 0 : 1;
      } catch (e) {
        if (!(e instanceof ReplayError)) throw e;
        ctx.err(`mmsim: replay: ${path}: ${e.message}`);
        return 2;
      } finally {
        await daemon?.shutdown(1000);
      }
    },
  },
  {
    name: "trace-start",
    group,
    summary: "start recording every mutating call to FILE on the daemon's machine (StartTrace)",
    args: ["FILE"],
    async run(ctx, a) {
      const r = await ctx.call(S.startTrace, StartTraceRequest.fromPartial({ path: a.pos.FILE! }), { session: true });
      if (ctx.json) return ctx.printJson(StartTraceResponse.toJSON(r));
      ctx.out(`recording to ${a.pos.FILE}`);
    },
  },
  {
    name: "trace-stop",
    group,
    summary: "stop recording and close the trace file (StopTrace)",
    async run(ctx) {
      const r = await ctx.call(S.stopTrace, StopTraceRequest.fromPartial({}), { session: true });
      if (ctx.json) return ctx.printJson(StopTraceResponse.toJSON(r));
      ctx.out(`${r.records} records written to ${r.path}`);
    },
  },
  {
    name: "trace-status",
    group,
    summary: "is a trace being recorded, and where (GetTraceStatus)",
    async run(ctx) {
      const r = await ctx.call(S.getTraceStatus, GetTraceStatusRequest.fromPartial({}));
      if (ctx.json) return ctx.printJson(GetTraceStatusResponse.toJSON(r));
      ctx.out(r.recording ? `recording to ${r.path}: ${r.records} records written, ${r.pending} pending` : "not recording");
    },
  },
];
