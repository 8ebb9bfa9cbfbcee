/**
 * Fault injection built into the model, after the kernel's fault-injection
 * framework (failslab, fail_page_alloc, fail_nth) and iommufd's selftest:
 * named injection points, each asked `fail(name)` at the one spot where the
 * kernel itself can fail, which then takes the kernel's own error path there.
 *
 *   point          where                                  the kernel's outcome
 *   page_alloc     PhysMem.allocFolio (every folio)       NULL -> VM_FAULT_OOM / -ENOMEM
 *   pgtable_alloc  TablePool.alloc (every table)          pte_alloc fails -> VM_FAULT_OOM / -ENOMEM
 *   folio_split    split_folio for device migration       -EAGAIN: the THP is skipped
 *   migrate        folio migration (GUP LONGTERM, device) -ENOMEM / -EBUSY (pin), -EAGAIN (migrate_vma: page stays)
 *   devmem_alloc   PhysMem.allocDevicePage                NULL -> the driver's -ENOMEM / VM_FAULT_OOM
 *   mirror_ack     dmirror invalidate, non-blockable      false (mutex_trylock failed) -> -EAGAIN
 *                  client mirror invalidate (per message)  non-blockable: refused -> -EAGAIN;
 *                                                         blockable: answer lost -> dead-mirror deadline
 *
 * Modes per point (as the fault-attr knobs): fail the next N hits ("times"),
 * fail every Nth hit ("interval"), fail with probability p from a seeded
 * xorshift PRNG (deterministic for a seed and a sequence of hits). On top,
 * `failNth(n)` fails the n-th hit counted over every point (fail_nth): the
 * sweep harness runs a scenario once with counting only, then once per n.
 *
 * Disabled (the default) a point costs one boolean test and the allocation
 * hooks are not installed at all. Hits and injections are counted only while
 * enabled. Deterministic, no clock, no I/O.
 */
import type { PhysMem } from "./physmem.js";
import type { TablePool } from "./pagetable.js";

export const INJECT_POINTS = ["page_alloc", "pgtable_alloc", "folio_split", "migrate", "devmem_alloc", "mirror_ack"] as const;
export type InjectPoint = (typeof INJECT_POINTS)[number];

export function isInjectPoint(s: string): s is InjectPoint {
  return (INJECT_POINTS as readonly string[]).includes(s);
}

/** How a point fails; "off" counts hits only. */
export type InjectMode =
  | { kind: "off" }
  | { kind: "times"; remaining: number }
  | { kind: "interval"; every: number }
  | { kind: "probability"; p: number; seed: number };

export interface InjectPointState {
  readonly name: InjectPoint;
  mode: InjectMode;
  /** times the point was reached while injection was enabled */
  hits: number;
  /** times it failed */
  injected: number;
  /** xorshift32 state of the probability mode */
  rng: number;
}

/** xorshift32: deterministic, never 0 for a non-zero state. */
function xorshift32(s: number): number {
  s ^= s << 13;
  s ^= s >>> 17;
  s ^= s << 5;
  return s >>> 0;
}

export class FaultInjector {
  /** false: every point answers false at once, nothing is counted */
  private on = false;
  readonly points = new Map<InjectPoint, InjectPointState>();
  /** fail_nth: fail the hit with this global number (1-based); 0 = none */
  private nth = 0;
  /** hits over every point since counting started (for failNth) */
  totalHits = 0;
  totalInjected = 0;
  /** the order of injected hits, for reports: "point#hit" */
  readonly log: string[] = [];

  constructor(
    private readonly phys: PhysMem,
    private readonly pt: TablePool,
  ) {
    for (const name of INJECT_POINTS) this.points.set(name, { name, mode: { kind: "off" }, hits: 0, injected: 0, rng: 1 });
  }

  get enabled(): boolean {
    return this.on;
  }

  /** Start counting (and failing as configured); installs the allocation hooks. */
  enable(): void {
    if (this.on) return;
    this.on = true;
    this.phys.allocFailHook = () => this.fail("page_alloc");
    this.pt.allocFailHook = () => this.fail("pgtable_alloc");
    this.phys.deviceAllocFailHook = () => this.fail("devmem_alloc");
  }

  /** Snapshot restore: the allocation hooks again (functions are not saved). */
  reinstallHooks(): void {
    if (!this.on) return;
    this.on = false;
    this.enable();
  }

  /** Stop counting and failing; removes the hooks (zero cost again). */
  disable(): void {
    if (!this.on) return;
    this.on = false;
    this.phys.allocFailHook = null;
    this.pt.allocFailHook = null;
    this.phys.deviceAllocFailHook = null;
  }

  /** Set a point's mode (enables injection). */
  configure(name: InjectPoint, mode: InjectMode): void {
    const pt = this.points.get(name)!;
    if (mode.kind === "probability") pt.rng = (mode.seed >>> 0) || 0x9e3779b9;
    pt.mode = mode;
    this.enable();
  }

  /** fail_nth: the n-th hit from now, over every point, fails (n >= 1; 0 clears). */
  failNth(n: number): void {
    this.nth = n === 0 ? 0 : this.totalHits + n;
    if (n !== 0) this.enable();
  }

  /** Every mode off and fail_nth cleared; `resetCounters` also zeroes the counters. */
  clear(resetCounters = false): void {
    for (const p of this.points.values()) {
      p.mode = { kind: "off" };
      if (resetCounters) {
        p.hits = 0;
        p.injected = 0;
      }
    }
    this.nth = 0;
    if (resetCounters) {
      this.totalHits = 0;
      this.totalInjected = 0;
      this.log.length = 0;
    }
  }

  /** Called at an injection point: true means take the failure path. */
  fail(name: InjectPoint): boolean {
    if (!this.on) return false;
    const p = this.points.get(name)!;
    p.hits++;
    this.totalHits++;
    let hit = this.nth !== 0 && this.totalHits === this.nth;
    const m = p.mode;
    switch (m.kind) {
      case "off":
        break;
      case "times":
        if (m.remaining > 0) {
          m.remaining--;
          hit = true;
        }
        break;
      case "interval":
        if (p.hits % m.every === 0) hit = true;
        break;
      case "probability":
        p.rng = xorshift32(p.rng);
        if (p.rng / 0x1_0000_0000 < m.p) hit = true;
        break;
    }
    if (hit) {
      p.injected++;
      this.totalInjected++;
      if (this.log.length < 1024) this.log.push(`${name}#${p.hits}`);
    }
    return hit;
  }
}
