/**
 * DeviceService commands: dev_pagemaps, raw PFN ranges, insert-pfn
 * (vmf_insert_pfn_range), devices.
 */
import { MemoryType, memoryTypeToJSON } from "../../gen/mmsim/v1/common.js";
import {
  DeviceServiceService as S,
  InsertMode,
  InsertPfnRangeRequest,
  InsertPfnRangeResponse,
  ListDevicesResponse,
  RegisterDevPagemapRequest,
  RegisterDevPagemapResponse,
  RegisterPfnRangeRequest,
  RegisterPfnRangeResponse,
  UnregisterDevPagemapRequest,
  UnregisterPfnRangeRequest,
} from "../../gen/mmsim/v1/device.js";
import { enumName, hex0x, size, table } from "../format.js";
import type { CommandSpec } from "../registry.js";
import { optNumber, parseChoice, parseNumber, parsePages, parseProt } from "../values.js";
import { levelSize, levelText, vmFaultText } from "./common.js";

const group = "DeviceService";

const PGMAP_TYPES = ["private", "coherent", "fsdax", "generic", "p2pdma"] as const;
const PGMAP_TYPE: Record<(typeof PGMAP_TYPES)[number], MemoryType> = {
  private: MemoryType.MEMORY_TYPE_DEVICE_PRIVATE,
  coherent: MemoryType.MEMORY_TYPE_DEVICE_COHERENT,
  fsdax: MemoryType.MEMORY_TYPE_DEVICE_FS_DAX,
  generic: MemoryType.MEMORY_TYPE_DEVICE_GENERIC,
  p2pdma: MemoryType.MEMORY_TYPE_DEVICE_PCI_P2PDMA,
};
const MODES = ["eager", "fault", "remap"] as const;
const MODE: Record<(typeof MODES)[number], InsertMode> = {
  eager: InsertMode.INSERT_MODE_EAGER,
  fault: InsertMode.INSERT_MODE_FAULT,
  remap: InsertMode.INSERT_MODE_REMAP,
};

