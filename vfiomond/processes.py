"""VFIO users and their memory accounting, from /proc and the type1 area's per-process map.

A VFIO user is a process with /dev/vfio/vfio, /dev/vfio/N, /dev/vfio/devices/vfioN or
/dev/iommu open.  Its series exist only while it lives.
"""

import ctypes
import functools
import logging
import math
import mmap
import os
import re
import threading
import time
from typing import Callable, Dict, Iterable, Iterator, List, NamedTuple, Optional, Set

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

PAGE = mmap.PAGESIZE  # the running system's page size
_VFIO_PATHS = ("/dev/vfio/", "/dev/iommu")
_LIBVIRT_SCOPE = re.compile(r"machine-qemu\\x2d\d+\\x2d(.+?)\.scope")


CAP_IPC_LOCK = 14

log = logging.getLogger(__name__)


def parse_status(text: str) -> Dict[str, int]:
    """VmLck and VmPin of /proc/PID/status, in bytes (0 when absent); ValueError for a
    line without a number.

    The kernel prints the mm's locked_vm and pinned_vm (pages; pinned_vm an
    atomic64_t) shifted to KiB as unsigned longs (task_mem, fs/proc/task_mmu.c): an
    accounting bug that takes one below zero prints 2^64 minus a little.  Such a value
    (2^63 KiB or more, far beyond any memory) is returned as the negative it is, so
    that the metric shows the underflow instead of 16 ZiB (seen in the lab on 7.2.12:
    pinned_vm at -4 MiB after IOMMU_IOAS_CHANGE_PROCESS in account mode NONE)."""
    out = {"VmLck": 0, "VmPin": 0}
    for line in text.split("\n"):  # not splitlines(): see has_ipc_lock
        key, _, value = line.partition(":")
        if key in out:
            kib = _number(key, value, 10)
            out[key] = (kib - (1 << 64) if kib >= 1 << 63 else kib) * 1024
    return out


def _number(key: str, value: str, base: int) -> int:
    """The first word of a /proc/PID/status value; a line without one (never written by
    the kernel) is a ValueError naming the key, which read_process turns into a skip,
    not an IndexError."""
    words = value.split()
    try:
        return int(words[0], base)
    except (IndexError, ValueError):
        raise ValueError("/proc status line %s: %r is not a number" % (key, value.strip()[:40])) from None


def has_ipc_lock(status_text: str) -> bool:
    """CAP_IPC_LOCK in CapEff of /proc/PID/status: type1 (mm_lock_acct) and iommufd
    then charge locked_vm without checking RLIMIT_MEMLOCK.  ValueError for a CapEff
    line without a hex number."""
    # Lines end at "\n" only: the Name: line holds the process's comm, which the kernel
    # escapes "\n" in but not "\x1c" or "\u2028", where splitlines() also breaks; a
    # process named "\x1cCapEff: 4000" made a CapEff line of its own, read first.
    for line in status_text.split("\n"):
        if line.startswith("CapEff:"):
            return bool(_number("CapEff", line[len("CapEff:"):], 16) >> CAP_IPC_LOCK & 1)
    return False


def parse_memlock_limit(text: str) -> float:
    """Soft "Max locked memory" of /proc/PID/limits, bytes; +Inf when unlimited, NaN
    without the line; ValueError for the line without a number."""
    for line in text.split("\n"):
        if line.startswith("Max locked memory"):
            words = line[len("Max locked memory"):].split()
            # A line without a number (never written by the kernel) is a ValueError, as
            # float() gives for a bad one, not an IndexError: read_process skips it.
            if not words or not (words[0] == "unlimited" or (words[0].isascii() and words[0].isdigit())):
                raise ValueError("/proc limits line %r: no soft limit" % line[:80])
            return math.inf if words[0] == "unlimited" else float(words[0])
    return math.nan


def _qemu_options(value: str):
    """Split a QEMU option string on single commas (",," is an escaped comma)."""
    parts, current, i = [], [], 0
    while i < len(value):
        if value[i] == ",":
            if value[i + 1:i + 2] == ",":
                current.append(",")
                i += 2
                continue
            parts.append("".join(current))
            current = []
        else:
            current.append(value[i])
        i += 1
    parts.append("".join(current))
    return parts


