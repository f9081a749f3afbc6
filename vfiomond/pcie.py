"""PCIe health of VFIO devices: AER error counts and link state, from sysfs.

AER: the PCI core's AER driver counts each error it handles in the function that
logged it, by name (drivers/pci/pcie/aer.c ``aer_dev_correctable``,
``aer_dev_nonfatal``, ``aer_dev_fatal``; 4.19+, Documentation/ABI/testing/
sysfs-bus-pci-devices-aer_stats; one "NAME COUNT" line per error bit, then a
TOTAL_ERR_* line; the error names as the kernel spells them, which changed over
time: "Receiver Error" in the ABI document's example, "RxErr" on 6.1 and 6.12).  The files exist only for a function with
an AER capability whose errors the kernel handles natively (CONFIG_PCIEAER, control
granted by firmware).  vfiomond reads them for each VFIO device and every bridge above
it (the root port and switch ports whose receivers see the device's link), and the
messages the root port above it received (``aer_rootport_total_err_*``): for a fatal
error of an endpoint the kernel reads none of the endpoint's error registers (it logs
"type=Inaccessible"), so the error has no name; 6.1 and 6.12 count it in none of the
endpoint's files, 7.2 counts the message in TOTAL_ERR_FATAL, and the root port counts it
on all three (seen in the lab).  Never for the whole host.

Link: ``current_link_speed``, ``current_link_width``, ``max_link_speed`` and
``max_link_width`` (drivers/pci/pci-sysfs.c, 4.13+; speed "8.0 GT/s PCIe", "8.0 GT/s"
before 5.11, "Unknown" while the link is down).  A link trains to the most both of
its ends support: the device's maximum and that of the port above it.  A device
directly on a root bus (an integrated endpoint) has only its own maximum.  Speed
falls by design on devices that save power at idle (GPUs), width does not: alert on
width.
"""

import os
import re
from typing import Dict, Iterable, Iterator, List, NamedTuple, Optional, Tuple

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

from vfiomond.devices import read_attribute as _read
from vfiomond.metricsutil import ascii_digits

AER_FILES = (("correctable", "aer_dev_correctable"), ("nonfatal", "aer_dev_nonfatal"), ("fatal", "aer_dev_fatal"))
ROOT_PORT_FILES = (("correctable", "aer_rootport_total_err_cor"), ("nonfatal", "aer_rootport_total_err_nonfatal"),
                   ("fatal", "aer_rootport_total_err_fatal"))
_BDF = re.compile(r"^[0-9a-f]{4,}:[0-9a-f]{2}:[0-9a-f]{2}\.[0-7]$")
_SPEED = re.compile(r"^([0-9.]+) GT/s")


class AerCount(NamedTuple):
    device: str  # the VFIO device's PCI address
    function: str  # the function that logged the errors: the device, or a bridge above it
    severity: str  # correctable, nonfatal, fatal
    error: str  # the kernel's name of the error bit: RxErr, BadTLP, UnsupReq, ...
    count: int


class AerMessages(NamedTuple):
    device: str
    function: str
    severity: str
    count: int  # ERR_COR / ERR_NONFATAL / ERR_FATAL messages handled (the TOTAL_ERR_* line)


class RootPortMessages(NamedTuple):
    device: str
    root_port: str  # the root port above the VFIO device
    severity: str
    count: int  # messages the root port received from anything below it


class Aer(NamedTuple):
    errors: List[AerCount]
    messages: List[AerMessages]
    root_port: List[RootPortMessages]


class Link(NamedTuple):
    device: str
    speed: float  # transfers per second now; 0 while the link is down
    width: int  # lanes now; 0 while the link is down
    capable_speed: float  # the most both ends support, transfers per second
    capable_width: int


def parse_aer(text: str) -> Dict[str, int]:
    """Error name -> count from an aer_dev_* file; the TOTAL_ERR_* line and
    malformed lines are left out."""
    out = {}
    for line in text.splitlines():
        parts = line.strip().rsplit(None, 1)
        if len(parts) == 2 and ascii_digits(parts[1]) and not parts[0].startswith("TOTAL_"):
            out[parts[0]] = int(parts[1])
    return out


def parse_aer_total(text: str) -> Optional[int]:
    """The TOTAL_ERR_* line of an aer_dev_* file: the error messages the kernel
    handled for the function; None if the file has none."""
    for line in text.splitlines():
        parts = line.strip().split()
        if len(parts) == 2 and parts[0].startswith("TOTAL_ERR_") and ascii_digits(parts[1]):
            return int(parts[1])
    return None


def parse_speed(text: Optional[str]) -> Optional[float]:
    """Transfers per second from "16.0 GT/s PCIe"; 0.0 for "Unknown" (link down);
    None if the file is missing or unreadable."""
    if text is None:
        return None
    m = _SPEED.match(text.strip())
    return float(m.group(1)) * 1e9 if m else 0.0


def parse_width(text: Optional[str]) -> Optional[int]:
    if text is None:
        return None
    text = text.strip().lstrip("x")
    return int(text) if ascii_digits(text) else 0


def bridges_above(bdf: str, sysfs: str = "/sys") -> List[str]:
    """The PCI addresses of the bridges between the device and its root bus,
    nearest first (the device's sysfs path: /sys/devices/pci0000:00/ROOTPORT/.../BDF)."""
    path = os.path.realpath(os.path.join(sysfs, "bus/pci/devices", bdf))
    out = []
    parent = os.path.basename(os.path.dirname(path))
    while _BDF.match(parent):
        out.append(parent)
        path = os.path.dirname(path)
        parent = os.path.basename(os.path.dirname(path))
    return out


