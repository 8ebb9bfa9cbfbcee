/** SessionService (session.proto). Session ids travel in the request body. */
import { type handleServerStreamingCall, status } from "@grpc/grpc-js";
import {
  type AttachSessionRequest,
  type AttachSessionResponse,
  type CloseSessionRequest,
  type CloseSessionResponse,
  type CreateSessionRequest,
  type CreateSessionResponse,
  type ListSessionsRequest,
  type ListSessionsResponse,
  type SessionServiceServer,
} from "../gen/mmsim/v1/session.js";
import { callerOf } from "./auth.js";
import { toStatus } from "./errors.js";
import { checkDecoded, type DecodeFailure, observeStream, rpcProbe, type ServiceDeps, unary } from "./handler.js";
import type { Session, SessionStream } from "./session.js";
import { runTraced } from "./trace.js";
import { u64 } from "./validate.js";

const SVC = "SessionService";

export function sessionService(d: ServiceDeps): SessionServiceServer {
  const attachProbe = rpcProbe(d, `${SVC}/AttachSession`, "server_stream");
  const attachSession: handleServerStreamingCall<AttachSessionRequest, AttachSessionResponse> = (call) => {
    const method = `${SVC}/AttachSession`;
    const handled = observeStream(attachProbe);
    let session: Session | undefined;
    let finished = false;
    const stream: SessionStream = {
      write: (msg) => {
        if (!finished) call.write(msg);
      },
      end: () => {
        if (finished) return;
        finished = true;
        handled(status.OK);
        call.end();
      },
    };
    /** step of this stream's open in the trace being recorded, or 0 */
    let traceStream = 0;
    const gone = () => {
      handled(status.CANCELLED);
      // The close's record waits for the release it may start, whose
      // invalidations of other sessions' mirrors are part of its result.
      const tc = session !== undefined && !finished ? d.trace?.streamCloseBegin(method, session.id, traceStream) : undefined;
      const s = session;
      if (s !== undefined) runTraced(tc, () => d.sessions.detach(s, stream));
      if (tc !== undefined) void (s?.ended ?? Promise.resolve()).then(() => tc.tracer.finishStream(tc));
      finished = true;
    };
    call.on("cancelled", gone);
    call.on("error", gone);
    try {
      const req = checkDecoded(call.request as AttachSessionRequest | DecodeFailure);
      u64(req.sessionId, "session_id");
      d.tenancy?.checkAttach(req, call.metadata);
      session = d.sessions.attach(req.sessionId, stream);
      if (d.trace?.recording) traceStream = d.trace.streamOpen(method, session.id, req, Buffer.alloc(0));
      d.log.debug({ method, session: session.id, code: "OK", streams: session.streams.size }, "rpc stream attached");
    } catch (err) {
      const st = toStatus(err);
      if (st.internal) d.log.error({ method, err }, "internal error");
      d.log.warn({ method, code: status[st.code], errno: st.errno, details: st.details }, "rpc refused");
      finished = true;
      handled(st.code);
      call.emit("error", { code: st.code, details: st.details, metadata: st.metadata });
    }
  };

  return {
    createSession: unary<CreateSessionRequest, CreateSessionResponse>(d, `${SVC}/CreateSession`, "none", (req, c) => {
      const s = d.sessions.create(req.name, req.persistent, callerOf(c.metadata).tenant);
      d.tenancy?.sessionCreated(s);
      return { sessionId: s.id };
    }),

    attachSession,

    closeSession: unary<CloseSessionRequest, CloseSessionResponse>(d, `${SVC}/CloseSession`, "none", async (req) => {
      u64(req.sessionId, "session_id");
      await d.sessions.close(req.sessionId);
      return {};
    }),

    listSessions: unary<ListSessionsRequest, ListSessionsResponse>(d, `${SVC}/ListSessions`, "none", () => ({
      sessions: d.sessions.list().map((s) => {
        const c = d.sessions.counters(s);
        return {
          sessionId: s.id,
          name: s.name,
          persistent: s.persistent,
          attachedStreams: s.streams.size,
          mmCount: c.mmCount,
          pinCount: c.pinCount,
          pinnedPages: c.pinnedPages,
          fileCount: c.fileCount,
          notifierCount: c.notifierCount,
          mirrorCount: c.mirrorCount,
          lockedBytes: c.lockedBytes,
          tenant: s.tenant,
        };
      }),
    })),
  };
}
