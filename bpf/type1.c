/* Probe area "type1": VFIO type1 DMA map/unmap, GUP pinning, locked_vm charges.
 * Python side: vfiomond/type1.py (the TYPE1_* indices are mirrored there and
 * checked by tests/unit/test_type1.py).
 */
#include <uapi/linux/vfio.h>
#ifndef KERNEL_LAYOUT_BTF
#include <linux/sched/signal.h>
#endif

enum type1_counter {
    TYPE1_MAP_BYTES = 0,
    TYPE1_UNMAP_BYTES = 1,
    TYPE1_PINNED_PAGES = 2,
    TYPE1_UNPINNED_PAGES = 3,
    TYPE1_CHARGED_PAGES = 4,
    TYPE1_UNCHARGED_PAGES = 5,
    TYPE1_CHARGE_FAILURES = 6,
    TYPE1_MAP_SUM_NS = 7,
    TYPE1_UNMAP_SUM_NS = 8,
    TYPE1_ZERO_PAGE_PINS = 9,
    TYPE1_WRITE_FAULTS = 10,  /* write faults seen in processes holding pins */
    TYPE1_WRITE_FAULTS_OUTSIDE = 11,  /* ... outside their DMA mappings (not sent) */
    TYPE1_COUNTERS = 12,
};

BPF_ARRAY(type1_counters, u64, TYPE1_COUNTERS);

static __always_inline void type1_add(int index, u64 n)
{
    u64 *v = type1_counters.lookup(&index);
    if (v)
        __sync_fetch_and_add(v, n);
}

#define OP_MAP 0
#define OP_UNMAP 1

struct dma_inflight {
    u64 ts;
    u64 vaddr;  /* map: the user's buffer */
    u64 iova;   /* map: the IOVA asked for */
    u64 size;
    u64 unmap;  /* struct vfio_iommu_type1_dma_unmap *: the kernel writes the unmapped size back */
    u64 space;  /* struct vfio_iommu *: the container's IOVA space */
    u64 seq;    /* map: its pin_maps entry's seq (0: none) */
    u32 flags;  /* map: VFIO_DMA_MAP_FLAG_* */
    u8 op;
    u8 user;    /* unmap points to user memory (ioctl fallback) */
    u8 active;  /* a call in flight (the thread's entry is kept between calls) */
};

/* 1 MiB: about 9,000 events.  Only rare events use it (a MAP_DMA that pinned
 * the zero page, write faults inside DMA mappings, memlock refusals): maps
 * and unmaps live in pin_maps, whatever their rate. */
BPF_RINGBUF_OUTPUT(pin_events, 256);

static __always_inline void emit(struct pin_event *ev)
{
    ev->pid = bpf_get_current_pid_tgid() >> 32;
    if (pin_events.ringbuf_output(ev, sizeof(*ev), 0) != 0)
        count_lost(LOSS_PIN_EVENTS_FULL);
}

struct dma_key {
    u8 op;
    u8 pad[3];
    s32 err;  /* errno (positive) */
};

/* A thread's entry stays between its calls and is rewritten in place behind
 * `active` (as THREAD_STATE in common.h, but a plain hash: a thread may sleep
 * in MAP_DMA as long as it likes, so no entry in flight may be evicted).  A hash
 * insert and delete per call cost more than the lookups that replace them
 * (benchmarks/RESULTS.md, 2026-12-02, "MAP_DMA with the programs hot").  The
 * daemon deletes the entries of threads that are gone (counting those still in
 * flight as stale); a full table is counted at the insert. */
BPF_HASH(dma_by_tid, u32, struct dma_inflight, 4096);

BPF_ARRAY(dma_hist, u64, 2 * DMA_SLOTS);  /* op * DMA_SLOTS + slot (common.h) */
BPF_HASH(dma_errors, struct dma_key, u64, 128);

/* Per process (tgid): what the VFIO user has mapped, pinned and had charged.
 * Entries of processes that are gone are deleted by the daemon. */
