"""QEMU as a real VFIO user inside the lab guest: started the way libvirt starts it,
driven through its own protocols, and its own account of what it mapped.

- ``qemu_argv``: an L2 QEMU with ``-name guest=NAME,debug-threads=on``, ``-uuid``, RAM
  from a memory backend, each VFIO device on its own ``pcie-root-port`` (libvirt's
  layout on q35), the legacy VFIO container (type1) or ``-object iommufd``, QMP and
  qtest on UNIX sockets.  Started with ``-S``: no guest code runs (the lab guest has no
  KVM); qtest plays the guest.
- ``Qtest``: the qtest protocol (docs/devel/qtest.rst in QEMU).  Port I/O on 0xcf8/0xcfc
  is configuration mechanism #1, so it programs bridges and BARs as firmware would;
  memory reads and writes at a BAR's guest address reach QEMU's mmap of the VFIO region,
  which makes real BAR faults in the QEMU process.
- ``Qmp``: QMP over a UNIX socket (docs/interop/qmp-spec.rst): device_del, device_add,
  human-monitor-command.
- ``dma_account``: QEMU's own trace of its VFIO DMA maps (trace events
  vfio_listener_region_add_ram / vfio_listener_region_del of hw/vfio, and
  iommufd_backend_map_dma / iommufd_backend_unmap_dma of backends/iommufd.c, log
  backend), with the maps QEMU reported as failed on stderr taken out.
"""

import json
import os
import re
import socket
import time
from typing import Dict, List, NamedTuple, Optional

PCI_CONFIG_ADDRESS = 0xCF8
PCI_CONFIG_DATA = 0xCFC
PCI_COMMAND = 0x04
PCI_COMMAND_MEMORY = 0x2
PCI_COMMAND_MASTER = 0x4
PCI_BAR0 = 0x10
PCI_PRIMARY_BUS = 0x18  # primary, secondary, subordinate bus numbers (bytes 0x18-0x1a)
PCI_MEMORY_BASE = 0x20  # 16-bit base, 16-bit limit: address bits 31:20
PCI_PREF_MEMORY_BASE = 0x24
PCI_PREF_BASE_UPPER32 = 0x28
PCI_PREF_LIMIT_UPPER32 = 0x2C
PCI_CAPABILITY_LIST = 0x34
PCI_CAP_ID_EXP = 0x10
PCI_EXP_SLTCTL = 0x18  # in the PCI Express capability
PCI_EXP_SLTCTL_PWR_IND_ON = 0x100
PCI_EXP_SLTCTL_PWR_IND_OFF = 0x300
PCI_EXP_SLTCTL_PWR_OFF = 0x400
PCI_EXP_SLTCTL_PIC = 0x300
PCI_EXP_SLTCTL_PCC = 0x400

# Guest-physical window for the devices' BARs: above 256 MiB of RAM and q35's
# MMCONFIG (0xb0000000, 256 MiB), below the IOAPIC.  One 64 MiB slice per root port,
# non-prefetchable BARs in its lower half and prefetchable ones in its upper half;
# the ivshmem's 256 MiB BAR2 gets the 64-bit window instead.
MMIO_BASE = 0xC0000000
SLICE = 64 << 20
PREF64_BASE = 0x800000000  # 32 GiB
PREF64_SLICE = 1 << 30


def connect(path: str, timeout: float, patience: float = 30.0) -> socket.socket:
    """A connection to QEMU's listening UNIX socket ``path``: the file appears at bind(),
    before listen(), so a connection may be refused for a moment."""
    deadline = time.monotonic() + patience
    while True:
        sock = socket.socket(socket.AF_UNIX)
        sock.settimeout(timeout)
        try:
            sock.connect(path)
            return sock
        except (ConnectionRefusedError, FileNotFoundError):
            sock.close()
            if time.monotonic() > deadline:
                raise
            time.sleep(0.1)


