"""``vfiomond run``: feature-probe, attach, serve /metrics, stop cleanly on SIGTERM/SIGINT."""

import logging
import os
import signal
import time
from typing import Callable, Dict, List, Optional, Sequence, Set, Tuple

from prometheus_client import PlatformCollector, ProcessCollector
from prometheus_client.core import CollectorRegistry, CounterMetricFamily, GaugeMetricFamily

from vfiomond import (__version__, advisories, bpfload, bpfstats, btf, devices, footprint, interrupts, iommufd, kernel,
                      layout, pagemap, pcie, privileges, processes, resets, type1)
from vfiomond.alerts import PROBE_LOST, AlertSink
from vfiomond.bpfload import ProbeStatus
from vfiomond.collector import VfiomondCollector
from vfiomond.config import RESTART_ONLY, Config, parse_listen
from vfiomond.errors import ConfigError, VfiomondError
from vfiomond.exposition import SharedCollection, serve
from vfiomond.kernellog import KernelLogWatcher
from vfiomond.kernel import Kallsyms
from vfiomond.losses import LossLog
from vfiomond.pins import EV_MEMLOCK, PinTracker, PinWatch, parse_event
from vfiomond.pintable import PinTable
from vfiomond.processes import memlock_alert
from vfiomond.probes import FEATURES, TRAMPOLINE_MARKER, Selected, kernel_facts, select, wanted_symbols
from vfiomond.service import Notifier
from vfiomond.workers import Supervisor

# Per DMA backend (probe area): its pin-event ring buffer, and the probes pin
# verification needs (the map, and the probe that keeps the backend's entries in
# the kernel's table of live mappings: bpf/common.h pin_maps).
PIN_VERIFY = {
    "type1": ("pin_events", ("dma_map", "pin_samples", "pin_pages")),
    "iommufd": ("iommufd_pin_events", ("iommufd_dma_map", "iommufd_pin_samples")),
}

log = logging.getLogger("vfiomond")


def read_kernel(extra_symbols=()) -> Tuple[Kallsyms, Dict[str, int]]:
    """/proc/kallsyms (the symbols vfiomond may use) and the kernel facts derived from it."""
    try:
        syms = kernel.Kallsyms.read(wanted_symbols(extra=tuple(extra_symbols)))
    except OSError as e:
        raise VfiomondError("cannot read %s: %s" % (kernel.KALLSYMS, e.strerror)) from None
    if syms.lines == 0:
        raise VfiomondError("%s is empty: hidden from this process (systemd's ProtectKernelTunables=yes does that)"
                            % kernel.KALLSYMS)
    facts = kernel_facts(syms)
    facts.update(layout.module_facts())
    return syms, facts


def probe_kernel(pin_samples: int = Config().pin_samples, extra_symbols=()):
    """(selections, facts, kallsyms) for the running kernel: /proc/kallsyms, and
    the zero page's PFN as this process sees it (needs CAP_SYS_ADMIN)."""
    syms, facts = read_kernel(extra_symbols)
    facts.update(_fixed_facts(pin_samples))
    return select(syms, facts), facts, syms


def trampoline_arities(selections, syms, module_trampolines: bool = False) -> Tuple[Dict[str, int], bool, str]:
    """For ``vfiomond check`` and the doctor: (argument counts from the kernel's BTF of
    the hooked functions that have fentry handlers, vmlinux's and with
    ``module_trampolines`` the modules', whether this kernel has BPF trampolines, why
    not): kallsyms' bpf_trampoline_link_prog and the kernel's BTF, as the daemon asks
    (bpfload._bcc_attaches_trampolines), and for module functions BCC's version
    (bpfload._bcc_has_module_trampolines)."""
    from vfiomond.probes import trampoline_candidates

    if not syms.has(TRAMPOLINE_MARKER):
        return {}, False, "no %s in kallsyms" % TRAMPOLINE_MARKER
    modules = module_trampolines and bpfload._bcc_has_module_trampolines()
    wanted = trampoline_candidates(selections, modules)
    try:
        return (btf.module_arities(wanted) if wanted else {}), True, ""
    except btf.BTFError as e:
        return {}, False, str(e)


