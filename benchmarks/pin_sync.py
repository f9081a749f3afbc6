#!/usr/bin/env python3
"""Cost of following the kernel's table of live DMA mappings: one pass's
``PinTracker.sync`` with N live mappings, of which C changed since the last pass
(unmapped and mapped again, as a guest with a vIOMMU churns), i.e. the work
``vfiomond run`` does per ``pins.verify_interval`` before it verifies.  Runs
anywhere (no kernel, no root): it feeds the tracker the entries pintable.PinTable
reads from bpf/common.h's pin_maps.  (Reading the table itself is BCC's map
iteration, measured in the lab.)

    python3 benchmarks/pin_sync.py [--live 1000 10000 50000] [--changed 1000] [--passes 20]
"""

import argparse
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from vfiomond.pins import PAGE, KernelMapping, PinTracker  # noqa: E402

PID, SPACE, VADDR = 1000, 0xFFFF888001000000, 0x7F0000000000


def entries(live, changed, generation):
    """``live`` 4 KiB mappings, the first ``changed`` of them made again this generation."""
    return [KernelMapping(SPACE, i * PAGE, generation if i < changed else 0, PID, VADDR + i * PAGE, PAGE,
                          {0: 0x100000 + i}) for i in range(live)]


def measure(live, changed, passes):
    tracker = PinTracker(samples=16)
    tracker.sync("type1", entries(live, 0, 0))
    tables = [entries(live, changed, g + 1) for g in range(passes)]
    start = time.perf_counter()
    for table in tables:
        tracker.sync("type1", table)
    elapsed = (time.perf_counter() - start) / passes
    assert len(tracker.by_key) == live
    return elapsed


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--live", type=int, nargs="+", default=[1000, 10000, 50000])
    p.add_argument("--changed", type=int, default=1000)
    p.add_argument("--passes", type=int, default=20)
    args = p.parse_args()
    print("python %s" % sys.version.split()[0])
    for live in args.live:
        changed = min(args.changed, live)
        per_pass = measure(live, changed, args.passes)
        print("live=%-6d changed=%-5d sync pass: %.2f ms (%.2f us per live mapping)"
              % (live, changed, per_pass * 1e3, per_pass * 1e6 / live))


if __name__ == "__main__":
    main()
