"""The systemd service protocol (vfiomond/service.py) and reload (Daemon.reload)."""

import logging

from vfiomond import config as configmod
from vfiomond.daemon import Daemon
from vfiomond.errors import ConfigError
from vfiomond.service import Notifier, monotonic_usec, watchdog_interval


class Clock:
    def __init__(self):
        self.now = 100.0

    def __call__(self):
        return self.now


def notifier(environ=None, clock=None):
    sent = []
    env = {"NOTIFY_SOCKET": "/run/systemd/notify", "WATCHDOG_USEC": "10000000"}
    env.update(environ or {})
    n = Notifier(send=sent.append, environ=env, clock=clock or Clock())
    return n, sent


def test_watchdog_interval_is_half_of_watchdogsec_and_only_for_this_process():
    assert watchdog_interval({"WATCHDOG_USEC": "30000000"}, 7) == 15.0
    assert watchdog_interval({"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": "7"}, 7) == 15.0
    assert watchdog_interval({"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": "8"}, 7) is None
    assert watchdog_interval({"WATCHDOG_USEC": "0"}, 7) is None
    assert watchdog_interval({}, 7) is None


def test_watchdog_pings_only_on_healthy_progress_and_at_most_every_half_period():
    clock = Clock()
    n, sent = notifier(clock=clock)
    assert n.progress() and sent == ["WATCHDOG=1"]
    clock.now += 4.9
    assert not n.progress()  # too soon
    clock.now += 0.2
    assert not n.progress(healthy=False)  # the HTTP thread died: no ping, systemd will restart us
    assert n.progress() and sent == ["WATCHDOG=1", "WATCHDOG=1"]
    assert n.pings == 2


def test_no_watchdog_configured_means_no_pings():
    n, sent = notifier(environ={"WATCHDOG_USEC": ""})
    assert not n.progress() and sent == []


def test_state_messages():
    n, sent = notifier()
    n.status("compiling BPF programs")
    n.ready("serving /metrics on :10119")
    before = monotonic_usec()
    n.reloading()
    n.stopping()
    assert sent[0] == "STATUS=compiling BPF programs"
    assert sent[1] == "READY=1\nSTATUS=serving /metrics on :10119"
    lines = sent[2].split("\n")
    assert lines[0] == "RELOADING=1" and lines[1].startswith("MONOTONIC_USEC=")
    assert before <= int(lines[1].split("=")[1]) <= monotonic_usec()
    assert sent[3] == "STOPPING=1\nSTATUS=stopping"


def test_outside_systemd_nothing_is_sent():
    n = Notifier(environ={})
    n.status("x")
    n.ready("y")
    assert n.watchdog is None and not n.progress()


def daemon(config):
    return Daemon(config, program=None, fixed_facts={}, advisories_=None, sink=None)


def write(path, text):
    path.write_text(text)
    return configmod.loader(str(path), {"listen": ":9999"})


def test_bad_reload_keeps_the_running_configuration(tmp_path):
    load = write(tmp_path / "c.toml", "[pins]\nverify_interval = 5\n")
    d = daemon(load())
    write(tmp_path / "c.toml", "[pins]\nverify_intervall = 5\n")
    error = d.reload(load)
    assert "unknown key pins.verify_intervall" in error
    assert d.config.pin_verify_interval == 5 and d.config.listen == ":9999"
    assert d.reloads.counts == {"success": 0, "failure": 1} and not d.reloads.last_successful
    write(tmp_path / "c.toml", "[pins]\nverify_interval = [")
    assert "c.toml" in d.reload(load)


def test_good_reload_applies_and_keeps_command_line_overrides(tmp_path, caplog):
    load = write(tmp_path / "c.toml", "[daemon]\nlisten = \":1\"\n")
    d = daemon(load())
    root = logging.getLogger()
    level = root.level
    try:
        write(tmp_path / "c.toml", "[daemon]\nlog_level = \"debug\"\n[pins]\nverify_interval = 2.5\nsamples = 8\n")
        with caplog.at_level(logging.INFO, logger="vfiomond"):
            assert d.reload(load) is None
        assert d.config.pin_verify_interval == 2.5 and d.config.listen == ":9999"
        assert root.level == logging.DEBUG
        assert "pin_samples changed; it takes effect at the next restart" in caplog.text
        assert d.reloads.counts == {"success": 1, "failure": 0} and d.reloads.last_successful
    finally:
        root.setLevel(level)


def test_reload_metrics_follow_prometheus_names():
    d = daemon(configmod.Config())
    d.reloads.record(False)
    fams = {f.name: f for f in d.reloads.families()}
    assert fams["vfiomond_config_last_reload_successful"].samples[0].value == 0
    assert {s.labels["result"]: s.value for s in fams["vfiomond_config_reloads"].samples} == {"failure": 1, "success": 0}


def test_loader_errors_are_config_errors(tmp_path):
    load = configmod.loader(str(tmp_path / "missing.toml"), {})
    try:
        load()
    except ConfigError as e:
        assert "missing.toml" in str(e)
    else:
        raise AssertionError("a missing config file must be an error")


class Sink:
    def __init__(self):
        self.alerts = []

    def alert(self, kind, message, **fields):
        self.alerts.append((kind.name, fields))


def test_a_detached_probe_is_alerted_unless_the_configuration_disabled_it():
    from vfiomond.bpfload import ProbeStatus
    from vfiomond.daemon import _log_changes

    before = [ProbeStatus("bar_fault", True, "vfio_pci_mmap_fault"), ProbeStatus("remap_pfn_range", True, "remap_pfn_range"),
              ProbeStatus("dma_map", False, "module vfio_iommu_type1 not loaded")]
    after = [ProbeStatus("bar_fault", False, "module vfio_pci not loaded"), ProbeStatus("remap_pfn_range", False, "disabled"),
             ProbeStatus("dma_map", False, "module vfio_iommu_type1 not loaded")]
    sink = Sink()
    _log_changes(before, after, sink, disabled=("remap_pfn_range",))
    assert sink.alerts == [("probe_lost", {"PROBE": "bar_fault", "DETAIL": "module vfio_pci not loaded",
                                           "SYMBOLS": "vfio_pci_mmap_fault"})]