struct proc_acct {
    s64 mapped_bytes;
    s64 pinned_pages;
    s64 charged_pages;
    u64 charge_failures;
    u64 map_ns;     /* time in MAP_DMA calls, failed ones too */
    u64 map_bytes;  /* bytes of successful MAP_DMA calls, never decreases */
    s64 zero_pages; /* pinned at the zero page now (never charged: the seed's gap) */
};

BPF_HASH(proc_acct, u32, struct proc_acct, 4096);

static __always_inline struct proc_acct *proc_entry(void)
{
    u32 pid = bpf_get_current_pid_tgid() >> 32;
    struct proc_acct zero = {};
    struct proc_acct *a = proc_acct.lookup_or_try_init(&pid, &zero);
    if (!a)
        count_lost(LOSS_PROC_ACCT_FULL);
    return a;
}

static __always_inline void proc_add(s64 *field, s64 n)
{
    __sync_fetch_and_add(field, n);
}

/* type1's entries in pin_maps (common.h): made at the entry of MAP_DMA, filled
 * from vfio_pin_pages_remote's runs, deleted at the entry of vfio_remove_dma(
 * iommu, dma), which every path that ends a mapping takes before it unpins
 * (UNMAP_DMA including VFIO_DMA_UNMAP_FLAG_ALL, a MAP_DMA that failed after
 * pinning, and vfio_iommu_unmap_unpin_all when the container is released or
 * its last group detached; drivers/vfio/vfio_iommu_type1.c, 5.10 .. 7.2 in the
 * lab).  VFIO_DMA_MAP_FLAG_VADDR (5.12+) gives a mapping a new address: a new
 * seq for it; VFIO_DMA_UNMAP_FLAG_VADDR takes the container's addresses away
 * (pin_space_stale). */
static __always_inline u64 type1_map_begin(u64 space, struct dma_inflight *d)
{
#ifdef VFIO_DMA_MAP_FLAG_VADDR
    if (d->flags & VFIO_DMA_MAP_FLAG_VADDR)
        return 0;
#endif
    return pin_map_begin(space, d->iova, d->vaddr, d->size, PIN_BACKEND_TYPE1, kernel_fact(FACT_PIN_MAPS));
}

#ifdef VFIO_DMA_MAP_FLAG_VADDR
static __always_inline void type1_map_readdress(struct pin_map_key *k, struct dma_inflight *d)
{
    struct pin_map *m = pin_maps.lookup(k);
    if (!m)
        return;
    if (m->complete)
        pin_spans_delete(m->pid, m->vaddr, m->size, m->seq);
    m->seq = bpf_ktime_get_ns();
    m->vaddr = d->vaddr;
    m->pid = bpf_get_current_pid_tgid() >> 32;
    if (m->complete)
        pin_spans_insert(k, m);
}
#endif

static __always_inline void type1_map_end(struct dma_inflight *d, int ret)
{
    struct pin_map_key k = {.space = d->space, .iova = d->iova};
#ifdef VFIO_DMA_MAP_FLAG_VADDR
    if ((d->flags & VFIO_DMA_MAP_FLAG_VADDR) && ret == 0 && kernel_fact(FACT_PIN_MAPS)) {
        type1_map_readdress(&k, d);
        return;
    }
#endif
    struct pin_event ev = {};
    if (pin_map_end(&k, d->seq, ret == 0, &ev))
        emit(&ev);
}

/* vfio_remove_dma(struct vfio_iommu *iommu, struct vfio_dma *dma): the mapping
 * ends; it unpins next.  struct vfio_dma is private to vfio_iommu_type1.c; its
 * first fields have been node, iova, vaddr, size since the driver's start
 * (73fa0d10d077, v3.6). */
struct vfio_dma_head {
    char node[KSIZEOF_RB_NODE];  /* struct rb_node */
    dma_addr_t iova;
    unsigned long vaddr;
    size_t size;
};

int on_remove_dma(struct pt_regs *ctx)
{
    struct vfio_dma_head dma = {};
    if (bpf_probe_read_kernel(&dma, sizeof(dma), (void *)PT_REGS_PARM2(ctx)) != 0) {
        count_lost(LOSS_PIN_MAPS_UNREAD);
        return 0;
    }
    pin_map_remove(PT_REGS_PARM1(ctx), dma.iova, dma.size);
    return 0;
}

