/**
 * AdminService (admin.proto): the model's fault-injection points over gRPC
 * (refused with FAILED_PRECONDITION unless --fault-injection) and a digest
 * of the simulated state for before/after comparisons.
 *
 * The digest is SHA-256 over a canonical description, in a fixed order:
 * live mms (id, name, flags, RSS counters) with their VMAs and merged
 * page-table runs; the per-page arrays of every struct-page section
 * (refcount, mapcount, entire mapcount, pincount, flags, order, buddy order,
 * mapping, index, data slot); zone free counts; files and their page-cache
 * sizes; dev_pagemaps and PFN ranges; page tables in use; pins held; and the
 * vmstat entries that describe state (nr_*), not the event counters that
 * only grow (pgfault, thp_fault_alloc, mmu_invalidations, ...).
 */
import { createHash } from "node:crypto";
import { status } from "@grpc/grpc-js";
import {
  type AdminServiceServer,
  type ClearFaultInjectionRequest,
  type ClearFaultInjectionResponse,
  type ConfigureFaultPointRequest,
  type ConfigureFaultPointResponse,
  type FailNthRequest,
  type FailNthResponse,
  type FaultPoint,
  FaultMode,
  type GetStateDigestRequest,
  type GetStateDigestResponse,
  type ListFaultPointsRequest,
  type ListFaultPointsResponse,
} from "../gen/mmsim/v1/admin.js";
import { PAGE_SIZE, TASK_SIZE_MAX } from "../mm/constants.js";
import { INJECT_POINTS, type InjectMode, type InjectPoint, type InjectPointState, isInjectPoint } from "../mm/fault-inject.js";
import { walkPageTable } from "../mm/inspect.js";
import type { Kernel } from "../mm/kernel.js";
import { SECTION_PAGES } from "../mm/physmem.js";
import { ERRNO, StatusError, invalidArgument, notFoundError } from "./errors.js";
import { type ServiceDeps, unary } from "./handler.js";
import { runModelRead } from "./model-op.js";
import { u32 } from "./validate.js";
import type { DigestScope } from "./tenancy.js";

const SVC = "AdminService";

function modeToProto(m: InjectMode): { mode: FaultMode; count: number; probability: number } {
  switch (m.kind) {
    case "off":
      return { mode: FaultMode.FAULT_MODE_OFF, count: 0, probability: 0 };
    case "times":
      return { mode: FaultMode.FAULT_MODE_TIMES, count: m.remaining, probability: 0 };
    case "interval":
      return { mode: FaultMode.FAULT_MODE_INTERVAL, count: m.every, probability: 0 };
    case "probability":
      return { mode: FaultMode.FAULT_MODE_PROBABILITY, count: 0, probability: m.p };
  }
}

function pointToProto(p: InjectPointState): FaultPoint {
  return { name: p.name, ...modeToProto(p.mode), hits: p.hits, injected: p.injected };
}

function modeFromProto(req: ConfigureFaultPointRequest): InjectMode {
  switch (req.mode) {
    case FaultMode.FAULT_MODE_OFF:
      return { kind: "off" };
    case FaultMode.FAULT_MODE_TIMES:
    case FaultMode.FAULT_MODE_INTERVAL: {
      const n = u32(req.count, "count");
      if (n < 1 || n > 2 ** 31) invalidArgument(`count ${n} is not in [1, 2^31]`);
      return req.mode === FaultMode.FAULT_MODE_TIMES ? { kind: "times", remaining: n } : { kind: "interval", every: n };
    }
    case FaultMode.FAULT_MODE_PROBABILITY:
      if (!(req.probability >= 0 && req.probability <= 1)) invalidArgument(`probability ${req.probability} is not in [0, 1]`);
      return { kind: "probability", p: req.probability, seed: u32(req.seed, "seed") };
    default:
      return invalidArgument(`mode ${req.mode} is not OFF, TIMES, INTERVAL or PROBABILITY`);
  }
}

/**
 * vmstat entries that only count events; everything else describes state.
 * nr_foll_pin_acquired/_released only grow too: their difference (the pins
 * held) is hashed on its own.
 */
const EVENT_COUNTERS = /^(pg|thp_|cow_|zero_page_|huge_zero_|wp_|mmu_|pfn_inserts_|nr_foll_pin_)/;

/**
 * The canonical digest of the simulated state (see the file header). With a
 * scope (a tenant's user, tenancy.ts): only the tenant's mms (VMAs, page
 * tables), files, dev_pagemaps and PFN ranges; physical memory and the
 * daemon-wide counters are left out.
 */
