/**
 * The bench daemon: the product's server (createServer, every real service)
 * plus the bench-only NoopService and BenchService on the same grpc-js
 * Server, in a process of its own. Prints one JSON line {"address": ...} on
 * stdout when serving; exits on SIGTERM / SIGINT.
 *
 *   node --import tsx bench/lib/bench-daemon.ts [--ram 16G] [--thp always]
 */
import { DEFAULT_CONFIG, parseSize, type DaemonConfig, type ThpSetting } from "../../src/server/config.js";
import { createServer } from "../../src/server/server.js";
import { BENCH_SERVICE, benchImplementations, NOOP_SERVICE } from "./noop.js";

function arg(name: string): string | undefined {
  const i = process.argv.indexOf(name);
  return i >= 0 ? process.argv[i + 1] : undefined;
}

const config: DaemonConfig = {
  ...DEFAULT_CONFIG,
  listen: "127.0.0.1:0",
  logLevel: "warn",
  ramBytes: parseSize(arg("--ram") ?? "16G", "--ram"),
  thp: (arg("--thp") as ThpSetting | undefined) ?? "always",
};
// Keep the daemon's /metrics listener on (as by default) but on a free
// port, so that several bench daemons and test daemons can run at once.
Object.assign(config, { metricsListen: "127.0.0.1:0" });
const daemon = await createServer(config);
const impl = benchImplementations(daemon.kernel);
daemon.server.addService(NOOP_SERVICE, impl.noop);
daemon.server.addService(BENCH_SERVICE, impl.bench);
process.stdout.write(`${JSON.stringify({ address: daemon.address, pid: process.pid })}\n`);

const stop = (): void => {
  daemon.shutdown(500).then(
    () => process.exit(0),
    () => process.exit(1),
  );
};
process.once("SIGTERM", stop);
process.once("SIGINT", stop);
// The harness died without stopping us: do not outlive it.
process.on("disconnect", stop);
