/**
 * NotifierService (notifier.proto): client mirrors as bidirectional streams,
 * their interval notifiers, read_begin / read_retry, and the OOM reaper.
 *
 * A client mirror is an IntervalOps whose ->invalidate cannot answer at
 * once. It does, on the client's behalf, what a driver's callback does
 * first (mmu_interval_set_seq), queues one Invalidation per invalidation
 * range (all of the mirror's notifiers hit by that range share it) and
 * pushes a promise on the running operation's OpContext.pending: the
 * service layer (model-op.ts) keeps the mm locked and the invalidation's
 * end deferred until every promise settles, i.e. until the client
 * acknowledged, refused (non-blockable only), went away, or was declared
 * dead after the mirror deadline. Queued invalidations leave in one
 * InvalidationBatch per event-loop turn.
 *
 * Mirror lifecycle: "open" -> "dead" (deadline missed, or more unacknowledged
 * invalidations than --max-mirror-queue-depth: notifiers removed,
 * waiters released, `dead` message, stream ended, MIRROR_DEAD session notice,
 * warning logged; over the queue depth the stream ends RESOURCE_EXHAUSTED)
 * or "closed" (stream ended or cancelled, session ended:
 * notifiers removed, waiters released). Only "open" mirrors get messages.
 */
import { type handleBidiStreamingCall, status } from "@grpc/grpc-js";
import type { Logger } from "pino";
import { MmuNotifyEvent as KEvent } from "../mm/constants.js";
import { Errno, MmError } from "../mm/errors.js";
import { allocNotifierId, mmuIntervalReadBegin } from "../mm/hmm.js";
import { Dmirror, dmirrorState } from "../mm/dmirror.js";
import { type Kernel, OpContext } from "../mm/kernel.js";
import type { Mm } from "../mm/mm.js";
import { zapRange } from "../mm/mmap.js";
import { IntervalSub, type IntervalOps, type NotifierRange, RANGE_END_ALL } from "../mm/mmu-notifier.js";
import { oomReapCandidates } from "../mm/migrate-device.js";
import { installNotifierChecks, noteCallback } from "../mm/notifier-checks.js";
import {
  type GetIntervalNotifierRequest,
  type GetIntervalNotifierResponse,
  type InsertIntervalNotifierRequest,
  type InsertIntervalNotifierResponse,
  type IntervalNotifierInfo,
  type Invalidation,
  type InvalidationAck,
  type ListIntervalNotifiersRequest,
  type ListIntervalNotifiersResponse,
  type NotifierServiceServer,
  type ReadBeginRequest,
  type ReadBeginResponse,
  type ReadRetryRequest,
  type ReadRetryResponse,
  type ReapedVma,
  type ReapMmRequest,
  type ReapMmResponse,
  type RemoveIntervalNotifierRequest,
  type RemoveIntervalNotifierResponse,
  type SubscribeRequest,
  SubscribeResponse,
} from "../gen/mmsim/v1/notifier.js";
import { SessionNoticeKind } from "../gen/mmsim/v1/session.js";
import { ERRNO, invalidArgument, notFoundError, StatusError, toStatus } from "./errors.js";
import { DecodeFailure, observeStream, rpcProbe, type ServiceDeps, unary } from "./handler.js";
import { knownMm, liveMm } from "./lookup.js";
import { modelOps } from "./model-op.js";
import type { Session } from "./session.js";
import { objectId, u64 } from "./validate.js";
import { traceDelivery, type TracedDelivery } from "./trace.js";
import { TraceAnswer } from "../gen/mmsim/v1/trace.js";

const SVC = "NotifierService";

/** Kernel event value -> proto enum (kernel value + 1). */
export function eventToProto(e: KEvent): number {
  return e + 1;
}

interface StreamOut {
  write(msg: SubscribeResponse): void;
  /** End the stream: OK, or with the status of `err`. */
  end(err?: unknown): void;
}

interface Waiter {
  inv: Invalidation;
  queuedAt: number;
  resolve: (accepted: boolean) => void;
  /** mirror_ack injection: the client's answer to this one is dropped */
  lost: boolean;
  /** the trace's record of this delivery (trace.ts), when one is recorded */
  traced?: TracedDelivery | undefined;
}

/**
 * "detached": restored from a snapshot without its stream; invalidations
 * advance its notifiers' sequences and send nothing, until its session
 * subscribes again with the same mirror name (reattach -> "open").
 */
export type MirrorState = "open" | "dead" | "closed" | "detached";

