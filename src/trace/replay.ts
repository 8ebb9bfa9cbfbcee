/**
 * Replay of a trace (trace.proto) into a daemon: the records are fed in
 * order, ids the daemon allocates (sessions, mms, files, pagemaps, PFN
 * ranges, pin handles, mirrors, notifiers, dmirror devices and mirrors) are
 * mapped from the recorded run to the replayed one, and each step's status,
 * errno, response and the invalidations it delivered to client mirrors are
 * compared with the recording. Replay stops at the first step that differs.
 *
 * Client mirrors are played by the replayer: it opens a Subscribe stream
 * where the recording opened one and answers each invalidation as the
 * recorded client did (acknowledged or refused; an invalidation that was
 * never answered is acknowledged).
 */
import {
  type ChannelCredentials,
  type ClientDuplexStream,
  type ClientReadableStream,
  Client,
  credentials,
  Metadata,
  type ServiceError,
  type StatusObject,
} from "@grpc/grpc-js";
import { Invalidation, SubscribeRequest, SubscribeResponse } from "../gen/mmsim/v1/notifier.js";
import { SessionServiceService } from "../gen/mmsim/v1/session.js";
import { TraceAnswer, type TraceRecord, TraceRecordKind } from "../gen/mmsim/v1/trace.js";
import type { TraceContents } from "./file.js";
import { METHODS } from "./methods.js";

/** Kind of daemon-allocated id a field holds, by field name (and service where names collide). */
function idKind(service: string, field: string): string | undefined {
  switch (field) {
    case "sessionId":
    case "ownerSessionId":
      return "session";
    case "mmId":
    case "childMmId":
    case "parentMmId":
      return "mm";
    case "fileId":
      return "file";
    case "pgmapId":
      return "pgmap";
    case "pfnRangeId":
      return "pfn-range";
    case "handle":
      return "pin";
    case "notifierId":
    case "notifierIds":
      return "notifier";
    case "deviceId":
      return "dmirror-device";
    case "dmirrorId":
      return "dmirror-mirror";
    case "mirrorId":
      return service === "DmirrorService" ? "dmirror-mirror" : "mirror";
    default:
      return undefined;
  }
}

export interface Difference {
  path: string;
  recorded: unknown;
  replayed: unknown;
}

export interface StepResult {
  code: number;
  codeName: string;
  errno: number;
  message: string;
  response: unknown;
  deliveries: { mirrorId: number; invalidation: unknown; answer: string }[];
}

export interface ReplayMismatch {
  /** seq of the record */
  step: number;
  /** 1-based position in the file */
  index: number;
  method: string;
  kind: string;
  recorded: StepResult;
  replayed: StepResult;
  diffs: Difference[];
}

export interface ReplayReport {
  records: number;
  matched: number;
  torn: string | undefined;
  mismatch: ReplayMismatch | undefined;
}

export interface ReplayOptions {
  /** host:port of the daemon to replay into */
  target: string;
  /** per-call deadline, ms */
  timeoutMs?: number;
  /** called after each matching step */
  onStep?: (index: number, rec: TraceRecord) => void;
  /** channel credentials (default plaintext) */
  credentials?: ChannelCredentials;
  /** extra metadata sent on every call and stream (e.g. an authorization header) */
  headers?: Record<string, string>;
}

const CODE_NAMES = [
  "OK",
  "CANCELLED",
  "UNKNOWN",
  "INVALID_ARGUMENT",
  "DEADLINE_EXCEEDED",
  "NOT_FOUND",
  "ALREADY_EXISTS",
  "PERMISSION_DENIED",
  "RESOURCE_EXHAUSTED",
  "FAILED_PRECONDITION",
  "ABORTED",
  "OUT_OF_RANGE",
  "UNIMPLEMENTED",
  "INTERNAL",
  "UNAVAILABLE",
  "DATA_LOSS",
  "UNAUTHENTICATED",
];

const ANSWER_NAMES: Record<number, string> = {
  [TraceAnswer.TRACE_ANSWER_ACKED]: "acked",
  [TraceAnswer.TRACE_ANSWER_REFUSED]: "refused",
  [TraceAnswer.TRACE_ANSWER_NONE]: "none",
};

