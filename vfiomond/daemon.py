"""``vfiomond run``: feature-probe, attach, serve /metrics, stop cleanly on SIGTERM/SIGINT."""

import logging
import signal
import threading
import time
from typing import Dict, List, Sequence, Set, Tuple

from prometheus_client.core import CollectorRegistry

from vfiomond import __version__, advisories, bpfload, devices, kernel, pagemap, privileges
from vfiomond.alerts import AlertSink
from vfiomond.bpfload import ProbeStatus
from vfiomond.collector import VfiomondCollector
from vfiomond.config import Config, parse_listen
from vfiomond.errors import VfiomondError
from vfiomond.exposition import serve
from vfiomond.kernellog import KernelLogWatcher
from vfiomond.kernel import Kallsyms
from vfiomond.pins import EV_MEMLOCK, PinTracker, PinWatch, parse_event
from vfiomond.processes import memlock_alert
from vfiomond.probes import kernel_facts, select, wanted_symbols

# Probes pin verification stands on.
PIN_VERIFY_NEEDS = ("dma_map", "dma_unmap", "pin_pages")

log = logging.getLogger("vfiomond")


def read_kernel(extra_symbols=()) -> Tuple[Kallsyms, Dict[str, int]]:
    """/proc/kallsyms (the symbols vfiomond may use) and the kernel facts derived from it."""
    try:
        syms = kernel.Kallsyms.read(wanted_symbols(extra=tuple(extra_symbols)))
    except OSError as e:
        raise VfiomondError("cannot read %s: %s" % (kernel.KALLSYMS, e.strerror)) from None
    return syms, kernel_facts(syms)


def probe_kernel(pin_samples: int = Config().pin_samples, extra_symbols=()):
    """(selections, facts, kallsyms) for the running kernel: /proc/kallsyms, and
    the zero page's PFN as this process sees it (needs CAP_SYS_ADMIN)."""
    syms, facts = read_kernel(extra_symbols)
    facts.update(_fixed_facts(pin_samples))
    return select(syms, facts), facts, syms


def _fixed_facts(pin_samples: int) -> Dict[str, int]:
    """Facts that no module load changes (compiled into the BPF programs)."""
    facts = {"PIN_SAMPLES": pin_samples}
    zero_pfn = pagemap.learn_zero_pfn()
    if zero_pfn is not None:
        facts["ZERO_PFN"] = zero_pfn
    return facts


# Seconds without module events before the kernel is probed again.
MODULE_QUIET = 0.5
# Seconds between deleting the per-process BPF entries of processes that are gone.
HOUSEKEEPING_INTERVAL = 30.0


def _pin_watch(config: Config, facts, sink):
    if not config.pin_verify:
        log.info("pin verification disabled in the configuration")
        return None
    if "ZERO_PFN" not in facts:
        log.warning("pin verification off: PFNs are hidden in pagemap (needs CAP_SYS_ADMIN)")
        return None
    disabled = [p for p in PIN_VERIFY_NEEDS if p in config.disable]
    if disabled:
        log.warning("pin verification off: probes disabled: %s", ", ".join(disabled))
        return None
    watch = PinWatch(PinTracker(config.pin_samples, facts["ZERO_PFN"]), sink, pagemap.read_pfns)
    log.info("pin verification every %gs, %d samples per mapping", config.pin_verify_interval, config.pin_samples)
    return watch


def _log_changes(before: Sequence[ProbeStatus], after: Sequence[ProbeStatus]) -> None:
    old = {s.name: s for s in before}
    for s in after:
        if old.get(s.name) == s:
            continue
        if s.attached:
            log.info("probe %s attached: %s", s.name, s.detail)
        elif s.name in old and old[s.name].attached:
            log.warning("probe %s detached: %s", s.name, s.detail)
        else:
            log.warning("probe %s not attached: %s", s.name, s.detail)


def _dispatch(ev, watch, sink) -> None:
    if ev.type == EV_MEMLOCK:
        memlock_alert(sink, ev)
    elif watch is not None:
        watch.on_event(ev)