/* The MAP_DMA was refused: report the process's locked_vm and RLIMIT_MEMLOCK. */
static __always_inline void memlock_refused(u64 request, int err)
{
    struct task_struct *task = (struct task_struct *)bpf_get_current_task();
    struct signal_struct *sig = NULL;
    struct mm_struct *mm = NULL;
    struct pin_event ev = {.type = EV_MEMLOCK, .ret = err, .size = request};
    bpf_probe_read_kernel(&sig, sizeof(sig), KFIELD(task, TASK_SIGNAL));
    bpf_probe_read_kernel(&mm, sizeof(mm), KFIELD(task, TASK_MM));
    if (sig)
        bpf_probe_read_kernel(&ev.limit, sizeof(ev.limit), KFIELD(sig, SIGNAL_MEMLOCK_CUR));
    if (mm)
        bpf_probe_read_kernel(&ev.locked, sizeof(ev.locked), KFIELD(mm, MM_LOCKED_VM));
    struct proc_acct *a = proc_entry();
    if (a)
        __sync_fetch_and_add(&a->charge_failures, 1);
    type1_add(TYPE1_CHARGE_FAILURES, 1);
    emit(&ev);
}

static __always_inline int dma_enter(u64 space, u8 op, struct vfio_iommu_type1_dma_map *map, u64 unmap, u8 user)
{
    u32 tid = current_tid();
    struct dma_inflight d = {};
    d.ts = bpf_ktime_get_ns();
    d.unmap = unmap;
    d.space = space;
    d.op = op;
    d.user = user;
    if (map) {
        d.vaddr = map->vaddr;
        d.iova = map->iova;
        d.size = map->size;
        d.flags = map->flags;
        d.seq = type1_map_begin(space, &d);
    }
    d.active = 1;
    struct dma_inflight *kept = dma_by_tid.lookup(&tid);
    if (kept) {
        /* Still in flight: left by a return probe that never ran (kretprobe
         * maxactive exhausted: many threads asleep in MAP_DMA on one container's lock). */
        if (kept->active)
            count_lost(LOSS_DMA_BY_TID_STALE);
        *kept = d;
    } else if (dma_by_tid.update(&tid, &d) != 0) {
        count_lost(LOSS_DMA_BY_TID_FULL);
    }
    return 0;
}

static __always_inline int dma_return(struct pt_regs *ctx)
{
    u64 zero = 0;
    u32 tid = current_tid();
    struct dma_inflight *d = dma_by_tid.lookup(&tid);
    if (!d || !d->active)
        return 0;  /* not a call this area measures (another type1 ioctl) */
    u64 delta = bpf_ktime_get_ns() - d->ts;
    int ret = (int)PT_REGS_RC(ctx);
    u64 size = d->size;
    if (d->op == OP_UNMAP) {
        struct vfio_iommu_type1_dma_unmap u = {};
        long err = d->user ? bpf_probe_read_user(&u, sizeof(u), (void *)d->unmap)
                           : bpf_probe_read_kernel(&u, sizeof(u), (void *)d->unmap);
        if (err != 0)
            count_lost(LOSS_DMA_BY_TID_UNREAD); /* the call is counted, its bytes are not */
        size = u.size; /* on success: the size the kernel unmapped */
#ifdef VFIO_DMA_UNMAP_FLAG_VADDR
        if (ret == 0 && (u.flags & VFIO_DMA_UNMAP_FLAG_VADDR))
            pin_space_stale_now(d->space);
#endif
    } else {
        type1_map_end(d, ret);
    }
    struct proc_acct *a = (ret == 0 || d->op == OP_MAP) ? proc_entry() : 0;
    if (a && d->op == OP_MAP)
        __sync_fetch_and_add(&a->map_ns, delta);
    if (ret == 0) {
        type1_add(d->op == OP_MAP ? TYPE1_MAP_BYTES : TYPE1_UNMAP_BYTES, size);
        if (a)
            proc_add(&a->mapped_bytes, d->op == OP_MAP ? (s64)size : -(s64)size);
        if (a && d->op == OP_MAP)
            __sync_fetch_and_add(&a->map_bytes, size);
    } else {
        struct dma_key key = {.op = d->op, .err = -ret};
        add_or_lost(dma_errors.lookup_or_try_init(&key, &zero), 1, LOSS_DMA_ERRORS_FULL);
    }
    type1_add(d->op == OP_MAP ? TYPE1_MAP_SUM_NS : TYPE1_UNMAP_SUM_NS, delta);
    int cell = dma_hist_cell(d->op, delta);
    u64 *n = dma_hist.lookup(&cell);
    if (n)
        __sync_fetch_and_add(n, 1);
    d->active = 0;
    return 0;
}

