/**
 * A device driver written in TypeScript against mmsimd, with the clients
 * generated from the protos (src/gen, by `npm run build`). The same scenario
 * as examples/python/driver.py: a session that lives while its AttachSession
 * stream is open, a process, memory writes and reads, fork and COW, a fault,
 * a device BAR mapped VM_PFNMAP and filled by vmf_insert_pfn_range, a
 * long-term pin, a device mirror (hmm_range_fault, then the munmap
 * invalidation it acknowledges),
 * inspection, and the end of the session.
 *
 *   npx tsx examples/ts/driver.ts --addr 127.0.0.1:50051
 *   node dist/examples/ts/driver.js --addr 127.0.0.1:50051     (after npm run build)
 *
 * Exit status: 0 when every step behaved as expected, 1 otherwise.
 */
import { pathToFileURL } from "node:url";
import { type CallOptions, type ClientReadableStream, credentials, Metadata, type ServiceError, type StatusObject } from "@grpc/grpc-js";
import { AddressSpaceServiceClient, DeviceMapping } from "../../src/gen/mmsim/v1/address_space.js";
import { pageTableLevelToJSON } from "../../src/gen/mmsim/v1/common.js";
import { DeviceServiceClient, InsertMode } from "../../src/gen/mmsim/v1/device.js";
import { FaultAccess, FaultServiceClient } from "../../src/gen/mmsim/v1/fault.js";
import { GupOutput, GupServiceClient, GupVariant } from "../../src/gen/mmsim/v1/gup.js";
import { HmmOutput, HmmServiceClient } from "../../src/gen/mmsim/v1/hmm.js";
import { InspectServiceClient, pageTableEntryKindToJSON } from "../../src/gen/mmsim/v1/inspect.js";
import { MemoryServiceClient } from "../../src/gen/mmsim/v1/memory.js";
import { type Invalidation, mmuNotifyEventToJSON, NotifierServiceClient, type SubscribeResponse } from "../../src/gen/mmsim/v1/notifier.js";
import { type AttachSessionResponse, SessionNoticeKind, SessionServiceClient, sessionNoticeKindToJSON } from "../../src/gen/mmsim/v1/session.js";
import { SystemServiceClient } from "../../src/gen/mmsim/v1/system.js";

const MAP_SHARED = 0x1;
const MAP_PRIVATE = 0x2;
const MAP_ANONYMOUS = 0x20;
const PROT_RW = 0x3;
const MiB = 2 ** 20;

class Failed extends Error {}

function expect(cond: boolean, what: string): void {
  if (!cond) throw new Failed(what);
}

/**
 * `client.method(req, md, options, cb)` as a promise (the generated clients'
 * last overload, from which TypeScript infers the request and response types).
 */
function call<Req, Res>(
  client: object,
  fn: (req: Req, md: Metadata, options: Partial<CallOptions>, cb: (err: ServiceError | null, res: Res) => void) => unknown,
  req: Req,
  md = new Metadata(),
): Promise<Res> {
  return new Promise((resolve, reject) => {
    fn.call(client, req, md, {}, (err, res) => (err ? reject(err) : resolve(res)));
  });
}

/** The kernel errno name of a failed call (trailer mmsim-errno-name). */
function errnoOf(e: ServiceError): string {
  return String(e.metadata.get("mmsim-errno-name")[0] ?? e.code);
}

const hex = (n: number) => `0x${n.toString(16)}`;

