import pathlib
import re

from prometheus_client.core import CollectorRegistry
from prometheus_client.exposition import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from vfiomond import iommufd, type1
from vfiomond.bpfload import ProbeStatus
from vfiomond.collector import VfiomondCollector
from vfiomond.histogram import Histogram
from vfiomond.iommufd import DmaRow, account_name, decode
from vfiomond.metricsutil import DMA_SLOTS

from test_faults import exposition, key

BPF = pathlib.Path(__file__).resolve().parents[2] / "bpf" / "iommufd.c"


def test_counter_indices_match_the_bpf_enum():
    enum = dict((m.group(1), int(m.group(2))) for m in re.finditer(r"(IOMMUFD_\w+) = (\d+)", BPF.read_text()))
    assert enum.pop("IOMMUFD_COUNTERS") == iommufd.N_COUNTERS
    assert enum == iommufd.COUNTERS
    assert iommufd.COUNTERS["IOMMUFD_WRITE_FAULTS"] == iommufd.COUNTERS["IOMMUFD_PIN_BASE"] + 2 * len(iommufd.ACCOUNTS)
    modes = dict((m.group(1).lower(), int(m.group(2))) for m in re.finditer(r"#define ACCOUNT_(\w+) (\d+)", BPF.read_text()))
    assert modes == {mode: i for i, mode in enumerate(iommufd.ACCOUNTS)}


def raw(**values):
    """An iommufd_counters array: named counters, pins as pin_MODE / unpin_MODE."""
    out = [0] * iommufd.N_COUNTERS
    base = iommufd.COUNTERS["IOMMUFD_PIN_BASE"]
    for name, v in values.items():
        if name.startswith(("pin_", "unpin_")):
            direction, mode = name.split("_")
            out[base + 2 * iommufd.ACCOUNTS.index(mode) + (direction == "unpin")] = v
        else:
            out[iommufd.COUNTERS[name]] = v
    return out


def test_decode_pins_by_account_mode():
    snap = decode(raw(IOMMUFD_MAP_BYTES=16 << 20, IOMMUFD_MAP_SUM_NS=500, pin_none=4096, pin_user=10, unpin_mm=3),
                  [DmaRow(0, 20, 0, 2), DmaRow(1, 10, 0, 1)], [DmaRow(0, 0, 12, 1)])
    assert snap.pinned == {"none": 4096, "user": 10, "mm": 0}
    assert snap.unpinned == {"none": 0, "user": 0, "mm": 3}
    assert snap.counters["map_bytes"] == 16 << 20
    assert snap.latency["map"] == Histogram({20: 2}, 500)
    assert snap.errors == {"map": {"ENOMEM": 1}, "unmap": {}}


def test_account_name():
    assert [account_name(i) for i in range(5)] == ["", "none", "user", "mm", ""]


def test_families_charge_only_user_and_mm_modes():
    snap = decode(raw(pin_none=4096, pin_user=100, pin_mm=20, unpin_user=100, IOMMUFD_CHARGE_FAILURES=2), [], [])
    s = exposition(iommufd.families(snap, set(iommufd.PROBES)))
    b = dict(backend="iommufd")
    assert s[key("vfiomond_pinned_pages_total", **b)] == 4216
    assert s[key("vfiomond_locked_vm_charged_pages_total", **b)] == 120
    assert s[key("vfiomond_locked_vm_uncharged_pages_total", **b)] == 100
    assert s[key("vfiomond_locked_vm_charge_failures_total", **b)] == 2
    assert s[key("vfiomond_iommufd_pinned_pages_total", account="none")] == 4096
    assert s[key("vfiomond_iommufd_unpinned_pages_total", account="user")] == 100


def test_families_of_unattached_probes_are_absent():
    s = exposition(iommufd.families(decode(raw(), [], []), {"iommufd_dma_unmap"}))
    assert key("vfiomond_dma_unmap_bytes_total", backend="iommufd") in s
    assert not any("pinned" in k or "dma_map" in k for k in s)


class _Tables:
    """BCC tables of both DMA backends as plain dicts (unit test of the collector's merge)."""

    class _V:
        def __init__(self, value):
            self.value = value

    def __init__(self, area):
        self.area = area

    def __call__(self, name):
        if name in ("type1_counters", "iommufd_counters"):
            n = len(type1.COUNTERS) if name.startswith("type1") else iommufd.N_COUNTERS
            return _Array([7] * n)
        if name.endswith("dma_hist"):
            return _Array([0] * (2 * DMA_SLOTS))
        return {}


class _Array(list):
    def __getitem__(self, index):
        return _Tables._V(list.__getitem__(self, index.value))


class _Program:
    statuses = [ProbeStatus(name, True, "") for name in ("dma_map", "iommufd_dma_map")]
    features = {"iommufd": True}

    def areas(self):
        return ["type1", "iommufd"]

    def tables(self, area):
        return _Tables(area)

    def lost_events(self):
        return {("pin_events", "full"): 0}


def test_collector_merges_the_backends_into_one_family_each():
    registry = CollectorRegistry(auto_describe=False)
    registry.register(VfiomondCollector(_Program(), "6.12.117-vfiomond-iommufd"))
    text = generate_latest(registry).decode()
    assert text.count("# TYPE vfiomond_dma_map_bytes_total counter") == 1
    fams = {f.name: f for f in text_string_to_metric_families(text)}
    backends = sorted(s.labels["backend"] for s in fams["vfiomond_dma_map_bytes"].samples if s.name.endswith("_total"))
    assert backends == ["iommufd", "type1"]
    assert [s.value for s in fams["vfiomond_kernel_feature"].samples] == [1]