def _fixed_facts(pin_samples: int) -> Dict[str, int]:
    """Facts that no module load changes (compiled into the BPF programs)."""
    facts = {"PIN_SAMPLES": pin_samples,
             "THREAD_STATE_ENTRIES": bpfload.thread_state_entries(bpfload.possible_cpus())}
    zero_pfn = pagemap.learn_zero_pfn()
    if zero_pfn is not None:
        facts["ZERO_PFN"] = zero_pfn
    huge_pages = pagemap.hpage_pmd_pages()
    if huge_pages is not None:
        facts["HPAGE_PMD_NR"] = huge_pages
    return facts


# Seconds without module events before the kernel is probed again.
MODULE_QUIET = 0.5
# Seconds between deleting the per-process BPF entries of processes that are gone.
HOUSEKEEPING_INTERVAL = 30.0
# Seconds between two full scans of every process's open files for VFIO users: for
# the fds that reach a process without a VFIO call (passed over a socket, inherited).
USERS_RESCAN_INTERVAL = 300.0
# Seconds between two looks at the kernel-side losses (logged when they grow).
LOSS_CHECK_INTERVAL = 5.0


def verified_backends(disabled: Sequence[str]) -> Set[str]:
    """The DMA backends whose mappings pin verification can follow: those with
    none of the probes it needs disabled."""
    return {backend for backend, (_, needs) in PIN_VERIFY.items() if not any(p in disabled for p in needs)}


def _log_verified(disabled: Sequence[str]) -> None:
    for backend, (_, needs) in PIN_VERIFY.items():
        off = [p for p in needs if p in disabled]
        if off:
            log.warning("pin verification of %s mappings off: probes disabled: %s", backend, ", ".join(off))


def _pin_watch(config: Config, facts, sink, kernel=None) -> Optional[PinWatch]:
    """The pin watch (None: verification off).  It is made even when the disabled
    probes leave it no backend: a reload can give it one (PinWatch.set_backends)."""
    if not config.pin_verify:
        log.info("pin verification disabled in the configuration")
        return None
    if "ZERO_PFN" not in facts:
        log.warning("pin verification off: PFNs are hidden in pagemap (needs CAP_SYS_ADMIN)")
        return None
    _log_verified(config.disable)
    watch = PinWatch(PinTracker(config.pin_samples, facts["ZERO_PFN"], pagemap.is_zero_page), sink, pagemap.read_pfns,
                     backends=verified_backends(config.disable),
                     pte_pfn=pagemap.pte_pfn_decoder(), kernel=kernel)
    log.info("pin verification every %gs, %d samples per mapping", config.pin_verify_interval, config.pin_samples)
    return watch


# Per DMA backend: the probe that keeps its entries in the kernel's table of live
# mappings, and its counter of write faults outside them.
PIN_TABLE_KEEPER = {"type1": ("pin_samples", "type1_counters", type1.COUNTERS["TYPE1_WRITE_FAULTS_OUTSIDE"]),
                    "iommufd": ("iommufd_pin_samples", "iommufd_counters",
                                iommufd.COUNTERS["IOMMUFD_WRITE_FAULTS_OUTSIDE"])}
TABLE_KEEPERS = tuple(keeper for keeper, _, _ in PIN_TABLE_KEEPER.values())


def _pin_tables(program: bpfload.Program, config: Config) -> Dict[str, PinTable]:
    """The kernel's table of live mappings, per backend whose BPF program compiled."""
    import ctypes

    out = {}
    for backend, (keeper, counters, outside) in PIN_TABLE_KEEPER.items():
        if backend not in program.areas():
            continue
        tables = program.tables(backend)
        out[backend] = PinTable(backend, tables, config.pin_samples,
                                kept=lambda probe=keeper: probe in program.attached(),
                                outside=lambda t=tables, c=counters, i=outside: t(c)[ctypes.c_int(i)].value)
    return out


def pins_verified(config: Config, facts: Dict[str, int]) -> bool:
    """Whether pin verification runs (as _pin_watch decides): on in the configuration,
    and the PFNs of /proc/PID/pagemap readable (ZERO_PFN learned)."""
    return config.pin_verify and "ZERO_PFN" in facts


