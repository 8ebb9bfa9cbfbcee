/**
 * Client sessions (session.proto): lifecycle, attached notice streams, the
 * attach grace period, resolution of the `mmsim-session` metadata, and the
 * ordered release of what a session owns when it ends.
 *
 * Lifecycle of one session (explicit states, as `Session.state`):
 *
 *   persistent      "persistent" --CloseSession / shutdown--> "ending" --> "ended"
 *   non-persistent  "pending" --first attach--> "attached"
 *                   "pending" --grace period, no attach--> "ending"
 *                   "attached" --last stream closed--> "ending"
 *                   "pending" / "attached" --CloseSession / shutdown--> "ending"
 *
 * While "ending": every stream gets SESSION_CLOSING; new calls naming the
 * session fail (UNAUTHENTICATED/ESRCH, or NOT_FOUND/ESRCH for SessionService);
 * the release hooks run stage by stage (RELEASE_ORDER); calls of the session
 * still in flight are awaited and the hooks run once more to release what
 * those calls created; then the streams finish with OK and the session is
 * "ended" and forgotten. Release never fails: a hook's error is logged and
 * the next hook runs (teardown never fails, as in the kernel).
 *
 * Daemon shutdown ends every session without running the release hooks:
 * the simulated kernel is discarded with the process.
 *
 * The manager knows nothing of the model: the owners of each kind of object
 * register release hooks and counters (session-resources.ts for mms, files,
 * PFN ranges and pagemaps; later features for pins, notifiers, mirrors).
 */
import { type Metadata, status } from "@grpc/grpc-js";
import type { Logger } from "pino";
import { type AttachSessionResponse, type SessionNotice, SessionNoticeKind } from "../gen/mmsim/v1/session.js";
import { ERRNO, StatusError } from "./errors.js";

export type SessionState = "pending" | "attached" | "persistent" | "ending" | "ended";

/** Release stages, in the order session.proto prescribes. */
export const RELEASE_ORDER = ["pins", "notifiers", "mms", "files", "pfn-ranges", "pagemaps"] as const;
export type ReleaseStage = (typeof RELEASE_ORDER)[number];

/** One open AttachSession stream. */
export interface SessionStream {
  write(msg: AttachSessionResponse): void;
  /** Finish the stream with status OK. */
  end(): void;
}

/** Per-session counts shown by ListSessions (summed over counter sources). */
export interface SessionCounters {
  mmCount: number;
  pinCount: number;
  pinnedPages: number;
  fileCount: number;
  notifierCount: number;
  mirrorCount: number;
  lockedBytes: number;
}

export type ReleaseHook = (session: Session) => Promise<void> | void;
export type CounterSource = (session: Session) => Partial<SessionCounters>;

/** The tenant of every session when authentication is off. */
export const DEFAULT_TENANT = "default";

export class Session {
  state: SessionState;
  readonly streams = new Set<SessionStream>();
  /** Calls of this session still running (awaited before the final release). */
  readonly inflight = new Set<Promise<unknown>>();
  graceTimer: NodeJS.Timeout | null = null;
  /** Settles when the session has ended (set when ending starts). */
  ended: Promise<void> | null = null;

  constructor(
    readonly id: number,
    readonly name: string,
    readonly persistent: boolean,
    /** Child logger bound to this session (session id and name on every line). */
    readonly log: Logger,
    /** Tenant of the caller that created it (DEFAULT_TENANT when authentication is off). */
    readonly tenant: string = DEFAULT_TENANT,
  ) {
    this.state = persistent ? "persistent" : "pending";
  }

  /** Usable: not ending or ended. */
  get live(): boolean {
    return this.state !== "ending" && this.state !== "ended";
  }
}

export interface SessionManagerOptions {
  /** attach grace period of non-persistent sessions, ms. */
  graceMs: number;
  log: Logger;
}

const SESSION_HEADER = "mmsim-session";

export class SessionManager {
  private readonly sessions = new Map<number, Session>();
  private nextId = 1;
  private readonly hooks = new Map<ReleaseStage, { name: string; fn: ReleaseHook }[]>(RELEASE_ORDER.map((s) => [s, []]));
  private readonly counterSources: CounterSource[] = [];
  private stopping = false;
  /**
   * Whether the caller of a call (its metadata) may use session `s`
   * (tenancy.ts sets it when authentication is on); a session it may not use
   * is refused exactly as an unknown one.
   */
  visible: ((md: Metadata, s: Session) => boolean) | null = null;

  constructor(private readonly opts: SessionManagerOptions) {}

  // ------------------------------------------------------------ extension

  /** Register what to release at `stage` when a session ends. */
  onRelease(stage: ReleaseStage, name: string, fn: ReleaseHook): void {
    this.hooks.get(stage)!.push({ name, fn });
  }

  /** Register a source of per-session counts for ListSessions. */
  addCounters(fn: CounterSource): void {
    this.counterSources.push(fn);
  }

