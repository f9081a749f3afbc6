#!/usr/bin/env python3
"""Scenario "device-health": resets, PCIe AER errors and the link of a VFIO device behind a root port.

The lab's virtio-rng sits behind a pcie-root-port (tests/lab/lab.py).  The scenario
binds it to vfio-pci, opens it through VFIO (a VM's hold), resets it through VFIO
(VFIO_DEVICE_RESET twice, VFIO_DEVICE_PCI_HOT_RESET once), enables error reporting on it and the port (PCIe Device Control
and the port's SERR forwarding, as a kernel or firmware that grants the OS AER control
does), then asks the lab's QEMU to inject errors into it through the monitor
(``pcie_aer_inject_error``, tests/lab/hmp.py): NONFATAL non-fatal Completion Timeouts
and FATAL fatal Data Link Protocol errors, one at a time, each waited for in the kernel's
own count, then one correctable Receiver Error (see PROBE_CORRECTABLE).  vfiomond is scraped before and after.

Ground truth: the injections themselves, and the link from the device's and the
port's PCIe capability in config space (Link Status and Link Capabilities), read before
the errors, not from the sysfs files vfiomond reads.  Gives the device back to its own driver at the end.
Prints one JSON line.
"""

import json
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import vfiolib as v  # noqa: E402

PORT = os.environ.get("VFIOMOND_PORT", "10119")
QEMU_ID = "rpdev"  # tests/lab/lab.py PORT_DEVICE
VIRTIO_RNG = ("0x1af4", "0x1044")  # modern virtio-rng (behind a PCIe port QEMU makes it modern only)
NONFATAL = 2
FATAL = 1
OUT = "/lab/out"
PCI_CAP_ID_EXP = 0x10
DEVCTL_REPORTING = 0x000F  # correctable, non-fatal, fatal, unsupported request reporting enable
BRIDGE_CONTROL, BRIDGE_CTL_SERR = 0x3E, 0x02
SPEEDS = {1: 2.5e9, 2: 5e9, 3: 8e9, 4: 16e9, 5: 32e9, 6: 64e9}
DEVICES = "/sys/bus/pci/devices"


def find_port_device():
    """(device, root port) of the virtio-rng whose parent is a bridge."""
    for bdf in sorted(os.listdir(DEVICES)):
        ids = tuple(open(os.path.join(DEVICES, bdf, name)).read().strip() for name in ("vendor", "device"))
        parent = os.path.basename(os.path.dirname(os.path.realpath(os.path.join(DEVICES, bdf))))
        if ids == VIRTIO_RNG and parent.count(":") == 2:
            return bdf, parent
    raise OSError("no virtio-rng behind a PCIe port in the lab guest")


class Config:
    """A function's config space through sysfs (root may write it)."""

    def __init__(self, bdf):
        self.path = os.path.join(DEVICES, bdf, "config")

    def read(self, offset, size):
        with open(self.path, "rb") as f:
            f.seek(offset)
            return int.from_bytes(f.read(size), "little")

    def write(self, offset, size, value):
        with open(self.path, "r+b") as f:
            f.seek(offset)
            f.write(value.to_bytes(size, "little"))

    def pcie_cap(self):
        pos = self.read(0x34, 1)
        while pos:
            if self.read(pos, 1) == PCI_CAP_ID_EXP:
                return pos
            pos = self.read(pos + 1, 1)
        raise OSError("%s has no PCIe capability" % self.path)

    def aer_cap(self):
        pos = 0x100
        while pos:
            header = self.read(pos, 4)
            if header & 0xFFFF == 1:
                return pos
            pos = header >> 20
        return None

    def link(self):
        """(speed, width, max speed, max width) from Link Status and Link Capabilities."""
        cap = self.pcie_cap()
        status, caps = self.read(cap + 0x12, 2), self.read(cap + 0x0C, 4)
        return SPEEDS.get(status & 0xF, 0.0), (status >> 4) & 0x3F, SPEEDS.get(caps & 0xF, 0.0), (caps >> 4) & 0x3F


