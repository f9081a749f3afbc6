/* Probe area "faults": vfio-pci BAR mmap faults, remap_pfn_range, PAT untrack.
 * Python side: vfiomond/faults.py.  Kernel facts (kernel_facts map, common.h):
 *   FACT_VFIO_PGOFF_IS_PFN   vm_pgoff of a BAR vma is the BAR's PFN (up to 6.9)
 *   FACT_VFIO_PCI_MMAP_OPS   address of vfio_pci_mmap_ops (to recognise BAR vmas)
 */
#ifndef KERNEL_LAYOUT_BTF
#include <linux/pci.h>
#endif

#ifndef VFIO_PCI_OFFSET_SHIFT
#define VFIO_PCI_OFFSET_SHIFT 40
#endif
#define REGION_UNKNOWN 255
#define DEVICE_LEN 16

struct device_key {
    char device[DEVICE_LEN]; /* PCI address, e.g. "0000:00:03.0" */
};

struct bar_fault_key {
    char device[DEVICE_LEN];
    u32 ret;    /* vm_fault_t as returned; classified in Python */
    u8 region;  /* region index: 0-5 BARs, 6 ROM, ... */
    u8 order;   /* fault order: 0 = page, 9 = PMD, 18 = PUD */
    u8 slot;    /* log2 latency slot */
    u8 pad;
};

/* Faults in a latency slot and their summed latency: one map update per fault. */
struct bar_fault_val {
    u64 count;
    u64 sum_ns;
};

/* Per BAR vma (by address): faults in flight on it, and its device and region
 * as last read.  The vma's vm_private_data and vm_pgoff, read on every fault,
 * tell whether that is still this vma's (a freed vma's address is reused). */
struct bar_vma {
    s64 inflight;
    u64 vdev;   /* vm_private_data */
    u64 pgoff;  /* vm_pgoff */
    char device[DEVICE_LEN];
    u8 region;
};

/* Per thread, kept between faults (THREAD_STATE in common.h). */
struct bar_fault_thread {
    u64 ts;
    u64 vma;    /* its device and region are in bar_faults_by_vma */
    u32 depth;  /* VFIO fault handlers in flight on this thread: 0 idle, 2 nested */
    u8 order;
};

BPF_HASH(bar_fault_hist, struct bar_fault_key, struct bar_fault_val, 8192);
BPF_HASH(bar_faults_concurrent, struct device_key, u64, 256);
BPF_TABLE("lru_hash", u32, struct bar_fault_thread, bar_fault_by_tid, THREAD_STATE_ENTRIES);
BPF_TABLE("lru_hash", u64, struct bar_vma, bar_faults_by_vma, 4096);
/* Faults that entered a hooked handler from inside another: vfio_pci_mmap_page_fault
 * calling vfio_pci_mmap_huge_fault (6.12+).  Once seen, the daemon detaches the
 * page_fault hook (probes.py, BAR_FAULT_NESTED): the huge_fault hook sees every fault. */
BPF_ARRAY(bar_fault_nested, u64, 1);

/* device and region of a VFIO BAR vma from its vm_private_data (see VDEV_PDEV)
 * and vm_pgoff. */
static __always_inline void bar_device(void *vdev, unsigned long pgoff, char *device, u8 *region)
{
    struct pci_dev *pdev = NULL;
    const char *name = NULL;

    if (vdev)
        bpf_probe_read_kernel(&pdev, sizeof(pdev), VDEV_PDEV(vdev));
    if (pdev)
        bpf_probe_read_kernel(&name, sizeof(name), KFIELD(pdev, PDEV_NAME));
    if (name)
        bpf_probe_read_kernel_str(device, DEVICE_LEN, name);

    *region = REGION_UNKNOWN;
    if (!kernel_fact(FACT_VFIO_PGOFF_IS_PFN)) {
        u64 index = (u64)pgoff >> (VFIO_PCI_OFFSET_SHIFT - PAGE_SHIFT);
        if (index < REGION_UNKNOWN)
            *region = index;
        return;
    }
    if (!pdev)
        return;
    u64 addr = (u64)pgoff << PAGE_SHIFT;
#pragma unroll
    for (int i = 0; i <= PCI_ROM_RESOURCE; i++) {
        resource_size_t start = 0, end = 0;
        void *res = KFIELD(pdev, PDEV_RESOURCE) + i * KSIZEOF_RESOURCE;
        bpf_probe_read_kernel(&start, sizeof(start), KFIELD(res, RESOURCE_START));
        bpf_probe_read_kernel(&end, sizeof(end), KFIELD(res, RESOURCE_END));
        if (start && addr >= start && addr <= end) {
            *region = i;
            return;
        }
    }
}

