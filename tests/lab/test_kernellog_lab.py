"""The kernel-log watcher on real kernels: splat texts written to /dev/kmsg in the guest
must show up in vfiomond_kernel_events_total and as journal alerts, attributed."""

import json
import os

import pytest

from test_lab import DISTRO_SUITES as SUITES, SHARED_BOOT, Scrape, boot, journal_entries

KERNEL_SPLAT_ID = "c4d2e8f1a9b7460e8d3c5b2a1f0e9d8c"
KERNEL_ADVISORY_ID = "5e7a9c1b3d2f4a6e8c0b1d3f5a7c9e2b"
# What the knowledge base says of each lab kernel (tests/unit/test_advisories.py).
ADVISORIES = {
    "bullseye": {"pat-failed-fork-warn": "affected", "ro-longterm-pin-divergence": "affected",  # 5.10.223
                 "type1-pin-rcu-stall": "affected", "vfio-pci-trigger-lock-cycle": "affected"},
    "sid": {},  # 7.2.13: newer than every fix in the knowledge base
    # 6.1.176: dc84bc2aba85 came with 6.1.160, b1779e4f209c with 6.1.149, 98693e0897f7 not yet
    "bookworm": {"ro-longterm-pin-divergence": "affected", "vfio-pci-trigger-lock-cycle": "affected"},
    "trixie": {},  # 6.12.117
}


LAB_BOOT = (SHARED_BOOT, False)  # (scenario, Prometheus): what tests/lab/conftest.py schedules


@pytest.fixture(scope="module", params=SUITES)
def log_run(request):
    result = boot(request.param, *LAB_BOOT).part("kernel-log")
    assert result.scenario.get("ok") is True, result.scenario
    return result


@pytest.fixture(scope="module")
def scrape(log_run):
    return Scrape(log_run.metrics)


def test_splats_are_counted_and_attributed(scrape):
    assert scrape.one("vfiomond_kernel_events_total", kind="bug", site="mm/memory.c", known_issue="vfio-concurrent-bar-fault") == 1
    assert scrape.one("vfiomond_kernel_events_total", kind="oops", site="none", known_issue="none") == 1
    # Two RLIMIT_MEMLOCK lines: the one the scenario wrote, and the one type1 printed
    # for the memlock holder's refused MAP_DMA (SHARED_BOOT: the same boot).
    assert scrape.one("vfiomond_kernel_events_total", kind="memlock", site="none", known_issue="none") == 2


def test_splat_alerts_carry_the_attribution(log_run):
    alerts = {e["KIND"]: e for e in journal_entries(log_run, KERNEL_SPLAT_ID)}
    # RLIMIT_MEMLOCK lines are refusals, not splats: the pin probe alerts the real one
    # (memlock_refused, tests/lab/test_accounting_lab.py), the lines are only counted.
    # The iommu-faults scenario's DMA faults (same boot) are iommu_fault alerts of their own
    # (tests/lab/test_iommu_faults_lab.py).
    assert set(alerts) - {"iommu_fault"} == {"bug", "oops"}
    bug = alerts["bug"]
    assert bug["VFIO"] == "1" and bug["PFNMAP"] == "1" and bug["KNOWN_ISSUE"] == "vfio-concurrent-bar-fault"
    assert bug["SITE"] == "mm/memory.c:2177" and bug["FRAMES"].startswith("remap_pfn_range vfio_pci_mmap_fault")
    assert "kernel BUG at mm/memory.c:2177!" in bug["SPLAT"] and "Call trace:" in bug["SPLAT"]
    assert alerts["oops"]["VFIO"] == "0" and alerts["oops"]["KNOWN_ISSUE"] == ""


def test_advisories_for_the_running_kernel(log_run, scrape):
    found = {s.labels["id"]: s.labels["status"] for s in scrape.samples if s.name == "vfiomond_kernel_advisory_info"}
    assert found == ADVISORIES[log_run.suite]
    announced = {e["ADVISORY_ID"] for e in journal_entries(log_run, KERNEL_ADVISORY_ID)}
    assert announced == set(ADVISORIES[log_run.suite])


def doctor_report(run, name):
    with open(os.path.join(run.out, name)) as f:
        return {c["name"]: c for c in json.load(f)["checks"]}


def test_doctor_in_the_guest_tells_the_truth(log_run):
    checks = doctor_report(log_run, "doctor.json")
    assert checks["iommu"]["status"] == "ok" and "dmar" in checks["iommu"]["detail"]
    assert checks["interrupt remapping"]["status"] == "ok"  # intel-iommu,intremap=on
    assert checks["vfio modules"]["status"] == "ok" and "vfio_iommu_type1" in checks["vfio modules"]["detail"]
    assert checks["vfio devices"]["detail"].count("vfio-pci group") == 2
    assert checks["kprobes"]["status"] == "ok"
    assert checks["bcc"]["status"] == "ok"
    assert checks["probes"]["status"] == "ok"
    assert set(ADVISORIES[log_run.suite]) <= set(checks["advisories"]["detail"].replace(";", " ").replace("(", " ").split())
    with open(os.path.join(log_run.out, "doctor.rc")) as f:
        # the advisories need attention; a kernel without any leaves nothing to attend to
        assert f.read().strip() == ("1" if ADVISORIES[log_run.suite] else "0")


def test_doctor_without_root_says_what_it_could_not_see(log_run):
    checks = doctor_report(log_run, "doctor-nobody.json")
    assert checks["memlock"]["status"] == "unknown" and "root" in checks["memlock"]["detail"]
    assert checks["probes"]["status"] == "unknown"  # addresses and PFNs are hidden from nobody
    assert checks["iommu"]["status"] == "ok"
