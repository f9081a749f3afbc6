"""``vfiomond run``: feature-probe, attach, serve /metrics, stop cleanly on SIGTERM/SIGINT."""

import logging
import signal
import threading

from prometheus_client.core import CollectorRegistry

from vfiomond import __version__, bpfload, kernel, privileges
from vfiomond.collector import VfiomondCollector
from vfiomond.config import Config, parse_listen
from vfiomond.errors import VfiomondError
from vfiomond.probes import kernel_facts, select, wanted_symbols
from vfiomond.exposition import serve

log = logging.getLogger("vfiomond")


def probe_kernel():
    """(selections, facts) for the running kernel, from /proc/kallsyms."""
    try:
        syms = kernel.Kallsyms.read(wanted_symbols())
    except OSError as e:
        raise VfiomondError("cannot read %s: %s" % (kernel.KALLSYMS, e.strerror)) from None
    facts = kernel_facts(syms)
    return select(syms, facts), facts


def run(config: Config) -> int:
    host, port = parse_listen(config.listen)
    privileges.require_bpf()
    release = kernel.release()
    log.info("vfiomond %s on kernel %s", __version__, release)

    selections, facts = probe_kernel()
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

    registry = CollectorRegistry(auto_describe=False)
    registry.register(VfiomondCollector(program, statuses, release))
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
    while not stop.wait(1.0):
        pass
    server.shutdown()
    server.server_close()
    program.close()
    log.info("stopped")
    return 0
