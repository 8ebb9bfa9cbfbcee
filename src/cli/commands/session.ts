/** SessionService commands: sessions, session-create, session-close, attach. */
import type { ServiceError, StatusObject } from "@grpc/grpc-js";
import {
  AttachSessionResponse,
  CloseSessionRequest,
  CreateSessionRequest,
  CreateSessionResponse,
  ListSessionsResponse,
  SessionServiceService as S,
  sessionNoticeKindToJSON,
} from "../../gen/mmsim/v1/session.js";
import { describeError } from "../conn.js";
import { enumName, size, table } from "../format.js";
import type { CommandSpec } from "../registry.js";
import { parseNumber } from "../values.js";

const group = "SessionService";

export const sessionCommands: CommandSpec[] = [
  {
    name: "sessions",
    group,
    summary: "list live sessions (ListSessions)",
    async run(ctx) {
      const r = await ctx.call(S.listSessions, {});
      if (ctx.json) return ctx.printJson(ListSessionsResponse.toJSON(r));
      ctx.out(
        table(
          ["ID", "NAME", "TENANT", "KIND", "STREAMS", "MMS", "FILES", "PINS", "PINNED", "NOTIFIERS", "MIRRORS", "LOCKED"],
          r.sessions.map((s) => [
            s.sessionId,
            s.name,
            s.tenant,
            s.persistent ? "persistent" : "attached",
            s.attachedStreams,
            s.mmCount,
            s.fileCount,
            s.pinCount,
            s.pinnedPages,
            s.notifierCount,
            s.mirrorCount,
            size(s.lockedBytes),
          ]),
          [true, false, false, false, true, true, true, true, true, true, true, true],
        ),
      );
    },
  },
  {
    name: "session-create",
    group,
    summary: "create a session and print its id (CreateSession)",
    args: ["NAME"],
    options: { ephemeral: { type: "bool", help: "non-persistent: ends after the attach grace period unless a stream attaches" } },
    async run(ctx, a) {
      const r = await ctx.call(S.createSession, CreateSessionRequest.fromPartial({ name: a.pos.NAME, persistent: a.opts.ephemeral !== true }));
      if (ctx.json) return ctx.printJson(CreateSessionResponse.toJSON(r));
      ctx.out(String(r.sessionId));
    },
  },
  {
    name: "session-close",
    group,
    summary: "end a session and release what it owns (CloseSession); default: the CLI session",
    args: ["[ID]"],
    async run(ctx, a) {
      const id = a.pos.ID !== undefined ? parseNumber(a.pos.ID, "ID") : await ctx.sessionId();
      await ctx.call(S.closeSession, CloseSessionRequest.fromPartial({ sessionId: id }));
      if (ctx.json) return ctx.printJson({ sessionId: id, closed: true });
      ctx.out(`session ${id} closed`);
    },
  },
  {
    name: "attach",
    group,
    summary: "attach to a session and print its notices until it ends (AttachSession); default: the CLI session",
    args: ["[ID]"],
    details: "Runs until the session ends or the command is interrupted (Ctrl-C).",
    async run(ctx, a) {
      const id = a.pos.ID !== undefined ? parseNumber(a.pos.ID, "ID") : await ctx.sessionId();
      const call = ctx.conn.serverStream(S.attachSession, { sessionId: id });
      const stop = () => call.cancel();
      process.once("SIGINT", stop);
      try {
        const st = await new Promise<StatusObject>((resolve, reject) => {
          call.on("data", (m: AttachSessionResponse) => {
            if (ctx.json) return ctx.printJson(AttachSessionResponse.toJSON(m));
            if (m.attached) ctx.out(`attached to session ${m.attached.sessionId} (${m.attached.attachedStreams} stream(s))`);
            else if (m.notice) {
              const n = m.notice;
              const extra = [n.mmId ? `mm=${n.mmId}` : "", n.objectId ? `object=${n.objectId}` : "", n.count ? `count=${n.count}` : ""].filter(Boolean);
              ctx.out(`${enumName(sessionNoticeKindToJSON(n.kind), "SESSION_NOTICE_KIND_")}${extra.length ? ` ${extra.join(" ")}` : ""}: ${n.message}`);
            }
          });
          call.on("status", resolve);
          call.on("error", (e: ServiceError) => {
            if (e.code !== 1 /* CANCELLED */) reject(e);
          });
        });
        if (!ctx.json) ctx.out(`stream ended: ${st.details || "OK"}`);
      } catch (e) {
        ctx.err(describeError(e as ServiceError));
        return 1;
      } finally {
        process.off("SIGINT", stop);
      }
    },
  },
];
