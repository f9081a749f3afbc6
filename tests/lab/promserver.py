"""A real Prometheus server (Debian package ``prometheus``, installed by ``make
deps``) on the lab host: it scrapes the guest's vfiomond every second through the
forwarded port, loads grafana/vfiomond-alerts.yml, and answers the dashboard's
queries over its HTTP API.

    server = PrometheusServer(target_port=40123, workdir="/tmp/x")
    server.start(); ...; report = server.report(); server.stop()

Against a vfiomond with a web configuration (--web.config.file): ``scheme="https"``,
``ca_file`` and ``server_name`` (tls_config), ``basic_auth=(user, password)``.
"""

import json
import os
import re
import shutil
import socket
import subprocess
import sys
import time
import urllib.parse
import urllib.request
from typing import Dict, List, Optional, Tuple

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
RULES = os.path.join(REPO, "grafana", "vfiomond-alerts.yml")
DASHBOARD = os.path.join(REPO, "grafana", "vfiomond.json")
JOB = "vfiomond"
# What Grafana sends for the dashboard's variables: every value ("All").
RATE_INTERVAL = "1m"


class PrometheusError(Exception):
    pass


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def dashboard_queries() -> List[Tuple[str, str]]:
    """(where, expr) for every panel target, annotation and query variable of the dashboard."""
    with open(DASHBOARD) as f:
        d = json.load(f)
    out = []
    for p in d["panels"]:
        for panel in [p] + p.get("panels", []):
            for t in panel.get("targets", []):
                out.append(("panel %s (%s) %s" % (panel["id"], panel["title"], t["refId"]), t["expr"]))
    for a in d["annotations"]["list"]:
        if a.get("expr"):
            out.append(("annotation %s" % a["name"], a["expr"]))
    for v in d["templating"]["list"]:
        q = v.get("query")
        q = q.get("query") if isinstance(q, dict) else q
        m = re.fullmatch(r"label_values\((.+), \w+\)", q or "")
        if v.get("type") == "query" and m:
            out.append(("variable " + v["name"], m.group(1)))
    return out


def as_grafana_sends(expr: str) -> str:
    expr = expr.replace("$__rate_interval", RATE_INTERVAL).replace("$__interval", "15s").replace("$__range", "1h")
    return re.sub(r"\$\{\w+\}|\$\w+|\[\[\w+\]\]", ".*", expr)


def filters_anomalies(expr: str) -> bool:
    """A query that keeps only series past a threshold (``> 0``, ``== 0``, ``< +Inf``):
    no data from it can mean that nothing is wrong."""
    return bool(re.search(r"(?:[<>]=?|[!=]=)\s*(?:bool\s+)?[-+]?(?:\d[\d.]*|Inf)\b", expr))


