"""Per-process locked_vm / RLIMIT_MEMLOCK accounting on real kernels: the memlock scenario.

The holder (a nobody process with RLIMIT_MEMLOCK 16 MiB) keeps its mappings
until the host has scraped, so the per-process gauges are compared with what
its own /proc said after its last MAP_DMA.
"""

import pytest

from test_lab import DISTRO_SUITES as SUITES, SHARED_BOOT, Scrape, ZERO_PAGE_PINS, boot, journal_entries

MEMLOCK_REFUSED_ID = "8b0e5d4c2a1f4e3d9c7b6a5f4e3d2c1b"
ENOMEM = 12


LAB_BOOT = (SHARED_BOOT, False)  # (scenario, Prometheus): what tests/lab/conftest.py schedules


@pytest.fixture(scope="module", params=SUITES)
def memlock_run(request):
    return boot(request.param, *LAB_BOOT).part("memlock")


@pytest.fixture(scope="module")
def holder(memlock_run):
    assert memlock_run.scenario.get("ok") is True, memlock_run.scenario
    return memlock_run.scenario


@pytest.fixture(scope="module")
def scrape(memlock_run):
    return Scrape(memlock_run.metrics)


def labels(holder):
    return {"pid": str(holder["pid"]), "comm": "python3", "vm": ""}


def test_gauges_equal_proc_and_the_scenario(holder, scrape):
    who = labels(holder)
    assert scrape.one("vfiomond_process_locked_vm_bytes", **who) == holder["vm_lck"]
    assert scrape.one("vfiomond_process_pinned_vm_bytes", **who) == holder["vm_pin"]
    assert scrape.one("vfiomond_process_memlock_limit_bytes", **who) == holder["limit"]
    assert scrape.one("vfiomond_process_dma_mapped_bytes", backend="type1", **who) == holder["dma_mapped_bytes"]
    # type1 is the only thing that locks memory in this process.
    assert scrape.one("vfiomond_process_charged_bytes", backend="type1", **who) == holder["vm_lck"]


def test_a_process_sharing_the_mm_counts_its_locked_vm_once(holder, scrape):
    """The holder's CLONE_VM child holds the same VFIO fds and mm: found by the
    wake_up_new_task probe, reported as sharing the holder's mm, without a locked_vm
    series of its own, so that the sum over processes is the holder's VmLck."""
    sharer = {"pid": str(holder["mm_sharer"]), "comm": "python3", "vm": ""}
    assert scrape.one("vfiomond_process_mm_shared_info", mm_pid=str(holder["pid"]), **sharer) == 1
    assert scrape.one("vfiomond_process_memlock_limit_bytes", **sharer) == holder["limit"]
    assert not scrape.values("vfiomond_process_locked_vm_bytes", **sharer)
    assert scrape.one("vfiomond_process_locked_vm_bytes", **labels(holder)) == holder["vm_lck"]


def test_accounting_gap_follows_the_kernel(memlock_run, holder, scrape):
    gap = scrape.one("vfiomond_process_uncharged_pinned_bytes", backend="type1", **labels(holder))
    assert gap == holder["dma_mapped_bytes"] - holder["vm_lck"]
    if ZERO_PAGE_PINS[memlock_run.suite]:
        assert gap > 0  # zero pages of the read-only untouched map are pinned, not charged
    else:
        assert gap == 0


def test_refusal_is_counted(holder, scrape):
    assert holder["refused"]["errno"] == ENOMEM
    assert scrape.one("vfiomond_process_locked_vm_charge_failures_total", backend="type1", **labels(holder)) == 1
    assert scrape.one("vfiomond_locked_vm_charge_failures_total", backend="type1") == 1
    assert scrape.one("vfiomond_dma_map_errors_total", backend="type1", errno="ENOMEM") == 1


def test_refusal_alert_has_the_numbers(memlock_run, holder):
    alerts = journal_entries(memlock_run, MEMLOCK_REFUSED_ID)
    assert len(alerts) == 1, alerts
    a = alerts[0]
    assert a["PID"] == str(holder["pid"]) and a["COMM"] == "python3" and a["BACKEND"] == "type1"
    assert int(a["LIMIT_BYTES"]) == holder["limit"]
    assert int(a["REQUEST_BYTES"]) == holder["refused"]["size"]
    # locked_vm when the pin was refused: what earlier maps held, plus what this
    # map had charged before it hit the limit.
    assert holder["refused"]["locked_before"] <= int(a["LOCKED_BYTES"]) <= holder["limit"]
    assert a["PRIORITY"] == "3" and a["ERRNO"] == str(ENOMEM)
