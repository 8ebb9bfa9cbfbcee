/**
 * What a session owns among the objects of this layer (mms, files, PFN
 * ranges, dev_pagemaps): how they are released when it ends and how they are
 * counted by ListSessions. Pins, notifiers and mirrors register their own
 * hooks at the "pins" / "notifiers" stages when those features land.
 */
import { exitMm, closeFile } from "../mm/mmap.js";
import { revokePfnRange } from "./device-ops.js";
import type { ServiceDeps } from "./handler.js";
import { modelOps, runModelOp } from "./model-op.js";

/** Free orphaned dev_pagemaps whose last page reference has dropped. */
export function sweepOrphanedPagemaps(d: ServiceDeps): void {
  for (const [id, rec] of d.registry.pagemaps) {
    if (!rec.orphaned) continue;
    const pm = d.kernel.phys.pagemaps.get(id);
    if (pm === undefined) {
      d.registry.pagemaps.delete(id);
      continue;
    }
    if (pm.allocated > 0) continue;
    d.kernel.phys.unregisterPagemap(id);
    d.registry.pagemaps.delete(id);
    d.log.debug({ pgmap: id }, "orphaned dev_pagemap freed");
  }
}

export function registerSessionResources(d: ServiceDeps): void {
  const { kernel: k, sessions, registry } = d;

  // As ExitMm, so RELEASE and UNMAP reach other sessions' notifiers.
  sessions.onRelease("mms", "exit mms", async (s) => {
    const ids = [...k.mms.values()].filter((mm) => mm.ownerSession === s.id && !mm.exited).map((mm) => mm.id);
    for (const id of ids) {
      await runModelOp(k, [id], "write", () => {
        const mm = k.mms.get(id);
        if (mm !== undefined && !mm.exited) exitMm(k, mm);
      });
    }
  });

  // As CloseFile: the creator reference goes; mapped files live on.
  sessions.onRelease("files", "close files", async (s) => {
    for (const [id, rec] of registry.files) {
      if (rec.ownerSession !== s.id || rec.closed) continue;
      rec.closed = true;
      await runModelOp(k, [], "write", () => {
        const f = k.files.get(id);
        if (f !== undefined) closeFile(k, f);
      });
    }
  });

  sessions.onRelease("pfn-ranges", "unregister PFN ranges", async (s) => {
    for (const [id, rec] of [...registry.pfnRanges]) {
      if (rec.ownerSession !== s.id) continue;
      registry.pfnRanges.delete(id);
      if (!k.phys.pfnRanges.has(id)) continue;
      await runModelOp(k, [], "write", () => revokePfnRange(k, id));
    }
  });

  // memunmap_pages waits for the pgmap refcount: a busy pagemap is orphaned
  // and freed by the after-op sweep once its last page reference drops.
  sessions.onRelease("pagemaps", "unregister dev_pagemaps", async (s) => {
    for (const [id, rec] of registry.pagemaps) {
      if (rec.ownerSession !== s.id || rec.orphaned) continue;
      const pm = k.phys.pagemaps.get(id);
      if (pm === undefined) {
        registry.pagemaps.delete(id);
        continue;
      }
      rec.orphaned = true;
      await runModelOp(k, [], "write", () => {});
    }
  });

  modelOps(k).afterOp.add(() => sweepOrphanedPagemaps(d));

  sessions.addCounters((s) => {
    let mmCount = 0;
    for (const mm of k.mms.values()) if (mm.ownerSession === s.id && !mm.exited) mmCount++;
    let fileCount = 0;
    for (const [id, rec] of registry.files) if (rec.ownerSession === s.id && k.files.has(id)) fileCount++;
    return { mmCount, fileCount };
  });
}
