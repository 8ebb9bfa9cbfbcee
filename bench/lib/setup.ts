/** Populated address spaces for the in-process workloads (populate kept apart from pin, A7). */
import {
  Level,
  MADV_NOHUGEPAGE,
  MAP_ANONYMOUS,
  MAP_HUGE_1GB,
  MAP_HUGETLB,
  MAP_POPULATE,
  MAP_PRIVATE,
  PROT_READ,
  PROT_WRITE,
} from "../../src/mm/constants.js";
import { forEachLeaf } from "../../src/mm/inspect.js";
import { Kernel } from "../../src/mm/kernel.js";
import type { Mm } from "../../src/mm/mm.js";
import { doMadvise, doMmap, populateRange } from "../../src/mm/mmap.js";

export const GiB = 2 ** 30;
export const MiB = 2 ** 20;

export type Backing = "4k" | "thp" | "hugetlb-1g";

export interface Populated {
  k: Kernel;
  mm: Mm;
  addr: number;
  bytes: number;
  /** leaves mapping the range, by level */
  leaves: { pte: number; pmd: number; pud: number };
}

/** A kernel large enough for `bytes` of `backing` plus slack (RAM is lazily materialised). */
export function benchKernel(bytes: number, backing: Backing): Kernel {
  // 1 GiB folios need free aligned GiBs: leave room below 4 GiB (DMA32) and above.
  const slack = backing === "hugetlb-1g" ? 6 * GiB : 1 * GiB;
  const ram = Math.ceil((bytes + slack) / (128 * MiB)) * 128 * MiB;
  return new Kernel({ phys: { ramBytes: Math.max(ram, 2 * GiB) }, tunables: { thpEnabled: "always" } });
}

/** Leaves mapping [addr, addr + bytes), by level. */
export function leafCensus(k: Kernel, mm: Mm, addr: number, bytes: number): Populated["leaves"] {
  const c = { pte: 0, pmd: 0, pud: 0 };
  forEachLeaf(k, mm, addr, addr + bytes, (level) => {
    if (level === Level.PTE) c.pte++;
    else if (level === Level.PMD) c.pmd++;
    else c.pud++;
  });
  return c;
}

/** Private anonymous memory, written (so every page is present and writable). */
export function populate(bytes: number, backing: Backing, k: Kernel = benchKernel(bytes, backing)): Populated {
  const mm = k.createMm(`bench-${backing}`, 0);
  const addr = k.runOp(() => {
    if (backing === "hugetlb-1g") {
      return doMmap(k, mm, {
        addr: 0,
        length: bytes,
        prot: PROT_READ | PROT_WRITE,
        flags: MAP_PRIVATE | MAP_ANONYMOUS | MAP_HUGETLB | MAP_HUGE_1GB | MAP_POPULATE,
        fileId: 0,
        offset: 0,
        device: null,
      });
    }
    const a = doMmap(k, mm, { addr: 0, length: bytes, prot: PROT_READ | PROT_WRITE, flags: MAP_PRIVATE | MAP_ANONYMOUS, fileId: 0, offset: 0, device: null });
    if (backing === "4k") doMadvise(k, mm, a, bytes, MADV_NOHUGEPAGE);
    populateRange(k, mm, a, a + bytes, true);
    return a;
  });
  const leaves = leafCensus(k, mm, addr, bytes);
  const expect = backing === "4k" ? leaves.pte : backing === "thp" ? leaves.pmd * 512 : leaves.pud * 262144;
  if (expect * 4096 !== bytes) throw new Error(`populate ${backing}: ${JSON.stringify(leaves)} leaves do not cover ${bytes} bytes`);
  return { k, mm, addr, bytes, leaves };
}
