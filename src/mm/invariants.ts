/**
 * CheckInvariants: recompute what can be recomputed from the page tables and
 * compare it with the stored counters (spec 2.4 and 9). Folio refcounts are
 * checked exactly: mappings + page cache + pins + every other holder that a
 * module declares through Kernel.refHolders. A leak is a violation too.
 */
import { Level, MAX_PAGE_ORDER, PAGE_SIZE, PMD_SIZE, PUD_SIZE, TASK_SIZE_MAX, VM_MIXEDMAP, VM_PFNMAP, VM_WRITE } from "./constants.js";
import { forEachLeaf } from "./inspect.js";
import type { Kernel } from "./kernel.js";
import type { Mm } from "./mm.js";
import { E_LEAF, E_PRESENT, E_SPECIAL, E_TABLE, E_WRITE, SwpKind, swpKind } from "./pagetable.js";
import { PG_allocated, PG_anon, PG_anon_exclusive, PG_hugetlb, PG_pagecache, PG_reserved, PG_shmem, SECTION_PAGES } from "./physmem.js";
import { FileKind, isCowMapping } from "./vma.js";

export interface Violation {
  code: string;
  message: string;
  pfn?: number;
  mmId?: number;
  addr?: number;
}

export interface InvariantReport {
  violations: Violation[];
  foliosChecked: number;
  mmsChecked: number;
}

const MAX_VIOLATIONS = 200;

