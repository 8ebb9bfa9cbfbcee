/**
 * Tenants: every session belongs to the tenant of the caller that created
 * it, and every object (mm, file, dev_pagemap, PFN range, pin handle,
 * interval notifier, client mirror, dmirror device and mirror) to the tenant
 * of the session that owns it. With authentication on, a caller of role
 * "user" sees only its tenant's objects; role "admin" sees everything.
 *
 * The rule, applied before the handler runs (one table, RULES, for every
 * mmsim.v1 method):
 *
 *   - an id field naming an object of another tenant, or no object at all,
 *     fails PERMISSION_DENIED (EACCES) "<kind> <id>: no such object in
 *     tenant <t>": the answer is the same whether the object exists or not;
 *   - a PFN in a mapping request (Mmap base_pfn, InsertPfnRange,
 *     VmInsertPage, FreeDevicePages) must lie in a dev_pagemap or PFN range
 *     of the caller's tenant; GetFolio may also name RAM;
 *   - a session named by the `mmsim-session` header of another tenant is
 *     refused exactly as an unknown session (UNAUTHENTICATED, ESRCH);
 *   - listings (ListSessions, ListMms, ListDevices, ListPins,
 *     ListDmirrorDevices, CheckInvariants) show the tenant's objects only;
 *     GetStateDigest hashes the tenant's objects only;
 *   - methods that change or reveal daemon-wide state (SetTunables, fault
 *     injection, trace recording, snapshots, any method this table does not
 *     list) need the admin role (the interceptor in auth.ts refuses them to
 *     users).
 *
 * With authentication off there is no Tenancy and nothing here runs: every
 * caller is the admin of tenant "default" and unknown ids keep their
 * NOT_FOUND answers.
 */
import { type Metadata, status } from "@grpc/grpc-js";
import { PAGE_SIZE } from "../mm/constants.js";
import { dmirrorState } from "../mm/dmirror.js";
import type { Kernel } from "../mm/kernel.js";
import { type Caller, callerOf, type MethodAccess } from "./auth.js";
import { ERRNO, StatusError } from "./errors.js";
import type { Registry } from "./registry.js";
import type { Session, SessionManager } from "./session.js";

export type ObjectKind =
  | "session"
  | "mm"
  | "file"
  | "pagemap"
  | "pfnRange"
  | "pin"
  | "notifier"
  | "clientMirror"
  | "dmirrorDevice"
  | "dmirror"
  /** a PFN that a request maps or frees: must be in the tenant's device memory */
  | "mapPfn"
  /** a PFN that a request inspects: RAM, or the tenant's device memory */
  | "pfn";

const LABEL: Record<ObjectKind, string> = {
  session: "session",
  mm: "mm",
  file: "file",
  pagemap: "dev_pagemap",
  pfnRange: "pfn range",
  pin: "pin handle",
  notifier: "interval notifier",
  clientMirror: "mirror",
  dmirrorDevice: "dmirror device",
  dmirror: "mirror",
  mapPfn: "pfn",
  pfn: "pfn",
};

/** An id-carrying request field: a dotted path (camelCase), its kind, and for PFN spans the count field. */
interface IdField {
  path: string;
  kind: ObjectKind;
  /** PFN spans: the field holding their length, in pages or in bytes */
  count?: { path: string; bytes?: boolean };
}

interface Rule {
  access: MethodAccess;
  ids?: IdField[];
  /** Restrict a response to what a user of the tenant may see (mutates it). */
  filter?: (res: never, t: Tenancy, caller: Caller) => void;
}

const mm = (path = "mmId"): IdField => ({ path, kind: "mm" });
const auth = (...ids: IdField[]): Rule => ({ access: "authenticated", ids });

