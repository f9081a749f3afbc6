"""IOMMU faults on real kernels: the iommu-faults scenario has edu read 30 times, one
DMA at a time, from an IOVA its VFIO container does not map (the guest's VT-d unit is
QEMU's intel-iommu).  Every DMA is one fault the unit records and one fault interrupt;
the kernel logs the first ones and its rate limit drops the rest.  vfiomond's fault
interrupts, counted in the kernel, must equal the DMAs; its count of the logged faults
(the kernel-log watcher) must equal the kernel log's own lines for edu."""

import pytest

from test_lab import DISTRO_SUITES as SUITES, SHARED_BOOT, boot, journal_entries

LAB_BOOT = (SHARED_BOOT, False)  # (scenario, Prometheus): what tests/lab/conftest.py schedules
KERNEL_SPLAT_ID = "c4d2e8f1a9b7460e8d3c5b2a1f0e9d8c"  # kernel_splat (systemd/vfiomond.catalog)


@pytest.fixture(scope="module", params=SUITES)
def booted(request):
    return boot(request.param, *LAB_BOOT)


@pytest.fixture(scope="module")
def result(booted):
    part = booted.part("iommu-faults")
    assert part.scenario.get("ok") is True, part.scenario
    return part.scenario


def moved(result, name):
    return result["after"][name] - result["before"][name]


def test_every_fault_interrupt_is_counted_in_the_kernel(result):
    assert moved(result, "interrupts") == result["dmas"]


def test_the_logged_faults_are_the_kernel_logs_lines(result):
    assert moved(result, "logged") == result["logged"]


def test_the_rate_limit_dropped_some(result):
    """Else the test would not show that the kernel count sees what the log does not."""
    assert result["logged"] < result["dmas"]


def test_each_logged_fault_is_a_journal_alert_naming_the_device_and_its_holder(booted, result):
    alerts = [e for e in journal_entries(booted, KERNEL_SPLAT_ID)
              if e.get("KIND") == "iommu_fault" and e.get("DEVICE") == result["device"]]
    assert len(alerts) == result["logged"]
    assert all(str(result["pid"]) in e["PIDS"].split(",") for e in alerts), [e.get("PIDS") for e in alerts]
