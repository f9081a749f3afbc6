/* Probe area "iommufd": IOMMU_IOAS_MAP / IOMMU_IOAS_UNMAP (and the VFIO
 * compat ioctls iommufd serves) and iommufd's pin accounting
 * (drivers/iommu/iommufd, 6.2+).
 * Python side: vfiomond/iommufd.py (the IOMMUFD_* indices are mirrored there
 * and checked by tests/unit/test_iommufd.py).  Names carry the area's prefix:
 * every area is compiled into one BCC program.
 */
#ifndef KERNEL_LAYOUT_BTF
#include <linux/sched/user.h>
#include <linux/interval_tree.h>
#include <linux/kref.h>
#include <linux/mutex.h>
#endif

enum iommufd_counter {
    IOMMUFD_MAP_BYTES = 0,
    IOMMUFD_UNMAP_BYTES = 1,
    IOMMUFD_MAP_SUM_NS = 2,
    IOMMUFD_UNMAP_SUM_NS = 3,
    IOMMUFD_CHARGE_FAILURES = 4,
    /* Pages pinned (+) and unpinned (-) per accounting mode, as
     * do_update_pinned charged them: IOMMUFD_PIN_BASE + 2 * mode + (0 pin, 1 unpin). */
    IOMMUFD_PIN_BASE = 5,
    IOMMUFD_WRITE_FAULTS = 11,  /* write faults seen in processes holding iommufd pins */
    IOMMUFD_WRITE_FAULTS_OUTSIDE = 12,  /* ... outside their DMA mappings (not sent) */
    IOMMUFD_MAP_FILE_BYTES = 13,  /* of IOMMUFD_MAP_BYTES: IOMMU_IOAS_MAP_FILE's (a memfd or dma-buf) */
    IOMMUFD_CHANGE_PROCESS = 14,  /* IOMMU_IOAS_CHANGE_PROCESS calls that succeeded */
    IOMMUFD_COUNTERS = 15,
};

/* iopt_pages->account_mode (IOPT_PAGES_ACCOUNT_*), told apart by what the
 * call changed: the user's locked_vm (USER), the mm's locked_vm (MM), neither
 * (NONE: the mapper had CAP_IPC_LOCK).  pinned_vm is charged in every mode. */
#define ACCOUNT_NONE 0
#define ACCOUNT_USER 1
#define ACCOUNT_MM 2

BPF_ARRAY(iommufd_counters, u64, IOMMUFD_COUNTERS);

static __always_inline void iommufd_add(int index, u64 n)
{
    u64 *v = iommufd_counters.lookup(&index);
    if (v)
        __sync_fetch_and_add(v, n);
}

#define IOMMUFD_OP_MAP 0
#define IOMMUFD_OP_UNMAP 1

struct iommufd_inflight {
    u64 ts;
    u64 iopt;      /* struct io_pagetable *: the IOAS's IOVA space */
    u64 length;    /* map: bytes asked for */
    u64 unmapped;  /* unmap: unsigned long *, the bytes unmapped on return */
    u64 uptr;      /* map: the user's buffer */
    u64 iova_ptr;  /* map: unsigned long *, the IOVA (allocated before any page is mapped) */
    u64 iova;      /* map: *iova_ptr once read; unmap: the IOVA asked for */
    u64 seq;       /* map: its pin_maps entry's seq (0: none) */
    u8 op;
    u8 begun;      /* map: the first run reached iommu_map (IOVA read, entry made) */
    u8 file;       /* map: IOMMU_IOAS_MAP_FILE (uptr 0: no user address to verify) */
    u8 active;     /* a call in flight (the thread's entry is kept between calls) */
};

/* 1 MiB, as type1's pin_events: rare records only (a map that pinned the zero
 * page, write faults inside DMA mappings); maps and unmaps live in pin_maps. */
BPF_RINGBUF_OUTPUT(iommufd_pin_events, 256);