/** Runs the scenario against the daemon at `address`; prints through `print`. */
export async function runDriver(address: string, print: (line: string) => void = console.log): Promise<void> {
  const creds = credentials.createInsecure();
  // Keepalive: the daemon notices a dead driver even on an idle stream.
  const options = { "grpc.keepalive_time_ms": 30_000, "grpc.keepalive_timeout_ms": 10_000, "grpc.keepalive_permit_without_calls": 1 };
  const sessions = new SessionServiceClient(address, creds, options);
  const aspace = new AddressSpaceServiceClient(address, creds);
  const faults = new FaultServiceClient(address, creds);
  const memory = new MemoryServiceClient(address, creds);
  const device = new DeviceServiceClient(address, creds);
  const inspect = new InspectServiceClient(address, creds);
  const system = new SystemServiceClient(address, creds);
  const gup = new GupServiceClient(address, creds);
  const notifier = new NotifierServiceClient(address, creds);
  const hmm = new HmmServiceClient(address, creds);
  let stream: ClientReadableStream<AttachSessionResponse> | undefined;
  try {
    const v = await call(system, system.getVersion, {});
    print(`connected to mmsimd ${v.version} (Linux ${v.kernelBaseline} model, ${v.api})`);

    // A non-persistent session: it lives while the AttachSession stream is open.
    const { sessionId } = await call(sessions, sessions.createSession, { name: "ts-driver", persistent: false });
    const md = new Metadata();
    md.set("mmsim-session", String(sessionId));
    const notices: SessionNoticeKind[] = [];
    stream = sessions.attachSession({ sessionId });
    const s = stream;
    const attached = new Promise<void>((resolve, reject) => {
      s.on("data", (m: AttachSessionResponse) => (m.attached ? resolve() : m.notice && notices.push(m.notice.kind)));
      s.on("error", reject);
    });
    const ended = new Promise<StatusObject>((resolve) => s.on("status", resolve));
    await attached;
    print(`session ${sessionId} attached`);

    const { mmId: mm } = await call(aspace, aspace.createMm, { name: "ts-proc" }, md);
    const { addr } = await call(aspace, aspace.mmap, { mmId: mm, addr: 0, length: 4 * MiB, prot: PROT_RW, flags: MAP_PRIVATE | MAP_ANONYMOUS, fileId: 0, offset: 0 }, md);
    print(`mm ${mm}: 4 MiB of anonymous memory at ${hex(addr)}`);

    const text = Buffer.from("hello from typescript");
    const w = await call(memory, memory.writeMemory, { mmId: mm, addr, data: text }, md);
    const r = await call(memory, memory.readMemory, { mmId: mm, addr, length: text.length }, md);
    expect(w.bytesDone === text.length && Buffer.from(r.data).equals(text), `read back ${Buffer.from(r.data).toString()}`);
    print(`wrote and read back '${Buffer.from(r.data).toString()}'`);

    const f = await call(faults, faults.handleMmFault, { mmId: mm, addr: addr + 2 * MiB, access: FaultAccess.FAULT_ACCESS_WRITE, flags: 0 }, md);
    expect(f.vmFault === 0 && f.writable, `write fault: vm_fault ${hex(f.vmFault)}`);
    print(`write fault at ${hex(addr + 2 * MiB)}: ${pageTableLevelToJSON(f.level).replace("PAGE_TABLE_LEVEL_", "")} leaf, pfn ${hex(f.pfn)}, thp=${f.thp}`);

    const { childMmId: child } = await call(aspace, aspace.forkMm, { mmId: mm, name: "" }, md);
    await call(memory, memory.writeMemory, { mmId: child, addr, data: Buffer.from("hello from the child!") }, md);
    const p = Buffer.from((await call(memory, memory.readMemory, { mmId: mm, addr, length: text.length }, md)).data).toString();
    const c = Buffer.from((await call(memory, memory.readMemory, { mmId: child, addr, length: text.length }, md)).data).toString();
    expect(p === text.toString() && c === "hello from the child!", `after COW parent '${p}' child '${c}'`);
    print(`fork: child mm ${child}; after the child's write (COW) parent reads '${p}', child reads '${c}'`);

    // A device BAR without struct pages, mapped VM_PFNMAP by the driver's
    // ->mmap and filled by vmf_insert_pfn_range with the largest leaves.
    const bar = await call(device, device.registerPfnRange, { name: "ts-bar0", nrPages: 1024, alignPages: 0 }, md);
    const dev = await call(
      aspace,
      aspace.mmap,
      {
        mmId: mm,
        addr: 0,
        length: 4 * MiB,
        prot: PROT_RW,
        flags: MAP_SHARED,
        fileId: 0,
        offset: 0,
        device: { kind: DeviceMapping.DEVICE_MAPPING_PFNMAP, pfnRangeId: bar.pfnRangeId, hugeFault: true },
      },
      md,
    );
    const ins = await call(device, device.insertPfnRange, { mmId: mm, addr: dev.addr, pfn: bar.pfnStart, nrPages: 1024, mode: InsertMode.INSERT_MODE_EAGER, write: false }, md);
    expect(ins.errnoValue === 0 && ins.pmdLeaves === 2, `insert: errno ${ins.errnoValue}, ${ins.pmdLeaves} PMD leaves`);
    print(`BAR pfn ${hex(bar.pfnStart)}+1024 mapped at ${hex(dev.addr)}: ${ins.pmdLeaves} PMD leaves, ${ins.pteLeaves} PTE leaves`);

    try {
      await call(aspace, aspace.munmap, { mmId: mm, addr: addr + 1, length: 4096 }, md);
      throw new Failed("munmap of an unaligned address succeeded");
    } catch (e) {
      if (e instanceof Failed) throw e;
      print(`munmap(${hex(addr + 1)}) failed as the kernel would: ${errnoOf(e as ServiceError)} (${(e as ServiceError).details})`);
    }

    // Pinning, as an RDMA driver registers a buffer: a fresh 2 MiB buffer,
    // populated, pinned long-term for writing (pin_user_pages with
    // FOLL_WRITE|FOLL_LONGTERM), reported as PFN ranges; then unpinned.
    const FOLL_WRITE = 0x1;
    const FOLL_LONGTERM = 0x100;
    const MADV_POPULATE_WRITE = 23;
    const buf = await call(aspace, aspace.mmap, { mmId: mm, addr: 0, length: 2 * MiB, prot: PROT_RW, flags: MAP_PRIVATE | MAP_ANONYMOUS, fileId: 0, offset: 0 }, md);
    await call(aspace, aspace.madvise, { mmId: mm, addr: buf.addr, length: 2 * MiB, advice: MADV_POPULATE_WRITE }, md);
    const pin = await call(
      gup,
      gup.pinUserPages,
      { variant: GupVariant.GUP_VARIANT_PIN_USER_PAGES, mmId: mm, start: buf.addr, nrPages: 512, gupFlags: FOLL_WRITE | FOLL_LONGTERM, output: GupOutput.GUP_OUTPUT_RANGES, wantFolioRuns: false },
      md,
    );
    expect(pin.ret === 512 && pin.handle !== 0, `pin_user_pages returned ${pin.ret}`);
    print(`pinned 512 pages long-term at ${hex(buf.addr)} (handle ${pin.handle}): ${pin.ranges.map((x) => `pfn ${hex(x.pfn)}+${x.count}`).join(", ")}`);
    const un = await call(gup, gup.unpinHandle, { handle: pin.handle, makeDirty: true }, md);
    const ps = await call(gup, gup.getPinStats, { sessionId: 0 });
    expect(un.released?.pages === 512 && ps.outstandingPins === 0, `unpinned ${un.released?.pages}, ${ps.outstandingPins} pins outstanding`);
    print(`unpinned ${un.released?.pages} pages; nr_foll_pin_acquired ${ps.nrFollPinAcquired} == nr_foll_pin_released ${ps.nrFollPinReleased}`);
    // A device mirror of the buffer, as a GPU driver keeps one (HMM): a
    // Subscribe stream carries the MMU-notifier invalidations to this
    // process, which tears its device mapping down and acknowledges; the
    // daemon's munmap waits for that acknowledgement, as the kernel waits for
    // invalidate_range_start.
    const sub = notifier.subscribe(md);
    const acked: Invalidation[] = [];
    const subEnded = new Promise<StatusObject>((resolve) => sub.on("status", resolve));
    sub.on("error", () => {
      // the status event carries the outcome
    });
    const mirrorId = await new Promise<number>((resolve, reject) => {
      sub.on("data", (m: SubscribeResponse) => {
        if (m.subscribed) resolve(m.subscribed.mirrorId);
        else if (m.invalidations) {
          // Here a real driver clears its device page table for [start, end)
          // and flushes its TLB, then acknowledges.
          acked.push(...m.invalidations.invalidations);
          sub.write({ ack: { invalidationIds: m.invalidations.invalidations.map((i) => i.invalidationId), refusedIds: [] } });
        }
      });
      sub.on("status", (st: StatusObject) => reject(new Failed(`Subscribe ended (${st.code}) before its first message`)));
      sub.write({ open: { name: "ts-gpu" } });
    });
    const note = await call(notifier, notifier.insertIntervalNotifier, { mirrorId, mmId: mm, start: buf.addr, length: 2 * MiB }, md);
    const { seq } = await call(notifier, notifier.readBegin, { notifierId: note.notifierId }, md);
    const HMM_PFN_REQ_FAULT = 0x8000_0000;
    const HMM_PFN_REQ_WRITE = 0x4000_0000;
    const hf = await call(
      hmm,
      hmm.hmmRangeFault,
      {
        notifierId: note.notifierId,
        notifierSeq: seq,
        start: buf.addr,
        end: buf.addr + 2 * MiB,
        defaultFlags: (HMM_PFN_REQ_FAULT | HMM_PFN_REQ_WRITE) >>> 0,
        pfnFlagsMask: 0,
        hmmPfns: Buffer.alloc(0),
        devPrivateOwner: 0,
        output: HmmOutput.HMM_OUTPUT_COMPACT,
      },
      md,
    );
    expect(hf.errnoValue === 0 && hf.runs.length >= 1, `hmm_range_fault: errno ${hf.errnoValue}, ${hf.runs.length} runs`);
    const before = await call(notifier, notifier.readRetry, { notifierId: note.notifierId, seq }, md);
    expect(!before.retry, "mmu_interval_read_retry reported a change with nothing running");
    const runs = hf.runs.map((x) => `pfn ${hex(x.pfn)}+${x.nrPages} order ${x.order}`).join(", ");
    print(`mirrored ${hex(buf.addr)}+2 MiB (notifier ${note.notifierId}): hmm_range_fault ${hf.runs.length} run(s): ${runs}`);

    await call(aspace, aspace.munmap, { mmId: mm, addr: buf.addr, length: 2 * MiB }, md);
    // Munmap has returned, so its invalidation was received and acknowledged.
    const inv = acked[0];
    expect(
      acked.length === 1 && inv !== undefined && inv.start === buf.addr && inv.end === buf.addr + 2 * MiB && inv.notifierIds.length === 1 && inv.notifierIds[0] === note.notifierId,
      `invalidations for one munmap: ${JSON.stringify(acked)}`,
    );
    const ev = mmuNotifyEventToJSON(inv!.event).replace("MMU_NOTIFY_EVENT_", "");
    expect(ev === "UNMAP", `munmap sent ${ev}`);
    const after = await call(notifier, notifier.readRetry, { notifierId: note.notifierId, seq }, md);
    expect(after.retry, "mmu_interval_read_retry missed the munmap");
    print(`munmap invalidated the mirror: ${ev} ${hex(inv!.start)}-${hex(inv!.end)} seq ${inv!.seq}, acknowledged; read_retry=${after.retry}`);
    await call(notifier, notifier.removeIntervalNotifier, { notifierId: note.notifierId }, md);
    sub.end();
    const subStatus = await subEnded;
    expect(subStatus.code === 0, `mirror stream ended ${subStatus.code} ${subStatus.details}`);

    const maps = await call(inspect, inspect.getMaps, { mmId: mm });
    print("maps:");
    for (const m of maps.vmas) print(`  ${m.start.toString(16)}-${m.end.toString(16)} ${m.perms} ${m.name}`);
    const walk = await call(inspect, inspect.walkPageTable, { mmId: mm, start: dev.addr, end: dev.addr + 4 * MiB, maxRuns: 0 });
    for (const run of walk.runs) {
      const level = pageTableLevelToJSON(run.level).replace("PAGE_TABLE_LEVEL_", "");
      const kind = pageTableEntryKindToJSON(run.kind).replace("PAGE_TABLE_ENTRY_KIND_", "");
      print(`  page table: ${run.nr} ${level} ${kind} entries at ${hex(run.addr)} -> pfn ${hex(run.pfn)}`);
    }
    const vm = (await call(inspect, inspect.getVmstat, {})).counters;
    print(`vmstat: pgfault ${vm.pgfault}, thp_fault_alloc ${vm.thp_fault_alloc}, cow ${vm.mmsim_cow_faults}`);
    const chk = await call(inspect, inspect.checkInvariants, {});
    expect(chk.violations.length === 0, `invariant violations: ${JSON.stringify(chk.violations)}`);
    print(`invariants: OK (${chk.foliosChecked} folios, ${chk.mmsChecked} mms)`);

    await call(sessions, sessions.closeSession, { sessionId });
    const st = await ended;
    const kinds = notices.map((k) => sessionNoticeKindToJSON(k).replace("SESSION_NOTICE_KIND_", ""));
    expect(st.code === 0 && notices.includes(SessionNoticeKind.SESSION_NOTICE_KIND_SESSION_CLOSING), `stream ended ${st.code}, notices ${kinds.join(",")}`);
    print(`session closed: stream ended OK after ${kinds.join(", ")}`);
  } finally {
    stream?.cancel();
    for (const c of [sessions, aspace, faults, memory, device, inspect, system, gup, notifier, hmm]) c.close();
  }
}

if (process.argv[1] !== undefined && import.meta.url === pathToFileURL(process.argv[1]).href) {
  const i = process.argv.indexOf("--addr");
  const address = i >= 0 ? process.argv[i + 1]! : (process.env.MMSIM_ADDR ?? "127.0.0.1:50051");
  runDriver(address).then(
    () => console.log("driver finished OK"),
    (e: unknown) => {
      console.error(`driver.ts: ${e instanceof Failed ? `unexpected result: ${e.message}` : ((e as ServiceError).details ?? String(e))}`);
      process.exitCode = 1;
    },
  );
}
