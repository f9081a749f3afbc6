"""Probe area "iommufd" (bpf/iommufd.c): DMA map/unmap through iommufd and its pin accounting.

Its DMA metrics carry backend="iommufd".  Sources (drivers/iommu/iommufd/, 6.2+):
``iopt_map_user_pages`` (IOMMU_IOAS_MAP, and MAP_DMA of the VFIO compat container),
``iopt_map_file_pages`` (IOMMU_IOAS_MAP_FILE, 6.13+: a memfd's pages, pinned with
memfd_pin_folios; from 6.19 also a dma-buf; no user address, so its pin samples
are kept but not verified), ``iommufd_ioas_change_process`` (IOMMU_IOAS_CHANGE_PROCESS,
6.13+: the MAP_FILE mappings' pins and mapped bytes move to the caller),
``iopt_unmap_iova`` / ``iopt_unmap_all`` (IOMMU_IOAS_UNMAP), and
``iommu_map`` inside ``iopt_map_user_pages`` (the runs handed to the IOMMU, for pin
verification: the kernel's table of live mappings, vfiomond/pintable.py, until
``iopt_area_unfill_domains``),
``do_update_pinned`` (6.2 .. 6.12) / ``iopt_pages_update_pinned`` (6.13+), which
charges every change of pinned pages to the pages' owner (the mapper, or the
caller of the last IOMMU_IOAS_CHANGE_PROCESS): pinned_vm and, by the pages' account
mode, to nothing (NONE: the mapper had CAP_IPC_LOCK), the user's locked_vm
(USER, the default; not VmLck) or the mm's locked_vm (MM: IOMMU_OPTION_RLIMIT_MODE
1, or the compat container).
"""

import ctypes
from typing import Dict, Iterable, Iterator, NamedTuple, Optional, Set

from prometheus_client.core import CounterMetricFamily

from vfiomond.faults import errno_name
from vfiomond.histogram import Histogram
from vfiomond.metricsutil import backend_counter, dma_families, dma_hist_cells
from vfiomond.processes import ProcAcct

SOURCE = "iommufd.c"
PROBES = ("iommufd_dma_map", "iommufd_dma_unmap", "iommufd_pin_samples", "iommufd_pin_accounting",
          "iommufd_pin_write_faults")
BACKEND = "iommufd"

# Indices of iommufd_counters, mirrored from enum iommufd_counter in bpf/iommufd.c.
COUNTERS = {
    "IOMMUFD_MAP_BYTES": 0,
    "IOMMUFD_UNMAP_BYTES": 1,
    "IOMMUFD_MAP_SUM_NS": 2,
    "IOMMUFD_UNMAP_SUM_NS": 3,
    "IOMMUFD_CHARGE_FAILURES": 4,
    "IOMMUFD_PIN_BASE": 5,
    "IOMMUFD_WRITE_FAULTS": 11,
    "IOMMUFD_WRITE_FAULTS_OUTSIDE": 12,
    "IOMMUFD_MAP_FILE_BYTES": 13,
    "IOMMUFD_CHANGE_PROCESS": 14,
}
N_COUNTERS = 15
# Account modes in the order of bpf/iommufd.c's ACCOUNT_* (IOPT_PAGES_ACCOUNT_*).
ACCOUNTS = ("none", "user", "mm")
OPS = {0: "map", 1: "unmap"}


class DmaRow(NamedTuple):
    op: int
    slot: int
    err: int
    value: int


class IommufdSnapshot(NamedTuple):
    counters: Dict[str, int]  # "map_bytes", "map_file_bytes", "unmap_bytes", "charge_failures", "write_faults",
    # "change_process"
    pinned: Dict[str, int]  # account mode -> pages pinned (charged to pinned_vm)
    unpinned: Dict[str, int]  # account mode -> pages unpinned
    latency: Dict[str, Histogram]  # "map" / "unmap"
    errors: Dict[str, Dict[str, int]]  # "map" / "unmap" -> errno name -> calls
    acct: Dict[int, ProcAcct] = {}


