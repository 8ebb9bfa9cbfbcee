/**
 * PfnBatch: page frames as a run-length batch, as iommufd's struct pfn_batch
 * (drivers/iommu/iommufd/pages.c): `pfns[i]` is the first PFN of run i and
 * `npfns[i]` its length, runs [pfns[i], pfns[i] + npfns[i]) being physically
 * contiguous. Appending a PFN that continues the last run extends it
 * (batch_add_pfn_num), so adjacent folios merge into one run.
 *
 * Beside the merged runs the batch records folio boundaries: segments
 * [folioPfns[j], folioPfns[j] + folioNpfns[j]) that each lie inside the one
 * folio whose head is folioHeads[j]. A merged run is the concatenation of one
 * or more segments. Contiguity is what the page tables gave (the caller adds
 * PFNs in virtual-address order), never inferred from folio size.
 *
 * Vocabulary as in constants.ts: `end` (number of runs) and `folioEnd` are
 * exclusive bounds; `totalPfns` counts 4 KiB pages. Arrays grow by doubling;
 * PFNs are below 2^32 in this model, run lengths fit u32 (longer runs split).
 */

import { keepShape } from "./shapes.js";

const U32_MAX = 0xffff_ffff;

export class PfnBatch {
  pfns: Uint32Array;
  npfns: Uint32Array;
  /** runs in use */
  end = 0;
  folioPfns: Uint32Array;
  folioNpfns: Uint32Array;
  folioHeads: Uint32Array;
  /** folio segments in use */
  folioEnd = 0;
  /** pages in the batch */
  totalPfns = 0;
  /** false: folio segments are not recorded (folioEnd stays 0) */
  readonly segments: boolean;

  constructor(capacity = 8, segments = true) {
    this.segments = segments;
    const c = Math.max(1, capacity);
    this.pfns = new Uint32Array(c);
    this.npfns = new Uint32Array(c);
    this.folioPfns = new Uint32Array(c);
    this.folioNpfns = new Uint32Array(c);
    this.folioHeads = new Uint32Array(c);
  }
}

keepShape(() => new PfnBatch(1));

/** A batch; `segments` false: merged runs only, no folio segments (cheaper). */
export function batchInit(capacity = 8, segments = true): PfnBatch {
  return new PfnBatch(capacity, segments);
}

export function batchClear(b: PfnBatch): void {
  b.end = 0;
  b.folioEnd = 0;
  b.totalPfns = 0;
}

/** Make room for at least `capacity` folio segments (no-op without segments). */
export function batchReserveSegments(b: PfnBatch, capacity: number): void {
  if (!b.segments || capacity <= b.folioPfns.length) return;
  b.folioPfns = growTo(b.folioPfns, capacity);
  b.folioNpfns = growTo(b.folioNpfns, capacity);
  b.folioHeads = growTo(b.folioHeads, capacity);
}

function grow(a: Uint32Array): Uint32Array {
  const n = new Uint32Array(a.length * 2);
  n.set(a);
  return n;
}

/** Append [pfn, pfn + n) of the folio headed by `head` (batch_add_pfn_num). */
export function batchAddPfnNum(b: PfnBatch, pfn: number, n: number, head: number): void {
  while (n > 0) {
    const take = Math.min(n, U32_MAX);
    addOne(b, pfn, take, head);
    pfn += take;
    n -= take;
  }
}

function addOne(b: PfnBatch, pfn: number, n: number, head: number): void {
  b.totalPfns += n;
  const r = b.end - 1;
  if (r >= 0 && b.pfns[r]! + b.npfns[r]! === pfn && b.npfns[r]! + n <= U32_MAX) {
    b.npfns[r]! += n;
  } else {
    if (b.end === b.pfns.length) {
      b.pfns = grow(b.pfns);
      b.npfns = grow(b.npfns);
    }
    b.pfns[b.end] = pfn;
    b.npfns[b.end] = n;
    b.end++;
  }
  if (!b.segments) return;
  const f = b.folioEnd - 1;
  if (f >= 0 && b.folioHeads[f] === head && b.folioPfns[f]! + b.folioNpfns[f]! === pfn && b.folioNpfns[f]! + n <= U32_MAX) {
    b.folioNpfns[f]! += n;
    return;
  }
  if (b.folioEnd === b.folioPfns.length) {
    b.folioPfns = grow(b.folioPfns);
    b.folioNpfns = grow(b.folioNpfns);
    b.folioHeads = grow(b.folioHeads);
  }
  b.folioPfns[b.folioEnd] = pfn;
  b.folioNpfns[b.folioEnd] = n;
  b.folioHeads[b.folioEnd] = head;
  b.folioEnd++;
}