def enable_reporting(bdf, bridge=False):
    """Sets the reporting enables; returns which bits the kernel had set already."""
    c = Config(bdf)
    devctl = c.pcie_cap() + 0x08
    before = c.read(devctl, 2)
    c.write(devctl, 2, before | DEVCTL_REPORTING)
    if bridge:
        c.write(BRIDGE_CONTROL, 2, c.read(BRIDGE_CONTROL, 2) | BRIDGE_CTL_SERR)
    return before & DEVCTL_REPORTING


def bind(bdf, driver):
    dev = os.path.join(DEVICES, bdf)
    if os.path.exists(os.path.join(dev, "driver")):
        with open(os.path.join(dev, "driver/unbind"), "w") as f:
            f.write(bdf)
    with open(os.path.join(dev, "driver_override"), "w") as f:
        f.write(driver or "\n")
    with open("/sys/bus/pci/drivers_probe", "w") as f:
        f.write(bdf)
    return os.path.basename(os.readlink(os.path.join(dev, "driver"))) if os.path.exists(os.path.join(dev, "driver")) else ""


def root_port_count(port, severity):
    """Messages the root port received from below it (aer_rootport_total_err_*)."""
    name = {"correctable": "cor", "nonfatal": "nonfatal", "fatal": "fatal"}[severity]
    with open(os.path.join(DEVICES, port, "aer_rootport_total_err_" + name)) as f:
        return int(f.read())


def aer_count(bdf, severity, error):
    """The kernel's count of ``error`` (its name, or "TOTAL" for the messages) in sysfs."""
    name = {"correctable": "aer_dev_correctable", "nonfatal": "aer_dev_nonfatal", "fatal": "aer_dev_fatal"}[severity]
    for line in open(os.path.join(DEVICES, bdf, name)):
        head, _, count = line.strip().rpartition(" ")
        if head == error or (error == "TOTAL" and head.startswith("TOTAL_ERR_")):
            return int(count)
    raise OSError("%s has no %s line" % (name, error))


def inject(n, line, timeout=20.0):
    """Runs ``line`` on the lab QEMU's monitor (through the shared folder)."""
    request = os.path.join(OUT, "hmp-request.%d" % n)
    with open(request + ".tmp", "w") as f:
        f.write(line + "\n")
    os.rename(request + ".tmp", request)
    reply = os.path.join(OUT, "hmp-reply.%d" % n)
    deadline = time.monotonic() + timeout
    while not os.path.exists(reply):
        if time.monotonic() > deadline:
            raise OSError("the lab did not run %r" % line)
        time.sleep(0.1)
    return open(reply).read().strip()


def wait_count(count, want, timeout=20.0):
    """``count()`` once it reaches ``want``, or when ``timeout`` s have passed."""
    deadline = time.monotonic() + timeout
    while count() < want and time.monotonic() < deadline:
        time.sleep(0.1)
    return count()


def vfiomond_view(text, bdf, port):
    def one(name, **labels):
        found = v.sample(text, name, device=bdf, **labels)
        return found[0] if len(found) == 1 else found

    return {"rx_err": one("vfiomond_device_aer_errors_total", function=bdf, severity="correctable", error="RxErr"),
            "cmplt_to": one("vfiomond_device_aer_errors_total", function=bdf, severity="nonfatal", error="CmpltTO"),
            "dlp": one("vfiomond_device_aer_errors_total", function=bdf, severity="fatal", error="DLP"),
            "nonfatal_messages": one("vfiomond_device_aer_messages_total", function=bdf, severity="nonfatal"),
            "fatal_messages": one("vfiomond_device_aer_messages_total", function=bdf, severity="fatal"),
            "root_port_fatal": one("vfiomond_device_aer_root_port_messages_total", root_port=port, severity="fatal"),
            "port_series": len(v.sample(text, "vfiomond_device_aer_errors_total", device=bdf, function=port)),
            "speed": one("vfiomond_device_link_speed_transfers_per_second"),
            "width": one("vfiomond_device_link_width"),
            "capable_speed": one("vfiomond_device_link_capable_speed_transfers_per_second"),
            "capable_width": one("vfiomond_device_link_capable_width")}


