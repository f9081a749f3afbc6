"""Program.apply: attachments follow the probe selection as modules come and go.

The BPF object is a recording stand-in (no kernel, no BCC); the selections are
real ones, made by probes.select from kallsyms texts.
"""

import ctypes
import pathlib
import re
import sys

from vfiomond import bpfload
from vfiomond.bpfload import RUNTIME_FACTS, Program, _TrampolineSlot, plan_trampolines, trampoline_source
from vfiomond.kernel import Kallsyms
from vfiomond.probes import kernel_facts, select, wanted_symbols

COMMON_H = pathlib.Path(__file__).resolve().parents[2] / "bpf" / "common.h"

VMLINUX = """ffffffff81001000 T remap_pfn_range
ffffffff81002000 T untrack_pfn
ffffffff81003000 T __account_locked_vm
"""
VFIO_PCI = """ffffffffc0a01000 t vfio_pci_mmap_fault\t[vfio_pci_core]
ffffffffc0a02000 t vfio_pci_mmap_open\t[vfio_pci_core]
ffffffffc0a09000 d vfio_pci_mmap_ops\t[vfio_pci_core]
"""
TYPE1 = """ffffffffc0b01000 t vfio_iommu_type1_ioctl\t[vfio_iommu_type1]
ffffffffc0b02000 t vfio_pin_pages_remote\t[vfio_iommu_type1]
ffffffffc0b03000 t vfio_unpin_pages_remote\t[vfio_iommu_type1]
ffffffffc0b04000 t vfio_lock_acct.part.0\t[vfio_iommu_type1]
"""


class RecordingBPF:
    """Records kprobe attach/detach calls; a table per name, as BCC hands them out."""

    def __init__(self, fail_on=()):
        self.attached = set()  # ("k"|"r", event, fn)
        self.calls = []
        self.fail_on = set(fail_on)
        self.tables = {}
        self.kfunc_entry_fds, self.kfunc_exit_fds = {}, {}

    def attach_kprobe(self, event, fn_name):
        self._attach("k", event, fn_name)

    def attach_kretprobe(self, event, fn_name):
        self._attach("r", event, fn_name)

    def _attach(self, kind, event, fn):
        if event in self.fail_on:
            raise Exception("cannot attach kprobe, probe entry may not exist\nmore")
        assert (kind, event, fn) not in self.attached, "attached twice"
        self.attached.add((kind, event, fn))
        self.calls.append(("attach", kind, event))

    def detach_kprobe(self, event, fn_name):
        self._detach("k", event, fn_name)

    def detach_kretprobe(self, event, fn_name):
        self._detach("r", event, fn_name)

    def _detach(self, kind, event, fn):
        self.attached.remove((kind, event, fn))
        self.calls.append(("detach", kind, event))

    # fentry/fexit programs, as BCC keeps them: name -> link fd
    kfunc_entry_fds: dict
    kfunc_exit_fds: dict

    def attach_kfunc(self, fn_name):
        assert fn_name not in self.kfunc_entry_fds, "attached twice"
        self.kfunc_entry_fds[fn_name] = 1
        self.calls.append(("attach", "fentry", fn_name))

    def attach_kretfunc(self, fn_name):
        assert fn_name not in self.kfunc_exit_fds, "attached twice"
        self.kfunc_exit_fds[fn_name] = 1
        self.calls.append(("attach", "fexit", fn_name))

    def detach_kfunc(self, fn_name):
        del self.kfunc_entry_fds[fn_name]
        self.calls.append(("detach", "fentry", fn_name))

    def detach_kretfunc(self, fn_name):
        del self.kfunc_exit_fds[fn_name]
        self.calls.append(("detach", "fexit", fn_name))

    def get_table(self, name):
        return self.tables.setdefault(name, ArrayTable())

    __getitem__ = get_table  # BCC's bpf[name]: the same table, kept


class ArrayTable(dict):
    """A BCC array table as the daemon uses it: ctypes keys and values."""

    def __setitem__(self, key, value):
        assert isinstance(key, ctypes.c_int) and isinstance(value, ctypes.c_ulonglong)
        super().__setitem__(key.value, value.value)


