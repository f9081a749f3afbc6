"""Scenario "hotplug" on both guest kernels: vfiomond starts before the vfio
modules; they load, the devices bind, the standard workload runs; a device is
unbound and bound again; the modules are removed and loaded again.  One daemon
process throughout (tests/lab/scenarios/hotplug.py saves a scrape per phase).
"""

import os

import pytest

from test_lab import EXPECTED_SYMBOLS, DISTRO_SUITES as SUITES, MIB, PAGE, PAGE_FAULT_HOOK, Scrape, boot, coverage_table

# Kernel features marked by a module's symbols (vfio-pci's, iommufd's): their probes are
# left out (no vfiomond_probe_attached series) until the module loads, and again once it goes.
MODULE_FEATURES = {"vfio_bar_remap", "bar_dmabuf", "iommufd"}


def vmlinux_probes(suite):
    """Probes whose every symbol is in vmlinux on that kernel and that need nothing a
    vfio module tells: attached before any vfio module loads (resets, iommu_faults,
    pin_write_faults, vfio_fork; remap_pfn_range waits for vfio-pci's symbols to say
    whether VFIO calls it)."""
    module_facts = {"VFIO_PCI_MMAP_OPS", "VFIO_PGOFF_IS_PFN"}  # read from vfio_pci's symbols
    return {name for name, sel in coverage_table.selection(suite).items()
            if sel.available and all(sym.module == "" for _, sym in sel.hooks)
            and not module_facts & set(sel.variant.requires) and sel.probe.feature not in MODULE_FEATURES}


REMOVED = {"vfio_pci", "vfio_pci_core", "vfio_iommu_type1"}  # what the hotplug scenario unloads


def probes_outside(suite, removed):
    """Probes with no hook in a module of ``removed``: still attached once those are
    unloaded (the vfio core module stays: vfio_open)."""
    module_facts = {"VFIO_PCI_MMAP_OPS", "VFIO_PGOFF_IS_PFN"}
    return {name for name, sel in coverage_table.selection(suite).items()
            if sel.available and not any(sym.module in removed for _, sym in sel.hooks)
            and not module_facts & set(sel.variant.requires) and sel.probe.feature not in MODULE_FEATURES}


def module_probes(suite):
    return set(EXPECTED_SYMBOLS[suite]) - vmlinux_probes(suite)


LAB_BOOT = ("hotplug", False)  # (scenario, Prometheus): what tests/lab/conftest.py schedules


@pytest.fixture(scope="module", params=SUITES)
def run(request):
    return boot(request.param, *LAB_BOOT)


@pytest.fixture(scope="module")
def phase(run):
    def read(name):
        with open(os.path.join(run.out, "scrapes", name + ".prom")) as f:
            return Scrape(f.read())

    return read


def devices(scrape):
    return {s.labels["device"]: s.labels for s in scrape.samples if s.name == "vfiomond_device_info"}


def fault_devices(scrape):
    return {dict(labels)["device"] for labels in scrape.series("vfiomond_bar_fault_duration_seconds")}


def attached(scrape):
    return {s.labels["probe"] for s in scrape.samples if s.name == "vfiomond_probe_attached" and s.value == 1}


def test_every_phase_ran_in_one_daemon(run):
    assert run.scenario.get("ok") is True, run.scenario
    assert run.scenario["daemon_alive"] is True
    assert run.daemon_rc == 0
    with open(os.path.join(run.out, "vfiomond.log")) as f:
        log = f.read()
    assert log.count("serving /metrics") == 1
    assert "Traceback" not in log


def test_before_the_modules_only_vmlinux_probes(run, phase):
    before = phase("before")
    assert attached(before) == vmlinux_probes(run.suite)
    assert devices(before) == {}
    selection = coverage_table.selection(run.suite)
    for probe in module_probes(run.suite):
        left_out = selection[probe].probe.feature in MODULE_FEATURES  # no series at all
        assert before.values("vfiomond_probe_attached", probe=probe) == ([] if left_out else [0]), probe


def test_loading_the_modules_attaches_what_the_kernel_offers(run, phase):
    loaded = phase("loaded")
    for probe, symbols in EXPECTED_SYMBOLS[run.suite].items():
        # bar_fault's page_fault hook goes once a fault shows it calling huge_fault
        found = [s for s in (symbols, symbols.replace(PAGE_FAULT_HOOK, ""))
                 if loaded.values("vfiomond_probe_info", probe=probe, symbols=s) == [1]]
        assert found, probe


