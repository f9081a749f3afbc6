/* Shared helpers for vfiomond's BPF programs (BCC).
 *
 * vfiomond/bpfload.py puts this text in front of the area programs and
 * compiles them as one BCC program.  Every map is bounded; a failed insert is
 * counted in lost_events (enum loss: which map, and why) instead of being
 * dropped silently.
 */
#include <uapi/linux/ptrace.h>
#include <linux/errno.h>
#ifndef KERNEL_LAYOUT_BTF
#include <linux/sched.h>
#include <linux/mm_types.h>
#include <linux/mm.h>
#endif

/* Kernel struct members are read at KOFF_<name> (their size KSIZE_<name>): numbers
 * from the kernel's BTF (KERNEL_LAYOUT_BTF), without the kernel headers whose
 * parsing is most of the compile, or offsetof over the headers elsewhere
 * (vfiomond/layout.py, which lists every member read). */
#define KFIELD(p, name) ((void *)(p) + KOFF_##name)

/* Handlers of hooks that may be fentry/fexit (probes.Hook trampoline=True) come
 * in two parts: the kprobe program on_x(ctx) and the inline body on_x__body(ctx).
 * bpfload.trampoline_source generates, per hooked function, a fentry or fexit
 * program that copies the call's arguments (and return value) into a pt_regs on
 * its stack, where PT_REGS_PARMn (PT_REGS_RC) read them, and runs the bodies. */

/* Entries older than this are left over from a missed kretprobe. */
#define STALE_NS (10ULL * 1000 * 1000 * 1000)

/* THREAD_STATE: what a hot kprobe hands its kretprobe lives in an LRU hash
 * keyed by thread id whose entry stays between calls and is rewritten in place
 * behind an "in flight" field.  A hash insert and delete per call cost more
 * than all the rest of a fault's programs (benchmarks/RESULTS.md, 2026-11-24);
 * the LRU bounds the map and drops the entries of threads that are gone (an
 * entry in flight was used at its entry probe, so idle threads' go first). */
#ifndef THREAD_STATE_ENTRIES  /* sized from the CPU count by the daemon (bpfload.thread_state_entries) */
#define THREAD_STATE_ENTRIES 4096
#endif

/* Every loss is counted under the map that lost it and why (vfiomond/losses.py
 * LOSSES mirrors this enum: map name, reason): "full" a bounded map refused an
 * insert or a ring buffer had no room, "evicted" an LRU entry in use was gone,
 * "missing" a return probe found no entry in flight for its thread (the LRU
 * evicted it, the insert at the entry failed, or the entry probe missed the
 * call: counted once, at the return; iommufd.c iommufd_ctx_owner: a change of
 * process found no previous owner), "stale" an entry left by a return probe
 * that never ran (found by the thread's next call, or by the daemon once the
 * thread is gone), "split" a buffer needed more address blocks than one call
 * may insert (type1.c pin_spans), "unread" a kernel read failed (what it was
 * for is left out). */
