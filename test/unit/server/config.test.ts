import { describe, expect, it } from "vitest";
import { ConfigError, DEFAULT_CONFIG, loadConfig, parseSize } from "../../../src/server/config.js";

const noFile = () => {
  throw new Error("no config file expected");
};

describe("parseSize", () => {
  it("accepts plain bytes and K/M/G/T suffixes (powers of 1024)", () => {
    expect(parseSize("4096", "x")).toBe(4096);
    expect(parseSize("512M", "x")).toBe(512 * 2 ** 20);
    expect(parseSize("16G", "x")).toBe(16 * 2 ** 30);
    expect(parseSize("16GiB", "x")).toBe(16 * 2 ** 30);
    expect(parseSize("1t", "x")).toBe(2 ** 40);
    expect(parseSize(65536, "x")).toBe(65536);
  });
  it("rejects garbage with a ConfigError naming the setting", () => {
    expect(() => parseSize("12Q", "--ram")).toThrow(/--ram: cannot parse size "12Q"/);
    expect(() => parseSize("-1", "--ram")).toThrow(ConfigError);
    expect(() => parseSize(1.5, "--ram")).toThrow(ConfigError);
  });
});

describe("loadConfig", () => {
  it("returns the embedded defaults with no input", () => {
    expect(loadConfig([], {}, noFile)).toEqual({ config: { ...DEFAULT_CONFIG }, help: false });
    expect(DEFAULT_CONFIG).toEqual({
      listen: "127.0.0.1:50051",
      ramBytes: 16 * 2 ** 30,
      movableBytes: 0,
      cmaBytes: 0,
      logLevel: "info",
      sessionGraceMs: 30000,
      thp: "always",
      metricsListen: "127.0.0.1:9464",
      shutdownGraceMs: 5000,
      keepaliveTimeMs: 30000,
      keepaliveTimeoutMs: 10000,
      mirrorDeadlineMs: 5000,
      faultInjection: false,
      maxMmsPerSession: 1024,
      maxVmasPerSession: 1_048_576,
      maxLongtermPagesPerSession: 2 ** 24,
      maxMirrorQueueDepth: 1024,
      maxPagesPerRequest: 2 ** 28,
      maxMessageBytes: 64 * 2 ** 20,
      maxConcurrentStreams: 1000,
      authTokens: [],
      authTokenFile: "",
      tlsCert: "",
      tlsKey: "",
      tlsClientCa: "",
      tlsTenantFromCn: false,
      insecureNoAuth: false,
      snapshotDir: "",
      restore: "",
      trace: "",
    });
  });

  it("applies flags > env > file > defaults", () => {
    const file = JSON.stringify({ listen: "0.0.0.0:7000", ram: "8G", cma: "64M", logLevel: "warn", thp: "never" });
    const { config } = loadConfig(
      ["--config", "/etc/mmsim.json", "--ram=4G", "--log-level", "debug"],
      { MMSIM_RAM: "2G", MMSIM_THP: "madvise", MMSIM_LISTEN: "127.0.0.1:9000" },
      (p) => {
        expect(p).toBe("/etc/mmsim.json");
        return file;
      },
    );
    expect(config).toEqual({
      listen: "127.0.0.1:9000", // env over file
      ramBytes: 4 * 2 ** 30, // flag over env over file
      movableBytes: 0, // default
      cmaBytes: 64 * 2 ** 20, // file
      logLevel: "debug", // flag over file
      sessionGraceMs: 30000,
      thp: "madvise", // env over file
      metricsListen: "127.0.0.1:9464",
      shutdownGraceMs: 5000,
      keepaliveTimeMs: 30000,
      keepaliveTimeoutMs: 10000,
      mirrorDeadlineMs: 5000,
      faultInjection: false,
      maxMmsPerSession: 1024,
      maxVmasPerSession: 1_048_576,
      maxLongtermPagesPerSession: 2 ** 24,
      maxMirrorQueueDepth: 1024,
      maxPagesPerRequest: 2 ** 28,
      maxMessageBytes: 64 * 2 ** 20,
      maxConcurrentStreams: 1000,
      authTokens: [],
      authTokenFile: "",
      tlsCert: "",
      tlsKey: "",
      tlsClientCa: "",
      tlsTenantFromCn: false,
      insecureNoAuth: false,
      snapshotDir: "",
      restore: "",
      trace: "",
    });
  });

  it("reads the config file named by MMSIM_CONFIG, flags still win", () => {
    const { config } = loadConfig(["--movable", "256M"], { MMSIM_CONFIG: "/c.json" }, () => '{"movableBytes": 134217728, "sessionGraceMs": 50}');
    expect(config.movableBytes).toBe(256 * 2 ** 20);
    expect(config.sessionGraceMs).toBe(50);
  });

  it("reports --help", () => {
    expect(loadConfig(["--help"], {}, noFile).help).toBe(true);
  });

  it("rejects unknown options, missing values, bad values and unknown file keys", () => {
    expect(() => loadConfig(["--bogus", "1"], {}, noFile)).toThrow(/unknown option --bogus/);
    expect(() => loadConfig(["--ram"], {}, noFile)).toThrow(/--ram needs a value/);
    expect(() => loadConfig(["--thp", "sometimes"], {}, noFile)).toThrow(/thp must be one of/);
    expect(() => loadConfig(["--log-level", "loud"], {}, noFile)).toThrow(/log level/);
    expect(() => loadConfig(["--listen", "nohost"], {}, noFile)).toThrow(/HOST:PORT/);
    expect(() => loadConfig([], { MMSIM_RAM: "lots" }, noFile)).toThrow(/MMSIM_RAM/);
    expect(() => loadConfig(["--config", "x"], {}, () => '{"ramm": 1}')).toThrow(/unknown key "ramm"/);
    expect(() => loadConfig(["--config", "x"], {}, () => "{")).toThrow(ConfigError);
  });

  it("accepts port 0 and IPv6 listen addresses", () => {
    expect(loadConfig(["--listen", "127.0.0.1:0"], {}, noFile).config.listen).toBe("127.0.0.1:0");
    expect(loadConfig(["--listen", "[::1]:50051"], {}, noFile).config.listen).toBe("[::1]:50051");
  });
});
