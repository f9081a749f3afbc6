"""Kernel-side losses: the names the daemon gives them are bpf/common.h's enum loss."""

import logging
import os
import re

from vfiomond.losses import LOSSES, LossLog

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
