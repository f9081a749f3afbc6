"""The kernel's table of live DMA mappings, as pin verification reads it.

bpf/common.h ``pin_maps`` holds, per (IOVA space, IOVA), each live mapping of
both backends with the pinned PFNs of its sample slots: made when the mapping
starts pinning, deleted where the kernel ends it, before it unpins (type1:
``vfio_remove_dma``; iommufd: ``iopt_area_unfill_domains``).  ``pin_space_stale``
says, per space, after which time its older entries prove nothing (type1
``VFIO_DMA_UNMAP_FLAG_VADDR``; iommufd: a split area, a domain detached).
"""

import logging
from typing import Callable, Dict, List, Optional

from vfiomond.pins import KernelMapping, sample_slots

log = logging.getLogger("vfiomond")

# bpf/common.h PIN_BACKEND_*: which backend made an entry.
BACKEND_CODES = {"type1": 1, "iommufd": 2}


class PinTable:
    """One backend's view of pin_maps.  ``tables(name)`` returns a BCC table of
    the backend's BPF program; ``kept()`` says whether the kernel keeps the
    backend's entries now (its removal hook attached); ``outside()`` reads the
    backend's count of write faults outside every DMA mapping."""

    def __init__(self, backend: str, tables: Callable[[str], object], samples: int, kept: Callable[[], bool],
                 outside: Callable[[], int]):
        self.backend = backend
        self._code = BACKEND_CODES[backend]
        self._tables = tables
        self._samples = samples
        self._kept = kept
        self._outside = outside
        self._was_kept = False

    def mappings(self) -> Optional[List[KernelMapping]]:
        """The backend's complete mappings whose space is not stale for them; None
        while the kernel does not keep them (the table is then emptied once:
        entries made before their removal hook went would never leave).
        O(entries of both backends): one pass over the table."""
        if not self._kept():
            if self._was_kept:
                self.clear()
            self._was_kept = False
            return None
        self._was_kept = True
        stale = {k.value: v.value for k, v in self._tables("pin_space_stale").items()}
        out = []
        for k, v in self._tables("pin_maps").items():
            if v.backend != self._code or not v.complete or v.seq <= stale.get(k.space, 0):
                continue
            out.append(KernelMapping(k.space, k.iova, v.seq, v.pid, v.vaddr, v.size, self._pinned(v)))
        return out

    def _pinned(self, v) -> Dict[int, int]:
        pinned = {}
        for slot, off in enumerate(sample_slots(v.size, self._samples)):
            if off is not None and v.filled[slot // 64] >> (slot % 64) & 1:
                pinned[off] = v.pfn[slot]
        return pinned

    def seq(self, space: int, iova: int) -> Optional[int]:
        """The seq of the entry at (space, iova) now; None when there is none."""
        table = self._tables("pin_maps")
        try:
            return table[table.Key(space, iova)].seq
        except KeyError:
            return None

    def outside(self) -> int:
        """Write faults of processes holding the backend's pins, outside every DMA mapping."""
        return self._outside()

    def clear(self) -> None:
        """Delete the backend's entries and spans (the other backend's stay)."""
        for name in ("pin_maps", "pin_spans"):
            table = self._tables(name)
            try:
                for k, v in list(table.items()):
                    if v.backend == self._code:
                        table.pop(k, None)
            except Exception as e:  # BCC raises bare exceptions; what is left is read (and dropped) again
                log.warning("could not empty %s of %s entries: %s", name, self.backend, e)
