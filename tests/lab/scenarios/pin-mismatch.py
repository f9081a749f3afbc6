#!/usr/bin/env python3
"""Scenario "pin-mismatch": does the device see what the process wrote? (seeds/003: read-only long-term pins before 6.2)

With the edu device: MAP_DMA 2 MiB read-only of never-touched memory at IOVA
0x2000000 and 2 MiB read-write at 0x1000000; the process then writes 0xAB over
the read-only buffer; the device copies 1 KiB from the read-only mapping (from
a page that the pin took as the shared zero page, if any) into its own
buffer and from there to IOVA 0x1000000 (real DMA through the IOMMU); the
process reads what arrived.  It then waits ``--wait`` seconds with the mappings
in place (so vfiomond can verify them), unmaps and closes.

Where the read-only pin took the shared zero page (Debian 12's 6.1), the device
reads zeros: ``stale`` is true.

Then a divergence that lives less than a second ("brief"): the same read-only map
of 64 KiB of untouched memory at IOVA 0x3000000, the write, the device's read, and
the container closed at once (no UNMAP_DMA: the kernel unmaps at release).

Then the huge zero page ("huge-zero"): a 2 MiB-aligned, never-touched range with
MADV_HUGEPAGE mapped read-only at IOVA 0xA000000: where the read-only pin takes the
huge zero page (THP's shared zero folio, 6.1), /proc/kpageflags says which pages
(ZERO_PAGE and THP set); the process writes, the device reads one of them.

Then COW after fork ("fork"): 64 KiB of touched memory mapped read-write at
IOVA 0x5000000; the process forks, the child writes 0xCD over the buffer and
exits, the parent writes 0x5A; the device reads the buffer.  Kernels that copy
pinned pages for the child at fork (5.11+) keep the parent's page: the device
reads 0x5A.

Then churn, as a guest with a vIOMMU drives type1: 1024 live 4 KiB mappings (one
MAP_DMA per page of a touched 4 MiB buffer), and for ``--churn`` seconds a 4 KiB
MAP_DMA / UNMAP_DMA loop over the pages of another touched buffer, as fast as the
process can; vfiomond is scraped before and after (its mappings tracked, pin
verifications, events lost).  Prints one JSON line; exit 0 when every step ran
(whatever the device read).
"""

import argparse
import ctypes
import json
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import vfiolib as v  # noqa: E402

MIB = 1 << 20
SIZE = 2 * MIB
RO_IOVA = 0x2000000
RW_IOVA = 0x1000000
PATTERN = 0xAB
# edu's buffer is 4 KiB, but QEMU 7.2 refuses a DMA that spans all of it
# ("DMA range ... out of bounds" for 0x40000-0x40fff): copy 1 KiB.
COPY = 1024


def open_edu(container, dev):
    """The edu device of ``container``, bus master, its BAR mapped: (device fd, BAR address, BAR size)."""
    device_fd = container.device(dev.bdf)
    bar = v.region(device_fd, 0)
    config = v.region(device_fd, v.VFIO_PCI_CONFIG_REGION_INDEX)
    v.set_pci_command(device_fd, config, v.pci_command(device_fd, config) | v.PCI_COMMAND_MEMORY | v.PCI_COMMAND_MASTER)
    return device_fd, v.mmap_device(device_fd, bar.size, bar.offset), bar.size


def device_reads(bar_addr, iova, rw, rw_iova):
    """What the device reads at ``iova``: copied into edu's buffer, then to ``rw`` (at ``rw_iova``)."""
    v.edu_dma(bar_addr, iova, v.EDU_BUFFER, COPY, to_ram=False)
    v.edu_dma(bar_addr, v.EDU_BUFFER, rw_iova, COPY, to_ram=True)
    return ctypes.string_at(rw, COPY)


