#!/usr/bin/env python3
"""Scenario "soak": one daemon under sustained VFIO work and scrape load (benchmarks/RELIABILITY.md).

  faults   FAULTS BAR faults on edu's BAR0: the BAR read page by page, memory
           decode toggled between rounds (vfio zaps the mapping, so every round
           faults again), as fast as the guest goes
  dma      PAIRS MAP_DMA / UNMAP_DMA pairs of 4 KiB on one container
  live     LIVE mappings of 4 KiB held at once, scraped 20 times one by one, then
           closed; twice (the daemon's VmRSS after each: a high-water mark, or growth)
  scrapes  SCRAPERS threads scraping /metrics back to back for SCRAPE_SECONDS

The daemon's VmRSS, open fds and threads are sampled every SAMPLE_S seconds
throughout, from /proc/PID.  Its counters are compared with the scenario's own
counts (faults: every fault of a round is one handler call; the kernel may
retry at a smaller order, counted as result="fallback").  Prints one JSON line.
"""

import argparse
import json
import os
import statistics
import sys
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import vfiolib as v  # noqa: E402

PORT = os.environ.get("VFIOMOND_PORT", "10119")
DAEMON = int(os.environ.get("VFIOMOND_PID", "0"))
SAMPLE_S = 5.0


def log(msg):
    print("soak: " + msg, file=sys.stderr, flush=True)


class Footprint(threading.Thread):
    """The daemon's VmRSS (KiB), open fds and threads every SAMPLE_S seconds."""

    def __init__(self):
        super().__init__(daemon=True)
        self.stop = threading.Event()
        self.samples = []
        self.t0 = time.monotonic()

    def sample(self):
        with open("/proc/%d/status" % DAEMON) as f:
            status = dict(line.split(":", 1) for line in f if ":" in line)
        fds = len(os.listdir("/proc/%d/fd" % DAEMON))
        self.samples.append((round(time.monotonic() - self.t0, 1), int(status["VmRSS"].split()[0]), fds,
                             int(status["Threads"])))

    def run(self):
        while not self.stop.is_set():
            self.sample()
            self.stop.wait(SAMPLE_S)


def bar_faults(edu, total):
    container = v.Container(edu.iommu_group)
    fd = container.device(edu.bdf)
    bar = v.region(fd, 0)
    config = v.region(fd, v.VFIO_PCI_CONFIG_REGION_INDEX)
    addr = v.mmap_device(fd, bar.size, bar.offset)
    pages = bar.size // v.PAGE
    before = v.scrape(PORT)
    rounds, start = 0, time.monotonic()
    command = v.pci_command(fd, config)
    while rounds * pages < total:
        v.read_strided(addr, bar.size, v.PAGE)
        v.set_pci_command(fd, config, command & ~2)
        v.set_pci_command(fd, config, command | 2)
        rounds += 1
    seconds = time.monotonic() - start
    v.munmap(addr, bar.size)
    os.close(fd)
    container.close()
    time.sleep(2)
    after = v.scrape(PORT)
    seen = {r: v.total(after, "vfiomond_bar_fault_duration_seconds_count", device=edu.bdf, result=r)
            - v.total(before, "vfiomond_bar_fault_duration_seconds_count", device=edu.bdf, result=r)
            for r in ("nopage", "fallback", "oom", "sigbus", "retry", "other")}
    return {"faults": rounds * pages, "seconds": round(seconds, 1), "per_second": round(rounds * pages / seconds),
            "measured": seen}


def dma_pairs(edu, pairs):
    container = v.Container(edu.iommu_group)
    buf = v.mmap_anonymous(v.PAGE)
    v.touch_pages(buf, v.PAGE)
    before = v.scrape(PORT)
    start = time.monotonic()
    for i in range(pairs):
        container.map_dma(buf, 0x10000000, v.PAGE, v.VFIO_DMA_MAP_FLAG_READ | v.VFIO_DMA_MAP_FLAG_WRITE)
        container.unmap_dma(0x10000000, v.PAGE)
    seconds = time.monotonic() - start
    container.close()
    time.sleep(2)
    after = v.scrape(PORT)
    return {"pairs": pairs, "seconds": round(seconds, 1), "per_second": round(pairs / seconds),
            "measured_maps": v.total(after, "vfiomond_dma_map_duration_seconds_count", backend="type1")
            - v.total(before, "vfiomond_dma_map_duration_seconds_count", backend="type1"),
            "measured_unmaps": v.total(after, "vfiomond_dma_unmap_duration_seconds_count", backend="type1")
            - v.total(before, "vfiomond_dma_unmap_duration_seconds_count", backend="type1")}


