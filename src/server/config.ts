/**
 * Daemon configuration: embedded defaults, overridden by a JSON file
 * (--config / MMSIM_CONFIG), then by environment variables (MMSIM_*), then
 * by command-line flags. `loadConfig` has no side effects beyond reading the
 * config file through the injected reader, so tests can call it directly.
 */
import { readFileSync } from "node:fs";

export type LogLevel = "fatal" | "error" | "warn" | "info" | "debug" | "trace" | "silent";
export type ThpSetting = "always" | "madvise" | "never";

export interface DaemonConfig {
  /** host:port to listen on; port 0 picks a free port. */
  listen: string;
  /** simulated RAM, bytes (multiple of 128 MiB, at least 256 MiB). */
  ramBytes: number;
  /** ZONE_MOVABLE at the top of RAM, bytes (multiple of 128 MiB). */
  movableBytes: number;
  /** CMA area, bytes (multiple of 4 MiB). */
  cmaBytes: number;
  logLevel: LogLevel;
  /** how long a non-persistent session may live without an attached stream. */
  sessionGraceMs: number;
  /** initial transparent_hugepage/enabled. */
  thp: ThpSetting;
  /** host:port of the Prometheus /metrics HTTP listener, or "off". */
  metricsListen: string;
  /** shutdown: how long running calls and streams get before they are cancelled. */
  shutdownGraceMs: number;
  /** server keepalive: ping each client connection after this much inactivity (0 = never). */
  keepaliveTimeMs: number;
  /** server keepalive: drop the connection if a ping is not answered within this. */
  keepaliveTimeoutMs: number;
  /** how long a client mirror may take to acknowledge an invalidation before it is declared dead. */
  mirrorDeadlineMs: number;
  /** AdminService may configure fault injection (tests only). */
  faultInjection: boolean;
  /** live mms one session may own (CreateMm, ForkMm); beyond: RESOURCE_EXHAUSTED. */
  maxMmsPerSession: number;
  /** VMAs over the live mms one session owns (Mmap, Munmap, Mprotect, Madvise, ForkMm); beyond: RESOURCE_EXHAUSTED. */
  maxVmasPerSession: number;
  /** FOLL_LONGTERM pages one session may hold pinned; beyond: RESOURCE_EXHAUSTED. */
  maxLongtermPagesPerSession: number;
  /** invalidations sent to one client mirror and not yet acknowledged; beyond: the mirror is dead. */
  maxMirrorQueueDepth: number;
  /** pages one request may name (nr_pages / npages / length in pages); beyond: RESOURCE_EXHAUSTED. */
  maxPagesPerRequest: number;
  /** largest request message accepted, bytes; beyond: RESOURCE_EXHAUSTED (grpc-js). */
  maxMessageBytes: number;
  /** concurrent HTTP/2 streams per client connection (0 = the HTTP/2 default). */
  maxConcurrentStreams: number;
  /** record a trace of every mutating call to this file from the start ("" = no trace). */
  trace: string;
  /** bearer tokens, each "TOKEN:TENANT[:ROLE]" (auth.ts parses them). */
  authTokens: string[];
  /** file of "TOKEN TENANT [ROLE]" lines ("" = none); re-read on SIGHUP. */
  authTokenFile: string;
  /** PEM server certificate chain and key: serve TLS ("" = plaintext). */
  tlsCert: string;
  tlsKey: string;
  /** PEM CA bundle: require and verify client certificates (mutual TLS). */
  tlsClientCa: string;
  /** a verified client certificate without a token authenticates as tenant = its CN, role user. */
  tlsTenantFromCn: boolean;
  /** allow a non-loopback listen address without any authentication. */
  insecureNoAuth: boolean;
  /** directory of SnapshotService files ("" = file requests refused). */
  snapshotDir: string;
  /** restore this snapshot file at start-up ("" = start empty); refuses to start if it is bad. */
  restore: string;
}

