/**
 * Thin wrappers that turn `async (req, call) => res` into grpc-js handlers:
 * request decode failures become INVALID_ARGUMENT, the session is resolved
 * from metadata when the RPC needs one, errors are mapped in one place
 * (errors.ts), and each RPC logs one line: debug for answered calls, warn
 * for refused ones (undecodable request, bad session, kernel-bug misuse),
 * on the calling session's child logger when there is one. Each call also
 * reports to the RPC observer (metrics.ts) through a probe resolved once per
 * method, so a call costs two prebound counter updates and no label work.
 */
import { type handleUnaryCall, type Metadata, type ServiceDefinition, status } from "@grpc/grpc-js";
import type { Logger } from "pino";
import type { Kernel } from "../mm/kernel.js";
import type { DaemonConfig } from "./config.js";
import { invalidArgument, toStatus } from "./errors.js";
import type { Registry } from "./registry.js";
import type { Session, SessionManager } from "./session.js";
import type { Tenancy } from "./tenancy.js";
import { headerSessionId, rawRequests, runTraced, type TraceCall, type Tracer } from "./trace.js";

export { modelOp, runModelOp, runModelRead, thenMaybe } from "./model-op.js";

/** What every service implementation gets. */
export interface ServiceDeps {
  kernel: Kernel;
  sessions: SessionManager;
  registry: Registry;
  log: Logger;
  config: DaemonConfig;
  /** Per-method call observer (metrics); absent = not observed. */
  rpc?: RpcObserver;
  /** Trace recorder (trace.ts); absent = never traced. */
  trace?: Tracer;
  /** Tenant isolation (tenancy.ts); absent = authentication off, every caller sees everything. */
  tenancy?: Tenancy;
}

/** grpc_type label values, as go-grpc-prometheus names them. */
export type RpcType = "unary" | "client_stream" | "server_stream" | "bidi_stream";

/** Observer of one method's calls, resolved once when its handler is built. */
export interface RpcProbe {
  started(): void;
  handled(code: status, seconds: number): void;
}

export interface RpcObserver {
  /** `method` is "Service/Method" of package mmsim.v1, or a full "pkg.Service/Method". */
  probe(method: string, type: RpcType): RpcProbe;
}

const NO_PROBE: RpcProbe = { started: () => {}, handled: () => {} };

export function rpcProbe(d: ServiceDeps, method: string, type: RpcType): RpcProbe {
  return d.rpc?.probe(method, type) ?? NO_PROBE;
}

/**
 * Start observing a streaming call; the returned function records its final
 * code (OK when the server ends it, CANCELLED when the client goes away)
 * once, whichever path reports first.
 */
export function observeStream(probe: RpcProbe): (code: status) => void {
  probe.started();
  const t0 = performance.now();
  let done = false;
  return (code) => {
    if (done) return;
    done = true;
    probe.handled(code, (performance.now() - t0) / 1000);
  };
}

/** A status a client caused by misuse rather than a simulated errno outcome. */
function isKernelBug(details: string): boolean {
  return details.includes("kernel-bug:");
}

/**
 * "required": mutating RPC, the `mmsim-session` header must name a live
 * session. "optional": read-only RPC, the header is ignored. "none":
 * SessionService (the session travels in the body).
 */
export type SessionRequirement = "required" | "optional" | "none";

export interface CallInfo {
  /** "Service/Method", for messages. */
  method: string;
  /** The calling session ("required" RPCs only). */
  session: Session | undefined;
  /** Its id, or 0. */
  sessionId: number;
  metadata: Metadata;
}

/**
 * Marks a request that could not be decoded (a uint64 at or above 2^53, a
 * truncated message): grpc-js would answer INTERNAL, the contract wants
 * INVALID_ARGUMENT with EINVAL.
 */
export class DecodeFailure {
  constructor(readonly reason: string) {}
}

