"""The lab tests' session: guest images built ahead in the background (the unit
tests run meanwhile), then the boots the collected tests need, run ahead two at a
time (tests/lab/boots.py), the tests of suites whose image takes longest (iommufd: a
kernel build) last, and where the time went printed at the end (tests/lab/timings.py)."""

import os
import signal
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import pytest  # noqa: E402

import boots  # noqa: E402
import lab  # noqa: E402
import timings  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))
_started = time.monotonic()
_builder = None


def _lab_items(items):
    return [i for i in items if os.path.dirname(str(i.fspath)) == HERE]


def _suite(item):
    """The lab suite an item's boot runs on: its suite parameter, or its module's LAB_SUITE."""
    callspec = getattr(item, "callspec", None)
    for value in (callspec.params.values() if callspec else ()):
        if value in lab.SUITES:
            return value
    return getattr(item.module, "LAB_SUITE", None)


def _boot_key(item):
    """(suite, scenario, Prometheus) of the boot an item's module fixture asks for
    (LAB_BOOT: one (scenario, Prometheus) for every suite, or a dict by suite)."""
    scenario = getattr(item.module, "LAB_BOOT", None)
    suite = _suite(item)
    if isinstance(scenario, dict):
        scenario = scenario.get(suite)
    if scenario is None or suite is None:
        return None
    return (suite,) + tuple(scenario)


@pytest.hookimpl(trylast=True)  # after pytest's own grouping of items by fixture parameter
def pytest_collection_modifyitems(session, config, items):
    global _builder
    if not _lab_items(items) or os.geteuid() != 0:
        return
    # The iommufd suite's image needs a kernel build: its tests go last, so that the
    # other suites boot while it builds.  (sort is stable: the rest keep their order.)
    items.sort(key=lambda i: _suite(i) == "iommufd")
    os.environ.setdefault(timings.ENV, tempfile.mkstemp(prefix="vfiomond-lab-timings-")[1])
    suites = [s for s in lab.TEST_SUITES if s in lab.SUITES]
    log = os.path.join(tempfile.gettempdir(), "vfiomond-lab-images.log")
    with open(log, "w") as f:
        _builder = subprocess.Popen([os.path.join(HERE, "images.sh")] + suites, stdin=subprocess.DEVNULL,
                                    stdout=f, stderr=f, start_new_session=True)
    # Skipped items (a suite not in VFIOMOND_LAB_SUITES) boot nothing.
    wanted = [i for i in _lab_items(items) if not i.get_closest_marker("skip")
              and not any(m.args and m.args[0] for m in i.iter_markers("skipif"))]
    # The boots wait for the image builds: from an empty cache the iommufd kernel build
    # and two boots on two cores made every one slow enough to fail (boots.py).
    boots.POOL.start((k for k in map(_boot_key, wanted) if k is not None), ready=_builder.wait)


def pytest_sessionfinish(session, exitstatus):
    boots.POOL.shutdown()
    if _builder is not None and _builder.poll() is None:
        os.killpg(_builder.pid, signal.SIGTERM)  # an interrupted run: image.sh rebuilds what it left


def pytest_terminal_summary(terminalreporter, exitstatus, config):
    path = os.environ.get(timings.ENV)
    if not path:
        return
    terminalreporter.section("where the time went (%s)" % path)
    for line in timings.summary(timings.read(path), time.monotonic() - _started):
        terminalreporter.write_line(line)
