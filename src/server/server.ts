/**
 * Builds the daemon: a simulated kernel, the session manager, and a grpc-js
 * server with every mmsim.v1 service, bound to config.listen (port 0 picks a
 * free port).
 *
 * Daemon lifecycle: created -> serving (after bind) -> stopping (shutdown:
 * no new calls, every session ends with SESSION_CLOSING and its streams
 * finish OK, running calls get `graceMs` to finish) -> stopped (forced
 * after the grace period).
 */
import { Server, ServerCredentials } from "@grpc/grpc-js";
import { pino, type Logger } from "pino";
import { Kernel } from "../mm/kernel.js";
import { AddressSpaceServiceService } from "../gen/mmsim/v1/address_space.js";
import { DeviceServiceService } from "../gen/mmsim/v1/device.js";
import { FaultServiceService } from "../gen/mmsim/v1/fault.js";
import { InspectServiceService } from "../gen/mmsim/v1/inspect.js";
import { MemoryServiceService } from "../gen/mmsim/v1/memory.js";
import { SessionServiceService } from "../gen/mmsim/v1/session.js";
import { SystemServiceService } from "../gen/mmsim/v1/system.js";
import { addressSpaceService } from "./address-space-service.js";
import type { DaemonConfig } from "./config.js";
import { deviceService } from "./device-service.js";
import { faultService } from "./fault-service.js";
import { type ServiceDeps, withSafeDecode } from "./handler.js";
import { inspectService } from "./inspect-service.js";
import { memoryService } from "./memory-service.js";
import { Registry } from "./registry.js";
import { registerSessionResources } from "./session-resources.js";
import { SessionManager } from "./session.js";
import { sessionService } from "./session-service.js";
import { modelMemlock, systemService } from "./system-service.js";

export const DEFAULT_SHUTDOWN_GRACE_MS = 5000;

export interface Daemon {
  server: Server;
  kernel: Kernel;
  sessions: SessionManager;
  registry: Registry;
  log: Logger;
  /** Bound port (the real one when config.listen asked for port 0). */
  port: number;
  /** host:port clients can dial. */
  address: string;
  /** Stop accepting calls, end sessions and streams; force after graceMs. */
  shutdown(graceMs?: number): Promise<void>;
}

export interface CreateServerOptions {
  /** Defaults to a pino logger at config.logLevel on stdout. */
  logger?: Logger;
}

function bind(server: Server, listen: string): Promise<number> {
  return new Promise((resolve, reject) => {
    server.bindAsync(listen, ServerCredentials.createInsecure(), (err, port) => (err ? reject(err) : resolve(port)));
  });
}

export async function createServer(config: DaemonConfig, opts: CreateServerOptions = {}): Promise<Daemon> {
  const log = opts.logger ?? pino({ level: config.logLevel });
  const kernel = new Kernel({
    phys: { ramBytes: config.ramBytes, movableBytes: config.movableBytes, cmaBytes: config.cmaBytes },
    tunables: { thpEnabled: config.thp },
  });
  const registry = new Registry();
  kernel.tunables.memlockLimitBytes = modelMemlock(registry);
  const sessions = new SessionManager({ graceMs: config.sessionGraceMs, log });
  const d: ServiceDeps = { kernel, sessions, registry, log, config };
  registerSessionResources(d);

  const server = new Server();
  server.addService(withSafeDecode(SessionServiceService), sessionService(d));
  server.addService(withSafeDecode(AddressSpaceServiceService), addressSpaceService(d));
  server.addService(withSafeDecode(FaultServiceService), faultService(d));
  server.addService(withSafeDecode(MemoryServiceService), memoryService(d));
  server.addService(withSafeDecode(DeviceServiceService), deviceService(d));
  server.addService(withSafeDecode(InspectServiceService), inspectService(d));
  server.addService(withSafeDecode(SystemServiceService), systemService(d));

  const port = await bind(server, config.listen);
  const address = `${config.listen.slice(0, config.listen.lastIndexOf(":"))}:${port}`;

  let stopping: Promise<void> | null = null;
  const shutdown = (graceMs = DEFAULT_SHUTDOWN_GRACE_MS): Promise<void> => {
    if (stopping !== null) return stopping;
    stopping = new Promise<void>((resolve) => {
      const timer = setTimeout(() => {
        log.warn({ graceMs }, "shutdown grace period expired; cancelling remaining calls");
        server.forceShutdown();
        resolve();
      }, graceMs);
      server.tryShutdown(() => {
        clearTimeout(timer);
        resolve();
      });
      // Streams keep tryShutdown waiting: end every session now.
      sessions.shutdown();
    });
    return stopping;
  };

  return { server, kernel, sessions, registry, log, port, address, shutdown };
}