export const DEFAULT_CONFIG: Readonly<DaemonConfig> = Object.freeze({
  listen: "127.0.0.1:50051",
  ramBytes: 16 * 2 ** 30,
  movableBytes: 0,
  cmaBytes: 0,
  logLevel: "info",
  sessionGraceMs: 30_000,
  thp: "always",
  metricsListen: "127.0.0.1:9464",
  shutdownGraceMs: 5000,
  keepaliveTimeMs: 30_000,
  keepaliveTimeoutMs: 10_000,
  mirrorDeadlineMs: 5000,
  faultInjection: false,
  maxMmsPerSession: 1024,
  maxVmasPerSession: 1_048_576, // 16 mms at vm.max_map_count 65530
  maxLongtermPagesPerSession: 2 ** 24, // 64 GiB of 4 KiB pages
  maxMirrorQueueDepth: 1024,
  maxPagesPerRequest: 2 ** 28, // 1 TiB of 4 KiB pages
  maxMessageBytes: 64 * 2 ** 20,
  maxConcurrentStreams: 1000,
  trace: "",
  authTokens: [],
  authTokenFile: "",
  tlsCert: "",
  tlsKey: "",
  tlsClientCa: "",
  tlsTenantFromCn: false,
  insecureNoAuth: false,
  snapshotDir: "",
  restore: "",
});

const LOG_LEVELS: readonly LogLevel[] = ["fatal", "error", "warn", "info", "debug", "trace", "silent"];
const THP_SETTINGS: readonly ThpSetting[] = ["always", "madvise", "never"];

export class ConfigError extends Error {
  constructor(message: string) {
    super(message);
    this.name = "ConfigError";
  }
}

