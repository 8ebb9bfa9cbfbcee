/**
 * Builds the daemon: a simulated kernel, the session manager, and a grpc-js
 * server with every mmsim.v1 service, bound to config.listen (port 0 picks a
 * free port).
 *
 * Daemon lifecycle: created -> serving (after bind; health SERVING) ->
 * stopping (shutdown: health turns NOT_SERVING first, then health Watch and
 * reflection streams end, every session ends with SESSION_CLOSING and its
 * streams finish OK, no new calls, running calls get `graceMs` to finish) ->
 * stopped (forced after the grace period, with a ShutdownGraceExpiredError
 * logged). Health, reflection and metrics live in ops.ts.
 */
import { Server, type ServerCredentials, type ServerInterceptor } from "@grpc/grpc-js";
import { pino, type Logger } from "pino";
import { Kernel } from "../mm/kernel.js";
import { AddressSpaceServiceService } from "../gen/mmsim/v1/address_space.js";
import { DeviceServiceService } from "../gen/mmsim/v1/device.js";
import { FaultServiceService } from "../gen/mmsim/v1/fault.js";
import { InspectServiceService } from "../gen/mmsim/v1/inspect.js";
import { MemoryServiceService } from "../gen/mmsim/v1/memory.js";
import { SessionServiceService } from "../gen/mmsim/v1/session.js";
import { SystemServiceService } from "../gen/mmsim/v1/system.js";
import { DmirrorServiceService } from "../gen/mmsim/v1/dmirror.js";
import { HmmServiceService } from "../gen/mmsim/v1/hmm.js";
import { NotifierServiceService } from "../gen/mmsim/v1/notifier.js";
import { GupServiceService } from "../gen/mmsim/v1/gup.js";
import { gupService } from "./gup-service.js";
import { dmirrorService } from "./dmirror-service.js";
import { AdminServiceService } from "../gen/mmsim/v1/admin.js";
import { adminService } from "./admin-service.js";
import { hmmService } from "./hmm-service.js";
import { notifierHub, notifierService } from "./notifier-service.js";
import { addressSpaceService } from "./address-space-service.js";
import { Authenticator, authEnabled, authInterceptor, checkListenPolicy, loadTokens, serverCredentials, tokenFileWarning } from "./auth.js";
import { type DaemonConfig, grpcServerOptions } from "./config.js";
import { deviceService } from "./device-service.js";
import { faultService } from "./fault-service.js";
import { type RpcObserver, type ServiceDeps, withSafeDecode } from "./handler.js";
import { inspectService } from "./inspect-service.js";
import { memoryService } from "./memory-service.js";
import { DaemonOps, ShutdownGraceExpiredError } from "./ops.js";
import { Registry } from "./registry.js";
import { registerSessionResources } from "./session-resources.js";
import { SessionManager } from "./session.js";
import { methodAccess, Tenancy } from "./tenancy.js";
import { sessionService } from "./session-service.js";
import { modelMemlock, systemService } from "./system-service.js";
import { TraceServiceService } from "../gen/mmsim/v1/trace.js";
import { Tracer } from "./trace.js";
import { traceService } from "./trace-service.js";
import { SnapshotServiceService } from "../gen/mmsim/v1/snapshot.js";
import { restoreAtStartup, snapshotService } from "./snapshot-service.js";

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
  /** Health, reflection and metrics. */
  ops: DaemonOps;
  /** host:port of the /metrics listener; undefined when --metrics-listen off. */
  metricsAddress: string | undefined;
  /** true once a shutdown had to cancel calls after the grace period. */
  readonly forcedShutdown: boolean;
  /** Token check; undefined when authentication is off. */
  auth: Authenticator | undefined;
  /** Re-read the tokens (--auth-token-file) and return how many there are; throws ConfigError and keeps the old ones on a bad file. */
  reloadTokens(): number;
  /** Stop accepting calls, end sessions and streams; force after graceMs (default config.shutdownGraceMs). */
  shutdown(graceMs?: number): Promise<void>;
}

export interface CreateServerOptions {
  /** Defaults to a pino logger at config.logLevel on stdout. */
  logger?: Logger;
}

function bind(server: Server, listen: string, creds: ServerCredentials): Promise<number> {
  return new Promise((resolve, reject) => {
    server.bindAsync(listen, creds, (err, port) => (err ? reject(err) : resolve(port)));
  });
}

