"""QEMU as the VFIO user (scenario vmm): vfiomond's numbers against QEMU's own account.

QEMU's account is its trace of its VFIO DMA maps and unmaps (vfio_listener_region_add_ram /
_del, iommufd_backend_map_dma / _unmap_dma), less the maps it reported failed; the
kernel's is /proc/PID/status and /proc/PID/limits of the QEMU process; the devices' are
the BAR sizes QEMU found when qtest (in the guest's place) sized and assigned them.
Debian 12 runs QEMU 7.2 and Debian 13 QEMU 10.0 on the legacy container (type1); the
iommufd suite runs Debian 13's QEMU on both backends.
"""

import pytest

from test_lab import PIN_MISMATCH_ID, SUITES, ZERO_PAGE_PINS, Scrape, boot, journal_entries

# (scenario, Prometheus) by suite: what tests/lab/conftest.py schedules.  DPDK shares the
# distributions' boots (tests/lab/test_dpdk_lab.py); vmm is last, its held VM keeps the devices.
LAB_BOOT = {"bookworm": ("dpdk+vmm", False), "trixie": ("dpdk+vmm", False), "iommufd": ("vmm", False)}
VMM_SUITES = [s for s in SUITES if s in LAB_BOOT]
EDU, IVSHMEM = "hostdev0", "hostdev1"
MIB = 1 << 20
PAGE = 4096  # the lab guest's (x86_64)
ZERO_PAGE_PIN_ID = "0179e5ffcd3b48f6a3e76e619fe9d7c7"


def client_run(suite, name):
    """Scenario ``name`` of the suite's LAB_BOOT boot."""
    scenario, prometheus = LAB_BOOT[suite]
    return boot(suite, scenario, prometheus).part(name)


def ok_summary(run):
    assert run.scenario.get("ok") is True, run.scenario
    return run.scenario


@pytest.fixture(scope="module", params=VMM_SUITES)
def vmm_run(request):
    return client_run(request.param, "vmm")


@pytest.fixture(scope="module")
def summary(vmm_run):
    return ok_summary(vmm_run)


def runs(summary, ended=False):
    """The scenario's QEMU runs; ended: only those that exited (not the held one)."""
    return [r for r in summary["runs"].values() if not (ended and r.get("held"))]


def series(view, name, **labels):
    """Values of vfiomond's series ``name`` in a scenario view, with these labels."""
    return [value for sample_labels, value in view["series"].get(name, [])
            if all(sample_labels.get(k) == v for k, v in labels.items())]


def one(view, name, **labels):
    values = series(view, name, **labels)
    assert len(values) == 1, (name, labels, view["series"].get(name))
    return values[0]


def test_every_run_happened(vmm_run, summary):
    names = set(summary["runs"])
    assert {"type1-ram", "type1-hugetlb", "held"} <= names
    if vmm_run.suite == "iommufd":
        assert summary["iommufd"] == "yes"
        assert "iommufd-memfd" in names
    for r in runs(summary, ended=True):
        assert r["exit"] == (-9 if r["run"] == "type1-hugetlb" else 0), r["stderr"]


def test_process_series_name_the_vm(summary):
    for r in runs(summary):
        view = r["vfiomond_running"]
        assert view["settled"], r["run"]
        for labels, _ in view["series"]["vfiomond_process_locked_vm_bytes"]:
            assert labels["vm"] == "lab-vm" and labels["comm"] == "qemu-system-x86"


def test_dma_mapped_bytes_equal_qemus_account(summary):
    for r in runs(summary):
        acct = r["account_running"]
        if r["backend"] == "type1":
            assert acct["failed"] == [], r["run"]
        else:
            # iommufd cannot map a VFIO BAR (VM_PFNMAP) for P2P: QEMU says so and goes on.
            bars = {(bar["address"], bar["size"]) for bars in r["bars"].values() for bar in bars}
            page = lambda size: max(size, PAGE)  # noqa: E731  (QEMU maps a sub-page BAR's page)
            assert {(iova, size) for iova, size, _ in acct["failed"]} == {(a, page(s)) for a, s in bars}
        live = acct["mapped_bytes"] - acct["unmapped_bytes"]
        assert one(r["vfiomond_running"], "vfiomond_process_dma_mapped_bytes", backend=r["backend"]) == live, r["run"]
        # Bytes mapped since the process started: every successful map, never less.
        assert one(r["vfiomond_running"], "vfiomond_process_dma_map_bytes_total",
                   backend=r["backend"]) == acct["mapped_bytes"], r["run"]
        assert one(r["vfiomond_running"], "vfiomond_process_dma_map_seconds_total", backend=r["backend"]) > 0


def test_host_map_and_unmap_totals_equal_qemus_account(summary):
    for r in runs(summary, ended=True):
        acct = r["account_final"]
        errors = r["totals_after"]["vfiomond_dma_map_errors_total"] - r["totals_before"]["vfiomond_dma_map_errors_total"]
        assert errors == len(acct["failed"]), r["run"]
        mapped = r["totals_after"]["vfiomond_dma_map_bytes_total"] - r["totals_before"]["vfiomond_dma_map_bytes_total"]
        assert mapped == acct["mapped_bytes"], r["run"]
        unmapped = (r["totals_after"]["vfiomond_dma_unmap_bytes_total"]
                    - r["totals_before"]["vfiomond_dma_unmap_bytes_total"])
        assert unmapped == acct["unmapped_bytes"], r["run"]


