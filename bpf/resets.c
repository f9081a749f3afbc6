/* Probe area "resets": every reset the PCI core does for a device, with its
 * method, duration and result.  Python side: vfiomond/resets.py, which keeps
 * the resets of devices bound to a VFIO driver and reads each one's config
 * space afterwards.
 *
 * vfio-pci resets through the PCI core's exported functions (drivers/vfio/pci/
 * vfio_pci_core.c, 5.10 .. 7.2): pci_try_reset_function on open
 * (vfio_pci_core_enable) and for VFIO_DEVICE_RESET, __pci_reset_function_locked
 * on release (vfio_pci_core_disable), pci_reset_bus for
 * VFIO_DEVICE_PCI_HOT_RESET and on the last release of a dev_set.  A write to
 * sysfs "reset" is pci_reset_function.  Within a function reset the core tries
 * the device's methods in order (drivers/pci/pci.c pci_reset_fn_methods, 5.15+;
 * called in the same order by __pci_reset_function_locked in 5.10) with
 * probe == 0, and the first that does not answer -ENOTTY is the one that
 * worked or failed: the method recorded is the last one entered.
 *
 * The outermost call of a thread is the reset (pci_try_reset_function calls
 * __pci_reset_function_locked): its return sends one record.  Resets are rare
 * (each takes milliseconds to seconds), so a ring buffer record per reset costs
 * nothing that matters and lets the daemon check the device afterwards. */
#ifndef KERNEL_LAYOUT_BTF
#include <linux/pci.h>
#endif

#ifndef DEVICE_LEN
#define DEVICE_LEN 16
#endif

#define RESET_OP_FUNCTION 1  /* pci_try_reset_function, pci_reset_function, __pci_reset_function_locked */
#define RESET_OP_BUS 2       /* pci_reset_bus: the device's slot or bus */

/* Method ids: pci_reset_fn_methods' order (5.15+), 0 none seen. */
#define RESET_M_DEVICE_SPECIFIC 1
#define RESET_M_ACPI 2
#define RESET_M_FLR 3
#define RESET_M_AF_FLR 4
#define RESET_M_PM 5
#define RESET_M_BUS 6
#define RESET_M_CXL_BUS 7

/* A reset may wait up to a minute for a device (pci_dev_wait, PCIE_RESET_READY_POLL_MS
 * 60 s): an entry older than two is one whose return probe never ran. */
#define RESET_STALE_NS (120ULL * 1000 * 1000 * 1000)

struct reset_thread {
    u64 ts;
    u64 pdev;
    u32 depth;
    u8 op;
    u8 method;
    char device[DEVICE_LEN];
};

struct reset_event {
    u64 duration_ns;
    s32 ret;       /* 0 or -errno */
    u32 pid;       /* tgid of the caller */
    u8 op;
    u8 method;
    u8 pad[6];
    char device[DEVICE_LEN];
    char comm[16];  /* bpf_get_current_comm: TASK_COMM_LEN (include/linux/sched.h), which vfiomond/resets.py reads */
};

/* Threads in a reset at once: one per device at most, in practice a few. */
BPF_HASH(reset_by_tid, u32, struct reset_thread, 1024);
BPF_RINGBUF_OUTPUT(reset_events, 16);

static __always_inline int reset_enter(struct pci_dev *pdev, u8 op)
{
    u32 tid = current_tid();
    u64 now = bpf_ktime_get_ns();
    struct reset_thread *t = reset_by_tid.lookup(&tid);
    if (t) {
        if (t->pdev == (u64)pdev && now - t->ts < RESET_STALE_NS) {
            t->depth++;  /* nested: the outer call is the reset */
            return 0;
        }
        count_lost(LOSS_RESET_BY_TID_STALE);
    }
    struct reset_thread fresh = {.ts = now, .pdev = (u64)pdev, .depth = 1, .op = op};
    const char *name = NULL;
    if (bpf_probe_read_kernel(&name, sizeof(name), KFIELD(pdev, PDEV_NAME)) || !name ||
        bpf_probe_read_kernel_str(fresh.device, DEVICE_LEN, name) < 0)
        count_lost(LOSS_RESET_BY_TID_UNREAD);  /* sent with no device: counted as "unknown" */
    if (op == RESET_OP_BUS)
        fresh.method = RESET_M_BUS;
    if (reset_by_tid.update(&tid, &fresh) != 0)
        count_lost(LOSS_RESET_BY_TID_FULL);
    return 0;
}