def vm_name(cmdline: bytes, cgroup: str) -> str:
    """The guest's name for a QEMU process: ``-name guest=X`` or ``-name X`` on its
    command line, else the libvirt machine scope of its cgroup; "" otherwise."""
    args = cmdline.split(b"\0")
    for i, arg in enumerate(args[:-1]):
        if arg == b"-name":
            options = _qemu_options(args[i + 1].decode(errors="replace"))
            for option in options:
                if option.startswith("guest="):
                    return option[len("guest="):]
            return "" if "=" in options[0] else options[0]
    m = _LIBVIRT_SCOPE.search(cgroup)
    if m:
        return m.group(1).replace("\\x2d", "-")
    return ""


# QEMU's size suffixes (util/cutils.c qemu_strtosz); -m without one is MiB.
_SIZE_UNITS = {"b": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "t": 1 << 40}


def guest_ram_bytes(cmdline: bytes) -> Optional[int]:
    """Guest RAM of a QEMU process from its ``-m [size=]N[kMGT]`` (softmmu/vl.c
    parse_memory_options; libvirt writes ``-m size=4194304k``), bytes; None for a
    process without ``-m`` (not QEMU, or QEMU's machine default) or an unreadable one."""
    args = cmdline.split(b"\0")
    for i, arg in enumerate(args[:-1]):
        if arg in (b"-m", b"--m"):
            for option in _qemu_options(args[i + 1].decode(errors="replace")):
                key, eq, value = option.rpartition("=")
                if eq and key != "size":
                    continue
                # ASCII digits only, as qemu_strtosz takes; a size past 2**64 - 1 is refused
                # there (ERANGE) and here None (int(float) of it raised OverflowError).
                m = re.fullmatch(r"([0-9]+(?:\.[0-9]+)?)\s*([bkmgtBKMGT]?)", value.strip())
                if m:
                    number, unit = m.group(1), _SIZE_UNITS[(m.group(2) or "m").lower()]
                    digits = number.lstrip("0") or "0"
                    if "." in number:
                        size = float(number) * unit  # inf for a huge one
                    else:  # exact, and never int() of 4300+ digits (a ValueError)
                        size = int(digits) * unit if len(digits) <= 20 else 2 ** 64
                    return int(size) if size < 2 ** 64 else None
            return None
    return None


def dma_spaces(files: Iterable[str]) -> int:
    """DMA address spaces a VFIO user has open: type1 containers (/dev/vfio/vfio) and
    iommufd contexts (/dev/iommu).  Each charges its pins to RLIMIT_MEMLOCK on its
    own (type1: vfio_lock_acct per container; iommufd: per iopt_pages), so a VM
    pinning all its RAM in two spaces needs twice its RAM."""
    return sum(1 for f in files if f in ("/dev/vfio/vfio", "/dev/iommu"))


def vfio_files(pid: int, proc: str = "/proc") -> Optional[List[str]]:
    """Paths of the VFIO / iommufd character devices process ``pid`` has open;
    None when the process is gone."""
    fd_dir = "%s/%d/fd" % (proc, pid)
    try:
        names = os.listdir(fd_dir)
    except OSError:
        return None
    found = []
    for name in names:
        try:
            target = os.readlink(os.path.join(fd_dir, name))
        except OSError:
            continue
        if target.startswith(_VFIO_PATHS):
            found.append(target)
    return found


def open_vfio_files(proc: str = "/proc") -> Dict[int, List[str]]:
    """pid -> the VFIO / iommufd character devices it has open, for every VFIO user:
    every fd of every process is read (about 8 us a fd), so this is for a full scan
    (UserFinder.full_scan), never for each scrape."""
    out = {}
    for entry in os.listdir(proc):
        if entry.isdigit():
            files = vfio_files(int(entry), proc)
            if files:
                out[int(entry)] = files
    return out


