#!/usr/bin/env python3
"""Scenario "bar-dmabuf": a BAR of a VFIO device exported as a dma-buf, revoked and restored.

On kernels with VFIO_DEVICE_FEATURE_DMA_BUF (6.19+) the scenario opens edu through
VFIO, turns memory decode on, and asks for a dma-buf of the first page of BAR0; it also
asks once whether the feature exists (VFIO_DEVICE_FEATURE_PROBE: no export) and once
with no range (EINVAL).  With the dma-buf open it turns memory decode off and on
TOGGLES times through the config region: vfio-pci revokes the device's dma-bufs when
decode goes off and restores them when it comes back.  The dma-buf is closed before
the device.  vfiomond is scraped before and after.

Ground truth: the ioctls' own results, the fd the kernel returned (a dma-buf:
/proc/self/fdinfo names its exporter), the decode transitions the scenario made.
On a kernel without the feature the first request fails (ENOTTY or EINVAL) and the
scenario says so (supported: false).  Prints one JSON line.
"""

import errno
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import vfiolib as v  # noqa: E402

PORT = os.environ.get("VFIOMOND_PORT", "10119")
TOGGLES = 2


def vfiomond_view(text, bdf):
    return {"exports_ok": v.total(text, "vfiomond_bar_dmabuf_exports_total", device=bdf, result="ok"),
            "exports_einval": v.total(text, "vfiomond_bar_dmabuf_exports_total", device=bdf, result="EINVAL"),
            "revoked": v.total(text, "vfiomond_bar_dmabuf_revocations_total", device=bdf, action="revoke"),
            "restored": v.total(text, "vfiomond_bar_dmabuf_revocations_total", device=bdf, action="restore")}


def exporter(fd):
    """The exp_name line of a dma-buf fd's fdinfo ("" if the fd is not a dma-buf)."""
    with open("/proc/self/fdinfo/%d" % fd) as f:
        return next((ln.split(":", 1)[1].strip() for ln in f if ln.startswith("exp_name:")), "")


def run(dev):
    out = {"device": dev.bdf, "pid": os.getpid()}
    container = v.Container(dev.iommu_group)
    device_fd = container.device(dev.bdf)
    config = v.region(device_fd, v.VFIO_PCI_CONFIG_REGION_INDEX)
    command = v.pci_command(device_fd, config) | v.PCI_COMMAND_MEMORY
    v.set_pci_command(device_fd, config, command)
    time.sleep(1.0)
    out["before"] = vfiomond_view(v.scrape(PORT), dev.bdf)
    try:
        v.dma_buf_probe(device_fd)
    except OSError as e:
        out.update(supported=False, probe_errno=errno.errorcode.get(e.errno, str(e.errno)))
        os.close(device_fd)
        container.close()
        return out
    out["supported"] = True
    try:
        v.dma_buf_export(device_fd, 0, [])
        out["empty_errno"] = None
    except OSError as e:
        out["empty_errno"] = errno.errorcode.get(e.errno, str(e.errno))
    buf_fd = v.dma_buf_export(device_fd, 0, [(0, v.PAGE)])
    out["exporter"] = exporter(buf_fd)
    for _ in range(TOGGLES):
        v.set_pci_command(device_fd, config, command & ~v.PCI_COMMAND_MEMORY)
        v.set_pci_command(device_fd, config, command)
    out["toggles"] = TOGGLES
    os.close(buf_fd)
    time.sleep(1.0)
    out["after"] = vfiomond_view(v.scrape(PORT), dev.bdf)
    os.close(device_fd)
    container.close()
    return out


def main():
    return v.run_on_device("bar-dmabuf", "edu", run)


if __name__ == "__main__":
    sys.exit(main())
