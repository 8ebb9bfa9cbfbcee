/**
 * grpc.health.v1 and the shutdown sequence: per-service SERVING, NOT_FOUND
 * for unknown names, Watch updates, NOT_SERVING before any stream ends,
 * open streams (health Watch, reflection, AttachSession) ending cleanly
 * within the grace period, and the named error when the grace expires.
 */
import { Writable } from "node:stream";
import { type Client, credentials, makeGenericClientConstructor, Metadata, type ServiceError, status, type StatusObject } from "@grpc/grpc-js";
import { service as healthService } from "grpc-health-check";
import { pino } from "pino";
import { afterEach, describe, expect, it } from "vitest";
import { DEFAULT_CONFIG } from "../../src/server/config.js";
import { ShutdownGraceExpiredError } from "../../src/server/ops.js";
import { createServer } from "../../src/server/server.js";
import { startDaemon, type TestDaemon } from "../helpers/daemon.js";

interface HealthClient extends Client {
  check(req: { service: string }, cb: (err: ServiceError | null, res?: { status: string }) => void): void;
  watch(req: { service: string }): NodeJS.EventEmitter & { cancel(): void };
}
const HealthClientCtor = makeGenericClientConstructor(healthService as never, "Health") as unknown as new (
  addr: string,
  creds: ReturnType<typeof credentials.createInsecure>,
) => HealthClient;

const MMSIM_SERVICES = [
  "mmsim.v1.SessionService",
  "mmsim.v1.AddressSpaceService",
  "mmsim.v1.FaultService",
  "mmsim.v1.MemoryService",
  "mmsim.v1.DeviceService",
  "mmsim.v1.InspectService",
  "mmsim.v1.SystemService",
];

function check(c: HealthClient, service: string): Promise<string> {
  return new Promise((resolve, reject) => c.check({ service }, (err, res) => (err ? reject(err) : resolve(res!.status))));
}

/** A Watch stream recording every status and the final gRPC status. */
function watch(c: HealthClient, service: string) {
  const statuses: string[] = [];
  const call = c.watch({ service });
  let onData: (() => void) | undefined;
  call.on("data", (m: { status: string }) => {
    statuses.push(m.status);
    onData?.();
  });
  call.on("error", () => {});
  const ended = new Promise<StatusObject>((resolve) => call.on("status", resolve));
  const next = (n: number) =>
    new Promise<void>((resolve) => {
      if (statuses.length >= n) return resolve();
      onData = () => statuses.length >= n && resolve();
    });
  return { statuses, ended, next, call };
}

describe("grpc.health.v1", () => {
  let t: TestDaemon;
  let health: HealthClient;
  afterEach(async () => {
    health?.close();
    await t?.stop();
  });

  it("reports SERVING for the daemon and each mmsim.v1 service, NOT_FOUND for others", async () => {
    t = await startDaemon();
    health = new HealthClientCtor(t.address, credentials.createInsecure());
    expect(await check(health, "")).toBe("SERVING");
    // every served application service has a status, whoever added it
    const served = t.daemon.ops.appServices;
    expect(served).toEqual(expect.arrayContaining(MMSIM_SERVICES));
    for (const s of served) {
      expect(s).toMatch(/^mmsim\.v1\./);
      expect(await check(health, s), s).toBe("SERVING");
    }
    const err = await check(health, "mmsim.v1.NoSuchService").catch((e: ServiceError) => e);
    expect((err as ServiceError).code).toBe(status.NOT_FOUND);
  });

  it("Watch sees SERVING, then NOT_SERVING before any stream ends, then ends OK; shutdown is not forced", async () => {
    t = await startDaemon();
    health = new HealthClientCtor(t.address, credentials.createInsecure());
    const overall = watch(health, "");
    const fault = watch(health, "mmsim.v1.FaultService");
    const unknown = watch(health, "mmsim.v1.Nope");
    await Promise.all([overall.next(1), fault.next(1), unknown.next(1)]);
    expect(overall.statuses).toEqual(["SERVING"]);
    expect(unknown.statuses).toEqual(["SERVICE_UNKNOWN"]);

    // An attached session stream and an idle reflection stream stay open too.
    const sid = await t.newSession("watcher");
    const attached = t.attach(sid);
    await attached.message(0);
    const reflection = t.raw.system.makeBidiStreamRequest(
      "/grpc.reflection.v1.ServerReflection/ServerReflectionInfo",
      (b: Buffer) => b,
      (b: Buffer) => b,
      new Metadata(),
    );
    reflection.on("error", () => {});
    const reflectionEnded = new Promise<StatusObject>((resolve) => reflection.on("status", resolve));
    // ServerReflectionRequest{list_services: "*"} (field 7), then wait for the answer: the stream is live.
    const answered = new Promise((resolve) => reflection.once("data", resolve));
    reflection.write(Buffer.from([0x3a, 0x01, 0x2a]));
    await answered;

    // What the daemon's health said at the moment sessions started ending.
    let healthWhenSessionsEnd: string | undefined;
    const sessions = t.daemon.sessions;
    const endSessions = sessions.shutdown.bind(sessions);
    sessions.shutdown = () => {
      healthWhenSessionsEnd = t.daemon.ops.health.state;
      endSessions();
    };

    const t0 = performance.now();
    await t.daemon.shutdown(5000);
    expect(performance.now() - t0).toBeLessThan(2000);
    expect(t.daemon.forcedShutdown).toBe(false);
    expect(healthWhenSessionsEnd).toBe("draining");

    expect((await overall.ended).code).toBe(status.OK);
    expect(overall.statuses).toEqual(["SERVING", "NOT_SERVING"]);
    expect((await fault.ended).code).toBe(status.OK);
    expect(fault.statuses).toEqual(["SERVING", "NOT_SERVING"]);
    expect((await unknown.ended).code).toBe(status.OK);
    expect((await attached.status).code).toBe(status.OK);
    expect(attached.messages.at(-1)?.notice?.message).toBe("daemon shutdown");
    expect((await reflectionEnded).code).toBe(status.OK);
  });

  it("logs ShutdownGraceExpiredError and forces the stop when calls outlive the grace period", async () => {
    const lines: { level: number; msg: string; err?: { type: string } }[] = [];
    const sink = new Writable({
      write(chunk: Buffer, _enc, cb) {
        for (const l of chunk.toString().split("\n").filter(Boolean)) lines.push(JSON.parse(l));
        cb();
      },
    });
    const daemon = await createServer({ ...DEFAULT_CONFIG, listen: "127.0.0.1:0", metricsListen: "off", ramBytes: 2 ** 30 }, { logger: pino({ level: "warn" }, sink) });
    // A call that never finishes: tryShutdown never reports completion.
    daemon.server.tryShutdown = () => {};
    const t0 = performance.now();
    await daemon.shutdown(150);
    expect(performance.now() - t0).toBeGreaterThanOrEqual(140);
    expect(daemon.forcedShutdown).toBe(true);
    const line = lines.find((l) => l.err?.type === "ShutdownGraceExpiredError");
    expect(line, JSON.stringify(lines)).toBeDefined();
    expect(line!.level).toBe(50);
    expect(line!.msg).toBe(new ShutdownGraceExpiredError(150).message);
  });
});
