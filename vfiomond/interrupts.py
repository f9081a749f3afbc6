"""Interrupts of VFIO devices: the vectors a VFIO user enabled and how often each fired.

vfio-pci requests an IRQ for each vector a user enables with VFIO_DEVICE_SET_IRQS and
names it ``vfio-msix[N](BDF)``, ``vfio-msi[N](BDF)`` or ``vfio-intx(BDF)``
(drivers/vfio/pci/vfio_pci_intrs.c vfio_msi_set_vector_signal, vfio_intx_enable; 5.10
.. 7.2).  The IRQ numbers of a device are read from sysfs, not from /proc/interrupts
(whose size grows with CPUs x IRQs of the host): MSI and MSI-X from
/sys/bus/pci/devices/BDF/msi_irqs/ (one entry per allocated IRQ), INTx from
/sys/bus/pci/devices/BDF/irq; each IRQ's handler names and per-CPU counts from
/sys/kernel/irq/N/actions and per_cpu_count (4.11+ with CONFIG_SPARSE_IRQ,
kernel/irq/irqdesc.c).  A count starts at 0 when the user enables the vector (the IRQ is
requested anew); an INTx line shared with another device counts that device's
interrupts too.
"""

import os
import re
from typing import Dict, Iterable, Iterator, List, NamedTuple, Optional

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

from vfiomond.devices import read_attribute as _read
from vfiomond.metricsutil import ascii_digits

_VFIO_IRQ = re.compile(r"vfio-(msix|msi|intx)(?:\[(\d+)\])?\(([0-9a-fA-F:.]+)\)")


class Vector(NamedTuple):
    device: str  # PCI address
    kind: str  # "msix", "msi", "intx"
    vector: str  # the vector's index ("0" for INTx)
    irq: int
    count: int  # interrupts since the vector was enabled, all CPUs


def parse_actions(text: str, bdf: str) -> Optional[tuple]:
    """(kind, vector) of the vfio-pci handler for ``bdf`` among an IRQ's handler
    names ("vfio-msix[3](0000:01:00.0)", comma-separated when shared); None if none."""
    for name in text.strip().split(","):
        m = _VFIO_IRQ.fullmatch(name.strip())
        if m and m.group(3) == bdf:
            return m.group(1), m.group(2) or "0"
    return None


def parse_per_cpu_count(text: str) -> int:
    """Sum of /sys/kernel/irq/N/per_cpu_count ("0,5,12,..."); ValueError if malformed."""
    return sum(int(n) for n in text.strip().split(",") if n)


def device_irqs(bdf: str, sysfs: str = "/sys") -> List[int]:
    """The IRQs a device has now: its MSI/MSI-X IRQs, and its INTx line."""
    base = os.path.join(sysfs, "bus/pci/devices", bdf)
    try:
        irqs = sorted(int(n) for n in os.listdir(os.path.join(base, "msi_irqs")) if ascii_digits(n))
    except OSError:  # no MSI allocated now (the directory goes with the last vector)
        irqs = []
    legacy = _read(os.path.join(base, "irq"))
    if legacy and ascii_digits(legacy.strip()) and int(legacy) > 0 and int(legacy) not in irqs:
        irqs.append(int(legacy))
    return irqs


def vectors(devices: Iterable[str], sysfs: str = "/sys") -> List[Vector]:
    """The vectors vfio-pci has requested for ``devices``; an IRQ that went away
    while being read is left out."""
    out = []
    for bdf in devices:
        for irq in device_irqs(bdf, sysfs):
            base = os.path.join(sysfs, "kernel/irq", str(irq))
            actions = _read(os.path.join(base, "actions"))
            found = parse_actions(actions, bdf) if actions else None
            counts = _read(os.path.join(base, "per_cpu_count"))
            if found is None or counts is None:
                continue
            try:
                out.append(Vector(bdf, found[0], found[1], irq, parse_per_cpu_count(counts)))
            except ValueError:
                continue
    return out


def families(found: List[Vector], devices: Iterable[str]) -> Iterator:
    total = CounterMetricFamily(
        "vfiomond_device_interrupts", "Interrupts of each vector a VFIO user enabled on the device, since it enabled it "
        "(/sys/kernel/irq/N/per_cpu_count of vfio-pci's IRQ; an INTx line shared with another device counts its "
        "interrupts too).", labels=["device", "type", "vector"])
    enabled = GaugeMetricFamily(
        "vfiomond_device_interrupt_vectors", "Vectors a VFIO user has enabled on the device now "
        "(VFIO_DEVICE_SET_IRQS), by type: msix, msi, intx.", labels=["device", "type"])
    per_type: Dict[tuple, int] = {(bdf, kind): 0 for bdf in devices for kind in ("msix", "msi", "intx")}
    for v in sorted(found):
        total.add_metric([v.device, v.kind, v.vector], v.count)
        per_type[(v.device, v.kind)] = per_type.get((v.device, v.kind), 0) + 1
    for (bdf, kind), n in sorted(per_type.items()):
        enabled.add_metric([bdf, kind], n)
    yield total
    yield enabled


class InterruptMetrics:
    """The VFIO devices' vectors as metric families: a detector of the collector.
    ``devices()`` returns the PCI addresses of the devices bound to a VFIO driver."""

    def __init__(self, devices, sysfs: str = "/sys"):
        self._devices = devices
        self._sysfs = sysfs

    def families(self) -> Iterator:
        bdfs = sorted(self._devices())
        return families(vectors(bdfs, self._sysfs), bdfs)
