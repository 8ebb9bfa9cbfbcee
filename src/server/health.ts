/**
 * grpc.health.v1 (Check, Watch, List) through the grpc-health-check package,
 * with one status per served mmsim.v1 service plus the overall status "".
 *
 * Health lifecycle (the daemon drives it, server.ts):
 *
 *   "starting"  every name NOT_SERVING (the server is not bound yet)
 *   "serving"   every name SERVING (after bind)
 *   "draining"  every name NOT_SERVING: the first step of shutdown, before
 *               any stream ends, so a Watch client sees NOT_SERVING and then
 *               its stream finishing with OK
 *
 * Unknown names get NOT_FOUND from Check and SERVICE_UNKNOWN from Watch, as
 * the health protocol says. Open Watch streams are tracked so that shutdown
 * can end them cleanly (grpc-health-check never ends them itself, and an
 * open stream would hold the server's graceful shutdown until the grace
 * period runs out).
 */
import type { Server, ServerWritableStream, ServiceDefinition, UntypedServiceImplementation } from "@grpc/grpc-js";
import { HealthImplementation, type ServingStatus } from "grpc-health-check";

export const HEALTH_SERVICE = "grpc.health.v1.Health";
/** The overall status of the daemon, as health checkers ask for it. */
export const OVERALL = "";

export type HealthState = "starting" | "serving" | "draining";

/** "/mmsim.v1.SessionService/CreateSession" -> "mmsim.v1.SessionService" */
export function serviceOfPath(path: string): string {
  return path.slice(1, path.lastIndexOf("/"));
}

/**
 * Record the full name of every service added to `server` from now on (in
 * the order added), so that health and metrics follow whatever services
 * other modules register.
 */
export function recordServices(server: Server): string[] {
  const names: string[] = [];
  const add = server.addService.bind(server);
  server.addService = (def: ServiceDefinition, impl: UntypedServiceImplementation) => {
    for (const m of Object.values(def)) {
      const name = serviceOfPath(m.path);
      if (!names.includes(name)) names.push(name);
    }
    add(def, impl);
  };
  return names;
}

/** Services whose status the daemon reports: its own, not the infrastructure ones. */
export function isAppService(name: string): boolean {
  return !name.startsWith("grpc.");
}

export class DaemonHealth {
  private readonly impl = new HealthImplementation();
  private readonly watches = new Set<ServerWritableStream<unknown, unknown>>();
  private names: string[] = [OVERALL];
  state: HealthState = "starting";

  constructor() {
    this.impl.setStatus(OVERALL, "NOT_SERVING");
  }

  /** Adds grpc.health.v1.Health to `server`, tracking Watch streams. */
  addToServer(server: Server): void {
    const watches = this.watches;
    this.impl.addToServer({
      addService: (def, impl) => {
        const watch = impl.watch as (call: ServerWritableStream<unknown, unknown>) => void;
        const tracked: UntypedServiceImplementation = {
          ...(impl as UntypedServiceImplementation),
          watch: (call: ServerWritableStream<unknown, unknown>) => {
            watches.add(call);
            call.on("cancelled", () => watches.delete(call));
            watch(call);
          },
        };
        server.addService(def as unknown as ServiceDefinition, tracked);
      },
    });
  }

  /** The names with a status: "" and each application service. */
  setServices(services: readonly string[]): void {
    this.names = [OVERALL, ...services.filter(isAppService)];
    this.apply(this.state === "serving" ? "SERVING" : "NOT_SERVING");
  }

  serving(): void {
    this.state = "serving";
    this.apply("SERVING");
  }

  /** Shutdown step 1: every name NOT_SERVING (Watch streams get the change). */
  draining(): void {
    this.state = "draining";
    this.apply("NOT_SERVING");
  }

  /** Shutdown step 2: end every open Watch stream with OK. */
  endWatches(): number {
    const n = this.watches.size;
    for (const call of this.watches) {
      try {
        call.end();
      } catch {
        // the peer is gone already
      }
    }
    this.watches.clear();
    return n;
  }

  get openWatches(): number {
    return this.watches.size;
  }

  private apply(status: ServingStatus): void {
    for (const name of this.names) this.impl.setStatus(name, status);
  }
}
