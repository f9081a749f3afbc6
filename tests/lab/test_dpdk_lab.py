"""DPDK as the VFIO user (scenario dpdk): vfiomond's numbers against DPDK's own account.

testpmd runs on the lab's e1000e (bound to vfio-pci by DPDK's dpdk-devbind.py) with 2 MiB
hugepages, twice to a "quit" and once to SIGKILL.  DPDK's account is its EAL's log of each
change of its heap (which its VFIO mem event callback maps and unmaps for DMA) and
testpmd's dump_physmem (the memory segments it holds); the kernel's is /proc/PID/status.
Debian 12 runs DPDK 22.11, Debian 13 DPDK 24.11; both pick the type1 container.
"""

import pytest

from test_lab import SUITES
from test_vmm_lab import LAB_BOOT, client_run, ok_summary, one

DPDK_SUITES = [s for s in SUITES if "dpdk" in LAB_BOOT.get(s, ("",))[0].split("+")]


@pytest.fixture(scope="module", params=DPDK_SUITES)
def dpdk_run(request):
    return client_run(request.param, "dpdk")


@pytest.fixture(scope="module")
def summary(dpdk_run):
    return ok_summary(dpdk_run)


def test_every_run_happened_on_type1(summary):
    assert [(r["run"], r["exit"]) for r in summary["runs"].values()] == [("quit-1", 0), ("quit-2", 0), ("kill", -9)]
    for r in summary["runs"].values():
        assert r["backend"] == "type1 (Type 1)"
        assert r["iova_is_va"] and r["segments"] > 0


def test_dma_mapped_bytes_equal_dpdks_memory(summary):
    for r in summary["runs"].values():
        view = r["vfiomond_running"]
        assert view["settled"]
        # What its heap grew by is what it holds and what its EAL mapped for DMA.
        assert r["heap_running"]["expanded"] - r["heap_running"]["shrunk"] == r["segment_bytes"]
        assert one(view, "vfiomond_process_dma_mapped_bytes", backend="type1") == r["segment_bytes"], r["run"]
        assert one(view, "vfiomond_process_dma_map_bytes_total", backend="type1") == r["heap_running"]["expanded"]
        # Hugepages pinned and charged to the mm (VmLck also counts DPDK's own locked
        # mappings, far more than the pins).
        assert one(view, "vfiomond_process_charged_bytes", backend="type1") == r["segment_bytes"] <= r["proc"]["VmLck"]
        assert one(view, "vfiomond_process_locked_vm_bytes") == r["proc"]["VmLck"]
        assert one(view, "vfiomond_process_uncharged_pinned_bytes", backend="type1") == 0


def test_host_totals_equal_dpdks_heap_changes(summary):
    for r in summary["runs"].values():
        before, after = r["totals_before"], r["totals_after"]
        assert after["vfiomond_dma_map_bytes_total"] - before["vfiomond_dma_map_bytes_total"] == r["heap_final"]["expanded"]
        # "quit" shrinks the heap, unmapped while its VFIO callback is registered (24.11
        # shrinks 2 MiB more after it unregistered it: no unmap call); SIGKILL unmaps
        # nothing: the kernel tears the container down, which is not an unmap call.
        assert (after["vfiomond_dma_unmap_bytes_total"] - before["vfiomond_dma_unmap_bytes_total"]
                == r["heap_final"]["unmapped"]), r["run"]
        if r["run"] == "kill":
            assert r["heap_final"]["shrunk"] == 0
        else:
            assert r["heap_final"]["unmapped"] > 0


def test_device_holder_is_testpmd(summary):
    for r in summary["runs"].values():
        holders = r["vfiomond_running"]["series"]["vfiomond_device_holder_info"]
        assert [(labels["device"], labels["comm"], labels["via"]) for labels, _ in holders] == [
            (summary["device"], "dpdk-testpmd", "group")]


def test_series_vanish_after_quit_and_sigkill(summary):
    for r in summary["runs"].values():
        assert r["vfiomond_after_exit"]["settled"] and r["vfiomond_after_exit"]["series"] == {}, r["run"]


def test_nothing_lost_no_false_alarm(summary):
    for r in summary["runs"].values():
        for name in ("vfiomond_events_lost_total", "vfiomond_pin_mismatches_total", "vfiomond_zero_page_pins_total"):
            assert r["totals_after"][name] == r["totals_before"][name], (r["run"], name)
