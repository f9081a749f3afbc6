"""The HTTP endpoint: /metrics through prometheus_client, a landing page at /."""

import html
import socket
import threading
from socketserver import ThreadingMixIn
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

from prometheus_client import make_wsgi_app

from vfiomond import __version__

LANDING = """<!DOCTYPE html>
<html><head><title>vfiomond</title></head>
<body><h1>vfiomond {version}</h1>
<p>Prometheus exporter for VFIO hosts: BAR faults, DMA mapping, pinning and locked_vm accounting.</p>
<p><a href="/metrics">Metrics</a></p>
{users}
</body></html>
"""
GIB = float(1 << 30)
# Columns of the landing page's table of VFIO users: (heading, series); a series with a
# backend label is summed over the backends.
USER_COLUMNS = (
    ("DMA-mapped GiB", "vfiomond_process_dma_mapped_bytes"),
    ("locked_vm GiB", "vfiomond_process_locked_vm_bytes"),
    ("pinned_vm GiB", "vfiomond_process_pinned_vm_bytes"),
    ("RLIMIT_MEMLOCK GiB", "vfiomond_process_memlock_limit_bytes"),
    ("memlock needed GiB", "vfiomond_process_memlock_required_bytes"),
    ("pinning s", "vfiomond_process_dma_map_seconds_total"),
)


def users_table(registry) -> str:
    """The VFIO users now, one row per process: its VM, the devices it holds and its
    DMA and memlock figures, from one collection of ``registry`` (what a scrape sees)."""
    rows: dict = {}
    for family in registry.collect():
        for sample in family.samples:
            pid = sample.labels.get("pid")
            if pid is None or not sample.name.startswith(("vfiomond_process_", "vfiomond_device_holder_info")):
                continue
            row = rows.setdefault(pid, {"comm": sample.labels.get("comm", ""), "vm": sample.labels.get("vm", ""),
                                        "devices": set()})
            if sample.name == "vfiomond_device_holder_info":
                row["devices"].add(sample.labels["device"])
            else:
                row[sample.name] = row.get(sample.name, 0.0) + sample.value  # summed over backends
    if not rows:
        return "<p>No VFIO users now.</p>"
    head = "".join("<th>%s</th>" % h for h in ("PID", "comm", "VM", "devices") + tuple(c[0] for c in USER_COLUMNS))
    body = []
    for pid in sorted(rows, key=int):
        row = rows[pid]
        cells = [pid, html.escape(row["comm"]), html.escape(row["vm"]), html.escape(" ".join(sorted(row["devices"])))]
        for heading, name in USER_COLUMNS:
            value = row.get(name)
            cells.append("" if value is None else "%.3f" % (value if name.endswith("_seconds_total") else value / GIB))
        body.append("<tr>%s</tr>" % "".join("<td>%s</td>" % c for c in cells))
    return "<h2>VFIO users</h2>\n<table border=\"1\"><tr>%s</tr>\n%s\n</table>" % (head, "\n".join(body))


class _Server(ThreadingMixIn, WSGIServer):
    daemon_threads = True
    allow_reuse_address = True
    thread: threading.Thread

    def thread_alive(self) -> bool:
        """Whether the accepting thread still runs (the watchdog pings only then)."""
        return self.thread.is_alive()


class _Server6(_Server):
    address_family = socket.AF_INET6


class _QuietHandler(WSGIRequestHandler):
    def log_message(self, format, *args):  # noqa: A002 (stdlib signature)
        pass


def app(registry):
    metrics = make_wsgi_app(registry)

    def dispatch(environ, start_response):
        if environ.get("PATH_INFO", "/") in ("", "/"):
            start_response("200 OK", [("Content-Type", "text/html; charset=utf-8")])
            return [LANDING.format(version=__version__, users=users_table(registry)).encode()]
        if environ.get("PATH_INFO") == "/metrics":
            return metrics(environ, start_response)
        start_response("404 Not Found", [("Content-Type", "text/plain")])
        return [b"not found: try /metrics\n"]

    return dispatch


def serve(host: str, port: int, registry):
    """Start serving in a daemon thread; returns the server (call .shutdown()).

    Raises OSError when the address cannot be bound.
    """
    server_class = _Server6 if ":" in host else _Server
    bind = host or ("::" if socket.has_ipv6 and _ipv6_works() else "0.0.0.0")
    if ":" in bind:
        server_class = _Server6
    server = make_server(bind, port, app(registry), server_class, _QuietHandler)
    server.thread = threading.Thread(target=server.serve_forever, name="http", daemon=True)
    server.thread.start()
    return server


def _ipv6_works() -> bool:
    try:
        with socket.socket(socket.AF_INET6, socket.SOCK_STREAM) as s:
            s.bind(("::", 0))
        return True
    except OSError:
        return False