export const USAGE = `Usage: mmsimd [options]

Options (precedence: flags > environment > config file > defaults):
  --listen HOST:PORT     address to listen on (MMSIM_LISTEN; default 127.0.0.1:50051)
  --ram SIZE             simulated RAM, e.g. 16G, 512M, 4096 (MMSIM_RAM; default 16G)
  --movable SIZE         ZONE_MOVABLE size (MMSIM_MOVABLE; default 0)
  --cma SIZE             CMA area size (MMSIM_CMA; default 0)
  --log-level LEVEL      fatal|error|warn|info|debug|trace|silent (MMSIM_LOG_LEVEL; default info)
  --thp MODE             always|madvise|never (MMSIM_THP; default always)
  --session-grace-ms MS  attach grace period of non-persistent sessions (MMSIM_SESSION_GRACE_MS; default 30000)
  --metrics-listen ADDR  Prometheus /metrics HTTP address HOST:PORT, or "off"
                         (MMSIM_METRICS_LISTEN; default 127.0.0.1:9464)
  --shutdown-grace-ms MS on SIGTERM/SIGINT: health turns NOT_SERVING, streams end,
                         running calls get MS before they are cancelled
                         (MMSIM_SHUTDOWN_GRACE_MS; default 5000)
  --keepalive-time-ms MS ping idle client connections every MS, 0 = never; ends
                         streams of vanished clients (MMSIM_KEEPALIVE_TIME_MS; default 30000)
  --keepalive-timeout-ms MS  drop a connection whose ping is unanswered after MS
                         (MMSIM_KEEPALIVE_TIMEOUT_MS; default 10000)
  --mirror-deadline-ms MS  a client mirror that does not acknowledge an invalidation
                         within MS is declared dead (MMSIM_MIRROR_DEADLINE_MS; default 5000)
  --fault-injection BOOL AdminService may configure fault injection (tests only)
                         (MMSIM_FAULT_INJECTION; default false)
  --max-mms-per-session N  live mms one session may own (MMSIM_MAX_MMS_PER_SESSION; default 1024)
  --max-vmas-per-session N  VMAs over the live mms one session owns
                         (MMSIM_MAX_VMAS_PER_SESSION; default 1048576)
  --max-longterm-pages-per-session N  FOLL_LONGTERM pages one session may hold pinned
                         (MMSIM_MAX_LONGTERM_PAGES_PER_SESSION; default 16777216)
  --max-mirror-queue-depth N  unacknowledged invalidations one client mirror may have;
                         beyond, the mirror is dead (MMSIM_MAX_MIRROR_QUEUE_DEPTH; default 1024)
  --max-pages-per-request N  pages one request may name (MMSIM_MAX_PAGES_PER_REQUEST; default 268435456)
  --max-message-bytes SIZE  largest request message (MMSIM_MAX_MESSAGE_BYTES; default 64M)
  --max-concurrent-streams N  HTTP/2 streams per connection, 0 = unlimited
                         (MMSIM_MAX_CONCURRENT_STREAMS; default 1000)
  --trace FILE           record every mutating call to FILE from the start, for
                         \`mmsim replay\` (MMSIM_TRACE; default: no trace)
  --auth-token TOKEN:TENANT[:ROLE]  accept this bearer token for TENANT, ROLE admin or
                         user (default user); repeatable (MMSIM_AUTH_TOKENS, comma-separated)
  --auth-token-file FILE lines "TOKEN TENANT [ROLE]", # comments; re-read on SIGHUP
                         (MMSIM_AUTH_TOKEN_FILE). No token configured: authentication is off,
                         allowed only on a loopback --listen address
  --insecure-no-auth BOOL  allow a non-loopback --listen without authentication
                         (MMSIM_INSECURE_NO_AUTH; default false)
  --tls-cert FILE        PEM certificate chain: serve TLS (MMSIM_TLS_CERT; needs --tls-key)
  --tls-key FILE         PEM private key of --tls-cert (MMSIM_TLS_KEY)
  --tls-client-ca FILE   PEM CA bundle: mutual TLS, client certificates required and
                         verified (MMSIM_TLS_CLIENT_CA)
  --tls-tenant-from-cn BOOL  a verified client certificate without a token is tenant
                         <its CN>, role user (MMSIM_TLS_TENANT_FROM_CN; default false)
  --snapshot-dir DIR     directory of SnapshotService save/restore files
                         (MMSIM_SNAPSHOT_DIR; default: none, file requests refused)
  --restore FILE         restore this snapshot at start-up; a bad file stops the
                         daemon with exit status 1 (MMSIM_RESTORE; default: none)
  --config FILE          JSON file with any of: listen, ram, movable, cma (sizes),
                         logLevel, thp, sessionGraceMs, metricsListen,
                         shutdownGraceMs, keepaliveTimeMs, keepaliveTimeoutMs,
                         mirrorDeadlineMs, faultInjection, maxMmsPerSession,
                         maxVmasPerSession, maxLongtermPagesPerSession,
                         maxMirrorQueueDepth, maxPagesPerRequest, maxMessageBytes, maxConcurrentStreams,
                         trace, authTokens (array), authTokenFile, tlsCert, tlsKey,
                         tlsClientCa, tlsTenantFromCn, insecureNoAuth, snapshotDir,
                         restore (MMSIM_CONFIG)
  --help                 print this help and exit
SIZE: a byte count with an optional suffix K, M, G or T (powers of 1024; "KiB", "MB" etc. accepted).`;

const SIZE_RE = /^(\d+)\s*([kmgt]?)(i?b)?$/i;
const SIZE_SHIFT: Record<string, number> = { "": 0, k: 10, m: 20, g: 30, t: 40 };

/** "16G" -> 17179869184; plain numbers are bytes. */
export function parseSize(value: string | number, what: string): number {
  if (typeof value === "number") {
    if (!Number.isSafeInteger(value) || value < 0) throw new ConfigError(`${what}: ${value} is not a byte count`);
    return value;
  }
  const m = SIZE_RE.exec(value.trim());
  if (m === null) throw new ConfigError(`${what}: cannot parse size "${value}" (examples: 16G, 512M, 4096)`);
  const n = Number(m[1]) * 2 ** SIZE_SHIFT[m[2]!.toLowerCase()]!;
  if (!Number.isSafeInteger(n)) throw new ConfigError(`${what}: size "${value}" is too large`);
  return n;
}

