/**
 * The two shapes a pin answer can take on the wire, encoded and decoded
 * with the same runtime and the same code shape as the product's ts-proto
 * stubs (@bufbuild/protobuf BinaryWriter/BinaryReader, mmsim.v1.PfnRange):
 *
 *   ranges: repeated mmsim.v1.PfnRange ranges = 1;   (one entry per merged run)
 *   array:  repeated uint64 pfns = 1;                 (packed, one varint per page)
 *
 * Used by W7 until the GUP gRPC service defines its answer message; then W7
 * measures that message instead.
 */
import { BinaryReader, BinaryWriter } from "@bufbuild/protobuf/wire";
import { PfnRange } from "../../src/gen/mmsim/v1/common.js";
import type { RunsLike } from "./gup-api.js";

export function encodeRanges(b: RunsLike): Uint8Array {
  const w = new BinaryWriter();
  for (let i = 0; i < b.end; i++) PfnRange.encode({ pfn: b.pfns[i]!, count: b.npfns[i]! }, w.uint32(10).fork()).join();
  return w.finish();
}

export function decodeRanges(buf: Uint8Array): PfnRange[] {
  const r = new BinaryReader(buf);
  const out: PfnRange[] = [];
  while (r.pos < r.len) {
    const tag = r.uint32();
    if (tag === 10) out.push(PfnRange.decode(r, r.uint32()));
    else r.skip(tag & 7);
  }
  return out;
}

export function encodePfnArray(pages: ArrayLike<number>, n: number): Uint8Array {
  const w = new BinaryWriter();
  w.uint32(10).fork();
  for (let i = 0; i < n; i++) w.uint64(pages[i]!);
  w.join();
  return w.finish();
}

export function decodePfnArray(buf: Uint8Array): number[] {
  const r = new BinaryReader(buf);
  const out: number[] = [];
  while (r.pos < r.len) {
    const tag = r.uint32();
    if (tag === 10) {
      const end = r.uint32() + r.pos;
      while (r.pos < end) out.push(Number(r.uint64()));
    } else r.skip(tag & 7);
  }
  return out;
}

function varintLen(v: number): number {
  let n = 1;
  while (v >= 128) {
    v = Math.floor(v / 128);
    n++;
  }
  return n;
}

/** Exact encoded size of the packed PFN array of `b`'s pages, without building it. */
export function pfnArrayBytes(b: RunsLike): number {
  let payload = 0;
  for (let i = 0; i < b.end; i++) {
    let p = b.pfns[i]!;
    const end = p + b.npfns[i]!;
    while (p < end) {
      const len = varintLen(p);
      const next = Math.min(end, 128 ** len); // first value with a longer varint
      payload += (next - p) * len;
      p = next;
    }
  }
  return payload === 0 ? 0 : 1 + varintLen(payload) + payload;
}
