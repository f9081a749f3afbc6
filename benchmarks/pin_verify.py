#!/usr/bin/env python3
"""Cost of a pin verification pass: sampled pages compared per second.

Runs on any Linux host as root (PFNs in /proc/PID/pagemap need CAP_SYS_ADMIN);
it needs no VFIO: it builds the tracker state a real MAP_DMA would leave
(pinned PFNs read from this process's own pagemap) for MAPPINGS mappings of
SIZE each, then times ``PinTracker.verify`` over them with the real pagemap
reader, i.e. the work ``vfiomond run`` does every ``pins.verify_interval``.

    sudo python3 benchmarks/pin_verify.py [--mappings 64] [--size-mib 64] [--samples 16] [--passes 20]
"""

import argparse
import ctypes
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from vfiomond.pagemap import PAGE, read_pfns  # noqa: E402
from vfiomond.pins import Mapping, PinTracker, sample_offsets  # noqa: E402


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--mappings", type=int, default=64)
    p.add_argument("--size-mib", type=int, default=64)
    p.add_argument("--samples", type=int, default=16)
    p.add_argument("--passes", type=int, default=20)
    args = p.parse_args()
    if os.geteuid() != 0:
        sys.exit("pin_verify: needs root (PFNs in pagemap)")
    size = args.size_mib << 20
    pid = os.getpid()
    tracker = PinTracker(args.samples)
    buffers = []
    for i in range(args.mappings):
        buf = ctypes.create_string_buffer(size)  # allocated and touched (zeroed) by ctypes
        vaddr = (ctypes.addressof(buf) + PAGE - 1) & ~(PAGE - 1)
        usable = (size - PAGE) & ~(PAGE - 1)
        buffers.append(buf)
        iova = (i + 1) << 32
        current = read_pfns(pid, [vaddr + off for off in sample_offsets(usable, args.samples)])
        pinned = {va - vaddr: pfn or 0 for va, pfn in current.items()}
        tracker.adopt(Mapping("type1", 0, iova, 1, pid, vaddr, usable, pinned))
    samples = tracker.samples_tracked()
    start = time.perf_counter()
    for _ in range(args.passes):
        found = tracker.verify(tracker.mappings(), read_pfns)
    elapsed = (time.perf_counter() - start) / args.passes
    print("mappings=%d size=%dMiB samples/mapping=%d tracked=%d mismatches=%d"
          % (args.mappings, args.size_mib, args.samples, samples, len(found)))
    print("verification pass: %.3f ms, %.0f samples/s (%d passes)" % (elapsed * 1e3, samples / elapsed, args.passes))


if __name__ == "__main__":
    main()
