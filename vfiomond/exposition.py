"""The HTTP endpoint: /metrics through prometheus_client, a landing page at /.

With a web configuration (vfiomond.webconfig: the exporter-toolkit file of
``--web.config.file``) the socket speaks TLS and every path asks for basic auth.
Each connection is served in its own thread, TLS handshake included, under a
timeout: a client that connects and sends nothing holds its own thread only.
At most one collection runs at a time (SharedCollection): requests that arrive
while one runs are answered from it, so many scrapers, or a scraper that gives
up and retries while a slow collection is still running, do not multiply its cost.
"""

import html
import logging
import socket
import ssl
import sys
import threading
from socketserver import ThreadingMixIn
from typing import Optional
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

from prometheus_client import make_wsgi_app
from prometheus_client.core import CounterMetricFamily, Metric

from vfiomond import __version__, webconfig

log = logging.getLogger("vfiomond")
# Seconds a connection may take to send its first bytes and finish the TLS handshake,
# and (REQUEST_TIMEOUT) that each later read or write of the request may take.
HANDSHAKE_TIMEOUT = 10.0
REQUEST_TIMEOUT = 30.0
WEB_CONFIG = "vfiomond.web_config"  # the WSGI environ key of the connection's WebConfig
NOT_TLS = (b"HTTP/1.0 400 Bad Request\r\nContent-Type: text/plain; charset=utf-8\r\nConnection: close\r\n\r\n"
           b"Client sent an HTTP request to an HTTPS server.\n")

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


class _Flight:
    """One collection of the wrapped registry, shared by the requests that wait on it."""

    def __init__(self):
        self.done = threading.Event()
        self.families: list = []
        self.error: Optional[BaseException] = None


class SharedCollection:
    """A registry for the HTTP endpoint that runs at most one collection of
    ``registry`` at a time: a request that arrives while a collection runs waits for
    it and is answered with its families (collected at most one collection's time
    before the request; a scrape's samples carry the scrape's time anyway).

    Why: each collection reads every BPF map and the VFIO users in /proc, and the
    HTTP server serves each connection in its own thread.  A scraper that times out
    (Prometheus cancels at scrape_timeout) leaves its collection running; with
    parallel collections, the next scrape competes with it for the interpreter,
    takes longer, times out in turn, and the collections pile up until no scrape
    succeeds.  Sharing the running one bounds the cost to one collection at a time,
    whatever the number of scrapers.

    Collects the counter ``vfiomond_scrapes_shared_total`` itself (register it into
    ``registry`` with ``registry.register(shared.counter())``).
    """

    def __init__(self, registry):
        self._registry = registry
        self._lock = threading.Lock()
        self._flight: Optional[_Flight] = None
        self.shared = 0  # requests answered from a collection another request started

    def collect(self):
        """The families of one collection, as a list; re-raises what the shared
        collection raised."""
        with self._lock:
            flight = self._flight
            leader = flight is None
            if leader:
                flight = self._flight = _Flight()
            else:
                self.shared += 1
        if leader:
            try:
                flight.families = list(self._registry.collect())
            except BaseException as e:  # every waiter gets the error, as the leader does
                flight.error = e
            finally:
                with self._lock:
                    self._flight = None
                flight.done.set()
        else:
            flight.done.wait()
        if flight.error is not None:
            raise flight.error
        return flight.families

    def restricted_registry(self, names):
        """What ``/metrics?name[]=...`` asks for (prometheus_client calls this): the
        shared collection's samples whose name is in ``names``."""
        return _Restricted(self, set(names))

    def counter(self):
        """A collector of ``vfiomond_scrapes_shared_total``."""
        owner = self

        class _SharedCounter:
            def collect(self):
                c = CounterMetricFamily(
                    "vfiomond_scrapes_shared", "Scrape requests answered from a collection that was already "
                    "running for another request (at most one collection runs at a time).")
                c.add_metric([], owner.shared)
                yield c

        return _SharedCounter()


class _Restricted:
    def __init__(self, shared: SharedCollection, names: set):
        self.shared, self.names = shared, names

    def collect(self):
        for family in self.shared.collect():
            samples = [s for s in family.samples if s.name in self.names]
            if samples:
                part = Metric(family.name, family.documentation, family.type, family.unit)
                part.samples = samples
                yield part


