/**
 * Prometheus metrics (prom-client) on a separate HTTP listener
 * (--metrics-listen, default 127.0.0.1:9464, "off" to disable).
 *
 * Per-RPC metrics follow go-grpc-prometheus: grpc_server_started_total,
 * grpc_server_handled_total{grpc_code} and the grpc_server_handling_seconds
 * histogram, labelled grpc_service / grpc_method / grpc_type. A call only
 * bumps plain numbers in its method's MethodStats (resolved once, when the
 * handler is built: handler.ts `rpcProbe`); labels are formatted at scrape
 * time. prom-client's own label API hashes the label set on every update,
 * which is why the RPC families are exported by small collectors here.
 *
 * Domain metrics are read from the simulated kernel at scrape time (vmstat
 * counters, zones, sessions, mms), except invalidations by event, which an
 * observer on Kernel.invalidationObservers counts as they start.
 */
import { createServer as createHttpServer, type Server as HttpServer } from "node:http";
import type { AddressInfo } from "node:net";
import { status } from "@grpc/grpc-js";
import { collectDefaultMetrics, Counter, Gauge, type Metric, Registry } from "prom-client";
import { MMU_NOTIFY_EVENT_NAMES, ZONE_NAMES } from "../mm/constants.js";
import type { Kernel } from "../mm/kernel.js";
import type { NotifierRange } from "../mm/mmu-notifier.js";
import type { RpcObserver, RpcProbe, RpcType } from "./handler.js";
import type { SessionManager } from "./session.js";

/** Upper bounds of grpc_server_handling_seconds, seconds (100 µs .. 10 s). */
export const HANDLING_BUCKETS = [0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10];
const NR_CODES = 17;
const CODE_NAMES: string[] = Array.from({ length: NR_CODES }, (_, c) => status[c] ?? String(c));

interface RpcLabels {
  grpc_service: string;
  grpc_method: string;
  grpc_type: RpcType;
  [key: string]: string;
}

/** Counts of one method; the probe a handler holds. */
class MethodStats implements RpcProbe {
  nStarted = 0;
  readonly handledByCode = new Float64Array(NR_CODES);
  /** per-bucket (not cumulative) counts; observations above the last bound only in count */
  readonly buckets = new Float64Array(HANDLING_BUCKETS.length);
  sum = 0;
  count = 0;

  constructor(readonly labels: RpcLabels) {}

  started(): void {
    this.nStarted++;
  }

  handled(code: status, seconds: number): void {
    this.handledByCode[code < NR_CODES ? code : status.UNKNOWN]++;
    this.sum += seconds;
    this.count++;
    let i = 0;
    while (i < HANDLING_BUCKETS.length && seconds > HANDLING_BUCKETS[i]!) i++;
    if (i < HANDLING_BUCKETS.length) this.buckets[i]++;
  }
}

interface MetricValue {
  value: number;
  labels: Record<string, string | number>;
  metricName?: string;
}

/** A scrape-time collector in the shape prom-client's Registry reads. */
class Collector {
  readonly aggregator = "sum";
  constructor(
    readonly name: string,
    readonly help: string,
    readonly type: "counter" | "histogram",
    private readonly values: () => MetricValue[],
  ) {}

  get(): Promise<{ name: string; help: string; type: string; values: MetricValue[]; aggregator: string }> {
    return Promise.resolve({ name: this.name, help: this.help, type: this.type, values: this.values(), aggregator: this.aggregator });
  }

  reset(): void {}
}

/** Split "Service/Method" (package mmsim.v1) or "pkg.Service/Method". */
export function rpcLabels(method: string, type: RpcType): RpcLabels {
  const slash = method.lastIndexOf("/");
  const svc = method.slice(method.startsWith("/") ? 1 : 0, slash);
  return { grpc_service: svc.includes(".") ? svc : `mmsim.v1.${svc}`, grpc_method: method.slice(slash + 1), grpc_type: type };
}

export class DaemonMetrics implements RpcObserver {
  readonly registry = new Registry();
  private readonly methods = new Map<string, MethodStats>();
  /** invalidations started, by MmuNotifyEvent */
  private readonly invalidations = new Float64Array(MMU_NOTIFY_EVENT_NAMES.length);
  private readonly observer = (r: NotifierRange, phase: "start" | "end"): void => {
    if (phase === "start") this.invalidations[r.event]++;
  };

