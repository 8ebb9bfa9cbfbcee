import { describe, expect, it } from "vitest";
import { MmLocks } from "../../../src/server/mm-lock.js";

const tick = () => new Promise((r) => setImmediate(r));

describe("MmLocks", () => {
  it("lets readers share and makes a writer wait for them", async () => {
    const l = new MmLocks();
    const r1 = await l.acquire([1], "read");
    const r2 = await l.acquire([1], "read");
    expect(l.state(1)).toEqual({ readers: 2, writer: false, waiting: 0 });
    let wrote = false;
    const w = l.acquire([1], "write").then((rel) => {
      wrote = true;
      return rel;
    });
    await tick();
    expect(wrote).toBe(false);
    r1();
    await tick();
    expect(wrote).toBe(false);
    r2();
    (await w)();
    expect(wrote).toBe(true);
    expect(l.state(1)).toEqual({ readers: 0, writer: false, waiting: 0 });
  });

  it("is FIFO: a waiting writer blocks readers that arrive after it", async () => {
    const l = new MmLocks();
    const order: string[] = [];
    const r1 = await l.acquire([7], "read");
    const w = l.acquire([7], "write").then((rel) => {
      order.push("writer");
      return rel;
    });
    const r2 = l.acquire([7], "read").then((rel) => {
      order.push("late reader");
      return rel;
    });
    await tick();
    expect(order).toEqual([]);
    r1();
    const wrel = await w;
    await tick();
    expect(order).toEqual(["writer"]);
    wrel();
    (await r2)();
    expect(order).toEqual(["writer", "late reader"]);
  });

  it("grants consecutive queued readers together", async () => {
    const l = new MmLocks();
    const w = await l.acquire([3], "write");
    const a = l.acquire([3], "read");
    const b = l.acquire([3], "read");
    w();
    const [ra, rb] = await Promise.all([a, b]);
    expect(l.state(3).readers).toBe(2);
    ra();
    rb();
  });

  it("locks several mms in ascending order, so crossing requests do not deadlock", async () => {
    const l = new MmLocks();
    const [x, y] = await Promise.all([l.acquire([2, 1], "write"), l.acquire([1, 2], "write")].map((p, i) => p.then((rel) => {
      // hold briefly, then release
      return new Promise<number>((res) => setTimeout(() => { rel(); res(i); }, 5));
    })));
    expect([x, y].sort()).toEqual([0, 1]);
    expect(l.state(1)).toEqual({ readers: 0, writer: false, waiting: 0 });
  });

  it("release is idempotent", async () => {
    const l = new MmLocks();
    const r = await l.acquire([1], "read");
    r();
    r();
    expect(l.state(1).readers).toBe(0);
    const w = await l.acquire([1], "write");
    expect(l.state(1).writer).toBe(true);
    w();
  });
});
