#!/usr/bin/env node
/**
 * Container HEALTHCHECK: asks the daemon's grpc.health.v1 service for the
 * overall status. Exit 0 when SERVING, 1 otherwise (also when it cannot
 * connect within the deadline). The address is the first argument, or
 * MMSIM_HEALTH_ADDR, or MMSIM_LISTEN with a wildcard host replaced by
 * 127.0.0.1, or 127.0.0.1:50051. Health needs no token; a daemon serving
 * TLS is reached with MMSIM_TLS_CA (and MMSIM_CLIENT_CERT / MMSIM_CLIENT_KEY
 * for mutual TLS), as for the CLI.
 */
import { checkHealth } from "./commands/health.js";
import { channelCredentials } from "./conn.js";

function target(): string {
  const explicit = process.argv[2] ?? process.env.MMSIM_HEALTH_ADDR;
  if (explicit) return explicit;
  const listen = process.env.MMSIM_LISTEN || "127.0.0.1:50051";
  const i = listen.lastIndexOf(":");
  const host = listen.slice(0, i);
  const wildcard = host === "0.0.0.0" || host === "[::]" || host === "::" || host === "";
  return `${wildcard ? "127.0.0.1" : host}:${listen.slice(i + 1)}`;
}

const addr = target();
const env = process.env;
Promise.resolve()
  .then(() =>
    checkHealth(
      addr,
      "",
      2000,
      channelCredentials({ tlsCa: env.MMSIM_TLS_CA || undefined, tlsCert: env.MMSIM_CLIENT_CERT || undefined, tlsKey: env.MMSIM_CLIENT_KEY || undefined }),
    ),
  )
  .then(
    (st) => {
      process.stdout.write(`${addr}: ${st}\n`);
      process.exitCode = st === "SERVING" ? 0 : 1;
    },
    (err: unknown) => {
      process.stdout.write(`${addr}: ${err instanceof Error ? err.message : String(err)}\n`);
      process.exitCode = 1;
    },
  );
