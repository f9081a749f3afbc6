"""Failure isolation: a collector, a periodic task or a worker thread that fails is a
metric and a log line, never a broken /metrics, a dead daemon or a thread gone unseen."""

import logging
import threading

from prometheus_client import generate_latest
from prometheus_client.core import CollectorRegistry, GaugeMetricFamily
from prometheus_client.parser import text_string_to_metric_families

from vfiomond.alerts import PIN_MISMATCH, AlertSink
from vfiomond.collector import VfiomondCollector
from vfiomond.workers import RESTART_MAX, RESTART_MIN, Supervisor

from test_iommufd import _Program


class _Fine:
    def families(self):
        yield GaugeMetricFamily("vfiomond_fine", "A detector that works.", value=1)


class _Broken:
    def __init__(self):
        self.calls = 0

    def families(self):
        self.calls += 1
        yield GaugeMetricFamily("vfiomond_half", "Yielded before the failure.", value=1)
        raise KeyError("the state it reads changed under it")


class _BytesLabels:
    """Families that raise nothing but cannot be written (bytes label values)."""

    def families(self):
        g = GaugeMetricFamily("vfiomond_bytes_labelled", "Label values as BCC gives names.", labels=["program"])
        g.add_metric([b"on_dma_map"], 1)
        yield g


def scrape(collector):
    registry = CollectorRegistry(auto_describe=False)
    registry.register(collector)
    text = generate_latest(registry).decode()
    return {s.name: s for f in text_string_to_metric_families(text) for s in f.samples}, text


def success(text):
    return {s.labels["collector"]: s.value for f in text_string_to_metric_families(text) for s in f.samples
            if s.name == "vfiomond_scrape_collector_success"}


def test_a_failing_detector_costs_its_own_success_not_the_scrape(caplog):
    broken = _Broken()
    collector = VfiomondCollector(_Program(), "6.12", {"fine": _Fine(), "broken": broken}, AlertSink(send=lambda *a, **k: None))
    caplog.set_level(logging.ERROR, logger="vfiomond")
    samples, text = scrape(collector)
    assert "vfiomond_fine" in samples and "vfiomond_half" not in samples  # nothing half-written
    assert "vfiomond_dma_map_bytes_total" in samples and "vfiomond_events_lost_total" in samples
    ok = success(text)
    assert ok["broken"] == 0 and ok["fine"] == 1 and ok["type1"] == 1 and ok["losses"] == 1 and ok["alerts"] == 1
    scrape(collector)
    assert broken.calls == 2
    assert len([r for r in caplog.records if "collector broken failed" in r.getMessage()]) == 1  # once, not per scrape


def test_a_family_that_cannot_be_written_fails_its_collector_not_the_scrape():
    collector = VfiomondCollector(_Program(), "6.12", {"fine": _Fine(), "bpf": _BytesLabels()})
    samples, text = scrape(collector)
    assert "vfiomond_fine" in samples and "vfiomond_bytes_labelled" not in samples
    ok = success(text)
    assert ok["bpf"] == 0 and ok["fine"] == 1


def test_every_collector_is_timed():
    _, text = scrape(VfiomondCollector(_Program(), "6.12", {"fine": _Fine()}))
    durations = {s.labels["collector"] for f in text_string_to_metric_families(text) for s in f.samples
                 if s.name == "vfiomond_scrape_collector_duration_seconds"}
    assert durations == set(success(text)) >= {"build", "probes", "type1", "iommufd", "fine", "losses"}


class Clock:
    def __init__(self):
        self.now = 0.0

    def __call__(self):
        return self.now


def test_a_dead_worker_is_restarted_with_a_growing_back_off(caplog):
    clock = Clock()
    state = {"alive": True, "starts": 0, "fail": True}

    def restart():
        state["starts"] += 1
        if state["fail"]:
            raise OSError("netlink socket refused")
        state["alive"] = True

    sup = Supervisor(clock)
    sup.add("udev", lambda: state["alive"], restart)
    sup.check()
    assert state["starts"] == 0
    state["alive"] = False
    caplog.set_level(logging.INFO, logger="vfiomond")
    sup.check()  # found dead: restarted at once, and that fails
    assert state["starts"] == 1
    clock.now += RESTART_MIN / 2
    sup.check()
    assert state["starts"] == 1  # waits out the back-off
    clock.now += RESTART_MIN
    sup.check()
    assert state["starts"] == 2
    clock.now += RESTART_MIN * 1.5
    sup.check()
    assert state["starts"] == 2  # the back-off doubled
    clock.now += RESTART_MAX
    state["fail"] = False
    sup.check()
    assert state["starts"] == 3 and state["alive"]
    sup.check()
    fams = {s.name: s.value for f in sup.families() for s in f.samples}
    assert fams["vfiomond_worker_up"] == 1 and fams["vfiomond_worker_restarts_total"] == 3
    messages = [r.getMessage() for r in caplog.records]
    assert any("worker udev stopped" in m for m in messages) and any("worker udev runs again" in m for m in messages)


def test_a_failing_task_is_counted_and_the_loop_goes_on(caplog):
    sup = Supervisor()
    caplog.set_level(logging.ERROR, logger="vfiomond")

    def verify():
        raise ValueError("a pagemap entry out of range")

    assert sup.task("pin_verify", verify) is None
    assert sup.task("pin_verify", verify) is None
    assert sup.task("udev", lambda x: x + 1, 1) == 2
    fams = {(s.name, s.labels.get("task")): s.value for f in sup.families() for s in f.samples}
    assert fams[("vfiomond_task_failures_total", "pin_verify")] == 2
    assert ("vfiomond_task_failures_total", "udev") not in fams
    assert len([r for r in caplog.records if "task pin_verify failed" in r.getMessage()]) == 1


def test_a_journal_that_refuses_an_alert_is_tried_again_for_the_next():
    answers = [OSError("journald restarting"), None]
    sent = []

    def send(message, **fields):
        answer = answers.pop(0)
        if answer is not None:
            raise answer
        sent.append(message)

    sink = AlertSink(send=send)
    assert sink.alert(PIN_MISMATCH, "first")
    assert sink.journal_failing and sink.counts()["pin_mismatch"] == (1, 0, 1)
    assert sink.alert(PIN_MISMATCH, "second")
    assert sent == ["second"] and not sink.journal_failing


def test_alerts_from_many_threads_are_all_counted():
    sink = AlertSink(send=lambda *a, **k: None)
    threads = [threading.Thread(target=lambda: [sink.alert(PIN_MISMATCH, "x") for _ in range(200)]) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    sent, suppressed, _ = sink.counts()["pin_mismatch"]
    assert sent + suppressed == 1600 and sent == PIN_MISMATCH.per_minute


def test_signal_handlers_only_assign_so_a_flood_cannot_deadlock_the_main_loop():
    import os
    import signal

    from vfiomond.daemon import _Signals

    signals = _Signals()
    old = signal.signal(signal.SIGHUP, signals.on_hup)
    try:
        taken = 0
        for _ in range(2000):
            os.kill(os.getpid(), signal.SIGHUP)  # the handler runs in this thread, between bytecodes
            taken += signals.take_reload()
        assert signals.reloads == 2000 and 1 <= taken <= 2000
        assert not signals.take_reload()  # nothing new since
    finally:
        signal.signal(signal.SIGHUP, old)
    signals.on_stop(signal.SIGTERM, None)
    assert signals.stop == signal.SIGTERM
