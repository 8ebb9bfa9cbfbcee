/**
 * AddressSpaceService commands: mms, files, mmap / munmap / mprotect /
 * madvise, fork, exit, and `populate` (MADV_POPULATE_* in chunks with a
 * progress bar, for ranges of many GiB).
 */
import {
  AddressSpaceServiceService as S,
  CreateFileRequest,
  CreateFileResponse,
  CreateMmRequest,
  CreateMmResponse,
  DeviceMapping,
  ExitMmRequest,
  FileKind,
  ForkMmRequest,
  ForkMmResponse,
  ListMmsResponse,
  MadviseRequest,
  MmapRequest,
  MmapResponse,
  MprotectRequest,
  MunmapRequest,
  ResizeFileRequest,
  CloseFileRequest,
} from "../../gen/mmsim/v1/address_space.js";
import { hex0x, size, table } from "../format.js";
import { type CommandSpec, UsageError } from "../registry.js";
import { MADV, MAP, optNumber, parseAdvice, parseChoice, parseMapFlags, parseNumber, parseProt } from "../values.js";

const group = "AddressSpaceService";

const FILE_KINDS = ["shmem", "hugetlb", "dirty-tracked", "fsdax"] as const;
const FILE_KIND: Record<(typeof FILE_KINDS)[number], FileKind> = {
  shmem: FileKind.FILE_KIND_SHMEM,
  hugetlb: FileKind.FILE_KIND_HUGETLB,
  "dirty-tracked": FileKind.FILE_KIND_DIRTY_TRACKED,
  fsdax: FileKind.FILE_KIND_FSDAX,
};

/** populate: bytes per MADV_POPULATE_* call (one progress step). */
export const POPULATE_CHUNK = 128 * 2 ** 20;

