/** Authentication configuration: flags, env, config file, token file, the start-up rule, method guards. */
import { chmodSync, mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import path from "node:path";
import { Metadata, status } from "@grpc/grpc-js";
import { describe, expect, it } from "vitest";
import {
  Authenticator,
  checkListenPolicy,
  isLoopbackListen,
  loadTokens,
  parseTokenFile,
  parseTokenSpec,
  tokenFileWarning,
} from "../../../src/server/auth.js";
import { ConfigError, DEFAULT_CONFIG, type DaemonConfig, loadConfig, USAGE } from "../../../src/server/config.js";
import { StatusError } from "../../../src/server/errors.js";
import { methodAccess, RULES } from "../../../src/server/tenancy.js";
import { generatedMethods } from "../../helpers/auth.js";

const TOK_A = "tok-a-0123456789abcdef";
const TOK_B = "tok-b-0123456789abcdef";
const cfg = (c: Partial<DaemonConfig>): DaemonConfig => ({ ...DEFAULT_CONFIG, ...c });
const bearer = (t: string): Metadata => {
  const md = new Metadata();
  md.set("authorization", `Bearer ${t}`);
  return md;
};
const noCn = () => undefined;

function statusOf(fn: () => unknown): { code: number; errno: number; message: string } {
  try {
    fn();
  } catch (e) {
    if (e instanceof StatusError) return { code: e.code, errno: e.errno, message: e.reason };
    throw e;
  }
  throw new Error("did not throw");
}

describe("auth options", () => {
  it("--auth-token is repeatable, MMSIM_AUTH_TOKENS comma-separated; flags win over env", () => {
    const { config } = loadConfig(["--auth-token", `${TOK_A}:a`, `--auth-token=${TOK_B}:b:admin`], { MMSIM_AUTH_TOKENS: "ignored-token-0000000:z" });
    expect(config.authTokens).toEqual([`${TOK_A}:a`, `${TOK_B}:b:admin`]);
    const env = loadConfig([], { MMSIM_AUTH_TOKENS: `${TOK_A}:a, ${TOK_B}:b:admin` }).config;
    expect(env.authTokens).toEqual([`${TOK_A}:a`, `${TOK_B}:b:admin`]);
  });

  it("config file keys, TLS file names and boolean flags without a value", () => {
    const file = JSON.stringify({ authTokens: [`${TOK_A}:a`], authTokenFile: "/etc/tokens", tlsCert: "c.pem", tlsKey: "k.pem", tlsClientCa: "ca.pem" });
    const { config } = loadConfig(["--config", "x.json", "--insecure-no-auth", "--tls-tenant-from-cn", "--listen", "0.0.0.0:1"], {}, () => file);
    expect(config).toMatchObject({
      authTokens: [`${TOK_A}:a`],
      authTokenFile: "/etc/tokens",
      tlsCert: "c.pem",
      tlsKey: "k.pem",
      tlsClientCa: "ca.pem",
      insecureNoAuth: true,
      tlsTenantFromCn: true,
      listen: "0.0.0.0:1",
    });
    expect(loadConfig(["--insecure-no-auth=false"], {}).config.insecureNoAuth).toBe(false);
    expect(() => loadConfig([], { MMSIM_INSECURE_NO_AUTH: "maybe" })).toThrow(/MMSIM_INSECURE_NO_AUTH: expected true or false/);
    expect(() => loadConfig(["--config", "x.json"], {}, () => JSON.stringify({ authTokens: 5 }))).toThrow(/authTokens: expected TOKEN:TENANT/);
  });

  it("--help documents every option", () => {
    for (const f of ["--auth-token", "--auth-token-file", "--insecure-no-auth", "--tls-cert", "--tls-key", "--tls-client-ca", "--tls-tenant-from-cn"])
      expect(USAGE).toContain(f);
  });
});

describe("token specs and files", () => {
  it("TOKEN:TENANT[:ROLE]", () => {
    expect(parseTokenSpec(`${TOK_A}:a`, "x")).toEqual({ token: TOK_A, tenant: "a", role: "user" });
    expect(parseTokenSpec(`${TOK_A}:team-1.x:admin`, "x")).toEqual({ token: TOK_A, tenant: "team-1.x", role: "admin" });
    expect(() => parseTokenSpec("short:a", "x")).toThrow(/too short/);
    expect(() => parseTokenSpec(`${TOK_A}`, "x")).toThrow(/TOKEN:TENANT/);
    expect(() => parseTokenSpec(`${TOK_A}:a:root`, "x")).toThrow(/role must be admin or user/);
    expect(() => parseTokenSpec(`${TOK_A}:bad/tenant`, "x")).toThrow(/tenant "bad\/tenant"/);
    expect(() => parseTokenSpec(`${TOK_A}:a:user:extra`, "x")).toThrow(ConfigError);
  });

  it("token file: comments, blank lines, roles, line numbers in errors", () => {
    const text = `# tokens\n\n${TOK_A} a\n${TOK_B}   ops  admin  # the operators\n`;
    expect(parseTokenFile(text, "t")).toEqual([
      { token: TOK_A, tenant: "a", role: "user" },
      { token: TOK_B, tenant: "ops", role: "admin" },
    ]);
    expect(() => parseTokenFile(`${TOK_A} a\n${TOK_B}\n`, "t")).toThrow(/token file t:2: expected "TOKEN TENANT \[ROLE\]"/);
    expect(() => parseTokenFile(`${TOK_A} a superuser\n`, "t")).toThrow(/t:1: role must be admin or user/);
  });

  it("loadTokens merges flags and file and refuses one token for two tenants", () => {
    const c = cfg({ authTokens: [`${TOK_A}:a`], authTokenFile: "f" });
    expect(loadTokens(c, () => `${TOK_B} b admin\n`).map((t) => t.tenant)).toEqual(["a", "b"]);
    expect(() => loadTokens(c, () => `${TOK_A} b\n`)).toThrow(/same token is configured for a:user and b:user/);
    expect(() =>
      loadTokens(c, () => {
        throw new Error("ENOENT: no such file");
      }),
    ).toThrow(/token file f: ENOENT/);
  });
});

describe("token file permissions", () => {
  it("warns when other users may read the file", () => {
    const dir = mkdtempSync(path.join(tmpdir(), "mmsim-tok-"));
    try {
      const f = path.join(dir, "tokens");
      writeFileSync(f, `${TOK_A} a\n`);
      chmodSync(f, 0o644);
      expect(tokenFileWarning(f)).toBe(`token file ${f} has mode 0644: other users can read it (chmod 600)`);
      chmodSync(f, 0o600);
      expect(tokenFileWarning(f)).toBeUndefined();
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });
});

describe("start-up rule", () => {
  it("loopback addresses", () => {
    for (const a of ["127.0.0.1:1", "127.3.2.1:1", "localhost:1", "[::1]:1"]) expect(isLoopbackListen(a), a).toBe(true);
    for (const a of ["0.0.0.0:1", "[::]:1", "10.0.0.1:1", "example.com:1", "128.0.0.1:1"]) expect(isLoopbackListen(a), a).toBe(false);
  });

  it("non-loopback without authentication is refused unless --insecure-no-auth, tokens or client certificates", () => {
    const wide = cfg({ listen: "0.0.0.0:50051" });
    expect(() => checkListenPolicy(wide, [])).toThrow(/refusing to listen on 0.0.0.0:50051 without authentication.*--insecure-no-auth/);
    expect(() => checkListenPolicy({ ...wide, insecureNoAuth: true }, [])).not.toThrow();
    expect(() => checkListenPolicy(wide, [{ token: TOK_A, tenant: "a", role: "user" }])).not.toThrow();
    expect(() => checkListenPolicy({ ...wide, tlsCert: "c", tlsKey: "k", tlsClientCa: "ca" }, [])).not.toThrow();
    expect(() => checkListenPolicy(cfg({}), [])).not.toThrow();
  });

  it("TLS options must fit together", () => {
    expect(() => checkListenPolicy(cfg({ tlsCert: "c" }), [])).toThrow(/--tls-cert and --tls-key go together/);
    expect(() => checkListenPolicy(cfg({ tlsClientCa: "ca" }), [])).toThrow(/--tls-client-ca needs --tls-cert/);
    expect(() => checkListenPolicy(cfg({ tlsTenantFromCn: true, tlsCert: "c", tlsKey: "k" }), [])).toThrow(/--tls-tenant-from-cn needs --tls-client-ca/);
  });
});

describe("Authenticator", () => {
  const auth = new Authenticator(
    [
      { token: TOK_A, tenant: "a", role: "user" },
      { token: TOK_B, tenant: "ops", role: "admin" },
    ],
    false,
  );

  it("maps a bearer token to its tenant and role", () => {
    expect(auth.authenticate(bearer(TOK_A), noCn)).toMatchObject({ tenant: "a", role: "user", via: "token" });
    expect(auth.authenticate(bearer(TOK_B), noCn)).toMatchObject({ tenant: "ops", role: "admin" });
    const md = new Metadata();
    md.set("authorization", `bearer   ${TOK_A}`);
    expect(auth.authenticate(md, noCn).tenant).toBe("a");
  });

  it("refuses missing, malformed, unknown and duplicated credentials with UNAUTHENTICATED / EACCES", () => {
    const cases: [Metadata, RegExp][] = [
      [new Metadata(), /missing authorization metadata/],
      [bearer(`${TOK_A}x`), /invalid bearer token/],
      [(() => {
        const md = new Metadata();
        md.set("authorization", `Basic ${TOK_A}`);
        return md;
      })(), /malformed authorization header/],
      [(() => {
        const md = bearer(TOK_A);
        md.add("authorization", `Bearer ${TOK_B}`);
        return md;
      })(), /more than one authorization header/],
    ];
    for (const [md, re] of cases) {
      const st = statusOf(() => auth.authenticate(md, noCn));
      expect(st.code).toBe(status.UNAUTHENTICATED);
      expect(st.errno).toBe(13);
      expect(st.message).toMatch(re);
    }
  });

  it("setTokens replaces the table (SIGHUP)", () => {
    const a = new Authenticator([{ token: TOK_A, tenant: "a", role: "user" }], false);
    a.setTokens([{ token: TOK_B, tenant: "b", role: "user" }]);
    expect(statusOf(() => a.authenticate(bearer(TOK_A), noCn)).code).toBe(status.UNAUTHENTICATED);
    expect(a.authenticate(bearer(TOK_B), noCn).tenant).toBe("b");
  });

  it("tenant from the client certificate CN when enabled; a token wins", () => {
    const a = new Authenticator([{ token: TOK_A, tenant: "a", role: "admin" }], true);
    expect(a.authenticate(new Metadata(), () => "gpu-team")).toEqual({ tenant: "gpu-team", role: "user", via: "certificate" });
    expect(a.authenticate(bearer(TOK_A), () => "gpu-team")).toMatchObject({ tenant: "a", role: "admin" });
    expect(statusOf(() => a.authenticate(new Metadata(), () => "not a tenant!")).message).toMatch(/CN "not a tenant!" is not a valid tenant name/);
    expect(statusOf(() => a.authenticate(new Metadata(), noCn)).code).toBe(status.UNAUTHENTICATED);
  });
});

describe("method guards", () => {
  it("health open, reflection authenticated, daemon-wide changes admin, unknown methods admin", () => {
    expect(methodAccess("/grpc.health.v1.Health/Check")).toBe("open");
    expect(methodAccess("/grpc.health.v1.Health/Watch")).toBe("open");
    expect(methodAccess("/grpc.reflection.v1.ServerReflection/ServerReflectionInfo")).toBe("authenticated");
    expect(methodAccess("/mmsim.v1.AddressSpaceService/Mmap")).toBe("authenticated");
    expect(methodAccess("/mmsim.v1.SystemService/SetTunables")).toBe("admin");
    expect(methodAccess("/mmsim.v1.AdminService/FailNth")).toBe("admin");
    expect(methodAccess("/mmsim.v1.AdminService/GetStateDigest")).toBe("authenticated");
    expect(methodAccess("/mmsim.v1.NoSuchService/Anything")).toBe("admin");
    expect(methodAccess("/other.v1.X/Y")).toBe("admin");
  });
});

describe("tenancy table", () => {
  it("names only methods that exist", async () => {
    const names = new Set((await generatedMethods()).map((m) => `${m.service}/${m.method}`));
    for (const key of Object.keys(RULES)) expect(names.has(key), key).toBe(true);
  });

  it("leaves exactly the daemon-wide methods to the admin", async () => {
    const admin = (await generatedMethods()).filter((m) => methodAccess(m.def.path) === "admin").map((m) => `${m.service}/${m.method}`);
    const expected = [
      "AdminService/ConfigureFaultPoint",
      "AdminService/FailNth",
      "AdminService/ClearFaultInjection",
      "SystemService/SetTunables",
    ];
    // every other admin-only method belongs to a service that changes or reveals the whole daemon
    expect(admin.filter((n) => !/^(TraceService|SnapshotService)\//.test(n)).sort()).toEqual(expected.sort());
    expect(admin).toContain("SnapshotService/SaveSnapshot");
    expect(admin).not.toContain("SnapshotService/ReclaimSession");
  });
});