export const deviceCommands: CommandSpec[] = [
  {
    name: "register-pagemap",
    group,
    summary: "create a ZONE_DEVICE dev_pagemap (RegisterDevPagemap)",
    args: ["NAME", "TYPE", "NR_PAGES"],
    options: {
      owner: { type: "string", value: "N", help: "pgmap->owner cookie (needed for private and coherent)" },
      "folio-order": { type: "string", value: "N", help: "vmemmap_shift: 0, 9 (2 MiB) or 18 (1 GiB) folios" },
    },
    details: `TYPE: ${PGMAP_TYPES.join(", ")}. NR_PAGES counts 4 KiB pages; with a size suffix it is bytes (2M = 512 pages).`,
    async run(ctx, a) {
      const req = RegisterDevPagemapRequest.fromPartial({
        name: a.pos.NAME,
        type: PGMAP_TYPE[parseChoice(a.pos.TYPE!, PGMAP_TYPES, "pagemap type")],
        nrPages: parsePages(a.pos.NR_PAGES, "NR_PAGES"),
        owner: optNumber(a.opts.owner, "--owner", 0),
        folioOrder: optNumber(a.opts["folio-order"], "--folio-order", 0),
      });
      const r = await ctx.call(S.registerDevPagemap, req, { session: true });
      if (ctx.json) return ctx.printJson(RegisterDevPagemapResponse.toJSON(r));
      ctx.out(`pagemap ${r.pgmapId}: pfn ${hex0x(r.pfnStart)}-${hex0x(r.pfnStart + r.nrPages)} (${size(r.nrPages * 4096)})`);
    },
  },
  {
    name: "unregister-pagemap",
    group,
    summary: "remove a dev_pagemap (UnregisterDevPagemap)",
    args: ["ID"],
    async run(ctx, a) {
      const pgmapId = parseNumber(a.pos.ID, "ID");
      await ctx.call(S.unregisterDevPagemap, UnregisterDevPagemapRequest.fromPartial({ pgmapId }), { session: true });
      if (ctx.json) return ctx.printJson({ pgmapId, unregistered: true });
      ctx.out(`pagemap ${pgmapId} unregistered`);
    },
  },
  {
    name: "register-pfn-range",
    group,
    summary: "create a raw PFN range without struct pages, e.g. a BAR (RegisterPfnRange)",
    args: ["NAME", "NR_PAGES"],
    options: { align: { type: "string", value: "PAGES", help: "alignment of the first PFN, pages (default: natural, as a BAR)" } },
    details: "NR_PAGES counts 4 KiB pages; with a size suffix it is bytes (1G = 262144 pages).",
    async run(ctx, a) {
      const req = RegisterPfnRangeRequest.fromPartial({
        name: a.pos.NAME,
        nrPages: parsePages(a.pos.NR_PAGES, "NR_PAGES"),
        alignPages: typeof a.opts.align === "string" ? parsePages(a.opts.align, "--align") : 0,
      });
      const r = await ctx.call(S.registerPfnRange, req, { session: true });
      if (ctx.json) return ctx.printJson(RegisterPfnRangeResponse.toJSON(r));
      ctx.out(`pfn range ${r.pfnRangeId}: pfn ${hex0x(r.pfnStart)}-${hex0x(r.pfnStart + r.nrPages)} (${size(r.nrPages * 4096)})`);
    },
  },
  {
    name: "unregister-pfn-range",
    group,
    summary: "remove a raw PFN range, zapping the VMAs bound to it (UnregisterPfnRange)",
    args: ["ID"],
    async run(ctx, a) {
      const pfnRangeId = parseNumber(a.pos.ID, "ID");
      await ctx.call(S.unregisterPfnRange, UnregisterPfnRangeRequest.fromPartial({ pfnRangeId }), { session: true });
      if (ctx.json) return ctx.printJson({ pfnRangeId, unregistered: true });
      ctx.out(`pfn range ${pfnRangeId} unregistered`);
    },
  },
  {
    name: "insert-pfn",
    group,
    summary: "vmf_insert_pfn_range: map PFNs into a VM_PFNMAP / VM_MIXEDMAP VMA (InsertPfnRange)",
    args: ["MM", "ADDR", "PFN", "[NR_PAGES]"],
    options: {
      mode: { type: "string", value: MODES.join("|"), help: "largest leaves (default), one fault, or remap_pfn_range" },
      write: { type: "bool", help: "the write argument: leaves young, dirty and writable" },
      prot: { type: "string", value: "PROT", help: "vmf_insert_pfn_prot protection (PTE leaves only)" },
    },
    async run(ctx, a) {
      const mode = MODE[parseChoice(String(a.opts.mode ?? "eager"), MODES, "mode")];
      const req = InsertPfnRangeRequest.fromPartial({
        mmId: parseNumber(a.pos.MM, "MM"),
        addr: parseNumber(a.pos.ADDR, "ADDR"),
        pfn: parseNumber(a.pos.PFN, "PFN"),
        nrPages: a.pos.NR_PAGES !== undefined ? parsePages(a.pos.NR_PAGES, "NR_PAGES") : mode === InsertMode.INSERT_MODE_FAULT ? 0 : 1,
        mode,
        write: a.opts.write === true,
        prot: typeof a.opts.prot === "string" ? parseProt(a.opts.prot) : undefined,
      });
      const r = await ctx.call(S.insertPfnRange, req, { session: true });
      if (ctx.json) return ctx.printJson(InsertPfnRangeResponse.toJSON(r));
      ctx.out(
        `vm_fault=${vmFaultText(r.vmFault)} errno=${r.errnoValue}: ${r.pudLeaves} PUD, ${r.pmdLeaves} PMD, ${r.pteLeaves} PTE leaves inserted, ${r.alreadyPopulated} pages already populated`,
      );
      for (const l of r.leaves) {
        const sz = levelSize(l.level);
        ctx.out(`  ${levelText(l.level).padEnd(3)} ${hex0x(l.addr)}-${hex0x(l.addr + l.count * sz)} -> pfn ${hex0x(l.pfn)} (${l.count} x ${size(sz)})`);
      }
      for (const w of r.warnings) ctx.err(`warning: ${w}`);
    },
  },
  {
    name: "devices",
    group,
    summary: "list dev_pagemaps and PFN ranges (ListDevices)",
    async run(ctx) {
      const r = await ctx.call(S.listDevices, {});
      if (ctx.json) return ctx.printJson(ListDevicesResponse.toJSON(r));
      ctx.out("dev_pagemaps:");
      ctx.out(
        table(
          ["ID", "NAME", "TYPE", "PFNS", "SIZE", "ORDER", "OWNER", "SESSION", "IN_USE", "STATE"],
          r.pagemaps.map((p) => [
            p.pgmapId,
            p.name,
            enumName(memoryTypeToJSON(p.type), "MEMORY_TYPE_DEVICE_"),
            `${hex0x(p.pfnStart)}-${hex0x(p.pfnStart + p.nrPages)}`,
            size(p.nrPages * 4096),
            p.folioOrder,
            p.owner,
            p.ownerSessionId,
            p.pagesInUse,
            p.orphaned ? "orphaned" : "live",
          ]),
          [true, false, false, false, true, true, true, true, true, false],
        ),
      );
      ctx.out("pfn ranges:");
      ctx.out(
        table(
          ["ID", "NAME", "PFNS", "SIZE", "SESSION", "VMAS"],
          r.pfnRanges.map((p) => [p.pfnRangeId, p.name, `${hex0x(p.pfnStart)}-${hex0x(p.pfnStart + p.nrPages)}`, size(p.nrPages * 4096), p.ownerSessionId, p.vmaCount]),
          [true, false, false, true, true, true],
        ),
      );
    },
  },
];
