/**
 * The fail_nth sweep (tools/testing/selftests/iommu/iommufd_fail_nth.c) on the
 * model: a scenario touching every injection point runs once with counting
 * only, then once per n = 1..N on a fresh kernel with the n-th hit failing.
 * Every step must fail the kernel's way (its errno or VM_FAULT code), roll
 * back what the kernel rolls back, keep every invariant after every step, and
 * after tearing the scenario down (unpin, exit the mms, remove the devices)
 * leave the free page count at the baseline: nothing leaks.
 */
import { describe, expect, it } from "vitest";
import {
  FOLL_LONGTERM,
  FOLL_WRITE,
  MADV_POPULATE_WRITE,
  MAP_SHARED,
  MemoryType,
  VM_FAULT_LOCKED,
  VM_FAULT_MAJOR,
  VM_FAULT_NOPAGE,
  VM_FAULT_OOM,
  VM_FAULT_RETRY,
} from "../../src/mm/constants.js";
import { Errno, MmError } from "../../src/mm/errors.js";
import { INJECT_POINTS } from "../../src/mm/fault-inject.js";
import { handleMmFault } from "../../src/mm/fault.js";
import { pinUserPages } from "../../src/mm/gup.js";
import { HMM_PFN_REQ_FAULT, HMM_PFN_REQ_WRITE, hmmRangeFault } from "../../src/mm/hmm.js";
import { insertPfnRange } from "../../src/mm/insert.js";
import { checkInvariants } from "../../src/mm/invariants.js";
import { Kernel } from "../../src/mm/kernel.js";
import { closeDmirror, createDmirrorDevice, destroyDmirrorDevice, openDmirror } from "../../src/mm/dmirror.js";
import {
  MIGRATE_PFN_MIGRATE,
  MIGRATE_PFN_WRITE,
  MIGRATE_VMA_SELECT_SYSTEM,
  MigrateVma,
  migrateVmaFinalize,
  migrateVmaPages,
  migrateVmaSetup,
  oomReapMm,
} from "../../src/mm/migrate-device.js";
import type { Mm } from "../../src/mm/mm.js";
import { IntervalSub } from "../../src/mm/mmu-notifier.js";
import { doMadvise, doMunmap, exitMm, forkMm } from "../../src/mm/mmap.js";
import { readMemory, writeMemory } from "../../src/mm/access.js";
import { releaseSession } from "../../src/mm/pins.js";
import { copyPageData } from "../../src/mm/fault.js";
import { ANON_PRIVATE, MiB, RANGE_END_ALL, bytes, mmap } from "./helpers.js";

const PAGE = 4096;
const OWNER = 0xd0;
const SESSION = 1;

/** errnos a step may fail with under injection, as the kernel's paths do */
const ALLOWED_ERRNOS = new Set<number>([Errno.ENOMEM, Errno.EAGAIN, Errno.EBUSY, Errno.EFAULT]);

interface Outcome {
  /** steps that failed, "step: ERRNO" */
  failures: string[];
  violations: string[];
}

function mkKernel(): Kernel {
  // ZONE_MOVABLE so that FOLL_LONGTERM pins migrate (the "migrate" point).
  return new Kernel({ phys: { ramBytes: 512 * MiB, movableBytes: 128 * MiB }, tunables: { thpEnabled: "always" } });
}

/**
 * The scenario. Each step runs as one operation (runOp, as the service layer
 * does); a thrown MmError is a failed step and must carry an allowed errno.
 */
