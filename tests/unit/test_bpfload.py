"""Program.apply: attachments follow the probe selection as modules come and go.

The BPF object is a recording stand-in (no kernel, no BCC); the selections are
real ones, made by probes.select from kallsyms texts.
"""

import ctypes
import pathlib
import re

from vfiomond.bpfload import RUNTIME_FACTS, Program
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
    assert statuses["remap_pfn_range"] == ("remap_pfn_range", False, "disabled in the configuration")
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
