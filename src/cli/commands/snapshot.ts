/**
 * SnapshotService commands: `mmsim snapshot save FILE` / `restore FILE`
 * (a local file, streamed with a progress bar; or with --remote a plain
 * file name in the daemon's --snapshot-dir) and `mmsim snapshot reclaim
 * NAME` (take over a restored session).
 */
import { open, rename, unlink } from "node:fs/promises";
import { Metadata, type ServiceError, type ClientWritableStream } from "@grpc/grpc-js";
import { SessionServiceService } from "../../gen/mmsim/v1/session.js";
import {
  type DownloadSnapshotResponse,
  ReclaimSessionResponse,
  type RestoreResult,
  RestoreResult as RestoreResultCodec,
  SnapshotServiceService as S,
  type SnapshotSummary,
  SnapshotSummary as SummaryCodec,
  type UploadSnapshotRequest,
  type UploadSnapshotResponse,
} from "../../gen/mmsim/v1/snapshot.js";
import { size } from "../format.js";
import { type CommandContext, type CommandSpec, UsageError } from "../registry.js";

const group = "SnapshotService";
const CHUNK = 1 << 20;

function summaryText(verb: string, where: string, s: SnapshotSummary | undefined): string {
  if (s === undefined) return `${verb} ${where}`;
  return `${verb} ${where}: ${size(s.sizeBytes)}, ${s.mms} mm(s), ${s.sessions} session(s), ${size(s.pagesInUse * 4096)} in use, ${s.dataPages} page(s) with contents, digest ${s.stateDigest.slice(0, 16)}`;
}

function restoreText(where: string, r: RestoreResult | undefined): string {
  const lines = [summaryText("restored", where, r?.summary)];
  for (const s of r?.sessions ?? [])
    lines.push(`  session ${s.sessionId} ${JSON.stringify(s.name)} tenant ${s.tenant}${s.detachedMirrors > 0 ? `, ${s.detachedMirrors} detached mirror(s)` : ""} (reclaim with: mmsim snapshot reclaim ${s.name})`);
  return lines.join("\n");
}

/** Save to a local file through DownloadSnapshot, with a progress bar. */
async function saveLocal(ctx: CommandContext, file: string, overwrite: boolean): Promise<SnapshotSummary | undefined> {
  const tmp = `${file}.part-${process.pid}`;
  const fh = await open(tmp, overwrite ? "w" : "wx").catch((e: NodeJS.ErrnoException) => {
    throw new UsageError(`cannot write ${file}: ${e.message}`);
  });
  let header: SnapshotSummary | undefined;
  let bar: ReturnType<CommandContext["progress"]> | undefined;
  try {
    const call = ctx.conn.serverStream(S.downloadSnapshot, { chunkBytes: CHUNK });
    await new Promise<void>((resolve, reject) => {
      let writing = Promise.resolve();
      call.on("data", (m: DownloadSnapshotResponse) => {
        if (m.header !== undefined) {
          header = m.header;
          bar = ctx.progress("save", m.header.sizeBytes);
        }
        if (m.chunk !== undefined) {
          const c = m.chunk;
          call.pause();
          writing = writing.then(async () => {
            await fh.write(c);
            bar?.advance(c.length);
            call.resume();
          });
        }
      });
      call.on("error", (e: ServiceError) => reject(e));
      call.on("end", () => writing.then(resolve, reject));
    });
    await fh.sync();
  } catch (e) {
    bar?.finish();
    await fh.close().catch(() => {});
    await unlink(tmp).catch(() => {});
    throw e;
  }
  bar?.finish();
  await fh.close();
  if (!overwrite) {
    // "wx" above only guarded the temporary name
    const exists = await open(file, "r").then(
      async (h) => {
        await h.close();
        return true;
      },
      () => false,
    );
    if (exists) {
      await unlink(tmp).catch(() => {});
      throw new UsageError(`${file} exists (use --overwrite)`);
    }
  }
  await rename(tmp, file);
  return header;
}

/** The CLI session's id if it already exists (restore never creates one). */
async function existingSession(ctx: CommandContext): Promise<Metadata> {
  const md = new Metadata();
  const list = await ctx.conn.unary(SessionServiceService.listSessions, {});
  const mine = list.sessions.filter((s) => s.name === ctx.conn.sessionName && s.persistent).sort((a, b) => a.sessionId - b.sessionId)[0];
  if (mine !== undefined) md.set("mmsim-session", String(mine.sessionId));
  return md;
}

