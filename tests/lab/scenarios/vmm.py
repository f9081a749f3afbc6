#!/usr/bin/env python3
"""Scenario "vmm": the guest's own QEMU as the VFIO user, started the way libvirt starts it.

An L2 QEMU (tests/lab/scenarios/vmmlib.py) runs as an unprivileged user (uid
VMM_UID, no CAP_IPC_LOCK) with RLIMIT_MEMLOCK set by libvirt's rule (guest RAM +
1 GiB per VFIO container or iommufd), the lab's edu and ivshmem devices passed
through on pcie-root-ports, and is driven by qtest in place of a guest: BARs are
assigned and read (real BAR faults in QEMU's VFIO mmaps), the edu is unplugged and
plugged again through QMP while vfiomond watches.  Runs, one QEMU each:

  type1-ram      legacy VFIO container, anonymous RAM, both devices, hot-unplug and
                 plug of the edu; ends with QMP quit
  type1-hugetlb  legacy container, RAM on 2 MiB hugetlb pages, the edu; ends with SIGKILL
  iommufd-memfd  -object iommufd (where the kernel has /dev/iommu and the VFIO cdev and
                 the QEMU has the backend), memfd RAM, both devices; ends with QMP quit
  held           type1, anonymous RAM, both devices, left running when the scenario
                 ends: the host's scrape and the demo show it (so "vmm" is the last
                 scenario of a boot: the held VM keeps both devices)

For each run the summary holds QEMU's own account (its trace of its VFIO DMA maps
and unmaps, /proc/PID/status and limits, the BAR sizes it found) next to what
vfiomond's /metrics said at the same moments; tests/lab/test_vmm_lab.py compares.
"""

import argparse
import json
import os
import re
import resource
import shutil
import signal
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import vfiolib as v  # noqa: E402
import vmmlib as q  # noqa: E402

VMM_UID = 64055  # Debian's libvirt-qemu is a system uid; any unprivileged one does
VM_NAME = "lab-vm"
VM_UUID = "4c4d5f76-6d6d-4c61-6241-000000000001"
RAM_MIB = 256
GIB = 1 << 30
MIB = 1 << 20
HUGEPAGE = 2 * MIB


def libvirt_memlock_limit(ram_bytes: int, containers: int) -> int:
    """libvirt's RLIMIT_MEMLOCK for a domain with VFIO hostdevs (qemuDomainGetMemLockLimitBytes,
    src/qemu/qemu_domain.c, 9.x): guest RAM + 1 GiB, per VFIO container or iommufd."""
    return (ram_bytes + GIB) * max(1, containers)


def give_devices(devices, backend: str) -> None:
    """What libvirt's security driver does: the VFIO nodes of the devices belong to QEMU's user."""
    paths = ["/dev/vfio/vfio"] if backend == "type1" else ["/dev/iommu"]
    for dev in devices:
        paths.append("/dev/vfio/%s" % dev.iommu_group if backend == "type1" else v.cdev_path(dev.bdf))
    for path in paths:
        os.chown(path, VMM_UID, VMM_UID)


def iommufd_available(devices) -> str:
    """"" when the kernel and this QEMU can run the iommufd backend, else why not."""
    if not os.path.exists("/dev/iommu"):
        return "no /dev/iommu"
    try:
        for dev in devices:
            v.cdev_path(dev.bdf)
    except OSError as e:
        return "no VFIO cdev: %s" % e
    help_text = subprocess.run(["qemu-system-x86_64", "-object", "help"], stdout=subprocess.PIPE,
                               stderr=subprocess.STDOUT, text=True).stdout
    return "" if "iommufd" in help_text.split() else "this QEMU has no iommufd backend"


def proc_status(pid: int) -> dict:
    out = {}
    with open("/proc/%d/status" % pid) as f:
        for line in f:
            key, _, value = line.partition(":")
            if key in ("VmLck", "VmPin"):
                out[key] = int(value.split()[0]) * 1024
    with open("/proc/%d/limits" % pid) as f:
        for line in f:
            if line.startswith("Max locked memory"):
                out["memlock_limit"] = int(line.split()[3])
    return out


def vfiomond_view(port: str, pid: int) -> dict:
    """From one scrape of vfiomond: the samples that carry pid (its per-process series
    and device holder series), host totals, and BAR fault counts by "device region"."""
    from prometheus_client.parser import text_string_to_metric_families

    samples = [s for fam in text_string_to_metric_families(v.scrape(port)) for s in fam.samples]
    mine = {}
    for s in samples:
        if s.labels.get("pid") == str(pid):
            mine.setdefault(s.name, []).append([s.labels, s.value])
    totals = {}
    for name in ("vfiomond_dma_map_bytes_total", "vfiomond_dma_unmap_bytes_total", "vfiomond_events_lost_total",
                 "vfiomond_pin_mismatches_total", "vfiomond_zero_page_pins_total", "vfiomond_dma_map_errors_total"):
        totals[name] = sum(s.value for s in samples if s.name == name)
    faults = {}
    for s in samples:
        if s.name == "vfiomond_bar_fault_duration_seconds_count":
            key = "%s %s" % (s.labels["device"], s.labels["region"])
            faults[key] = faults.get(key, 0) + s.value
    return {"series": mine, "totals": totals, "bar_faults": faults}