function parseLogLevel(value: unknown, what: string): LogLevel {
  if (typeof value === "string" && (LOG_LEVELS as readonly string[]).includes(value)) return value as LogLevel;
  throw new ConfigError(`${what}: log level must be one of ${LOG_LEVELS.join(", ")} (got ${JSON.stringify(value)})`);
}

function parseThp(value: unknown, what: string): ThpSetting {
  if (typeof value === "string" && (THP_SETTINGS as readonly string[]).includes(value)) return value as ThpSetting;
  throw new ConfigError(`${what}: thp must be one of ${THP_SETTINGS.join(", ")} (got ${JSON.stringify(value)})`);
}

function parseMs(value: unknown, what: string): number {
  const n = typeof value === "string" && /^\d+$/.test(value.trim()) ? Number(value) : value;
  if (typeof n !== "number" || !Number.isSafeInteger(n) || n < 0) throw new ConfigError(`${what}: ${JSON.stringify(value)} is not a number of milliseconds`);
  return n;
}

function parseBool(value: unknown, what: string): boolean {
  if (value === true || value === "true" || value === "1") return true;
  if (value === false || value === "false" || value === "0") return false;
  throw new ConfigError(`${what}: expected true or false (got ${JSON.stringify(value)})`);
}

function parseCount(value: unknown, what: string, min: number): number {
  const n = typeof value === "string" && /^\d+$/.test(value.trim()) ? Number(value) : value;
  if (typeof n !== "number" || !Number.isSafeInteger(n) || n < min) throw new ConfigError(`${what}: ${JSON.stringify(value)} is not an integer >= ${min}`);
  return n;
}

function parseListen(value: unknown, what: string): string {
  if (typeof value !== "string" || !/^(\[[0-9a-fA-F:.]+\]|[^:\s]+|[0-9a-fA-F:]+):\d{1,5}$/.test(value))
    throw new ConfigError(`${what}: listen address must be HOST:PORT (got ${JSON.stringify(value)})`);
  const port = Number(value.slice(value.lastIndexOf(":") + 1));
  if (port > 65535) throw new ConfigError(`${what}: port ${port} out of range`);
  return value;
}

function parseFileName(value: unknown, what: string): string {
  if (typeof value !== "string") throw new ConfigError(`${what}: expected a file name (got ${JSON.stringify(value)})`);
  return value;
}

/** Token specs: repeated flags, a comma-separated env value, or a config-file array. */
function parseTokenSpecs(value: unknown, what: string): string[] {
  const list = Array.isArray(value) ? value : typeof value === "string" ? value.split(",") : undefined;
  if (list === undefined || list.some((v) => typeof v !== "string"))
    throw new ConfigError(`${what}: expected TOKEN:TENANT[:ROLE] strings (got ${JSON.stringify(value)})`);
  return (list as string[]).map((v) => v.trim()).filter((v) => v !== "");
}

function parseMetricsListen(value: unknown, what: string): string {
  return value === "off" ? "off" : parseListen(value, what);
}

type Setter = (c: DaemonConfig, v: unknown, what: string) => void;