/* vfio_dma_do_map(iommu, struct vfio_iommu_type1_dma_map *map): map is the
 * kernel's copy of the ioctl argument. */
int on_dma_map(struct pt_regs *ctx)
{
    struct vfio_iommu_type1_dma_map map = {};
    if (bpf_probe_read_kernel(&map, sizeof(map), (void *)PT_REGS_PARM2(ctx)) != 0)
        count_lost(LOSS_DMA_BY_TID_UNREAD); /* the call is counted, its bytes and pins are not */
    return dma_enter(PT_REGS_PARM1(ctx), OP_MAP, &map, 0, 0);
}

/* vfio_dma_do_unmap(iommu, struct vfio_iommu_type1_dma_unmap *unmap, bitmap) */
int on_dma_unmap(struct pt_regs *ctx)
{
    return dma_enter(PT_REGS_PARM1(ctx), OP_UNMAP, NULL, PT_REGS_PARM2(ctx), 0);
}

int on_dma_return(struct pt_regs *ctx)
{
    return dma_return(ctx);
}

/* Fallback where vfio_dma_do_map/unmap are inlined (Debian's 6.1):
 * vfio_iommu_type1_ioctl(iommu_data, unsigned int cmd, unsigned long arg) is
 * in the driver ops table, so it always exists; arg is the user's struct.
 * The kernel facts FACT_TYPE1_IOCTL_MAP / _UNMAP say which commands it measures
 * (the variants chosen by the probe selection). */
int on_type1_ioctl(struct pt_regs *ctx)
{
    unsigned int cmd = (unsigned int)PT_REGS_PARM2(ctx);
    u64 arg = PT_REGS_PARM3(ctx);
    if (cmd == VFIO_IOMMU_MAP_DMA && kernel_fact(FACT_TYPE1_IOCTL_MAP)) {
        struct vfio_iommu_type1_dma_map map = {};
        if (bpf_probe_read_user(&map, sizeof(map), (void *)arg) != 0)
            count_lost(LOSS_DMA_BY_TID_UNREAD); /* the call is counted, its bytes and pins are not */
        return dma_enter(PT_REGS_PARM1(ctx), OP_MAP, &map, 0, 1);
    }
    if (cmd == VFIO_IOMMU_UNMAP_DMA && kernel_fact(FACT_TYPE1_IOCTL_UNMAP))
        return dma_enter(PT_REGS_PARM1(ctx), OP_UNMAP, NULL, arg, 1);
    return 0;
}

/* vfio_pin_pages_remote(dma, vaddr, npage, unsigned long *pfn_base, limit[, batch])
 * returns the pages pinned: one physically contiguous run starting at
 * *pfn_base (5.10 .. 6.18).  A run fills the sample slots it holds of the
 * MAP_DMA in flight on this thread (pin_map_fill, common.h). */
struct pin_inflight {
    u64 vaddr;
    u64 pfn_base;  /* unsigned long * (kernel) */
    u8 active;     /* a call in flight (the entry is reused: THREAD_STATE in common.h) */
};

BPF_TABLE("lru_hash", u32, struct pin_inflight, pin_by_tid, THREAD_STATE_ENTRIES);

