/**
 * Authentication over real loopback gRPC: bearer tokens (missing, bad,
 * good, user vs admin), the open health service, reflection behind the
 * token, the start-up rule for non-loopback addresses, token-file reload,
 * TLS and mutual TLS with certificates made by openssl, tenant from the
 * client certificate CN, and the CLI's --token / --tls-* options.
 */
import { spawn } from "node:child_process";
import { writeFileSync } from "node:fs";
import path from "node:path";
import { credentials, Metadata, status, type StatusObject } from "@grpc/grpc-js";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { runCli } from "../../src/cli/cli.js";
import { checkHealth } from "../../src/cli/commands/health.js";
import { AdminServiceService } from "../../src/gen/mmsim/v1/admin.js";
import { SessionServiceService, type ListSessionsResponse } from "../../src/gen/mmsim/v1/session.js";
import { SystemServiceService, ThpEnabled } from "../../src/gen/mmsim/v1/system.js";
import { ConfigError, DEFAULT_CONFIG } from "../../src/server/config.js";
import { createServer } from "../../src/server/server.js";
import { Caller, makePki, type Pki } from "../helpers/auth.js";
import { startDaemon, type TestDaemon } from "../helpers/daemon.js";
import { run, ROOT } from "../helpers/spawn.js";

const USER = "user-a-token-0123456789";
const ADMIN = "admin-token-0123456789ab";
const S = SystemServiceService;

const cliIn = async (env: Record<string, string>, ...args: string[]) => {
  let stdout = "";
  let stderr = "";
  const code = await runCli(args, {
    stdout: { write: (s: string | Uint8Array) => (stdout += typeof s === "string" ? s : Buffer.from(s).toString("latin1")) },
    stderr: { write: (s: string) => (stderr += s), isTTY: false },
    env,
  });
  return { code, stdout, stderr };
};

/** One reflection request (list_services) on a raw bidi stream; the final status. */
function reflectionStatus(address: string, token: string | undefined): Promise<{ st: StatusObject; replies: number }> {
  const c = new Caller(address, token);
  const md = new Metadata();
  if (token !== undefined) md.set("authorization", `Bearer ${token}`);
  return new Promise((resolve) => {
    let replies = 0;
    const call = c.client.makeBidiStreamRequest(
      "/grpc.reflection.v1.ServerReflection/ServerReflectionInfo",
      (b: Buffer) => b,
      (b: Buffer) => b,
      md,
    );
    call.on("data", () => {
      replies++;
      call.end();
    });
    call.on("error", () => {});
    call.on("status", (st: StatusObject) => {
      c.close();
      resolve({ st, replies });
    });
    // ServerReflectionRequest { list_services: "" } (field 7, length 0)
    call.write(Buffer.from([0x3a, 0x00]));
  });
}

