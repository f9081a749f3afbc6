"""The probe table: which kernel functions each probe hooks, per kernel shape.

Kernel differences live here, as data (each variant names the kernel functions it needs).  A probe
(the value of the ``probe`` label of ``vfiomond_probe_attached``) has variants in
order of preference; the first variant whose required hooks all resolve in
/proc/kallsyms is used.  Nothing here looks at the kernel version.
"""

from typing import Dict, List, NamedTuple, Optional, Sequence, Set, Tuple

from vfiomond.kernel import Kallsyms, Symbol


class Hook(NamedTuple):
    """A kprobe (``entry``) and/or kretprobe (``ret``) on the first of ``symbols`` found.

    ``reads_args``: the BPF function reads the call's arguments, so a GCC
    ``.isra``/``.constprop`` copy (whose arguments may differ) is not accepted;
    list such a copy explicitly in ``symbols`` when its arguments are known.

    ``trampoline``: the handlers also exist as ``<name>__body`` (bpf/*.c), so the
    hook can be a fentry/fexit pair where the kernel allows it (attach_method).

    ``fexit``: a handler that does the entry's and the return's work from the
    call's arguments and return value alone (the entry needs no time and nothing
    from before the call): as a trampoline the hook is that one fexit program, and
    no fentry program runs (bpfload.plan_trampolines); as kprobes, the pair.
    """

    symbols: Tuple[str, ...]
    entry: Optional[str] = None
    ret: Optional[str] = None
    reads_args: bool = True
    optional: bool = False
    unless: Optional[str] = None  # a kernel fact that makes this hook redundant: left out when known
    trampoline: bool = False
    fexit: Optional[str] = None


class Variant(NamedTuple):
    label: str  # what this variant measures, for logs and the coverage table
    hooks: Tuple[Hook, ...]
    requires: Tuple[str, ...] = ()  # kernel facts (see kernel_facts) that must be known
    sets_facts: Tuple[str, ...] = ()  # runtime kernel facts (bpfload.RUNTIME_FACTS) this variant sets to 1


class Probe(NamedTuple):
    name: str
    area: str  # the bpf/<area>.c program and vfiomond/<area>.py module
    variants: Tuple[Variant, ...]
    # A kernel feature (FEATURES) without which the probe does not apply: on a
    # kernel that lacks it the probe is left out, not reported as missing.
    feature: Optional[str] = None


# Kernel facts handed to the BPF programs (the kernel_facts map), derived from kallsyms.
#   VFIO_PGOFF_IS_PFN: vfio-pci rewrites a BAR vma's vm_pgoff to the BAR's PFN
#     (up to 6.9, while vfio_pci_mmap_open exists); from 6.10 it is the file offset.
#   VFIO_PCI_MMAP_OPS: address of vfio_pci_mmap_ops, to recognise VFIO BAR vmas.
#   PCIE_RESET_FLR: pcie_reset_flr(dev, probe) is FLR's reset method (5.15+).
#   HUGE_ZERO_PFN_ADDR: address of huge_zero_pfn (mm/huge_memory.c), the PFN of
#     THP's huge zero page or ~0UL while none is allocated (a variable: listed where
#     kallsyms has CONFIG_KALLSYMS_ALL, as Debian's kernels do; "D" on 6.1 and 6.12,
#     "T" on 7.2).
FACT_SYMBOLS = ("vfio_pci_mmap_open", "vfio_pci_mmap_ops", "pcie_reset_flr", "huge_zero_pfn")

class Feature(NamedTuple):
    """A kernel feature: present when any of ``markers`` is in kallsyms (then
    kernel_facts sets ``fact``).  ``absent``: why its probes are left out without it,
    for the log and the coverage table.  ``modules``: the modules whose load can
    bring the markers later; () when only vmlinux has them, None when not known."""

    fact: str
    markers: Tuple[str, ...]
    absent: str
    modules: Optional[Tuple[str, ...]] = None