/* A vma's vm_private_data and vm_pgoff, in one read where they lie close
 * together (vm_pgoff, vm_file[, swap_readahead_info], vm_private_data in every
 * kernel vfiomond supports; two reads otherwise). */
#define VMA_PGOFF_AT KOFF_VMA_PGOFF
#define VMA_PRIVATE_AT KOFF_VMA_PRIVATE
#define VMA_IDENT_WORDS 6

static __always_inline void vma_ident(struct vm_area_struct *vma, u64 *vdev, u64 *pgoff)
{
    if (VMA_PRIVATE_AT > VMA_PGOFF_AT && (VMA_PRIVATE_AT - VMA_PGOFF_AT) % 8 == 0 &&
        (VMA_PRIVATE_AT - VMA_PGOFF_AT) / 8 < VMA_IDENT_WORDS) {
        u64 words[VMA_IDENT_WORDS] = {};
        bpf_probe_read_kernel(words, VMA_PRIVATE_AT - VMA_PGOFF_AT + 8, KFIELD(vma, VMA_PGOFF));
        *pgoff = words[0];
        *vdev = words[(VMA_PRIVATE_AT - VMA_PGOFF_AT) / 8];
        return;
    }
    bpf_probe_read_kernel(vdev, sizeof(*vdev), KFIELD(vma, VMA_PRIVATE));
    bpf_probe_read_kernel(pgoff, sizeof(*pgoff), KFIELD(vma, VMA_PGOFF));
}

static __always_inline void vma_device(struct vm_area_struct *vma, char *device, u8 *region)
{
    u64 vdev = 0, pgoff = 0;
    vma_ident(vma, &vdev, &pgoff);
    bar_device((void *)vdev, pgoff, device, region);
}

/* Count a fault in flight on its vma, whose device and region are read from
 * the kernel only when the vma is new here (the costly part). */
static __always_inline void bar_vma_enter(u64 vma_addr, struct vm_area_struct *vma)
{
    u64 zero = 0;
    struct bar_vma fresh = {.inflight = 1};
    vma_ident(vma, &fresh.vdev, &fresh.pgoff);
    struct bar_vma *st = bar_faults_by_vma.lookup(&vma_addr);
    if (!st || st->vdev != fresh.vdev || st->pgoff != fresh.pgoff) {
        bar_device((void *)fresh.vdev, fresh.pgoff, fresh.device, &fresh.region);
        if (st) {
            /* an earlier vma's entry at a reused address: its faults are over */
            if (bar_faults_by_vma.update(&vma_addr, &fresh) != 0)
                count_lost(LOSS_BAR_FAULTS_BY_VMA_FULL);
            return;
        }
        if (bar_faults_by_vma.insert(&vma_addr, &fresh) == 0)
            return;
        /* Another thread's first fault on this vma inserted it meanwhile. */
        st = bar_faults_by_vma.lookup(&vma_addr);
        if (!st) {
            count_lost(LOSS_BAR_FAULTS_BY_VMA_FULL);
            return;
        }
    }
    /* A fault entering while another fault on the same vma is in flight is
     * concurrent (seeds/001: the whole-vma remap of 5.8-5.13 BUGs on it). */
    if (st->inflight > 0) {
        struct device_key dk = {};
        __builtin_memcpy(dk.device, st->device, DEVICE_LEN);
        add_or_lost(bar_faults_concurrent.lookup_or_try_init(&dk, &zero), 1, LOSS_BAR_FAULTS_CONCURRENT_FULL);
    }
    __sync_fetch_and_add(&st->inflight, 1);
}

/* Only the thread itself touches its bar_fault_by_tid entry, so plain writes
 * to it are safe. */