/**
 * Append [pfn, pfn + n) of `n` order-0 folios (one page each): merged into
 * the runs as batch_add_pfn_num does, one folio segment per page.
 */
export function batchAddSmallPfns(b: PfnBatch, pfn: number, n: number): void {
  if (n === 1 || n > U32_MAX) {
    for (let j = 0; j < n; j++) addOne(b, pfn + j, 1, pfn + j);
    return;
  }
  b.totalPfns += n;
  const r = b.end - 1;
  if (r >= 0 && b.pfns[r]! + b.npfns[r]! === pfn && b.npfns[r]! + n <= U32_MAX) {
    b.npfns[r]! += n;
  } else {
    if (b.end === b.pfns.length) {
      b.pfns = grow(b.pfns);
      b.npfns = grow(b.npfns);
    }
    b.pfns[b.end] = pfn;
    b.npfns[b.end] = n;
    b.end++;
  }
  if (!b.segments) return;
  // A segment never continues across order-0 folios (each is its own head).
  const need = b.folioEnd + n;
  if (need > b.folioPfns.length) {
    let c = b.folioPfns.length * 2;
    while (c < need) c *= 2;
    b.folioPfns = growTo(b.folioPfns, c);
    b.folioNpfns = growTo(b.folioNpfns, c);
    b.folioHeads = growTo(b.folioHeads, c);
  }
  const fp = b.folioPfns;
  const fn = b.folioNpfns;
  const fh = b.folioHeads;
  for (let j = 0, f = b.folioEnd; j < n; j++, f++) {
    fp[f] = pfn + j;
    fn[f] = 1;
    fh[f] = pfn + j;
  }
  b.folioEnd = need;
}

function growTo(a: Uint32Array, c: number): Uint32Array {
  const n = new Uint32Array(c);
  n.set(a);
  return n;
}

/** Append `n` references to the same page (the shared zero page): n runs of 1. */
export function batchAddSamePfn(b: PfnBatch, pfn: number, n: number, head: number): void {
  for (let i = 0; i < n; i++) addOne(b, pfn, 1, head);
}

/** Drop pages from the end until `totalPfns` pages remain (batch_truncate). */
export function batchTruncate(b: PfnBatch, totalPfns: number): void {
  if (totalPfns >= b.totalPfns) return;
  let drop = b.totalPfns - totalPfns;
  b.totalPfns = totalPfns;
  for (let d = drop; d > 0 && b.end > 0; ) {
    const r = b.end - 1;
    const n = b.npfns[r]!;
    if (n > d) {
      b.npfns[r] = n - d;
      d = 0;
    } else {
      b.end--;
      d -= n;
    }
  }
  while (drop > 0 && b.folioEnd > 0) {
    const f = b.folioEnd - 1;
    const n = b.folioNpfns[f]!;
    if (n > drop) {
      b.folioNpfns[f] = n - drop;
      drop = 0;
    } else {
      b.folioEnd--;
      drop -= n;
    }
  }
}

/** The batch as a PFN array (only for callers that asked for one). */
export function batchToPfnArray(b: PfnBatch): Uint32Array {
  const out = new Uint32Array(b.totalPfns);
  let o = 0;
  for (let r = 0; r < b.end; r++) {
    const p = b.pfns[r]!;
    const n = b.npfns[r]!;
    for (let j = 0; j < n; j++) out[o++] = p + j;
  }
  return out;
}

/** The merged runs as plain objects (the wire's repeated PfnRange). */
export function batchRuns(b: PfnBatch): { pfn: number; count: number }[] {
  const out: { pfn: number; count: number }[] = [];
  for (let r = 0; r < b.end; r++) out.push({ pfn: b.pfns[r]!, count: b.npfns[r]! });
  return out;
}

/** The folio segments as plain objects. */
export function batchFolios(b: PfnBatch): { head: number; pfn: number; count: number }[] {
  const out: { head: number; pfn: number; count: number }[] = [];
  for (let f = 0; f < b.folioEnd; f++) out.push({ head: b.folioHeads[f]!, pfn: b.folioPfns[f]!, count: b.folioNpfns[f]! });
  return out;
}