def live_mappings(edu, count, scrapes=20):
    """``count`` 4 KiB mappings live (one page at ``count`` IOVAs), then one scrape at a time."""
    container = v.Container(edu.iommu_group)
    buf = v.mmap_anonymous(v.PAGE)
    v.touch_pages(buf, v.PAGE)
    start = time.monotonic()
    for i in range(count):
        container.map_dma(buf, 0x100000000 + i * v.PAGE, v.PAGE, v.VFIO_DMA_MAP_FLAG_READ | v.VFIO_DMA_MAP_FLAG_WRITE)
    mapped_s = time.monotonic() - start
    time.sleep(3)  # a verification pass or two over the live mappings
    times = []
    for _ in range(scrapes):
        t0 = time.monotonic()
        text = v.scrape(PORT)
        times.append(time.monotonic() - t0)
    tracked = v.total(text, "vfiomond_pin_mappings")
    container.close()
    times.sort()
    return {"mappings": count, "map_seconds": round(mapped_s, 1), "pin_mappings_tracked": tracked,
            "scrape_median_s": round(statistics.median(times), 3), "scrape_worst_s": round(times[-1], 3)}


def scrape_load(scrapers, seconds):
    stop = threading.Event()
    times, failures, lock = [], [], threading.Lock()

    def worker():
        while not stop.is_set():
            t0 = time.monotonic()
            try:
                v.scrape(PORT)
                with lock:
                    times.append(time.monotonic() - t0)
            except Exception as e:  # recorded
                with lock:
                    failures.append("%s: %s" % (type(e).__name__, e))

    threads = [threading.Thread(target=worker, daemon=True) for _ in range(scrapers)]
    for t in threads:
        t.start()
    time.sleep(seconds)
    stop.set()
    for t in threads:
        t.join(120)
    times.sort()
    q = lambda p: round(times[min(len(times) - 1, int(p * len(times)))], 3) if times else None  # noqa: E731
    return {"scrapers": scrapers, "seconds": seconds, "scrapes": len(times), "failed": len(failures),
            "errors": failures[:5], "p50_s": q(0.5), "p99_s": q(0.99),
            "mean_s": round(statistics.mean(times), 3) if times else None}


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--faults", type=int, default=int(os.environ.get("SOAK_FAULTS", 1000000)))
    p.add_argument("--pairs", type=int, default=int(os.environ.get("SOAK_PAIRS", 100000)))
    p.add_argument("--live", type=int, default=int(os.environ.get("SOAK_LIVE", 50000)))
    p.add_argument("--scrapers", type=int, default=100)
    p.add_argument("--scrape-seconds", type=float, default=60.0)
    args = p.parse_args()
    summary = {"scenario": "soak", "daemon": DAEMON, "kernel": os.uname().release}
    footprint = Footprint()
    footprint.start()
    try:
        edu = next(d for d in v.find_devices() if d.name == "edu")
        first = v.scrape(PORT)
        log("BAR faults")
        summary["faults"] = bar_faults(edu, args.faults)
        log("DMA pairs")
        summary["dma"] = dma_pairs(edu, args.pairs)
        log("live mappings")
        summary["live"] = []
        for _ in range(2):
            summary["live"].append(live_mappings(edu, args.live))
            time.sleep(35)  # a housekeeping pass (30 s) gives the freed heap back
            footprint.sample()
            summary["live"][-1]["rss_kib_after"] = footprint.samples[-1][1]
        log("scrape load")
        summary["scrapes"] = scrape_load(args.scrapers, args.scrape_seconds)
        last = v.scrape(PORT)
        summary["lost"] = v.total(last, "vfiomond_events_lost_total") - v.total(first, "vfiomond_events_lost_total")
        summary["alerts"] = v.total(last, "vfiomond_alerts_total") - v.total(first, "vfiomond_alerts_total")
        summary["ok"] = True
    except Exception as e:
        summary.update(ok=False, error="%s: %s" % (type(e).__name__, e))
    footprint.stop.set()
    footprint.join()
    footprint.sample()
    summary["footprint"] = footprint.samples  # (seconds, VmRSS KiB, fds, threads)
    print(json.dumps(summary))
    return 0 if summary["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