class Daemon:
    """What the main loop acts on: the BPF programs, the probe selection, the
    device inventory and the detectors."""

    def __init__(self, config: Config, program: bpfload.Program, fixed_facts: Dict[str, int], advisories_: advisories.AdvisoryWatch):
        self.config = config
        self.program = program
        self.fixed_facts = fixed_facts
        self.advisories = advisories_
        self.inventory = devices.Inventory()
        self._module_events: List[devices.UdevEvent] = []
        self._last_module_event = 0.0

    def reprobe(self, gone_modules: Set[str]) -> None:
        """Modules came or went: select and attach again, without a restart."""
        syms, facts = read_kernel(advisories.symbol_names(self.advisories.issues))
        facts.update(self.fixed_facts)
        before = self.program.statuses
        _log_changes(before, self.program.apply(select(syms, facts), facts, self.config.disable, gone_modules))
        self.advisories.evaluate(syms)

    def on_udev(self, events: Sequence[devices.UdevEvent], now: float) -> None:
        """Apply PCI events to the inventory; probe again once module events have
        been quiet for MODULE_QUIET seconds (one modprobe loads several modules)."""
        for ev in events:
            if ev.subsystem == "module":
                self._module_events.append(ev)
                self._last_module_event = now
                continue
            change = self.inventory.apply(ev)
            if change is None:
                continue
            d = change.device
            log.info("device %s %s: %s %s:%s, IOMMU group %s", d.device, change.kind, d.driver, d.vendor_id, d.device_id,
                     d.iommu_group or "none")
            if change.kind == "removed" and "faults" in self.program.areas():
                self.program.forget_device(d.device)
        if self._module_events and now - self._last_module_event >= MODULE_QUIET:
            modules, self._module_events = self._module_events, []
            log.info("modules %s: probing the kernel again", ", ".join("%s %s" % (e.action, e.name) for e in modules))
            self.reprobe({e.name for e in modules if e.action == "remove"})


def run(config: Config) -> int:
    host, port = parse_listen(config.listen)
    privileges.require_bpf()
    release = kernel.release()
    log.info("vfiomond %s on kernel %s", __version__, release)

    issues = advisories.load()
    # Followed before the kernel is read: a module loading in between is probed again.
    udev = devices.DeviceWatcher()
    udev.start()
    syms, facts = read_kernel(advisories.symbol_names(issues))
    fixed = _fixed_facts(config.pin_samples)
    facts.update(fixed)
    log.info("compiling BPF programs (kernel facts: %s)", ", ".join(sorted(facts)) or "none")
    program = bpfload.load(select(syms, facts), facts, config.disable)
    _log_changes([], program.statuses)
    missing = [s.name for s in program.statuses if not s.attached]
    if config.strict and missing:
        udev.stop()
        program.close()
        raise VfiomondError("strict mode: probes not attached: " + ", ".join(missing))

    sink = AlertSink()
    advisories_ = advisories.AdvisoryWatch(issues, sink)
    advisories_.evaluate(syms)
    daemon = Daemon(config, program, fixed, advisories_)
    daemon.on_udev(udev.events(), time.monotonic())
    detectors = [advisories_.report, devices.InventoryMetrics(daemon.inventory)]
    watcher = None
    if config.watch_kernel_log:
        watcher = KernelLogWatcher(issues, sink, advisories.running_kernel()[0])
        try:
            watcher.start()
            detectors.append(watcher)
        except OSError as e:
            log.warning("kernel log not watched: %s", e)
            watcher = None
    watch = _pin_watch(config, facts, sink)
    if watch is not None:
        detectors.append(watch)
    events = "type1" in program.areas()
    if events:
        program.open_ring_buffer("type1", "pin_events", lambda raw: _dispatch(parse_event(raw), watch, sink))
    registry = CollectorRegistry(auto_describe=False)
    registry.register(VfiomondCollector(program, release, detectors, sink))
    try:
        server = serve(host, port, registry)
    except OSError as e:
        udev.stop()
        program.close()
        raise VfiomondError("cannot listen on %s: %s" % (config.listen, e.strerror)) from None
    attached = len(program.attached())
    log.info("serving /metrics on %s (%d of %d probes attached)", config.listen, attached, len(program.statuses))

    stop = threading.Event()

    def on_signal(signum, _frame):
        log.info("received %s, stopping", signal.Signals(signum).name)
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    next_verify = time.monotonic() + config.pin_verify_interval
    next_housekeeping = time.monotonic() + HOUSEKEEPING_INTERVAL
    while not stop.is_set():
        if events:
            program.poll(500)
        else:
            stop.wait(0.5)
        daemon.on_udev(udev.events(), time.monotonic())
        now = time.monotonic()
        if watch is not None and now >= next_verify:
            program.poll(0)  # drain: an UNMAP still queued must not look like a mismatch
            watch.verify_all()
            next_verify = time.monotonic() + config.pin_verify_interval
        if events and now >= next_housekeeping:
            program.forget_exited("type1", "proc_acct")
            next_housekeeping = now + HOUSEKEEPING_INTERVAL
    server.shutdown()
    server.server_close()
    udev.stop()
    if watcher is not None:
        watcher.stop()
    program.close()
    log.info("stopped")
    return 0
