/* Probe area "users": the processes that open a VFIO or iommufd character
 * device, so that a scrape reads the open files of those processes only, not
 * of every process of the host (vfiomond/processes.py UserFinder).
 *
 * The open handlers run in the opener's context: vfio_group_fops_open
 * (/dev/vfio/N) and vfio_fops_open (/dev/vfio/vfio, the type1 container) in
 * drivers/vfio/, and iommufd_fops_open (/dev/iommu, 6.2+) in
 * drivers/iommu/iommufd/main.c (which a user of a device cdev, 6.6+, opens to
 * bind it).  A failed open makes a candidate
 * too: the daemon checks each candidate's files.  A process that a candidate
 * forks or clones (wake_up_new_task, in the parent's context, kernel/fork.c
 * kernel_clone) is one too: it inherits the VFIO fds unless they are
 * close-on-exec, and a CLONE_VM child shares the parent's mm and locked_vm.
 * Entries of processes that are gone are deleted by the daemon. */

BPF_HASH(vfio_openers, u32, u64, 4096);  /* tgid -> opens (0: a candidate's child) */

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

/* wake_up_new_task(p) runs once per new task (fork or thread), in the parent's
 * context: every one of the host's ends at one hash lookup unless the parent is
 * a candidate; a new thread (p->pid != p->tgid) is not a process of its own. */
static __always_inline int on_new_task__body(struct pt_regs *ctx)
{
    struct task_struct *p = (struct task_struct *)PT_REGS_PARM1(ctx);
    u32 parent = bpf_get_current_pid_tgid() >> 32;
    if (!vfio_openers.lookup(&parent))
        return 0;
    u32 pid = 0, tgid = 0;
    if (bpf_probe_read_kernel(&pid, sizeof(pid), KFIELD(p, TASK_PID)) ||
        bpf_probe_read_kernel(&tgid, sizeof(tgid), KFIELD(p, TASK_TGID))) {
        count_lost(LOSS_VFIO_OPENERS_UNREAD);
        return 0;
    }
    if (pid != tgid || tgid == parent)
        return 0;
    u64 zero = 0;
    /* Not add_or_lost(..., 0, ...): LLVM 11 (Debian 11) turns an atomic add of 0
     * into an atomic load-or the BPF backend cannot select, and aborts. */
    if (!vfio_openers.lookup_or_try_init(&tgid, &zero))
        count_lost(LOSS_VFIO_OPENERS_FULL);
    return 0;
}

int on_new_task(struct pt_regs *ctx)
{
    return on_new_task__body(ctx);
}
