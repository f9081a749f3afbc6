import pytest

from vfiomond.pins import (
    EV_MAP_BEGIN, EV_MAP_END, EV_PIN, EV_UNMAP, EVENT, PAGE, PinEvent, PinTracker, PinWatch,
    parse_event, sample_offsets, vfio_devices,
)

MIB = 1 << 20


def holds_sample(off, length, size, samples):
    """holds_sample() of bpf/common.h, line by line (u64 arithmetic)."""
    stride = (size // (samples - 1)) & ~(PAGE - 1)
    if stride < PAGE:
        stride = PAGE
    nxt = (off + stride - 1) // stride * stride
    last = size - PAGE
    return (nxt < off + length and nxt < size) or (last >= off and last < off + length)


@pytest.mark.parametrize("size", [PAGE, 3 * PAGE, 64 * PAGE, 2 * MIB, 4 * MIB + 3 * PAGE, 1 << 30])
@pytest.mark.parametrize("samples", [2, 16, 1024])
def test_kernel_and_daemon_agree_on_sample_pages(size, samples):
    offsets = sample_offsets(size, samples)
    assert offsets[0] == 0 and offsets[-1] == size - PAGE
    assert len(offsets) <= max(samples + 1, 2) or len(offsets) <= size // PAGE
    # Every sample page is sent by the kernel, and one-page runs elsewhere are not.
    probe = set(offsets) | {o + PAGE for o in offsets if o + PAGE < size} | {max(0, o - PAGE) for o in offsets}
    for off in sorted(probe):
        assert holds_sample(off, PAGE, size, samples) == (off in offsets), off


def test_samples_are_bounded_whatever_the_size():
    assert len(sample_offsets(1 << 40, 16)) <= 17
    assert len(sample_offsets(3 * PAGE, 16)) == 3


def ev(t, pid=10, ret=0, vaddr=0, iova=0, size=0, npage=0, pfn=0, space=0):
    return PinEvent(t, pid, ret, vaddr, iova, size, npage, pfn, space=space)


def test_parse_event_layout():
    raw = EVENT.pack(EV_PIN, 42, -12, 0, 0x7F0000000000, 0x1000000, 0, 3, 0x1234, 5, 6, 0xFFFF888001234000)
    assert EVENT.size == 80
    assert parse_event(raw) == PinEvent(EV_PIN, 42, -12, 0x7F0000000000, 0x1000000, 0, 3, 0x1234, 5, 6,
                                        0xFFFF888001234000)


VADDR = 0x7F0000000000


def mapped(tracker, size=16 * PAGE, runs=((0, 16, 0x1000),), iova=0x100000, pid=10, space=0, vaddr=VADDR):
    tracker.on_event(ev(EV_MAP_BEGIN, pid, vaddr=vaddr, iova=iova, size=size, space=space))
    for off_pages, npage, pfn in runs:
        tracker.on_event(ev(EV_PIN, pid, vaddr=vaddr + off_pages * PAGE, iova=iova + off_pages * PAGE, npage=npage,
                            pfn=pfn, space=space))
    tracker.on_event(ev(EV_MAP_END, pid, vaddr=vaddr, iova=iova, size=size, space=space))


def reader(current):
    calls = []

    def read(pid, vaddrs):
        calls.append((pid, list(vaddrs)))
        return {va: current.get(va, 0x1000 + (va - VADDR) // PAGE) for va in calls[-1][1]}

    read.calls = calls
    return read


def test_pinned_pfns_follow_the_contiguous_runs():
    t = PinTracker(samples=4)
    mapped(t, size=16 * PAGE, runs=((0, 10, 0x1000), (10, 6, 0x9000)))
    m = t.get(10, 0, 0x100000)
    assert m.offsets == [0, 5 * PAGE, 10 * PAGE, 15 * PAGE]
    assert m.pinned == {0: 0x1000, 5 * PAGE: 0x1005, 10 * PAGE: 0x9000, 15 * PAGE: 0x9005}


def test_consistent_mapping_has_no_mismatch():
    t = PinTracker(samples=16)
    mapped(t)
    read = reader({})
    assert t.verify(t.mappings(), read) == []
    assert t.verifications == 16 and t.mismatches == 0
    assert read.calls == [(10, [VADDR + i * PAGE for i in range(16)])]


def test_divergence_is_reported_once_and_clears():
    t = PinTracker(samples=16, zero_pfn=0x77)
    mapped(t, runs=((0, 16, 0x1000),))
    moved = {VADDR + 3 * PAGE: 0x5555}
    found = t.verify(t.mappings(), reader(moved))
    assert [mm[:5] for mm in found] == [(10, VADDR + 3 * PAGE, 0x100000 + 3 * PAGE, 0x1003, 0x5555)]
    assert found[0].mapping is t.get(10, 0, 0x100000)
    assert t.verify(t.mappings(), reader(moved)) == []  # still diverged, not new
    assert t.mismatches == 1 and t.mismatched_pages() == {10: 1}
    t.verify(t.mappings(), reader({}))
    assert t.mismatched_pages() == {10: 0}


def test_page_not_present_is_not_a_mismatch():
    t = PinTracker(samples=16)
    mapped(t)
    assert t.verify(t.mappings(), reader({VADDR: None})) == []


def test_failed_map_and_unmap_drop_samples():
    t = PinTracker(samples=16)
    t.on_event(ev(EV_MAP_BEGIN, vaddr=VADDR, iova=0x1000, size=16 * PAGE))
    t.on_event(ev(EV_MAP_END, ret=-12, vaddr=VADDR, iova=0x1000))
    assert t.mappings() == [] and t.per_process == {}
    mapped(t, iova=0x100000)
    mapped(t, iova=0x200000)
    mapped(t, iova=0x100000, pid=11, space=1)
    t.on_event(ev(EV_UNMAP, iova=0x100000, size=16 * PAGE))
    assert {(m.pid, m.iova) for m in t.mappings()} == {(10, 0x200000), (11, 0x100000)}
    assert t.samples_tracked() == 32 and t.per_process == {10: 1, 11: 1}


def test_incomplete_mapping_is_not_verified():
    t = PinTracker(samples=16)
    t.on_event(ev(EV_MAP_BEGIN, vaddr=VADDR, iova=0x1000, size=16 * PAGE))
    read = reader({})
    assert t.verify(t.mappings(), read) == [] and read.calls == []


class Sink:
    def __init__(self):
        self.alerts = []

    def alert(self, kind, message, **fields):
        self.alerts.append((kind.name, message, fields))


def test_watch_alerts_with_fields_and_drops_vanished_processes():
    t = PinTracker(samples=16, zero_pfn=0x1003)
    sink = Sink()
    devices = {10: ["0000:00:02.0"]}
    watch = PinWatch(t, sink, reader({VADDR + 3 * PAGE: 0x5555}), devices=lambda pid: devices.get(pid))
    mapped(t)
    mapped(t, pid=99)  # a process that is gone
    watch.verify_all()
    assert t.get(99, 0, 0x100000) is None and t.pids() == {10}
    assert len(sink.alerts) == 1
    kind, message, fields = sink.alerts[0]
    assert kind == "pin_mismatch" and "zero page" in message
    assert fields["PID"] == 10 and fields["PINNED_PFN"] == "0x1003" and fields["CURRENT_PFN"] == "0x5555"
    assert fields["IOVA"] == "0x103000" and fields["ZERO_PAGE"] == 1 and fields["DEVICES"] == "0000:00:02.0"


def test_an_unmap_is_not_verified_after_the_fact():
    """The daemon handles an UNMAP after the kernel unpinned: the process may have
    mapped a new buffer at the same address (seen in the lab: the same two huge pages
    in the other order), so comparing then would be a false alert."""
    t = PinTracker(samples=16)
    sink = Sink()
    read = reader({VADDR: 0x4242})
    watch = PinWatch(t, sink, read, devices=lambda pid: ["0000:00:02.0"])
    mapped(t)
    watch.on_event(ev(EV_UNMAP, 10, iova=0x100000, size=16 * PAGE))
    watch.verify_all()
    assert t.mappings() == [] and sink.alerts == [] and read.calls == []


def test_watch_survives_a_process_exiting_mid_read():
    t = PinTracker(samples=16)

    def gone(pid, vaddrs):
        raise ProcessLookupError(pid)

    watch = PinWatch(t, Sink(), gone, devices=lambda pid: ["0000:00:02.0"])
    mapped(t)
    watch.verify_all()
    assert t.mappings() == []


def mapped_through(watch, pid=10, runs=((0, 16, 0x1000),), size=16 * PAGE, iova=0x100000):
    watch.on_event(ev(EV_MAP_BEGIN, pid, vaddr=VADDR, iova=iova, size=size))
    for off_pages, npage, pfn in runs:
        watch.on_event(ev(EV_PIN, pid, vaddr=VADDR + off_pages * PAGE, iova=iova + off_pages * PAGE, npage=npage, pfn=pfn))
    watch.on_event(ev(EV_MAP_END, pid, vaddr=VADDR, iova=iova, size=size))


def test_zero_page_pin_is_alerted_once_at_map_end():
    # A read-only MAP_DMA of untouched memory on 6.1: every page pins the zero page (one-page runs).
    t = PinTracker(samples=4, zero_pfn=0x77)
    sink = Sink()
    watch = PinWatch(t, sink, reader({}), devices=lambda pid: ["0000:00:02.0"])
    mapped_through(watch, runs=tuple((i, 1, 0x77) for i in range(8)) + ((8, 8, 0x2000),))
    assert [(k, f["ZERO_SAMPLES"], f["SAMPLES"], f["SIZE_BYTES"]) for k, _, f in sink.alerts] == [("zero_page_pin", 2, 4, 16 * PAGE)]
    assert sink.alerts[0][2]["IOVA"] == "0x100000" and sink.alerts[0][2]["DEVICES"] == "0000:00:02.0"


def test_no_zero_page_alert_without_zero_pins_or_a_known_zero_pfn():
    for zero_pfn in (0x77, None):
        sink = Sink()
        watch = PinWatch(PinTracker(samples=4, zero_pfn=zero_pfn), sink, reader({}), devices=lambda pid: [])
        mapped_through(watch, runs=((0, 16, 0x1000 if zero_pfn else 0x77),))
        assert sink.alerts == []


def test_failed_map_raises_no_zero_page_alert():
    sink = Sink()
    watch = PinWatch(PinTracker(samples=4, zero_pfn=0x77), sink, reader({}), devices=lambda pid: [])
    watch.on_event(ev(EV_MAP_BEGIN, 10, vaddr=VADDR, iova=0x1000, size=16 * PAGE))
    watch.on_event(ev(EV_PIN, 10, vaddr=VADDR, iova=0x1000, npage=16, pfn=0x77))
    watch.on_event(ev(EV_MAP_END, 10, ret=-12, vaddr=VADDR, iova=0x1000))
    assert sink.alerts == []


SPACE_A, SPACE_B = 0xFFFF888000100000, 0xFFFF888000200000  # two IOAS (or containers) of one process


def test_iova_spaces_are_kept_apart():
    t = PinTracker(samples=16)
    mapped(t, iova=0x100000, space=SPACE_A, runs=((0, 16, 0x1000),))
    mapped(t, iova=0x100000, space=SPACE_B, vaddr=VADDR + MIB, runs=((0, 16, 0x9000),))
    assert len(t.mappings()) == 2
    a, b = t.get(10, SPACE_A, 0x100000), t.get(10, SPACE_B, 0x100000)
    assert a.pinned[0] == 0x1000 and b.pinned[0] == 0x9000
    t.on_event(ev(EV_UNMAP, iova=0x100000, size=16 * PAGE, space=SPACE_B))
    assert t.mappings() == [a]


def test_unmap_of_a_whole_space():
    """iommufd's iopt_unmap_all: bpf/iommufd.c sends IOVA 0, size 2**64 - 1."""
    t = PinTracker(samples=16)
    mapped(t, iova=0x100000, space=SPACE_A)
    mapped(t, iova=0x200000, space=SPACE_A, vaddr=VADDR + MIB)
    mapped(t, iova=0x100000, space=SPACE_B)
    t.on_event(ev(EV_UNMAP, iova=0, size=(1 << 64) - 1, space=SPACE_A))
    assert [(m.space, m.iova) for m in t.mappings()] == [(SPACE_B, 0x100000)]


def test_a_failed_map_leaves_nothing():
    t = PinTracker(samples=16)
    t.on_event(ev(EV_MAP_BEGIN, vaddr=VADDR, iova=0x100000, size=16 * PAGE, space=SPACE_A))
    t.on_event(ev(EV_PIN, vaddr=VADDR, iova=0x100000, npage=16, pfn=0x1000, space=SPACE_A))
    t.on_event(ev(EV_MAP_END, ret=-12, vaddr=VADDR, iova=0x100000, size=16 * PAGE, space=SPACE_A))
    assert t.mappings() == []


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


@pytest.mark.parametrize("disable, backends", [
    ((), {"type1", "iommufd"}),
    (("iommufd_pin_samples",), {"type1"}),
    (("dma_unmap",), {"iommufd"}),  # without the unmaps a reused buffer would look diverged
    (("pin_pages", "iommufd_dma_unmap"), set()),
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


# ------------------------------------------------------------ liveness of a verification
# bpf/common.h counts the unmaps begun per IOVA space; a difference counts only when
# the daemon had handled every one of them when its pagemap read ended.


class Kernel:
    """unmaps_begun as the daemon reads it: (count or None, untracked)."""

    def __init__(self):
        self.begun = {}
        self.untracked = {"type1": 0, "iommufd": 0}

    def __call__(self, backend, space):
        return self.begun.get((backend, space)), self.untracked[backend]


def watch_with(kernel, current, **kw):
    t = PinTracker(samples=16, **kw)
    sink = Sink()
    watch = PinWatch(t, sink, reader(current), devices=lambda pid: ["0000:00:02.0"], unmaps_begun=kernel,
                     pte_pfn=lambda pte: (pte & ((1 << 46) - 1)) >> 12)
    return t, sink, watch


def test_a_difference_read_while_an_unmap_is_pending_is_deferred_not_alerted():
    """The daemon's event handling is late: the kernel has begun (and finished) the
    UNMAP_DMA, the process mapped a new buffer at the address, the EV_UNMAP is
    still queued.  The pass reads the new buffer: no alert."""
    kernel = Kernel()
    t, sink, watch = watch_with(kernel, {VADDR + i * PAGE: 0x9000 + i for i in range(16)})
    mapped_through(watch)
    kernel.begun[("type1", 0)] = 1
    watch.verify_all()
    assert sink.alerts == [] and t.mismatches == 0 and t.deferred == 16
    watch.on_event(ev(EV_UNMAP, 10, iova=0x100000, size=16 * PAGE))
    watch.verify_all()
    assert sink.alerts == [] and t.mappings() == []


def test_a_difference_is_alerted_once_every_unmap_begun_was_handled():
    kernel = Kernel()
    t, sink, watch = watch_with(kernel, {VADDR + 3 * PAGE: 0x5555})
    mapped_through(watch)
    mapped_through(watch, iova=0x900000)
    kernel.begun[("type1", 0)] = 1  # an unmap of another mapping in the same space
    watch.verify_all()
    assert sink.alerts == [] and t.deferred == 2
    watch.on_event(ev(EV_UNMAP, 10, iova=0x900000, size=16 * PAGE))
    watch.verify_all()
    assert [k for k, _, _ in sink.alerts] == ["pin_mismatch"] and t.mismatches == 1


def test_a_failed_unmap_counts_as_handled_and_removes_nothing():
    kernel = Kernel()
    t, sink, watch = watch_with(kernel, {VADDR: 0x5555})
    mapped_through(watch)
    kernel.begun[("type1", 0)] = 1
    watch.on_event(ev(EV_UNMAP, 10, ret=-22, iova=0x100000, size=16 * PAGE))
    assert len(t.mappings()) == 1
    watch.verify_all()
    assert len(sink.alerts) == 1


def test_a_space_missing_from_a_full_kernel_table_proves_nothing():
    kernel = Kernel()
    t, sink, watch = watch_with(kernel, {VADDR: 0x5555})
    mapped_through(watch)
    kernel.untracked["type1"] = 1
    watch.verify_all()
    assert sink.alerts == [] and t.deferred == 1


def test_lost_unmap_events_drop_the_space_after_a_few_passes():
    """An EV_UNMAP that never comes (full ring buffer, missed kretprobe): the space's
    mappings are unknowable, so they leave verification, counted, with no alert."""
    from vfiomond.pins import LOST_AFTER_PASSES

    kernel = Kernel()
    t, sink, watch = watch_with(kernel, {VADDR: 0x5555})
    mapped_through(watch)
    kernel.begun[("type1", 0)] = 1
    for _ in range(LOST_AFTER_PASSES - 1):
        watch.verify_all()
        assert len(t.mappings()) == 1
    watch.verify_all()
    assert t.mappings() == [] and t.untracked["events_lost"] == 1 and sink.alerts == []
    # The next mapping of that space is verified again.
    mapped_through(watch)
    watch.verify_all()
    assert len(sink.alerts) == 1


def test_an_unmap_in_flight_is_not_taken_for_a_loss_while_unmaps_go_on():
    from vfiomond.pins import LOST_AFTER_PASSES

    kernel = Kernel()
    t, sink, watch = watch_with(kernel, {VADDR: 0x5555})
    mapped_through(watch)
    for n in range(1, LOST_AFTER_PASSES + 3):
        kernel.begun[("type1", 0)] = n  # a new unmap begins before each pass
        watch.verify_all()
        watch.on_event(ev(EV_UNMAP, 10, iova=0x900000 + n * MIB, size=PAGE))
    assert len(t.mappings()) == 1 and t.untracked["events_lost"] == 0


# ------------------------------------------------------------------ bounds and reloads


def test_mappings_past_the_per_process_limit_are_counted_not_tracked():
    t = PinTracker(samples=4, max_per_process=3)
    for i in range(5):
        mapped(t, iova=0x100000 * (i + 1))
    mapped(t, iova=0x100000, runs=((0, 16, 0x7000),))  # the same IOVA again replaces, within the limit
    mapped(t, pid=11, space=1)
    assert t.per_process == {10: 3, 11: 1} and t.untracked["process_limit"] == 2
    assert t.get(10, 0, 0x100000).pinned[0] == 0x7000
    t.on_event(ev(EV_UNMAP, iova=0x100000, size=0x100000))
    mapped(t, iova=0x900000)
    assert t.per_process == {10: 3, 11: 1}


def test_disabling_a_backend_on_reload_drops_its_mappings_and_ignores_its_maps():
    t, sink, watch = watch_with(Kernel(), {VADDR: 0x5555})
    mapped_through(watch)
    watch.set_backends({"iommufd"})
    assert t.mappings() == [] and t.untracked["backend_off"] == 1
    mapped_through(watch)  # type1 events while it is off
    watch.verify_all()
    assert t.mappings() == [] and sink.alerts == []
    watch.set_backends({"type1", "iommufd"})
    mapped_through(watch)
    watch.verify_all()
    assert len(sink.alerts) == 1


def test_pins_find_their_mapping_among_many():
    """A pin run is added to the mapping whose IOVA range holds it, in any order of maps."""
    t = PinTracker(samples=2)
    starts = [0x10000 * i for i in (7, 3, 9, 1, 5)]
    for iova in starts:
        t.on_event(ev(EV_MAP_BEGIN, vaddr=VADDR + iova, iova=iova, size=2 * PAGE))
    for iova in starts:
        t.on_event(ev(EV_PIN, vaddr=VADDR + iova + PAGE, iova=iova + PAGE, npage=1, pfn=iova >> 12))
    for iova in starts:
        assert t.get(10, 0, iova).pinned == {PAGE: iova >> 12}


# Write faults (EV_WRITE_FAULT, bpf/common.h write_fault_event): the PTE's PFN at the
# fault; the outcome is read from the pagemap while the mapping is provably live.
from vfiomond.pins import EV_WRITE_FAULT  # noqa: E402

ZERO = 0x77


def write_fault(watch, vaddr, pfn, pid=10):
    """The raw PTE the kernel sends: the PFN between flag bits (NX, present, user, accessed)."""
    watch.on_event(ev(EV_WRITE_FAULT, pid, vaddr=vaddr, pfn=(1 << 63) | pfn << 12 | 0x25))


def test_a_write_to_the_zero_page_in_a_live_mapping_diverges_at_once_even_if_the_mapping_ends():
    """Seeds/003 on 6.1: the read-only MAP_DMA pinned the zero page, the process
    writes, the kernel copies; the container closes before any verification pass."""
    kernel = Kernel()
    t, sink, watch = watch_with(kernel, {VADDR + 5 * PAGE: 0x4242}, zero_pfn=ZERO)
    mapped_through(watch, runs=((0, 1, ZERO),))
    write_fault(watch, VADDR + 5 * PAGE, ZERO)
    write_fault(watch, VADDR + 6 * PAGE, ZERO)  # same mapping: counted, not alerted again
    kernel.begun[("type1", 0)] = 1
    watch.on_event(ev(EV_UNMAP, 10, iova=0, size=(1 << 64) - 1))  # the container's release
    watch.verify_all()
    assert t.write_faults == {("type1", "diverged"): 2}
    assert [k for k, _, _ in sink.alerts] == ["zero_page_pin", "pin_mismatch"]
    fields = sink.alerts[1][2]
    assert fields["DETECTED_BY"] == "write_fault" and fields["ZERO_PAGE"] == 1
    assert fields["IOVA"] == "0x105000" and fields["PINNED_PFN"] == "0x77" and fields["CURRENT_PFN"] == "0x4242"
    assert t.mappings() == []


def test_a_write_fault_that_kept_its_page_is_no_divergence():
    kernel = Kernel()
    t, sink, watch = watch_with(kernel, {}, zero_pfn=ZERO)  # the pagemap still shows the pinned pages
    mapped_through(watch)
    write_fault(watch, VADDR + 2 * PAGE, 0x1002)
    assert t.write_faults == {}  # read at once, unchanged: the fault may not have finished
    watch.verify_all()  # read again a pass later
    assert t.write_faults == {("type1", "kept"): 1} and sink.alerts == []


def test_a_write_fault_whose_page_changed_after_the_first_read_diverges():
    kernel = Kernel()
    current = {}
    t, sink, watch = watch_with(kernel, current, zero_pfn=ZERO)
    mapped_through(watch)
    write_fault(watch, VADDR + 2 * PAGE, 0x1002)
    current[VADDR + 2 * PAGE] = 0x8888  # the copy lands after the first read
    watch.verify_all()
    assert t.write_faults == {("type1", "diverged"): 1}
    assert sink.alerts[0][2]["CURRENT_PFN"] == "0x8888" and sink.alerts[0][2]["ZERO_PAGE"] == 0


def test_a_write_fault_read_after_its_mapping_was_unmapped_proves_nothing():
    """The daemon is late: by the time it reads, the process unmapped the DMA and put
    other memory at the address.  Not a divergence: unknown."""
    kernel = Kernel()
    t, sink, watch = watch_with(kernel, {VADDR + 2 * PAGE: 0x9999}, zero_pfn=ZERO)
    mapped_through(watch)
    kernel.begun[("type1", 0)] = 1  # the UNMAP_DMA began; its event is still queued
    write_fault(watch, VADDR + 2 * PAGE, 0x1002)
    watch.on_event(ev(EV_UNMAP, 10, iova=0x100000, size=16 * PAGE))
    watch.verify_all()
    assert t.write_faults == {("type1", "unknown"): 1} and sink.alerts == []


def test_write_faults_outside_tracked_mappings_or_in_a_mapping_being_made_are_untracked():
    kernel = Kernel()
    t, sink, watch = watch_with(kernel, {}, zero_pfn=ZERO)
    mapped_through(watch)
    write_fault(watch, VADDR + 16 * PAGE, ZERO)  # past the end of the buffer
    write_fault(watch, VADDR, ZERO, pid=11)  # another process
    watch.on_event(ev(EV_MAP_BEGIN, 10, vaddr=VADDR + 64 * PAGE, iova=0x900000, size=PAGE))
    write_fault(watch, VADDR + 64 * PAGE, ZERO)  # GUP's own fault while the map pins
    assert t.write_faults == {("type1", "untracked"): 3} and sink.alerts == []


def test_a_sampling_mismatch_after_a_write_fault_alert_is_counted_not_alerted_again():
    kernel = Kernel()
    t, sink, watch = watch_with(kernel, {VADDR: 0x4242}, zero_pfn=ZERO)
    mapped_through(watch, runs=((0, 1, ZERO),))
    write_fault(watch, VADDR, ZERO)
    watch.verify_all()
    assert t.mismatches == 1 and [k for k, _, _ in sink.alerts] == ["zero_page_pin", "pin_mismatch"]


def test_the_mapping_holding_an_address_is_found_among_overlapping_buffers():
    t = PinTracker(samples=4)
    mapped(t, size=64 * PAGE, iova=0x100000)
    mapped(t, size=PAGE, iova=0x900000, vaddr=VADDR + 8 * PAGE)  # part of the same buffer, again
    assert t.holding(10, "type1", VADDR + 9 * PAGE).iova == 0x100000
    assert t.holding(10, "type1", VADDR + 8 * PAGE).iova == 0x900000
    assert t.holding(10, "type1", VADDR + 64 * PAGE) is None
    t.on_event(ev(EV_UNMAP, 10, iova=0x900000, size=PAGE))
    assert t.holding(10, "type1", VADDR + 8 * PAGE).iova == 0x100000


def test_a_zero_page_write_fault_read_before_the_copy_landed_has_an_unknown_current_pfn():
    kernel = Kernel()
    t, sink, watch = watch_with(kernel, {VADDR: ZERO}, zero_pfn=ZERO)
    mapped_through(watch, runs=((0, 1, ZERO),))
    write_fault(watch, VADDR, ZERO)
    fields = sink.alerts[-1][2]
    assert fields["PINNED_PFN"] == "0x77" and fields["CURRENT_PFN"] == "unknown"