class UserFinder:
    """The VFIO users, found by reading the open files of candidates only, so that a
    scrape costs what the host's VFIO work costs, not what its process count does.

    Candidates: the processes ``candidates()`` names (those the BPF programs saw
    open a VFIO or iommufd device, or map DMA: Program.vfio_user_candidates), and
    those a full scan of /proc found (``full_scan``: at start, for the users that
    were already running, then every few minutes, for fds passed over a socket or
    inherited across fork without any VFIO call), kept while they hold VFIO files.
    """

    def __init__(self, candidates: Callable[[], Iterable[int]], proc: str = "/proc"):
        self._candidates = candidates
        self._proc = proc
        self._scanned: Set[int] = set()
        self._lock = threading.Lock()
        self.full_scans = 0
        self.full_scan_seconds = 0.0  # the last one's
        self.found_by_scan_only = 0  # users of the last full scan that no candidate named

    def full_scan(self) -> Dict[int, List[str]]:
        start = time.monotonic()
        found = open_vfio_files(self._proc)
        try:
            unseen = set(found) - set(self._candidates())
        except Exception:  # candidates from BPF maps: no program yet, or closing
            unseen = set(found)
        with self._lock:
            self._scanned |= set(found)
            self.full_scans += 1
            self.full_scan_seconds = time.monotonic() - start
            self.found_by_scan_only = len(unseen)
        return found

    def families(self) -> Iterator:
        with self._lock:
            scans, seconds, unseen = self.full_scans, self.full_scan_seconds, self.found_by_scan_only
        yield CounterMetricFamily("vfiomond_vfio_users_full_scans", "Full scans of every process's open files for "
                                  "VFIO users (at start, then every few minutes; a scrape reads the candidates' only).",
                                  value=scans)
        yield GaugeMetricFamily("vfiomond_vfio_users_full_scan_seconds", "Time the last full scan took.", value=seconds)
        yield GaugeMetricFamily("vfiomond_vfio_users_found_by_scan_only", "VFIO users the last full scan found that "
                                "no probe had seen open a VFIO device or map DMA (fds passed over a socket, "
                                "inherited, or opened before vfiomond started).", value=unseen)

    def __call__(self) -> Dict[int, List[str]]:
        with self._lock:
            pids = set(self._scanned)
        pids.update(self._candidates())
        out = {}
        for pid in sorted(pids):
            files = vfio_files(pid, self._proc)
            if files:
                out[pid] = files
        with self._lock:
            self._scanned &= set(out)
        return out


class _PerScrape:
    """``fn()``'s result, computed once per scrape: the collector calls ``new_scrape()``
    first, and the per-process series and the device users then share one look.
    The daemon hands it its UserFinder (``use``); until then it scans /proc."""

    def __init__(self, fn: Callable[[], Dict[int, List[str]]]):
        self._fn = fn
        self._lock = threading.Lock()
        self._value: Optional[Dict[int, List[str]]] = None

    def use(self, fn: Callable[[], Dict[int, List[str]]]) -> None:
        with self._lock:
            self._fn, self._value = fn, None

    def new_scrape(self) -> None:
        with self._lock:
            self._value = None

    def __call__(self) -> Dict[int, List[str]]:
        with self._lock:
            if self._value is None:
                self._value = self._fn()
            return self._value


scraped_vfio_files = _PerScrape(open_vfio_files)


def vfio_users() -> List[int]:
    """PIDs of the VFIO users, as this scrape's /proc scan found them."""
    return sorted(scraped_vfio_files())


# kcmp(2) (kernel/kcmp.c, 3.5+, CONFIG_KCMP; in systemd's @system-service): its
# number in each architecture's system call table (the kernel's ABI; glibc has no
# wrapper).  KCMP_VM compares two tasks' mm_struct.
_KCMP_SYSCALL = {"x86_64": 312, "i386": 349, "i686": 349, "aarch64": 272, "riscv64": 272,
                 "loongarch64": 272, "ppc64le": 354, "ppc64": 354, "s390x": 343, "armv7l": 378}