# Kernel features, and kernel shapes on which a probe cannot see VFIO work (its
# probes would run on every caller in the host for nothing):
#   iommufd (6.2+, CONFIG_IOMMUFD, built in or the iommufd module): its ioctl
#   handlers iommufd_ioas_map / iommufd_ioas_unmap (drivers/iommu/iommufd/ioas.c).
#   bar_dmabuf (6.19+, vfio-pci's VFIO_DEVICE_FEATURE_DMA_BUF): its handler
#   vfio_pci_core_feature_dma_buf (drivers/vfio/pci/vfio_pci_dmabuf.c).
#   vfio_bar_remap: vfio-pci's BAR fault handler remaps the whole vma with
#   io_remap_pfn_range (5.8 .. 6.9), marked by vfio_pci_mmap_open, which went with it
#   in 6.10 (aac6db75a9fc "vfio/pci: Use unmap_mapping_range()" inserts PFNs per
#   fault with vmf_insert_pfn; 6.12 adds huge faults): from 6.10 VFIO never calls
#   remap_pfn_range, and the probe would only count the rest of the host's callers.
#   pat_untrack_vma: x86 PAT's untrack_pfn(vma, ...), up to 6.15.  6.16 replaced it
#   with pfnmap_untrack(pfn, size), which has no vma to tell a VFIO BAR by, and
#   VFIO BAR vmas have not been PAT-tracked since 6.10 (no remap_pfn_range).
FEATURES = {
    "iommufd": Feature("FEATURE_IOMMUFD", ("iommufd_ioas_map", "iommufd_ioas_unmap"),
                       "no iommufd in this kernel (not built, or its module not loaded)", ("iommufd",)),
    "bar_dmabuf": Feature("FEATURE_BAR_DMABUF", ("vfio_pci_core_feature_dma_buf",),
                          "no BAR dma-buf export in this kernel (6.19+), or vfio-pci not loaded"),
    "vfio_bar_remap": Feature("FEATURE_VFIO_BAR_REMAP", ("vfio_pci_mmap_open",),
                              "VFIO does not call remap_pfn_range on this kernel (6.10+), or vfio-pci not loaded"),
    "pat_untrack_vma": Feature("FEATURE_PAT_UNTRACK_VMA", ("untrack_pfn",),
                               "no untrack_pfn(vma) in this kernel (6.16+, or not x86)"),
}


def kernel_facts(syms: Kallsyms) -> Dict[str, int]:
    facts = {}
    for feature in FEATURES.values():
        if any(syms.has(m) for m in feature.markers):
            facts[feature.fact] = 1
    if syms.has("pcie_reset_flr"):
        facts["PCIE_RESET_FLR"] = 1
    if syms.has("vfio_pci_mmap_open"):
        facts["VFIO_PGOFF_IS_PFN"] = 1
    ops = syms.address("vfio_pci_mmap_ops")
    if ops:
        facts["VFIO_PCI_MMAP_OPS"] = ops
    huge_zero = syms.address("huge_zero_pfn")
    if huge_zero:
        facts["HUGE_ZERO_PFN_ADDR"] = huge_zero
    return facts


_FAULT_RET = "on_bar_fault_return"
# One pinned run: the pin, zero-page and huge-zero-page probes share the hook (and,
# as a trampoline, its one fexit program, which sees vaddr and pfn_base itself).
_PIN_HOOK = Hook(("vfio_pin_pages_remote",), "on_pin_pages", "on_pin_pages_return", trampoline=True,
                 fexit="on_pin_pages_fexit")

