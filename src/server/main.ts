#!/usr/bin/env node
/**
 * mmsimd entry point: load the configuration, serve, log one JSON
 * "listening" line, and shut down cleanly on SIGINT / SIGTERM: health turns
 * NOT_SERVING, streams end, calls drain; exit 0 once drained, or 1 after
 * the grace period (--shutdown-grace-ms) with a ShutdownGraceExpiredError
 * line. A second signal exits at once (status 1). SIGHUP re-reads the
 * token file. A refused configuration (e.g. a non-loopback address without
 * authentication) exits with status 2 and the reason on stderr.
 */
import { pino } from "pino";
import { ConfigError, loadConfig, USAGE } from "./config.js";
import { createServer } from "./server.js";
import { MMSIM_VERSION } from "../version.js";

async function main(): Promise<number> {
  let loaded;
  try {
    loaded = loadConfig(process.argv.slice(2), process.env);
  } catch (e) {
    if (e instanceof ConfigError) {
      process.stderr.write(`mmsimd: ${e.message}\n`);
      return 2;
    }
    throw e;
  }
  if (loaded.help) {
    process.stdout.write(`${USAGE}\n`);
    return 0;
  }
  const { config } = loaded;
  const log = pino({ level: config.logLevel, base: { pid: process.pid, name: "mmsimd" } }, pino.destination({ sync: true }));
  let daemon;
  try {
    daemon = await createServer(config, { logger: log });
  } catch (e) {
    if (e instanceof ConfigError) {
      process.stderr.write(`mmsimd: ${e.message}\n`);
      return 2;
    }
    log.fatal({ err: e }, "cannot start");
    return 1;
  }
  // SIGHUP re-reads --auth-token-file; a bad file keeps the tokens in force.
  if (config.authTokenFile !== "")
    process.on("SIGHUP", () => {
      try {
        daemon.reloadTokens();
      } catch (e) {
        log.error({ err: e }, "token file not reloaded; the previous tokens stay in force");
      }
    });
  log.info(
    {
      address: daemon.address,
      metrics: daemon.metricsAddress ?? "off",
      version: MMSIM_VERSION,
      ramBytes: config.ramBytes,
      thp: config.thp,
      services: daemon.ops.appServices,
      auth: daemon.auth !== undefined ? "on" : "off",
      tls: config.tlsCert === "" ? "off" : config.tlsClientCa !== "" ? "mutual" : "on",
      reflection: daemon.ops.reflection !== undefined,
    },
    "listening",
  );

  return new Promise<number>((resolve) => {
    const stop = (signal: NodeJS.Signals) => {
      log.info({ signal, graceMs: config.shutdownGraceMs }, "shutting down");
      const again = (second: NodeJS.Signals) => {
        log.warn({ signal: second }, "second signal: exiting without waiting");
        resolve(1);
      };
      process.once("SIGINT", again);
      process.once("SIGTERM", again);
      daemon.shutdown(config.shutdownGraceMs).then(
        () => {
          log.info({ forced: daemon.forcedShutdown }, "stopped");
          resolve(daemon.forcedShutdown ? 1 : 0);
        },
        (err: unknown) => {
          log.error({ err }, "shutdown failed");
          resolve(1);
        },
      );
    };
    process.once("SIGINT", stop);
    process.once("SIGTERM", stop);
  });
}

main().then(
  (code) => process.exit(code),
  (err: unknown) => {
    process.stderr.write(`mmsimd: ${err instanceof Error ? (err.stack ?? err.message) : String(err)}\n`);
    process.exit(1);
  },
);
