#!/usr/bin/env python3
"""Scenario "iommu-faults": a VFIO device DMAs to addresses its IOMMU domain does not map.

The scenario opens edu through VFIO (type1: the guest's VT-d unit, QEMU's intel-iommu,
translates its DMA), maps one page, and has edu's DMA engine read FAULTS times from an
IOVA nothing maps, one DMA at a time, each waited for.  Each is one DMA-remapping fault
the unit records and one fault interrupt; the kernel prints the first ones and its
rate limit (10 per 5 s, shared with the "DRHD: handling fault status" line) drops the
rest.  vfiomond is scraped before and after.

Ground truth: the DMAs the scenario started, and the kernel log's own lines read from
/dev/kmsg (the faults it named for edu's source ID).
Prints one JSON line.
"""

import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import vfiolib as v  # noqa: E402

PORT = os.environ.get("VFIOMOND_PORT", "10119")
FAULTS = 30
MAPPED_IOVA = 0x100000
UNMAPPED_IOVA = 0x800000  # below edu's 28-bit DMA mask, mapped by nothing
GAP = 0.05  # seconds between two DMAs
SETTLE = 2.0  # seconds for the last fault interrupt and the scrape's view of it


def kmsg_lines():
    """The kernel log's messages so far (/dev/kmsg from its start, without blocking)."""
    fd = os.open("/dev/kmsg", os.O_RDONLY | os.O_NONBLOCK)
    out = []
    try:
        while True:
            try:
                record = os.read(fd, 8192).decode("utf-8", "replace")
            except BlockingIOError:
                break
            except OSError:  # EPIPE: a record overwritten while reading; go on
                continue
            out.append(record.split(";", 1)[-1].split("\n", 1)[0])
    finally:
        os.close(fd)
    return out


def logged_faults(lines, bdf):
    """Faults the kernel named for ``bdf`` in its log."""
    # "[00:02.0]" (bus:device.function) up to 6.x; 7.2 names the segment too.
    names = ("Request device [%s]" % bdf.split(":", 1)[1], "Request device [%s]" % bdf)
    return sum(1 for ln in lines if any(n in ln for n in names))


def vfiomond_view(text, bdf):
    return {"interrupts": v.total(text, "vfiomond_iommu_fault_interrupts_total"),
            "logged": v.total(text, "vfiomond_iommu_faults_total", device=bdf)}


def run(dev):
    container = v.Container(dev.iommu_group)
    device_fd = container.device(dev.bdf)
    config = v.region(device_fd, v.VFIO_PCI_CONFIG_REGION_INDEX)
    v.set_pci_command(device_fd, config, v.pci_command(device_fd, config) | v.PCI_COMMAND_MEMORY | v.PCI_COMMAND_MASTER)
    bar = v.region(device_fd, 0)
    addr = v.mmap_device(device_fd, bar.size, bar.offset)
    page = v.mmap_anonymous(v.PAGE)
    v.touch_pages(page, v.PAGE)
    container.map_dma(page, MAPPED_IOVA, v.PAGE, v.VFIO_DMA_MAP_FLAG_READ | v.VFIO_DMA_MAP_FLAG_WRITE)
    time.sleep(SETTLE)
    before = vfiomond_view(v.scrape(PORT), dev.bdf)
    log_before = logged_faults(kmsg_lines(), dev.bdf)
    v.edu_dma(addr, MAPPED_IOVA, v.EDU_BUFFER, 8, to_ram=False)  # a DMA that works: no fault
    for _ in range(FAULTS):
        v.edu_dma(addr, UNMAPPED_IOVA, v.EDU_BUFFER, 8, to_ram=False)
        # The kernel clears the record in the fault interrupt; a fault of the same source
        # while its record is still set is collapsed into it (VT-d specification 7.2.1).
        time.sleep(GAP)
    time.sleep(SETTLE)
    log_after = logged_faults(kmsg_lines(), dev.bdf)
    after = vfiomond_view(v.scrape(PORT), dev.bdf)
    container.unmap_dma(MAPPED_IOVA, v.PAGE)
    v.munmap(addr, bar.size)
    os.close(device_fd)
    container.close()
    return {"device": dev.bdf, "pid": os.getpid(), "dmas": FAULTS, "before": before, "after": after,
            "logged": log_after - log_before}


def main():
    return v.run_on_device("iommu-faults", "edu", run)


if __name__ == "__main__":
    sys.exit(main())
