"""iommufd end to end: the iommufd scenario on the lab's own 6.12 build with
CONFIG_IOMMUFD (SUITE=iommufd, tests/lab/kernel.sh), scraped after it ran, and
vfiomond's per-process series the scenario scraped itself while mapped.

Runs where VFIOMOND_LAB_SUITES names iommufd (make test-all).  The standard
(type1) scenario on the same kernel is test_lab.py's.
"""

import pytest

from test_lab import EXPECTED_SYMBOLS, MIB, PAGE, SUITES, Scrape, attached_symbols, boot, coverage_table, journal_entries
from test_pins_lab import PIN_MISMATCH_ID

BUFFER = 4 * MIB
pytestmark = pytest.mark.skipif("iommufd" not in SUITES, reason="VFIOMOND_LAB_SUITES does not name iommufd")


LAB_BOOT = ("iommufd", False)  # (scenario, Prometheus): what tests/lab/conftest.py schedules
LAB_SUITE = "iommufd"


@pytest.fixture(scope="module")
def run():
    result = boot(LAB_SUITE, *LAB_BOOT)
    assert result.scenario.get("ok") is True, result.scenario
    return result


@pytest.fixture(scope="module")
def scrape(run):
    return Scrape(run.metrics)


def passes(run, account):
    return [p for p in run.scenario["passes"] if p["account"] == account]


def test_every_pass_ran(run):
    assert [(p["name"], p["account"]) for p in run.scenario["passes"]] == [
        ("edu", "none"), ("ivshmem", "none"), ("edu", "user"), ("edu", "mm")]
    for p in run.scenario["passes"]:
        assert p["cdev"].startswith("/dev/vfio/devices/vfio")
        assert [m["unmapped"] for m in p["mappings"]] == [BUFFER, BUFFER]
    assert run.daemon_rc == 0


def test_iommufd_probes_attached(run, scrape):
    assert scrape.one("vfiomond_kernel_feature", feature="iommufd") == 1
    for probe in EXPECTED_SYMBOLS["iommufd"]:
        assert scrape.one("vfiomond_probe_attached", probe=probe) == 1, probe
        named = {s.labels["symbols"] for s in scrape.samples if s.name == "vfiomond_probe_info" and s.labels["probe"] == probe}
        assert len(named) == 1 and named <= attached_symbols(run, probe), (probe, named)
    # The attach methods the table says (this kernel has no BTF: kprobes).
    for probe in ("iommufd_pin_samples", "iommufd_pin_write_faults", "iommufd_pin_accounting", "iommufd_dma_map",
                  "pin_write_faults", "vfio_fork"):
        expected = coverage_table.methods(coverage_table.selection("iommufd")[probe], "iommufd")
        assert scrape.one("vfiomond_probe_info", probe=probe, methods=expected) == 1, (probe, expected)
    assert {"iommufd_dma_map", "iommufd_dma_unmap", "iommufd_pin_samples", "iommufd_pin_accounting"} <= set(
        EXPECTED_SYMBOLS["iommufd"])


def churned_pages(run):
    """Pages the churn mapped (its live mappings and each map of the loop), one page each."""
    churn = run.scenario["churn"]
    return churn["live_mappings"] + churn["pairs"]


def test_dma_bytes_and_calls_match_the_scenario(run, scrape):
    iommufd = dict(backend="iommufd")
    churn = run.scenario["churn"]
    assert run.scenario["dma_mapped_bytes"] == 8 * BUFFER
    assert scrape.one("vfiomond_dma_map_bytes_total", **iommufd) == 8 * BUFFER + churned_pages(run) * PAGE
    # The churn's live mappings go with its IOAS (iopt_unmap_all reports no bytes).
    assert scrape.one("vfiomond_dma_unmap_bytes_total", **iommufd) == \
        run.scenario["dma_unmapped_bytes"] + churn["pairs"] * PAGE
    refused = [p for p in run.scenario["passes"] if p.get("refused_under_1mib_limit")]
    assert len(refused) == 2  # USER and MM mode both enforce RLIMIT_MEMLOCK
    assert scrape.one("vfiomond_dma_map_duration_seconds_count", **iommufd) == 8 + len(refused) + churned_pages(run)
    # IOMMU_IOAS_UNMAP 8 times and the churn's unmaps: the IOAS teardowns at close
    # (iopt_unmap_all(iopt, NULL), one per pass and the churn's) are not unmap calls.
    assert scrape.one("vfiomond_dma_unmap_duration_seconds_count", **iommufd) == 8 + churn["pairs"]
    assert scrape.values("vfiomond_dma_unmap_errors_total", **iommufd) == []
    assert scrape.one("vfiomond_dma_map_errors_total", errno="ENOMEM", **iommufd) == len(refused)
    assert scrape.one("vfiomond_locked_vm_charge_failures_total", **iommufd) == len(refused)
    # The type1 module is loaded and probed, and nothing went through it.
    assert scrape.one("vfiomond_dma_map_bytes_total", backend="type1") == 0