static __always_inline int reset_return(struct pt_regs *ctx)
{
    u32 tid = current_tid();
    struct reset_thread *t = reset_by_tid.lookup(&tid);
    if (!t) {
        count_lost(LOSS_RESET_BY_TID_MISSING);
        return 0;
    }
    if (t->depth > 1) {
        t->depth--;
        return 0;
    }
    struct reset_event ev = {
        .duration_ns = bpf_ktime_get_ns() - t->ts,
        .ret = (s32)PT_REGS_RC(ctx),
        .pid = bpf_get_current_pid_tgid() >> 32,
        .op = t->op,
        .method = t->method,
    };
    __builtin_memcpy(ev.device, t->device, DEVICE_LEN);
    bpf_get_current_comm(ev.comm, sizeof(ev.comm));
    reset_by_tid.delete(&tid);
    if (reset_events.ringbuf_output(&ev, sizeof(ev), 0) != 0)
        count_lost(LOSS_RESET_EVENTS_FULL);
    return 0;
}

int on_reset_function(struct pt_regs *ctx, struct pci_dev *pdev)
{
    return reset_enter(pdev, RESET_OP_FUNCTION);
}

int on_reset_bus(struct pt_regs *ctx, struct pci_dev *pdev)
{
    return reset_enter(pdev, RESET_OP_BUS);
}

int on_reset_return(struct pt_regs *ctx)
{
    return reset_return(ctx);
}

/* A method entered inside a reset of this thread, for the device being reset;
 * probe != 0 only asks whether the method applies (the bool, or 5.10's int,
 * is read as its low byte). */
static __always_inline int reset_method(struct pci_dev *pdev, u64 probe, u8 method)
{
    if ((u8)probe)
        return 0;
    u32 tid = current_tid();
    struct reset_thread *t = reset_by_tid.lookup(&tid);
    if (t && t->pdev == (u64)pdev && t->op == RESET_OP_FUNCTION)
        t->method = method;
    return 0;
}

/* One entry program per method (BCC attaches a program by its name); the
 * arguments read from the registers, as no BCC rewrite reaches into a macro. */
#define RESET_METHOD_PROBE(name, method, probe_arg)                          \
    int on_reset_method_##name(struct pt_regs *ctx)                          \
    {                                                                        \
        return reset_method((struct pci_dev *)PT_REGS_PARM1(ctx), probe_arg, \
                            method);                                         \
    }

RESET_METHOD_PROBE(device_specific, RESET_M_DEVICE_SPECIFIC, PT_REGS_PARM2(ctx))
RESET_METHOD_PROBE(acpi, RESET_M_ACPI, PT_REGS_PARM2(ctx))
RESET_METHOD_PROBE(flr, RESET_M_FLR, PT_REGS_PARM2(ctx))
/* pcie_flr(dev) (FLR's method up to 5.14) takes no probe argument: it always resets. */
RESET_METHOD_PROBE(pcie_flr, RESET_M_FLR, 0)
RESET_METHOD_PROBE(af_flr, RESET_M_AF_FLR, PT_REGS_PARM2(ctx))
RESET_METHOD_PROBE(pm, RESET_M_PM, PT_REGS_PARM2(ctx))
RESET_METHOD_PROBE(bus, RESET_M_BUS, PT_REGS_PARM2(ctx))
RESET_METHOD_PROBE(cxl_bus, RESET_M_CXL_BUS, PT_REGS_PARM2(ctx))