class Vm:
    def __init__(self, name: str, backend: str, memory: str, devices, run_dir: str):
        self.name, self.backend, self.memory, self.run_dir = name, backend, memory, run_dir
        self.passthrough = [q.Passthrough(d.bdf, "hostdev%d" % i, "rp%d" % i, 2 + i) for i, d in enumerate(devices)]
        self.devices = devices
        containers = 1  # QEMU puts every group of one address space in one container (or one IOAS)
        self.limit = libvirt_memlock_limit(RAM_MIB * MIB, containers)
        shutil.rmtree(run_dir, ignore_errors=True)
        os.makedirs(run_dir)
        os.chown(run_dir, VMM_UID, VMM_UID)
        argv = q.qemu_argv(VM_NAME, VM_UUID, RAM_MIB, backend, self.passthrough, run_dir, memory)
        argv += ["-global", "ICH9-LPC.acpi-pci-hotplug-with-bridge-support=off"]  # native PCIe hotplug
        self.stderr_path = os.path.join(run_dir, "stderr")
        limit = self.limit

        def as_vmm():
            resource.setrlimit(resource.RLIMIT_MEMLOCK, (limit, limit))
            os.setgroups([])
            os.setgid(VMM_UID)
            os.setuid(VMM_UID)

        self.started = time.monotonic()
        self.proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                     stderr=open(self.stderr_path, "w"), preexec_fn=as_vmm, cwd=run_dir)
        try:
            q.wait_for_socket(os.path.join(run_dir, "qmp.sock"), self.proc)
            q.wait_for_socket(os.path.join(run_dir, "qtest.sock"), self.proc)
            self.qmp = q.Qmp(os.path.join(run_dir, "qmp.sock"))  # answers once the devices are realized
            self.qtest = q.Qtest(os.path.join(run_dir, "qtest.sock"))
        except OSError:
            self.proc.kill()
            self.proc.wait()
            raise
        self.ready_after = time.monotonic() - self.started
        self.bars = {}

    @property
    def pid(self) -> int:
        return self.proc.pid

    def assign_and_touch(self, dev: q.Passthrough, bus: int) -> list:
        """Assign the device's BARs, enable decoding, read and write each BAR's first and
        last word through QEMU (BAR faults), as a guest driver's probe would."""
        bars = q.assign(self.qtest, dev.slot, bus)
        for bar in bars:
            self.qtest.read("l", bar.address)
            self.qtest.read("l", bar.address + bar.size - 4)
        self.bars[dev.id] = bars
        return [{"index": b.index, "address": b.address, "size": b.size} for b in bars]

    def unplug(self, dev: q.Passthrough) -> float:
        start = time.monotonic()
        self.qmp.execute("device_del", id=dev.id)
        q.set_slot_power(self.qtest, dev.slot, False)  # the guest's pciehp acknowledges
        self.qmp.wait_event("DEVICE_DELETED", device=dev.id)
        return time.monotonic() - start

    def plug(self, dev: q.Passthrough) -> None:
        q.set_slot_power(self.qtest, dev.slot, True)
        self.qmp.execute("device_add", **dict(kv.split("=", 1) for kv in q.device_arg(dev, self.backend).split(",")[1:]),
                         driver="vfio-pci")

    def roms(self) -> list:
        """[start, end] of the ROM ranges of the VM's memory map (QEMU's ``info mtree -f``:
        pc.bios, isa-bios, pc.rom ...), which QEMU maps for DMA read-only."""
        ranges = []
        for line in self.qmp.hmp("info mtree -f").splitlines():
            m = re.match(r"\s*([0-9a-f]+)-([0-9a-f]+) \(prio [-\d]+, (rom|romd)\b", line)
            if m:
                ranges.append([int(m.group(1), 16), int(m.group(2), 16)])
            elif line.startswith("FlatView") and ranges:
                break  # the first FlatView is the system memory's
        return ranges

    def account(self) -> dict:
        acct = q.dma_account(_read(os.path.join(self.run_dir, "trace.log")), _read(self.stderr_path), self.backend)
        return {"mapped_bytes": acct.mapped_bytes, "unmapped_bytes": acct.unmapped_bytes,
                "maps": len(acct.mapped), "unmaps": len(acct.unmapped), "failed": acct.failed,
                "mapped": [[hex(i), s] for i, s in acct.mapped]}

    def quit(self) -> int:
        try:
            self.qmp.execute("quit")
        except OSError:
            pass
        return self.proc.wait(timeout=60)

    def kill(self) -> int:
        self.proc.send_signal(signal.SIGKILL)
        return self.proc.wait(timeout=60)


def _read(path: str) -> str:
    try:
        with open(path) as f:
            return f.read()
    except OSError:
        return ""


