/**
 * W12 — many concurrent pinners (performance.md §4; A5: no shared write per
 * pin call). CLIENTS async clients (concurrent calls on the bench channel)
 * pin disjoint 512 MiB THP ranges of one mm on one daemon, all at once;
 * compared with the same CLIENTS pins made back to back by one client.
 * Target: aggregate throughput ≥0.8× of back to back.
 * --quick: 8 clients of 64 MiB.
 */
import { FOLL_WRITE } from "../../src/mm/constants.js";
import { startBenchDaemon } from "../lib/daemon.js";
import { gupRpc, gupRpcUnavailable } from "../lib/gup-rpc.js";
import { rpcAnon } from "../lib/rpc-setup.js";
import { MiB } from "../lib/setup.js";
import { timeAll, type Timed } from "../lib/stats.js";
import { atLeast, row, type Workload } from "../lib/types.js";

export const w12: Workload = {
  id: "W12",
  title: "40 concurrent pinners of disjoint 512 MiB vs back to back",
  unavailable: gupRpcUnavailable,
  async run(ctx) {
    const clients = ctx.opts.quick ? 8 : 40;
    const each = (ctx.opts.quick ? 64 : 512) * MiB;
    const d = await startBenchDaemon({ ram: `${Math.ceil((clients * each) / 2 ** 30) + 4}G` });
    try {
      const r = await rpcAnon(d, clients * each, "thp");
      const pin = await gupRpc(d, r.mmId, r.addr);
      const npages = each / 4096;
      const handles: number[] = [];
      const one = async (c: number) => {
        const a = await pin.pin(r.mmId, r.addr + c * each, npages, FOLL_WRITE);
        if (a.pages !== npages) throw new Error(`W12 pin answered ${a.pages}`);
        handles.push(a.handle);
      };
      const release = async () => {
        for (const h of handles.splice(0)) await pin.release(h);
      };
      const concurrent: Timed = { run: () => Promise.all(Array.from({ length: clients }, (_, c) => one(c))), after: release };
      const serial: Timed = {
        run: async () => {
          for (let c = 0; c < clients; c++) await one(c);
        },
        after: release,
      };
      const [tc, ts] = await timeAll(ctx, [concurrent, serial]);
      return [
        row({
          name: `W12 ${clients} concurrent pinners, aggregate`,
          figure: tc!.ms,
          figureUnit: "ms",
          reference: ts!.ms,
          referenceUnit: "ms",
          referenceLabel: "same pins back to back",
          // throughput ratio = back-to-back time / concurrent time
          ratio: ts!.ms / tc!.ms,
          target: atLeast(0.8, "≥0.8× of back to back"),
        }),
      ];
    } finally {
      await d.stop();
    }
  },
};