async function scenario(k: Kernel): Promise<Outcome> {
  const out: Outcome = { failures: [], violations: [] };
  const check = (step: string) => {
    for (const v of checkInvariants(k).violations) out.violations.push(`${step}: ${v.code} ${v.message}`);
  };
  const step = <T>(name: string, fn: () => T): T | undefined => {
    try {
      return k.runOp(fn);
    } catch (e) {
      if (!(e instanceof MmError)) throw e;
      if (!ALLOWED_ERRNOS.has(e.errno)) out.violations.push(`${name}: unexpected errno ${e.errno} (${e.message})`);
      out.failures.push(`${name}: ${e.errno}`);
      return undefined;
    } finally {
      check(name);
    }
  };
  const vmFault = (name: string, r: number) => {
    // handle_mm_fault under injection: 0-ish success bits or VM_FAULT_OOM only.
    if (r & ~(VM_FAULT_OOM | VM_FAULT_NOPAGE | VM_FAULT_LOCKED | VM_FAULT_RETRY | VM_FAULT_MAJOR))
      out.violations.push(`${name}: vm_fault 0x${r.toString(16)}`);
    if (r & VM_FAULT_OOM) out.failures.push(`${name}: VM_FAULT_OOM`);
  };

  const mm = step("create_mm", () => k.createMm("parent", SESSION));
  if (mm === undefined) return out;
  const mms: Mm[] = [mm];
  const a = step("mmap", () => mmap(k, mm, 8 * MiB, { addr: 0x7000_0000_0000, flags: ANON_PRIVATE }))!;
  if (a === undefined) return out;

  step("populate", () => doMadvise(k, mm, a, MiB, MADV_POPULATE_WRITE));
  step("thp_fault", () => vmFault("thp_fault", handleMmFault(k, mm, mm.findVma(a + 2 * MiB)!, a + 2 * MiB, 0x1 /* FAULT_FLAG_WRITE */)));

  // fork: dup_mmap either succeeds or leaves no child (mmput on failure).
  const before = k.mms.size;
  const child = step("fork", () => forkMm(k, mm, "child", SESSION));
  if (child === undefined && [...k.mms.values()].filter((m) => !m.exited).length !== before)
    out.violations.push("fork: a failed fork left a child mm behind");
  if (child !== undefined) mms.push(child);

  // A THP only the parent maps (split for device migration below).
  step("thp_fault2", () => vmFault("thp_fault2", handleMmFault(k, mm, mm.findVma(a + 4 * MiB)!, a + 4 * MiB, 0x1)));

  // COW writes in both.
  for (const [name, m] of [["cow_parent", mm], ["cow_child", child]] as const) {
    if (m === undefined) continue;
    step(name, () => {
      const r = writeMemory(k, m, a, bytes(3 * PAGE, 7));
      // A user fault that runs out of memory is VM_FAULT_OOM (the OOM killer), never a signal.
      if (r.signal !== 0) out.violations.push(`${name}: signal ${r.signal} (vm_fault 0x${r.vmFault.toString(16)})`);
      else if (r.bytesDone < 3 * PAGE && !(r.vmFault & VM_FAULT_OOM)) out.violations.push(`${name}: short write without VM_FAULT_OOM`);
      if (r.bytesDone < 3 * PAGE) out.failures.push(`${name}: VM_FAULT_OOM`);
    });
  }

  // pin (FOLL_LONGTERM: movable pages are migrated first), then unpin later.
  const pinsBefore = { acq: k.vmstat.nr_foll_pin_acquired, rel: k.vmstat.nr_foll_pin_released };
  step("pin_longterm", () => {
    const r = pinUserPages(k, mm, SESSION, a, 16, FOLL_WRITE | FOLL_LONGTERM);
    if (r.ret < 0) {
      if (!ALLOWED_ERRNOS.has(-r.ret)) out.violations.push(`pin_longterm: ret ${r.ret}`);
      out.failures.push(`pin_longterm: ${-r.ret}`);
      // __gup_longterm_locked unpins everything it took before failing.
      if (k.vmstat.nr_foll_pin_acquired - pinsBefore.acq !== k.vmstat.nr_foll_pin_released - pinsBefore.rel)
        out.violations.push("pin_longterm: a failed pin kept pins");
    }
  });

  step("munmap_partial_thp", () => doMunmap(k, mm, a + 2 * MiB + 64 * PAGE, 16 * PAGE));

  // vmf_insert_pfn_range of a BAR into a PFNMAP VMA: pgtable_alloc failures -> VM_FAULT_OOM.
  const bar = k.phys.registerPfnRange("bar", 1024 + 8, 512);
  const va = step("mmap_bar", () =>
    mmap(k, mm, 4 * MiB + 8 * PAGE, { flags: MAP_SHARED, device: { kind: "pfnmap", pfnRangeId: bar.id, basePfn: -1, hugeFault: true } }),
  );
  if (va !== undefined) {
    step("insert_pfn_range", () => {
      const r = insertPfnRange(k, mm, { addr: va, pfn: bar.startPfn, nrPages: 1024 + 8, mode: "eager", write: true, prot: null });
      if (r.errno !== 0 && r.errno !== Errno.ENOMEM) out.violations.push(`insert_pfn_range: errno ${r.errno}`);
      if (r.errno !== 0 || r.vmFault & VM_FAULT_OOM) out.failures.push(`insert_pfn_range: ${r.errno}`);
    });
  }

  // hmm_range_fault: a fault that fails reports -EFAULT (hmm_vma_fault) or -ENOMEM.
  const sub = new IntervalSub(5000 + mm.id, mm.id, 0, RANGE_END_ALL - 1, { invalidate: (s, _r, cur) => ((s.seq = cur), true) }, SESSION);
  mm.notifier.insert(sub, RANGE_END_ALL, mm.mmUsers);
  step("hmm_range_fault", () => {
    const n = 32;
    const pfns = new Uint32Array(2 * n);
    const r = hmmRangeFault(k, mm, {
      notifier: sub,
      notifierSeq: sub.seq,
      start: a + 6 * MiB,
      end: a + 6 * MiB + n * PAGE,
      hmmPfns: pfns,
      runs: null,
      defaultFlags: (HMM_PFN_REQ_FAULT | HMM_PFN_REQ_WRITE) >>> 0,
      pfnFlagsMask: 0,
      devPrivateOwner: 0,
    });
    if (r.ret !== 0) {
      if (!ALLOWED_ERRNOS.has(-r.ret)) out.violations.push(`hmm_range_fault: ret ${r.ret}`);
      out.failures.push(`hmm_range_fault: ${-r.ret}`);
    }
  });
  mm.notifier.remove(sub);

  // migrate_vma to device-private memory over 4 KiB pages and a PMD-mapped THP
  // (split first: folio_split), the driver allocating each page (devmem_alloc).
  const pm = k.phys.registerPagemap("dev", MemoryType.DEVICE_PRIVATE, 1024, OWNER);
  for (const [name, start, n] of [["migrate_4k", a, 8], ["migrate_thp", a + 4 * MiB, 8]] as const) {
    step(name, () => {
      const mv = new MigrateVma(mm.findVma(start)!, start, start + n * PAGE, OWNER, MIGRATE_VMA_SELECT_SYSTEM);
      const ret = migrateVmaSetup(k, mv);
      if (ret !== 0) {
        out.violations.push(`${name}: setup ${ret}`);
        return;
      }
      for (let i = 0; i < mv.npages; i++) {
        if (!(mv.srcFlags[i]! & MIGRATE_PFN_MIGRATE)) continue;
        const d = k.phys.allocDevicePage(pm);
        if (d < 0) continue; // the driver leaves dst empty: the page stays
        if (mv.hasPage(i)) copyPageData(k, mv.srcPfn[i]!, d);
        mv.setDst(i, d, (mv.srcFlags[i]! & MIGRATE_PFN_WRITE) !== 0 || !mv.hasPage(i));
      }
      migrateVmaPages(k, mv);
      migrateVmaFinalize(k, mv);
    });
  }
  // The CPU touches a migrated page: migrate_to_ram (page_alloc may fail -> VM_FAULT_OOM).
  step("read_back", () => {
    const r = readMemory(k, mm, a, PAGE);
    if (r.signal !== 0) out.violations.push(`read_back: signal ${r.signal} (vm_fault 0x${r.vmFault.toString(16)})`);
    if (r.bytesDone < PAGE) out.failures.push(`read_back: vm_fault 0x${r.vmFault.toString(16)}`);
  });

  // OOM reaper on the child with a dmirror attached: the mirror may refuse (mirror_ack).
  if (child !== undefined) {
    const dev = step("dmirror_create", () => createDmirrorDevice(k, "", 1, 64, SESSION));
    if (dev !== undefined) {
      const m = openDmirror(k, dev, child, SESSION);
      step("oom_reap", () => {
        for (const r of oomReapMm(k, child)) if (r.errno !== 0 && r.errno !== Errno.EAGAIN) out.violations.push(`oom_reap: errno ${r.errno}`);
      });
      await closeDmirror(k, m);
      step("dmirror_destroy", () => destroyDmirrorDevice(k, dev));
    }
  }

  // Teardown never fails: unpin, exit every mm, remove the device memory.
  k.inject.clear();
  k.runOp(() => releaseSession(k, SESSION));
  for (const m of mms) if (!m.exited) k.runOp(() => exitMm(k, m));
  check("teardown");
  if (pm.allocated !== 0) out.violations.push(`teardown: ${pm.allocated} device pages still allocated`);
  else k.phys.unregisterPagemap(pm.id);
  k.phys.unregisterPfnRange(bar.id);
  return out;
}

