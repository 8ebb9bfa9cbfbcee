/**
 * The model's one error type. Every failure the kernel reports as an errno is
 * thrown as an MmError; the service layer maps it to a gRPC status in one place.
 */

export const Errno = {
  EPERM: 1,
  ENOENT: 2,
  ESRCH: 3,
  EINTR: 4,
  EBADF: 9,
  EAGAIN: 11,
  ENOMEM: 12,
  EACCES: 13,
  EFAULT: 14,
  EBUSY: 16,
  EEXIST: 17,
  EINVAL: 22,
  ENOSPC: 28,
  EMLINK: 31,
  EOVERFLOW: 75,
  EOPNOTSUPP: 95,
  EREMOTEIO: 121,
  EHWPOISON: 133,
} as const;

export type ErrnoName = keyof typeof Errno;

const errnoNames = new Map<number, ErrnoName>(
  (Object.entries(Errno) as [ErrnoName, number][]).map(([n, v]) => [v, n]),
);

export function errnoName(errno: number): string {
  return errnoNames.get(Math.abs(errno)) ?? `E${Math.abs(errno)}`;
}

/** What kind of failure, so the service layer can choose a status. */
export type MmErrorKind =
  | "errno" // a kernel errno from a valid request
  | "invalid" // malformed request (bad alignment, absurd size)
  | "not-found" // unknown object id
  | "precondition" // state does not allow it (unpin of what is not held)
  | "kernel-bug" // the real kernel would BUG_ON / VM_BUG_ON here
  | "exhausted" // a configured limit
  | "denied"; // another tenant's object

export class MmError extends Error {
  readonly errno: number;
  readonly kind: MmErrorKind;
  constructor(errno: number, reason: string, kind: MmErrorKind = "errno") {
    super(`${errnoName(errno)}: ${reason}`);
    this.name = "MmError";
    this.errno = errno;
    this.kind = kind;
  }
  get errnoName(): string {
    return errnoName(this.errno);
  }
  get reason(): string {
    return this.message.slice(this.message.indexOf(": ") + 2);
  }
}

export function fail(errno: number, reason: string, kind: MmErrorKind = "errno"): never {
  throw new MmError(errno, reason, kind);
}

export function invalid(reason: string): never {
  throw new MmError(Errno.EINVAL, reason, "invalid");
}

export function notFound(what: string): never {
  throw new MmError(Errno.ENOENT, `${what} not found`, "not-found");
}

/** A condition on which the kernel would crash: reported loudly, never emulated. */
export function kernelBug(name: string, detail: string): never {
  throw new MmError(Errno.EINVAL, `kernel-bug:${name}: ${detail}`, "kernel-bug");
}