def kernel(text):
    syms = Kallsyms.parse(text.splitlines(), wanted_symbols())
    facts = kernel_facts(syms)
    facts["ZERO_PFN"] = 0x1234
    return select(syms, facts), facts


def program(bpf):
    return Program({"faults": bpf, "type1": bpf})


def attached(statuses):
    return {s.name for s in statuses if s.attached}


def fact_values(bpf):
    table = bpf.get_table("kernel_facts")
    return {name: table[i] for i, name in enumerate(RUNTIME_FACTS)}


def test_probes_attach_when_the_modules_load_and_detach_when_they_go():
    bpf = RecordingBPF()
    prog = program(bpf)
    sel, facts = kernel(VMLINUX)
    # remap_pfn_range is in vmlinux, but whether VFIO calls it is known only from
    # vfio-pci's symbols (vfio_pci_mmap_open, up to 6.9): nothing yet.
    assert attached(prog.apply(sel, facts, ())) == set()
    assert fact_values(bpf)["VFIO_PCI_MMAP_OPS"] == 0

    sel, facts = kernel(VMLINUX + VFIO_PCI + TYPE1)
    statuses = prog.apply(sel, facts, ())
    assert attached(statuses) == {
        "bar_fault", "remap_pfn_range", "pat_untrack", "dma_map", "dma_unmap", "pin_pages", "zero_page_pins",
        "unpin_pages", "locked_vm_charge",
    }
    values = fact_values(bpf)
    assert values["VFIO_PCI_MMAP_OPS"] == 0xFFFFFFFFC0A09000
    assert values["VFIO_PGOFF_IS_PFN"] == 1
    assert values["TYPE1_IOCTL_MAP"] == values["TYPE1_IOCTL_UNMAP"] == 1
    # The type1 ioctl hook serves map and unmap, vfio_pin_pages_remote two probes: attached once.
    assert bpf.calls.count(("attach", "k", "vfio_iommu_type1_ioctl")) == 1
    assert bpf.calls.count(("attach", "k", "vfio_pin_pages_remote")) == 1

    sel, facts = kernel(VMLINUX + TYPE1)  # vfio_pci_core unloaded
    bpf.calls.clear()
    statuses = prog.apply(sel, facts, (), gone_modules={"vfio_pci_core", "vfio_pci"})
    assert "bar_fault" not in attached(statuses) and "dma_map" in attached(statuses)
    assert {c for c in bpf.calls if c[0] == "detach"} == {
        ("detach", "k", "vfio_pci_mmap_fault"), ("detach", "r", "vfio_pci_mmap_fault"), ("detach", "k", "untrack_pfn"),
        ("detach", "k", "remap_pfn_range"), ("detach", "r", "remap_pfn_range"),
    }
    assert not [c for c in bpf.calls if c[0] == "attach"]
    assert fact_values(bpf)["VFIO_PCI_MMAP_OPS"] == 0
    bar = next(s for s in statuses if s.name == "bar_fault")
    assert "vfio_pci_mmap_fault" in bar.detail


def test_a_module_that_came_back_at_the_same_address_is_attached_again():
    bpf = RecordingBPF()
    prog = program(bpf)
    sel, facts = kernel(VMLINUX + VFIO_PCI + TYPE1)
    prog.apply(sel, facts, ())
    bpf.calls.clear()
    prog.apply(sel, facts, (), gone_modules={"vfio_iommu_type1"})  # rmmod + modprobe between two looks
    detached = {c[2] for c in bpf.calls if c[0] == "detach"}
    reattached = {c[2] for c in bpf.calls if c[0] == "attach"}
    assert detached == reattached == {
        "vfio_iommu_type1_ioctl", "vfio_pin_pages_remote", "vfio_unpin_pages_remote", "vfio_lock_acct.part.0",
    }
    assert "__account_locked_vm" not in detached  # vmlinux: untouched