def test_pins_by_account_mode(run, scrape):
    pages = 2 * BUFFER // PAGE  # per pass: read-write and read-only buffers
    churned = churned_pages(run)  # as root: account mode NONE
    for account, n in (("none", 2 * pages + churned), ("user", pages), ("mm", pages)):
        assert scrape.one("vfiomond_iommufd_pinned_pages_total", account=account) == n, account
        assert scrape.one("vfiomond_iommufd_unpinned_pages_total", account=account) == n, account
    iommufd = dict(backend="iommufd")
    assert scrape.one("vfiomond_pinned_pages_total", **iommufd) == 4 * pages + churned
    assert scrape.one("vfiomond_locked_vm_charged_pages_total", **iommufd) == 2 * pages
    assert scrape.one("vfiomond_locked_vm_uncharged_pages_total", **iommufd) == 2 * pages


@pytest.mark.parametrize("account", ["none", "user", "mm"])
def test_per_process_accounting_matches_proc_and_the_mode(run, account):
    """While mapped: /proc's VmPin grew by the pinned size in every mode, VmLck only in
    MM mode; vfiomond's per-process series agree, and name the mode."""
    for p in passes(run, account):
        before, mapped, after, seen = p["before"], p["mapped"], p["unmapped"], p["vfiomond"]
        assert (mapped["VmPin_kib"] - before["VmPin_kib"]) * 1024 == 2 * BUFFER
        assert (mapped["VmLck_kib"] - before["VmLck_kib"]) * 1024 == (2 * BUFFER if account == "mm" else 0)
        assert after == before
        assert seen["pinned_vm_bytes"] == [mapped["VmPin_kib"] * 1024]
        assert seen["locked_vm_bytes"] == [mapped["VmLck_kib"] * 1024]
        assert seen["dma_mapped_bytes"] == [2 * BUFFER]
        assert seen["charged_bytes"] == [0 if account == "none" else 2 * BUFFER]
        assert seen["uncharged_pinned_bytes"] == [0]
        assert seen["account"] == [account]


def test_every_device_faulted_on_its_bar(run, scrape):
    for p in passes(run, "none"):
        assert scrape.total("vfiomond_bar_fault_duration_seconds_count", device=p["device"], region=p["region"]) >= 1


def test_nothing_lost_and_every_collector_succeeded(scrape):
    assert set(scrape.losses().values()) == {0}, scrape.losses()
    for area in ("faults", "type1", "iommufd"):
        assert scrape.one("vfiomond_scrape_collector_success", collector=area) == 1, area


def test_a_diverged_pinned_page_is_seen_by_the_device_and_by_vfiomond(run, scrape):
    """The root pass on edu replaced the first mapped page (MADV_DONTNEED, then a write):
    the device still reads the pinned page, and vfiomond's verification of the IOAS
    mapping finds that one sample, with the PFNs the process saw."""
    edu = passes(run, "none")[0]
    diverged = edu["diverged"]
    assert diverged["pfn_before"] != diverged["pfn_after"]
    assert diverged["stale"] is True, "the device read the new page: the pin did not hold?"
    # While held: both 4 MiB mappings sampled (16 points and the last page each), one diverged.
    assert diverged["vfiomond"] == {"pin_samples": [34], "mismatched_pages": [1]}
    assert scrape.one("vfiomond_pin_mismatches_total") == 1
    assert scrape.one("vfiomond_pin_verifications_total") > 0
    assert scrape.one("vfiomond_pin_samples") == 0  # everything unmapped
    [alert] = journal_entries(run, PIN_MISMATCH_ID)
    assert int(alert["PID"]) == edu["pid"]
    assert alert["IOVA"] == "%#x" % diverged["iova"] and alert["VADDR"] == "%#x" % diverged["vaddr"]
    assert alert["PINNED_PFN"] == "%#x" % diverged["pfn_before"]
    assert alert["CURRENT_PFN"] == "%#x" % diverged["pfn_after"]
    assert alert["DEVICES"] == edu["device"]  # found through the VFIO cdev the process holds


def test_iommufd_churn_loses_nothing_and_raises_no_false_alert(run, scrape):
    """4 KiB IOMMU_IOAS_MAP / IOMMU_IOAS_UNMAP as fast as the scenario can, next to 256
    live mappings: every call counted, nothing lost (the mappings live in the kernel's
    table), exactly the live mappings tracked afterwards, none once the IOAS is closed,
    and no alert for those IOVAs."""
    churn = run.scenario["churn"]
    before, after = churn["before"], churn["after"]
    assert churn["pairs"] >= 100, churn
    assert after["map_calls"] - before["map_calls"] == churn["pairs"]
    assert after["unmap_calls"] - before["unmap_calls"] == churn["pairs"]
    assert before["pin_mappings"] == after["pin_mappings"] == 256, churn
    assert after["events_lost"] == 0 and after["verifications"] > before["verifications"]
    assert churn["released"]["pin_mappings"] == 0
    churned = [e for e in journal_entries(run, PIN_MISMATCH_ID) if 0x4000000 <= int(e["IOVA"], 16) < 0x9000000]
    assert churned == []
