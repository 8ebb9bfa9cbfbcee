/**
 * MemoryService commands: read and write process memory. Large transfers
 * go in 2 MiB calls (the per-call limit) with a progress bar; a fault that
 * ends in a signal stops the transfer, as it would stop the process.
 */
import { readFileSync } from "node:fs";
import { Signal } from "../../gen/mmsim/v1/common.js";
import { MemoryServiceService as S, ReadMemoryRequest, WriteMemoryRequest } from "../../gen/mmsim/v1/memory.js";
import { hex0x, hexdump, size } from "../format.js";
import { type CommandSpec, UsageError } from "../registry.js";
import { optNumber, parseChoice, parseNumber } from "../values.js";
import { signalText, vmFaultText } from "./common.js";

const group = "MemoryService";
/** MemoryService's per-call limit. */
export const MEMORY_CHUNK = 2 * 2 ** 20;
const FORMATS = ["hex", "text", "raw"] as const;

interface Stop {
  signal: Signal;
  siCode: number;
  faultAddr: number;
  vmFault: number;
}

function stopText(s: Stop): string {
  return `${signalText(s.signal, s.siCode, s.faultAddr) || "stopped"}${s.vmFault ? ` (vm_fault=${vmFaultText(s.vmFault)})` : ""}`;
}

export const memoryCommands: CommandSpec[] = [
  {
    name: "read",
    group,
    summary: "read process memory (ReadMemory); hexdump by default",
    args: ["MM", "ADDR", "LENGTH"],
    options: { format: { type: "string", value: FORMATS.join("|"), help: "hex (xxd-style, default), text (UTF-8) or raw bytes" } },
    async run(ctx, a) {
      const mmId = parseNumber(a.pos.MM, "MM");
      const addr = parseNumber(a.pos.ADDR, "ADDR");
      const length = parseNumber(a.pos.LENGTH, "LENGTH");
      const format = parseChoice(String(a.opts.format ?? "hex"), FORMATS, "format");
      const parts: Uint8Array[] = [];
      let done = 0;
      let stop: Stop | undefined;
      const bar = length > MEMORY_CHUNK ? ctx.progress("read", length) : undefined;
      try {
        while (done < length) {
          const n = Math.min(MEMORY_CHUNK, length - done);
          const r = await ctx.call(S.readMemory, ReadMemoryRequest.fromPartial({ mmId, addr: addr + done, length: n }), { session: true });
          parts.push(r.data);
          done += r.bytesDone;
          bar?.advance(r.bytesDone);
          if (r.bytesDone < n) {
            stop = r;
            break;
          }
        }
      } finally {
        bar?.finish();
      }
      const data = Buffer.concat(parts);
      if (ctx.json) {
        return ctx.printJson({
          addr,
          bytesDone: done,
          data: data.toString("base64"),
          ...(stop ? { signal: signalText(stop.signal, stop.siCode), faultAddr: stop.faultAddr, vmFault: stop.vmFault } : {}),
        });
      }
      if (format === "raw") ctx.outBytes(data);
      else if (format === "text") ctx.out(data.toString("utf8"));
      else if (data.length > 0) ctx.out(hexdump(data, addr));
      if (stop !== undefined) ctx.err(`read stopped after ${done} bytes: ${stopText(stop)}`);
    },
  },
  {
    name: "write",
    group,
    summary: "write process memory (WriteMemory): TEXT, --hex, --from FILE or --fill",
    args: ["MM", "ADDR", "[TEXT]"],
    options: {
      hex: { type: "string", value: "HEX", help: "bytes as hex digits, e.g. deadbeef" },
      from: { type: "string", value: "FILE", help: "the contents of a local file" },
      fill: { type: "string", value: "BYTE", help: "repeat one byte value (with --length)" },
      length: { type: "string", value: "LENGTH", help: "length for --fill" },
    },
    async run(ctx, a) {
      const mmId = parseNumber(a.pos.MM, "MM");
      const addr = parseNumber(a.pos.ADDR, "ADDR");
      const sources = [a.pos.TEXT !== undefined, a.opts.hex !== undefined, a.opts.from !== undefined, a.opts.fill !== undefined].filter(Boolean).length;
      if (sources !== 1) throw new UsageError("write: give exactly one of TEXT, --hex, --from, --fill");
      let data: Buffer;
      if (a.pos.TEXT !== undefined) data = Buffer.from(a.pos.TEXT, "utf8");
      else if (typeof a.opts.hex === "string") {
        const h = a.opts.hex.replace(/^0x/i, "").replace(/\s+/g, "");
        if (!/^([0-9a-f]{2})*$/i.test(h)) throw new UsageError("write: --hex needs an even number of hex digits");
        data = Buffer.from(h, "hex");
      } else if (typeof a.opts.from === "string") data = readFileSync(a.opts.from);
      else {
        const byte = optNumber(a.opts.fill, "--fill", 0);
        if (byte > 255) throw new UsageError("write: --fill takes a byte value 0..255");
        const length = optNumber(a.opts.length, "--length", -1);
        if (length < 0) throw new UsageError("write: --fill needs --length");
        data = Buffer.alloc(Math.min(length, MEMORY_CHUNK), byte);
        return writeAll(ctx, mmId, addr, length, (off, n) => data.subarray(0, n));
      }
      return writeAll(ctx, mmId, addr, data.length, (off, n) => data.subarray(off, off + n));
    },
  },
];

async function writeAll(
  ctx: Parameters<CommandSpec["run"]>[0],
  mmId: number,
  addr: number,
  length: number,
  chunk: (off: number, n: number) => Buffer,
): Promise<void> {
  let done = 0;
  let stop: Stop | undefined;
  const bar = length > MEMORY_CHUNK ? ctx.progress("write", length) : undefined;
  try {
    while (done < length) {
      const n = Math.min(MEMORY_CHUNK, length - done);
      const r = await ctx.call(S.writeMemory, WriteMemoryRequest.fromPartial({ mmId, addr: addr + done, data: chunk(done, n) }), { session: true });
      done += r.bytesDone;
      bar?.advance(r.bytesDone);
      if (r.bytesDone < n) {
        stop = r;
        break;
      }
    }
  } finally {
    bar?.finish();
  }
  if (ctx.json) {
    ctx.printJson({ addr, bytesDone: done, ...(stop ? { signal: signalText(stop.signal, stop.siCode), faultAddr: stop.faultAddr, vmFault: stop.vmFault } : {}) });
    return;
  }
  ctx.out(`wrote ${done} bytes (${size(done)}) at ${hex0x(addr)}`);
  if (stop !== undefined) ctx.err(`write stopped after ${done} bytes: ${stopText(stop)}`);
}
