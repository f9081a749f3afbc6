"""PCI devices bound to VFIO drivers: an inventory kept current from udev events.

A udev event becomes a ``UdevEvent`` whose ``facts`` are what sysfs and the udev
database said at that moment (``read_facts``); the inventory logic (``record``,
``Inventory.apply``) is pure, so recorded event sequences replay in unit tests.
Sources: ``/sys/bus/pci/devices/BDF/{vendor,device,numa_node,driver,iommu_group}``,
``vfio-dev/vfioN`` (the VFIO cdev, 6.6+ with CONFIG_VFIO_DEVICE_CDEV), and the
hardware database properties ``ID_VENDOR_FROM_DATABASE`` / ``ID_MODEL_FROM_DATABASE``.
"""

import logging
import os
import queue
from typing import Callable, Dict, Iterable, Iterator, List, Mapping, NamedTuple, Optional, Tuple

from prometheus_client.core import GaugeMetricFamily

from vfiomond.processes import scraped_vfio_files

log = logging.getLogger("vfiomond")

SYSFS_PCI = "/sys/bus/pci/devices"
# Facts read for one PCI device; also the keys of recorded events.
FACT_KEYS = ("driver", "vendor", "device", "numa_node", "iommu_group", "noiommu", "vfio_cdev", "vendor_name", "model_name")


class UdevEvent(NamedTuple):
    """One udev event: ``subsystem`` "pci" (``name`` a PCI address) or "module"."""

    action: str  # add, remove, change, bind, unbind, move
    subsystem: str
    name: str
    facts: Mapping[str, str]  # FACT_KEYS, read when the event arrived; {} when the device is gone


class VfioDevice(NamedTuple):
    device: str  # PCI address (BDF), e.g. 0000:00:03.0: the ``device`` label of every metric
    vendor_id: str  # 4 hex digits, e.g. 1234
    device_id: str
    vendor: str  # name from the hardware database, "" when unknown
    model: str
    iommu_group: str  # "" without an IOMMU group
    driver: str  # vfio-pci or a variant driver (mlx5_vfio_pci, ...)
    numa_node: str  # "-1" where the platform has no NUMA information
    group_path: str  # /dev/vfio/N (/dev/vfio/noiommu-N in no-IOMMU mode); "" without a group
    cdev_path: str  # /dev/vfio/devices/vfioN; "" without the VFIO cdev

    def paths(self) -> List[str]:
        return [p for p in (self.group_path, self.cdev_path) if p]


def is_vfio_driver(driver: str) -> bool:
    """vfio-pci and its variant drivers (mlx5_vfio_pci, hisi_acc_vfio_pci, pds_vfio_pci, ...)."""
    return "vfio" in driver


def _hex_id(value: str) -> str:
    return value.strip().lower()[2:] if value.strip().lower().startswith("0x") else value.strip().lower()


def record(bdf: str, facts: Mapping[str, str]) -> Optional[VfioDevice]:
    """The inventory entry for a PCI device, or None when it is not bound to a VFIO driver."""
    driver = facts.get("driver", "")
    if not is_vfio_driver(driver):
        return None
    group = facts.get("iommu_group", "")
    group_path = ""
    if group:
        group_path = "/dev/vfio/%s%s" % ("noiommu-" if facts.get("noiommu") == "1" else "", group)
    cdev = facts.get("vfio_cdev", "")
    return VfioDevice(
        device=bdf,
        vendor_id=_hex_id(facts.get("vendor", "")),
        device_id=_hex_id(facts.get("device", "")),
        vendor=facts.get("vendor_name", ""),
        model=facts.get("model_name", ""),
        iommu_group=group,
        driver=driver,
        numa_node=facts.get("numa_node", "") or "-1",
        group_path=group_path,
        cdev_path="/dev/vfio/devices/" + cdev if cdev else "",
    )


class Change(NamedTuple):
    kind: str  # "added", "changed" or "removed"
    device: VfioDevice


