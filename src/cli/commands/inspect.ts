/**
 * InspectService commands, printed as /proc prints them where there is a
 * /proc file: maps, smaps, vmstat, meminfo (with buddyinfo); and walk (the
 * page-table leaves of a range, indented by level), folio, check.
 */
import { memoryTypeToJSON, migrateTypeToJSON, PageTableLevel, zoneToJSON } from "../../gen/mmsim/v1/common.js";
import {
  CheckInvariantsRequest,
  CheckInvariantsResponse,
  GetFolioRequest,
  GetFolioResponse,
  GetMapsRequest,
  GetMapsResponse,
  GetMeminfoResponse,
  GetSmapsRequest,
  GetSmapsResponse,
  GetVmstatResponse,
  InspectServiceService as S,
  PageTableEntryKind,
  pageTableEntryKindToJSON,
  WalkPageTableRequest,
  WalkPageTableResponse,
} from "../../gen/mmsim/v1/inspect.js";
import { enumName, hex, hex0x, mapsLine, size, table } from "../format.js";
import type { CommandSpec } from "../registry.js";
import { optNumber, parseNumber } from "../values.js";
import { levelSize, levelText } from "./common.js";

const group = "InspectService";

/** "Rss:" padded as the kernel's SEQ_PUT_DEC does, value right-aligned, then " kB". */
function kb(name: string, v: number): string {
  return `${`${name}:`.padEnd(16)}${String(v).padStart(8)} kB`;
}

function zoneName(z: number): string {
  const n = enumName(zoneToJSON(z), "ZONE_");
  return n === "dma32" ? "DMA32" : n === "dma" ? "DMA" : n.charAt(0).toUpperCase() + n.slice(1);
}

/** Flags of a page-table run, as short words. */
function runFlags(r: WalkPageTableResponse["runs"][number]): string {
  const f: string[] = [];
  if (r.write) f.push("write");
  if (r.young) f.push("young");
  if (r.dirty) f.push("dirty");
  if (r.special) f.push("special");
  if (r.anonExclusive) f.push("exclusive");
  if (r.kind === PageTableEntryKind.PAGE_TABLE_ENTRY_KIND_MARKER) f.push(`marker=${hex0x(r.marker)}`);
  return f.join(",");
}

const INDENT: Record<number, string> = {
  [PageTableLevel.PAGE_TABLE_LEVEL_PUD]: "",
  [PageTableLevel.PAGE_TABLE_LEVEL_PMD]: "  ",
  [PageTableLevel.PAGE_TABLE_LEVEL_PTE]: "    ",
};

