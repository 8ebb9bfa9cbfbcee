/**
 * DmirrorService commands: the daemon-side lib/test_hmm.c devices as
 * hmm-tests.c drives them: devices (dmirror-create, dmirror-destroy,
 * dmirror-devices), mirrors (dmirror-open, dmirror-close, dmirror-info) and
 * the dmirror ioctls (dmirror-read, dmirror-write, dmirror-migrate,
 * dmirror-snapshot, dmirror-exclusive, dmirror-release, dmirror-flags,
 * dmirror-mmap). Devices and mirrors belong to the CLI session.
 */
import { MemoryType } from "../../gen/mmsim/v1/common.js";
import {
  CheckExclusiveRequest,
  CloseMirrorRequest,
  CreateDmirrorDeviceRequest,
  CreateDmirrorDeviceResponse,
  DestroyDmirrorDeviceRequest,
  DestroyDmirrorDeviceResponse,
  DmirrorServiceService as S,
  GetMirrorRequest,
  GetMirrorResponse,
  ListDmirrorDevicesRequest,
  ListDmirrorDevicesResponse,
  MakeExclusiveRequest,
  MakeExclusiveResponse,
  MigrateToDeviceRequest,
  MigrateToDeviceResponse,
  MigrateToSystemRequest,
  MigrateToSystemResponse,
  MmapDeviceRequest,
  MmapDeviceResponse,
  OpenMirrorRequest,
  OpenMirrorResponse,
  ReadMirrorRequest,
  ReadMirrorResponse,
  ReleaseDeviceMemoryRequest,
  ReleaseDeviceMemoryResponse,
  SetMirrorFlagsRequest,
  SnapshotMirrorRequest,
  SnapshotMirrorResponse,
  WriteMirrorRequest,
  WriteMirrorResponse,
} from "../../gen/mmsim/v1/dmirror.js";
import { hex0x, hexdump, table } from "../format.js";
import type { CommandSpec } from "../registry.js";
import { optNumber, parseNumber, parsePages, parseProt } from "../values.js";

const group = "DmirrorService";
const PAGE = 4096;

/** One HMM_DMIRROR_PROT_* byte as text: "private-local|write|pmd", "error", "none". */
export function dmirrorProtText(b: number): string {
  if (b === 0xff) return "error";
  if (b === 0) return "none";
  const base: Record<number, string> = { 0x10: "zero", 0x20: "private-local", 0x30: "private-remote", 0x40: "coherent-local", 0x50: "coherent-remote" };
  const out: string[] = [];
  const kind = base[b & 0xf0];
  if (kind !== undefined) out.push(kind);
  else if ((b & 0xf0) !== 0) out.push(hex0x(b & 0xf0));
  if (b & 0x02) out.push("write");
  else if (b & 0x01) out.push("read");
  if (b & 0x04) out.push("pmd");
  if (b & 0x08) out.push("pud");
  return out.join("|");
}

const mirrorArgs = (a: { pos: Record<string, string | undefined> }) => ({
  mirrorId: parseNumber(a.pos.MIRROR, "MIRROR"),
  addr: parseNumber(a.pos.ADDR, "ADDR"),
  npages: parsePages(a.pos.LENGTH, "LENGTH"),
});

const LENGTH_HELP = "LENGTH is bytes with a size suffix (2M) or a page count without.";