class Qtest:
    """One qtest connection; every command answers "OK ..." or "FAIL ..."."""

    def __init__(self, path: str, timeout: float = 60.0):
        self.sock = connect(path, timeout)
        self.file = self.sock.makefile("rw")

    def command(self, line: str) -> List[str]:
        self.file.write(line + "\n")
        self.file.flush()
        while True:
            reply = self.file.readline()
            if not reply:
                raise OSError("qtest: QEMU closed the connection after %r" % line)
            words = reply.split()
            if words and words[0] == "OK":
                return words[1:]
            if words and words[0] in ("FAIL", "ERR"):
                raise OSError("qtest: %r: %s" % (line, reply.strip()))
            # "IRQ raise N" and other asynchronous lines: not ours.

    def read(self, size: str, addr: int) -> int:
        """size: b, w, l, q (1, 2, 4, 8 bytes) at guest-physical addr."""
        return int(self.command("read%s 0x%x" % (size, addr))[0], 16)

    def write(self, size: str, addr: int, value: int) -> None:
        self.command("write%s 0x%x 0x%x" % (size, addr, value))

    def config_read(self, bus: int, devfn: int, offset: int, size: int = 4) -> int:
        self.command("outl 0x%x 0x%x" % (PCI_CONFIG_ADDRESS, _config_address(bus, devfn, offset)))
        port = PCI_CONFIG_DATA + (offset & 3)
        op = {1: "inb", 2: "inw", 4: "inl"}[size]
        return int(self.command("%s 0x%x" % (op, port))[0], 16)

    def config_write(self, bus: int, devfn: int, offset: int, value: int, size: int = 4) -> None:
        self.command("outl 0x%x 0x%x" % (PCI_CONFIG_ADDRESS, _config_address(bus, devfn, offset)))
        port = PCI_CONFIG_DATA + (offset & 3)
        op = {1: "outb", 2: "outw", 4: "outl"}[size]
        self.command("%s 0x%x 0x%x" % (op, port, value))

    def close(self) -> None:
        self.sock.close()


def _config_address(bus: int, devfn: int, offset: int) -> int:
    return 0x80000000 | (bus << 16) | (devfn << 8) | (offset & 0xFC)


class Qmp:
    """QMP: greeting, qmp_capabilities, then commands; events are kept in ``events``."""

    def __init__(self, path: str, timeout: float = 120.0):
        self.sock = connect(path, timeout)
        self.file = self.sock.makefile("rw")
        self.events: List[dict] = []
        self._message()  # the greeting
        self.execute("qmp_capabilities")

    def _message(self) -> dict:
        line = self.file.readline()
        if not line:
            raise OSError("QMP: QEMU closed the connection")
        return json.loads(line)

    def execute(self, command: str, **arguments) -> object:
        self.file.write(json.dumps({"execute": command, "arguments": arguments}) + "\n")
        self.file.flush()
        while True:
            message = self._message()
            if "event" in message:
                self.events.append(message)
            elif "error" in message:
                raise OSError("QMP %s: %s" % (command, message["error"].get("desc")))
            elif "return" in message:
                return message["return"]

    def wait_event(self, name: str, timeout: float = 60.0, **data) -> dict:
        deadline = time.monotonic() + timeout
        while True:
            for event in self.events:
                if event["event"] == name and all(event.get("data", {}).get(k) == v for k, v in data.items()):
                    self.events.remove(event)
                    return event
            if time.monotonic() > deadline:
                raise OSError("QMP: no %s event %s after %.0f s" % (name, data, timeout))
            self.sock.settimeout(max(0.1, deadline - time.monotonic()))
            try:
                message = self._message()
            except socket.timeout:
                continue
            if "event" in message:
                self.events.append(message)

    def hmp(self, line: str) -> str:
        return str(self.execute("human-monitor-command", **{"command-line": line}))

    def close(self) -> None:
        self.sock.close()


class Passthrough(NamedTuple):
    """A host device given to the VM: its PCI address in the lab guest, the QEMU
    device id, the root port it sits on (id and slot on pcie.0)."""
    host: str
    id: str
    port: str
    slot: int


def qemu_argv(name: str, uuid: str, ram_mib: int, backend: str, devices: List[Passthrough], run_dir: str,
              memory: str = "ram", iommufd_cdevs: Optional[Dict[str, int]] = None) -> List[str]:
    """The L2 QEMU's command line.  backend: "type1" (legacy container, /dev/vfio/N) or
    "iommufd" (``-object iommufd`` with the VFIO cdev fds QEMU opens itself).
    memory: "ram" (anonymous), "memfd", or "hugetlb" (memfd on 2 MiB hugetlb pages)."""
    backend_arg = {
        "ram": "memory-backend-ram,id=pc.ram,size=%dM" % ram_mib,
        "memfd": "memory-backend-memfd,id=pc.ram,size=%dM" % ram_mib,
        "hugetlb": "memory-backend-memfd,id=pc.ram,size=%dM,hugetlb=on,hugetlbsize=2M" % ram_mib,
    }[memory]
    argv = [
        "qemu-system-x86_64", "-name", "guest=%s,debug-threads=on" % name, "-uuid", uuid,
        "-machine", "q35,memory-backend=pc.ram", "-accel", "tcg", "-cpu", "qemu64", "-m", "%dM" % ram_mib,
        "-object", backend_arg, "-S", "-nodefaults", "-display", "none", "-no-user-config",
        "-qmp", "unix:%s/qmp.sock,server=on,wait=off" % run_dir,
        "-qtest", "unix:%s/qtest.sock,server=on,wait=off" % run_dir, "-qtest-log", "/dev/null",
        "-D", "%s/trace.log" % run_dir,
    ]
    for event in ("vfio_listener_region_add_ram", "vfio_listener_region_del", "vfio_region_mmap",
                  "iommufd_backend_map_dma", "iommufd_backend_unmap_dma"):
        argv += ["-trace", "enable=" + event]
    if backend == "iommufd":
        argv += ["-object", "iommufd,id=iommufd0"]
    for dev in devices:
        argv += ["-device", "pcie-root-port,id=%s,bus=pcie.0,chassis=%d,addr=0x%x" % (dev.port, dev.slot, dev.slot)]
        argv += ["-device", device_arg(dev, backend)]
    return argv