/** One entry per setting: flag name, env name, config-file keys, parser. */
const SETTINGS: { flag: string; env: string; keys: string[]; set: Setter }[] = [
  { flag: "listen", env: "MMSIM_LISTEN", keys: ["listen"], set: (c, v, w) => (c.listen = parseListen(v, w)) },
  { flag: "ram", env: "MMSIM_RAM", keys: ["ram", "ramBytes"], set: (c, v, w) => (c.ramBytes = parseSize(v as string | number, w)) },
  {
    flag: "movable",
    env: "MMSIM_MOVABLE",
    keys: ["movable", "movableBytes"],
    set: (c, v, w) => (c.movableBytes = parseSize(v as string | number, w)),
  },
  { flag: "cma", env: "MMSIM_CMA", keys: ["cma", "cmaBytes"], set: (c, v, w) => (c.cmaBytes = parseSize(v as string | number, w)) },
  { flag: "log-level", env: "MMSIM_LOG_LEVEL", keys: ["logLevel"], set: (c, v, w) => (c.logLevel = parseLogLevel(v, w)) },
  { flag: "thp", env: "MMSIM_THP", keys: ["thp"], set: (c, v, w) => (c.thp = parseThp(v, w)) },
  {
    flag: "session-grace-ms",
    env: "MMSIM_SESSION_GRACE_MS",
    keys: ["sessionGraceMs"],
    set: (c, v, w) => (c.sessionGraceMs = parseMs(v, w)),
  },
  {
    flag: "metrics-listen",
    env: "MMSIM_METRICS_LISTEN",
    keys: ["metricsListen"],
    set: (c, v, w) => (c.metricsListen = parseMetricsListen(v, w)),
  },
  {
    flag: "shutdown-grace-ms",
    env: "MMSIM_SHUTDOWN_GRACE_MS",
    keys: ["shutdownGraceMs"],
    set: (c, v, w) => (c.shutdownGraceMs = parseMs(v, w)),
  },
  {
    flag: "keepalive-time-ms",
    env: "MMSIM_KEEPALIVE_TIME_MS",
    keys: ["keepaliveTimeMs"],
    set: (c, v, w) => (c.keepaliveTimeMs = parseMs(v, w)),
  },
  {
    flag: "keepalive-timeout-ms",
    env: "MMSIM_KEEPALIVE_TIMEOUT_MS",
    keys: ["keepaliveTimeoutMs"],
    set: (c, v, w) => (c.keepaliveTimeoutMs = parseMs(v, w)),
  },
  {
    flag: "mirror-deadline-ms",
    env: "MMSIM_MIRROR_DEADLINE_MS",
    keys: ["mirrorDeadlineMs"],
    set: (c, v, w) => (c.mirrorDeadlineMs = parseMs(v, w)),
  },
  { flag: "fault-injection", env: "MMSIM_FAULT_INJECTION", keys: ["faultInjection"], set: (c, v, w) => (c.faultInjection = parseBool(v, w)) },
  { flag: "max-mms-per-session", env: "MMSIM_MAX_MMS_PER_SESSION", keys: ["maxMmsPerSession"], set: (c, v, w) => (c.maxMmsPerSession = parseCount(v, w, 1)) },
  { flag: "max-vmas-per-session", env: "MMSIM_MAX_VMAS_PER_SESSION", keys: ["maxVmasPerSession"], set: (c, v, w) => (c.maxVmasPerSession = parseCount(v, w, 1)) },
  {
    flag: "max-longterm-pages-per-session",
    env: "MMSIM_MAX_LONGTERM_PAGES_PER_SESSION",
    keys: ["maxLongtermPagesPerSession"],
    set: (c, v, w) => (c.maxLongtermPagesPerSession = parseCount(v, w, 1)),
  },
  { flag: "max-mirror-queue-depth", env: "MMSIM_MAX_MIRROR_QUEUE_DEPTH", keys: ["maxMirrorQueueDepth"], set: (c, v, w) => (c.maxMirrorQueueDepth = parseCount(v, w, 1)) },
  { flag: "max-pages-per-request", env: "MMSIM_MAX_PAGES_PER_REQUEST", keys: ["maxPagesPerRequest"], set: (c, v, w) => (c.maxPagesPerRequest = parseCount(v, w, 1)) },
  {
    flag: "max-message-bytes",
    env: "MMSIM_MAX_MESSAGE_BYTES",
    keys: ["maxMessageBytes"],
    set: (c, v, w) => {
      c.maxMessageBytes = parseSize(v as string | number, w);
      if (c.maxMessageBytes < 4096 || c.maxMessageBytes > 2 ** 31 - 1) throw new ConfigError(`${w}: must be in [4K, 2G)`);
    },
  },
  {
    flag: "max-concurrent-streams",
    env: "MMSIM_MAX_CONCURRENT_STREAMS",
    keys: ["maxConcurrentStreams"],
    set: (c, v, w) => (c.maxConcurrentStreams = parseCount(v, w, 0)),
  },
  {
    flag: "trace",
    env: "MMSIM_TRACE",
    keys: ["trace"],
    set: (c, v, w) => {
      if (typeof v !== "string") throw new ConfigError(`${w}: expected a file name (got ${JSON.stringify(v)})`);
      c.trace = v;
    },
  },
  { flag: "auth-token", env: "MMSIM_AUTH_TOKENS", keys: ["authTokens"], set: (c, v, w) => (c.authTokens = parseTokenSpecs(v, w)) },
  { flag: "auth-token-file", env: "MMSIM_AUTH_TOKEN_FILE", keys: ["authTokenFile"], set: (c, v, w) => (c.authTokenFile = parseFileName(v, w)) },
  { flag: "insecure-no-auth", env: "MMSIM_INSECURE_NO_AUTH", keys: ["insecureNoAuth"], set: (c, v, w) => (c.insecureNoAuth = parseBool(v, w)) },
  { flag: "tls-cert", env: "MMSIM_TLS_CERT", keys: ["tlsCert"], set: (c, v, w) => (c.tlsCert = parseFileName(v, w)) },
  { flag: "tls-key", env: "MMSIM_TLS_KEY", keys: ["tlsKey"], set: (c, v, w) => (c.tlsKey = parseFileName(v, w)) },
  { flag: "tls-client-ca", env: "MMSIM_TLS_CLIENT_CA", keys: ["tlsClientCa"], set: (c, v, w) => (c.tlsClientCa = parseFileName(v, w)) },
  { flag: "tls-tenant-from-cn", env: "MMSIM_TLS_TENANT_FROM_CN", keys: ["tlsTenantFromCn"], set: (c, v, w) => (c.tlsTenantFromCn = parseBool(v, w)) },
  { flag: "snapshot-dir", env: "MMSIM_SNAPSHOT_DIR", keys: ["snapshotDir"], set: (c, v, w) => (c.snapshotDir = parseFileName(v, w)) },
  { flag: "restore", env: "MMSIM_RESTORE", keys: ["restore"], set: (c, v, w) => (c.restore = parseFileName(v, w)) },
];

