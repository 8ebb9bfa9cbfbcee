/**
 * What a process does: CPU faults with the arch entry checks (spec 3.1), and
 * reads and writes of user memory that fault as needed. Page contents are
 * real bytes, allocated on the first write; untouched pages read as zeros.
 */
import {
  FAULT_FLAG_INSTRUCTION,
  FAULT_FLAG_USER,
  FAULT_FLAG_WRITE,
  Level,
  offsetIn,
  PAGE_SIZE,
  TASK_SIZE_MAX,
  VM_FAULT_HWPOISON,
  VM_FAULT_HWPOISON_LARGE,
  VM_FAULT_OOM,
  VM_FAULT_SIGBUS,
  VM_FAULT_SIGSEGV,
  VM_READ,
  VM_WRITE,
} from "./constants.js";
import { invalid } from "./errors.js";
import { faultInfo, handleMmFault, vmFaultToErrno } from "./fault.js";
import type { Kernel } from "./kernel.js";
import type { Mm } from "./mm.js";
import { E_DIRTY, E_LEAF, E_PROTNONE, E_SPECIAL, E_WRITE, E_YOUNG, WalkCursor, isPresentLeaf, walk } from "./pagetable.js";
import { PG_dirty, PG_has_data, SECTION_SHIFT } from "./physmem.js";

export const SIGBUS = 7;
export const SIGSEGV = 11;
export const SEGV_MAPERR = 1;
export const SEGV_ACCERR = 2;
export const BUS_ADRERR = 2;
export const BUS_MCEERR_AR = 4;

export interface FaultResult {
  vmFault: number;
  signal: number;
  siCode: number;
  errno: number;
  level: Level;
  pfn: number;
  writable: boolean;
  special: boolean;
  cow: boolean;
  thp: boolean;
}

const cursor = new WalkCursor();

/** The translation of `addr` now: level, PFN of its 4 KiB page, bits. */
export function translate(k: Kernel, mm: Mm, addr: number): { level: Level; pfn: number; hi: number } | null {
  walk(k.pt, mm.pgd, addr, cursor);
  if (!isPresentLeaf(cursor.hi) || cursor.level === Level.PGD) return null;
  const hi = cursor.hi;
  let pfn = cursor.lo;
  if (cursor.level !== Level.PTE && hi & E_LEAF && !k.phys.isZeroPfn(pfn)) {
    const size = cursor.level === Level.PUD ? 2 ** 30 : 2 ** 21;
    pfn += Math.floor(offsetIn(addr, size) / PAGE_SIZE);
  }
  return { level: cursor.level, pfn, hi };
}

function signalFor(vmFault: number): [number, number] {
  if (vmFault & (VM_FAULT_HWPOISON | VM_FAULT_HWPOISON_LARGE)) return [SIGBUS, BUS_MCEERR_AR];
  if (vmFault & VM_FAULT_SIGBUS) return [SIGBUS, BUS_ADRERR];
  // do_user_addr_fault: VM_FAULT_SIGSEGV goes to bad_area_nosemaphore.
  if (vmFault & VM_FAULT_SIGSEGV) return [SIGSEGV, SEGV_MAPERR];
  return [0, 0];
}

/**
 * A CPU fault at `addr`: arch checks (no VMA -> SEGV_MAPERR, access beyond
 * the VMA's rights -> SEGV_ACCERR) when `user`, then handle_mm_fault.
 */
export function cpuFault(k: Kernel, mm: Mm, addr: number, access: "read" | "write" | "exec", faultFlags: number, user: boolean): FaultResult {
  if (!Number.isSafeInteger(addr) || addr < 0) invalid(`address ${addr} out of range`);
  const res: FaultResult = { vmFault: 0, signal: 0, siCode: 0, errno: 0, level: Level.PTE, pfn: 0, writable: false, special: false, cow: false, thp: false };
  const vma = addr < TASK_SIZE_MAX ? mm.findVma(addr) : undefined;
  if (vma === undefined) {
    // bad_area: handle_mm_fault never ran; a kernel-mode caller sees SIGSEGV.
    res.vmFault = user ? 0 : VM_FAULT_SIGSEGV;
    res.signal = SIGSEGV;
    res.siCode = SEGV_MAPERR;
    res.errno = 14;
    return res;
  }
  if (user) {
    // Spec 3.1: writes need VM_WRITE; reads and instruction fetches VM_READ.
    const need = access === "write" ? VM_WRITE : VM_READ;
    if (!(vma.flags & need)) {
      res.vmFault = 0; // handle_mm_fault never ran
      res.signal = SIGSEGV;
      res.siCode = SEGV_ACCERR;
      res.errno = 14;
      return res;
    }
  }
  let flags = faultFlags | (user ? FAULT_FLAG_USER : 0);
  if (access === "write") flags |= FAULT_FLAG_WRITE;
  if (access === "exec") flags |= FAULT_FLAG_INSTRUCTION;
  const r = handleMmFault(k, mm, vma, addr, flags);
  res.vmFault = r;
  res.cow = faultInfo.cow;
  res.thp = faultInfo.thp;
  res.errno = vmFaultToErrno(r, 0);
  [res.signal, res.siCode] = signalFor(r);
  if (r & VM_FAULT_OOM) return res;
  const t = translate(k, mm, addr);
  if (t !== null) {
    res.level = t.level;
    res.pfn = t.pfn;
    res.writable = (t.hi & E_WRITE) !== 0;
    res.special = (t.hi & E_SPECIAL) !== 0;
  }
  return res;
}