def select_probes(syms: Kallsyms, facts: Dict[str, int], verified: bool) -> List[Selected]:
    """probes.select, less what only pin verification reads when it does not run
    (``verified``: whether the daemon started a pin watch; pins.verify is read at start
    only): each backend's keeper of the kernel's table of live mappings (TABLE_KEEPERS),
    whose entry, sample slots and span every MAP_DMA pays for and every unmap deletes.
    Left out as a probe of an absent kernel feature is: no series, no alert; without it
    the programs make no entries (the PIN_MAPS and IOMMUFD_PIN_MAPS facts stay unset)."""
    chosen = select(syms, facts)
    if verified:
        return chosen
    return [s for s in chosen if s.probe.name not in TABLE_KEEPERS]


def _log_changes(before: Sequence[ProbeStatus], after: Sequence[ProbeStatus], sink: Optional[AlertSink] = None,
                 disabled: Sequence[str] = ()) -> None:
    """One log line per probe whose state changed; a probe_lost alert for each one
    that was attached and is not any more, unless the configuration disabled it."""
    old = {s.name: s for s in before}
    for s in after:
        if old.get(s.name) == s:
            continue
        if s.attached:
            log.info("probe %s attached: %s (%s)", s.name, s.detail, s.methods)
        elif s.name in old and old[s.name].attached:
            log.warning("probe %s detached: %s", s.name, s.detail)
            if sink is not None and s.name not in disabled:
                sink.alert(PROBE_LOST, "probe %s detached: %s" % (s.name, s.detail), PROBE=s.name, DETAIL=s.detail,
                           SYMBOLS=old[s.name].detail)
        else:
            log.warning("probe %s not attached: %s", s.name, s.detail)
    now = {s.name for s in after}
    for name, s in old.items():
        if name not in now and s.attached:
            log.info("probe %s left out: the kernel feature it belongs to is gone (module unloaded)", name)


def _log_features(features: Dict[str, bool]) -> None:
    for name, present in sorted(features.items()):
        if not present:
            log.info("%s: the probes of %s are left out", FEATURES[name].absent, name)


def _dispatch(ev, watch, sink, backend: str) -> None:
    if ev.type == EV_MEMLOCK:
        memlock_alert(sink, ev)
    elif watch is not None:
        watch.on_event(ev, backend)


class ReloadStats:
    """Configuration reloads, named as Prometheus names its own."""

    def __init__(self) -> None:
        self.last_successful = True
        self.last_success_time = time.time()
        self.counts = {"success": 0, "failure": 0}

    def record(self, ok: bool) -> None:
        self.last_successful = ok
        self.counts["success" if ok else "failure"] += 1
        if ok:
            self.last_success_time = time.time()

    def families(self):
        yield GaugeMetricFamily("vfiomond_config_last_reload_successful",
                                "Whether the last configuration reload (SIGHUP) succeeded (1) or kept the old one (0).",
                                value=int(self.last_successful))
        yield GaugeMetricFamily("vfiomond_config_last_reload_success_timestamp_seconds",
                                "Unix time of the last successful configuration load (start-up or SIGHUP).",
                                value=self.last_success_time)
        c = CounterMetricFamily("vfiomond_config_reloads_total", "Configuration reloads (SIGHUP) by result.",
                                labels=["result"])
        for result, n in sorted(self.counts.items()):
            c.add_metric([result], n)
        yield c