enum loss {
    LOSS_PIN_EVENTS_FULL = 0,
    LOSS_IOMMUFD_PIN_EVENTS_FULL = 1,
    LOSS_PROC_ACCT_FULL = 2,
    LOSS_IOMMUFD_PROC_ACCT_FULL = 3,
    LOSS_DMA_BY_TID_FULL = 4,
    LOSS_IOMMUFD_DMA_BY_TID_FULL = 5,
    LOSS_PIN_BY_TID_MISSING = 6,
    LOSS_ACCT_BY_TID_MISSING = 7,
    LOSS_IOMMUFD_ACCT_BY_TID_MISSING = 8,
    LOSS_DMA_ERRORS_FULL = 9,
    LOSS_IOMMUFD_DMA_ERRORS_FULL = 10,
    LOSS_BAR_FAULTS_BY_VMA_FULL = 11,
    LOSS_BAR_FAULTS_BY_VMA_EVICTED = 12,
    LOSS_BAR_FAULT_BY_TID_MISSING = 13,
    LOSS_BAR_FAULT_BY_TID_STALE = 14,
    LOSS_BAR_FAULT_HIST_FULL = 15,
    LOSS_BAR_FAULTS_CONCURRENT_FULL = 16,
    LOSS_REMAP_BY_TID_MISSING = 17,
    LOSS_REMAP_HIST_FULL = 18,
    LOSS_REMAP_ERRORS_FULL = 19,
    LOSS_PAT_UNTRACK_FULL = 20,
    LOSS_PIN_MAPS_FULL = 21,
    LOSS_PIN_SPANS_FULL = 22,
    LOSS_PIN_SPANS_SPLIT = 23,
    LOSS_PIN_MAPS_UNREAD = 24,
    LOSS_PIN_SPACE_STALE_FULL = 25,
    LOSS_DMA_BY_TID_STALE = 26,
    LOSS_IOMMUFD_DMA_BY_TID_STALE = 27,
    LOSS_PIN_BY_TID_STALE = 28,
    LOSS_ACCT_BY_TID_STALE = 29,
    LOSS_IOMMUFD_ACCT_BY_TID_STALE = 30,
    LOSS_REMAP_BY_TID_STALE = 31,
    LOSS_PIN_BY_TID_UNREAD = 32,
    LOSS_DMA_BY_TID_UNREAD = 33,
    LOSS_IOMMUFD_DMA_BY_TID_UNREAD = 34,
    LOSS_VFIO_OPENERS_FULL = 35,
    LOSS_VFIO_OPENERS_UNREAD = 36,
    LOSS_RESET_BY_TID_FULL = 37,
    LOSS_RESET_BY_TID_MISSING = 38,
    LOSS_RESET_BY_TID_STALE = 39,
    LOSS_RESET_BY_TID_UNREAD = 40,
    LOSS_RESET_EVENTS_FULL = 41,
    LOSS_IOMMU_FAULT_INTERRUPTS_FULL = 42,
    LOSS_DMABUF_BY_TID_FULL = 43,
    LOSS_DMABUF_BY_TID_STALE = 44,
    LOSS_DMABUF_BY_TID_UNREAD = 45,
    LOSS_DMABUF_EXPORTS_FULL = 46,
    LOSS_DMABUF_MOVES_FULL = 47,
    LOSS_IOMMUFD_CHANGE_BY_TID_FULL = 48,
    LOSS_IOMMUFD_CHANGE_BY_TID_MISSING = 49,
    LOSS_IOMMUFD_CHANGE_BY_TID_STALE = 50,
    LOSS_IOMMUFD_CTX_OWNER_MISSING = 51,
    LOSSES = 52,
};

BPF_ARRAY(lost_events, u64, LOSSES);

/* A DMA latency histogram (type1.c dma_hist, iommufd.c iommufd_dma_hist) is an
 * array of DMA_SLOTS log2 buckets per op, cell op * DMA_SLOTS + bpf_log2l(ns)
 * (0 .. 64): one inlined array lookup per call, no hash and no insert
 * (vfiomond/metricsutil.py dma_hist_cells reads it). */
#define DMA_SLOTS 65

static __always_inline int dma_hist_cell(int op, u64 ns)
{
    return op * DMA_SLOTS + bpf_log2l(ns);
}

/* Kernel facts that change when the vfio modules load or unload, written by
 * the daemon (RUNTIME_FACTS in vfiomond/bpfload.py, same order). */
enum kernel_fact {
    FACT_VFIO_PCI_MMAP_OPS = 0,  /* address of vfio_pci_mmap_ops, 0 if not loaded */
    FACT_VFIO_PGOFF_IS_PFN = 1,  /* a BAR vma's vm_pgoff is the BAR's PFN (up to 6.9) */
    FACT_TYPE1_IOCTL_MAP = 2,    /* the type1 ioctl hook measures MAP_DMA */
    FACT_TYPE1_IOCTL_UNMAP = 3,  /* ... and UNMAP_DMA */
    FACT_PIN_MAPS = 4,           /* vfio_remove_dma is hooked: type1 mappings may enter pin_maps */
    FACT_IOMMUFD_PIN_MAPS = 5,   /* iopt_area_unfill_domains is hooked: iommufd mappings may too */
    FACT_BAR_FAULT_NESTED = 6,   /* vfio_pci_mmap_page_fault was seen calling vfio_pci_mmap_huge_fault */
    FACT_VDEV_PDEV_AT = 7,       /* offset of pdev in struct vfio_pci_core_device (module BTF; 0 before 5.15) */
    KERNEL_FACTS = 8,
};

