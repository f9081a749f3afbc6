"""Pin integrity: is the page the IOMMU was given still the page the process maps?

Per DMA mapping, the BPF programs send the physically contiguous runs that hold
one of the mapping's sample points: bpf/type1.c the pins of a MAP_DMA
(``vfio_pin_pages_remote``: a run from ``*pfn_base``, 5.10+), bpf/iommufd.c the
runs an IOMMU_IOAS_MAP hands to ``iommu_map`` (6.2+).  Here each mapping keeps the pinned PFN of at most
``samples + 1`` pages; verification compares them with /proc/PID/pagemap.  A
present page whose PFN differs from the pinned one is a pin mismatch: the device
DMAs to a page the process no longer sees (seeds/003, kernel-facts.md known
issue 8).  Memory and work per mapping are bounded by the sample count, never
by the mapping's size.
"""

import os
import struct
from typing import Callable, Dict, Iterable, List, NamedTuple, Optional, Set, Tuple

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

from vfiomond.devices import link_name
from vfiomond.processes import vfio_files

PAGE = 4096

EV_MAP_BEGIN, EV_MAP_END, EV_PIN, EV_UNMAP, EV_MEMLOCK = 1, 2, 3, 4, 5
# struct pin_event in bpf/common.h: type, pid, ret, pad, vaddr, iova, size, npage, pfn, locked, limit, space
EVENT = struct.Struct("<IIiIQQQQQQQQ")


class PinEvent(NamedTuple):
    type: int
    pid: int
    ret: int
    vaddr: int
    iova: int
    size: int
    npage: int
    pfn: int
    locked: int = 0  # EV_MEMLOCK: the mm's locked_vm, pages
    limit: int = 0  # EV_MEMLOCK: RLIMIT_MEMLOCK soft limit, bytes
    space: int = 0  # the IOVA space: kernel address of the type1 container or the iommufd IOAS


def parse_event(raw: bytes) -> PinEvent:
    t, pid, ret, _pad, vaddr, iova, size, npage, pfn, locked, limit, space = EVENT.unpack_from(raw)
    return PinEvent(t, pid, ret, vaddr, iova, size, npage, pfn, locked, limit, space)