/** Free pages once everything is torn down; the huge zero folio is kept for the kernel's life. */
function freeAfter(k: Kernel, baseline: number): number {
  return k.phys.totalFreePages() + (k.phys.hugeZeroPfn >= 0 ? 512 : 0) - baseline;
}

describe("fail_nth sweep over the model", () => {
  it("counting run: the scenario reaches every injection point and passes cleanly", async () => {
    const k = mkKernel();
    const baseline = k.phys.totalFreePages();
    k.inject.enable();
    const o = await scenario(k);
    expect(o.violations).toEqual([]);
    expect(o.failures).toEqual([]);
    for (const name of INJECT_POINTS) expect(k.inject.points.get(name)!.hits, name).toBeGreaterThan(0);
    expect(freeAfter(k, baseline)).toBe(0);
    expect(k.pt.live).toBe(0);
  });

  it("fails the n-th hit for every n: kernel errnos, invariants kept, nothing leaks", async () => {
    const count = mkKernel();
    count.inject.enable();
    await scenario(count);
    const total = count.inject.totalHits;
    expect(total).toBeGreaterThan(20);
    const problems: string[] = [];
    let injected = 0;
    for (let n = 1; n <= total; n++) {
      const k = mkKernel();
      const baseline = k.phys.totalFreePages();
      k.inject.failNth(n);
      const o = await scenario(k);
      injected += k.inject.totalInjected;
      const leak = freeAfter(k, baseline);
      const where = `n=${n} (${k.inject.log.join(",")})`;
      for (const v of o.violations) problems.push(`${where}: ${v}`);
      if (leak !== 0) problems.push(`${where}: ${-leak} pages leaked`);
      if (k.pt.live !== 0) problems.push(`${where}: ${k.pt.live} page tables leaked`);
    }
    expect(problems).toEqual([]);
    expect(injected).toBe(total);
  }, 120_000);
});