PROBES: Tuple[Probe, ...] = (
    Probe("bar_fault", "faults", (
        # 6.12+: .huge_fault(vmf, order); .fault = vfio_pci_mmap_page_fault ->
        # huge_fault(vmf, 0), which may be inlined, so hook both (nesting is
        # counted once, in the BPF program).
        # BAR_FAULT_NESTED (learned at run time): page_fault was seen calling
        # huge_fault, so the huge_fault hook alone sees every fault.
        Variant("vfio_pci_mmap_huge_fault (6.12+)", (
            Hook(("vfio_pci_mmap_huge_fault",), "on_bar_huge_fault", _FAULT_RET, trampoline=True),
            Hook(("vfio_pci_mmap_page_fault",), "on_bar_fault", "on_bar_page_fault_return", optional=True,
                 unless="BAR_FAULT_NESTED", trampoline=True),
        )),
        Variant("vfio_pci_mmap_fault (up to 6.11)", (
            Hook(("vfio_pci_mmap_fault",), "on_bar_fault", _FAULT_RET, trampoline=True),
        )),
    )),
    Probe("remap_pfn_range", "faults", (
        Variant("remap_pfn_range", (
            Hook(("remap_pfn_range",), "on_remap_pfn_range", "on_remap_pfn_range_return", trampoline=True),
        )),
    ), feature="vfio_bar_remap"),
    Probe("pat_untrack", "faults", (
        Variant("untrack_pfn on VFIO vmas (up to 6.15)", (
            Hook(("untrack_pfn",), "on_untrack_pfn", trampoline=True),
        ), requires=("VFIO_PCI_MMAP_OPS",)),
    ), feature="pat_untrack_vma"),
    # vfio_dma_do_map/unmap are inlined on some builds (Debian 6.1); the type1
    # ioctl handler is in the driver ops table and always exists.
    Probe("dma_map", "type1", (
        Variant("vfio_dma_do_map", (
            Hook(("vfio_dma_do_map",), "on_dma_map", "on_dma_return"),
        )),
        Variant("vfio_iommu_type1_ioctl(VFIO_IOMMU_MAP_DMA)", (
            Hook(("vfio_iommu_type1_ioctl",), "on_type1_ioctl", "on_dma_return", reads_args=True),
        ), sets_facts=("TYPE1_IOCTL_MAP",)),
    )),
    Probe("dma_unmap", "type1", (
        Variant("vfio_dma_do_unmap", (
            Hook(("vfio_dma_do_unmap",), "on_dma_unmap", "on_dma_return"),
        )),
        Variant("vfio_iommu_type1_ioctl(VFIO_IOMMU_UNMAP_DMA)", (
            Hook(("vfio_iommu_type1_ioctl",), "on_type1_ioctl", "on_dma_return", reads_args=True),
        ), sets_facts=("TYPE1_IOCTL_UNMAP",)),
    )),
    # Pin verification's table of live mappings (bpf/type1.c pin_maps): every path
    # that ends a type1 mapping (UNMAP_DMA, a failed MAP_DMA, a container's release
    # or last detach) calls vfio_remove_dma before it unpins; entries are made only
    # while this hook is attached (the PIN_MAPS fact), so none outlives its mapping.
    Probe("pin_samples", "type1", (
        Variant("vfio_remove_dma ends a mapping before it unpins", (
            Hook(("vfio_remove_dma",), "on_remove_dma"),
        ), sets_facts=("PIN_MAPS",)),
    )),
    Probe("pin_pages", "type1", (
        Variant("vfio_pin_pages_remote return value and *pfn_base", (
            _PIN_HOOK,
        )),
    )),
    # The zero page's PFN is learned at start (vfiomond/pagemap.py, needs
    # CAP_SYS_ADMIN); pins of it are counted in the kernel.
    Probe("zero_page_pins", "type1", (
        Variant("vfio_pin_pages_remote *pfn_base == zero page PFN", (
            _PIN_HOOK,
        ), requires=("ZERO_PFN",)),
    )),
    # THP's huge zero page, read-only pinned like the 4 KiB one before 6.2: its PFN
    # is read from the kernel's huge_zero_pfn at each pin (it changes when the
    # shrinker frees it); HPAGE_PMD_NR is its page count (sysfs hpage_pmd_size).
    Probe("huge_zero_page_pins", "type1", (
        Variant("vfio_pin_pages_remote *pfn_base in the huge zero page (huge_zero_pfn)", (
            _PIN_HOOK,
        ), requires=("ZERO_PFN", "HUGE_ZERO_PFN_ADDR", "HPAGE_PMD_NR")),
    )),
    Probe("unpin_pages", "type1", (
        Variant("vfio_unpin_pages_remote npage", (
            Hook(("vfio_unpin_pages_remote",), "on_unpin_pages", trampoline=True),
        )),
    )),
    # Divergence where it happens (bpf/common.h write_fault_in): do_wp_page, the
    # write fault that keeps or copies a write-protected page, in processes that hold
    # type1 pins (everyone else ends at one hash lookup), sent when inside one of
    # their DMA mappings (bpf/type1.c pin_spans).
    Probe("pin_write_faults", "type1", (
        Variant("do_wp_page in processes holding type1 pins", (
            Hook(("do_wp_page",), "on_type1_write_fault", trampoline=True),
        )),
    )),
    Probe("locked_vm_charge", "type1", (
        # mm_lock_acct(task, mm, lock_cap, npage) (6.2 / 6.1.20 / 5.15.100 stable,
        # commit 046eca5018f8) is type1's only caller of __account_locked_vm (its
        # callers: vfio_lock_acct, vfio_change_dma_owner); its npage and result are
        # the charge.  GCC 16 (Debian sid's 7.2) inlines vfio_lock_acct into
        # vfio_pin_pages_remote, so its .part.0 copy sees only uncharges.
        Variant("mm_lock_acct(npage) and its result", (
            Hook(("mm_lock_acct",), "on_mm_lock_acct", "on_mm_lock_acct_return", trampoline=True,
                 fexit="on_mm_lock_acct_fexit"),
        )),
        # Older kernels (or a mm_lock_acct whose arguments GCC changed): the marker
        # sets a per-thread flag; __account_locked_vm under it is a type1 charge.
        Variant("__account_locked_vm inside mm_lock_acct or vfio_lock_acct", (
            Hook(("mm_lock_acct", "vfio_lock_acct"), "on_lock_acct", "on_lock_acct_return", reads_args=False,
                 trampoline=True),
            Hook(("__account_locked_vm",), "on_account_locked_vm", "on_account_locked_vm_return", trampoline=True,
                 fexit="on_account_locked_vm_fexit"),
        )),
    )),
    # iommufd (drivers/iommu/iommufd/io_pagetable.c, 6.2+): IOMMU_IOAS_MAP/UNMAP and the VFIO
    # compat MAP_DMA/UNMAP_DMA it serves both end in these io_pagetable calls;
    # IOMMU_IOAS_MAP_FILE (6.13+: a memfd, from 6.19 a dma-buf) in iopt_map_file_pages.
    # IOMMU_IOAS_CHANGE_PROCESS (6.13+) hands every MAP_FILE mapping to its caller:
    # the previous owner (the process that last mapped through that iommufd, kept
    # by the map hooks) gives its mapped bytes to the caller at the return.
    Probe("iommufd_dma_map", "iommufd", (
        Variant("iopt_map_user_pages (IOMMU_IOAS_MAP), iopt_map_file_pages (IOMMU_IOAS_MAP_FILE), "
                "iommufd_ioas_change_process", (
            Hook(("iopt_map_user_pages",), "on_iopt_map_user_pages", "on_iommufd_dma_return"),
            Hook(("iopt_map_file_pages",), "on_iopt_map_file_pages", "on_iommufd_dma_return", optional=True),
            Hook(("iommufd_ioas_change_process",), "on_iommufd_change_process", "on_iommufd_change_process_return",
                 optional=True),
        )),
    ), feature="iommufd"),
    Probe("iommufd_dma_unmap", "iommufd", (
        Variant("iopt_unmap_iova, iopt_unmap_all (IOMMU_IOAS_UNMAP)", (
            Hook(("iopt_unmap_iova",), "on_iopt_unmap_iova", "on_iommufd_dma_return"),
            Hook(("iopt_unmap_all",), "on_iopt_unmap_all", "on_iommufd_dma_return", optional=True),
        )),
    ), feature="iommufd"),
    # Pin verification for IOAS mappings: the runs an IOMMU_IOAS_MAP hands to
    # iommu_map (batch_to_domain, pages.c).  iommu_map is also the DMA API's
    # path on translated default domains: its calls by anyone else cost a
    # kprobe and, while no IOAS map is in flight, one array read (a hash lookup
    # while one is: benchmarks/RESULTS.md); probes.disable turns it off.
    # Entries leave pin_maps where each area is unfilled before its unpin; a domain
    # detached makes the IOAS's entries stale (bpf/iommufd.c).
    Probe("iommufd_pin_samples", "iommufd", (
        Variant("iommu_map inside iopt_map_user_pages or iopt_map_file_pages, until iopt_area_unfill_domains", (
            Hook(("iopt_map_user_pages",), "on_iopt_map_user_pages", "on_iommufd_dma_return"),
            Hook(("iopt_map_file_pages",), "on_iopt_map_file_pages", "on_iommufd_dma_return", optional=True),
            Hook(("iommu_map",), "on_iommufd_iommu_map"),
            Hook(("iopt_area_unfill_domains",), "on_iopt_area_unfill"),
            Hook(("iopt_table_remove_domain",), "on_iopt_remove_domain"),
        ), sets_facts=("IOMMUFD_PIN_MAPS",)),
    ), feature="iommufd"),
    # Every change of an iopt_pages' pinned count goes through this one
    # function, which charges pinned_vm and, by account mode, locked_vm.
    Probe("iommufd_pin_accounting", "iommufd", (
        Variant("iopt_pages_update_pinned (6.13+)", (
            Hook(("iopt_pages_update_pinned",), "on_iommufd_update_pinned", "on_iommufd_update_pinned_return"),
        )),
        Variant("do_update_pinned (up to 6.12)", (
            Hook(("do_update_pinned",), "on_iommufd_update_pinned", "on_iommufd_update_pinned_return"),
        )),
    ), feature="iommufd"),
    # As pin_write_faults, for processes holding iommufd pins (known from the pin
    # accounting hook), inside their IOAS mappings, on the iommufd ring buffer.
    # iommufd's hooks have no fentry handlers yet: no lab kernel has both iommufd and
    # BTF to test them on (the lab's iommufd build has no debug info).
    Probe("iommufd_pin_write_faults", "iommufd", (
        Variant("do_wp_page in processes holding iommufd pins", (
            Hook(("do_wp_page",), "on_iommufd_write_fault"),
            Hook(("iopt_pages_update_pinned", "do_update_pinned"), "on_iommufd_update_pinned",
                 "on_iommufd_update_pinned_return"),
        )),
    ), feature="iommufd"),
)


