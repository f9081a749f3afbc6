"""The HTTP endpoint, served for real on loopback."""

import urllib.error
import urllib.request

import pytest
from prometheus_client.core import CollectorRegistry, GaugeMetricFamily

from vfiomond.exposition import serve


class OneGauge:
    def collect(self):
        g = GaugeMetricFamily("vfiomond_test_gauge", "A test gauge.")
        g.add_metric([], 42)
        yield g


@pytest.fixture()
def server():
    registry = CollectorRegistry(auto_describe=False)
    registry.register(OneGauge())
    srv = serve("127.0.0.1", 0, registry)
    yield "http://127.0.0.1:%d" % srv.server_address[1]
    srv.shutdown()
    srv.server_close()


def get(url):
    with urllib.request.urlopen(url, timeout=10) as r:
        return r.status, r.headers.get("Content-Type"), r.read().decode()


def test_metrics(server):
    status, ctype, body = get(server + "/metrics")
    assert status == 200 and ctype.startswith("text/plain")
    assert "vfiomond_test_gauge 42.0" in body


def test_landing_page_links_metrics(server):
    status, ctype, body = get(server + "/")
    assert status == 200 and ctype.startswith("text/html")
    assert 'href="/metrics"' in body


def test_other_paths_are_404(server):
    with pytest.raises(urllib.error.HTTPError) as e:
        get(server + "/nope")
    assert e.value.code == 404


def test_address_in_use_is_an_oserror(server):
    port = int(server.rsplit(":", 1)[1])
    with pytest.raises(OSError):
        serve("127.0.0.1", port, CollectorRegistry())


class OneVm:
    def collect(self):
        who = ["4242", "qemu-system-x86", "lab-vm"]
        g = GaugeMetricFamily("vfiomond_process_dma_mapped_bytes", "", labels=["pid", "comm", "vm", "backend"])
        g.add_metric(who + ["type1"], 1 << 30)
        g.add_metric(who + ["iommufd"], 1 << 29)
        yield g
        g = GaugeMetricFamily("vfiomond_process_memlock_limit_bytes", "", labels=["pid", "comm", "vm"])
        g.add_metric(who, float("inf"))
        yield g
        h = GaugeMetricFamily("vfiomond_device_holder_info", "", labels=["device", "pid", "comm", "vm", "via"])
        for bdf in ("0000:00:03.0", "0000:00:02.0"):
            h.add_metric([bdf, "4242", "qemu-system-x86", "lab-vm", "group"], 1)
        yield h


def test_landing_page_shows_each_vfio_user():
    from vfiomond.exposition import users_table

    registry = CollectorRegistry(auto_describe=False)
    assert users_table(registry) == "<p>No VFIO users now.</p>"
    registry.register(OneVm())
    table = users_table(registry)
    row = table.split("\n")[2]
    assert row.startswith("<tr><td>4242</td><td>qemu-system-x86</td><td>lab-vm</td><td>0000:00:02.0 0000:00:03.0</td>")
    assert "<td>1.500</td>" in row and "<td>inf</td>" in row  # both backends' mappings; an unlimited limit


class Gate:
    """A collector whose collection waits until the test opens the gate."""

    def __init__(self):
        import threading

        self.entered = threading.Event()
        self.gate = threading.Event()
        self.calls = 0
        self.fail = False

    def collect(self):
        self.calls += 1
        self.entered.set()
        assert self.gate.wait(10)
        if self.fail:
            raise RuntimeError("collection failed")
        g = GaugeMetricFamily("vfiomond_test_calls", "Collections so far.")
        g.add_metric([], self.calls)
        yield g


def _concurrent(shared, n):
    import concurrent.futures

    pool = concurrent.futures.ThreadPoolExecutor(n)
    return pool, [pool.submit(lambda: list(shared.collect())) for _ in range(n)]


def test_requests_during_a_collection_share_it():
    from vfiomond.exposition import SharedCollection

    gate = Gate()
    registry = CollectorRegistry(auto_describe=False)
    registry.register(gate)
    shared = SharedCollection(registry)
    registry.register(shared.counter())
    pool, futures = _concurrent(shared, 5)
    assert gate.entered.wait(10)
    import time

    deadline = time.monotonic() + 10
    while shared.shared < 4 and time.monotonic() < deadline:  # the other four are waiting
        time.sleep(0.01)
    gate.gate.set()
    results = [f.result(10) for f in futures]
    pool.shutdown()
    assert gate.calls == 1
    assert all(r is results[0] or r == results[0] for r in results)
    # The next request, after that collection ended, collects afresh and says how many were shared.
    families = {f.name: f.samples[0].value for f in shared.collect()}
    assert gate.calls == 2 and families["vfiomond_test_calls"] == 2 and families["vfiomond_scrapes_shared"] == 4


def test_a_failed_collection_fails_every_request_that_shared_it_and_not_the_next():
    from vfiomond.exposition import SharedCollection

    gate = Gate()
    gate.fail = True
    registry = CollectorRegistry(auto_describe=False)
    registry.register(gate)
    shared = SharedCollection(registry)
    pool, futures = _concurrent(shared, 3)
    assert gate.entered.wait(10)
    gate.gate.set()
    for f in futures:
        with pytest.raises(RuntimeError):
            f.result(10)
    pool.shutdown()
    gate.fail = False
    assert [f.name for f in shared.collect()] == ["vfiomond_test_calls"]


def test_name_filter_is_served_from_the_shared_collection():
    from vfiomond.exposition import SharedCollection

    registry = CollectorRegistry(auto_describe=False)
    registry.register(OneVm())
    srv = serve("127.0.0.1", 0, SharedCollection(registry))
    try:
        url = "http://127.0.0.1:%d/metrics?name[]=vfiomond_process_memlock_limit_bytes" % srv.server_address[1]
        status, _, body = get(url)
    finally:
        srv.shutdown()
        srv.server_close()
    lines = [line for line in body.splitlines() if not line.startswith("#")]
    assert status == 200 and len(lines) == 1 and lines[0].startswith("vfiomond_process_memlock_limit_bytes{")