/** Every mmsim.v1 method: "Service/Method" -> rule. Not listed: admin only. */
export const RULES: Readonly<Record<string, Rule>> = {
  "SessionService/CreateSession": auth(),
  "SessionService/AttachSession": auth({ path: "sessionId", kind: "session" }),
  "SessionService/CloseSession": auth({ path: "sessionId", kind: "session" }),
  "SessionService/ListSessions": {
    access: "authenticated",
    filter: (res: { sessions: { sessionId: number }[] }, t, c) => (res.sessions = res.sessions.filter((s) => t.sessionVisible(s.sessionId, c))),
  },

  "AddressSpaceService/CreateMm": auth(),
  "AddressSpaceService/ForkMm": auth(mm()),
  "AddressSpaceService/ExitMm": auth(mm()),
  "AddressSpaceService/ListMms": {
    access: "authenticated",
    filter: (res: { mms: { ownerSessionId: number }[] }, t, c) => (res.mms = res.mms.filter((m) => t.sessionVisible(m.ownerSessionId, c))),
  },
  "AddressSpaceService/CreateFile": auth({ path: "pgmapId", kind: "pagemap" }),
  "AddressSpaceService/ResizeFile": auth({ path: "fileId", kind: "file" }),
  "AddressSpaceService/CloseFile": auth({ path: "fileId", kind: "file" }),
  "AddressSpaceService/Mmap": auth(
    mm(),
    { path: "fileId", kind: "file" },
    { path: "device.pfnRangeId", kind: "pfnRange" },
    { path: "device.basePfn", kind: "mapPfn", count: { path: "length", bytes: true } },
  ),
  "AddressSpaceService/Munmap": auth(mm()),
  "AddressSpaceService/Mprotect": auth(mm()),
  "AddressSpaceService/Madvise": auth(mm()),

  "FaultService/HandleMmFault": auth(mm()),
  "MemoryService/ReadMemory": auth(mm()),
  "MemoryService/WriteMemory": auth(mm()),

  "DeviceService/RegisterDevPagemap": auth(),
  "DeviceService/UnregisterDevPagemap": auth({ path: "pgmapId", kind: "pagemap" }),
  "DeviceService/RegisterPfnRange": auth(),
  "DeviceService/UnregisterPfnRange": auth({ path: "pfnRangeId", kind: "pfnRange" }),
  "DeviceService/InsertPfnRange": auth(mm(), { path: "pfn", kind: "mapPfn", count: { path: "nrPages" } }),
  "DeviceService/ListDevices": {
    access: "authenticated",
    filter: (res: { pagemaps: { pgmapId: number }[]; pfnRanges: { pfnRangeId: number }[] }, t, c) => {
      res.pagemaps = res.pagemaps.filter((p) => t.visible("pagemap", p.pgmapId, c));
      res.pfnRanges = res.pfnRanges.filter((r) => t.visible("pfnRange", r.pfnRangeId, c));
    },
  },
  "DeviceService/AllocDevicePages": auth({ path: "pgmapId", kind: "pagemap" }),
  "DeviceService/FreeDevicePages": auth({ path: "pfns", kind: "mapPfn" }),
  "DeviceService/VmInsertPage": auth(mm(), { path: "pfn", kind: "mapPfn" }),

  // Releases name what the calling session holds (pins.ts): nothing of
  // another session can be released, so page lists need no tenant check.
  "GupService/PinUserPages": auth(mm()),
  "GupService/UnpinHandle": auth({ path: "handle", kind: "pin" }),
  "GupService/UnpinUserPages": auth(),
  "GupService/UnpinUserPageRange": auth(),
  "GupService/UnpinFolios": auth(),
  "GupService/PutUserPages": auth(),
  "GupService/ListPins": {
    access: "authenticated",
    ids: [{ path: "sessionId", kind: "session" }],
    filter: (res: { handles: { sessionId: number }[] }, t, c) => (res.handles = res.handles.filter((h) => t.sessionVisible(h.sessionId, c))),
  },
  "GupService/GetPinStats": auth({ path: "sessionId", kind: "session" }),

  "InspectService/GetMaps": auth(mm()),
  "InspectService/GetSmaps": auth(mm()),
  "InspectService/WalkPageTable": auth(mm()),
  "InspectService/GetFolio": {
    access: "authenticated",
    ids: [{ path: "pfn", kind: "pfn" }],
    filter: (res: { fileId: number }, t, c) => {
      if (res.fileId !== 0 && !t.visible("file", res.fileId, c)) res.fileId = 0;
    },
  },
  "InspectService/GetVmstat": auth(),
  "InspectService/GetMeminfo": auth(),
  "InspectService/CheckInvariants": {
    access: "authenticated",
    ids: [mm()],
    filter: (res: { violations: { mmId: number }[] }, t, c) => (res.violations = res.violations.filter((v) => v.mmId === 0 || t.visible("mm", v.mmId, c))),
  },

  "SystemService/GetTunables": auth(),
  "SystemService/SetTunables": { access: "admin" },
  "SystemService/GetVersion": auth(),

  "NotifierService/Subscribe": auth(),
  "NotifierService/InsertIntervalNotifier": auth({ path: "mirrorId", kind: "clientMirror" }, mm()),
  "NotifierService/RemoveIntervalNotifier": auth({ path: "notifierId", kind: "notifier" }),
  "NotifierService/ReadBegin": auth({ path: "notifierId", kind: "notifier" }),
  "NotifierService/ReadRetry": auth({ path: "notifierId", kind: "notifier" }),
  "NotifierService/GetIntervalNotifier": auth({ path: "notifierId", kind: "notifier" }),
  "NotifierService/ListIntervalNotifiers": auth(mm()),
  "NotifierService/ReapMm": auth(mm()),

  "HmmService/HmmRangeFault": auth({ path: "notifierId", kind: "notifier" }),
  "HmmService/MakeDeviceExclusive": auth(mm()),

  "DmirrorService/CreateDmirrorDevice": auth(),
  "DmirrorService/DestroyDmirrorDevice": auth({ path: "deviceId", kind: "dmirrorDevice" }),
  "DmirrorService/ListDmirrorDevices": {
    access: "authenticated",
    filter: (res: { devices: { deviceId: number }[] }, t, c) => (res.devices = res.devices.filter((dev) => t.visible("dmirrorDevice", dev.deviceId, c))),
  },
  "DmirrorService/OpenMirror": auth({ path: "deviceId", kind: "dmirrorDevice" }, mm()),
  ...Object.fromEntries(
    [
      "CloseMirror",
      "GetMirror",
      "ReadMirror",
      "WriteMirror",
      "MigrateToDevice",
      "MigrateToSystem",
      "SnapshotMirror",
      "MakeExclusive",
      "CheckExclusive",
      "ReleaseDeviceMemory",
      "SetMirrorFlags",
      "MmapDevice",
    ].map((m) => [`DmirrorService/${m}`, auth({ path: "mirrorId", kind: "dmirror" })]),
  ),

  "AdminService/ConfigureFaultPoint": { access: "admin" },
  "AdminService/FailNth": { access: "admin" },
  "AdminService/ClearFaultInjection": { access: "admin" },
  "AdminService/ListFaultPoints": auth(),
  // Users get the digest of their tenant's objects (admin-service.ts).
  "AdminService/GetStateDigest": auth(),

  // Saving and restoring the whole daemon is the admin's (not listed); a
  // user reclaims a restored session of its own tenant by name (the handler
  // looks at the tenant's sessions only).
  "SnapshotService/ReclaimSession": auth(),
};