# Resets (bpf/resets.c): the PCI core's reset entry points vfio-pci calls
# (pci_try_reset_function, __pci_reset_function_locked, pci_reset_bus; 5.10 ..
# 7.2) and a sysfs "reset" write (pci_reset_function), each exported; the reset
# methods (pci_reset_fn_methods, 5.15+; direct calls in 5.10) are hooked where
# kallsyms has them, static ones being inlined by some builds: a reset whose
# method was not seen says method="none".  pcie_flr(dev) is FLR's method up to
# 5.14; from 5.15 pcie_reset_flr(dev, probe) is, and pcie_flr is also what
# device-specific resets call, so it is hooked only without pcie_reset_flr.
_RESET_RET = "on_reset_return"
RESET_PROBES: Tuple[Probe, ...] = (
    Probe("resets", "resets", (
        Variant("pci_try_reset_function, __pci_reset_function_locked, pci_reset_bus and the reset methods", (
            Hook(("pci_try_reset_function",), "on_reset_function", _RESET_RET),
            Hook(("__pci_reset_function_locked",), "on_reset_function", _RESET_RET),
            Hook(("pci_reset_function",), "on_reset_function", _RESET_RET),
            Hook(("pci_reset_bus",), "on_reset_bus", _RESET_RET),
            Hook(("pci_dev_specific_reset",), "on_reset_method_device_specific", optional=True),
            Hook(("pci_dev_acpi_reset",), "on_reset_method_acpi", optional=True),
            Hook(("pcie_reset_flr",), "on_reset_method_flr", optional=True),
            Hook(("pcie_flr",), "on_reset_method_pcie_flr", optional=True, unless="PCIE_RESET_FLR"),
            Hook(("pci_af_flr",), "on_reset_method_af_flr", optional=True),
            Hook(("pci_pm_reset",), "on_reset_method_pm", optional=True),
            Hook(("pci_reset_bus_function",), "on_reset_method_bus", optional=True),
            Hook(("pci_dev_reset_slot_function",), "on_reset_method_bus", optional=True),
            Hook(("pci_parent_bus_reset",), "on_reset_method_bus", optional=True),
            Hook(("cxl_reset_bus_function",), "on_reset_method_cxl_bus", optional=True),
        )),
    )),
)


