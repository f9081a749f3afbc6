"""Probe area "iommu_faults" (bpf/iommu_faults.c): fault interrupts of Intel VT-d units,
counted in the kernel, whatever the kernel's log rate limit printed of them.

Each call of a unit's fault event handler (dmar_fault) handles at least one fault
record; past its rate limit the kernel clears the records unread ("dmar_fault: N
callbacks suppressed" in the log), so a unit's interrupts are what remains of those
faults: a floor on their number, per unit, never rate-limited.  The kernel counts by
the unit's fault IRQ; the unit's name is that IRQ's handler name
(/sys/kernel/irq/N/actions: "dmar0", request_irq in drivers/iommu/intel/dmar.c
dmar_set_interrupt).  The faults the kernel did print are counted per device by the
kernel-log watcher (vfiomond_iommu_faults_total).
"""

import os
from typing import Dict, Iterator, Optional, Set

from prometheus_client.core import CounterMetricFamily

from vfiomond.devices import read_attribute

SOURCE = "iommu_faults.c"
PROBES = ("iommu_faults",)


def read(tables) -> Dict[int, int]:
    """fault IRQ -> dmar_fault calls.  ``tables(name)`` returns a BCC table."""
    return {k.value: v.value for k, v in tables("iommu_fault_interrupts").items()}


class Units:
    """Names of the VT-d units, from sysfs."""

    def __init__(self, sysfs: str = "/sys"):
        self._sysfs = sysfs

    def all(self) -> Set[str]:
        """The VT-d units of the host ("dmar0", ...), whose counts start at 0."""
        try:
            return {u for u in os.listdir(os.path.join(self._sysfs, "class/iommu")) if u.startswith("dmar")}
        except OSError:
            return set()

    def unit(self, irq: int) -> str:
        """The unit whose fault IRQ this is ("dmar0"); "irqN" when sysfs does not say."""
        actions = read_attribute(os.path.join(self._sysfs, "kernel/irq", str(irq), "actions"))
        names = [a.strip() for a in (actions or "").split(",") if a.strip().startswith("dmar")]
        return names[0] if names else "irq%d" % irq


def families(snap: Dict[int, int], attached: Set[str], units: Optional[Units] = None) -> Iterator:
    if "iommu_faults" not in attached:
        return
    units = units or Units()
    total = CounterMetricFamily(
        "vfiomond_iommu_fault_interrupts", "Fault interrupts of each Intel VT-d unit (calls of its fault event "
        "handler dmar_fault, counted in the kernel): each handled at least one DMA-remapping fault, including "
        "faults whose log lines the kernel's rate limit dropped.", labels=["iommu"])
    by_unit: Dict[str, int] = dict.fromkeys(units.all(), 0)
    for irq, n in snap.items():
        name = units.unit(irq)
        by_unit[name] = by_unit.get(name, 0) + n
    for name, n in sorted(by_unit.items()):
        total.add_metric([name], n)
    yield total
