/* Shared helpers for vfiomond's BPF programs (BCC).
 *
 * vfiomond/bpfload.py puts this text in front of the area programs and
 * compiles them as one BCC program.  Every map is bounded; a failed insert is
 * counted in lost_events (enum loss: which map, and why) instead of being
 * dropped silently.
 */
#include <uapi/linux/ptrace.h>
#include <linux/sched.h>
#include <linux/mm_types.h>
#include <linux/mm.h>

/* Entries older than this are left over from a missed kretprobe. */
#define STALE_NS (10ULL * 1000 * 1000 * 1000)

/* THREAD_STATE: what a hot kprobe hands its kretprobe lives in an LRU hash
 * keyed by thread id whose entry stays between calls and is rewritten in place
 * behind an "in flight" field.  A hash insert and delete per call cost more
 * than all the rest of a fault's programs (benchmarks/RESULTS.md, 2026-11-24);
 * the LRU bounds the map and drops the entries of threads that are gone (an
 * entry in flight was used at its entry probe, so idle threads' go first). */
#define THREAD_STATE_ENTRIES 4096

/* Every loss is counted under the map that lost it and why (vfiomond/bpfload.py
 * LOSSES mirrors this enum: map name, reason): "full" a bounded map refused an
 * insert or a ring buffer had no room, "evicted" an LRU entry in use was gone,
 * "stale" an entry left by a kretprobe that never ran. */
enum loss {
    LOSS_PIN_EVENTS_FULL = 0,
    LOSS_IOMMUFD_PIN_EVENTS_FULL = 1,
    LOSS_PROC_ACCT_FULL = 2,
    LOSS_IOMMUFD_PROC_ACCT_FULL = 3,
    LOSS_DMA_BY_TID_FULL = 4,
    LOSS_IOMMUFD_DMA_BY_TID_FULL = 5,
    LOSS_PIN_BY_TID_FULL = 6,
    LOSS_ACCT_BY_TID_FULL = 7,
    LOSS_IOMMUFD_ACCT_BY_TID_FULL = 8,
    LOSS_UNMAPS_BEGUN_FULL = 9,
    LOSS_DMA_HIST_FULL = 10,
    LOSS_DMA_ERRORS_FULL = 11,
    LOSS_IOMMUFD_DMA_HIST_FULL = 12,
    LOSS_IOMMUFD_DMA_ERRORS_FULL = 13,
    LOSS_BAR_FAULTS_BY_VMA_FULL = 14,
    LOSS_BAR_FAULTS_BY_VMA_EVICTED = 15,
    LOSS_BAR_FAULT_BY_TID_FULL = 16,
    LOSS_BAR_FAULT_BY_TID_STALE = 17,
    LOSS_BAR_FAULT_HIST_FULL = 18,
    LOSS_BAR_FAULTS_CONCURRENT_FULL = 19,
    LOSS_REMAP_BY_TID_FULL = 20,
    LOSS_REMAP_HIST_FULL = 21,
    LOSS_REMAP_ERRORS_FULL = 22,
    LOSS_PAT_UNTRACK_FULL = 23,
    LOSSES = 24,
};

BPF_ARRAY(lost_events, u64, LOSSES);

/* Kernel facts that change when the vfio modules load or unload, written by
 * the daemon (RUNTIME_FACTS in vfiomond/bpfload.py, same order). */
enum kernel_fact {
    FACT_VFIO_PCI_MMAP_OPS = 0,  /* address of vfio_pci_mmap_ops, 0 if not loaded */
    FACT_VFIO_PGOFF_IS_PFN = 1,  /* a BAR vma's vm_pgoff is the BAR's PFN (up to 6.9) */
    FACT_TYPE1_IOCTL_MAP = 2,    /* the type1 ioctl hook measures MAP_DMA */
    FACT_TYPE1_IOCTL_UNMAP = 3,  /* ... and UNMAP_DMA */
    KERNEL_FACTS = 4,
};

BPF_ARRAY(kernel_facts, u64, KERNEL_FACTS);

static __always_inline u64 kernel_fact(int index)
{
    u64 *v = kernel_facts.lookup(&index);
    return v ? *v : 0;
}

static __always_inline void count_lost(int loss)
{
    u64 *v = lost_events.lookup(&loss);
    if (v)
        __sync_fetch_and_add(v, 1);
}

/* Add n to a counter returned by map.lookup_or_try_init(&key, &zero); a NULL
 * there means the bounded map is full: count it as lost. (BCC cannot rewrite
 * map calls inside macros, so call sites spell out the lookup.) */
static __always_inline void add_or_lost(u64 *v, u64 n, int loss)
{
    if (v)
        __sync_fetch_and_add(v, n);
    else
        count_lost(loss);
}

static __always_inline u32 current_tid(void)
{
    return (u32)bpf_get_current_pid_tgid();
}

/* Events for pin verification (vfiomond/pins.py), one ring buffer per DMA
 * backend, in order: MAP_BEGIN, the sampled PIN runs of that map, MAP_END;
 * UNMAP (IOVA 0 and size 2^64 - 1: the whole space).  `space` names the IOVA space: the type1 container (struct
 * vfio_iommu *) or the iommufd IOAS (struct io_pagetable *). */
