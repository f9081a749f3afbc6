"""Pin verification's logic (vfiomond/pins.py), fed by a stand-in for the kernel's
table of live mappings (bpf/common.h pin_maps, read by vfiomond/pintable.py)."""

import pytest

from vfiomond.pins import (
    EV_MAP_END, EV_WRITE_FAULT, EVENT, PAGE, KernelMapping, PinEvent, PinTracker, PinWatch, families, parse_event,
    sample_offsets, sample_slots, vfio_devices,
)

MIB = 1 << 20
VADDR, IOVA, SPACE, OTHER_SPACE, ZERO = 0x7F0000000000, 0x100000, 0xFFFF888000001000, 0xFFFF888000002000, 0x77


def filled_by(off, length, size, samples):
    """The offsets pin_map_fill() of bpf/common.h fills from a run pinned at
    [off, off + length) (u64 arithmetic)."""
    stride = (size // (samples - 1)) & ~(PAGE - 1)
    if stride < PAGE:
        stride = PAGE
    out = set()
    slot = (off + stride - 1) // stride
    while slot < samples and slot * stride < off + length and slot * stride < size:
        out.add(slot * stride)
        slot += 1
    if off <= size - PAGE < off + length:
        out.add(size - PAGE)
    return out


@pytest.mark.parametrize("size", [PAGE, 3 * PAGE, 64 * PAGE, 2 * MIB, 4 * MIB + 3 * PAGE, 1 << 30])
@pytest.mark.parametrize("samples", [2, 16, 64])
def test_kernel_and_daemon_agree_on_sample_pages(size, samples):
    offsets = sample_offsets(size, samples)
    assert offsets[0] == 0 and offsets[-1] == size - PAGE
    assert len(sample_slots(size, samples)) == samples + 1 and len(offsets) <= samples + 1
    probe = set(offsets) | {o + PAGE for o in offsets if o + PAGE < size} | {max(0, o - PAGE) for o in offsets}
    for off in sorted(probe):
        assert (filled_by(off, PAGE, size, samples) == {off}) == (off in offsets), off


def test_samples_are_bounded_whatever_the_size():
    assert len(sample_offsets(1 << 40, 16)) <= 17
    assert len(sample_offsets(3 * PAGE, 16)) == 3
    assert sample_slots(PAGE // 2, 4) == [None] * 5


def test_parse_event_layout():
    raw = EVENT.pack(EV_WRITE_FAULT, 42, -12, 0, 0x7F0000000000, 0x1000000, 0, 3, 0x1234, 5, 6, 0xFFFF888001234000,
                     0x7F0000100000, 77)
    assert EVENT.size == 96
    assert parse_event(raw) == PinEvent(EV_WRITE_FAULT, 42, -12, 0x7F0000000000, 0x1000000, 0, 3, 0x1234, 5, 6,
                                        0xFFFF888001234000, 0x7F0000100000, 77)


class Table:
    """Stands for one backend's pintable.PinTable: the kernel's entries, by (space, iova)."""

    def __init__(self):
        self.entries = {}
        self.outside_faults = 0

    def put(self, seq, pid=10, iova=IOVA, size=16 * PAGE, pfn=0x1000, vaddr=VADDR, space=SPACE, every=4):
        self.entries[(space, iova)] = KernelMapping(space, iova, seq, pid, vaddr, size,
                                                    {off: pfn + off // PAGE for off in range(0, size, every * PAGE)})

    def mappings(self):
        return list(self.entries.values())

    def seq(self, space, iova):
        e = self.entries.get((space, iova))
        return e.seq if e else None

    def outside(self):
        return self.outside_faults


class Sink:
    def __init__(self):
        self.alerts = []

    def alert(self, kind, message, **fields):
        self.alerts.append((kind.name, fields))


def reader(current, on_read=None):
    def read(pid, vaddrs):
        read.calls.append(pid)
        if on_read:
            on_read()
        return {v: current[v] for v in vaddrs if v in current}
    read.calls = []
    return read


def watch_of(table, current, on_read=None, devices=None, read=None):
    t = PinTracker(samples=4, zero_pfn=ZERO)
    sink = Sink()
    w = PinWatch(t, sink, read or reader(current, on_read), devices=devices or (lambda pid: ["0000:00:02.0"]),
                 kernel={"type1": table}, pte_pfn=lambda pte: (pte & ((1 << 46) - 1)) >> 12)
    return t, sink, w


def write_fault(w, vaddr, pfn, seq=7, pid=10, iova=IOVA, size=16 * PAGE, backend="type1"):
    """What the kernel sends: the raw PTE (the PFN between flag bits), the mapping it named."""
    w.on_event(PinEvent(EV_WRITE_FAULT, pid, 0, vaddr, iova, size, 0, (1 << 63) | pfn << 12 | 0x25, space=SPACE,
                        map_vaddr=VADDR, seq=seq), backend)


# ---------------------------------------------------------------- passes


def test_each_pass_tracks_exactly_the_kernels_mappings():
    table = Table()
    t, sink, w = watch_of(table, {})
    table.put(seq=1)
    table.put(seq=2, iova=0x900000)
    table.put(seq=3, space=OTHER_SPACE)  # the same IOVA in another space is another mapping
    w.verify_all()
    assert sorted((m.space, m.iova) for m in t.mappings()) == [(SPACE, IOVA), (SPACE, 0x900000), (OTHER_SPACE, IOVA)]
    assert t.get("type1", SPACE, IOVA).pinned == {0: 0x1000, 4 * PAGE: 0x1004, 8 * PAGE: 0x1008, 12 * PAGE: 0x100C}
    del table.entries[(SPACE, 0x900000)]
    w.verify_all()
    assert len(t.mappings()) == 2
    table.entries.clear()
    w.verify_all()
    assert t.mappings() == [] and t.by_pid == {}


def test_consistent_mapping_has_no_mismatch():
    table = Table()
    table.put(seq=1)
    t, sink, w = watch_of(table, {VADDR + off: 0x1000 + off // PAGE for off in range(0, 16 * PAGE, PAGE)})
    w.verify_all()
    assert t.verifications == 4 and t.mismatches == 0 and sink.alerts == []


def test_a_divergence_is_alerted_once_with_its_fields_and_clears():
    table = Table()
    table.put(seq=1, pfn=ZERO - 4)  # the page at offset 4 pinned the zero page
    current = {VADDR + 4 * PAGE: 0x5555}
    t, sink, w = watch_of(table, current)
    w.verify_all()
    w.verify_all()
    assert [k for k, _ in sink.alerts] == ["pin_mismatch"] and t.mismatches == 1
    fields = sink.alerts[0][1]
    assert fields["PID"] == 10 and fields["IOVA"] == "0x104000" and fields["VADDR"] == "0x7f0000004000"
    assert fields["PINNED_PFN"] == "0x77" and fields["CURRENT_PFN"] == "0x5555" and fields["ZERO_PAGE"] == 1
    assert fields["DETECTED_BY"] == "sampling" and fields["DEVICES"] == "0000:00:02.0"
    assert t.mismatched_pages() == {10: 1}
    current[VADDR + 4 * PAGE] = ZERO  # the page is back
    w.verify_all()
    assert t.mismatched_pages() == {10: 0}


def test_a_page_not_present_is_not_a_mismatch():
    table = Table()
    table.put(seq=1)
    t, sink, w = watch_of(table, {})
    w.verify_all()
    assert t.verifications == 4 and t.mismatches == 0


def test_a_files_pages_are_tracked_not_read_from_any_process():
    """IOMMU_IOAS_MAP_FILE (a memfd's pages) makes an entry with vaddr 0: it is one of
    the kernel's live mappings, with its pinned PFNs, but no process page is read for
    it, so nothing is counted as verified or diverged (the process may have a page at
    the low addresses its offsets would name)."""
    table = Table()
    table.put(seq=1, vaddr=0)
    current = {off: 0x5555 for off in range(0, 16 * PAGE, PAGE)}
    t, sink, w = watch_of(table, current)
    w.verify_all()
    assert [(m.iova, m.vaddr) for m in t.mappings()] == [(IOVA, 0)]
    assert t.get("type1", SPACE, IOVA).pinned[4 * PAGE] == 0x1004
    assert t.verifications == 0 and t.mismatches == 0 and sink.alerts == []


def test_a_read_that_outlived_its_mapping_proves_nothing():
    """The daemon is slow: the kernel removed the mapping (vfio_remove_dma) and the
    process mapped another buffer at the address before the read.  The entry is gone
    (or made again, with a new seq) when the read ends: deferred, never alerted."""
    table = Table()
    current = {VADDR + off: 0x9000 + off // PAGE for off in range(0, 16 * PAGE, PAGE)}
    table.put(seq=1)

    def remap():
        table.put(seq=2)  # the next mapping at the same IOVA, made during the read

    t, sink, w = watch_of(table, current, on_read=remap)
    w.verify_all()
    assert sink.alerts == [] and t.deferred == 4 and t.mismatches == 0


def test_a_new_seq_at_an_iova_is_a_new_mapping():
    table = Table()
    table.put(seq=1)
    t, sink, w = watch_of(table, {VADDR: 0x5555})
    w.verify_all()
    assert len(sink.alerts) == 1
    table.put(seq=2, pfn=0x5555)  # unmapped and mapped again: the device now has the page the process sees
    w.verify_all()
    assert len(sink.alerts) == 1 and t.get("type1", SPACE, IOVA).seq == 2 and t.mismatched_pages() == {10: 0}


def test_processes_gone_or_without_vfio_files_are_dropped():
    table = Table()
    table.put(seq=1)
    table.put(seq=2, pid=99, iova=0x900000)
    devices = {10: ["0000:00:02.0"]}
    t, sink, w = watch_of(table, {}, devices=lambda pid: devices.get(pid))
    w.verify_all()
    assert t.pids() == {10}


def test_a_process_exiting_mid_read_is_dropped():
    def gone(pid, vaddrs):
        raise ProcessLookupError(pid)

    table = Table()
    table.put(seq=1)
    t, sink, w = watch_of(table, {}, read=gone)
    w.verify_all()
    assert t.mappings() == [] and sink.alerts == []


# ---------------------------------------------------------------- records


def test_a_map_that_pinned_the_zero_page_is_alerted_from_its_record():
    t, sink, w = watch_of(Table(), {})
    w.on_event(PinEvent(EV_MAP_END, 10, 0, VADDR, IOVA, 2 << 20, 3, 0, locked=17, space=SPACE, seq=5), "type1")
    assert [(k, f["ZERO_SAMPLES"], f["SAMPLES"], f["IOVA"], f["SIZE_BYTES"], f["DEVICES"]) for k, f in sink.alerts] \
        == [("zero_page_pin", 3, 17, "0x100000", 2 << 20, "0000:00:02.0")]


def test_a_zero_page_write_in_a_mapping_the_daemon_never_saw_is_reported_with_its_iova():
    """Map read-only, write, close, all between two passes: the kernel named the
    mapping at the fault, which is all the daemon needs (seeds/003 on 6.1)."""
    t, sink, w = watch_of(Table(), {})
    write_fault(w, VADDR + 5 * PAGE, ZERO)
    write_fault(w, VADDR + 6 * PAGE, ZERO)  # the same mapping: counted, not alerted again
    assert t.write_faults == {("type1", "diverged"): 2}
    assert [k for k, _ in sink.alerts] == ["pin_mismatch"]
    fields = sink.alerts[0][1]
    assert fields["IOVA"] == "0x105000" and fields["VADDR"] == "0x7f0000005000" and fields["ZERO_PAGE"] == 1
    assert fields["PINNED_PFN"] == "0x77" and fields["DETECTED_BY"] == "write_fault"
    assert fields["CURRENT_PFN"] == "unknown"  # the mapping is gone from the kernel's table
    assert t.replaced_pages() == {10: 2}
    w.verify_all()  # and the pass forgets it
    assert t.mappings() == []


def test_a_zero_page_write_in_a_live_mapping_reads_the_new_page():
    table = Table()
    table.put(seq=7, pfn=ZERO)
    t, sink, w = watch_of(table, {VADDR: 0x4242})
    write_fault(w, VADDR, ZERO)
    assert sink.alerts[0][1]["CURRENT_PFN"] == "0x4242"


def test_a_zero_page_write_read_before_the_copy_landed_has_an_unknown_current_pfn():
    table = Table()
    table.put(seq=7, pfn=ZERO)
    t, sink, w = watch_of(table, {VADDR: ZERO})
    write_fault(w, VADDR, ZERO)
    assert sink.alerts[0][1]["CURRENT_PFN"] == "unknown"


def test_a_mapping_first_known_from_a_write_fault_gets_its_samples_at_the_next_pass():
    table = Table()
    table.put(seq=7)
    t, sink, w = watch_of(table, {VADDR: 0x5555})
    write_fault(w, VADDR + 5 * PAGE, ZERO)
    w.verify_all()
    m = t.get("type1", SPACE, IOVA)
    assert len(m.pinned) == 4 and m.alerted
    assert t.mismatches == 1 and [k for k, _ in sink.alerts] == ["pin_mismatch"]  # counted, alerted once


def test_a_write_fault_that_kept_its_page_is_no_divergence():
    table = Table()
    table.put(seq=7)
    t, sink, w = watch_of(table, {VADDR + 2 * PAGE: 0x1002})  # the pagemap still shows the pinned page
    write_fault(w, VADDR + 2 * PAGE, 0x1002)
    assert t.write_faults == {}  # read at once, unchanged: the fault may not have finished
    w.verify_all()  # read again a pass later
    assert t.write_faults == {("type1", "kept"): 1} and sink.alerts == []


def test_a_pinned_page_of_the_huge_zero_page_is_named_the_zero_page():
    """The huge zero page's pages are not the 4 KiB zero page's PFN: kpageflags
    (ZERO_PAGE, set for the huge zero page's pages too) names them."""
    huge_zero = range(0x200000, 0x200200)
    table = Table()
    table.put(seq=1, pfn=huge_zero[0] - 4)  # from offset 4 on: the huge zero page
    t, sink, w = watch_of(table, {VADDR + 4 * PAGE: 0x5555})
    t._zero_page = lambda pfn: pfn in huge_zero
    w.verify_all()
    fields = sink.alerts[0][1]
    assert fields["PINNED_PFN"] == hex(huge_zero[0]) and fields["ZERO_PAGE"] == 1
    assert t.is_zero(ZERO) and t.is_zero(huge_zero[-1]) and not t.is_zero(huge_zero[-1] + 1)
    assert not t.is_zero(None)
    assert not PinTracker(samples=4, zero_pfn=ZERO).is_zero(huge_zero[0])  # without kpageflags


def test_a_write_fault_whose_page_changed_after_the_first_read_diverges():
    table = Table()
    table.put(seq=7)
    current = {}
    t, sink, w = watch_of(table, current)
    write_fault(w, VADDR + 2 * PAGE, 0x1002)
    current[VADDR + 2 * PAGE] = 0x8888  # the copy lands after the first read
    w.verify_all()
    assert t.write_faults == {("type1", "diverged"): 1}
    assert sink.alerts[0][1]["CURRENT_PFN"] == "0x8888" and sink.alerts[0][1]["ZERO_PAGE"] == 0


def test_a_write_fault_whose_mapping_ended_before_the_second_read_proves_nothing():
    table = Table()
    table.put(seq=7)
    current = {}
    t, sink, w = watch_of(table, current)
    write_fault(w, VADDR + 2 * PAGE, 0x1002)
    del table.entries[(SPACE, IOVA)]  # unmapped; the process put other memory there
    current[VADDR + 2 * PAGE] = 0x9999
    w.verify_all()
    assert t.write_faults == {("type1", "unknown"): 1} and sink.alerts == []


def test_write_faults_outside_every_mapping_are_counted_by_the_kernel():
    table = Table()
    table.outside_faults = 9
    t, sink, w = watch_of(table, {})
    w.verify_all()
    fam = {f.name: f for f in families(t, ["type1"])}["vfiomond_pin_write_faults"]
    assert {s.labels["outcome"]: s.value for s in fam.samples} == {"diverged": 0, "kept": 0, "unknown": 0,
                                                                  "untracked": 9}


# ---------------------------------------------------------------- backends


@pytest.mark.parametrize("disable, backends", [
    ((), {"type1", "iommufd"}),
    (("iommufd_pin_samples",), {"type1"}),
    # The kernel's table needs no unmap records.
    (("dma_unmap", "iommufd_dma_unmap"), {"type1", "iommufd"}),
    (("pin_samples",), {"iommufd"}),
    (("pin_pages", "iommufd_dma_map"), set()),
])
def test_pin_verification_per_backend_follows_the_disabled_probes(disable, backends):
    from vfiomond.config import Config
    from vfiomond.daemon import _pin_watch

    watch = _pin_watch(Config(disable=disable), {"ZERO_PFN": 0x1234}, sink=None)
    assert watch.backends == backends  # made even with none: a reload may enable one


def test_no_pin_verification_without_the_zero_pfn_or_when_off():
    from vfiomond.config import Config
    from vfiomond.daemon import _pin_watch

    assert _pin_watch(Config(), {}, sink=None) is None
    assert _pin_watch(Config(pin_verify=False), {"ZERO_PFN": 1}, sink=None) is None


def test_disabling_a_backend_on_reload_drops_its_mappings_and_ignores_its_records():
    table = Table()
    table.put(seq=1)
    t, sink, w = watch_of(table, {})
    w.verify_all()
    w.set_backends({"iommufd"})
    assert t.mappings() == [] and t.untracked == {"backend_off": 1}
    write_fault(w, VADDR, ZERO)
    w.verify_all()
    assert t.mappings() == [] and sink.alerts == []
    w.set_backends({"type1", "iommufd"})
    w.verify_all()
    assert len(t.mappings()) == 1


def test_backends_are_kept_apart():
    type1, iommufd = Table(), Table()
    type1.put(seq=1)
    iommufd.put(seq=1, pid=11)
    t = PinTracker(samples=4, zero_pfn=ZERO)
    w = PinWatch(t, Sink(), reader({}), devices=lambda pid: ["0000:00:02.0"],
                 kernel={"type1": type1, "iommufd": iommufd})
    w.verify_all()
    assert {(m.backend, m.pid) for m in t.mappings()} == {("type1", 10), ("iommufd", 11)}
    del iommufd.entries[(SPACE, IOVA)]
    w.verify_all()
    assert [(m.backend, m.pid) for m in t.mappings()] == [("type1", 10)]


def test_devices_of_a_process_by_group_and_by_cdev(tmp_path):
    """type1 users hold /dev/vfio/N, iommufd users /dev/vfio/devices/vfioN."""
    sysfs, proc = tmp_path / "sys", tmp_path / "proc"
    (sysfs / "kernel/iommu_groups/7/devices/0000:00:03.0").mkdir(parents=True)
    (sysfs / "class/vfio-dev/vfio0").mkdir(parents=True)
    (sysfs / "class/vfio-dev/vfio0/device").symlink_to("../../../devices/pci0000:00/0000:00:04.0")
    fds = proc / "123/fd"
    fds.mkdir(parents=True)
    for fd, target in (("3", "/dev/vfio/7"), ("4", "/dev/vfio/devices/vfio0"), ("5", "/dev/iommu"), ("6", "/dev/null")):
        (fds / fd).symlink_to(target)
    assert vfio_devices(123, str(sysfs), str(proc)) == ["0000:00:03.0", "0000:00:04.0"]
    assert vfio_devices(124, str(sysfs), str(proc)) is None


def test_a_write_fault_queued_while_a_pass_read_the_page_is_reported_as_the_write_fault():
    """QEMU writes its ROMs right after mapping them: the page can be replaced while a
    pass reads it, before the main loop has delivered the write fault.  The pass hands
    the queued records over (``drain``) before it alerts: one alert, by the write fault."""
    table = Table()
    table.put(seq=7, pfn=ZERO)
    current = {VADDR + off: pfn for off, pfn in table.entries[(SPACE, IOVA)].pinned.items()}
    t, sink, w = watch_of(table, current)
    w.verify_all()
    assert sink.alerts == []
    current[VADDR] = 0x4242  # the copy the write fault made
    w.verify_all(drain=lambda: write_fault(w, VADDR, ZERO))
    assert [(k, f["DETECTED_BY"]) for k, f in sink.alerts] == [("pin_mismatch", "write_fault")]


def test_a_pass_with_nothing_queued_reports_what_it_found():
    table = Table()
    table.put(seq=7)
    current = {VADDR + off: pfn for off, pfn in table.entries[(SPACE, IOVA)].pinned.items()}
    t, sink, w = watch_of(table, current)
    w.verify_all()
    current[VADDR + 4 * PAGE] = 0x9999
    w.verify_all(drain=lambda: None)
    assert [(k, f["DETECTED_BY"]) for k, f in sink.alerts] == [("pin_mismatch", "sampling")]
