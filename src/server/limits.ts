/**
 * Daemon limits (config.ts): each refusal is RESOURCE_EXHAUSTED with errno
 * ENOMEM and a reason naming the limit and its flag, checked before the
 * request allocates anything in proportion to what it claims.
 */
import { status } from "@grpc/grpc-js";
import type { Kernel } from "../mm/kernel.js";
import { ERRNO, StatusError } from "./errors.js";
import type { ServiceDeps } from "./handler.js";

export function limitExceeded(reason: string): never {
  throw new StatusError(status.RESOURCE_EXHAUSTED, ERRNO.ENOMEM, reason);
}

/** A page count a request names (nr_pages, npages) against --max-pages-per-request. */
export function checkPagesLimit(d: ServiceDeps, n: number, field: string): number {
  const max = d.config.maxPagesPerRequest ?? Number.MAX_SAFE_INTEGER;
  if (n > max) limitExceeded(`${field} ${n} exceeds the limit of ${max} pages per request (--max-pages-per-request)`);
  return n;
}

/** One more mm for `session` against --max-mms-per-session. */
export function checkMmsLimit(d: ServiceDeps, k: Kernel, session: number): void {
  const max = d.config.maxMmsPerSession ?? Number.MAX_SAFE_INTEGER;
  let n = 0;
  for (const mm of k.mms.values()) if (!mm.exited && mm.ownerSession === session) n++;
  if (n >= max) limitExceeded(`session ${session} owns ${n} mms, the limit (--max-mms-per-session ${max})`);
}
