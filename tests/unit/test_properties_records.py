"""Properties of the decoders of what the BPF programs hand over: ring-buffer records
(struct pin_event, raw bytes of any length), the kernel's table of live DMA mappings
(pin_maps), and the areas' map rows (histograms, counters, errnos, PCI names).

A record of any length is decoded or refused with a ValueError, which the ring-buffer
loop counts and logs in one line; what decodes flows through the pin watch without a
traceback; the map decoders keep every count they are given.  The hypothesis profile
(no example database, no deadline) is in conftest.py.
"""

import ctypes
import errno
import os
from types import SimpleNamespace
from unittest import mock

import pytest

hypothesis = pytest.importorskip("hypothesis")

from hypothesis import example, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from vfiomond import bpfload, faults, histogram, iommufd, metricsutil, pins, type1  # noqa: E402
from vfiomond.pins import EV_MAP_END, EV_MEMLOCK, EV_WRITE_FAULT, EVENT, PAGE, KernelMapping, PinTracker, PinWatch  # noqa: E402
from vfiomond.pintable import BACKEND_CODES, PinTable  # noqa: E402
from vfiomond.processes import memlock_alert  # noqa: E402

from test_properties import Sink  # noqa: E402

U32 = st.integers(0, 2 ** 32 - 1)
S32 = st.integers(-2 ** 31, 2 ** 31 - 1)
U64 = st.integers(0, 2 ** 64 - 1)
GONE_PID = 2 ** 22 + 1  # above pid_max: never a live process

# struct pin_event: type, pid, ret, pad, vaddr, iova, size, npage, pfn, locked, limit, space, map_vaddr, seq.
# Addresses from a few values, so that records name the same mappings.
ADDR = st.one_of(st.sampled_from([0, PAGE, 0x7F0000000000, 0x7F0000000000 + 3 * PAGE, 0x100000]), U64)
EVENT_FIELDS = st.tuples(
    st.one_of(st.sampled_from([EV_MAP_END, EV_MEMLOCK, EV_WRITE_FAULT]), U32),
    st.one_of(st.sampled_from([os.getpid(), GONE_PID, 1]), U32), S32, U32,
    ADDR, ADDR, st.one_of(st.sampled_from([0, PAGE, 16 * PAGE]), U64), U64, U64, U64, U64,
    st.one_of(st.sampled_from([0, 0xFFFF888000001000]), U64), ADDR, st.one_of(st.integers(0, 3), U64),
)


def pack(fields):
    return EVENT.pack(*fields)


RECORD = st.one_of(st.binary(max_size=2 * EVENT.size),
                   st.tuples(EVENT_FIELDS.map(pack), st.binary(max_size=16)).map(b"".join))


# ------------------------------------------------------------------ struct pin_event


@given(st.binary(max_size=3 * EVENT.size))
@example(b"")
@example(b"x" * (EVENT.size - 1))
def test_any_record_decodes_or_is_a_value_error(raw):
    try:
        ev = pins.parse_event(raw)
    except ValueError as e:
        assert len(raw) < EVENT.size and "\n" not in str(e)
        return
    assert len(raw) >= EVENT.size and isinstance(ev, pins.PinEvent)
    assert all(isinstance(v, int) for v in ev)


@given(EVENT_FIELDS, st.binary(max_size=24))
def test_a_record_decodes_to_its_fields(fields, trailing):
    # Bytes past struct pin_event (a newer layout's) are left alone.
    t, pid, ret, _pad, *rest = fields
    assert tuple(pins.parse_event(EVENT.pack(*fields) + trailing)) == (t, pid, ret, *rest)