# IOMMU faults (bpf/iommu_faults.c): Intel VT-d's fault event handler dmar_fault
# (drivers/iommu/intel/dmar.c, 5.10 .. 7.2, exported), one call per fault interrupt.
# AMD-Vi and SMMUv3 are not hooked yet.
IOMMU_FAULT_PROBES: Tuple[Probe, ...] = (
    Probe("iommu_faults", "iommu_faults", (
        Variant("dmar_fault calls (Intel VT-d fault interrupts)", (
            Hook(("dmar_fault",), "on_dmar_fault"),
        )),
    )),
)


# BARs exported as dma-bufs (bpf/bar_dmabuf.c, 6.19+; seen on 7.2): the export and
# vfio-pci's revoke/restore of a device's dma-bufs, whose per-dma-buf step is
# dma_buf_invalidate_mappings (7.0+; dma_buf_move_notify in 6.19), exported by the
# dma-buf core and so called by every dma-buf exporter of the host: only calls
# inside a vfio_pci_dma_buf_move of the same thread are counted.
BAR_DMABUF_PROBES: Tuple[Probe, ...] = (
    Probe("bar_dmabuf_exports", "bar_dmabuf", (
        Variant("vfio_pci_core_feature_dma_buf result", (
            Hook(("vfio_pci_core_feature_dma_buf",), "on_dmabuf_export", "on_dmabuf_export_return"),
        )),
    ), feature="bar_dmabuf"),
    Probe("bar_dmabuf_revocations", "bar_dmabuf", (
        Variant("dma_buf_invalidate_mappings inside vfio_pci_dma_buf_move", (
            Hook(("vfio_pci_dma_buf_move",), "on_dmabuf_move", "on_dmabuf_move_return"),
            Hook(("dma_buf_invalidate_mappings", "dma_buf_move_notify"), "on_dmabuf_invalidate"),
        )),
    ), feature="bar_dmabuf"),
)