/** A client's device mirror: one Subscribe stream. */
export class RemoteMirror implements IntervalOps {
  state: MirrorState = "open";
  readonly subs = new Map<number, { sub: IntervalSub; mm: Mm }>();
  private nextInvalidation = 1;
  /** unacknowledged invalidations by id, oldest first (Map insertion order) */
  private readonly outstanding = new Map<number, Waiter>();
  private queue: Invalidation[] = [];
  private flushQueued = false;
  private last: { range: NotifierRange; inv: Invalidation } | null = null;
  private timer: NodeJS.Timeout | null = null;
  /** invalidation messages sent (for tests and metrics) */
  sent = 0;

  constructor(
    private readonly hub: NotifierHub,
    readonly id: number,
    readonly session: Session,
    readonly name: string,
    private out: StreamOut,
  ) {}

  /** A detached mirror (snapshot restore) takes a new stream. */
  reattach(out: StreamOut): void {
    if (this.state !== "detached") return;
    this.out = out;
    this.state = "open";
  }

  /** The ->invalidate callback, answered asynchronously by the client. */
  invalidate(sub: IntervalSub, range: NotifierRange, curSeq: number): boolean {
    noteCallback(this.hub.k, sub, range);
    const merged = this.state === "open" && this.last !== null && this.last.range === range;
    // mirror_ack injection, once per message: a non-blockable range is
    // refused at once as by a driver whose mutex_trylock failed (no seq
    // update, nothing sent: -EAGAIN for the caller); a blockable one is sent
    // but its answer is lost, so the dead-mirror deadline runs.
    let lost = false;
    if (this.state === "open" && !merged && this.hub.k.inject.fail("mirror_ack")) {
      if (!range.blockable) return false;
      lost = true;
    }
    sub.seq = curSeq; // mmu_interval_set_seq on the client's behalf
    if (this.state !== "open") return true;
    // Several notifiers of this mirror hit by the same range: one message.
    if (merged && this.last !== null) {
      this.last.inv.notifierIds.push(sub.id);
      return true;
    }
    const depth = this.hub.maxQueueDepth;
    if (this.outstanding.size >= depth) {
      // One more would exceed --max-mirror-queue-depth: a dead mirror, whose
      // stream ends with RESOURCE_EXHAUSTED; this invalidation waits for nothing.
      const reason = `${this.outstanding.size} invalidations not acknowledged, one more would exceed the limit (--max-mirror-queue-depth ${depth})`;
      this.die(reason, new StatusError(status.RESOURCE_EXHAUSTED, ERRNO.ENOMEM, `mirror ${this.id} declared dead: ${reason}`));
      return true;
    }
    const whole = range.end >= RANGE_END_ALL;
    const inv: Invalidation = {
      invalidationId: this.nextInvalidation++,
      mmId: range.mmId,
      notifierIds: [sub.id],
      start: range.start,
      end: whole ? RANGE_END_ALL : range.end,
      wholeAddressSpace: whole,
      event: eventToProto(range.event),
      owner: range.owner,
      blockable: range.blockable,
      seq: curSeq,
    };
    this.last = { range, inv };
    this.hub.onQueued?.(this.id, inv.invalidationId);
    const p = new Promise<boolean>((resolve) => this.outstanding.set(inv.invalidationId, { inv, queuedAt: performance.now(), resolve, lost, traced: traceDelivery(this.id, inv) }));
    this.hub.k.op?.pending.push(p);
    this.queue.push(inv);
    if (!this.flushQueued) {
      this.flushQueued = true;
      queueMicrotask(() => this.flush());
    }
    this.armTimer();
    return true;
  }

  private flush(): void {
    this.flushQueued = false;
    this.last = null;
    if (this.queue.length === 0 || this.state !== "open") return;
    const batch = this.queue;
    this.queue = [];
    this.sent += batch.length;
    this.out.write({ invalidations: { invalidations: batch } });
  }

  handleAck(ack: InvalidationAck): void {
    for (const id of ack.invalidationIds) {
      const w = this.outstanding.get(id);
      if (w === undefined || w.lost) continue;
      this.outstanding.delete(id);
      if (w.traced !== undefined) w.traced.answer = TraceAnswer.TRACE_ANSWER_ACKED;
      w.resolve(true);
    }
    for (const id of ack.refusedIds) {
      const w = this.outstanding.get(id);
      if (w === undefined || w.lost) continue;
      this.outstanding.delete(id);
      if (w.traced !== undefined) w.traced.answer = TraceAnswer.TRACE_ANSWER_REFUSED;
      if (w.inv.blockable) {
        // A driver may only refuse a non-blockable range (WARN, carry on).
        this.hub.log.warn({ mirror: this.id, session: this.session.id, invalidation: id }, "mirror refused a blockable invalidation; treated as acknowledged");
        w.resolve(true);
      } else {
        w.resolve(false);
      }
    }
    if (this.outstanding.size === 0) this.clearTimer();
  }

