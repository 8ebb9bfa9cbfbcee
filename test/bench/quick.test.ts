/**
 * Smoke test of the benchmark harness: `bench/run.ts --quick` on a subset,
 * as a child process, and sanity of its JSON (finite positive figures,
 * ratios and targets present, the exact operation counts). No timing
 * assertion: ratios are judged by `npm run bench`, not here.
 */
import { spawn } from "node:child_process";
import { mkdtempSync, readFileSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import path from "node:path";
import { fileURLToPath } from "node:url";
import { afterAll, describe, expect, it } from "vitest";
import type { BenchReport } from "../../bench/run.js";

const ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), "../..");
const SUBSET = ["W1", "W6", "W8", "W10", "W11", "MEM"];

function runQuick(out: string): Promise<{ code: number | null; stdout: string; stderr: string }> {
  return new Promise((resolve, reject) => {
    const child = spawn(process.execPath, ["--import", "tsx", "bench/run.ts", "--quick", "--quiet", "--out", out, ...SUBSET], {
      cwd: ROOT,
      stdio: ["ignore", "pipe", "pipe"],
    });
    let stdout = "";
    let stderr = "";
    child.stdout.on("data", (b: Buffer) => (stdout += b.toString()));
    child.stderr.on("data", (b: Buffer) => (stderr += b.toString()));
    child.on("error", reject);
    child.on("close", (code) => resolve({ code, stdout, stderr }));
  });
}

describe("bench --quick", () => {
  const dir = mkdtempSync(path.join(tmpdir(), "mmsim-bench-"));
  afterAll(() => rmSync(dir, { recursive: true, force: true }));

  it("runs the subset and reports sane numbers", { timeout: 120_000 }, async () => {
    const out = path.join(dir, "quick.json");
    const r = await runQuick(out);
    expect(r.code, r.stderr).toBe(0);
    expect(r.stdout).toMatch(/^workload\s+figure\s+reference\s+ratio\s+target\s+result$/m);
    const rep = JSON.parse(readFileSync(out, "utf8")) as BenchReport;
    expect(rep.quick).toBe(true);
    expect(rep.machine.nproc).toBeGreaterThan(0);
    expect(rep.workloads.map((w) => w.id)).toEqual(SUBSET);
    for (const w of rep.workloads) {
      // Every workload of the subset is implemented: a skip is a regression.
      expect(w.status, `${w.id}: ${w.reason}`).not.toBe("error");
      expect(w.status, `${w.id} skipped: ${w.reason}`).not.toBe("skipped");
      expect(w.rows.length).toBeGreaterThan(0);
      for (const row of w.rows) {
        // Memory growth may be 0 (or below, after a GC); times, rates and counts are positive.
        const min = row.figureUnit === "B" && row.name.startsWith("MEM") ? -Infinity : 0;
        expect(Number.isFinite(row.figure) && row.figure > min, `${row.name} figure ${row.figure}`).toBe(true);
        expect(Number.isFinite(row.ratio) && row.ratio > min, `${row.name} ratio ${row.ratio}`).toBe(true);
        if (row.reference !== null) expect(Number.isFinite(row.reference) && row.reference > 0, `${row.name} reference`).toBe(true);
        expect(["<=", ">=", "=="]).toContain(row.target.op);
        expect(typeof row.pass).toBe("boolean");
      }
    }
    const rows = new Map(rep.workloads.flatMap((w) => w.rows).map((row) => [row.name, row]));
    // Exact operation counts.
    expect(rows.get("W6 PUD leaf writes")?.figure).toBe(32);
    expect(rows.get("W6 PUD walk iterations")?.figure).toBe(32);
    expect(rows.get("W6 PMD leaf writes")?.figure).toBe(16_384);
    expect(rows.get("W6 PMD walk iterations")?.figure).toBe(16_384);
    expect(rows.get("W6 PTE leaf writes (reference)")?.figure).toBe(8_388_608);
    const faults = rows.get("W8 page faults taken");
    expect(faults?.figure).toBe(faults?.reference);
    // W10 (c): every MADV_DONTNEED RPC sent one invalidation per VMA to the mirror.
    const events = rows.get("W10 (c) invalidations received");
    expect(events?.figure).toBeGreaterThan(0);
    expect(events?.figure).toBe(events?.reference);
    if (rep.workloads.find((w) => w.id === "W1")?.status === "ok") {
      expect(rows.get("W1 refcount/pincount updates")?.figure).toBe(512);
      expect(rows.get("W1 refcount/pincount updates")?.counts?.referenceUpdates).toBe(262_144);
    }
    if (rep.workloads.find((w) => w.id === "W11")?.status === "ok") {
      expect(rows.get("W11 order mode: entries for 1 GiB")!.figure).toBeLessThanOrEqual(512);
    }
  });
});
