/**
 * W5 — "VFIO one page at a time" over RPC (performance.md §4; A6, A7).
 *
 * 256 MiB of populated 4 KiB pages pinned over gRPC three ways, one call in
 * flight (VFIO pins serially): single-page Pin RPCs, 512-page RPCs, one
 * range RPC. Figure: pages pinned per second (release RPCs untimed). The
 * single-page mode is timed over its first SINGLE_CALLS pages (a rate; the
 * full 65,536 calls would take tens of seconds per sample on this machine).
 * Targets: 512-batch ≥100× the page throughput of one-by-one; one range
 * ≥2× the 512-batch.
 */
import { FOLL_WRITE } from "../../src/mm/constants.js";
import { startBenchDaemon } from "../lib/daemon.js";
import { gupRpc, gupRpcUnavailable } from "../lib/gup-rpc.js";
import { rpcAnon } from "../lib/rpc-setup.js";
import { MiB } from "../lib/setup.js";
import { timeAll, type Timed } from "../lib/stats.js";
import { atLeast, row, type Workload } from "../lib/types.js";

const BYTES = 256 * MiB;
const NPAGES = BYTES / 4096;

export const w5: Workload = {
  id: "W5",
  title: "pin 256 MiB of 4 KiB over RPC: 1 page/call vs 512/call vs 1 range",
  unavailable: gupRpcUnavailable,
  async run(ctx) {
    const single = ctx.opts.quick ? 512 : 4096;
    const d = await startBenchDaemon();
    try {
      const r = await rpcAnon(d, BYTES, "4k");
      const pin = await gupRpc(d, r.mmId, r.addr);
      const mode = (pages: number, perCall: number): Timed => {
        const handles: number[] = [];
        return {
          run: async () => {
            for (let i = 0; i < pages; i += perCall) {
              const a = await pin.pin(r.mmId, r.addr + i * 4096, perCall, FOLL_WRITE);
              if (a.pages !== perCall) throw new Error(`W5 pin answered ${a.pages}`);
              handles.push(a.handle);
            }
          },
          after: async () => {
            for (const h of handles.splice(0)) await pin.release(h);
          },
          // time per page, so the three modes compare as page throughput
          inner: pages,
        };
      };
      const [t1, t512, tRange] = await timeAll(ctx, [mode(single, 1), mode(NPAGES, 512), mode(NPAGES, NPAGES)]);
      const rate = (msPerPage: number) => 1000 / msPerPage;
      return [
        row({
          name: "W5 512-page RPCs vs single-page RPCs",
          figure: rate(t512!.ms),
          figureUnit: "pages/s",
          reference: rate(t1!.ms),
          referenceUnit: "pages/s",
          referenceLabel: "one page per RPC",
          ratio: t1!.ms / t512!.ms,
          target: atLeast(100, "≥100× pages/s"),
        }),
        row({
          name: "W5 one range RPC vs 512-page RPCs",
          figure: rate(tRange!.ms),
          figureUnit: "pages/s",
          reference: rate(t512!.ms),
          referenceUnit: "pages/s",
          referenceLabel: "128 RPCs of 512 pages",
          ratio: t512!.ms / tRange!.ms,
          target: atLeast(2, "≥2× pages/s"),
        }),
      ];
    } finally {
      await d.stop();
    }
  },
};