def test_unchanged_kernel_changes_nothing():
    bpf = RecordingBPF()
    prog = program(bpf)
    sel, facts = kernel(VMLINUX + VFIO_PCI + TYPE1)
    first = prog.apply(sel, facts, ())
    bpf.calls.clear()
    assert prog.apply(sel, facts, ()) == first
    assert bpf.calls == []


def test_a_failed_attach_leaves_no_half_attached_probe():
    bpf = RecordingBPF(fail_on={"__account_locked_vm"})
    prog = program(bpf)
    sel, facts = kernel(VMLINUX + VFIO_PCI + TYPE1)
    statuses = {s.name: s for s in prog.apply(sel, facts, ())}
    assert not statuses["locked_vm_charge"].attached
    assert statuses["locked_vm_charge"].detail == "attach failed: cannot attach kprobe, probe entry may not exist"
    assert not {a for a in bpf.attached if a[1] == "vfio_lock_acct.part.0"}
    assert statuses["pin_pages"].attached


def test_disabled_probes_stay_detached():
    bpf = RecordingBPF()
    prog = program(bpf)
    sel, facts = kernel(VMLINUX + VFIO_PCI + TYPE1)
    statuses = {s.name: s for s in prog.apply(sel, facts, ("remap_pfn_range",))}
    assert statuses["remap_pfn_range"][:3] == ("remap_pfn_range", False, "disabled in the configuration")
    assert not {a for a in bpf.attached if a[1] == "remap_pfn_range"}


def test_runtime_facts_match_the_bpf_enum():
    text = COMMON_H.read_text()
    enum = dict(re.findall(r"FACT_(\w+) = (\d+)", text))
    assert {name: int(i) for name, i in enum.items()} == {name: i for i, name in enumerate(RUNTIME_FACTS)}
    assert "KERNEL_FACTS = %d" % len(RUNTIME_FACTS) in text


class RingBPF:
    """Records ring buffers opened and polls, as BCC's BPF object takes them."""

    def __init__(self):
        self.opened, self.polls = [], []

    def __getitem__(self, table):
        bpf = self

        class Table:
            def open_ring_buffer(self, callback):
                bpf.opened.append(table)

        return Table()

    def ring_buffer_poll(self, timeout_ms):
        self.polls.append(timeout_ms)


def test_one_program_polls_the_ring_buffers_of_every_area():
    bpf = RingBPF()
    p = Program({"type1": bpf, "iommufd": bpf})
    p.open_ring_buffer("type1", "pin_events", bytes, print)
    p.open_ring_buffer("iommufd", "iommufd_pin_events", bytes, print)
    p.poll(500)
    assert bpf.opened == ["pin_events", "iommufd_pin_events"] and bpf.polls == [500]


def test_programs_compiled_per_area_are_all_polled():
    """After a per-area compile, the first waits and the others are drained."""
    type1, iommufd = RingBPF(), RingBPF()
    p = Program({"type1": type1, "iommufd": iommufd})
    p.poll(500)  # nothing opened yet: nothing to poll
    p.open_ring_buffer("type1", "pin_events", bytes, print)
    p.open_ring_buffer("iommufd", "iommufd_pin_events", bytes, print)
    p.poll(500)
    assert type1.polls == [500] and iommufd.polls == [0]


class FloodBPF(RingBPF):
    """A ring buffer that always has another record, delivered the way libbpf does:
    one callback per record until the buffer is empty or a callback returns < 0."""

    def __init__(self, clock):
        super().__init__()
        self.clock = clock
        self.callbacks = []
        self.delivered = 0

    def __getitem__(self, table):
        bpf = self

        class Table:
            def open_ring_buffer(self, callback):
                bpf.callbacks.append(callback)

        return Table()

    def ring_buffer_poll(self, timeout_ms):
        while True:
            self.clock[0] += 0.01  # each record takes 10 ms to handle
            self.delivered += 1
            if self.callbacks[0](None, b"x" * 8, 8) < 0:
                return