/** A copy of `def` whose request decoders report DecodeFailure instead of throwing. */
export function withSafeDecode<D extends ServiceDefinition>(def: D): D {
  const out: Record<string, unknown> = {};
  for (const [name, m] of Object.entries(def)) {
    out[name] = {
      ...m,
      requestDeserialize: (buf: Buffer) => {
        try {
          const req = m.requestDeserialize(buf);
          if (rawRequests.on > 0 && typeof req === "object" && req !== null) rawRequests.map.set(req, buf);
          return req;
        } catch (e) {
          const failure = new DecodeFailure(e instanceof Error ? e.message : String(e));
          if (rawRequests.on > 0) rawRequests.map.set(failure, buf);
          return failure;
        }
      },
    };
  }
  return out as D;
}

/** Throw INVALID_ARGUMENT if the request failed to decode. */
export function checkDecoded<Req>(req: Req | DecodeFailure): Req {
  if (req instanceof DecodeFailure) invalidArgument(`cannot decode the request: ${req.reason}`);
  return req;
}

export function unary<Req, Res>(
  d: ServiceDeps,
  method: string,
  need: SessionRequirement,
  fn: (req: Req, call: CallInfo) => Promise<Res> | Res,
): handleUnaryCall<Req, Res> {
  const probe = rpcProbe(d, method, "unary");
  const guard = d.tenancy?.guard(method);
  const answered = (session: Session | undefined, t0: number, res: Res, callback: (e: null, r: Res) => void, tc?: TraceCall): void => {
    if (tc !== undefined) tc.tracer.finishOk(tc, res);
    const ms = performance.now() - t0;
    probe.handled(status.OK, ms / 1000);
    const log = session?.log ?? d.log;
    if (log.isLevelEnabled("debug")) log.debug({ method, ms: +ms.toFixed(3), code: "OK" }, "rpc");
    callback(null, res);
  };
  const failed = (
    session: Session | undefined,
    t0: number,
    refused: boolean,
    err: unknown,
    callback: (e: { code: status; details: string; metadata?: Metadata }) => void,
    tc?: TraceCall,
  ): void => {
    const ms = performance.now() - t0;
    const st = toStatus(err);
    if (tc !== undefined) tc.tracer.finishErr(tc, st.code, st.errno ?? 0, st.details);
    probe.handled(st.code, ms / 1000);
    const log = session?.log ?? d.log;
    if (st.internal) log.error({ method, err }, "internal error");
    if (refused || isKernelBug(st.details))
      log.warn({ method, ms: +ms.toFixed(3), code: status[st.code], errno: st.errno, details: st.details }, "rpc refused");
    else if (log.isLevelEnabled("debug"))
      log.debug({ method, ms: +ms.toFixed(3), code: status[st.code], errno: st.errno, details: st.details }, "rpc");
    callback({ code: st.code, details: st.details, metadata: st.metadata });
  };
  return (call, callback) => {
    probe.started();
    const t0 = performance.now();
    let session: Session | undefined;
    // true until the request is decoded and its session resolved
    let refused = true;
    let out: Promise<Res> | Res;
    const tc = d.trace?.recording ? d.trace.begin(method, call.request, need === "required" ? headerSessionId(call.metadata.get("mmsim-session")[0]) : 0) : undefined;
    try {
      const req = checkDecoded<Req>(call.request as Req | DecodeFailure);
      if (need === "required") session = d.sessions.resolve(call.metadata);
      if (guard !== undefined) guard.check(req, call.metadata);
      refused = false;
      const info: CallInfo = { method, session, sessionId: session?.id ?? 0, metadata: call.metadata };
      out = tc === undefined ? fn(req, info) : runTraced(tc, () => fn(req, info));
    } catch (err) {
      failed(session, t0, refused, err, callback, tc);
      return;
    }
    // Fast path: fn answered synchronously (nothing left in flight to track).
    if (!(out instanceof Promise)) {
      answered(session, t0, guard !== undefined ? guard.filter(out, call.metadata) : out, callback, tc);
      return;
    }
    const p = session !== undefined ? d.sessions.track(session, out) : out;
    p.then(
      (res) => answered(session, t0, guard !== undefined ? guard.filter(res, call.metadata) : res, callback, tc),
      (err: unknown) => failed(session, t0, false, err, callback, tc),
    );
  };
}