BPF_ARRAY(kernel_facts, u64, KERNEL_FACTS);

static __always_inline u64 kernel_fact(int index)
{
    u64 *v = kernel_facts.lookup(&index);
    return v ? *v : 0;
}

/* Where a vfio-pci BAR vma's vm_private_data (a struct vfio_pci_core_device *,
 * 5.15+) keeps its struct pci_dev *.  Before 5.15 it is a struct vfio_pci_device *
 * (drivers/vfio/pci/vfio_pci_private.h, not in the headers) whose first member is
 * the pdev. */
#ifdef KERNEL_LAYOUT_BTF
#define VDEV_PDEV(vdev) ((void *)(vdev) + kernel_fact(FACT_VDEV_PDEV_AT))
#elif __has_include(<linux/vfio_pci_core.h>)
#include <linux/vfio_pci_core.h>
#define VDEV_PDEV(vdev) (&((struct vfio_pci_core_device *)(vdev))->pdev)
#else
#define VDEV_PDEV(vdev) ((struct pci_dev **)(vdev))
#endif

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

/* Records for pin verification (vfiomond/pins.py), one ring buffer per DMA
 * backend: only what is rare, since the mappings themselves live in pin_maps
 * (below).  `space` names the IOVA space: the type1 container
 * (struct vfio_iommu *) or the iommufd IOAS (struct io_pagetable *). */
#define EV_MAP_END 2      /* a complete mapping pinned the zero page (pin_map_end) */
#define EV_MEMLOCK 5      /* pinning refused: RLIMIT_MEMLOCK (or an -ENOMEM charge) */
#define EV_WRITE_FAULT 6  /* a write fault inside a live DMA mapping (write_fault_in) */

struct pin_event {
    u32 type;
    u32 pid;
    s32 ret;
    u32 pad;
    u64 vaddr;
    u64 iova;
    u64 size;   /* bytes (map, unmap) */
    u64 npage;  /* MAP_END: sample pages at the zero page */
    u64 pfn;    /* write fault: the PTE it found, raw */
    u64 locked; /* memlock: the mm's locked_vm, pages; MAP_END: sample pages pinned */
    u64 limit;  /* memlock: RLIMIT_MEMLOCK soft limit, bytes */
    u64 space;
    u64 map_vaddr;  /* write fault: the mapping's buffer (iova, size: the mapping's) */
    u64 seq;        /* MAP_END, write fault: the mapping's seq in pin_maps */
};

/* Sample points of a mapping of `size` bytes: slot k < PIN_SAMPLES at offset
 * k * stride (while inside the mapping), slot PIN_SAMPLES at the last page.  A
 * mapping keeps at most PIN_SAMPLES + 1 pinned PFNs whatever its size
 * (pin_map_fill).  Must agree with sample_slots() in vfiomond/pins.py. */
#ifndef PIN_SAMPLES
#define PIN_SAMPLES 16
#endif
#define PIN_SLOTS (PIN_SAMPLES + 1)

static __always_inline u64 sample_stride(u64 size)
{
    u64 stride = (size / (PIN_SAMPLES - 1)) & PAGE_MASK;
    return stride < PAGE_SIZE ? PAGE_SIZE : stride;
}

/* Divergence where it happens: do_wp_page(struct vm_fault *vmf) (mm/memory.c,
 * 5.10 .. 7.2 in the lab) handles a write to a page whose PTE is write-protected, and
 * either keeps the page (reuse) or gives the process a copy (COW: a page shared
 * after fork, the shared zero page, a read-only pinned page before 6.2's
 * "reliable R/O long-term pinning", seeds/003).  A copy inside a live DMA
 * mapping is a divergence: the device keeps the pinned page, the process gets
 * another.  Looked at only in processes that hold pins (each backend checks its
 * per-process table first: one hash lookup for everyone else) and sent only
 * inside a live DMA mapping, which the kernel names (pin_span_of, write_fault_in,
 * below); the daemon reads whether the page was replaced (vfiomond/pins.py).
 * vmf->address is page-aligned (__handle_mm_fault); vmf->orig_pte is the PTE
 * the fault found, sent raw: its PFN field depends on the CPU's physical
 * address width (x86: physical_mask, a variable), which the daemon reads from
 * the running system (vfiomond/pagemap.py pte_pfn_decoder). */