describe("bearer tokens", () => {
  let t: TestDaemon;
  beforeAll(async () => {
    t = await startDaemon({ authTokens: [`${USER}:a`, `${ADMIN}:ops:admin`] }, {}, { token: ADMIN });
  });
  afterAll(async () => {
    await t.stop();
  });

  it("no token and a bad token: UNAUTHENTICATED with EACCES; a good token: answered", async () => {
    const none = await new Caller(t.address, undefined).call(S.getVersion, {});
    expect(none).toMatchObject({ code: status.UNAUTHENTICATED, errno: "13", errnoName: "EACCES" });
    expect(none.details).toBe('EACCES: missing authorization metadata: send "authorization: Bearer <token>"');
    const bad = await new Caller(t.address, `${USER}x`).call(S.getVersion, {});
    expect(bad).toMatchObject({ code: status.UNAUTHENTICATED, errnoName: "EACCES", details: "EACCES: invalid bearer token" });
    const good = await new Caller(t.address, USER).call(S.getVersion, {});
    expect(good.code).toBe(status.OK);
    expect((good.res as { version: string }).version).not.toBe("");
  });

  it("refused calls change nothing", async () => {
    const before = await new Caller(t.address, ADMIN).ok<ListSessionsResponse>(SessionServiceService.listSessions, {});
    const r = await new Caller(t.address, "nope-nope-nope-nope-nope").call(SessionServiceService.createSession, { name: "x", persistent: true });
    expect(r.code).toBe(status.UNAUTHENTICATED);
    const after = await new Caller(t.address, ADMIN).ok<ListSessionsResponse>(SessionServiceService.listSessions, {});
    expect(after).toEqual(before);
  });

  it("a session belongs to the caller's tenant", async () => {
    const user = new Caller(t.address, USER);
    const { sessionId } = await user.ok<{ sessionId: number }>(SessionServiceService.createSession, { name: "mine", persistent: true });
    const all = await new Caller(t.address, ADMIN).ok<ListSessionsResponse>(SessionServiceService.listSessions, {});
    expect(all.sessions.find((s) => s.sessionId === sessionId)?.tenant).toBe("a");
    await user.ok(SessionServiceService.closeSession, { sessionId });
  });

  it("daemon-wide changes need the admin role: PERMISSION_DENIED / EPERM for a user", async () => {
    const user = new Caller(t.address, USER);
    const admin = new Caller(t.address, ADMIN);
    const before = await admin.ok<{ tunables: unknown }>(S.getTunables, {});
    const sid = (await user.ok<{ sessionId: number }>(SessionServiceService.createSession, { name: "u", persistent: true })).sessionId;
    const r = await user.call(S.setTunables, { thpEnabled: ThpEnabled.THP_ENABLED_NEVER }, sid);
    expect(r).toMatchObject({ code: status.PERMISSION_DENIED, errnoName: "EPERM" });
    expect(r.details).toBe("EPERM: mmsim.v1.SystemService/SetTunables needs the admin role (tenant a is a user)");
    expect(await user.call(AdminServiceService.failNth, { nth: 1 })).toMatchObject({ code: status.PERMISSION_DENIED, errnoName: "EPERM" });
    expect(await admin.ok<{ tunables: unknown }>(S.getTunables, {})).toEqual(before);
    const asid = (await admin.ok<{ sessionId: number }>(SessionServiceService.createSession, { name: "adm", persistent: true })).sessionId;
    const ok = await admin.call(S.setTunables, { maxMapCount: 65530 }, asid);
    expect(ok.code).toBe(status.OK);
    await user.ok(SessionServiceService.closeSession, { sessionId: sid });
    await admin.ok(SessionServiceService.closeSession, { sessionId: asid });
  });

  it("grpc.health.v1 answers without a token", async () => {
    expect(await checkHealth(t.address, "", 5000)).toBe("SERVING");
    expect(await checkHealth(t.address, "mmsim.v1.AddressSpaceService", 5000)).toBe("SERVING");
  });

  it("server reflection needs a token", async () => {
    const anon = await reflectionStatus(t.address, undefined);
    expect(anon.st.code).toBe(status.UNAUTHENTICATED);
    expect(anon.replies).toBe(0);
    const user = await reflectionStatus(t.address, USER);
    expect(user.replies).toBe(1);
    expect(user.st.code).toBe(status.OK);
  });

  it("the CLI sends --token / MMSIM_TOKEN", async () => {
    const without = await cliIn({ MMSIM_ADDR: t.address }, "version");
    expect(without.code).toBe(1);
    expect(without.stderr).toContain("EACCES: missing authorization metadata");
    const flag = await cliIn({ MMSIM_ADDR: t.address }, "--token", USER, "create-mm", "cli-mm");
    expect(flag.code, flag.stderr).toBe(0);
    const env = await cliIn({ MMSIM_ADDR: t.address, MMSIM_TOKEN: USER }, "sessions", "--json");
    expect(env.code, env.stderr).toBe(0);
    const listed = JSON.parse(env.stdout) as ListSessionsResponse;
    expect(listed.sessions.map((s) => [s.name, s.tenant])).toEqual([["cli", "a"]]);
    const table = await cliIn({ MMSIM_ADDR: t.address, MMSIM_TOKEN: USER }, "sessions");
    expect(table.stdout.split("\n")[0]).toMatch(/^\s*ID\s+NAME\s+TENANT\s+KIND/);
    expect(table.stdout.split("\n")[1]).toMatch(/^\s*\d+\s+cli\s+a\s+persistent/);
    expect((await cliIn({ MMSIM_ADDR: t.address, MMSIM_TOKEN: USER }, "session-close")).code).toBe(0);
  });
});

