"""Pin integrity: is the page the IOMMU was given still the page the process maps?

Per DMA mapping, the BPF programs send the physically contiguous runs that hold
one of the mapping's sample points: bpf/type1.c the pins of a MAP_DMA
(``vfio_pin_pages_remote``: a run from ``*pfn_base``, 5.10+), bpf/iommufd.c the
runs an IOMMU_IOAS_MAP hands to ``iommu_map`` (6.2+).  Here each mapping keeps
the pinned PFN of at most ``samples + 1`` pages; verification compares them with
/proc/PID/pagemap.  A present page whose PFN differs from the pinned one is a pin
mismatch: the device DMAs to a page the process no longer sees (seeds/003: the
THP refcount redesign 1f25fe20a76a, v4.5, fixed by 6d0a07edd17c; later COW after
fork, 09854ba94c6a 5.9, and read-only long-term pins of private mappings before
6.2's "reliable R/O long-term pinning": type1 on 6.1 pins the zero page for a
read-only MAP_DMA of untouched memory).

Divergence is also caught where it happens: bpf/common.h sends every write
fault on a write-protected page (``do_wp_page``) of a process that holds pins,
with the PFN its PTE held; here a fault inside a live mapping whose page the
kernel then replaced (COW: the zero page, a page shared after fork) is a
divergence at that moment, even if the mapping ends before the next pass.

A verification must be about a live mapping: the daemon handles a mapping's
UNMAP after the kernel has unpinned it, and by then the process may have mapped
other memory at the same address.  So nothing is verified at unmap time, and a
difference found by a periodic pass counts only if every unmap of the mapping's
IOVA space that began before the read ended had been handled (the kernel counts
the unmaps begun: unmaps_begun in bpf/common.h).

Memory and work per mapping are bounded by the sample count, never by the
mapping's size; mappings are indexed by IOVA per process and space (an event
costs O(log n) lookups) and capped per process, with the overflow counted.
"""

import bisect
import logging
import os
import struct
from typing import Callable, Dict, Iterable, List, NamedTuple, Optional, Set, Tuple

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

from vfiomond.devices import link_name
from vfiomond.processes import vfio_files

log = logging.getLogger("vfiomond")

PAGE = 4096

EV_MAP_BEGIN, EV_MAP_END, EV_PIN, EV_UNMAP, EV_MEMLOCK, EV_WRITE_FAULT = 1, 2, 3, 4, 5, 6
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
    pfn: int  # EV_PIN: first PFN of the run; EV_WRITE_FAULT: the PTE the fault found, raw
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
    __slots__ = ("pid", "backend", "space", "vaddr", "iova", "size", "offsets", "pinned", "mismatched", "complete",
                 "replaced", "alerted")

    def __init__(self, pid: int, vaddr: int, iova: int, size: int, samples: int, backend: str = "type1",
                 space: int = 0):
        self.pid, self.vaddr, self.iova, self.size = pid, vaddr, iova, size
        self.backend, self.space = backend, space
        self.offsets = sample_offsets(size, samples)
        self.pinned: Dict[int, int] = {}  # sample offset -> pinned PFN
        self.mismatched: Set[int] = set()  # sample offsets currently diverged
        self.complete = False  # MAP_DMA returned 0
        self.replaced: Set[int] = set()  # offsets of pages a write fault replaced (any page, sampled or not)
        self.alerted = False  # one pin_mismatch alert per mapping

    def holds(self, vaddr: int) -> bool:
        return self.vaddr <= vaddr < self.vaddr + self.size

    def add_run(self, vaddr: int, npage: int, pfn: int) -> None:
        start, end = vaddr - self.vaddr, vaddr - self.vaddr + npage * PAGE
        lo = bisect.bisect_left(self.offsets, start)
        for off in self.offsets[lo:bisect.bisect_left(self.offsets, end)]:
            self.pinned[off] = pfn + (off - start) // PAGE