#define EV_MAP_BEGIN 1
#define EV_MAP_END 2
#define EV_PIN 3
#define EV_UNMAP 4     /* sent once per unmap begun (unmap_begun), ret < 0 when it failed */
#define EV_MEMLOCK 5  /* pinning refused: RLIMIT_MEMLOCK (or an -ENOMEM charge) */
#define EV_WRITE_FAULT 6  /* a write fault on a write-protected PTE in a process holding pins */

struct pin_event {
    u32 type;
    u32 pid;
    s32 ret;
    u32 pad;
    u64 vaddr;
    u64 iova;
    u64 size;   /* bytes (map, unmap) */
    u64 npage;  /* pin: pages in the physically contiguous run */
    u64 pfn;    /* pin: PFN of the run's first page; write fault: the PTE it found, raw */
    u64 locked; /* memlock: the mm's locked_vm, pages */
    u64 limit;  /* memlock: RLIMIT_MEMLOCK soft limit, bytes */
    u64 space;
};

/* Unmaps begun, per IOVA space: bumped at the entry of every unmap (UNMAP_DMA,
 * a type1 container's release, IOMMU_IOAS_UNMAP, an IOAS's iopt_unmap_all),
 * before the kernel unpins anything; each such unmap sends exactly one EV_UNMAP
 * when it returns (whatever its result).  A pin verification read from
 * /proc/PID/pagemap is about live mappings only if every unmap of the space that
 * began before the read ended had been applied (vfiomond/pins.py: the daemon
 * compares this count with the EV_UNMAP records it handled).  Entries stay for
 * the life of the program: the count of a space only grows.  A space that finds
 * the table full is counted in unmap_spaces_untracked (and lost_events); the
 * daemon then trusts no verification of a space it cannot find here. */
#define UNMAP_SPACES 16384

BPF_HASH(unmaps_begun, u64, u64, UNMAP_SPACES);
BPF_ARRAY(unmap_spaces_untracked, u64, 1);

static __always_inline void unmap_begun(u64 space)
{
    u64 zero = 0;
    u64 *n = unmaps_begun.lookup_or_try_init(&space, &zero);
    if (n) {
        __sync_fetch_and_add(n, 1);
        return;
    }
    int first = 0;
    u64 *untracked = unmap_spaces_untracked.lookup(&first);
    if (untracked)
        __sync_fetch_and_add(untracked, 1);
    count_lost(LOSS_UNMAPS_BEGUN_FULL);
}

/* Sample points of a mapping of `size` bytes (PIN_SAMPLES of them: first
 * page, last page, an even stride): a pin run is reported only if it holds
 * one, so events per mapping stay bounded whatever its size.  Must agree with
 * sample_offsets() in vfiomond/pins.py. */
#ifndef PIN_SAMPLES
#define PIN_SAMPLES 16
#endif
#define PAGE_4K 4096ULL

/* Does [off, off + len) of a mapping of `size` bytes hold a sample point? */
static __always_inline int holds_sample(u64 off, u64 len, u64 size)
{
    u64 stride = (size / (PIN_SAMPLES - 1)) & ~(PAGE_4K - 1);
    if (stride < PAGE_4K)
        stride = PAGE_4K;
    u64 next = (off + stride - 1) / stride * stride;
    u64 last = size - PAGE_4K;
    return (next < off + len && next < size) || (last >= off && last < off + len);
}

/* Divergence where it happens: do_wp_page(struct vm_fault *vmf) (mm/memory.c,
 * 5.10 .. 7.2 in the lab) handles a write to a page whose PTE is write-protected, and
 * either keeps the page (reuse) or gives the process a copy (COW: a page shared
 * after fork, the shared zero page, a read-only pinned page before 6.2's
 * "reliable R/O long-term pinning", seeds/003).  A copy inside a live DMA
 * mapping is a divergence: the device keeps the pinned page, the process gets
 * another.  Sent only for processes that hold pins (each backend checks its
 * per-process table first: one hash lookup for everyone else); the daemon finds
 * the mapping and reads whether the page was replaced (vfiomond/pins.py).
 * vmf->address is page-aligned (__handle_mm_fault); vmf->orig_pte is the PTE
 * the fault found, sent raw: its PFN field depends on the CPU's physical
 * address width (x86: physical_mask, a variable), which the daemon reads from
 * the running system (vfiomond/pagemap.py pte_pfn_decoder). */
static __always_inline void write_fault_event(struct vm_fault *vmf, struct pin_event *ev)
{
    ev->type = EV_WRITE_FAULT;
    bpf_probe_read_kernel(&ev->vaddr, sizeof(ev->vaddr), &vmf->address);
    bpf_probe_read_kernel(&ev->pfn, sizeof(vmf->orig_pte) < sizeof(ev->pfn) ? sizeof(vmf->orig_pte) : sizeof(ev->pfn),
                          &vmf->orig_pte);
}
