#!/usr/bin/env python3
"""Scrape cost: time to build /metrics for a host with many VFIO devices and processes.

Runs on any Linux host (no BPF, no VFIO): vfiomond's real collector, exposition
and /proc readers, with three stand-ins for what only a big VFIO host has:
- the BPF maps: rows shaped as the lab kernels fill them (every device with
  BAR faults in 3 latency slots and 2 results, per-process DMA accounting in
  both backends), served as BCC tables would be (key/value objects);
- the device inventory: DEVICES devices, each with an IOMMU group;
- the VFIO users: PROCESSES real processes (sleep) whose /proc files are read as
  a VFIO user's are, found as the daemon finds them (processes.UserFinder: the
  open files of the candidates the probes named are read, for their cost), but
  the open /dev/vfio files are declared, not held.

``--host-fds N`` adds processes holding N open files between them (a big host:
databases, sockets); ``--full-scan`` reads every process's open files on each scrape, as
vfiomond did before the UserFinder, for comparison.  ``--parallel N`` runs N scrapers
at once through exposition.SharedCollection, as the daemon serves them (one
collection at a time, shared by the requests that arrive while it runs);
``--no-share`` lets each collect on its own, as before, for comparison.

    python3 benchmarks/scrape.py [--devices 64] [--processes 64] [--scrapes 50] [--host-fds N] [--full-scan]
                                 [--parallel N [--no-share]]

Prints the median and worst time of ``generate_latest`` over the collector (what
one GET /metrics costs besides HTTP) and the size of the page.
"""

import argparse
import os
import statistics
import subprocess
import sys
import threading
import time
from types import SimpleNamespace as NS

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from prometheus_client.core import CollectorRegistry  # noqa: E402
from prometheus_client.exposition import generate_latest  # noqa: E402

from vfiomond import devices, iommufd, processes, type1  # noqa: E402
from vfiomond.bpfload import ProbeStatus  # noqa: E402
from vfiomond.collector import VfiomondCollector  # noqa: E402
from vfiomond.exposition import SharedCollection  # noqa: E402
from vfiomond.metricsutil import DMA_SLOTS  # noqa: E402
from vfiomond.probes import PROBES  # noqa: E402


class Array(list):
    """A BPF_ARRAY as BCC returns it: indexed by ctypes.c_int, values with .value."""

    def __getitem__(self, index):
        return NS(value=list.__getitem__(self, index.value))


class Rows(list):
    """A BPF hash map as BCC returns it: items() gives (key, value) objects."""

    def items(self):
        return list(self)


