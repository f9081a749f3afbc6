"""Probe selection from kallsyms text, on the symbol sets the lab's kernels showed."""

from vfiomond.kernel import Kallsyms
from vfiomond.probes import PROBES, kernel_facts, select, wanted_symbols

# The relevant lines of /proc/kallsyms in the lab guests (addresses made up;
# names, types and modules as seen there).
PCI_6_X = """\
ffffffff81200010 T dmar_fault
ffffffff81100010 T __pci_reset_function_locked
ffffffff81100020 t pci_af_flr
ffffffff81100030 T pci_dev_acpi_reset
ffffffff81100040 T pci_dev_specific_reset
ffffffff81100050 t pci_pm_reset
ffffffff81100060 T pci_reset_bus
ffffffff81100070 t pci_reset_bus_function
ffffffff81100080 T pci_reset_function
ffffffff81100090 T pci_try_reset_function
ffffffff811000a0 T pcie_flr
ffffffff811000b0 T pcie_reset_flr
"""

DEBIAN_6_1 = """\
ffffffff81000008 t do_wp_page
ffffffff81000010 T wake_up_new_task
ffffffff81000010 T __account_locked_vm
ffffffff81000020 T remap_pfn_range
ffffffff81000030 T untrack_pfn
ffffffff82000040 D huge_zero_pfn
ffffffffc0000100 r vfio_pci_mmap_ops\t[vfio_pci_core]
ffffffffc0000200 t vfio_pci_mmap_fault\t[vfio_pci_core]
ffffffffc0000300 t vfio_pci_mmap_open\t[vfio_pci_core]
ffffffffc0000400 t vfio_iommu_type1_ioctl\t[vfio_iommu_type1]
ffffffffc0000500 t vfio_lock_acct.part.0\t[vfio_iommu_type1]
ffffffffc0000600 t vfio_pin_pages_remote\t[vfio_iommu_type1]
ffffffffc0000700 t vfio_pin_pages_remote.cold\t[vfio_iommu_type1]
ffffffffc0000800 t vfio_unpin_pages_remote\t[vfio_iommu_type1]
ffffffffc0000900 t vfio_remove_dma\t[vfio_iommu_type1]
ffffffffc0000a00 t vfio_group_fops_open\t[vfio]
ffffffffc0000a10 t vfio_fops_open\t[vfio]
""" + PCI_6_X

DEBIAN_6_12 = """\
ffffffff81000008 t do_wp_page
ffffffff81000010 T wake_up_new_task
ffffffff81000010 T __account_locked_vm
ffffffff81000020 T remap_pfn_range
ffffffff81000030 T untrack_pfn
ffffffff82000040 D huge_zero_pfn
ffffffffc0000100 r vfio_pci_mmap_ops\t[vfio_pci_core]
ffffffffc0000200 t vfio_pci_mmap_huge_fault\t[vfio_pci_core]
ffffffffc0000210 t vfio_pci_mmap_page_fault\t[vfio_pci_core]
ffffffffc0000400 t vfio_iommu_type1_ioctl\t[vfio_iommu_type1]
ffffffffc0000410 t vfio_iommu_type1_ioctl.cold\t[vfio_iommu_type1]
ffffffffc0000500 t vfio_lock_acct.part.0\t[vfio_iommu_type1]
ffffffffc0000600 t vfio_pin_pages_remote\t[vfio_iommu_type1]
ffffffffc0000800 t vfio_unpin_pages_remote\t[vfio_iommu_type1]
ffffffffc0000900 t vfio_remove_dma\t[vfio_iommu_type1]
ffffffffc0000a00 t vfio_group_fops_open\t[vfio]
ffffffffc0000a10 t vfio_fops_open\t[vfio]
ffffffffc0000a20 t vfio_device_fops_cdev_open\t[vfio]
""" + PCI_6_X

