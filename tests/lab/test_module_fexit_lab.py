"""probes.module_trampolines on real kernels: the module-fexit scenario starts a second
vfiomond with the vfio modules' hooks as fentry/fexit programs (where the kernel has
module BTF and BCC is 0.28+; kprobes elsewhere, said in its log), and a child maps 8 MiB
through type1 and reads edu's BAR0 page by page.  The second daemon's numbers must be
the kernel's: the child's VmLck, the bytes it mapped, the faults it took.  It runs with
pins.verify = false, which leaves the kernel's table of live mappings out."""

import os

import pytest

from test_lab import DISTRO_SUITES as SUITES, SHARED_BOOT, Scrape, boot

LAB_BOOT = (SHARED_BOOT, False)  # (scenario, Prometheus): what tests/lab/conftest.py schedules
# Module functions as trampolines: BCC 0.28+ (MODULE_KFUNC_PROBE) on a kernel with
# module BTF (5.11+).  Debian 11 (5.10, BCC 0.18) and 12 (BCC 0.26) keep kprobes.
MODULE_TRAMPOLINES = {"bullseye": False, "bookworm": False, "trixie": True, "sid": True}
MODULE_PROBES = ("bar_fault", "pin_pages", "unpin_pages", "locked_vm_charge")


@pytest.fixture(scope="module", params=SUITES)
def part(request):
    part = boot(request.param, *LAB_BOOT).part("module-fexit")
    assert part.scenario.get("ok") is True, part.scenario
    return part


@pytest.fixture(scope="module")
def scrapes(part):
    return {when: Scrape(part.scenario[when]) for when in ("before", "during", "after")}


def methods(scrape, probe):
    found = [s.labels["methods"] for s in scrape.samples if s.name == "vfiomond_probe_info" and s.labels["probe"] == probe]
    assert len(found) == 1, (probe, found)
    return found[0].split(",")


def test_the_vfio_modules_hooks_are_trampolines_where_bcc_and_btf_allow(part, scrapes):
    after = scrapes["after"]
    if MODULE_TRAMPOLINES[part.suite]:
        assert set(methods(after, "bar_fault")) == {"fentry+fexit"}
        assert methods(after, "pin_pages") == ["fexit"]  # one program: the entry's body, then the return's
        assert methods(after, "unpin_pages") == ["fentry"]
        assert methods(after, "locked_vm_charge") == ["fexit"]  # mm_lock_acct: npage and result at once
    else:
        for probe in MODULE_PROBES:
            assert not [m for m in methods(after, probe)[:1] if "fentry" in m or "fexit" in m], probe
        with open(os.path.join(part.out, "module-fexit-vfiomond.log")) as f:
            assert "kprobes on module functions" in f.read()


def test_check_with_the_configuration_says_what_the_daemon_attached(part, scrapes):
    """``vfiomond check --config`` (which attaches nothing) follows the same rule."""
    after = scrapes["after"]
    for probe in MODULE_PROBES:
        if probe == "bar_fault":  # its page_fault hook goes once huge_fault is seen nested (6.12+)
            assert methods(after, probe)[0] == part.scenario["check"][probe].split(",")[0]
            continue
        assert ",".join(methods(after, probe)) == part.scenario["check"][probe], probe


def test_its_accounting_is_the_kernels(part, scrapes):
    child, during = part.scenario["child"], scrapes["during"]
    who = {"pid": str(child["pid"]), "backend": "type1"}
    assert child["vm_lck"] == child["mapped"]  # touched memory: every page charged
    assert during.one("vfiomond_process_charged_bytes", **who) == child["vm_lck"]
    assert during.one("vfiomond_process_uncharged_pinned_bytes", **who) == 0
    assert during.one("vfiomond_process_dma_mapped_bytes", **who) == child["mapped"]
    assert part.scenario["child_end"]["unmapped"] == child["mapped"]
    pages = child["mapped"] // child["page"]
    before, after = scrapes["before"], scrapes["after"]
    for name in ("vfiomond_pinned_pages_total", "vfiomond_unpinned_pages_total",
                 "vfiomond_locked_vm_charged_pages_total", "vfiomond_locked_vm_uncharged_pages_total"):
        assert after.total(name, backend="type1") - before.total(name, backend="type1") == pages, name


def test_it_counts_every_bar_fault_the_child_took(part, scrapes):
    """The child reads the BAR twice (a memory-decode toggle between: vfio zaps the
    mapping), each read faulting once per page from 6.12 (huge_fault), once for the
    whole vma before (the fault handler remaps all of it).  The kernel's
    page_fault_user tracepoint, filtered to the child and the BAR's addresses, is
    the count the daemon's must equal.  A PMD-sized try that the handler answers
    VM_FAULT_FALLBACK (result="fallback", seen twice in one trixie boot) is a call of
    the handler within the same fault, counted apart: the PTE-sized call follows."""
    child = part.scenario["child"]
    assert child["bar_reads"] <= child["bar_faults"] <= child["bar_reads"] * child["bar_pages"]
    device = part.scenario["device"]

    def handled(scrape):
        name = "vfiomond_bar_fault_duration_seconds_count"
        return scrape.total(name, device=device) - scrape.total(name, device=device, result="fallback")

    assert handled(scrapes["after"]) - handled(scrapes["before"]) == child["bar_faults"]


def test_without_verification_the_table_of_live_mappings_is_left_out(part, scrapes):
    """The second daemon runs with pins.verify = false: the keeper of the kernel's table
    of live mappings is left out (no series, so no VfiomondProbeNotAttached), and the
    accounting above is still the kernel's."""
    after = scrapes["after"]
    probes = {s.labels["probe"] for s in after.samples if s.name == "vfiomond_probe_attached"}
    assert "pin_pages" in probes and "pin_samples" not in probes
    with open(os.path.join(part.out, "module-fexit-vfiomond.log")) as f:
        assert "the kernel's table of live mappings is not kept" in f.read()


def test_nothing_lost_and_a_clean_exit(part, scrapes):
    assert not {k: v for k, v in scrapes["after"].losses().items() if v}
    assert part.scenario["daemon_exit"] == 0
    with open(os.path.join(part.out, "module-fexit-vfiomond.log")) as f:
        assert "Traceback" not in f.read()