/** A decoded message as JSON-friendly data (bytes as hex). */
export function plain(v: unknown): unknown {
  if (v instanceof Uint8Array) return Buffer.from(v).toString("hex");
  if (Array.isArray(v)) return v.map(plain);
  if (typeof v === "object" && v !== null) {
    const o: Record<string, unknown> = {};
    for (const [k, x] of Object.entries(v)) if (x !== undefined) o[k] = plain(x);
    return o;
  }
  return v;
}

function serviceOf(method: string): string {
  const m = /^\/mmsim\.v1\.([A-Za-z]+)\//.exec(method);
  return m?.[1] ?? "";
}

const identity = (b: Buffer): Buffer => b;

class IdMaps {
  private readonly fwd = new Map<string, Map<number, number>>();

  get(kind: string, rec: number): number {
    return this.fwd.get(kind)?.get(rec) ?? rec;
  }

  has(kind: string, rec: number): boolean {
    return this.fwd.get(kind)?.has(rec) ?? false;
  }

  set(kind: string, rec: number, rep: number): void {
    let m = this.fwd.get(kind);
    if (m === undefined) this.fwd.set(kind, (m = new Map()));
    m.set(rec, rep);
  }

  /** Translate the recorded ids of a decoded message in place; true when something changed. */
  translate(service: string, v: unknown): boolean {
    if (typeof v !== "object" || v === null || v instanceof Uint8Array) return false;
    let changed = false;
    if (Array.isArray(v)) {
      for (const x of v) changed = this.translate(service, x) || changed;
      return changed;
    }
    const o = v as Record<string, unknown>;
    for (const [k, x] of Object.entries(o)) {
      const kind = idKind(service, k);
      if (kind !== undefined && typeof x === "number" && x !== 0) {
        const y = this.get(kind, x);
        if (y !== x) (o[k] = y), (changed = true);
      } else if (kind !== undefined && Array.isArray(x)) {
        for (let i = 0; i < x.length; i++) {
          if (typeof x[i] !== "number" || x[i] === 0) continue;
          const y = this.get(kind, x[i] as number);
          if (y !== x[i]) (x[i] = y), (changed = true);
        }
      } else changed = this.translate(service, x) || changed;
    }
    return changed;
  }

  /** Learn ids first seen in a recorded response from the replayed one. */
  learn(service: string, rec: unknown, rep: unknown): void {
    if (typeof rec !== "object" || rec === null || typeof rep !== "object" || rep === null || rec instanceof Uint8Array) return;
    if (Array.isArray(rec)) {
      if (!Array.isArray(rep)) return;
      for (let i = 0; i < Math.min(rec.length, rep.length); i++) this.learn(service, rec[i], rep[i]);
      return;
    }
    const r = rep as Record<string, unknown>;
    for (const [k, x] of Object.entries(rec as Record<string, unknown>)) {
      const y = r[k];
      const kind = idKind(service, k);
      if (kind !== undefined && typeof x === "number" && typeof y === "number") {
        if (x !== 0 && y !== 0 && !this.has(kind, x)) this.set(kind, x, y);
      } else if (kind !== undefined && Array.isArray(x) && Array.isArray(y)) {
        for (let i = 0; i < Math.min(x.length, y.length); i++)
          if (typeof x[i] === "number" && typeof y[i] === "number" && x[i] !== 0 && !this.has(kind, x[i] as number)) this.set(kind, x[i] as number, y[i] as number);
      } else this.learn(service, x, y);
    }
  }
}

