"""The daemon's own resident memory on a hypervisor host.

Two effects seen in the lab (benchmarks/RESULTS.md, 2026-11-24):

- clang/LLVM's heap from the one BPF compile stays mapped in glibc after it
  is freed: ``release_free_heap`` gives it back (60 MiB of RSS); what the rest
  of the start frees is given back before READY (12 MiB of RssAnon at READY in
  the lab's Debian 13 guest, 2026-12-02).
- With transparent hugepages "always" (common on KVM hosts, for guest memory),
  khugepaged collapses the daemon's sparse heap into 2 MiB pages, a few per
  scan (every 10 s): an idle daemon's RssAnon grew from 38 to 93 MiB in a
  minute.  ``disable_transparent_hugepages`` opts the process out.
"""

import ctypes
import gc
import logging

log = logging.getLogger(__name__)

PR_SET_THP_DISABLE = 41  # include/uapi/linux/prctl.h, Linux 3.15+


def _libc():
    return ctypes.CDLL(None, use_errno=True)


def disable_transparent_hugepages() -> bool:
    """prctl(PR_SET_THP_DISABLE, 1): no transparent hugepages for this process
    (inherited by its children; /proc/PID/status then reads THP_enabled: 0).
    Returns False, logged, where the kernel refuses (a seccomp filter, a kernel
    before 3.15): the daemon runs on, with more memory."""
    libc = _libc()
    if libc.prctl(PR_SET_THP_DISABLE, 1, 0, 0, 0) != 0:
        log.info("transparent hugepages stay on for vfiomond: prctl(PR_SET_THP_DISABLE) failed (errno %d)",
                 ctypes.get_errno())
        return False
    return True


def release_free_heap() -> None:
    """Collect Python's cyclic garbage, then malloc_trim(0): return glibc's free heap
    to the kernel (after the compile, at READY, at each housekeeping).  No trim on a
    libc without it."""
    gc.collect()
    try:
        _libc().malloc_trim(0)
    except AttributeError:  # not glibc
        pass