export function checkInvariants(k: Kernel, mmId?: number): InvariantReport {
  const out: Violation[] = [];
  const add = (v: Violation) => {
    if (out.length < MAX_VIOLATIONS) out.push(v);
  };
  const p = k.phys;
  // Mappings found in page tables, per folio head: [mappings, entire].
  const maps = new Map<number, number>();
  const entire = new Map<number, number>();
  let mmsChecked = 0;
  for (const mm of k.mms.values()) {
    if (mm.exited) continue;
    mmsChecked++;
    checkMm(k, mm, add, maps, entire);
  }
  if (mmId !== undefined) {
    // A per-mm request still needs every mm for folio counts; report only its own.
    const keep = out.filter((v) => v.mmId === undefined || v.mmId === mmId);
    out.length = 0;
    out.push(...keep);
  }
  // Page cache references.
  const cacheRefs = new Map<number, number>();
  for (const f of k.files.values()) {
    for (const [idx, head] of f.cache.folios(0, Number.MAX_SAFE_INTEGER, (x) => p.folioHead(x))) {
      const n = p.folioNrPages(head);
      cacheRefs.set(head, (cacheRefs.get(head) ?? 0) + (f.kind === FileKind.HUGETLB ? 1 : n));
      if (!(p.flags(head) & PG_pagecache) || p.mapping(head) !== f.id)
        add({ code: "C1", message: `page-cache folio at index ${idx} of file ${f.id} lacks its mapping`, pfn: head });
    }
  }
  const holders = k.refHolders.map((h) => h());
  let folios = 0;
  let anonThps = 0;
  const visit = (head: number) => {
    folios++;
    const f = p.flags(head);
    const ref = p.refcount(head);
    const order = p.folioOrder(head);
    const mapped = maps.get(head) ?? 0;
    const stored = p.mapcount(head);
    if (ref < 0) add({ code: "I1", message: `negative refcount ${ref}`, pfn: head });
    if (f & PG_reserved) return;
    if (stored !== mapped) add({ code: "M1", message: `mapcount ${stored} but ${mapped} page-table mappings`, pfn: head });
    if (order > 0 && p.entireMapcount(head) !== (entire.get(head) ?? 0))
      add({ code: "M2", message: `entire mapcount ${p.entireMapcount(head)} but ${entire.get(head) ?? 0} PMD/PUD mappings`, pfn: head });
    if (order === 9 && (f & (PG_anon | PG_hugetlb)) === PG_anon && p.entireMapcount(head) > 0) anonThps++;
    let expected = mapped + (cacheRefs.get(head) ?? 0);
    let pins = 0;
    for (const h of holders) {
      const e = h.get(head);
      if (e !== undefined) {
        expected += e.refs;
        pins += e.pins;
      }
    }
    if (order > 0) {
      if (p.pincount(head) < 0) add({ code: "I2", message: `negative pincount ${p.pincount(head)}`, pfn: head });
      else if (p.pincount(head) !== pins) add({ code: "I2", message: `pincount ${p.pincount(head)} but ${pins} outstanding pins`, pfn: head });
    }
    if (ref !== expected) {
      add({ code: ref < expected ? "I1" : "L1", message: `refcount ${ref}, expected ${expected} (${mapped} mappings, ${cacheRefs.get(head) ?? 0} cache, ${expected - mapped - (cacheRefs.get(head) ?? 0)} held)`, pfn: head });
    }
  };
  // I4: every page pinned with FOLL_PIN in an anon (non-hugetlb) folio is
  // AnonExclusive, page by page (a pinned subpage of a PTE-mapped THP too).
  k.pins.forEachPinnedRun((first, count) => {
    for (let pfn = first; pfn < first + count; pfn++) {
      const head = p.folioHead(pfn);
      if ((p.flags(head) & (PG_anon | PG_hugetlb)) === PG_anon && !(p.flags(pfn) & PG_anon_exclusive)) {
        add({ code: "I4", message: `pinned anon page is not AnonExclusive (folio ${head})`, pfn });
        return;
      }
    }
  });
  // RAM folios.
  for (let base = 0; base < p.ramPages; base += SECTION_PAGES) {
    const s = p.section(base);
    if (s === undefined) continue;
    for (let i = 0; i < SECTION_PAGES; ) {
      const pfn = base + i;
      const fl = s.flags[i]!;
      if (!(fl & PG_allocated)) {
        if (s.refcount[i] !== 0 || s.mapcount[i] !== 0) add({ code: "F1", message: "free page with references", pfn });
        i++;
        continue;
      }
      const head = p.folioHead(pfn);
      const n = p.folioNrPages(head);
      if (head === pfn) visit(head);
      i += head === pfn ? Math.min(n, SECTION_PAGES - i) : 1;
    }
  }
  // ZONE_DEVICE pages in use.
  for (const pm of p.pagemaps.values()) {
    for (let pfn = pm.startPfn; pfn < pm.endPfn; pfn++) {
      if (p.flags(pfn) & PG_allocated && p.refcount(pfn) > 0 && (maps.has(pfn) || p.mapcount(pfn) !== 0)) {
        const stored = p.mapcount(pfn);
        const mapped = maps.get(pfn) ?? 0;
        if (stored !== mapped) add({ code: "M1", message: `device page mapcount ${stored} but ${mapped} mappings`, pfn });
        folios++;
      }
      // Device pages are freed to their driver at refcount 0 (6.15+): every
      // reference must be a mapping, the page cache (fsdax) or a holder.
      if (p.flags(pfn) & PG_allocated) {
        const ref = p.refcount(pfn);
        let expected = (maps.get(pfn) ?? 0) + (cacheRefs.get(pfn) ?? 0);
        for (const h of holders) expected += h.get(pfn)?.refs ?? 0;
        if (ref !== expected)
          add({ code: ref < expected ? "I1" : "L1", message: `device page refcount ${ref}, expected ${expected} (mappings, cache and holders)`, pfn });
      }
    }
  }
  // Buddy allocator consistency.
  for (const z of p.zones) {
    const byOrder = p.zoneFreeByOrder(z);
    let free = 0;
    for (let o = 0; o <= MAX_PAGE_ORDER; o++) free += byOrder[o]! << o;
    if (free !== z.freePages) add({ code: "B1", message: `zone ${z.id}: free lists hold ${free} pages, counter says ${z.freePages}` });
  }
  if (mmId === undefined && anonThps !== k.vmstat.nr_anon_transparent_hugepages)
    add({ code: "S1", message: `nr_anon_transparent_hugepages ${k.vmstat.nr_anon_transparent_hugepages} but ${anonThps} PMD-mapped anon THPs` });
  for (const c of k.extraChecks) c(add);
  return { violations: out, foliosChecked: folios, mmsChecked };
}