def run(dev, wait):
    out = {"device": dev.bdf, "name": dev.name, "iommu_group": dev.iommu_group}
    container = v.Container(dev.iommu_group)
    ro = v.mmap_untouched(SIZE)
    rw = v.mmap_anonymous(SIZE)
    v.touch_pages(rw, SIZE)
    container.map_dma(ro, RO_IOVA, SIZE, v.VFIO_DMA_MAP_FLAG_READ)
    container.map_dma(rw, RW_IOVA, SIZE, v.VFIO_DMA_MAP_FLAG_READ | v.VFIO_DMA_MAP_FLAG_WRITE)
    # The page the device will read: one that shares its PFN with other pages
    # of the buffer (the shared zero page) if the pin took it, else the last.
    pfns = [v.own_pfn(ro + off) for off in range(0, SIZE, v.PAGE)]
    shared = [i for i, pfn in enumerate(pfns) if pfn is not None and pfns.count(pfn) > 1]
    page = shared[0] if shared else len(pfns) - 1
    out["dma_page"] = page
    out["zero_page_pinned_pages"] = len(shared)
    out["pfn_before_write"] = pfns[page]
    out["wrote_at"] = time.time()
    ctypes.memset(ro, PATTERN, SIZE)  # the process writes its "read-only" DMA buffer
    out["pfn_after_write"] = v.own_pfn(ro + page * v.PAGE)
    out["mappings"] = [
        {"iova": RO_IOVA, "size": SIZE, "flags": v.VFIO_DMA_MAP_FLAG_READ, "touched": False, "vaddr": ro},
        {"iova": RW_IOVA, "size": SIZE, "flags": 3, "touched": True, "vaddr": rw},
    ]

    device_fd, addr, bar_size = open_edu(container, dev)
    seen = device_reads(addr, RO_IOVA + page * v.PAGE, rw, RW_IOVA)
    out["device_read"] = seen[:16].hex()
    out["wrote"] = bytes([PATTERN]).hex()
    out["stale"] = seen != bytes([PATTERN]) * COPY
    print("pin-mismatch: device read %s... after the process wrote %02x (stale: %s)"
          % (seen[:8].hex(), PATTERN, out["stale"]), file=sys.stderr, flush=True)

    time.sleep(wait)  # let vfiomond verify while the mappings are in place
    out["unmap_at"] = time.time()
    v.munmap(addr, bar_size)
    for m in out["mappings"]:
        m["unmapped"] = container.unmap_dma(m["iova"], m["size"])
    v.munmap(ro, SIZE)
    v.munmap(rw, SIZE)
    os.close(device_fd)
    container.close()
    return out


BRIEF_IOVA, BRIEF_SIZE = 0x3000000, 64 * 1024
READBACK_IOVA = 0x6000000  # a touched page the device copies into, in each phase


def brief(dev):
    """The zero-page divergence again, ended by close within a second, without UNMAP_DMA."""
    out = {"iova": BRIEF_IOVA, "size": BRIEF_SIZE}
    container = v.Container(dev.iommu_group)
    device_fd, addr, bar_size = open_edu(container, dev)
    ro = v.mmap_untouched(BRIEF_SIZE)
    rw = v.mmap_anonymous(v.PAGE)
    v.touch_pages(rw, v.PAGE)
    container.map_dma(rw, READBACK_IOVA, v.PAGE, v.VFIO_DMA_MAP_FLAG_READ | v.VFIO_DMA_MAP_FLAG_WRITE)
    out["mapped_at"] = time.time()
    container.map_dma(ro, BRIEF_IOVA, BRIEF_SIZE, v.VFIO_DMA_MAP_FLAG_READ)
    pfn_before = v.own_pfn(ro)
    out["wrote_at"] = time.time()
    ctypes.memset(ro, PATTERN, BRIEF_SIZE)
    out["vaddr"] = ro
    out["pfn_changed"] = v.own_pfn(ro) != pfn_before
    out["stale"] = device_reads(addr, BRIEF_IOVA, rw, READBACK_IOVA) != bytes([PATTERN]) * COPY
    v.munmap(addr, bar_size)
    os.close(device_fd)
    container.close()  # the release unmaps and unpins everything: no UNMAP_DMA
    out["closed_at"] = time.time()
    out["held_seconds"] = out["closed_at"] - out["mapped_at"]
    v.munmap(ro, BRIEF_SIZE)
    v.munmap(rw, v.PAGE)
    print("pin-mismatch: brief divergence held %.2f s (stale: %s)" % (out["held_seconds"], out["stale"]),
          file=sys.stderr, flush=True)
    return out


HUGE_ZERO_IOVA = 0xA000000  # above the churn's IOVAs (the churn test checks that range)
KPF_THP, KPF_ZERO_PAGE = 1 << 22, 1 << 24  # Documentation/admin-guide/mm/pagemap.rst


