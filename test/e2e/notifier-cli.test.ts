/**
 * The `mmsim` CLI's NotifierService and HmmService commands against a real
 * daemon: in process for the one-shot commands, as a child process for
 * `watch` (invalidations of another client's munmap, --count, Ctrl-C).
 */
import { spawn } from "node:child_process";
import path from "node:path";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { runCli } from "../../src/cli/cli.js";
import { startDaemon, type TestDaemon } from "../helpers/daemon.js";
import { type ClientMirror, subscribe } from "../helpers/hmm.js";
import { ROOT } from "../helpers/spawn.js";

const PAGE = 4096;
const MB2 = 2 ** 21;
const MAP_PRIVATE_ANON = 0x22;
const RW = 3;

/** The CLI from source as a child process whose stdout can be read while it runs. */
function watchProcess(args: string[], env: NodeJS.ProcessEnv) {
  const child = spawn(process.execPath, ["--import", "tsx", path.join(ROOT, "src/cli/main.ts"), ...args], {
    cwd: ROOT,
    env: { ...process.env, ...env },
    stdio: ["ignore", "pipe", "pipe"],
  });
  let stdout = "";
  let stderr = "";
  const waiters: { re: RegExp; resolve: () => void }[] = [];
  child.stdout.setEncoding("utf8").on("data", (d: string) => {
    stdout += d;
    for (let i = waiters.length - 1; i >= 0; i--)
      if (waiters[i]!.re.test(stdout)) {
        waiters[i]!.resolve();
        waiters.splice(i, 1);
      }
  });
  child.stderr.setEncoding("utf8").on("data", (d: string) => (stderr += d));
  const timer = setTimeout(() => child.kill("SIGKILL"), 30_000);
  const exited = new Promise<{ code: number | null; signal: NodeJS.Signals | null; stdout: string; stderr: string }>((resolve) =>
    child.on("close", (code, signal) => {
      clearTimeout(timer);
      resolve({ code, signal, stdout, stderr });
    }),
  );
  return {
    child,
    exited,
    /** resolves once stdout matches `re` */
    until: (re: RegExp) => (re.test(stdout) ? Promise.resolve() : new Promise<void>((resolve) => waiters.push({ re, resolve }))),
  };
}

