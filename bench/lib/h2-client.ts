/**
 * A load-generating client process for the RPC workloads (W8, W9, W10 (c)).
 *
 * It speaks gRPC's wire format over node:http2 directly (length-prefixed
 * messages, `grpc-status` trailers), as load tools such as ghz and h2load
 * do, with pre-encoded request bytes and undecoded answers: a call costs
 * the client an HTTP/2 stream and little else, so a couple of these
 * processes keep the daemon busy and the workload measures the server,
 * not the client library. Every workload and its no-op reference use it
 * alike.
 *
 * Driven over IPC (advanced serialization) by bench/lib/load-pool.ts:
 *   {type: "connect", address, session}           -> {type: "ready"}
 *   {type: "run", path, msgs, calls, concurrency, session?} -> {type: "done", t0, t1, lat, errors, firstError}
 * `msgs` are encoded request messages, used in turn (cycled); `t0`/`t1` are
 * process.hrtime in ns (CLOCK_MONOTONIC, the same clock in every process of
 * the host); `lat` the per-call latencies in ms.
 */
import http2 from "node:http2";

interface Connect {
  type: "connect";
  address: string;
  session: number;
}
interface Run {
  type: "run";
  path: string;
  msgs: Uint8Array[];
  calls: number;
  concurrency: number;
  /** the `mmsim-session` of this run's calls, if not the one given at connect */
  session?: number;
}

let session: http2.ClientHttp2Session | null = null;
let sessionId = "";

const send = (m: unknown): void => {
  process.send!(m);
};

function frame(msg: Uint8Array): Buffer {
  const b = Buffer.allocUnsafe(5 + msg.length);
  b[0] = 0;
  b.writeUInt32BE(msg.length, 1);
  b.set(msg, 5);
  return b;
}

/** One unary call; resolves with its grpc-status (and message if not 0). */
function call(path: string, body: Buffer, sid: string): Promise<string | null> {
  return new Promise((resolve) => {
    const s = session!.request({
      ":method": "POST",
      ":path": path,
      "content-type": "application/grpc",
      te: "trailers",
      "mmsim-session": sid,
    });
    let st: string | null = null;
    s.on("response", (h) => {
      const g = h["grpc-status"];
      if (g !== undefined) st = `${g as string} ${(h["grpc-message"] as string | undefined) ?? ""}`;
    });
    s.on("trailers", (h) => {
      const g = h["grpc-status"];
      st = g === "0" ? "0" : `${g as string} ${decodeURIComponent((h["grpc-message"] as string | undefined) ?? "")}`;
    });
    s.on("data", () => {});
    s.on("close", () => resolve(st === "0" ? null : (st ?? `stream closed (${s.rstCode})`)));
    s.on("error", () => {});
    s.end(body);
  });
}

async function run(r: Run): Promise<void> {
  const bodies = r.msgs.map(frame);
  const sid = r.session !== undefined ? String(r.session) : sessionId;
  const lat = new Float64Array(r.calls);
  let next = 0;
  let errors = 0;
  let firstError = "";
  const worker = async (): Promise<void> => {
    while (next < r.calls) {
      const i = next++;
      const a = process.hrtime.bigint();
      const e = await call(r.path, bodies[i % bodies.length]!, sid);
      lat[i] = Number(process.hrtime.bigint() - a) / 1e6;
      if (e !== null) {
        errors++;
        if (firstError === "") firstError = e;
      }
    }
  };
  const t0 = process.hrtime.bigint();
  await Promise.all(Array.from({ length: Math.min(r.concurrency, r.calls) }, worker));
  const t1 = process.hrtime.bigint();
  send({ type: "done", t0, t1, lat, errors, firstError });
}

process.on("message", (m: Connect | Run) => {
  if (m.type === "connect") {
    session = http2.connect(`http://${m.address}`);
    sessionId = String(m.session);
    session.on("error", (e) => {
      process.stderr.write(`h2-client: ${e.message}\n`);
      process.exit(1);
    });
    session.once("connect", () => send({ type: "ready" }));
    return;
  }
  run(m).catch((e: unknown) => {
    process.stderr.write(`h2-client: ${e instanceof Error ? e.message : String(e)}\n`);
    process.exit(1);
  });
});
// The harness went away: so do we.
process.on("disconnect", () => process.exit(0));