def test_a_flood_of_records_does_not_hold_the_main_loop(monkeypatch):
    import ctypes

    from vfiomond import bpfload

    clock = [0.0]
    monkeypatch.setattr(bpfload.time, "monotonic", lambda: clock[0])
    monkeypatch.setattr(ctypes, "string_at", lambda data, size: data)
    bpf = FloodBPF(clock)
    p = Program({"type1": bpf})
    seen = []
    p.open_ring_buffer("type1", "pin_events", bytes, seen.append)
    p.poll(500)
    assert bpf.delivered == len(seen) == 26 and p.polls_cut == 1  # 0.25 s of records, each handled
    p.poll(500)
    assert len(seen) == 52 and p.polls_cut == 2


# do_wp_page is hooked by the type1 and iommufd areas; iommufd's hooks need its module.
IOMMUFD = """ffffffff81004000 T do_wp_page
ffffffff81005000 T iommu_map
ffffffff81006000 T iopt_map_user_pages
ffffffff81007000 T iopt_unmap_iova
ffffffff81008000 T iopt_area_unfill_domains
ffffffff81009000 T iopt_table_remove_domain
ffffffff8100a000 T iopt_pages_update_pinned
ffffffff8100b000 T iommufd_ioas_map
"""
ARITIES = {"do_wp_page": 1, "iommu_map": 6, "__account_locked_vm": 5, "remap_pfn_range": 5, "untrack_pfn": 4}


def trampoline_program(bpf, sel):
    """A Program whose trampoline hooks are those plan_trampolines picks, as _compile
    lays them out (one object for every area)."""
    plan = plan_trampolines(sel, ARITIES, True)
    slots = {key: _TrampolineSlot(bpf, ("kretfunc__" if key[1] == "r" else "kfunc__").encode() + key[2].encode(),
                                  key[1] == "r") for key in plan}
    return Program({"faults": bpf, "type1": bpf, "iommufd": bpf}, slots)


def test_vmlinux_hooks_with_fentry_handlers_attach_as_trampolines_module_hooks_as_kprobes():
    sel, facts = kernel(VMLINUX + VFIO_PCI + TYPE1 + IOMMUFD)
    bpf = RecordingBPF()
    prog = trampoline_program(bpf, sel)
    statuses = {s.name: s for s in prog.apply(sel, facts, ())}
    # __account_locked_vm (vmlinux) as one fexit program (Hook.fexit), its marker in
    # type1 as a kprobe pair.
    assert statuses["locked_vm_charge"].detail == "vfio_lock_acct.part.0,__account_locked_vm"
    assert statuses["locked_vm_charge"].methods == "kprobe+kretprobe,fexit"
    assert statuses["pin_write_faults"].methods == "fentry"
    assert statuses["pin_pages"].methods == "kprobe+kretprobe"  # a module function
    assert statuses["iommufd_pin_write_faults"].methods == "kprobe,kprobe+kretprobe"  # no fentry handler
    assert ("attach", "fentry", b"kfunc____account_locked_vm") not in bpf.calls
    assert ("attach", "fexit", b"kretfunc____account_locked_vm") in bpf.calls
    assert not [a for a in bpf.attached if a[1] == "__account_locked_vm"]  # no kprobe either
    assert ("attach", "fentry", b"kfunc__do_wp_page") in bpf.calls
    assert ("k", "do_wp_page", "on_iommufd_write_fault") in bpf.attached
    assert not [c for c in bpf.calls if c[0] == "attach" and c[2] == "__account_locked_vm"]


def test_a_disabled_probe_detaches_its_trampoline_and_a_reload_brings_it_back():
    sel, facts = kernel(VMLINUX + VFIO_PCI + TYPE1 + IOMMUFD)
    bpf = RecordingBPF()
    prog = trampoline_program(bpf, sel)
    prog.apply(sel, facts, ())
    prog.apply(sel, facts, ("pin_write_faults",))
    assert b"kfunc__do_wp_page" not in bpf.kfunc_entry_fds
    assert ("k", "do_wp_page", "on_iommufd_write_fault") in bpf.attached
    prog.apply(sel, facts, ())
    assert b"kfunc__do_wp_page" in bpf.kfunc_entry_fds


