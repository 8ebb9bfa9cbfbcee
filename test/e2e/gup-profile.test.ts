/**
 * The late-2019 pin accounting profile over gRPC: pins of a compound page
 * add refs * 1024 to the head refcount, so a handful of pins of a 1 GiB page
 * overflow the 31-bit refcount. The overflow is reported (EOVERFLOW) and
 * changes nothing; today's profile pins the same page any number of times.
 */
import { status } from "@grpc/grpc-js";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { PinAccounting } from "../../src/gen/mmsim/v1/system.js";
import { startDaemon, type Clients, type TestDaemon } from "../helpers/daemon.js";
import { expectErrno } from "../helpers/errors.js";
import { GiB, MAP_ANONYMOUS, MAP_PRIVATE, OUT, RW, V, mmap, pfnAt, populate } from "../helpers/gup.js";

const MAP_HUGETLB = 0x40000;
const MAP_HUGE_1GB = 30 << 26;
const NR = GiB / 4096;

let t: TestDaemon;
let c: Clients;

beforeAll(async () => {
  t = await startDaemon({ ramBytes: 4 * GiB });
  c = t.withSession(await t.newSession("profile"));
});
afterAll(async () => {
  await t.stop();
});

describe("pin accounting profiles", () => {
  it("bias-2019: the eighth pin of a 1 GiB page would overflow the refcount and is refused with nothing changed", async () => {
    const mm = (await c.addressSpace.createMm({ name: "p" })).mmId;
    const a = await mmap(c, mm, GiB, RW, MAP_PRIVATE | MAP_ANONYMOUS | MAP_HUGETLB | MAP_HUGE_1GB);
    await populate(c, mm, a, GiB);
    const pfn = await pfnAt(c, mm, a);
    const set = await c.system.setTunables({ pinAccounting: PinAccounting.PIN_ACCOUNTING_BIAS_2019 });
    expect(set.tunables!.pinAccounting).toBe(PinAccounting.PIN_ACCOUNTING_BIAS_2019);

    const handles: number[] = [];
    const pin = () => c.gup.pinUserPages({ variant: V.GUP_VARIANT_PIN_USER_PAGES, mmId: mm, start: a, nrPages: NR, gupFlags: 0, output: OUT.GUP_OUTPUT_RANGES, wantFolioRuns: false });
    // 1 + 7 * 2^28 fits in 31 bits; 1 + 8 * 2^28 does not.
    for (let i = 0; i < 7; i++) {
      const r = await pin();
      expect(r.ret).toBe(NR);
      handles.push(r.handle);
    }
    const f7 = await t.clients.inspect.getFolio({ pfn });
    expect(f7.refcount).toBe(1 + 7 * NR * 1024);
    expect(f7.pincount).toBe(0); // no _pincount in this scheme
    await expectErrno(pin(), "EOVERFLOW");
    expect((await t.clients.inspect.getFolio({ pfn })).refcount).toBe(f7.refcount);

    // The profile cannot change under outstanding pins.
    await expectErrno(c.system.setTunables({ pinAccounting: PinAccounting.PIN_ACCOUNTING_CURRENT }), "EBUSY", status.FAILED_PRECONDITION);

    for (const h of handles) await c.gup.unpinHandle({ handle: h, makeDirty: false });
    expect((await t.clients.inspect.getFolio({ pfn })).refcount).toBe(1);

    // Today's scheme: an exact _pincount, refcount +N per pin.
    await c.system.setTunables({ pinAccounting: PinAccounting.PIN_ACCOUNTING_CURRENT });
    const now: number[] = [];
    for (let i = 0; i < 8; i++) now.push((await pin()).handle);
    expect(await t.clients.inspect.getFolio({ pfn })).toMatchObject({ refcount: 1 + 8 * NR, pincount: 8 * NR, maybeDmaPinned: true });
    for (const h of now) await c.gup.unpinHandle({ handle: h, makeDirty: false });
    const stats = await c.gup.getPinStats({ sessionId: 0 });
    expect(stats.nrFollPinAcquired).toBe(stats.nrFollPinReleased);
    expect(stats.outstandingPins).toBe(0);
    await c.addressSpace.exitMm({ mmId: mm });
  });
});
