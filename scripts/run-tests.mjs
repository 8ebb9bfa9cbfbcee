#!/usr/bin/env node
// Runs vitest and prints a plain closing line that CI can parse:
//   "<passed> passed, <failed> failed[, <skipped> skipped]"
// Exit code is 0 only if vitest exited 0, at least one test passed and none failed.
// Extra CLI args are forwarded to vitest (e.g. `npm test -- test/unit`).
import { spawn } from "node:child_process";
import { existsSync, readFileSync, rmSync } from "node:fs";
import path from "node:path";
import { fileURLToPath } from "node:url";

const root = path.resolve(path.dirname(fileURLToPath(import.meta.url)), "..");
const reportPath = path.join(root, ".vitest-report.json");
const vitestBin = path.join(root, "node_modules", ".bin", process.platform === "win32" ? "vitest.cmd" : "vitest");

rmSync(reportPath, { force: true });

const args = [
  "run",
  "--reporter=default",
  "--reporter=json",
  `--outputFile.json=${reportPath}`,
  ...process.argv.slice(2),
];

const child = spawn(vitestBin, args, { cwd: root, stdio: "inherit" });

const forward = (sig) => {
  if (!child.killed) child.kill(sig);
};
process.on("SIGINT", forward);
process.on("SIGTERM", forward);

const code = await new Promise((resolve) => {
  child.on("error", (err) => {
    console.error(`run-tests: failed to start vitest: ${err.message}`);
    resolve(1);
  });
  child.on("close", (c, signal) => resolve(signal ? 1 : (c ?? 1)));
});

let report;
try {
  if (existsSync(reportPath)) report = JSON.parse(readFileSync(reportPath, "utf8"));
} catch (err) {
  console.error(`run-tests: cannot parse ${reportPath}: ${err.message}`);
}

if (!report) {
  console.log("0 passed, 1 failed");
  process.exit(1);
}

const passed = Number(report.numPassedTests ?? 0);
// A test file that fails outside any test (import/syntax error, failing
// top-level hook) has no failed test; count it as one failure so the closing
// line never says "0 failed" for a broken run.
const brokenFiles = (report.testResults ?? []).filter(
  (f) => f.status === "failed" && !(f.assertionResults ?? []).some((a) => a.status === "failed"),
);
for (const f of brokenFiles) {
  console.error(`run-tests: ${path.relative(root, f.name)} failed outside any test: ${String(f.message ?? "").split("\n")[0]}`);
}
const failed = Number(report.numFailedTests ?? 0) + brokenFiles.length;
const skipped = Number(report.numPendingTests ?? 0) + Number(report.numTodoTests ?? 0);

let line = `${passed} passed, ${failed} failed`;
if (skipped > 0) line += `, ${skipped} skipped`;
console.log(line);

process.exit(code === 0 && passed > 0 && failed === 0 ? 0 : 1);
