/**
 * Server reflection as real clients see it: examples/python/reflect_call.py
 * (grpcio + protobuf descriptors, no generated stubs) lists the services,
 * resolves descriptors, and calls methods, including one whose request has a
 * proto3 `optional` field (dropped by proto-loader-derived descriptors).
 */
import path from "node:path";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { DaemonReflection, findDescriptorSet, healthFileDescriptor } from "../../src/server/reflection.js";
import { startDaemon, type TestDaemon } from "../helpers/daemon.js";
import { PYTHON, pythonHasGrpc, ROOT, run } from "../helpers/spawn.js";

const MMSIM_SERVICES = [
  "mmsim.v1.AddressSpaceService",
  "mmsim.v1.DeviceService",
  "mmsim.v1.FaultService",
  "mmsim.v1.InspectService",
  "mmsim.v1.MemoryService",
  "mmsim.v1.SessionService",
  "mmsim.v1.SystemService",
];
const SCRIPT = path.join(ROOT, "examples/python/reflect_call.py");
const hasGrpc = await pythonHasGrpc();
if (!hasGrpc) console.warn("ops-reflection: Python client tests SKIPPED: /usr/bin/python3 cannot import grpc (apt-get install python3-grpcio python3-protobuf)");

describe("server reflection", () => {
  let t: TestDaemon;
  const reflect = (...args: string[]) => run(PYTHON, [SCRIPT, "--addr", t.address, ...args]);

  beforeAll(async () => {
    t = await startDaemon();
  });
  afterAll(() => t.stop());

  it("serves the descriptor set the build wrote, plus grpc.health.v1", () => {
    expect(findDescriptorSet(), "dist/proto/mmsim.binpb is missing: run npm run build").toBeDefined();
    const r = t.daemon.ops.reflection;
    expect(r).toBeDefined();
    expect(r!.info.services).toEqual(expect.arrayContaining(["grpc.health.v1.Health", ...MMSIM_SERVICES]));
    // every mmsim service the daemon serves is described (and nothing else is declared)
    expect(r!.info.services.filter((s) => s.startsWith("mmsim.")).sort()).toEqual([...t.daemon.ops.appServices].sort());
    expect(r!.info.files).toContain("mmsim/v1/common.proto");
    expect(healthFileDescriptor().messageType.map((m) => m.name)).toEqual(["HealthCheckRequest", "HealthCheckResponse", "HealthListRequest", "HealthListResponse"]);
    expect(() => DaemonReflection.load("/nonexistent.binpb")).toThrow();
  });

  it.skipIf(!hasGrpc)("a Python client with no stubs lists the services and calls SystemService.GetVersion", async () => {
    const r = await reflect();
    expect(r.stderr).toBe("");
    expect(r.code).toBe(0);
    const services = r.stdout
      .split("\n")
      .filter((l) => l.startsWith("  "))
      .map((l) => l.trim());
    expect(services).toEqual([...t.daemon.ops.reflection!.info.services].sort());
    expect(services).toEqual(expect.arrayContaining(["grpc.health.v1.Health", ...MMSIM_SERVICES]));
    const line = r.stdout.split("\n").find((l) => l.startsWith("mmsim.v1.SystemService/GetVersion "));
    expect(line).toBeDefined();
    expect(JSON.parse(line!.slice(line!.indexOf("{")))).toEqual({ version: expect.stringMatching(/^\d+\.\d+\.\d+/), kernelBaseline: "6.18", api: "mmsim.v1" });
  });

  it.skipIf(!hasGrpc)("describes a service; sends proto3 optional fields and session metadata; calls grpc.health.v1", async () => {
    const sid = await t.newSession("py");
    const [desc, created, health] = await Promise.all([
      reflect("describe", "mmsim.v1.InspectService"),
      reflect("--session", String(sid), "call", "mmsim.v1.AddressSpaceService/CreateMm", '{"name": "from-python"}'),
      reflect("call", "grpc.health.v1.Health/Check", '{"service": "mmsim.v1.MemoryService"}'),
    ]);
    expect(desc.code).toBe(0);
    expect(desc.stdout).toContain("rpc CheckInvariants(mmsim.v1.CheckInvariantsRequest) returns (mmsim.v1.CheckInvariantsResponse)");
    expect(created.code, created.stderr).toBe(0);
    const mmId = Number(JSON.parse(created.stdout).mmId);
    expect(mmId).toBeGreaterThan(0);
    expect(JSON.parse(health.stdout)).toEqual({ status: "SERVING" });

    // mm_id is `optional`: present and unknown -> NOT_FOUND; present and known -> checked.
    const [missing, known] = await Promise.all([
      reflect("call", "mmsim.v1.InspectService/CheckInvariants", '{"mmId": 999}'),
      reflect("call", "mmsim.v1.InspectService/CheckInvariants", JSON.stringify({ mmId })),
    ]);
    expect(missing.code).toBe(1);
    expect(missing.stderr).toMatch(/^NOT_FOUND: ENOENT/);
    expect(known.code, known.stderr).toBe(0);
    expect(JSON.parse(known.stdout)).toMatchObject({ violations: [], mmsChecked: "1" });
  });
});
