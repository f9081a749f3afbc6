"""iommufd end to end: the iommufd scenario on the lab's own 7.2 build with
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


def handovers(run):
    return run.scenario["handovers"]


def handed_bytes(run):
    """Bytes the MAP_FILE handovers mapped (and their receivers unmapped)."""
    return len(handovers(run)) * BUFFER


def churned_pages(run):
    """Pages the churn mapped (its live mappings and each map of the loop), one page each."""
    churn = run.scenario["churn"]
    return churn["live_mappings"] + churn["pairs"]


def test_dma_bytes_and_calls_match_the_scenario(run, scrape):
    iommufd = dict(backend="iommufd")
    churn = run.scenario["churn"]
    assert run.scenario["dma_mapped_bytes"] == 8 * BUFFER
    handed = handed_bytes(run)
    assert [h["receiver"]["unmapped"]["unmapped_bytes"] for h in handovers(run)] == [BUFFER] * len(handovers(run))
    assert scrape.one("vfiomond_dma_map_bytes_total", **iommufd) == 8 * BUFFER + handed + churned_pages(run) * PAGE
    assert scrape.one("vfiomond_iommufd_map_file_bytes_total") == handed
    # The churn's live mappings go with its IOAS (iopt_unmap_all reports no bytes).
    assert scrape.one("vfiomond_dma_unmap_bytes_total", **iommufd) == \
        run.scenario["dma_unmapped_bytes"] + handed + churn["pairs"] * PAGE
    refused = [p for p in run.scenario["passes"] if p.get("refused_under_1mib_limit")]
    assert len(refused) == 2  # USER and MM mode both enforce RLIMIT_MEMLOCK
    maps = 8 + len(handovers(run))
    assert scrape.one("vfiomond_dma_map_duration_seconds_count", **iommufd) == maps + len(refused) + churned_pages(run)
    # IOMMU_IOAS_UNMAP 8 times, once per handover and the churn's unmaps: the IOAS
    # teardowns at close (iopt_unmap_all(iopt, NULL), one per pass and the churn's)
    # are not unmap calls.
    assert scrape.one("vfiomond_dma_unmap_duration_seconds_count", **iommufd) == maps + churn["pairs"]
    assert scrape.values("vfiomond_dma_unmap_errors_total", **iommufd) == []
    assert scrape.one("vfiomond_dma_map_errors_total", errno="ENOMEM", **iommufd) == len(refused)
    assert scrape.one("vfiomond_locked_vm_charge_failures_total", **iommufd) == len(refused)
    # The type1 module is loaded and probed, and nothing went through it.
    assert scrape.one("vfiomond_dma_map_bytes_total", backend="type1") == 0


def test_pins_by_account_mode(run, scrape):
    pages = 2 * BUFFER // PAGE  # per pass: read-write and read-only buffers
    churned = churned_pages(run)  # as root: account mode NONE
    # A USER or MM handover charges its memfd's pages twice: to the mapper, then to
    # the process that took them over (which the mapper's uncharge balances); in
    # NONE mode the kernel moves no charge (need_charge_update, ioas.c).
    file_pages = BUFFER // PAGE
    for account, n in (("none", 2 * pages + churned + file_pages), ("user", pages + 2 * file_pages),
                       ("mm", pages + 2 * file_pages)):
        assert scrape.one("vfiomond_iommufd_pinned_pages_total", account=account) == n, account
        assert scrape.one("vfiomond_iommufd_unpinned_pages_total", account=account) == n, account
    iommufd = dict(backend="iommufd")
    assert scrape.one("vfiomond_pinned_pages_total", **iommufd) == 4 * pages + churned + 5 * file_pages
    assert scrape.one("vfiomond_locked_vm_charged_pages_total", **iommufd) == 2 * pages + 4 * file_pages
    assert scrape.one("vfiomond_locked_vm_uncharged_pages_total", **iommufd) == 2 * pages + 4 * file_pages


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


def test_the_device_reads_and_writes_a_memfd_mapped_with_map_file(run):
    """IOMMU_IOAS_MAP_FILE pinned the memfd's pages: edu's DMA through the IOVA read
    the first page and wrote the second, as the process sees them in the file."""
    for h in handovers(run):
        assert h["device_read_the_file"] is True, h["account"]
        assert (h["mapped"]["VmPin_kib"] - h["before"]["VmPin_kib"]) * 1024 == BUFFER
        seen = h["vfiomond"]
        assert seen["dma_mapped_bytes"] == [BUFFER] and seen["account"] == [h["account"]]
        assert seen["charged_bytes"] == [0 if h["account"] == "none" else BUFFER]
        assert seen["uncharged_pinned_bytes"] == [0]


@pytest.mark.parametrize("account", ["user", "mm"])
def test_change_process_moves_the_pins_and_the_bytes_as_proc_says(run, scrape, account):
    """IOMMU_IOAS_CHANGE_PROCESS by a process handed the iommufd: /proc's VmPin (and
    in MM mode VmLck) leaves the mapper and arrives at the new process; vfiomond's
    per-process series follow, and the new process's unmap empties them."""
    [h] = [h for h in handovers(run) if h["account"] == account]
    took, unmapped = h["receiver"]["took"], h["receiver"]["unmapped"]
    assert h["receiver"]["exit"] == 0
    locked = BUFFER if account == "mm" else 0
    # The mapper: back to where it started (its fds still open).
    assert h["handed_over"] == h["before"]
    assert h["vfiomond_handed_over"]["dma_mapped_bytes"] == [0]
    assert h["vfiomond_handed_over"]["charged_bytes"] == [0]
    # The new process: charged now, by /proc and by vfiomond.
    assert (took["after"]["VmPin_kib"] - took["before"]["VmPin_kib"]) * 1024 == BUFFER
    assert (took["after"]["VmLck_kib"] - took["before"]["VmLck_kib"]) * 1024 == locked
    seen = took["vfiomond"]
    assert seen["pinned_vm_bytes"] == [took["after"]["VmPin_kib"] * 1024]
    assert seen["dma_mapped_bytes"] == [BUFFER] and seen["charged_bytes"] == [BUFFER]
    assert seen["uncharged_pinned_bytes"] == [0] and seen["account"] == [account]
    # Its unmap: nothing left anywhere.
    assert unmapped["after"] == took["before"]
    assert unmapped["vfiomond"]["dma_mapped_bytes"] == [0] and unmapped["vfiomond"]["charged_bytes"] == [0]
    assert scrape.one("vfiomond_iommufd_change_process_total") == len(handovers(run))


