"""The prometheus_client collector: fresh metric families on every scrape.

It only reads BPF maps (through the areas' ``read``) and formats; a failing
area costs its own ``vfiomond_scrape_collector_success`` 0, not the scrape.
"""

import logging
import time
from typing import Dict, Iterator

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

from vfiomond import __version__, processes
from vfiomond.bpfload import AREAS, Program

log = logging.getLogger("vfiomond")


class VfiomondCollector:
    def __init__(self, program: Program, kernel: str, detectors=(), alerts=None):
        """``detectors``: objects whose ``families()`` yield their own metric families.
        Probe statuses are read from ``program`` at each scrape: modules come and go."""
        self.program = program
        self.detectors = list(detectors)
        self.alerts = alerts
        self.kernel = kernel
        self._failed_before = set()

    def collect(self) -> Iterator:
        processes.scraped_vfio_files.new_scrape()
        info = GaugeMetricFamily("vfiomond_build_info", "vfiomond version and kernel release.", labels=["version", "kernel"])
        info.add_metric([__version__, self.kernel], 1)
        yield info
        attached = GaugeMetricFamily(
            "vfiomond_probe_attached", "1 if the probe is attached to the running kernel, else 0.", labels=["probe"]
        )
        symbols = GaugeMetricFamily(
            "vfiomond_probe_info", "Kernel symbols an attached probe uses.", labels=["probe", "symbols"]
        )
        statuses = self.program.statuses
        for s in statuses:
            attached.add_metric([s.name], 1 if s.attached else 0)
            if s.attached:
                symbols.add_metric([s.name, s.detail], 1)
        yield attached
        yield symbols

        success = GaugeMetricFamily(
            "vfiomond_scrape_collector_success", "1 if the area's maps were read.", labels=["collector"]
        )
        duration = GaugeMetricFamily(
            "vfiomond_scrape_collector_duration_seconds", "Time to read the area's maps.", labels=["collector"]
        )
        features = GaugeMetricFamily(
            "vfiomond_kernel_feature", "1 if the running kernel has the feature (iommufd: CONFIG_IOMMUFD, loaded); "
            "the feature's probes are left out without it.", labels=["feature"])
        for name, present in sorted(self.program.features.items()):
            features.add_metric([name], 1 if present else 0)
        yield features

        attached_names = {s.name for s in statuses if s.attached}
        merged: Dict[str, object] = {}  # the DMA backends export the same families, label backend
        accts = {}  # backend -> pid -> ProcAcct
        for area in self.program.areas():
            start = time.monotonic()
            ok = 1
            try:
                module = AREAS[area]
                snap = module.read(self.program.tables(area))
                fams = list(module.families(snap, attached_names))
                process_acct = getattr(module, "process_acct", None)  # the DMA backends
                acct = process_acct(snap, attached_names) if process_acct else None
            except Exception as e:  # one area must not fail the scrape
                ok, fams, acct = 0, [], None
                if area not in self._failed_before:
                    log.error("reading the maps of area %s failed: %s", area, e)
                    self._failed_before.add(area)
            if acct is not None:
                accts[module.BACKEND] = acct
            for fam in fams:
                if fam.name in merged:
                    merged[fam.name].samples.extend(fam.samples)
                else:
                    merged[fam.name] = fam
            success.add_metric([area], ok)
            duration.add_metric([area], time.monotonic() - start)
        yield from merged.values()
        if accts:
            spaces = {pid: processes.dma_spaces(files) for pid, files in processes.scraped_vfio_files().items()}
            yield from processes.families(processes.read_users(), accts, spaces)
        yield success
        yield duration

        for detector in self.detectors:
            yield from detector.families()
        if self.alerts is not None:
            sent = CounterMetricFamily("vfiomond_alerts_total", "Alerts written to the journal.", labels=["kind"])
            dropped = CounterMetricFamily(
                "vfiomond_alerts_suppressed_total", "Alerts not written: over the kind's rate limit.", labels=["kind"]
            )
            for kind in sorted(self.alerts.sent):
                sent.add_metric([kind], self.alerts.sent[kind])
                dropped.add_metric([kind], self.alerts.suppressed[kind])
            yield sent
            yield dropped

        lost = CounterMetricFamily(
            "vfiomond_events_lost_total",
            "Kernel-side events not recorded, by the BPF map that lost them and why: full (a bounded map or a "
            "ring buffer had no room), evicted (an LRU entry in use was gone), stale (left by a missed kretprobe).",
            labels=["map", "reason"],
        )
        for (bpf_map, reason), n in sorted(self.program.lost_events().items()):
            lost.add_metric([bpf_map, reason], n)
        yield lost
