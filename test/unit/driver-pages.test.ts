/**
 * Driver page allocation and vm_insert_page (src/mm/driver-pages.ts, spec
 * 4.2): refcounts, mapcounts, the errors, and the session's allocation
 * references. Invariants are checked after every test (gup-helpers.ts).
 */
import { describe, expect, it } from "vitest";
import { MemoryType, PAGE_SIZE, PROT_READ } from "../../src/mm/constants.js";
import { allocDevicePages, driverPages, freeDevicePages, releaseSessionDevicePages, vmInsertPage } from "../../src/mm/driver-pages.js";
import { MmError } from "../../src/mm/errors.js";
import { doMunmap } from "../../src/mm/mmap.js";
import { gup, mmapAnon, mmapDevice, newKernel, RW } from "./gup-helpers.js";

const MIXED = { kind: "mixedmap" as const, pfnRangeId: 0, basePfn: -1, hugeFault: false };
const PFNMAP = { kind: "pfnmap" as const, pfnRangeId: 0, basePfn: -1, hugeFault: false };

function kindOf(f: () => unknown): string {
  try {
    f();
  } catch (e) {
    return e instanceof MmError ? e.kind : "other";
  }
  return "none";
}

describe("AllocDevicePages / FreeDevicePages", () => {
  it("allocates with refcount 1 held by the session; all or nothing; frees only what the session holds", () => {
    const { k } = newKernel();
    const pm = k.phys.registerPagemap("generic", MemoryType.GENERIC, 4, 0);
    expect(kindOf(() => allocDevicePages(k, 1, pm, 5))).toBe("exhausted");
    expect(pm.allocated).toBe(0);
    const pfns = allocDevicePages(k, 1, pm, 3);
    expect(pfns.map((p) => k.phys.refcount(p))).toEqual([1, 1, 1]);
    expect(driverPages(k).sessionPages(1)).toEqual([...pfns].sort((a, b) => a - b));
    expect(kindOf(() => freeDevicePages(k, 2, [pfns[0]!]))).toBe("precondition");
    expect(kindOf(() => freeDevicePages(k, 1, [pfns[0]!, pfns[0]!]))).toBe("precondition");
    expect(freeDevicePages(k, 1, [pfns[0]!])).toBe(1);
    expect(pm.allocated).toBe(2);
    expect(releaseSessionDevicePages(k, 1)).toBe(2);
    expect(pm.allocated).toBe(0);
  });
});

describe("vm_insert_page", () => {
  it("normal PTE: refcount +1, mapcount +1; the session's allocation reference is handed over; munmap frees the page", () => {
    const { k, mm } = newKernel();
    const pm = k.phys.registerPagemap("p2p", MemoryType.PCI_P2PDMA, 4, 0);
    const [pfn] = allocDevicePages(k, 1, pm, 1);
    const a = mmapDevice(k, mm, 2 * PAGE_SIZE, MIXED);
    const r = vmInsertPage(k, mm, a, pfn!, 1);
    expect(r).toEqual({ ret: 0, allocationTransferred: true });
    expect([k.phys.refcount(pfn!), k.phys.mapcount(pfn!)]).toEqual([1, 1]);
    expect(driverPages(k).sessionPages(1)).toEqual([]);
    expect(vmInsertPage(k, mm, a, pfn!, 1).ret).toBe(-16); // EBUSY: populated
    k.runOp(() => doMunmap(k, mm, a, 2 * PAGE_SIZE));
    expect(pm.allocated).toBe(0);
  });

  it("without a session reference: the mapping takes its own (refcount 2)", () => {
    const { k, mm } = newKernel();
    const pm = k.phys.registerPagemap("coherent", MemoryType.DEVICE_COHERENT, 4, 7);
    const [pfn] = allocDevicePages(k, 1, pm, 1);
    const a = mmapDevice(k, mm, PAGE_SIZE, MIXED);
    expect(vmInsertPage(k, mm, a, pfn!, 2)).toEqual({ ret: 0, allocationTransferred: false });
    expect(k.phys.refcount(pfn!)).toBe(2);
    const g = gup(k, mm, "pin_user_pages", a, 1);
    expect([g.ret, k.phys.refcount(pfn!)]).toEqual([1, 2 + 1024]);
    k.pins.releaseHandle(1, g.handle);
    k.runOp(() => doMunmap(k, mm, a, PAGE_SIZE));
    releaseSessionDevicePages(k, 1);
    expect(pm.allocated).toBe(0);
  });

  it("errors: -EFAULT outside a VMA, -EINVAL for anon, free and shared-writable zero pages; PFNMAP is a kernel bug", () => {
    const { k, mm } = newKernel();
    const pm = k.phys.registerPagemap("generic", MemoryType.GENERIC, 4, 0);
    const [pfn] = allocDevicePages(k, 1, pm, 1);
    const a = mmapDevice(k, mm, 4 * PAGE_SIZE, MIXED);
    expect(vmInsertPage(k, mm, 0x1000, pfn!).ret).toBe(-14);
    const anon = mmapAnon(k, mm, PAGE_SIZE, { populate: true });
    const anonPfn = gup(k, mm, "get_user_pages", anon, 1, 0, { output: "pages" });
    expect(vmInsertPage(k, mm, a, anonPfn.pages![0]!).ret).toBe(-22);
    k.pins.releaseHandle(1, anonPfn.handle);
    expect(vmInsertPage(k, mm, a, pm.startPfn + 3).ret).toBe(-22); // refcount 0: free
    expect(vmInsertPage(k, mm, a, k.phys.zeroPfn).ret).toBe(-22); // shared writable mapping
    const ro = mmapDevice(k, mm, PAGE_SIZE, MIXED, PROT_READ);
    expect(vmInsertPage(k, mm, ro, k.phys.zeroPfn).ret).toBe(-22); // MAP_SHARED keeps VM_MAYWRITE
    const pfnmap = mmapDevice(k, mm, PAGE_SIZE, PFNMAP, RW);
    expect(kindOf(() => vmInsertPage(k, mm, pfnmap, pfn!))).toBe("kernel-bug");
    expect(kindOf(() => vmInsertPage(k, mm, anon, pfn!))).toBe("kernel-bug");
    releaseSessionDevicePages(k, 1);
  });
});
