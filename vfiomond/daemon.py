"""``vfiomond run``: feature-probe, attach, serve /metrics, stop cleanly on SIGTERM/SIGINT."""

import logging
import signal
import threading
import time

from prometheus_client.core import CollectorRegistry

from vfiomond import __version__, advisories, bpfload, kernel, pagemap, privileges
from vfiomond.alerts import AlertSink
from vfiomond.collector import VfiomondCollector
from vfiomond.config import Config, parse_listen
from vfiomond.errors import VfiomondError
from vfiomond.exposition import serve
from vfiomond.kernellog import KernelLogWatcher
from vfiomond.pins import EV_MEMLOCK, PinTracker, PinWatch, parse_event
from vfiomond.processes import memlock_alert
from vfiomond.probes import kernel_facts, select, wanted_symbols

# Probes pin verification stands on.
PIN_VERIFY_NEEDS = ("dma_map", "dma_unmap", "pin_pages")

log = logging.getLogger("vfiomond")


def probe_kernel(pin_samples: int = Config().pin_samples, extra_symbols=()):
    """(selections, facts, kallsyms) for the running kernel: /proc/kallsyms, and
    the zero page's PFN as this process sees it (needs CAP_SYS_ADMIN)."""
    try:
        syms = kernel.Kallsyms.read(wanted_symbols(extra=tuple(extra_symbols)))
    except OSError as e:
        raise VfiomondError("cannot read %s: %s" % (kernel.KALLSYMS, e.strerror)) from None
    facts = kernel_facts(syms)
    facts["PIN_SAMPLES"] = pin_samples
    zero_pfn = pagemap.learn_zero_pfn()
    if zero_pfn is not None:
        facts["ZERO_PFN"] = zero_pfn
    return select(syms, facts), facts, syms


def _advisories(issues, syms, sink) -> advisories.AdvisoryReport:
    version, source = advisories.running_kernel()
    if version is None:
        log.warning("kernel advisories: cannot tell the kernel version")
        return advisories.AdvisoryReport([])
    # Symbol evidence only once the vfio modules are loaded; else versions alone.
    symbols = None
    if syms.has("vfio_pci_mmap_ops"):
        symbols = {n for n in advisories.symbol_names(issues) if syms.has(n) or syms.function(n, True)}
    found = advisories.evaluate(issues, version, symbols)
    text = ".".join(map(str, version))
    for a in found:
        log.warning("kernel %s (%s) %s known issue %s: %s", text, source, a.status, a.id, a.title)
        from vfiomond.alerts import KERNEL_ADVISORY

        sink.alert(
            KERNEL_ADVISORY, "kernel %s is %s exposed to %s: %s" % (text, "possibly" if a.status == "possibly" else "", a.id, a.title),
            ADVISORY_ID=a.id, SEVERITY=a.severity, STATUS=a.status, TITLE=a.title, KERNEL_VERSION=text,
            VERSION_SOURCE=source, FIXED_BY="; ".join(a.fixed_by),
        )
    return advisories.AdvisoryReport(found)


# Seconds between deleting the per-process BPF entries of processes that are gone.
HOUSEKEEPING_INTERVAL = 30.0


def _pin_watch(config: Config, statuses, facts, sink):
    if not config.pin_verify:
        log.info("pin verification disabled in the configuration")
        return None
    attached = {s.name for s in statuses if s.attached}
    missing = [p for p in PIN_VERIFY_NEEDS if p not in attached]
    if missing:
        log.warning("pin verification off: probes not attached: %s", ", ".join(missing))
        return None
    if "ZERO_PFN" not in facts:
        log.warning("pin verification off: PFNs are hidden in pagemap (needs CAP_SYS_ADMIN)")
        return None
    watch = PinWatch(PinTracker(config.pin_samples, facts["ZERO_PFN"]), sink, pagemap.read_pfns)
    log.info("pin verification every %gs, %d samples per mapping", config.pin_verify_interval, config.pin_samples)
    return watch


def _dispatch(ev, watch, sink) -> None:
    if ev.type == EV_MEMLOCK:
        memlock_alert(sink, ev)
    elif watch is not None:
        watch.on_event(ev)


def run(config: Config) -> int:
    host, port = parse_listen(config.listen)
    privileges.require_bpf()
    release = kernel.release()
    log.info("vfiomond %s on kernel %s", __version__, release)

    issues = advisories.load()
    selections, facts, syms = probe_kernel(config.pin_samples, advisories.symbol_names(issues))
    log.info("compiling BPF programs (kernel facts: %s)", ", ".join(sorted(facts)) or "none")
    program, statuses = bpfload.load(selections, facts, config.disable)
    for s in statuses:
        if s.attached:
            log.info("probe %s attached: %s", s.name, s.detail)
        else:
            log.warning("probe %s not attached: %s", s.name, s.detail)
    missing = [s.name for s in statuses if not s.attached]
    if config.strict and missing:
        program.close()
        raise VfiomondError("strict mode: probes not attached: " + ", ".join(missing))

    sink = AlertSink()
    report = _advisories(issues, syms, sink)
    detectors = [report]
    watcher = None
    if config.watch_kernel_log:
        watcher = KernelLogWatcher(issues, sink, advisories.running_kernel()[0])
        try:
            watcher.start()
            detectors.append(watcher)
        except OSError as e:
            log.warning("kernel log not watched: %s", e)
            watcher = None
    watch = _pin_watch(config, statuses, facts, sink)
    if watch is not None:
        detectors.append(watch)
    events = "type1" in program.areas()
    if events:
        program.open_ring_buffer("type1", "pin_events", lambda raw: _dispatch(parse_event(raw), watch, sink))
    registry = CollectorRegistry(auto_describe=False)
    registry.register(VfiomondCollector(program, statuses, release, detectors, sink))
    try:
        server = serve(host, port, registry)
    except OSError as e:
        program.close()
        raise VfiomondError("cannot listen on %s: %s" % (config.listen, e.strerror)) from None
    log.info("serving /metrics on %s (%d of %d probes attached)", config.listen, len(statuses) - len(missing), len(statuses))

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
            stop.wait(1.0)
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
    if watcher is not None:
        watcher.stop()
    program.close()
    log.info("stopped")
    return 0
