#!/usr/bin/env python3
"""Scenario "interrupts": a VFIO user's interrupt vector, counted by the device's user and by vfiomond.

The scenario opens edu through VFIO, enables its MSI vector with an eventfd
(VFIO_DEVICE_SET_IRQS: vfio-pci requests IRQ "vfio-msi[0](BDF)"), makes the device
raise RAISES interrupts (edu's raise register, each acknowledged once the eventfd has
counted it), then scrapes vfiomond while the vector is still enabled, and again after
disabling it.  Ground truth: the eventfd's own count.  Prints one JSON line.
"""

import json
import os
import select
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import vfiolib as v  # noqa: E402

RAISES = 25
PORT = os.environ.get("VFIOMOND_PORT", "10119")


def wait_eventfd(efd, timeout=10.0):
    """The eventfd's counter (reset by the read); 0 if nothing came in ``timeout`` s."""
    ready, _, _ = select.select([efd], [], [], timeout)
    return int.from_bytes(os.read(efd, 8), "little") if ready else 0


def vfiomond_view(text, bdf):
    return {"interrupts": v.sample(text, "vfiomond_device_interrupts_total", device=bdf, type="msi", vector="0"),
            "vectors": v.sample(text, "vfiomond_device_interrupt_vectors", device=bdf, type="msi")}


def run(dev):
    container = v.Container(dev.iommu_group)
    device_fd = container.device(dev.bdf)
    config = v.region(device_fd, v.VFIO_PCI_CONFIG_REGION_INDEX)
    # MSI is a memory write by the device: bus master on.
    v.set_pci_command(device_fd, config, v.pci_command(device_fd, config) | v.PCI_COMMAND_MEMORY | v.PCI_COMMAND_MASTER)
    bar = v.region(device_fd, 0)
    addr = v.mmap_device(device_fd, bar.size, bar.offset)
    efd = v.eventfd()
    v.set_irq_eventfds(device_fd, v.VFIO_PCI_MSI_IRQ_INDEX, [efd])
    signalled = 0
    for _ in range(RAISES):
        v.edu_raise_interrupt(addr)
        signalled += wait_eventfd(efd)
        v.edu_ack_interrupt(addr)
    enabled = vfiomond_view(v.scrape(PORT), dev.bdf)
    v.set_irq_eventfds(device_fd, v.VFIO_PCI_MSI_IRQ_INDEX, [])
    disabled = vfiomond_view(v.scrape(PORT), dev.bdf)
    v.munmap(addr, bar.size)
    os.close(efd)
    os.close(device_fd)
    container.close()
    return {"device": dev.bdf, "raised": RAISES, "eventfd_count": signalled, "while_enabled": enabled,
            "after_disable": disabled}


def main():
    summary = {"scenario": "interrupts", "kernel": os.uname().release}
    edu = [d for d in v.find_devices() if d.name == "edu"]
    if not edu:
        summary.update(ok=False, error="no edu device bound to vfio-pci")
    else:
        try:
            summary.update(run(edu[0]))
            summary["ok"] = summary["eventfd_count"] == RAISES
            if not summary["ok"]:
                summary["error"] = "the eventfd counted %d of %d interrupts" % (summary["eventfd_count"], RAISES)
        except Exception as e:
            summary.update(ok=False, error="%s: %s" % (type(e).__name__, e))
    print(json.dumps(summary))
    return 0 if summary["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
