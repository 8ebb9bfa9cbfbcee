/**
 * `mmsim` command-line client: global options, dispatch to the command
 * registry, exit statuses (0 ok, 1 gRPC error or failed check, 2 usage).
 * `runCli` takes its streams and environment as arguments so tests can run
 * it in-process; main.ts binds it to the process.
 */
import { MMSIM_VERSION } from "../version.js";
import { COMMANDS } from "./commands/index.js";
import { Conn, type ConnSecurity, describeError, isServiceError, type UnaryMethod } from "./conn.js";
import { Progress, type ProgressSink } from "./progress.js";
import { type CommandContext, commandHelp, type CommandRegistry, parseCommandArgs, UsageError } from "./registry.js";

export const EXIT_OK = 0;
export const EXIT_ERROR = 1;
export const EXIT_USAGE = 2;

export const DEFAULT_ADDR = "127.0.0.1:50051";
export const DEFAULT_SESSION = "cli";

export interface CliIo {
  stdout: { write(s: string | Uint8Array): unknown; isTTY?: boolean };
  stderr: ProgressSink;
  env: Readonly<Record<string, string | undefined>>;
}

const GLOBAL_HELP = `Global options (anywhere on the line):
  --addr HOST:PORT   daemon address (MMSIM_ADDR; default ${DEFAULT_ADDR})
  --session NAME     name of the persistent session mutating commands use,
                     created on first use and found again by name
                     (MMSIM_SESSION; default ${DEFAULT_SESSION})
  --json             print responses as JSON (proto3 JSON mapping)
  --timeout SECONDS  deadline of each call (default 60)
  --token TOKEN      bearer token sent on every call (MMSIM_TOKEN)
  --tls-ca FILE      PEM CA bundle of the daemon's certificate: connect with TLS (MMSIM_TLS_CA)
  --tls-cert FILE    PEM client certificate for mutual TLS (MMSIM_CLIENT_CERT)
  --tls-key FILE     PEM key of --tls-cert (MMSIM_CLIENT_KEY)
  -h, --help         help; "mmsim help COMMAND" for one command

Exit status: 0 ok, 1 gRPC error (message "ERRNO: reason") or failed check,
2 usage error. Numbers accept 0x hex and K/M/G/T suffixes (powers of 1024).`;

function overview(reg: CommandRegistry): string {
  const lines = [`mmsim ${MMSIM_VERSION}: command-line client of mmsimd`, "", "usage: mmsim [global options] COMMAND [args]", ""];
  for (const [group, cmds] of reg.groups()) {
    lines.push(`${group}:`);
    for (const c of cmds) lines.push(`  ${c.name.padEnd(22)} ${c.summary}`);
    lines.push("");
  }
  lines.push(GLOBAL_HELP);
  return lines.join("\n");
}

interface Globals {
  addr: string;
  session: string;
  json: boolean;
  timeoutMs: number;
  help: boolean;
  rest: string[];
  security: ConnSecurity;
}

function parseGlobals(argv: readonly string[], env: CliIo["env"]): Globals {
  const g: Globals = {
    addr: env.MMSIM_ADDR || DEFAULT_ADDR,
    session: env.MMSIM_SESSION || DEFAULT_SESSION,
    json: false,
    timeoutMs: 60_000,
    help: false,
    rest: [],
    security: {
      token: env.MMSIM_TOKEN || undefined,
      tlsCa: env.MMSIM_TLS_CA || undefined,
      tlsCert: env.MMSIM_CLIENT_CERT || undefined,
      tlsKey: env.MMSIM_CLIENT_KEY || undefined,
    },
  };
  for (let i = 0; i < argv.length; i++) {
    const arg = argv[i]!;
    if (arg === "--") {
      g.rest.push(...argv.slice(i));
      break;
    }
    const eq = arg.indexOf("=");
    const name = arg.startsWith("--") ? (eq >= 0 ? arg.slice(2, eq) : arg.slice(2)) : arg === "-h" ? "help" : "";
    const value = (): string => {
      if (eq >= 0) return arg.slice(eq + 1);
      const v = argv[++i];
      if (v === undefined) throw new UsageError(`option --${name} needs a value`);
      return v;
    };
    switch (name) {
      case "addr":
        g.addr = value();
        break;
      case "session":
        g.session = value();
        break;
      case "timeout": {
        const s = Number(value());
        if (!(s > 0)) throw new UsageError("--timeout needs a positive number of seconds");
        g.timeoutMs = s * 1000;
        break;
      }
      case "json":
        g.json = true;
        break;
      case "token":
        g.security.token = value();
        break;
      case "tls-ca":
        g.security.tlsCa = value();
        break;
      case "tls-cert":
        g.security.tlsCert = value();
        break;
      case "tls-key":
        g.security.tlsKey = value();
        break;
      case "help":
        g.help = true;
        break;
      default:
        g.rest.push(arg);
    }
  }
  return g;
}

