/** Formatting shared by several command files (fault outcomes, signals). */
import { PageTableLevel, pageTableLevelToJSON, Signal, signalToJSON, VmFault } from "../../gen/mmsim/v1/common.js";
import { bitNames, enumName, hex0x } from "../format.js";

const VM_FAULT_NAMES: Record<number, string> = Object.fromEntries(
  Object.entries(VmFault)
    .filter(([, v]) => typeof v === "number" && v !== 0)
    .map(([k, v]) => [v as number, k]),
);

/** VM_FAULT_* bits by name, "0" for none. */
export function vmFaultText(mask: number): string {
  return mask === 0 ? "0" : bitNames(mask, VM_FAULT_NAMES);
}

const SEGV_CODES: Record<number, string> = { 1: "SEGV_MAPERR", 2: "SEGV_ACCERR" };
const BUS_CODES: Record<number, string> = { 1: "BUS_ADRALN", 2: "BUS_ADRERR", 3: "BUS_OBJERR", 4: "BUS_MCEERR_AR" };

/** "SIGSEGV (SEGV_MAPERR) at 0x7f0000002000" or "" when no signal. */
export function signalText(signal: Signal, siCode: number, faultAddr?: number): string {
  if (signal === Signal.SIGNAL_UNSPECIFIED) return "";
  const name = signalToJSON(signal).replace(/^SIGNAL_/, "");
  const codes = signal === Signal.SIGNAL_SIGSEGV ? SEGV_CODES : signal === Signal.SIGNAL_SIGBUS ? BUS_CODES : {};
  const code = codes[siCode] ?? String(siCode);
  return `${name} (${code})${faultAddr !== undefined && faultAddr !== 0 ? ` at ${hex0x(faultAddr)}` : ""}`;
}

/** PTE / PMD / PUD */
export function levelText(level: PageTableLevel): string {
  return level === PageTableLevel.PAGE_TABLE_LEVEL_UNSPECIFIED ? "-" : enumName(pageTableLevelToJSON(level), "PAGE_TABLE_LEVEL_").toUpperCase();
}

/** Leaf size of a level, bytes. */
export function levelSize(level: PageTableLevel): number {
  return level === PageTableLevel.PAGE_TABLE_LEVEL_PUD ? 2 ** 30 : level === PageTableLevel.PAGE_TABLE_LEVEL_PMD ? 2 ** 21 : 4096;
}