/** Flags that may be given more than once (their values are joined with ","). */
const REPEATABLE = new Set(["auth-token"]);
/** Boolean flags that mean "true" when given without a value. */
const VALUE_OPTIONAL = new Set(["insecure-no-auth", "tls-tenant-from-cn"]);

export interface LoadedConfig {
  config: DaemonConfig;
  /** --help was given: print USAGE and exit 0. */
  help: boolean;
}

/**
 * Build the configuration from argv (without the node/script prefix) and an
 * environment. Throws ConfigError with a message fit for the user.
 */
export function loadConfig(
  argv: readonly string[],
  env: Readonly<Record<string, string | undefined>>,
  readFile: (path: string) => string = (p) => readFileSync(p, "utf8"),
): LoadedConfig {
  const flags = new Map<string, string>();
  let help = false;
  let configFile = env.MMSIM_CONFIG !== undefined && env.MMSIM_CONFIG !== "" ? env.MMSIM_CONFIG : undefined;
  const known = new Set([...SETTINGS.map((s) => s.flag), "config"]);
  for (let i = 0; i < argv.length; i++) {
    const arg = argv[i]!;
    if (arg === "--help" || arg === "-h") {
      help = true;
      continue;
    }
    if (!arg.startsWith("--")) throw new ConfigError(`unexpected argument "${arg}" (see --help)`);
    const eq = arg.indexOf("=");
    const name = eq >= 0 ? arg.slice(2, eq) : arg.slice(2);
    if (!known.has(name)) throw new ConfigError(`unknown option --${name} (see --help)`);
    let value: string;
    if (eq >= 0) value = arg.slice(eq + 1);
    else if (VALUE_OPTIONAL.has(name) && (argv[i + 1] === undefined || argv[i + 1]!.startsWith("--"))) value = "true";
    else {
      const next = argv[i + 1];
      if (next === undefined) throw new ConfigError(`option --${name} needs a value`);
      value = next;
      i++;
    }
    if (name === "config") configFile = value;
    else if (REPEATABLE.has(name) && flags.has(name)) flags.set(name, `${flags.get(name)!},${value}`);
    else flags.set(name, value);
  }

  const config: DaemonConfig = { ...DEFAULT_CONFIG };
  if (configFile !== undefined) {
    let parsed: unknown;
    try {
      parsed = JSON.parse(readFile(configFile));
    } catch (e) {
      throw new ConfigError(`config file ${configFile}: ${e instanceof Error ? e.message : String(e)}`);
    }
    if (typeof parsed !== "object" || parsed === null || Array.isArray(parsed))
      throw new ConfigError(`config file ${configFile}: expected a JSON object`);
    const keys = new Map(SETTINGS.flatMap((s) => s.keys.map((k) => [k, s] as const)));
    for (const [key, value] of Object.entries(parsed)) {
      const s = keys.get(key);
      if (s === undefined) throw new ConfigError(`config file ${configFile}: unknown key "${key}"`);
      s.set(config, value, `config file ${configFile}: ${key}`);
    }
  }
  for (const s of SETTINGS) {
    const v = env[s.env];
    if (v !== undefined && v !== "") s.set(config, v, s.env);
  }
  for (const s of SETTINGS) {
    const v = flags.get(s.flag);
    if (v !== undefined) s.set(config, v, `--${s.flag}`);
  }
  return { config, help };
}

