/**
 * Authentication helpers for end-to-end tests: calls with any credentials
 * and token, status outcomes as plain values, and a throw-away PKI made with
 * the openssl CLI (a CA, a server certificate for 127.0.0.1 and client
 * certificates with a chosen CN).
 */
import { execFileSync } from "node:child_process";
import { mkdtempSync, readdirSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import path from "node:path";
import { fileURLToPath, pathToFileURL } from "node:url";
import { type ChannelCredentials, Client, credentials, Metadata, type ServiceDefinition, type ServiceError } from "@grpc/grpc-js";

const GEN = path.resolve(path.dirname(fileURLToPath(import.meta.url)), "..", "..", "src", "gen", "mmsim", "v1");

/** One method of a generated mmsim.v1 service. */
export interface GeneratedMethod {
  /** e.g. "GupService" */
  service: string;
  /** e.g. "UnpinHandle" */
  method: string;
  def: ServiceDefinition[string];
}

/** Every method of every mmsim.v1 service in the generated code (src/gen), by file and declaration order. */
export async function generatedMethods(): Promise<GeneratedMethod[]> {
  const out: GeneratedMethod[] = [];
  for (const f of readdirSync(GEN).filter((n) => n.endsWith(".ts")).sort()) {
    const mod = (await import(pathToFileURL(path.join(GEN, f)).href)) as Record<string, unknown>;
    for (const [name, v] of Object.entries(mod)) {
      if (!name.endsWith("Service") || typeof v !== "object" || v === null) continue;
      for (const def of Object.values(v as ServiceDefinition)) {
        if (typeof def?.path !== "string" || !def.path.startsWith("/mmsim.v1.")) continue;
        const [service, method] = def.path.slice("/mmsim.v1.".length).split("/") as [string, string];
        out.push({ service, method, def });
      }
    }
  }
  return out;
}

/** A unary method of a generated service definition. */
export interface AnyUnary {
  path: string;
  requestSerialize(v: never): Buffer;
  responseDeserialize(b: Buffer): unknown;
}

/** What a call ended with: OK and the response, or the status with its errno trailers. */
export interface Outcome {
  code: number;
  details: string;
  errno: string | undefined;
  errnoName: string | undefined;
  res?: unknown;
}

export function bearerMetadata(token: string | undefined, sessionId?: number): Metadata {
  const md = new Metadata();
  if (token !== undefined) md.set("authorization", `Bearer ${token}`);
  if (sessionId !== undefined) md.set("mmsim-session", String(sessionId));
  return md;
}

/** One channel per address and credentials, with unary calls that never reject. */
export class Caller {
  readonly client: Client;
  constructor(
    address: string,
    readonly token: string | undefined,
    creds: ChannelCredentials = credentials.createInsecure(),
    options: Record<string, string | number> = {},
  ) {
    this.client = new Client(address, creds, options);
  }

  call(m: AnyUnary, req: unknown, sessionId?: number): Promise<Outcome> {
    return new Promise((resolve) => {
      this.client.makeUnaryRequest(
        m.path,
        m.requestSerialize as (v: unknown) => Buffer,
        m.responseDeserialize,
        req,
        bearerMetadata(this.token, sessionId),
        { deadline: Date.now() + 10_000 },
        (err: ServiceError | null, res?: unknown) => {
          if (err) {
            resolve({
              code: err.code,
              details: err.details,
              errno: err.metadata?.get("mmsim-errno")[0] as string | undefined,
              errnoName: err.metadata?.get("mmsim-errno-name")[0] as string | undefined,
            });
          } else resolve({ code: 0, details: "", errno: undefined, errnoName: undefined, res });
        },
      );
    });
  }

  /** The response, or throw with the status. */
  async ok<T>(m: AnyUnary, req: unknown, sessionId?: number): Promise<T> {
    const o = await this.call(m, req, sessionId);
    if (o.code !== 0) throw new Error(`${m.path}: ${o.code} ${o.details}`);
    return o.res as T;
  }

  close(): void {
    this.client.close();
  }
}

export interface Pki {
  dir: string;
  ca: Buffer;
  serverCert: string;
  serverKey: string;
  caFile: string;
  /** A client certificate signed by the CA with subject CN=`cn`. */
  client(cn: string): { cert: Buffer; key: Buffer };
  /** A client certificate signed by a different CA (not trusted by the server). */
  strangerClient(): { cert: Buffer; key: Buffer };
  cleanup(): void;
}

const KEY = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"];

/** Make a CA, a server certificate (SAN IP:127.0.0.1, DNS:localhost) and client certificates. */
export function makePki(): Pki {
  const dir = mkdtempSync(path.join(tmpdir(), "mmsim-pki-"));
  const f = (n: string) => path.join(dir, n);
  const ssl = (...args: string[]) => execFileSync("openssl", args, { cwd: dir, stdio: ["ignore", "ignore", "pipe"] });
  const makeCa = (name: string) => ssl("req", "-x509", ...KEY, "-keyout", f(`${name}.key`), "-out", f(`${name}.pem`), "-days", "2", "-subj", `/CN=${name}`);
  const sign = (name: string, cn: string, ca: string, ext?: string) => {
    ssl("req", ...KEY, "-keyout", f(`${name}.key`), "-out", f(`${name}.csr`), "-subj", `/CN=${cn}`);
    const extArgs = ext !== undefined ? ["-extfile", f(`${name}.ext`)] : [];
    if (ext !== undefined) writeFileSync(f(`${name}.ext`), ext);
    ssl("x509", "-req", "-in", f(`${name}.csr`), "-CA", f(`${ca}.pem`), "-CAkey", f(`${ca}.key`), "-CAcreateserial", "-out", f(`${name}.pem`), "-days", "2", ...extArgs);
  };
  makeCa("ca");
  sign("server", "localhost", "ca", "subjectAltName=IP:127.0.0.1,DNS:localhost\n");
  let n = 0;
  return {
    dir,
    ca: readFileSync(f("ca.pem")),
    caFile: f("ca.pem"),
    serverCert: f("server.pem"),
    serverKey: f("server.key"),
    client: (cn) => {
      const name = `client${n++}`;
      sign(name, cn, "ca");
      return { cert: readFileSync(f(`${name}.pem`)), key: readFileSync(f(`${name}.key`)) };
    },
    strangerClient: () => {
      makeCa("stranger-ca");
      const name = `stranger${n++}`;
      sign(name, "stranger", "stranger-ca");
      return { cert: readFileSync(f(`${name}.pem`)), key: readFileSync(f(`${name}.key`)) };
    },
    cleanup: () => rmSync(dir, { recursive: true, force: true }),
  };
}
