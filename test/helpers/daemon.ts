/**
 * An in-process mmsimd for end-to-end tests: the real gRPC server on
 * 127.0.0.1 with a free port, and promisified clients for every service.
 */
import {
  type ChannelCredentials,
  type Client,
  credentials,
  Metadata,
  type ServiceDefinition,
  type ServiceError,
  type StatusObject,
} from "@grpc/grpc-js";
import { expect } from "vitest";
import { AddressSpaceServiceClient, AddressSpaceServiceService } from "../../src/gen/mmsim/v1/address_space.js";
import { DeviceServiceClient, DeviceServiceService } from "../../src/gen/mmsim/v1/device.js";
import { FaultServiceClient, FaultServiceService } from "../../src/gen/mmsim/v1/fault.js";
import { GupServiceClient, GupServiceService } from "../../src/gen/mmsim/v1/gup.js";
import { InspectServiceClient, InspectServiceService } from "../../src/gen/mmsim/v1/inspect.js";
import { MemoryServiceClient, MemoryServiceService } from "../../src/gen/mmsim/v1/memory.js";
import { type AttachSessionResponse, SessionServiceClient, SessionServiceService } from "../../src/gen/mmsim/v1/session.js";
import { SystemServiceClient, SystemServiceService } from "../../src/gen/mmsim/v1/system.js";
import { AdminServiceClient, AdminServiceService } from "../../src/gen/mmsim/v1/admin.js";
import { SnapshotServiceClient, SnapshotServiceService } from "../../src/gen/mmsim/v1/snapshot.js";
import { DEFAULT_CONFIG, type DaemonConfig } from "../../src/server/config.js";
import { createServer, type CreateServerOptions, type Daemon } from "../../src/server/server.js";

/** Unary methods of a generated client, each returning a Promise of the response. */
export type UnaryOf<F> = F extends (...args: infer A) => unknown
  ? A extends [infer Req, Metadata, unknown, (error: ServiceError | null, response: infer Res) => void]
    ? (request: Req, metadata?: Metadata) => Promise<Res>
    : never
  : never;
export type Promised<C> = { [K in keyof C as UnaryOf<C[K]> extends never ? never : K]: UnaryOf<C[K]> };

const SERVICES = {
  session: [SessionServiceClient, SessionServiceService],
  addressSpace: [AddressSpaceServiceClient, AddressSpaceServiceService],
  fault: [FaultServiceClient, FaultServiceService],
  memory: [MemoryServiceClient, MemoryServiceService],
  device: [DeviceServiceClient, DeviceServiceService],
  inspect: [InspectServiceClient, InspectServiceService],
  system: [SystemServiceClient, SystemServiceService],
  gup: [GupServiceClient, GupServiceService],
  admin: [AdminServiceClient, AdminServiceService],
  snapshot: [SnapshotServiceClient, SnapshotServiceService],
} as const;

type Raw = {
  session: SessionServiceClient;
  addressSpace: AddressSpaceServiceClient;
  fault: FaultServiceClient;
  memory: MemoryServiceClient;
  device: DeviceServiceClient;
  inspect: InspectServiceClient;
  system: SystemServiceClient;
  gup: GupServiceClient;
  admin: AdminServiceClient;
  snapshot: SnapshotServiceClient;
};
export type Clients = { [K in keyof Raw]: Promised<Raw[K]> };

function promisify<C extends Client>(client: C, def: ServiceDefinition, base: Metadata | undefined): Promised<C> {
  const out: Record<string, unknown> = {};
  for (const [name, m] of Object.entries(def)) {
    if (m.requestStream || m.responseStream) continue;
    out[name] = (req: unknown, md?: Metadata) =>
      new Promise((resolve, reject) => {
        const meta = md ?? base?.clone() ?? new Metadata();
        const fn = (client as unknown as Record<string, (...a: unknown[]) => unknown>)[name]!;
        fn.call(client, req, meta, {}, (err: ServiceError | null, res: unknown) => (err ? reject(err) : resolve(res)));
      });
  }
  return out as Promised<C>;
}

export function sessionMetadata(sessionId: number | string): Metadata {
  const md = new Metadata();
  md.set("mmsim-session", String(sessionId));
  return md;
}

/** An open AttachSession stream, with every message and the final status recorded. */
export interface AttachedStream {
  messages: AttachSessionResponse[];
  /** Resolves with the n-th message (0-based) once it has arrived. */
  message(n: number): Promise<AttachSessionResponse>;
  /** Resolves with the final status of the stream. */
  status: Promise<StatusObject>;
  cancel(): void;
}