KCMP_VM = 1


class MmCompare:
    """Compares processes' mm with kcmp(pid1, pid2, KCMP_VM, 0, 0): 0 when they share
    one (CLONE_VM without CLONE_THREAD: vfork, posix_spawn, a clone()d helper), else
    1 or 2, an order of the (obfuscated) mm pointers.  Needs PTRACE_MODE_READ on both
    (root, CAP_SYS_PTRACE).  ``available`` is False on an architecture without a
    known number, or once the kernel answered ENOSYS (no CONFIG_KCMP) or EPERM."""

    def __init__(self, machine: Optional[str] = None):
        self._number = _KCMP_SYSCALL.get(machine or os.uname().machine)
        self._libc = ctypes.CDLL(None, use_errno=True) if self._number else None
        self.available = self._number is not None
        self.reason = "" if self.available else "no kcmp system call number for %s" % (machine or os.uname().machine)

    def __call__(self, a: int, b: int) -> Optional[int]:
        """0, 1 or 2 as above; None when either process is gone (or kcmp fails)."""
        if not self.available:
            return None
        ret = self._libc.syscall(self._number, a, b, KCMP_VM, 0, 0)
        if ret >= 0:
            return ret
        err = ctypes.get_errno()
        if err in (38, 1):  # ENOSYS, EPERM: the same answer for every pair
            self.available = False
            self.reason = "kcmp: %s" % os.strerror(err)
        return None


def mm_owners(pids: Iterable[int], compare: Callable[[int, int], Optional[int]]) -> Dict[int, int]:
    """pid -> the lowest of ``pids`` that shares its mm (itself when none does), with
    O(n log n) comparisons: sorted by the mm order ``compare`` gives, then equal
    neighbours grouped.  A process ``compare`` cannot answer for (gone) is its own owner."""
    def order(a: int, b: int) -> int:
        c = compare(a, b)
        if c is None or c > 2:
            return (a > b) - (a < b)
        return {0: 0, 1: -1, 2: 1}[c]

    ranked = sorted(set(pids), key=functools.cmp_to_key(order))
    owners: Dict[int, int] = {}
    group: List[int] = []
    for pid in ranked:
        if group and compare(group[0], pid) != 0:
            owners.update(dict.fromkeys(group, min(group)))
            group = []
        group.append(pid)
    owners.update(dict.fromkeys(group, min(group)))
    return owners


_mm_compare: Optional[MmCompare] = None
_mm_compare_warned = False


def shared_mm_owners(pids: Iterable[int]) -> Dict[int, int]:
    """mm_owners with kcmp; each process its own owner when kcmp is unavailable
    (logged once: processes sharing an mm then each show its locked_vm)."""
    global _mm_compare, _mm_compare_warned
    if _mm_compare is None:
        _mm_compare = MmCompare()
    pids = list(pids)
    if len(pids) > 1 and _mm_compare.available:
        owners = mm_owners(pids, _mm_compare)
        if _mm_compare.available:
            return owners
    if not _mm_compare.available and not _mm_compare_warned:
        _mm_compare_warned = True
        log.warning("processes sharing an mm (CLONE_VM) are reported separately: %s", _mm_compare.reason)
    return {pid: pid for pid in pids}


class ProcessInfo(NamedTuple):
    pid: int
    comm: str
    vm: str
    locked_vm_bytes: int
    pinned_vm_bytes: int
    memlock_limit_bytes: float
    guest_ram_bytes: Optional[int] = None  # QEMU's -m; None for other processes


def _read(path: str, mode: str = "r"):
    # Text with errors="replace": comm (and the Name: line of status) and cgroup paths are
    # bytes a process chooses, not always UTF-8; a UnicodeDecodeError dropped the process.
    with open(path, mode, errors=None if "b" in mode else "replace") as f:
        return f.read()