class Mismatch(NamedTuple):
    pid: int
    vaddr: int
    iova: int
    pinned_pfn: int
    current_pfn: Optional[int]  # None: not known (the process unmapped the page, or is gone)
    mapping: Optional["Mapping"] = None


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
#   untracked: not inside a mapping vfiomond tracks (the process's other memory)
WRITE_FAULT_OUTCOMES = ("diverged", "kept", "unknown", "untracked")
# Passes a write fault whose page still shows the old PFN waits before it counts as kept:
# the daemon can read the pagemap before the fault has finished.
WRITE_FAULT_PASSES = 1


PfnReader = Callable[[int, Iterable[int]], Dict[int, Optional[int]]]
SpaceKey = Tuple[int, str, int]  # (pid, backend, IOVA space)
# (backend, space) -> whether every unmap of it that began has been handled (see PinWatch).
Settled = Callable[[str, int], bool]

# Mappings tracked per process: a guest with a vIOMMU maps 4 KiB at a time, and each
# tracked mapping costs a few hundred bytes; past this, maps are counted, not tracked.
MAX_MAPPINGS_PER_PROCESS = 16384


class SpaceMappings:
    """The mappings of one process in one IOVA space, by start IOVA: lookups are
    O(log n) (bisect); an insert or removal moves the list's tail (memmove)."""

    def __init__(self) -> None:
        self.starts: List[int] = []
        self.by_start: Dict[int, Mapping] = {}
        self.vstarts: List[Tuple[int, int]] = []  # (vaddr, iova), sorted: which mapping holds an address

    # How many mappings before an address are looked at: mappings of one space overlap
    # in vaddr only when a buffer is mapped at several IOVAs.
    OVERLAP_SCAN = 8

    def __len__(self) -> int:
        return len(self.starts)

    def add(self, m: Mapping) -> Optional[Mapping]:
        """Insert ``m``; returns the mapping it replaced at the same IOVA, if any."""
        old = self.by_start.get(m.iova)
        if old is None:
            bisect.insort(self.starts, m.iova)
        else:
            self._unindex(old)
        self.by_start[m.iova] = m
        bisect.insort(self.vstarts, (m.vaddr, m.iova))
        return old

    def _unindex(self, m: Mapping) -> None:
        i = bisect.bisect_left(self.vstarts, (m.vaddr, m.iova))
        if i < len(self.vstarts) and self.vstarts[i] == (m.vaddr, m.iova):
            del self.vstarts[i]

    def holding(self, vaddr: int) -> Optional[Mapping]:
        """A mapping whose user buffer holds ``vaddr``."""
        i = bisect.bisect_right(self.vstarts, (vaddr, 1 << 64))
        for start, iova in reversed(self.vstarts[max(0, i - self.OVERLAP_SCAN):i]):
            m = self.by_start[iova]
            if m.holds(vaddr):
                return m
        return None

    def get(self, iova: int) -> Optional[Mapping]:
        return self.by_start.get(iova)

    def containing(self, iova: int) -> Optional[Mapping]:
        i = bisect.bisect_right(self.starts, iova) - 1
        if i < 0:
            return None
        m = self.by_start[self.starts[i]]
        return m if iova < m.iova + m.size else None

    def remove(self, iova: int) -> Optional[Mapping]:
        m = self.by_start.pop(iova, None)
        if m is not None:
            del self.starts[bisect.bisect_left(self.starts, iova)]
            self._unindex(m)
        return m

    def remove_range(self, lo: int, hi: int) -> List[Mapping]:
        """Remove the mappings that start in [lo, hi)."""
        i, j = bisect.bisect_left(self.starts, lo), bisect.bisect_left(self.starts, hi)
        gone = [self.by_start.pop(iova) for iova in self.starts[i:j]]
        del self.starts[i:j]
        if len(gone) == len(self.vstarts):
            self.vstarts = []
        else:
            for m in gone:
                self._unindex(m)
        return gone

    def values(self) -> Iterable[Mapping]:
        return self.by_start.values()