export const addressSpaceCommands: CommandSpec[] = [
  {
    name: "create-mm",
    group,
    summary: "create an empty mm (a new process) and print its id (CreateMm)",
    args: ["[NAME]"],
    async run(ctx, a) {
      const r = await ctx.call(S.createMm, CreateMmRequest.fromPartial({ name: a.pos.NAME ?? "cli" }), { session: true });
      if (ctx.json) return ctx.printJson(CreateMmResponse.toJSON(r));
      ctx.out(String(r.mmId));
    },
  },
  {
    name: "mms",
    group,
    summary: "list mms with their RSS counters (ListMms)",
    async run(ctx) {
      const r = await ctx.call(S.listMms, {});
      if (ctx.json) return ctx.printJson(ListMmsResponse.toJSON(r));
      ctx.out(
        table(
          ["ID", "NAME", "SESSION", "PARENT", "VMAS", "ANON", "FILE", "SHMEM", "USERS", "STATE"],
          r.mms.map((m) => [
            m.mmId,
            m.name,
            m.ownerSessionId,
            m.parentMmId || "-",
            m.mapCount,
            size(m.rssAnonPages * 4096),
            size(m.rssFilePages * 4096),
            size(m.rssShmemPages * 4096),
            m.mmUsers,
            [m.exited ? "exited" : "live", m.hasPinned ? "has-pinned" : "", m.hasHugeZeroFolio ? "huge-zero" : ""].filter(Boolean).join(","),
          ]),
          [true, false, true, true, true, true, true, true, true, false],
        ),
      );
    },
  },
  {
    name: "fork",
    group,
    summary: "fork an mm and print the child's id (ForkMm)",
    args: ["MM", "[NAME]"],
    async run(ctx, a) {
      const r = await ctx.call(S.forkMm, ForkMmRequest.fromPartial({ mmId: parseNumber(a.pos.MM, "MM"), name: a.pos.NAME ?? "" }), { session: true });
      if (ctx.json) return ctx.printJson(ForkMmResponse.toJSON(r));
      ctx.out(String(r.childMmId));
    },
  },
  {
    name: "exit",
    group,
    summary: "tear an mm down, as exit_mmap (ExitMm)",
    args: ["MM"],
    async run(ctx, a) {
      const mmId = parseNumber(a.pos.MM, "MM");
      await ctx.call(S.exitMm, ExitMmRequest.fromPartial({ mmId }), { session: true });
      if (ctx.json) return ctx.printJson({ mmId, exited: true });
      ctx.out(`mm ${mmId} exited`);
    },
  },
  {
    name: "create-file",
    group,
    summary: "create a file object (memfd, hugetlbfs, ext4-like, fsdax) and print its id (CreateFile)",
    args: ["NAME", "SIZE"],
    options: {
      kind: { type: "string", value: FILE_KINDS.join("|"), help: "filesystem (default shmem)" },
      "huge-page-size": { type: "string", value: "2M|1G", help: "hugetlb page size (default 2M)" },
      pgmap: { type: "string", value: "ID", help: "fsdax: the FS_DAX dev_pagemap backing the file" },
    },
    async run(ctx, a) {
      const kind = FILE_KIND[parseChoice(String(a.opts.kind ?? "shmem"), FILE_KINDS, "file kind")];
      const req = CreateFileRequest.fromPartial({
        name: a.pos.NAME,
        sizeBytes: parseNumber(a.pos.SIZE, "SIZE"),
        kind,
        hugePageSize: optNumber(a.opts["huge-page-size"], "--huge-page-size", 0),
        pgmapId: optNumber(a.opts.pgmap, "--pgmap", 0),
      });
      const r = await ctx.call(S.createFile, req, { session: true });
      if (ctx.json) return ctx.printJson(CreateFileResponse.toJSON(r));
      ctx.out(String(r.fileId));
    },
  },
  {
    name: "resize-file",
    group,
    summary: "ftruncate a file (ResizeFile)",
    args: ["FILE", "SIZE"],
    async run(ctx, a) {
      const fileId = parseNumber(a.pos.FILE, "FILE");
      const sizeBytes = parseNumber(a.pos.SIZE, "SIZE");
      await ctx.call(S.resizeFile, ResizeFileRequest.fromPartial({ fileId, sizeBytes }), { session: true });
      if (ctx.json) return ctx.printJson({ fileId, sizeBytes });
      ctx.out(`file ${fileId} resized to ${sizeBytes} bytes`);
    },
  },
  {
    name: "close-file",
    group,
    summary: "drop the creator's reference to a file (CloseFile)",
    args: ["FILE"],
    async run(ctx, a) {
      const fileId = parseNumber(a.pos.FILE, "FILE");
      await ctx.call(S.closeFile, CloseFileRequest.fromPartial({ fileId }), { session: true });
      if (ctx.json) return ctx.printJson({ fileId, closed: true });
      ctx.out(`file ${fileId} closed`);
    },
  },
  {
    name: "mmap",
    group,
    summary: "create a mapping and print its address (Mmap)",
    args: ["MM", "LENGTH"],
    options: {
      prot: { type: "string", value: "PROT", help: "rwx letters, none, or a number (default rw)" },
      at: { type: "string", value: "ADDR", help: "address hint, or the exact address with --fixed / --noreplace" },
      fixed: { type: "bool", help: "MAP_FIXED" },
      noreplace: { type: "bool", help: "MAP_FIXED_NOREPLACE" },
      shared: { type: "bool", help: "MAP_SHARED instead of MAP_PRIVATE" },
      populate: { type: "bool", help: "MAP_POPULATE" },
      hugetlb: { type: "string", value: "2M|1G", help: "MAP_HUGETLB with that page size" },
      file: { type: "string", value: "ID", help: "map a file (CreateFile) instead of anonymous memory" },
      offset: { type: "string", value: "BYTES", help: "file (or PFN range) offset" },
      pfnmap: { type: "bool", help: "driver mapping, VM_PFNMAP (with --pfn-range or --base-pfn)" },
      mixedmap: { type: "bool", help: "driver mapping, VM_MIXEDMAP" },
      "pfn-range": { type: "string", value: "ID", help: "driver mapping backed by a registered PFN range" },
      "base-pfn": { type: "string", value: "PFN", help: "driver mapping of PFNs from PFN" },
      "huge-fault": { type: "bool", help: "the driver implements ->huge_fault (PMD/PUD leaves)" },
      flags: { type: "string", value: "LIST", help: "raw MAP_* flags (private,anonymous,...) overriding the above" },
    },
    details: "Default: MAP_PRIVATE|MAP_ANONYMOUS, PROT_READ|PROT_WRITE, address chosen by the daemon.",
    async run(ctx, a) {
      const device = a.opts.pfnmap === true || a.opts.mixedmap === true;
      if (a.opts.pfnmap === true && a.opts.mixedmap === true) throw new UsageError("mmap: --pfnmap and --mixedmap exclude each other");
      let flags: number;
      if (typeof a.opts.flags === "string") flags = parseMapFlags(a.opts.flags);
      else {
        flags = a.opts.shared === true ? MAP.shared : MAP.private;
        if (a.opts.file === undefined && !device) flags |= MAP.anonymous;
        if (a.opts.fixed === true) flags |= MAP.fixed;
        if (a.opts.noreplace === true) flags |= MAP.fixed_noreplace;
        if (a.opts.populate === true) flags |= MAP.populate;
        if (a.opts.hugetlb !== undefined) {
          const hp = optNumber(a.opts.hugetlb, "--hugetlb", 0);
          if (hp !== 2 ** 21 && hp !== 2 ** 30) throw new UsageError("mmap: --hugetlb takes 2M or 1G");
          flags |= MAP.hugetlb | (hp === 2 ** 30 ? MAP.huge_1gb : MAP.huge_2mb);
        }
      }
      const req = MmapRequest.fromPartial({
        mmId: parseNumber(a.pos.MM, "MM"),
        length: parseNumber(a.pos.LENGTH, "LENGTH"),
        addr: optNumber(a.opts.at, "--at", 0),
        prot: typeof a.opts.prot === "string" ? parseProt(a.opts.prot) : 3,
        flags,
        fileId: optNumber(a.opts.file, "--file", 0),
        offset: optNumber(a.opts.offset, "--offset", 0),
      });
      if (device) {
        req.device = {
          kind: a.opts.pfnmap === true ? DeviceMapping.DEVICE_MAPPING_PFNMAP : DeviceMapping.DEVICE_MAPPING_MIXEDMAP,
          pfnRangeId: a.opts["pfn-range"] !== undefined ? optNumber(a.opts["pfn-range"], "--pfn-range", 0) : undefined,
          basePfn: a.opts["base-pfn"] !== undefined ? optNumber(a.opts["base-pfn"], "--base-pfn", 0) : undefined,
          hugeFault: a.opts["huge-fault"] === true,
        };
      }
      const r = await ctx.call(S.mmap, req, { session: true });
      if (ctx.json) return ctx.printJson(MmapResponse.toJSON(r));
      ctx.out(hex0x(r.addr));
    },
  },
  {
    name: "munmap",
    group,
    summary: "remove mappings in a range (Munmap)",
    args: ["MM", "ADDR", "LENGTH"],
    async run(ctx, a) {
      const req = MunmapRequest.fromPartial({ mmId: parseNumber(a.pos.MM, "MM"), addr: parseNumber(a.pos.ADDR, "ADDR"), length: parseNumber(a.pos.LENGTH, "LENGTH") });
      await ctx.call(S.munmap, req, { session: true });
      if (ctx.json) return ctx.printJson(MunmapRequest.toJSON(req));
      ctx.out(`unmapped ${hex0x(req.addr)}-${hex0x(req.addr + req.length)}`);
    },
  },
  {
    name: "mprotect",
    group,
    summary: "change the protection of a range (Mprotect)",
    args: ["MM", "ADDR", "LENGTH", "PROT"],
    async run(ctx, a) {
      const req = MprotectRequest.fromPartial({
        mmId: parseNumber(a.pos.MM, "MM"),
        addr: parseNumber(a.pos.ADDR, "ADDR"),
        length: parseNumber(a.pos.LENGTH, "LENGTH"),
        prot: parseProt(a.pos.PROT!),
      });
      await ctx.call(S.mprotect, req, { session: true });
      if (ctx.json) return ctx.printJson(MprotectRequest.toJSON(req));
      ctx.out(`protection of ${hex0x(req.addr)}-${hex0x(req.addr + req.length)} set to ${req.prot}`);
    },
  },
  {
    name: "madvise",
    group,
    summary: "apply advice to a range (Madvise)",
    args: ["MM", "ADDR", "LENGTH", "ADVICE"],
    details: `ADVICE: ${Object.keys(MADV).join(", ")} (MADV_ prefix optional), or a number.`,
    async run(ctx, a) {
      const req = MadviseRequest.fromPartial({
        mmId: parseNumber(a.pos.MM, "MM"),
        addr: parseNumber(a.pos.ADDR, "ADDR"),
        length: parseNumber(a.pos.LENGTH, "LENGTH"),
        advice: parseAdvice(a.pos.ADVICE!),
      });
      await ctx.call(S.madvise, req, { session: true });
      if (ctx.json) return ctx.printJson(MadviseRequest.toJSON(req));
      ctx.out(`advice ${a.pos.ADVICE} applied to ${hex0x(req.addr)}-${hex0x(req.addr + req.length)}`);
    },
  },
  {
    name: "populate",
    group,
    summary: "fault a range in with MADV_POPULATE_READ/WRITE, in chunks, with a progress bar",
    args: ["MM", "ADDR", "LENGTH"],
    options: { write: { type: "bool", help: "MADV_POPULATE_WRITE (allocate and break COW) instead of READ" } },
    async run(ctx, a) {
      const mmId = parseNumber(a.pos.MM, "MM");
      const addr = parseNumber(a.pos.ADDR, "ADDR");
      const length = parseNumber(a.pos.LENGTH, "LENGTH");
      const advice = a.opts.write === true ? MADV.populate_write! : MADV.populate_read!;
      const bar = ctx.progress("populate", length);
      const t0 = Date.now();
      try {
        for (let off = 0; off < length; off += POPULATE_CHUNK) {
          const n = Math.min(POPULATE_CHUNK, length - off);
          await ctx.call(S.madvise, MadviseRequest.fromPartial({ mmId, addr: addr + off, length: n, advice }), { session: true });
          bar.advance(n);
        }
      } finally {
        bar.finish();
      }
      const secs = (Date.now() - t0) / 1000;
      if (ctx.json) return ctx.printJson({ mmId, addr, length, write: a.opts.write === true, seconds: secs });
      ctx.out(`populated ${size(length)} at ${hex0x(addr)} in ${secs.toFixed(2)} s`);
    },
  },
];
