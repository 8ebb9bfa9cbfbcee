/**
 * Request checks done before any model call: numbers representable and in
 * range, enum values known, masks without unknown bits. Each failure is
 * INVALID_ARGUMENT with errno EINVAL and a reason naming the field, and
 * nothing has been changed.
 */
import { PAGE_SIZE } from "../mm/constants.js";
import { invalidArgument } from "./errors.js";

const hex = (v: number) => `0x${v.toString(16)}`;

/** A uint64 field: a safe non-negative integer (the decoder already refuses >= 2^53). */
export function u64(v: number, field: string): number {
  if (!Number.isSafeInteger(v) || v < 0) invalidArgument(`${field} ${v} is not an integer in [0, 2^53)`);
  return v;
}

/** A uint32 field. */
export function u32(v: number, field: string): number {
  if (!Number.isInteger(v) || v < 0 || v > 0xffff_ffff) invalidArgument(`${field} ${v} is not a uint32`);
  return v;
}

/** An object id: never 0. */
export function objectId(v: number, field: string): number {
  u64(v, field);
  if (v === 0) invalidArgument(`${field} must be set (0 is not an id)`);
  return v;
}

export function pageAligned(v: number, field: string): number {
  u64(v, field);
  if (v % PAGE_SIZE !== 0) invalidArgument(`${field} ${hex(v)} is not page aligned`);
  return v;
}

export function atMost(v: number, max: number, field: string): number {
  u64(v, field);
  if (v > max) invalidArgument(`${field} ${v} exceeds the maximum ${max}`);
  return v;
}

export function positive(v: number, field: string): number {
  u64(v, field);
  if (v === 0) invalidArgument(`${field} must be > 0`);
  return v;
}

/** A mask whose bits must lie within `allowed`. */
export function mask(v: number, allowed: number, field: string): number {
  u32(v, field);
  const extra = (v & ~allowed) >>> 0;
  if (extra !== 0) invalidArgument(`${field} ${hex(v)} has unknown or unsupported bits ${hex(extra)}`);
  return v;
}

/** An enum value that must be one of `allowed` (UNSPECIFIED is usually not). */
export function enumValue<T extends number>(v: number, allowed: readonly T[], field: string, names?: Record<number, string>): T {
  if (!(allowed as readonly number[]).includes(v)) {
    const list = allowed.map((a) => names?.[a] ?? String(a)).join(", ");
    invalidArgument(`${field} ${names?.[v] ?? v} is not one of ${list}`);
  }
  return v as T;
}

export function isPowerOfTwo(v: number): boolean {
  return Number.isSafeInteger(v) && v > 0 && 2 ** Math.round(Math.log2(v)) === v;
}