def read_process(pid: int, proc: str = "/proc") -> Optional[ProcessInfo]:
    """None when the process vanished while being read."""
    base = "%s/%d/" % (proc, pid)
    try:
        status_text = _read(base + "status")
        status = parse_status(status_text)
        # The limit VFIO accounting applies: none for a process with CAP_IPC_LOCK.
        limit = math.inf if has_ipc_lock(status_text) else parse_memlock_limit(_read(base + "limits"))
        comm = _read(base + "comm").strip()
        cmdline = _read(base + "cmdline", "rb")
        vm = vm_name(cmdline, _read(base + "cgroup"))
    except (OSError, ValueError):
        return None
    return ProcessInfo(pid, comm, vm, status["VmLck"], status["VmPin"], limit, guest_ram_bytes(cmdline))


class ProcAcct(NamedTuple):
    """One process's entry of a backend's per-process map (proc_acct in
    bpf/type1.c, iommufd_proc_acct in bpf/iommufd.c).

    ``exempt_pages``: pinned without any locked_vm charge by design (iommufd's
    NONE mode, a mapper with CAP_IPC_LOCK).  ``account``: where the backend
    charges this process's pins ("mm": the mm's locked_vm, VmLck; "user": the
    user's locked_vm, not in /proc; "none"), "" when not seen yet.
    """

    mapped_bytes: int
    pinned_pages: int
    charged_pages: int
    charge_failures: int
    exempt_pages: int = 0
    account: str = ""
    map_seconds: float = 0.0  # time in map calls, failed ones too
    map_bytes: int = 0  # bytes of successful map calls, never decreases