export const inspectCommands: CommandSpec[] = [
  {
    name: "maps",
    group,
    summary: "the VMAs of an mm, as /proc/PID/maps (GetMaps)",
    args: ["MM"],
    async run(ctx, a) {
      const r = await ctx.call(S.getMaps, GetMapsRequest.fromPartial({ mmId: parseNumber(a.pos.MM, "MM") }));
      if (ctx.json) return ctx.printJson(GetMapsResponse.toJSON(r));
      if (r.vmas.length > 0) ctx.out(r.vmas.map(mapsLine).join("\n"));
    },
  },
  {
    name: "smaps",
    group,
    summary: "the VMAs of an mm with memory counters, as /proc/PID/smaps (GetSmaps)",
    args: ["MM"],
    async run(ctx, a) {
      const r = await ctx.call(S.getSmaps, GetSmapsRequest.fromPartial({ mmId: parseNumber(a.pos.MM, "MM") }));
      if (ctx.json) return ctx.printJson(GetSmapsResponse.toJSON(r));
      const blocks = r.vmas.map((e) =>
        [
          mapsLine(e.vma ?? { start: 0, end: 0, perms: "----", pgoff: 0, fileId: 0, name: "" }),
          kb("Size", e.sizeKib),
          kb("Rss", e.rssKib),
          kb("Pss", e.pssKib),
          kb("Shared_Clean", e.sharedCleanKib),
          kb("Shared_Dirty", e.sharedDirtyKib),
          kb("Private_Clean", e.privateCleanKib),
          kb("Private_Dirty", e.privateDirtyKib),
          kb("Referenced", e.referencedKib),
          kb("Anonymous", e.anonymousKib),
          kb("AnonHugePages", e.anonHugePagesKib),
          kb("ShmemPmdMapped", e.shmemPmdMappedKib),
          kb("FilePmdMapped", e.filePmdMappedKib),
          kb("Shared_Hugetlb", e.sharedHugetlbKib),
          kb("Private_Hugetlb", e.privateHugetlbKib),
          kb("Swap", e.swapKib),
          kb("Locked", e.lockedKib),
          `THPeligible:    ${e.thpEligible ? 1 : 0}`,
          `VmFlags: ${e.vmFlagsMnemonics}`,
        ].join("\n"),
      );
      if (blocks.length > 0) ctx.out(blocks.join("\n"));
    },
  },
  {
    name: "walk",
    group,
    summary: "the page-table leaves of a range: PUD / PMD / PTE runs (WalkPageTable)",
    args: ["MM", "START", "[END]"],
    options: { "max-runs": { type: "string", value: "N", help: "stop after N runs (default: the daemon's 65536)" } },
    details: "END defaults to START + 1 GiB. Each line is a run of equal entries; deeper levels are indented.",
    async run(ctx, a) {
      const mmId = parseNumber(a.pos.MM, "MM");
      const start = parseNumber(a.pos.START, "START");
      const end = a.pos.END !== undefined ? parseNumber(a.pos.END, "END") : start + 2 ** 30;
      const r = await ctx.call(S.walkPageTable, WalkPageTableRequest.fromPartial({ mmId, start, end, maxRuns: optNumber(a.opts["max-runs"], "--max-runs", 0) }));
      if (ctx.json) return ctx.printJson(WalkPageTableResponse.toJSON(r));
      ctx.out(
        `mm ${mmId} ${hex0x(start)}-${hex0x(end)}: ${r.runs.length} run(s); tables in the mm: ${r.pudTables} PUD, ${r.pmdTables} PMD, ${r.pteTables} PTE`,
      );
      if (r.runs.length > 0) {
        ctx.out(
          table(
            ["LEVEL", "RANGE", "ENTRIES", "SIZE", "PFN", "KIND", "FLAGS"],
            r.runs.map((run) => {
              const sz = levelSize(run.level);
              return [
                `${INDENT[run.level] ?? ""}${levelText(run.level)}`,
                `${hex(run.addr, 12)}-${hex(run.addr + run.nr * sz, 12)}`,
                run.nr,
                size(run.nr * sz),
                hex0x(run.pfn),
                enumName(pageTableEntryKindToJSON(run.kind), "PAGE_TABLE_ENTRY_KIND_").replace(/_/g, "-"),
                runFlags(run),
              ];
            }),
            [false, false, true, true, true, false, false],
          ),
        );
      }
      if (r.truncated) ctx.out(`(truncated; continue at ${hex0x(r.nextAddr)})`);
    },
  },
  {
    name: "folio",
    group,
    summary: "the struct page / folio state of a PFN (GetFolio)",
    args: ["PFN"],
    async run(ctx, a) {
      const f = await ctx.call(S.getFolio, GetFolioRequest.fromPartial({ pfn: parseNumber(a.pos.PFN, "PFN") }));
      if (ctx.json) return ctx.printJson(GetFolioResponse.toJSON(f));
      if (!f.hasStructPage) {
        ctx.out(`pfn ${hex0x(f.pfn)}: no struct page${f.pfnRangeId ? ` (pfn range ${f.pfnRangeId})` : ""}`);
        return;
      }
      const flags = (
        [
          ["free", f.free],
          ["anon", f.anon],
          ["anon_exclusive", f.anonExclusive],
          ["dirty", f.dirty],
          ["referenced", f.referenced],
          ["lru", f.lru],
          ["large", f.large],
          ["hugetlb", f.hugetlb],
          ["zero_page", f.zeroPage],
          ["huge_zero", f.hugeZero],
          ["maybe_dma_pinned", f.maybeDmaPinned],
          ["longterm_pinnable", f.longtermPinnable],
        ] as const
      )
        .filter(([, on]) => on)
        .map(([n]) => n);
      const rows: [string, string][] = [
        ["pfn", hex0x(f.pfn)],
        ["folio", `head ${hex0x(f.headPfn)}, order ${f.order} (${size(4096 * 2 ** f.order)})`],
        ["zone", `${zoneName(f.zone)}${f.device ? ` (${enumName(memoryTypeToJSON(f.device), "MEMORY_TYPE_")}, pgmap ${f.pgmapId})` : ""}`],
        ["migratetype", enumName(migrateTypeToJSON(f.migratetype), "MIGRATE_TYPE_")],
        ["refcount", String(f.refcount)],
        ["mapcount", `${f.mapcount} (page ${f.pageMapcount}, large ${f.largeMapcount}, entire ${f.entireMapcount})`],
        ["pincount", String(f.pincount)],
        ["flags", flags.join(" ") || "-"],
      ];
      if (f.fileId) rows.push(["file", `${f.fileId} index ${f.fileIndex}`]);
      ctx.out(rows.map(([k, v]) => `${`${k}:`.padEnd(13)}${v}`).join("\n"));
    },
  },
  {
    name: "vmstat",
    group,
    summary: "counters, as /proc/vmstat (GetVmstat); optional name filters",
    args: ["[FILTER...]"],
    async run(ctx, a) {
      const r = await ctx.call(S.getVmstat, {});
      const names = Object.keys(r.counters)
        .filter((n) => a.rest.length === 0 || a.rest.some((f) => n.includes(f)))
        .sort();
      if (ctx.json) return ctx.printJson(a.rest.length === 0 ? GetVmstatResponse.toJSON(r) : { counters: Object.fromEntries(names.map((n) => [n, r.counters[n]])) });
      if (names.length > 0) ctx.out(names.map((n) => `${n} ${r.counters[n]}`).join("\n"));
    },
  },
  {
    name: "meminfo",
    group,
    summary: "memory totals, zones and free blocks by order, as /proc/meminfo and /proc/buddyinfo (GetMeminfo)",
    async run(ctx) {
      const m = await ctx.call(S.getMeminfo, {});
      if (ctx.json) return ctx.printJson(GetMeminfoResponse.toJSON(m));
      ctx.out([kb("MemTotal", m.totalPages * 4), kb("MemFree", m.freePages * 4), kb("MemUsed", (m.totalPages - m.freePages) * 4)].join("\n"));
      ctx.out(`${"GiganticFolios:".padEnd(16)}${String(m.giganticFoliosInUse).padStart(8)}`);
      ctx.out("");
      ctx.out(
        table(
          ["ZONE", "START_PFN", "PAGES", "FREE", "USED", "CMA"],
          m.zones.map((z) => [zoneName(z.zone), hex0x(z.startPfn), z.nrPages, z.freePages, z.nrPages - z.freePages, z.cmaPages]),
          [false, true, true, true, true, true],
        ),
      );
      ctx.out("");
      for (const z of m.zones)
        ctx.out(`Node 0, zone ${zoneName(z.zone).padStart(8)} ${z.freeBlocksByOrder.map((n) => String(n).padStart(6)).join(" ")}`);
    },
  },
  {
    name: "check",
    group,
    summary: "run the invariant checker (CheckInvariants); exit status 1 if it finds violations",
    args: ["[MM]"],
    async run(ctx, a) {
      const r = await ctx.call(S.checkInvariants, CheckInvariantsRequest.fromPartial({ mmId: a.pos.MM !== undefined ? parseNumber(a.pos.MM, "MM") : undefined }));
      if (ctx.json) ctx.printJson(CheckInvariantsResponse.toJSON(r));
      else if (r.violations.length === 0) ctx.out(`OK: no violations (${r.foliosChecked} folios, ${r.mmsChecked} mms checked)`);
      else {
        for (const v of r.violations) {
          const where = [v.mmId ? `mm=${v.mmId}` : "", v.pfn !== undefined ? `pfn=${hex0x(v.pfn)}` : "", v.addr !== undefined ? `addr=${hex0x(v.addr)}` : ""].filter(Boolean);
          ctx.out(`${v.code}${where.length ? ` ${where.join(" ")}` : ""}: ${v.message}`);
        }
        ctx.out(`${r.violations.length} violation(s) (${r.foliosChecked} folios, ${r.mmsChecked} mms checked)`);
      }
      return r.violations.length === 0 ? 0 : 1;
    },
  },
];