  private armTimer(): void {
    if (this.timer !== null || this.outstanding.size === 0 || this.state !== "open") return;
    const oldest = this.outstanding.values().next().value as Waiter;
    const delay = Math.max(0, oldest.queuedAt + this.hub.deadlineMs - performance.now());
    this.timer = setTimeout(() => this.checkDeadline(), delay);
    this.timer.unref();
  }

  private clearTimer(): void {
    if (this.timer !== null) clearTimeout(this.timer);
    this.timer = null;
  }

  private checkDeadline(): void {
    this.timer = null;
    if (this.state !== "open" || this.outstanding.size === 0) return;
    const oldest = this.outstanding.values().next().value as Waiter;
    const late = performance.now() - oldest.queuedAt;
    if (late >= this.hub.deadlineMs - 1) {
      const ev = KEvent[oldest.inv.event - 1] ?? String(oldest.inv.event);
      this.die(
        `invalidation ${oldest.inv.invalidationId} (${ev} [0x${oldest.inv.start.toString(16)}, 0x${oldest.inv.end.toString(16)}) of mm ${oldest.inv.mmId}) not acknowledged within ${this.hub.deadlineMs} ms` +
          (oldest.lost ? " (its acknowledgement was dropped by mirror_ack fault injection)" : ""),
      );
      return;
    }
    this.armTimer();
  }

  /** Declared dead: the operations proceed, the client is told why. */
  die(reason: string, err?: unknown): void {
    if (this.state !== "open") return;
    this.state = "dead";
    const ids = this.removeAll();
    this.flush();
    this.out.write({ dead: { reason, notifierIds: ids } });
    this.out.end(err);
    this.hub.sessions?.notify(this.session.id, { kind: SessionNoticeKind.SESSION_NOTICE_KIND_MIRROR_DEAD, message: reason, objectId: this.id, count: ids.length });
    this.hub.log.warn({ mirror: this.id, mirrorName: this.name, session: this.session.id, notifiers: ids, reason }, "mirror declared dead");
  }

  /** The stream ended or the session did: notifiers go, waiters are released. */
  close(): void {
    if (this.state !== "open" && this.state !== "detached") return;
    this.state = "closed";
    this.removeAll();
    this.out.end();
  }

  private removeAll(): number[] {
    this.clearTimer();
    const ids = [...this.subs.keys()];
    for (const { sub, mm } of this.subs.values()) {
      // A removal deferred behind a running invalidation completes with it.
      void mm.notifier.remove(sub);
      this.hub.notifiers.delete(sub.id);
    }
    this.subs.clear();
    for (const w of this.outstanding.values()) w.resolve(true);
    this.outstanding.clear();
    this.hub.mirrors.delete(this.id);
    return ids;
  }

  get outstandingCount(): number {
    return this.outstanding.size;
  }
}

/** Per-daemon state of client mirrors and their notifiers. */
export class NotifierHub {
  readonly mirrors = new Map<number, RemoteMirror>();
  /** client notifiers by id */
  readonly notifiers = new Map<number, { sub: IntervalSub; mm: Mm; mirror: RemoteMirror }>();
  private nextMirror = 1;
  sessions: ServiceDeps["sessions"] | null = null;
  /** Called as each client-mirror invalidation starts (benchmarks time its delivery); null = off. */
  onQueued: ((mirror: number, invalidationId: number) => void) | null = null;
  /** unacknowledged invalidations one mirror may have (--max-mirror-queue-depth) */
  maxQueueDepth = Number.MAX_SAFE_INTEGER;

  constructor(
    readonly k: Kernel,
    readonly log: Logger,
    readonly deadlineMs: number,
  ) {
    installNotifierChecks(k);
  }

  open(session: Session, name: string, out: StreamOut): RemoteMirror {
    for (const d of this.mirrors.values()) {
      if (d.state === "detached" && d.session === session && d.name === name) {
        d.reattach(out);
        return d;
      }
    }
    const m = new RemoteMirror(this, this.nextMirror++, session, name, out);
    this.mirrors.set(m.id, m);
    return m;
  }