def decode(raw: Iterable[int], hist: Iterable[DmaRow], errors: Iterable[DmaRow]) -> IommufdSnapshot:
    """``raw``: the iommufd_counters array, N_COUNTERS values."""
    values = list(raw)
    base = COUNTERS["IOMMUFD_PIN_BASE"]
    pinned = {mode: values[base + 2 * i] for i, mode in enumerate(ACCOUNTS)}
    unpinned = {mode: values[base + 2 * i + 1] for i, mode in enumerate(ACCOUNTS)}
    slots: Dict[str, Dict[int, int]] = {"map": {}, "unmap": {}}
    errs: Dict[str, Dict[str, int]] = {"map": {}, "unmap": {}}
    for row in hist:
        op = OPS.get(row.op)
        if op:
            slots[op][row.slot] = slots[op].get(row.slot, 0) + row.value
    for row in errors:
        op = OPS.get(row.op)
        if op:
            name = errno_name(row.err)
            errs[op][name] = errs[op].get(name, 0) + row.value
    latency = {
        "map": Histogram(slots["map"], values[COUNTERS["IOMMUFD_MAP_SUM_NS"]]),
        "unmap": Histogram(slots["unmap"], values[COUNTERS["IOMMUFD_UNMAP_SUM_NS"]]),
    }
    counters = {
        "map_bytes": values[COUNTERS["IOMMUFD_MAP_BYTES"]],
        "unmap_bytes": values[COUNTERS["IOMMUFD_UNMAP_BYTES"]],
        "charge_failures": values[COUNTERS["IOMMUFD_CHARGE_FAILURES"]],
        "write_faults": values[COUNTERS["IOMMUFD_WRITE_FAULTS"]],
        "map_file_bytes": values[COUNTERS["IOMMUFD_MAP_FILE_BYTES"]],
        "change_process": values[COUNTERS["IOMMUFD_CHANGE_PROCESS"]],
    }
    return IommufdSnapshot(counters, pinned, unpinned, latency, errs)


def account_name(raw: int) -> str:
    """iommufd_proc.account: mode + 1, 0 when no pin was seen."""
    return ACCOUNTS[raw - 1] if 1 <= raw <= len(ACCOUNTS) else ""


def read(tables) -> IommufdSnapshot:
    """Read the area's maps. ``tables(name)`` returns a BCC table."""
    array = tables("iommufd_counters")
    raw = [array[ctypes.c_int(i)].value for i in range(N_COUNTERS)]
    hist = [DmaRow(op, slot, 0, calls) for op, slot, calls in dma_hist_cells(tables("iommufd_dma_hist"))]
    errors = [DmaRow(k.op, 0, k.err, v.value) for k, v in tables("iommufd_dma_errors").items()]
    acct = {
        k.value: ProcAcct(v.mapped_bytes, v.pinned_pages, v.charged_pages, v.charge_failures, v.exempt_pages,
                          account_name(v.account), v.map_ns / 1e9, v.map_bytes)
        for k, v in tables("iommufd_proc_acct").items()
    }
    return decode(raw, hist, errors)._replace(acct=acct)


def process_acct(snap: IommufdSnapshot, attached: Set[str]) -> Optional[Dict[int, ProcAcct]]:
    """pid -> accounting, for the per-process families (None: not measured here)."""
    return snap.acct if "iommufd_dma_map" in attached else None


def _counter(name: str, value: int) -> CounterMetricFamily:
    return backend_counter(name, BACKEND, value)


def families(snap: IommufdSnapshot, attached: Set[str]) -> Iterator:
    """The type1 area's families with backend="iommufd", and the pins by account mode."""
    for op in ("map", "unmap"):
        if "iommufd_dma_" + op in attached:
            yield from dma_families(BACKEND, op, snap.latency[op], snap.counters["%s_bytes" % op], snap.errors[op])
    if "iommufd_dma_map" in attached:
        yield CounterMetricFamily(
            "vfiomond_iommufd_map_file_bytes_total",
            "Bytes mapped by IOMMU_IOAS_MAP_FILE (a memfd, or a dma-buf from 6.19; 6.13+), also counted in "
            "vfiomond_dma_map_bytes_total.", value=snap.counters["map_file_bytes"])
        yield CounterMetricFamily(
            "vfiomond_iommufd_change_process_total",
            "IOMMU_IOAS_CHANGE_PROCESS calls that moved an iommufd's MAP_FILE mappings (their pins, charges and "
            "mapped bytes) to the calling process (6.13+).", value=snap.counters["change_process"])
    if "iommufd_pin_write_faults" in attached:
        yield _counter("vfiomond_write_faults_total", snap.counters["write_faults"])
    if "iommufd_pin_accounting" not in attached:
        return
    yield _counter("vfiomond_pinned_pages_total", sum(snap.pinned.values()))
    yield _counter("vfiomond_unpinned_pages_total", sum(snap.unpinned.values()))
    yield _counter("vfiomond_locked_vm_charged_pages_total", snap.pinned["user"] + snap.pinned["mm"])
    yield _counter("vfiomond_locked_vm_uncharged_pages_total", snap.unpinned["user"] + snap.unpinned["mm"])
    yield _counter("vfiomond_locked_vm_charge_failures_total", snap.counters["charge_failures"])
    for direction, values in (("pinned", snap.pinned), ("unpinned", snap.unpinned)):
        c = CounterMetricFamily(
            "vfiomond_iommufd_%s_pages_total" % direction,
            "Pages iommufd %s, by account mode: none (CAP_IPC_LOCK), user (the user's locked_vm, not VmLck), "
            "mm (the mm's locked_vm, VmLck). pinned_vm is charged in every mode." % direction,
            labels=["account"],
        )
        for mode in ACCOUNTS:
            c.add_metric([mode], values[mode])
        yield c