def test_change_process_in_none_mode_moves_the_mapped_bytes_but_the_kernel_moves_no_pinned_vm(run):
    """As root (CAP_IPC_LOCK: account mode NONE) the kernel charges nothing on the
    change (need_charge_update) but still makes the new process the pages' owner
    (change_mm, ioas.c): /proc shows the mapper's VmPin kept after the handover and
    after the unmap, and the new process's pinned_vm taken below zero by the unmap.  vfiomond's mapped bytes
    follow the context's owner; its pin series follow the kernel's charges, and its
    pinned_vm series shows the underflow."""
    [h] = [h for h in handovers(run) if h["account"] == "none"]
    took, unmapped = h["receiver"]["took"], h["receiver"]["unmapped"]
    assert h["device_read_the_file"] is True and h["receiver"]["exit"] == 0
    kib = BUFFER // 1024
    assert h["handed_over"]["VmPin_kib"] - h["before"]["VmPin_kib"] == kib  # kept by the mapper
    assert h["after"]["VmPin_kib"] - h["before"]["VmPin_kib"] == kib  # ... even after the unmap
    assert took["after"]["VmPin_kib"] == took["before"]["VmPin_kib"]  # nothing arrived
    # pinned_vm (pages) below zero, shifted to KiB as an unsigned long: 2^64 - 4096.
    assert unmapped["after"]["VmPin_kib"] == (took["before"]["VmPin_kib"] - kib) % (1 << 64)
    assert h["vfiomond_handed_over"]["dma_mapped_bytes"] == [0]
    assert took["vfiomond"]["dma_mapped_bytes"] == [BUFFER] and took["vfiomond"]["charged_bytes"] == [0]
    assert unmapped["vfiomond"]["dma_mapped_bytes"] == [0] and unmapped["vfiomond"]["uncharged_pinned_bytes"] == [0]
    # vfiomond reads that VmPin back as the negative it is (VfiomondPinAccountingBelowZero).
    assert unmapped["vfiomond"]["pinned_vm_bytes"] == [-BUFFER]


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
