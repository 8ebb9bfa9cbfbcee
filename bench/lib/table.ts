/** The one table `npm run bench` prints. */
import { fmtMs } from "./stats.js";
import type { Row, WorkloadResult } from "./types.js";

function num(x: number): string {
  if (!Number.isFinite(x)) return String(x);
  if (Number.isInteger(x)) return x.toLocaleString("en-US");
  const a = Math.abs(x);
  if (a >= 100) return x.toFixed(0);
  if (a >= 10) return x.toFixed(1);
  if (a >= 1) return x.toFixed(2);
  return x.toPrecision(3);
}

export function fmtValue(v: number | null, unit: string): string {
  if (v === null) return "";
  if (unit === "ms") return fmtMs(v);
  return `${num(v)} ${unit}`.trim();
}

export function fmtRatio(r: Row): string {
  const u = r.ratioUnit ?? (r.target.op === "==" ? "" : "×");
  if (u === " ms") return fmtMs(r.ratio);
  return `${num(r.ratio)}${u}`;
}

export interface TableLine {
  workload: string;
  figure: string;
  reference: string;
  ratio: string;
  target: string;
  result: string;
}

export function tableLines(results: WorkloadResult[]): TableLine[] {
  const out: TableLine[] = [];
  for (const w of results) {
    if (w.status !== "ok") {
      out.push({ workload: `${w.id} ${w.title}`, figure: "", reference: "", ratio: "", target: "", result: `${w.status}: ${w.reason ?? ""}` });
      continue;
    }
    for (const r of w.rows) {
      out.push({
        workload: r.name,
        figure: fmtValue(r.figure, r.figureUnit),
        reference: r.reference === null ? r.referenceLabel : `${fmtValue(r.reference, r.referenceUnit)} (${r.referenceLabel})`,
        ratio: fmtRatio(r),
        target: r.target.label,
        result: r.pass ? "pass" : "FAIL",
      });
    }
  }
  return out;
}

const HEAD: TableLine = { workload: "workload", figure: "figure", reference: "reference", ratio: "ratio", target: "target", result: "result" };
const COLS = ["workload", "figure", "reference", "ratio", "target", "result"] as const;

/** Plain-text table with aligned columns. */
export function renderText(lines: TableLine[]): string {
  const all = [HEAD, ...lines];
  const w = COLS.map((c) => Math.max(...all.map((l) => l[c].length)));
  const fmt = (l: TableLine) => COLS.map((c, i) => (c === "result" ? l[c] : l[c].padEnd(w[i]!))).join("  ").trimEnd();
  return [fmt(HEAD), w.map((n) => "-".repeat(n)).join("  "), ...lines.map(fmt)].join("\n");
}

/** Markdown table (for the README). */
export function renderMarkdown(lines: TableLine[]): string {
  const esc = (s: string) => s.replace(/\|/g, "\\|");
  return [
    `| ${COLS.join(" | ")} |`,
    `|${COLS.map(() => "---").join("|")}|`,
    ...lines.map((l) => `| ${COLS.map((c) => esc(l[c])).join(" | ")} |`),
  ].join("\n");
}
