/**
 * `mmsim snapshot` in-process against real daemons: save to a local file
 * with a progress bar on a terminal, restore into a fresh daemon, reclaim
 * the restored session and keep working with it; --remote files; --json;
 * a refused restore exits 1 with the errno.
 */
import { mkdtempSync, rmSync, statSync } from "node:fs";
import { tmpdir } from "node:os";
import path from "node:path";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { runCli } from "../../src/cli/cli.js";
import { startDaemon, type TestDaemon } from "../helpers/daemon.js";

interface Out {
  code: number;
  stdout: string;
  stderr: string;
}

const dir = mkdtempSync(path.join(tmpdir(), "mmsim-snapcli-"));

async function cli(t: TestDaemon, args: string[], tty = false): Promise<Out> {
  let stdout = "";
  let stderr = "";
  const code = await runCli(args, {
    stdout: { write: (s: string | Uint8Array) => (stdout += typeof s === "string" ? s : Buffer.from(s).toString("latin1")) },
    stderr: { write: (s: string) => (stderr += s), isTTY: tty, columns: 100 },
    env: { MMSIM_ADDR: t.address, MMSIM_SESSION: "cli" },
  });
  return { code, stdout, stderr };
}

describe("mmsim snapshot", () => {
  let A: TestDaemon;
  let B: TestDaemon;
  beforeAll(async () => {
    A = await startDaemon({ ramBytes: 2 ** 31, snapshotDir: dir });
    B = await startDaemon({ ramBytes: 2 ** 31, snapshotDir: dir });
  });
  afterAll(async () => {
    await A?.stop();
    await B?.stop();
    rmSync(dir, { recursive: true, force: true });
  });

  it("save with a progress bar, restore into a fresh daemon, reclaim and keep working", async () => {
    const mm = (await cli(A, ["create-mm", "app"])).stdout.trim();
    const addr = (await cli(A, ["mmap", mm, "64M"])).stdout.trim();
    expect((await cli(A, ["populate", mm, addr, "64M", "--write"])).code).toBe(0);
    expect((await cli(A, ["write", mm, addr, "hello snapshot"])).code).toBe(0);
    const file = path.join(dir, "a.snap");
    const saved = await cli(A, ["snapshot", "save", file], true);
    expect(saved.code, saved.stderr).toBe(0);
    expect(saved.stdout).toMatch(/^saved .*a\.snap: .* 1 mm\(s\), 1 session\(s\)/);
    expect(saved.stderr).toContain("save [");
    expect(saved.stderr).toContain("100%");
    expect(saved.stderr.endsWith("\r\x1b[K")).toBe(true);
    // zero-filled pages store no contents: the 64 MiB of populated memory costs its struct pages and tables
    expect(statSync(file).size).toBeGreaterThan(100_000);
    // no overwrite without --overwrite
    expect((await cli(A, ["snapshot", "save", file])).code).toBe(2);

    const restored = await cli(B, ["snapshot", "restore", file, "--json"]);
    expect(restored.code, restored.stderr).toBe(0);
    const j = JSON.parse(restored.stdout) as { result: { sessions: { name: string; sessionId: string | number }[]; summary: { stateDigest: string } } };
    expect(j.result.sessions.map((s) => s.name)).toEqual(["cli"]);
    expect(j.result.summary.stateDigest).toBe((await A.clients.admin.getStateDigest({})).digest);
    expect((await cli(B, ["snapshot", "reclaim", "cli"])).stdout.trim()).toBe(String(j.result.sessions[0]!.sessionId));
    // the CLI finds its restored session by name and keeps working with it
    expect((await cli(B, ["read", mm, addr, "14", "--format", "raw"])).stdout).toBe("hello snapshot");
    expect((await cli(B, ["munmap", mm, addr, "64M"])).code).toBe(0);
    expect((await cli(B, ["check"])).code).toBe(0);

    // B is not fresh any more: a second restore is refused (exit 1, EBUSY)
    const again = await cli(B, ["snapshot", "restore", file]);
    expect(again.code).toBe(1);
    expect(again.stderr).toMatch(/EBUSY: restore needs a fresh daemon/);
  });

  it("--remote saves and restores by plain name in the daemon's snapshot directory", async () => {
    const s = await cli(A, ["snapshot", "save", "remote.snap", "--remote", "--json"]);
    expect(s.code, s.stderr).toBe(0);
    expect(JSON.parse(s.stdout)).toMatchObject({ file: "remote.snap" });
    expect((await cli(A, ["snapshot", "save", "../x", "--remote"])).stderr).toMatch(/EINVAL: file name "..\/x" is not a plain file name/);
    const C = await startDaemon({ ramBytes: 2 ** 31, snapshotDir: dir });
    try {
      const r = await cli(C, ["snapshot", "restore", "remote.snap", "--remote"]);
      expect(r.code, r.stderr).toBe(0);
      expect(r.stdout).toMatch(/^restored remote\.snap: /);
      expect((await C.clients.admin.getStateDigest({})).digest).toBe((await A.clients.admin.getStateDigest({})).digest);
    } finally {
      await C.stop();
    }
    expect((await cli(A, ["snapshot", "frobnicate", "x"])).code).toBe(2);
  });
});