  constructor(
    private readonly kernel: Kernel,
    private readonly sessions: SessionManager,
  ) {
    kernel.invalidationObservers.add(this.observer);
    collectDefaultMetrics({ register: this.registry });
    this.registerRpcFamilies();
    this.registerDomain();
  }

  probe(method: string, type: RpcType): RpcProbe {
    const key = `${method}|${type}`;
    let m = this.methods.get(key);
    if (m === undefined) {
      m = new MethodStats(rpcLabels(method, type));
      this.methods.set(key, m);
    }
    return m;
  }

  /** The text exposition of every metric. */
  scrape(): Promise<string> {
    return this.registry.metrics();
  }

  dispose(): void {
    this.kernel.invalidationObservers.delete(this.observer);
  }

  private register(c: Collector): void {
    this.registry.registerMetric(c as unknown as Metric);
  }

  private registerRpcFamilies(): void {
    const all = () => [...this.methods.values()];
    this.register(
      new Collector("grpc_server_started_total", "Total number of RPCs started on the server.", "counter", () =>
        all().map((m) => ({ value: m.nStarted, labels: m.labels })),
      ),
    );
    this.register(
      new Collector("grpc_server_handled_total", "Total number of RPCs completed on the server, regardless of success or failure.", "counter", () =>
        all().flatMap((m) => {
          const out: MetricValue[] = [];
          for (let c = 0; c < NR_CODES; c++)
            if (m.handledByCode[c]! > 0) out.push({ value: m.handledByCode[c]!, labels: { ...m.labels, grpc_code: CODE_NAMES[c]! } });
          return out;
        }),
      ),
    );
    const name = "grpc_server_handling_seconds";
    this.register(
      new Collector(name, "Histogram of response latency (seconds) of gRPC that had been application-level handled by the server.", "histogram", () =>
        all()
          .filter((m) => m.count > 0)
          .flatMap((m) => {
            const out: MetricValue[] = [];
            let acc = 0;
            for (let i = 0; i < HANDLING_BUCKETS.length; i++) {
              acc += m.buckets[i]!;
              out.push({ value: acc, labels: { ...m.labels, le: HANDLING_BUCKETS[i]! }, metricName: `${name}_bucket` });
            }
            out.push({ value: m.count, labels: { ...m.labels, le: "+Inf" }, metricName: `${name}_bucket` });
            out.push({ value: m.sum, labels: m.labels, metricName: `${name}_sum` });
            out.push({ value: m.count, labels: m.labels, metricName: `${name}_count` });
            return out;
          }),
      ),
    );
  }

