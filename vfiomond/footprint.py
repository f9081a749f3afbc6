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
- The compiler's code and read-only data (libLLVM, libclang-cpp: 77-78 MiB of
  VmRSS in the lab's Debian 13 guest, 2026-12-03) is used once per compile and
  then only mapped: ``release_compiler_code`` unmaps its pages from this process.
"""

import ctypes
import gc
import logging
import mmap
import os
import re
from typing import Iterable, List, NamedTuple

log = logging.getLogger(__name__)

PR_SET_THP_DISABLE = 41  # include/uapi/linux/prctl.h, Linux 3.15+


def _libc():
    return ctypes.CDLL(None, use_errno=True)


# The shared libraries of BCC's compiler, as distributions name them: libLLVM.so.19.1,
# libLLVM-14.so.1, libclang-cpp.so.11, libclang.so.13.
COMPILER_LIBRARY = re.compile(r"^lib(?:LLVM|clang-cpp|clang)\b[-.\w]*\.so")
SMAPS = "/proc/self/smaps"


class Mapping(NamedTuple):
    start: int
    end: int
    perms: str  # "r-xp"
    path: str
    fields: dict  # smaps fields in kB: {"Rss": 50880, "Anonymous": 0, "Locked": 0, ...}


def smaps_mappings(lines: Iterable[str]) -> List[Mapping]:
    """The mappings of /proc/PID/smaps text (Linux 2.6.14+): a header line
    ``start-end perms offset dev inode [path]`` followed by ``Name: value kB`` lines."""
    out: List[Mapping] = []
    for line in lines:
        head, _, rest = line.partition(" ")
        if "-" in head and not head.endswith(":"):
            parts = rest.split(None, 4)
            lo, _, hi = head.partition("-")
            out.append(Mapping(int(lo, 16), int(hi, 16), parts[0], parts[4].strip() if len(parts) > 4 else "", {}))
        elif out and head.endswith(":"):
            value = rest.split()
            if value and value[0].isdigit():
                out[-1].fields[head[:-1]] = int(value[0])
    return out


def compiler_code(mappings: Iterable[Mapping]) -> List[Mapping]:
    """The mappings of the compiler's libraries whose pages all come from the file:
    not writable, no private (copy-on-write) page, nothing mlock'ed.  Dropping such a
    page loses nothing: a later use reads it again from the page cache."""
    return [m for m in mappings
            if COMPILER_LIBRARY.match(os.path.basename(m.path)) and "w" not in m.perms
            and m.fields.get("Anonymous", 0) == 0 and m.fields.get("Locked", 0) == 0
            and m.fields.get("Rss", 0) > 0]


def release_compiler_code(smaps: str = SMAPS) -> int:
    """madvise(MADV_DONTNEED) over the compiler's code and read-only data
    (``compiler_code``) once a compile is done; returns the KiB of VmRSS given up.
    The pages stay in the page cache, shared with any other BCC tool; where no other
    process maps them, the kernel reclaims them as unmapped page cache, before mapped
    pages; a next compile (a reload) maps them again.  0, logged, where smaps cannot be read or madvise fails."""
    try:
        with open(smaps, errors="replace") as f:
            targets = compiler_code(smaps_mappings(f))
    except OSError as e:
        log.info("compiler code stays mapped: cannot read %s: %s", smaps, e.strerror)
        return 0
    libc = _libc()
    libc.madvise.argtypes = (ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int)
    released = 0
    for m in targets:
        if libc.madvise(m.start, m.end - m.start, mmap.MADV_DONTNEED) != 0:
            log.info("compiler code stays mapped: madvise(%s) failed (errno %d)", m.path, ctypes.get_errno())
            continue
        released += m.fields["Rss"]
    return released


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