# The processes that open a VFIO or iommufd character device: a scrape reads the
# open files of these (and of the DMA mappers) only (vfiomond/processes.py UserFinder).
# vfio_group_fops_open and vfio_fops_open: 5.10 .. 7.2 (drivers/vfio/vfio_main.c, then
# group.c and container.c from 6.2; vfio_fops_open only with CONFIG_VFIO_CONTAINER).
# A process using a device's cdev (/dev/vfio/devices/vfioN, 6.6+) binds it to an
# iommufd it opened (iommufd_open); vfio_device_fops_cdev_open itself is listed in
# Debian 13's kallsyms but refused by kprobes there, so it is not hooked.
# wake_up_new_task (kernel/sched/core.c, every kernel vfiomond supports): the
# processes a candidate forks or clones, which inherit its VFIO fds.
USER_PROBES: Tuple[Probe, ...] = (
    Probe("vfio_open", "users", (
        Variant("vfio_group_fops_open, vfio_fops_open", (
            Hook(("vfio_group_fops_open",), "on_vfio_group_open", reads_args=False),
            Hook(("vfio_fops_open",), "on_vfio_container_open", reads_args=False, optional=True),
        )),
    )),
    Probe("iommufd_open", "users", (
        Variant("iommufd_fops_open", (
            Hook(("iommufd_fops_open",), "on_iommufd_open", reads_args=False),
        )),
    ), feature="iommufd"),
    Probe("vfio_fork", "users", (
        Variant("wake_up_new_task by a candidate", (
            Hook(("wake_up_new_task",), "on_new_task", trampoline=True),
        )),
    )),
)
PROBES = PROBES + RESET_PROBES + IOMMU_FAULT_PROBES + BAR_DMABUF_PROBES + USER_PROBES


class Selected(NamedTuple):
    """The outcome for one probe on this kernel."""

    probe: Probe
    variant: Optional[Variant]  # None: not available
    hooks: Tuple[Tuple[Hook, Symbol], ...]
    reason: str  # why not available ("" when available)

    @property
    def available(self) -> bool:
        return self.variant is not None


def wanted_symbols(probes: Tuple[Probe, ...] = PROBES, extra: Tuple[str, ...] = ()) -> set:
    names = set(FACT_SYMBOLS) | set(extra) | {TRAMPOLINE_MARKER}
    for feature in FEATURES.values():
        names.update(feature.markers)
    for probe in probes:
        for variant in probe.variants:
            for hook in variant.hooks:
                names.update(s.split(".", 1)[0] for s in hook.symbols)
    return names


def _resolve(hook: Hook, syms: Kallsyms) -> Optional[Symbol]:
    for name in hook.symbols:
        sym = syms.function(name, allow_variants=not hook.reads_args)
        if sym is not None:
            return sym
    return None


def feature_present(facts: Dict[str, int], feature: Optional[str]) -> bool:
    return feature is None or FEATURES[feature].fact in facts


