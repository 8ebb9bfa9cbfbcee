/**
 * Clients of NotifierService, HmmService and DmirrorService for end-to-end
 * tests, and a scriptable client mirror (a Subscribe stream) that records
 * every invalidation and acknowledges them automatically or on demand.
 */
import { credentials, Metadata, type ServiceError, type StatusObject } from "@grpc/grpc-js";
import { DmirrorServiceClient, DmirrorServiceService } from "../../src/gen/mmsim/v1/dmirror.js";
import { HmmServiceClient, HmmServiceService } from "../../src/gen/mmsim/v1/hmm.js";
import {
  type Invalidation,
  type MirrorDead,
  NotifierServiceClient,
  NotifierServiceService,
  type SubscribeResponse,
} from "../../src/gen/mmsim/v1/notifier.js";
import { sessionMetadata, type TestDaemon } from "./daemon.js";

type UnaryOf<F> = F extends (...args: infer A) => unknown
  ? A extends [infer Req, Metadata, unknown, (error: ServiceError | null, response: infer Res) => void]
    ? (request: Req, metadata?: Metadata) => Promise<Res>
    : never
  : never;
type Promised<C> = { [K in keyof C as UnaryOf<C[K]> extends never ? never : K]: UnaryOf<C[K]> };

function promisify<C>(client: C, def: Record<string, { requestStream: boolean; responseStream: boolean }>, md: Metadata): Promised<C> {
  const out: Record<string, unknown> = {};
  for (const [name, m] of Object.entries(def)) {
    if (m.requestStream || m.responseStream) continue;
    out[name] = (req: unknown, meta?: Metadata) =>
      new Promise((resolve, reject) => {
        const fn = (client as unknown as Record<string, (...a: unknown[]) => unknown>)[name]!;
        fn.call(client, req, meta ?? md.clone(), {}, (err: ServiceError | null, res: unknown) => (err ? reject(err) : resolve(res)));
      });
  }
  return out as Promised<C>;
}

export interface HmmClients {
  notifier: Promised<NotifierServiceClient>;
  hmm: Promised<HmmServiceClient>;
  dmirror: Promised<DmirrorServiceClient>;
  raw: { notifier: NotifierServiceClient; hmm: HmmServiceClient; dmirror: DmirrorServiceClient };
  close(): void;
}

/** Clients that send `mmsim-session: <sessionId>`. */
export function hmmClients(t: TestDaemon, sessionId: number): HmmClients {
  const opts = { "grpc.max_receive_message_length": 64 * 2 ** 20 };
  const raw = {
    notifier: new NotifierServiceClient(t.address, credentials.createInsecure(), opts),
    hmm: new HmmServiceClient(t.address, credentials.createInsecure(), opts),
    dmirror: new DmirrorServiceClient(t.address, credentials.createInsecure(), opts),
  };
  const md = sessionMetadata(sessionId);
  return {
    notifier: promisify(raw.notifier, NotifierServiceService, md),
    hmm: promisify(raw.hmm, HmmServiceService, md),
    dmirror: promisify(raw.dmirror, DmirrorServiceService, md),
    raw,
    close: () => {
      raw.notifier.close();
      raw.hmm.close();
      raw.dmirror.close();
    },
  };
}

/** A client mirror: a Subscribe stream under test control. */
export interface ClientMirror {
  mirrorId: number;
  deadlineMs: number;
  /** every invalidation received, in order */
  invalidations: Invalidation[];
  /** number of InvalidationBatch messages received */
  batches: number;
  dead: MirrorDead | null;
  status: Promise<StatusObject>;
  /** true: acknowledge each invalidation as it arrives (default) */
  autoAck: boolean;
  /** called for each invalidation before any automatic acknowledgement */
  onInvalidation: ((inv: Invalidation) => void) | null;
  ack(ids: number[]): void;
  refuse(ids: number[]): void;
  /** resolves once `n` invalidations in total have arrived */
  waitFor(n: number): Promise<Invalidation[]>;
  /** invalidations not yet acknowledged by this helper */
  unacked(): Invalidation[];
  end(): void;
  cancel(): void;
}

