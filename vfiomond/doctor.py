"""``vfiomond doctor``: a report of the host for a person, and an exit status.

Each check says ok, attention (something to fix) or unknown (could not see,
e.g. without root); the exit status is 1 if any check needs attention.
"""

import glob
import os
from typing import Callable, List, NamedTuple

OK, ATTENTION, UNKNOWN = "ok", "attention", "unknown"


class Check(NamedTuple):
    name: str
    status: str
    detail: str


def _read(path: str, default: str = "") -> str:
    try:
        with open(path, errors="replace") as f:  # /proc/cmdline is the boot loader's bytes
            return f.read().strip()
    except OSError:
        return default


def kernel() -> Check:
    from vfiomond.advisories import running_kernel

    version, source = running_kernel()
    text = ".".join(map(str, version)) if version else "unknown"
    return Check("kernel", OK, "%s (upstream %s, from %s)" % (os.uname().release, text, source))


def iommu() -> Check:
    units = sorted(os.listdir("/sys/class/iommu")) if os.path.isdir("/sys/class/iommu") else []
    groups = glob.glob("/sys/kernel/iommu_groups/*")
    if not units:
        return Check("iommu", ATTENTION, "no IOMMU enabled (/sys/class/iommu is empty): add intel_iommu=on or amd_iommu=on, enable VT-d/AMD-Vi in firmware")
    types = sorted({_read(g + "/type") for g in groups} - {""})
    cmdline = _read("/proc/cmdline")
    mode = "passthrough (iommu=pt)" if "iommu=pt" in cmdline.split() else "translated"
    return Check("iommu", OK, "%s; %d IOMMU groups; default domains %s; %s" % (
        ", ".join(units), len(groups), "/".join(types) or "unknown", mode))


def interrupt_remapping() -> Check:
    interrupts = _read("/proc/interrupts")
    if not interrupts:
        return Check("interrupt remapping", UNKNOWN, "cannot read /proc/interrupts")
    if "IR-" in interrupts:
        return Check("interrupt remapping", OK, "enabled (IR- interrupt chips in /proc/interrupts)")
    return Check("interrupt remapping", ATTENTION, "not in use: VFIO needs allow_unsafe_interrupts without it")


def vfio_modules() -> Check:
    wanted = ("vfio", "vfio_iommu_type1", "vfio_pci", "vfio_pci_core", "iommufd")
    loaded = [m for m in wanted if os.path.isdir("/sys/module/" + m)]
    if "vfio" not in loaded:
        return Check("vfio modules", ATTENTION, "vfio is not loaded (modprobe vfio-pci)")
    return Check("vfio modules", OK, "loaded: " + ", ".join(loaded))


def vfio_devices() -> Check:
    rows = []
    for dev in sorted(glob.glob("/sys/bus/pci/devices/*")):
        driver = os.path.basename(os.path.realpath(dev + "/driver")) if os.path.exists(dev + "/driver") else ""
        if "vfio" not in driver:
            continue
        group = os.path.basename(os.path.realpath(dev + "/iommu_group")) if os.path.exists(dev + "/iommu_group") else "-"
        rows.append("%s %s:%s %s group %s" % (os.path.basename(dev), _read(dev + "/vendor")[2:], _read(dev + "/device")[2:], driver, group))
    if not rows:
        return Check("vfio devices", OK, "none bound to a vfio driver")
    return Check("vfio devices", OK, "; ".join(rows))


def kprobes() -> Check:
    pmu = os.path.isdir("/sys/bus/event_source/devices/kprobe")
    tracefs = any(os.path.exists(p) for p in ("/sys/kernel/tracing/kprobe_events", "/sys/kernel/debug/tracing/kprobe_events"))
    if pmu or tracefs:
        return Check("kprobes", OK, "available (%s)" % ("kprobe PMU" if pmu else "kprobe_events"))
    return Check("kprobes", ATTENTION, "not available: no kprobe PMU and no kprobe_events (kernel without CONFIG_KPROBES?); vfiomond can attach nothing")


# Facts that read as unknown without root: kallsyms addresses and pagemap PFNs are hidden.
_HIDDEN_FROM_USERS = ("VFIO_PCI_MMAP_OPS", "ZERO_PFN", "HUGE_ZERO_PFN_ADDR")


def probes() -> Check:
    from vfiomond.daemon import probe_kernel
    from vfiomond.probes import select

    try:
        selections, facts, syms = probe_kernel()
    except Exception as e:  # kallsyms unreadable
        return Check("probes", UNKNOWN, str(e))
    have = [s.probe.name for s in selections if s.available]
    missing = [s for s in selections if not s.available]
    status = OK if not missing else ATTENTION
    if missing and os.geteuid() != 0:
        assumed = dict(facts, **{f: facts.get(f, 1) for f in _HIDDEN_FROM_USERS})
        with_root = {s.probe.name for s in select(syms, assumed) if s.available}
        if all(s.probe.name in with_root for s in missing):
            status = UNKNOWN  # only what root could see stands in the way
    detail = "kernel symbols found for: %s" % (", ".join(have) or "none")
    if missing:
        detail += "; not for: " + "; ".join("%s (%s)" % (s.probe.name, s.reason) for s in missing)
    if status == UNKNOWN:
        detail += " (not root: addresses and PFNs are hidden)"
    return Check("probes", status, detail)


