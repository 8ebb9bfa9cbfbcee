/**
 * The one place where anything a handler throws becomes a gRPC status
 * (common.proto "Errors"): message "<ERRNO_NAME>: <reason>", trailers
 * `mmsim-errno` and `mmsim-errno-name`.
 *
 * Domain code throws MmError (src/mm/errors.ts). The service layer throws the
 * same type: `invalidArgument()` for malformed requests, and StatusError (an
 * MmError that names its gRPC code) for the few statuses the model's kinds
 * cannot express, such as UNAUTHENTICATED for session metadata.
 */
import { Metadata, status, type StatusObject } from "@grpc/grpc-js";
import { MmError, type MmErrorKind } from "../mm/errors.js";

/** The x86-64 errno values (one table, the model's). */
import { Errno as ERRNO, errnoName } from "../mm/errors.js";
export { ERRNO, errnoName };

/** An MmError that carries its gRPC code explicitly (session errors). */
export class StatusError extends MmError {
  constructor(
    readonly code: status,
    errno: number,
    reason: string,
  ) {
    super(errno, reason, "errno");
    this.name = "StatusError";
  }
}

/** Malformed request: INVALID_ARGUMENT, EINVAL (nothing was changed). */
export function invalidArgument(reason: string): never {
  throw new MmError(ERRNO.EINVAL, reason, "invalid");
}

/** Unknown id: NOT_FOUND, ENOENT. */
export function notFoundError(what: string): never {
  throw new MmError(ERRNO.ENOENT, `${what} not found`, "not-found");
}

/** An errno with the code the common.proto table gives it. */
export function errnoError(errno: number, reason: string): never {
  throw new MmError(errno, reason, "errno");
}

/** gRPC code of a kernel errno (common.proto table). */
export function codeForErrno(errno: number): status {
  switch (Math.abs(errno)) {
    case ERRNO.EINVAL:
    case ERRNO.EBADF:
    case ERRNO.EOVERFLOW:
      return status.INVALID_ARGUMENT;
    case ERRNO.ENOENT:
    case ERRNO.ESRCH:
      return status.NOT_FOUND;
    case ERRNO.EEXIST:
      return status.ALREADY_EXISTS;
    case ERRNO.ENOMEM:
    case ERRNO.ENOSPC:
      return status.RESOURCE_EXHAUSTED;
    case ERRNO.EPERM:
    case ERRNO.EACCES:
      return status.PERMISSION_DENIED;
    case ERRNO.EFAULT:
      return status.OUT_OF_RANGE;
    case ERRNO.EAGAIN:
    case ERRNO.EBUSY:
    case ERRNO.EINTR:
      return status.ABORTED;
    default:
      return status.FAILED_PRECONDITION;
  }
}

const CODE_FOR_KIND: Record<Exclude<MmErrorKind, "errno">, status> = {
  invalid: status.INVALID_ARGUMENT,
  "not-found": status.NOT_FOUND,
  precondition: status.FAILED_PRECONDITION,
  "kernel-bug": status.FAILED_PRECONDITION,
  exhausted: status.RESOURCE_EXHAUSTED,
  denied: status.PERMISSION_DENIED,
};

/** A status ready for grpc-js, plus what was decided (for logging). */
export interface MappedStatus extends StatusObject {
  /** errno sent in the trailers; 0 for INTERNAL. */
  errno: number;
  /** true when the error was not an MmError (a server bug). */
  internal: boolean;
}

/** Normalise anything thrown into a gRPC status with errno trailers. */
export function toStatus(err: unknown): MappedStatus {
  if (err instanceof MmError) {
    const errno = Math.abs(err.errno);
    const name = errnoName(errno);
    const code = err instanceof StatusError ? err.code : err.kind === "errno" ? codeForErrno(errno) : CODE_FOR_KIND[err.kind];
    const metadata = new Metadata();
    metadata.set("mmsim-errno", String(errno));
    metadata.set("mmsim-errno-name", name);
    // The model names errnos from its own (smaller) table; rebuild the prefix.
    return { code, details: `${name}: ${err.reason}`, metadata, errno, internal: false };
  }
  const message = err instanceof Error ? err.message : String(err);
  return { code: status.INTERNAL, details: message, metadata: new Metadata(), errno: 0, internal: true };
}
