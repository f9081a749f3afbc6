"""Pin integrity: is the page the IOMMU was given still the page the process maps?

Each DMA mapping keeps the pinned PFN of at most ``samples + 1`` pages (its
sample points); verification compares them with /proc/PID/pagemap.  The live
mappings of both backends are kept in the kernel (bpf/common.h ``pin_maps``,
read through vfiomond/pintable.py): made when a mapping starts pinning, filled
from the pinned runs (type1: ``vfio_pin_pages_remote`` from ``*pfn_base``,
5.10+; iommufd: the runs an IOMMU_IOAS_MAP hands to ``iommu_map``, 6.2+),
deleted where the kernel ends the mapping, before it unpins.  Each pass makes
the tracker's mappings the table's, so no map or unmap rate can make the daemon
lose them.  A present page whose PFN differs from the pinned one is a pin
mismatch: the device DMAs to a page the process no longer sees (seeds/003: the
THP refcount redesign 1f25fe20a76a, v4.5, fixed by 6d0a07edd17c; later COW after
fork, 09854ba94c6a 5.9, and read-only long-term pins of private mappings before
6.2's "reliable R/O long-term pinning": type1 on 6.1 pins the zero page for a
read-only MAP_DMA of untouched memory).

Divergence is also caught where it happens: bpf/common.h sends the write faults
on write-protected pages (``do_wp_page``) of processes that hold pins when they
fall inside a live DMA mapping, named by the kernel (``pin_spans``), with the
PFN their PTE held; here a fault whose page the kernel then replaced (COW: the
zero page, a page shared after fork) is a divergence at that moment, even if
the mapping ends before the next pass.

A verification must be about a live mapping: the kernel unpins before the daemon
can know, and by then the process may have mapped other memory at the same
address.  So a difference counts only if the mapping's entry is still in the
kernel's table, with the same seq, after the read.

Memory and work per mapping are bounded by the sample count, never by the
mapping's size; a pass costs O(live mappings); the kernel's table is bounded
(full: counted as lost).
"""

import logging
import mmap
import os
import struct
from typing import Callable, Dict, Iterable, List, NamedTuple, Optional, Set, Tuple

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

from vfiomond.devices import link_name
from vfiomond.processes import vfio_files

log = logging.getLogger("vfiomond")

PAGE = mmap.PAGESIZE  # the running system's (the BPF side uses the kernel's PAGE_SIZE)

EV_MAP_END, EV_MEMLOCK, EV_WRITE_FAULT = 2, 5, 6  # bpf/common.h
# struct pin_event in bpf/common.h: type, pid, ret, pad, vaddr, iova, size, npage, pfn, locked, limit, space,
# map_vaddr, seq
EVENT = struct.Struct("<IIiIQQQQQQQQQQ")


class PinEvent(NamedTuple):
    type: int
    pid: int
    ret: int
    vaddr: int  # EV_MAP_END: the mapping's buffer; EV_WRITE_FAULT: the faulting page
    iova: int  # the mapping's
    size: int  # the mapping's, bytes
    npage: int  # EV_MAP_END: sample pages pinned at the zero page
    pfn: int  # EV_WRITE_FAULT: the PTE the fault found, raw
    locked: int = 0  # EV_MEMLOCK: the mm's locked_vm, pages; EV_MAP_END: sample pages pinned
    limit: int = 0  # EV_MEMLOCK: RLIMIT_MEMLOCK soft limit, bytes
    space: int = 0  # the IOVA space: kernel address of the type1 container or the iommufd IOAS
    map_vaddr: int = 0  # EV_WRITE_FAULT: the mapping's buffer
    seq: int = 0  # the mapping's seq in pin_maps


