/**
 * SystemService (system.proto): tunables and versions. The model keeps
 * RLIMIT_MEMLOCK as one number (0 = unlimited); the wire has a finite limit
 * plus an "unlimited" switch, so the finite value is kept in the registry.
 */
import { MMSIM_VERSION } from "../version.js";
import {
  type GetTunablesRequest,
  type GetTunablesResponse,
  type GetVersionRequest,
  type GetVersionResponse,
  type SetTunablesRequest,
  type SetTunablesResponse,
  type SystemServiceServer,
  type Tunables,
  PinAccounting,
} from "../gen/mmsim/v1/system.js";
import { Errno, MmError } from "../mm/errors.js";
import { thpFromProto, thpToProto } from "./convert.js";
import { invalidArgument } from "./errors.js";
import type { ServiceDeps } from "./handler.js";
import { unary } from "./handler.js";
import type { Registry } from "./registry.js";
import { u32, u64 } from "./validate.js";
import type { Kernel } from "../mm/kernel.js";

const SVC = "SystemService";
export const KERNEL_BASELINE = "6.18";
export const API_PACKAGE = "mmsim.v1";

export function currentTunables(k: Kernel, reg: Registry): Tunables {
  return {
    thpEnabled: thpToProto(k.tunables.thpEnabled),
    thpUseZeroPage: k.tunables.thpUseZeroPage,
    maxMapCount: k.tunables.maxMapCount,
    memlockLimitBytes: reg.memlock.limitBytes,
    memlockUnlimited: reg.memlock.unlimited,
    pinAccounting: k.tunables.pinAccounting === "bias-2019" ? PinAccounting.PIN_ACCOUNTING_BIAS_2019 : PinAccounting.PIN_ACCOUNTING_CURRENT,
  };
}

/**
 * The model's memlockLimitBytes: 0 means unlimited there, so a finite limit
 * of 0 bytes becomes 1 byte, which refuses every page-sized charge alike.
 */
export function modelMemlock(reg: Registry): number {
  return reg.memlock.unlimited ? 0 : Math.max(1, reg.memlock.limitBytes);
}

export function systemService(d: ServiceDeps): SystemServiceServer {
  const k = d.kernel;
  return {
    getTunables: unary<GetTunablesRequest, GetTunablesResponse>(d, `${SVC}/GetTunables`, "optional", () => ({
      tunables: currentTunables(k, d.registry),
    })),

    setTunables: unary<SetTunablesRequest, SetTunablesResponse>(d, `${SVC}/SetTunables`, "required", (req) => {
      // Check everything first: an invalid value changes nothing.
      let thp;
      if (req.thpEnabled !== undefined) {
        thp = thpFromProto(req.thpEnabled);
        if (thp === undefined) invalidArgument(`thp_enabled ${req.thpEnabled} is not ALWAYS, MADVISE or NEVER`);
      }
      if (req.maxMapCount !== undefined) {
        u32(req.maxMapCount, "max_map_count");
        if (req.maxMapCount < 1) invalidArgument("max_map_count must be >= 1");
      }
      if (req.memlockLimitBytes !== undefined) u64(req.memlockLimitBytes, "memlock_limit_bytes");
      if (req.memlockLimitBytes !== undefined && req.memlockUnlimited !== undefined)
        invalidArgument("set at most one of memlock_limit_bytes and memlock_unlimited");

      let profile: "current" | "bias-2019" | undefined;
      if (req.pinAccounting !== undefined) {
        if (req.pinAccounting === PinAccounting.PIN_ACCOUNTING_CURRENT) profile = "current";
        else if (req.pinAccounting === PinAccounting.PIN_ACCOUNTING_BIAS_2019) profile = "bias-2019";
        else invalidArgument(`pin_accounting ${req.pinAccounting} is not CURRENT or BIAS_2019`);
        if (profile !== k.tunables.pinAccounting && k.pins.handleIds().length > 0)
          throw new MmError(Errno.EBUSY, "pins or GUP references are held: release them before switching the pin accounting profile", "precondition");
      }

      if (profile !== undefined) k.tunables.pinAccounting = profile;
      if (thp !== undefined) k.tunables.thpEnabled = thp;
      if (req.thpUseZeroPage !== undefined) k.tunables.thpUseZeroPage = req.thpUseZeroPage;
      if (req.maxMapCount !== undefined) k.tunables.maxMapCount = req.maxMapCount;
      if (req.memlockLimitBytes !== undefined) {
        d.registry.memlock.limitBytes = req.memlockLimitBytes;
        d.registry.memlock.unlimited = false;
      }
      if (req.memlockUnlimited !== undefined) d.registry.memlock.unlimited = req.memlockUnlimited;
      k.tunables.memlockLimitBytes = modelMemlock(d.registry);
      return { tunables: currentTunables(k, d.registry) };
    }),

    getVersion: unary<GetVersionRequest, GetVersionResponse>(d, `${SVC}/GetVersion`, "optional", () => ({
      version: MMSIM_VERSION,
      kernelBaseline: KERNEL_BASELINE,
      api: API_PACKAGE,
    })),
  };
}
