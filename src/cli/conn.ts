/**
 * The CLI's connection to mmsimd: one grpc-js channel for every service,
 * unary calls through the generated method definitions, and the CLI's
 * persistent named session, found again on every run with ListSessions (it
 * is stored nowhere on the client side).
 */
import { Client, type ClientReadableStream, credentials, Metadata, type ServiceError, status } from "@grpc/grpc-js";
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

export class Conn {
  readonly client: Client;
  private session: Promise<number> | undefined;

  constructor(
    readonly address: string,
    /** per-call deadline, ms */
    readonly timeoutMs: number,
    /** name of the CLI's persistent session */
    readonly sessionName: string,
  ) {
    this.client = new Client(address, credentials.createInsecure());
  }

  unary<Req, Res>(m: UnaryMethod<Req, Res>, req: Req, md = new Metadata()): Promise<Res> {
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
    return this.client.makeServerStreamRequest(m.path, m.requestSerialize, m.responseDeserialize, req, md, {});
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
    return md;
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
