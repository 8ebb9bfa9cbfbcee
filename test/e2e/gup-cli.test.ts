/**
 * The `mmsim` CLI's GupService commands (pin, unpin, pins) in process
 * against a real daemon.
 */
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { runCli } from "../../src/cli/cli.js";
import { startDaemon, type TestDaemon } from "../helpers/daemon.js";

describe("mmsim pin / unpin / pins", () => {
  let t: TestDaemon;
  const cli = async (...args: string[]) => {
    let stdout = "";
    let stderr = "";
    const code = await runCli(args, {
      stdout: { write: (s: string | Uint8Array) => (stdout += typeof s === "string" ? s : Buffer.from(s).toString("latin1")) },
      stderr: { write: (s: string) => (stderr += s), isTTY: false },
      env: { MMSIM_ADDR: t.address, MMSIM_SESSION: "gup-cli" },
    });
    return { code, stdout, stderr };
  };

  beforeAll(async () => {
    t = await startDaemon({ ramBytes: 2 ** 31 });
  });
  afterAll(async () => {
    await t.stop();
  });

  it("pins a populated THP long-term, lists it, unpins part then all", async () => {
    const mm = (await cli("create-mm", "p")).stdout.trim();
    const addr = Number((await cli("mmap", mm, "4M")).stdout.trim());
    const a = Math.ceil(addr / 2 ** 21) * 2 ** 21;
    expect((await cli("populate", mm, String(a), "2M", "--write")).code).toBe(0);
    const p = await cli("pin", mm, String(a), "2M", "--write", "--longterm", "--folios");
    expect(p.code, p.stderr).toBe(0);
    const m = /^ret=512 handle=(\d+) ref_updates=1\n {2}pfn 0x[0-9a-f]+-0x[0-9a-f]+ 512 pages \(2 MiB\)\n {2}folio 0x[0-9a-f]+: pfn 0x[0-9a-f]+ \+512\n$/.exec(p.stdout);
    expect(m, p.stdout).not.toBeNull();
    const handle = m![1]!;
    const l = await cli("pins", "--runs");
    expect(l.stdout).toMatch(/^nr_foll_pin_acquired 512, nr_foll_pin_released 0, outstanding 512\n/);
    expect(l.stdout).toMatch(new RegExp(`^ +${handle} +\\d+ +${mm} +512 +512 +512 +0$`, "m"));
    expect(l.stdout).toMatch(/pin longterm\n$/);
    expect((await cli("unpin", handle, "--first", "0", "--count", "12")).stdout).toBe("released 12 pages (1 folio updates, 0 dirtied)\n");
    expect((await cli("unpin", handle)).stdout).toBe("released 500 pages (1 folio updates, 0 dirtied)\n");
    const again = await cli("unpin", handle);
    expect(again.code).toBe(1);
    expect(again.stderr).toMatch(/^EINVAL: session \d+ does not hold handle/);
    expect(JSON.parse((await cli("pins", "--json")).stdout).stats).toEqual({ nrFollPinAcquired: 512, nrFollPinReleased: 512 });
    const bad = await cli("pin", mm, "0x1000", "1");
    expect(bad.stdout).toMatch(/^ret=-EFAULT handle=0/);
  });
});