describe("refused calls in the metrics", () => {
  it("count in grpc_server_handled_total with their code", async () => {
    const t = await startDaemon({ authTokens: [`${USER}:a`, `${ADMIN}:ops:admin`], metricsListen: "127.0.0.1:0" }, {}, { token: ADMIN });
    try {
      await new Caller(t.address, undefined).call(S.getVersion, {});
      await new Caller(t.address, undefined).call(S.getVersion, {});
      await new Caller(t.address, USER).call(S.setTunables, {});
      const text = await (await fetch(`http://${t.daemon.metricsAddress}/metrics`)).text();
      const line = (svc: string, m: string, code: string) =>
        text.split("\n").find((l) => l.startsWith(`grpc_server_handled_total{grpc_service="mmsim.v1.${svc}",grpc_method="${m}",grpc_type="unary",grpc_code="${code}"}`));
      expect(line("SystemService", "GetVersion", "UNAUTHENTICATED")).toMatch(/ 2$/);
      expect(line("SystemService", "SetTunables", "PERMISSION_DENIED")).toMatch(/ 1$/);
    } finally {
      await t.stop();
    }
  });
});

describe("authentication off", () => {
  it("the loopback default needs no token; every session is tenant default", async () => {
    const t = await startDaemon();
    try {
      expect(t.daemon.auth).toBeUndefined();
      const c = new Caller(t.address, undefined);
      const { sessionId } = await c.ok<{ sessionId: number }>(SessionServiceService.createSession, { name: "x", persistent: true });
      const list = await c.ok<ListSessionsResponse>(SessionServiceService.listSessions, {});
      expect(list.sessions.find((s) => s.sessionId === sessionId)?.tenant).toBe("default");
      // a stray authorization header is ignored when nothing authenticates
      expect((await new Caller(t.address, "whatever-whatever-whatever").call(S.getVersion, {})).code).toBe(status.OK);
      c.close();
    } finally {
      await t.stop();
    }
  });

  it("a non-loopback address without tokens refuses to start, unless --insecure-no-auth", async () => {
    const cfg = { ...DEFAULT_CONFIG, listen: "0.0.0.0:0", metricsListen: "off", logLevel: "silent" as const, ramBytes: 2 ** 30 };
    await expect(createServer(cfg)).rejects.toThrow(ConfigError);
    await expect(createServer(cfg)).rejects.toThrow(/refusing to listen on 0\.0\.0\.0:0 without authentication/);
    const d = await createServer({ ...cfg, insecureNoAuth: true });
    expect(d.auth).toBeUndefined();
    await d.shutdown(1000);
    const withTokens = await createServer({ ...cfg, authTokens: [`${USER}:a`] });
    expect(withTokens.auth?.tokenCount).toBe(1);
    await withTokens.shutdown(1000);
  });

  it("mmsimd exits 2 with the reason on stderr", async () => {
    const r = await run(process.execPath, ["--import", "tsx", path.join(ROOT, "src/server/main.ts"), "--listen", "0.0.0.0:0", "--metrics-listen", "off"], {
      env: { MMSIM_AUTH_TOKENS: "" },
      timeoutMs: 20_000,
    });
    expect(r.code).toBe(2);
    expect(r.stderr).toMatch(/^mmsimd: refusing to listen on 0\.0\.0\.0:0 without authentication: configure tokens/);
  });
});