static __always_inline u64 fault_address(struct vm_fault *vmf)
{
    u64 address = 0;
    bpf_probe_read_kernel(&address, sizeof(address), KFIELD(vmf, VM_FAULT_ADDRESS));
    return address;
}

/* Pin verification's table of the live DMA mappings of both backends
 * (vfiomond/pintable.py), keyed by (IOVA space, IOVA): made when the mapping
 * starts pinning, its sample slots filled from the pinned runs, complete when
 * the map returns 0, deleted where the kernel ends the mapping, before it
 * unpins (type1.c: vfio_remove_dma; iommufd.c: iopt_area_unfill_domains).  So
 * an entry read again after a /proc/PID/pagemap read, with the same seq,
 * proves that the read was of a live mapping.  Maps and unmaps cost a few hash
 * updates here and nothing in user space, whatever their rate: the daemon
 * reads the table once per verification pass.  Entries are allocated as
 * mappings come (no preallocation: a value holds PIN_SLOTS PFNs); a full table
 * is counted (LOSS_PIN_MAPS_FULL) and that mapping is not verified.  Each
 * backend makes entries only while its removal hook is attached (its kernel
 * fact), and the daemon empties the table when the hook goes. */
#define PIN_MAPS_MAX 65536
#define PIN_FILLED_WORDS ((PIN_SLOTS + 63) / 64)
#define PIN_BACKEND_TYPE1 1
#define PIN_BACKEND_IOMMUFD 2

struct pin_map_key {
    u64 space;  /* struct vfio_iommu * (type1) or struct io_pagetable * (iommufd) */
    u64 iova;
};

struct pin_map {
    u64 seq;       /* bpf_ktime_get_ns() when made: successive mappings at one key differ */
    u64 vaddr;
    u64 size;
    u32 pid;
    u8 complete;   /* the map returned 0 */
    u8 backend;    /* PIN_BACKEND_* */
    u8 pad[2];
    u64 filled[PIN_FILLED_WORDS];  /* bit per sample slot: its PFN is known */
    u64 pfn[PIN_SLOTS];            /* sample slot -> pinned PFN (pin_map_fill) */
};

BPF_F_TABLE("hash", struct pin_map_key, struct pin_map, pin_maps, PIN_MAPS_MAX, BPF_F_NO_PREALLOC);
BPF_PERCPU_ARRAY(pin_map_scratch, struct pin_map, 1);  /* too large for the BPF stack */

/* Per IOVA space, the time after which its older entries prove nothing: the
 * process gave up its buffers' addresses (type1 VFIO_DMA_UNMAP_FLAG_VADDR,
 * 5.12+, to exec a new VMM; the pins stay), or the kernel changed the space's
 * mappings in a way the table does not follow (iommufd: an area split by the
 * VFIO compat unmap, a domain detached).  The daemon does not verify those
 * entries, nor does a write fault inside them count. */
BPF_HASH(pin_space_stale, u64, u64, 4096);

static __always_inline void pin_space_stale_now(u64 space)
{
    u64 now = bpf_ktime_get_ns();
    if (pin_space_stale.update(&space, &now) != 0)
        count_lost(LOSS_PIN_SPACE_STALE_FULL);
}

/* Which DMA mapping holds an address of a process: an LPM trie over (pid, the
 * address, big-endian), each mapping's buffer split into aligned power-of-two
 * blocks (a 2 MiB-aligned buffer of 1 GiB is one; at most PIN_SPAN_BLOCKS per
 * buffer, the rest counted as LOSS_PIN_SPANS_SPLIT).  One lookup tells a write
 * fault's mapping in the kernel, while it is live, so a mapping that ends
 * before the daemon reads the fault is still named. */
#define PIN_SPAN_BITS 96  /* pid, 32 bits, and the address, 64 */
#define PIN_SPAN_BLOCKS 64
/* SPAN_LOOP: the block loops stay loops (bounded loops verify on 5.3+, ahead of
 * the 5.10 vfiomond needs).  clang would unroll them 64 times at each of their
 * inlined sites: more to compile and to verify at every start (benchmarks/
 * RESULTS.md, 2026-12-03), for a loop that runs once per block of a mapping's buffer
 * (one block for an aligned 1 GiB buffer) on MAP_DMA and UNMAP_DMA only. */
