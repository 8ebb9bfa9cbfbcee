/** Output helpers of the `mmsim` CLI: hex, sizes, tables, hexdumps. */

export function hex(n: number, width = 0): string {
  return n.toString(16).padStart(width, "0");
}

export function hex0x(n: number): string {
  return `0x${n.toString(16)}`;
}

const UNITS = ["B", "KiB", "MiB", "GiB", "TiB"];

/** 2097152 -> "2 MiB", 1536 -> "1.5 KiB" */
export function size(bytes: number): string {
  let v = bytes;
  let u = 0;
  while (v >= 1024 && u < UNITS.length - 1) {
    v /= 1024;
    u++;
  }
  const s = Number.isInteger(v) ? String(v) : v.toFixed(1);
  return `${s} ${UNITS[u]}`;
}

/** Left-aligned columns; numbers (and hex) right-aligned when `right` says so. */
export function table(header: string[], rows: (string | number)[][], right: boolean[] = []): string {
  const cells = [header, ...rows.map((r) => r.map(String))];
  const widths = header.map((_, i) => Math.max(...cells.map((r) => (r[i] ?? "").length)));
  return cells
    .map((r) =>
      r
        .map((c, i) => (right[i] ? c.padStart(widths[i]!) : i === r.length - 1 ? c : c.padEnd(widths[i]!)))
        .join("  ")
        .trimEnd(),
    )
    .join("\n");
}

/** `xxd`-style dump: offset (the address), 16 bytes in hex, printable ASCII. */
export function hexdump(data: Uint8Array, base: number): string {
  const lines: string[] = [];
  for (let off = 0; off < data.length; off += 16) {
    const chunk = data.subarray(off, off + 16);
    const bytes: string[] = [];
    for (let i = 0; i < 16; i++) bytes.push(i < chunk.length ? hex(chunk[i]!, 2) : "  ");
    const groups: string[] = [];
    for (let i = 0; i < 16; i += 2) groups.push(bytes[i]! + bytes[i + 1]!);
    let ascii = "";
    for (const b of chunk) ascii += b >= 0x20 && b < 0x7f ? String.fromCharCode(b) : ".";
    lines.push(`${hex(base + off, 12)}: ${groups.join(" ")}  ${ascii}`);
  }
  return lines.join("\n");
}

/** "FOO_BAR_BAZ" enum name without its type prefix, lower-case: ("ZONE_NORMAL", "ZONE_") -> "normal" */
export function enumName(name: string, prefix: string): string {
  return name.startsWith(prefix) ? name.slice(prefix.length).toLowerCase() : name.toLowerCase();
}

/** Names of the set bits of `mask` from a bit -> name table, then any leftover as hex. */
export function bitNames(mask: number, names: Record<number, string>): string {
  const out: string[] = [];
  let left = mask;
  for (const [bit, name] of Object.entries(names)) {
    const b = Number(bit);
    if (b !== 0 && (mask & b) === b) {
      out.push(name);
      left &= ~b;
    }
  }
  if (left !== 0) out.push(hex0x(left));
  return out.length > 0 ? out.join("|") : "0";
}

/**
 * One line of /proc/PID/maps: the pathname column starts at column 73 as the
 * kernel pads it; the offset is 0 for private anonymous memory (no vm_file),
 * as show_map_vma prints it; the inode column shows the file id.
 */
export function mapsLine(v: { start: number; end: number; perms: string; pgoff: number; fileId: number; name: string }): string {
  const offset = v.name === "[anon]" ? 0 : v.pgoff * 4096;
  const left = `${hex(v.start, 8)}-${hex(v.end, 8)} ${v.perms} ${hex(offset, 8)} 00:00 ${v.fileId}`;
  return v.name === "" ? left : `${left.padEnd(73)}${v.name}`;
}
