/**
 * The CLI's connection to mmsimd: one grpc-js channel for every service,
 * unary calls through the generated method definitions, and the CLI's
 * persistent named session, found again on every run with ListSessions (it
 * is stored nowhere on the client side).
 */
import { readFileSync } from "node:fs";
import { type ChannelCredentials, Client, type ClientReadableStream, credentials, Metadata, type ServiceError, status } from "@grpc/grpc-js";
import { SessionServiceService } from "../gen/mmsim/v1/session.js";

/** A unary method of a generated service definition (ts-proto, outputServices=grpc-js). */
export interface UnaryMethod<Req, Res> {
  path: string;
  requestStream: false;
  responseStream: false;
  requestSerialize(value: Req): Buffer;
  responseDeserialize(value: Buffer): Res;
}

/** A server-streaming method of a generated service definition. */
export interface ServerStreamMethod<Req, Res> {
  path: string;
  requestStream: false;
  responseStream: true;
  requestSerialize(value: Req): Buffer;
  responseDeserialize(value: Buffer): Res;
}

export const SESSION_HEADER = "mmsim-session";

/** How the CLI authenticates: a bearer token and/or TLS (PEM file names). */
export interface ConnSecurity {
  token?: string | undefined;
  /** CA bundle that signed the daemon's certificate: use TLS */
  tlsCa?: string | undefined;
  /** client certificate and key (mutual TLS) */
  tlsCert?: string | undefined;
  tlsKey?: string | undefined;
}

/** Plaintext, or TLS when any TLS file is given. Throws when a file cannot be read. */
export function channelCredentials(sec: ConnSecurity, readFile: (path: string) => Buffer = (p) => readFileSync(p)): ChannelCredentials {
  if (sec.tlsCa === undefined && sec.tlsCert === undefined && sec.tlsKey === undefined) return credentials.createInsecure();
  if ((sec.tlsCert === undefined) !== (sec.tlsKey === undefined)) throw new Error("--tls-cert and --tls-key go together");
  const read = (p: string | undefined) => (p === undefined ? null : readFile(p));
  return credentials.createSsl(read(sec.tlsCa), read(sec.tlsKey), read(sec.tlsCert));
}

export class Conn {
  readonly client: Client;
  private session: Promise<number> | undefined;

  constructor(
    readonly address: string,
    /** per-call deadline, ms */
    readonly timeoutMs: number,
    /** name of the CLI's persistent session */
    readonly sessionName: string,
    readonly security: ConnSecurity = {},
  ) {
    this.channelCredentials = channelCredentials(security);
    this.client = new Client(address, this.channelCredentials);
  }

  readonly channelCredentials: ChannelCredentials;

  /** `md` with the bearer token added (when there is one). */
  withToken(md: Metadata): Metadata {
    if (this.security.token !== undefined && this.security.token !== "") md.set("authorization", `Bearer ${this.security.token}`);
    return md;
  }

  unary<Req, Res>(m: UnaryMethod<Req, Res>, req: Req, md = new Metadata()): Promise<Res> {
    this.withToken(md);
    return new Promise((resolve, reject) => {
      this.client.makeUnaryRequest(
        m.path,
        m.requestSerialize,
        m.responseDeserialize,
        req,
        md,
        { deadline: Date.now() + this.timeoutMs },
        (err: ServiceError | null, res?: Res) => (err ? reject(err) : resolve(res!)),
      );
    });
  }

  serverStream<Req, Res>(m: ServerStreamMethod<Req, Res>, req: Req, md = new Metadata()): ClientReadableStream<Res> {
    return this.client.makeServerStreamRequest(m.path, m.requestSerialize, m.responseDeserialize, req, this.withToken(md), {});
  }

  /**
   * The id of the persistent session named `sessionName`: the oldest live
   * one with that name, or a new one. Two CLIs racing to create it may make
   * two; both then settle on the oldest.
   */
  sessionId(): Promise<number> {
    this.session ??= (async () => {
      const list = await this.unary(SessionServiceService.listSessions, {});
      const mine = list.sessions.filter((s) => s.name === this.sessionName && s.persistent).sort((a, b) => a.sessionId - b.sessionId);
      if (mine.length > 0) return mine[0]!.sessionId;
      const created = await this.unary(SessionServiceService.createSession, { name: this.sessionName, persistent: true });
      const again = await this.unary(SessionServiceService.listSessions, {});
      const oldest = again.sessions.filter((s) => s.name === this.sessionName && s.persistent).sort((a, b) => a.sessionId - b.sessionId)[0];
      if (oldest !== undefined && oldest.sessionId !== created.sessionId) {
        // another CLI created it first: use that one, drop ours
        await this.unary(SessionServiceService.closeSession, { sessionId: created.sessionId }).catch(() => undefined);
        return oldest.sessionId;
      }
      return created.sessionId;
    })();
    return this.session;
  }

  async sessionMetadata(): Promise<Metadata> {
    const md = new Metadata();
    md.set(SESSION_HEADER, String(await this.sessionId()));
    return this.withToken(md);
  }

  close(): void {
    this.client.close();
  }
}

export function isServiceError(e: unknown): e is ServiceError {
  return typeof e === "object" && e !== null && "code" in e && "details" in e && "metadata" in e;
}

/**
 * "ERRNO: reason" as the daemon words it (the status message already starts
 * with the errno name when there is one); otherwise "CODE: details", e.g.
 * "UNAVAILABLE: No connection established".
 */
export function describeError(e: ServiceError): string {
  const errnoName = e.metadata?.get("mmsim-errno-name")[0];
  if (errnoName !== undefined) return e.details;
  return `${status[e.code] ?? e.code}: ${e.details}`;
}
