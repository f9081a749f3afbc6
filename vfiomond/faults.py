"""Probe area "faults" (bpf/faults.c): vfio-pci BAR faults, remap_pfn_range, PAT untrack.

Raw map rows become plain records here (pure functions, unit-tested); the
metric families are built from those records at scrape time.
"""

import errno
from typing import Dict, Iterable, Iterator, NamedTuple, Set, Tuple

from prometheus_client.core import CounterMetricFamily, HistogramMetricFamily

from vfiomond.histogram import Histogram, merge
from vfiomond.metricsutil import cstr, histogram_family_add

SOURCE = "faults.c"
PROBES = ("bar_fault", "remap_pfn_range", "pat_untrack")

# vm_fault_t bits (include/linux/mm_types.h, 5.10 .. 6.18).
VM_FAULT_OOM = 0x1
VM_FAULT_SIGBUS = 0x2
VM_FAULT_NOPAGE = 0x100
VM_FAULT_RETRY = 0x400
VM_FAULT_FALLBACK = 0x800

RESULTS = ("oom", "sigbus", "fallback", "retry", "nopage", "other")

# vfio-pci region indices (VFIO_PCI_*_REGION_INDEX, include/uapi/linux/vfio.h).
_REGION_NAMES = {0: "bar0", 1: "bar1", 2: "bar2", 3: "bar3", 4: "bar4", 5: "bar5", 6: "rom", 7: "config", 8: "vga"}
REGION_UNKNOWN = 255

CONTEXTS = {0: "other", 1: "vfio_fault"}


def fault_result(ret: int) -> str:
    """Class of a vm_fault_t returned by a VFIO fault handler.

    Errors win over NOPAGE; FALLBACK (order > 0 refused, the kernel retries a
    smaller order) is normal on 6.12+.
    """
    if ret & VM_FAULT_OOM:
        return "oom"
    if ret & VM_FAULT_SIGBUS:
        return "sigbus"
    if ret & VM_FAULT_FALLBACK:
        return "fallback"
    if ret & VM_FAULT_RETRY:
        return "retry"
    if ret & VM_FAULT_NOPAGE:
        return "nopage"
    return "other"


def region_name(index: int) -> str:
    if index == REGION_UNKNOWN:
        return "unknown"
    return _REGION_NAMES.get(index, "region%d" % index)


def device_name(raw: str) -> str:
    return raw or "unknown"


def errno_name(err: int) -> str:
    return errno.errorcode.get(err, str(err))


class BarFaultRow(NamedTuple):
    """One entry of bar_fault_hist: the faults of one latency slot and their summed time."""

    device: str
    ret: int
    region: int
    order: int
    slot: int
    count: int
    sum_ns: int


FaultLabels = Tuple[str, str, str, str]  # device, region, order, result


def decode_bar_faults(hist: Iterable[BarFaultRow]) -> Dict[FaultLabels, Histogram]:
    """Merge the kernel's per-vm_fault_t histograms into per-result-class ones."""
    out: Dict[FaultLabels, Histogram] = {}
    for row in hist:
        labels = (device_name(row.device), region_name(row.region), str(row.order), fault_result(row.ret))
        h = Histogram({row.slot: row.count}, row.sum_ns)
        out[labels] = merge(out[labels], h) if labels in out else h
    return out


class FaultSnapshot(NamedTuple):
    bar_faults: Dict[FaultLabels, Histogram]
    concurrent: Dict[str, int]  # device -> faults that overlapped another on the same vma
    remap: Dict[str, Histogram]  # context -> latency
    remap_bytes: Dict[str, int]  # context -> bytes mapped by successful calls
    remap_errors: Dict[Tuple[str, str], int]  # (context, errno name) -> calls
    untrack: Dict[str, int]  # device -> untrack calls on its BAR vmas


class RemapRow(NamedTuple):
    """One entry of remap_hist: the calls of one latency slot, their summed time and
    the bytes the successful ones mapped."""

    context: int
    slot: int
    count: int
    sum_ns: int
    bytes: int


def decode_remap(hist: Iterable[RemapRow]) -> Tuple[Dict[str, Histogram], Dict[str, int]]:
    """(context -> latency, context -> bytes mapped by successful calls)."""
    latency: Dict[str, Histogram] = {}
    mapped: Dict[str, int] = {}
    for row in hist:
        ctx = CONTEXTS.get(row.context, "other")
        h = Histogram({row.slot: row.count}, row.sum_ns)
        latency[ctx] = merge(latency[ctx], h) if ctx in latency else h
        mapped[ctx] = mapped.get(ctx, 0) + row.bytes
    return latency, mapped


