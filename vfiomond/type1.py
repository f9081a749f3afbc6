"""Probe area "type1" (bpf/type1.c): VFIO type1 DMA map/unmap, pinning, locked_vm.

All metrics carry backend="type1" (iommufd gets its own area).  Sources:
``vfio_dma_do_map`` / ``vfio_dma_do_unmap`` (5.10 .. 6.18), ``vfio_pin_pages_remote``
return value, ``vfio_unpin_pages_remote`` npage, ``__account_locked_vm`` inside
``vfio_lock_acct`` (kernel-facts.md sections 4 and 5).
"""

import ctypes
from typing import Dict, Iterable, Iterator, List, NamedTuple, Set

from prometheus_client.core import CounterMetricFamily, HistogramMetricFamily

from vfiomond import processes
from vfiomond.faults import errno_name
from vfiomond.histogram import Histogram
from vfiomond.metricsutil import histogram_family_add
from vfiomond.processes import ProcAcct, ProcessInfo

SOURCE = "type1.c"
PROBES = ("dma_map", "dma_unmap", "pin_pages", "zero_page_pins", "unpin_pages", "locked_vm_charge")
BACKEND = "type1"

# Indices of type1_counters, mirrored from enum type1_counter in bpf/type1.c.
COUNTERS = {
    "TYPE1_MAP_BYTES": 0,
    "TYPE1_UNMAP_BYTES": 1,
    "TYPE1_PINNED_PAGES": 2,
    "TYPE1_UNPINNED_PAGES": 3,
    "TYPE1_CHARGED_PAGES": 4,
    "TYPE1_UNCHARGED_PAGES": 5,
    "TYPE1_CHARGE_FAILURES": 6,
    "TYPE1_MAP_SUM_NS": 7,
    "TYPE1_UNMAP_SUM_NS": 8,
    "TYPE1_ZERO_PAGE_PINS": 9,
}
OPS = {0: "map", 1: "unmap"}


class DmaRow(NamedTuple):
    op: int
    slot: int
    err: int
    value: int


class Type1Snapshot(NamedTuple):
    counters: Dict[str, int]  # COUNTERS name -> value
    latency: Dict[str, Histogram]  # "map" / "unmap" -> latency histogram
    errors: Dict[str, Dict[str, int]]  # "map" / "unmap" -> errno name -> calls
    acct: Dict[int, ProcAcct] = {}  # pid -> proc_acct entry
    users: List[ProcessInfo] = []  # live VFIO users (/proc)


def decode(counters: Dict[str, int], hist: Iterable[DmaRow], errors: Iterable[DmaRow]) -> Type1Snapshot:
    slots: Dict[str, Dict[int, int]] = {"map": {}, "unmap": {}}
    for row in hist:
        op = OPS.get(row.op)
        if op:
            slots[op][row.slot] = slots[op].get(row.slot, 0) + row.value
    errs: Dict[str, Dict[str, int]] = {"map": {}, "unmap": {}}
    for row in errors:
        op = OPS.get(row.op)
        if op:
            name = errno_name(row.err)
            errs[op][name] = errs[op].get(name, 0) + row.value
    latency = {
        "map": Histogram(slots["map"], counters.get("TYPE1_MAP_SUM_NS", 0)),
        "unmap": Histogram(slots["unmap"], counters.get("TYPE1_UNMAP_SUM_NS", 0)),
    }
    return Type1Snapshot(counters, latency, errs)


def read(tables) -> Type1Snapshot:
    """Read the area's maps. ``tables(name)`` returns a BCC table."""
    array = tables("type1_counters")
    counters = {name: array[ctypes.c_int(i)].value for name, i in COUNTERS.items()}
    rows = lambda name: [DmaRow(k.op, k.slot, k.err, v.value) for k, v in tables(name).items()]  # noqa: E731
    acct = {
        k.value: ProcAcct(v.mapped_bytes, v.pinned_pages, v.charged_pages, v.charge_failures)
        for k, v in tables("proc_acct").items()
    }
    users = [info for info in map(processes.read_process, processes.vfio_users()) if info is not None]
    return decode(counters, rows("dma_hist"), rows("dma_errors"))._replace(acct=acct, users=users)


def _counter(name: str, doc: str, value: int) -> CounterMetricFamily:
    c = CounterMetricFamily(name, doc, labels=["backend"])
    c.add_metric([BACKEND], value)
    return c


def families(snap: Type1Snapshot, attached: Set[str]) -> Iterator:
    c = snap.counters
    for op in ("map", "unmap"):
        if "dma_" + op not in attached:
            continue
        h = HistogramMetricFamily(
            "vfiomond_dma_%s_duration_seconds" % op,
            "Time in vfio_dma_do_%s (VFIO_IOMMU_%s_DMA)." % (op, op.upper()),
            labels=["backend"],
        )
        histogram_family_add(h, [BACKEND], snap.latency[op])
        yield h
        yield _counter(
            "vfiomond_dma_%s_bytes_total" % op,
            "Bytes DMA-%sped by successful VFIO_IOMMU_%s_DMA calls." % (op, op.upper()),
            c["TYPE1_%s_BYTES" % op.upper()],
        )
        e = CounterMetricFamily(
            "vfiomond_dma_%s_errors_total" % op,
            "VFIO_IOMMU_%s_DMA calls that failed, by errno." % op.upper(),
            labels=["backend", "errno"],
        )
        for err, n in sorted(snap.errors[op].items()):
            e.add_metric([BACKEND, err], n)
        yield e
    if "pin_pages" in attached:
        yield _counter("vfiomond_pinned_pages_total", "Pages pinned for DMA (GUP).", c["TYPE1_PINNED_PAGES"])
    if "zero_page_pins" in attached:
        yield _counter(
            "vfiomond_zero_page_pins_total",
            "Pins of the shared zero page (read-only DMA maps of never-touched memory): not charged to locked_vm "
            "by older kernels, and not the page the process sees once it writes.",
            c["TYPE1_ZERO_PAGE_PINS"],
        )
    if "unpin_pages" in attached:
        yield _counter("vfiomond_unpinned_pages_total", "Pages unpinned after DMA unmap.", c["TYPE1_UNPINNED_PAGES"])
    if "dma_map" in attached:
        yield from processes.families(snap.users, snap.acct, BACKEND)
    if "locked_vm_charge" in attached:
        yield _counter(
            "vfiomond_locked_vm_charged_pages_total",
            "Pages charged to locked_vm (RLIMIT_MEMLOCK) by the VFIO backend.",
            c["TYPE1_CHARGED_PAGES"],
        )
        yield _counter(
            "vfiomond_locked_vm_uncharged_pages_total",
            "Pages returned to locked_vm by the VFIO backend.",
            c["TYPE1_UNCHARGED_PAGES"],
        )
        yield _counter(
            "vfiomond_locked_vm_charge_failures_total",
            "Pinning refused for RLIMIT_MEMLOCK (vfio_pin_pages_remote -ENOMEM) or a failed __account_locked_vm "
            "charge: the MAP_DMA fails.",
            c["TYPE1_CHARGE_FAILURES"],
        )
