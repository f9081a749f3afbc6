"""The lab boots a test session needs, run ahead and side by side.

A boot spends most of its time in one guest CPU (BCC compiling vfiomond's
programs under TCG), so on a 2-core machine two boots at once take little more
than one.  tests/lab/conftest.py lists the boots the collected tests need, in the
order they need them, and starts them here (VFIOMOND_LAB_PARALLEL at once,
default 2); test_lab.boot() then waits for its result, or boots at once when
nothing was scheduled (a test run alone)."""

import os
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Callable, Dict, Iterable, Optional, Tuple

import lab

BootKey = Tuple[str, str, bool]  # (suite, scenario, with a Prometheus server)


def parallel() -> int:
    try:
        return max(1, int(os.environ.get("VFIOMOND_LAB_PARALLEL", "2")))
    except ValueError:
        return 2


def timeout(scenario: str) -> float:
    """Seconds a boot may take to its scenarios' end: 1200, and 150 per scenario past
    eight.  Measured at 0066d24 with the iommufd kernel building next to two boots:
    vfiomond took 335-393 s to start (the BPF compile), the shared boot of eight
    scenarios 712-728 s, and the dpdk boot ran past 600 s."""
    return max(1200.0, 150.0 * len(scenario.split("+")))


class BootPool:
    def __init__(self) -> None:
        self._executor: Optional[ThreadPoolExecutor] = None
        self._futures: Dict[BootKey, Future] = {}

    def start(self, keys: Iterable[BootKey], ready: Callable[[], object] = lambda: None) -> None:
        """Boot ``keys`` in the background, each once ``ready()`` has returned (the images
        built: a boot that shares the CPUs with a kernel build runs so much slower under
        TCG that its scrapes time out and its BAR faults look slow, as a make test from
        an empty image cache showed on 2026-12-02)."""
        keys = [k for k in dict.fromkeys(keys) if k not in self._futures]
        if not keys:
            return
        if self._executor is None:
            self._executor = ThreadPoolExecutor(max_workers=parallel(), thread_name_prefix="lab-boot")
        for suite, scenario, prometheus in keys:
            self._futures[(suite, scenario, prometheus)] = self._executor.submit(
                _boot_when_ready, ready, suite, scenario, prometheus)

    def result(self, suite: str, scenario: str, prometheus: bool = False) -> lab.LabRun:
        future = self._futures.get((suite, scenario, prometheus))
        if future is None:
            return lab.run(suite, scenario, timeout=timeout(scenario), prometheus=prometheus)
        return future.result()

    def shutdown(self) -> None:
        """Boots not started yet are dropped; a boot under way runs to its end."""
        if self._executor is not None:
            self._executor.shutdown(wait=True, cancel_futures=True)
            self._executor = None


def _boot_when_ready(ready: Callable[[], object], suite: str, scenario: str, prometheus: bool) -> lab.LabRun:
    ready()
    return lab.run(suite, scenario, timeout=timeout(scenario), prometheus=prometheus)


POOL = BootPool()
