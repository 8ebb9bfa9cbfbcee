/**
 * mmsim benchmark runner (performance.md §4, workloads W1-W12 and MEM).
 *
 *   npm run bench                  every workload, ≥10 measured runs each
 *   npm run bench -- W1 W7         a subset
 *   npm run bench -- --quick       smoke mode (fewer runs, smaller sizes), < 1 min
 *   options: --out FILE (JSON; default bench/results/latest.json, or
 *            latest-quick.json with --quick), --strict (exit 1 if a target fails),
 *            --quiet (no progress lines on stderr), --list, --markdown (print
 *            the table as Markdown),
 *            --runs N / --warmup N (measured / discarded rounds; defaults 10 / 3,
 *            quick 3 / 1)
 *
 * Every ratio is taken against a reference measured in the same run; no
 * stored absolute time is ever compared. Prints one table and writes the same
 * rows as JSON. Exit code 1 if a workload errored (or, with --strict, failed).
 */
import { mkdirSync, writeFileSync } from "node:fs";
import path from "node:path";
import { ROOT } from "./lib/daemon.js";
import { machine, machineLine } from "./lib/machine.js";
import { renderMarkdown, renderText, tableLines } from "./lib/table.js";
import type { RunOptions, WorkloadContext, WorkloadResult } from "./lib/types.js";
import { WORKLOADS } from "./workloads/index.js";

export interface BenchReport {
  startedAt: string;
  seconds: number;
  quick: boolean;
  machine: ReturnType<typeof machine>;
  workloads: WorkloadResult[];
  summary: { rows: number; passed: number; failed: number; skipped: number; errors: number };
}

export async function runBench(ids: string[], opts: RunOptions): Promise<BenchReport> {
  const t0 = performance.now();
  const want = ids.map((s) => s.toUpperCase());
  const unknown = want.filter((id) => !WORKLOADS.some((w) => w.id === id));
  if (unknown.length > 0) throw new Error(`unknown workload(s): ${unknown.join(", ")} (known: ${WORKLOADS.map((w) => w.id).join(" ")})`);
  const selected = want.length === 0 ? WORKLOADS : WORKLOADS.filter((w) => want.includes(w.id));
  const results: WorkloadResult[] = [];
  for (const w of selected) {
    const ctx: WorkloadContext = {
      opts,
      runs: opts.runs ?? (opts.quick ? 3 : 10),
      warmup: opts.warmup ?? (opts.quick ? 1 : 3),
      log: (msg) => {
        if (opts.verbose) process.stderr.write(`[${w.id}] ${msg}\n`);
      },
    };
    const w0 = performance.now();
    const reason = await w.unavailable();
    if (reason !== null) {
      ctx.log(`skipped: ${reason}`);
      results.push({ id: w.id, title: w.title, status: "skipped", reason, rows: [], seconds: 0 });
      continue;
    }
    ctx.log("running");
    try {
      const rows = await w.run(ctx);
      const seconds = (performance.now() - w0) / 1000;
      ctx.log(`done in ${seconds.toFixed(1)} s`);
      results.push({ id: w.id, title: w.title, status: "ok", rows, seconds });
    } catch (e) {
      const msg = e instanceof Error ? (e.stack ?? e.message) : String(e);
      ctx.log(`error: ${msg}`);
      results.push({ id: w.id, title: w.title, status: "error", reason: msg.split("\n")[0], rows: [], seconds: (performance.now() - w0) / 1000 });
    }
  }
  const rows = results.flatMap((r) => r.rows);
  return {
    startedAt: new Date().toISOString(),
    seconds: (performance.now() - t0) / 1000,
    quick: opts.quick,
    machine: machine(),
    workloads: results,
    summary: {
      rows: rows.length,
      passed: rows.filter((r) => r.pass).length,
      failed: rows.filter((r) => !r.pass).length,
      skipped: results.filter((r) => r.status === "skipped").length,
      errors: results.filter((r) => r.status === "error").length,
    },
  };
}

async function main(argv: string[]): Promise<number> {
  const quick = argv.includes("--quick");
  const strict = argv.includes("--strict");
  const verbose = !argv.includes("--quiet");
  const markdown = argv.includes("--markdown");
  if (argv.includes("--list")) {
    for (const w of WORKLOADS) process.stdout.write(`${w.id.padEnd(4)} ${w.title}\n`);
    return 0;
  }
  const value = (flag: string): string | undefined => {
    const i = argv.indexOf(flag);
    return i >= 0 ? argv[i + 1] : undefined;
  };
  const WITH_VALUE = ["--out", "--runs", "--warmup"];
  const out = value("--out") !== undefined ? path.resolve(value("--out")!) : path.join(ROOT, "bench/results", quick ? "latest-quick.json" : "latest.json");
  const ids = argv.filter((a, i) => !a.startsWith("--") && !WITH_VALUE.includes(argv[i - 1]!));
  const num = (flag: string, min: number): number | undefined => {
    const v = value(flag);
    if (v === undefined) return undefined;
    const n = Number(v);
    if (!Number.isInteger(n) || n < min) throw new Error(`${flag} needs an integer ≥ ${min}`);
    return n;
  };
  const report = await runBench(ids, { quick, verbose, runs: num("--runs", 1), warmup: num("--warmup", 0) });
  const m = report.machine;
  process.stdout.write(`mmsim bench${quick ? " (quick)" : ""}: ${machineLine(m)}\n\n`);
  const lines = tableLines(report.workloads);
  process.stdout.write(`${markdown ? renderMarkdown(lines) : renderText(lines)}\n\n`);
  const s = report.summary;
  process.stdout.write(
    `${s.passed} passed, ${s.failed} failed, ${s.skipped} skipped, ${s.errors} errors in ${report.seconds.toFixed(1)} s; JSON: ${path.relative(process.cwd(), out)}\n`,
  );
  mkdirSync(path.dirname(out), { recursive: true });
  writeFileSync(out, `${JSON.stringify(report, null, 2)}\n`);
  return s.errors > 0 || (strict && s.failed > 0) ? 1 : 0;
}

// Run only as the entry point (the quick test imports runBench).
if (process.argv[1] !== undefined && path.resolve(process.argv[1]) === path.join(ROOT, "bench/run.ts")) {
  main(process.argv.slice(2)).then(
    (code) => process.exit(code),
    (e: unknown) => {
      process.stderr.write(`bench: ${e instanceof Error ? (e.stack ?? e.message) : String(e)}\n`);
      process.exit(2);
    },
  );
}