class Daemon:
    """What the main loop acts on: the BPF programs, the probe selection, the
    device inventory and the detectors."""

    def __init__(self, config: Config, program: bpfload.Program, fixed_facts: Dict[str, int],
                 advisories_: advisories.AdvisoryWatch, sink: AlertSink, pin_watch: Optional[PinWatch] = None):
        self.config = config
        self.pin_watch = pin_watch
        self.program = program
        self.fixed_facts = fixed_facts
        self.advisories = advisories_
        self.sink = sink
        self.inventory = devices.Inventory()
        self.reloads = ReloadStats()
        self._module_events: List[devices.UdevEvent] = []
        self._last_module_event = 0.0
        self.resets: Optional[resets.ResetWatch] = None  # set once the area's ring buffer is open

    def is_vfio_device(self, bdf: str) -> bool:
        """Bound to a VFIO driver: in the inventory, or in sysfs already (a reset on the
        first open can come before udev's bind event is read)."""
        return bdf in self.inventory.devices or devices.is_vfio_driver(
            devices.link_name(os.path.join(devices.SYSFS_PCI, bdf, "driver")))

    def reprobe(self, gone_modules: Set[str]) -> None:
        """Modules came or went: select and attach again, without a restart."""
        syms, facts = read_kernel(advisories.symbol_names(self.advisories.issues))
        facts.update(self.fixed_facts)
        before = self.program.statuses
        # The table's keepers follow the pin watch started with the daemon, not a reloaded
        # pins.verify (restart-only): a reload must not take the table from a running watch.
        chosen = select_probes(syms, facts, verified=self.pin_watch is not None)
        _log_changes(before, self.program.apply(chosen, facts, self.config.disable, gone_modules), self.sink,
                     self.config.disable)
        self.advisories.evaluate(syms)
        btf.release_vmlinux()  # read for the module facts

    def drop_redundant_fault_hook(self) -> None:
        """Once vfio_pci_mmap_page_fault was seen calling vfio_pci_mmap_huge_fault,
        its hook only doubles the kprobes of every 4 KiB BAR fault: detach it."""
        if "BAR_FAULT_NESTED" in self.fixed_facts or not self.program.fault_nesting_seen():
            return
        self.fixed_facts["BAR_FAULT_NESTED"] = 1
        # Told before the detach: the page_fault hook's entry goes before its return,
        # and a return without its entry is then no loss (bpf/faults.c).
        self.program.set_fact("BAR_FAULT_NESTED", 1)
        log.info("vfio_pci_mmap_page_fault calls vfio_pci_mmap_huge_fault: the huge_fault hook alone sees every "
                 "BAR fault; detaching the page_fault hook")
        self.reprobe(set())

    def reload(self, load: Callable[[], Config]) -> Optional[str]:
        """SIGHUP: read and validate the configuration again and apply it; a bad
        one is logged (one line) and the running configuration stays.  Returns
        the error, or None."""
        try:
            new = load()
        except ConfigError as e:
            log.error("reload failed, keeping the running configuration: %s", e)
            self.reloads.record(False)
            return str(e)
        old, self.config = self.config, new
        for field in RESTART_ONLY:
            if getattr(old, field) != getattr(new, field):
                log.warning("reload: %s changed; it takes effect at the next restart", field)
        if new.log_level != old.log_level:
            logging.getLogger().setLevel(new.log_level.upper())
        if new.disable != old.disable:
            log.info("reload: disabled probes now: %s", ", ".join(new.disable) or "none")
            try:
                self.reprobe(set())
            except VfiomondError as e:  # e.g. kallsyms unreadable now: the probes stay as they were
                log.error("reload: probing the kernel failed, probes unchanged: %s", e)
                self.reloads.record(False)
                return str(e)
            if self.pin_watch is not None:
                _log_verified(new.disable)
                self.pin_watch.set_backends(verified_backends(new.disable))
        self.reloads.record(True)
        log.info("configuration reloaded")
        return None

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
            if change.kind == "removed" and self.resets is not None:
                self.resets.forget_device(d.device)
        if self._module_events and now - self._last_module_event >= MODULE_QUIET:
            modules, self._module_events = self._module_events, []
            log.info("modules %s: probing the kernel again", ", ".join("%s %s" % (e.action, e.name) for e in modules))
            self.reprobe({e.name for e in modules if e.action == "remove"})