export async function createServer(config: DaemonConfig, opts: CreateServerOptions = {}): Promise<Daemon> {
  const log = opts.logger ?? pino({ level: config.logLevel });
  // Authentication first: a refused configuration builds nothing.
  const tokens = loadTokens(config);
  checkListenPolicy(config, tokens);
  const creds = serverCredentials(config);
  const auth = authEnabled(config, tokens) ? new Authenticator(tokens, config.tlsTenantFromCn) : undefined;
  const fileWarning = config.authTokenFile !== "" ? tokenFileWarning(config.authTokenFile) : undefined;
  if (fileWarning !== undefined) log.warn(fileWarning);
  const kernel = new Kernel({
    phys: { ramBytes: config.ramBytes, movableBytes: config.movableBytes, cmaBytes: config.cmaBytes },
    tunables: { thpEnabled: config.thp },
  });
  const registry = new Registry();
  kernel.tunables.memlockLimitBytes = modelMemlock(registry);
  const sessions = new SessionManager({ graceMs: config.sessionGraceMs, log });
  // Refused calls are counted by ops' metrics, created just below with the server.
  const interceptors: ServerInterceptor[] = auth !== undefined ? [authInterceptor(auth, methodAccess, log, (): RpcObserver | undefined => ops.metrics)] : [];
  const server = new Server({ ...grpcServerOptions(config), ...(interceptors.length > 0 ? { interceptors } : {}) });
  const ops = new DaemonOps(server, kernel, sessions, config, log);
  const d: ServiceDeps = { kernel, sessions, registry, log, config, rpc: ops.metrics, trace: new Tracer(config, log) };
  // A daemon restored from a snapshot at start-up does not start empty: its trace is not "from the start".
  if (config.trace) d.trace!.start(config.trace, !(config as Partial<Record<"restore", string>>).restore);
  if (auth !== undefined) d.tenancy = new Tenancy(kernel, registry, sessions, () => notifierHub(d));
  registerSessionResources(d);

  server.addService(withSafeDecode(SessionServiceService), sessionService(d));
  server.addService(withSafeDecode(AddressSpaceServiceService), addressSpaceService(d));
  server.addService(withSafeDecode(FaultServiceService), faultService(d));
  server.addService(withSafeDecode(MemoryServiceService), memoryService(d));
  server.addService(withSafeDecode(DeviceServiceService), deviceService(d));
  server.addService(withSafeDecode(InspectServiceService), inspectService(d));
  server.addService(withSafeDecode(SystemServiceService), systemService(d));
  server.addService(withSafeDecode(NotifierServiceService), notifierService(d));
  server.addService(withSafeDecode(HmmServiceService), hmmService(d));
  server.addService(withSafeDecode(DmirrorServiceService), dmirrorService(d));
  server.addService(withSafeDecode(AdminServiceService), adminService(d));
  server.addService(withSafeDecode(GupServiceService), gupService(d));
  server.addService(withSafeDecode(TraceServiceService), traceService(d));
  server.addService(withSafeDecode(SnapshotServiceService), snapshotService(d));

  // --restore: the snapshot replaces the empty state before anything is served.
  if (config.restore) {
    const r = await restoreAtStartup(d, config.restore);
    log.info({ file: config.restore, sessions: r.sessions.length, mms: r.summary?.mms, digest: r.summary?.stateDigest }, "restored at start-up");
  }

  ops.install();

  const port = await bind(server, config.listen, creds);
  const address = `${config.listen.slice(0, config.listen.lastIndexOf(":"))}:${port}`;
  try {
    await ops.serving();
  } catch (e) {
    server.forceShutdown();
    await ops.close();
    throw e;
  }

  let stopping: Promise<void> | null = null;
  let forced = false;
  const shutdown = (graceMs = config.shutdownGraceMs ?? DEFAULT_SHUTDOWN_GRACE_MS): Promise<void> => {
    if (stopping !== null) return stopping;
    // Health turns NOT_SERVING before anything ends.
    ops.drain();
    stopping = new Promise<void>((resolve) => {
      const timer = setTimeout(() => {
        forced = true;
        const err = new ShutdownGraceExpiredError(graceMs);
        log.error({ err, graceMs }, err.message);
        server.forceShutdown();
        resolve();
      }, graceMs);
      server.tryShutdown(() => {
        clearTimeout(timer);
        resolve();
      });
      // Streams keep tryShutdown waiting: end every session now.
      sessions.shutdown();
      notifierHub(d).shutdown(); // client mirror streams end with OK too
    })
      .then(() => ops.close())
      .then(() => (d.trace?.recording ? d.trace.stop().then(() => undefined) : undefined));
    return stopping;
  };

  return {
    server,
    kernel,
    sessions,
    registry,
    log,
    port,
    address,
    ops,
    metricsAddress: ops.metricsAddress,
    get forcedShutdown() {
      return forced;
    },
    auth,
    reloadTokens: () => {
      const next = loadTokens(config);
      if (auth === undefined) return 0;
      auth.setTokens(next);
      log.info({ tokens: next.length }, "tokens reloaded");
      return next.length;
    },
    shutdown,
  };
}
