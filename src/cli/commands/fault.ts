/** FaultService commands: fault. */
import { FaultAccess, FaultServiceService as S, HandleMmFaultRequest, HandleMmFaultResponse } from "../../gen/mmsim/v1/fault.js";
import { hex0x } from "../format.js";
import { type CommandSpec, UsageError } from "../registry.js";
import { parseNumber } from "../values.js";
import { levelText, signalText, vmFaultText } from "./common.js";

const FAULT_FLAG_REMOTE = 0x80;
const FAULT_FLAG_UNSHARE = 0x400;

export const faultCommands: CommandSpec[] = [
  {
    name: "fault",
    group: "FaultService",
    summary: "take one page fault at an address (HandleMmFault); read access unless --write / --exec",
    args: ["MM", "ADDR"],
    options: {
      write: { type: "bool", help: "store (FAULT_FLAG_WRITE)" },
      exec: { type: "bool", help: "instruction fetch" },
      remote: { type: "bool", help: "FAULT_FLAG_REMOTE" },
      unshare: { type: "bool", help: "FAULT_FLAG_UNSHARE" },
      kernel: { type: "bool", help: "call handle_mm_fault directly (user = false), as GUP does" },
    },
    async run(ctx, a) {
      if (a.opts.write === true && a.opts.exec === true) throw new UsageError("fault: --write and --exec exclude each other");
      const access = a.opts.write === true ? FaultAccess.FAULT_ACCESS_WRITE : a.opts.exec === true ? FaultAccess.FAULT_ACCESS_EXEC : FaultAccess.FAULT_ACCESS_READ;
      const req = HandleMmFaultRequest.fromPartial({
        mmId: parseNumber(a.pos.MM, "MM"),
        addr: parseNumber(a.pos.ADDR, "ADDR"),
        access,
        flags: (a.opts.remote === true ? FAULT_FLAG_REMOTE : 0) | (a.opts.unshare === true ? FAULT_FLAG_UNSHARE : 0),
        user: a.opts.kernel === true ? false : undefined,
      });
      const r = await ctx.call(S.handleMmFault, req, { session: true });
      if (ctx.json) return ctx.printJson(HandleMmFaultResponse.toJSON(r));
      const sig = signalText(r.signal, r.siCode);
      const what = [r.writable ? "writable" : "read-only", r.special ? "special" : "", r.cow ? "cow" : "", r.thp ? "huge" : ""].filter(Boolean).join(" ");
      const mapped = r.level !== 0 ? `${levelText(r.level)} pfn ${hex0x(r.pfn)} ${what}` : "not mapped";
      ctx.out(`vm_fault=${vmFaultText(r.vmFault)}${r.errnoValue ? ` errno=${r.errnoValue}` : ""}${sig ? ` signal=${sig}` : ""}: ${mapped}`);
    },
  },
];
