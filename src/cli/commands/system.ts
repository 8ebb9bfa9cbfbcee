/** SystemService commands: tunables (show or change), version. */
import {
  GetTunablesResponse,
  GetVersionResponse,
  SetTunablesRequest,
  SystemServiceService as S,
  ThpEnabled,
  thpEnabledToJSON,
  type Tunables,
} from "../../gen/mmsim/v1/system.js";
import { MMSIM_VERSION } from "../../version.js";
import { enumName, size } from "../format.js";
import type { CommandSpec } from "../registry.js";
import { optNumber, parseChoice, parseNumber, parseOnOff } from "../values.js";

const group = "SystemService";
const THP = ["always", "madvise", "never"] as const;
const THP_ENUM: Record<(typeof THP)[number], ThpEnabled> = {
  always: ThpEnabled.THP_ENABLED_ALWAYS,
  madvise: ThpEnabled.THP_ENABLED_MADVISE,
  never: ThpEnabled.THP_ENABLED_NEVER,
};

function tunablesText(t: Tunables | undefined): string {
  if (t === undefined) return "";
  return [
    `transparent_hugepage/enabled        ${enumName(thpEnabledToJSON(t.thpEnabled), "THP_ENABLED_")}`,
    `transparent_hugepage/use_zero_page  ${t.thpUseZeroPage ? 1 : 0}`,
    `vm.max_map_count                    ${t.maxMapCount}`,
    `RLIMIT_MEMLOCK                      ${t.memlockUnlimited ? `unlimited (finite limit ${size(t.memlockLimitBytes)})` : size(t.memlockLimitBytes)}`,
  ].join("\n");
}

export const systemCommands: CommandSpec[] = [
  {
    name: "tunables",
    group,
    summary: "show the tunables (GetTunables), or change them with options (SetTunables)",
    options: {
      thp: { type: "string", value: THP.join("|"), help: "transparent_hugepage/enabled" },
      "zero-page": { type: "string", value: "on|off", help: "transparent_hugepage/use_zero_page" },
      "max-map-count": { type: "string", value: "N", help: "vm.max_map_count" },
      memlock: { type: "string", value: "SIZE|unlimited", help: "per-session RLIMIT_MEMLOCK" },
    },
    async run(ctx, a) {
      const o = a.opts;
      const change = o.thp !== undefined || o["zero-page"] !== undefined || o["max-map-count"] !== undefined || o.memlock !== undefined;
      if (!change) {
        const r = await ctx.call(S.getTunables, {});
        if (ctx.json) return ctx.printJson(GetTunablesResponse.toJSON(r));
        return ctx.out(tunablesText(r.tunables));
      }
      const memlock = typeof o.memlock === "string" ? o.memlock.trim().toLowerCase() : undefined;
      const req = SetTunablesRequest.fromPartial({
        thpEnabled: typeof o.thp === "string" ? THP_ENUM[parseChoice(o.thp, THP, "thp")] : undefined,
        thpUseZeroPage: typeof o["zero-page"] === "string" ? parseOnOff(o["zero-page"], "--zero-page") : undefined,
        maxMapCount: o["max-map-count"] !== undefined ? optNumber(o["max-map-count"], "--max-map-count", 0) : undefined,
        memlockLimitBytes: memlock !== undefined && memlock !== "unlimited" ? parseNumber(memlock, "--memlock") : undefined,
        memlockUnlimited: memlock === "unlimited" ? true : undefined,
      });
      const r = await ctx.call(S.setTunables, req, { session: true });
      if (ctx.json) return ctx.printJson(GetTunablesResponse.toJSON(r));
      ctx.out(tunablesText(r.tunables));
    },
  },
  {
    name: "version",
    group,
    summary: "daemon and CLI versions (GetVersion)",
    async run(ctx) {
      const r = await ctx.call(S.getVersion, {});
      if (ctx.json) return ctx.printJson({ ...(GetVersionResponse.toJSON(r) as object), cli: MMSIM_VERSION });
      ctx.out(`mmsimd ${r.version} (simulates Linux ${r.kernelBaseline}, API ${r.api}); mmsim CLI ${MMSIM_VERSION}`);
    },
  },
];