def test_trampoline_programs_pass_every_argument_and_the_return_value():
    sel, _ = kernel(VMLINUX + VFIO_PCI + TYPE1 + IOMMUFD)
    text = trampoline_source(plan_trampolines(sel, ARITIES, True))
    fexit = text[text.index("KRETFUNC_PROBE(__account_locked_vm, "):]
    fexit = fexit[:fexit.index("\n}\n")]
    assert fexit.startswith("KRETFUNC_PROBE(__account_locked_vm, u64 arg0, u64 arg1, u64 arg2, u64 arg3, u64 arg4, u64 ret)")
    assert "PT_REGS_PARM5(&regs) = arg4;" in fexit and "PT_REGS_PARM6" not in fexit
    assert "PT_REGS_RC(&regs) = ret;" in fexit
    # A hook with a fexit handler: that handler's body alone, in the one fexit program.
    assert fexit.endswith("    PT_REGS_RC(&regs) = ret;\n    return on_account_locked_vm_fexit__body(&regs);")
    assert "KFUNC_PROBE(__account_locked_vm," not in text
    assert text.count("KFUNC_PROBE(do_wp_page, u64 arg0)") == 1
    assert trampoline_source({}) == ""


def test_a_refused_fexit_handler_falls_back_to_the_kprobe_pair():
    """Without its fexit program, a hook with a fexit handler is its kprobe pair again."""
    sel, facts = kernel(VMLINUX + VFIO_PCI + TYPE1 + IOMMUFD)
    bpf = RecordingBPF()

    def refuse(fn_name):
        raise Exception("Failed to load BPF program b'kretfunc____account_locked_vm': Permission denied")

    bpf.attach_kretfunc = lambda fn_name: refuse(fn_name) if fn_name == b"kretfunc____account_locked_vm" else \
        RecordingBPF.attach_kretfunc(bpf, fn_name)
    prog = trampoline_program(bpf, sel)
    statuses = {s.name: s for s in prog.apply(sel, facts, ())}
    assert statuses["locked_vm_charge"].attached
    assert statuses["locked_vm_charge"].methods == "kprobe+kretprobe,kprobe+kretprobe"
    assert ("k", "__account_locked_vm", "on_account_locked_vm") in bpf.attached
    assert ("r", "__account_locked_vm", "on_account_locked_vm_return") in bpf.attached
    bpf.calls.clear()
    prog.apply(sel, facts, ())  # nothing changes, nothing is tried again
    assert bpf.calls == []
    prog.apply(sel, facts, ("locked_vm_charge",))  # disabled: both kprobes go
    assert not [a for a in bpf.attached if a[1] == "__account_locked_vm"]


MODULE_ARITIES = dict(ARITIES, vfio_pci_mmap_fault=1, vfio_pin_pages_remote=6, vfio_unpin_pages_remote=5)


