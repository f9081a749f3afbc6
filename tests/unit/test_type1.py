import pathlib
import re

from vfiomond import type1
from vfiomond.histogram import Histogram
from vfiomond.metricsutil import DMA_SLOTS, dma_hist_cells
from vfiomond.type1 import DmaRow, decode

from test_faults import exposition
from test_iommufd import _Array

BPF = pathlib.Path(__file__).resolve().parents[2] / "bpf" / "type1.c"
COMMON = BPF.parent / "common.h"


def test_counter_indices_match_the_bpf_enum():
    enum = dict((m.group(1), int(m.group(2))) for m in re.finditer(r"(TYPE1_\w+) = (\d+)", BPF.read_text()))
    assert enum.pop("TYPE1_COUNTERS") == len(type1.COUNTERS)
    assert enum == type1.COUNTERS


def test_decode_splits_map_and_unmap():
    counters = {name: 0 for name in type1.COUNTERS}
    counters.update(TYPE1_MAP_SUM_NS=900, TYPE1_UNMAP_SUM_NS=100)
    snap = decode(counters, [DmaRow(0, 15, 0, 3), DmaRow(1, 12, 0, 2), DmaRow(9, 1, 0, 1)], [DmaRow(0, 0, 12, 2), DmaRow(0, 0, 17, 1)])
    assert snap.latency == {"map": Histogram({15: 3}, 900), "unmap": Histogram({12: 2}, 100)}
    assert snap.errors == {"map": {"ENOMEM": 2, "EEXIST": 1}, "unmap": {}}


def test_families_carry_backend_and_skip_unattached():
    counters = {name: i * 10 for i, name in enumerate(type1.COUNTERS)}
    snap = decode(counters, [], [DmaRow(0, 0, 28, 1)])
    s = exposition(type1.families(snap, {"dma_map", "pin_pages"}))
    assert s["vfiomond_dma_map_bytes_total[('backend', 'type1')]"] == 0
    assert s["vfiomond_pinned_pages_total[('backend', 'type1')]"] == 20
    assert s["vfiomond_dma_map_errors_total[('backend', 'type1'), ('errno', 'ENOSPC')]"] == 1
    assert s["vfiomond_dma_map_duration_seconds_count[('backend', 'type1')]"] == 0
    assert not any("unmap" in k or "unpinned" in k or "locked_vm" in k for k in s)


def test_reserved_pfns_other_than_the_zero_page_are_exempt():
    from vfiomond.type1 import exempt_pages

    # 64 MiB of RAM charged, a peer's 256 MiB BAR mapped for P2P, 32 zero pages
    assert exempt_pages(16384 + 65536 + 32, 16384, 32) == 65536
    assert exempt_pages(100, 100, 0) == 0
    assert exempt_pages(10, 12, 0) == 0  # a charge seen before its pin: never negative


def test_dma_slots_match_bpf():
    assert re.search(r"#define DMA_SLOTS (\d+)", COMMON.read_text()).group(1) == str(DMA_SLOTS)


def test_dma_hist_cells_reads_op_and_slot_from_the_array_cell():
    # bpf/common.h dma_hist_cell: op * DMA_SLOTS + bpf_log2l(ns); empty cells are left out.
    array = _Array([0] * (2 * DMA_SLOTS))
    array[15] = 3            # map, slot 15
    array[DMA_SLOTS + 12] = 2  # unmap, slot 12
    array[2 * DMA_SLOTS - 1] = 1  # unmap, slot 64: bpf_log2l's largest
    assert dma_hist_cells(array) == [(0, 15, 3), (1, 12, 2), (1, 64, 1)]
