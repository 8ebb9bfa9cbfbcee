/**
 * The `mmsim` CLI against a real daemon: as a child process (output, exit
 * statuses 0 / 1 / 2, the persistent named session found again by a second
 * process), and in-process through runCli for the bulk of the commands.
 */
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { runCli } from "../../src/cli/cli.js";
import { startDaemon, type TestDaemon } from "../helpers/daemon.js";
import { runCliProcess } from "../helpers/spawn.js";

interface Out {
  code: number;
  stdout: string;
  stderr: string;
}

describe("mmsim CLI", () => {
  let t: TestDaemon;
  /** in-process run, session "cli-test" unless the arguments name another */
  const cli = async (...args: string[]): Promise<Out> => {
    let stdout = "";
    let stderr = "";
    const code = await runCli(args, {
      stdout: { write: (s: string | Uint8Array) => (stdout += typeof s === "string" ? s : Buffer.from(s).toString("latin1")) },
      stderr: { write: (s: string) => (stderr += s), isTTY: false },
      env: { MMSIM_ADDR: t.address, MMSIM_SESSION: "cli-test" },
    });
    return { code, stdout, stderr };
  };

  beforeAll(async () => {
    t = await startDaemon({ ramBytes: 2 ** 31 });
  });
  afterAll(async () => {
    await t.checkInvariants();
    await t.stop();
  });

  it("as a process: output and exit statuses 0, 1 (ERRNO: reason) and 2 (usage); the named session is reused", async () => {
    // An earlier CLI run created the persistent session "cli" and an mm in it.
    const mm = (await cli("--session", "cli", "create-mm", "proc")).stdout.trim();
    const env = { MMSIM_ADDR: t.address };
    const [version, bad, usage] = await Promise.all([
      runCliProcess(["version"], env),
      runCliProcess(["munmap", mm, "0x1001", "4096"], env),
      runCliProcess(["mmap", "1"], env),
    ]);
    expect(version).toMatchObject({ code: 0, stderr: "" });
    expect(version.stdout).toMatch(/^mmsimd \d+\.\d+\.\d+ \(simulates Linux 6\.18, API mmsim\.v1\); mmsim CLI /);
    expect(bad.code).toBe(1);
    expect(bad.stderr).toBe("EINVAL: addr 0x1001 is not page aligned\n");
    expect(usage.code).toBe(2);
    expect(usage.stderr).toContain("mmsim: mmap: missing LENGTH");
    expect(usage.stderr).toContain("usage: mmsim mmap MM LENGTH");
    // the munmap process found the session by name instead of creating another
    const sessions = (await t.clients.session.listSessions({})).sessions.filter((s) => s.name === "cli");
    expect(sessions).toHaveLength(1);
    const json = JSON.parse((await cli("--json", "mms")).stdout) as { mms: { mmId: number; ownerSessionId: number }[] };
    expect(json.mms.find((m) => m.mmId === Number(mm))?.ownerSessionId).toBe(sessions[0]!.sessionId);

    expect(await cli("frobnicate")).toMatchObject({ code: 2, stderr: 'mmsim: unknown command "frobnicate" (see mmsim help)\n' });
    const down = await cli("--addr", "127.0.0.1:1", "--timeout", "2", "version");
    expect(down.code).toBe(1);
    expect(down.stderr).toMatch(/^UNAVAILABLE: /);
  });

  it("create-mm, mmap, write, read, fault, maps and smaps print like /proc", async () => {
    const mm = (await cli("create-mm", "p")).stdout.trim();
    const m = await cli("mmap", mm, "4M");
    expect(m.code, m.stderr).toBe(0);
    const addr = Number(m.stdout.trim());
    expect(m.stdout).toMatch(/^0x[0-9a-f]+\n$/);

    expect((await cli("write", mm, String(addr), "hello cli")).stdout).toBe(`wrote 9 bytes (9 B) at 0x${addr.toString(16)}\n`);
    const rd = await cli("read", mm, String(addr), "16");
    expect(rd.stdout).toBe(`${addr.toString(16).padStart(12, "0")}: 6865 6c6c 6f20 636c 6900 0000 0000 0000  hello cli.......\n`);
    expect((await cli("read", mm, String(addr), "9", "--format", "text")).stdout).toBe("hello cli\n");

    const f = await cli("fault", mm, String(addr + 2 ** 21), "--write");
    expect(f.stdout).toMatch(/^vm_fault=0: PMD pfn 0x[0-9a-f]+ writable huge\n$/);
    const segv = await cli("fault", mm, "0x1000");
    expect(segv).toMatchObject({ code: 0, stdout: "vm_fault=0 errno=14 signal=SIGSEGV (SEGV_MAPERR): not mapped\n" });

    const maps = await cli("maps", mm);
    const start = addr.toString(16);
    const end = (addr + 4 * 2 ** 20).toString(16);
    expect(maps.stdout).toBe(`${`${start}-${end} rw-p 00000000 00:00 0`.padEnd(73)}[anon]\n`);
    const smaps = (await cli("smaps", mm)).stdout.split("\n");
    expect(smaps[0]).toBe(maps.stdout.trimEnd());
    expect(smaps).toContain("Size:               4096 kB");
    expect(smaps).toContain("AnonHugePages:      4096 kB");
    expect(smaps).toContain("THPeligible:    1");
  });

  it("fork + COW, walk shows PUD/PMD/PTE leaves, folio, vmstat, meminfo, check", async () => {
    const mm = (await cli("create-mm")).stdout.trim();
    const addr = Number((await cli("mmap", mm, "2M", "--populate")).stdout.trim());
    await cli("mmap", mm, "8K", "--at", String(addr + 2 ** 21), "--noreplace");
    await cli("write", mm, String(addr + 2 ** 21), "x");
    const child = (await cli("fork", mm)).stdout.trim();
    await cli("write", child, String(addr), "child");
    expect((await cli("read", mm, String(addr), "5", "--format", "text")).stdout).toBe("\0\0\0\0\0\n");
    expect((await cli("read", child, String(addr), "5", "--format", "text")).stdout).toBe("child\n");

    const walk = (await cli("walk", mm, String(addr), String(addr + 2 ** 21 + 8192))).stdout.split("\n");
    expect(walk[0]).toMatch(/^mm \d+ 0x[0-9a-f]+-0x[0-9a-f]+: 2 run\(s\); tables in the mm: \d+ PUD, \d+ PMD, 1 PTE$/);
    expect(walk[1]).toMatch(/^LEVEL\s+RANGE\s+ENTRIES\s+SIZE\s+PFN\s+KIND\s+FLAGS$/);
    expect(walk[2]).toMatch(/^ {2}PMD\s+[0-9a-f]{12}-[0-9a-f]{12}\s+1\s+2 MiB\s+0x[0-9a-f]+\s+present\s+young,dirty$/);
    expect(walk[3]).toMatch(/^ {4}PTE\s+[0-9a-f]{12}-[0-9a-f]{12}\s+1\s+4 KiB\s+0x[0-9a-f]+\s+present\s+young,dirty$/);

    const pfn = /0x[0-9a-f]+(?=\s+present)/.exec(walk[2]!)![0];
    const folio = (await cli("folio", pfn)).stdout;
    expect(folio).toContain(`pfn:         ${pfn}`);
    expect(folio).toMatch(/folio: +head 0x[0-9a-f]+, order 9 \(2 MiB\)/);
    expect(folio).toMatch(/flags: +anon .*large/);

    expect((await cli("vmstat", "thp_fault")).stdout).toMatch(/^thp_fault_alloc \d+\nthp_fault_fallback \d+\n$/);
    const mem = (await cli("meminfo")).stdout;
    expect(mem).toMatch(/^MemTotal: +2097152 kB$/m);
    expect(mem).toMatch(/^Node 0, zone +DMA32( +\d+){11}$/m);
    expect(await cli("check")).toMatchObject({ code: 0, stdout: expect.stringMatching(/^OK: no violations/) });
    expect((await cli("--json", "check", mm)).stdout).toMatch(/^\{"foliosChecked":\d+,"mmsChecked":\d+\}\n$/);
  });

  it("devices: register-pfn-range, a huge_fault PFNMAP mmap, insert-pfn with PUD leaves; sessions; tunables; health", async () => {
    const mm = (await cli("create-mm")).stdout.trim();
    const bar = await cli("register-pfn-range", "bar0", "1G");
    expect(bar.stdout).toMatch(/^pfn range (\d+): pfn 0x([0-9a-f]+)-0x[0-9a-f]+ \(1 GiB\)\n$/);
    const [, id, pfnHex] = /^pfn range (\d+): pfn 0x([0-9a-f]+)/.exec(bar.stdout)!;
    const va = (await cli("mmap", mm, "1G", "--shared", "--pfnmap", "--pfn-range", id!, "--huge-fault")).stdout.trim();
    const ins = await cli("insert-pfn", mm, va, `0x${pfnHex}`, "1G");
    expect(ins.stdout.split("\n")[0]).toBe("vm_fault=VM_FAULT_NOPAGE errno=0: 1 PUD, 0 PMD, 0 PTE leaves inserted, 0 pages already populated");
    expect((await cli("walk", mm, va)).stdout).toMatch(/\nPUD\s+\S+\s+1\s+1 GiB\s+0x[0-9a-f]+\s+special\s+write,young,special\n/);
    expect((await cli("devices")).stdout).toMatch(/\n\s*\d+\s+bar0\s+0x[0-9a-f]+-0x[0-9a-f]+\s+1 GiB\s+\d+\s+1\n/);

    const sessions = (await cli("sessions")).stdout;
    expect(sessions).toMatch(/^ID\s+NAME\s+TENANT\s+KIND/);
    expect(sessions).toMatch(/\n\s*\d+\s+cli-test\s+default\s+persistent\s+0\s+\d+/);

    expect((await cli("tunables", "--thp", "madvise")).stdout).toMatch(/^transparent_hugepage\/enabled\s+madvise$/m);
    expect((await cli("tunables", "--thp", "always", "--memlock", "unlimited")).stdout).toMatch(/^RLIMIT_MEMLOCK\s+unlimited/m);
    expect(await cli("health")).toMatchObject({ code: 0, stdout: "SERVING\n" });
    expect(await cli("health", "mmsim.v1.Bogus")).toMatchObject({ code: 1 });
  });

  it("populate reports progress only on a terminal and keeps stdout clean", async () => {
    const mm = (await cli("create-mm")).stdout.trim();
    const addr = (await cli("mmap", mm, "512M", "--flags", "private,anonymous,noreserve")).stdout.trim();
    let stderr = "";
    let stdout = "";
    const code = await runCli(["populate", mm, addr, "512M", "--write"], {
      stdout: { write: (s: string | Uint8Array) => (stdout += String(s)) },
      stderr: { write: (s: string) => (stderr += s), isTTY: true, columns: 100 },
      env: { MMSIM_ADDR: t.address, MMSIM_SESSION: "cli-test" },
    });
    expect(code).toBe(0);
    expect(stdout).toMatch(/^populated 512 MiB at 0x[0-9a-f]+ in \d+\.\d\d s\n$/);
    expect(stderr).toContain("populate [");
    expect(stderr).toContain("100%");
    expect(stderr.endsWith("\r\x1b[K")).toBe(true);
    const sm = (await cli("smaps", mm)).stdout;
    expect(sm).toContain("Rss:              524288 kB");
  });

  it("help lists one command per RPC, grouped by service", async () => {
    const h = await cli("help");
    expect(h.code).toBe(0);
    for (const c of ["create-mm", "mmap", "munmap", "mprotect", "madvise", "fork", "exit", "fault", "read", "write", "insert-pfn", "register-pagemap", "register-pfn-range", "maps", "smaps", "walk", "folio", "vmstat", "meminfo", "check", "tunables", "sessions", "version"])
      expect(h.stdout, c).toMatch(new RegExp(`^  ${c} `, "m"));
    expect(await cli()).toMatchObject({ code: 2 });
    expect((await cli("help", "walk")).stdout).toMatch(/^usage: mmsim walk MM START \[END\] \[--max-runs N\]/);
  });
});