def test_module_functions_are_trampolines_only_when_configured():
    """probes.module_trampolines: the vfio modules' hooks as fentry/fexit too; a GCC
    copy BTF does not list (vfio_lock_acct.part.0) stays a kprobe."""
    sel, facts = kernel(VMLINUX + VFIO_PCI + TYPE1 + IOMMUFD)
    assert not [k for k, t in plan_trampolines(sel, MODULE_ARITIES, True).items() if t.module]
    plan = plan_trampolines(sel, MODULE_ARITIES, True, module_trampolines=True)
    assert plan[("type1", "r", "vfio_pin_pages_remote")] == bpfload.Trampoline(
        "on_pin_pages_fexit", 6, "vfio_iommu_type1")
    assert ("type1", "k", "vfio_pin_pages_remote") not in plan  # its fexit handler does the entry's work
    assert plan[("type1", "k", "vfio_unpin_pages_remote")].module == "vfio_iommu_type1"
    assert plan[("faults", "k", "vfio_pci_mmap_fault")].module == "vfio_pci_core"
    assert plan[("faults", "r", "vfio_pci_mmap_fault")].fn == "on_bar_fault_return"
    assert not [k for k in plan if k[2].startswith("vfio_lock_acct")]

    bpf = RecordingBPF()
    slots = {key: _TrampolineSlot(bpf, ("kretfunc__" if key[1] == "r" else "kfunc__").encode() + key[2].encode(),
                                  key[1] == "r") for key in plan}
    statuses = {s.name: s for s in Program({"faults": bpf, "type1": bpf, "iommufd": bpf}, slots).apply(sel, facts, ())}
    assert statuses["bar_fault"].methods == "fentry+fexit"
    assert statuses["pin_pages"].methods == "fexit"
    assert statuses["unpin_pages"].methods == "fentry"
    assert statuses["locked_vm_charge"].methods == "kprobe+kretprobe,fexit"
    assert not [a for a in bpf.attached if a[1] in ("vfio_pin_pages_remote", "vfio_pci_mmap_fault")]

    text = trampoline_source(plan)
    assert "MODULE_KRETFUNC_PROBE(vfio_iommu_type1, vfio_pin_pages_remote, u64 arg0, u64 arg1, u64 arg2, " \
           "u64 arg3, u64 arg4, u64 arg5, u64 ret)" in text
    assert "MODULE_KFUNC_PROBE(vfio_pci_core, vfio_pci_mmap_fault, u64 arg0)" in text
    assert "KRETFUNC_PROBE(__account_locked_vm, " in text


def test_mm_lock_acct_is_one_fexit_program_with_module_trampolines():
    """Where type1 has mm_lock_acct(task, mm, lock_cap, npage), a charge is its npage
    and result: one fexit program as a trampoline, a kprobe pair otherwise, and
    nothing on __account_locked_vm either way."""
    sel, facts = kernel(VMLINUX + VFIO_PCI + TYPE1 + "ffffffffc0b05000 t mm_lock_acct\t[vfio_iommu_type1]\n")
    arities = dict(MODULE_ARITIES, mm_lock_acct=4)
    assert not [k for k in plan_trampolines(sel, arities, True) if k[2] == "mm_lock_acct"]
    plan = plan_trampolines(sel, arities, True, module_trampolines=True)
    assert [(k, t) for k, t in plan.items() if k[2] in ("mm_lock_acct", "__account_locked_vm")] == [
        (("type1", "r", "mm_lock_acct"), bpfload.Trampoline("on_mm_lock_acct_fexit", 4, "vfio_iommu_type1"))]
    assert "MODULE_KRETFUNC_PROBE(vfio_iommu_type1, mm_lock_acct, u64 arg0, u64 arg1, u64 arg2, u64 arg3, u64 ret)" \
        in trampoline_source(plan)

    bpf = RecordingBPF()
    slots = {key: _TrampolineSlot(bpf, ("kretfunc__" if key[1] == "r" else "kfunc__").encode() + key[2].encode(),
                                  key[1] == "r") for key in plan}
    statuses = {s.name: s for s in Program({"faults": bpf, "type1": bpf}, slots).apply(sel, facts, ())}
    assert (statuses["locked_vm_charge"].detail, statuses["locked_vm_charge"].methods) == ("mm_lock_acct", "fexit")
    assert not [a for a in bpf.attached if a[1] in ("mm_lock_acct", "__account_locked_vm")]

    bpf = RecordingBPF()
    statuses = {s.name: s for s in Program({"faults": bpf, "type1": bpf}).apply(sel, facts, ())}
    assert statuses["locked_vm_charge"].methods == "kprobe+kretprobe"
    assert {a for a in bpf.attached if a[1] == "mm_lock_acct"} == {
        ("k", "mm_lock_acct", "on_mm_lock_acct"), ("r", "mm_lock_acct", "on_mm_lock_acct_return")}