# 6.16+ shape: pfnmap_untrack replaces untrack_pfn;
# vfio_dma_do_map/unmap not inlined.
NEWER = DEBIAN_6_12.replace("T untrack_pfn", "T pfnmap_untrack") + (
    "ffffffffc0000900 t vfio_dma_do_map\t[vfio_iommu_type1]\n"
    "ffffffffc0000910 t vfio_dma_do_unmap\t[vfio_iommu_type1]\n"
)


def selection(text, zero_pfn=0x1234):
    syms = Kallsyms.parse(text.splitlines(), wanted_symbols())
    facts = kernel_facts(syms)
    facts["HPAGE_PMD_NR"] = 512  # learned at run time from sysfs
    if zero_pfn:
        facts["ZERO_PFN"] = zero_pfn  # learned at run time from pagemap
    return {s.probe.name: s for s in select(syms, facts)}, facts


def symbols(sel):
    return ",".join(sym.name for _, sym in sel.hooks)


def test_debian_6_1():
    sel, facts = selection(DEBIAN_6_1)
    assert facts == {"VFIO_PGOFF_IS_PFN": 1, "VFIO_PCI_MMAP_OPS": 0xFFFFFFFFC0000100, "PCIE_RESET_FLR": 1,
                     "HUGE_ZERO_PFN_ADDR": 0xFFFFFFFF82000040, "HPAGE_PMD_NR": 512, "ZERO_PFN": 0x1234,
                     "FEATURE_VFIO_BAR_REMAP": 1, "FEATURE_PAT_UNTRACK_VMA": 1}
    assert all(s.available for s in sel.values())
    assert symbols(sel["bar_fault"]) == "vfio_pci_mmap_fault"
    assert symbols(sel["dma_map"]) == "vfio_iommu_type1_ioctl"
    assert sel["dma_map"].variant.sets_facts == ("TYPE1_IOCTL_MAP",)
    assert sel["dma_unmap"].variant.sets_facts == ("TYPE1_IOCTL_UNMAP",)
    assert symbols(sel["locked_vm_charge"]) == "vfio_lock_acct.part.0,__account_locked_vm"
    assert symbols(sel["pat_untrack"]) == "untrack_pfn"


def test_debian_6_12():
    sel, facts = selection(DEBIAN_6_12)
    assert "VFIO_PGOFF_IS_PFN" not in facts  # 6.10+: vm_pgoff is the file offset
    assert all(s.available for s in sel.values())
    # 6.10+: VFIO inserts PFNs per fault and never calls remap_pfn_range: left out.
    assert "FEATURE_VFIO_BAR_REMAP" not in facts and "remap_pfn_range" not in sel
    assert symbols(sel["pat_untrack"]) == "untrack_pfn"
    assert symbols(sel["bar_fault"]) == "vfio_pci_mmap_huge_fault,vfio_pci_mmap_page_fault"


def test_resets_hook_pcie_reset_flr_and_not_the_pcie_flr_it_calls():
    sel, _ = selection(DEBIAN_6_1)
    assert symbols(sel["resets"]) == ("pci_try_reset_function,__pci_reset_function_locked,pci_reset_function,"
                                      "pci_reset_bus,pci_dev_specific_reset,pci_dev_acpi_reset,pcie_reset_flr,"
                                      "pci_af_flr,pci_pm_reset,pci_reset_bus_function")


def test_resets_up_to_5_14_hook_pcie_flr_and_need_no_method_hook():
    """5.10: FLR is pcie_flr(dev); static methods GCC inlined are simply not hooked."""
    old = "\n".join(line for line in DEBIAN_6_1.splitlines()
                    if not line.endswith(("pcie_reset_flr", "pci_pm_reset", "pci_reset_bus_function", "acpi_reset")))
    sel, facts = selection(old)
    assert "PCIE_RESET_FLR" not in facts
    assert symbols(sel["resets"]) == ("pci_try_reset_function,__pci_reset_function_locked,pci_reset_function,"
                                      "pci_reset_bus,pci_dev_specific_reset,pcie_flr,pci_af_flr")
    bare = "\n".join(line for line in old.splitlines() if not line.endswith(("pcie_flr", "pci_af_flr", "specific_reset")))
    assert selection(bare)[0]["resets"].available


