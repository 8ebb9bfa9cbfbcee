/**
 * Bench-only gRPC services, added next to the product's services in the
 * bench daemon and never part of proto/: raw Buffer serializers, so the
 * no-op costs exactly grpc-js framing, HTTP/2 and the event loop.
 *
 *   NoopService/Unary      replies with a preset buffer (Configure sets its size)
 *   NoopService/Stream     request JSON {count, bytes}: `count` messages of `bytes`
 *   BenchService/Configure request JSON {unaryReplyBytes?, recordInvalidations?}
 *   BenchService/InvalidationTimes  JSON {ids, ns}: the client-mirror invalidations
 *                          started since recording was turned on (or since the
 *                          last call), with process.hrtime (CLOCK_MONOTONIC) in ns
 *   BenchService/Memory    request JSON {gc}: full GC first if asked (needs --expose-gc),
 *                          then process.memoryUsage() and process.cpuUsage() as JSON
 */
import {
  type Client,
  type handleServerStreamingCall,
  type handleUnaryCall,
  makeGenericClientConstructor,
  type ServiceDefinition,
  type UntypedServiceImplementation,
  status,
} from "@grpc/grpc-js";
import type { Kernel } from "../../src/mm/kernel.js";
import { notifierHubOf } from "../../src/server/notifier-service.js";

const id = (b: Buffer): Buffer => b;

function method(path: string, responseStream: boolean) {
  return {
    path,
    requestStream: false,
    responseStream,
    requestSerialize: id,
    requestDeserialize: id,
    responseSerialize: id,
    responseDeserialize: id,
  };
}

export const NOOP_UNARY_PATH = "/mmsim.bench.v1.NoopService/Unary";

export const NOOP_SERVICE = {
  unary: method(NOOP_UNARY_PATH, false),
  stream: method("/mmsim.bench.v1.NoopService/Stream", true),
} satisfies ServiceDefinition;

export const BENCH_SERVICE = {
  configure: method("/mmsim.bench.v1.BenchService/Configure", false),
  invalidationTimes: method("/mmsim.bench.v1.BenchService/InvalidationTimes", false),
  memory: method("/mmsim.bench.v1.BenchService/Memory", false),
} satisfies ServiceDefinition;

export const NoopClient = makeGenericClientConstructor(NOOP_SERVICE, "NoopService");
export const BenchClient = makeGenericClientConstructor(BENCH_SERVICE, "BenchService");

export interface MemoryReport {
  rss: number;
  heapUsed: number;
  heapTotal: number;
  external: number;
  arrayBuffers: number;
  gc: boolean;
  /** process CPU time so far, µs */
  cpuUserUs: number;
  cpuSystemUs: number;
}

function json(b: Buffer): Record<string, unknown> {
  return b.length === 0 ? {} : (JSON.parse(b.toString("utf8")) as Record<string, unknown>);
}

/** The server side of both services (`kernel`: the daemon's, for InvalidationTimes). */
export function benchImplementations(kernel?: Kernel): { noop: UntypedServiceImplementation; bench: UntypedServiceImplementation } {
  let reply = Buffer.alloc(0);
  let ids: number[] = [];
  let ns: number[] = [];
  const record = (_mirror: number, id: number): void => {
    ids.push(id);
    ns.push(Number(process.hrtime.bigint()));
  };
  const unary: handleUnaryCall<Buffer, Buffer> = (_call, cb) => cb(null, reply);
  const stream: handleServerStreamingCall<Buffer, Buffer> = (call) => {
    const { count = 0, bytes = 0 } = json(call.request) as { count?: number; bytes?: number };
    const msg = Buffer.alloc(bytes);
    let i = 0;
    const pump = (): void => {
      while (i < count) {
        i++;
        if (!call.write(msg)) {
          call.once("drain", pump);
          return;
        }
      }
      call.end();
    };
    pump();
  };
  const configure: handleUnaryCall<Buffer, Buffer> = (call, cb) => {
    const { unaryReplyBytes, recordInvalidations } = json(call.request) as { unaryReplyBytes?: number; recordInvalidations?: boolean };
    if (typeof unaryReplyBytes === "number") reply = Buffer.alloc(unaryReplyBytes, 0x08);
    if (typeof recordInvalidations === "boolean") {
      const hub = kernel !== undefined ? notifierHubOf(kernel) : undefined;
      if (hub === undefined) return cb({ code: status.FAILED_PRECONDITION, details: "no notifier hub" });
      hub.onQueued = recordInvalidations ? record : null;
      ids = [];
      ns = [];
    }
    cb(null, Buffer.alloc(0));
  };
  const invalidationTimes: handleUnaryCall<Buffer, Buffer> = (_call, cb) => {
    const out = Buffer.from(JSON.stringify({ ids, ns }));
    ids = [];
    ns = [];
    cb(null, out);
  };
  const memory: handleUnaryCall<Buffer, Buffer> = (call, cb) => {
    const gc = (globalThis as { gc?: () => void }).gc;
    if (gc && json(call.request).gc === true) {
      gc();
      gc();
    }
    const m = process.memoryUsage();
    const c = process.cpuUsage();
    const r: MemoryReport = {
      rss: m.rss,
      heapUsed: m.heapUsed,
      heapTotal: m.heapTotal,
      external: m.external,
      arrayBuffers: m.arrayBuffers,
      gc: gc !== undefined,
      cpuUserUs: c.user,
      cpuSystemUs: c.system,
    };
    cb(null, Buffer.from(JSON.stringify(r)));
  };
  return { noop: { unary, stream }, bench: { configure, invalidationTimes, memory } };
}

export type RawClient = Client & Record<string, (...a: unknown[]) => unknown>;
