"""Kernel-side losses: the names the daemon gives them are bpf/common.h's enum loss."""

import ctypes
import logging
import os
import re

import pytest

from vfiomond import bpfload, pins
from vfiomond.losses import LOSSES, WHAT, LossLog

COMMON_H = os.path.join(os.path.dirname(__file__), "..", "..", "bpf", "common.h")


def enum_loss():
    with open(COMMON_H) as f:
        body = re.search(r"enum loss \{(.*?)\};", f.read(), re.S).group(1)
    return {name: int(value) for name, value in re.findall(r"(LOSS\w+) = (\d+)", body)}


def test_every_loss_of_the_kernel_side_has_its_map_and_reason_in_order():
    enum = enum_loss()
    assert enum.pop("LOSSES") == len(LOSSES)
    named = {"LOSS_%s_%s" % (bpf_map.upper(), reason.upper()): i for i, (bpf_map, reason) in enumerate(LOSSES)}
    assert enum == named


def test_every_loss_is_counted_somewhere_in_the_bpf_programs():
    bpf = os.path.dirname(COMMON_H)
    text = "".join(open(os.path.join(bpf, f)).read() for f in os.listdir(bpf))
    for name in enum_loss():
        if name != "LOSSES":
            assert re.search(r"(count_lost\(|, )%s\)" % name, text), name


def test_losses_are_logged_when_they_grow_at_most_once_a_minute_each(caplog):
    now = [0.0]
    losses = LossLog(clock=lambda: now[0])
    caplog.set_level(logging.WARNING, logger="vfiomond")
    losses.check({("pin_events", "full"): 0, ("dma_by_tid", "full"): 0})
    assert caplog.records == []
    losses.check({("pin_events", "full"): 500, ("dma_by_tid", "full"): 0})
    now[0] = 10.0
    losses.check({("pin_events", "full"): 800, ("dma_by_tid", "full"): 2})
    now[0] = 61.0
    losses.check({("pin_events", "full"): 900, ("dma_by_tid", "full"): 2})
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) == 3, lines
    assert lines[0].startswith("BPF map pin_events full") and "500 lost since the last report (500 in all)" in lines[0]
    assert lines[1].startswith("BPF map dma_by_tid full") and "2 lost" in lines[1]
    assert "400 lost since the last report (900 in all)" in lines[2]


class _Counter:
    def __init__(self, value):
        self.value = value


class _LostEvents:
    """bpf["lost_events"]: a BPF array indexed by ctypes.c_int."""

    def __init__(self, counts):
        self.counts = counts

    def __getitem__(self, index):
        return _Counter(self.counts[index.value])


class _RingBuffer:
    def __init__(self):
        self.callbacks = []

    def open_ring_buffer(self, callback):
        self.callbacks.append(callback)


class _BPF:
    """What Program reads of a BCC object: its ring buffers and its lost_events array."""

    def __init__(self, counts):
        self.lost = _LostEvents(counts)
        self.rings = {}

    def __getitem__(self, table):
        if table == "lost_events":
            return self.lost
        return self.rings.setdefault(table, _RingBuffer())


def _deliver(bpf, table, raw):
    buf = ctypes.create_string_buffer(raw, len(raw))
    return bpf.rings[table].callbacks[0](None, ctypes.addressof(buf), len(raw))


def test_malformed_ring_buffer_records_are_lost_events_of_their_ring_buffer():
    counts = [0] * len(LOSSES)
    counts[LOSSES.index(("pin_events", "full"))] = 3
    bpf, decoded = _BPF(counts), []
    program = bpfload.Program({"type1": bpf})
    program.open_ring_buffer("type1", "pin_events", pins.parse_event, decoded.append)
    lost = program.lost_events()
    assert set(LOSSES) <= set(lost) and lost[("pin_events", "full")] == 3
    assert lost[("pin_events", "malformed")] == 0  # exported from the start

    good = bytes(pins.EVENT.size)
    for raw in (good, b"\x01\x02", good, b"", b"x" * (pins.EVENT.size - 1)):
        assert _deliver(bpf, "pin_events", raw) == 0
    assert len(decoded) == 2
    lost = program.lost_events()
    assert lost[("pin_events", "malformed")] == 3 and lost[("pin_events", "full")] == 3
    assert program.bad_records == {"pin_events": 3}
    assert ("pin_events", "malformed") not in LOSSES  # the BPF enum's mirror stays as it is
    assert "malformed" in WHAT

    collector = pytest.importorskip("vfiomond.collector")
    (family,) = collector.VfiomondCollector(program, "6.12")._losses()
    samples = {(s.labels["map"], s.labels["reason"]): s.value for s in family.samples}
    assert samples[("pin_events", "malformed")] == 3 and samples[("pin_events", "full")] == 3


def test_a_malformed_record_loss_is_logged_with_its_meaning(caplog):
    caplog.set_level(logging.WARNING, logger="vfiomond")
    LossLog(clock=lambda: 0.0).check({("pin_events", "malformed"): 2})
    (line,) = [r.getMessage() for r in caplog.records]
    assert line.startswith("BPF map pin_events records too short to decode: dropped: 2 lost")