def test_newer_kernel_prefers_direct_symbols():
    sel, facts = selection(NEWER)
    # 6.16+: pfnmap_untrack has no vma to tell a VFIO BAR by: PAT untracking is left out.
    assert "FEATURE_PAT_UNTRACK_VMA" not in facts and "pat_untrack" not in sel
    assert symbols(sel["dma_map"]) == "vfio_dma_do_map" and sel["dma_map"].variant.sets_facts == ()
    assert symbols(sel["dma_unmap"]) == "vfio_dma_do_unmap"


def test_huge_fault_without_page_fault_is_enough():
    sel, _ = selection(DEBIAN_6_12.replace("vfio_pci_mmap_page_fault", "something_else"))
    assert symbols(sel["bar_fault"]) == "vfio_pci_mmap_huge_fault"


def test_vfio_modules_not_loaded():
    sel, facts = selection("ffffffff81000010 T __account_locked_vm\nffffffff81000020 T remap_pfn_range\nffffffff81000030 T untrack_pfn\n", None)
    assert facts == {"HPAGE_PMD_NR": 512, "FEATURE_PAT_UNTRACK_VMA": 1}  # sysfs, and untrack_pfn
    # Whether VFIO calls remap_pfn_range is known from vfio-pci's symbols only.
    assert "remap_pfn_range" not in sel
    for name in ("bar_fault", "dma_map", "pin_pages", "locked_vm_charge"):
        assert not sel[name].available
        assert sel[name].reason.startswith("not in kallsyms: ")
    assert "vfio_pci_mmap_huge_fault" in sel["bar_fault"].reason and "vfio_pci_mmap_fault" in sel["bar_fault"].reason
    # untrack_pfn exists, but without vfio_pci_mmap_ops VFIO vmas cannot be recognised.
    assert not sel["pat_untrack"].available
    assert "unknown kernel fact: VFIO_PCI_MMAP_OPS" in sel["pat_untrack"].reason


def test_hidden_addresses_disable_the_vma_filter():
    hidden = "\n".join("0000000000000000" + line[16:] for line in DEBIAN_6_1.splitlines())
    sel, facts = selection(hidden)
    assert "VFIO_PCI_MMAP_OPS" not in facts
    assert not sel["pat_untrack"].available
    assert sel["bar_fault"].available


def test_zero_page_pins_need_the_zero_pfn():
    sel, _ = selection(DEBIAN_6_1, zero_pfn=None)
    assert sel["pin_pages"].available
    assert not sel["zero_page_pins"].available
    assert sel["zero_page_pins"].reason == "unknown kernel fact: ZERO_PFN"


def test_huge_zero_page_pins_need_the_kernels_huge_zero_pfn():
    """Without huge_zero_pfn in kallsyms (a kernel without CONFIG_KALLSYMS_ALL) the
    huge zero page is not recognised; the 4 KiB zero page still is."""
    sel, facts = selection(DEBIAN_6_1.replace("ffffffff82000040 D huge_zero_pfn\n", ""))
    assert "HUGE_ZERO_PFN_ADDR" not in facts
    assert sel["zero_page_pins"].available
    assert not sel["huge_zero_page_pins"].available
    assert sel["huge_zero_page_pins"].reason == "unknown kernel fact: HUGE_ZERO_PFN_ADDR"


def test_isra_copy_is_refused_where_arguments_are_read():
    text = DEBIAN_6_1.replace("t vfio_unpin_pages_remote\t", "t vfio_unpin_pages_remote.isra.0\t")
    sel, _ = selection(text)
    assert not sel["unpin_pages"].available  # it reads npage, which an .isra copy may move


def test_every_probe_has_a_unique_name_and_known_area():
    names = [p.name for p in PROBES]
    assert len(names) == len(set(names))
    assert {p.area for p in PROBES} == {"faults", "type1", "iommufd", "resets", "iommu_faults", "bar_dmabuf", "users"}