function checkMm(k: Kernel, mm: Mm, add: (v: Violation) => void, maps: Map<number, number>, entire: Map<number, number>): void {
  const p = k.phys;
  const pool = k.pt;
  // V1: VMAs sorted, non-overlapping, aligned.
  let prevEnd = 0;
  for (const v of mm.vmas) {
    if (v.start % PAGE_SIZE || v.end % PAGE_SIZE || v.start >= v.end || v.start < prevEnd || v.end > TASK_SIZE_MAX + PAGE_SIZE)
      add({ code: "V1", message: `bad VMA [0x${v.start.toString(16)}, 0x${v.end.toString(16)})`, mmId: mm.id, addr: v.start });
    if (v.mmId !== mm.id) add({ code: "V1", message: "VMA linked to another mm", mmId: mm.id, addr: v.start });
    prevEnd = v.end;
  }
  let rssAnon = 0;
  let rssFile = 0;
  let rssShmem = 0;
  let hugetlb = 0;
  forEachLeaf(k, mm, 0, TASK_SIZE_MAX + PAGE_SIZE, (level, addr, lo, hi) => {
    const size = level === Level.PUD ? PUD_SIZE : level === Level.PMD ? PMD_SIZE : PAGE_SIZE;
    const pages = size / PAGE_SIZE;
    const v = mm.findVma(addr);
    if (v === undefined || addr + size > v.end || addr < v.start) {
      add({ code: "T4", message: `${Level[level]} entry outside any VMA`, mmId: mm.id, addr });
      return;
    }
    if (level !== Level.PTE) {
      if (!(hi & E_LEAF) && hi & E_PRESENT) add({ code: "T1", message: "huge entry without the leaf bit", mmId: mm.id, addr });
      if (hi & E_PRESENT && lo % pages !== 0) add({ code: "T1", message: `huge leaf PFN ${lo} not aligned to ${pages} pages`, mmId: mm.id, addr });
    }
    if (!(hi & E_PRESENT)) {
      const kind = swpKind(hi);
      if (kind === SwpKind.DEVICE_PRIVATE_READ || kind === SwpKind.DEVICE_PRIVATE_WRITE || kind === SwpKind.DEVICE_EXCLUSIVE) {
        const head = p.folioHead(lo);
        maps.set(head, (maps.get(head) ?? 0) + 1);
        countRss(head, 1);
      }
      return;
    }
    if (hi & E_WRITE && !(v.flags & VM_WRITE)) add({ code: "T4", message: "writable entry in a VMA without VM_WRITE", mmId: mm.id, addr });
    if (hi & E_SPECIAL) {
      const zero = p.isZeroPfn(lo) || (level === Level.PMD && p.isHugeZeroPfn(lo));
      if (!zero && !(v.flags & (VM_PFNMAP | VM_MIXEDMAP))) add({ code: "T2", message: "special entry outside a PFNMAP/MIXEDMAP VMA", mmId: mm.id, addr });
      if (zero && hi & E_WRITE) add({ code: "T2", message: "writable zero-page entry", mmId: mm.id, addr });
      if (hi & E_WRITE && isCowMapping(v.flags)) add({ code: "T3", message: "writable special entry in a COW mapping", mmId: mm.id, addr });
      return;
    }
    if (!p.pfnValid(lo)) {
      add({ code: "T2", message: `non-special entry for PFN ${lo} without struct page`, mmId: mm.id, addr });
      return;
    }
    const head = p.folioHead(lo);
    if (!(p.flags(lo) & PG_allocated) || p.refcount(head) <= 0) {
      add({ code: "I9", message: `entry maps free page ${lo}`, mmId: mm.id, addr, pfn: lo });
      return;
    }
    maps.set(head, (maps.get(head) ?? 0) + (level === Level.PTE ? 1 : 1));
    if (level !== Level.PTE) entire.set(head, (entire.get(head) ?? 0) + 1);
    countRss(head, pages);
    if (hi & E_WRITE && !v.isShared) {
      const anonExcl = p.flags(head) & PG_anon && p.flags(lo) & PG_anon_exclusive;
      if (!anonExcl) add({ code: "T3", message: "writable entry in a private mapping maps a page that is not exclusive anon", mmId: mm.id, addr, pfn: lo });
    }
  });
  function countRss(head: number, pages: number): void {
    const f = p.flags(head);
    if (f & PG_hugetlb) hugetlb += pages;
    else if (f & PG_anon) rssAnon += pages;
    else if (f & PG_shmem) rssShmem += pages;
    else rssFile += pages;
  }
  if (rssAnon !== mm.rssAnon || rssFile !== mm.rssFile || rssShmem !== mm.rssShmem || hugetlb !== mm.hugetlbPages)
    add({
      code: "R1",
      message: `RSS counters anon/file/shmem/hugetlb ${mm.rssAnon}/${mm.rssFile}/${mm.rssShmem}/${mm.hugetlbPages}, page tables ${rssAnon}/${rssFile}/${rssShmem}/${hugetlb}`,
      mmId: mm.id,
    });
  if (mm.notifier.active === 0 && mm.notifier.seq % 2 !== 0) add({ code: "N3", message: `notifier seq ${mm.notifier.seq} odd with no invalidation active`, mmId: mm.id });
  void pool;
  void E_TABLE;
}