export interface AccessResult {
  data: Uint8Array;
  bytesDone: number;
  signal: number;
  siCode: number;
  faultAddr: number;
  vmFault: number;
}

/**
 * Make `addr` accessible for a user read or write, faulting as the CPU
 * would. Returns the PFN of its page, or a failed FaultResult.
 */
function accessPage(k: Kernel, mm: Mm, addr: number, write: boolean): number | FaultResult {
  for (let tries = 0; tries < 4; tries++) {
    const t = translate(k, mm, addr);
    if (t !== null && !(t.hi & E_PROTNONE) && (!write || t.hi & E_WRITE)) {
      // The CPU sets accessed (and dirty) in the entry it used.
      walk(k.pt, mm.pgd, addr, cursor);
      k.pt.setBits(cursor.table, cursor.idx, cursor.hi | E_YOUNG | (write ? E_DIRTY : 0));
      return t.pfn;
    }
    const f = cpuFault(k, mm, addr, write ? "write" : "read", 0, true);
    if (f.signal !== 0 || f.vmFault & VM_FAULT_OOM) return f;
  }
  const f = cpuFault(k, mm, addr, write ? "write" : "read", 0, true);
  if (f.signal === 0) f.signal = SIGBUS;
  return f;
}

function checkRange(addr: number, len: number): void {
  if (!Number.isSafeInteger(addr) || !Number.isSafeInteger(len) || addr < 0 || len < 0) invalid("address/length out of range");
}

export function readMemory(k: Kernel, mm: Mm, addr: number, len: number): AccessResult {
  checkRange(addr, len);
  const out = new Uint8Array(len);
  const p = k.phys;
  let done = 0;
  while (done < len) {
    const a = addr + done;
    const r = accessPage(k, mm, a, false);
    if (typeof r !== "number") return { data: out.subarray(0, done), bytesDone: done, signal: r.signal, siCode: r.siCode, faultAddr: a, vmFault: r.vmFault };
    const off = offsetIn(a, PAGE_SIZE);
    const n = Math.min(PAGE_SIZE - off, len - done);
    const s = p.section(r);
    const bytes = s === undefined ? null : p.data.read(s, r & ((1 << SECTION_SHIFT) - 1));
    if (bytes !== null) out.set(bytes.subarray(off, off + n), done);
    done += n;
  }
  return { data: out, bytesDone: done, signal: 0, siCode: 0, faultAddr: 0, vmFault: 0 };
}

export function writeMemory(k: Kernel, mm: Mm, addr: number, data: Uint8Array): AccessResult {
  checkRange(addr, data.length);
  const p = k.phys;
  let done = 0;
  while (done < data.length) {
    const a = addr + done;
    const r = accessPage(k, mm, a, true);
    if (typeof r !== "number") return { data: new Uint8Array(0), bytesDone: done, signal: r.signal, siCode: r.siCode, faultAddr: a, vmFault: r.vmFault };
    const off = offsetIn(a, PAGE_SIZE);
    const n = Math.min(PAGE_SIZE - off, data.length - done);
    const s = p.section(r);
    if (s !== undefined) {
      // Only pages with a struct page keep contents (MMIO writes are dropped).
      p.data.writable(s, r & ((1 << SECTION_SHIFT) - 1)).set(data.subarray(done, done + n), off);
      const head = p.folioHead(r);
      p.orFlags(head, PG_has_data | PG_dirty);
    }
    done += n;
  }
  return { data: new Uint8Array(0), bytesDone: done, signal: 0, siCode: 0, faultAddr: 0, vmFault: 0 };
}
