"""Where the BPF programs find kernel struct members: offsets from the kernel's BTF,
or from its headers.

Compiling the programs with linux/sched.h, linux/mm.h and linux/pci.h costs most
of vfiomond's start-up (benchmarks/RESULTS.md, "2026-12-01: where start-up goes":
52.6 s of a trivial program's 7.6 s come with linux/mm.h under TCG).  The
programs read only the members below, through KOFF_<name> (byte offset) and
KSIZE_<name> (bytes) macros (bpf/common.h KFIELD), KSIZEOF_<name> (a struct's
size) and a few enumerators.  Where the kernel has BTF for every one of them
(/sys/kernel/btf/vmlinux, CONFIG_DEBUG_INFO_BTF) they are numbers and the heavy
headers are left out (KERNEL_LAYOUT_BTF); elsewhere (no BTF, a kernel whose
modules carry none) the macros are __builtin_offsetof and sizeof over the
headers, as before.

vm_private_data of a vfio-pci BAR vma is a struct vfio_pci_core_device (5.15+,
7fa005caa35e), a module's struct: with BTF its pdev member's offset comes from
the module's BTF (/sys/kernel/btf/vfio_pci_core, 5.11+) when the module loads,
as the runtime fact VDEV_PDEV_AT (0 before 5.15: struct vfio_pci_device, private
to vfio-pci, begins with its pdev).
"""

import logging
import os
import resource
from typing import Dict, Optional, Tuple

from vfiomond import btf

log = logging.getLogger("vfiomond")

BTF_DIR = "/sys/kernel/btf"
VFIO_PCI_CORE = "vfio_pci_core"

# (macro name, struct, member path): KOFF_<name> and KSIZE_<name>.
FIELDS: Tuple[Tuple[str, str, str], ...] = (
    ("VM_FAULT_VMA", "vm_fault", "vma"),
    ("VM_FAULT_ADDRESS", "vm_fault", "address"),
    ("VM_FAULT_ORIG_PTE", "vm_fault", "orig_pte"),
    ("VMA_OPS", "vm_area_struct", "vm_ops"),
    ("VMA_PGOFF", "vm_area_struct", "vm_pgoff"),
    ("VMA_PRIVATE", "vm_area_struct", "vm_private_data"),
    ("TASK_PID", "task_struct", "pid"),
    ("TASK_TGID", "task_struct", "tgid"),
    ("TASK_MM", "task_struct", "mm"),
    ("TASK_SIGNAL", "task_struct", "signal"),
    ("MM_LOCKED_VM", "mm_struct", "locked_vm"),
    ("USER_LOCKED_VM", "user_struct", "locked_vm"),
    # RLIMIT_MEMLOCK is 8 on most architectures, not all (asm-generic/resource.h).
    ("SIGNAL_MEMLOCK_CUR", "signal_struct", "rlim[%d].rlim_cur" % resource.RLIMIT_MEMLOCK),
    ("PDEV_NAME", "pci_dev", "dev.kobj.name"),
    ("PDEV_RESOURCE", "pci_dev", "resource"),
    ("RESOURCE_START", "resource", "start"),
    ("RESOURCE_END", "resource", "end"),
    ("INTERVAL_START", "interval_tree_node", "start"),
    ("INTERVAL_LAST", "interval_tree_node", "last"),
)

# (macro name, struct): KSIZEOF_<name>.
SIZES: Tuple[Tuple[str, str], ...] = (
    ("RESOURCE", "resource"),
    ("RB_NODE", "rb_node"),
    ("INTERVAL_TREE_NODE", "interval_tree_node"),
    # struct iopt_pages begins with these two (bpf/iommufd.c iopt_pages_head).
    ("KREF", "kref"),
    ("MUTEX", "mutex"),
)

# Enumerators of the headers the programs use, defined from BTF without them.
ENUMERATORS: Tuple[str, ...] = ("PCI_ROM_RESOURCE",)


def header_defines() -> str:
    """C text: the macros over the kernel headers (__builtin_offsetof, sizeof)."""
    out = []
    for name, struct_name, path in FIELDS:
        out.append("#define KOFF_%s __builtin_offsetof(struct %s, %s)" % (name, struct_name, path))
        out.append("#define KSIZE_%s sizeof(((struct %s *)0)->%s)" % (name, struct_name, path))
    out += ["#define KSIZEOF_%s sizeof(struct %s)" % (name, struct_name) for name, struct_name in SIZES]
    return "\n".join(out) + "\n"


def btf_defines(types: btf.Types) -> str:
    """C text: the macros as numbers read from ``types`` (vmlinux BTF), and
    KERNEL_LAYOUT_BTF.  Raises btf.BTFError for a struct, member or enumerator
    BTF does not have."""
    out = ["#define KERNEL_LAYOUT_BTF 1"]
    out += ["struct %s;" % s for s in sorted({s for _, s, _ in FIELDS})]
    for name, struct_name, path in FIELDS:
        offset, size = types.member(struct_name, path)
        out += ["#define KOFF_%s %d" % (name, offset), "#define KSIZE_%s %d" % (name, size)]
    out += ["#define KSIZEOF_%s %d" % (name, types.struct_size(s)) for name, s in SIZES]
    out += ["#define %s %d" % (e, types.enumerator(e)) for e in ENUMERATORS]
    return "\n".join(out) + "\n"


def _modules_have_btf(btf_dir: str) -> bool:
    try:
        return any(name != "vmlinux" for name in os.listdir(btf_dir))
    except OSError:
        return False


def choose(btf_dir: str = BTF_DIR, module_dir: str = "/sys/module") -> Tuple[str, str]:
    """(C text of the layout macros, how they were found: "BTF" or "kernel headers
    (<why>)").  BTF only when it has every member, and the vfio-pci core module's
    struct will have BTF when it loads (its own, or a kernel whose loaded modules
    carry BTF)."""
    core_loaded = os.path.isdir(os.path.join(module_dir, VFIO_PCI_CORE))
    if core_loaded and not os.path.exists(os.path.join(btf_dir, VFIO_PCI_CORE)):
        return header_defines(), "kernel headers (module %s has no BTF)" % VFIO_PCI_CORE
    if not core_loaded and not _modules_have_btf(btf_dir):
        return header_defines(), "kernel headers (no module BTF in %s)" % btf_dir
    try:
        return btf_defines(btf.vmlinux(os.path.join(btf_dir, "vmlinux"))), "BTF"
    except btf.BTFError as e:
        return header_defines(), "kernel headers (%s)" % e


def module_facts(btf_dir: str = BTF_DIR) -> Dict[str, int]:
    """Runtime facts from loaded modules' BTF: VDEV_PDEV_AT, the offset of pdev in
    struct vfio_pci_core_device (drivers/vfio/pci, include/linux/vfio_pci_core.h),
    while vfio_pci_core is loaded with BTF; {} otherwise (and on error)."""
    offset = _member_offset(btf_dir, VFIO_PCI_CORE, "vfio_pci_core_device", "pdev")
    return {"VDEV_PDEV_AT": offset} if offset is not None else {}


def _member_offset(btf_dir: str, module: str, struct_name: str, member: str) -> Optional[int]:
    path = os.path.join(btf_dir, module)
    if not os.path.exists(path):
        return None
    try:
        types = btf.Types.read(path, btf.vmlinux(os.path.join(btf_dir, "vmlinux")))
        return types.member(struct_name, member)[0]
    except btf.BTFError as e:
        # BAR faults then name no device (pdev read at offset 0): said, not silent.
        log.warning("BTF of module %s unreadable (%s): %s.%s offset unknown", module, e, struct_name, member)
        return None