/** Field-level differences between a recorded and a replayed decoded message (recorded ids mapped). */
function diff(maps: IdMaps, service: string, path: string, rec: unknown, rep: unknown, kind: string | undefined, out: Difference[]): void {
  if (rec instanceof Uint8Array || rep instanceof Uint8Array) {
    const a = rec instanceof Uint8Array ? Buffer.from(rec) : undefined;
    const b = rep instanceof Uint8Array ? Buffer.from(rep) : undefined;
    if (a === undefined || b === undefined || !a.equals(b)) {
      let at = 0;
      if (a !== undefined && b !== undefined) while (at < Math.min(a.length, b.length) && a[at] === b[at]) at++;
      out.push({ path: a !== undefined && b !== undefined ? `${path}[byte ${at}]` : path, recorded: plain(rec), replayed: plain(rep) });
    }
    return;
  }
  if (Array.isArray(rec) && Array.isArray(rep)) {
    if (rec.length !== rep.length) out.push({ path: `${path}.length`, recorded: rec.length, replayed: rep.length });
    for (let i = 0; i < Math.min(rec.length, rep.length); i++) diff(maps, service, `${path}[${i}]`, rec[i], rep[i], kind, out);
    return;
  }
  if (typeof rec === "object" && rec !== null && typeof rep === "object" && rep !== null && !Array.isArray(rec) && !Array.isArray(rep)) {
    const a = rec as Record<string, unknown>;
    const b = rep as Record<string, unknown>;
    for (const k of new Set([...Object.keys(a), ...Object.keys(b)])) diff(maps, service, path === "" ? k : `${path}.${k}`, a[k], b[k], idKind(service, k), out);
    return;
  }
  const expected = kind !== undefined && typeof rec === "number" && rec !== 0 ? maps.get(kind, rec) : rec;
  if (expected !== rep && !(expected === undefined && rep === undefined)) out.push({ path, recorded: plain(rec), replayed: plain(rep) });
}

interface Outcome {
  code: number;
  errno: number;
  message: string;
  response: Buffer;
}

interface ReplayMirror {
  call: ClientDuplexStream<Buffer, Buffer>;
  mirrorId: number;
  /** invalidations received during the current step */
  received: Invalidation[];
  status: Promise<StatusObject>;
}

interface OpenStream {
  kind: "subscribe" | "attach";
  sessionRec: number;
  mirror?: ReplayMirror;
  attach?: ClientReadableStream<Buffer>;
  status: Promise<StatusObject>;
}

function errnoOf(md: Metadata | undefined): number {
  const v = md?.get("mmsim-errno")[0];
  return typeof v === "string" ? Number(v) : 0;
}

