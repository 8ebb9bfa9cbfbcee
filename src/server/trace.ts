/**
 * Trace recording (trace.proto): one TraceRecord per mutating step, written
 * in commit order.
 *
 * A traced unary call gets a TraceCall when it arrives and runs inside an
 * AsyncLocalStorage context carrying it (only while a trace is recorded; no
 * context otherwise). Its step number is taken at the commit point: when
 * the model operation runs under its mm locks (model-op.ts calls
 * traceCommit), or when the call completes if it never reached the model
 * (validation errors, session calls). Records complete out of order (an
 * operation waiting for mirror acknowledgements finishes after later
 * operations on other mms) and are written strictly by step number.
 *
 * Invalidations sent to client mirrors are attributed to the step whose
 * context is current when the mirror's ->invalidate runs, together with how
 * the client answered them (notifier-service.ts).
 */
import { AsyncLocalStorage } from "node:async_hooks";
import type { Logger } from "pino";
import type { Invalidation } from "../gen/mmsim/v1/notifier.js";
import { Invalidation as InvalidationMsg } from "../gen/mmsim/v1/notifier.js";
import { TraceAnswer, type TraceRecord, TraceRecordKind } from "../gen/mmsim/v1/trace.js";
import { MMSIM_VERSION } from "../version.js";
import { TraceWriter } from "../trace/file.js";
import { fullMethod, isTraced, METHODS } from "../trace/methods.js";
import type { DaemonConfig } from "./config.js";

export interface TracedDelivery {
  mirrorId: number;
  inv: Invalidation;
  answer: TraceAnswer;
}

export interface TraceCall {
  tracer: Tracer;
  /** step number; 0 until committed */
  seq: number;
  kind: TraceRecordKind;
  /** full method name */
  method: string;
  sessionId: number;
  request: Buffer;
  deliveries: TracedDelivery[];
  streamId: number;
}

const als = new AsyncLocalStorage<TraceCall>();

/**
 * Raw request bytes by decoded message, kept by withSafeDecode while at
 * least one daemon of this process records a trace (`on` counts them).
 */
export const rawRequests = { on: 0, map: new WeakMap<object, Buffer>() };

/** The commit point of the current traced call (no-op outside one, or once numbered). */
export function traceCommit(): void {
  const c = als.getStore();
  if (c !== undefined && c.seq === 0) c.seq = c.tracer.nextSeq();
}

/** Note an invalidation sent to client mirror `mirrorId` by the current traced call. */
export function traceDelivery(mirrorId: number, inv: Invalidation): TracedDelivery | undefined {
  const c = als.getStore();
  if (c === undefined) return undefined;
  const d: TracedDelivery = { mirrorId, inv, answer: TraceAnswer.TRACE_ANSWER_NONE };
  c.deliveries.push(d);
  return d;
}

/** Run fn inside the context of traced call `c` (directly when there is none). */
export function runTraced<T>(c: TraceCall | undefined, fn: () => T): T {
  return c === undefined ? fn() : als.run(c, fn);
}

/** Session id named by a `mmsim-session` header value, or 0. */
export function headerSessionId(v: unknown): number {
  const n = typeof v === "string" && /^\d{1,15}$/.test(v) ? Number(v) : 0;
  return n;
}

/**
 * The settings a replay needs to behave like the recorded daemon (written to
 * the trace header). Addresses, logging, security and timeouts of the
 * transport are left out: they do not change results, and a replay daemon
 * must not inherit them.
 */
export const REPLAYED_CONFIG = [
  "ramBytes",
  "movableBytes",
  "cmaBytes",
  "thp",
  "sessionGraceMs",
  "mirrorDeadlineMs",
  "faultInjection",
  "maxMmsPerSession",
  "maxVmasPerSession",
  "maxLongtermPagesPerSession",
  "maxMirrorQueueDepth",
  "maxPagesPerRequest",
  "maxMessageBytes",
] as const satisfies readonly (keyof DaemonConfig)[];

export class Tracer {
  private writer: TraceWriter | null = null;
  private lastSeq = 0;
  private lastWritten = 0;
  private readonly done = new Map<number, TraceRecord>();
  /** traced calls begun and not finished */
  private inflight = 0;
  private idleWaiters: (() => void)[] = [];
  private stopping: Promise<{ path: string; records: number }> | null = null;

  constructor(
    private readonly config: DaemonConfig,
    private readonly log: Logger,
  ) {}

  get recording(): boolean {
    return this.writer !== null && this.stopping === null;
  }

  get path(): string {
    return this.writer?.path ?? "";
  }

  get records(): number {
    return this.writer?.records ?? 0;
  }

  /** Traced calls begun and not yet written (running, or done and waiting for an earlier step). */
  get pending(): number {
    return this.inflight + this.done.size;
  }

  /** Open `path` and record from now on; returns the first step number. */
  start(path: string, fromStart: boolean): number {
    const relevant: Record<string, unknown> = {};
    for (const k of REPLAYED_CONFIG) relevant[k] = this.config[k];
    this.writer = new TraceWriter(path, {
      daemonVersion: MMSIM_VERSION,
      configJson: JSON.stringify(relevant),
      fromStart,
      startedUnixMs: Date.now(),
    });
    this.lastSeq = 0;
    this.lastWritten = 0;
    rawRequests.on++;
    this.log.info({ path, fromStart }, "trace recording started");
    return 1;
  }