#define PIN_SPANS_MAX 262144

struct pin_span_key {
    u32 prefixlen;
    u32 pid;
    u64 vaddr_be;
};

struct pin_span {
    u64 space;
    u64 iova;   /* the mapping's */
    u64 vaddr;  /* the mapping's buffer */
    u64 size;
    u64 seq;
    u64 backend;
};

BPF_LPM_TRIE(pin_spans, struct pin_span_key, struct pin_span, PIN_SPANS_MAX);

/* log2 of a power of two: the number of bits set below it (no ctz or popcount
 * instruction before BPF ISA v4).  Branchless, like span_block: a branch in the
 * span loops is a fork of the verifier's states in each of their 64 iterations
 * (on_dma_return: 281,447 verifier steps with branches, 49,935 without;
 * benchmarks/RESULTS.md, 2026-12-03). */
static __always_inline u32 log2_pow2(u64 b)
{
    u64 x = b - 1;
    x = x - ((x >> 1) & 0x5555555555555555ULL);
    x = (x & 0x3333333333333333ULL) + ((x >> 2) & 0x3333333333333333ULL);
    x = (x + (x >> 4)) & 0x0f0f0f0f0f0f0f0fULL;
    return (u32)((x * 0x0101010101010101ULL) >> 56);
}

/* The largest aligned block at v that fits in [v, end). */
static __always_inline u64 span_block(u64 v, u64 end)
{
    u64 block = v & -v;
    u64 h = end - v;  /* its highest bit */
    h |= h >> 1; h |= h >> 2; h |= h >> 4; h |= h >> 8; h |= h >> 16; h |= h >> 32;
    h -= h >> 1;
    /* The smaller of the two powers of two (h when v is 0): the lowest bit of both. */
    u64 both = block | h;
    return both & -both;
}

static __always_inline void pin_spans_insert(struct pin_map_key *key, struct pin_map *m)
{
    struct pin_span_key k = {.pid = m->pid};
    struct pin_span span = {.space = key->space, .iova = key->iova, .vaddr = m->vaddr, .size = m->size,
                            .seq = m->seq, .backend = m->backend};
    u64 v = m->vaddr, end = m->vaddr + m->size;
#pragma clang loop unroll(disable)  /* see SPAN_LOOP above */
    for (int i = 0; i < PIN_SPAN_BLOCKS && v < end; i++) {
        u64 block = span_block(v, end);
        k.prefixlen = PIN_SPAN_BITS - log2_pow2(block);
        k.vaddr_be = __builtin_bswap64(v);
        int err = pin_spans.insert(&k, &span);
        if (err != 0 && err != -EEXIST)  /* -EEXIST: the buffer is also mapped at another IOVA */
            count_lost(LOSS_PIN_SPANS_FULL);
        v += block;
    }
    if (v < end)
        count_lost(LOSS_PIN_SPANS_SPLIT);
}

/* The blocks of a mapping's buffer that are still its own (same seq). */
static __always_inline void pin_spans_delete(u32 pid, u64 vaddr, u64 size, u64 seq)
{
    struct pin_span_key k = {.pid = pid};
    u64 v = vaddr, end = vaddr + size;
#pragma clang loop unroll(disable)  /* see SPAN_LOOP above */
    for (int i = 0; i < PIN_SPAN_BLOCKS && v < end; i++) {
        u64 block = span_block(v, end);
        k.prefixlen = PIN_SPAN_BITS - log2_pow2(block);
        k.vaddr_be = __builtin_bswap64(v);
        struct pin_span *span = pin_spans.lookup(&k);
        if (span && span->seq == seq)
            pin_spans.delete(&k);
        v += block;
    }
}

/* A mapping of `size` bytes at `iova` of `space`, of the buffer at `vaddr` of
 * the calling process, starts pinning.  Returns its seq (0: not in the table:
 * `kept` is 0, the IOVA is taken, or the table is full). */
