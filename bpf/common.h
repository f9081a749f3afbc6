/* Shared helpers for vfiomond's BPF programs (BCC).
 *
 * vfiomond/bpfload.py puts this text in front of the area programs and
 * compiles them as one BCC program.  Every map is bounded; a failed insert is
 * counted in lost_events instead of being dropped silently.
 */
#include <uapi/linux/ptrace.h>
#include <linux/sched.h>
#include <linux/mm_types.h>

/* Entries older than this are left over from a missed kretprobe. */
#define STALE_NS (10ULL * 1000 * 1000 * 1000)

BPF_ARRAY(lost_events, u64, 1);

static __always_inline void count_lost(void)
{
    int zero = 0;
    u64 *v = lost_events.lookup(&zero);
    if (v)
        __sync_fetch_and_add(v, 1);
}

/* Add n to a counter returned by map.lookup_or_try_init(&key, &zero); a NULL
 * there means the bounded map is full: count it as lost. (BCC cannot rewrite
 * map calls inside macros, so call sites spell out the lookup.) */
static __always_inline void add_or_lost(u64 *v, u64 n)
{
    if (v)
        __sync_fetch_and_add(v, n);
    else
        count_lost();
}

static __always_inline u32 current_tid(void)
{
    return (u32)bpf_get_current_pid_tgid();
}