static __always_inline int bar_fault_enter(struct vm_fault *vmf, u8 order)
{
    u32 tid = current_tid();
    struct vm_area_struct *vma = NULL;
    bpf_probe_read_kernel(&vma, sizeof(vma), KFIELD(vmf, VM_FAULT_VMA));
    if (!vma)
        return 0;
    u64 now = bpf_ktime_get_ns();
    struct bar_fault_thread *t = bar_fault_by_tid.lookup(&tid);
    if (t && t->depth) {
        if (now - t->ts < STALE_NS) {
            int zero_index = 0;
            t->depth++; /* vfio_pci_mmap_page_fault -> huge_fault(vmf, 0) */
            u64 *nested = bar_fault_nested.lookup(&zero_index);  /* an array's slot 0: always there */
            if (nested)
                __sync_fetch_and_add(nested, 1);
            return 0;
        }
        count_lost(LOSS_BAR_FAULT_BY_TID_STALE); /* left by a missed kretprobe: start over */
    }
    if (t) {
        t->ts = now;
        t->vma = (u64)vma;
        t->depth = 1;
        t->order = order;
    } else {
        struct bar_fault_thread fresh = {.ts = now, .vma = (u64)vma, .depth = 1, .order = order};
        if (bar_fault_by_tid.update(&tid, &fresh) != 0)
            return 0; /* counted once, as missing, by the return probe */
    }
    bar_vma_enter((u64)vma, vma);
    return 0;
}

static __always_inline int on_bar_fault__body(struct pt_regs *ctx)
{
    return bar_fault_enter((struct vm_fault *)PT_REGS_PARM1(ctx), 0);
}

int on_bar_fault(struct pt_regs *ctx)
{
    return on_bar_fault__body(ctx);
}

static __always_inline int on_bar_huge_fault__body(struct pt_regs *ctx)
{
    return bar_fault_enter((struct vm_fault *)PT_REGS_PARM1(ctx), (u8)PT_REGS_PARM2(ctx));
}

int on_bar_huge_fault(struct pt_regs *ctx)
{
    return on_bar_huge_fault__body(ctx);
}

static __always_inline int bar_fault_exit(struct pt_regs *ctx, int count_missing)
{
    u32 tid = current_tid();
    struct bar_fault_thread *t = bar_fault_by_tid.lookup(&tid);
    if (!t || !t->depth) {
        if (count_missing)
            count_lost(LOSS_BAR_FAULT_BY_TID_MISSING); /* evicted, never inserted, or the entry probe missed it */
        return 0;
    }
    if (--t->depth)
        return 0;
    u64 delta = bpf_ktime_get_ns() - t->ts;
    struct bar_fault_key key = {.ret = (u32)PT_REGS_RC(ctx), .region = REGION_UNKNOWN, .order = t->order,
                                .slot = bpf_log2l(delta)};
    struct bar_vma *st = bar_faults_by_vma.lookup(&t->vma);
    if (st) {
        __builtin_memcpy(key.device, st->device, DEVICE_LEN);
        key.region = st->region;
        __sync_fetch_and_add(&st->inflight, -1);
    } else {
        count_lost(LOSS_BAR_FAULTS_BY_VMA_EVICTED); /* evicted from the LRU while in flight: device unknown */
    }
    struct bar_fault_val zero = {};
    struct bar_fault_val *v = bar_fault_hist.lookup_or_try_init(&key, &zero);
    if (v) {
        __sync_fetch_and_add(&v->count, 1);
        __sync_fetch_and_add(&v->sum_ns, delta);
    } else {
        count_lost(LOSS_BAR_FAULT_HIST_FULL);
    }
    return 0;
}

static __always_inline int on_bar_fault_return__body(struct pt_regs *ctx)
{
    return bar_fault_exit(ctx, 1);
}

int on_bar_fault_return(struct pt_regs *ctx)
{
    return on_bar_fault_return__body(ctx);
}

/* vfio_pci_mmap_page_fault's return (6.12+).  Once it is known to call
 * vfio_pci_mmap_huge_fault (FACT_BAR_FAULT_NESTED), the huge_fault hooks
 * measure every fault and count what they miss, and this hook is detached,
 * entry first: a return without its entry in that window is no loss. */
static __always_inline int on_bar_page_fault_return__body(struct pt_regs *ctx)
{
    return bar_fault_exit(ctx, !kernel_fact(FACT_BAR_FAULT_NESTED));
}

int on_bar_page_fault_return(struct pt_regs *ctx)
{
    return on_bar_page_fault_return__body(ctx);
}

/* remap_pfn_range(vma, addr, pfn, size, prot), split by whether the thread
 * is inside a VFIO BAR fault (the pattern of seeds/001 and seeds/002). */
#define CONTEXT_OTHER 0
#define CONTEXT_VFIO_FAULT 1