static __always_inline void iommufd_emit(struct pin_event *ev)
{
    ev->pid = bpf_get_current_pid_tgid() >> 32;
    if (iommufd_pin_events.ringbuf_output(ev, sizeof(*ev), 0) != 0)
        count_lost(LOSS_IOMMUFD_PIN_EVENTS_FULL);
}

struct iommufd_dma_key {
    u8 op;
    u8 pad[3];
    s32 err;  /* errno (positive) */
};

/* Kept per thread between calls, as type1.c's dma_by_tid (and for its reasons). */
BPF_HASH(iommufd_dma_by_tid, u32, struct iommufd_inflight, 4096);
/* IOMMU_IOAS_MAP calls in flight on any thread, so that iommu_map's other callers
 * (the DMA API on translated default domains: every streaming DMA mapping of the
 * host) end at an array read, not a hash lookup.  Up when a map's entry is made,
 * down when its return probe removes it; an entry that goes otherwise (overwritten
 * as stale, forgotten with its exited thread) leaves the count high: more lookups,
 * never a map missed. */
BPF_ARRAY(iommufd_maps_in_flight, s64, 1);
BPF_ARRAY(iommufd_dma_hist, u64, 2 * DMA_SLOTS);  /* op * DMA_SLOTS + slot (common.h) */
BPF_HASH(iommufd_dma_errors, struct iommufd_dma_key, u64, 128);

/* Per process (tgid), deleted by the daemon when the process is gone. */
struct iommufd_proc {
    s64 mapped_bytes;
    s64 pinned_pages;   /* all modes (pinned_vm) */
    s64 charged_pages;  /* USER and MM modes */
    s64 exempt_pages;   /* NONE mode */
    u64 charge_failures;
    u32 account;        /* mode of the last change + 1 (0: none seen) */
    u32 pad;
    u64 map_ns;         /* time in iopt_map_user_pages calls, failed ones too */
    u64 map_bytes;      /* bytes of successful maps, never decreases */
};

BPF_HASH(iommufd_proc_acct, u32, struct iommufd_proc, 4096);

/* struct iommufd_ctx * -> tgid of the process that last mapped through it, or
 * took it over (IOMMU_IOAS_CHANGE_PROCESS).  LRU: the contexts of closed iommufds
 * go first. */
BPF_TABLE("lru_hash", u64, u32, iommufd_ctx_owner, 4096);

static __always_inline void iommufd_ctx_mapped(u64 ictx)
{
    u32 pid = bpf_get_current_pid_tgid() >> 32;
    u32 *owner = iommufd_ctx_owner.lookup(&ictx);
    if (!owner || *owner != pid)
        iommufd_ctx_owner.update(&ictx, &pid);
}

static __always_inline struct iommufd_proc *iommufd_proc_of(u32 pid)
{
    struct iommufd_proc zero = {};
    struct iommufd_proc *a = iommufd_proc_acct.lookup_or_try_init(&pid, &zero);
    if (!a)
        count_lost(LOSS_IOMMUFD_PROC_ACCT_FULL);
    return a;
}

static __always_inline struct iommufd_proc *iommufd_proc_entry(void)
{
    return iommufd_proc_of(bpf_get_current_pid_tgid() >> 32);
}

static __always_inline int iommufd_dma_enter(struct iommufd_inflight *d)
{
    u32 tid = current_tid();
    d->ts = bpf_ktime_get_ns();
    d->active = 1;
    struct iommufd_inflight *kept = iommufd_dma_by_tid.lookup(&tid);
    if (kept) {
        if (kept->active)
            count_lost(LOSS_IOMMUFD_DMA_BY_TID_STALE); /* left by a return probe that never ran */
        *kept = *d;
    } else if (iommufd_dma_by_tid.update(&tid, d) != 0) {
        count_lost(LOSS_IOMMUFD_DMA_BY_TID_FULL);
        return 0;
    }
    if (d->op == IOMMUFD_OP_MAP) {
        u32 first = 0;
        s64 *maps = iommufd_maps_in_flight.lookup(&first);
        if (maps)
            __sync_fetch_and_add(maps, 1);
    }
    return 0;
}

