/**
 * A real daemon process for the RPC workloads: spawns bench/lib/bench-daemon.ts
 * (the product's server plus the bench-only no-op services) and connects
 * generated clients to it over loopback, all sharing one channel.
 */
import { type ChildProcess, spawn } from "node:child_process";
import path from "node:path";
import { createInterface } from "node:readline";
import { fileURLToPath } from "node:url";
import { Channel, type Client, credentials, Metadata, type ServiceError } from "@grpc/grpc-js";
import { AddressSpaceServiceClient } from "../../src/gen/mmsim/v1/address_space.js";
import { DeviceServiceClient } from "../../src/gen/mmsim/v1/device.js";
import { FaultServiceClient } from "../../src/gen/mmsim/v1/fault.js";
import { InspectServiceClient } from "../../src/gen/mmsim/v1/inspect.js";
import { SessionServiceClient } from "../../src/gen/mmsim/v1/session.js";
import { BenchClient, type MemoryReport, NoopClient, type RawClient } from "./noop.js";

export const ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), "../..");

export interface DaemonOptions {
  ram?: string;
  thp?: "always" | "madvise" | "never";
  /** run the daemon with --expose-gc (memory workload) */
  exposeGc?: boolean;
}

/**
 * Extra node flags for every bench daemon, e.g. for profiling:
 *   MMSIM_BENCH_DAEMON_ARGS="--cpu-prof --cpu-prof-dir=/tmp/prof" npm run bench -- W8
 */
const EXTRA_ARGS = (process.env.MMSIM_BENCH_DAEMON_ARGS ?? "").split(/\s+/).filter((a) => a !== "");

type Callback<Res> = (err: ServiceError | null, res: Res) => void;

/** Promise form of one unary method of a generated (or generic) client. */
export function call<Req, Res>(client: Client, name: string, req: Req, md: Metadata): Promise<Res> {
  const fn = (client as unknown as RawClient)[name]!;
  return new Promise<Res>((resolve, reject) => {
    fn.call(client, req, md, (err: ServiceError | null, res: Res) => (err ? reject(err) : resolve(res)));
  });
}

export interface BenchDaemon {
  address: string;
  pid: number;
  channel: Channel;
  session: SessionServiceClient;
  addressSpace: AddressSpaceServiceClient;
  fault: FaultServiceClient;
  device: DeviceServiceClient;
  inspect: InspectServiceClient;
  noop: RawClient;
  bench: RawClient;
  /** a persistent session and the metadata naming it */
  sessionId: number;
  md: Metadata;
  /** any generated client class, on the shared channel */
  client<C extends Client>(ctor: new (address: string, creds: ReturnType<typeof credentials.createInsecure>, opts: object) => C): C;
  unary<Req, Res>(client: Client, method: string, req: Req): Promise<Res>;
  noopUnary(req: Buffer): Promise<Buffer>;
  configureNoop(unaryReplyBytes: number): Promise<void>;
  /** the daemon's memory (after a full GC when `gc`) and CPU time */
  memory(gc?: boolean): Promise<MemoryReport>;
  stop(): Promise<void>;
}

function waitForAddress(child: ChildProcess): Promise<{ address: string; pid: number }> {
  return new Promise((resolve, reject) => {
    const rl = createInterface({ input: child.stdout! });
    const fail = (why: string) => {
      rl.close();
      reject(new Error(`bench daemon did not start: ${why}`));
    };
    const timer = setTimeout(() => fail("no address within 30 s"), 30_000);
    const onExit = (code: number | null, sig: string | null) => fail(`exited (${code ?? sig})`);
    child.once("exit", onExit);
    rl.on("line", (line) => {
      try {
        const msg = JSON.parse(line) as { address?: string; pid?: number };
        if (typeof msg.address === "string") {
          clearTimeout(timer);
          child.off("exit", onExit);
          rl.close();
          resolve({ address: msg.address, pid: msg.pid ?? child.pid ?? 0 });
        }
      } catch {
        // not our line
      }
    });
  });
}

export async function startBenchDaemon(opts: DaemonOptions = {}): Promise<BenchDaemon> {
  const args = [
    ...(opts.exposeGc ? ["--expose-gc"] : []),
    ...EXTRA_ARGS,
    "--import",
    "tsx",
    path.join(ROOT, "bench/lib/bench-daemon.ts"),
    "--ram",
    opts.ram ?? "16G",
    "--thp",
    opts.thp ?? "always",
  ];
  const child = spawn(process.execPath, args, { cwd: ROOT, stdio: ["ignore", "pipe", "inherit", "ipc"] });
  const exited = new Promise<void>((resolve) => child.once("exit", () => resolve()));
  let info: { address: string; pid: number };
  try {
    info = await waitForAddress(child);
  } catch (e) {
    child.kill("SIGKILL");
    throw e;
  }
  const { address } = info;
  const creds = credentials.createInsecure();
  const channel = new Channel(address, creds, {});
  const clients: Client[] = [];
  const make = <C extends Client>(Ctor: new (a: string, c: typeof creds, o: object) => C): C => {
    const c = new Ctor(address, creds, { channelOverride: channel });
    clients.push(c);
    return c;
  };
  const session = make(SessionServiceClient);
  const noop = make(NoopClient) as unknown as RawClient;
  const bench = make(BenchClient) as unknown as RawClient;
  const { sessionId } = await call<object, { sessionId: number }>(session, "createSession", { name: "bench", persistent: true }, new Metadata());
  const md = new Metadata();
  md.set("mmsim-session", String(sessionId));
  const empty = new Metadata();
  const d: BenchDaemon = {
    address,
    pid: info.pid,
    channel,
    session,
    addressSpace: make(AddressSpaceServiceClient),
    fault: make(FaultServiceClient),
    device: make(DeviceServiceClient),
    inspect: make(InspectServiceClient),
    noop,
    bench,
    sessionId,
    md,
    client: make,
    unary: (client, method, req) => call(client, method, req, md),
    noopUnary: (req) => call<Buffer, Buffer>(noop, "unary", req, empty),
    configureNoop: async (unaryReplyBytes) => {
      await call<Buffer, Buffer>(bench, "configure", Buffer.from(JSON.stringify({ unaryReplyBytes })), empty);
    },
    memory: async (gc = false) =>
      JSON.parse((await call<Buffer, Buffer>(bench, "memory", Buffer.from(JSON.stringify({ gc })), empty)).toString("utf8")) as MemoryReport,
    stop: async () => {
      for (const c of clients) c.close();
      channel.close();
      if (child.exitCode === null && child.signalCode === null) child.kill("SIGTERM");
      const t = setTimeout(() => child.kill("SIGKILL"), 3000);
      await exited;
      clearTimeout(t);
    },
  };
  return d;
}