def device_arg(dev: Passthrough, backend: str) -> str:
    arg = "vfio-pci,host=%s,id=%s,bus=%s" % (dev.host, dev.id, dev.port)
    return arg + (",iommufd=iommufd0" if backend == "iommufd" else "")


class Bar(NamedTuple):
    index: int
    address: int  # guest-physical
    size: int
    prefetchable: bool
    is_64: bool


def _bar_sizes(qt: Qtest, bus: int) -> List[Bar]:
    """Size the memory BARs of device 0 on ``bus`` (the standard write-all-ones probe)."""
    bars = []
    index = 0
    while index < 6:
        offset = PCI_BAR0 + 4 * index
        original = qt.config_read(bus, 0, offset)
        if original & 1:  # I/O BAR
            index += 1
            continue
        is_64 = (original >> 1) & 3 == 2
        qt.config_write(bus, 0, offset, 0xFFFFFFFF)
        low = qt.config_read(bus, 0, offset) & ~0xF
        high = 0
        if is_64:
            qt.config_write(bus, 0, offset + 4, 0xFFFFFFFF)
            high = qt.config_read(bus, 0, offset + 4)
        mask = (high << 32 | low) if is_64 else (low | 0xFFFFFFFF00000000)
        if low or high:
            size = (~mask & 0xFFFFFFFFFFFFFFFF) + 1
            bars.append(Bar(index, 0, size, bool(original & 8), is_64))
        index += 2 if is_64 else 1
    return bars


def assign(qt: Qtest, port_slot: int, bus: int) -> List[Bar]:
    """Program the root port at (0, port_slot) and the device behind it as firmware
    would: bus numbers, windows, BAR addresses, memory decoding and bus mastering.
    Returns the device's memory BARs with their guest-physical addresses."""
    port = port_slot << 3
    qt.config_write(0, port, PCI_PRIMARY_BUS, 0 | bus << 8 | bus << 16, size=4)
    bars = _bar_sizes(qt, bus)
    base32 = MMIO_BASE + (bus - 1) * SLICE
    base64 = PREF64_BASE + (bus - 1) * PREF64_SLICE
    next32, next64 = base32, base64
    placed = []
    for bar in sorted(bars, key=lambda b: -b.size):
        if bar.is_64 and bar.size > SLICE // 4:
            addr = _align(next64, bar.size)
            next64 = addr + bar.size
        else:
            addr = _align(next32, bar.size)
            next32 = addr + bar.size
        offset = PCI_BAR0 + 4 * bar.index
        qt.config_write(bus, 0, offset, addr & 0xFFFFFFFF)
        if bar.is_64:
            qt.config_write(bus, 0, offset + 4, addr >> 32)
        placed.append(bar._replace(address=addr))
    if next32 > base32 + SLICE:
        raise OSError("the BARs behind root port %d do not fit its window" % port_slot)
    # Non-prefetchable window: this slice; prefetchable window: the 64-bit slice.
    qt.config_write(0, port, PCI_MEMORY_BASE, (base32 >> 16) & 0xFFF0 | ((base32 + SLICE - 1) & 0xFFF00000))
    pref_limit = base64 + PREF64_SLICE - 1
    qt.config_write(0, port, PCI_PREF_MEMORY_BASE, ((base64 >> 16) & 0xFFF0 | 1) | ((pref_limit & 0xFFF00000) | 1 << 16))
    qt.config_write(0, port, PCI_PREF_BASE_UPPER32, base64 >> 32)
    qt.config_write(0, port, PCI_PREF_LIMIT_UPPER32, pref_limit >> 32)
    enable = PCI_COMMAND_MEMORY | PCI_COMMAND_MASTER
    qt.config_write(0, port, PCI_COMMAND, qt.config_read(0, port, PCI_COMMAND, 2) | enable, size=2)
    qt.config_write(bus, 0, PCI_COMMAND, qt.config_read(bus, 0, PCI_COMMAND, 2) | enable, size=2)
    return sorted(placed)


def _align(addr: int, size: int) -> int:
    return (addr + size - 1) // size * size


