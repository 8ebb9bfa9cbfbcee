/**
 * The harness vocabulary. A workload produces rows; each row compares one
 * figure with a reference measured in the same run (a ratio), or states an
 * exact operation count. Targets come from shared/spec/performance.md §4.
 */

/** How a row's `ratio` is judged against `target.value`. */
export type TargetOp = ">=" | "<=" | "==";

export interface Target {
  op: TargetOp;
  value: number;
  /** as printed, e.g. "≥50× faster" */
  label: string;
}

export interface Row {
  /** e.g. "W1 pin 1 GiB THP, range output" */
  name: string;
  /** the measured figure (a time, a rate, a count) */
  figure: number;
  figureUnit: string;
  /** the reference figure of the same run (null for pure counts) */
  reference: number | null;
  referenceUnit: string;
  /** what the reference is, e.g. "per-page reference" */
  referenceLabel: string;
  /** the number the target judges (speedup, slowdown, count, ...) */
  ratio: number;
  /** how `ratio` prints: "×" (default) for ratios, "" for counts, or a unit for absolute targets */
  ratioUnit?: string;
  target: Target;
  pass: boolean;
  /** exact operation counts behind the row, for the JSON and the tests */
  counts?: Record<string, number>;
  note?: string;
}

export type WorkloadStatus = "ok" | "skipped" | "error";

export interface WorkloadResult {
  id: string;
  title: string;
  status: WorkloadStatus;
  /** skip reason or error message */
  reason?: string;
  rows: Row[];
  seconds: number;
}

export interface RunOptions {
  quick: boolean;
  /** print progress lines on stderr */
  verbose: boolean;
  /** override the measured / warm-up round counts */
  runs?: number;
  warmup?: number;
}

export interface WorkloadContext {
  readonly opts: RunOptions;
  /** samples per measurement (median of these) */
  readonly runs: number;
  /** discarded warm-up samples before the measured ones */
  readonly warmup: number;
  log(msg: string): void;
}

export interface Workload {
  id: string;
  title: string;
  /** null when runnable, else why not (printed as "skipped: <reason>") */
  unavailable(): Promise<string | null>;
  run(ctx: WorkloadContext): Promise<Row[]>;
}

/** A row's pass/fail from its ratio and target. */
export function judge(ratio: number, t: Target): boolean {
  if (!Number.isFinite(ratio)) return false;
  if (t.op === ">=") return ratio >= t.value;
  if (t.op === "<=") return ratio <= t.value;
  return ratio === t.value;
}

export function atLeast(value: number, label: string): Target {
  return { op: ">=", value, label };
}
export function atMost(value: number, label: string): Target {
  return { op: "<=", value, label };
}
export function exactly(value: number, label = `= ${value.toLocaleString("en-US")}`): Target {
  return { op: "==", value, label };
}

/** A row whose ratio is figure vs reference, as computed by the caller. */
export function row(r: Omit<Row, "pass">): Row {
  return { ...r, pass: judge(r.ratio, r.target) };
}

/** An exact-count row: figure must equal the expected count. */
export function countRow(name: string, figure: number, unit: string, expected: number, why: string, counts?: Record<string, number>): Row {
  return row({
    name,
    figure,
    figureUnit: unit,
    reference: expected,
    referenceUnit: unit,
    referenceLabel: why,
    ratio: figure,
    ratioUnit: "",
    target: exactly(expected),
    counts,
  });
}

/** A row judged on an absolute figure (performance.md gives a few: ≤1 ms, ≤2 µs, ...). */
export function absoluteRow(name: string, figure: number, unit: string, target: Target, extra: Partial<Row> = {}): Row {
  return row({
    name,
    figure,
    figureUnit: unit,
    reference: null,
    referenceUnit: "",
    referenceLabel: "absolute target",
    ratio: figure,
    ratioUnit: ` ${unit}`,
    target,
    ...extra,
  });
}
