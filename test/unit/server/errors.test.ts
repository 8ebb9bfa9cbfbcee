import { status } from "@grpc/grpc-js";
import { describe, expect, it } from "vitest";
import { Errno, fail, invalid, kernelBug, MmError, notFound } from "../../../src/mm/errors.js";
import { codeForErrno, ERRNO, StatusError, toStatus } from "../../../src/server/errors.js";

const catchIt = (f: () => never): unknown => {
  try {
    f();
  } catch (e) {
    return e;
  }
  throw new Error("did not throw");
};

describe("toStatus", () => {
  it("maps model error kinds to codes, with errno trailers and the <ERRNO>: <reason> message", () => {
    const cases: [unknown, status, string][] = [
      [catchIt(() => invalid("bad length")), status.INVALID_ARGUMENT, "EINVAL: bad length"],
      [catchIt(() => notFound("mm 3")), status.NOT_FOUND, "ENOENT: mm 3 not found"],
      [catchIt(() => fail(Errno.EBUSY, "in use", "precondition")), status.FAILED_PRECONDITION, "EBUSY: in use"],
      [catchIt(() => kernelBug("vmf_insert_pfn", "COW")), status.FAILED_PRECONDITION, "EINVAL: kernel-bug:vmf_insert_pfn: COW"],
      [catchIt(() => fail(Errno.ENOSPC, "full", "exhausted")), status.RESOURCE_EXHAUSTED, "ENOSPC: full"],
      [catchIt(() => fail(Errno.EPERM, "not yours", "denied")), status.PERMISSION_DENIED, "EPERM: not yours"],
    ];
    for (const [err, code, details] of cases) {
      const st = toStatus(err);
      expect({ code: st.code, details: st.details }).toEqual({ code, details });
      const errno = (err as MmError).errno;
      expect(st.metadata.get("mmsim-errno")).toEqual([String(errno)]);
      expect(st.metadata.get("mmsim-errno-name")).toEqual([details.slice(0, details.indexOf(":"))]);
    }
  });

  it("maps kind errno through the common.proto table", () => {
    const table: [number, status][] = [
      [ERRNO.EINVAL, status.INVALID_ARGUMENT],
      [ERRNO.EBADF, status.INVALID_ARGUMENT],
      [ERRNO.EOVERFLOW, status.INVALID_ARGUMENT],
      [ERRNO.ENOENT, status.NOT_FOUND],
      [ERRNO.ESRCH, status.NOT_FOUND],
      [ERRNO.EEXIST, status.ALREADY_EXISTS],
      [ERRNO.ENOMEM, status.RESOURCE_EXHAUSTED],
      [ERRNO.ENOSPC, status.RESOURCE_EXHAUSTED],
      [ERRNO.EPERM, status.PERMISSION_DENIED],
      [ERRNO.EACCES, status.PERMISSION_DENIED],
      [ERRNO.EFAULT, status.OUT_OF_RANGE],
      [ERRNO.EAGAIN, status.ABORTED],
      [ERRNO.EBUSY, status.ABORTED],
      [ERRNO.EINTR, status.ABORTED],
      [ERRNO.EOPNOTSUPP, status.FAILED_PRECONDITION],
      [ERRNO.EREMOTEIO, status.FAILED_PRECONDITION],
      [ERRNO.EHWPOISON, status.FAILED_PRECONDITION],
      [ERRNO.EMLINK, status.FAILED_PRECONDITION],
    ];
    for (const [errno, code] of table) {
      expect(codeForErrno(errno)).toBe(code);
      expect(toStatus(new MmError(errno, "x")).code).toBe(code);
    }
  });

  it("names ESRCH and EBADF, which the model's table lacks", () => {
    const st = toStatus(new MmError(ERRNO.ESRCH, "mm 4 has exited", "not-found"));
    expect(st.details).toBe("ESRCH: mm 4 has exited");
    expect(st.metadata.get("mmsim-errno-name")).toEqual(["ESRCH"]);
    expect(toStatus(new MmError(ERRNO.EBADF, "closed")).details).toBe("EBADF: closed");
  });

  it("honours an explicit code (StatusError)", () => {
    const st = toStatus(new StatusError(status.UNAUTHENTICATED, ERRNO.ESRCH, "session 9 does not exist or has ended"));
    expect(st.code).toBe(status.UNAUTHENTICATED);
    expect(st.details).toBe("ESRCH: session 9 does not exist or has ended");
    expect(st.metadata.get("mmsim-errno")).toEqual(["3"]);
  });

  it("turns anything else into INTERNAL without errno trailers", () => {
    const st = toStatus(new Error("refcount underflow on pfn 5"));
    expect(st).toMatchObject({ code: status.INTERNAL, details: "refcount underflow on pfn 5", internal: true, errno: 0 });
    expect(st.metadata.get("mmsim-errno")).toEqual([]);
    expect(toStatus("boom").details).toBe("boom");
  });
});
