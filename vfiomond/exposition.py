"""The HTTP endpoint: /metrics through prometheus_client, a landing page at /."""

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
</body></html>
"""


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
    landing = LANDING.format(version=__version__).encode()

    def dispatch(environ, start_response):
        if environ.get("PATH_INFO", "/") in ("", "/"):
            start_response("200 OK", [("Content-Type", "text/html; charset=utf-8")])
            return [landing]
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