def select(syms: Kallsyms, facts: Dict[str, int], probes: Tuple[Probe, ...] = PROBES) -> List[Selected]:
    """Pick, for every probe, the first variant this kernel can serve.  Probes
    of a kernel feature that ``facts`` (kernel_facts) says is absent are left out."""
    out = []
    for probe in probes:
        if not feature_present(facts, probe.feature):
            continue
        absent_symbols: List[str] = []
        absent_facts: List[str] = []
        chosen = None
        for variant in probe.variants:
            resolved = [(hook, _resolve(hook, syms)) for hook in variant.hooks if hook.unless not in facts]
            symbols = [h.symbols[0] for h, s in resolved if s is None and not h.optional]
            facts_missing = [f for f in variant.requires if f not in facts]
            if symbols or facts_missing:
                absent_symbols += symbols
                absent_facts += facts_missing
                continue
            chosen = Selected(probe, variant, tuple((h, s) for h, s in resolved if s is not None), "")
            break
        if chosen is None:
            reasons = []
            if absent_symbols:
                reasons.append("not in kallsyms: " + ", ".join(dict.fromkeys(absent_symbols)))
            if absent_facts:
                reasons.append("unknown kernel fact: " + ", ".join(dict.fromkeys(absent_facts)))
            chosen = Selected(probe, None, (), "; ".join(reasons))
        out.append(chosen)
    return out


# fentry/fexit (BPF trampolines) instead of kprobes where the kernel allows: the
# call jumps to the program instead of trapping, and the fexit program sees the
# arguments and the return value together.  bpf_trampoline_link_prog
# (kernel/bpf/trampoline.c, 5.5+) is the kernel's trampoline code: BCC's
# support_kfunc() looks for the same symbol.  The generated fentry/fexit
# programs hand the handlers the arguments where PT_REGS_PARM1..6 read them, the
# registers of the calling convention: a function with more is left to kprobes.
TRAMPOLINE_MARKER = "bpf_trampoline_link_prog"
TRAMPOLINE_MAX_ARGS = 6
KPROBE, TRAMPOLINE = "kprobe", "fentry"


def attach_method(hook: Hook, sym: Symbol, arities: Dict[str, int], trampolines: bool,
                  module_trampolines: bool = False) -> Tuple[str, str]:
    """``(KPROBE or TRAMPOLINE, why not a trampoline)`` for one resolved hook.

    ``arities``: argument counts of the kernel's BTF functions (vfiomond.btf),
    with a module's own BTF for its functions; ``trampolines``: this kernel and
    BCC attach fentry/fexit programs.  Module functions stay kprobes unless
    ``module_trampolines`` (the configuration's probes.module_trampolines): a
    trampoline on one holds a reference on its module for as long as its program
    is loaded (bpf_check_attach_target takes it with btf_try_get_module, 5.11+),
    so vfio-pci or type1 cannot be unloaded while the daemon runs.
    """
    if not hook.trampoline:
        return KPROBE, "no fentry handler"
    if not trampolines:
        return KPROBE, "no BPF trampolines on this kernel (%s, kernel BTF)" % TRAMPOLINE_MARKER
    if sym.module and not module_trampolines:
        return KPROBE, "module function (a trampoline would keep %s loaded; probes.module_trampolines)" % sym.module
    nargs = arities.get(sym.name)
    if nargs is None:
        return KPROBE, "not a function in the %s BTF" % ("module's" if sym.module else "kernel's")
    if not 1 <= nargs <= TRAMPOLINE_MAX_ARGS:
        return KPROBE, "%d arguments" % nargs
    return TRAMPOLINE, ""


def trampoline_candidates(selections: Sequence[Selected], module_trampolines: bool = False) -> Dict[str, Set[str]]:
    """The hooked functions of ``selections`` that have fentry handlers, by where
    their BTF is ("" for vmlinux, else the module's name): those whose argument
    counts BTF is asked for (attach_method).  Module functions only with
    ``module_trampolines``."""
    out: Dict[str, Set[str]] = {}
    for sel in selections:
        for hook, sym in sel.hooks:
            if hook.trampoline and (module_trampolines or not sym.module):
                out.setdefault(sym.module or "", set()).add(sym.name)
    return out


def method_names(hook: Hook, method: str) -> str:
    """What a hook is attached as, for logs and vfiomond_probe_info: "fentry+fexit", "kprobe"...
    A hook with a fexit handler is, as a trampoline, that fexit program alone (Hook.fexit)."""
    if method == TRAMPOLINE and hook.fexit:
        return "fexit"
    entry, ret = ("fentry", "fexit") if method == TRAMPOLINE else ("kprobe", "kretprobe")
    return "+".join(name for name, fn in ((entry, hook.entry), (ret, hook.ret)) if fn)