def _express_cap(qt: Qtest, bus: int, devfn: int) -> int:
    pos = qt.config_read(bus, devfn, PCI_CAPABILITY_LIST, 1)
    while pos:
        if qt.config_read(bus, devfn, pos, 1) == PCI_CAP_ID_EXP:
            return pos
        pos = qt.config_read(bus, devfn, pos + 1, 1)
    raise OSError("no PCI Express capability at %02x:%02x" % (bus, devfn))


def set_slot_power(qt: Qtest, port_slot: int, on: bool) -> None:
    """What the guest's pciehp does: power the root port's slot on or off (power
    controller and power indicator).  QEMU removes the devices of a slot powered off
    after an unplug request (hw/pci/pcie.c pcie_cap_slot_write_config)."""
    devfn = port_slot << 3
    ctl_offset = _express_cap(qt, 0, devfn) + PCI_EXP_SLTCTL
    ctl = qt.config_read(0, devfn, ctl_offset, 2) & ~(PCI_EXP_SLTCTL_PIC | PCI_EXP_SLTCTL_PCC)
    ctl |= PCI_EXP_SLTCTL_PWR_IND_ON if on else (PCI_EXP_SLTCTL_PWR_IND_OFF | PCI_EXP_SLTCTL_PWR_OFF)
    qt.config_write(0, devfn, ctl_offset, ctl, size=2)


class DmaAccount(NamedTuple):
    """QEMU's own account of its VFIO DMA mappings."""
    mapped: List[tuple]  # (iova, size) of each successful map, in order
    unmapped: List[tuple]  # (iova, size) of each unmap
    failed: List[tuple]  # (iova, size, errno) of maps QEMU reported as failed

    @property
    def mapped_bytes(self) -> int:
        return sum(size for _, size in self.mapped)

    @property
    def unmapped_bytes(self) -> int:
        return sum(size for _, size in self.unmapped)


_ADD_RAM = re.compile(r"vfio_listener_region_add_ram region_add \[ram\] 0x([0-9a-f]+) - 0x([0-9a-f]+)")
_DEL = re.compile(r"vfio_listener_region_del region_del 0x([0-9a-f]+) - 0x([0-9a-f]+)")
_IOMMUFD_MAP = re.compile(r"iommufd_backend_map_dma .*iova=0x([0-9a-f]+) size=0x([0-9a-f]+) .*\((-?\d+)\)")
_IOMMUFD_UNMAP = re.compile(r"iommufd_backend_unmap_dma .*iova=0x([0-9a-f]+) size=0x([0-9a-f]+) .*\((-?\d+)\)")
# error_report of a refused map: "vfio_dma_map(0x55.., 0xc0000000, 0x100000, 0x7f..) = -14 (Bad address)"
# (QEMU 7.2 hw/vfio/common.c) or "vfio_container_dma_map(...)" (QEMU 8.1+).
_MAP_FAILED = re.compile(r"dma_map\(0x[0-9a-f]+, 0x([0-9a-f]+), 0x([0-9a-f]+), 0x[0-9a-f]+\) = -(\d+)")


def dma_account(trace: str, stderr: str, backend: str) -> DmaAccount:
    """QEMU's maps and unmaps from its trace log and stderr.  For iommufd the backend's
    own events carry the return code; for type1 the listener's events are the maps,
    less those QEMU reported as failed."""
    if backend == "iommufd":
        mapped, unmapped, failed = [], [], []
        for m in _IOMMUFD_MAP.finditer(trace):
            iova, size, ret = int(m.group(1), 16), int(m.group(2), 16), int(m.group(3))
            (failed.append((iova, size, -ret)) if ret else mapped.append((iova, size)))
        for m in _IOMMUFD_UNMAP.finditer(trace):
            if int(m.group(3)) == 0:
                unmapped.append((int(m.group(1), 16), int(m.group(2), 16)))
        return DmaAccount(mapped, unmapped, failed)
    failed = [(int(m.group(1), 16), int(m.group(2), 16), int(m.group(3))) for m in _MAP_FAILED.finditer(stderr)]
    pending = list(failed)
    mapped = []
    for m in _ADD_RAM.finditer(trace):
        start, end = int(m.group(1), 16), int(m.group(2), 16)
        entry = (start, end - start + 1)
        for f in pending:
            if f[:2] == entry:
                pending.remove(f)
                break
        else:
            mapped.append(entry)
    unmapped = [(int(m.group(1), 16), int(m.group(2), 16) - int(m.group(1), 16) + 1) for m in _DEL.finditer(trace)]
    return DmaAccount(mapped, unmapped, failed)


def wait_for_socket(path: str, proc, timeout: float = 120.0) -> None:
    deadline = time.monotonic() + timeout
    while not os.path.exists(path):
        if proc.poll() is not None:
            raise OSError("QEMU exited (%s) before %s appeared" % (proc.returncode, path))
        if time.monotonic() > deadline:
            raise OSError("QEMU: no %s after %.0f s" % (path, timeout))
        time.sleep(0.1)
