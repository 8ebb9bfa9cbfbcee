/**
 * Id lookups with the statuses the contract asks for: an unknown id is
 * NOT_FOUND (ENOENT); an mm that has exited is NOT_FOUND (ESRCH) for RPCs
 * that need a live mm (address_space.proto, ExitMmRequest).
 */
import { MmError } from "../mm/errors.js";
import type { Kernel } from "../mm/kernel.js";
import type { Mm } from "../mm/mm.js";
import type { FileObject } from "../mm/vma.js";
import { ERRNO, notFoundError } from "./errors.js";

/** Any mm the daemon knows, exited or not. */
export function knownMm(k: Kernel, id: number): Mm {
  const mm = k.mms.get(id);
  if (mm === undefined) notFoundError(`mm ${id}`);
  return mm;
}

/** An mm that has not exited. */
export function liveMm(k: Kernel, id: number): Mm {
  const mm = knownMm(k, id);
  if (mm.exited) throw new MmError(ERRNO.ESRCH, `mm ${id} has exited`, "not-found");
  return mm;
}

export function knownFile(k: Kernel, id: number): FileObject {
  const f = k.files.get(id);
  if (f === undefined) notFoundError(`file ${id}`);
  return f;
}