export interface TestDaemon {
  address: string;
  daemon: Daemon;
  clients: Clients;
  /** Raw generated clients (for streams and custom metadata). */
  raw: Raw;
  /** Clients that send `mmsim-session: <sessionId>` on every call. */
  withSession(sessionId: number): Clients;
  /** Create a persistent session and return its id. */
  newSession(name?: string): Promise<number>;
  attach(sessionId: number): AttachedStream;
  /** Assert the invariant checker finds no violation. */
  checkInvariants(mmId?: number): Promise<void>;
  stop(): Promise<void>;
}

/** Daemons started by this test file and not stopped yet (see test/setup/invariants.ts). */
export const liveDaemons = new Set<TestDaemon>();

/** How the test's own clients reach the daemon when it authenticates callers. */
export interface ClientAccess {
  /** sent as `authorization: Bearer <token>` on every call (the admin token for invariant checks) */
  token?: string;
  /** channel credentials (TLS); default plaintext */
  credentials?: ChannelCredentials;
}

export async function startDaemon(opts: Partial<DaemonConfig> = {}, server: CreateServerOptions = {}, access: ClientAccess = {}): Promise<TestDaemon> {
  const config: DaemonConfig = { ...DEFAULT_CONFIG, listen: "127.0.0.1:0", metricsListen: "off", logLevel: "silent", ramBytes: 2 * 2 ** 30, ...opts };
  const daemon = await createServer(config, server);
  const address = daemon.address;
  const raw = Object.fromEntries(
    Object.entries(SERVICES).map(([key, [Ctor]]) => [key, new Ctor(address, access.credentials ?? credentials.createInsecure())]),
  ) as unknown as Raw;
  const withToken = (md: Metadata | undefined): Metadata | undefined => {
    if (access.token === undefined) return md;
    const out = md?.clone() ?? new Metadata();
    out.set("authorization", `Bearer ${access.token}`);
    return out;
  };
  const build = (md: Metadata | undefined): Clients =>
    Object.fromEntries(
      Object.entries(SERVICES).map(([key, [, def]]) => [key, promisify(raw[key as keyof Raw], def, withToken(md))]),
    ) as unknown as Clients;
  const clients = build(undefined);
  const streams = new Set<AttachedStream>();

  const attach = (sessionId: number): AttachedStream => {
    const call = raw.session.attachSession({ sessionId }, withToken(undefined) ?? new Metadata());
    const messages: AttachSessionResponse[] = [];
    const waiters: { n: number; resolve: (m: AttachSessionResponse) => void; reject: (e: Error) => void }[] = [];
    let ended = false;
    const statusP = new Promise<StatusObject>((resolve) => {
      call.on("status", (s: StatusObject) => {
        ended = true;
        for (const w of waiters.splice(0)) w.reject(new Error(`stream ended (${s.code} ${s.details}) before message ${w.n}`));
        resolve(s);
      });
    });
    call.on("data", (m: AttachSessionResponse) => {
      messages.push(m);
      for (let i = waiters.length - 1; i >= 0; i--) {
        const w = waiters[i]!;
        if (messages.length > w.n) {
          waiters.splice(i, 1);
          w.resolve(messages[w.n]!);
        }
      }
    });
    call.on("error", () => {
      // the status event carries the outcome
    });
    const s: AttachedStream = {
      messages,
      message: (n) =>
        messages.length > n
          ? Promise.resolve(messages[n]!)
          : ended
            ? Promise.reject(new Error(`stream ended before message ${n}`))
            : new Promise((resolve, reject) => waiters.push({ n, resolve, reject })),
      status: statusP,
      cancel: () => call.cancel(),
    };
    streams.add(s);
    return s;
  };

  const td: TestDaemon = {
    address,
    daemon,
    clients,
    raw,
    withSession: (id) => build(sessionMetadata(id)),
    newSession: async (name = "test") => (await clients.session.createSession({ name, persistent: true })).sessionId,
    attach,
    checkInvariants: async (mmId?: number) => {
      const r = await clients.inspect.checkInvariants(mmId === undefined ? {} : { mmId });
      expect(r.violations, JSON.stringify(r.violations, null, 2)).toEqual([]);
    },
    stop: async () => {
      liveDaemons.delete(td);
      for (const s of streams) s.cancel();
      for (const c of Object.values(raw)) (c as Client).close();
      await daemon.shutdown(1000);
    },
  };
  liveDaemons.add(td);
  return td;
}
