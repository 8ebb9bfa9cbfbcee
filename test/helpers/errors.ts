/** Assertions on mmsim error statuses (common.proto "Errors"). */
import { status, type ServiceError } from "@grpc/grpc-js";
import { expect } from "vitest";

/**
 * Expect `promise` to reject with a gRPC error whose `mmsim-errno-name`
 * trailer is `errnoName` (and code `grpcCode` when given). Returns the error.
 */
export async function expectErrno(promise: Promise<unknown>, errnoName: string, grpcCode?: status): Promise<ServiceError> {
  let err: ServiceError | undefined;
  try {
    await promise;
  } catch (e) {
    err = e as ServiceError;
  }
  expect(err, `expected the call to fail with ${errnoName}`).toBeDefined();
  const e = err!;
  const name = e.metadata?.get("mmsim-errno-name")[0];
  expect({ code: status[e.code], errnoName: name, details: e.details }).toMatchObject({
    ...(grpcCode !== undefined ? { code: status[grpcCode] } : {}),
    errnoName,
  });
  expect(e.details.startsWith(`${errnoName}: `), `details "${e.details}" start with "${errnoName}: "`).toBe(true);
  expect(Number(e.metadata.get("mmsim-errno")[0])).toBeGreaterThan(0);
  return e;
}
