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