export const dmirrorCommands: CommandSpec[] = [
  {
    name: "dmirror-create",
    group,
    summary: "create a dmirror device, as loading test_hmm (CreateDmirrorDevice)",
    args: ["NAME"],
    options: {
      coherent: { type: "bool", help: "device-coherent memory (default device-private)" },
      "chunk-pages": { type: "string", value: "N", help: "pages per dev_pagemap chunk (default 65536 = 256 MiB)" },
    },
    async run(ctx, a) {
      const req = CreateDmirrorDeviceRequest.fromPartial({
        name: a.pos.NAME!,
        memoryType: a.opts.coherent === true ? MemoryType.MEMORY_TYPE_DEVICE_COHERENT : MemoryType.MEMORY_TYPE_DEVICE_PRIVATE,
        chunkPages: optNumber(a.opts["chunk-pages"], "--chunk-pages", 0),
      });
      const r = await ctx.call(S.createDmirrorDevice, req, { session: true });
      if (ctx.json) return ctx.printJson(CreateDmirrorDeviceResponse.toJSON(r));
      ctx.out(`device ${r.deviceId} ${r.name} owner ${hex0x(r.owner)}`);
    },
  },
  {
    name: "dmirror-destroy",
    group,
    summary: "remove a dmirror device, evicting its memory to RAM (DestroyDmirrorDevice)",
    args: ["DEVICE"],
    async run(ctx, a) {
      const r = await ctx.call(S.destroyDmirrorDevice, DestroyDmirrorDeviceRequest.fromPartial({ deviceId: parseNumber(a.pos.DEVICE, "DEVICE") }), { session: true });
      if (ctx.json) return ctx.printJson(DestroyDmirrorDeviceResponse.toJSON(r));
      ctx.out(`destroyed, ${r.evictedPages} pages evicted`);
    },
  },
  {
    name: "dmirror-devices",
    group,
    summary: "list dmirror devices (ListDmirrorDevices)",
    async run(ctx) {
      const r = await ctx.call(S.listDmirrorDevices, ListDmirrorDevicesRequest.fromPartial({}));
      if (ctx.json) return ctx.printJson(ListDmirrorDevicesResponse.toJSON(r));
      if (r.devices.length === 0) return ctx.out("no devices");
      ctx.out(
        table(
          ["ID", "NAME", "TYPE", "OWNER", "CHUNKS", "IN_USE", "CALLOC", "SESSION"],
          r.devices.map((d) => [
            d.deviceId,
            d.name,
            d.memoryType === MemoryType.MEMORY_TYPE_DEVICE_COHERENT ? "coherent" : "private",
            hex0x(d.owner),
            d.chunks,
            d.pagesInUse,
            d.calloc,
            d.sessionId,
          ]),
          [true, false, false, false, true, true, true, true],
        ),
      );
    },
  },
  {
    name: "dmirror-open",
    group,
    summary: "open a mirror of an mm on a device (OpenMirror)",
    args: ["DEVICE", "MM"],
    async run(ctx, a) {
      const r = await ctx.call(S.openMirror, OpenMirrorRequest.fromPartial({ deviceId: parseNumber(a.pos.DEVICE, "DEVICE"), mmId: parseNumber(a.pos.MM, "MM") }), { session: true });
      if (ctx.json) return ctx.printJson(OpenMirrorResponse.toJSON(r));
      ctx.out(`mirror ${r.mirrorId} notifier ${r.notifierId}`);
    },
  },
  {
    name: "dmirror-close",
    group,
    summary: "close a mirror (CloseMirror)",
    args: ["MIRROR"],
    async run(ctx, a) {
      await ctx.call(S.closeMirror, CloseMirrorRequest.fromPartial({ mirrorId: parseNumber(a.pos.MIRROR, "MIRROR") }), { session: true });
      if (ctx.json) return ctx.printJson({});
      ctx.out("closed");
    },
  },
  {
    name: "dmirror-info",
    group,
    summary: "a mirror's state (GetMirror)",
    args: ["MIRROR"],
    async run(ctx, a) {
      const r = await ctx.call(S.getMirror, GetMirrorRequest.fromPartial({ mirrorId: parseNumber(a.pos.MIRROR, "MIRROR") }));
      if (ctx.json) return ctx.printJson(GetMirrorResponse.toJSON(r));
      ctx.out(`mirror ${r.mirrorId} device ${r.deviceId} mm ${r.mmId} notifier ${r.notifierId}: ${r.entries} entries, ${r.tableNodes} table nodes, flags ${hex0x(r.flags)}`);
    },
  },
  {
    name: "dmirror-read",
    group,
    summary: "HMM_DMIRROR_READ: read through the mirror, faulting pages in (ReadMirror)",
    args: ["MIRROR", "ADDR", "LENGTH"],
    options: { dump: { type: "bool", help: "hexdump the data" } },
    details: LENGTH_HELP,
    async run(ctx, a) {
      const req = ReadMirrorRequest.fromPartial(mirrorArgs(a));
      const r = await ctx.call(S.readMirror, req, { session: true });
      if (ctx.json) return ctx.printJson(ReadMirrorResponse.toJSON(r));
      ctx.out(`cpages=${r.cpages} faults=${r.faults}`);
      if (a.opts.dump === true && r.data.length > 0) ctx.out(hexdump(r.data, req.addr));
    },
  },
  {
    name: "dmirror-write",
    group,
    summary: "HMM_DMIRROR_WRITE: write DATA (UTF-8, zero-padded to whole pages) through the mirror (WriteMirror)",
    args: ["MIRROR", "ADDR", "DATA"],
    async run(ctx, a) {
      const text = Buffer.from(a.pos.DATA!, "utf8");
      const npages = Math.max(1, Math.ceil(text.length / PAGE));
      const data = Buffer.alloc(npages * PAGE);
      text.copy(data);
      const req = WriteMirrorRequest.fromPartial({ mirrorId: parseNumber(a.pos.MIRROR, "MIRROR"), addr: parseNumber(a.pos.ADDR, "ADDR"), npages, data });
      const r = await ctx.call(S.writeMirror, req, { session: true });
      if (ctx.json) return ctx.printJson(WriteMirrorResponse.toJSON(r));
      ctx.out(`cpages=${r.cpages} faults=${r.faults}`);
    },
  },
  {
    name: "dmirror-migrate",
    group,
    summary: "HMM_DMIRROR_MIGRATE_TO_DEV (default) or _TO_SYS with --to-system (MigrateToDevice, MigrateToSystem)",
    args: ["MIRROR", "ADDR", "LENGTH"],
    options: { "to-system": { type: "bool", help: "migrate this device's pages back to RAM" } },
    details: LENGTH_HELP,
    async run(ctx, a) {
      if (a.opts["to-system"] === true) {
        const r = await ctx.call(S.migrateToSystem, MigrateToSystemRequest.fromPartial(mirrorArgs(a)), { session: true });
        if (ctx.json) return ctx.printJson(MigrateToSystemResponse.toJSON(r));
        return ctx.out(`cpages=${r.cpages}`);
      }
      const r = await ctx.call(S.migrateToDevice, MigrateToDeviceRequest.fromPartial({ ...mirrorArgs(a), omitData: true }), { session: true });
      if (ctx.json) return ctx.printJson(MigrateToDeviceResponse.toJSON(r));
      ctx.out(`cpages=${r.cpages}`);
    },
  },
  {
    name: "dmirror-snapshot",
    group,
    summary: "HMM_DMIRROR_SNAPSHOT: what the CPU page table maps, one HMM_DMIRROR_PROT byte per page, as runs (SnapshotMirror)",
    args: ["MIRROR", "ADDR", "LENGTH"],
    details: LENGTH_HELP,
    async run(ctx, a) {
      const req = SnapshotMirrorRequest.fromPartial(mirrorArgs(a));
      const r = await ctx.call(S.snapshotMirror, req, { session: true });
      if (ctx.json) return ctx.printJson(SnapshotMirrorResponse.toJSON(r));
      const rows: (string | number)[][] = [];
      let i = 0;
      while (i < r.perms.length) {
        let j = i + 1;
        while (j < r.perms.length && r.perms[j] === r.perms[i]) j++;
        rows.push([hex0x(req.addr + i * PAGE), hex0x(req.addr + j * PAGE), j - i, hex0x(r.perms[i]!), dmirrorProtText(r.perms[i]!)]);
        i = j;
      }
      ctx.out(`cpages=${r.cpages}`);
      if (rows.length > 0) ctx.out(table(["START", "END", "PAGES", "PROT", "MEANING"], rows, [false, false, true, false, false]));
    },
  },
  {
    name: "dmirror-exclusive",
    group,
    summary: "HMM_DMIRROR_EXCLUSIVE (MakeExclusive), or with --check HMM_DMIRROR_CHECK_EXCLUSIVE (CheckExclusive: EPERM while an entry remains)",
    args: ["MIRROR", "ADDR", "LENGTH"],
    options: { check: { type: "bool", help: "check that no device-exclusive entry remains" } },
    details: LENGTH_HELP,
    async run(ctx, a) {
      if (a.opts.check === true) {
        await ctx.call(S.checkExclusive, CheckExclusiveRequest.fromPartial(mirrorArgs(a)), { session: true });
        if (ctx.json) return ctx.printJson({});
        return ctx.out("no exclusive entries");
      }
      const r = await ctx.call(S.makeExclusive, MakeExclusiveRequest.fromPartial(mirrorArgs(a)), { session: true });
      if (ctx.json) return ctx.printJson({ ...(MakeExclusiveResponse.toJSON(r) as object), data: undefined });
      ctx.out(`cpages=${r.cpages}`);
    },
  },
  {
    name: "dmirror-release",
    group,
    summary: "HMM_DMIRROR_RELEASE: evict all of the device's memory to RAM (ReleaseDeviceMemory)",
    args: ["MIRROR"],
    async run(ctx, a) {
      const r = await ctx.call(S.releaseDeviceMemory, ReleaseDeviceMemoryRequest.fromPartial({ mirrorId: parseNumber(a.pos.MIRROR, "MIRROR") }), { session: true });
      if (ctx.json) return ctx.printJson(ReleaseDeviceMemoryResponse.toJSON(r));
      ctx.out(`${r.evictedPages} pages evicted`);
    },
  },
  {
    name: "dmirror-flags",
    group,
    summary: "HMM_DMIRROR_FLAGS: set the mirror's flags (SetMirrorFlags; 1 = HMM_DMIRROR_FLAG_FAIL_ALLOC)",
    args: ["MIRROR", "FLAGS"],
    async run(ctx, a) {
      await ctx.call(S.setMirrorFlags, SetMirrorFlagsRequest.fromPartial({ mirrorId: parseNumber(a.pos.MIRROR, "MIRROR"), flags: parseNumber(a.pos.FLAGS, "FLAGS") }), { session: true });
      if (ctx.json) return ctx.printJson({});
      ctx.out("flags set");
    },
  },
  {
    name: "dmirror-mmap",
    group,
    summary: "mmap() of the device file: zeroed pages inserted with vm_insert_page (MmapDevice); prints the address",
    args: ["MIRROR", "LENGTH"],
    options: { prot: { type: "string", value: "PROT", help: "rw (default), r, ..." } },
    async run(ctx, a) {
      const prot = typeof a.opts.prot === "string" ? parseProt(a.opts.prot) : 3;
      const r = await ctx.call(S.mmapDevice, MmapDeviceRequest.fromPartial({ mirrorId: parseNumber(a.pos.MIRROR, "MIRROR"), length: parseNumber(a.pos.LENGTH, "LENGTH"), prot, flags: 0x01 /* MAP_SHARED */ }), { session: true });
      if (ctx.json) return ctx.printJson(MmapDeviceResponse.toJSON(r));
      ctx.out(hex0x(r.addr));
    },
  },
];