  /** Snapshot support: the mirror id counter. */
  get nextMirrorId(): number {
    return this.nextMirror;
  }

  set nextMirrorId(next: number) {
    this.nextMirror = next;
  }

  /**
   * Snapshot restore: a client mirror comes back detached (no stream) with
   * its notifiers, already in their mms' trees; ids continue from `next`.
   */
  restoreDetached(id: number, session: Session, name: string, subs: readonly { sub: IntervalSub; mm: Mm }[], next: number): RemoteMirror {
    const none: StreamOut = { write: () => {}, end: () => {} };
    const m = new RemoteMirror(this, id, session, name, none);
    m.state = "detached";
    for (const s of subs) {
      m.subs.set(s.sub.id, s);
      this.notifiers.set(s.sub.id, { sub: s.sub, mm: s.mm, mirror: m });
    }
    this.mirrors.set(id, m);
    this.nextMirror = Math.max(this.nextMirror, next);
    return m;
  }

  /** Daemon shutdown: every mirror's stream ends with OK (its notifiers go). */
  shutdown(): void {
    for (const m of [...this.mirrors.values()]) m.close();
  }

  /** A client notifier by id (NOT_FOUND otherwise). */
  notifier(id: number): { sub: IntervalSub; mm: Mm; mirror: RemoteMirror } {
    const r = this.notifiers.get(id);
    if (r === undefined) notFoundError(`interval notifier ${id}`);
    return r;
  }
}

const hubs = new WeakMap<Kernel, NotifierHub>();

/** The notifier hub of a daemon's kernel, if its NotifierService was built. */
export function notifierHubOf(k: Kernel): NotifierHub | undefined {
  return hubs.get(k);
}

/** The daemon's notifier hub (created with the service). */
export function notifierHub(d: ServiceDeps): NotifierHub {
  let h = hubs.get(d.kernel);
  if (h === undefined) {
    h = new NotifierHub(d.kernel, d.log, d.config.mirrorDeadlineMs ?? 5000);
    h.sessions = d.sessions;
    h.maxQueueDepth = d.config.maxMirrorQueueDepth ?? 1024;
    hubs.set(d.kernel, h);
  }
  return h;
}

/** Describe an interval subscription. */
function info(sub: IntervalSub): IntervalNotifierInfo {
  const ops = sub.ops;
  return {
    notifierId: sub.id,
    mmId: sub.mmId,
    mirrorId: ops instanceof RemoteMirror ? ops.id : 0,
    dmirrorId: ops instanceof Dmirror ? ops.id : 0,
    start: sub.start,
    last: Math.min(sub.last, RANGE_END_ALL),
    seq: sub.seq,
    pendingInsert: sub.pendingInsert,
    sessionId: sub.session,
  };
}

/** Every subscription of an mm, in the tree or waiting to be inserted. */
function mmSubscriptions(mm: Mm): IntervalSub[] {
  const out = [...mm.notifier.subscriptions()];
  for (const d of mm.notifier.deferred) if (d.insert && !d.sub.removed) out.push(d.sub);
  return out.sort((a, b) => a.id - b.id);
}

/** Find a subscription by id: client notifiers, then dmirror mirrors. */
function findSub(d: ServiceDeps, hub: NotifierHub, id: number): { sub: IntervalSub; mm: Mm } {
  const r = hub.notifiers.get(id);
  if (r !== undefined) return r;
  for (const m of dmirrorState(d.kernel).mirrors.values()) if (m.sub.id === id) return { sub: m.sub, mm: m.mm };
  notFoundError(`interval notifier ${id}`);
}