def parse_event(raw: bytes) -> PinEvent:
    """One pin_events record; ValueError (one line) for a record shorter than struct
    pin_event, where struct.error said only what unpack_from wanted.  Bytes past it
    are left alone."""
    if len(raw) < EVENT.size:
        raise ValueError("pin event record of %d bytes, struct pin_event has %d" % (len(raw), EVENT.size))
    t, pid, ret, _pad, vaddr, iova, size, npage, pfn, locked, limit, space, map_vaddr, seq = EVENT.unpack_from(raw)
    return PinEvent(t, pid, ret, vaddr, iova, size, npage, pfn, locked, limit, space, map_vaddr, seq)


def sample_slots(size: int, samples: int) -> List[Optional[int]]:
    """Offset of each of a mapping's ``samples + 1`` sample slots (None: past its end):
    slot k < samples at k * stride, slot ``samples`` at the last page.

    The slots of bpf/common.h (sample_stride, pin_map_fill).
    """
    if size < PAGE:
        return [None] * (samples + 1)
    stride = max(PAGE, (size // (samples - 1)) & ~(PAGE - 1))
    return [k * stride if k * stride < size else None for k in range(samples)] + [size - PAGE]


def sample_offsets(size: int, samples: int) -> List[int]:
    """Offsets of a mapping's sample pages, sorted (sample_slots without repeats)."""
    return sorted({off for off in sample_slots(size, samples) if off is not None})


class KernelMapping(NamedTuple):
    """A mapping as bpf/common.h's pin_maps holds it."""

    space: int
    iova: int
    seq: int
    pid: int
    vaddr: int
    size: int
    pinned: Dict[int, int]  # sample offset -> pinned PFN


class Mapping:
    __slots__ = ("pid", "backend", "space", "vaddr", "iova", "size", "seq", "pinned", "mismatched", "replaced",
                 "alerted")

    def __init__(self, backend: str, space: int, iova: int, seq: int, pid: int, vaddr: int, size: int,
                 pinned: Optional[Dict[int, int]] = None):
        self.backend, self.space, self.iova, self.seq = backend, space, iova, seq
        self.pid, self.vaddr, self.size = pid, vaddr, size
        self.pinned: Dict[int, int] = dict(pinned or {})  # sample offset -> pinned PFN
        self.mismatched: Set[int] = set()  # sample offsets currently diverged
        self.replaced: Set[int] = set()  # offsets of pages a write fault replaced (any page, sampled or not)
        self.alerted = False  # one pin_mismatch alert per mapping

    @property
    def key(self) -> "MapKey":
        return (self.backend, self.space, self.iova)


class Mismatch(NamedTuple):
    pid: int
    vaddr: int
    iova: int
    pinned_pfn: int
    current_pfn: Optional[int]  # None: not known (the process unmapped the page, or is gone)
    mapping: Optional[Mapping] = None


class WriteFault(NamedTuple):
    """A write fault inside a live mapping, waiting to be told kept or replaced."""

    mapping: Mapping
    vaddr: int
    pfn: int  # what the PTE held at the fault (0: unknown)
    passes: int = 0  # verification passes it has waited


# Outcomes of the write faults bpf/common.h reports (vfiomond_pin_write_faults_total):
#   diverged: inside a live mapping, and the kernel gave the process another page
#   kept: inside a live mapping, the page stayed (reuse, a shared mapping's write notify)
#   unknown: inside a live mapping, but the page could not be read again (process gone, page unmapped)
#   untracked: outside every live DMA mapping (counted by the kernel, not sent)
WRITE_FAULT_OUTCOMES = ("diverged", "kept", "unknown", "untracked")
# Passes a write fault whose page still shows the old PFN waits before it counts as kept:
# the daemon can read the pagemap before the fault has finished.
WRITE_FAULT_PASSES = 1


PfnReader = Callable[[int, Iterable[int]], Dict[int, Optional[int]]]
MapKey = Tuple[str, int, int]  # (backend, IOVA space, IOVA)
# Whether a mapping was still live when the read about it ended (PinWatch: its
# pin_maps entry is there, with the same seq).
Live = Callable[[Mapping], bool]


class PinTracker:
    """The mappings pin verification follows, by (backend, space, IOVA) and by
    process: each pass makes them the kernel's (``sync``); write faults may add
    one the pass has not seen yet (``adopt``)."""

    def __init__(self, samples: int, zero_pfn: Optional[int] = None,
                 zero_page: Optional[Callable[[int], Optional[bool]]] = None):
        """``zero_pfn``: the 4 KiB zero page's PFN; ``zero_page(pfn)``: whether a PFN
        is a zero page of any size (pagemap.is_zero_page: kpageflags ZERO_PAGE, set
        for the huge zero page's pages too), None when unknown."""
        self.samples = samples
        self.zero_pfn = zero_pfn
        self._zero_page = zero_page
        self.by_key: Dict[MapKey, Mapping] = {}
        self.by_pid: Dict[int, Dict[MapKey, Mapping]] = {}
        self.verifications = 0
        self.mismatches = 0
        self.deferred = 0  # sampled pages whose comparison was not about a provably live mapping
        self.untracked = {"backend_off": 0}  # mappings dropped from verification
        self.write_faults: Dict[Tuple[str, str], int] = {}  # (backend, WRITE_FAULT_OUTCOMES) -> faults
        self.outside: Dict[str, int] = {}  # backend -> write faults the kernel found outside every mapping

    def is_zero(self, pfn: Optional[int]) -> bool:
        """Is ``pfn`` the 4 KiB zero page or a page of THP's huge zero page?"""
        if pfn is None:
            return False
        if self.zero_pfn is not None and pfn == self.zero_pfn:
            return True
        return bool(self._zero_page and self._zero_page(pfn))

    def adopt(self, m: Mapping) -> None:
        """Track ``m`` (in place of what was at its key)."""
        self._remove(m.key)
        self.by_key[m.key] = m
        self.by_pid.setdefault(m.pid, {})[m.key] = m

    def _remove(self, key: MapKey) -> None:
        m = self.by_key.pop(key, None)
        if m is None:
            return
        mine = self.by_pid.get(m.pid)
        if mine is not None:
            mine.pop(key, None)
            if not mine:
                del self.by_pid[m.pid]

    def sync(self, backend: str, entries: Iterable[KernelMapping]) -> None:
        """Make ``backend``'s mappings those of the kernel's table: new ones (or a new
        seq at a key) come in, with their samples; those gone from it leave.  What
        the tracker learned of a mapping (its alert, diverged pages) stays while its
        seq does.  O(entries + tracked)."""
        seen: Set[MapKey] = set()
        for e in entries:
            key = (backend, e.space, e.iova)
            seen.add(key)
            old = self.by_key.get(key)
            if old is not None and old.seq == e.seq:
                if not old.pinned:  # first known from a write fault's record, which has no samples
                    old.pinned = dict(e.pinned)
                continue
            self.adopt(Mapping(backend, e.space, e.iova, e.seq, e.pid, e.vaddr, e.size, e.pinned))
        for key in [k for k in self.by_key if k[0] == backend and k not in seen]:
            self._remove(key)

    def drop_backend(self, backend: str) -> int:
        """Stop tracking every mapping of a backend (its probes were disabled)."""
        gone = [k for k in self.by_key if k[0] == backend]
        for key in gone:
            self._remove(key)
        self.untracked["backend_off"] += len(gone)
        return len(gone)

    # --------------------------------------------------------------- queries
    def mappings(self, pid: Optional[int] = None) -> List[Mapping]:
        if pid is None:
            return list(self.by_key.values())
        return list(self.by_pid.get(pid, {}).values())

    def get(self, backend: str, space: int, iova: int) -> Optional[Mapping]:
        return self.by_key.get((backend, space, iova))

    def pids(self) -> Set[int]:
        return set(self.by_pid)

    def drop_process(self, pid: int) -> None:
        for key in list(self.by_pid.get(pid, {})):
            self._remove(key)

    def count_write_fault(self, backend: str, outcome: str) -> None:
        key = (backend, outcome)
        self.write_faults[key] = self.write_faults.get(key, 0) + 1

    def verify(self, mappings: Iterable[Mapping], read: PfnReader,
               live: Live = lambda m: True) -> List[Mismatch]:
        """Compare pinned and current PFNs; returns the samples newly found diverged.

        A sample whose page is not present now (unmapped by the process) is not a
        mismatch: there is no page to compare.  A difference counts only if
        ``live(mapping)``, asked after the read, says the mapping was still live:
        else the read may be of memory the process mapped after the kernel unpinned
        (the mapping is then gone, or it is compared again at the next pass).
        ``read`` raises OSError when the process is gone.  A mapping of a file's
        pages (vaddr 0: IOMMU_IOAS_MAP_FILE) has no process page to compare: skipped.
        """
        new = []
        by_pid: Dict[int, List[Mapping]] = {}
        for m in mappings:
            if m.vaddr:  # 0: a file's pages (IOMMU_IOAS_MAP_FILE), in no process's address space
                by_pid.setdefault(m.pid, []).append(m)
        for pid, ms in by_pid.items():
            current = read(pid, [m.vaddr + off for m in ms for off in m.pinned])
            for m in ms:
                proven: Optional[bool] = None
                for off, pinned in m.pinned.items():
                    now = current.get(m.vaddr + off)
                    self.verifications += 1
                    if now is None or now == pinned:
                        m.mismatched.discard(off)
                        continue
                    if off in m.mismatched:
                        continue
                    if proven is None:
                        proven = live(m)
                    if not proven:
                        self.deferred += 1
                        continue
                    m.mismatched.add(off)
                    self.mismatches += 1
                    new.append(Mismatch(pid, m.vaddr + off, m.iova + off, pinned, now, m))
        return new

    def samples_tracked(self) -> int:
        return sum(len(m.pinned) for m in self.by_key.values())

    def mismatched_pages(self) -> Dict[int, int]:
        return {pid: sum(len(m.mismatched) for m in ms.values()) for pid, ms in self.by_pid.items()}

    def replaced_pages(self) -> Dict[int, int]:
        return {pid: sum(len(m.replaced) for m in ms.values()) for pid, ms in self.by_pid.items()}


def comm(pid: int) -> str:
    try:
        # errors="replace": a process names itself with any bytes (PR_SET_NAME), and a
        # UnicodeDecodeError here failed the scrape and the alert.
        with open("/proc/%d/comm" % pid, errors="replace") as f:
            return f.read().strip()
    except OSError:
        return ""


CDEV_DIR = "/dev/vfio/devices/"


def vfio_devices(pid: int, sysfs: str = "/sys", proc: str = "/proc") -> Optional[List[str]]:
    """PCI addresses of the devices process ``pid`` has open: those of its IOMMU
    groups (/dev/vfio/N, type1) and its VFIO cdevs (/dev/vfio/devices/vfioN,
    iommufd; /sys/class/vfio-dev/vfioN/device, 6.6+); None when the process is gone."""
    files = vfio_files(pid, proc)
    if files is None:
        return None
    devices = set()
    for f in files:
        name = f[len("/dev/vfio/"):]
        if name.isdigit():
            try:
                devices.update(os.listdir("%s/kernel/iommu_groups/%s/devices" % (sysfs, name)))
            except OSError:
                pass
        elif f.startswith(CDEV_DIR):
            devices.add(link_name("%s/class/vfio-dev/%s/device" % (sysfs, f[len(CDEV_DIR):])))
    devices.discard("")  # a cdev whose device link is gone
    return sorted(devices)


def families(tracker: PinTracker, backends: Iterable[str] = ()) -> Iterable:
    """The pin verification families; write-fault outcomes for ``backends`` (and any seen)."""
    yield GaugeMetricFamily("vfiomond_pin_samples", "Pinned pages tracked for verification.", value=tracker.samples_tracked())
    yield GaugeMetricFamily("vfiomond_pin_mappings", "DMA mappings tracked for pin verification.",
                            value=len(tracker.by_key))
    c = CounterMetricFamily("vfiomond_pin_verifications_total", "Sampled pinned pages compared with the process mapping.")
    c.add_metric([], tracker.verifications)
    yield c
    c = CounterMetricFamily(
        "vfiomond_pin_verifications_deferred_total",
        "Sampled pinned pages whose difference was not counted: their mapping was no longer provably live when "
        "the read ended (compared again at the next pass, if still mapped).",
    )
    c.add_metric([], tracker.deferred)
    yield c
    c = CounterMetricFamily(
        "vfiomond_pin_mappings_untracked_total",
        "DMA mappings dropped from pin verification because a probe their backend needs was disabled "
        "(backend_off).",
        labels=["reason"],
    )
    for reason, n in sorted(tracker.untracked.items()):
        c.add_metric([reason], n)
    yield c
    c = CounterMetricFamily(
        "vfiomond_pin_mismatches_total",
        "Sampled pinned pages found no longer mapped by the process at their address (DMA divergence).",
    )
    c.add_metric([], tracker.mismatches)
    yield c
    g = GaugeMetricFamily(
        "vfiomond_pin_mismatched_pages", "Sampled pinned pages currently diverged, per VFIO process.", labels=["pid", "comm"]
    )
    for pid, n in sorted(tracker.mismatched_pages().items()):
        g.add_metric([str(pid), comm(pid)], n)
    yield g
    c = CounterMetricFamily(
        "vfiomond_pin_write_faults_total",
        "Write faults on write-protected pages of processes holding pins, by what they did: diverged (inside a live "
        "DMA mapping, the kernel gave the process another page), kept (the page stayed), unknown (the page could "
        "not be read again), untracked (outside the DMA mappings vfiomond tracks).",
        labels=["backend", "outcome"],
    )
    for backend in sorted(set(backends) | {b for b, _ in tracker.write_faults}):
        for outcome in WRITE_FAULT_OUTCOMES:
            n = tracker.write_faults.get((backend, outcome), 0)
            if outcome == "untracked":
                n += tracker.outside.get(backend, 0)
            c.add_metric([backend, outcome], n)
    yield c
    g = GaugeMetricFamily(
        "vfiomond_pin_replaced_pages",
        "Pages of live DMA mappings that a write fault replaced (any page, sampled or not), per VFIO process.",
        labels=["pid", "comm"],
    )
    for pid, n in sorted(tracker.replaced_pages().items()):
        g.add_metric([str(pid), comm(pid)], n)
    yield g


class PinWatch:
    """Follows the kernel's tables, verifies on demand, handles the backends'
    records (write faults, zero-page pins), raises alerts.

    The main loop calls ``on_event`` (ring-buffer callbacks) and ``verify_all``;
    the HTTP thread calls ``families``: one lock keeps them apart.

    ``kernel``: backend -> pintable.PinTable, the kernel's table of its live
    mappings; each pass makes the tracker's mappings those of the tables, and a
    difference counts only if the mapping's entry is unchanged after the read.
    ``backends``: the DMA backends verified (all by default).  ``pte_pfn``: the
    PFN of a raw PTE (pagemap.pte_pfn_decoder); without it the PFN a write fault
    found is unknown.
    """

    def __init__(self, tracker: PinTracker, sink, read: PfnReader, devices=vfio_devices,
                 backends: Iterable[str] = ("type1", "iommufd"), pte_pfn: Optional[Callable[[int], int]] = None,
                 kernel: Optional[Dict[str, object]] = None):
        import threading

        self.tracker = tracker
        self.sink = sink
        self._read = read
        self._devices = devices
        self.backends = set(backends)
        self._lock = threading.Lock()
        self._pending: List[WriteFault] = []  # write faults whose page had not changed yet when read
        self._pte_pfn = pte_pfn
        self._kernel = dict(kernel or {})

    def on_event(self, ev: PinEvent, backend: str) -> None:
        with self._lock:
            if backend not in self.backends:
                return
            if ev.type == EV_WRITE_FAULT:
                self._on_write_fault(ev, self._named_mapping(ev, backend))
            elif ev.type == EV_MAP_END:
                self._zero_pin_alert(ev.pid, ev.vaddr, ev.iova, ev.size, zero=ev.npage, samples=ev.locked)

    def _named_mapping(self, ev: PinEvent, backend: str) -> Mapping:
        """The tracked mapping a record names (the kernel named it while it was live);
        one the last pass did not see yet is tracked from now on (the next pass
        gives it its samples, or drops it if it is gone)."""
        m = self.tracker.get(backend, ev.space, ev.iova)
        if m is None or m.seq != ev.seq:
            m = Mapping(backend, ev.space, ev.iova, ev.seq, ev.pid, ev.map_vaddr, ev.size)
            self.tracker.adopt(m)
        return m

    def set_backends(self, backends: Iterable[str]) -> None:
        """A reload changed which backends have every probe verification needs:
        mappings of a backend turned off are dropped; one turned on starts from
        the kernel's table at the next pass (its entries made from then on)."""
        with self._lock:
            new = set(backends)
            for backend in sorted(self.backends - new):
                n = self.tracker.drop_backend(backend)
                log.warning("pin verification of %s mappings stopped (%d mappings dropped)", backend, n)
            for backend in sorted(new - self.backends):
                log.info("pin verification of %s mappings started: mappings made from now on are verified", backend)
            self.backends = new

    def _zero_pin_alert(self, pid: int, vaddr: int, iova: int, size: int, zero: int, samples: int) -> None:
        """A mapping pinned (partly) at a zero page, the 4 KiB one or THP's huge one
        (``zero`` of its ``samples`` sampled pages): the device reads zeros, type1
        charges nothing to locked_vm for the 4 KiB one, and the process's first
        write diverges."""
        from vfiomond.alerts import ZERO_PAGE_PIN

        name = comm(pid)
        self.sink.alert(
            ZERO_PAGE_PIN,
            "DMA mapping pinned the zero page: %s[%d] vaddr %#x (IOVA %#x, %d bytes), %d of %d sampled pages"
            % (name, pid, vaddr, iova, size, zero, samples),
            PID=pid, COMM=name, VADDR="%#x" % vaddr, IOVA="%#x" % iova, SIZE_BYTES=size,
            ZERO_SAMPLES=zero, SAMPLES=samples, DEVICES=",".join(self._devices(pid) or []),
        )

    # ------------------------------------------------------------ write faults
    def _on_write_fault(self, ev: PinEvent, m: Mapping) -> None:
        """A write fault inside the live mapping ``m`` (named by the kernel)."""
        fault = WriteFault(m, ev.vaddr, self._pte_pfn(ev.pfn) if self._pte_pfn else 0)
        if self.tracker.zero_pfn is not None and fault.pfn == self.tracker.zero_pfn:
            # A write to the zero page is always a copy: the page is replaced now.  The
            # current PFN is read only for the mapping's one alert (the read may come
            # before the fault has put the copy in place: then unknown).
            now = None if m.alerted else self._current_pfn(fault)
            self._diverged(fault, now if now != fault.pfn else None)
            return
        self._resolve(fault)

    def _current_pfn(self, fault: WriteFault) -> Optional[int]:
        """The PFN mapped at the fault's address now, if the mapping is provably still
        live after the read: else None."""
        m = fault.mapping
        try:
            now = self._read(m.pid, [fault.vaddr]).get(fault.vaddr)
        except OSError:
            return None
        return now if self._live(m) else None

    def _resolve(self, fault: WriteFault) -> None:
        """Diverged when the page at the address, read while the mapping is live,
        is not the one the PTE held; kept when it still is after a pass."""
        m = fault.mapping
        live = self.tracker.get(*m.key) is m
        now = self._current_pfn(fault) if live and fault.pfn else None
        if now is not None and now != fault.pfn:
            self._diverged(fault, now)
        elif fault.passes < WRITE_FAULT_PASSES and live and fault.pfn:
            self._pending.append(fault._replace(passes=fault.passes + 1))
        else:
            self.tracker.count_write_fault(m.backend, "kept" if now == fault.pfn and now else "unknown")

    def _resolve_pending(self) -> None:
        pending, self._pending = self._pending, []
        for fault in pending:
            self._resolve(fault)

    def _diverged(self, fault: WriteFault, now: Optional[int]) -> None:
        m = fault.mapping
        self.tracker.count_write_fault(m.backend, "diverged")
        off = fault.vaddr - m.vaddr  # page-aligned: vmf->address and the mapping's start are
        m.replaced.add(off)
        self._alert(Mismatch(m.pid, fault.vaddr, m.iova + off, fault.pfn, now, m), "write_fault")

    def _alert(self, mm: Mismatch, detected_by: str) -> None:
        """One pin_mismatch alert per mapping: its first diverged page, whoever found it."""
        m = mm.mapping
        if m is not None:
            if m.alerted:
                return
            m.alerted = True
        from vfiomond.alerts import PIN_MISMATCH

        name, devices = comm(mm.pid), ",".join(self._devices(mm.pid) or [])
        zero = self.tracker.is_zero(mm.pinned_pfn)
        current = "%#x" % mm.current_pfn if mm.current_pfn is not None else "unknown"
        how = "a write fault replaced it" if detected_by == "write_fault" else "found by a verification pass"
        self.sink.alert(
            PIN_MISMATCH,
            "DMA pin mismatch: %s[%d] vaddr %#x (IOVA %#x) was PFN %#x%s, now maps PFN %s (%s)"
            % (name, mm.pid, mm.vaddr, mm.iova, mm.pinned_pfn, " (the zero page)" if zero else "", current, how),
            PID=mm.pid, COMM=name, VADDR="%#x" % mm.vaddr, IOVA="%#x" % mm.iova,
            PINNED_PFN="%#x" % mm.pinned_pfn, CURRENT_PFN=current, ZERO_PAGE=int(zero), DEVICES=devices,
            DETECTED_BY=detected_by,
        )

    def _live(self, m: Mapping) -> bool:
        """Was ``m`` live when the read about it ended (asked after the read)?"""
        table = self._kernel.get(m.backend)
        return table is not None and table.seq(m.space, m.iova) == m.seq

    def verify_all(self, drain: Optional[Callable[[], None]] = None) -> None:
        """One verification pass.  ``drain`` delivers the records queued in the ring
        buffers (on_event, in this thread): it runs after the pass and before its
        alerts, so that a write fault that replaced a page while the pass read it is
        reported as the write fault (DETECTED_BY=write_fault) and the pass reports only
        what no write fault explained (seen in the lab: QEMU writes its ROMs right
        after mapping them, during a pass)."""
        with self._lock:
            self._sync_kernel()
            self._resolve_pending()
            found: List[Mismatch] = []
            for pid in sorted(self.tracker.pids()):
                if not self._devices(pid):
                    # Gone, or no VFIO group open any more: its DMA mappings are gone too.
                    self.tracker.drop_process(pid)
                    continue
                found += self._verify(pid, self.tracker.mappings(pid))
        if found and drain is not None:
            drain()
        with self._lock:
            for mm in found:
                self._alert(mm, "sampling")

    def _sync_kernel(self) -> None:
        """Each verified backend's mappings from the kernel's table, once per pass."""
        for backend in sorted(self.backends):
            table = self._kernel.get(backend)
            if table is None:
                continue
            self.tracker.sync(backend, table.mappings() or [])
            self.tracker.outside[backend] = table.outside()

    def _verify(self, pid: int, mappings: List[Mapping]) -> List[Mismatch]:
        try:
            return self.tracker.verify(mappings, self._read, self._live)
        except OSError:
            self.tracker.drop_process(pid)  # exited mid-read
            return []

    def families(self) -> List:
        with self._lock:
            return list(families(self.tracker, self.backends))
