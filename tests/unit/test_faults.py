import pytest
from prometheus_client.core import CollectorRegistry
from prometheus_client.exposition import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from vfiomond import faults
from vfiomond.faults import BarFaultRow, FaultSnapshot, RemapRow, decode_bar_faults, decode_remap, fault_result
from vfiomond.histogram import Histogram


@pytest.mark.parametrize(
    "ret, result",
    [
        (0x100, "nopage"),
        (0x800, "fallback"),
        (0x2, "sigbus"),
        (0x1, "oom"),
        (0x400, "retry"),
        (0x0, "other"),
        (0x40, "other"),  # SIGSEGV is not a class of its own
        (0x100 | 0x2, "sigbus"),  # an error wins over NOPAGE
        (0x800 | 0x1, "oom"),
    ],
)
def test_fault_result(ret, result):
    assert fault_result(ret) == result


@pytest.mark.parametrize("index, name", [(0, "bar0"), (5, "bar5"), (6, "rom"), (7, "config"), (8, "vga"), (9, "region9"), (255, "unknown")])
def test_region_name(index, name):
    assert faults.region_name(index) == name


def test_bar_faults_merge_by_result_class():
    hist = [
        BarFaultRow("0000:00:03.0", 0x100, 0, 0, 12, 3, 600),
        BarFaultRow("0000:00:03.0", 0x100 | 0x4, 0, 0, 12, 1, 500),  # MAJOR|NOPAGE: still nopage
        BarFaultRow("0000:00:03.0", 0x100, 0, 0, 14, 2, 400),
        BarFaultRow("0000:00:02.0", 0x800, 2, 9, 11, 5, 70),
        BarFaultRow("", 0x100, 255, 0, 11, 1, 0),
    ]
    out = decode_bar_faults(hist)
    assert out == {
        ("0000:00:03.0", "bar0", "0", "nopage"): Histogram({12: 4, 14: 2}, 1500),
        ("0000:00:02.0", "bar2", "9", "fallback"): Histogram({11: 5}, 70),
        ("unknown", "unknown", "0", "nopage"): Histogram({11: 1}, 0),
    }


def test_remap_contexts():
    latency, mapped = decode_remap([RemapRow(1, 13, 2, 9000, 8192), RemapRow(0, 11, 1, 0, 0), RemapRow(7, 11, 1, 5, 4096)])
    assert latency == {"vfio_fault": Histogram({13: 2}, 9000), "other": Histogram({11: 2}, 5)}
    assert mapped == {"vfio_fault": 8192, "other": 4096}  # unknown contexts count as other


class Families:
    def __init__(self, fams):
        self.fams = list(fams)

    def collect(self):
        return self.fams


def key(name, **labels):
    return name + repr(sorted(labels.items()))


def exposition(fams):
    registry = CollectorRegistry(auto_describe=False)
    registry.register(Families(fams))
    text = generate_latest(registry).decode()
    return {s.name + repr(sorted(s.labels.items())): s.value for f in text_string_to_metric_families(text) for s in f.samples}


SNAP = FaultSnapshot(
    bar_faults={("0000:00:03.0", "bar0", "0", "nopage"): Histogram({12: 4, 40: 1}, 3_000_000)},
    concurrent={"0000:00:03.0": 2},
    remap={"vfio_fault": Histogram({20: 1}, 600_000)},
    remap_bytes={"vfio_fault": 1 << 20},
    remap_errors={("other", "EINVAL"): 1},
    untrack={"0000:00:03.0": 3},
)


def test_families_exposition():
    s = exposition(faults.families(SNAP, set(faults.PROBES)))
    labels = dict(device="0000:00:03.0", order="0", region="bar0", result="nopage")
    assert s[key("vfiomond_bar_fault_duration_seconds_count", **labels)] == 5
    assert s[key("vfiomond_bar_fault_duration_seconds_sum", **labels)] == pytest.approx(0.003)
    assert s[key("vfiomond_bar_fault_duration_seconds_bucket", le="+Inf", **labels)] == 5
    assert s[key("vfiomond_bar_fault_duration_seconds_bucket", le="4.095e-06", **labels)] == 4
    assert s["vfiomond_bar_faults_concurrent_total[('device', '0000:00:03.0')]"] == 2
    assert s["vfiomond_remap_pfn_range_bytes_total[('context', 'vfio_fault')]"] == 1 << 20
    assert s["vfiomond_remap_pfn_range_bytes_total[('context', 'other')]"] == 0
    assert s["vfiomond_remap_pfn_range_duration_seconds_count[('context', 'other')]"] == 0
    assert s["vfiomond_remap_pfn_range_errors_total[('context', 'other'), ('errno', 'EINVAL')]"] == 1
    assert s["vfiomond_pfnmap_untrack_total[('device', '0000:00:03.0')]"] == 3


def test_families_of_unattached_probes_are_absent():
    s = exposition(faults.families(SNAP, {"pat_untrack"}))
    assert not any(k.startswith("vfiomond_bar_fault") or k.startswith("vfiomond_remap") for k in s)
    assert any(k.startswith("vfiomond_pfnmap_untrack_total") for k in s)