  counters(s: Session): SessionCounters {
    const c: SessionCounters = { mmCount: 0, pinCount: 0, pinnedPages: 0, fileCount: 0, notifierCount: 0, mirrorCount: 0, lockedBytes: 0 };
    for (const src of this.counterSources) {
      const part = src(s);
      for (const k of Object.keys(part) as (keyof SessionCounters)[]) c[k] += part[k] ?? 0;
    }
    return c;
  }

  // ------------------------------------------------------------- lifecycle

  create(name: string, persistent: boolean, tenant: string = DEFAULT_TENANT): Session {
    if (this.stopping) throw new StatusError(status.UNAVAILABLE, ERRNO.EAGAIN, "the daemon is shutting down");
    const id = this.nextId++;
    const s = new Session(id, name, persistent, this.opts.log.child({ session: id, sessionName: name, tenant }), tenant);
    this.sessions.set(s.id, s);
    if (!persistent) this.armGrace(s);
    s.log.debug({ persistent }, "session created");
    return s;
  }

  private armGrace(s: Session): void {
    s.graceTimer = setTimeout(() => {
      s.graceTimer = null;
      if (s.state === "pending") void this.end(s, "no stream attached within the grace period");
    }, this.opts.graceMs);
    s.graceTimer.unref();
  }

  /** A live session by id, or undefined. */
  get(id: number): Session | undefined {
    const s = this.sessions.get(id);
    return s !== undefined && s.live ? s : undefined;
  }

  /** Snapshot support: the live sessions and the id counter. */
  snapshotState(): { nextId: number; ending: number; sessions: { id: number; name: string; persistent: boolean; tenant: string }[] } {
    let ending = 0;
    for (const s of this.sessions.values()) if (s.state === "ending") ending++;
    return { nextId: this.nextId, ending, sessions: this.list().map((s) => ({ id: s.id, name: s.name, persistent: s.persistent, tenant: s.tenant })) };
  }

  /**
   * Snapshot restore: the sessions of a snapshot come back persistent with
   * their ids, names and tenants, and ids continue from `nextId`. Every
   * live session other than `replace` must be gone (the caller checked);
   * `replace` (the restoring caller's own empty session) is forgotten, its
   * streams end with OK.
   */
  restoreState(nextId: number, entries: readonly { id: number; name: string; tenant: string }[], replace: number): Session[] {
    for (const s of this.sessions.values()) {
      if (s.id !== replace && s.live) throw new StatusError(status.FAILED_PRECONDITION, ERRNO.EBUSY, `session ${s.id} is live`);
    }
    const old = this.sessions.get(replace);
    if (old !== undefined) {
      if (old.graceTimer !== null) clearTimeout(old.graceTimer);
      old.graceTimer = null;
      old.state = "ended";
      old.ended = Promise.resolve();
      for (const st of old.streams) {
        try {
          st.end();
        } catch {
          // the peer is gone already
        }
      }
      old.streams.clear();
    }
    this.sessions.clear();
    const out: Session[] = [];
    for (const e of entries) {
      const s = new Session(e.id, e.name, true, this.opts.log.child({ session: e.id, sessionName: e.name, tenant: e.tenant }), e.tenant);
      this.sessions.set(s.id, s);
      out.push(s);
    }
    this.nextId = nextId;
    return out;
  }

  /** Live sessions by ascending id. */
  list(): Session[] {
    return [...this.sessions.values()].filter((s) => s.live).sort((a, b) => a.id - b.id);
  }

  /** AttachSession: adds a stream; NOT_FOUND (ESRCH) for an unknown or ended session. */
  attach(id: number, stream: SessionStream): Session {
    const s = this.get(id);
    if (s === undefined) throw new StatusError(status.NOT_FOUND, ERRNO.ESRCH, `session ${id} does not exist or has ended`);
    s.streams.add(stream);
    if (s.state === "pending") s.state = "attached";
    if (s.graceTimer !== null) {
      clearTimeout(s.graceTimer);
      s.graceTimer = null;
    }
    stream.write({ attached: { sessionId: s.id, attachedStreams: s.streams.size } });
    return s;
  }

  /** A stream went away (client cancel or disconnect). */
  detach(s: Session, stream: SessionStream): void {
    if (!s.streams.delete(stream) || !s.live) return;
    if (!s.persistent && s.streams.size === 0) void this.end(s, "last attached stream closed");
  }

  /** CloseSession: ends the session and resolves once everything is released. */
  async close(id: number): Promise<void> {
    const s = this.get(id);
    if (s === undefined) throw new StatusError(status.NOT_FOUND, ERRNO.ESRCH, `session ${id} does not exist or has ended`);
    await this.end(s, "CloseSession");
  }

  /** Deliver a notice to the session's streams (dropped once it is ending). */
  notify(sessionId: number, notice: Partial<SessionNotice> & { kind: SessionNoticeKind }): void {
    const s = this.get(sessionId);
    if (s === undefined) return;
    this.broadcast(s, notice);
  }

