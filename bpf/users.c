/* Probe area "users": the processes that open a VFIO or iommufd character
 * device, so that a scrape reads the open files of those processes only, not
 * of every process of the host (vfiomond/processes.py UserFinder).
 *
 * The open handlers run in the opener's context: vfio_group_fops_open
 * (/dev/vfio/N) and vfio_fops_open (/dev/vfio/vfio, the type1 container) in
 * drivers/vfio/, and iommufd_fops_open (/dev/iommu, 6.2+) in
 * drivers/iommu/iommufd/main.c (which a user of a device cdev, 6.6+, opens to
 * bind it).  A failed open makes a candidate
 * too: the daemon checks each candidate's files.  Entries of processes that
 * are gone are deleted by the daemon. */

BPF_HASH(vfio_openers, u32, u64, 4096);  /* tgid -> opens */

static __always_inline int vfio_opened(void)
{
    u32 pid = bpf_get_current_pid_tgid() >> 32;
    u64 zero = 0;
    add_or_lost(vfio_openers.lookup_or_try_init(&pid, &zero), 1, LOSS_VFIO_OPENERS_FULL);
    return 0;
}

int on_vfio_group_open(struct pt_regs *ctx)
{
    return vfio_opened();
}

int on_vfio_container_open(struct pt_regs *ctx)
{
    return vfio_opened();
}

int on_iommufd_open(struct pt_regs *ctx)
{
    return vfio_opened();
}