def huge_zero(dev, wait):
    """A read-only map of a 2 MiB-aligned untouched THP range: the huge zero page on 6.1."""
    huge = v.hpage_pmd_size()
    out = {"iova": HUGE_ZERO_IOVA, "size": huge, "thp": v.thp_policy()}
    container = v.Container(dev.iommu_group)
    device_fd, addr, bar_size = open_edu(container, dev)
    area = v.mmap_anonymous(2 * huge)
    buf = (area + huge - 1) // huge * huge  # aligned: a read fault may map the whole PMD
    v.madvise_hugepage(buf, huge)
    rw = v.mmap_anonymous(v.PAGE)
    v.touch_pages(rw, v.PAGE)
    container.map_dma(rw, READBACK_IOVA, v.PAGE, v.VFIO_DMA_MAP_FLAG_READ | v.VFIO_DMA_MAP_FLAG_WRITE)
    out["before"], locked_before = vfiomond_view("before"), v.proc_status_kib("VmLck")
    container.map_dma(buf, HUGE_ZERO_IOVA, huge, v.VFIO_DMA_MAP_FLAG_READ)
    out["after_map"] = vfiomond_view("after_map")
    out["vmlck_added_bytes"] = (v.proc_status_kib("VmLck") - locked_before) * 1024
    out["vaddr"] = buf
    pfns = [v.own_pfn(buf + off) for off in range(0, huge, v.PAGE)]
    flags = [v.kpageflags(pfn) if pfn is not None else 0 for pfn in pfns]
    out["zero_pages"] = sum(1 for f in flags if f & KPF_ZERO_PAGE)
    out["huge_zero_pages"] = sum(1 for f in flags if f & KPF_ZERO_PAGE and f & KPF_THP)
    out["first_pfn"] = pfns[0]
    out["wrote_at"] = time.time()
    ctypes.memset(buf, PATTERN, huge)
    out["pfn_changed"] = v.own_pfn(buf) != pfns[0]
    out["stale"] = device_reads(addr, HUGE_ZERO_IOVA, rw, READBACK_IOVA) != bytes([PATTERN]) * COPY
    time.sleep(wait)  # vfiomond verifies with the mapping in place
    out["unmap_at"] = time.time()
    container.unmap_dma(HUGE_ZERO_IOVA, huge)
    container.unmap_dma(READBACK_IOVA, v.PAGE)
    v.munmap(addr, bar_size)
    os.close(device_fd)
    container.close()
    v.munmap(area, 2 * huge)
    v.munmap(rw, v.PAGE)
    print("pin-mismatch: huge zero page: %d of %d pinned pages were the huge zero page (THP %s; stale: %s)"
          % (out["huge_zero_pages"], len(pfns), out["thp"], out["stale"]), file=sys.stderr, flush=True)
    return out


FORK_IOVA, FORK_SIZE = 0x5000000, 64 * 1024
CHILD_PATTERN, PARENT_PATTERN = 0xCD, 0x5A


def cow_after_fork(dev):
    """A pinned, touched private buffer; fork; the child writes it and exits; the parent writes."""
    out = {"iova": FORK_IOVA, "size": FORK_SIZE}
    container = v.Container(dev.iommu_group)
    device_fd, addr, bar_size = open_edu(container, dev)
    buf = v.mmap_anonymous(FORK_SIZE)
    v.touch_pages(buf, FORK_SIZE)
    rw = v.mmap_anonymous(v.PAGE)
    v.touch_pages(rw, v.PAGE)
    container.map_dma(rw, READBACK_IOVA, v.PAGE, v.VFIO_DMA_MAP_FLAG_READ | v.VFIO_DMA_MAP_FLAG_WRITE)
    container.map_dma(buf, FORK_IOVA, FORK_SIZE, v.VFIO_DMA_MAP_FLAG_READ | v.VFIO_DMA_MAP_FLAG_WRITE)
    out["vaddr"] = buf
    pfn_before = v.own_pfn(buf)
    child = os.fork()
    if child == 0:
        ctypes.memset(buf, CHILD_PATTERN, FORK_SIZE)
        os._exit(0)
    os.waitpid(child, 0)
    ctypes.memset(buf, PARENT_PATTERN, FORK_SIZE)
    out["pfn_changed"] = v.own_pfn(buf) != pfn_before
    seen = device_reads(addr, FORK_IOVA, rw, READBACK_IOVA)
    out["device_read"] = seen[:16].hex()
    out["stale"] = seen != bytes([PARENT_PATTERN]) * COPY
    time.sleep(2)  # a verification pass or two with the mappings in place
    container.unmap_dma(FORK_IOVA, FORK_SIZE)
    container.unmap_dma(READBACK_IOVA, v.PAGE)
    v.munmap(addr, bar_size)
    os.close(device_fd)
    container.close()
    v.munmap(buf, FORK_SIZE)
    v.munmap(rw, v.PAGE)
    print("pin-mismatch: after fork the device read %s... (stale: %s)" % (seen[:8].hex(), out["stale"]),
          file=sys.stderr, flush=True)
    return out


