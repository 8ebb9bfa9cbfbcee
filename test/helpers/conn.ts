/**
 * One client connection of its own: every service's client on a single
 * grpc-js Channel that shares no subchannel (TCP connection) with any other
 * client, so closing it is what a client process dying does to its
 * connection. Unary methods are promisified; the session id goes in the
 * `mmsim-session` metadata of every call.
 */
import net from "node:net";
import { Channel, type Client, credentials, Metadata, type ServiceError } from "@grpc/grpc-js";
import { AddressSpaceServiceClient, AddressSpaceServiceService } from "../../src/gen/mmsim/v1/address_space.js";
import { DeviceServiceClient, DeviceServiceService } from "../../src/gen/mmsim/v1/device.js";
import { DmirrorServiceClient, DmirrorServiceService } from "../../src/gen/mmsim/v1/dmirror.js";
import { FaultServiceClient, FaultServiceService } from "../../src/gen/mmsim/v1/fault.js";
import { GupServiceClient, GupServiceService } from "../../src/gen/mmsim/v1/gup.js";
import { HmmServiceClient, HmmServiceService } from "../../src/gen/mmsim/v1/hmm.js";
import { InspectServiceClient, InspectServiceService } from "../../src/gen/mmsim/v1/inspect.js";
import { MemoryServiceClient, MemoryServiceService } from "../../src/gen/mmsim/v1/memory.js";
import { NotifierServiceClient, NotifierServiceService } from "../../src/gen/mmsim/v1/notifier.js";
import { SessionServiceClient, SessionServiceService } from "../../src/gen/mmsim/v1/session.js";
import { type Promised, sessionMetadata } from "./daemon.js";

const SERVICES = {
  session: [SessionServiceClient, SessionServiceService],
  addressSpace: [AddressSpaceServiceClient, AddressSpaceServiceService],
  fault: [FaultServiceClient, FaultServiceService],
  memory: [MemoryServiceClient, MemoryServiceService],
  device: [DeviceServiceClient, DeviceServiceService],
  inspect: [InspectServiceClient, InspectServiceService],
  gup: [GupServiceClient, GupServiceService],
  notifier: [NotifierServiceClient, NotifierServiceService],
  hmm: [HmmServiceClient, HmmServiceService],
  dmirror: [DmirrorServiceClient, DmirrorServiceService],
} as const;

export type RawConn = {
  session: SessionServiceClient;
  addressSpace: AddressSpaceServiceClient;
  fault: FaultServiceClient;
  memory: MemoryServiceClient;
  device: DeviceServiceClient;
  inspect: InspectServiceClient;
  gup: GupServiceClient;
  notifier: NotifierServiceClient;
  hmm: HmmServiceClient;
  dmirror: DmirrorServiceClient;
};

export type Conn = { [K in keyof RawConn]: Promised<RawConn[K]> } & {
  raw: RawConn;
  channel: Channel;
  /** Set the session sent with every call from now on. */
  useSession(sessionId: number): void;
  /** Close the connection: every call and stream on it ends. */
  close(): void;
};

/** A TCP relay to the daemon whose sockets can be cut, as a dying client's are. */
export interface Relay {
  address: string;
  /** Destroy every relayed socket (both sides) and stop accepting. */
  cut(): void;
}

export async function relay(target: string): Promise<Relay> {
  const [host, port] = [target.slice(0, target.lastIndexOf(":")), Number(target.slice(target.lastIndexOf(":") + 1))];
  const sockets = new Set<net.Socket>();
  const server = net.createServer((client) => {
    const upstream = net.connect(port, host);
    sockets.add(client).add(upstream);
    client.pipe(upstream).pipe(client);
    const gone = () => {
      client.destroy();
      upstream.destroy();
    };
    client.on("error", gone).on("close", gone);
    upstream.on("error", gone).on("close", gone);
  });
  await new Promise<void>((resolve) => server.listen(0, "127.0.0.1", resolve));
  const addr = server.address() as net.AddressInfo;
  return {
    address: `127.0.0.1:${addr.port}`,
    cut: () => {
      server.close();
      for (const s of sockets) s.destroy();
    },
  };
}

export function connect(address: string): Conn {
  const channel = new Channel(address, credentials.createInsecure(), { "grpc.use_local_subchannel_pool": 1, "grpc.max_receive_message_length": 64 * 2 ** 20 });
  let md: Metadata | undefined;
  const raw = Object.fromEntries(
    Object.entries(SERVICES).map(([key, [Ctor]]) => [key, new Ctor(address, credentials.createInsecure(), { channelOverride: channel })]),
  ) as unknown as RawConn;
  const out: Record<string, unknown> = { raw, channel };
  for (const [key, [, def]] of Object.entries(SERVICES)) {
    const client = raw[key as keyof RawConn] as unknown as Record<string, (...a: unknown[]) => unknown>;
    const svc: Record<string, unknown> = {};
    for (const [name, m] of Object.entries(def)) {
      if (m.requestStream || m.responseStream) continue;
      svc[name] = (req: unknown, meta?: Metadata) =>
        new Promise((resolve, reject) => {
          client[name]!.call(client, req, meta ?? md?.clone() ?? new Metadata(), {}, (err: ServiceError | null, res: unknown) => (err ? reject(err) : resolve(res)));
        });
    }
    out[key] = svc;
  }
  out.useSession = (id: number) => (md = sessionMetadata(id));
  out.close = () => {
    for (const c of Object.values(raw)) (c as Client).close();
    channel.close();
  };
  return out as unknown as Conn;
}