class PinTracker:
    """Mappings by process, backend and IOVA space, fed in ring-buffer order by
    ``on_event`` (each backend's ring buffer keeps its own order).

    Also counts, per (backend, space), the EV_UNMAP records handled: bpf/common.h's
    unmaps_begun counts the unmaps begun, and a verification is about live mappings
    only when the two agree (PinWatch).
    """

    def __init__(self, samples: int, zero_pfn: Optional[int] = None,
                 max_per_process: int = MAX_MAPPINGS_PER_PROCESS):
        self.samples = samples
        self.zero_pfn = zero_pfn
        self.max_per_process = max_per_process
        self.spaces: Dict[SpaceKey, SpaceMappings] = {}
        self.per_process: Dict[int, int] = {}  # pid -> mappings tracked
        self.unmaps_handled: Dict[Tuple[str, int], int] = {}
        self.verifications = 0
        self.mismatches = 0
        self.deferred = 0  # sampled pages whose comparison was not about a provably live mapping
        self.untracked = {"process_limit": 0, "events_lost": 0, "backend_off": 0}  # mappings not (or no longer) tracked
        self.write_faults: Dict[Tuple[str, str], int] = {}  # (backend, WRITE_FAULT_OUTCOMES) -> faults

    # ---------------------------------------------------------------- events
    def on_event(self, ev: PinEvent, backend: str = "type1") -> Optional[Mapping]:
        """Apply one event; returns the mapping a successful MAP_END completed."""
        key = (ev.pid, backend, ev.space)
        if ev.type == EV_UNMAP:
            self.unmaps_handled[(backend, ev.space)] = self.unmaps_handled.get((backend, ev.space), 0) + 1
            if ev.ret == 0:
                self._remove_range(key, ev.iova, min(ev.iova + ev.size, 1 << 64))
            return None
        if ev.type == EV_MAP_BEGIN:
            self._begin(key, ev)
            return None
        space = self.spaces.get(key)
        if space is None:
            return None
        if ev.type == EV_PIN:
            m = space.containing(ev.iova)
            if m is not None and not m.complete:
                m.add_run(ev.vaddr, ev.npage, ev.pfn)
        elif ev.type == EV_MAP_END:
            m = space.get(ev.iova)
            if m is None:
                return None
            if ev.ret == 0:
                m.complete = True
                return m
            self._forget(key, space, [space.remove(ev.iova)])
        return None

    def _begin(self, key: SpaceKey, ev: PinEvent) -> None:
        pid = ev.pid
        space = self.spaces.get(key)
        replacing = space is not None and space.get(ev.iova) is not None
        if not replacing and self.per_process.get(pid, 0) >= self.max_per_process:
            self.untracked["process_limit"] += 1
            return
        if space is None:
            space = self.spaces[key] = SpaceMappings()
        if space.add(Mapping(pid, ev.vaddr, ev.iova, ev.size, self.samples, key[1], ev.space)) is None:
            self.per_process[pid] = self.per_process.get(pid, 0) + 1

    def _remove_range(self, key: SpaceKey, lo: int, hi: int) -> None:
        # Every process that mapped in this space: type1 containers and IOAS can be shared.
        for k in self._keys_of_space(key[1], key[2]):
            space = self.spaces[k]
            self._forget(k, space, space.remove_range(lo, hi))

    def _keys_of_space(self, backend: str, space: int) -> List[SpaceKey]:
        return [k for k in self.spaces if k[1] == backend and k[2] == space]

    def _forget(self, key: SpaceKey, space: SpaceMappings, gone: List[Optional[Mapping]]) -> None:
        n = sum(1 for m in gone if m is not None)
        if n:
            left = self.per_process.get(key[0], 0) - n
            if left > 0:
                self.per_process[key[0]] = left
            else:
                self.per_process.pop(key[0], None)
        if not len(space):
            self.spaces.pop(key, None)

    def drop_space(self, backend: str, space: int, reason: str) -> int:
        """Stop tracking every mapping of an IOVA space (its events were lost)."""
        n = 0
        for k in self._keys_of_space(backend, space):
            s = self.spaces[k]
            gone = s.remove_range(0, 1 << 64)
            n += len(gone)
            self._forget(k, s, gone)
        self.untracked[reason] += n
        return n

    def drop_backend(self, backend: str) -> int:
        """Stop tracking every mapping of a backend (its probes were disabled)."""
        return sum(self.drop_space(backend, space, "backend_off")
                   for space in {k[2] for k in self.spaces if k[1] == backend})

    # --------------------------------------------------------------- queries
    def mappings(self, pid: Optional[int] = None) -> List[Mapping]:
        return [m for k, s in self.spaces.items() if pid is None or k[0] == pid for m in s.values()]

    def holding(self, pid: int, backend: str, vaddr: int) -> Optional[Mapping]:
        """A complete mapping of ``pid`` in ``backend`` whose buffer holds ``vaddr``."""
        for key, space in self.spaces.items():
            if key[0] == pid and key[1] == backend:
                m = space.holding(vaddr)
                if m is not None and m.complete:
                    return m
        return None

    def count_write_fault(self, backend: str, outcome: str) -> None:
        key = (backend, outcome)
        self.write_faults[key] = self.write_faults.get(key, 0) + 1

    def get(self, pid: int, space: int, iova: int, backend: str = "type1") -> Optional[Mapping]:
        s = self.spaces.get((pid, backend, space))
        return s.get(iova) if s is not None else None

    def pids(self) -> Set[int]:
        return set(self.per_process)

    def drop_process(self, pid: int) -> None:
        for key in [k for k in self.spaces if k[0] == pid]:
            del self.spaces[key]
        self.per_process.pop(pid, None)

    def verify(self, mappings: Iterable[Mapping], read: PfnReader,
               settled: Settled = lambda backend, space: True) -> List[Mismatch]:
        """Compare pinned and current PFNs; returns the samples newly found diverged.

        A sample whose page is not present now (unmapped by the process) is not a
        mismatch: there is no page to compare.  A difference counts only if
        ``settled(backend, space)``, asked after the read, says that no unmap of the
        mapping's IOVA space began that this tracker has not applied: else the read
        may be of memory the process mapped after the kernel unpinned (the mapping
        is then gone, or it is compared again at the next pass).  ``read`` raises
        OSError when the process is gone.
        """
        new = []
        by_pid: Dict[int, List[Mapping]] = {}
        for m in mappings:
            if m.complete:
                by_pid.setdefault(m.pid, []).append(m)
        for pid, ms in by_pid.items():
            current = read(pid, [m.vaddr + off for m in ms for off in m.pinned])
            proven: Dict[Tuple[str, int], bool] = {}
            for m in ms:
                for off, pinned in m.pinned.items():
                    now = current.get(m.vaddr + off)
                    self.verifications += 1
                    if now is None or now == pinned:
                        m.mismatched.discard(off)
                        continue
                    if off in m.mismatched:
                        continue
                    where = (m.backend, m.space)
                    if where not in proven:
                        proven[where] = settled(*where)
                    if not proven[where]:
                        self.deferred += 1
                        continue
                    m.mismatched.add(off)
                    self.mismatches += 1
                    new.append(Mismatch(pid, m.vaddr + off, m.iova + off, pinned, now, m))
        return new

    def zero_page_samples(self, m: Mapping) -> int:
        """Sample pages of ``m`` pinned at the shared zero page (0 when its PFN is unknown)."""
        if self.zero_pfn is None:
            return 0
        return sum(1 for pfn in m.pinned.values() if pfn == self.zero_pfn)

    def samples_tracked(self) -> int:
        return sum(len(m.pinned) for m in self.mappings())

    def mismatched_pages(self) -> Dict[int, int]:
        out = {pid: 0 for pid in self.pids()}
        for m in self.mappings():
            out[m.pid] += len(m.mismatched)
        return out

    def replaced_pages(self) -> Dict[int, int]:
        out = {pid: 0 for pid in self.pids()}
        for m in self.mappings():
            out[m.pid] += len(m.replaced)
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


