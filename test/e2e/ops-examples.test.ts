/**
 * The example drivers run against a real daemon: examples/ts/driver.ts
 * in-process, examples/python/driver.py as a child process (stubs generated
 * from the protos with protoc on first run). The Python one is skipped, with
 * a message, only when /usr/bin/python3 cannot import grpc.
 */
import path from "node:path";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { runDriver } from "../../examples/ts/driver.js";
import { startDaemon, type TestDaemon } from "../helpers/daemon.js";
import { PYTHON, pythonHasGrpc, ROOT, run } from "../helpers/spawn.js";

const hasGrpc = await pythonHasGrpc();
if (!hasGrpc) console.warn("ops-examples: Python driver SKIPPED: /usr/bin/python3 cannot import grpc (apt-get install python3-grpcio python3-protobuf protobuf-compiler protobuf-compiler-grpc)");

/** The lines every driver prints, whatever its language. */
const SCENARIO = [
  /^connected to mmsimd \d+\.\d+\.\d+ \(Linux 6\.18 model, mmsim\.v1\)$/,
  /^session \d+ attached$/,
  /^mm \d+: 4 MiB of anonymous memory at 0x[0-9a-f]+$/,
  /^wrote and read back 'hello from (python|typescript)'$/,
  /^write fault at 0x[0-9a-f]+: PMD leaf, pfn 0x[0-9a-f]+, thp=(True|true)$/,
  /^fork: child mm \d+; after the child's write \(COW\) parent reads 'hello from (python|typescript)', child reads 'hello from (the )?child!'$/,
  /^BAR pfn 0x[0-9a-f]+\+1024 mapped at 0x[0-9a-f]+: 2 PMD leaves, 0 PTE leaves$/,
  /^munmap\(0x[0-9a-f]+\) failed as the kernel would: EINVAL \(EINVAL: addr 0x[0-9a-f]+ is not page aligned\)$/,
  /^pinned 512 pages long-term at 0x[0-9a-f]+ \(handle \d+\): pfn 0x[0-9a-f]+\+\d+(, pfn 0x[0-9a-f]+\+\d+)*$/,
  /^unpinned 512 pages; nr_foll_pin_acquired (\d+) == nr_foll_pin_released \1$/,
  /^mirrored 0x[0-9a-f]+\+2 MiB \(notifier \d+\): hmm_range_fault 1 run\(s\): pfn 0x[0-9a-f]+\+512 order 9$/,
  /^munmap invalidated the mirror: UNMAP 0x[0-9a-f]+-0x[0-9a-f]+ seq \d+, acknowledged; read_retry=(True|true)$/,
  /^maps:$/,
  /^ {2}[0-9a-f]+-[0-9a-f]+ rw-s \[pfnmap\]$/,
  /^ {2}[0-9a-f]+-[0-9a-f]+ rw-p \[anon\]$/,
  /^ {2}page table: 2 PMD SPECIAL entries at 0x[0-9a-f]+ -> pfn 0x[0-9a-f]+$/,
  /^vmstat: pgfault \d+, thp_fault_alloc \d+, cow \d+$/,
  /^invariants: OK \(\d+ folios, \d+ mms\)$/,
  /^session closed: stream ended OK after (.*, )?SESSION_CLOSING$/,
];

function expectScenario(lines: string[]): void {
  expect(lines.length, lines.join("\n")).toBe(SCENARIO.length);
  SCENARIO.forEach((re, i) => expect(lines[i], `line ${i + 1}`).toMatch(re));
}

describe("example drivers", () => {
  let t: TestDaemon;
  beforeAll(async () => {
    t = await startDaemon();
  });
  afterAll(async () => {
    await t.checkInvariants();
    await t.stop();
  });

  it("TypeScript driver (examples/ts/driver.ts)", async () => {
    const lines: string[] = [];
    await runDriver(t.address, (l) => lines.push(l));
    expectScenario(lines);
    // its session ended and released what it created
    expect((await t.clients.session.listSessions({})).sessions.filter((s) => s.name === "ts-driver")).toEqual([]);
  });

  it.skipIf(!hasGrpc)("Python driver (examples/python/driver.py)", async () => {
    const r = await run(PYTHON, [path.join(ROOT, "examples/python/driver.py"), "--addr", t.address], { timeoutMs: 60_000 });
    expect(r.stderr).toBe("");
    expect(r.code).toBe(0);
    const lines = r.stdout.trimEnd().split("\n");
    expect(lines.pop()).toBe("driver finished OK");
    expectScenario(lines);
    expect((await t.clients.session.listSessions({})).sessions.filter((s) => s.name === "python-driver")).toEqual([]);
  });
});