describe("token file", () => {
  it("is read at start and re-read on reload; a bad file keeps the tokens in force", async () => {
    const pki = makePki(); // only for its temp dir
    const file = path.join(pki.dir, "tokens");
    writeFileSync(file, `# team a\n${USER} a\n${ADMIN} ops admin\n`);
    const t = await startDaemon({ authTokenFile: file }, {}, { token: ADMIN });
    try {
      expect((await new Caller(t.address, USER).call(S.getVersion, {})).code).toBe(status.OK);
      const NEW = "user-a-rotated-token-0001";
      writeFileSync(file, `${NEW} a\n${ADMIN} ops admin\n`);
      expect(t.daemon.reloadTokens()).toBe(2);
      expect((await new Caller(t.address, USER).call(S.getVersion, {})).code).toBe(status.UNAUTHENTICATED);
      expect((await new Caller(t.address, NEW).call(S.getVersion, {})).code).toBe(status.OK);
      writeFileSync(file, `${NEW} a superuser\n`);
      expect(() => t.daemon.reloadTokens()).toThrow(/role must be admin or user/);
      expect((await new Caller(t.address, NEW).call(S.getVersion, {})).code).toBe(status.OK);
    } finally {
      await t.stop();
      pki.cleanup();
    }
  });
});

describe("mmsimd and SIGHUP", () => {
  it("re-reads the token file on SIGHUP; a bad file is logged and the tokens in force stay", async () => {
    const pki = makePki(); // only for its temp dir
    const file = path.join(pki.dir, "tokens");
    writeFileSync(file, `${USER} a\n`);
    const child = spawn(
      process.execPath,
      ["--import", "tsx", path.join(ROOT, "src/server/main.ts"), "--listen", "127.0.0.1:0", "--metrics-listen", "off", "--ram", "1G", "--auth-token-file", file],
      { cwd: ROOT, stdio: ["ignore", "pipe", "pipe"] },
    );
    let output = "";
    const waiters = new Set<() => void>();
    const onData = (d: Buffer) => {
      output += d.toString();
      for (const w of [...waiters]) w();
    };
    child.stdout.on("data", onData);
    child.stderr.on("data", onData);
    const exited = new Promise<number | null>((resolve) => child.on("close", (code) => resolve(code)));
    const waitFor = (re: RegExp) =>
      new Promise<RegExpExecArray>((resolve, reject) => {
        const check = () => {
          const m = re.exec(output);
          if (m === null) return;
          waiters.delete(check);
          resolve(m);
        };
        waiters.add(check);
        void exited.then(() => reject(new Error(`mmsimd exited: ${output}`)));
        check();
      });
    try {
      const address = (await waitFor(/"address":"([^"]+)"/))[1]!;
      expect(output).toContain('"auth":"on"');
      expect((await new Caller(address, USER).call(S.getVersion, {})).code).toBe(status.OK);
      const NEW = "user-a-after-sighup-00001";
      writeFileSync(file, `${NEW} a\n`);
      child.kill("SIGHUP");
      await waitFor(/"msg":"tokens reloaded"/);
      expect((await new Caller(address, USER).call(S.getVersion, {})).code).toBe(status.UNAUTHENTICATED);
      expect((await new Caller(address, NEW).call(S.getVersion, {})).code).toBe(status.OK);
      writeFileSync(file, `${NEW}\n`);
      child.kill("SIGHUP");
      await waitFor(/token file not reloaded; the previous tokens stay in force/);
      expect((await new Caller(address, NEW).call(S.getVersion, {})).code).toBe(status.OK);
    } finally {
      child.kill("SIGTERM");
      expect(await exited).toBe(0);
      pki.cleanup();
    }
  }, 60_000);
});