def attach_methods() -> Check:
    """Which hooks attach as fentry/fexit (BPF trampolines) and which as kprobes, by the
    rule the daemon follows (probes.attach_method)."""
    from vfiomond.daemon import read_kernel, trampoline_arities
    from vfiomond.probes import TRAMPOLINE, attach_method, select

    try:
        syms, facts = read_kernel(())
    except Exception as e:  # kallsyms unreadable
        return Check("attach methods", UNKNOWN, str(e))
    facts.update({"ZERO_PFN": 1, "HPAGE_PMD_NR": 1})  # which hooks: not whether pins of the zero page are known
    selections = select(syms, facts)
    arities, usable, why = trampoline_arities(selections, syms)
    hooks = [(hook, sym) for sel in selections for hook, sym in sel.hooks]
    trampolines = sorted({sym.name for hook, sym in hooks if attach_method(hook, sym, arities, usable)[0] == TRAMPOLINE})
    detail = "fentry/fexit: %s; kprobes: the other %d hooked functions" % (
        ", ".join(trampolines) or "none", len({sym.name for _, sym in hooks} - set(trampolines)))
    if not usable:
        detail += " (no BPF trampolines: %s)" % why
    return Check("attach methods", OK, detail)


def struct_offsets() -> Check:
    """Where the BPF programs will find kernel struct members (vfiomond.layout)."""
    from vfiomond import layout

    source = layout.choose()[1]
    if source == "BTF":
        return Check("struct offsets", OK, "from the kernel's BTF: the BPF compile leaves out linux/mm.h, "
                     "linux/sched.h and linux/pci.h")
    return Check("struct offsets", OK, "from the %s: a slower BPF compile at start" % source)


def bcc() -> Check:
    try:
        import bcc  # noqa: F401
    except ImportError:
        return Check("bcc", ATTENTION, "python3-bpfcc (BCC's Python bindings) is not installed")
    release = os.uname().release
    if os.path.exists("/lib/modules/%s/build/include" % release):
        return Check("bcc", OK, "BCC importable; kernel headers in /lib/modules/%s/build" % release)
    if os.path.exists("/sys/kernel/kheaders.tar.xz"):
        return Check("bcc", OK, "BCC importable; kernel headers from /sys/kernel/kheaders.tar.xz")
    return Check("bcc", ATTENTION, "no kernel headers for %s: install linux-headers-%s or modprobe kheaders" % (release, release))


def thp() -> Check:
    enabled = _read("/sys/kernel/mm/transparent_hugepage/enabled")
    defrag = _read("/sys/kernel/mm/transparent_hugepage/defrag")
    if not enabled:
        return Check("transparent hugepages", UNKNOWN, "not configured in this kernel")
    return Check("transparent hugepages", OK, "enabled %s, defrag %s" % (enabled, defrag))


def memlock() -> Check:
    from vfiomond import processes

    if os.geteuid() != 0:
        return Check("memlock", UNKNOWN, "needs root to see other processes' open files and limits")
    rows = []
    for pid in processes.vfio_users():
        info = processes.read_process(pid)
        if info is None:
            continue
        limit = "unlimited" if info.memlock_limit_bytes == float("inf") else "%d MiB" % (info.memlock_limit_bytes // (1 << 20))
        rows.append("%s[%d]%s locked %d MiB of %s" % (info.comm, pid, " vm=" + info.vm if info.vm else "", info.locked_vm_bytes >> 20, limit))
    return Check("memlock", OK, "; ".join(rows) if rows else "no VFIO users running")


def advisories_check() -> Check:
    from vfiomond import advisories

    version, _ = advisories.running_kernel()
    if version is None:
        return Check("advisories", UNKNOWN, "cannot tell the kernel version")
    found = advisories.evaluate(advisories.load(), version)
    if not found:
        return Check("advisories", OK, "no known VFIO kernel issue applies")
    return Check("advisories", ATTENTION, "; ".join("%s (%s, %s)" % (a.id, a.severity, a.status) for a in found))


CHECKS: List[Callable[[], Check]] = [
    kernel, iommu, interrupt_remapping, vfio_modules, vfio_devices, kprobes, probes, attach_methods, struct_offsets, bcc,
    thp, memlock, advisories_check,
]


def run_checks() -> List[Check]:
    out = []
    for check in CHECKS:
        try:
            out.append(check())
        except Exception as e:  # one check must not hide the others
            out.append(Check(check.__name__, UNKNOWN, "%s: %s" % (type(e).__name__, e)))
    return out


def exit_status(checks: List[Check]) -> int:
    return 1 if any(c.status == ATTENTION for c in checks) else 0