@settings(max_examples=50)
@given(st.lists(RECORD, max_size=12))
def test_the_ring_buffer_loop_counts_and_logs_malformed_records(records):
    class RingBPF:
        def __init__(self):
            self.callbacks = []

        def __getitem__(self, table):
            return self

        def open_ring_buffer(self, callback):
            self.callbacks.append(callback)

    bpf, decoded = RingBPF(), []
    program = bpfload.Program({"type1": bpf})
    with mock.patch.object(ctypes, "string_at", lambda data, size: data), \
            mock.patch.object(bpfload.time, "monotonic", lambda: 0.0), \
            mock.patch.object(bpfload.log, "warning") as warning, \
            mock.patch.object(bpfload.log, "exception") as exception:
        program.open_ring_buffer("type1", "pin_events", pins.parse_event, decoded.append)
        for raw in records:
            assert bpf.callbacks[0](None, raw, len(raw)) == 0
    short = sum(1 for raw in records if len(raw) < EVENT.size)
    assert len(decoded) == len(records) - short and program.bad_records.get("pin_events", 0) == short
    assert warning.call_count == short.bit_length()  # the 1st, 2nd, 4th, ... malformed record
    assert exception.call_count == 0  # no traceback in the log


class KernelTable:
    """pintable.PinTable's interface over fixed entries."""

    def __init__(self, entries, outside):
        self.entries, self._outside = entries, outside

    def mappings(self):
        return self.entries

    def seq(self, space, iova):
        return next((e.seq for e in self.entries if (e.space, e.iova) == (space, iova)), None)

    def outside(self):
        return self._outside