def run(config: Config, load_config: Optional[Callable[[], Config]] = None, notifier: Optional[Notifier] = None) -> int:
    """The daemon until SIGTERM/SIGINT.  SIGHUP calls ``load_config`` (the file
    and command line again) and applies what can change without a restart."""
    notifier = notifier or Notifier()
    host, port = parse_listen(config.listen)
    privileges.require_bpf()
    footprint.disable_transparent_hugepages()  # before the compile touches the heap
    release = kernel.release()
    log.info("vfiomond %s on kernel %s", __version__, release)

    issues = advisories.load()
    # Followed before the kernel is read: a module loading in between is probed again.
    notifier.status("reading kernel symbols")
    udev = devices.DeviceWatcher()
    udev.start()
    syms, facts = read_kernel(advisories.symbol_names(issues))
    fixed = _fixed_facts(config.pin_samples)
    facts.update(fixed)
    notifier.status("compiling BPF programs")
    log.info("compiling BPF programs (kernel facts: %s)", ", ".join(sorted(facts)) or "none")
    verified = pins_verified(config, facts)
    if not verified:
        log.info("pin verification off: the kernel's table of live mappings is not kept (probes %s left out)",
                 ", ".join(TABLE_KEEPERS))
    program = bpfload.load(select_probes(syms, facts, verified), facts, config.disable, syms.has(TRAMPOLINE_MARKER),
                           config.module_trampolines)
    _log_features(program.features)
    _log_changes([], program.statuses)
    missing = [s.name for s in program.statuses if not s.attached]
    if config.strict and missing:
        udev.stop()
        program.close()
        raise VfiomondError("strict mode: probes not attached: " + ", ".join(missing))

    notifier.status("finding VFIO users")
    users = processes.UserFinder(program.vfio_user_candidates)
    users.full_scan()
    processes.scraped_vfio_files.use(users)
    log.info("VFIO users: %d found by a full scan of /proc in %.2f s; from now on a scrape reads the open files of "
             "the processes the probes saw open a VFIO device or map DMA (full scan every %.0f s)",
             users.found_by_scan_only, users.full_scan_seconds, USERS_RESCAN_INTERVAL)

    notifier.status("starting detectors")
    sink = AlertSink()
    advisories_ = advisories.AdvisoryWatch(issues, sink)
    advisories_.evaluate(syms)
    watch = _pin_watch(config, facts, sink, _pin_tables(program, config))
    daemon = Daemon(config, program, fixed, advisories_, sink, watch)
    daemon.on_udev(udev.events(), time.monotonic())
    supervisor = Supervisor()
    supervisor.add("udev", udev.alive, udev.start)
    detectors = {"advisories": advisories_.report, "devices": devices.InventoryMetrics(daemon.inventory),
                 "interrupts": interrupts.InterruptMetrics(lambda: list(daemon.inventory.devices)),
                 "pcie": pcie.PcieMetrics(lambda: list(daemon.inventory.devices)),
                 "reloads": daemon.reloads, "workers": supervisor, "vfio_users": users}
    watcher = None
    if config.watch_kernel_log:
        watcher = KernelLogWatcher(issues, sink, advisories.running_kernel()[0],
                                   memlock_probed=lambda: "pin_pages" in daemon.program.attached())
        try:
            watcher.start()
            detectors["kernel_log"] = watcher
            supervisor.add("kernel_log", watcher.alive, watcher.start)
        except OSError as e:
            log.warning("kernel log not watched: %s", e)
            watcher = None
    if watch is not None:
        detectors["pins"] = watch
    bpf_self = bpfstats.BpfSelf(program)  # run time per program, map fullness
    detectors["bpf"] = bpf_self
    supervisor.task("bpf_map_entries", bpf_self.count_entries)
    # Opened whether or not verification is on: an unread ring buffer fills and its events count as lost.
    events = [area for area in PIN_VERIFY if area in program.areas()]
    for area in events:
        program.open_ring_buffer(area, PIN_VERIFY[area][0], parse_event,
                                 lambda ev, a=area: _dispatch(ev, watch, sink, a))
    if "resets" in program.areas():
        daemon.resets = resets.ResetWatch(daemon.is_vfio_device, lambda: list(daemon.inventory.devices), sink)
        program.open_ring_buffer("resets", resets.EVENTS, resets.parse_event, daemon.resets.on_reset)
        detectors["reset_events"] = daemon.resets  # not "resets": that is the probe area's collector
    registry = CollectorRegistry(auto_describe=False)
    registry.register(VfiomondCollector(program, release, detectors, sink))
    # The daemon's own footprint, as every client_python exporter gives it: process_*
    # (CPU seconds, resident memory, open fds, start time) and python_info.
    ProcessCollector(registry=registry)
    PlatformCollector(registry=registry)
    shared = SharedCollection(registry)
    registry.register(shared.counter())
    try:
        server = serve(host, port, shared, web_config=config.web_config_file)
    except OSError as e:
        udev.stop()
        program.close()
        raise VfiomondError("cannot listen on %s: %s" % (config.listen, e.strerror)) from None
    footprint.release_free_heap()  # what the start freed, now rather than at the first housekeeping
    log.info("serving /metrics on %s (%s)", config.listen, _summary(program))
    notifier.ready(_status(program, daemon))

    signals = _Signals()

    signal.signal(signal.SIGTERM, signals.on_stop)
    signal.signal(signal.SIGINT, signals.on_stop)
    signal.signal(signal.SIGHUP, signals.on_hup)
    next_verify = time.monotonic() + config.pin_verify_interval
    next_housekeeping = time.monotonic() + HOUSEKEEPING_INTERVAL
    next_loss_check = time.monotonic() + LOSS_CHECK_INTERVAL
    next_users_scan = time.monotonic() + USERS_RESCAN_INTERVAL
    losses = LossLog()
    statuses = program.statuses
    task = supervisor.task  # each periodic task isolated: one that raises is logged and counted
    while signals.stop is None:
        if events:
            task("ring_buffers", program.poll, 500)
        else:
            time.sleep(0.5)
        task("udev", daemon.on_udev, udev.events(), time.monotonic())
        if signals.take_reload():
            notifier.reloading()
            error = task("reload", daemon.reload, load_config) if load_config else "no configuration to reload"
            notifier.ready(("reload failed, running with the previous configuration: %s; " % error if error else "")
                           + _status(program, daemon))
        now = time.monotonic()
        if watch is not None and now >= next_verify:
            task("ring_buffers", program.poll, 0)  # drain first: an UNMAP still queued would defer differences
            task("pin_verify", watch.verify_all, lambda: program.poll(0))
            next_verify = time.monotonic() + daemon.config.pin_verify_interval
        if now >= next_housekeeping:
            task("housekeeping", _housekeeping, program)
            task("bpf_map_entries", bpf_self.count_entries)
            next_housekeeping = now + HOUSEKEEPING_INTERVAL
        if now >= next_users_scan:
            task("users_scan", users.full_scan)
            next_users_scan = time.monotonic() + USERS_RESCAN_INTERVAL
        if now >= next_loss_check:
            task("losses", lambda: losses.check(program.lost_events()))
            next_loss_check = now + LOSS_CHECK_INTERVAL
        task("fault_hooks", daemon.drop_redundant_fault_hook)
        supervisor.check()
        if program.statuses != statuses:
            statuses = program.statuses
            notifier.status(_status(program, daemon))
        notifier.progress(healthy=server.thread_alive())
    log.info("received %s, stopping", signal.Signals(signals.stop).name)
    notifier.stopping()
    server.shutdown()
    server.server_close()
    udev.stop()
    if watcher is not None:
        watcher.stop()
    program.close()
    log.info("stopped")
    return 0