# Debian sid's 7.2.13 (GCC 16): vfio_lock_acct is inlined into vfio_pin_pages_remote,
# so its .part.0 copy sees only uncharges; mm_lock_acct sees every type1 charge, and
# its npage and result are the charge: no hook on __account_locked_vm.
SID_7_2 = NEWER + (
    "ffffffffc0000a00 t mm_lock_acct\t[vfio_iommu_type1]\n"
)


def test_mm_lock_acct_alone_is_the_charge_where_it_exists():
    sel, _ = selection(SID_7_2)
    assert symbols(sel["locked_vm_charge"]) == "mm_lock_acct"
    sel, _ = selection(SID_7_2.replace("mm_lock_acct", "mm_lock_acct.isra.0"))  # arguments GCC changed
    assert symbols(sel["locked_vm_charge"]) == "mm_lock_acct.isra.0,__account_locked_vm"
    sel, _ = selection(DEBIAN_6_1)  # no mm_lock_acct in this list: the older marker
    assert symbols(sel["locked_vm_charge"]) == "vfio_lock_acct.part.0,__account_locked_vm"


# The lab's 6.12 build with CONFIG_IOMMUFD=y (tests/lab/iommufd.config): iommufd
# built in, so its symbols carry no module.
IOMMUFD_6_12 = DEBIAN_6_12 + (
    "ffffffff81100000 T iommufd_ioas_map\n"
    "ffffffff81100100 T iommufd_ioas_unmap\n"
    "ffffffff81100200 T iopt_map_user_pages\n"
    "ffffffff81100300 T iopt_unmap_iova\n"
    "ffffffff81100400 T iopt_unmap_all\n"
    "ffffffff81100500 t do_update_pinned\n"
    "ffffffff81000600 T iommu_map\n"
    "ffffffff81100600 T iopt_area_unfill_domains\n"
    "ffffffff81100700 T iopt_table_remove_domain\n"
)


def test_iommufd_probes_are_left_out_without_iommufd():
    sel, facts = selection(DEBIAN_6_12)
    assert not any(name.startswith("iommufd_") for name in sel)
    assert "dma_map" in sel and "FEATURE_IOMMUFD" not in facts


def test_iommufd_probes_on_a_kernel_with_iommufd():
    sel, facts = selection(IOMMUFD_6_12)
    assert facts["FEATURE_IOMMUFD"] == 1
    assert symbols(sel["iommufd_dma_map"]) == "iopt_map_user_pages"
    assert symbols(sel["iommufd_dma_unmap"]) == "iopt_unmap_iova,iopt_unmap_all"
    assert symbols(sel["iommufd_pin_accounting"]) == "do_update_pinned"
    assert symbols(sel["iommufd_pin_samples"]) == \
        "iopt_map_user_pages,iommu_map,iopt_area_unfill_domains,iopt_table_remove_domain"
    sel, _ = selection(IOMMUFD_6_12.replace("t do_update_pinned", "t iopt_pages_update_pinned"))
    assert symbols(sel["iommufd_pin_accounting"]) == "iopt_pages_update_pinned"


def test_iommufd_map_file_and_change_process_are_hooked_where_the_kernel_has_them():
    """6.13+: IOMMU_IOAS_MAP_FILE and IOMMU_IOAS_CHANGE_PROCESS (optional hooks of the map probe)."""
    kernel_6_13 = IOMMUFD_6_12.replace("t do_update_pinned", "T iopt_pages_update_pinned") + (
        "ffffffff81100800 T iopt_map_file_pages\n"
        "ffffffff81100900 T iommufd_ioas_change_process\n")
    sel, _ = selection(kernel_6_13)
    assert symbols(sel["iommufd_dma_map"]) == \
        "iopt_map_user_pages,iopt_map_file_pages,iommufd_ioas_change_process"
    assert symbols(sel["iommufd_pin_samples"]) == \
        "iopt_map_user_pages,iopt_map_file_pages,iommu_map,iopt_area_unfill_domains,iopt_table_remove_domain"