class _Server(ThreadingMixIn, WSGIServer):
    daemon_threads = True
    allow_reuse_address = True
    thread: threading.Thread
    web = None  # webconfig.Watched or webconfig.Fixed: the configuration of each new connection
    connections = threading.local()  # .web: the WebConfig of the connection this thread serves

    def thread_alive(self) -> bool:
        """Whether the accepting thread still runs (the watchdog pings only then)."""
        return self.thread.is_alive()

    def finish_request(self, request, client_address):
        """In the connection's own thread (ThreadingMixIn): the TLS handshake, then the request."""
        web = self.connections.web = self.web.current() if self.web is not None else None
        if web is None or not web.tls:
            return super().finish_request(request, client_address)
        conn = _tls_accept(request, client_address, web)
        if conn is None:
            return None
        try:
            return super().finish_request(conn, client_address)
        finally:
            self.shutdown_request(conn)  # the plain socket, detached by the TLS one, has nothing left to close

    def handle_error(self, request, client_address):
        """A client that went away or timed out is not a traceback on stderr."""
        if isinstance(sys.exc_info()[1], OSError):
            log.debug("HTTP connection from %s: %s", client_address[0], sys.exc_info()[1])
            return
        super().handle_error(request, client_address)


def _tls_accept(sock: socket.socket, client_address, web: "webconfig.WebConfig"):
    """The TLS socket once the handshake is done (and the client certificate's SANs
    allowed), or None with ``sock`` closed.  A plain HTTP request gets a 400 in
    plain HTTP, as Go's servers answer it."""
    sock.settimeout(HANDSHAKE_TIMEOUT)
    try:
        first = sock.recv(1, socket.MSG_PEEK)
        if first and first != b"\x16":  # not a TLS handshake record
            _refuse_plain_http(sock)
            first = b""
        if not first:
            sock.close()
            return None
        conn = web.ssl_context().wrap_socket(sock, server_side=True)
    except OSError as e:  # ssl.SSLError, timeouts, resets
        log.debug("TLS handshake with %s failed: %s", client_address[0], e)
        sock.close()
        return None
    if not web.peer_allowed(conn.getpeercert()):
        log.info("TLS client %s refused: no SAN of its certificate is in client_allowed_sans", client_address[0])
        conn.close()
        return None
    return conn


def _refuse_plain_http(sock: socket.socket) -> None:
    """Answer 400, then read what the client sent until it closes (briefly): closing
    with its request unread would reset the connection before it reads the answer."""
    sock.sendall(NOT_TLS)
    sock.shutdown(socket.SHUT_WR)
    sock.settimeout(1.0)
    for _ in range(16):
        if not sock.recv(4096):
            break


class _Server6(_Server):
    address_family = socket.AF_INET6


class _QuietHandler(WSGIRequestHandler):
    timeout = REQUEST_TIMEOUT

    def log_message(self, format, *args):  # noqa: A002 (stdlib signature)
        pass

    def get_environ(self):
        env = super().get_environ()
        env[WEB_CONFIG] = getattr(self.server.connections, "web", None)
        if isinstance(self.connection, ssl.SSLSocket):
            env["HTTPS"] = "on"
        return env


def secured(inner):
    """``inner`` behind the connection's web configuration: its response headers
    on every answer, and basic auth on every path (401 without the right user and
    password)."""

    def dispatch(environ, start_response):
        web = environ.get(WEB_CONFIG)
        if web is None:
            return inner(environ, start_response)

        def start(status, headers, exc_info=None):
            return start_response(status, list(headers) + web.headers, exc_info)

        if not web.check_auth(environ.get("HTTP_AUTHORIZATION")):
            start("401 Unauthorized", [("Content-Type", "text/plain; charset=utf-8"),
                                       ("WWW-Authenticate", 'Basic realm="%s"' % webconfig.REALM)])
            return [b"Unauthorized\n"]
        return inner(environ, start)

    return dispatch


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


def serve(host: str, port: int, registry, web_config=None):
    """Start serving in a daemon thread; returns the server (call .shutdown()).
    ``registry``: anything with prometheus_client's ``collect()``; the daemon
    passes a SharedCollection, so that concurrent requests share one collection.

    ``web_config``: None or "" (plain HTTP, no auth), the path of a web
    configuration file (read now, and again whenever it or a file it names
    changes), or a loaded webconfig.WebConfig.  Raises OSError when the address
    cannot be bound, ConfigError when the web configuration does not load.
    """
    web = None
    if isinstance(web_config, webconfig.WebConfig):
        web = webconfig.Fixed(web_config)
    elif web_config:
        web = webconfig.Watched(web_config)
    server_class = _Server6 if ":" in host else _Server
    bind = host or ("::" if socket.has_ipv6 and _ipv6_works() else "0.0.0.0")
    if ":" in bind:
        server_class = _Server6
    server = make_server(bind, port, secured(app(registry)), server_class, _QuietHandler)
    server.web = web
    if web is not None:
        config = web.current()
        log.info("web config %s: %s", config.path, config.summary())
        config.log_notes()
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