class _Signals:
    """What SIGTERM/SIGINT and SIGHUP asked for, set by their handlers.  A handler
    runs in the main thread between any two bytecodes, also while that thread holds
    a lock (an Event's, a stream's), so it only assigns: taking a lock there
    deadlocked the daemon under 400 SIGHUPs in 5 s (Debian 12 lab guest)."""

    def __init__(self) -> None:
        self.stop: Optional[int] = None  # the signal that asked to stop
        self.reloads = 0  # SIGHUPs received
        self._reloads_seen = 0

    def on_stop(self, signum, _frame) -> None:
        self.stop = signum

    def on_hup(self, _signum, _frame) -> None:
        self.reloads += 1

    def take_reload(self) -> bool:
        """Whether a SIGHUP came since the last call (several count as one reload)."""
        seen, self._reloads_seen = self._reloads_seen, self.reloads
        return seen != self._reloads_seen


def _housekeeping(program: bpfload.Program) -> None:
    """Delete the BPF entries of processes and threads that are gone; give the heap
    freed since back to the kernel (50,000 mappings tracked, then gone, left 90 MiB
    of RSS behind in the lab's soak)."""
    footprint.release_free_heap()
    for area, table in (("type1", "proc_acct"), ("iommufd", "iommufd_proc_acct"), ("users", "vfio_openers")):
        if area in program.areas():
            program.forget_exited(area, table)
    for area, table in (("type1", "dma_by_tid"), ("iommufd", "iommufd_dma_by_tid"),
                        ("bar_dmabuf", "dmabuf_by_tid")):
        if area in program.areas():
            program.forget_exited_threads(area, table)


def _summary(program: bpfload.Program) -> str:
    return "%d of %d probes attached" % (len(program.attached()), len(program.statuses))


def _status(program: bpfload.Program, daemon: Daemon) -> str:
    """systemctl status's one line: what vfiomond is doing now."""
    return "serving /metrics on %s; %s; %d VFIO devices" % (daemon.config.listen, _summary(program),
                                                            len(daemon.inventory.devices))
