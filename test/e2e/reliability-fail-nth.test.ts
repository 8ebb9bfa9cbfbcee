/**
 * A smaller fail_nth sweep over gRPC (test/unit/fail-nth.test.ts is the full
 * one on the model): mmap, populate, THP fault, fork, COW write, munmap, exit,
 * once counting hits (AdminService.ListFaultPoints), then per n on a fresh
 * daemon with FailNth(n). Every failed call carries an errno trailer of
 * ENOMEM/EAGAIN/EBUSY, invariants hold, and after exit the free page count
 * (state digest) is back to the baseline.
 */
import { Metadata, type ServiceError } from "@grpc/grpc-js";
import { describe, expect, it } from "vitest";
import { MADV_POPULATE_WRITE, MAP_ANONYMOUS, MAP_PRIVATE, PROT_READ, PROT_WRITE } from "../../src/mm/constants.js";
import { startDaemon, type TestDaemon } from "../helpers/daemon.js";

const OK_ERRNOS = new Set(["12", "11", "16"]);

async function scenario(td: TestDaemon, sid: number, problems: string[], where: string): Promise<void> {
  const c = td.withSession(sid);
  const call = async <T>(name: string, p: Promise<T>): Promise<T | undefined> => {
    try {
      return await p;
    } catch (e) {
      const err = e as ServiceError & { metadata?: Metadata };
      const errno = String(err.metadata?.get("mmsim-errno")[0] ?? "");
      if (!OK_ERRNOS.has(errno)) problems.push(`${where} ${name}: ${err.code} errno ${errno} ${err.details}`);
      return undefined;
    }
  };
  const mm = await call("createMm", c.addressSpace.createMm({ name: "p" }));
  if (mm === undefined) return;
  const ids = [mm.mmId];
  const m = await call("mmap", c.addressSpace.mmap({ mmId: mm.mmId, addr: 0, length: 4 << 20, prot: PROT_READ | PROT_WRITE, flags: MAP_PRIVATE | MAP_ANONYMOUS, fileId: 0, offset: 0 }));
  if (m !== undefined) {
    await call("populate", c.addressSpace.madvise({ mmId: mm.mmId, addr: m.addr, length: 64 << 10, advice: MADV_POPULATE_WRITE }));
    await call("thp", c.fault.handleMmFault({ mmId: mm.mmId, addr: m.addr + (2 << 20), access: 2, flags: 0 }));
    const ch = await call("fork", c.addressSpace.forkMm({ mmId: mm.mmId, name: "" }));
    if (ch !== undefined) ids.push(ch.childMmId);
    for (const id of ids) await call("cow", c.memory.writeMemory({ mmId: id, addr: m.addr, data: Buffer.from("x".repeat(9000)) }));
    await call("munmap", c.addressSpace.munmap({ mmId: mm.mmId, addr: m.addr + (2 << 20) + 8192, length: 8192 }));
  }
  const inv = await td.clients.inspect.checkInvariants({});
  for (const v of inv.violations) problems.push(`${where} invariant ${v.code}: ${v.message}`);
  await td.clients.admin.clearFaultInjection({ resetCounters: false });
  for (const id of ids.reverse()) await c.addressSpace.exitMm({ mmId: id });
}

describe("fail_nth over gRPC", () => {
  it("every n: errno answers, invariants, no leak after exit", async () => {
    const count = await startDaemon({ faultInjection: true, ramBytes: 512 * 2 ** 20 });
    let total = 0;
    try {
      const sid = await count.newSession();
      await count.clients.admin.clearFaultInjection({ resetCounters: true });
      await count.clients.admin.configureFaultPoint({ point: "", mode: 1, count: 0, probability: 0, seed: 0 }); // OFF: count only
      const problems: string[] = [];
      await scenario(count, sid, problems, "count");
      expect(problems).toEqual([]);
      total = Number((await count.clients.admin.listFaultPoints({})).totalHits);
    } finally {
      await count.stop();
    }
    expect(total).toBeGreaterThan(5);
    const problems: string[] = [];
    let injected = 0;
    const td = await startDaemon({ faultInjection: true, ramBytes: 512 * 2 ** 20 });
    try {
      const sid = await td.newSession();
      for (let n = 1; n <= total; n++) {
        const before = await td.clients.admin.getStateDigest({});
        await td.clients.admin.failNth({ nth: n });
        await scenario(td, sid, problems, `n=${n}`);
        injected += Number((await td.clients.admin.listFaultPoints({})).totalInjected) - injected;
        const after = await td.clients.admin.getStateDigest({});
        // The huge zero folio stays once allocated (as in the kernel).
        const zeroFolio = Number(before.freePages) - Number(after.freePages);
        if (after.mms !== before.mms || after.pageTables !== before.pageTables || (zeroFolio !== 0 && zeroFolio !== 512))
          problems.push(`n=${n}: leak: ${JSON.stringify({ before, after })}`);
      }
    } finally {
      await td.stop();
    }
    expect(problems).toEqual([]);
    expect(injected).toBe(total);
  }, 60_000);
});