struct remap_inflight {
    u64 ts;
    u64 size;
    u8 active;   /* a call in flight (THREAD_STATE in common.h) */
    u8 context;
};

struct remap_key {
    u8 context;
    u8 slot;  /* log2 latency slot; 0 in remap_errors */
    u8 pad[2];
    s32 err;  /* errno (positive) in remap_errors, 0 in remap_hist */
};

/* Calls in a latency slot, their summed latency, and the bytes the successful
 * ones mapped: one map update per call. */
struct remap_val {
    u64 count;
    u64 sum_ns;
    u64 bytes;
};

BPF_TABLE("lru_hash", u32, struct remap_inflight, remap_by_tid, THREAD_STATE_ENTRIES);
BPF_HASH(remap_hist, struct remap_key, struct remap_val, 256);
BPF_HASH(remap_errors, struct remap_key, u64, 64);

static __always_inline int on_remap_pfn_range__body(struct pt_regs *ctx)
{
    u32 tid = current_tid();
    struct bar_fault_thread *t = bar_fault_by_tid.lookup(&tid);
    struct remap_inflight fresh = {.ts = bpf_ktime_get_ns(), .size = PT_REGS_PARM4(ctx), .active = 1,
                                   .context = t && t->depth ? CONTEXT_VFIO_FAULT : CONTEXT_OTHER};
    struct remap_inflight *r = remap_by_tid.lookup(&tid);
    if (r) {
        if (r->active)
            count_lost(LOSS_REMAP_BY_TID_STALE); /* the previous call's return probe never ran */
        *r = fresh;
    } else {
        remap_by_tid.update(&tid, &fresh); /* a failure is counted, as missing, by the return probe */
    }
    return 0;
}

int on_remap_pfn_range(struct pt_regs *ctx)
{
    return on_remap_pfn_range__body(ctx);
}

static __always_inline int on_remap_pfn_range_return__body(struct pt_regs *ctx)
{
    u64 zero = 0;
    u32 tid = current_tid();
    struct remap_inflight *r = remap_by_tid.lookup(&tid);
    if (!r || !r->active) {
        count_lost(LOSS_REMAP_BY_TID_MISSING);
        return 0;
    }
    r->active = 0;
    u64 delta = bpf_ktime_get_ns() - r->ts;
    int ret = (int)PT_REGS_RC(ctx);
    struct remap_key key = {};
    key.context = r->context;
    if (ret != 0) {
        key.err = -ret;
        add_or_lost(remap_errors.lookup_or_try_init(&key, &zero), 1, LOSS_REMAP_ERRORS_FULL);
        key.err = 0;
    }
    key.slot = bpf_log2l(delta);
    struct remap_val empty = {};
    struct remap_val *v = remap_hist.lookup_or_try_init(&key, &empty);
    if (v) {
        __sync_fetch_and_add(&v->count, 1);
        __sync_fetch_and_add(&v->sum_ns, delta);
        if (ret == 0)
            __sync_fetch_and_add(&v->bytes, r->size);
    } else {
        count_lost(LOSS_REMAP_HIST_FULL);
    }
    return 0;
}

int on_remap_pfn_range_return(struct pt_regs *ctx)
{
    return on_remap_pfn_range_return__body(ctx);
}

/* PAT untracking: untrack_pfn(vma, pfn, size[, mm_wr_locked]) fires for every
 * VM_PFNMAP vma; count those of VFIO BARs (seeds/000). */
BPF_HASH(pat_untrack, struct device_key, u64, 256);

static __always_inline int on_untrack_pfn__body(struct pt_regs *ctx)
{
    u64 zero = 0;
    u64 vfio_ops = kernel_fact(FACT_VFIO_PCI_MMAP_OPS);
    struct vm_area_struct *vma = (struct vm_area_struct *)PT_REGS_PARM1(ctx);
    const void *ops = NULL;
    if (!vma || !vfio_ops)
        return 0;
    bpf_probe_read_kernel(&ops, sizeof(ops), KFIELD(vma, VMA_OPS));
    if ((u64)ops != vfio_ops)
        return 0;
    struct device_key dk = {};
    u8 region;
    vma_device(vma, dk.device, &region);
    add_or_lost(pat_untrack.lookup_or_try_init(&dk, &zero), 1, LOSS_PAT_UNTRACK_FULL);
    return 0;
}

int on_untrack_pfn(struct pt_regs *ctx)
{
    return on_untrack_pfn__body(ctx);
}