class Inventory:
    """Devices bound to VFIO drivers, by PCI address.

    Each PCI event carries the device's state when it arrived, so ``apply`` is
    idempotent: an unbind, a remove, or a bind to another driver all remove it.
    """

    def __init__(self) -> None:
        self.devices: Dict[str, VfioDevice] = {}
        self._names: Dict[Tuple[str, str], Tuple[str, str]] = {}  # (vendor, device) IDs -> hwdb names

    def apply(self, event: UdevEvent) -> Optional[Change]:
        if event.subsystem != "pci":
            return None
        dev = None if event.action == "remove" else record(event.name, self._named(event.facts))
        old = self.devices.get(event.name)
        if dev is None:
            if old is None:
                return None
            devices = dict(self.devices)
            del devices[event.name]
            self.devices = devices  # replaced, never mutated: the HTTP thread reads it
            return Change("removed", old)
        if dev == old:
            return None
        self.devices = dict(self.devices, **{event.name: dev})
        return Change("added" if old is None else "changed", dev)

    def _named(self, facts: Mapping[str, str]) -> Mapping[str, str]:
        """Hardware-database names come with some events only (not with unbind):
        remember them per vendor and device ID so that labels never flap."""
        ids = (facts.get("vendor", ""), facts.get("device", ""))
        names = (facts.get("vendor_name", ""), facts.get("model_name", ""))
        if any(names):
            self._names[ids] = names
            return facts
        known = self._names.get(ids)
        return dict(facts, vendor_name=known[0], model_name=known[1]) if known else facts

    def users(self, open_files: Mapping[int, Iterable[str]]) -> Dict[str, int]:
        """PCI address -> processes that have its IOMMU group or its cdev open."""
        return self.user_counts(self.holders(open_files))

    def user_counts(self, holders: Mapping[str, Mapping[int, str]]) -> Dict[str, int]:
        """PCI address -> how many processes ``holders`` (from ``holders()``) names for it."""
        return {bdf: len(holders.get(bdf, {})) for bdf in self.devices}

    def holders(self, open_files: Mapping[int, Iterable[str]]) -> Dict[str, Dict[int, str]]:
        """PCI address -> {pid: "group" or "cdev"}: which process holds the device, and
        through what (its IOMMU group /dev/vfio/N, or its VFIO cdev /dev/vfio/devices/vfioM)."""
        by_path: Dict[str, List[tuple]] = {}
        for dev in self.devices.values():
            for path in dev.paths():
                via = "cdev" if path.startswith("/dev/vfio/devices/") else "group"
                by_path.setdefault(path, []).append((dev.device, via))
        out: Dict[str, Dict[int, str]] = {}
        for pid, files in open_files.items():
            for f in files:
                for bdf, via in by_path.get(f, ()):
                    out.setdefault(bdf, {})[pid] = via
        return out


def holder_family(holders: Mapping[str, Mapping[int, str]], proc: str = "/proc") -> GaugeMetricFamily:
    """vfiomond_device_holder_info: one series per (device, process holding it)."""
    from vfiomond.processes import vm_name

    fam = GaugeMetricFamily(
        "vfiomond_device_holder_info",
        "A process holding a VFIO device (value 1): through its IOMMU group (via=\"group\") or its VFIO cdev "
        "(via=\"cdev\"), with the process's comm and VM name (as on vfiomond_process_* series).",
        labels=["device", "pid", "comm", "vm", "via"],
    )
    for bdf, pids in sorted(holders.items()):
        for pid, via in sorted(pids.items()):
            try:
                with open("%s/%d/cmdline" % (proc, pid), "rb") as f:
                    cmdline = f.read()
                with open("%s/%d/cgroup" % (proc, pid), errors="replace") as f:  # names are any bytes
                    cgroup = f.read()
            except OSError:
                continue  # gone since the scan
            fam.add_metric([bdf, str(pid), _read("%s/%d/comm" % (proc, pid)), vm_name(cmdline, cgroup), via], 1)
    return fam