const PKG = "mmsim.v1.";

/**
 * Guard of a full method path ("/pkg.Service/Method"): health is open,
 * reflection needs a token, mmsim.v1 methods follow RULES (admin when not
 * listed), anything else needs the admin role.
 */
export function methodAccess(path: string): MethodAccess {
  const p = path.startsWith("/") ? path.slice(1) : path;
  if (p.startsWith("grpc.health.v1.")) return "open";
  if (p.startsWith("grpc.reflection.")) return "authenticated";
  if (p.startsWith(PKG)) return RULES[p.slice(PKG.length)]?.access ?? "admin";
  return "admin";
}

function field(req: unknown, path: string): unknown {
  let v: unknown = req;
  for (const part of path.split(".")) {
    if (typeof v !== "object" || v === null) return undefined;
    v = (v as Record<string, unknown>)[part];
  }
  return v;
}

/** Per-method check, resolved once when the handler is built. */
export interface MethodGuard {
  /** Throws PERMISSION_DENIED when the request names an id the caller may not see. */
  check(req: unknown, md: Metadata): void;
  /** Restricts the response for a user; returns it. */
  filter<T>(res: T, md: Metadata): T;
}

export class Tenancy {
  /** Tenant of every session created (kept after it ends: its objects may outlive it). */
  private readonly sessionTenant = new Map<number, string>();