export function notifierService(d: ServiceDeps): NotifierServiceServer {
  const k = d.kernel;
  const hub = notifierHub(d);
  registerNotifierResources(d, hub);

  const subscribe: handleBidiStreamingCall<SubscribeRequest, SubscribeResponse> = (call) => {
    const method = `${SVC}/Subscribe`;
    const done = observeStream(rpcProbe(d, method, "bidi_stream"));
    let finished = false;
    let mirror: RemoteMirror | null = null;
    /** step of this stream's open in the trace being recorded, or 0 */
    let traceStream = 0;
    const fail = (err: unknown) => {
      if (finished) return;
      finished = true;
      const st = toStatus(err);
      if (st.internal) d.log.error({ method, err }, "internal error");
      else d.log.warn({ method, code: status[st.code], errno: st.errno, details: st.details }, "rpc refused");
      mirror?.close();
      done(st.code);
      call.emit("error", { code: st.code, details: st.details, metadata: st.metadata });
    };
    let session: Session;
    try {
      session = d.sessions.resolve(call.metadata);
    } catch (e) {
      fail(e);
      return;
    }
    const out: StreamOut = {
      write: (msg) => {
        if (!finished) call.write(msg);
      },
      end: (err?: unknown) => {
        if (err !== undefined) return fail(err);
        if (finished) return;
        finished = true;
        done(status.OK);
        call.end();
      },
    };
    call.on("data", (req: SubscribeRequest | DecodeFailure) => {
      try {
        if (req instanceof DecodeFailure) invalidArgument(`cannot decode the request: ${req.reason}`);
        if (req.open !== undefined) {
          if (mirror !== null) invalidArgument("the mirror is already open (send `open` once)");
          if (!session.live) throw new MmError(ERRNO.ESRCH, `session ${session.id} has ended`, "not-found");
          mirror = hub.open(session, req.open.name, out);
          const subscribed: SubscribeResponse = { subscribed: { mirrorId: mirror.id, deadlineMs: hub.deadlineMs } };
          if (d.trace?.recording) traceStream = d.trace.streamOpen(method, session.id, req, SubscribeResponse.encode(subscribed).finish() as Buffer);
          out.write(subscribed);
          session.log.debug({ method, mirror: mirror.id, name: req.open.name }, "mirror opened");
        } else if (req.ack !== undefined) {
          if (mirror === null) invalidArgument("`open` must be the first message");
          mirror.handleAck(req.ack);
        } else {
          invalidArgument("empty SubscribeRequest");
        }
      } catch (e) {
        fail(e);
      }
    });
    call.on("end", () => {
      if (mirror?.state === "open") d.trace?.streamClose(method, session.id, traceStream);
      mirror?.close();
      out.end();
    });
    const gone = () => {
      finished = true;
      if (mirror?.state === "open") d.trace?.streamClose(method, session.id, traceStream);
      mirror?.close();
      done(status.CANCELLED);
    };
    call.on("cancelled", gone);
    call.on("error", gone);
  };

  return {
    subscribe,

    insertIntervalNotifier: unary<InsertIntervalNotifierRequest, InsertIntervalNotifierResponse>(d, `${SVC}/InsertIntervalNotifier`, "required", (req, c) => {
      objectId(req.mirrorId, "mirror_id");
      objectId(req.mmId, "mm_id");
      u64(req.start, "start");
      u64(req.length, "length");
      const mirror = hub.mirrors.get(req.mirrorId);
      if (mirror === undefined || mirror.state !== "open") notFoundError(`mirror ${req.mirrorId}`);
      const mm = knownMm(k, req.mmId);
      if (req.length === 0 || req.length - 1 > Number.MAX_SAFE_INTEGER - req.start)
        throw new MmError(Errno.EOVERFLOW, `interval [${req.start}, +${req.length}) is empty or overflows`);
      const sub = new IntervalSub(allocNotifierId(k), mm.id, req.start, req.start + req.length - 1, mirror, c.sessionId);
      mm.notifier.insert(sub, req.length, mm.exited ? 0 : mm.mmUsers);
      mirror.subs.set(sub.id, { sub, mm });
      hub.notifiers.set(sub.id, { sub, mm, mirror });
      return { notifierId: sub.id, seq: sub.seq, deferred: sub.pendingInsert };
    }),

    removeIntervalNotifier: unary<RemoveIntervalNotifierRequest, RemoveIntervalNotifierResponse>(d, `${SVC}/RemoveIntervalNotifier`, "required", async (req) => {
      objectId(req.notifierId, "notifier_id");
      const r = hub.notifier(req.notifierId);
      r.mirror.subs.delete(r.sub.id);
      hub.notifiers.delete(r.sub.id);
      const wait = r.mm.notifier.remove(r.sub);
      if (wait === null) return { waited: false };
      await wait;
      return { waited: true };
    }),

    readBegin: unary<ReadBeginRequest, ReadBeginResponse>(d, `${SVC}/ReadBegin`, "optional", async (req) => {
      objectId(req.notifierId, "notifier_id");
      const r = hub.notifier(req.notifierId);
      const now = r.mm.notifier.tryReadBegin(r.sub);
      if (now !== undefined) return { seq: now, waited: false };
      return { seq: await mmuIntervalReadBegin(r.mm, r.sub), waited: true };
    }),

    readRetry: unary<ReadRetryRequest, ReadRetryResponse>(d, `${SVC}/ReadRetry`, "optional", (req) => {
      objectId(req.notifierId, "notifier_id");
      u64(req.seq, "seq");
      const r = hub.notifier(req.notifierId);
      return { retry: r.mm.notifier.readRetry(r.sub, req.seq), notifierSeq: r.sub.seq };
    }),

    getIntervalNotifier: unary<GetIntervalNotifierRequest, GetIntervalNotifierResponse>(d, `${SVC}/GetIntervalNotifier`, "optional", (req) => {
      objectId(req.notifierId, "notifier_id");
      const r = findSub(d, hub, req.notifierId);
      return { notifier: info(r.sub), mmSeq: r.mm.notifier.seq, mmActive: r.mm.notifier.active };
    }),

    listIntervalNotifiers: unary<ListIntervalNotifiersRequest, ListIntervalNotifiersResponse>(d, `${SVC}/ListIntervalNotifiers`, "optional", (req) => {
      objectId(req.mmId, "mm_id");
      const mm = knownMm(k, req.mmId);
      return { notifiers: mmSubscriptions(mm).map(info), mmSeq: mm.notifier.seq, mmActive: mm.notifier.active };
    }),

    reapMm: unary<ReapMmRequest, ReapMmResponse>(d, `${SVC}/ReapMm`, "required", async (req) => {
      objectId(req.mmId, "mm_id");
      liveMm(k, req.mmId);
      return { vmas: await reapMm(k, req.mmId) };
    }),
  };
}

