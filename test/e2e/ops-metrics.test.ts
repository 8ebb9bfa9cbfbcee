/**
 * Prometheus metrics over HTTP: per-RPC counters and histogram with
 * go-grpc-prometheus labels, streams, and domain metrics read from the
 * kernel at scrape time.
 */
import { status } from "@grpc/grpc-js";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { FaultAccess } from "../../src/gen/mmsim/v1/fault.js";
import { rpcLabels } from "../../src/server/metrics.js";
import { startDaemon, type Clients, type TestDaemon } from "../helpers/daemon.js";

const MAP_PRIVATE_ANON = 0x22;

/** Every sample of the exposition: "name{labels}" -> value. */
async function scrape(addr: string): Promise<Map<string, number>> {
  const res = await fetch(`http://${addr}/metrics`);
  expect(res.status).toBe(200);
  expect(res.headers.get("content-type")).toContain("text/plain");
  const out = new Map<string, number>();
  for (const line of (await res.text()).split("\n")) {
    if (line === "" || line.startsWith("#")) continue;
    const i = line.lastIndexOf(" ");
    out.set(line.slice(0, i), Number(line.slice(i + 1)));
  }
  return out;
}

function rpc(name: string, svc: string, method: string, type = "unary", extra = ""): string {
  return `${name}{grpc_service="mmsim.v1.${svc}",grpc_method="${method}",grpc_type="${type}"${extra}}`;
}

describe("metrics", () => {
  let t: TestDaemon;
  let c: Clients;
  let addr: string;

  beforeAll(async () => {
    t = await startDaemon({ metricsListen: "127.0.0.1:0" });
    addr = t.daemon.metricsAddress!;
    c = t.withSession(await t.newSession("metrics"));
  });
  afterAll(() => t.stop());

  it("serves /metrics on its own port; other paths are 404", async () => {
    expect(addr).toMatch(/^127\.0\.0\.1:\d+$/);
    expect(addr).not.toBe(t.address);
    expect((await fetch(`http://${addr}/nope`)).status).toBe(404);
  });

  it("per-RPC counters and histogram move with calls, labelled by service, method, type and code", async () => {
    const before = await scrape(addr);
    expect(before.get(rpc("grpc_server_started_total", "AddressSpaceService", "CreateMm"))).toBe(0);
    const { mmId } = await c.addressSpace.createMm({ name: "m" });
    await c.addressSpace.createMm({ name: "m2" });
    await expect(c.addressSpace.munmap({ mmId, addr: 0x1001, length: 4096 })).rejects.toMatchObject({ code: status.INVALID_ARGUMENT });
    const after = await scrape(addr);
    expect(after.get(rpc("grpc_server_started_total", "AddressSpaceService", "CreateMm"))).toBe(2);
    expect(after.get(rpc("grpc_server_handled_total", "AddressSpaceService", "CreateMm", "unary", ',grpc_code="OK"'))).toBe(2);
    expect(after.get(rpc("grpc_server_handled_total", "AddressSpaceService", "Munmap", "unary", ',grpc_code="INVALID_ARGUMENT"'))).toBe(1);
    expect(after.get(rpc("grpc_server_handling_seconds_count", "AddressSpaceService", "CreateMm"))).toBe(2);
    expect(after.get(rpc("grpc_server_handling_seconds_bucket", "AddressSpaceService", "CreateMm", "unary", ',le="+Inf"'))).toBe(2);
    expect(after.get(rpc("grpc_server_handling_seconds_sum", "AddressSpaceService", "CreateMm"))).toBeGreaterThan(0);
    // buckets are cumulative
    const b1 = after.get(rpc("grpc_server_handling_seconds_bucket", "AddressSpaceService", "CreateMm", "unary", ',le="0.001"'))!;
    const b2 = after.get(rpc("grpc_server_handling_seconds_bucket", "AddressSpaceService", "CreateMm", "unary", ',le="10"'))!;
    expect(b1).toBeLessThanOrEqual(b2);
    expect(b2).toBe(2);
  });

  it("counts server streams: started, then handled CANCELLED when the client leaves", async () => {
    const sid = await t.newSession("stream");
    const s = t.attach(sid);
    await s.message(0);
    const open = await scrape(addr);
    expect(open.get(rpc("grpc_server_started_total", "SessionService", "AttachSession", "server_stream"))).toBe(1);
    s.cancel();
    await s.status;
    await expect.poll(async () => (await scrape(addr)).get(rpc("grpc_server_handled_total", "SessionService", "AttachSession", "server_stream", ',grpc_code="CANCELLED"'))).toBe(1);
  });

  it("domain metrics follow the kernel: faults, THP, invalidations by event, sessions, mms, zones", async () => {
    const before = await scrape(addr);
    const { mmId } = await c.addressSpace.createMm({ name: "dom" });
    const { addr: va } = await c.addressSpace.mmap({ mmId, addr: 0, length: 4 * 2 ** 20, prot: 3, flags: MAP_PRIVATE_ANON, fileId: 0, offset: 0 });
    await c.fault.handleMmFault({ mmId, addr: va, access: FaultAccess.FAULT_ACCESS_WRITE, flags: 0 });
    await c.addressSpace.munmap({ mmId, addr: va, length: 4 * 2 ** 20 });
    const after = await scrape(addr);
    const delta = (k: string) => after.get(k)! - (before.get(k) ?? 0);
    expect(delta("mmsim_page_faults_total")).toBeGreaterThanOrEqual(1);
    expect(delta("mmsim_thp_fault_alloc_total")).toBe(1);
    expect(delta('mmsim_mmu_invalidations_total{event="UNMAP"}')).toBeGreaterThanOrEqual(1);
    expect(after.get("mmsim_foll_pin_acquired_total")).toBe(0);
    expect(after.get('mmsim_page_migrations_total{result="success"}')).toBe(0);
    expect(after.get("mmsim_sessions")).toBe((await t.clients.session.listSessions({})).sessions.length);
    expect(after.get("mmsim_mms")).toBe((await t.clients.addressSpace.listMms({})).mms.filter((m) => !m.exited).length);
    expect(after.get('mmsim_zone_pages_in_use{zone="DMA32"}')).toBeGreaterThan(0);
    expect(after.get('mmsim_zone_pages_free{zone="DMA32"}')).toBeGreaterThan(0);
    expect(after.has("process_cpu_user_seconds_total")).toBe(true);
  });

  it("labels: Service/Method of mmsim.v1, or a full name", () => {
    expect(rpcLabels("FaultService/HandleMmFault", "unary")).toEqual({ grpc_service: "mmsim.v1.FaultService", grpc_method: "HandleMmFault", grpc_type: "unary" });
    expect(rpcLabels("/grpc.health.v1.Health/Watch", "server_stream")).toEqual({ grpc_service: "grpc.health.v1.Health", grpc_method: "Watch", grpc_type: "server_stream" });
  });

  it("--metrics-listen off: no listener", async () => {
    const off = await startDaemon({ metricsListen: "off" });
    expect(off.daemon.metricsAddress).toBeUndefined();
    expect(off.daemon.ops.metrics).toBeUndefined();
    await off.stop();
  });
});
