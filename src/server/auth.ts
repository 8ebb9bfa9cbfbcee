/**
 * Authentication: bearer tokens (`authorization: Bearer <token>` metadata)
 * and, with mutual TLS, the verified client certificate. Every call passes
 * through one grpc-js server interceptor that turns the credentials into a
 * caller (tenant and role) or refuses the call:
 *
 *   no or unknown token          -> UNAUTHENTICATED (EACCES)
 *   user calling an admin-only RPC -> PERMISSION_DENIED (EPERM)
 *
 * grpc.health.v1 stays open (container health checks carry no token).
 * The token is removed from the metadata before the handler sees it, so it
 * is never logged or recorded. Tokens are kept and looked up as SHA-256
 * digests, never compared as strings.
 *
 * Authentication is off (every caller is the admin of tenant "default")
 * when no token is configured and client certificates do not name tenants;
 * `checkListenPolicy` refuses that on a non-loopback address unless
 * --insecure-no-auth is given.
 */
import { createHash, timingSafeEqual } from "node:crypto";
import { readFileSync, statSync } from "node:fs";
import { isIP } from "node:net";
import {
  type Metadata,
  ServerCredentials,
  type ServerInterceptingCallInterface,
  type ServerInterceptor,
  ServerInterceptingCall,
  type ServerMethodDefinition,
  status,
} from "@grpc/grpc-js";
import type { Logger } from "pino";
import { ConfigError, type DaemonConfig } from "./config.js";
import { ERRNO, StatusError, toStatus } from "./errors.js";
import type { RpcObserver, RpcType } from "./handler.js";
import { DEFAULT_TENANT } from "./session.js";

export type Role = "admin" | "user";

/** Who is calling. */
export interface Caller {
  tenant: string;
  role: Role;
  /** How the caller was identified. */
  via: "token" | "certificate" | "none";
}

/** Every caller when authentication is off. */
export const ANONYMOUS_ADMIN: Readonly<Caller> = Object.freeze({ tenant: DEFAULT_TENANT, role: "admin", via: "none" });

export interface TokenSpec {
  token: string;
  tenant: string;
  role: Role;
}

const TENANT_RE = /^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$/;
/** Printable ASCII but space, "," and ":" (the separators of the flag and env forms). */
const TOKEN_RE = /^[\x21-\x2b\x2d-\x39\x3b-\x7e]+$/;
/** Shortest accepted token: guessing one must not be practical. */
export const MIN_TOKEN_LENGTH = 16;

function checkToken(token: string, what: string): void {
  if (!TOKEN_RE.test(token)) throw new ConfigError(`${what}: a token is printable ASCII without spaces, commas or colons`);
  if (token.length < MIN_TOKEN_LENGTH) throw new ConfigError(`${what}: token too short (${token.length} characters, at least ${MIN_TOKEN_LENGTH})`);
}

function checkTenant(tenant: string, what: string): void {
  if (!TENANT_RE.test(tenant)) throw new ConfigError(`${what}: tenant ${JSON.stringify(tenant)} must match [A-Za-z0-9][A-Za-z0-9._-]{0,63}`);
}

function parseRole(role: string | undefined, what: string): Role {
  if (role === undefined || role === "" || role === "user") return "user";
  if (role === "admin") return "admin";
  throw new ConfigError(`${what}: role must be admin or user (got ${JSON.stringify(role)})`);
}

/** `TOKEN:TENANT[:ROLE]` (flag, env and config-file form). */
export function parseTokenSpec(spec: string, what: string): TokenSpec {
  const parts = spec.split(":");
  if (parts.length < 2 || parts.length > 3) throw new ConfigError(`${what}: expected TOKEN:TENANT[:ROLE] (got ${parts.length} field(s))`);
  const [token, tenant, role] = parts as [string, string, string | undefined];
  checkToken(token, what);
  checkTenant(tenant, what);
  return { token, tenant, role: parseRole(role, what) };
}