def sample_offsets(size: int, samples: int) -> List[int]:
    """Offsets of a mapping's sample pages: every ``stride`` from 0, and the last page.

    Must agree with holds_sample() in bpf/common.h (tests/unit/test_pins.py).
    """
    if size < PAGE:
        return []
    stride = max(PAGE, (size // (samples - 1)) & ~(PAGE - 1))
    return sorted(set(range(0, size, stride)) | {size - PAGE})


class Mapping:
    def __init__(self, pid: int, vaddr: int, iova: int, size: int, samples: int):
        self.pid, self.vaddr, self.iova, self.size = pid, vaddr, iova, size
        self.offsets = sample_offsets(size, samples)
        self.pinned: Dict[int, int] = {}  # sample offset -> pinned PFN
        self.mismatched: Set[int] = set()  # sample offsets currently diverged
        self.complete = False  # MAP_DMA returned 0

    def add_run(self, vaddr: int, npage: int, pfn: int) -> None:
        start, end = vaddr - self.vaddr, vaddr - self.vaddr + npage * PAGE
        for off in self.offsets:
            if start <= off < end:
                self.pinned[off] = pfn + (off - start) // PAGE

    def contains(self, vaddr: int) -> bool:
        return self.vaddr <= vaddr < self.vaddr + self.size


class Mismatch(NamedTuple):
    pid: int
    vaddr: int
    iova: int
    pinned_pfn: int
    current_pfn: int


PfnReader = Callable[[int, Iterable[int]], Dict[int, Optional[int]]]


MappingKey = Tuple[int, int, int]  # (pid, IOVA space, IOVA)


class PinTracker:
    """Mappings by (pid, IOVA space, IOVA), fed in ring-buffer order by ``on_event``
    (each backend's ring buffer keeps its own order; their IOVA spaces differ)."""

    def __init__(self, samples: int, zero_pfn: Optional[int] = None):
        self.samples = samples
        self.zero_pfn = zero_pfn
        self.mappings: Dict[MappingKey, Mapping] = {}
        self.verifications = 0
        self.mismatches = 0

    def on_event(self, ev: PinEvent) -> List[Mapping]:
        """Apply one event; returns the mappings an UNMAP removed (to verify one last time)."""
        key = (ev.pid, ev.space, ev.iova)
        if ev.type == EV_MAP_BEGIN:
            self.mappings[key] = Mapping(ev.pid, ev.vaddr, ev.iova, ev.size, self.samples)
        elif ev.type == EV_PIN:
            for (pid, space, _), m in self.mappings.items():
                if pid == ev.pid and space == ev.space and not m.complete and m.contains(ev.vaddr):
                    m.add_run(ev.vaddr, ev.npage, ev.pfn)
        elif ev.type == EV_MAP_END:
            m = self.mappings.get(key)
            if m is not None:
                if ev.ret == 0:
                    m.complete = True
                else:
                    del self.mappings[key]
        elif ev.type == EV_UNMAP:
            end = ev.iova + ev.size
            gone = [k for k, m in self.mappings.items() if k[:2] == key[:2] and ev.iova <= m.iova < end]
            return [self.mappings.pop(k) for k in gone]
        return []

    def pids(self) -> Set[int]:
        return {key[0] for key in self.mappings}

    def drop_process(self, pid: int) -> None:
        for key in [k for k in self.mappings if k[0] == pid]:
            del self.mappings[key]

    def verify(self, mappings: Iterable[Mapping], read: PfnReader) -> List[Mismatch]:
        """Compare pinned and current PFNs; returns the samples newly found diverged.

        A sample whose page is not present now (unmapped by the process) is not a
        mismatch: there is no page to compare.  ``read`` raises OSError when the
        process is gone.
        """
        new = []
        by_pid: Dict[int, List[Mapping]] = {}
        for m in mappings:
            if m.complete:
                by_pid.setdefault(m.pid, []).append(m)
        for pid, ms in by_pid.items():
            current = read(pid, [m.vaddr + off for m in ms for off in m.pinned])
            for m in ms:
                for off, pinned in m.pinned.items():
                    now = current.get(m.vaddr + off)
                    self.verifications += 1
                    if now is None or now == pinned:
                        m.mismatched.discard(off)
                        continue
                    if off not in m.mismatched:
                        m.mismatched.add(off)
                        self.mismatches += 1
                        new.append(Mismatch(pid, m.vaddr + off, m.iova + off, pinned, now))
        return new

    def zero_page_samples(self, m: Mapping) -> int:
        """Sample pages of ``m`` pinned at the shared zero page (0 when its PFN is unknown)."""
        if self.zero_pfn is None:
            return 0
        return sum(1 for pfn in m.pinned.values() if pfn == self.zero_pfn)

    def samples_tracked(self) -> int:
        return sum(len(m.pinned) for m in self.mappings.values())

    def mismatched_pages(self) -> Dict[int, int]:
        out = {pid: 0 for pid in self.pids()}
        for m in self.mappings.values():
            out[m.pid] += len(m.mismatched)
        return out


def comm(pid: int) -> str:
    try:
        with open("/proc/%d/comm" % pid) as f:
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


def families(tracker: PinTracker) -> Iterable:
    yield GaugeMetricFamily("vfiomond_pin_samples", "Pinned pages tracked for verification.", value=tracker.samples_tracked())
    c = CounterMetricFamily("vfiomond_pin_verifications_total", "Sampled pinned pages compared with the process mapping.")
    c.add_metric([], tracker.verifications)
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


class PinWatch:
    """Feeds the tracker from the ring buffer, verifies on demand, raises alerts.

    The main loop calls ``on_raw_event`` (ring-buffer callback) and
    ``verify_all``; the HTTP thread calls ``families``: one lock keeps them apart.
    """

    def __init__(self, tracker: PinTracker, sink, read: PfnReader, devices=vfio_devices):
        import threading

        self.tracker = tracker
        self.sink = sink
        self._read = read
        self._devices = devices
        self._lock = threading.Lock()

    def on_event(self, ev: PinEvent) -> None:
        with self._lock:
            removed = self.tracker.on_event(ev)
            if removed:
                self._verify(removed[0].pid, removed)
            elif ev.type == EV_MAP_END and ev.ret == 0:
                self._check_zero_pins(self.tracker.mappings.get((ev.pid, ev.space, ev.iova)))

    def _check_zero_pins(self, m: Optional[Mapping]) -> None:
        """A mapping pinned (partly) at the zero page: the device reads zeros, nothing
        is charged to locked_vm for it, and the process's first write diverges."""
        zero = self.tracker.zero_page_samples(m) if m is not None else 0
        if not zero:
            return
        from vfiomond.alerts import ZERO_PAGE_PIN

        name = comm(m.pid)
        self.sink.alert(
            ZERO_PAGE_PIN,
            "DMA mapping pinned the shared zero page: %s[%d] vaddr %#x (IOVA %#x, %d bytes), %d of %d sampled pages"
            % (name, m.pid, m.vaddr, m.iova, m.size, zero, len(m.pinned)),
            PID=m.pid, COMM=name, VADDR="%#x" % m.vaddr, IOVA="%#x" % m.iova, SIZE_BYTES=m.size,
            ZERO_SAMPLES=zero, SAMPLES=len(m.pinned), DEVICES=",".join(self._devices(m.pid) or []),
        )

    def verify_all(self) -> None:
        with self._lock:
            for pid in sorted(self.tracker.pids()):
                if not self._devices(pid):
                    # Gone, or no VFIO group open any more: its DMA mappings are gone too.
                    self.tracker.drop_process(pid)
                    continue
                self._verify(pid, [m for m in self.tracker.mappings.values() if m.pid == pid])

    def _verify(self, pid: int, mappings: List[Mapping]) -> None:
        try:
            new = self.tracker.verify(mappings, self._read)
        except OSError:
            self.tracker.drop_process(pid)  # exited mid-read
            return
        if not new:
            return
        name, devices = comm(pid), ",".join(self._devices(pid) or [])
        from vfiomond.alerts import PIN_MISMATCH

        for mm in new:
            zero = self.tracker.zero_pfn is not None and mm.pinned_pfn == self.tracker.zero_pfn
            self.sink.alert(
                PIN_MISMATCH,
                "DMA pin mismatch: %s[%d] vaddr %#x (IOVA %#x) is pinned at PFN %#x but now maps PFN %#x%s"
                % (name, pid, mm.vaddr, mm.iova, mm.pinned_pfn, mm.current_pfn, " (the pinned page is the zero page)" if zero else ""),
                PID=pid, COMM=name, VADDR="%#x" % mm.vaddr, IOVA="%#x" % mm.iova,
                PINNED_PFN="%#x" % mm.pinned_pfn, CURRENT_PFN="%#x" % mm.current_pfn,
                ZERO_PAGE=int(zero), DEVICES=devices,
            )

    def families(self) -> List:
        with self._lock:
            return list(families(self.tracker))