def test_locked_vm_and_limit_equal_proc(summary):
    for r in runs(summary):
        view, proc = r["vfiomond_running"], r["proc"]
        assert one(view, "vfiomond_process_locked_vm_bytes") == proc["VmLck"]
        assert one(view, "vfiomond_process_memlock_limit_bytes") == proc["memlock_limit"] == r["memlock_limit_set"]
        # Guest RAM in one DMA address space (libvirt's rule adds 1 GiB on top).
        assert one(view, "vfiomond_process_memlock_required_bytes") == r["ram_bytes"]
        if r["backend"] == "type1":
            # type1 charges the mm: the guest RAM and ROM QEMU maps (not the zero page), what VmLck shows.
            assert one(view, "vfiomond_process_charged_bytes", backend="type1") == proc["VmLck"] > 0
        # Peer BARs mapped for P2P are never charged by design: not a gap.  The zero page
        # pinned for QEMU's read-only ROM maps on 6.1 is (test_rom_maps_pin_the_zero_page_on_6_1).
        zero = view["totals"]["vfiomond_zero_page_pins_total"] - r["totals_before"]["vfiomond_zero_page_pins_total"]
        assert one(view, "vfiomond_process_uncharged_pinned_bytes", backend=r["backend"]) == zero * PAGE, r["run"]


def test_bar_faults_on_the_devices_and_regions_qemu_touched(summary):
    for r in runs(summary):
        before, after = r["bar_faults_before"], r["vfiomond_running"]["bar_faults"]
        grown = {key for key, n in after.items() if n > before.get(key, 0)}
        touched = {"%s bar%d" % (r["devices"][dev], bar["index"]) for dev, bars in r["bars"].items() for bar in bars}
        assert grown == touched, r["run"]


def test_device_holders_name_qemu(summary):
    for r in runs(summary):
        via = "cdev" if r["backend"] == "iommufd" else "group"
        holders = r["vfiomond_running"]["series"]["vfiomond_device_holder_info"]
        assert sorted((labels["device"], labels["via"], labels["vm"]) for labels, _ in holders) == sorted(
            (bdf, via, "lab-vm") for bdf in r["devices"].values()), r["run"]


def test_hot_unplug_and_plug_follow_qemu(summary):
    r = summary["runs"]["type1-ram"]
    edu = r["devices"][EDU]
    unplugged, replugged = r["vfiomond_unplugged"], r["vfiomond_replugged"]
    assert [labels["device"] for labels, _ in unplugged["series"]["vfiomond_device_holder_info"]] == [r["devices"][IVSHMEM]]
    assert edu in [labels["device"] for labels, _ in replugged["series"]["vfiomond_device_holder_info"]]
    for view, acct in ((unplugged, r["account_unplugged"]), (replugged, r["account_replugged"])):
        live = acct["mapped_bytes"] - acct["unmapped_bytes"]
        assert one(view, "vfiomond_process_dma_mapped_bytes", backend="type1") == live
    # QEMU unmapped the edu's 1 MiB BAR0 (mapped for P2P) with the device, and mapped it again.
    assert r["account_unplugged"]["unmapped_bytes"] - r["account_running"]["unmapped_bytes"] == 1 * MIB
    assert r["account_replugged"]["mapped_bytes"] - r["account_unplugged"]["mapped_bytes"] == 1 * MIB


def test_series_vanish_after_exit_and_sigkill(summary):
    for r in runs(summary, ended=True):
        assert r["vfiomond_after_exit"]["settled"], r["run"]
        assert r["vfiomond_after_exit"]["series"] == {}, r["run"]


def test_nothing_lost(summary):
    for r in runs(summary, ended=True):
        name = "vfiomond_events_lost_total"
        assert r["totals_after"][name] == r["totals_before"][name], r["run"]


def in_rom(r, iova):
    return any(start <= iova <= end for start, end in r["roms"])


def test_rom_maps_pin_the_zero_page_on_6_1(vmm_run, summary):
    """QEMU maps its ROMs (pc.bios, isa-bios, pc.rom) for DMA read-only before it loads
    them.  6.1 pins the shared zero page for a read-only long-term pin of untouched
    memory, and QEMU's later write to the BIOS ROM gets a copy: the IOMMU keeps mapping
    the zero page there (fixed in 6.2 by "reliable R/O long-term pinning").  vfiomond
    must say so for the ROMs and for nothing else, and stay quiet on 6.12."""
    zero_pins = journal_entries(vmm_run, ZERO_PAGE_PIN_ID)
    mismatches = journal_entries(vmm_run, PIN_MISMATCH_ID)
    qemu = {str(r["pid"]): r for r in runs(summary)}
    zero_pins = [e for e in zero_pins if e["PID"] in qemu]
    mismatches = [e for e in mismatches if e["PID"] in qemu]
    if not ZERO_PAGE_PINS[vmm_run.suite]:
        assert zero_pins == [] and mismatches == []
        for r in runs(summary):  # and no sampled page diverged at a pass
            assert r["vfiomond_running"]["totals"]["vfiomond_pin_mismatches_total"] == r["totals_before"][
                "vfiomond_pin_mismatches_total"], r["run"]
        return
    assert zero_pins and mismatches
    for e in zero_pins + mismatches:
        assert in_rom(qemu[e["PID"]], int(e["IOVA"], 16)), e["MESSAGE"]
    for e in mismatches:
        assert e["ZERO_PAGE"] == "1" and e["DETECTED_BY"] == "write_fault", e["MESSAGE"]


def test_held_vm_in_the_hosts_scrape(vmm_run, summary):
    held = summary["runs"]["held"]
    scrape = Scrape(vmm_run.metrics)
    who = {"pid": str(held["pid"]), "comm": "qemu-system-x86", "vm": "lab-vm"}
    acct = held["account_running"]
    assert scrape.one("vfiomond_process_dma_mapped_bytes", backend="type1", **who) == (
        acct["mapped_bytes"] - acct["unmapped_bytes"])
    assert scrape.total("vfiomond_events_lost_total") == 0