/**
 * grpc-js server options. Keepalive pings let the daemon notice a vanished
 * client (a driver killed with an AttachSession or notifier stream open) and
 * end its streams, so non-persistent sessions release what they hold.
 * grpc-js servers accept client pings at any rate (there is no
 * too_many_pings policing), so clients may use keepalive_time_ms down to
 * MIN_CLIENT_PING_INTERVAL_MS with keepalive_permit_without_calls; the
 * C-core names are set too so the intent travels with the options.
 */
export const MIN_CLIENT_PING_INTERVAL_MS = 10_000;

export function grpcServerOptions(c: DaemonConfig): Record<string, number> {
  const o: Record<string, number> = {
    "grpc.keepalive_permit_without_calls": 1,
    "grpc.http2.min_ping_interval_without_data_ms": MIN_CLIENT_PING_INTERVAL_MS,
    "grpc.http2.min_time_between_pings_ms": MIN_CLIENT_PING_INTERVAL_MS,
    "grpc.http2.max_pings_without_data": 0,
    // Device mirror commands carry up to 1 GiB/256 of data per call (4 MiB
    // buffers of hmm-tests and more): grpc-js's 4 MiB default is too small.
    "grpc.max_receive_message_length": c.maxMessageBytes ?? 64 * 2 ** 20,
  };
  if (c.maxConcurrentStreams > 0) o["grpc.max_concurrent_streams"] = c.maxConcurrentStreams;
  if (c.keepaliveTimeMs > 0) {
    o["grpc.keepalive_time_ms"] = c.keepaliveTimeMs;
    o["grpc.keepalive_timeout_ms"] = c.keepaliveTimeoutMs;
  }
  return o;
}