static __always_inline u64 pin_map_begin(u64 space, u64 iova, u64 vaddr, u64 size, u8 backend, u64 kept)
{
    if (!kept || size < PAGE_SIZE)
        return 0;
    int zero = 0;
    struct pin_map *m = pin_map_scratch.lookup(&zero);
    if (!m)
        return 0;
    m->seq = bpf_ktime_get_ns();
    m->vaddr = vaddr;
    m->size = size;
    m->pid = bpf_get_current_pid_tgid() >> 32;
    m->complete = 0;
    m->backend = backend;
    for (int i = 0; i < PIN_FILLED_WORDS; i++)
        m->filled[i] = 0;
    struct pin_map_key k = {.space = space, .iova = iova};
    int err = pin_maps.insert(&k, m);
    if (err == 0)
        return m->seq;
    if (err != -EEXIST)  /* -EEXIST: the IOVA is mapped; this map fails */
        count_lost(LOSS_PIN_MAPS_FULL);
    return 0;
}

/* How many of the `npage` pages from PFN `pfn` (one physically contiguous run)
 * are zero pages: the shared zero page (ZERO_PFN, learned at start from
 * pagemap) or THP's huge zero page, a folio of HPAGE_PMD_NR pages that a read
 * fault maps over a PMD-aligned range (do_huge_pmd_anonymous_page,
 * mm/huge_memory.c).  The huge zero page is allocated at first use and freed by
 * its shrinker once no mm uses it, so its PFN can change: the kernel's own
 * huge_zero_pfn (HUGE_ZERO_PFN_ADDR, from kallsyms; ~0UL while there is none)
 * is read at each event. */
static __always_inline u64 huge_zero_pfn_now(void)
{
    u64 huge = ~0ULL;
#if defined(HUGE_ZERO_PFN_ADDR) && defined(HPAGE_PMD_NR)
    if (bpf_probe_read_kernel(&huge, sizeof(huge), (void *)HUGE_ZERO_PFN_ADDR) != 0)
        huge = ~0ULL;
#endif
    return huge;
}

/* `huge`: huge_zero_pfn_now(), read once per event. */
static __always_inline u64 zero_pages_in_run(u64 pfn, u64 npage, u64 huge)
{
#ifdef ZERO_PFN
    if (pfn == ZERO_PFN)
        return npage;
#endif
#ifdef HPAGE_PMD_NR
    if (huge != ~0ULL && pfn >= huge && pfn - huge < HPAGE_PMD_NR) {
        u64 left = huge + HPAGE_PMD_NR - pfn;
        return npage < left ? npage : left;
    }
#endif
    return 0;
}

/* Whether the pages [off, end) of a mapping of `size` bytes hold one of its
 * sample points (sample_stride).  A mapping of 1 GiB pins in hundreds of runs
 * where its memory is not physically contiguous, and at most PIN_SLOTS of them
 * hold a sample: the others end here, without a lookup of the mapping's entry. */
static __always_inline int run_holds_sample(u64 size, u64 off, u64 end)
{
    u64 stride = sample_stride(size);
    u64 first = (off + stride - 1) / stride;  /* the first slot at or after off */
    u64 last = size - PAGE_SIZE;
    return (first < PIN_SAMPLES && first * stride < end && first * stride < size) || (last >= off && last < end);
}

/* A run of `npage` pages from PFN `pfn` pinned at offset `off` of the mapping
 * of `size` bytes being made: the sample slots it holds get their PFN. */
static __always_inline void pin_map_fill(struct pin_map_key *k, u64 seq, u64 size, u64 off, u64 npage, u64 pfn)
{
    u64 end = off + (npage << PAGE_SHIFT);
    if (!run_holds_sample(size, off, end))
        return;
    struct pin_map *m = pin_maps.lookup(k);
    if (!m || m->seq != seq || m->size != size)
        return;
    u64 stride = sample_stride(size);
    u64 first = (off + stride - 1) / stride;
    for (u32 i = 0; i < PIN_SAMPLES; i++) {
        u64 slot = first + i;
        u64 at = slot * stride;
        if (slot >= PIN_SAMPLES || at >= end || at >= size)
            break;
        m->pfn[slot] = pfn + ((at - off) >> PAGE_SHIFT);
        m->filled[slot / 64] |= 1ULL << (slot % 64);
    }
    u64 last = size - PAGE_SIZE;
    if (last >= off && last < end) {
        m->pfn[PIN_SAMPLES] = pfn + ((last - off) >> PAGE_SHIFT);
        m->filled[PIN_SAMPLES / 64] |= 1ULL << (PIN_SAMPLES % 64);
    }
}