static __always_inline int on_pin_pages__body(struct pt_regs *ctx)
{
    u32 tid = current_tid();
    struct pin_inflight fresh = {.vaddr = PT_REGS_PARM2(ctx), .pfn_base = PT_REGS_PARM4(ctx), .active = 1};
    struct pin_inflight *p = pin_by_tid.lookup(&tid);
    if (p) {
        if (p->active)
            count_lost(LOSS_PIN_BY_TID_STALE); /* the previous call's return probe never ran */
        *p = fresh;
    } else {
        pin_by_tid.update(&tid, &fresh); /* a failure is counted, as missing, by the return probe */
    }
    return 0;
}

int on_pin_pages(struct pt_regs *ctx)
{
    return on_pin_pages__body(ctx);
}

/* One pinned run of ``pinned`` pages from user address ``vaddr``, its first PFN at
 * *pfn_base (a kernel pointer), by thread ``tid``. */
static __always_inline int pin_run_done(u32 tid, u64 vaddr, u64 pfn_base, long pinned)
{
    struct dma_inflight *d = dma_by_tid.lookup(&tid);
    if (d && !d->active)
        d = NULL;  /* not inside a MAP_DMA (vfio_iommu_replay: a new IOMMU domain pins what is mapped) */
    if (pinned <= 0) {
        /* Type1 checks RLIMIT_MEMLOCK itself before charging (and says
         * "RLIMIT_MEMLOCK ... exceeded" in the kernel log): -ENOMEM. */
        if (pinned == -ENOMEM)
            memlock_refused(d ? d->size : 0, (int)pinned);
        return 0;
    }
    type1_add(TYPE1_PINNED_PAGES, pinned);
    struct proc_acct *a = proc_entry();
    if (a)
        proc_add(&a->pinned_pages, pinned);
    u64 pfn = 0;
    if (bpf_probe_read_kernel(&pfn, sizeof(pfn), (void *)pfn_base) != 0) {
        /* PFN unknown: neither a zero-page pin nor a sample (PFN 0 would look diverged). */
        count_lost(LOSS_PIN_BY_TID_UNREAD);
        return 0;
    }
    u64 zero = zero_pages_in_run(pfn, (u64)pinned, huge_zero_pfn_now());
    if (zero)
        type1_add(TYPE1_ZERO_PAGE_PINS, zero);
#ifdef ZERO_PFN
    /* Only the 4 KiB zero page goes uncharged (PageReserved: type1's
     * is_invalid_reserved_pfn); the huge zero page is a folio like any other. */
    if (a && pfn == ZERO_PFN)
        proc_add(&a->zero_pages, pinned);
#endif
    if (d && d->op == OP_MAP && d->seq && vaddr >= d->vaddr) {
        struct pin_map_key k = {.space = d->space, .iova = d->iova};
        pin_map_fill(&k, d->seq, d->size, vaddr - d->vaddr, (u64)pinned, pfn);
    }
    return 0;
}

static __always_inline int on_pin_pages_return__body(struct pt_regs *ctx)
{
    u32 tid = current_tid();
    struct pin_inflight *p = pin_by_tid.lookup(&tid);
    if (!p || !p->active) {
        count_lost(LOSS_PIN_BY_TID_MISSING); /* a run pinned, unseen: the accounting misses it */
        return 0;
    }
    p->active = 0;
    return pin_run_done(tid, p->vaddr, p->pfn_base, (long)PT_REGS_RC(ctx));
}

/* As a fexit program (probes.Hook.fexit) the arguments come with the return
 * value: no entry program, no per-thread entry to keep or lose. */
static __always_inline int on_pin_pages_fexit__body(struct pt_regs *ctx)
{
    return pin_run_done(current_tid(), PT_REGS_PARM2(ctx), PT_REGS_PARM4(ctx), (long)PT_REGS_RC(ctx));
}

int on_pin_pages_return(struct pt_regs *ctx)
{
    return on_pin_pages_return__body(ctx);
}

/* vfio_unpin_pages_remote(dma, iova, pfn, long npage, bool do_accounting): one
 * physically contiguous run, so zero-page pins come one page a call. */
