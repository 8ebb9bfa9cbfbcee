/** TraceService (trace.proto): start and stop trace recording at run time. */
import { status } from "@grpc/grpc-js";
import {
  type GetTraceStatusRequest,
  type GetTraceStatusResponse,
  type StartTraceRequest,
  type StartTraceResponse,
  type StopTraceRequest,
  type StopTraceResponse,
  type TraceServiceServer,
} from "../gen/mmsim/v1/trace.js";
import { ERRNO, StatusError } from "./errors.js";
import { type ServiceDeps, unary } from "./handler.js";
import { Tracer } from "./trace.js";

const SVC = "TraceService";

/** The daemon's tracer (created with the server; ServiceDeps.trace). */
export function traceService(d: ServiceDeps): TraceServiceServer {
  const tracer = d.trace ?? (d.trace = new Tracer(d.config, d.log));
  return {
    startTrace: unary<StartTraceRequest, StartTraceResponse>(d, `${SVC}/StartTrace`, "required", (req) => {
      if (tracer.recording || tracer.path !== "") throw new StatusError(status.ALREADY_EXISTS, ERRNO.EBUSY, `a trace is already being recorded to ${tracer.path}`);
      if (req.path === "") throw new StatusError(status.INVALID_ARGUMENT, ERRNO.EINVAL, "path is empty");
      try {
        return { firstSeq: tracer.start(req.path, false) };
      } catch (e) {
        throw new StatusError(status.FAILED_PRECONDITION, ERRNO.EACCES, `cannot open ${req.path}: ${(e as Error).message}`);
      }
    }),
    stopTrace: unary<StopTraceRequest, StopTraceResponse>(d, `${SVC}/StopTrace`, "required", async () => {
      if (!tracer.recording) throw new StatusError(status.FAILED_PRECONDITION, ERRNO.EINVAL, "no trace is being recorded");
      return tracer.stop();
    }),
    getTraceStatus: unary<GetTraceStatusRequest, GetTraceStatusResponse>(d, `${SVC}/GetTraceStatus`, "optional", () => ({
      recording: tracer.recording,
      path: tracer.path,
      records: tracer.records,
      pending: tracer.pending,
    })),
  };
}