/* iopt_map_user_pages(ictx, iopt, unsigned long *iova, void __user *uptr,
 *                     unsigned long length, int iommu_prot, unsigned int flags) */
int on_iopt_map_user_pages(struct pt_regs *ctx)
{
    iommufd_ctx_mapped(PT_REGS_PARM1(ctx));
    struct iommufd_inflight d = {.op = IOMMUFD_OP_MAP, .iopt = PT_REGS_PARM2(ctx), .iova_ptr = PT_REGS_PARM3(ctx),
                                 .uptr = PT_REGS_PARM4(ctx), .length = PT_REGS_PARM5(ctx)};
    return iommufd_dma_enter(&d);
}

/* iopt_map_file_pages(ictx, iopt, unsigned long *iova, int fd, unsigned long start,
 *                     unsigned long length, int iommu_prot, unsigned int flags)
 * (IOMMU_IOAS_MAP_FILE, 6.13+): a memfd's pages pinned through memfd_pin_folios
 * (pfn_reader_user_pin, pages.c), or from 6.19 a dma-buf's.  No user address:
 * its pin_maps entry has vaddr 0, which no verification or write fault reads. */
int on_iopt_map_file_pages(struct pt_regs *ctx)
{
    iommufd_ctx_mapped(PT_REGS_PARM1(ctx));
    struct iommufd_inflight d = {.op = IOMMUFD_OP_MAP, .iopt = PT_REGS_PARM2(ctx), .iova_ptr = PT_REGS_PARM3(ctx),
                                 .length = PT_REGS_PARM6(ctx), .file = 1};
    return iommufd_dma_enter(&d);
}

/* iopt_unmap_iova(iopt, iova, length, unsigned long *unmapped) and
 * iopt_unmap_all(iopt, unsigned long *unmapped) */
int on_iopt_unmap_iova(struct pt_regs *ctx)
{
    struct iommufd_inflight d = {.op = IOMMUFD_OP_UNMAP, .iopt = PT_REGS_PARM1(ctx), .iova = PT_REGS_PARM2(ctx),
                                 .unmapped = PT_REGS_PARM4(ctx)};
    return iommufd_dma_enter(&d);
}

int on_iopt_unmap_all(struct pt_regs *ctx)
{
    /* unmapped == NULL: iommufd_ioas_destroy tearing an IOAS down at close
     * (drivers/iommu/iommufd/ioas.c, 6.2 ..), not an unmap call; the ioctls
     * (IOMMU_IOAS_UNMAP of everything, VFIO compat UNMAP_FLAG_ALL) pass a pointer.
     * Not counted, as type1's teardown of a container at close is not. */
    if (!PT_REGS_PARM2(ctx))
        return 0;
    struct iommufd_inflight d = {.op = IOMMUFD_OP_UNMAP, .iopt = PT_REGS_PARM1(ctx), .unmapped = PT_REGS_PARM2(ctx)};
    return iommufd_dma_enter(&d);
}

/* iommufd's entries in pin_maps (common.h).  iommufd pins user pages in
 * batches inside static helpers, then hands each physically contiguous run to
 * iommu_map(domain, iova, paddr, size, prot[, gfp]) (batch_to_domain,
 * drivers/iommu/iommufd/pages.c, 6.2+): the page the device will DMA to, at its
 * IOVA.  The first run of the map in flight on this thread makes the entry (the
 * IOVA is allocated by then), each run fills the sample slots it holds;
 * iommu_map calls of anyone else (the DMA API on translated default domains,
 * type1) end at the array read while no IOAS map is in flight, else at the
 * lookup.  A domain attached after the map is filled by another path, not
 * sampled; an IOAS without a domain pins nothing at map time
 * and makes no entry. */
