/** Address spaces in a bench daemon, set up over RPC. */
import { MADV_NOHUGEPAGE, MADV_POPULATE_WRITE, MAP_ANONYMOUS, MAP_PRIVATE, PROT_READ, PROT_WRITE } from "../../src/mm/constants.js";
import type { BenchDaemon } from "./daemon.js";

export interface RpcRegion {
  mmId: number;
  addr: number;
  bytes: number;
}

/** A new mm with one private anonymous VMA; populated (written) unless `populate` is false. */
export async function rpcAnon(d: BenchDaemon, bytes: number, backing: "4k" | "thp", populate = true, name = "bench"): Promise<RpcRegion> {
  const { mmId } = await d.unary<object, { mmId: number }>(d.addressSpace, "createMm", { name });
  const { addr } = await d.unary<object, { addr: number }>(d.addressSpace, "mmap", {
    mmId,
    addr: 0,
    length: bytes,
    prot: PROT_READ | PROT_WRITE,
    flags: MAP_PRIVATE | MAP_ANONYMOUS,
    fileId: 0,
    offset: 0,
  });
  if (backing === "4k") await d.unary(d.addressSpace, "madvise", { mmId, addr, length: bytes, advice: MADV_NOHUGEPAGE });
  if (populate) await d.unary(d.addressSpace, "madvise", { mmId, addr, length: bytes, advice: MADV_POPULATE_WRITE });
  return { mmId, addr, bytes };
}