describe("mmsim notifier and hmm commands", () => {
  let t: TestDaemon;
  const SESSION = "notifier-cli";
  const cli = async (...args: string[]) => {
    let stdout = "";
    let stderr = "";
    const code = await runCli(args, {
      stdout: { write: (s: string | Uint8Array) => (stdout += typeof s === "string" ? s : Buffer.from(s).toString("latin1")) },
      stderr: { write: (s: string) => (stderr += s), isTTY: false },
      env: { MMSIM_ADDR: t.address, MMSIM_SESSION: SESSION },
    });
    return { code, stdout, stderr };
  };

  beforeAll(async () => {
    t = await startDaemon({ ramBytes: 2 ** 30 });
  });
  afterAll(async () => {
    await t.stop();
  });

  it("notifier-insert, notifiers, read-begin, hmm-fault, read-retry, make-exclusive, notifier-remove, reap", async () => {
    const mm = (await cli("create-mm", "hmm")).stdout.trim();
    const addr = Number((await cli("mmap", mm, "8M")).stdout.trim());
    const a = Math.ceil(addr / MB2) * MB2;
    expect((await cli("populate", mm, String(a), "2M", "--write")).code).toBe(0);
    const other = await t.newSession("mirror-owner");
    const mirror: ClientMirror = await subscribe(t, other, "cli-test");
    try {
      const ins = await cli("notifier-insert", String(mirror.mirrorId), mm, `0x${a.toString(16)}`, "4M");
      expect(ins.code, ins.stderr).toBe(0);
      const m = /^notifier (\d+) seq (\d+)\n$/.exec(ins.stdout);
      expect(m, ins.stdout).not.toBeNull();
      const nid = m![1]!;

      const list = await cli("notifiers", mm);
      expect(list.stdout.split("\n")[0]).toMatch(/^mm seq \d+, 0 invalidation\(s\) in flight$/);
      expect(list.stdout).toMatch(new RegExp(`^ +${nid} +0x${a.toString(16)} +0x${(a + 4 * 2 ** 20 - 1).toString(16)} +\\d+ +mirror ${mirror.mirrorId} +\\d+ +no$`, "m"));

      const rb = await cli("read-begin", nid);
      const seq = /^seq (\d+)\n$/.exec(rb.stdout)![1]!;

      const f = await cli("hmm-fault", nid, `0x${a.toString(16)}`, "4M", "--write");
      expect(f.code, f.stderr).toBe(0);
      const lines = f.stdout.trimEnd().split("\n");
      expect(lines[0]).toMatch(new RegExp(`^errno=0 last=0x${(a + 4 * 2 ** 20).toString(16)} walks=\\d+ faults=\\d+$`));
      expect(lines[1]).toMatch(/^START +END +PAGES +SIZE +PFN +FLAGS +ORDER$/);
      // the populated THP and the one faulted in next to it: PMD leaves of consecutive PFNs, one run
      expect(lines[2]).toMatch(new RegExp(`^0x${a.toString(16)} +0x${(a + 2 * MB2).toString(16)} +1024 +4 MiB +0x[0-9a-f]+ +valid\\|write +9$`));
      expect(lines).toHaveLength(3);

      // two pages before the VMA and two in the THP, page by page
      const snap = await cli("hmm-fault", nid, `0x${(a - 2 * PAGE).toString(16)}`, "16K", "--snapshot", "--per-page");
      expect(snap.code, snap.stderr).toBe(0);
      const sl = snap.stdout.trimEnd().split("\n");
      expect(sl[0]).toMatch(/^errno=0 last=0x[0-9a-f]+ walks=1 faults=0$/);
      expect(sl[2]).toMatch(new RegExp(`^0x${(a - 2 * PAGE).toString(16)} +0x${a.toString(16)} +2 +8 KiB +- +error +0$`));
      expect(sl[3]).toMatch(new RegExp(`^0x${a.toString(16)} +0x${(a + 2 * PAGE).toString(16)} +2 +8 KiB +0x[0-9a-f]+ +valid\\|write +9$`));
      const sj = JSON.parse((await cli("hmm-fault", nid, `0x${a.toString(16)}`, "8K", "--snapshot", "--per-page", "--json")).stdout);
      expect(sj).toMatchObject({ last: a + 2 * PAGE, walks: 1 });
      const entries = Buffer.from(sj.hmmPfns, "base64");
      expect(entries).toHaveLength(16);
      // entry 1 = entry 0 + 1 page, same high word (VALID | WRITE | order 9)
      expect(entries.readUInt32LE(12)).toBe(entries.readUInt32LE(4));
      expect(entries.readUInt32LE(4) >>> 0).toBe((0x8000_0000 | 0x4000_0000 | (9 << 21)) >>> 0);
      expect(entries.readUInt32LE(8)).toBe(entries.readUInt32LE(0) + 1);

      expect((await cli("read-retry", nid, seq)).stdout).toBe(`valid (notifier seq ${seq})\n`);
      await t.withSession(other).addressSpace.madvise({ mmId: Number(mm), addr: a, length: PAGE, advice: 4 });
      expect((await cli("read-retry", nid, seq)).stdout).toMatch(/^retry \(notifier seq \d+\)\n$/);

      const ex = await cli("make-exclusive", mm, `0x${(a + MB2).toString(16)}`, "--owner", "0x42");
      expect(ex.code, ex.stderr).toBe(0);
      expect(ex.stdout).toMatch(/^exclusive: pfn 0x[0-9a-f]+\n$/);
      const exInv = mirror.invalidations.at(-1)!;
      expect(exInv).toMatchObject({ owner: 0x42, start: a + MB2 });

      const gone = await cli("notifier-remove", nid);
      expect(gone).toEqual({ code: 0, stdout: "removed\n", stderr: "" });
      const again = await cli("notifier-remove", nid);
      expect(again.code).toBe(1);
      expect(again.stderr).toBe(`ENOENT: interval notifier ${nid} not found\n`);

      const reap = await cli("reap", mm);
      expect(reap.code).toBe(0);
      expect(reap.stdout).toMatch(new RegExp(`^0x${addr.toString(16)}-0x${(addr + 8 * 2 ** 20).toString(16)} reaped\n$`));
    } finally {
      mirror.end();
      await mirror.status;
    }
  });

  it("dmirror device commands: create, open, write, read, migrate, snapshot, exclusive, release, close, destroy", async () => {
    const mm = (await cli("create-mm", "dm")).stdout.trim();
    const addr = Number((await cli("mmap", mm, "64K")).stdout.trim());
    const dev = await cli("dmirror-create", "hmm0");
    expect(dev.code, dev.stderr).toBe(0);
    const devId = /^device (\d+) hmm0 owner 0x[0-9a-f]+\n$/.exec(dev.stdout)![1]!;
    const open = await cli("dmirror-open", devId, mm);
    const [, mid, nid] = /^mirror (\d+) notifier (\d+)\n$/.exec(open.stdout)!;
    expect((await cli("dmirror-write", mid!, String(addr), "device says hi")).stdout).toBe("cpages=1 faults=1\n");
    const rd = await cli("dmirror-read", mid!, String(addr), "1", "--dump");
    expect(rd.stdout.split("\n")[0]).toBe("cpages=1 faults=0");
    expect(rd.stdout).toContain("device says hi");
    expect((await cli("read", mm, String(addr), "14", "--format", "raw")).stdout).toBe("device says hi");
    expect((await cli("dmirror-migrate", mid!, String(addr), "4")).stdout).toBe("cpages=4\n");
    const snap = await cli("dmirror-snapshot", mid!, String(addr), "16K");
    expect(snap.stdout.split("\n")[0]).toBe("cpages=4");
    expect(snap.stdout).toMatch(new RegExp(`^0x${addr.toString(16)} +0x${(addr + 4 * PAGE).toString(16)} +4 +0x22 +private-local\\|write$`, "m"));
    expect((await cli("read", mm, String(addr), "14", "--format", "raw")).stdout).toBe("device says hi"); // migrated back on CPU access
    expect((await cli("dmirror-migrate", mid!, String(addr), "4", "--to-system")).code).toBe(0);
    expect((await cli("dmirror-exclusive", mid!, String(addr), "2")).stdout).toBe("cpages=2\n");
    const chk = await cli("dmirror-exclusive", mid!, String(addr), "2", "--check");
    expect(chk.code).toBe(1);
    expect(chk.stderr).toMatch(/^EPERM: /);
    expect((await cli("dmirror-info", mid!)).stdout).toMatch(new RegExp(`^mirror ${mid} device ${devId} mm ${mm} notifier ${nid}: \\d+ entries`));
    expect((await cli("dmirror-devices")).stdout).toMatch(new RegExp(`^ +${devId} +hmm0 +private +0x[0-9a-f]+ +\\d+ +\\d+ +\\d+ +\\d+$`, "m"));
    expect((await cli("dmirror-release", mid!)).code).toBe(0);
    expect((await cli("dmirror-close", mid!)).stdout).toBe("closed\n");
    expect((await cli("dmirror-info", mid!)).code).toBe(1);
    expect((await cli("dmirror-destroy", devId)).stdout).toMatch(/^destroyed, \d+ pages evicted\n$/);
  });

  it("usage errors exit 2, gRPC errors 1", async () => {
    const u = await cli("hmm-fault", "1");
    expect(u.code).toBe(2);
    expect(u.stderr).toMatch(/^mmsim: hmm-fault: missing ADDR\n/);
    const w = await cli("hmm-fault", "1", "0", "4K", "--write", "--snapshot");
    expect(w.code).toBe(2);
    const n = await cli("hmm-fault", "777", "0x1000", "4K");
    expect(n.code).toBe(1);
    expect(n.stderr).toBe("ENOENT: interval notifier 777 not found\n");
    expect((await cli("notifier-insert", "999", "1", "0", "4K")).stderr).toBe("ENOENT: mirror 999 not found\n");
    expect(await cli("trace-status")).toEqual({ code: 0, stdout: "not recording\n", stderr: "" });
    // the mirror opens, inserting its notifier fails: the error, exit 1, the stream ends
    const wt = await cli("watch", "4242", "--count", "1");
    expect({ code: wt.code, stdout: wt.stdout }).toEqual({ code: 1, stdout: "" });
    expect(wt.stderr).toMatch(/^E[A-Z]+: .*4242/);
  });

  it("watch --count 2 prints the invalidations of another client's munmaps, acknowledges them and exits 0", async () => {
    const s = await t.newSession("munmapper");
    const c = t.withSession(s);
    const mm = (await c.addressSpace.createMm({ name: "watched" })).mmId;
    const base = (await c.addressSpace.mmap({ mmId: mm, addr: 0, length: 16 * PAGE, prot: RW, flags: MAP_PRIVATE_ANON, fileId: 0, offset: 0 })).addr;
    await c.memory.writeMemory({ mmId: mm, addr: base, data: Buffer.alloc(16 * PAGE, 1) });
    const w = watchProcess(["watch", String(mm), `0x${base.toString(16)}`, "64K", "--count", "2"], { MMSIM_ADDR: t.address, MMSIM_SESSION: SESSION });
    await w.until(/^watching mm /m);
    // each munmap completes only once the watcher acknowledged its invalidation
    await c.addressSpace.munmap({ mmId: mm, addr: base, length: 2 * PAGE });
    await c.addressSpace.munmap({ mmId: mm, addr: base + 8 * PAGE, length: PAGE });
    const r = await w.exited;
    expect(r.stderr).toBe("");
    expect(r.code).toBe(0);
    const lines = r.stdout.trimEnd().split("\n");
    expect(lines[0]).toMatch(new RegExp(`^watching mm ${mm} \\[0x${base.toString(16)}, 0x${(base + 16 * PAGE).toString(16)}\\) mirror \\d+ notifier (\\d+)$`));
    const nid = /notifier (\d+)$/.exec(lines[0]!)![1];
    expect(lines[1]).toMatch(new RegExp(`^unmap mm ${mm} \\[0x${base.toString(16)}, 0x${(base + 2 * PAGE).toString(16)}\\) seq \\d+ notifiers ${nid} blockable id 1$`));
    expect(lines[2]).toMatch(new RegExp(`^unmap mm ${mm} \\[0x${(base + 8 * PAGE).toString(16)}, 0x${(base + 9 * PAGE).toString(16)}\\) seq \\d+ notifiers ${nid} blockable id 2$`));
    expect(lines[3]).toBe("2 invalidation(s)");
    expect(lines).toHaveLength(4);
    // the mirror and its notifier went with the stream
    expect((await t.clients.session.listSessions({})).sessions.find((x) => x.name === SESSION)).toMatchObject({ mirrorCount: 0, notifierCount: 0 });
  }, 40_000);

  it("watch --json prints one Invalidation per line; Ctrl-C ends it with status 0", async () => {
    const s = await t.newSession("exiter");
    const c = t.withSession(s);
    const mm = (await c.addressSpace.createMm({ name: "json" })).mmId;
    await c.addressSpace.mmap({ mmId: mm, addr: 0, length: 4 * PAGE, prot: RW, flags: MAP_PRIVATE_ANON, fileId: 0, offset: 0 });
    const w = watchProcess(["--json", "watch", String(mm)], { MMSIM_ADDR: t.address, MMSIM_SESSION: SESSION });
    await w.until(/"watching"/);
    await c.addressSpace.exitMm({ mmId: mm });
    await w.until(/MMU_NOTIFY_EVENT_UNMAP/);
    w.child.kill("SIGINT");
    const r = await w.exited;
    expect({ code: r.code, stderr: r.stderr }).toEqual({ code: 0, stderr: "" });
    const objs = r.stdout.trimEnd().split("\n").map((l) => JSON.parse(l));
    expect(objs[0].watching).toMatchObject({ mmId: mm, start: 0 });
    // exit: RELEASE then UNMAP, both over the whole address space
    const invs = objs.slice(1).map((o) => o.invalidations.invalidations[0]);
    expect(invs.map((i) => [i.event, i.mmId, i.wholeAddressSpace])).toEqual([
      ["MMU_NOTIFY_EVENT_RELEASE", mm, true],
      ["MMU_NOTIFY_EVENT_UNMAP", mm, true],
    ]);
  }, 40_000);
});