int on_iommufd_iommu_map(struct pt_regs *ctx)
{
    u32 first = 0;
    s64 *maps = iommufd_maps_in_flight.lookup(&first);
    if (maps && *maps <= 0)
        return 0;
    u32 tid = current_tid();
    struct iommufd_inflight *d = iommufd_dma_by_tid.lookup(&tid);
    if (!d || !d->active || d->op != IOMMUFD_OP_MAP)
        return 0;
    if (!d->begun) {
        d->begun = 1;
        if (bpf_probe_read_kernel(&d->iova, sizeof(d->iova), (void *)d->iova_ptr) != 0)
            count_lost(LOSS_IOMMUFD_DMA_BY_TID_UNREAD); /* IOVA unknown: the mapping is not sampled */
        else
            d->seq = pin_map_begin(d->iopt, d->iova, d->uptr, d->length, PIN_BACKEND_IOMMUFD,
                                   kernel_fact(FACT_IOMMUFD_PIN_MAPS));
    }
    u64 iova = PT_REGS_PARM2(ctx);
    if (!d->seq || iova < d->iova)
        return 0;
    struct pin_map_key k = {.space = d->iopt, .iova = d->iova};
    pin_map_fill(&k, d->seq, d->length, iova - d->iova, (PT_REGS_PARM4(ctx) + PAGE_SIZE - 1) >> PAGE_SHIFT,
                 PT_REGS_PARM3(ctx) >> PAGE_SHIFT);
    return 0;
}

/* iopt_area_unfill_domains(struct iopt_area *area, struct iopt_pages *pages):
 * every unmap of an area (IOMMU_IOAS_UNMAP, iopt_unmap_all when the IOAS goes,
 * the VFIO compat UNMAP_DMA) unfills it before it unpins
 * (iopt_unmap_iova_range, drivers/iommu/iommufd/io_pagetable.c, 6.2+).
 * struct iopt_area is private to iommufd; it has begun with its IOVA interval,
 * its pages interval and its io_pagetable since iommufd's start (51fe6141f0f6,
 * 6.2).  An area that is not a whole entry of the table (the VFIO compat unmap
 * split it, or it was mapped before the entry could be made) makes the IOAS's
 * older entries stale: what is still pinned there is no longer known. */
struct iopt_area_head {
    char node[KSIZEOF_INTERVAL_TREE_NODE];        /* struct interval_tree_node */
    char pages_node[KSIZEOF_INTERVAL_TREE_NODE];  /* struct interval_tree_node */
    u64 iopt;
};

int on_iopt_area_unfill(struct pt_regs *ctx)
{
    struct iopt_area_head area = {};
    if (bpf_probe_read_kernel(&area, sizeof(area), (void *)PT_REGS_PARM1(ctx)) != 0) {
        count_lost(LOSS_PIN_MAPS_UNREAD);
        return 0;
    }
    u64 start = 0, last = 0;
    __builtin_memcpy(&start, area.node + KOFF_INTERVAL_START, sizeof(start));
    __builtin_memcpy(&last, area.node + KOFF_INTERVAL_LAST, sizeof(last));
    if (!pin_map_remove(area.iopt, start, last - start + 1))
        pin_space_stale_now(area.iopt);
    return 0;
}

/* iopt_table_remove_domain(iopt, domain): a device left the IOAS; with its last
 * domain the areas' pages are unpinned (iopt_unfill_domain). */
int on_iopt_remove_domain(struct pt_regs *ctx)
{
    pin_space_stale_now(PT_REGS_PARM1(ctx));
    return 0;
}