def aer_counts(devices: Iterable[str], sysfs: str = "/sys", bridges: Optional[Dict[str, List[str]]] = None) -> Aer:
    """Per VFIO device, the named error counts and the message totals of the device
    and of every bridge above it, and what the root port above it received.
    ``bridges``: bridges_above() of each device, when the caller has them."""
    errors, messages, root_port = [], [], []
    for bdf in devices:
        above = bridges[bdf] if bridges is not None else bridges_above(bdf, sysfs)
        if above:
            base = os.path.join(sysfs, "bus/pci/devices", above[-1])
            for severity, name in ROOT_PORT_FILES:
                text = (_read(os.path.join(base, name)) or "").strip()
                if ascii_digits(text):
                    root_port.append(RootPortMessages(bdf, above[-1], severity, int(text)))
        for function in [bdf] + above:
            base = os.path.join(sysfs, "bus/pci/devices", function)
            for severity, name in AER_FILES:
                text = _read(os.path.join(base, name)) or ""
                for error, count in sorted(parse_aer(text).items()):
                    errors.append(AerCount(bdf, function, severity, error, count))
                total = parse_aer_total(text)
                if total is not None:
                    messages.append(AerMessages(bdf, function, severity, total))
    return Aer(errors, messages, root_port)


def link(bdf: str, sysfs: str = "/sys", above: Optional[List[str]] = None) -> Optional[Link]:
    """The device's link, or None if it has none (not PCIe, or the kernel does not say).
    ``above``: bridges_above() of the device, when the caller has it."""
    base = os.path.join(sysfs, "bus/pci/devices", bdf)
    speed = parse_speed(_read(os.path.join(base, "current_link_speed")))
    width = parse_width(_read(os.path.join(base, "current_link_width")))
    max_speed = parse_speed(_read(os.path.join(base, "max_link_speed")))
    max_width = parse_width(_read(os.path.join(base, "max_link_width")))
    if None in (speed, width, max_speed, max_width):
        return None
    if above is None:
        above = bridges_above(bdf, sysfs)
    if above:
        port = os.path.join(sysfs, "bus/pci/devices", above[0])
        port_speed = parse_speed(_read(os.path.join(port, "max_link_speed")))
        port_width = parse_width(_read(os.path.join(port, "max_link_width")))
        # A port that says nothing (or "Unknown") does not lower what the device can reach.
        if port_speed:
            max_speed = min(max_speed, port_speed)
        if port_width:
            max_width = min(max_width, port_width)
    return Link(bdf, speed, width, max_speed, max_width)


def families(aer_found: Aer, links: List[Link]) -> Iterator:
    aer = CounterMetricFamily(
        "vfiomond_device_aer_errors", "PCIe AER errors the kernel handled, by the function that logged them (the VFIO "
        "device or a bridge above it), severity and error name (sysfs aer_dev_correctable, aer_dev_nonfatal, "
        "aer_dev_fatal; since the function was enumerated).", labels=["device", "function", "severity", "error"])
    for c in aer_found.errors:
        aer.add_metric([c.device, c.function, c.severity, c.error], c.count)
    yield aer
    total = CounterMetricFamily(
        "vfiomond_device_aer_messages", "PCIe error messages (ERR_COR, ERR_NONFATAL, ERR_FATAL) the kernel handled, "
        "by the function that logged them and severity (the TOTAL_ERR_* line of sysfs aer_dev_*). A fatal error of an "
        "endpoint shows here only: the kernel does not read the endpoint's error registers over a link it no longer "
        "trusts, so it has no error name.", labels=["device", "function", "severity"])
    for m in aer_found.messages:
        total.add_metric([m.device, m.function, m.severity], m.count)
    yield total
    received = CounterMetricFamily(
        "vfiomond_device_aer_root_port_messages", "PCIe error messages the root port above the VFIO device received "
        "from anything below it, by severity (sysfs aer_rootport_total_err_*). For a fatal error of an endpoint the "
        "kernel reads no error registers (\"type=Inaccessible\"): 6.1 and 6.12 count it only here.",
        labels=["device", "root_port", "severity"])
    for r in aer_found.root_port:
        received.add_metric([r.device, r.root_port, r.severity], r.count)
    yield received
    gauges: Tuple[Tuple[str, str, str], ...] = (
        ("vfiomond_device_link_speed_transfers_per_second", "speed",
         "The VFIO device's PCIe link speed now (sysfs current_link_speed; 0 while the link is down)."),
        ("vfiomond_device_link_capable_speed_transfers_per_second", "capable_speed",
         "The most link speed both ends support: the lower of the device's and its port's max_link_speed."),
        ("vfiomond_device_link_width", "width",
         "The VFIO device's PCIe link width now, in lanes (sysfs current_link_width; 0 while the link is down)."),
        ("vfiomond_device_link_capable_width", "capable_width",
         "The most lanes both ends support: the lower of the device's and its port's max_link_width."),
    )
    for name, field, doc in gauges:
        g = GaugeMetricFamily(name, doc, labels=["device"])
        for ln in links:
            g.add_metric([ln.device], getattr(ln, field))
        yield g


class PcieMetrics:
    """AER counts and link state of the VFIO devices: a detector of the collector.
    ``devices()`` returns the PCI addresses of the devices bound to a VFIO driver."""

    def __init__(self, devices, sysfs: str = "/sys"):
        self._devices = devices
        self._sysfs = sysfs

    def families(self) -> Iterator:
        bdfs = sorted(self._devices())
        bridges = {b: bridges_above(b, self._sysfs) for b in bdfs}  # one sysfs walk per device and scrape
        links = [ln for ln in (link(b, self._sysfs, bridges[b]) for b in bdfs) if ln is not None]
        return families(aer_counts(bdfs, self._sysfs, bridges), links)