def diagnose(bdf, port):
    """Registers that say where an injected error stopped (for a failure's summary)."""
    out = {}
    for name, fn in (("device", bdf), ("port", port)):
        c = Config(fn)
        aer = c.aer_cap()
        out[name] = {"devctl": c.read(c.pcie_cap() + 8, 2), "devsta": c.read(c.pcie_cap() + 0x0A, 2),
                     "command": c.read(4, 2),
                     "cor_status": aer and c.read(aer + 0x10, 4), "uncor_status": aer and c.read(aer + 0x04, 4),
                     "power_state": (open(os.path.join(DEVICES, fn, "power_state")).read().strip()
                                     if os.path.exists(os.path.join(DEVICES, fn, "power_state")) else "")}
        if name == "port":
            out[name].update(bridge_control=c.read(BRIDGE_CONTROL, 2), root_command=aer and c.read(aer + 0x2C, 4),
                             root_status=aer and c.read(aer + 0x30, 4))
    out["interrupts"] = [ln.split() for ln in open("/proc/interrupts") if "aer" in ln or "PCIe" in ln or "pcie" in ln]
    return out


def wait_seen(bdf, timeout=30.0):
    """The scrape once vfiomond follows the device (udev told it of the new driver)."""
    deadline = time.monotonic() + timeout
    while True:
        text = v.scrape(PORT)
        if v.sample(text, "vfiomond_device_link_width", device=bdf) or time.monotonic() > deadline:
            return text
        time.sleep(0.5)


def run(bdf, port, summary):
    # Held open by a VFIO user, as a VM holds its device: vfio-pci keeps an unused device
    # runtime-suspended in D3hot and the PCI core restores its saved config space on each
    # wake-up, which would undo the enables set below.
    group = os.path.basename(os.readlink(os.path.join(DEVICES, bdf, "iommu_group")))
    container = v.Container(group)
    device_fd = container.device(bdf)
    try:
        reset_all(bdf, device_fd, container.group_fd, summary)
        inject_all(bdf, port, summary)
    finally:
        os.close(device_fd)
        container.close()


FUNCTION_RESETS = 2  # VFIO_DEVICE_RESET
HOT_RESETS = 1  # VFIO_DEVICE_PCI_HOT_RESET: the device is alone below its root port


def reset_view(text, bdf):
    """vfiomond's resets of the device: {"operation/method/result": count}, the duration
    histogram's count per "operation/method", and its unresponsive count."""
    resets, timed = {}, {}
    unresponsive = v.sample(text, "vfiomond_device_reset_unresponsive_total", device=bdf)
    for line in text.splitlines():
        if line.startswith(("vfiomond_device_resets_total{", "vfiomond_device_reset_duration_seconds_count{")):
            labels = dict(part.split("=", 1) for part in line[line.index("{") + 1:line.index("}")].replace('"', "").split(","))
            if labels.get("device") != bdf:
                continue
            value = float(line.rsplit(" ", 1)[1])
            if line.startswith("vfiomond_device_resets_total"):
                resets["%s/%s/%s" % (labels["operation"], labels["method"], labels["result"])] = value
            else:
                timed["%s/%s" % (labels["operation"], labels["method"])] = value
    return {"resets": resets, "timed": timed, "unresponsive": unresponsive[0] if len(unresponsive) == 1 else unresponsive}


def reset_all(bdf, device_fd, group_fd, summary):
    """Resets the device through VFIO as a VMM does (VFIO_DEVICE_RESET, then a hot reset),
    each ioctl's own result the ground truth; vfiomond's counts are read before and after."""
    before = reset_view(wait_seen(bdf), bdf)
    method_file = os.path.join(DEVICES, bdf, "reset_method")  # 5.15+: the methods the PCI core will try, in order
    methods = open(method_file).read().split() if os.path.exists(method_file) else []
    # Before 5.15 (no reset_method): whether Device Capabilities advertise FLR (bit 28),
    # which the PCI core tries first for a device without a device-specific reset.
    config = Config(bdf)
    flr_capable = bool(config.read(config.pcie_cap() + 0x04, 4) & (1 << 28))
    results = {"function": [v.device_reset(device_fd) for _ in range(FUNCTION_RESETS)],
               "bus": [v.hot_reset(device_fd, [group_fd]) for _ in range(HOT_RESETS)]}
    answers = open(os.path.join(DEVICES, bdf, "config"), "rb").read(2) != b"\xff\xff"
    want = FUNCTION_RESETS + HOT_RESETS
    deadline = time.monotonic() + 20
    while True:  # the records reach vfiomond's main loop within a poll
        after = reset_view(v.scrape(PORT), bdf)
        if sum(after["resets"].values()) - sum(before["resets"].values()) >= want or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    summary["resets"] = {"methods": methods, "flr_capable": flr_capable, "results": results, "answers": answers,
                         "before": before, "after": after}