def families(infos: Iterable[ProcessInfo], accts: Dict[str, Dict[int, ProcAcct]],
             spaces: Optional[Dict[int, int]] = None, mm_owner: Optional[Dict[int, int]] = None) -> Iterator:
    """Per-process gauges for live VFIO users; labels pid, comm, vm, and backend
    for what ``accts`` (backend -> pid -> ProcAcct) holds.  ``spaces``: pid -> DMA
    address spaces open (``dma_spaces``), for the memlock a VM needs.  ``mm_owner``:
    pid -> the lowest VFIO user sharing its mm (``shared_mm_owners``): what belongs
    to the mm (locked_vm, pinned_vm, the memlock a VM needs) is reported on that
    one only, so that a sum over processes counts each mm once."""
    labels = ["pid", "comm", "vm"]
    g = {
        name: GaugeMetricFamily("vfiomond_process_" + name, doc, labels=labels + extra)
        for name, doc, extra in (
            ("locked_vm_bytes", "locked_vm of the VFIO user (VmLck in /proc/PID/status).", []),
            ("pinned_vm_bytes", "pinned_vm of the VFIO user (VmPin in /proc/PID/status); negative when an "
             "accounting bug took it below zero (/proc prints that unsigned).", []),
            ("memlock_limit_bytes", "RLIMIT_MEMLOCK soft limit of the VFIO user as VFIO accounting applies it "
             "(+Inf: unlimited, or the process has CAP_IPC_LOCK).", []),
            ("dma_mapped_bytes", "Bytes the process has DMA-mapped now.", ["backend"]),
            ("charged_bytes", "Bytes the VFIO backend has charged to a locked_vm for the process now (type1 and "
             "iommufd MM mode: the mm's, VmLck; iommufd USER mode: the user's).", ["backend"]),
            ("uncharged_pinned_bytes",
             "Pinned bytes not charged to locked_vm: the accounting gap (type1: the zero page). Pins exempt by "
             "design (reserved PFNs such as peer BARs mapped for P2P, iommufd's NONE mode, CAP_IPC_LOCK) are not "
             "counted.", ["backend"]),
            ("pin_account_info", "Where the backend charges the process's pinned pages: account=\"mm\" (the mm's "
             "locked_vm, VmLck), \"user\" (the user's locked_vm, not in /proc), \"none\" (CAP_IPC_LOCK, iommufd).",
             ["backend", "account"]),
            ("memlock_required_bytes", "RLIMIT_MEMLOCK a QEMU VM needs to pin all its guest RAM (-m) in every DMA "
             "address space it has open (VFIO containers, iommufd): compare with vfiomond_process_memlock_limit_bytes. "
             "QEMU processes only; a vIOMMU guest needs less (it maps what its drivers map).", []),
        )
    }
    map_time = CounterMetricFamily(
        "vfiomond_process_dma_map_seconds", "Time the process spent in DMA map calls (type1 MAP_DMA, iommufd "
        "iopt_map_user_pages), failed ones too: how long pinning took a VM.", labels=labels + ["backend"])
    map_bytes = CounterMetricFamily(
        "vfiomond_process_dma_map_bytes", "Bytes the process DMA-mapped by successful map calls since it started "
        "(never decreases).", labels=labels + ["backend"])
    shared = GaugeMetricFamily(
        "vfiomond_process_mm_shared_info", "The process shares its mm with VFIO user mm_pid (CLONE_VM without "
        "CLONE_THREAD: vfork, posix_spawn, a clone()d helper): its locked_vm, pinned_vm and memlock need are "
        "reported on mm_pid only.", labels=labels + ["mm_pid"])
    failures = CounterMetricFamily(
        "vfiomond_process_locked_vm_charge_failures_total",
        "MAP_DMA pinning refused for RLIMIT_MEMLOCK (or a failed locked_vm charge).",
        labels=labels + ["backend"],
    )
    for info in sorted(infos):
        base = [str(info.pid), info.comm, info.vm]
        g["memlock_limit_bytes"].add_metric(base, info.memlock_limit_bytes)
        owner = (mm_owner or {}).get(info.pid, info.pid)
        if owner != info.pid:
            shared.add_metric(base + [str(owner)], 1)
        else:
            g["locked_vm_bytes"].add_metric(base, info.locked_vm_bytes)
            g["pinned_vm_bytes"].add_metric(base, info.pinned_vm_bytes)
        if info.guest_ram_bytes is not None and owner == info.pid:
            g["memlock_required_bytes"].add_metric(base, info.guest_ram_bytes * max(1, (spaces or {}).get(info.pid, 0)))
        for backend, acct in sorted(accts.items()):
            a = acct.get(info.pid, ProcAcct(0, 0, 0, 0))
            g["dma_mapped_bytes"].add_metric(base + [backend], a.mapped_bytes)
            g["charged_bytes"].add_metric(base + [backend], a.charged_pages * PAGE)
            gap = a.pinned_pages - a.charged_pages - a.exempt_pages
            g["uncharged_pinned_bytes"].add_metric(base + [backend], max(0, gap) * PAGE)
            if a.account:
                g["pin_account_info"].add_metric(base + [backend, a.account], 1)
            failures.add_metric(base + [backend], a.charge_failures)
            map_time.add_metric(base + [backend], a.map_seconds)
            map_bytes.add_metric(base + [backend], a.map_bytes)
    yield from g.values()
    yield shared
    yield failures
    yield map_time
    yield map_bytes


RLIM_INFINITY = (1 << 64) - 1


def read_users() -> List[ProcessInfo]:
    """The live VFIO users, read from /proc (a process gone meanwhile is skipped)."""
    return [info for info in map(read_process, vfio_users()) if info is not None]


def memlock_alert(sink, ev) -> None:
    """Journal alert for an EV_MEMLOCK event of bpf/type1.c."""
    from vfiomond.alerts import MEMLOCK_REFUSED

    info = read_process(ev.pid)
    comm, vm = (info.comm, info.vm) if info else ("", "")
    limit = "unlimited" if ev.limit == RLIM_INFINITY else str(ev.limit)
    sink.alert(
        MEMLOCK_REFUSED,
        "VFIO DMA mapping of %d bytes refused for %s[%d]: locked_vm %d bytes, RLIMIT_MEMLOCK %s bytes"
        % (ev.size, comm, ev.pid, ev.locked * PAGE, limit),
        PID=ev.pid, COMM=comm, VM=vm, REQUEST_BYTES=ev.size, LOCKED_BYTES=ev.locked * PAGE,
        LIMIT_BYTES=limit, ERRNO=-ev.ret, BACKEND="type1", SOURCE="probe",
    )