def families(devices: Mapping[str, VfioDevice], users: Mapping[str, int]) -> Iterator:
    info = GaugeMetricFamily(
        "vfiomond_device_info",
        "A PCI device bound to a VFIO driver (value 1), from sysfs and the udev hardware database.",
        labels=["device", "vendor_id", "device_id", "vendor", "model", "iommu_group", "driver", "numa_node"],
    )
    count = GaugeMetricFamily(
        "vfiomond_device_users", "Processes that have the device's IOMMU group (/dev/vfio/N) or VFIO cdev open.",
        labels=["device"],
    )
    for bdf, d in sorted(devices.items()):
        info.add_metric([bdf, d.vendor_id, d.device_id, d.vendor, d.model, d.iommu_group, d.driver, d.numa_node], 1)
        count.add_metric([bdf], users.get(bdf, 0))
    yield info
    yield count


class InventoryMetrics:
    """The inventory as metric families: a detector of the collector."""

    def __init__(self, inventory: Inventory, open_files: Callable[[], Mapping[int, Iterable[str]]] = scraped_vfio_files):
        self._inventory = inventory
        self._open_files = open_files

    def families(self) -> Iterator:
        devices = self._inventory.devices
        holders = self._inventory.holders(self._open_files()) if devices else {}
        yield from families(devices, self._inventory.user_counts(holders))
        yield holder_family(holders)


def holders(bdf: str, open_files: Mapping[int, Iterable[str]], sysfs: str = "/sys") -> Dict[int, str]:
    """pid -> comm of the processes that have PCI device ``bdf``'s IOMMU group
    (/dev/vfio/N) or its VFIO cdev (/dev/vfio/devices/vfioM) open, from sysfs now.

    Not the inventory's ``record``: it needs the driver link, and in the lab a lookup
    through it found no holder while the removal waited (the kernel's
    driver_sysfs_remove runs before the driver's remove); the group link and
    vfio-dev/ are still there then."""
    base = "%s/bus/pci/devices/%s" % (sysfs, bdf)
    paths = set()
    group = link_name(base + "/iommu_group")
    if group:
        paths.add("/dev/vfio/" + group)
    try:
        paths.update("/dev/vfio/devices/" + name for name in os.listdir(base + "/vfio-dev"))
    except OSError:
        pass
    out = {}
    for pid, files in open_files.items():
        if paths.intersection(files):
            out[pid] = _read("/proc/%d/comm" % pid)
    return out


def read_attribute(path: str) -> Optional[str]:
    """A sysfs attribute's text, or None if it is missing or unreadable (a device
    or IRQ that went away while being read)."""
    try:
        with open(path) as f:
            return f.read()
    except OSError:
        return None


def _read(path: str) -> str:
    try:
        # errors="replace": /proc/PID/comm holds any bytes a process named itself with;
        # a UnicodeDecodeError here stopped the kernel-log thread and failed the scrape.
        with open(path, errors="replace") as f:
            return f.read().strip()
    except OSError:
        return ""


def link_name(path: str) -> str:
    """The last component of symlink ``path``'s target; "" when it is not there."""
    try:
        return os.path.basename(os.readlink(path))
    except OSError:
        return ""