int on_iommufd_dma_return(struct pt_regs *ctx)
{
    u64 zero = 0;
    u32 tid = current_tid();
    struct iommufd_inflight *d = iommufd_dma_by_tid.lookup(&tid);
    if (!d || !d->active)
        return 0;
    u64 delta = bpf_ktime_get_ns() - d->ts;
    int ret = (int)PT_REGS_RC(ctx);
    if (d->op == IOMMUFD_OP_MAP) {
        struct pin_map_key k = {.space = d->iopt, .iova = d->iova};
        struct pin_event ev = {};
        if (pin_map_end(&k, d->seq, ret == 0, &ev))
            iommufd_emit(&ev);
    }
    struct iommufd_proc *a = (ret == 0 || d->op == IOMMUFD_OP_MAP) ? iommufd_proc_entry() : 0;
    if (a && d->op == IOMMUFD_OP_MAP)
        __sync_fetch_and_add(&a->map_ns, delta);
    if (ret == 0) {
        u64 bytes = d->length;
        if (d->op == IOMMUFD_OP_UNMAP && bpf_probe_read_kernel(&bytes, sizeof(bytes), (void *)d->unmapped) != 0) {
            count_lost(LOSS_IOMMUFD_DMA_BY_TID_UNREAD); /* the call is counted, its bytes are not */
            bytes = 0;
        }
        iommufd_add(d->op == IOMMUFD_OP_MAP ? IOMMUFD_MAP_BYTES : IOMMUFD_UNMAP_BYTES, bytes);
        if (d->file)
            iommufd_add(IOMMUFD_MAP_FILE_BYTES, bytes);
        if (a)
            __sync_fetch_and_add(&a->mapped_bytes, d->op == IOMMUFD_OP_MAP ? (s64)bytes : -(s64)bytes);
        if (a && d->op == IOMMUFD_OP_MAP)
            __sync_fetch_and_add(&a->map_bytes, bytes);
    } else {
        struct iommufd_dma_key key = {.op = d->op, .err = -ret};
        add_or_lost(iommufd_dma_errors.lookup_or_try_init(&key, &zero), 1, LOSS_IOMMUFD_DMA_ERRORS_FULL);
    }
    iommufd_add(d->op == IOMMUFD_OP_MAP ? IOMMUFD_MAP_SUM_NS : IOMMUFD_UNMAP_SUM_NS, delta);
    int cell = dma_hist_cell(d->op, delta);
    u64 *n = iommufd_dma_hist.lookup(&cell);
    if (n)
        __sync_fetch_and_add(n, 1);
    if (d->op == IOMMUFD_OP_MAP) {
        u32 first = 0;
        s64 *maps = iommufd_maps_in_flight.lookup(&first);
        if (maps)
            __sync_fetch_and_add(maps, -1);
    }
    d->active = 0;
    return 0;
}

/* do_update_pinned (6.2 .. 6.12) / iopt_pages_update_pinned (6.13+)
 *     (struct iopt_pages *pages, unsigned long npages, bool inc, user)
 * charges npages to the pages' owner: its mm's pinned_vm and, by the pages'
 * account mode, nothing, its user's locked_vm or its mm's locked_vm; it fails
 * (-ENOMEM) over the owner's RLIMIT_MEMLOCK.  The owner is the process that
 * mapped, until IOMMU_IOAS_CHANGE_PROCESS (6.13+) moves it to the caller: then
 * the caller charges itself (a struct iopt_pages made on its stack,
 * charge_current in ioas.c) and uncharges the previous owner, so each call is
 * the pages' owner's, not the current process's.  The mode is read from the
 * call's effect on the owner's two locked_vm counters (account_mode lies past
 * a union whose size changed in 6.13 and 6.19).  (A charge by another process
 * of the same user between the two reads would make a NONE call look like
 * USER; iommufd charges under the pages' mutex, not the user's, so this can
 * happen, rarely.) */
struct iommufd_acct_inflight {
    u64 npages;
    u64 user;        /* struct user_struct * of the owner */
    u64 mm;          /* struct mm_struct * of the owner */
    long user_locked;
    u64 mm_locked;
    u32 owner;       /* tgid of the owner (its source_task) */
    u8 inc;
    u8 active; /* a call in flight (the entry is reused: THREAD_STATE in common.h) */
};

BPF_TABLE("lru_hash", u32, struct iommufd_acct_inflight, iommufd_acct_by_tid, THREAD_STATE_ENTRIES);

/* struct iopt_pages (drivers/iommu/iommufd/io_pagetable.h) is private to
 * iommufd; it begins with its kref, its mutex, three counts and its owner's
 * task, mm and user, as read in the sources of 6.12 and 7.2.  The mutex is
 * long-aligned, so the kref's int is padded to a long. */