def settle(port: str, pid: int, want: str, present: bool, timeout: float = 30.0) -> dict:
    """Scrape until the series ``want`` of pid is there (present), or until no series
    carries pid any more (not present; pin verification lets go of a process at its next
    pass), and say after how long."""
    start = time.monotonic()
    while True:
        view = vfiomond_view(port, pid)
        done = (want in view["series"]) if present else not view["series"]
        if done or time.monotonic() > start + timeout:
            view["settled"] = done
            view["settled_after"] = round(time.monotonic() - start, 2)
            return view
        time.sleep(0.5)


def run_vm(name: str, backend: str, memory: str, devices, port: str, end: str, hotplug: bool = False) -> dict:
    give_devices(devices, backend)
    before = vfiomond_view(port, 0)
    run_dir = "/run/vfiomond-vmm/" + name
    try:
        vm = Vm(name, backend, memory, devices, run_dir)
    except OSError as e:
        raise OSError("%s: QEMU did not start: %s; its stderr: %s" % (name, e, _read(run_dir + "/stderr")[-800:]))
    out = {"run": name, "backend": backend, "memory": memory, "pid": vm.pid, "vm": VM_NAME, "ram_bytes": RAM_MIB * MIB,
           "memlock_limit_set": vm.limit, "devices": {p.id: d.bdf for p, d in zip(vm.passthrough, devices)},
           "ready_seconds": round(vm.ready_after, 2), "totals_before": before["totals"],
           "bar_faults_before": before["bar_faults"]}
    try:
        out["bars"] = {p.id: vm.assign_and_touch(p, i + 1) for i, p in enumerate(vm.passthrough)}
        out["proc"] = proc_status(vm.pid)
        out["account_running"] = vm.account()
        out["vfiomond_running"] = settle(port, vm.pid, "vfiomond_process_dma_mapped_bytes", True)
        if hotplug:
            edu = vm.passthrough[0]
            out["unplug_seconds"] = round(vm.unplug(edu), 2)
            out["account_unplugged"] = vm.account()
            out["vfiomond_unplugged"] = vfiomond_view(port, vm.pid)
            vm.plug(edu)
            out["bars_replugged"] = vm.assign_and_touch(edu, 1)
            out["account_replugged"] = vm.account()
            out["proc_replugged"] = proc_status(vm.pid)
            out["vfiomond_replugged"] = vfiomond_view(port, vm.pid)
        # After the hot-plug: with the flat view rendered, QEMU 7.2 and 10.0 sent no
        # DEVICE_DELETED for a later unplug.
        out["roms"] = vm.roms()
        if end == "hold":
            out["held"] = True
            return out
        out["exit"] = vm.quit() if end == "quit" else vm.kill()
        out["account_final"] = vm.account()
        out["vfiomond_after_exit"] = settle(port, vm.pid, "vfiomond_process_dma_mapped_bytes", False)
        out["totals_after"] = vfiomond_view(port, 0)["totals"]
    finally:
        if end != "hold" and vm.proc.poll() is None:
            vm.kill()
    out["stderr"] = _read(vm.stderr_path)[-2000:]
    return out


def reserve_hugepages(count: int) -> int:
    """Ask for count hugepages of the default size (2 MiB); returns how many are free."""
    with open("/proc/sys/vm/nr_hugepages", "w") as f:
        f.write(str(count))
    with open("/proc/meminfo") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("HugePages_Free:"))


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--port", default=os.environ.get("VFIOMOND_PORT", "10119"))
    args = p.parse_args()
    summary = {"scenario": "vmm", "kernel": os.uname().release, "runs": {}}
    devices = [d for d in v.find_devices() if d.name in ("edu", "ivshmem")]
    version = subprocess.run(["qemu-system-x86_64", "--version"], stdout=subprocess.PIPE, text=True).stdout
    summary["qemu"] = version.splitlines()[0] if version else ""
    if len(devices) < 2:
        summary.update(ok=False, error="the edu and ivshmem devices are not both bound to vfio-pci")
        print(json.dumps(summary))
        return 1
    edu = [d for d in devices if d.name == "edu"]
    runs = summary["runs"]
    try:
        runs["type1-ram"] = run_vm("type1-ram", "type1", "ram", devices, args.port, "quit", hotplug=True)
        pages = RAM_MIB * MIB // HUGEPAGE
        summary["hugepages"] = reserve_hugepages(pages)
        if summary["hugepages"] >= pages:
            runs["type1-hugetlb"] = run_vm("type1-hugetlb", "type1", "hugetlb", edu, args.port, "kill")
        reserve_hugepages(0)
        why_not = iommufd_available(devices)
        summary["iommufd"] = why_not or "yes"
        if not why_not:
            runs["iommufd-memfd"] = run_vm("iommufd-memfd", "iommufd", "memfd", devices, args.port, "quit")
        runs["held"] = run_vm("held", "type1", "ram", devices, args.port, "hold")
    except (OSError, subprocess.SubprocessError) as e:
        summary.update(ok=False, error="%s: %s" % (type(e).__name__, e))
        print(json.dumps(summary))
        return 1
    summary["ok"] = True
    print(json.dumps(summary))
    return 0

if __name__ == "__main__":
    sys.exit(main())
