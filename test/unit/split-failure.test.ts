/**
 * Callers of split_huge_pmd that used to ignore a failed split (reachable
 * only when page-table allocation fails, i.e. under fault injection): the
 * kernel's split cannot fail for anon THPs (a page table is deposited at
 * fault time); the model allocates it at split time, so each caller must
 * take a defined path instead of retrying the same address forever.
 */
import { describe, expect, it } from "vitest";
import { FOLL_LONGTERM, FOLL_WRITE, Level, MADV_FREE } from "../../src/mm/constants.js";
import { Errno } from "../../src/mm/errors.js";
import { pinUserPages } from "../../src/mm/gup.js";
import { doMadvise, forkMm } from "../../src/mm/mmap.js";
import { releaseSession } from "../../src/mm/pins.js";
import { checkInvariants } from "../../src/mm/invariants.js";
import { MiB, bytes, expectErrno, mkKernel, mkMm, mmap, read, runAt, write } from "./helpers.js";

const PMD = 2 * MiB;

describe("a split_huge_pmd that fails for want of a page table", () => {
  it("MADV_FREE over part of a THP leaves the PMD mapped and returns 0", () => {
    const k = mkKernel();
    const mm = mkMm(k);
    const raw = mmap(k, mm, 2 * PMD);
    const a = raw - (raw % PMD) + PMD;
    write(k, mm, a, bytes(64, 7));
    expect(runAt(k, mm, a)!.level).toBe(Level.PMD);
    k.inject.configure("pgtable_alloc", { kind: "times", remaining: 1 });
    doMadvise(k, mm, a, 4096, MADV_FREE);
    k.inject.clear();
    expect(k.inject.points.get("pgtable_alloc")!.injected).toBe(1);
    const run = runAt(k, mm, a)!;
    expect(run.level).toBe(Level.PMD);
    expect(run.dirty).toBe(true);
    expect(read(k, mm, a, 64)).toEqual(bytes(64, 7));
    expect(checkInvariants(k).violations).toEqual([]);
  });

  it("fork of a pinned THP fails with ENOMEM and leaves the parent and its pin intact", () => {
    const k = mkKernel();
    const mm = mkMm(k);
    const raw = mmap(k, mm, 2 * PMD);
    const a = raw - (raw % PMD) + PMD;
    write(k, mm, a, bytes(64, 9));
    const pin = pinUserPages(k, mm, 1, a, 1, FOLL_WRITE | FOLL_LONGTERM);
    expect(pin.ret).toBe(1);
    const liveBefore = [...k.mms.values()].filter((m) => !m.exited).length;
    // Fail each page-table allocation of the fork in turn (fail_nth); one of
    // them is the split of the pinned PMD.
    const messages: string[] = [];
    for (let n = 1; n < 256; n++) {
      k.inject.failNth(n);
      const err = expectErrno(() => forkMm(k, mm, "child", 1), Errno.ENOMEM);
      k.inject.clear();
      messages.push(err.message);
      expect(read(k, mm, a, 64)).toEqual(bytes(64, 9));
      expect([...k.mms.values()].filter((m) => !m.exited).length).toBe(liveBefore);
      expect(checkInvariants(k).violations).toEqual([]);
      if (err.message.includes("split a pinned huge PMD")) {
        // The failed split left the parent's PMD mapped.
        expect(runAt(k, mm, a)!.level).toBe(Level.PMD);
        break;
      }
    }
    expect(messages.some((m) => m.includes("split a pinned huge PMD at fork"))).toBe(true);
    k.inject.disable();
    // Without injection the fork copies the pinned THP for the child.
    const child = forkMm(k, mm, "child", 1);
    expect(read(k, child, a, 64)).toEqual(bytes(64, 9));
    expect(checkInvariants(k).violations).toEqual([]);
    releaseSession(k, 1);
    expect(checkInvariants(k).violations).toEqual([]);
  });
});
