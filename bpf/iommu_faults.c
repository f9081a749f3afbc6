/* Probe area "iommu_faults": fault interrupts of Intel VT-d units, counted in the
 * kernel.  Python side: vfiomond/iommu_faults.py.
 *
 * dmar_fault (drivers/iommu/intel/dmar.c, 5.10 .. 7.2) is a unit's fault event
 * handler (request_irq(irq, dmar_fault, IRQF_NO_THREAD, iommu->name, iommu)): each
 * call handles one or more fault records.  It reads a record's source and reason, and
 * prints it (dmar_fault_do_one), only while its rate limit (10 per 5 s, shared with its
 * "handling fault status" line) allows; the others are cleared unread.  No hook sees
 * those records one by one: ___ratelimit (lib/ratelimit.c) is notrace and Debian's
 * builds inline dmar_fault_do_one.  The handler's calls are what the kernel can tell
 * of faults the log dropped: at least one fault each. */

BPF_HASH(iommu_fault_interrupts, u32, u64, 64); /* fault IRQ -> dmar_fault calls */

int on_dmar_fault(struct pt_regs *ctx, int irq)
{
    u32 key = irq;
    u64 zero = 0;
    add_or_lost(iommu_fault_interrupts.lookup_or_try_init(&key, &zero), 1, LOSS_IOMMU_FAULT_INTERRUPTS_FULL);
    return 0;
}