def test_the_inventory_names_the_bound_devices(run, phase):
    found = devices(phase("loaded"))
    assert set(found) == {d["device"] for d in run.scenario["devices"]}
    for d in run.scenario["devices"]:
        labels = found[d["device"]]
        assert labels["vendor_id"] == d["vendor_id"][2:] and labels["device_id"] == d["device_id"][2:]
        assert labels["iommu_group"] == d["iommu_group"] and labels["driver"] == "vfio-pci"
    ivshmem = next(d for d in run.scenario["devices"] if d["name"] == "ivshmem")
    assert found[ivshmem["device"]]["vendor"] == "Red Hat, Inc."  # udev's hardware database


def test_the_workload_is_measured_after_a_late_load(run, phase):
    s = phase("workload")
    assert s.one("vfiomond_dma_map_bytes_total", backend="type1") == 16 * MIB
    assert s.one("vfiomond_dma_unmap_bytes_total", backend="type1") == 16 * MIB
    assert s.one("vfiomond_pinned_pages_total", backend="type1") == 16 * MIB // PAGE
    assert fault_devices(s) == {d["device"] for d in run.scenario["devices"]}


def test_users_follow_the_processes(run, phase):
    edu = next(d["device"] for d in run.scenario["devices"] if d["name"] == "edu")
    users = {s.labels["device"]: s.value for s in phase("in-use").samples if s.name == "vfiomond_device_users"}
    assert users[edu] == 1  # the scenario held edu's group open
    assert set(users.values()) == {0.0, 1.0} and sum(users.values()) == 1
    # closed again before the next scrape
    assert {s.value for s in phase("workload").samples if s.name == "vfiomond_device_users"} == {0.0}


def test_an_unbound_device_leaves_no_series(run, phase):
    ivshmem = next(d["device"] for d in run.scenario["devices"] if d["name"] == "ivshmem")
    edu = next(d["device"] for d in run.scenario["devices"] if d["name"] == "edu")
    unbound = phase("unbound")
    assert set(devices(unbound)) == {edu}
    assert fault_devices(unbound) == {edu}
    assert ivshmem not in {s.labels.get("device") for s in unbound.samples}
    rebound = phase("rebound")
    assert set(devices(rebound)) == {edu, ivshmem}
    assert ivshmem in fault_devices(rebound)


def test_removing_the_modules_detaches_their_probes(run, phase):
    unloaded = phase("unloaded")
    assert attached(unloaded) == probes_outside(run.suite, REMOVED)
    assert devices(unloaded) == {}
    assert set(unloaded.losses().values()) == {0}, unloaded.losses()


def test_loading_again_attaches_again_and_measures(run, phase):
    # While type1's probes are detached its series are not exported; the
    # counters live on in the BPF maps and continue after the reload.
    before, reloaded = phase("rebound"), phase("reloaded")
    assert not phase("unloaded").values("vfiomond_dma_map_bytes_total")
    assert attached(reloaded) == set(EXPECTED_SYMBOLS[run.suite])
    mapped = run.scenario["reload_mapped_bytes"]
    assert run.scenario["reload_unmapped_bytes"] == mapped
    for name, delta in (("vfiomond_dma_map_bytes_total", mapped), ("vfiomond_pinned_pages_total", mapped // PAGE)):
        assert reloaded.one(name, backend="type1") - before.one(name, backend="type1") == delta, name
    edu = next(d["device"] for d in run.scenario["devices"] if d["name"] == "edu")
    assert edu in fault_devices(reloaded)
    assert set(reloaded.values("vfiomond_scrape_collector_success")) == {1.0}


PROBE_LOST_ID = "286ab4a7fb4b451bbf7ab26f61586336"


def test_probes_lost_to_rmmod_are_alerted(run):
    from test_lab import journal_entries

    lost = journal_entries(run, PROBE_LOST_ID)
    # Each probe of the vfio modules detached once (rmmod); nothing else was lost.  A probe
    # of a feature the modules marked (remap_pfn_range up to 6.9) is left out, logged, not
    # alerted, as iommufd's are when its module goes.
    selection = coverage_table.selection(run.suite)
    expected = {p for p in set(EXPECTED_SYMBOLS[run.suite]) - probes_outside(run.suite, REMOVED)
                if selection[p].probe.feature not in MODULE_FEATURES}
    assert sorted(e["PROBE"] for e in lost) == sorted(expected)
    # Gone with the modules: their symbols, or a fact read from them (pat_untrack: vfio_pci_mmap_ops).
    assert all(e["PRIORITY"] == "4" and ("not in kallsyms" in e["DETAIL"] or "unknown kernel fact" in e["DETAIL"])
               for e in lost), lost
