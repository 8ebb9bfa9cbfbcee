/**
 * Configuration of the operational settings: flags > environment > config
 * file > defaults, validation, --help, and the grpc-js server options they
 * produce.
 */
import { describe, expect, it } from "vitest";
import { ConfigError, DEFAULT_CONFIG, grpcServerOptions, loadConfig, USAGE } from "../../src/server/config.js";

const FILE = JSON.stringify({ metricsListen: "127.0.0.1:1111", shutdownGraceMs: 1111, keepaliveTimeMs: 1111, keepaliveTimeoutMs: 1111, listen: "127.0.0.1:1111" });
const read = () => FILE;

describe("ops configuration", () => {
  it("defaults", () => {
    const { config } = loadConfig([], {});
    expect(config).toMatchObject({ metricsListen: "127.0.0.1:9464", shutdownGraceMs: 5000, keepaliveTimeMs: 30_000, keepaliveTimeoutMs: 10_000 });
    expect(config).toEqual(DEFAULT_CONFIG);
  });

  it("flags > environment > config file > defaults, for every new setting", () => {
    const env = { MMSIM_CONFIG: "x.json", MMSIM_METRICS_LISTEN: "127.0.0.1:2222", MMSIM_SHUTDOWN_GRACE_MS: "2222", MMSIM_KEEPALIVE_TIME_MS: "2222" };
    const fileOnly = loadConfig([], { MMSIM_CONFIG: "x.json" }, read).config;
    expect(fileOnly).toMatchObject({ metricsListen: "127.0.0.1:1111", shutdownGraceMs: 1111, keepaliveTimeMs: 1111, keepaliveTimeoutMs: 1111 });
    const envOverFile = loadConfig([], env, read).config;
    expect(envOverFile).toMatchObject({ metricsListen: "127.0.0.1:2222", shutdownGraceMs: 2222, keepaliveTimeMs: 2222, keepaliveTimeoutMs: 1111 });
    const flags = loadConfig(["--metrics-listen", "off", "--shutdown-grace-ms=3333", "--keepalive-time-ms", "0", "--keepalive-timeout-ms", "3333"], env, read).config;
    expect(flags).toMatchObject({ metricsListen: "off", shutdownGraceMs: 3333, keepaliveTimeMs: 0, keepaliveTimeoutMs: 3333, listen: "127.0.0.1:1111" });
  });

  it("rejects bad values with the name of their source", () => {
    expect(() => loadConfig(["--metrics-listen", "nowhere"], {})).toThrow(ConfigError);
    expect(() => loadConfig(["--metrics-listen", "nowhere"], {})).toThrow(/--metrics-listen/);
    expect(() => loadConfig([], { MMSIM_SHUTDOWN_GRACE_MS: "soon" })).toThrow(/MMSIM_SHUTDOWN_GRACE_MS/);
    expect(() => loadConfig([], { MMSIM_CONFIG: "c.json" }, () => '{"metricsListen": 9464}')).toThrow(/metricsListen/);
    expect(loadConfig(["--metrics-listen", "[::1]:0"], {}).config.metricsListen).toBe("[::1]:0");
  });

  it("--help documents every new flag and its environment variable", () => {
    for (const s of ["--metrics-listen", "MMSIM_METRICS_LISTEN", "--shutdown-grace-ms", "MMSIM_SHUTDOWN_GRACE_MS", "--keepalive-time-ms", "MMSIM_KEEPALIVE_TIME_MS", "--keepalive-timeout-ms", "MMSIM_KEEPALIVE_TIMEOUT_MS"])
      expect(USAGE).toContain(s);
  });

  it("server options: keepalive for long-lived streams, pings from clients allowed", () => {
    const o = grpcServerOptions(DEFAULT_CONFIG);
    expect(o).toMatchObject({
      "grpc.keepalive_time_ms": 30_000,
      "grpc.keepalive_timeout_ms": 10_000,
      "grpc.keepalive_permit_without_calls": 1,
      "grpc.http2.min_ping_interval_without_data_ms": 10_000,
    });
    expect(grpcServerOptions({ ...DEFAULT_CONFIG, keepaliveTimeMs: 0 })).not.toHaveProperty("grpc.keepalive_time_ms");
  });
});
