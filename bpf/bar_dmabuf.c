/* Probe area "bar_dmabuf": BARs exported as dma-bufs and the revocations of those
 * dma-bufs.  Python side: vfiomond/bar_dmabuf.py.
 *
 * VFIO_DEVICE_FEATURE_DMA_BUF (6.19+, drivers/vfio/pci/vfio_pci_dmabuf.c) hands a
 * user a dma-buf fd for ranges of a BAR, which another driver (an RDMA NIC, a GPU,
 * iommufd's IOMMU_IOAS_MAP_FILE) maps for peer-to-peer DMA.
 * vfio_pci_core_feature_dma_buf(vdev, flags, arg, argsz) makes it and returns the
 * fd or -errno; with VFIO_DEVICE_FEATURE_PROBE in flags it only says whether the
 * feature exists.  Whenever the device's memory goes away (memory decode off, a
 * reset, the device closed), vfio_pci_dma_buf_move(vdev, revoked=true) revokes the
 * device's dma-bufs and, when it comes back, move(vdev, false) restores them; it
 * calls dma_buf_invalidate_mappings(dmabuf) (dma_buf_move_notify before 7.0) once
 * for each dma-buf whose state it changes, which is what the importers see: their
 * mappings are torn down.  Those calls are counted inside a move of this thread. */
#ifndef KERNEL_LAYOUT_BTF
#include <linux/pci.h>
#endif

#ifndef DEVICE_LEN
#define DEVICE_LEN 16
#endif
/* include/uapi/linux/vfio.h (6.0+): the PROBE bit of vfio_device_feature.flags. */
#define DMABUF_FEATURE_PROBE (1 << 18)

struct dmabuf_export_key {
    char device[DEVICE_LEN];
    s32 ret; /* 0: an fd was returned; else -errno */
};

struct dmabuf_move_key {
    char device[DEVICE_LEN];
    u32 revoked; /* 1 revoke, 0 restore */
};

#define DMABUF_OP_EXPORT 1
#define DMABUF_OP_MOVE 2

/* The call of a thread in one of the two functions (neither calls the other). */
struct dmabuf_thread {
    char device[DEVICE_LEN];
    u8 op;
    u8 revoked;
};

/* Threads inside either function at once: a few; a full table is counted. */
BPF_HASH(dmabuf_by_tid, u32, struct dmabuf_thread, 1024);
BPF_HASH(dmabuf_exports, struct dmabuf_export_key, u64, 1024);
BPF_HASH(dmabuf_moves, struct dmabuf_move_key, u64, 1024);

/* A call of vfio_pci_core_feature_dma_buf or vfio_pci_dma_buf_move on `vdev` (a
 * struct vfio_pci_core_device *) begins on this thread. */
static __always_inline int dmabuf_enter(void *vdev, u8 op, u8 revoked)
{
    u32 tid = current_tid();
    struct dmabuf_thread t = {.op = op, .revoked = revoked};
    struct pci_dev *pdev = NULL;
    const char *name = NULL;
    if (bpf_probe_read_kernel(&pdev, sizeof(pdev), VDEV_PDEV(vdev)) || !pdev ||
        bpf_probe_read_kernel(&name, sizeof(name), KFIELD(pdev, PDEV_NAME)) || !name ||
        bpf_probe_read_kernel_str(t.device, DEVICE_LEN, name) < 0)
        count_lost(LOSS_DMABUF_BY_TID_UNREAD); /* counted with no device: "unknown" */
    if (dmabuf_by_tid.lookup(&tid))
        count_lost(LOSS_DMABUF_BY_TID_STALE);
    if (dmabuf_by_tid.update(&tid, &t) != 0)
        count_lost(LOSS_DMABUF_BY_TID_FULL);
    return 0;
}

int on_dmabuf_export(struct pt_regs *ctx)
{
    if (PT_REGS_PARM2(ctx) & DMABUF_FEATURE_PROBE)
        return 0;
    return dmabuf_enter((void *)PT_REGS_PARM1(ctx), DMABUF_OP_EXPORT, 0);
}

int on_dmabuf_export_return(struct pt_regs *ctx)
{
    u32 tid = current_tid();
    struct dmabuf_thread *t = dmabuf_by_tid.lookup(&tid);
    if (!t || t->op != DMABUF_OP_EXPORT)
        return 0; /* a PROBE call, or the entry was not stored (counted there) */
    /* An int: the upper half of the register is not its sign (a 32-bit -EINVAL
     * read as a long is positive; seen in the lab). */
    s32 ret = (s32)PT_REGS_RC(ctx);
    struct dmabuf_export_key key = {.ret = ret < 0 ? ret : 0};
    __builtin_memcpy(key.device, t->device, DEVICE_LEN);
    dmabuf_by_tid.delete(&tid);
    u64 zero = 0;
    add_or_lost(dmabuf_exports.lookup_or_try_init(&key, &zero), 1, LOSS_DMABUF_EXPORTS_FULL);
    return 0;
}

int on_dmabuf_move(struct pt_regs *ctx)
{
    return dmabuf_enter((void *)PT_REGS_PARM1(ctx), DMABUF_OP_MOVE, (u8)PT_REGS_PARM2(ctx) ? 1 : 0);
}

int on_dmabuf_move_return(struct pt_regs *ctx)
{
    u32 tid = current_tid();
    dmabuf_by_tid.delete(&tid);
    return 0;
}

/* dma_buf_invalidate_mappings(dmabuf) of any driver: one lookup unless inside a
 * vfio-pci move on this thread. */
int on_dmabuf_invalidate(struct pt_regs *ctx)
{
    u32 tid = current_tid();
    struct dmabuf_thread *t = dmabuf_by_tid.lookup(&tid);
    if (!t || t->op != DMABUF_OP_MOVE)
        return 0;
    struct dmabuf_move_key key = {.revoked = t->revoked};
    __builtin_memcpy(key.device, t->device, DEVICE_LEN);
    u64 zero = 0;
    add_or_lost(dmabuf_moves.lookup_or_try_init(&key, &zero), 1, LOSS_DMABUF_MOVES_FULL);
    return 0;
}
