/**
 * The slice of the GUP API (src/mm/gup.ts, src/mm/pins.ts) the workloads
 * use, loaded at run time so that the harness builds and runs before and
 * while GUP is written. `loadGup()` also pins and unpins 2 MiB once, so a
 * module that exists but is not wired up yet reads as "skipped".
 */
import type { Kernel } from "../../src/mm/kernel.js";
import type { Mm } from "../../src/mm/mm.js";
import { FOLL_LONGTERM, FOLL_WRITE } from "../../src/mm/constants.js";
import { hasSource, importSource, missingExports } from "./optional.js";
import { MiB, populate } from "./setup.js";

export type GupOutput = "ranges" | "pages" | "none";

/** PfnBatch (src/mm/pfn-batch.ts): merged runs pfns[i], npfns[i] for i < end. */
export interface RunsLike {
  pfns: Uint32Array;
  npfns: Uint32Array;
  end: number;
  totalPfns: number;
}

export interface GupResultLike {
  ret: number;
  handle: number;
  ranges: RunsLike;
  pages: Uint32Array | null;
  refUpdates: number;
  warning: string;
}

export interface ReleaseResultLike {
  pages: number;
  folios: number;
  dirtied: number;
}

type PinFn = (k: Kernel, mm: Mm, session: number, start: number, nrPages: number, gupFlags: number, output?: GupOutput) => GupResultLike;

export interface GupApi {
  pinUserPages: PinFn;
  pinUserPagesFast: PinFn;
  releasePinHandle(k: Kernel, session: number, handle: number, first?: number, count?: number, makeDirty?: boolean): ReleaseResultLike;
  unpinUserPages(k: Kernel, session: number, pages: ArrayLike<number>, npages: number): ReleaseResultLike;
  unpinUserPagesDirtyLock(k: Kernel, session: number, pages: ArrayLike<number>, npages: number, makeDirty: boolean): ReleaseResultLike;
  unpinUserPageRangeDirtyLock(k: Kernel, session: number, firstPfn: number, npages: number, makeDirty: boolean): ReleaseResultLike;
}

const GUP = "src/mm/gup.ts";
const PINS = "src/mm/pins.ts";
const GUP_NAMES = ["pinUserPages", "pinUserPagesFast"] as const;
const PIN_NAMES = ["releasePinHandle", "unpinUserPages", "unpinUserPagesDirtyLock", "unpinUserPageRangeDirtyLock"] as const;

let cached: Promise<GupApi | string> | undefined;

async function load(): Promise<GupApi | string> {
  if (!hasSource(GUP)) return `${GUP} does not exist yet`;
  const why = (await missingExports(GUP, GUP_NAMES)) ?? (await missingExports(PINS, PIN_NAMES));
  if (why !== null) return why;
  const gup = await importSource<Record<string, unknown>>(GUP);
  const pins = await importSource<Record<string, unknown>>(PINS);
  const api = { ...gup, ...pins } as unknown as GupApi;
  // Smoke: pin 2 MiB of THP long-term with range output, release by handle.
  try {
    const s = populate(2 * MiB, "thp");
    const r = api.pinUserPagesFast(s.k, s.mm, 1, s.addr, 512, FOLL_WRITE | FOLL_LONGTERM, "ranges");
    if (r.ret !== 512) return `GUP smoke pin returned ${r.ret} (${r.warning})`;
    api.releasePinHandle(s.k, 1, r.handle);
    if (s.k.phys.pincount(s.k.phys.folioHead(r.ranges.pfns[0]!)) !== 0) return "GUP smoke: pincount not back to 0 after release";
  } catch (e) {
    return `GUP is not usable yet: ${e instanceof Error ? e.message.split("\n")[0] : String(e)}`;
  }
  return api;
}

/** The GUP API, or why it is not available. */
export function loadGup(): Promise<GupApi | string> {
  cached ??= load();
  return cached;
}

export async function gupUnavailable(): Promise<string | null> {
  const g = await loadGup();
  return typeof g === "string" ? g : null;
}

export async function gup(): Promise<GupApi> {
  const g = await loadGup();
  if (typeof g === "string") throw new Error(g);
  return g;
}