/** Replay `trace` into the daemon at opts.target. */
export async function replayTrace(trace: TraceContents, opts: ReplayOptions): Promise<ReplayReport> {
  const client = new Client(opts.target, opts.credentials ?? credentials.createInsecure(), { "grpc.max_receive_message_length": 2 ** 31 - 1, "grpc.max_send_message_length": 2 ** 31 - 1 });
  const timeoutMs = opts.timeoutMs ?? 60_000;
  const maps = new IdMaps();
  const streams = new Map<number, OpenStream>();
  const mirrors = new Map<number, ReplayMirror>();
  /** recorded deliveries of the step being replayed */
  let expected: TraceRecord["deliveries"] = [];

  const baseMd = (): Metadata => {
    const md = new Metadata();
    for (const [k, v] of Object.entries(opts.headers ?? {})) md.set(k, v);
    return md;
  };
  const sessionMd = (rec: TraceRecord): Metadata => {
    const md = baseMd();
    if (rec.sessionId !== 0) md.set("mmsim-session", String(maps.get("session", rec.sessionId)));
    return md;
  };

  const unary = (path: string, req: Buffer, md: Metadata): Promise<Outcome> =>
    new Promise((resolve) => {
      client.makeUnaryRequest(path, identity, identity, req, md, { deadline: Date.now() + timeoutMs }, (err: ServiceError | null, res?: Buffer) => {
        if (err) resolve({ code: err.code, errno: errnoOf(err.metadata), message: err.details, response: Buffer.alloc(0) });
        else resolve({ code: 0, errno: 0, message: "", response: res ?? Buffer.alloc(0) });
      });
    });

  /** The recorded answer for the n-th invalidation of replayed mirror `id` in this step. */
  const answerFor = (id: number, n: number): TraceAnswer => {
    const mine = expected.filter((d) => maps.get("mirror", d.mirrorId) === id);
    return mine[n]?.answer ?? TraceAnswer.TRACE_ANSWER_ACKED;
  };

  const openMirror = (rec: TraceRecord): Promise<{ outcome: Outcome; stream: OpenStream }> => {
    const call = client.makeBidiStreamRequest(rec.method, identity, identity, sessionMd(rec), {});
    const statusP = new Promise<StatusObject>((resolve) => call.on("status", resolve));
    call.on("error", () => {
      // the status event carries the outcome
    });
    const mirror: ReplayMirror = { call, mirrorId: 0, received: [], status: statusP };
    const stream: OpenStream = { kind: "subscribe", sessionRec: rec.sessionId, mirror, status: statusP };
    return new Promise((resolve) => {
      let first = true;
      call.on("data", (buf: Buffer) => {
        const msg = SubscribeResponse.decode(buf);
        if (first) {
          first = false;
          if (msg.subscribed !== undefined) {
            mirror.mirrorId = msg.subscribed.mirrorId;
            mirrors.set(mirror.mirrorId, mirror);
          }
          resolve({ outcome: { code: 0, errno: 0, message: "", response: buf }, stream });
          return;
        }
        if (msg.invalidations === undefined) return;
        const ack: number[] = [];
        const refused: number[] = [];
        for (const inv of msg.invalidations.invalidations) {
          const n = mirror.received.length;
          mirror.received.push(inv);
          (answerFor(mirror.mirrorId, n) === TraceAnswer.TRACE_ANSWER_REFUSED ? refused : ack).push(inv.invalidationId);
        }
        call.write(Buffer.from(SubscribeRequest.encode({ ack: { invalidationIds: ack, refusedIds: refused } }).finish()));
      });
      void statusP.then((s) => {
        if (first) resolve({ outcome: { code: s.code, errno: errnoOf(s.metadata), message: s.details, response: Buffer.alloc(0) }, stream });
      });
      call.write(Buffer.from(rec.request));
    });
  };

  const openAttach = (rec: TraceRecord): Promise<{ outcome: Outcome; stream: OpenStream }> => {
    const codec = METHODS.get(rec.method)!;
    const req = codec.requestDeserialize(Buffer.from(rec.request));
    maps.translate("SessionService", req);
    const call = client.makeServerStreamRequest(rec.method, identity, identity, codec.requestSerialize(req), baseMd(), {});
    const statusP = new Promise<StatusObject>((resolve) => call.on("status", resolve));
    call.on("error", () => {
      // the status event carries the outcome
    });
    const stream: OpenStream = { kind: "attach", sessionRec: rec.sessionId, attach: call, status: statusP };
    return new Promise((resolve) => {
      let first = true;
      call.on("data", () => {
        if (!first) return;
        first = false;
        resolve({ outcome: { code: 0, errno: 0, message: "", response: Buffer.alloc(0) }, stream });
      });
      void statusP.then((s) => {
        if (first) resolve({ outcome: { code: s.code, errno: errnoOf(s.metadata), message: s.details, response: Buffer.alloc(0) }, stream });
      });
    });
  };

  /** After an AttachSession stream is cancelled: wait until the daemon has seen it (session ended or one stream fewer). */
  const detached = async (sessionRec: number, before: number): Promise<void> => {
    const id = maps.get("session", sessionRec);
    const deadline = Date.now() + timeoutMs;
    const list = SessionServiceService.listSessions;
    while (Date.now() < deadline) {
      const r = await unary(list.path, list.requestSerialize({}), baseMd());
      const s = r.code === 0 ? list.responseDeserialize(r.response).sessions.find((x) => x.sessionId === id) : undefined;
      if (s === undefined || s.attachedStreams < before) return;
      await new Promise((res) => setTimeout(res, 5));
    }
  };

  const attachedCount = async (sessionRec: number): Promise<number> => {
    const list = SessionServiceService.listSessions;
    const r = await unary(list.path, list.requestSerialize({}), baseMd());
    if (r.code !== 0) return 0;
    return list.responseDeserialize(r.response).sessions.find((x) => x.sessionId === maps.get("session", sessionRec))?.attachedStreams ?? 0;
  };

  const result = (codec: ((b: Buffer) => unknown) | undefined, toJson: ((v: unknown) => unknown) | undefined, o: Outcome, deliveries: { mirrorId: number; invalidation: unknown; answer: string }[]): StepResult => {
    let response: unknown;
    if (o.code === 0 && o.response.length > 0 && codec !== undefined) {
      try {
        const v = codec(o.response);
        response = toJson !== undefined ? toJson(v) : plain(v);
      } catch {
        response = o.response.toString("hex");
      }
    } else if (o.code === 0) response = {};
    return { code: o.code, codeName: CODE_NAMES[o.code] ?? String(o.code), errno: o.errno, message: o.message, response, deliveries };
  };

  let matched = 0;
  let mismatch: ReplayMismatch | undefined;
  try {
    for (let i = 0; i < trace.records.length; i++) {
      const rec = trace.records[i]!;
      const service = serviceOf(rec.method);
      const codec = METHODS.get(rec.method);
      for (const m of mirrors.values()) m.received = [];
      expected = rec.deliveries;
      let got: Outcome;
      let decodeResponse: ((b: Buffer) => unknown) | undefined = codec?.responseDeserialize;
      let toJson: ((v: unknown) => unknown) | undefined = codec?.responseToJson;
      if (rec.kind === TraceRecordKind.TRACE_RECORD_KIND_UNARY) {
        if (codec === undefined) throw new ReplayError(`record ${i + 1} (step ${rec.seq}): unknown method ${rec.method}`);
        let body: Buffer = Buffer.from(rec.request);
        try {
          const req = codec.requestDeserialize(body);
          if (maps.translate(service, req)) body = codec.requestSerialize(req);
        } catch {
          // recorded as undecodable: sent as it was
        }
        got = await unary(rec.method, body, sessionMd(rec));
      } else if (rec.kind === TraceRecordKind.TRACE_RECORD_KIND_STREAM_OPEN) {
        let r: { outcome: Outcome; stream: OpenStream };
        if (rec.method === "/mmsim.v1.NotifierService/Subscribe") {
          r = await openMirror(rec);
          decodeResponse = (b) => SubscribeResponse.decode(b);
          toJson = (v) => SubscribeResponse.toJSON(v as SubscribeResponse);
        } else if (rec.method === "/mmsim.v1.SessionService/AttachSession") r = await openAttach(rec);
        else throw new ReplayError(`record ${i + 1} (step ${rec.seq}): streams of ${rec.method} cannot be replayed`);
        streams.set(rec.seq, r.stream);
        got = r.outcome;
      } else if (rec.kind === TraceRecordKind.TRACE_RECORD_KIND_STREAM_CLOSE) {
        const s = streams.get(rec.streamId);
        if (s === undefined) throw new ReplayError(`record ${i + 1} (step ${rec.seq}): closes stream ${rec.streamId}, which the trace never opened`);
        streams.delete(rec.streamId);
        if (s.mirror !== undefined) {
          s.mirror.call.end();
          await s.status;
          mirrors.delete(s.mirror.mirrorId);
        } else if (s.attach !== undefined) {
          const before = await attachedCount(s.sessionRec);
          s.attach.cancel();
          await detached(s.sessionRec, before);
        }
        got = { code: 0, errno: 0, message: "", response: Buffer.alloc(0) };
      } else {
        throw new ReplayError(`record ${i + 1} (step ${rec.seq}): unknown record kind ${rec.kind}`);
      }

      // Compare.
      const diffs: Difference[] = [];
      if (rec.code !== got.code) diffs.push({ path: "status", recorded: CODE_NAMES[rec.code] ?? rec.code, replayed: CODE_NAMES[got.code] ?? got.code });
      if (rec.errnoValue !== got.errno) diffs.push({ path: "errno", recorded: rec.errnoValue, replayed: got.errno });
      let recDecoded: unknown;
      let repDecoded: unknown;
      if (rec.code === 0 && got.code === 0 && decodeResponse !== undefined && (rec.response.length > 0 || got.response.length > 0)) {
        try {
          recDecoded = decodeResponse(Buffer.from(rec.response));
          repDecoded = decodeResponse(got.response);
        } catch (e) {
          diffs.push({ path: "response", recorded: Buffer.from(rec.response).toString("hex"), replayed: `${got.response.toString("hex")} (${(e as Error).message})` });
        }
        if (recDecoded !== undefined && repDecoded !== undefined) {
          maps.learn(service, recDecoded, repDecoded);
          diff(maps, service, "response", recDecoded, repDecoded, undefined, diffs);
        }
      }
      // Deliveries (unary steps and stream closes, e.g. a release after the last AttachSession stream).
      const recDel = rec.deliveries.map((d) => ({ mirrorId: d.mirrorId, inv: Invalidation.decode(d.invalidation), answer: d.answer }));
      const repDel: { mirrorId: number; inv: Invalidation }[] = [];
      for (const m of mirrors.values()) for (const inv of m.received) repDel.push({ mirrorId: m.mirrorId, inv });
      if (rec.kind !== TraceRecordKind.TRACE_RECORD_KIND_STREAM_OPEN) {
        const byMirror = (a: { mirrorId: number; inv: Invalidation }, b: { mirrorId: number; inv: Invalidation }) => a.mirrorId - b.mirrorId || a.inv.invalidationId - b.inv.invalidationId;
        const recSorted = recDel.sort((a, b) => maps.get("mirror", a.mirrorId) - maps.get("mirror", b.mirrorId) || a.inv.invalidationId - b.inv.invalidationId);
        repDel.sort(byMirror);
        if (recSorted.length !== repDel.length) diffs.push({ path: "deliveries.length", recorded: recSorted.length, replayed: repDel.length });
        for (let j = 0; j < Math.min(recSorted.length, repDel.length); j++) {
          const a = recSorted[j]!;
          const b = repDel[j]!;
          if (maps.get("mirror", a.mirrorId) !== b.mirrorId) diffs.push({ path: `deliveries[${j}].mirrorId`, recorded: a.mirrorId, replayed: b.mirrorId });
          diff(maps, "NotifierService", `deliveries[${j}]`, a.inv, b.inv, undefined, diffs);
        }
      }
      if (diffs.length > 0) {
        const recOutcome: Outcome = { code: rec.code, errno: rec.errnoValue, message: rec.message, response: Buffer.from(rec.response) };
        const recorded = result(decodeResponse, toJson, recOutcome, recDel.map((d) => ({ mirrorId: d.mirrorId, invalidation: Invalidation.toJSON(d.inv), answer: ANSWER_NAMES[d.answer] ?? String(d.answer) })));
        const replayed = result(decodeResponse, toJson, got, repDel.map((d) => ({ mirrorId: d.mirrorId, invalidation: Invalidation.toJSON(d.inv), answer: "acked" })));
        // enum fields: show their names as the JSON forms spell them
        for (const d of diffs) {
          const named = (side: StepResult, raw: unknown, deliveries: boolean) => {
            const v = jsonAt(deliveries ? side.deliveries.map((x) => x.invalidation) : side.response, d.path.replace(/^(response|deliveries)\.?/, ""));
            return typeof raw === "number" && typeof v === "string" ? v : raw;
          };
          const isDel = d.path.startsWith("deliveries[");
          if (d.path.startsWith("response.") || isDel) {
            d.recorded = named(recorded, d.recorded, isDel);
            d.replayed = named(replayed, d.replayed, isDel);
          }
        }
        mismatch = {
          step: rec.seq,
          index: i + 1,
          method: rec.method,
          kind: TraceRecordKind[rec.kind] ?? String(rec.kind),
          recorded,
          replayed,
          diffs,
        };
        break;
      }
      matched++;
      opts.onStep?.(i + 1, rec);
    }
  } finally {
    for (const s of streams.values()) {
      if (s.mirror !== undefined) s.mirror.call.cancel();
      s.attach?.cancel();
    }
    client.close();
  }
  return { records: trace.records.length, matched, torn: trace.torn, mismatch };
}