def read(tables) -> FaultSnapshot:
    """Read the area's maps. ``tables(name)`` returns a BCC table."""

    fault_rows = [BarFaultRow(cstr(k.device), k.ret, k.region, k.order, k.slot, v.count, v.sum_ns)
                  for k, v in tables("bar_fault_hist").items()]

    remap, remap_bytes = decode_remap(RemapRow(k.context, k.slot, v.count, v.sum_ns, v.bytes)
                                      for k, v in tables("remap_hist").items())
    remap_errors: Dict[Tuple[str, str], int] = {}
    for k, v in tables("remap_errors").items():
        key = (CONTEXTS.get(k.context, "other"), errno_name(k.err))
        remap_errors[key] = remap_errors.get(key, 0) + v.value
    return FaultSnapshot(
        bar_faults=decode_bar_faults(fault_rows),
        concurrent={device_name(cstr(k.device)): v.value for k, v in tables("bar_faults_concurrent").items()},
        remap=remap,
        remap_bytes=remap_bytes,
        remap_errors=remap_errors,
        untrack={device_name(cstr(k.device)): v.value for k, v in tables("pat_untrack").items()},
    )


def families(snap: FaultSnapshot, attached: Set[str]) -> Iterator:
    """Metric families of the probes in ``attached``; labels documented in docs/metrics.md."""
    if "bar_fault" in attached:
        h = HistogramMetricFamily(
            "vfiomond_bar_fault_duration_seconds",
            "Time in the vfio-pci BAR mmap fault handler (vfio_pci_mmap_fault / vfio_pci_mmap_huge_fault).",
            labels=["device", "region", "order", "result"],
        )
        for labels, hist in sorted(snap.bar_faults.items()):
            histogram_family_add(h, list(labels), hist)
        yield h
        c = CounterMetricFamily(
            "vfiomond_bar_faults_concurrent_total",
            "BAR faults that entered while another fault on the same vma was in flight.",
            labels=["device"],
        )
        for device in sorted({labels[0] for labels in snap.bar_faults} | set(snap.concurrent)):
            c.add_metric([device], snap.concurrent.get(device, 0))
        yield c
    if "remap_pfn_range" in attached:
        h = HistogramMetricFamily(
            "vfiomond_remap_pfn_range_duration_seconds",
            "Time in remap_pfn_range, by caller context (inside a VFIO BAR fault or not).",
            labels=["context"],
        )
        for ctx in sorted(CONTEXTS.values()):
            histogram_family_add(h, [ctx], snap.remap.get(ctx, Histogram({}, 0)))
        yield h
        c = CounterMetricFamily(
            "vfiomond_remap_pfn_range_bytes_total", "Bytes mapped by successful remap_pfn_range calls.", labels=["context"]
        )
        for ctx in sorted(CONTEXTS.values()):
            c.add_metric([ctx], snap.remap_bytes.get(ctx, 0))
        yield c
        c = CounterMetricFamily(
            "vfiomond_remap_pfn_range_errors_total", "remap_pfn_range calls that failed.", labels=["context", "errno"]
        )
        for (ctx, err), n in sorted(snap.remap_errors.items()):
            c.add_metric([ctx, err], n)
        yield c
    if "pat_untrack" in attached:
        c = CounterMetricFamily(
            "vfiomond_pfnmap_untrack_total",
            "PAT untrack calls on VFIO BAR vmas (untrack_pfn, up to 6.15).",
            labels=["device"],
        )
        for device, n in sorted(snap.untrack.items()):
            c.add_metric([device], n)
        yield c


# Maps whose keys carry a PCI address (struct device_key / bar_fault_key).
DEVICE_TABLES = ("bar_fault_hist", "bar_faults_concurrent", "pat_untrack")


def forget_device(tables, device: str) -> int:
    """Delete every entry of ``device`` (a PCI address) from the area's maps, so
    that a device unbound from its VFIO driver or removed leaves no series.
    Returns the entries deleted."""
    deleted = 0
    for name in DEVICE_TABLES:
        table = tables(name)
        for k in [k for k in list(table.keys()) if cstr(k.device) == device]:
            try:
                del table[k]
                deleted += 1
            except KeyError:
                pass
    return deleted