/**
 * __oom_reap_task_mm under the mmap read lock, one VMA at a time: a
 * non-blockable UNMAP start; client mirrors answer asynchronously, so the
 * zap waits for their answers and a refusal skips the VMA (EAGAIN) with the
 * interval invalidation ended, as the kernel's failed start does.
 */
async function reapMm(k: Kernel, mmId: number): Promise<ReapedVma[]> {
  const ops = modelOps(k);
  const release = await ops.locks.acquire([mmId], "read");
  const out: ReapedVma[] = [];
  try {
    const mm = liveMm(k, mmId);
    for (const v of oomReapCandidates(mm)) {
      if (mm.exited || !mm.vmas.includes(v)) continue;
      const start = v.start;
      const end = v.end;
      const op = new OpContext();
      if (k.op !== null) throw new Error("ReapMm: a model operation is running synchronously");
      k.op = op;
      let r: NotifierRange | null;
      try {
        r = k.invalidateStart(mm, start, end, KEvent.UNMAP, 0, false);
      } finally {
        k.op = null;
      }
      let accepted = r !== null;
      if (r !== null && op.pending.length > 0) {
        ops.enterAwait();
        try {
          const answers = await Promise.all(op.pending as Promise<boolean>[]);
          accepted = answers.every((a) => a !== false);
        } finally {
          ops.leaveAwait();
        }
      }
      if (r === null) {
        out.push({ start, end, reaped: false, errnoValue: Errno.EAGAIN });
        continue;
      }
      if (!accepted) {
        // The start failed: only the interval part is undone, no zap.
        mm.notifier.invalidateRangeEnd(r);
        for (const o of k.invalidationObservers) o(r, "end");
        out.push({ start, end, reaped: false, errnoValue: Errno.EAGAIN });
        continue;
      }
      const zap = new OpContext();
      k.op = zap;
      try {
        zapRange(k, mm, v, start, end);
        k.invalidateEnd(mm, r);
      } finally {
        k.op = null;
        k.finishOp(zap);
        for (const hook of ops.afterOp) hook();
      }
      out.push({ start, end, reaped: true, errnoValue: 0 });
    }
  } finally {
    release();
  }
  return out;
}

/** Session release of mirrors and their notifiers, and ListSessions counts. */
function registerNotifierResources(d: ServiceDeps, hub: NotifierHub): void {
  const done = registered.get(d.kernel);
  if (done) return;
  registered.set(d.kernel, true);
  d.sessions.onRelease("notifiers", "close client mirrors", (s) => {
    for (const m of [...hub.mirrors.values()]) if (m.session.id === s.id) m.close();
  });
  d.sessions.addCounters((s) => {
    let mirrorCount = 0;
    let notifierCount = 0;
    for (const m of hub.mirrors.values()) {
      if (m.session.id !== s.id) continue;
      mirrorCount++;
      notifierCount += m.subs.size;
    }
    return { mirrorCount, notifierCount };
  });
}

const registered = new WeakMap<Kernel, boolean>();
