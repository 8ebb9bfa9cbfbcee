/**
 * Thin wrappers that turn `async (req, call) => res` into grpc-js handlers:
 * request decode failures become INVALID_ARGUMENT, the session is resolved
 * from metadata when the RPC needs one, errors are mapped in one place
 * (errors.ts), and each RPC logs one debug line (method, duration, code).
 */
import { type handleUnaryCall, type Metadata, type ServiceDefinition, status } from "@grpc/grpc-js";
import type { Logger } from "pino";
import type { Kernel } from "../mm/kernel.js";
import type { DaemonConfig } from "./config.js";
import { invalidArgument, toStatus } from "./errors.js";
import type { Registry } from "./registry.js";
import type { Session, SessionManager } from "./session.js";

export { runModelOp, runModelRead } from "./model-op.js";

/** What every service implementation gets. */
export interface ServiceDeps {
  kernel: Kernel;
  sessions: SessionManager;
  registry: Registry;
  log: Logger;
  config: DaemonConfig;
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
          return m.requestDeserialize(buf);
        } catch (e) {
          return new DecodeFailure(e instanceof Error ? e.message : String(e));
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
  return (call, callback) => {
    const t0 = performance.now();
    let session: Session | undefined;
    const run = async (): Promise<Res> => {
      const req = checkDecoded<Req>(call.request as Req | DecodeFailure);
      if (need === "required") session = d.sessions.resolve(call.metadata);
      const info: CallInfo = { method, session, sessionId: session?.id ?? 0, metadata: call.metadata };
      const p = (async () => fn(req, info))();
      return session !== undefined ? d.sessions.track(session, p) : p;
    };
    run().then(
      (res) => {
        d.log.debug({ method, ms: +(performance.now() - t0).toFixed(3), code: "OK", session: session?.id }, "rpc");
        callback(null, res);
      },
      (err: unknown) => {
        const st = toStatus(err);
        if (st.internal) d.log.error({ method, err, session: session?.id }, "internal error");
        d.log.debug(
          { method, ms: +(performance.now() - t0).toFixed(3), code: status[st.code], errno: st.errno, session: session?.id, details: st.details },
          "rpc",
        );
        callback({ code: st.code, details: st.details, metadata: st.metadata });
      },
    );
  };
}
