/**
 * What the service layer records about model objects that the model itself
 * does not keep: which session created a file through CreateFile and whether
 * its creator reference was dropped (the model counts references, not who
 * holds them), fork parentage, dev_pagemap / PFN-range ownership, and the
 * finite RLIMIT_MEMLOCK value kept while the limit is unlimited.
 */
export interface FileRecord {
  ownerSession: number;
  /** CloseFile (or session end) dropped the creator reference. */
  closed: boolean;
}

export interface PagemapRecord {
  ownerSession: number;
  folioOrder: number;
  /** The owner ended while pages were in use; freed when they drop to 0. */
  orphaned: boolean;
}

export interface PfnRangeRecord {
  ownerSession: number;
}

export const DEFAULT_MEMLOCK_LIMIT_BYTES = 8 * 2 ** 20;

export class Registry {
  /**
   * Files created by CreateFile (not the hidden files of anonymous
   * mappings). Records stay after the model frees a file, so a closed id
   * keeps answering EBADF.
   */
  readonly files = new Map<number, FileRecord>();
  /** child mm id -> parent mm id */
  readonly mmParent = new Map<number, number>();
  readonly pagemaps = new Map<number, PagemapRecord>();
  readonly pfnRanges = new Map<number, PfnRangeRecord>();
  /** RLIMIT_MEMLOCK as SystemService shows it (the model keeps 0 = unlimited). */
  readonly memlock = { limitBytes: DEFAULT_MEMLOCK_LIMIT_BYTES, unlimited: true };
}