/** The value at a diff path ("vmas[0].reaped", or "[0].start" for deliveries) of a JSON form. */
function jsonAt(v: unknown, path: string): unknown {
  let cur = v;
  const parts = path.match(/[^.[\]]+|\[\d+\]/g) ?? [];
  for (const p of parts) {
    if (typeof cur !== "object" || cur === null) return undefined;
    cur = p.startsWith("[") ? (cur as unknown[])[Number(p.slice(1, -1))] : (cur as Record<string, unknown>)[p];
  }
  return cur;
}

/** The trace cannot be replayed (unknown method or record kind, a stream closed that was never opened). */
export class ReplayError extends Error {
  constructor(message: string) {
    super(message);
    this.name = "ReplayError";
  }
}

/** The human-readable report of a mismatch. */
export function describeMismatch(m: ReplayMismatch): string {
  const lines = [`step ${m.step} differs: ${m.method}${m.kind !== "TRACE_RECORD_KIND_UNARY" ? ` (${m.kind.replace("TRACE_RECORD_KIND_", "").toLowerCase()})` : ""}`];
  lines.push("  differences:");
  for (const d of m.diffs) lines.push(`    ${d.path}: ${JSON.stringify(d.recorded)} -> ${JSON.stringify(d.replayed)}`);
  lines.push(`  recorded: ${JSON.stringify(m.recorded)}`);
  lines.push(`  replayed: ${JSON.stringify(m.replayed)}`);
  return lines.join("\n");
}