  constructor(
    private readonly k: Kernel,
    private readonly registry: Registry,
    private readonly sessions: SessionManager,
    /** Client notifiers and mirrors (notifier-service.ts), looked up lazily. */
    private readonly clientNotifiers: () => {
      notifiers: ReadonlyMap<number, { mirror: { session: Session } }>;
      mirrors: ReadonlyMap<number, { session: Session }>;
    },
  ) {
    // A session named in the mmsim-session header must be the caller's tenant's.
    sessions.visible = (md, s) => {
      const c = callerOf(md);
      return c.role === "admin" || c.tenant === s.tenant;
    };
  }

  sessionCreated(s: Session): void {
    this.sessionTenant.set(s.id, s.tenant);
  }

  /** Recorded at creation; a live session made some other way (restore) answers for itself. */
  tenantOfSession(id: number): string | undefined {
    return this.sessionTenant.get(id) ?? this.sessions.get(id)?.tenant;
  }

  sessionVisible(id: number, c: Caller): boolean {
    return c.role === "admin" || this.tenantOfSession(id) === c.tenant;
  }

  /** The session that owns object `id` of `kind`, or undefined if there is none. */
  ownerSession(kind: Exclude<ObjectKind, "pfn" | "mapPfn">, id: number): number | undefined {
    const k = this.k;
    switch (kind) {
      case "session":
        return this.tenantOfSession(id) !== undefined ? id : undefined;
      case "mm":
        return k.mms.get(id)?.ownerSession;
      case "file":
        return this.registry.files.get(id)?.ownerSession;
      case "pagemap": {
        const rec = this.registry.pagemaps.get(id);
        if (rec !== undefined) return rec.ownerSession;
        for (const dev of dmirrorState(k).devices.values()) if (dev.chunks.some((c) => c.pm.id === id)) return dev.session;
        return undefined;
      }
      case "pfnRange":
        return this.registry.pfnRanges.get(id)?.ownerSession;
      case "pin":
        return k.pins.handleInfo(id)?.session;
      case "notifier": {
        // a client mirror's notifier, or the one a dmirror mirror registers
        const r = this.clientNotifiers().notifiers.get(id);
        if (r !== undefined) return r.mirror.session.id;
        for (const m of dmirrorState(k).mirrors.values()) if (m.sub.id === id) return m.sub.session;
        return undefined;
      }
      case "clientMirror":
        return this.clientNotifiers().mirrors.get(id)?.session.id;
      case "dmirrorDevice":
        return dmirrorState(k).devices.get(id)?.session;
      case "dmirror":
        return dmirrorState(k).mirrors.get(id)?.sub.session;
    }
  }

  visible(kind: Exclude<ObjectKind, "pfn" | "mapPfn">, id: number, c: Caller): boolean {
    if (c.role === "admin") return true;
    const owner = this.ownerSession(kind, id);
    return owner !== undefined && this.tenantOfSession(owner) === c.tenant;
  }