static __always_inline int on_unpin_pages__body(struct pt_regs *ctx)
{
    long npage = (long)PT_REGS_PARM4(ctx);
    if (npage > 0) {
        type1_add(TYPE1_UNPINNED_PAGES, npage);
        struct proc_acct *a = proc_entry();
        if (a)
            proc_add(&a->pinned_pages, -npage);
#ifdef ZERO_PFN
        if (a && PT_REGS_PARM3(ctx) == ZERO_PFN)
            proc_add(&a->zero_pages, -npage);
#endif
    }
    return 0;
}

int on_unpin_pages(struct pt_regs *ctx)
{
    return on_unpin_pages__body(ctx);
}

/* locked_vm: __account_locked_vm(mm, pages, inc, task, bypass_rlim) called
 * while the thread is inside the marker (mm_lock_acct, else vfio_lock_acct;
 * vfiomond/probes.py) is a type1 charge. */
struct acct_inflight {
    u64 pages;
    u8 in_lock_acct; /* inside the marker (the entry is reused: THREAD_STATE in common.h) */
    u8 inc;
    u8 armed; /* __account_locked_vm entered inside the marker */
};

BPF_TABLE("lru_hash", u32, struct acct_inflight, acct_by_tid, THREAD_STATE_ENTRIES);

/* The thread enters the marker or mm_lock_acct (``pages``: its npage). */
static __always_inline int acct_enter(u64 pages)
{
    u32 tid = current_tid();
    struct acct_inflight fresh = {.pages = pages, .in_lock_acct = 1};
    struct acct_inflight *a = acct_by_tid.lookup(&tid);
    if (a) {
        if (a->in_lock_acct)
            count_lost(LOSS_ACCT_BY_TID_STALE); /* the previous call's return probe never ran */
        *a = fresh;
    } else {
        acct_by_tid.update(&tid, &fresh); /* a failure is counted, as missing, by the return probe */
    }
    return 0;
}

static __always_inline int on_lock_acct__body(struct pt_regs *ctx)
{
    return acct_enter(0);
}

int on_lock_acct(struct pt_regs *ctx)
{
    return on_lock_acct__body(ctx);
}

static __always_inline int on_lock_acct_return__body(struct pt_regs *ctx)
{
    u32 tid = current_tid();
    struct acct_inflight *a = acct_by_tid.lookup(&tid);
    if (a && a->in_lock_acct)
        a->in_lock_acct = a->armed = 0;
    else
        count_lost(LOSS_ACCT_BY_TID_MISSING); /* a charge inside it may have gone unseen */
    return 0;
}

int on_lock_acct_return(struct pt_regs *ctx)
{
    return on_lock_acct_return__body(ctx);
}

static __always_inline int on_account_locked_vm__body(struct pt_regs *ctx)
{
    u32 tid = current_tid();
    struct acct_inflight *a = acct_by_tid.lookup(&tid);
    if (!a || !a->in_lock_acct)
        return 0;
    a->pages = PT_REGS_PARM2(ctx);
    a->inc = (u8)PT_REGS_PARM3(ctx);
    a->armed = 1;
    return 0;
}

int on_account_locked_vm(struct pt_regs *ctx)
{
    return on_account_locked_vm__body(ctx);
}

/* A charge (``inc``) or uncharge of ``pages`` that returned ``ret``. */
static __always_inline void account_done(u64 pages, u8 inc, int ret)
{
    struct proc_acct *p = proc_entry();
    if (ret != 0) {
        memlock_refused(pages * PAGE_SIZE, ret);
    } else if (inc) {
        type1_add(TYPE1_CHARGED_PAGES, pages);
        if (p)
            proc_add(&p->charged_pages, pages);
    } else {
        type1_add(TYPE1_UNCHARGED_PAGES, pages);
        if (p)
            proc_add(&p->charged_pages, -(s64)pages);
    }
}

static __always_inline int on_account_locked_vm_return__body(struct pt_regs *ctx)
{
    u32 tid = current_tid();
    struct acct_inflight *a = acct_by_tid.lookup(&tid);
    if (!a || !a->armed)
        return 0;
    account_done(a->pages, a->inc, (int)PT_REGS_RC(ctx));
    a->armed = 0;
    return 0;
}

