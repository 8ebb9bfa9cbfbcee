/**
 * Every method of every mmsim.v1 service (as generated from the protos) is
 * either recorded by a trace or explicitly not: a new RPC that is in
 * neither table fails here.
 */
import { readdirSync } from "node:fs";
import path from "node:path";
import { fileURLToPath } from "node:url";
import { describe, expect, it } from "vitest";
import { METHODS, TRACED_METHODS, UNTRACED_METHODS, UNTRACED_SERVICES } from "../../src/trace/methods.js";

const GEN = path.resolve(path.dirname(fileURLToPath(import.meta.url)), "../../src/gen/mmsim/v1");

/** "Service/Method" of every generated mmsim.v1 service definition. */
async function generatedMethods(): Promise<string[]> {
  const out: string[] = [];
  for (const f of readdirSync(GEN).filter((x) => x.endsWith(".ts"))) {
    const mod = (await import(path.join(GEN, f))) as Record<string, unknown>;
    for (const [name, v] of Object.entries(mod)) {
      if (!name.endsWith("Service") || typeof v !== "object" || v === null) continue;
      for (const m of Object.values(v as Record<string, { path?: unknown }>))
        if (typeof m?.path === "string" && m.path.startsWith("/mmsim.v1.")) out.push(m.path.slice("/mmsim.v1.".length));
    }
  }
  return out.sort();
}

describe("trace method tables", () => {
  it("classify every mmsim.v1 method exactly once", async () => {
    const all = await generatedMethods();
    expect(all.length).toBeGreaterThanOrEqual(TRACED_METHODS.length + UNTRACED_METHODS.length);
    expect(all).toContain("AddressSpaceService/Mmap");
    const traced = new Set(TRACED_METHODS);
    const untraced = new Set(UNTRACED_METHODS);
    const unclassified = all.filter((m) => !traced.has(m) && !untraced.has(m) && !UNTRACED_SERVICES.includes(m.split("/")[0]!));
    expect(unclassified, "add each to TRACED_METHODS or UNTRACED_METHODS in src/trace/methods.ts").toEqual([]);
    expect(all.filter((m) => traced.has(m) && untraced.has(m))).toEqual([]);
    // no stale entries, no duplicates
    const known = new Set(all);
    expect([...TRACED_METHODS, ...UNTRACED_METHODS].filter((m) => !known.has(m))).toEqual([]);
    expect(traced.size).toBe(TRACED_METHODS.length);
    expect(untraced.size).toBe(UNTRACED_METHODS.length);
  });

  it("have a codec for every recorded method", () => {
    for (const m of TRACED_METHODS) expect(METHODS.has(`/mmsim.v1.${m}`), m).toBe(true);
  });
});
