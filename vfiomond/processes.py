"""VFIO users and their memory accounting, from /proc and the type1 area's per-process map.

A VFIO user is a process with /dev/vfio/vfio, /dev/vfio/N, /dev/vfio/devices/vfioN or
/dev/iommu open.  Its series exist only while it lives.
"""

import math
import mmap
import os
import re
import threading
from typing import Callable, Dict, Iterable, Iterator, List, NamedTuple, Optional

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

PAGE = mmap.PAGESIZE  # the running system's page size
_VFIO_PATHS = ("/dev/vfio/", "/dev/iommu")
_LIBVIRT_SCOPE = re.compile(r"machine-qemu\\x2d\d+\\x2d(.+?)\.scope")


CAP_IPC_LOCK = 14


def parse_status(text: str) -> Dict[str, int]:
    """VmLck and VmPin of /proc/PID/status, in bytes (0 when absent)."""
    out = {"VmLck": 0, "VmPin": 0}
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key in out:
            out[key] = int(value.split()[0]) * 1024
    return out


def has_ipc_lock(status_text: str) -> bool:
    """CAP_IPC_LOCK in CapEff of /proc/PID/status: type1 (mm_lock_acct) and iommufd
    then charge locked_vm without checking RLIMIT_MEMLOCK."""
    for line in status_text.splitlines():
        if line.startswith("CapEff:"):
            return bool(int(line.split()[1], 16) >> CAP_IPC_LOCK & 1)
    return False


def parse_memlock_limit(text: str) -> float:
    """Soft "Max locked memory" of /proc/PID/limits, bytes; +Inf when unlimited."""
    for line in text.splitlines():
        if line.startswith("Max locked memory"):
            soft = line[len("Max locked memory"):].split()[0]
            return math.inf if soft == "unlimited" else float(soft)
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
                m = re.fullmatch(r"(\d+(?:\.\d+)?)\s*([bkmgtBKMGT]?)", value.strip())
                if m:
                    return int(float(m.group(1)) * _SIZE_UNITS[(m.group(2) or "m").lower()])
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
    """pid -> the VFIO / iommufd character devices it has open, for every VFIO user."""
    out = {}
    for entry in os.listdir(proc):
        if entry.isdigit():
            files = vfio_files(int(entry), proc)
            if files:
                out[int(entry)] = files
    return out


class _PerScrape:
    """``fn()``'s result, computed once per scrape: the collector calls ``new_scrape()``
    first, and the per-process series and the device users then share one /proc scan."""

    def __init__(self, fn: Callable[[], Dict[int, List[str]]]):
        self._fn = fn
        self._lock = threading.Lock()
        self._value: Optional[Dict[int, List[str]]] = None

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


class ProcessInfo(NamedTuple):
    pid: int
    comm: str
    vm: str
    locked_vm_bytes: int
    pinned_vm_bytes: int
    memlock_limit_bytes: float
    guest_ram_bytes: Optional[int] = None  # QEMU's -m; None for other processes


def _read(path: str, mode: str = "r"):
    with open(path, mode) as f:
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
             spaces: Optional[Dict[int, int]] = None) -> Iterator:
    """Per-process gauges for live VFIO users; labels pid, comm, vm, and backend
    for what ``accts`` (backend -> pid -> ProcAcct) holds.  ``spaces``: pid -> DMA
    address spaces open (``dma_spaces``), for the memlock a VM needs."""
    labels = ["pid", "comm", "vm"]
    g = {
        name: GaugeMetricFamily("vfiomond_process_" + name, doc, labels=labels + extra)
        for name, doc, extra in (
            ("locked_vm_bytes", "locked_vm of the VFIO user (VmLck in /proc/PID/status).", []),
            ("pinned_vm_bytes", "pinned_vm of the VFIO user (VmPin in /proc/PID/status).", []),
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
    failures = CounterMetricFamily(
        "vfiomond_process_locked_vm_charge_failures_total",
        "MAP_DMA pinning refused for RLIMIT_MEMLOCK (or a failed locked_vm charge).",
        labels=labels + ["backend"],
    )
    for info in sorted(infos):
        base = [str(info.pid), info.comm, info.vm]
        g["locked_vm_bytes"].add_metric(base, info.locked_vm_bytes)
        g["pinned_vm_bytes"].add_metric(base, info.pinned_vm_bytes)
        g["memlock_limit_bytes"].add_metric(base, info.memlock_limit_bytes)
        if info.guest_ram_bytes is not None:
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