  /** [first, first + count) lies inside device memory (dev_pagemap or PFN range) of the caller's tenant. */
  private pfnsVisible(first: number, count: number, c: Caller): boolean {
    const p = this.k.phys;
    const last = first + Math.max(count, 1) - 1;
    for (const pm of p.pagemaps.values())
      if (first >= pm.startPfn && last < pm.startPfn + pm.nrPages) return this.visible("pagemap", pm.id, c);
    for (const r of p.pfnRanges.values()) if (first >= r.startPfn && last < r.startPfn + r.nrPages) return this.visible("pfnRange", r.id, c);
    return false;
  }

  private deny(kind: ObjectKind, id: number, c: Caller): never {
    const shown = kind === "pfn" || kind === "mapPfn" ? `0x${id.toString(16)}` : String(id);
    throw new StatusError(status.PERMISSION_DENIED, ERRNO.EACCES, `${LABEL[kind]} ${shown}: no such object in tenant ${c.tenant}`);
  }

  /** Throws unless every id field of `req` names an object the caller may see (0 = unset, skipped). */
  checkIds(fields: readonly IdField[], req: unknown, c: Caller): void {
    if (c.role === "admin") return;
    for (const f of fields) {
      const v = field(req, f.path);
      const ids = Array.isArray(v) ? (v as unknown[]) : [v];
      for (const id of ids) {
        if (typeof id !== "number" || id === 0) continue;
        if (f.kind === "pfn" || f.kind === "mapPfn") {
          if (f.kind === "pfn" && id < this.k.phys.ramPages) continue;
          let count = 1;
          if (f.count !== undefined) {
            const n = field(req, f.count.path);
            if (typeof n === "number") count = f.count.bytes === true ? Math.ceil(n / PAGE_SIZE) : n;
          }
          if (!this.pfnsVisible(id, count, c)) this.deny(f.kind, id, c);
        } else if (!this.visible(f.kind, id, c)) this.deny(f.kind, id, c);
      }
    }
  }

  /** The guard of a "Service/Method" of mmsim.v1. */
  guard(method: string): MethodGuard {
    const rule = RULES[method];
    const ids = rule?.ids ?? [];
    const filter = rule?.filter as ((res: unknown, t: Tenancy, c: Caller) => void) | undefined;
    return {
      check: (req, md) => {
        const c = callerOf(md);
        // The interceptor already refused users on admin methods; this holds
        // for calls that reach a handler some other way.
        if (rule === undefined || rule.access === "admin") {
          if (c.role !== "admin") throw new StatusError(status.PERMISSION_DENIED, ERRNO.EPERM, `${method} needs the admin role`);
          return;
        }
        if (ids.length > 0) this.checkIds(ids, req, c);
      },
      filter: (res, md) => {
        if (filter === undefined) return res;
        const c = callerOf(md);
        if (c.role !== "admin") filter(res, this, c);
        return res;
      },
    };
  }

  /** AttachSession (a server stream, outside the unary wrapper). */
  checkAttach(req: { sessionId: number }, md: Metadata): void {
    this.checkIds(RULES["SessionService/AttachSession"]!.ids!, req, callerOf(md));
  }

  /** Digest scope of a user: the objects of its tenant. */
  digestScope(md: Metadata): DigestScope | undefined {
    const c = callerOf(md);
    if (c.role === "admin") return undefined;
    return {
      mm: (ownerSession) => this.tenantOfSession(ownerSession) === c.tenant,
      file: (id) => this.visible("file", id, c),
      pagemap: (id) => this.visible("pagemap", id, c),
      pfnRange: (id) => this.visible("pfnRange", id, c),
    };
  }
}

/** Which objects a tenant-scoped state digest covers (admin-service.ts). */
export interface DigestScope {
  /** by the mm's owner session */
  mm(ownerSession: number): boolean;
  file(id: number): boolean;
  pagemap(id: number): boolean;
  pfnRange(id: number): boolean;
}
