"""The prometheus_client collector: fresh metric families on every scrape.

It only reads BPF maps (through the areas' ``read``), /proc for the VFIO users,
and the detectors' state, and formats.  Each part is a collector of its own, in
the manner of node_exporter: one that raises costs its own
``vfiomond_scrape_collector_success`` 0 and a log line (once, until it recovers),
never the scrape.
"""

import logging
import time
from typing import Callable, Dict, Iterable, Iterator, List, Mapping, Optional, Set, Tuple

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

from vfiomond import __version__, processes
from vfiomond.bpfload import AREAS, Program

log = logging.getLogger("vfiomond")


def _checked(fams: List) -> List:
    """``fams`` if every sample can be written (str label values, a number), else a
    TypeError in the collector that made them: a bad family found only when the page
    is rendered would fail the whole scrape, not its collector (seen: BCC's bytes
    program names as label values)."""
    for fam in fams:
        for sample in fam.samples:
            if not all(isinstance(v, str) for v in sample.labels.values()):
                raise TypeError("%s: label values %r are not all str" % (sample.name, sample.labels))
            if not isinstance(sample.value, (int, float)):
                raise TypeError("%s: value %r is not a number" % (sample.name, sample.value))
    return fams


class VfiomondCollector:
    def __init__(self, program: Program, kernel: str, detectors: Optional[Mapping[str, object]] = None, alerts=None):
        """``detectors``: collector name -> object whose ``families()`` yields its own
        metric families.  Probe statuses are read from ``program`` at each scrape:
        modules come and go."""
        self.program = program
        self.detectors = dict(detectors or {})
        self.alerts = alerts
        self.kernel = kernel
        self._failing: set = set()  # collectors whose last run raised (logged once)

    def collect(self) -> Iterator:
        processes.scraped_vfio_files.new_scrape()
        results: List[Tuple[str, bool, float]] = []
        merged: Dict[str, object] = {}  # the DMA backends export the same families, label backend
        accts: Dict[str, object] = {}  # backend -> pid -> ProcAcct

        def run(name: str, fn: Callable[[], Iterable]) -> list:
            start = time.monotonic()
            try:
                fams = _checked(list(fn()))
                ok = True
                if name in self._failing:
                    self._failing.discard(name)
                    log.info("collector %s works again", name)
            except Exception as e:  # one collector must not fail the scrape
                fams, ok = [], False
                if name not in self._failing:
                    self._failing.add(name)
                    log.error("collector %s failed: %s: %s", name, type(e).__name__, e)
            results.append((name, ok, time.monotonic() - start))
            return fams

        yield from run("build", self._build)
        yield from run("probes", self._probes)
        attached = {s.name for s in self.program.statuses if s.attached}
        for area in self.program.areas():
            for fam in run(area, lambda a=area: self._area(a, attached, accts)):
                if fam.name in merged:
                    merged[fam.name].samples.extend(fam.samples)
                else:
                    merged[fam.name] = fam
        yield from merged.values()
        if accts:
            yield from run("processes", lambda: self._processes(accts))
        for name, detector in self.detectors.items():
            yield from run(name, detector.families)
        if self.alerts is not None:
            yield from run("alerts", self._alerts)
        yield from run("losses", self._losses)
        yield from self._collector_families(results)

    def _build(self) -> Iterator:
        info = GaugeMetricFamily("vfiomond_build_info", "vfiomond version and kernel release.", labels=["version", "kernel"])
        info.add_metric([__version__, self.kernel], 1)
        yield info
        features = GaugeMetricFamily(
            "vfiomond_kernel_feature", "1 if the running kernel has the feature (iommufd: CONFIG_IOMMUFD, loaded; bar_dmabuf: vfio-pci's "
            "VFIO_DEVICE_FEATURE_DMA_BUF, 6.19+; vfio_bar_remap: vfio-pci's BAR faults call remap_pfn_range, up to 6.9; "
            "pat_untrack_vma: x86 PAT's untrack_pfn(vma), up to 6.15); "
            "the feature's probes are left out without it.", labels=["feature"])
        for name, present in sorted(self.program.features.items()):
            features.add_metric([name], 1 if present else 0)
        yield features

    def _probes(self) -> Iterator:
        attached = GaugeMetricFamily(
            "vfiomond_probe_attached", "1 if the probe is attached to the running kernel, else 0.", labels=["probe"]
        )
        symbols = GaugeMetricFamily(
            "vfiomond_probe_info", "Kernel symbols an attached probe uses, and what each is attached as "
            "(methods, in the order of symbols: fentry, fexit, kprobe, kretprobe).", labels=["probe", "symbols", "methods"]
        )
        for s in self.program.statuses:
            attached.add_metric([s.name], 1 if s.attached else 0)
            if s.attached:
                symbols.add_metric([s.name, s.detail, s.methods], 1)
        yield attached
        yield symbols

    def _area(self, area: str, attached: Set[str], accts: Dict[str, object]) -> List:
        """One probe area's maps; its per-process accounting goes to ``accts``."""
        module = AREAS[area]
        snap = module.read(self.program.tables(area))
        fams = list(module.families(snap, attached))
        process_acct = getattr(module, "process_acct", None)  # the DMA backends
        acct = process_acct(snap, attached) if process_acct else None
        if acct is not None:
            accts[module.BACKEND] = acct
        return fams

    def _processes(self, accts) -> Iterator:
        spaces = {pid: processes.dma_spaces(files) for pid, files in processes.scraped_vfio_files().items()}
        users = processes.read_users()
        owners = processes.shared_mm_owners(info.pid for info in users)
        return processes.families(users, accts, spaces, owners)

    def _alerts(self) -> Iterator:
        sent = CounterMetricFamily("vfiomond_alerts_total", "Alerts written to the journal.", labels=["kind"])
        dropped = CounterMetricFamily(
            "vfiomond_alerts_suppressed_total", "Alerts not written: over the kind's rate limit.", labels=["kind"]
        )
        stderr = CounterMetricFamily(
            "vfiomond_alerts_journal_failures", "Alerts the journal refused (journald stopped or restarting): "
            "written to stderr instead.", labels=["kind"]
        )
        counts = self.alerts.counts()
        for kind in sorted(counts):
            sent.add_metric([kind], counts[kind][0])
            dropped.add_metric([kind], counts[kind][1])
            stderr.add_metric([kind], counts[kind][2])
        yield sent
        yield dropped
        yield stderr

    def _losses(self) -> Iterator:
        lost = CounterMetricFamily(
            "vfiomond_events_lost_total",
            "Kernel-side events not recorded, by the BPF map that lost them and why: full (a bounded map or a "
            "ring buffer had no room), evicted (an LRU entry in use was gone), missing (a return probe found no "
            "entry for its call), stale (an entry left by a return probe that never ran), split (a buffer in "
            "more address blocks than one call indexes), unread (a kernel read failed), malformed (a ring-buffer "
            "record too short to decode).",
            labels=["map", "reason"],
        )
        for (bpf_map, reason), n in sorted(self.program.lost_events().items()):
            lost.add_metric([bpf_map, reason], n)
        yield lost

    @staticmethod
    def _collector_families(results: List[Tuple[str, bool, float]]) -> Iterator:
        success = GaugeMetricFamily(
            "vfiomond_scrape_collector_success", "1 if the collector's part of this scrape was read (a probe area's "
            "maps, the VFIO users in /proc, a detector's state); 0 if it failed (logged).", labels=["collector"]
        )
        duration = GaugeMetricFamily(
            "vfiomond_scrape_collector_duration_seconds", "Time the collector took in this scrape.", labels=["collector"]
        )
        for name, ok, seconds in results:
            success.add_metric([name], 1 if ok else 0)
            duration.add_metric([name], seconds)
        yield success
        yield duration