/* As a fexit program (probes.Hook.fexit): __account_locked_vm(mm, pages, inc, task,
 * bypass_rlim) and its result at once, inside the marker. */
static __always_inline int on_account_locked_vm_fexit__body(struct pt_regs *ctx)
{
    u32 tid = current_tid();
    struct acct_inflight *a = acct_by_tid.lookup(&tid);
    if (a && a->in_lock_acct)
        account_done(PT_REGS_PARM2(ctx), (u8)PT_REGS_PARM3(ctx), (int)PT_REGS_RC(ctx));
    return 0;
}

int on_account_locked_vm_return(struct pt_regs *ctx)
{
    return on_account_locked_vm_return__body(ctx);
}

/* locked_vm where type1 has mm_lock_acct(task, mm, lock_cap, npage) (6.2; 6.1.20 and
 * 5.15.100 stable; its only caller of __account_locked_vm): it takes mmap_lock and
 * calls __account_locked_vm(mm, abs(npage), npage > 0, task, lock_cap), returning
 * that call's 0 or -ENOMEM, or mmap_write_lock_killable's -EINTR when no charge ran.
 * Its npage and result are the charge: no marker, no hook on __account_locked_vm. */
static __always_inline void mm_lock_acct_done(long npage, int ret)
{
    if (ret != 0 && ret != -ENOMEM)
        return; /* killed while waiting for mmap_lock: nothing charged or refused */
    account_done(npage < 0 ? -npage : npage, npage > 0, ret);
}

static __always_inline int on_mm_lock_acct__body(struct pt_regs *ctx)
{
    return acct_enter(PT_REGS_PARM4(ctx));
}

int on_mm_lock_acct(struct pt_regs *ctx)
{
    return on_mm_lock_acct__body(ctx);
}

static __always_inline int on_mm_lock_acct_return__body(struct pt_regs *ctx)
{
    u32 tid = current_tid();
    struct acct_inflight *a = acct_by_tid.lookup(&tid);
    if (!a || !a->in_lock_acct) {
        count_lost(LOSS_ACCT_BY_TID_MISSING); /* a charge went unseen */
        return 0;
    }
    a->in_lock_acct = 0;
    mm_lock_acct_done((long)a->pages, (int)PT_REGS_RC(ctx));
    return 0;
}

int on_mm_lock_acct_return(struct pt_regs *ctx)
{
    return on_mm_lock_acct_return__body(ctx);
}

/* As a fexit program (probes.Hook.fexit): the arguments and the result at once. */
static __always_inline int on_mm_lock_acct_fexit__body(struct pt_regs *ctx)
{
    mm_lock_acct_done((long)PT_REGS_PARM4(ctx), (int)PT_REGS_RC(ctx));
    return 0;
}

/* A write fault in a process holding type1 pins (write_fault_in, common.h),
 * sent only when it falls inside one of the process's DMA mappings (pin_spans,
 * one lookup); the others are counted here. */
static __always_inline int on_type1_write_fault__body(struct pt_regs *ctx)
{
    u32 pid = bpf_get_current_pid_tgid() >> 32;
    struct proc_acct *a = proc_acct.lookup(&pid);
    if (!a || a->pinned_pages <= 0)
        return 0;
    type1_add(TYPE1_WRITE_FAULTS, 1);
    struct vm_fault *vmf = (struct vm_fault *)PT_REGS_PARM1(ctx);
    u64 address = fault_address(vmf);
    struct pin_span *span = pin_span_of(pid, address, PIN_BACKEND_TYPE1);
    if (!span) {
        type1_add(TYPE1_WRITE_FAULTS_OUTSIDE, 1);
        return 0;
    }
    struct pin_event ev = {};
    write_fault_in(vmf, address, span, &ev);
    emit(&ev);
    return 0;
}

int on_type1_write_fault(struct pt_regs *ctx)
{
    return on_type1_write_fault__body(ctx);
}