def test_module_trampolines_a_bcc_cannot_compile_leave_the_vmlinux_ones(caplog):
    """BCC before 0.28 has no MODULE_KFUNC_PROBE: the compile is tried again with the
    module functions' programs left out, not every trampoline."""
    sel, _ = kernel(VMLINUX + VFIO_PCI + TYPE1 + IOMMUFD)
    plan = plan_trampolines(sel, MODULE_ARITIES, True, module_trampolines=True)
    texts = []

    class Compiler:
        def __init__(self, text, cflags):
            texts.append(text)
            if "MODULE_K" in text:
                raise Exception("<text>:900: error: expected ')'")
            self.module = None

    names = [b"kretfunc____account_locked_vm", b"kfunc__do_wp_page", b"kfunc__remap_pfn_range",
             b"kretfunc__remap_pfn_range", b"kfunc__untrack_pfn"]
    lib = type("lib", (), {"bpf_num_functions": staticmethod(lambda module: len(names)),
                           "bpf_function_name": staticmethod(lambda module, i: names[i])})
    bcc = type(sys)("bcc")
    bcc.lib = lib
    sys.modules["bcc"] = bcc
    try:
        programs, slots = bpfload._compile(Compiler, ["faults", "type1"], [], plan, "")
    finally:
        del sys.modules["bcc"]
    assert len(texts) == 2 and "MODULE_K" not in texts[1]
    assert set(programs) == {"faults", "type1"}
    assert ("type1", "r", "__account_locked_vm") in slots and not [k for k in slots if plan[k].module]
    assert "kprobes on module functions" in caplog.text and "every hook a kprobe" not in caplog.text


def test_one_trampoline_per_function_and_kind():
    """BCC names a fentry program after its function: a second area's hook on it stays a kprobe."""
    sel, _ = kernel(VMLINUX + VFIO_PCI + TYPE1 + IOMMUFD)
    shared = [s._replace(hooks=tuple((h._replace(trampoline=True), sym) for h, sym in s.hooks))
              if s.probe.name == "iommufd_pin_write_faults" else s for s in sel]
    plan = plan_trampolines(shared, ARITIES, True)
    assert [k for k in plan if k[2] == "do_wp_page"] == [("type1", "k", "do_wp_page")]


def test_no_trampolines_without_kernel_support():
    sel, _ = kernel(VMLINUX + VFIO_PCI + TYPE1 + IOMMUFD)
    assert plan_trampolines(sel, ARITIES, False) == {}
    assert not [k for k in plan_trampolines(sel, ARITIES, True) if k[2] == "vfio_pin_pages_remote"]
    # A function BTF does not list (an inlined or renamed one) stays a kprobe.
    assert not [k for k in plan_trampolines(sel, {"do_wp_page": 1}, True) if k[2] == "untrack_pfn"]


def test_every_trampoline_handler_has_a_body():
    import glob
    import os

    from vfiomond.probes import PROBES
    sources = "".join(open(p).read() for p in glob.glob(os.path.join(COMMON_H.parent, "*.c")))
    for probe in PROBES:
        for variant in probe.variants:
            for hook in variant.hooks:
                for fn in (hook.entry, hook.ret, hook.fexit):
                    if hook.trampoline and fn:
                        assert "static __always_inline int %s__body(struct pt_regs *ctx)" % fn in sources, fn


def test_a_refused_fentry_program_falls_back_to_its_kprobe():
    sel, facts = kernel(VMLINUX + VFIO_PCI + TYPE1 + IOMMUFD)
    bpf = RecordingBPF()

    def refuse(fn_name):
        raise Exception("Failed to load BPF program b'kfunc__do_wp_page': Permission denied\nverifier log")

    bpf.attach_kfunc = lambda fn_name: refuse(fn_name) if fn_name == b"kfunc__do_wp_page" else \
        RecordingBPF.attach_kfunc(bpf, fn_name)
    prog = trampoline_program(bpf, sel)
    statuses = {s.name: s for s in prog.apply(sel, facts, ())}
    assert statuses["pin_write_faults"].attached and statuses["pin_write_faults"].methods == "kprobe"
    assert ("k", "do_wp_page", "on_type1_write_fault") in bpf.attached
    assert statuses["locked_vm_charge"].methods == "kprobe+kretprobe,fexit"
    bpf.calls.clear()
    prog.apply(sel, facts, ())  # nothing changes, nothing is tried again
    assert bpf.calls == []


