/**
 * Summarise a V8 .cpuprofile (node --cpu-prof): the functions with the most
 * self time, and the most inclusive time, with their source location.
 *
 *   npx tsx bench/profile-top.ts FILE.cpuprofile|DIR [N] [--filter TEXT]
 *
 * Given a directory (node writes one profile per thread, e.g. tsx's loader
 * worker), the busiest profile in it is summarised.
 */
import { readdirSync, readFileSync, statSync } from "node:fs";
import path from "node:path";

interface Node {
  id: number;
  callFrame: { functionName: string; url: string; lineNumber: number };
  hitCount?: number;
  children?: number[];
}
interface Profile {
  nodes: Node[];
  samples: number[];
  timeDeltas: number[];
  startTime: number;
  endTime: number;
}

export function summarise(p: Profile, n = 25, filter = ""): string {
  const byId = new Map(p.nodes.map((x) => [x.id, x]));
  const parent = new Map<number, number>();
  for (const x of p.nodes) for (const c of x.children ?? []) parent.set(c, x.id);
  const selfUs = new Map<number, number>();
  for (let i = 0; i < p.samples.length; i++) selfUs.set(p.samples[i]!, (selfUs.get(p.samples[i]!) ?? 0) + (p.timeDeltas[i] ?? 0));
  const key = (x: Node) => {
    const url = x.callFrame.url.replace(/^file:\/\/.*?\/(node_modules|src|bench)\//, "$1/");
    return `${x.callFrame.functionName || "(anonymous)"} ${url ? `${url}:${x.callFrame.lineNumber + 1}` : ""}`.trim();
  };
  const self = new Map<string, number>();
  const incl = new Map<string, number>();
  let total = 0;
  for (const [id, us] of selfUs) {
    total += us;
    const node = byId.get(id)!;
    self.set(key(node), (self.get(key(node)) ?? 0) + us);
    const seen = new Set<string>();
    for (let cur: number | undefined = id; cur !== undefined; cur = parent.get(cur)) {
      const k = key(byId.get(cur)!);
      if (seen.has(k)) continue;
      seen.add(k);
      incl.set(k, (incl.get(k) ?? 0) + us);
    }
  }
  const top = (m: Map<string, number>) =>
    [...m]
      .filter(([k]) => filter === "" || k.includes(filter))
      .sort((a, b) => b[1] - a[1])
      .slice(0, n)
      .map(([k, us]) => `${((100 * us) / total).toFixed(1).padStart(5)}%  ${(us / 1000).toFixed(1).padStart(8)} ms  ${k}`)
      .join("\n");
  return `total sampled ${(total / 1000).toFixed(0)} ms\n\nself time:\n${top(self)}\n\ninclusive time:\n${top(incl)}\n`;
}

if (process.argv[1]?.endsWith("profile-top.ts")) {
  const [file, nArg] = process.argv.slice(2).filter((a, i, all) => !a.startsWith("--") && all[i - 1] !== "--filter");
  const fi = process.argv.indexOf("--filter");
  if (file === undefined) {
    process.stderr.write("usage: npx tsx bench/profile-top.ts FILE.cpuprofile [N] [--filter TEXT]\n");
    process.exit(2);
  }
  const files = statSync(file).isDirectory()
    ? readdirSync(file)
        .filter((f) => f.endsWith(".cpuprofile"))
        .map((f) => path.join(file, f))
    : [file];
  const busy = (p: Profile) => {
    const idle = new Set(p.nodes.filter((x) => x.callFrame.functionName === "(idle)").map((x) => x.id));
    let t = 0;
    p.samples.forEach((id, i) => {
      if (!idle.has(id)) t += p.timeDeltas[i] ?? 0;
    });
    return t;
  };
  const profiles = files.map((f) => JSON.parse(readFileSync(f, "utf8")) as Profile).sort((a, b) => busy(b) - busy(a));
  if (profiles.length === 0) throw new Error(`no .cpuprofile in ${file}`);
  process.stdout.write(summarise(profiles[0]!, Number(nArg ?? 25), fi >= 0 ? process.argv[fi + 1]! : ""));
}
