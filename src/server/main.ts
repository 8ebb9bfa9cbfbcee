#!/usr/bin/env node
/**
 * mmsimd entry point: load the configuration, serve, log one JSON
 * "listening" line, and shut down cleanly on SIGINT / SIGTERM (exit 0 once
 * calls have drained or the grace period has passed).
 */
import { pino } from "pino";
import { ConfigError, loadConfig, USAGE } from "./config.js";
import { createServer, DEFAULT_SHUTDOWN_GRACE_MS } from "./server.js";
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
    log.fatal({ err: e }, "cannot start");
    return 1;
  }
  log.info({ address: daemon.address, version: MMSIM_VERSION, ramBytes: config.ramBytes, thp: config.thp }, "listening");

  return new Promise<number>((resolve) => {
    const stop = (signal: NodeJS.Signals) => {
      log.info({ signal }, "shutting down");
      daemon.shutdown(DEFAULT_SHUTDOWN_GRACE_MS).then(
        () => {
          log.info("stopped");
          resolve(0);
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
