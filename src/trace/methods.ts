/**
 * Which mmsim.v1 methods a trace records. Every method of every mmsim.v1
 * service is in exactly one of the two tables (test/unit/trace-methods.test.ts
 * enumerates the generated services and fails on a method in neither), so a
 * new RPC cannot be left out silently.
 *
 * Recorded: everything that changes the simulated kernel or the daemon's
 * objects, and the calls whose answers a client acts on in the notifier
 * protocol (ReadBegin, ReadRetry). Not recorded: pure inspection, version
 * and health, and the control calls that act on the daemon as a whole
 * (TraceService itself, SnapshotService: a restore replaces the state a
 * replay rebuilds step by step).
 */
import * as addressSpace from "../gen/mmsim/v1/address_space.js";
import * as admin from "../gen/mmsim/v1/admin.js";
import * as device from "../gen/mmsim/v1/device.js";
import * as dmirror from "../gen/mmsim/v1/dmirror.js";
import * as fault from "../gen/mmsim/v1/fault.js";
import * as gup from "../gen/mmsim/v1/gup.js";
import * as hmm from "../gen/mmsim/v1/hmm.js";
import * as inspect from "../gen/mmsim/v1/inspect.js";
import * as memory from "../gen/mmsim/v1/memory.js";
import * as notifier from "../gen/mmsim/v1/notifier.js";
import * as session from "../gen/mmsim/v1/session.js";
import * as system from "../gen/mmsim/v1/system.js";
import * as trace from "../gen/mmsim/v1/trace.js";

/** "Service/Method" of package mmsim.v1 that are recorded. */
export const TRACED_METHODS: readonly string[] = [
  "SessionService/CreateSession",
  "SessionService/AttachSession", // stream: open and close
  "SessionService/CloseSession",
  "AddressSpaceService/CreateMm",
  "AddressSpaceService/ForkMm",
  "AddressSpaceService/ExitMm",
  "AddressSpaceService/CreateFile",
  "AddressSpaceService/ResizeFile",
  "AddressSpaceService/CloseFile",
  "AddressSpaceService/Mmap",
  "AddressSpaceService/Munmap",
  "AddressSpaceService/Mprotect",
  "AddressSpaceService/Madvise",
  "FaultService/HandleMmFault",
  "MemoryService/ReadMemory", // faults pages in
  "MemoryService/WriteMemory",
  "DeviceService/RegisterDevPagemap",
  "DeviceService/UnregisterDevPagemap",
  "DeviceService/RegisterPfnRange",
  "DeviceService/UnregisterPfnRange",
  "DeviceService/InsertPfnRange",
  "DeviceService/AllocDevicePages",
  "DeviceService/FreeDevicePages",
  "DeviceService/VmInsertPage",
  "GupService/PinUserPages",
  "GupService/UnpinHandle",
  "GupService/UnpinUserPages",
  "GupService/UnpinUserPageRange",
  "GupService/UnpinFolios",
  "GupService/PutUserPages",
  "NotifierService/Subscribe", // stream: open, deliveries and answers per step, close
  "NotifierService/InsertIntervalNotifier",
  "NotifierService/RemoveIntervalNotifier",
  "NotifierService/ReadBegin",
  "NotifierService/ReadRetry",
  "NotifierService/ReapMm",
  "HmmService/HmmRangeFault",
  "HmmService/MakeDeviceExclusive",
  "DmirrorService/CreateDmirrorDevice",
  "DmirrorService/DestroyDmirrorDevice",
  "DmirrorService/OpenMirror",
  "DmirrorService/CloseMirror",
  "DmirrorService/ReadMirror",
  "DmirrorService/WriteMirror",
  "DmirrorService/MigrateToDevice",
  "DmirrorService/MigrateToSystem",
  "DmirrorService/SnapshotMirror",
  "DmirrorService/MakeExclusive",
  "DmirrorService/CheckExclusive",
  "DmirrorService/ReleaseDeviceMemory",
  "DmirrorService/SetMirrorFlags",
  "DmirrorService/MmapDevice",
  "SystemService/SetTunables",
  "AdminService/ConfigureFaultPoint",
  "AdminService/FailNth",
  "AdminService/ClearFaultInjection",
];

/** "Service/Method" of package mmsim.v1 that are not recorded (inspection, control). */
export const UNTRACED_METHODS: readonly string[] = [
  "SessionService/ListSessions",
  "AddressSpaceService/ListMms",
  "DeviceService/ListDevices",
  "GupService/ListPins",
  "GupService/GetPinStats",
  "NotifierService/GetIntervalNotifier",
  "NotifierService/ListIntervalNotifiers",
  "DmirrorService/ListDmirrorDevices",
  "DmirrorService/GetMirror",
  "InspectService/GetMaps",
  "InspectService/GetSmaps",
  "InspectService/WalkPageTable",
  "InspectService/GetFolio",
  "InspectService/GetVmstat",
  "InspectService/GetMeminfo",
  "InspectService/CheckInvariants",
  "SystemService/GetTunables",
  "SystemService/GetVersion",
  "AdminService/ListFaultPoints",
  "AdminService/GetStateDigest",
  "TraceService/StartTrace",
  "TraceService/StopTrace",
  "TraceService/GetTraceStatus",
];

/** Services whose every method is a control call, never recorded (snapshot/restore acts on the whole daemon). */
export const UNTRACED_SERVICES: readonly string[] = ["SnapshotService"];

const TRACED = new Set(TRACED_METHODS);

/** Is "Service/Method" (package mmsim.v1) recorded? */
export function isTraced(method: string): boolean {
  return TRACED.has(method);
}

/** "Service/Method" -> "/mmsim.v1.Service/Method" */
export function fullMethod(method: string): string {
  return `/mmsim.v1.${method}`;
}

/** Generated modules of the services whose methods a trace may hold. */
const MODULES: Record<string, unknown>[] = [session, addressSpace, fault, memory, device, gup, notifier, hmm, dmirror, system, admin, inspect, trace];

export interface MethodCodec {
  path: string;
  requestStream: boolean;
  responseStream: boolean;
  requestSerialize(v: unknown): Buffer;
  requestDeserialize(b: Buffer): unknown;
  responseSerialize(v: unknown): Buffer;
  responseDeserialize(b: Buffer): unknown;
  /** proto3 JSON of a decoded response (enum names), when the response type is known */
  responseToJson?: (v: unknown) => unknown;
}

function codecs(): Map<string, MethodCodec> {
  const out = new Map<string, MethodCodec>();
  for (const mod of MODULES) {
    for (const [name, def] of Object.entries(mod)) {
      if (!name.endsWith("ServiceService") || typeof def !== "object" || def === null) continue;
      for (const m of Object.values(def as Record<string, MethodCodec>)) {
        // buf STANDARD names every response <Method>Response in the same package
        const fns = mod[`${m.path.slice(m.path.lastIndexOf("/") + 1)}Response`] as { toJSON?: (v: unknown) => unknown } | undefined;
        out.set(m.path, { ...m, responseToJson: fns?.toJSON?.bind(fns) });
      }
    }
  }
  return out;
}

export const METHODS: ReadonlyMap<string, MethodCodec> = codecs();