/* The map returned: its entry is complete (and its buffer's spans in
 * pin_spans) or, when it failed, gone.  Fills `ev` as a MAP_END record when the
 * complete mapping pinned a zero page (sample slots at one: npage, of
 * `locked` slots pinned); returns whether it did. */
static __always_inline int pin_map_end(struct pin_map_key *k, u64 seq, int ok, struct pin_event *ev)
{
    struct pin_map *m = pin_maps.lookup(k);
    if (!seq || !m || m->seq != seq)
        return 0;  /* not made, or the kernel ended the mapping already */
    if (!ok) {
        pin_maps.delete(k);
        return 0;
    }
    m->complete = 1;
    u32 pid = m->pid;
    u64 vaddr = m->vaddr, size = m->size;
    if (!vaddr)
        return 0;  /* a file's pages (iommufd.c on_iopt_map_file_pages): no user address */
    pin_spans_insert(k, m);
    /* An unmap on another thread may have ended it since the map dropped its
     * locks: then these spans are nobody's. */
    m = pin_maps.lookup(k);
    if (!m || m->seq != seq) {
        pin_spans_delete(pid, vaddr, size, seq);
        return 0;
    }
#ifdef ZERO_PFN
    u64 zero = 0, filled = 0, huge = huge_zero_pfn_now();
    for (u32 slot = 0; slot < PIN_SLOTS; slot++) {
        if (!(m->filled[slot / 64] & (1ULL << (slot % 64))))
            continue;
        filled++;
        zero += zero_pages_in_run(m->pfn[slot], 1, huge);
    }
    if (zero) {
        ev->type = EV_MAP_END;
        ev->vaddr = vaddr;
        ev->iova = k->iova;
        ev->size = size;
        ev->npage = zero;
        ev->locked = filled;
        ev->space = k->space;
        ev->seq = seq;
        return 1;
    }
#endif
    return 0;
}

/* The kernel ends the mapping at (space, iova) before it unpins.  Returns
 * whether an entry of exactly `size` bytes was there (0 also when `size` is 0). */
static __always_inline int pin_map_remove(u64 space, u64 iova, u64 size)
{
    struct pin_map_key k = {.space = space, .iova = iova};
    struct pin_map *m = pin_maps.lookup(&k);
    if (!m)
        return 0;
    int whole = m->size == size;
    if (m->complete && m->vaddr)
        pin_spans_delete(m->pid, m->vaddr, m->size, m->seq);
    pin_maps.delete(&k);
    return whole;
}

/* A write fault at `address` of process `pid`: the span of a live mapping of
 * `backend` that holds it, if any (entries of a stale space do not count). */
static __always_inline struct pin_span *pin_span_of(u32 pid, u64 address, u8 backend)
{
    struct pin_span_key k = {.prefixlen = PIN_SPAN_BITS, .pid = pid, .vaddr_be = __builtin_bswap64(address)};
    struct pin_span *span = pin_spans.lookup(&k);
    if (!span || span->backend != backend)
        return NULL;
    u64 *stale = pin_space_stale.lookup(&span->space);
    if (stale && span->seq <= *stale)
        return NULL;
    return span;
}

/* The record of a write fault at `address` (fault_address) inside `span`'s
 * mapping, with the PTE the fault found. */
static __always_inline void write_fault_in(struct vm_fault *vmf, u64 address, struct pin_span *span,
                                           struct pin_event *ev)
{
    ev->type = EV_WRITE_FAULT;
    ev->vaddr = address;
    ev->space = span->space;
    ev->iova = span->iova;
    ev->size = span->size;
    ev->map_vaddr = span->vaddr;
    ev->seq = span->seq;
    bpf_probe_read_kernel(&ev->pfn, KSIZE_VM_FAULT_ORIG_PTE < sizeof(ev->pfn) ? KSIZE_VM_FAULT_ORIG_PTE : sizeof(ev->pfn),
                          KFIELD(vmf, VM_FAULT_ORIG_PTE));
}