export async function runCli(argv: readonly string[], io: CliIo, registry: CommandRegistry = COMMANDS): Promise<number> {
  const say = (s: string) => io.stdout.write(s.endsWith("\n") ? s : `${s}\n`);
  const complain = (s: string) => io.stderr.write(s.endsWith("\n") ? s : `${s}\n`);
  let g: Globals;
  try {
    g = parseGlobals(argv, io.env);
  } catch (e) {
    complain(`mmsim: ${(e as Error).message}`);
    return EXIT_USAGE;
  }
  const [name, ...args] = g.rest;
  if (name === undefined || name === "help") {
    const target = name === "help" ? args[0] : undefined;
    if (target !== undefined) {
      const c = registry.get(target);
      if (c === undefined) {
        complain(`mmsim: unknown command "${target}" (see mmsim help)`);
        return EXIT_USAGE;
      }
      say(commandHelp(c));
      return EXIT_OK;
    }
    if (name === undefined && !g.help) {
      complain(overview(registry));
      return EXIT_USAGE;
    }
    say(overview(registry));
    return EXIT_OK;
  }
  const cmd = registry.get(name);
  if (cmd === undefined) {
    complain(`mmsim: unknown command "${name}" (see mmsim help)`);
    return EXIT_USAGE;
  }
  if (g.help) {
    say(commandHelp(cmd));
    return EXIT_OK;
  }

  let conn: Conn;
  try {
    conn = new Conn(g.addr, g.timeoutMs, g.session, g.security);
  } catch (e) {
    complain(`mmsim: ${(e as Error).message}`);
    return EXIT_USAGE;
  }
  const ctx: CommandContext = {
    conn,
    json: g.json,
    out: (s) => void say(s),
    err: (s) => void complain(s),
    outBytes: (data) => io.stdout.write(data),
    printJson: (v) => say(JSON.stringify(v, null, io.stdout.isTTY ? 2 : undefined)),
    call: async <Req, Res>(m: UnaryMethod<Req, Res>, req: Req, opts?: { session?: boolean }) =>
      conn.unary(m, req, opts?.session ? await conn.sessionMetadata() : undefined),
    sessionMetadata: () => conn.sessionMetadata(),
    sessionId: () => conn.sessionId(),
    progress: (label, total) => new Progress(io.stderr, label, total),
  };
  try {
    const parsed = parseCommandArgs(cmd, args);
    const code = await cmd.run(ctx, parsed);
    return typeof code === "number" ? code : EXIT_OK;
  } catch (e) {
    if (e instanceof UsageError) {
      complain(`mmsim: ${e.message}`);
      complain(`usage: ${commandHelp(cmd).split("\n")[0]!.slice("usage: ".length)}`);
      return EXIT_USAGE;
    }
    if (isServiceError(e)) {
      complain(describeError(e));
      return EXIT_ERROR;
    }
    complain(`mmsim: ${e instanceof Error ? (e.stack ?? e.message) : String(e)}`);
    return EXIT_ERROR;
  } finally {
    conn.close();
  }
}
