/**
 * Enum conversions between the model (src/mm) and the wire (mmsim.v1), as
 * the proto comments define them. Some proto enums are the kernel value + 1
 * (Zone, MigrateType, PageTableLevel), while the model has its own
 * numbering (e.g. its Zone has no ZONE_DMA): every mapping is by name, never
 * by arithmetic on the model's values.
 */
import { Level, MemoryType as MmMemoryType, MigrateType as MmMigrateType, Zone as MmZone } from "../mm/constants.js";
import type { ThpEnabled as MmThpEnabled } from "../mm/kernel.js";
import { MemoryType, MigrateType, PageTableLevel, Signal, Zone } from "../gen/mmsim/v1/common.js";
import { ThpEnabled } from "../gen/mmsim/v1/system.js";

export function levelToProto(level: Level | null | undefined): PageTableLevel {
  switch (level) {
    case Level.PTE:
      return PageTableLevel.PAGE_TABLE_LEVEL_PTE;
    case Level.PMD:
      return PageTableLevel.PAGE_TABLE_LEVEL_PMD;
    case Level.PUD:
      return PageTableLevel.PAGE_TABLE_LEVEL_PUD;
    default:
      return PageTableLevel.PAGE_TABLE_LEVEL_UNSPECIFIED;
  }
}

export function zoneToProto(zone: MmZone): Zone {
  switch (zone) {
    case MmZone.DMA32:
      return Zone.ZONE_DMA32;
    case MmZone.NORMAL:
      return Zone.ZONE_NORMAL;
    case MmZone.MOVABLE:
      return Zone.ZONE_MOVABLE;
    case MmZone.DEVICE:
      return Zone.ZONE_DEVICE;
    default:
      return Zone.ZONE_UNSPECIFIED;
  }
}

export function migrateTypeToProto(mt: MmMigrateType): MigrateType {
  switch (mt) {
    case MmMigrateType.UNMOVABLE:
      return MigrateType.MIGRATE_TYPE_UNMOVABLE;
    case MmMigrateType.MOVABLE:
      return MigrateType.MIGRATE_TYPE_MOVABLE;
    case MmMigrateType.RECLAIMABLE:
      return MigrateType.MIGRATE_TYPE_RECLAIMABLE;
    case MmMigrateType.CMA:
      return MigrateType.MIGRATE_TYPE_CMA;
    case MmMigrateType.ISOLATE:
      return MigrateType.MIGRATE_TYPE_ISOLATE;
    default:
      return MigrateType.MIGRATE_TYPE_UNSPECIFIED;
  }
}

/** MemoryType values equal the kernel's enum memory_type, in both. */
export function memoryTypeToProto(t: MmMemoryType): MemoryType {
  return t >= MmMemoryType.DEVICE_PRIVATE && t <= MmMemoryType.PCI_P2PDMA ? (t as number as MemoryType) : MemoryType.MEMORY_TYPE_UNSPECIFIED;
}

export function memoryTypeFromProto(t: MemoryType): MmMemoryType {
  return t as number as MmMemoryType;
}

/** Signal numbers travel as themselves (0, SIGBUS 7, SIGSEGV 11). */
export function signalToProto(sig: number): Signal {
  return sig === 7 ? Signal.SIGNAL_SIGBUS : sig === 11 ? Signal.SIGNAL_SIGSEGV : Signal.SIGNAL_UNSPECIFIED;
}

export function thpToProto(t: MmThpEnabled): ThpEnabled {
  return t === "always" ? ThpEnabled.THP_ENABLED_ALWAYS : t === "madvise" ? ThpEnabled.THP_ENABLED_MADVISE : ThpEnabled.THP_ENABLED_NEVER;
}

export function thpFromProto(t: ThpEnabled): MmThpEnabled | undefined {
  switch (t) {
    case ThpEnabled.THP_ENABLED_ALWAYS:
      return "always";
    case ThpEnabled.THP_ENABLED_MADVISE:
      return "madvise";
    case ThpEnabled.THP_ENABLED_NEVER:
      return "never";
    default:
      return undefined;
  }
}
