"""Kernel-side losses, named: which BPF map lost what, and why.

bpf/common.h counts every loss in ``lost_events`` under ``enum loss``; LOSSES
lists the same entries in the same order as (map, reason):

- ``full``: a bounded map refused an insert, or a ring buffer had no room for an event;
- ``evicted``: an LRU entry still in use was gone when its return probe looked;
- ``missing``: a return probe found no entry in flight for its thread (the LRU
  evicted it, the insert at the entry failed, or the entry probe missed the
  call): one lost call, counted once, at its return; for ``iommufd_ctx_owner``, an
  IOMMU_IOAS_CHANGE_PROCESS found no process recorded for its iommufd (mapped
  before vfiomond started, or the entry evicted): the mapped bytes stay where they were;
- ``stale``: an entry was left behind by a return probe that never ran (a
  kretprobe out of instances): counted by the thread's next call, or by the
  daemon when the thread is gone (``Program.forget_exited_threads``);
- ``split``: a DMA buffer needed more address blocks than one call inserts;
- ``unread``: a kernel read failed: what it was for is left out (an entry left
  behind, a run's PFN not sampled, an unmap's bytes not counted).

One reason is the daemon's, not the programs', and so not in LOSSES (nor in
bpf/common.h): ``Program.lost_events`` adds it to theirs:

- ``malformed``: a ring-buffer record too short to decode, dropped
  (``Program.open_ring_buffer``; the map is the ring buffer).

They are exported as ``vfiomond_events_lost_total{map,reason}`` and logged when
they grow (LossLog: one line per map and reason, at most once a minute).
"""

import logging
import time
from typing import Callable, Dict, Tuple

log = logging.getLogger("vfiomond")

Loss = Tuple[str, str]  # (BPF map, reason)

LOSSES: Tuple[Loss, ...] = (
    ("pin_events", "full"),
    ("iommufd_pin_events", "full"),
    ("proc_acct", "full"),
    ("iommufd_proc_acct", "full"),
    ("dma_by_tid", "full"),
    ("iommufd_dma_by_tid", "full"),
    ("pin_by_tid", "missing"),
    ("acct_by_tid", "missing"),
    ("iommufd_acct_by_tid", "missing"),
    ("dma_errors", "full"),
    ("iommufd_dma_errors", "full"),
    ("bar_faults_by_vma", "full"),
    ("bar_faults_by_vma", "evicted"),
    ("bar_fault_by_tid", "missing"),
    ("bar_fault_by_tid", "stale"),
    ("bar_fault_hist", "full"),
    ("bar_faults_concurrent", "full"),
    ("remap_by_tid", "missing"),
    ("remap_hist", "full"),
    ("remap_errors", "full"),
    ("pat_untrack", "full"),
    ("pin_maps", "full"),
    ("pin_spans", "full"),
    ("pin_spans", "split"),
    ("pin_maps", "unread"),
    ("pin_space_stale", "full"),
    ("dma_by_tid", "stale"),
    ("iommufd_dma_by_tid", "stale"),
    ("pin_by_tid", "stale"),
    ("acct_by_tid", "stale"),
    ("iommufd_acct_by_tid", "stale"),
    ("remap_by_tid", "stale"),
    ("pin_by_tid", "unread"),
    ("dma_by_tid", "unread"),
    ("iommufd_dma_by_tid", "unread"),
    ("vfio_openers", "full"),
    ("vfio_openers", "unread"),
    ("reset_by_tid", "full"),
    ("reset_by_tid", "missing"),
    ("reset_by_tid", "stale"),
    ("reset_by_tid", "unread"),
    ("reset_events", "full"),
    ("iommu_fault_interrupts", "full"),
    ("dmabuf_by_tid", "full"),
    ("dmabuf_by_tid", "stale"),
    ("dmabuf_by_tid", "unread"),
    ("dmabuf_exports", "full"),
    ("dmabuf_moves", "full"),
    ("iommufd_change_by_tid", "full"),
    ("iommufd_change_by_tid", "missing"),
    ("iommufd_change_by_tid", "stale"),
    ("iommufd_ctx_owner", "missing"),
)

WHAT = {
    "full": "full: events or entries dropped",
    "evicted": "entries evicted while in use: calls not attributed",
    "missing": "calls whose entry was gone at their return: not measured (iommufd_ctx_owner: a change of "
               "process whose previous owner was not known: its mapped bytes not moved)",
    "stale": "entries left by missed kretprobes: calls not measured",
    "split": "DMA buffers in more address blocks than one call inserts: write faults in the rest not attributed",
    "unread": "kernel reads failed: what they were for is left out",
    "malformed": "records too short to decode: dropped",
}

LOG_INTERVAL = 60.0  # seconds between two log lines about one map and reason


class LossLog:
    """Logs the losses that grew since it last looked, one line per map and reason,
    at most one line per LOG_INTERVAL for each (the rest is summed into the next)."""

    def __init__(self, clock: Callable[[], float] = time.monotonic):
        self._clock = clock
        self._logged: Dict[Loss, int] = {}  # count at the last line (or at start)
        self._last: Dict[Loss, float] = {}

    def check(self, counts: Dict[Loss, int]) -> None:
        now = self._clock()
        for loss, n in counts.items():
            before = self._logged.setdefault(loss, 0)
            if n <= before or now - self._last.get(loss, -LOG_INTERVAL) < LOG_INTERVAL:
                continue
            self._logged[loss], self._last[loss] = n, now
            bpf_map, reason = loss
            log.warning("BPF map %s %s: %d lost since the last report (%d in all); "
                        "see vfiomond_events_lost_total{map=%r,reason=%r}",
                        bpf_map, WHAT.get(reason, reason), n - before, n, bpf_map, reason)
