/**
 * MemoryService (memory.proto): the process reading and writing its own
 * memory; faults that end in a signal stop the copy and are reported in the
 * response, never as a gRPC error.
 */
import { readMemory, writeMemory } from "../mm/access.js";
import {
  type MemoryServiceServer,
  type ReadMemoryRequest,
  type ReadMemoryResponse,
  type WriteMemoryRequest,
  type WriteMemoryResponse,
} from "../gen/mmsim/v1/memory.js";
import { signalToProto } from "./convert.js";
import { invalidArgument } from "./errors.js";
import { runModelOp, type ServiceDeps, unary } from "./handler.js";
import { liveMm } from "./lookup.js";
import { atMost, objectId, u64 } from "./validate.js";

const SVC = "MemoryService";
/** Per-call limit (2 MiB), to stay under gRPC's default 4 MiB message size. */
export const MAX_ACCESS_BYTES = 2 * 2 ** 20;

export function memoryService(d: ServiceDeps): MemoryServiceServer {
  const k = d.kernel;
  return {
    readMemory: unary<ReadMemoryRequest, ReadMemoryResponse>(d, `${SVC}/ReadMemory`, "required", async (req) => {
      objectId(req.mmId, "mm_id");
      u64(req.addr, "addr");
      atMost(req.length, MAX_ACCESS_BYTES, "length");
      if (req.addr + req.length > Number.MAX_SAFE_INTEGER) invalidArgument("addr + length overflows");
      const r = await runModelOp(k, [req.mmId], "read", () => readMemory(k, liveMm(k, req.mmId), req.addr, req.length));
      const stopped = r.bytesDone < req.length;
      return {
        data: Buffer.from(r.data.buffer, r.data.byteOffset, r.bytesDone),
        bytesDone: r.bytesDone,
        signal: signalToProto(r.signal),
        siCode: r.siCode,
        faultAddr: stopped ? req.addr + r.bytesDone : 0,
        vmFault: r.vmFault >>> 0,
      };
    }),

    writeMemory: unary<WriteMemoryRequest, WriteMemoryResponse>(d, `${SVC}/WriteMemory`, "required", async (req) => {
      objectId(req.mmId, "mm_id");
      u64(req.addr, "addr");
      atMost(req.data.length, MAX_ACCESS_BYTES, "data length");
      if (req.addr + req.data.length > Number.MAX_SAFE_INTEGER) invalidArgument("addr + data length overflows");
      const data = new Uint8Array(req.data.buffer, req.data.byteOffset, req.data.byteLength);
      const r = await runModelOp(k, [req.mmId], "read", () => writeMemory(k, liveMm(k, req.mmId), req.addr, data));
      const stopped = r.bytesDone < data.length;
      return {
        bytesDone: r.bytesDone,
        signal: signalToProto(r.signal),
        siCode: r.siCode,
        faultAddr: stopped ? req.addr + r.bytesDone : 0,
        vmFault: r.vmFault >>> 0,
      };
    }),
  };
}