def read_pfns(pid, vaddrs):
    if pid == GONE_PID:
        raise ProcessLookupError(3, "No such process")
    return {v: (v // PAGE) % 7 or None for v in vaddrs}


KERNEL_MAPPING = st.builds(
    KernelMapping, st.sampled_from([0, 0xFFFF888000001000]), ADDR, st.integers(0, 3),
    st.sampled_from([os.getpid(), GONE_PID]), ADDR, st.sampled_from([PAGE, 16 * PAGE]),
    st.dictionaries(st.sampled_from([0, PAGE, 8 * PAGE, 15 * PAGE]), st.integers(1, 9), max_size=3))


@settings(max_examples=60)
@given(st.lists(st.tuples(EVENT_FIELDS, st.sampled_from(["type1", "iommufd", "other"])), max_size=10),
       st.one_of(st.none(), st.integers(1, 9)), st.booleans(), st.lists(KERNEL_MAPPING, max_size=4), st.booleans())
def test_decoded_records_flow_through_the_pin_watch(events, zero_pfn, pte, entries, with_devices):
    sink = Sink()
    tracker = PinTracker(16, zero_pfn)
    watch = PinWatch(tracker, sink, read_pfns, devices=lambda pid: ["0000:00:03.0"] if with_devices else [],
                     pte_pfn=(lambda raw: raw % 11) if pte else None,
                     kernel={"type1": KernelTable(entries, 5), "iommufd": KernelTable([], 0)})
    for fields, backend in events:
        ev = pins.parse_event(EVENT.pack(*fields))
        if ev.type == EV_MEMLOCK:  # as the daemon dispatches them
            memlock_alert(sink, ev)
        else:
            watch.on_event(ev, backend)
    watch.verify_all()
    watch.verify_all()
    names = {f.name for f in watch.families()}
    assert "vfiomond_pin_mismatches" in names
    assert all(kind in ("memlock_refused", "pin_mismatch", "zero_page_pin") for kind, _, _ in sink.alerts)


# ------------------------------------------------------------------ sample slots, pin_maps


@given(st.one_of(st.integers(0, 2 ** 48), st.integers(0, 2 ** 30).map(PAGE.__mul__)), st.integers(2, 64))
def test_sample_slots_lie_in_the_mapping(size, samples):
    slots = pins.sample_slots(size, samples)
    assert len(slots) == samples + 1
    assert all(off is None or 0 <= off < size for off in slots)
    if size >= PAGE:
        assert slots[0] == 0 and slots[-1] == size - PAGE
        assert all(off % PAGE == 0 for off in slots[:-1] if off is not None)
    offsets = pins.sample_offsets(size, samples)
    assert offsets == sorted(set(offsets)) and set(offsets) == {off for off in slots if off is not None}


ENTRY = st.fixed_dictionaries({
    "space": st.sampled_from([0, 1, 2]), "iova": ADDR, "backend": st.sampled_from([0, 1, 2, 3]),
    "complete": st.sampled_from([0, 1, 2]), "seq": st.integers(0, 6), "pid": U32, "vaddr": ADDR,
    "size": st.one_of(st.integers(0, 64).map(PAGE.__mul__), U64), "filled": st.tuples(U64, U64).map(list),
    "pfn": st.lists(U64, min_size=65, max_size=65),
})


@settings(max_examples=60)
@given(st.sampled_from(sorted(BACKEND_CODES)), st.integers(2, 64), st.lists(ENTRY, max_size=6),
       st.dictionaries(st.sampled_from([0, 1, 2]), st.integers(0, 6)))
def test_pin_maps_entries_of_any_content(backend, samples, entries, stale):
    tables = {
        "pin_maps": SimpleNamespace(items=lambda: [(SimpleNamespace(space=e["space"], iova=e["iova"]), SimpleNamespace(**e))
                                                   for e in entries]),
        "pin_space_stale": SimpleNamespace(items=lambda: [(SimpleNamespace(value=k), SimpleNamespace(value=v))
                                                          for k, v in stale.items()]),
    }
    table = PinTable(backend, tables.__getitem__, samples, kept=lambda: True, outside=lambda: 0)
    out = table.mappings()
    wanted = [e for e in entries
              if e["backend"] == BACKEND_CODES[backend] and e["complete"] and e["seq"] > stale.get(e["space"], 0)]
    assert len(out) == len(wanted)
    for m, e in zip(out, wanted):
        assert (m.space, m.iova, m.seq, m.pid, m.vaddr, m.size) == (e["space"], e["iova"], e["seq"], e["pid"], e["vaddr"], e["size"])
        assert set(m.pinned) <= set(pins.sample_offsets(e["size"], samples))
        assert set(m.pinned.values()) <= set(e["pfn"])


# ------------------------------------------------------------------ histograms

SLOTS = st.dictionaries(st.integers(0, 70), st.integers(0, 2 ** 40), max_size=12)


@given(st.integers(0, 2 ** 64 - 1))
def test_a_value_lies_under_its_slots_bound(value):
    slot = histogram.slot_of(value)
    assert slot >= 1 and value <= histogram.slot_upper_bound_ns(slot)
    assert slot == 1 or value > histogram.slot_upper_bound_ns(slot - 1)


@given(st.integers(-100, 0))
def test_a_slot_below_one_is_a_value_error(slot):
    with pytest.raises(ValueError):
        histogram.slot_upper_bound_ns(slot)


@given(SLOTS)
def test_cumulative_buckets_count_every_slot_once(slots):
    buckets = histogram.cumulative_buckets(slots)
    assert len(buckets) == histogram.LAST_SLOT - histogram.FIRST_SLOT + 1
    bounds, counts = zip(*buckets)
    assert list(bounds) == sorted(set(bounds)) and list(counts) == sorted(counts)
    assert counts[-1] == sum(n for slot, n in slots.items() if slot <= histogram.LAST_SLOT)


@given(SLOTS, st.integers(0, 2 ** 50), SLOTS, st.integers(0, 2 ** 50))
def test_merged_histograms_add_up(a, sum_a, b, sum_b):
    m = histogram.merge(histogram.Histogram(a, sum_a), histogram.Histogram(b, sum_b))
    assert m.count == sum(a.values()) + sum(b.values()) and m.sum_ns == sum_a + sum_b


# ------------------------------------------------------------------ the areas' map rows

DMA_ROW = st.tuples(st.integers(0, 3), st.integers(0, 70), st.integers(-200, 200), st.integers(0, 2 ** 40))


def dma_counts(rows, op):
    return sum(value for o, _, _, value in rows if o == op)


@given(st.dictionaries(st.sampled_from(sorted(type1.COUNTERS)), U64), st.lists(DMA_ROW, max_size=10),
       st.lists(DMA_ROW, max_size=10))
def test_type1_rows_keep_their_counts(counters, hist, errors):
    snap = type1.decode(counters, [type1.DmaRow(*r) for r in hist], [type1.DmaRow(*r) for r in errors])
    for op, code in (("map", 0), ("unmap", 1)):
        assert snap.latency[op].count == dma_counts(hist, code)
        assert sum(snap.errors[op].values()) == dma_counts(errors, code)
        assert all(isinstance(name, str) for name in snap.errors[op])


@given(st.lists(U64, min_size=iommufd.N_COUNTERS, max_size=iommufd.N_COUNTERS), st.lists(DMA_ROW, max_size=10),
       st.lists(DMA_ROW, max_size=10))
def test_iommufd_rows_keep_their_counts(raw, hist, errors):
    snap = iommufd.decode(raw, [iommufd.DmaRow(*r) for r in hist], [iommufd.DmaRow(*r) for r in errors])
    assert set(snap.pinned) == set(snap.unpinned) == set(iommufd.ACCOUNTS)
    assert sum(snap.pinned.values()) + sum(snap.unpinned.values()) == sum(
        raw[iommufd.COUNTERS["IOMMUFD_PIN_BASE"]:iommufd.COUNTERS["IOMMUFD_PIN_BASE"] + 2 * len(iommufd.ACCOUNTS)])
    for op, code in (("map", 0), ("unmap", 1)):
        assert snap.latency[op].count == dma_counts(hist, code)
        assert sum(snap.errors[op].values()) == dma_counts(errors, code)


@given(st.integers(-2 ** 31, 2 ** 31))
def test_any_raw_account_mode_has_a_name(raw):
    assert iommufd.account_name(raw) in iommufd.ACCOUNTS + ("",)


@given(st.integers(-2 ** 31, 2 ** 32))
def test_any_number_has_a_name(n):
    assert faults.fault_result(n) in faults.RESULTS
    assert isinstance(faults.region_name(n), str) and faults.region_name(n)
    assert faults.errno_name(n) == errno.errorcode.get(n, str(n))


@given(st.binary(max_size=40))
def test_any_device_key_gives_a_name(raw):
    name = metricsutil.cstr(raw)
    assert isinstance(name, str) and "\0" not in name
    assert faults.device_name(name)


BAR_ROW = st.builds(faults.BarFaultRow, st.sampled_from(["0000:00:03.0", ""]), st.integers(0, 0xFFF),
                    st.integers(0, 255), st.integers(0, 9), st.integers(0, 70), st.integers(0, 2 ** 32), st.integers(0, 2 ** 50))
REMAP_ROW = st.builds(faults.RemapRow, st.integers(0, 3), st.integers(0, 70), st.integers(0, 2 ** 32), st.integers(0, 2 ** 50),
                      st.integers(0, 2 ** 50))


@given(st.lists(BAR_ROW, max_size=10), st.lists(REMAP_ROW, max_size=10))
def test_fault_rows_keep_their_counts(bar_rows, remap_rows):
    bar = faults.decode_bar_faults(bar_rows)
    assert sum(h.count for h in bar.values()) == sum(r.count for r in bar_rows)
    assert sum(h.sum_ns for h in bar.values()) == sum(r.sum_ns for r in bar_rows)
    assert all(labels[3] in faults.RESULTS and labels[0] for labels in bar)
    latency, mapped = faults.decode_remap(remap_rows)
    assert set(latency) <= set(faults.CONTEXTS.values())
    assert sum(mapped.values()) == sum(r.bytes for r in remap_rows)
    assert sum(h.count for h in latency.values()) == sum(r.count for r in remap_rows)


@given(st.integers(0, 2 ** 40), st.integers(0, 2 ** 40), st.integers(-5, 2 ** 40))
def test_exempt_pages_are_never_negative(pinned, charged, zero):
    assert 0 <= type1.exempt_pages(pinned, charged, zero) <= max(0, pinned - charged)
