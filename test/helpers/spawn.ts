/**
 * Child processes for end-to-end tests, always asynchronous: the daemon under
 * test runs in the test's own event loop, so a synchronous spawn would stall
 * it and the child would time out.
 */
import { spawn } from "node:child_process";
import { existsSync } from "node:fs";
import path from "node:path";
import { fileURLToPath } from "node:url";

export const ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), "..", "..");
export const PYTHON = "/usr/bin/python3";

export interface RunResult {
  code: number | null;
  signal: NodeJS.Signals | null;
  stdout: string;
  stderr: string;
}

export function run(cmd: string, args: readonly string[], opts: { env?: NodeJS.ProcessEnv; timeoutMs?: number; cwd?: string } = {}): Promise<RunResult> {
  return new Promise((resolve, reject) => {
    const child = spawn(cmd, args, { cwd: opts.cwd ?? ROOT, env: { ...process.env, ...opts.env }, stdio: ["ignore", "pipe", "pipe"] });
    let stdout = "";
    let stderr = "";
    child.stdout.setEncoding("utf8").on("data", (d: string) => (stdout += d));
    child.stderr.setEncoding("utf8").on("data", (d: string) => (stderr += d));
    const timer = setTimeout(() => child.kill("SIGKILL"), opts.timeoutMs ?? 20_000);
    child.on("error", (e) => {
      clearTimeout(timer);
      reject(e);
    });
    child.on("close", (code, signal) => {
      clearTimeout(timer);
      resolve({ code, signal, stdout, stderr });
    });
  });
}

/** The `mmsim` CLI from source (through tsx), so tests never run a stale build. */
export function runCliProcess(args: readonly string[], env: NodeJS.ProcessEnv = {}): Promise<RunResult> {
  return run(process.execPath, ["--import", "tsx", path.join(ROOT, "src/cli/main.ts"), ...args], { env });
}

let pythonGrpc: Promise<boolean> | undefined;

/** /usr/bin/python3 exists and imports grpc and google.protobuf. */
export function pythonHasGrpc(): Promise<boolean> {
  pythonGrpc ??= existsSync(PYTHON)
    ? run(PYTHON, ["-c", "import grpc, google.protobuf"]).then((r) => r.code === 0, () => false)
    : Promise.resolve(false);
  return pythonGrpc;
}
