/** What the results were measured on (printed with every table). */
import { readFileSync } from "node:fs";
import os from "node:os";
import path from "node:path";
import { ROOT } from "./daemon.js";

export interface Machine {
  nproc: number;
  cpu: string;
  node: string;
  platform: string;
  totalMemGiB: number;
  /** pinned library versions (performance.md: grpc-js regressions, #2231) */
  grpcJs: string;
  protobufjs: string;
  tsProtoRuntime: string;
}

function version(pkg: string): string {
  try {
    const j = JSON.parse(readFileSync(path.join(ROOT, "node_modules", pkg, "package.json"), "utf8")) as { version?: string };
    return j.version ?? "?";
  } catch {
    return "absent";
  }
}

function cpuModel(): string {
  try {
    const m = /^model name\s*:\s*(.*)$/m.exec(readFileSync("/proc/cpuinfo", "utf8"));
    if (m) return m[1]!.trim();
  } catch {
    // not Linux
  }
  return os.cpus()[0]?.model ?? "unknown";
}

export function machine(): Machine {
  return {
    nproc: os.availableParallelism(),
    cpu: cpuModel(),
    node: process.version,
    platform: `${os.platform()} ${os.release()}`,
    totalMemGiB: Math.round(os.totalmem() / 2 ** 30),
    grpcJs: version("@grpc/grpc-js"),
    protobufjs: version("protobufjs"),
    tsProtoRuntime: `@bufbuild/protobuf ${version("@bufbuild/protobuf")}`,
  };
}

export function machineLine(m: Machine): string {
  return `${m.nproc} cores, ${m.cpu}, Node ${m.node}, ${m.totalMemGiB} GiB RAM, @grpc/grpc-js ${m.grpcJs}, ${m.tsProtoRuntime}`;
}
