/**
 * Parsing of command-line values: numbers (decimal, 0x hex, size suffixes),
 * and the kernel's bit masks by name (PROT_*, MAP_*, MADV_*), as a C
 * programmer would write them.
 */
import { UsageError } from "./registry.js";

const SIZE_SHIFT: Record<string, number> = { "": 0, k: 10, m: 20, g: 30, t: 40 };

/**
 * "4096", "0x7f0000000000", "2M", "1G", "16GiB" -> a safe integer. Size
 * suffixes are powers of 1024.
 */
export function parseNumber(value: string | undefined, what: string): number {
  if (value === undefined) throw new UsageError(`missing ${what}`);
  const v = value.trim().replace(/_/g, "");
  let n: number;
  if (/^0x[0-9a-f]+$/i.test(v)) n = Number(v);
  else {
    const m = /^(\d+)([kmgt]?)(i?b)?$/i.exec(v);
    if (m === null) throw new UsageError(`${what}: cannot parse "${value}" (examples: 4096, 0x7f0000000000, 2M, 1G)`);
    n = Number(m[1]) * 2 ** SIZE_SHIFT[m[2]!.toLowerCase()]!;
  }
  if (!Number.isSafeInteger(n)) throw new UsageError(`${what}: "${value}" is too large`);
  return n;
}

/**
 * A count of 4 KiB pages: a plain number is pages, a number with a size
 * suffix is bytes ("2M" = 512 pages, "1G" = 262144 pages).
 */
export function parsePages(value: string | undefined, what: string): number {
  const n = parseNumber(value, what);
  if (!/[kmgt](i?b)?$/i.test(value!.trim())) return n;
  if (n % 4096 !== 0) throw new UsageError(`${what}: ${value} is not a whole number of 4 KiB pages`);
  return n / 4096;
}

export function optNumber(value: string | boolean | undefined, what: string, dflt: number): number {
  if (value === undefined) return dflt;
  if (typeof value === "boolean") throw new UsageError(`${what} needs a value`);
  return parseNumber(value, what);
}

export const PROT = { READ: 0x1, WRITE: 0x2, EXEC: 0x4 } as const;

/** "rw", "r-x", "rwx", "none", "read,write", "0x3" -> PROT_* bits. */
export function parseProt(value: string): number {
  // a maps perms column ("rw-p") is accepted too
  const v = value.trim().toLowerCase().replace(/^([r-][w-][x-])[ps]$/, "$1");
  if (v === "none" || v === "---" || v === "") return 0;
  if (/^(0x[0-9a-f]+|\d+)$/.test(v)) return Number(v);
  if (/^[r-][w-][x-]$/.test(v) || /^r?w?x?$/.test(v)) {
    return (v.includes("r") ? PROT.READ : 0) | (v.includes("w") ? PROT.WRITE : 0) | (v.includes("x") ? PROT.EXEC : 0);
  }
  let bits = 0;
  for (const part of v.split(/[,|]/)) {
    const name = part.trim().replace(/^prot_/, "");
    if (name === "read") bits |= PROT.READ;
    else if (name === "write") bits |= PROT.WRITE;
    else if (name === "exec") bits |= PROT.EXEC;
    else if (name !== "none") throw new UsageError(`protection "${value}": use rwx letters (rw, r-x), none, or read,write,exec`);
  }
  return bits;
}

export const MAP = {
  shared: 0x1,
  private: 0x2,
  fixed: 0x10,
  anonymous: 0x20,
  noreserve: 0x4000,
  populate: 0x8000,
  hugetlb: 0x40000,
  fixed_noreplace: 0x100000,
  huge_2mb: 0x54000000,
  huge_1gb: 0x78000000,
} as const;

/** "private,anonymous,populate" (MAP_ prefix optional, - or _) or a number -> MAP_* bits. */
export function parseMapFlags(value: string): number {
  const v = value.trim().toLowerCase();
  if (/^(0x[0-9a-f]+|\d+)$/.test(v)) return Number(v);
  let bits = 0;
  for (const part of v.split(/[,|]/)) {
    const name = part.trim().replace(/^map_/, "").replace(/-/g, "_").replace(/^anon$/, "anonymous");
    const bit = (MAP as Record<string, number>)[name];
    if (bit === undefined) throw new UsageError(`mmap flag "${part}" unknown (known: ${Object.keys(MAP).join(", ")})`);
    bits |= bit;
  }
  return bits;
}

export const MADV: Record<string, number> = {
  normal: 0,
  random: 1,
  sequential: 2,
  willneed: 3,
  dontneed: 4,
  free: 8,
  dontfork: 10,
  dofork: 11,
  hugepage: 14,
  nohugepage: 15,
  wipeonfork: 18,
  keeponfork: 19,
  populate_read: 22,
  populate_write: 23,
  dontneed_locked: 24,
};

/** "dontneed", "MADV_POPULATE_WRITE", "populate-write" or a number -> MADV_* value. */
export function parseAdvice(value: string): number {
  const v = value.trim().toLowerCase();
  if (/^\d+$/.test(v)) return Number(v);
  const name = v.replace(/^madv_/, "").replace(/-/g, "_");
  const n = MADV[name];
  if (n === undefined) throw new UsageError(`advice "${value}" unknown (known: ${Object.keys(MADV).join(", ")})`);
  return n;
}

/** Choose one of `names` (case-insensitive, - and _ alike). */
export function parseChoice<T extends string>(value: string, names: readonly T[], what: string): T {
  const v = value.trim().toLowerCase().replace(/_/g, "-");
  const hit = names.find((n) => n === v);
  if (hit === undefined) throw new UsageError(`${what} "${value}" unknown (known: ${names.join(", ")})`);
  return hit;
}

export function parseOnOff(value: string, what: string): boolean {
  const v = value.trim().toLowerCase();
  if (["on", "true", "1", "yes"].includes(v)) return true;
  if (["off", "false", "0", "no"].includes(v)) return false;
  throw new UsageError(`${what}: expected on or off (got "${value}")`);
}