/** Open a client mirror on a fresh Subscribe stream. */
export function subscribe(t: TestDaemon, sessionId: number, name = "mirror", opts: { autoAck?: boolean } = {}): Promise<ClientMirror> {
  const client = new NotifierServiceClient(t.address, credentials.createInsecure());
  const call = client.subscribe(sessionMetadata(sessionId));
  const acked = new Set<number>();
  const waiters: { n: number; resolve: (v: Invalidation[]) => void; reject: (e: Error) => void }[] = [];
  let ended = false;
  const status = new Promise<StatusObject>((resolve) => {
    call.on("status", (s: StatusObject) => {
      ended = true;
      for (const w of waiters.splice(0)) w.reject(new Error(`stream ended (${s.code} ${s.details}) before ${w.n} invalidations`));
      client.close();
      resolve(s);
    });
  });
  call.on("error", () => {
    // the status event carries the outcome
  });
  return new Promise<ClientMirror>((resolve, reject) => {
    const m: ClientMirror = {
      mirrorId: 0,
      deadlineMs: 0,
      invalidations: [],
      batches: 0,
      dead: null,
      status,
      autoAck: opts.autoAck ?? true,
      onInvalidation: null,
      ack: (ids) => {
        for (const id of ids) acked.add(id);
        if (!ended) call.write({ ack: { invalidationIds: ids, refusedIds: [] } });
      },
      refuse: (ids) => {
        for (const id of ids) acked.add(id);
        if (!ended) call.write({ ack: { invalidationIds: [], refusedIds: ids } });
      },
      waitFor: (n) =>
        m.invalidations.length >= n
          ? Promise.resolve(m.invalidations.slice(0, n))
          : ended
            ? Promise.reject(new Error(`stream ended before ${n} invalidations`))
            : new Promise((res, rej) => waiters.push({ n, resolve: res, reject: rej })),
      unacked: () => m.invalidations.filter((i) => !acked.has(i.invalidationId)),
      end: () => call.end(),
      cancel: () => call.cancel(),
    };
    call.on("data", (msg: SubscribeResponse) => {
      if (msg.subscribed !== undefined) {
        m.mirrorId = msg.subscribed.mirrorId;
        m.deadlineMs = msg.subscribed.deadlineMs;
        resolve(m);
        return;
      }
      if (msg.dead !== undefined) {
        m.dead = msg.dead;
        return;
      }
      if (msg.invalidations !== undefined) {
        m.batches++;
        const auto: number[] = [];
        for (const inv of msg.invalidations.invalidations) {
          m.invalidations.push(inv);
          m.onInvalidation?.(inv);
          if (m.autoAck && !acked.has(inv.invalidationId)) auto.push(inv.invalidationId);
        }
        if (auto.length > 0) m.ack(auto);
        for (let i = waiters.length - 1; i >= 0; i--) {
          const w = waiters[i]!;
          if (m.invalidations.length >= w.n) {
            waiters.splice(i, 1);
            w.resolve(m.invalidations.slice(0, w.n));
          }
        }
      }
    });
    status.then((s) => reject(new Error(`Subscribe ended before it opened: ${s.code} ${s.details}`)));
    call.write({ open: { name } });
  });
}

/** Little-endian int32 fill: int i of the buffer = base + i. */
export function fillInts(nbytes: number, f: (i: number) => number): Buffer {
  const b = Buffer.alloc(nbytes);
  for (let i = 0; i < nbytes / 4; i++) b.writeInt32LE(f(i) | 0, i * 4);
  return b;
}

/** The int32 values of a buffer. */
export function ints(b: Uint8Array): Int32Array {
  const c = new Uint8Array(b);
  return new Int32Array(c.buffer, 0, Math.floor(c.length / 4));
}

/** First index where `b` differs from f(i), or -1. */
export function firstMismatch(b: Uint8Array, f: (i: number) => number): number {
  const v = ints(b);
  for (let i = 0; i < v.length; i++) if (v[i] !== (f(i) | 0)) return i;
  return -1;
}