describe("TLS", () => {
  let pki: Pki;
  beforeAll(() => {
    pki = makePki();
  });
  afterAll(() => pki?.cleanup());

  it("server TLS: a client trusting the CA is served; a plaintext client is not", async () => {
    const tls = credentials.createSsl(pki.ca);
    const t = await startDaemon({ tlsCert: pki.serverCert, tlsKey: pki.serverKey }, {}, { credentials: tls });
    try {
      expect((await new Caller(t.address, undefined, credentials.createSsl(pki.ca)).call(S.getVersion, {})).code).toBe(status.OK);
      expect((await new Caller(t.address, undefined).call(S.getVersion, {})).code).toBe(status.UNAVAILABLE);
      // a client that does not trust the CA
      expect((await new Caller(t.address, undefined, credentials.createSsl()).call(S.getVersion, {})).code).toBe(status.UNAVAILABLE);
      expect(await checkHealth(t.address, "", 5000, credentials.createSsl(pki.ca))).toBe("SERVING");
    } finally {
      await t.stop();
    }
  });

  it("mutual TLS: a client without a certificate, or with one from another CA, is refused; with one from the CA it is served", async () => {
    const good = pki.client("driver");
    const tls = credentials.createSsl(pki.ca, good.key, good.cert);
    const t = await startDaemon({ tlsCert: pki.serverCert, tlsKey: pki.serverKey, tlsClientCa: pki.caFile }, {}, { credentials: tls });
    try {
      expect((await new Caller(t.address, undefined, credentials.createSsl(pki.ca)).call(S.getVersion, {})).code).toBe(status.UNAVAILABLE);
      const stranger = pki.strangerClient();
      expect((await new Caller(t.address, undefined, credentials.createSsl(pki.ca, stranger.key, stranger.cert)).call(S.getVersion, {})).code).toBe(
        status.UNAVAILABLE,
      );
      expect((await new Caller(t.address, undefined, credentials.createSsl(pki.ca, good.key, good.cert)).call(S.getVersion, {})).code).toBe(status.OK);
      // the CLI with --tls-ca / --tls-cert / --tls-key
      const keyFile = path.join(pki.dir, "cli.key");
      const certFile = path.join(pki.dir, "cli.pem");
      writeFileSync(keyFile, good.key);
      writeFileSync(certFile, good.cert);
      const r = await cliIn({ MMSIM_ADDR: t.address }, "--tls-ca", pki.caFile, "--tls-cert", certFile, "--tls-key", keyFile, "health");
      expect(r.code, r.stderr).toBe(0);
      expect(r.stdout.trim()).toBe("SERVING");
      const noCert = await cliIn({ MMSIM_ADDR: t.address, MMSIM_TLS_CA: pki.caFile }, "version");
      expect(noCert.code).toBe(1);
    } finally {
      await t.stop();
    }
  });

  it("tenant from the client certificate CN; a token still wins", async () => {
    const admin = pki.client("operators");
    const t = await startDaemon(
      { tlsCert: pki.serverCert, tlsKey: pki.serverKey, tlsClientCa: pki.caFile, tlsTenantFromCn: true, authTokens: [`${ADMIN}:ops:admin`] },
      {},
      { credentials: credentials.createSsl(pki.ca, admin.key, admin.cert), token: ADMIN },
    );
    try {
      const gpu = pki.client("gpu-team");
      const rdma = pki.client("rdma-team");
      const g = new Caller(t.address, undefined, credentials.createSsl(pki.ca, gpu.key, gpu.cert));
      const r = new Caller(t.address, undefined, credentials.createSsl(pki.ca, rdma.key, rdma.cert));
      const gs = (await g.ok<{ sessionId: number }>(SessionServiceService.createSession, { name: "g", persistent: true })).sessionId;
      const rs = (await r.ok<{ sessionId: number }>(SessionServiceService.createSession, { name: "r", persistent: true })).sessionId;
      expect((await g.ok<ListSessionsResponse>(SessionServiceService.listSessions, {})).sessions.map((s) => [s.sessionId, s.tenant])).toEqual([[gs, "gpu-team"]]);
      expect((await r.ok<ListSessionsResponse>(SessionServiceService.listSessions, {})).sessions.map((s) => [s.sessionId, s.tenant])).toEqual([[rs, "rdma-team"]]);
      // certificate users are users: admin methods are refused
      expect((await g.call(S.setTunables, { maxMapCount: 100 }, gs)).code).toBe(status.PERMISSION_DENIED);
      const all = await new Caller(t.address, ADMIN, credentials.createSsl(pki.ca, admin.key, admin.cert)).ok<ListSessionsResponse>(SessionServiceService.listSessions, {});
      expect(all.sessions.map((s) => s.tenant).sort()).toEqual(["gpu-team", "rdma-team"]);
    } finally {
      await t.stop();
    }
  });
});
