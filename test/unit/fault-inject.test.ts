/**
 * The fault injector's modes (times, interval, seeded probability, fail_nth)
 * and its effect at the allocation hooks: disabled it counts nothing and
 * installs no hook; injected failures take the kernel's error paths.
 */
import { describe, expect, it } from "vitest";
import { MemoryType, VM_FAULT_OOM } from "../../src/mm/constants.js";
import { FaultInjector, INJECT_POINTS, isInjectPoint } from "../../src/mm/fault-inject.js";
import { handleMmFault } from "../../src/mm/fault.js";
import { expectClean, mkKernel, mkMm, mmap } from "./helpers.js";

function hits(fi: FaultInjector, n: number): string {
  let s = "";
  for (let i = 0; i < n; i++) s += fi.fail("migrate") ? "x" : ".";
  return s;
}

describe("FaultInjector", () => {
  it("disabled: never fails, counts nothing, no hooks installed", () => {
    const k = mkKernel();
    expect(k.inject.enabled).toBe(false);
    expect(k.phys.allocFailHook).toBeNull();
    expect(k.pt.allocFailHook).toBeNull();
    expect(hits(k.inject, 5)).toBe(".....");
    expect(k.inject.points.get("migrate")!.hits).toBe(0);
  });

  it("times, interval, probability (seeded, reproducible), clear", () => {
    const k = mkKernel();
    const fi = k.inject;
    fi.configure("migrate", { kind: "times", remaining: 2 });
    expect(hits(fi, 5)).toBe("xx...");
    fi.configure("migrate", { kind: "interval", every: 3 });
    expect(hits(fi, 6)).toBe("x..x.."); // the point's hits 6..11: every third fails
    fi.configure("migrate", { kind: "probability", p: 0.5, seed: 42 });
    const a = hits(fi, 64);
    fi.configure("migrate", { kind: "probability", p: 0.5, seed: 42 });
    expect(hits(fi, 64)).toBe(a);
    expect(a.split("x").length - 1).toBeGreaterThan(16);
    expect(a.split("x").length - 1).toBeLessThan(48);
    fi.configure("migrate", { kind: "probability", p: 0, seed: 1 });
    expect(hits(fi, 16)).toBe(".".repeat(16));
    fi.clear(true);
    expect(fi.points.get("migrate")!.hits).toBe(0);
    expect(hits(fi, 3)).toBe("...");
    expect(fi.points.get("migrate")!.hits).toBe(3);
  });

  it("fail_nth counts hits over every point", () => {
    const k = mkKernel();
    const fi = k.inject;
    fi.failNth(3);
    expect([fi.fail("page_alloc"), fi.fail("migrate"), fi.fail("pgtable_alloc"), fi.fail("page_alloc")]).toEqual([false, false, true, false]);
    expect(fi.log).toEqual(["pgtable_alloc#1"]);
    expect(fi.totalInjected).toBe(1);
  });

  it("names", () => {
    expect(INJECT_POINTS).toContain("page_alloc");
    expect(isInjectPoint("devmem_alloc")).toBe(true);
    expect(isInjectPoint("nope")).toBe(false);
  });

  it("page_alloc and pgtable_alloc: a fault reports VM_FAULT_OOM and changes nothing", () => {
    const k = mkKernel({ tunables: { thpEnabled: "never" } });
    const mm = mkMm(k);
    const a = mmap(k, mm, 1 << 20);
    const free = k.phys.totalFreePages();
    k.inject.configure("pgtable_alloc", { kind: "times", remaining: 1 });
    expect(handleMmFault(k, mm, mm.findVma(a)!, a, 1) & VM_FAULT_OOM).toBeTruthy();
    k.inject.configure("page_alloc", { kind: "times", remaining: 1 });
    expect(handleMmFault(k, mm, mm.findVma(a)!, a, 1) & VM_FAULT_OOM).toBeTruthy();
    expect(k.inject.points.get("page_alloc")!.injected).toBe(1);
    expect(k.inject.points.get("pgtable_alloc")!.injected).toBe(1);
    expect(handleMmFault(k, mm, mm.findVma(a)!, a, 1)).toBe(0);
    expect(k.phys.totalFreePages()).toBe(free - 1);
    expectClean(k);
    k.inject.disable();
    expect(k.phys.allocFailHook).toBeNull();
  });

  it("devmem_alloc fails a driver's device page allocation", () => {
    const k = mkKernel();
    const pm = k.phys.registerPagemap("dev", MemoryType.DEVICE_PRIVATE, 16, 1);
    k.inject.configure("devmem_alloc", { kind: "interval", every: 2 });
    expect([k.phys.allocDevicePage(pm) >= 0, k.phys.allocDevicePage(pm) >= 0]).toEqual([true, false]);
    expect(pm.allocated).toBe(1);
  });
});
