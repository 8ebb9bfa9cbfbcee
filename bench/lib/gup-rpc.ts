/**
 * The GUP gRPC service as the RPC workloads (W5, W9, W12) use it, behind one
 * small interface, so that only this file changes when the service's
 * messages are settled. Until src/gen/mmsim/v1/gup.ts exists (GupService in
 * proto/mmsim/v1/gup.proto), `gupRpcUnavailable()` gives the skip reason.
 *
 * Binding assumed (checked at run time by a smoke pin): GupServiceClient with
 * unary pinUserPages({mmId, start, nrPages, gupFlags, ...}) answering
 * {ret | pinned, handle | pinHandle, ranges[]}, and releasePins /
 * unpinHandle({handle}). Adjust `bind()` if the service differs.
 */
import type { Client } from "@grpc/grpc-js";
import type { BenchDaemon } from "./daemon.js";
import { hasSource, importSource } from "./optional.js";

const GEN = "src/gen/mmsim/v1/gup.ts";

export interface PinAnswer {
  pages: number;
  handle: number;
  entries: number;
  /** encoded size of the answer, bytes */
  bytes: number;
}

export interface RpcPinner {
  /** pin [start, start + nrPages pages) of `mmId`, range output */
  pin(mmId: number, start: number, nrPages: number, gupFlags: number): Promise<PinAnswer>;
  release(handle: number): Promise<void>;
  /** encoded request size of a pin call (for the no-op of the same size) */
  requestBytes(mmId: number, start: number, nrPages: number, gupFlags: number): number;
}

type Gen = Record<string, unknown>;
type Codec = { encode(m: unknown): { finish(): Uint8Array } };

function pick<T>(o: Record<string, unknown>, names: string[]): [string, T] | null {
  for (const n of names) if (o[n] !== undefined) return [n, o[n] as T];
  return null;
}

function bind(gen: Gen, d: BenchDaemon): RpcPinner | string {
  const Ctor = gen.GupServiceClient as (new (...a: never[]) => Client) | undefined;
  if (Ctor === undefined) return `${GEN} has no GupServiceClient`;
  const client = d.client(Ctor as never) as unknown as Record<string, unknown>;
  const pinM = pick<unknown>(client, ["pinUserPages", "pinUserPagesFast", "pin"]);
  const relM = pick<unknown>(client, ["releasePins", "unpinHandle", "releasePinHandle", "unpinUserPages", "release"]);
  if (pinM === null || relM === null) return `GupServiceClient lacks a pin or release method (bench/lib/gup-rpc.ts bind())`;
  const reqCodec = pick<Codec>(gen, ["PinUserPagesRequest", "PinRequest"]);
  const c = client as unknown as Client;
  const req = (mmId: number, start: number, nrPages: number, gupFlags: number) => ({ mmId, start, addr: start, nrPages, gupFlags, output: 1 });
  return {
    pin: async (mmId, start, nrPages, gupFlags) => {
      const r = await d.unary<object, Record<string, unknown>>(c, pinM[0], req(mmId, start, nrPages, gupFlags));
      const ranges = (r.ranges ?? r.runs ?? []) as unknown[];
      const resCodec = pick<Codec>(gen, ["PinUserPagesResponse", "PinResponse"]);
      return {
        pages: Number(r.ret ?? r.pinned ?? r.nrPinned ?? 0),
        handle: Number(r.handle ?? r.pinHandle ?? 0),
        entries: ranges.length,
        bytes: resCodec ? resCodec[1].encode(r).finish().length : 0,
      };
    },
    release: async (handle) => {
      await d.unary(c, relM[0], { handle, pinHandle: handle });
    },
    requestBytes: (mmId, start, nrPages, gupFlags) => (reqCodec ? reqCodec[1].encode(req(mmId, start, nrPages, gupFlags)).finish().length : 32),
  };
}

export async function gupRpcUnavailable(): Promise<string | null> {
  if (!hasSource(GEN)) return "GupService over gRPC is not there yet (no src/gen/mmsim/v1/gup.ts)";
  const gen = await importSource<Gen>(GEN);
  return gen.GupServiceClient === undefined ? `${GEN} has no GupServiceClient` : null;
}

/** The pinner on daemon `d`, after a smoke pin of 2 MiB of `mmId` at `start`. */
export async function gupRpc(d: BenchDaemon, mmId: number, start: number): Promise<RpcPinner> {
  const gen = await importSource<Gen>(GEN);
  const p = bind(gen, d);
  if (typeof p === "string") throw new Error(p);
  const a = await p.pin(mmId, start, 512, 0);
  if (a.pages !== 512) throw new Error(`GupService smoke pin answered ${JSON.stringify(a)}; fix bench/lib/gup-rpc.ts bind()`);
  await p.release(a.handle);
  return p;
}