def bdf(i):
    return "0000:%02x:%02x.0" % (1 + i // 32, i % 32)


def fault_tables(n_devices):
    hist = Rows()
    for i in range(n_devices):
        device = bdf(i).encode()
        for ret in (0x100, 0x800):  # NOPAGE, FALLBACK
            for slot in (12, 14, 17):
                hist.append((NS(device=device, ret=ret, region=0, order=0, slot=slot),
                             NS(count=1000 + slot, sum_ns=(1000 + slot) << slot)))
    concurrent = Rows((NS(device=bdf(i).encode()), NS(value=3)) for i in range(n_devices))
    remap = Rows((NS(context=1, slot=s, err=0), NS(count=10, sum_ns=10 << s, bytes=10 << 20)) for s in (15, 16))
    return {"bar_fault_hist": hist, "bar_faults_concurrent": concurrent,
            "remap_hist": remap, "remap_errors": Rows(), "pat_untrack": concurrent}


def acct_rows(pids, fields):
    return Rows((NS(value=pid), NS(**{f: 1 if f == "account" else 4096 for f in fields})) for pid in pids)


def dma_tables(prefix, pids):
    hist = Array(100 if 10 <= cell % DMA_SLOTS < 30 else 0 for cell in range(2 * DMA_SLOTS))
    return {prefix + "dma_hist": hist, prefix + "dma_errors": Rows([(NS(op=0, err=12), NS(value=1))])}


def tables(n_devices, pids):
    t = fault_tables(n_devices)
    t.update(dma_tables("", pids))
    t["type1_counters"] = Array([10**9] * len(type1.COUNTERS))
    t["proc_acct"] = acct_rows(pids, ("mapped_bytes", "pinned_pages", "charged_pages", "charge_failures", "map_ns",
                                      "map_bytes", "zero_pages"))
    t.update(dma_tables("iommufd_", pids))
    t["iommufd_counters"] = Array([10**9] * iommufd.N_COUNTERS)
    t["iommufd_proc_acct"] = acct_rows(pids, ("mapped_bytes", "pinned_pages", "charged_pages", "exempt_pages",
                                              "charge_failures", "account", "map_ns", "map_bytes"))
    return t


class Program:
    """What the collector reads of bpfload.Program: every probe attached."""

    def __init__(self, maps):
        self._maps = maps
        self.statuses = [ProbeStatus(p.name, True, "x") for p in PROBES]
        self.features = {"iommufd": True}

    def areas(self):
        return ["faults", "type1", "iommufd"]

    def tables(self, area):
        return self._maps.__getitem__

    def lost_events(self):
        return {}


def inventory(n_devices):
    inv = devices.Inventory()
    for i in range(n_devices):
        inv.devices[bdf(i)] = devices.VfioDevice(bdf(i), "15b3", "101e", "Mellanox Technologies",
                                                 "ConnectX Family mlx5Gen Virtual Function", str(100 + i), "vfio-pci",
                                                 "0", "/dev/vfio/%d" % (100 + i), "/dev/vfio/devices/vfio%d" % i)
    return inv


def fd_holders(n: int) -> list:
    """Processes holding ``n`` open files of /dev/null between them, each as many as
    its hard RLIMIT_NOFILE allows."""
    import resource

    per = max(1, resource.getrlimit(resource.RLIMIT_NOFILE)[1] - 64)
    code = ("import os, resource, sys, time\n"
            "n = int(sys.argv[1])\n"
            "hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]\n"
            "resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))\n"
            "fds = [os.open('/dev/null', os.O_RDONLY) for _ in range(n)]\n"
            "print('ready', flush=True)\n"
            "time.sleep(3600)\n")
    children = []
    while n > 0:
        child = subprocess.Popen([sys.executable, "-c", code, str(min(n, per))], stdout=subprocess.PIPE,
                                 universal_newlines=True)
        children.append(child)
        if child.stdout.readline().strip() != "ready":
            for c in children:
                c.kill()
            raise SystemExit("an fd holder did not start")
        n -= per
    return children


class Counting:
    """The registry, counting its collections."""

    def __init__(self, registry):
        self.registry, self.collections = registry, 0

    def collect(self):
        self.collections += 1
        return self.registry.collect()


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--devices", type=int, default=64)
    p.add_argument("--processes", type=int, default=64)
    p.add_argument("--scrapes", type=int, default=50)
    p.add_argument("--host-fds", type=int, default=0, help="open files held by one more (non-VFIO) process")
    p.add_argument("--full-scan", action="store_true", help="read every process's open files on each scrape")
    p.add_argument("--parallel", type=int, default=1, metavar="N",
                   help="N scrapers at once, each scraping --scrapes times back to back (as the daemon serves "
                        "them: through exposition.SharedCollection)")
    p.add_argument("--no-share", action="store_true", help="with --parallel: each request collects on its own")
    args = p.parse_args()
    children = [subprocess.Popen(["sleep", "3600"]) for _ in range(args.processes)]
    pids = [c.pid for c in children]  # the VFIO users
    if args.host_fds:
        children += fd_holders(args.host_fds)  # the rest of a big host
    try:
        declared = {pid: ["/dev/vfio/%d" % (100 + i % args.devices), "/dev/iommu"] for i, pid in enumerate(pids)}

        finder = processes.UserFinder(lambda: pids)

        def open_files():
            if args.full_scan:
                processes.open_vfio_files()  # the real scan of every /proc/*/fd, for its cost
            else:
                finder()  # the candidates' fds, as the daemon reads them
            return declared

        processes.scraped_vfio_files.use(open_files)
        inv = inventory(args.devices)
        registry = CollectorRegistry(auto_describe=False)
        registry.register(VfiomondCollector(Program(tables(args.devices, pids)), os.uname().release,
                                            detectors={"devices": devices.InventoryMetrics(inv)}))
        counted = Counting(registry)
        served = counted if args.no_share else SharedCollection(counted)
        times: list = []
        pages: list = []

        def scraper():
            for _ in range(args.scrapes):
                start = time.perf_counter()
                pages.append(generate_latest(served))
                times.append(time.perf_counter() - start)

        threads = [threading.Thread(target=scraper) for _ in range(args.parallel)]
        wall = time.perf_counter()
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        wall = time.perf_counter() - wall
        page = pages[-1]
        samples = sum(1 for line in page.decode().splitlines() if line and not line.startswith("#"))
        print("devices=%d processes=%d host_fds=%d %s scrapes=%d page=%d bytes, %d samples" % (
            args.devices, args.processes, args.host_fds, "full-scan" if args.full_scan else "candidates",
            args.scrapes, len(page), samples))
        if args.parallel > 1:
            print("parallel=%d %s: %d requests in %.2f s, %d collections" % (
                args.parallel, "each collects" if args.no_share else "shared", len(times), wall, counted.collections))
        print("scrape: median %.1f ms, worst %.1f ms" % (statistics.median(times) * 1e3, max(times) * 1e3))
    finally:
        for c in children:
            c.kill()
            c.wait()
    return 0


if __name__ == "__main__":
    sys.exit(main())
