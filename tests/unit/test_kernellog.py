"""Kernel log lines that vfiomond alerts on besides splats: a device removal that
waits for its VFIO user (vfio_pci_core_request), and who holds the device."""

import os

from vfiomond import devices, splats
from vfiomond.kernellog import KernelLogWatcher, blocked_removal


class Sink:
    def __init__(self):
        self.alerts = []

    def alert(self, kind, message, **fields):
        self.alerts.append((kind.name, message, fields))


def feed(watcher, lines):
    assembler = splats.Assembler()
    for line in lines:
        for s in assembler.feed(line):
            watcher.on_splat(s)
    for s in assembler.flush():
        watcher.on_splat(s)


def test_blocked_removal_lines():
    assert blocked_removal("vfio-pci 0000:00:03.0: Relaying device request to user (#0)") == ("0000:00:03.0", True)
    assert blocked_removal(
        "vfio-pci 0000:24:00.0: No device request channel registered, blocked until released by user"
    ) == ("0000:24:00.0", False)
    # Repeats every 10 s while the user holds on: only the first request of a removal counts.
    assert blocked_removal("vfio-pci 0000:00:03.0: Relaying device request to user (#10)") is None
    assert blocked_removal("vfio-pci 0000:00:03.0: enabling device (0000 -> 0003)") is None


def test_removal_while_in_use_is_alerted_with_its_holders():
    sink = Sink()
    watcher = KernelLogWatcher([], sink, (6, 1, 0), holders=lambda bdf: {4242: "qemu-system-x86"})
    feed(watcher, [
        "vfio-pci 0000:00:03.0: Relaying device request to user (#0)",
        "vfio-pci 0000:00:03.0: Relaying device request to user (#10)",
        "vfio-pci 0000:00:02.0: enabling device (0000 -> 0003)",
    ])
    assert [(k, f["DEVICE"], f["PIDS"], f["COMMS"], f["REQUEST_CHANNEL"]) for k, _, f in sink.alerts] == [
        ("device_gone_in_use", "0000:00:03.0", "4242", "qemu-system-x86", 1)]
    assert "qemu-system-x86[4242]" in sink.alerts[0][1]
    # Every vfio-pci line is still counted.
    assert sum(n for (kind, _, _), n in watcher.counts.items() if kind == "vfio") == 3


def test_removal_without_request_channel_says_the_user_is_never_told():
    sink = Sink()
    watcher = KernelLogWatcher([], sink, None, holders=lambda bdf: {})
    feed(watcher, ["vfio-pci 0000:24:00.0: No device request channel registered, blocked until released by user"])
    (kind, message, fields), = sink.alerts
    assert kind == "device_gone_in_use" and fields["REQUEST_CHANNEL"] == 0 and fields["PIDS"] == ""
    assert "never told" in message


def test_holders_of_a_device_group_and_cdev(tmp_path):
    dev = tmp_path / "bus/pci/devices/0000:00:03.0"
    (dev / "vfio-dev/vfio0").mkdir(parents=True)
    (tmp_path / "kernel/iommu_groups/7").mkdir(parents=True)
    os.symlink(str(tmp_path / "kernel/iommu_groups/7"), str(dev / "iommu_group"))
    open_files = {
        os.getpid(): ["/dev/vfio/7"],
        2: ["/dev/vfio/devices/vfio0", "/dev/iommu"],
        3: ["/dev/vfio/8"],
        4: ["/dev/vfio/vfio"],
    }
    found = devices.holders("0000:00:03.0", open_files, sysfs=str(tmp_path))
    assert sorted(found) == [2, os.getpid()]
    with open("/proc/self/comm") as f:
        assert found[os.getpid()] == f.read().strip()


MEMLOCK_LINE = "[ 1234.567890] vfio_pin_pages_remote: RLIMIT_MEMLOCK (16777216) exceeded"


def test_one_memlock_refusal_is_one_alert():
    """type1 logs each refusal; the pin probe alerts it with the process: the log line is
    then only counted (it used to raise a kernel_splat alert too)."""
    sink = Sink()
    watcher = KernelLogWatcher([], sink, (6, 1, 0), memlock_probed=lambda: True)
    feed(watcher, [MEMLOCK_LINE])
    assert sink.alerts == []
    assert list(watcher.counts.items()) == [(("memlock", "none", "none"), 1)]


def test_memlock_refusal_from_the_log_alone_without_the_probe():
    sink = Sink()
    watcher = KernelLogWatcher([], sink, (6, 1, 0), memlock_probed=lambda: False)
    feed(watcher, [MEMLOCK_LINE])
    (kind, message, fields), = sink.alerts
    assert kind == "memlock_refused" and fields["LIMIT_BYTES"] == "16777216" and fields["SOURCE"] == "kernel_log"
    assert "RLIMIT_MEMLOCK (16777216) exceeded" in message
