/** FaultService (fault.proto): one simulated page fault per call. */
import {
  FAULT_FLAG_ALLOW_RETRY,
  FAULT_FLAG_INSTRUCTION,
  FAULT_FLAG_INTERRUPTIBLE,
  FAULT_FLAG_KILLABLE,
  FAULT_FLAG_REMOTE,
  FAULT_FLAG_UNSHARE,
  FAULT_FLAG_USER,
  FAULT_FLAG_WRITE,
  VM_FAULT_ERROR,
} from "../mm/constants.js";
import { cpuFault, translate } from "../mm/access.js";
import {
  FaultAccess,
  type FaultServiceServer,
  type HandleMmFaultRequest,
  type HandleMmFaultResponse,
} from "../gen/mmsim/v1/fault.js";
import { PageTableLevel, Signal } from "../gen/mmsim/v1/common.js";
import { levelToProto, signalToProto } from "./convert.js";
import { invalidArgument } from "./errors.js";
import { modelOp, type ServiceDeps, thenMaybe, unary } from "./handler.js";
import { liveMm } from "./lookup.js";
import { enumValue, mask, objectId, u64 } from "./validate.js";

const SVC = "FaultService";
const CLIENT_FAULT_FLAGS = FAULT_FLAG_WRITE | FAULT_FLAG_REMOTE | FAULT_FLAG_UNSHARE;
const ACCESS = {
  [FaultAccess.FAULT_ACCESS_READ]: "read",
  [FaultAccess.FAULT_ACCESS_WRITE]: "write",
  [FaultAccess.FAULT_ACCESS_EXEC]: "exec",
} as const;

export function faultService(d: ServiceDeps): FaultServiceServer {
  const k = d.kernel;
  return {
    handleMmFault: unary<HandleMmFaultRequest, HandleMmFaultResponse>(d, `${SVC}/HandleMmFault`, "required", (req) => {
      objectId(req.mmId, "mm_id");
      u64(req.addr, "addr");
      const access = enumValue(
        req.access,
        [FaultAccess.FAULT_ACCESS_READ, FaultAccess.FAULT_ACCESS_WRITE, FaultAccess.FAULT_ACCESS_EXEC],
        "access",
      );
      mask(req.flags, CLIENT_FAULT_FLAGS, "flags");
      if (req.flags & FAULT_FLAG_WRITE && access !== FaultAccess.FAULT_ACCESS_WRITE)
        invalidArgument("flags: FAULT_FLAG_WRITE is only valid with FAULT_ACCESS_WRITE");
      const user = req.user ?? true;
      // What the arch handler adds (fault.proto FaultFlag); the model adds
      // USER, WRITE and INSTRUCTION itself as well.
      let flags = req.flags;
      if (access === FaultAccess.FAULT_ACCESS_WRITE) flags |= FAULT_FLAG_WRITE;
      if (access === FaultAccess.FAULT_ACCESS_EXEC) flags |= FAULT_FLAG_INSTRUCTION;
      if (user) flags |= FAULT_FLAG_USER | FAULT_FLAG_ALLOW_RETRY | FAULT_FLAG_KILLABLE | FAULT_FLAG_INTERRUPTIBLE;

      const ran = modelOp(k, [req.mmId], "read", () => {
        const mm = liveMm(k, req.mmId);
        const faults = k.vmstat.pgfault;
        const r = cpuFault(k, mm, req.addr, ACCESS[access], flags, user);
        // handle_mm_fault counts pgfault first: no count means the arch
        // entry checks refused the access, for which vm_fault is 0.
        if (user && k.vmstat.pgfault === faults) r.vmFault = 0;
        // FaultResult cannot say "no present entry" (level defaults to PTE).
        const mapped = (r.vmFault & VM_FAULT_ERROR) === 0 && r.signal === 0 && translate(k, mm, req.addr) !== null;
        return { r, mapped };
      });
      return thenMaybe(ran, ({ r, mapped }): HandleMmFaultResponse => {
        const level = mapped ? levelToProto(r.level) : PageTableLevel.PAGE_TABLE_LEVEL_UNSPECIFIED;
        return {
          vmFault: r.vmFault >>> 0,
          // A non-user fault (GUP/HMM style) delivers no signal.
          signal: user ? signalToProto(r.signal) : Signal.SIGNAL_UNSPECIFIED,
          siCode: user ? r.siCode : 0,
          errnoValue: Math.abs(r.errno),
          level,
          pfn: mapped ? r.pfn : 0,
          writable: mapped && r.writable,
          special: mapped && r.special,
          cow: r.cow,
          thp: r.thp,
        };
      });
    }),
  };
}