PORT = os.environ.get("VFIOMOND_PORT", "10119")
LIVE_IOVA, LIVE_PAGES = 0x4000000, 1024
CHURN_IOVA, CHURN_PAGES = 0x8000000, 256


def vfiomond_view(name):
    text = v.scrape(PORT)
    return {"at": time.time(), "pin_mappings": sum(v.sample(text, "vfiomond_pin_mappings")),
            "verifications": sum(v.sample(text, "vfiomond_pin_verifications_total")),
            "events_lost": sum(v.sample(text, "vfiomond_events_lost_total")),
            "lost_pin_events": sum(v.sample(text, "vfiomond_events_lost_total", map="pin_events", reason="full")),
            "zero_page_pins": sum(v.sample(text, "vfiomond_zero_page_pins_total", backend="type1")),
            "uncharged_bytes": sum(v.sample(text, "vfiomond_process_uncharged_pinned_bytes", pid=str(os.getpid()))),
            "map_calls": sum(v.sample(text, "vfiomond_dma_map_duration_seconds_count", backend="type1")),
            "unmap_calls": sum(v.sample(text, "vfiomond_dma_unmap_duration_seconds_count", backend="type1")),
            "name": name}


def churn(dev, seconds):
    """4 KiB maps and unmaps as fast as the process can, next to 1024 live 4 KiB mappings."""
    out = {"live_mappings": LIVE_PAGES}
    container = v.Container(dev.iommu_group)
    live = v.mmap_anonymous(LIVE_PAGES * v.PAGE)
    v.touch_pages(live, LIVE_PAGES * v.PAGE)
    pages = v.mmap_anonymous(CHURN_PAGES * v.PAGE)
    v.touch_pages(pages, CHURN_PAGES * v.PAGE)
    rw = v.VFIO_DMA_MAP_FLAG_READ | v.VFIO_DMA_MAP_FLAG_WRITE
    for i in range(LIVE_PAGES):
        container.map_dma(live + i * v.PAGE, LIVE_IOVA + i * v.PAGE, v.PAGE, rw)
    time.sleep(2)  # a verification pass or two with the live mappings
    out["before"] = vfiomond_view("before")
    pairs, start = 0, time.monotonic()
    while time.monotonic() - start < seconds:
        i = pairs % CHURN_PAGES
        container.map_dma(pages + i * v.PAGE, CHURN_IOVA + i * v.PAGE, v.PAGE, rw)
        container.unmap_dma(CHURN_IOVA + i * v.PAGE, v.PAGE)
        pairs += 1
    out["seconds"] = time.monotonic() - start
    out["pairs"] = pairs
    out["pairs_per_second"] = pairs / out["seconds"]
    time.sleep(2.5)  # the daemon drains its ring buffer and verifies again
    out["after"] = vfiomond_view("after")
    for i in range(LIVE_PAGES):
        container.unmap_dma(LIVE_IOVA + i * v.PAGE, v.PAGE)
    v.munmap(live, LIVE_PAGES * v.PAGE)
    v.munmap(pages, CHURN_PAGES * v.PAGE)
    container.close()
    time.sleep(1.5)  # the daemon handles the release
    out["released"] = vfiomond_view("released")
    print("pin-mismatch: churned %d 4 KiB map/unmap pairs in %.1f s next to %d live mappings"
          % (pairs, out["seconds"], LIVE_PAGES), file=sys.stderr, flush=True)
    return out


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--wait", type=float, default=5.0, help="seconds to hold the mappings after the DMA")
    p.add_argument("--churn", type=float, default=5.0, help="seconds of 4 KiB map/unmap churn")
    p.add_argument("--sysfs", default="/sys")
    args = p.parse_args()
    summary = {"scenario": "pin-mismatch", "pid": os.getpid(), "kernel": os.uname().release}
    try:
        edu = [d for d in v.find_devices(args.sysfs) if d.name == "edu"]
        if not edu:
            raise RuntimeError("no edu device bound to vfio-pci")
        summary["devices"] = [run(edu[0], args.wait)]
        summary["brief"] = brief(edu[0])
        summary["huge_zero"] = huge_zero(edu[0], 2.0)
        summary["fork"] = cow_after_fork(edu[0])
        summary["churn"] = churn(edu[0], args.churn)
        summary["ok"] = True
    except Exception as e:
        summary.update(ok=False, error="%s: %s" % (type(e).__name__, e))
    print(json.dumps(summary))
    return 0 if summary["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