export function stateDigest(k: Kernel, scope?: DigestScope): GetStateDigestResponse {
  const h = createHash("sha256");
  const line = (...v: (string | number | boolean)[]) => h.update(v.join(" ") + "\n");
  let mms = 0;
  let vmas = 0;
  /** page tables of the mms hashed (PGD included) */
  let scopedTables = 0;
  for (const mm of [...k.mms.values()].sort((a, b) => a.id - b.id)) {
    if (mm.exited) continue;
    if (scope !== undefined && !scope.mm(mm.ownerSession)) continue;
    mms++;
    line("mm", mm.id, mm.name, mm.ownerSession, mm.mmUsers, mm.rssAnon, mm.rssFile, mm.rssShmem, mm.hugetlbPages, mm.mapCount);
    for (const v of mm.vmas) {
      vmas++;
      line("vma", v.start, v.end, v.flags, v.pgoff, v.file?.id ?? 0, v.anonVma?.id ?? 0, v.device?.pfnRangeId ?? -1, v.device?.basePfn ?? -1);
    }
    const w = walkPageTable(k, mm, 0, TASK_SIZE_MAX + PAGE_SIZE, 0);
    for (const r of w.runs) line("pt", r.level, r.addr, r.nr, r.pfn, r.kind, r.write, r.dirty, r.special, r.anonExclusive, r.marker);
    scopedTables += 1 + w.pudTables + w.pmdTables + w.pteTables;
  }
  const p = k.phys;
  if (scope !== undefined) {
    for (const f of [...k.files.values()].sort((a, b) => a.id - b.id)) if (scope.file(f.id)) line("file", f.id, f.kind, f.size, f.refs, f.vmas.size);
    for (const pm of [...p.pagemaps.values()].sort((a, b) => a.id - b.id))
      if (scope.pagemap(pm.id)) line("pagemap", pm.id, pm.type, pm.startPfn, pm.nrPages, pm.allocated);
    for (const r of [...p.pfnRanges.values()].sort((a, b) => a.id - b.id)) if (scope.pfnRange(r.id)) line("pfnrange", r.id, r.startPfn, r.nrPages);
    // free_pages stays daemon-wide (as GetMeminfo); page_tables counts the tenant's
    return { digest: h.digest("hex"), mms, vmas, freePages: p.totalFreePages(), pageTables: scopedTables };
  }
  // Every section that exists, RAM and ZONE_DEVICE alike.
  const maxPfn = 2 ** 32;
  for (let pfn = 0; pfn < maxPfn; pfn += SECTION_PAGES) {
    const s = p.section(pfn);
    if (s === undefined) {
      if (pfn >= p.ramPages && p.pagemaps.size === 0) break;
      continue;
    }
    line("sec", pfn);
    for (const a of [s.refcount, s.mapcount, s.entire, s.pincount, s.flags, s.order, s.freeOrder, s.mapping, s.index, s.data])
      h.update(new Uint8Array(a.buffer, a.byteOffset, a.byteLength));
  }
  line("free", p.totalFreePages());
  for (const f of [...k.files.values()].sort((a, b) => a.id - b.id)) line("file", f.id, f.kind, f.size, f.refs, f.vmas.size);
  for (const pm of [...p.pagemaps.values()].sort((a, b) => a.id - b.id)) line("pagemap", pm.id, pm.type, pm.startPfn, pm.nrPages, pm.allocated);
  for (const r of [...p.pfnRanges.values()].sort((a, b) => a.id - b.id)) line("pfnrange", r.id, r.startPfn, r.nrPages);
  line("tables", k.pt.live);
  for (const [name, v] of Object.entries(k.vmstat)) if (!EVENT_COUNTERS.test(name) || name === "thp_zero_page_alloc") line("vmstat", name, v);
  line("pins", k.vmstat.nr_foll_pin_acquired - k.vmstat.nr_foll_pin_released);
  return { digest: h.digest("hex"), mms, vmas, freePages: p.totalFreePages(), pageTables: k.pt.live };
}

export function adminService(d: ServiceDeps): AdminServiceServer {
  const k = d.kernel;
  const allowed = () => {
    if (!d.config.faultInjection)
      throw new StatusError(status.FAILED_PRECONDITION, ERRNO.EPERM, "fault injection is off (start the daemon with --fault-injection)");
  };
  const list = (): FaultPoint[] => INJECT_POINTS.map((n) => pointToProto(k.inject.points.get(n)!));
  return {
    configureFaultPoint: unary<ConfigureFaultPointRequest, ConfigureFaultPointResponse>(d, `${SVC}/ConfigureFaultPoint`, "optional", (req) => {
      allowed();
      if (req.point !== "" && !isInjectPoint(req.point)) notFoundError(`fault point "${req.point}"`);
      const mode = modeFromProto(req);
      const names: InjectPoint[] = req.point === "" ? [...INJECT_POINTS] : [req.point as InjectPoint];
      // Each point gets its own copy (its own "times" budget and PRNG).
      for (const n of names) k.inject.configure(n, { ...mode });
      return { points: list() };
    }),

    failNth: unary<FailNthRequest, FailNthResponse>(d, `${SVC}/FailNth`, "optional", (req) => {
      allowed();
      k.inject.failNth(u32(req.nth, "nth"));
      return { totalHits: k.inject.totalHits };
    }),

    clearFaultInjection: unary<ClearFaultInjectionRequest, ClearFaultInjectionResponse>(d, `${SVC}/ClearFaultInjection`, "optional", (req) => {
      allowed();
      k.inject.clear(req.resetCounters);
      return {};
    }),

    listFaultPoints: unary<ListFaultPointsRequest, ListFaultPointsResponse>(d, `${SVC}/ListFaultPoints`, "optional", () => ({
      points: list(),
      enabled: d.config.faultInjection,
      totalHits: k.inject.totalHits,
      totalInjected: k.inject.totalInjected,
    })),

    // A consistent snapshot: taken with every mm read-locked.
    getStateDigest: unary<GetStateDigestRequest, GetStateDigestResponse>(d, `${SVC}/GetStateDigest`, "optional", (_req, c) =>
      runModelRead(k, [...k.mms.keys()], () => stateDigest(k, d.tenancy?.digestScope(c.metadata))),
    ),
  };
}
