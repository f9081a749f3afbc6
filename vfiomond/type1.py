"""Probe area "type1" (bpf/type1.c): VFIO type1 DMA map/unmap, pinning, locked_vm.

All metrics carry backend="type1" (iommufd gets its own area).  Sources:
``vfio_dma_do_map`` / ``vfio_dma_do_unmap`` (5.10 .. 6.18), ``vfio_pin_pages_remote``
return value, ``vfio_unpin_pages_remote`` npage, ``mm_lock_acct`` npage and result
(6.2, 6.1.20; 046eca5018f8) or ``__account_locked_vm`` inside ``vfio_lock_acct``
before it (drivers/vfio/vfio_iommu_type1.c).
"""

import ctypes
from typing import Dict, Iterable, Iterator, NamedTuple, Optional, Set

from prometheus_client.core import CounterMetricFamily

from vfiomond.faults import errno_name
from vfiomond.histogram import Histogram
from vfiomond.metricsutil import backend_counter, dma_families, dma_hist_cells
from vfiomond.processes import ProcAcct

SOURCE = "type1.c"
PROBES = ("dma_map", "dma_unmap", "pin_samples", "pin_pages", "zero_page_pins", "huge_zero_page_pins", "unpin_pages", "locked_vm_charge", "pin_write_faults")
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
    "TYPE1_WRITE_FAULTS": 10,
    "TYPE1_WRITE_FAULTS_OUTSIDE": 11,
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


def exempt_pages(pinned: int, charged: int, zero: int) -> int:
    """Pages type1 pins without charging by design: reserved PFNs other than the zero
    page, above all the MMIO of peer devices' BARs that a VMM maps for P2P DMA (QEMU maps
    every VFIO BAR it has mmapped).  vfio_pin_pages_remote charges no page for which
    is_invalid_reserved_pfn() holds (drivers/vfio/vfio_iommu_type1.c, 5.10 .. 6.18); the
    zero page is one too (reserved), and the one this project reports as a gap
    (873aefb376bb "vfio/type1: Unpin zero pages", 6.0, fixed the reference leak, not the
    missing charge)."""
    return max(0, pinned - charged - max(0, zero))


def read(tables) -> Type1Snapshot:
    """Read the area's maps. ``tables(name)`` returns a BCC table."""
    array = tables("type1_counters")
    counters = {name: array[ctypes.c_int(i)].value for name, i in COUNTERS.items()}
    hist = [DmaRow(op, slot, 0, calls) for op, slot, calls in dma_hist_cells(tables("dma_hist"))]
    errors = [DmaRow(k.op, 0, k.err, v.value) for k, v in tables("dma_errors").items()]
    acct = {
        k.value: ProcAcct(v.mapped_bytes, v.pinned_pages, v.charged_pages, v.charge_failures,
                          exempt_pages=exempt_pages(v.pinned_pages, v.charged_pages, v.zero_pages),
                          account="mm" if v.pinned_pages or v.charged_pages else "",
                          map_seconds=v.map_ns / 1e9, map_bytes=v.map_bytes)
        for k, v in tables("proc_acct").items()
    }
    return decode(counters, hist, errors)._replace(acct=acct)


def process_acct(snap: Type1Snapshot, attached: Set[str]) -> Optional[Dict[int, ProcAcct]]:
    """pid -> accounting, for the per-process families (None: not measured here)."""
    return snap.acct if "dma_map" in attached else None


def _counter(name: str, value: int) -> CounterMetricFamily:
    return backend_counter(name, BACKEND, value)


def families(snap: Type1Snapshot, attached: Set[str]) -> Iterator:
    c = snap.counters
    for op in ("map", "unmap"):
        if "dma_" + op in attached:
            yield from dma_families(BACKEND, op, snap.latency[op], c["TYPE1_%s_BYTES" % op.upper()], snap.errors[op])
    if "pin_pages" in attached:
        yield _counter("vfiomond_pinned_pages_total", c["TYPE1_PINNED_PAGES"])
    if "zero_page_pins" in attached:
        z = CounterMetricFamily(
            "vfiomond_zero_page_pins_total",
            "Pins of the shared zero page or THP's huge zero page (read-only DMA maps of never-touched memory, "
            "before 6.2): not the page the process sees once it writes; type1 does not charge the 4 KiB one to "
            "locked_vm.",
            labels=["backend"],
        )
        z.add_metric([BACKEND], c["TYPE1_ZERO_PAGE_PINS"])
        yield z
    if "unpin_pages" in attached:
        yield _counter("vfiomond_unpinned_pages_total", c["TYPE1_UNPINNED_PAGES"])
    if "pin_write_faults" in attached:
        yield _counter("vfiomond_write_faults_total", c["TYPE1_WRITE_FAULTS"])
    if "locked_vm_charge" in attached:
        yield _counter("vfiomond_locked_vm_charged_pages_total", c["TYPE1_CHARGED_PAGES"])
        yield _counter("vfiomond_locked_vm_uncharged_pages_total", c["TYPE1_UNCHARGED_PAGES"])
        yield _counter("vfiomond_locked_vm_charge_failures_total", c["TYPE1_CHARGE_FAILURES"])