def read_facts(sys_path: str, properties: Mapping[str, str]) -> Dict[str, str]:
    """FACT_KEYS of the PCI device at ``sys_path``; {} when it is gone."""
    if not os.path.isdir(sys_path):
        return {}
    group = link_name(os.path.join(sys_path, "iommu_group"))
    # vfio-dev/vfioN exists from 6.1; it is a character device (has "dev") only
    # with CONFIG_VFIO_DEVICE_CDEV (6.6+).
    try:
        cdevs = sorted(n for n in os.listdir(os.path.join(sys_path, "vfio-dev"))
                       if os.path.exists(os.path.join(sys_path, "vfio-dev", n, "dev")))
    except OSError:
        cdevs = []
    return {
        "driver": link_name(os.path.join(sys_path, "driver")),
        "vendor": _read(os.path.join(sys_path, "vendor")),
        "device": _read(os.path.join(sys_path, "device")),
        "numa_node": _read(os.path.join(sys_path, "numa_node")),
        "iommu_group": group,
        "noiommu": "1" if group and _read("/sys/kernel/iommu_groups/%s/name" % group) == "vfio-noiommu" else "0",
        "vfio_cdev": cdevs[0] if cdevs else "",
        "vendor_name": properties.get("ID_VENDOR_FROM_DATABASE", ""),
        "model_name": properties.get("ID_MODEL_FROM_DATABASE", ""),
    }


def scan_sysfs(root: str = SYSFS_PCI) -> List[UdevEvent]:
    """One "add" event per PCI device in sysfs (no udev database: no hardware names)."""
    try:
        names = sorted(os.listdir(root))
    except OSError:
        return []
    return [UdevEvent("add", "pci", n, read_facts(os.path.join(root, n), {})) for n in names]


class DeviceWatcher:
    """Follows PCI devices and kernel modules through a pyudev monitor.

    Events are read in pyudev's observer thread, with the device's facts read
    there and then, and queued; the main loop takes them with ``events()``.
    Where pyudev or udev's netlink is unavailable, ``start`` returns False and
    the devices of sysfs at start are all that is known.
    """

    def __init__(self) -> None:
        self._queue: "queue.Queue[UdevEvent]" = queue.Queue()
        self._observer = None
        self.source = ""  # "udev", "kernel" (no udev daemon), or "" (not following)

    def start(self) -> bool:
        try:
            import pyudev
        except ImportError:
            log.warning("device inventory: pyudev is missing (python3-pyudev); devices listed once, modules not followed")
            self._enqueue_all(scan_sysfs())
            return False
        context = pyudev.Context()
        # Without udevd (containers, minimal hosts) the kernel's own uevents still arrive.
        self.source = "udev" if os.path.exists("/run/udev/control") else "kernel"
        try:
            monitor = pyudev.Monitor.from_netlink(context, source=self.source)
            monitor.filter_by("pci")
            monitor.filter_by("module")
            self._observer = pyudev.MonitorObserver(monitor, callback=self._on_device, name="udev")
            self._observer.start()
        except (OSError, ValueError) as e:
            log.warning("device inventory: cannot follow udev events (%s); devices listed once", e)
            self.source = ""
            self._enqueue_all(scan_sysfs())
            return False
        # Subscribed first, listed second: a device bound in between is seen twice, never missed.
        self._enqueue_all(
            UdevEvent("add", "pci", d.sys_name, read_facts(d.sys_path, d.properties))
            for d in context.list_devices(subsystem="pci")
        )
        log.info("device inventory: following %s events", self.source)
        return True

    def _enqueue_all(self, events: Iterable[UdevEvent]) -> None:
        for ev in events:
            self._queue.put(ev)

    def _on_device(self, device) -> None:
        try:
            if device.subsystem == "module":
                ev = UdevEvent(device.action or "change", "module", device.sys_name, {})
            else:
                facts = {} if device.action == "remove" else read_facts(device.sys_path, device.properties)
                ev = UdevEvent(device.action or "change", "pci", device.sys_name, facts)
        except Exception:  # a device vanishing mid-read must not kill the observer thread
            log.exception("reading a udev event failed")
            return
        self._queue.put(ev)

    def events(self) -> List[UdevEvent]:
        out = []
        while True:
            try:
                out.append(self._queue.get_nowait())
            except queue.Empty:
                return out

    def alive(self) -> bool:
        """The udev observer thread runs (True when udev events are not followed at all)."""
        return self._observer is None or self._observer.is_alive()

    def stop(self) -> None:
        if self._observer is not None:
            self._observer.send_stop()