/** A token file: one `TOKEN TENANT [ROLE]` per line; `#` starts a comment. */
export function parseTokenFile(text: string, file: string): TokenSpec[] {
  const out: TokenSpec[] = [];
  const lines = text.split(/\r?\n/);
  for (let i = 0; i < lines.length; i++) {
    const line = lines[i]!.replace(/#.*$/, "").trim();
    if (line === "") continue;
    const what = `token file ${file}:${i + 1}`;
    const f = line.split(/\s+/);
    if (f.length < 2 || f.length > 3) throw new ConfigError(`${what}: expected "TOKEN TENANT [ROLE]"`);
    checkToken(f[0]!, what);
    checkTenant(f[1]!, what);
    out.push({ token: f[0]!, tenant: f[1]!, role: parseRole(f[2], what) });
  }
  return out;
}

/** Every configured token: --auth-token specs, then the token file. Throws ConfigError. */
export function loadTokens(c: DaemonConfig, readFile: (path: string) => string = (p) => readFileSync(p, "utf8")): TokenSpec[] {
  const out = c.authTokens.map((spec, i) => parseTokenSpec(spec, `auth token #${i + 1}`));
  if (c.authTokenFile !== "") {
    let text: string;
    try {
      text = readFile(c.authTokenFile);
    } catch (e) {
      throw new ConfigError(`token file ${c.authTokenFile}: ${e instanceof Error ? e.message : String(e)}`);
    }
    out.push(...parseTokenFile(text, c.authTokenFile));
  }
  const seen = new Map<string, string>();
  for (const t of out) {
    const prev = seen.get(t.token);
    if (prev !== undefined && prev !== `${t.tenant}:${t.role}`) throw new ConfigError(`the same token is configured for ${prev} and ${t.tenant}:${t.role}`);
    seen.set(t.token, `${t.tenant}:${t.role}`);
  }
  return out;
}

/** A warning when the token file can be read or written by other users, else undefined. */
export function tokenFileWarning(path: string): string | undefined {
  try {
    const mode = statSync(path).mode & 0o777;
    if ((mode & 0o077) !== 0) return `token file ${path} has mode 0${mode.toString(8)}: other users can read it (chmod 600)`;
  } catch {
    // loadTokens reports an unreadable file
  }
  return undefined;
}

/** Plaintext, TLS, or mutual TLS (client certificate required and verified). Throws ConfigError. */
export function serverCredentials(c: DaemonConfig, readFile: (path: string) => Buffer = (p) => readFileSync(p)): ServerCredentials {
  if (c.tlsCert === "") return ServerCredentials.createInsecure();
  const read = (path: string, what: string): Buffer => {
    try {
      return readFile(path);
    } catch (e) {
      throw new ConfigError(`${what} ${path}: ${e instanceof Error ? e.message : String(e)}`);
    }
  };
  const cert = read(c.tlsCert, "--tls-cert");
  const key = read(c.tlsKey, "--tls-key");
  const ca = c.tlsClientCa !== "" ? read(c.tlsClientCa, "--tls-client-ca") : null;
  try {
    return ServerCredentials.createSsl(ca, [{ cert_chain: cert, private_key: key }], ca !== null);
  } catch (e) {
    throw new ConfigError(`TLS: ${e instanceof Error ? e.message : String(e)}`);
  }
}

/** true for 127.0.0.0/8, ::1 and localhost. */
export function isLoopbackListen(listen: string): boolean {
  let host = listen.slice(0, listen.lastIndexOf(":"));
  if (host.startsWith("[") && host.endsWith("]")) host = host.slice(1, -1);
  if (host === "localhost") return true;
  if (isIP(host) === 4) return host.startsWith("127.");
  if (isIP(host) === 6) return host === "::1" || /^(0{0,4}:){7}0{0,3}1$/.test(host) || host === "::ffff:127.0.0.1";
  return false;
}

/** Whether callers are authenticated at all under this configuration. */
export function authEnabled(c: DaemonConfig, tokens: readonly TokenSpec[]): boolean {
  return tokens.length > 0 || c.tlsTenantFromCn;
}

/**
 * The start-up rule: without tokens or client certificates, authentication
 * is off, which is allowed only on a loopback address (or with
 * --insecure-no-auth). Also checks the TLS options fit together.
 */
export function checkListenPolicy(c: DaemonConfig, tokens: readonly TokenSpec[]): void {
  if ((c.tlsCert === "") !== (c.tlsKey === "")) throw new ConfigError("--tls-cert and --tls-key go together");
  if (c.tlsClientCa !== "" && c.tlsCert === "") throw new ConfigError("--tls-client-ca needs --tls-cert and --tls-key");
  if (c.tlsTenantFromCn && c.tlsClientCa === "") throw new ConfigError("--tls-tenant-from-cn needs --tls-client-ca (client certificates must be verified)");
  if (tokens.length > 0 || c.tlsClientCa !== "" || c.insecureNoAuth || isLoopbackListen(c.listen)) return;
  throw new ConfigError(
    `refusing to listen on ${c.listen} without authentication: configure tokens (--auth-token, --auth-token-file), ` +
      "require client certificates (--tls-client-ca), listen on a loopback address, or pass --insecure-no-auth",
  );
}

interface Entry {
  digest: Buffer;
  caller: Caller;
}

const digest = (s: string): Buffer => createHash("sha256").update(s, "utf8").digest();

const BEARER_RE = /^Bearer +(\S+)\s*$/i;

/** Token table (replaceable at run time, e.g. on SIGHUP) and the credential check. */
export class Authenticator {
  /** by hex SHA-256 of the token: the lookup never touches a token, only its digest */
  private entries = new Map<string, Entry>();

  constructor(
    tokens: readonly TokenSpec[],
    private readonly tenantFromCn: boolean,
  ) {
    this.setTokens(tokens);
  }

  /** Replace the token table (a bad file leaves the old table: parse first). */
  setTokens(tokens: readonly TokenSpec[]): void {
    const next = new Map<string, Entry>();
    for (const t of tokens) {
      const d = digest(t.token);
      next.set(d.toString("hex"), { digest: d, caller: Object.freeze({ tenant: t.tenant, role: t.role, via: "token" as const }) });
    }
    this.entries = next;
  }

  get tokenCount(): number {
    return this.entries.size;
  }

  /**
   * The caller a token names. Only digests are looked up and compared (the
   * final comparison in constant time), so response timing says nothing
   * about how much of a guessed token was right.
   */
  private byToken(token: string): Caller | undefined {
    const d = digest(token);
    const e = this.entries.get(d.toString("hex"));
    return e !== undefined && timingSafeEqual(d, e.digest) ? e.caller : undefined;
  }

  /** Throws UNAUTHENTICATED (EACCES) when the call carries no valid credential. */
  authenticate(md: Metadata, peerCn: () => string | undefined): Caller {
    const values = md.get("authorization");
    if (values.length > 1) throw new StatusError(status.UNAUTHENTICATED, ERRNO.EACCES, "more than one authorization header");
    if (values.length === 1) {
      const v = values[0];
      const m = BEARER_RE.exec(typeof v === "string" ? v : v!.toString("utf8"));
      if (m === null) throw new StatusError(status.UNAUTHENTICATED, ERRNO.EACCES, 'malformed authorization header: expected "Bearer <token>"');
      const c = this.byToken(m[1]!);
      if (c === undefined) throw new StatusError(status.UNAUTHENTICATED, ERRNO.EACCES, "invalid bearer token");
      return c;
    }
    if (this.tenantFromCn) {
      const cn = peerCn();
      if (cn !== undefined && TENANT_RE.test(cn)) return { tenant: cn, role: "user", via: "certificate" };
      if (cn !== undefined) throw new StatusError(status.UNAUTHENTICATED, ERRNO.EACCES, `client certificate CN ${JSON.stringify(cn)} is not a valid tenant name`);
    }
    throw new StatusError(status.UNAUTHENTICATED, ERRNO.EACCES, "missing authorization metadata: send \"authorization: Bearer <token>\"");
  }
}

/** Caller of each authenticated call, keyed by the call's request metadata. */
const callers = new WeakMap<Metadata, Caller>();

/** The caller of a call (the anonymous admin when authentication is off). */
export function callerOf(md: Metadata): Caller {
  return callers.get(md) ?? ANONYMOUS_ADMIN;
}

/** How a method is guarded before its handler runs. */
export type MethodAccess = "open" | "authenticated" | "admin";

function peerCommonName(call: ServerInterceptingCallInterface): string | undefined {
  const cert = call.getAuthContext().sslPeerCertificate;
  const cn = cert?.subject?.CN;
  return typeof cn === "string" && cn !== "" ? cn : undefined;
}

/**
 * The interceptor: authenticates every call but the open ones, then refuses
 * admin-only methods to users. `access` maps "/pkg.Service/Method" to its
 * guard.
 */
export function authInterceptor(auth: Authenticator, access: (path: string) => MethodAccess, log: Logger, rpc: () => RpcObserver | undefined = () => undefined): ServerInterceptor {
  /** Refused calls still count in grpc_server_started_total / handled_total. */
  const count = (desc: ServerMethodDefinition<unknown, unknown>, code: status): void => {
    const observer = rpc();
    if (observer === undefined) return;
    const name = desc.path.slice(1);
    const type: RpcType = desc.requestStream ? (desc.responseStream ? "bidi_stream" : "client_stream") : desc.responseStream ? "server_stream" : "unary";
    const p = observer.probe(name.startsWith("mmsim.v1.") ? name.slice("mmsim.v1.".length) : name, type);
    p.started();
    p.handled(code, 0);
  };
  return (desc: ServerMethodDefinition<unknown, unknown>, call: ServerInterceptingCallInterface) => {
    const guard = access(desc.path);
    if (guard === "open") return new ServerInterceptingCall(call);
    return new ServerInterceptingCall(call, {
      start: (next) => {
        next({
          onReceiveMetadata: (md, mdNext) => {
            let caller: Caller;
            try {
              caller = auth.authenticate(md, () => peerCommonName(call));
              if (guard === "admin" && caller.role !== "admin")
                throw new StatusError(status.PERMISSION_DENIED, ERRNO.EPERM, `${desc.path.slice(1)} needs the admin role (tenant ${caller.tenant} is a user)`);
            } catch (e) {
              const st = toStatus(e);
              log.warn({ method: desc.path.slice(1), code: status[st.code], errno: st.errno, details: st.details, peer: call.getPeer() }, "rpc refused");
              count(desc, st.code);
              call.sendStatus({ code: st.code, details: st.details, metadata: st.metadata });
              return;
            }
            md.remove("authorization");
            callers.set(md, caller);
            mdNext(md);
          },
        });
      },
    });
  };
}