# What the scenario injects: (severity, the kernel's name, QEMU's name of the error in
# hw/pci/pcie_aer.c pcie_aer_error_list, how many).  A fatal error makes the kernel reset
# the link below the port (drivers/pci/pcie/err.c pcie_do_recovery; in the lab the link
# does not come back: "device recovery failed"), and it reads none of an endpoint's error
# registers for it: the root port's count is the only one that moves (None below).
INJECTIONS = (("nonfatal", "CmpltTO", "COMP_TIME", NONFATAL), ("fatal", None, "DLP", FATAL))
# A correctable error reaches the root port only from QEMU 8.0 on ("hw/pci/aer: Add missing
# routing for AER errors": before it, a device forwards ERR_COR only with SERR#, which
# applies to uncorrectable errors): injected once, and the kernel's count says whether it came.
PROBE_CORRECTABLE = ("correctable", "RxErr", "RCVR")


def inject_all(bdf, port, summary):
    summary["kernel_enabled_reporting"] = {"device": enable_reporting(bdf), "port": enable_reporting(port, True)}
    before = vfiomond_view(wait_seen(bdf), bdf, port)
    # The link before the errors: the fatal one resets it, and in the lab it does not come back.
    dev, rp = Config(bdf).link(), Config(port).link()
    config_link = {"speed": dev[0], "width": dev[1], "capable_speed": min(dev[2], rp[2]), "capable_width": min(dev[3], rp[3])}
    injected = {"correctable": 0, "nonfatal": 0, "fatal": 0}
    replies = []
    n = 0
    for severity, error, qemu_name, count in INJECTIONS:
        for _ in range(count):
            if error is None:
                counter = lambda: root_port_count(port, severity)  # noqa: E731
            else:
                counter = lambda: aer_count(bdf, severity, error)  # noqa: E731
            start = counter()
            replies.append(inject(n, "pcie_aer_inject_error %s %s" % (QEMU_ID, qemu_name)))
            n += 1
            if wait_count(counter, start + 1) != start + 1:
                summary["diagnosis"] = diagnose(bdf, port)
                raise OSError("the kernel did not count injected %s %s (monitor: %r)" % (severity, error, replies[-1]))
            injected[severity] += 1
    severity, error, qemu_name = PROBE_CORRECTABLE
    start = aer_count(bdf, severity, error)
    replies.append(inject(n, "pcie_aer_inject_error %s %s" % (QEMU_ID, qemu_name)))
    injected[severity] = wait_count(lambda: aer_count(bdf, severity, error), start + 1, timeout=5.0) - start
    after = vfiomond_view(v.scrape(PORT), bdf, port)
    summary.update(injected=injected, monitor_replies=sorted(set(replies)), before=before, after=after,
                   config_link=config_link,
                   kernel_counts={"rx_err": aer_count(bdf, "correctable", "RxErr"),
                                  "cmplt_to": aer_count(bdf, "nonfatal", "CmpltTO"),
                                  "dlp": aer_count(bdf, "fatal", "DLP"),
                                  "nonfatal_messages": aer_count(bdf, "nonfatal", "TOTAL"),
                                  "fatal_messages": aer_count(bdf, "fatal", "TOTAL"),
                                  "root_port_fatal": root_port_count(port, "fatal")},
                   after_fatal=diagnose(bdf, port)["device"])


def main():
    summary = {"scenario": "device-health", "kernel": os.uname().release}
    try:
        bdf, port = find_port_device()
        summary.update(device=bdf, port=port)
        driver = bind(bdf, "vfio-pci")
        if driver != "vfio-pci":
            raise OSError("binding %s to vfio-pci failed (driver %r)" % (bdf, driver))
        try:
            run(bdf, port, summary)
        finally:
            summary["restored_driver"] = bind(bdf, "")
        summary["ok"] = True
    except Exception as e:
        summary.update(ok=False, error="%s: %s" % (type(e).__name__, e))
    print(json.dumps(summary))
    return 0 if summary["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