def families(tracker: PinTracker, backends: Iterable[str] = ()) -> Iterable:
    """The pin verification families; write-fault outcomes for ``backends`` (and any seen)."""
    yield GaugeMetricFamily("vfiomond_pin_samples", "Pinned pages tracked for verification.", value=tracker.samples_tracked())
    yield GaugeMetricFamily("vfiomond_pin_mappings", "DMA mappings tracked for pin verification.",
                            value=sum(tracker.per_process.values()))
    c = CounterMetricFamily("vfiomond_pin_verifications_total", "Sampled pinned pages compared with the process mapping.")
    c.add_metric([], tracker.verifications)
    yield c
    c = CounterMetricFamily(
        "vfiomond_pin_verifications_deferred_total",
        "Sampled pinned pages whose difference was not counted: an unmap of their IOVA space had begun and was "
        "not yet applied when the read ended (compared again at the next pass, if still mapped).",
    )
    c.add_metric([], tracker.deferred)
    yield c
    c = CounterMetricFamily(
        "vfiomond_pin_mappings_untracked_total",
        "DMA mappings left out of pin verification: over the per-process limit (process_limit), dropped after "
        "unmap events of their IOVA space were lost (events_lost), or when a probe their backend needs was "
        "disabled (backend_off).",
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
            c.add_metric([backend, outcome], tracker.write_faults.get((backend, outcome), 0))
    yield c
    g = GaugeMetricFamily(
        "vfiomond_pin_replaced_pages",
        "Pages of live DMA mappings that a write fault replaced (any page, sampled or not), per VFIO process.",
        labels=["pid", "comm"],
    )
    for pid, n in sorted(tracker.replaced_pages().items()):
        g.add_metric([str(pid), comm(pid)], n)
    yield g


# (count of unmaps begun in the space, or None when the space is not in the kernel's
# table; unmaps of the backend's spaces the table had no room for).
UnmapsBegun = Callable[[str, int], Tuple[Optional[int], int]]

# Verification passes in a row that find a space's unmaps begun unchanged and ahead
# of those handled before its EV_UNMAP records count as lost (an unmap in flight
# returns within one pass; a kretprobe that missed, or a full ring buffer, never does).
LOST_AFTER_PASSES = 3


class PinWatch:
    """Feeds the tracker from the ring buffers, verifies on demand, raises alerts.

    The main loop calls ``on_event`` (ring-buffer callbacks) and ``verify_all``;
    the HTTP thread calls ``families``: one lock keeps them apart.

    ``unmaps_begun(backend, space)`` reads bpf/common.h's unmaps_begun: a
    difference found by a pass counts only when every unmap begun in the mapping's
    space had been handled when the read ended (PinTracker.verify).  ``backends``:
    the DMA backends whose events are tracked (all of PIN_BACKENDS by default).
    ``pte_pfn``: the PFN of a raw PTE (pagemap.pte_pfn_decoder); without it the
    PFN a write fault found is unknown.
    """

    def __init__(self, tracker: PinTracker, sink, read: PfnReader, devices=vfio_devices,
                 unmaps_begun: Optional[UnmapsBegun] = None, backends: Iterable[str] = ("type1", "iommufd"),
                 pte_pfn: Optional[Callable[[int], int]] = None):
        import threading

        self.tracker = tracker
        self.sink = sink
        self._read = read
        self._devices = devices
        self._unmaps_begun = unmaps_begun or (lambda backend, space: (None, 0))
        self.backends = set(backends)
        self._lock = threading.Lock()
        self._unsettled: Dict[Tuple[str, int], int] = {}  # (backend, space) -> unmaps begun, this pass
        self._pending: List[WriteFault] = []  # write faults whose page had not changed yet when read
        self._pte_pfn = pte_pfn
        self._stuck: Dict[Tuple[str, int], Tuple[int, int]] = {}  # -> (unmaps begun, passes in a row)

    def on_event(self, ev: PinEvent, backend: str = "type1") -> None:
        with self._lock:
            if backend not in self.backends and ev.type != EV_UNMAP:
                return
            if ev.type == EV_WRITE_FAULT:
                self._on_write_fault(ev, backend)
                return
            completed = self.tracker.on_event(ev, backend)
            if completed is not None:
                self._check_zero_pins(completed)

    def set_backends(self, backends: Iterable[str]) -> None:
        """A reload changed which backends have every probe verification needs:
        mappings of a backend turned off are dropped (without its unmap events they
        would look diverged once reused); one turned on starts from its next map."""
        with self._lock:
            new = set(backends)
            for backend in sorted(self.backends - new):
                n = self.tracker.drop_backend(backend)
                log.warning("pin verification of %s mappings stopped (%d mappings dropped)", backend, n)
            for backend in sorted(new - self.backends):
                log.info("pin verification of %s mappings started: mappings made from now on are verified", backend)
            self.backends = new

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

    # ------------------------------------------------------------ write faults
    def _on_write_fault(self, ev: PinEvent, backend: str) -> None:
        """A write fault of a process holding pins (handled in ring-buffer order, so
        the tracker's mappings are those live at the fault)."""
        m = self.tracker.holding(ev.pid, backend, ev.vaddr)
        if m is None:
            self.tracker.count_write_fault(backend, "untracked")
            return
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
        live after the read (no unmap of its space pending): else None."""
        m = fault.mapping
        try:
            now = self._read(m.pid, [fault.vaddr]).get(fault.vaddr)
        except OSError:
            return None
        return now if self._settled(m.backend, m.space) else None

    def _resolve(self, fault: WriteFault) -> None:
        """Diverged when the page at the address, read while the mapping is live,
        is not the one the PTE held; kept when it still is after a pass."""
        m = fault.mapping
        live = self.tracker.get(m.pid, m.space, m.iova, m.backend) is m
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
        zero = self.tracker.zero_pfn is not None and mm.pinned_pfn == self.tracker.zero_pfn
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

    def _settled(self, backend: str, space: int) -> bool:
        begun, untracked = self._unmaps_begun(backend, space)
        handled = self.tracker.unmaps_handled.get((backend, space), 0)
        if begun is None:
            if not untracked:
                return True  # no unmap of this space ever began
            begun = handled + 1  # the kernel's table had no room for it: unknown
        if begun <= handled:
            return True
        self._unsettled[(backend, space)] = begun
        return False

    def verify_all(self) -> None:
        with self._lock:
            self._unsettled = {}
            self._resolve_pending()
            for pid in sorted(self.tracker.pids()):
                if not self._devices(pid):
                    # Gone, or no VFIO group open any more: its DMA mappings are gone too.
                    self.tracker.drop_process(pid)
                    continue
                self._verify(pid, self.tracker.mappings(pid))
            self._settle_lost_unmaps()

    def _settle_lost_unmaps(self) -> None:
        """A space whose unmaps begun stayed ahead of those handled for
        LOST_AFTER_PASSES passes lost EV_UNMAP records: which of its mappings are
        gone is unknown, so none of them is verified any more (counted, logged)."""
        stuck = {}
        for where, begun in self._unsettled.items():
            last, passes = self._stuck.get(where, (begun, 0))
            passes = passes + 1 if last == begun else 1
            if passes < LOST_AFTER_PASSES:
                stuck[where] = (begun, passes)
                continue
            backend, space = where
            handled = self.tracker.unmaps_handled.get(where, 0)
            n = self.tracker.drop_space(backend, space, "events_lost")
            self.tracker.unmaps_handled[where] = begun
            log.warning("pin verification: unmap events of %s IOVA space %#x were lost (%d begun, %d handled); "
                        "its %d tracked mappings are no longer verified", backend, space, begun, handled, n)
        self._stuck = stuck

    def _verify(self, pid: int, mappings: List[Mapping]) -> None:
        try:
            new = self.tracker.verify(mappings, self._read, self._settled)
        except OSError:
            self.tracker.drop_process(pid)  # exited mid-read
            return
        for mm in new:
            self._alert(mm, "sampling")

    def families(self) -> List:
        with self._lock:
            return list(families(self.tracker, self.backends))