struct iopt_pages_head {
    char kref[(KSIZEOF_KREF + sizeof(long) - 1) & ~(sizeof(long) - 1)];
    char mutex[KSIZEOF_MUTEX];
    u64 npages;
    u64 npinned;
    u64 last_npinned;
    u64 source_task;
    u64 source_mm;
    u64 source_user;
};

static __always_inline void iommufd_locked_vm(struct iommufd_acct_inflight *a)
{
    if (a->user)
        bpf_probe_read_kernel(&a->user_locked, sizeof(a->user_locked), KFIELD((void *)a->user, USER_LOCKED_VM));
    if (a->mm)
        bpf_probe_read_kernel(&a->mm_locked, sizeof(a->mm_locked), KFIELD((void *)a->mm, MM_LOCKED_VM));
}

int on_iommufd_update_pinned(struct pt_regs *ctx)
{
    u32 tid = current_tid();
    struct iommufd_acct_inflight fresh = {.npages = PT_REGS_PARM2(ctx), .inc = (u8)PT_REGS_PARM3(ctx), .active = 1};
    struct iopt_pages_head pages = {};
    u32 owner = 0;
    if (bpf_probe_read_kernel(&pages, sizeof(pages), (void *)PT_REGS_PARM1(ctx)) == 0 && pages.source_task &&
        bpf_probe_read_kernel(&owner, sizeof(owner), KFIELD((void *)pages.source_task, TASK_TGID)) == 0) {
        fresh.owner = owner;
        fresh.user = pages.source_user;
        fresh.mm = pages.source_mm;
        iommufd_locked_vm(&fresh);
    }  /* else owner 0: counted as missing at the return */
    struct iommufd_acct_inflight *a = iommufd_acct_by_tid.lookup(&tid);
    if (a) {
        if (a->active)
            count_lost(LOSS_IOMMUFD_ACCT_BY_TID_STALE); /* the previous call's return probe never ran */
        *a = fresh;
    } else {
        iommufd_acct_by_tid.update(&tid, &fresh); /* a failure is counted, as missing, by the return probe */
    }
    return 0;
}

int on_iommufd_update_pinned_return(struct pt_regs *ctx)
{
    u32 tid = current_tid();
    struct iommufd_acct_inflight *a = iommufd_acct_by_tid.lookup(&tid);
    if (!a || !a->active || !a->owner) {
        if (a)
            a->active = 0;
        count_lost(LOSS_IOMMUFD_ACCT_BY_TID_MISSING); /* a charge or uncharge unseen, or its owner unread */
        return 0;
    }
    a->active = 0;
    int ret = (int)PT_REGS_RC(ctx);
    struct iommufd_proc *p = iommufd_proc_of(a->owner);
    if (ret != 0) {
        if (a->inc) {
            iommufd_add(IOMMUFD_CHARGE_FAILURES, 1);
            if (p)
                __sync_fetch_and_add(&p->charge_failures, 1);
        }
        return 0;
    }
    struct iommufd_acct_inflight after = {.user = a->user, .mm = a->mm};
    iommufd_locked_vm(&after);
    u32 mode = ACCOUNT_NONE;
    if (after.user_locked != a->user_locked)
        mode = ACCOUNT_USER;
    else if (after.mm_locked != a->mm_locked)
        mode = ACCOUNT_MM;
    iommufd_add(IOMMUFD_PIN_BASE + 2 * mode + (a->inc ? 0 : 1), a->npages);
    if (p) {
        s64 n = a->inc ? (s64)a->npages : -(s64)a->npages;
        __sync_fetch_and_add(&p->pinned_pages, n);
        if (mode == ACCOUNT_NONE)
            __sync_fetch_and_add(&p->exempt_pages, n);
        else
            __sync_fetch_and_add(&p->charged_pages, n);
        p->account = mode + 1;
    }
    return 0;
}

