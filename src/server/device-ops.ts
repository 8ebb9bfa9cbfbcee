/**
 * Device-object operations composed from model primitives, used by
 * DeviceService and by session teardown.
 *
 * revokePfnRange belongs in the model (it zaps page tables); it lives here
 * until src/mm offers it, built only from exported model functions
 * (Kernel.withInvalidation, zapRange).
 */
import { MmuNotifyEvent } from "../mm/constants.js";
import type { Kernel } from "../mm/kernel.js";
import type { Mm } from "../mm/mm.js";
import { zapRange } from "../mm/mmap.js";
import type { Vma } from "../mm/vma.js";

/** Live VMAs created with DeviceMmap.pfn_range_id = id. */
export function pfnRangeVmas(k: Kernel, id: number): { mm: Mm; vma: Vma }[] {
  const out: { mm: Mm; vma: Vma }[] = [];
  for (const mm of k.mms.values()) {
    if (mm.exited) continue;
    for (const vma of mm.vmas) if (vma.device !== null && vma.device.pfnRangeId === id) out.push({ mm, vma });
  }
  return out;
}

/**
 * UnregisterPfnRange: zap every VMA bound to the range (MMU_NOTIFY_CLEAR over
 * the VMA, as vfio-pci's unmap_mapping_range on reset), then forget the range
 * so later CPU faults in those VMAs get VM_FAULT_SIGBUS. The VMAs stay.
 * Synchronous: run it inside runModelOp.
 */
export function revokePfnRange(k: Kernel, id: number): void {
  if (!k.phys.pfnRanges.has(id)) {
    k.phys.unregisterPfnRange(id); // throws NOT_FOUND
    return;
  }
  for (const { mm, vma } of pfnRangeVmas(k, id)) {
    k.withInvalidation(mm, vma.start, vma.end, MmuNotifyEvent.CLEAR, () => zapRange(k, mm, vma, vma.start, vma.end));
  }
  k.phys.unregisterPfnRange(id);
}