def test_iommufd_pin_samples_need_iommu_map():
    sel, _ = selection(IOMMUFD_6_12.replace("T iommu_map\n", "T iommu_map_nosync\n"))
    assert not sel["iommufd_pin_samples"].available
    assert sel["iommufd_pin_samples"].reason == "not in kallsyms: iommu_map"
    assert sel["iommufd_dma_map"].available


def test_iommufd_present_but_a_symbol_moved_is_reported():
    sel, _ = selection(IOMMUFD_6_12.replace("t do_update_pinned", "t do_update_pinned.isra.0"))
    assert not sel["iommufd_pin_accounting"].available
    assert "do_update_pinned" in sel["iommufd_pin_accounting"].reason


def test_page_fault_hook_left_out_once_it_is_seen_calling_huge_fault():
    sel, facts = selection(DEBIAN_6_12)
    assert symbols(sel["bar_fault"]) == "vfio_pci_mmap_huge_fault,vfio_pci_mmap_page_fault"
    syms = Kallsyms.parse(DEBIAN_6_12.splitlines(), wanted_symbols())
    facts["BAR_FAULT_NESTED"] = 1  # learned at run time (Daemon.drop_redundant_fault_hook)
    sel = {s.probe.name: s for s in select(syms, facts)}
    assert symbols(sel["bar_fault"]) == "vfio_pci_mmap_huge_fault"
    assert symbols(sel["bar_fault"]) == symbols(selection(DEBIAN_6_12.replace(
        "ffffffffc0000210 t vfio_pci_mmap_page_fault\t[vfio_pci_core]\n", ""))[0]["bar_fault"])


def test_table_keepers_left_out_where_pin_verification_does_not_run():
    from vfiomond.config import Config
    from vfiomond.daemon import pins_verified, select_probes

    syms = Kallsyms.parse(DEBIAN_6_12.splitlines(), wanted_symbols())
    facts = dict(kernel_facts(syms), ZERO_PFN=0x1234)
    assert pins_verified(Config(), facts)
    verified = {s.probe.name for s in select_probes(syms, facts, pins_verified(Config(), facts))}
    assert "pin_samples" in verified
    for config, known in ((Config(pin_verify=False), facts),
                          (Config(), {k: v for k, v in facts.items() if k != "ZERO_PFN"})):
        assert not pins_verified(config, known)
        names = {s.probe.name for s in select_probes(syms, known, pins_verified(config, known))}
        # Only the keepers go: the pins, charges and write faults are counted as before.
        assert verified - names == {"pin_samples"}
        assert {"pin_pages", "locked_vm_charge", "pin_write_faults"} <= names


def test_a_reload_of_pins_verify_leaves_the_table_keepers_to_the_running_watch(monkeypatch):
    """pins.verify is read at start only: a module event after a reload that turned it
    off (or on) selects the keepers as the pin watch started with the daemon needs."""
    from types import SimpleNamespace

    from vfiomond import daemon as daemonmod
    from vfiomond.config import Config

    syms = Kallsyms.parse(DEBIAN_6_12.splitlines(), wanted_symbols())
    monkeypatch.setattr(daemonmod, "read_kernel", lambda extra=(): (syms, dict(kernel_facts(syms))))
    chosen = []

    def apply(selections, facts, disable, gone):
        chosen.append({s.probe.name for s in selections})
        return []

    program = SimpleNamespace(statuses=[], apply=apply)
    watch_advisories = SimpleNamespace(issues=[], evaluate=lambda syms: None)
    for pin_watch, reloaded in ((object(), Config(pin_verify=False)), (None, Config())):
        d = daemonmod.Daemon(Config(pin_verify=pin_watch is not None), program, {"ZERO_PFN": 0x1234},
                             watch_advisories, sink=None, pin_watch=pin_watch)
        d.config = reloaded  # as Daemon.reload leaves it
        d.reprobe(set())
        assert ("pin_samples" in chosen[-1]) == (pin_watch is not None)