  /** Wait for the traced calls in flight, write them, close the file. */
  stop(): Promise<{ path: string; records: number }> {
    if (this.writer === null) return Promise.reject(new Error("no trace is being recorded"));
    this.stopping ??= this.drainAndClose().finally(() => {
      this.stopping = null;
    });
    return this.stopping;
  }

  private async drainAndClose(): Promise<{ path: string; records: number }> {
    while (this.inflight > 0) await new Promise<void>((r) => this.idleWaiters.push(r));
    const w = this.writer!;
    w.close();
    this.writer = null;
    rawRequests.on--;
    // No daemon of this process records any more: async context tracking off
    // (the next runTraced turns it on again).
    if (rawRequests.on === 0) als.disable();
    this.log.info({ path: w.path, records: w.records }, "trace recording stopped");
    return { path: w.path, records: w.records };
  }

  nextSeq(): number {
    return ++this.lastSeq;
  }

  /** A traced call arrives: its context, or undefined when `method` ("Service/Method") is not recorded or nothing is. */
  begin(method: string, request: unknown, sessionId: number): TraceCall | undefined {
    if (!this.recording) return undefined;
    if (!isTraced(method)) {
      if (method === "SnapshotService/RestoreSnapshot")
        this.log.warn({ path: this.path, afterStep: this.lastSeq }, "snapshot restore while a trace is recorded: a replay diverges after this point");
      return undefined;
    }
    const full = fullMethod(method);
    let raw = typeof request === "object" && request !== null ? rawRequests.map.get(request) : undefined;
    if (raw === undefined) {
      const codec = METHODS.get(full);
      raw = codec !== undefined && typeof request === "object" ? codec.requestSerialize(request) : Buffer.alloc(0);
    }
    this.inflight++;
    return { tracer: this, seq: 0, kind: TraceRecordKind.TRACE_RECORD_KIND_UNARY, method: full, sessionId, request: raw, deliveries: [], streamId: 0 };
  }

  /** The call answered OK with `response` (a message of the method's response type). */
  finishOk(c: TraceCall, response: unknown): void {
    let bytes: Buffer;
    try {
      bytes = METHODS.get(c.method)?.responseSerialize(response) ?? Buffer.alloc(0);
    } catch {
      bytes = Buffer.alloc(0);
    }
    this.finish(c, 0, 0, "", bytes);
  }

  finishErr(c: TraceCall, code: number, errno: number, message: string): void {
    this.finish(c, code, errno, message, Buffer.alloc(0));
  }

  /** A stream opened (Subscribe, AttachSession): recorded at once; returns its step number. */
  streamOpen(method: string, sessionId: number, request: unknown, response: Buffer): number {
    const c = this.begin(method, request, sessionId);
    if (c === undefined) return 0;
    c.kind = TraceRecordKind.TRACE_RECORD_KIND_STREAM_OPEN;
    c.seq = this.nextSeq();
    this.finish(c, 0, 0, "", response);
    return c.seq;
  }

  /** The client ended a stream opened at step `streamId` (0: opened before recording, ignored). */
  streamClose(method: string, sessionId: number, streamId: number): void {
    const c = this.streamCloseBegin(method, sessionId, streamId);
    if (c !== undefined) this.finishStream(c);
  }

  /**
   * A stream close whose effects take time (the session's release after its
   * last AttachSession stream): run them inside the returned call's context,
   * then finishStream. Undefined when not recorded.
   */
  streamCloseBegin(method: string, sessionId: number, streamId: number): TraceCall | undefined {
    if (streamId === 0) return undefined;
    const c = this.begin(method, undefined, sessionId);
    if (c === undefined) return undefined;
    c.kind = TraceRecordKind.TRACE_RECORD_KIND_STREAM_CLOSE;
    c.streamId = streamId;
    c.request = Buffer.alloc(0);
    return c;
  }

  finishStream(c: TraceCall): void {
    this.finish(c, 0, 0, "", Buffer.alloc(0));
  }

  private finish(c: TraceCall, code: number, errno: number, message: string, response: Buffer): void {
    if (c.seq === 0) c.seq = this.nextSeq();
    this.done.set(c.seq, {
      seq: c.seq,
      kind: c.kind,
      method: c.method,
      sessionId: c.sessionId,
      request: c.request,
      code,
      errnoValue: errno,
      message,
      response,
      deliveries: c.deliveries.map((d) => ({ mirrorId: d.mirrorId, invalidation: InvalidationMsg.encode(d.inv).finish() as Buffer, answer: d.answer })),
      streamId: c.streamId,
    });
    this.inflight--;
    this.flush();
    if (this.inflight === 0) for (const w of this.idleWaiters.splice(0)) w();
  }

  private flush(): void {
    for (let r = this.done.get(this.lastWritten + 1); r !== undefined; r = this.done.get(this.lastWritten + 1)) {
      this.done.delete(r.seq);
      this.lastWritten = r.seq;
      try {
        this.writer?.append(r);
      } catch (e) {
        this.log.error({ err: e, path: this.writer?.path }, "trace write failed; recording stopped");
        this.writer?.close();
        this.writer = null;
        rawRequests.on--;
      }
    }
  }
}
