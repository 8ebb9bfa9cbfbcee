/**
 * The command registry of the `mmsim` CLI. Each service's commands live in
 * their own file (commands/<service>.ts) and are listed by
 * commands/index.ts; a command declares its arguments and options here and
 * gets a CommandContext to call the daemon and print.
 */
import type { Metadata } from "@grpc/grpc-js";
import type { Conn, UnaryMethod } from "./conn.js";
import type { Progress } from "./progress.js";

export type OptionType = "string" | "number" | "bool";

export interface OptionSpec {
  type: OptionType;
  /** shown in the usage line, e.g. "ADDR" */
  value?: string;
  help: string;
}

export interface CommandSpec {
  /** subcommand name, kebab-case, e.g. "create-mm" */
  name: string;
  /** group shown by `mmsim help`, e.g. "AddressSpaceService" */
  group: string;
  /** one line */
  summary: string;
  /** positional arguments, e.g. ["MM", "ADDR", "[LENGTH]"]; "[X]" is optional, "X..." takes the rest */
  args?: string[];
  options?: Record<string, OptionSpec>;
  /** further lines for `mmsim help NAME` */
  details?: string;
  run(ctx: CommandContext, a: ParsedArgs): Promise<number | void>;
}

export interface ParsedArgs {
  /** positional arguments, by the names of CommandSpec.args (without brackets / dots) */
  pos: Record<string, string | undefined>;
  /** arguments of a "X..." parameter */
  rest: string[];
  opts: Record<string, string | boolean | undefined>;
}

export interface CommandContext {
  conn: Conn;
  /** --json was given */
  json: boolean;
  /** print a line (or lines) to stdout */
  out(text: string): void;
  /** print to stderr */
  err(text: string): void;
  /** raw bytes to stdout (read --format raw) */
  outBytes(data: Uint8Array): void;
  /** print a value as JSON (pretty when stdout is a terminal) */
  printJson(value: unknown): void;
  /** Unary call; with `session` the CLI session's id travels as mmsim-session metadata. */
  call<Req, Res>(m: UnaryMethod<Req, Res>, req: Req, opts?: { session?: boolean }): Promise<Res>;
  /** metadata naming the CLI session (created or reused by name on first use) */
  sessionMetadata(): Promise<Metadata>;
  /** the CLI session's id (created or reused by name on first use) */
  sessionId(): Promise<number>;
  /** a progress bar on stderr (drawn only on a terminal) */
  progress(label: string, total: number): Progress;
}

/** Bad command line: exit status 2. */
export class UsageError extends Error {
  constructor(
    message: string,
    readonly command?: string,
  ) {
    super(message);
    this.name = "UsageError";
  }
}

export class CommandRegistry {
  private readonly commands = new Map<string, CommandSpec>();

  add(...specs: CommandSpec[]): void {
    for (const s of specs) {
      if (this.commands.has(s.name)) throw new Error(`mmsim: command ${s.name} registered twice`);
      this.commands.set(s.name, s);
    }
  }

  get(name: string): CommandSpec | undefined {
    return this.commands.get(name);
  }

  all(): CommandSpec[] {
    return [...this.commands.values()];
  }

  /** Commands by group, in registration order. */
  groups(): Map<string, CommandSpec[]> {
    const g = new Map<string, CommandSpec[]>();
    for (const c of this.commands.values()) {
      const list = g.get(c.group) ?? [];
      list.push(c);
      g.set(c.group, list);
    }
    return g;
  }
}

/** "[LENGTH]" -> "LENGTH", "DATA..." -> "DATA" */
export function argName(spec: string): string {
  return spec.replace(/^\[|\]$/g, "").replace(/\.\.\.$/, "");
}

export function usageLine(c: CommandSpec): string {
  const opts = Object.entries(c.options ?? {}).map(([n, o]) => (o.type === "bool" ? `[--${n}]` : `[--${n} ${o.value ?? "VALUE"}]`));
  return ["mmsim", c.name, ...(c.args ?? []), ...opts].join(" ");
}

export function commandHelp(c: CommandSpec): string {
  const lines = [`usage: ${usageLine(c)}`, "", c.summary];
  if (c.details !== undefined) lines.push("", c.details);
  const opts = Object.entries(c.options ?? {});
  if (opts.length > 0) {
    lines.push("", "options:");
    for (const [n, o] of opts) {
      const left = o.type === "bool" ? `--${n}` : `--${n} ${o.value ?? "VALUE"}`;
      lines.push(`  ${left.padEnd(26)} ${o.help}`);
    }
  }
  return lines.join("\n");
}

/** Parse a command's own arguments (global options already removed). */
export function parseCommandArgs(c: CommandSpec, argv: readonly string[]): ParsedArgs {
  const opts: ParsedArgs["opts"] = {};
  const positional: string[] = [];
  const specs = c.options ?? {};
  for (let i = 0; i < argv.length; i++) {
    const arg = argv[i]!;
    if (arg === "--") {
      positional.push(...argv.slice(i + 1));
      break;
    }
    if (arg.startsWith("--") && arg.length > 2) {
      const eq = arg.indexOf("=");
      const name = eq >= 0 ? arg.slice(2, eq) : arg.slice(2);
      const spec = specs[name];
      if (spec === undefined) throw new UsageError(`${c.name}: unknown option --${name}`, c.name);
      if (spec.type === "bool") {
        if (eq >= 0) throw new UsageError(`${c.name}: option --${name} takes no value`, c.name);
        opts[name] = true;
        continue;
      }
      let value: string | undefined;
      if (eq >= 0) value = arg.slice(eq + 1);
      else {
        value = argv[i + 1];
        i++;
      }
      if (value === undefined) throw new UsageError(`${c.name}: option --${name} needs a value`, c.name);
      opts[name] = value;
      continue;
    }
    positional.push(arg);
  }
  const pos: ParsedArgs["pos"] = {};
  let rest: string[] = [];
  const params = c.args ?? [];
  let k = 0;
  for (const p of params) {
    const name = argName(p);
    if (p.replace(/\]$/, "").endsWith("...")) {
      rest = positional.slice(k);
      k = positional.length;
      if (rest.length === 0 && !p.startsWith("[")) throw new UsageError(`${c.name}: missing ${name}`, c.name);
      continue;
    }
    const v = positional[k];
    if (v === undefined) {
      if (!p.startsWith("[")) throw new UsageError(`${c.name}: missing ${name}`, c.name);
      continue;
    }
    pos[name] = v;
    k++;
  }
  if (k < positional.length) throw new UsageError(`${c.name}: unexpected argument "${positional[k]}"`, c.name);
  return { pos, rest, opts };
}