/** Restore a local file through UploadSnapshot, with a progress bar. */
async function restoreLocal(ctx: CommandContext, file: string): Promise<RestoreResult | undefined> {
  const fh = await open(file, "r").catch((e: NodeJS.ErrnoException) => {
    throw new UsageError(`cannot read ${file}: ${e.message}`);
  });
  const md = ctx.conn.withToken(await existingSession(ctx));
  try {
    const { size: total } = await fh.stat();
    const bar = ctx.progress("restore", total);
    try {
      const res = new Promise<UploadSnapshotResponse>((resolve, reject) => {
        const call: ClientWritableStream<UploadSnapshotRequest> = ctx.conn.client.makeClientStreamRequest(
          S.uploadSnapshot.path,
          S.uploadSnapshot.requestSerialize,
          S.uploadSnapshot.responseDeserialize,
          md,
          {},
          (err: ServiceError | null, r?: UploadSnapshotResponse) => (err ? reject(err) : resolve(r!)),
        );
        void (async () => {
          const buf = Buffer.allocUnsafe(CHUNK);
          let off = 0;
          for (;;) {
            const { bytesRead } = await fh.read(buf, 0, CHUNK, off);
            if (bytesRead === 0) break;
            const ok = call.write({ totalBytes: off === 0 ? total : 0, chunk: Buffer.from(buf.subarray(0, bytesRead)) });
            off += bytesRead;
            bar.advance(bytesRead);
            if (!ok) await new Promise((r) => call.once("drain", r));
          }
          call.end();
        })().catch((e: unknown) => {
          call.cancel();
          reject(e);
        });
      });
      return (await res).result;
    } finally {
      bar.finish();
    }
  } finally {
    await fh.close();
  }
}

export const snapshotCommands: CommandSpec[] = [
  {
    name: "snapshot",
    group,
    summary: "save the whole daemon state to FILE, restore it into a fresh daemon, or reclaim a restored session",
    args: ["ACTION", "FILE"],
    options: {
      remote: { type: "bool", help: "FILE is a plain name in the daemon's --snapshot-dir (SaveSnapshot / RestoreSnapshot) instead of a local file" },
      overwrite: { type: "bool", help: "save: replace an existing file" },
    },
    details: [
      "ACTION is save, restore or reclaim:",
      "  mmsim snapshot save FILE       stream a snapshot into the local FILE (DownloadSnapshot)",
      "  mmsim snapshot restore FILE    upload the local FILE into a fresh daemon (UploadSnapshot)",
      "  mmsim snapshot reclaim NAME    take over the restored session NAME; prints its id (ReclaimSession)",
      "Transfers show a progress bar on a terminal. Restore needs a fresh daemon: no mms, devices or pins,",
      "no session but the CLI's own empty one. Restored sessions are persistent; the CLI's session is found",
      "again by name, so `--session NAME` after a restore uses the restored one (reclaim it first).",
    ].join("\n"),
    async run(ctx, a) {
      const action = a.pos.ACTION!;
      const file = a.pos.FILE!;
      const remote = a.opts.remote === true;
      switch (action) {
        case "save": {
          if (remote) {
            const r = await ctx.call(S.saveSnapshot, { fileName: file, overwrite: a.opts.overwrite === true });
            if (ctx.json) return ctx.printJson({ file, summary: r.summary === undefined ? null : SummaryCodec.toJSON(r.summary) });
            return ctx.out(summaryText("saved", `${file} (daemon side)`, r.summary));
          }
          const s = await saveLocal(ctx, file, a.opts.overwrite === true);
          if (ctx.json) return ctx.printJson({ file, summary: s === undefined ? null : SummaryCodec.toJSON(s) });
          return ctx.out(summaryText("saved", file, s));
        }
        case "restore": {
          if (a.opts.overwrite === true) throw new UsageError("snapshot restore: --overwrite is for save");
          let r: RestoreResult | undefined;
          if (remote) r = (await ctx.conn.unary(S.restoreSnapshot, { fileName: file }, await existingSession(ctx))).result;
          else r = await restoreLocal(ctx, file);
          if (ctx.json) return ctx.printJson({ file, result: r === undefined ? null : RestoreResultCodec.toJSON(r) });
          return ctx.out(restoreText(file, r));
        }
        case "reclaim": {
          const r = await ctx.call(S.reclaimSession, { name: file });
          if (ctx.json) return ctx.printJson(ReclaimSessionResponse.toJSON(r));
          return ctx.out(String(r.sessionId));
        }
        default:
          throw new UsageError(`snapshot: ACTION must be save, restore or reclaim (got ${JSON.stringify(action)})`, "snapshot");
      }
    },
  },
];