/* iommufd_ioas_change_process(struct iommufd_ucmd *ucmd) (ioas.c, 6.13+):
 * IOMMU_IOAS_CHANGE_PROCESS gives every IOMMU_IOAS_MAP_FILE mapping of the
 * context to the calling process (a VMM's live update: exec, or a new process
 * handed the iommufd).  The pins follow through the accounting hook (each
 * charge is the pages' owner's); at a successful return the previous owner's
 * mapped bytes become the caller's.  The previous owner is the context's, kept
 * by every map (iommufd_ctx_owner): in account mode NONE the kernel charges and
 * uncharges nothing in this call (need_charge_update), so no accounting call
 * names it.  struct iommufd_ucmd (iommufd_private.h, private) begins with its
 * struct iommufd_ctx * (6.2 .. 7.2 as read in 6.12's and 7.2's source). */
struct iommufd_change {
    u64 ictx;
};

BPF_HASH(iommufd_change_by_tid, u32, struct iommufd_change, 1024);

int on_iommufd_change_process(struct pt_regs *ctx)
{
    u32 tid = current_tid();
    struct iommufd_change fresh = {};
    if (bpf_probe_read_kernel(&fresh.ictx, sizeof(fresh.ictx), (void *)PT_REGS_PARM1(ctx)) != 0)
        fresh.ictx = 0;  /* counted at the return, as missing */
    if (iommufd_change_by_tid.lookup(&tid))
        count_lost(LOSS_IOMMUFD_CHANGE_BY_TID_STALE);
    if (iommufd_change_by_tid.update(&tid, &fresh) != 0)
        count_lost(LOSS_IOMMUFD_CHANGE_BY_TID_FULL);
    return 0;
}

int on_iommufd_change_process_return(struct pt_regs *ctx)
{
    u32 tid = current_tid();
    struct iommufd_change *c = iommufd_change_by_tid.lookup(&tid);
    if (!c) {
        count_lost(LOSS_IOMMUFD_CHANGE_BY_TID_MISSING);
        return 0;
    }
    u64 ictx = c->ictx;
    iommufd_change_by_tid.delete(&tid);
    if ((int)PT_REGS_RC(ctx) != 0)
        return 0;
    iommufd_add(IOMMUFD_CHANGE_PROCESS, 1);
    u32 me = bpf_get_current_pid_tgid() >> 32;
    u32 *owner = ictx ? iommufd_ctx_owner.lookup(&ictx) : 0;
    if (!owner) {
        count_lost(LOSS_IOMMUFD_CTX_OWNER_MISSING); /* mapped before vfiomond started, or evicted */
        if (ictx)
            iommufd_ctx_owner.update(&ictx, &me);
        return 0;
    }
    u32 from = *owner;
    *owner = me;
    if (from == me)
        return 0;  /* the same process after exec */
    struct iommufd_proc *old = iommufd_proc_acct.lookup(&from);
    struct iommufd_proc *now = iommufd_proc_entry();
    if (!old || !now)
        return 0;
    s64 bytes = old->mapped_bytes;
    __sync_fetch_and_add(&old->mapped_bytes, -bytes);
    __sync_fetch_and_add(&now->mapped_bytes, bytes);
    return 0;
}

/* A write fault in a process holding iommufd pins (write_fault_in, common.h;
 * pinned_pages comes from the pin accounting hook), sent on this area's ring
 * only when it falls inside one of the process's IOAS mappings (pin_spans). */
int on_iommufd_write_fault(struct pt_regs *ctx)
{
    u32 pid = bpf_get_current_pid_tgid() >> 32;
    struct iommufd_proc *a = iommufd_proc_acct.lookup(&pid);
    if (!a || a->pinned_pages <= 0)
        return 0;
    iommufd_add(IOMMUFD_WRITE_FAULTS, 1);
    struct vm_fault *vmf = (struct vm_fault *)PT_REGS_PARM1(ctx);
    u64 address = fault_address(vmf);
    struct pin_span *span = pin_span_of(pid, address, PIN_BACKEND_IOMMUFD);
    if (!span) {
        iommufd_add(IOMMUFD_WRITE_FAULTS_OUTSIDE, 1);
        return 0;
    }
    struct pin_event ev = {};
    write_fault_in(vmf, address, span, &ev);
    iommufd_emit(&ev);
    return 0;
}
