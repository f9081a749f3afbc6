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


def test_rate_limited_lines_are_counted_as_suppressed():
    """Intel VT-d prints the first faults of a burst and then only how many it dropped
    (dmar_fault's ratelimit, drivers/iommu/intel/dmar.c)."""
    watcher = KernelLogWatcher([], Sink(), (6, 1, 0))
    feed(watcher, [
        "[ 4102.371582] DMAR: DRHD: handling fault status reg 3",
        "[ 4102.371590] DMAR: [DMA Read NO_PASID] Request device [01:00.0] fault addr 0x7f000000 "
        "[fault reason 0x06] PTE Read access is not set",
        "[ 4107.376015] dmar_fault: 12 callbacks suppressed",
        "[ 4112.380011] dmar_fault: 3 callbacks suppressed",
    ])
    metrics = {f.name: f for f in watcher.families()}
    assert [(s.labels, s.value) for s in metrics["vfiomond_kernel_log_lines_suppressed"].samples] == [
        ({"function": "dmar_fault"}, 15)]
    events = {s.labels["kind"]: s.value for s in metrics["vfiomond_kernel_events"].samples}
    assert events == {"iommu_fault": 1}


def test_iommu_faults_of_a_vfio_device_are_counted_per_device():
    """The device a fault line names is looked up as the line arrives."""
    sink = Sink()
    bound = {"0000:00:02.0"}
    watcher = KernelLogWatcher([], sink, (6, 1, 0), vfio_bound=lambda bdf: bdf in bound,
                               holders=lambda bdf: {4242: "qemu-system-x86", 17: "helper"})
    feed(watcher, [
        "DMAR: [DMA Read] Request device [00:02.0] PASID ffffffff fault addr 9bd00000 [fault reason 06] PTE Read "
        "access is not set",
        "DMAR: [DMA Write NO_PASID] Request device [03:00.0] fault addr 0x1000 [fault reason 0x05] PTE Write access "
        "is not set",
        "vfio-pci 0000:00:02.0: AMD-Vi: Event logged [IO_PAGE_FAULT domain=0x000e address=0xfee00000 flags=0x0020]",
        "AMD-Vi: Event logged [IO_PAGE_FAULT device=00:02.0 domain=0x0000 address=0x1000 flags=0x0000]",
        # ARM SMMUv3, 6.14+: the record's decoded line names the client
        "arm-smmu-v3 arm-smmu-v3.0.auto: event 0x10 received:",
        "arm-smmu-v3 arm-smmu-v3.0.auto: \\x090x0000001000000010",
        "arm-smmu-v3 arm-smmu-v3.0.auto: event: F_TRANSLATION client: 0000:00:02.0 sid: 0x10 ssid: 0x0 iova: 0x1000 "
        "ipa: 0x0",
        "arm-smmu-v3 arm-smmu-v3.0.auto: unpriv data write s1 \"Input address caused fault\" stag: 0x0",
    ])
    metrics = {f.name: f for f in watcher.families()}
    assert [(s.labels, s.value) for s in metrics["vfiomond_iommu_faults"].samples] == [
        ({"device": "0000:00:02.0"}, 4)]
    assert [a[2].get("DEVICE") for a in sink.alerts] == ["0000:00:02.0", None, "0000:00:02.0", "0000:00:02.0",
                                                          "0000:00:02.0"]
    assert [a[2]["VFIO"] for a in sink.alerts] == [1, 0, 1, 1, 1]
    # the processes that held the device when the line arrived (whose DMA failed)
    assert [(a[2].get("PIDS"), a[2].get("COMMS")) for a in sink.alerts] == [
        ("17,4242", "helper,qemu-system-x86"), (None, None), ("17,4242", "helper,qemu-system-x86"),
        ("17,4242", "helper,qemu-system-x86"), ("17,4242", "helper,qemu-system-x86")]


def test_fault_device_names():
    from vfiomond.splats import fault_device

    assert fault_device("DMAR: [DMA Read NO_PASID] Request device [0001:01:00.0] fault addr 0x0") == "0001:01:00.0"
    assert fault_device("arm-smmu-v3 arm-smmu-v3.0.auto: Unhandled context fault: fsr=0x402") is None