  private broadcast(s: Session, notice: Partial<SessionNotice> & { kind: SessionNoticeKind }): void {
    const msg: AttachSessionResponse = {
      notice: { kind: notice.kind, message: notice.message ?? "", objectId: notice.objectId ?? 0, mmId: notice.mmId ?? 0, count: notice.count ?? 0 },
    };
    for (const st of s.streams) {
      try {
        st.write(msg);
      } catch (e) {
        s.log.warn({ err: e }, "cannot write a session notice");
      }
    }
  }

  /** Count a call of session `s` as in flight until `p` settles. */
  track<T>(s: Session, p: Promise<T>): Promise<T> {
    s.inflight.add(p);
    const done = () => s.inflight.delete(p);
    p.then(done, done);
    return p;
  }

  private end(s: Session, reason: string): Promise<void> {
    if (s.ended !== null) return s.ended;
    s.state = "ending";
    if (s.graceTimer !== null) {
      clearTimeout(s.graceTimer);
      s.graceTimer = null;
    }
    s.log.debug({ reason }, "session ending");
    this.broadcast(s, { kind: SessionNoticeKind.SESSION_NOTICE_KIND_SESSION_CLOSING, message: reason });
    s.ended = this.release(s).finally(() => {
      for (const st of s.streams) {
        try {
          st.end();
        } catch {
          // the peer is gone already
        }
      }
      s.streams.clear();
      s.state = "ended";
      this.sessions.delete(s.id);
      s.log.debug("session ended");
    });
    return s.ended;
  }

  private async runHooks(s: Session): Promise<void> {
    for (const stage of RELEASE_ORDER) {
      for (const h of this.hooks.get(stage)!) {
        try {
          await h.fn(s);
        } catch (e) {
          s.log.error({ stage, hook: h.name, err: e }, "session release hook failed");
        }
      }
    }
  }

  private async release(s: Session): Promise<void> {
    await this.runHooks(s);
    if (s.inflight.size > 0) {
      // Calls that resolved the session before it started ending may still
      // create objects it owns: wait for them, then release again.
      await Promise.allSettled([...s.inflight]);
      await this.runHooks(s);
    }
  }

  /** Daemon shutdown: SESSION_CLOSING, then every stream ends with OK. */
  shutdown(): void {
    this.stopping = true;
    for (const s of this.sessions.values()) {
      if (s.graceTimer !== null) {
        clearTimeout(s.graceTimer);
        s.graceTimer = null;
      }
      if (!s.live) continue;
      s.state = "ending";
      this.broadcast(s, { kind: SessionNoticeKind.SESSION_NOTICE_KIND_SESSION_CLOSING, message: "daemon shutdown" });
      for (const st of s.streams) {
        try {
          st.end();
        } catch {
          // the peer is gone already
        }
      }
      s.streams.clear();
      s.state = "ended";
      s.ended = Promise.resolve();
    }
    this.sessions.clear();
  }

  // -------------------------------------------------------------- metadata

  /**
   * The session named by the `mmsim-session` header of a mutating call:
   * missing or malformed -> UNAUTHENTICATED (EINVAL); unknown or ended ->
   * UNAUTHENTICATED (ESRCH).
   */
  resolve(md: Metadata): Session {
    const id = sessionHeaderId(md);
    const s = this.get(id);
    if (s === undefined || (this.visible !== null && !this.visible(md, s)))
      throw new StatusError(status.UNAUTHENTICATED, ERRNO.ESRCH, `session ${id} does not exist or has ended`);
    return s;
  }
}

/** Well-formed header strings already parsed (bounded; cleared when full). */
const headerIds = new Map<string, number>();
const HEADER_CACHE_MAX = 4096;

/**
 * `parseSessionHeader` with a cache of the common case: one string value
 * seen before (no per-call trim, regex or array mapping).
 */
function sessionHeaderId(md: Metadata): number {
  const raw = md.get(SESSION_HEADER);
  if (raw.length === 1) {
    const v = raw[0];
    if (typeof v === "string") {
      const hit = headerIds.get(v);
      if (hit !== undefined) return hit;
      const n = parseSessionHeader(md);
      if (headerIds.size >= HEADER_CACHE_MAX) headerIds.clear();
      headerIds.set(v, n);
      return n;
    }
  }
  return parseSessionHeader(md);
}

/** Parse `mmsim-session: <decimal id>`; throws UNAUTHENTICATED (EINVAL). */
export function parseSessionHeader(md: Metadata): number {
  const values = md.get(SESSION_HEADER).map((v) => (typeof v === "string" ? v : v.toString("utf8")).trim());
  if (values.length === 0) throw new StatusError(status.UNAUTHENTICATED, ERRNO.EINVAL, `missing ${SESSION_HEADER} metadata`);
  const v = values[0]!;
  if (values.some((x) => x !== v)) throw new StatusError(status.UNAUTHENTICATED, ERRNO.EINVAL, `conflicting ${SESSION_HEADER} metadata values`);
  const n = Number(v);
  if (!/^[1-9][0-9]*$/.test(v) || !Number.isSafeInteger(n))
    throw new StatusError(status.UNAUTHENTICATED, ERRNO.EINVAL, `malformed ${SESSION_HEADER} metadata ${JSON.stringify(v)}: expected a decimal session id`);
  return n;
}
