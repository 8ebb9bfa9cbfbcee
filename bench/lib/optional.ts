/**
 * Modules that are still being written (GUP, HMM, notifier streaming, their
 * gRPC services). A workload that needs one asks here and reports
 * "skipped: <reason>" until it lands; the import path is computed, so the
 * harness type-checks and runs before the module exists.
 */
import { existsSync } from "node:fs";
import path from "node:path";
import { pathToFileURL } from "node:url";
import { ROOT } from "./daemon.js";

/** Does `rel` (e.g. "src/mm/gup.ts") exist in the tree? */
export function hasSource(rel: string): boolean {
  return existsSync(path.join(ROOT, rel));
}

/** Import a source module by its path from the repository root (tsx resolves .ts). */
export async function importSource<T>(rel: string): Promise<T> {
  return (await import(pathToFileURL(path.join(ROOT, rel)).href)) as T;
}

/**
 * Why `exports` are not all available from `rel`, or null if they are.
 * Used by unavailable(): a module that exists but lacks a name is reported
 * as such, not as a crash.
 */
export async function missingExports(rel: string, names: readonly string[]): Promise<string | null> {
  if (!hasSource(rel)) return `${rel} does not exist yet`;
  let mod: Record<string, unknown>;
  try {
    mod = await importSource<Record<string, unknown>>(rel);
  } catch (e) {
    return `${rel} does not load: ${e instanceof Error ? e.message.split("\n")[0] : String(e)}`;
  }
  const missing = names.filter((n) => mod[n] === undefined);
  return missing.length === 0 ? null : `${rel} has no ${missing.join(", ")}`;
}
