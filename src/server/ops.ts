/**
 * The operational surface of the daemon, beside the mmsim.v1 services:
 * health (health.ts), reflection (reflection.ts) and metrics (metrics.ts),
 * and their part in the daemon lifecycle (server.ts):
 *
 *   create   (before the services are added) metrics exist, services added
 *            to the server are recorded
 *   install  (after the services, before bind) health and reflection added
 *   serving  (after bind) every health status SERVING, /metrics listening
 *   drain    (shutdown, first step) every health status NOT_SERVING, then
 *            Watch and reflection streams end with OK
 *   close    (after the gRPC server stopped) /metrics closed
 */
import type { Server } from "@grpc/grpc-js";
import type { Logger } from "pino";
import type { DaemonConfig } from "./config.js";
import { DaemonHealth, isAppService, recordServices } from "./health.js";
import type { Kernel } from "../mm/kernel.js";
import { DaemonMetrics, type MetricsListener, startMetricsListener } from "./metrics.js";
import { DaemonReflection } from "./reflection.js";
import type { SessionManager } from "./session.js";

/** Logged (and named) when running calls outlive the shutdown grace period. */
export class ShutdownGraceExpiredError extends Error {
  constructor(readonly graceMs: number) {
    super(`shutdown grace period of ${graceMs} ms expired; cancelling the remaining calls`);
    this.name = "ShutdownGraceExpiredError";
  }
}

export class DaemonOps {
  readonly health = new DaemonHealth();
  readonly metrics: DaemonMetrics | undefined;
  reflection: DaemonReflection | undefined;
  private listener: MetricsListener | undefined;
  private readonly services: string[];

  constructor(
    private readonly server: Server,
    kernel: Kernel,
    sessions: SessionManager,
    private readonly config: DaemonConfig,
    private readonly log: Logger,
  ) {
    this.services = recordServices(server);
    this.metrics = config.metricsListen === "off" ? undefined : new DaemonMetrics(kernel, sessions);
  }

  /** Add grpc.health.v1 and reflection (call after the mmsim services). */
  install(): void {
    this.health.addToServer(this.server);
    try {
      this.reflection = DaemonReflection.load();
      this.reflection.addToServer(this.server);
    } catch (e) {
      this.log.warn({ err: e }, "server reflection disabled");
    }
  }

  /** After bind: SERVING, and /metrics listening. */
  async serving(): Promise<void> {
    this.health.setServices(this.services);
    if (this.metrics !== undefined) this.listener = await startMetricsListener(this.metrics, this.config.metricsListen);
    this.health.serving();
  }

  /** Application services with a health status. */
  get appServices(): string[] {
    return this.services.filter(isAppService);
  }

  /** host:port of /metrics, or undefined if off. */
  get metricsAddress(): string | undefined {
    return this.listener?.address;
  }

  /** Shutdown, first step: NOT_SERVING everywhere, then the ops streams end. */
  drain(): void {
    this.health.draining();
    const watches = this.health.endWatches();
    const reflections = this.reflection?.endStreams() ?? 0;
    this.log.debug({ watches, reflections }, "health NOT_SERVING; health and reflection streams ended");
  }

  async close(): Promise<void> {
    await this.listener?.close();
    this.listener = undefined;
    this.metrics?.dispose();
  }
}
