/**
 * The GUP gRPC service as the RPC workloads (W5, W9, W12) use it, behind one
 * small interface: GupService.PinUserPages (pin_user_pages, range output)
 * and GupService.UnpinHandle (proto/mmsim/v1/gup.proto).
 */
import type { Client } from "@grpc/grpc-js";
import {
  GupOutput,
  GupServiceClient,
  GupVariant,
  PinUserPagesRequest,
  PinUserPagesResponse,
  type UnpinHandleRequest,
} from "../../src/gen/mmsim/v1/gup.js";
import type { BenchDaemon } from "./daemon.js";

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

function request(mmId: number, start: number, nrPages: number, gupFlags: number): PinUserPagesRequest {
  return { variant: GupVariant.GUP_VARIANT_PIN_USER_PAGES, mmId, start, nrPages, gupFlags, output: GupOutput.GUP_OUTPUT_RANGES, wantFolioRuns: false };
}

function bind(d: BenchDaemon): RpcPinner {
  const client = d.client(GupServiceClient) as unknown as Client;
  return {
    pin: async (mmId, start, nrPages, gupFlags) => {
      const r = await d.unary<PinUserPagesRequest, PinUserPagesResponse>(client, "pinUserPages", request(mmId, start, nrPages, gupFlags));
      return { pages: r.ret, handle: r.handle, entries: r.ranges.length, bytes: PinUserPagesResponse.encode(r).finish().length };
    },
    release: async (handle) => {
      await d.unary<UnpinHandleRequest, unknown>(client, "unpinHandle", { handle, makeDirty: false });
    },
    requestBytes: (mmId, start, nrPages, gupFlags) => PinUserPagesRequest.encode(request(mmId, start, nrPages, gupFlags)).finish().length,
  };
}

/** Always available now that GupService exists (kept for the workloads' `unavailable` hook). */
export async function gupRpcUnavailable(): Promise<string | null> {
  return null;
}

/** The pinner on daemon `d`, after a smoke pin of 2 MiB of `mmId` at `start`. */
export async function gupRpc(d: BenchDaemon, mmId: number, start: number): Promise<RpcPinner> {
  const p = bind(d);
  const a = await p.pin(mmId, start, 512, 0);
  if (a.pages !== 512) throw new Error(`GupService smoke pin answered ${JSON.stringify(a)}`);
  await p.release(a.handle);
  return p;
}