class PrometheusServer:
    def __init__(self, target_port: int, workdir: str, interval: str = "2s", scheme: str = "http",
                 ca_file: Optional[str] = None, server_name: Optional[str] = None,
                 basic_auth: Optional[Tuple[str, str]] = None):
        self.binary = shutil.which("prometheus")
        if self.binary is None:
            raise PrometheusError("prometheus not found: run `make deps` (Debian package prometheus)")
        self.workdir = workdir
        self.port = _free_port()
        self.target = "127.0.0.1:%d" % target_port
        self.interval = interval
        self.scheme = scheme
        self.ca_file = ca_file
        self.server_name = server_name
        self.basic_auth = basic_auth
        self.proc = None
        self.started = 0.0

    def _config(self) -> str:
        path = os.path.join(self.workdir, "prometheus.yml")
        with open(path, "w") as f:
            f.write("global:\n  scrape_interval: %s\n  evaluation_interval: %s\n" % (self.interval, self.interval))
            f.write("rule_files: [%s]\n" % json.dumps(RULES))
            f.write("scrape_configs:\n  - job_name: %s\n" % JOB)
            f.writelines("    %s\n" % line for line in self._scrape_security())
            f.write("    static_configs:\n      - targets: [%s]\n" % json.dumps(self.target))
        return path

    def _scrape_security(self) -> List[str]:
        """The scrape config's scheme, tls_config and basic_auth lines (none by default);
        the password goes to a file of the work directory (password_file)."""
        lines = []
        if self.scheme != "http":
            lines.append("scheme: %s" % self.scheme)
        tls = [(k, v) for k, v in (("ca_file", self.ca_file), ("server_name", self.server_name)) if v]
        if tls:
            lines.append("tls_config:")
            lines.extend("  %s: %s" % (k, json.dumps(v)) for k, v in tls)
        if self.basic_auth:
            user, password = self.basic_auth
            secret = os.path.join(self.workdir, "scrape-password")
            with open(os.open(secret, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600), "w") as f:
                f.write(password)
            lines.extend(["basic_auth:", "  username: %s" % json.dumps(user), "  password_file: %s" % json.dumps(secret)])
        return lines

    def start(self, timeout: float = 60) -> None:
        os.makedirs(self.workdir, exist_ok=True)
        self.started = time.time()
        cmd = [self.binary, "--config.file=" + self._config(), "--storage.tsdb.path=" + os.path.join(self.workdir, "data"),
               "--web.listen-address=127.0.0.1:%d" % self.port, "--storage.tsdb.retention.time=1d"]
        self.proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                     stderr=open(os.path.join(self.workdir, "prometheus.log"), "w"))
        deadline = time.monotonic() + timeout
        while True:
            try:
                with urllib.request.urlopen(self.url("/-/ready"), timeout=2):
                    return
            except OSError:
                if self.proc.poll() is not None or time.monotonic() > deadline:
                    raise PrometheusError("prometheus did not start; see %s/prometheus.log" % self.workdir)
                time.sleep(0.3)

    def url(self, path: str) -> str:
        return "http://127.0.0.1:%d%s" % (self.port, path)

    def api(self, path: str, **params) -> dict:
        url = self.url("/api/v1/" + path) + ("?" + urllib.parse.urlencode(params) if params else "")
        try:
            with urllib.request.urlopen(url, timeout=30) as r:
                return json.load(r)
        except urllib.error.HTTPError as e:  # a bad query answers 400 with a JSON error
            return json.load(e)

    def wait_for_scrapes(self, count: int, timeout: float = 60) -> None:
        """Until ``count`` scrapes of the target succeeded within the last minute."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            r = self.api("query", query='sum_over_time(up{job="%s"}[1m])' % JOB)
            if r.get("status") == "success" and r["data"]["result"] and float(r["data"]["result"][0]["value"][1]) >= count:
                return
            time.sleep(0.5)
        raise PrometheusError("the lab target was not scraped %d times within %d s" % (count, timeout))

    def report(self) -> Dict[str, list]:
        """Every dashboard query over the time this server ran, as a Grafana panel
        showing that range asks for it (status, series with a number in the range),
        and every alert rule (health, state)."""
        queries = []
        end = time.time()
        for where, expr in dashboard_queries():
            sent = as_grafana_sends(expr)
            r = self.api("query_range", query=sent, start="%.3f" % self.started, end="%.3f" % end, step="1")
            result = r.get("data", {}).get("result", []) if r.get("status") == "success" else []
            # NaN is no data (a quantile of nothing); +Inf is a value (an unlimited RLIMIT_MEMLOCK).
            numbers = [s for s in result if any(v != "NaN" for _, v in s["values"])]
            queries.append({"where": where, "expr": sent, "status": r.get("status"), "error": r.get("error"),
                            "series": len(numbers), "filters_anomalies": filters_anomalies(sent)})
        rules = []
        for group in self.api("rules").get("data", {}).get("groups", []):
            for rule in group["rules"]:
                rules.append({"name": rule["name"], "health": rule["health"], "error": rule.get("lastError", ""),
                              "state": rule.get("state"), "query": rule["query"],
                              "evaluated": rule.get("lastEvaluation", "").startswith("20")})
        targets = [{"health": t["health"], "error": t.get("lastError", ""),
                    "scheme": urllib.parse.urlparse(t.get("scrapeUrl", "")).scheme}
                   for t in self.api("targets").get("data", {}).get("activeTargets", [])]
        return {"queries": queries, "rules": rules, "targets": targets, "scrapes": self._scrapes(end)}

    def _scrapes(self, end: float) -> Dict[str, float]:
        """Scrapes of the target since vfiomond first answered: how many succeeded, and the longest."""
        def values(expr):
            r = self.api("query_range", query=expr, start="%.3f" % self.started, end="%.3f" % end, step=self.interval)
            result = r.get("data", {}).get("result", [])
            return [float(v) for _, v in result[0]["values"]] if result else []

        up = values('up{job="%s"}' % JOB)
        first = up.index(1.0) if 1.0 in up else len(up)
        durations = values('scrape_duration_seconds{job="%s"}' % JOB)[first:]
        return {"up": up[first:].count(1.0), "down": up[first:].count(0.0), "longest_seconds": max(durations or [0.0])}

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.proc.kill()


def main() -> int:
    """Print the report for a Prometheus target already listening: promserver.py PORT."""
    import tempfile

    server = PrometheusServer(int(sys.argv[1]), tempfile.mkdtemp(prefix="vfiomond-prometheus-"))
    server.start()
    try:
        server.wait_for_scrapes(5)
        print(json.dumps(server.report(), indent=1))
    finally:
        server.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
