#!/usr/bin/env python3
"""Scenario "losses": more threads in MAP_DMA at once than a kretprobe has instances.

THREADS threads share one type1 container (edu's IOMMU group) and, released by
a barrier together, each MAP_DMA its own touched buffer, then UNMAP_DMA it,
ROUNDS times.  type1 serialises the calls on the container's mutex, so most
threads sleep inside the probed function while one pins; a kretprobe has
max(10, 2 x CPUs) instances (kernel/kprobes.c register_kretprobe), and the
returns of the calls beyond that are never seen by vfiomond.  Each such call
leaves its thread's entry in dma_by_tid: it must be counted as lost, by the
thread's next call or by the daemon once the thread is gone.

Its own account: the MAP_DMA and UNMAP_DMA calls it made (all must succeed).
It then waits until vfiomond's measured calls plus its counted losses reach
that number (the daemon looks for gone threads every 30 s), at most WAIT_S,
and prints one JSON line with the scrapes before and after.
"""

import argparse
import json
import os
import sys
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import vfiolib as v  # noqa: E402

MIB = 1 << 20
THREADS = 40
ROUNDS = 3
BUFFER = 2 * MIB
IOVA_BASE = 0x40000000
WAIT_S = 90.0


def log(msg):
    print("losses: " + msg, file=sys.stderr, flush=True)


def figures(port: str) -> dict:
    text = v.scrape(port)
    lost = {}
    for line in text.splitlines():
        if line.startswith("vfiomond_events_lost_total{"):
            head, _, value = line.rpartition(" ")
            if float(value):
                lost[head[len("vfiomond_events_lost_total"):]] = float(value)
    return {
        "map_calls": v.total(text, "vfiomond_dma_map_duration_seconds_count", backend="type1"),
        "unmap_calls": v.total(text, "vfiomond_dma_unmap_duration_seconds_count", backend="type1"),
        "dma_by_tid_stale": v.total(text, "vfiomond_events_lost_total", map="dma_by_tid", reason="stale"),
        "dma_by_tid_full": v.total(text, "vfiomond_events_lost_total", map="dma_by_tid", reason="full"),
        "pin_mismatches": v.total(text, "vfiomond_pin_mismatches_total"),
        "lost": lost,
    }


def threads_at_once(container) -> dict:
    barrier = threading.Barrier(THREADS)
    made = {"map": 0, "unmap": 0}
    errors = []
    lock = threading.Lock()

    def worker(i):
        try:
            buf = v.mmap_anonymous(BUFFER)
            v.touch_pages(buf, BUFFER)
            iova = IOVA_BASE + i * BUFFER
            for _ in range(ROUNDS):
                barrier.wait()
                container.map_dma(buf, iova, BUFFER, v.VFIO_DMA_MAP_FLAG_READ | v.VFIO_DMA_MAP_FLAG_WRITE)
                with lock:
                    made["map"] += 1
                barrier.wait()
                if container.unmap_dma(iova, BUFFER) != BUFFER:
                    raise RuntimeError("UNMAP_DMA of %#x unmapped less than the buffer" % iova)
                with lock:
                    made["unmap"] += 1
            v.munmap(buf, BUFFER)
        except Exception as e:  # reported in the summary
            barrier.abort()
            errors.append("%s: %s" % (type(e).__name__, e))

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(THREADS)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if errors:
        raise RuntimeError(errors[0])
    return made


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--sysfs", default="/sys")
    args = p.parse_args()
    port = os.environ.get("VFIOMOND_PORT", "10119")
    summary = {"scenario": "losses", "pid": os.getpid(), "threads": THREADS, "rounds": ROUNDS,
               "iova": [IOVA_BASE, IOVA_BASE + THREADS * BUFFER]}
    try:
        edu = [d for d in v.find_devices(args.sysfs) if d.name == "edu"]
        if not edu:
            raise RuntimeError("no edu device bound to vfio-pci")
        container = v.Container(edu[0].iommu_group)
        summary["before"] = before = figures(port)
        start = time.monotonic()
        summary["made"] = made = threads_at_once(container)
        summary["seconds"] = round(time.monotonic() - start, 2)
        container.close()
        deadline = time.monotonic() + WAIT_S
        while True:
            after = figures(port)
            seen = (after["map_calls"] - before["map_calls"] + after["unmap_calls"] - before["unmap_calls"]
                    + after["dma_by_tid_stale"] - before["dma_by_tid_stale"])
            if seen >= made["map"] + made["unmap"] or time.monotonic() > deadline:
                break
            time.sleep(2)
        summary["after"] = after
        summary["waited"] = round(time.monotonic() - start - summary["seconds"], 1)
        log("%d MAP_DMA + %d UNMAP_DMA from %d threads; measured %d + %d, stale %d"
            % (made["map"], made["unmap"], THREADS, after["map_calls"] - before["map_calls"],
               after["unmap_calls"] - before["unmap_calls"], after["dma_by_tid_stale"] - before["dma_by_tid_stale"]))
        summary["ok"] = True
    except Exception as e:
        summary.update(ok=False, error="%s: %s" % (type(e).__name__, e))
    print(json.dumps(summary))
    return 0 if summary["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
