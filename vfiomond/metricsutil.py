"""Small helpers shared by the areas' metric families."""

import ctypes
from typing import Iterator, List, Mapping, Tuple

from prometheus_client.core import CounterMetricFamily, HistogramMetricFamily

from vfiomond.histogram import NS_PER_SECOND, Histogram, cumulative_buckets


def cstr(raw: bytes) -> str:
    """A NUL-terminated C string of a BPF record or map key (a PCI address, a comm)."""
    return bytes(raw).split(b"\0", 1)[0].decode("ascii", "replace")


# Log2 buckets per op of a DMA latency array (bpf/common.h DMA_SLOTS: bpf_log2l() is 0 .. 64).
DMA_SLOTS = 65
DMA_OPS = 2  # map, unmap


def dma_hist_cells(array) -> List[Tuple[int, int, int]]:
    """(op, log2 slot, calls) of a DMA latency array (bpf/type1.c dma_hist,
    bpf/iommufd.c iommufd_dma_hist: cell op * DMA_SLOTS + slot), empty cells left
    out.  ``array``: the BCC table, indexed by ctypes.c_int."""
    out = []
    for cell in range(DMA_OPS * DMA_SLOTS):
        calls = array[ctypes.c_int(cell)].value
        if calls:
            out.append((cell // DMA_SLOTS, cell % DMA_SLOTS, calls))
    return out


def ascii_digits(text: str) -> bool:
    """Whether ``text`` is a count int() takes: ASCII digits only ("²".isdigit() holds
    and int() of it is a ValueError; found by tests/unit/test_pcie.py's property test)."""
    return text.isascii() and text.isdigit()


def _le(seconds: float) -> str:
    return repr(seconds)


def histogram_family_add(family, labels: List[str], hist: Histogram) -> None:
    """Add one label set of a kernel log2 histogram (ns) to a HistogramMetricFamily."""
    buckets = [(_le(le), n) for le, n in cumulative_buckets(hist.slots)]
    buckets.append(("+Inf", hist.count))
    family.add_metric(labels, buckets, hist.sum_ns / NS_PER_SECOND)


# Families that both DMA backends (areas type1 and iommufd) export, label backend:
# one HELP text, since the collector merges them into one family.
BACKEND_DOCS = {
    "vfiomond_dma_map_duration_seconds":
        "Time to DMA-map: type1 vfio_dma_do_map (VFIO_IOMMU_MAP_DMA), iommufd iopt_map_user_pages (IOMMU_IOAS_MAP).",
    "vfiomond_dma_unmap_duration_seconds":
        "Time to DMA-unmap: type1 vfio_dma_do_unmap (VFIO_IOMMU_UNMAP_DMA), iommufd iopt_unmap_iova "
        "(IOMMU_IOAS_UNMAP).",
    "vfiomond_dma_map_bytes_total": "Bytes DMA-mapped by successful map calls.",
    "vfiomond_dma_unmap_bytes_total": "Bytes DMA-unmapped by successful unmap calls.",
    "vfiomond_dma_map_errors_total": "DMA map calls that failed, by errno.",
    "vfiomond_dma_unmap_errors_total": "DMA unmap calls that failed, by errno.",
    "vfiomond_pinned_pages_total": "Pages pinned for DMA (GUP).",
    "vfiomond_unpinned_pages_total": "Pages unpinned after DMA unmap.",
    "vfiomond_locked_vm_charged_pages_total":
        "Pages charged to a locked_vm (RLIMIT_MEMLOCK) by the VFIO backend (iommufd: the user's or the mm's).",
    "vfiomond_locked_vm_uncharged_pages_total": "Pages returned to a locked_vm by the VFIO backend.",
    "vfiomond_locked_vm_charge_failures_total":
        "Pinning refused for RLIMIT_MEMLOCK (type1 vfio_pin_pages_remote -ENOMEM or a failed __account_locked_vm; "
        "iommufd do_update_pinned -ENOMEM): the map fails.",
    "vfiomond_write_faults_total":
        "Write faults on write-protected pages (do_wp_page) in processes holding pins of this backend, counted in "
        "the kernel; vfiomond_pin_write_faults_total says what each one did to a DMA mapping.",
}


def backend_counter(name: str, backend: str, value: int) -> CounterMetricFamily:
    """One sample of a BACKEND_DOCS counter family, label backend."""
    c = CounterMetricFamily(name, BACKEND_DOCS[name], labels=["backend"])
    c.add_metric([backend], value)
    return c


def dma_families(backend: str, op: str, latency: Histogram, nbytes: int, errors: Mapping[str, int]) -> Iterator:
    """vfiomond_dma_OP_{duration_seconds,bytes_total,errors_total} of one backend; ``op`` map or unmap."""
    name = "vfiomond_dma_%s_duration_seconds" % op
    h = HistogramMetricFamily(name, BACKEND_DOCS[name], labels=["backend"])
    histogram_family_add(h, [backend], latency)
    yield h
    yield backend_counter("vfiomond_dma_%s_bytes_total" % op, backend, nbytes)
    name = "vfiomond_dma_%s_errors_total" % op
    e = CounterMetricFamily(name, BACKEND_DOCS[name], labels=["backend", "errno"])
    for err, n in sorted(errors.items()):
        e.add_metric([backend, err], n)
    yield e
