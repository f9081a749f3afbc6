#!/usr/bin/env python3
"""Cost of the pin tracker's event handling: one 4 KiB MAP_DMA and its UNMAP_DMA
(MAP_BEGIN, one PIN run, MAP_END, UNMAP), with N other mappings live in the same
IOVA space, as a guest with a vIOMMU drives it.  Runs anywhere (no kernel, no root):
it feeds ``PinTracker.on_event`` the records bpf/type1.c sends.

    python3 benchmarks/pin_events.py [--live 1000 10000 50000] [--pairs 20000]
"""

import argparse
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from vfiomond.pins import EV_MAP_BEGIN, EV_MAP_END, EV_PIN, EV_UNMAP, PAGE, PinEvent, PinTracker  # noqa: E402

PID, SPACE, VADDR = 1000, 0xFFFF888001000000, 0x7F0000000000


def event(kind, iova, size=PAGE, npage=0, pfn=0):
    return PinEvent(kind, PID, 0, VADDR + iova, iova, size, npage, pfn, space=SPACE)


def map_unmap(tracker, iova):
    tracker.on_event(event(EV_MAP_BEGIN, iova))
    tracker.on_event(event(EV_PIN, iova, npage=1, pfn=iova >> 12))
    tracker.on_event(event(EV_MAP_END, iova))
    tracker.on_event(event(EV_UNMAP, iova))


def measure(live, pairs):
    tracker = PinTracker(samples=16, max_per_process=live + 1)
    for i in range(live):  # live mappings at even pages
        tracker.on_event(event(EV_MAP_BEGIN, 2 * i * PAGE))
        tracker.on_event(event(EV_MAP_END, 2 * i * PAGE))
    start = time.perf_counter()
    for j in range(pairs):  # churn at odd pages, spread over the live ones
        map_unmap(tracker, (2 * (j * 7919 % live) + 1) * PAGE)
    elapsed = time.perf_counter() - start
    assert sum(tracker.per_process.values()) == live
    return elapsed / pairs


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--live", type=int, nargs="+", default=[1000, 10000, 50000])
    p.add_argument("--pairs", type=int, default=20000)
    args = p.parse_args()
    print("python %s" % sys.version.split()[0])
    for live in args.live:
        per_pair = measure(live, args.pairs)
        print("live=%-6d map+unmap pair: %.1f us (%.0f pairs/s)" % (live, per_pair * 1e6, 1 / per_pair))


if __name__ == "__main__":
    main()