  private registerDomain(): void {
    const k = this.kernel;
    const reg = [this.registry];
    /** A counter mirrored from a kernel count at scrape time. */
    const mirror = (name: string, help: string, read: () => number) =>
      new Counter({
        name,
        help,
        registers: reg,
        collect() {
          this.reset();
          this.inc(read());
        },
      });
    mirror("mmsim_foll_pin_acquired_total", "Pages pinned with FOLL_PIN (vmstat nr_foll_pin_acquired).", () => k.vmstat.nr_foll_pin_acquired);
    mirror("mmsim_foll_pin_released_total", "Pages unpinned (vmstat nr_foll_pin_released).", () => k.vmstat.nr_foll_pin_released);
    mirror("mmsim_page_faults_total", "Page faults handled (vmstat pgfault).", () => k.vmstat.pgfault);
    mirror("mmsim_major_page_faults_total", "Major page faults (vmstat pgmajfault).", () => k.vmstat.pgmajfault);
    mirror("mmsim_cow_faults_total", "Faults that copied a page (COW).", () => k.vmstat.cow_faults);
    mirror("mmsim_thp_fault_alloc_total", "Faults that allocated a THP (vmstat thp_fault_alloc).", () => k.vmstat.thp_fault_alloc);
    mirror("mmsim_thp_fault_fallback_total", "THP faults that fell back to small pages (vmstat thp_fault_fallback).", () => k.vmstat.thp_fault_fallback);
    const invalidations = this.invalidations;
    new Counter({
      name: "mmsim_mmu_invalidations_total",
      help: "MMU-notifier invalidations started (invalidate_range_start), by mmu_notifier_event.",
      labelNames: ["event"],
      registers: reg,
      collect() {
        this.reset();
        for (let e = 0; e < invalidations.length; e++) this.inc({ event: MMU_NOTIFY_EVENT_NAMES[e]! }, invalidations[e]!);
      },
    });
    new Counter({
      name: "mmsim_page_migrations_total",
      help: "Page migrations by result (vmstat pgmigrate_success / pgmigrate_fail).",
      labelNames: ["result"],
      registers: reg,
      collect() {
        this.reset();
        this.inc({ result: "success" }, k.vmstat.pgmigrate_success);
        this.inc({ result: "fail" }, k.vmstat.pgmigrate_fail);
      },
    });
    const sessions = this.sessions;
    new Gauge({
      name: "mmsim_sessions",
      help: "Live client sessions.",
      registers: reg,
      collect() {
        this.set(sessions.list().length);
      },
    });
    new Gauge({
      name: "mmsim_mms",
      help: "Live (not exited) mms.",
      registers: reg,
      collect() {
        let n = 0;
        for (const mm of k.mms.values()) if (!mm.exited) n++;
        this.set(n);
      },
    });
    new Gauge({
      name: "mmsim_page_tables",
      help: "Page-table pages allocated (PUD, PMD and PTE tables).",
      registers: reg,
      collect() {
        this.set(k.pt.live);
      },
    });
    new Gauge({
      name: "mmsim_zone_pages_in_use",
      help: "Pages of each RAM zone that are not free (4 KiB pages).",
      labelNames: ["zone"],
      registers: reg,
      collect() {
        for (const z of k.phys.zones) this.set({ zone: ZONE_NAMES[z.id] ?? String(z.id) }, z.endPfn - z.startPfn - z.freePages);
      },
    });
    new Gauge({
      name: "mmsim_zone_pages_free",
      help: "Free pages of each RAM zone (4 KiB pages).",
      labelNames: ["zone"],
      registers: reg,
      collect() {
        for (const z of k.phys.zones) this.set({ zone: ZONE_NAMES[z.id] ?? String(z.id) }, z.freePages);
      },
    });
  }
}

export interface MetricsListener {
  /** host:port the listener is bound to. */
  address: string;
  port: number;
  close(): Promise<void>;
}

/** "127.0.0.1:9464" / "[::1]:9464" -> host and port. */
function splitHostPort(listen: string): { host: string; port: number } {
  const i = listen.lastIndexOf(":");
  const host = listen.slice(0, i).replace(/^\[(.*)\]$/, "$1");
  return { host, port: Number(listen.slice(i + 1)) };
}

/** Serve GET /metrics on `listen` (port 0 picks a free port). */
export async function startMetricsListener(metrics: DaemonMetrics, listen: string): Promise<MetricsListener> {
  const server: HttpServer = createHttpServer((req, res) => {
    const path = (req.url ?? "/").split("?")[0];
    if (req.method !== "GET" && req.method !== "HEAD") {
      res.writeHead(405, { allow: "GET, HEAD" }).end();
      return;
    }
    if (path === "/metrics") {
      metrics.scrape().then(
        (body) => res.writeHead(200, { "content-type": metrics.registry.contentType }).end(req.method === "HEAD" ? undefined : body),
        (err: unknown) => res.writeHead(500, { "content-type": "text/plain" }).end(`scrape failed: ${String(err)}\n`),
      );
      return;
    }
    if (path === "/") {
      res.writeHead(200, { "content-type": "text/plain" }).end("mmsimd metrics: GET /metrics\n");
      return;
    }
    res.writeHead(404, { "content-type": "text/plain" }).end("not found; try /metrics\n");
  });
  const { host, port } = splitHostPort(listen);
  await new Promise<void>((resolve, reject) => {
    server.once("error", reject);
    server.listen(port, host, () => {
      server.off("error", reject);
      resolve();
    });
  });
  const bound = (server.address() as AddressInfo).port;
  const shownHost = host.includes(":") ? `[${host}]` : host;
  return {
    address: `${shownHost}:${bound}`,
    port: bound,
    close: () =>
      new Promise<void>((resolve) => {
        server.close(() => resolve());
        server.closeAllConnections();
      }),
  };
}
