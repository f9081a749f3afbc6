"""Worker threads under supervision: one that dies is a metric, a log line and a
restart, never a daemon that goes on without it unseen.

The main loop's own periodic tasks (pin verification, udev events, reloads,
housekeeping) run through ``Supervisor.task``: one that raises is logged (once,
until it works again) and counted in ``vfiomond_task_failures_total{task}``, and
the loop goes on.

The main loop calls ``Supervisor.check()``; a dead worker is started again after
a back-off that doubles from RESTART_MIN to RESTART_MAX seconds while it keeps
dying.  Exported as ``vfiomond_worker_up{worker}`` and
``vfiomond_worker_restarts_total{worker}``.
"""

import logging
import threading
import time
from typing import Callable, Dict, Iterator, Optional, TypeVar

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

log = logging.getLogger("vfiomond")

T = TypeVar("T")

RESTART_MIN = 1.0
RESTART_MAX = 60.0


class _Worker:
    def __init__(self, alive: Callable[[], bool], restart: Callable[[], None]):
        self.alive = alive
        self.restart = restart
        self.restarts = 0
        self.backoff = RESTART_MIN
        self.next_try = 0.0
        self.up = True


class Supervisor:
    def __init__(self, clock: Callable[[], float] = time.monotonic):
        self._clock = clock
        self._workers: Dict[str, _Worker] = {}
        self._task_failures: Dict[str, int] = {}
        self._failing_tasks: set = set()
        self._lock = threading.Lock()

    def task(self, name: str, fn: Callable[..., T], *args) -> Optional[T]:
        """``fn(*args)``; None if it raised (logged and counted)."""
        try:
            result = fn(*args)
        except Exception as e:
            with self._lock:
                self._task_failures[name] = self._task_failures.get(name, 0) + 1
            if name not in self._failing_tasks:
                self._failing_tasks.add(name)
                log.exception("task %s failed (%s: %s); the daemon goes on", name, type(e).__name__, e)
            return None
        if name in self._failing_tasks:
            self._failing_tasks.discard(name)
            log.info("task %s works again", name)
        return result

    def add(self, name: str, alive: Callable[[], bool], restart: Callable[[], None]) -> None:
        """``alive()``: the worker runs; ``restart()`` starts it again (may raise)."""
        with self._lock:
            self._workers[name] = _Worker(alive, restart)

    def check(self) -> None:
        now = self._clock()
        for name, w in list(self._workers.items()):
            if w.alive():
                if not w.up:
                    log.info("worker %s runs again", name)
                w.up, w.backoff = True, RESTART_MIN
                continue
            if w.up:
                log.error("worker %s stopped; restarting it", name)
                w.up, w.next_try = False, now
            if now < w.next_try:
                continue
            with self._lock:
                w.restarts += 1
            w.next_try = now + w.backoff
            w.backoff = min(RESTART_MAX, w.backoff * 2)
            try:
                w.restart()
            except Exception as e:  # retried after the back-off
                log.error("restarting worker %s failed: %s: %s; next try in %.0f s", name, type(e).__name__, e,
                          w.next_try - now)

    def families(self) -> Iterator:
        up = GaugeMetricFamily("vfiomond_worker_up", "1 if the worker thread runs (kernel_log, udev).",
                               labels=["worker"])
        restarts = CounterMetricFamily("vfiomond_worker_restarts", "Times the worker thread was found stopped and "
                                       "started again.", labels=["worker"])
        failures = CounterMetricFamily("vfiomond_task_failures", "Runs of a periodic task of the main loop that "
                                       "raised (logged); the daemon went on.", labels=["task"])
        with self._lock:
            workers = sorted(self._workers.items())
            tasks = sorted(self._task_failures.items())
        for name, w in workers:
            up.add_metric([name], 1 if w.alive() else 0)
            restarts.add_metric([name], w.restarts)
        for name, n in tasks:
            failures.add_metric([name], n)
        yield up
        yield restarts
        yield failures