def test_a_btf_layout_that_does_not_compile_falls_back_to_the_kernel_headers(caplog):
    texts = []

    class Compiler:
        """BCC's BPF as _compile calls it: refuses the source with KERNEL_LAYOUT_BTF."""

        def __init__(self, text, cflags):
            texts.append(text)
            if text.startswith("#define KERNEL_LAYOUT_BTF"):
                raise Exception("<text>:12: error: use of undeclared identifier 'X'")
            self.module = None

    programs, slots = bpfload._compile(Compiler, ["faults", "type1"], [], {}, "#define KERNEL_LAYOUT_BTF 1\n")
    assert set(programs) == {"faults", "type1"} and slots == {}
    assert len(texts) == 2 and texts[1].startswith(bpfload.layout.header_defines())
    assert "struct offsets from BTF did not compile" in caplog.text


class NoKallsymsReadBPF:
    """A BCC stand-in whose support_kfunc() (a read of all of /proc/kallsyms) must not run."""

    @staticmethod
    def support_kfunc():
        raise AssertionError("support_kfunc read kallsyms again")


def test_trampolines_need_the_kernels_trampoline_code_in_kallsyms(monkeypatch):
    monkeypatch.setattr(bpfload.platform, "machine", lambda: "x86_64")
    assert bpfload._bcc_attaches_trampolines(NoKallsymsReadBPF, False) is False
    sel, _ = kernel(VMLINUX + VFIO_PCI + TYPE1)
    assert bpfload._trampoline_support(NoKallsymsReadBPF, sel, False) == ({}, False)


def test_bcc_makes_trampolines_on_x86_64_only(monkeypatch):
    monkeypatch.setattr(bpfload.platform, "machine", lambda: "aarch64")
    assert bpfload._bcc_attaches_trampolines(NoKallsymsReadBPF, True) is False


def test_an_area_no_module_of_the_kernel_can_bring_is_left_out_of_the_compile():
    areas, left_out = bpfload.areas_to_compile({}, lambda: {"vfio", "vfio_pci_core", "vfio_iommu_type1"})
    assert "iommufd" not in areas
    assert left_out["iommufd"] == "iommufd not in kallsyms, and this kernel has no module iommufd"
    # Areas with a probe that needs no feature, or a feature a module may bring, stay.
    assert {"faults", "type1", "users", "bar_dmabuf", "resets", "iommu_faults"} <= set(areas)
    assert list(left_out) == ["iommufd"]


def test_an_area_stays_while_its_feature_is_present_could_load_or_is_unknown():
    def never_asked():
        raise AssertionError("the modules were read though the feature is present")

    assert "iommufd" in bpfload.areas_to_compile({"FEATURE_IOMMUFD": 1}, never_asked)[0]
    assert "iommufd" in bpfload.areas_to_compile({}, lambda: {"iommufd"})[0]
    assert "iommufd" in bpfload.areas_to_compile({}, lambda: None)[0]


def test_a_probe_of_an_area_left_out_says_a_restart_brings_it():
    from vfiomond.probes import PROBES, Selected

    probe = next(p for p in PROBES if p.name == "iommufd_dma_map")
    sel = Selected(probe, probe.variants[0], (), "")  # the feature came after the start
    statuses = Program({}, None, {"iommufd": "no iommufd"}).apply([sel], {}, [])
    assert not statuses[0].attached and "not compiled at start (no iommufd): restart" in statuses[0].detail


def test_module_trampolines_need_bcc_0_28(monkeypatch):
    bcc = type(sys)("bcc")
    monkeypatch.setitem(sys.modules, "bcc", bcc)
    for version, has in (("0.26.0+ds", False), ("0.18.0", False), ("0.28.0", True), ("0.31.0+ds", True),
                         ("0.37.0-1", True), ("1.0", True)):
        bcc.__version__ = version
        assert bpfload._bcc_has_module_trampolines() is has, version
    del bcc.__version__
    assert bpfload._bcc_has_module_trampolines() is True  # unknown: tried, and the compile falls back
