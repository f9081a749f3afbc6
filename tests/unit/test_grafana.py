"""The Grafana dashboard and the Prometheus alert rules in grafana/.

promtool (Debian package ``prometheus``, installed by ``make deps``) checks and
unit-tests the rules, checks that every dashboard query is valid PromQL, and
evaluates every dashboard query against a host's worth of series shaped like
vfiomond's exposition (each must return data). The rest is read with the
standard library only: no PyYAML.
"""

import json
import pathlib
import re
import shutil
import subprocess
from typing import Dict, List, Set, Tuple

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[2]
GRAFANA = ROOT / "grafana"
DASHBOARD = GRAFANA / "vfiomond.json"
RULES = GRAFANA / "vfiomond-alerts.yml"
RULES_TEST = GRAFANA / "vfiomond-alerts_test.yml"
RUNBOOK = GRAFANA / "RUNBOOK.md"
METRICS_DOC = ROOT / "docs" / "metrics.md"

DATASOURCE = {"type": "prometheus", "uid": "${datasource}"}
RUNBOOK_URL = "https://github.com/vfiomond/vfiomond/blob/main/grafana/RUNBOOK.md#"
SEVERITIES = {"critical", "warning", "info"}

METRIC = re.compile(r"\bvfiomond_[a-z0-9_]+\b")
HISTOGRAM_SUFFIXES = ("_bucket", "_sum", "_count")


# --------------------------------------------------------------------- helpers

def promtool() -> str:
    path = shutil.which("promtool")
    if path is None:
        pytest.fail("promtool not found: run `make deps` (it comes from Debian's `prometheus` package)")
    return path


def run_promtool(*args: str, cwd: pathlib.Path = ROOT) -> str:
    proc = subprocess.run([promtool(), *args], cwd=str(cwd), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                          universal_newlines=True, timeout=120)
    assert proc.returncode == 0, "promtool %s failed (exit %d):\n%s" % (" ".join(args), proc.returncode, proc.stdout)
    return proc.stdout


def dashboard() -> dict:
    return json.loads(DASHBOARD.read_text())


def panels() -> List[dict]:
    out = []
    for p in dashboard()["panels"]:
        out.append(p)
        out.extend(p.get("panels", []))  # collapsed rows hold their panels
    return out


def queries() -> List[Tuple[str, str]]:
    """(where, expr) of every panel target and annotation query."""
    out = []
    for p in panels():
        for t in p.get("targets", []):
            out.append(("panel %s (%s) %s" % (p["id"], p["title"], t["refId"]), t["expr"]))
    for a in dashboard()["annotations"]["list"]:
        if a.get("expr"):
            out.append(("annotation %s" % a["name"], a["expr"]))
    return out


def variables() -> Dict[str, dict]:
    return {v["name"]: v for v in dashboard()["templating"]["list"]}


def variable_query(v: dict) -> str:
    q = v.get("query")
    return q["query"] if isinstance(q, dict) else q


def substitute(expr: str) -> str:
    """A dashboard query as Prometheus would receive it from Grafana."""
    expr = expr.replace("$__rate_interval", "5m").replace("$__interval", "1m").replace("$__range", "1h")
    expr = re.sub(r"\$\{datasource\}|\$datasource", "prometheus", expr)
    return re.sub(r"\$\{\w+\}|\$\w+|\[\[\w+\]\]", ".*", expr)


def rule_blocks() -> List[Dict[str, str]]:
    """Each rule of the rules file as {key: text}, for the keys alert, record,
    expr (block scalars joined), for, severity, summary, description, runbook_url."""
    lines = RULES.read_text().splitlines()
    rules: List[Dict[str, str]] = []
    i = 0
    while i < len(lines):
        line = lines[i]
        m = re.match(r"^(\s*)- (alert|record): (\S+)\s*$", line)
        if m:
            rules.append({m.group(2): m.group(3)})
            i += 1
            continue
        m = re.match(r"^(\s*)(expr|for|severity|summary|description|runbook_url):\s*(.*)$", line)
        if m and rules:
            indent, key, value = len(m.group(1)), m.group(2), m.group(3).strip()
            if value in ("|", ">", "|-", ">-"):
                body = []
                i += 1
                while i < len(lines) and (not lines[i].strip() or len(lines[i]) - len(lines[i].lstrip()) > indent):
                    body.append(lines[i].strip())
                    i += 1
                rules[-1][key] = ("\n" if value.startswith("|") else " ").join(body).strip()
                continue
            rules[-1][key] = value
        i += 1
    return rules


def documented_metrics() -> Set[str]:
    """Metric names in the first column of docs/metrics.md's Metrics table."""
    text = METRICS_DOC.read_text()
    section = text.split("\n## Metrics", 1)[1].split("\n## ", 1)[0]
    names = set()
    for line in section.splitlines():
        if line.startswith("|"):
            first = line.split("|")[1]
            names.update(n for n in re.findall(r"`([^`]+)`", first) if METRIC.fullmatch(n))
    assert len(names) > 20, "could not read the Metrics table of docs/metrics.md"
    return names


def base_name(name: str, known: Set[str]) -> str:
    for suffix in HISTOGRAM_SUFFIXES:
        if name.endswith(suffix) and name[: -len(suffix)] in known:
            return name[: -len(suffix)]
    return name


# --------------------------------------------------------------------- alert rules

def test_rules_check():
    out = run_promtool("check", "rules", "--lint=all", "--lint-fatal", str(RULES.relative_to(ROOT)))
    assert "SUCCESS" in out


def test_rules_unit_tests():
    out = run_promtool("test", "rules", str(RULES_TEST.relative_to(ROOT)))
    assert "SUCCESS" in out


def test_rules_follow_the_mixin_conventions():
    rules = rule_blocks()
    alerts = [r for r in rules if "alert" in r]
    assert alerts and len(alerts) == len(rules)
    assert re.search(r"^\s*- name: vfiomond\s*$", RULES.read_text(), re.M)
    for r in alerts:
        name = r["alert"]
        assert re.fullmatch(r"Vfiomond(?:[A-Z][a-z0-9]*)+", name), name
        assert r.get("severity") in SEVERITIES, name
        assert r.get("summary") and r.get("description"), name
        assert "{{ $labels.instance }}" in r["description"], name
        assert r.get("runbook_url") == RUNBOOK_URL + name.lower(), name


def test_every_alert_has_a_runbook_section_and_a_unit_test():
    names = {r["alert"] for r in rule_blocks()}
    headings = set(re.findall(r"^## (Vfiomond\w+)\s*$", RUNBOOK.read_text(), re.M))
    assert names <= headings, "RUNBOOK.md lacks sections for %s" % sorted(names - headings)
    assert headings <= names, "RUNBOOK.md has sections for unknown alerts %s" % sorted(headings - names)
    tested = set(re.findall(r"^\s*alertname: (\w+)\s*$", RULES_TEST.read_text(), re.M))
    assert names <= tested, "no promtool test for %s" % sorted(names - tested)
    # each alert has at least one case where it fires
    firing = set(re.findall(r"alertname: (\w+)\n\s*exp_alerts:\n\s*- exp_labels:", RULES_TEST.read_text()))
    assert names <= firing, "no firing case for %s" % sorted(names - firing)


# --------------------------------------------------------------------- dashboard

def test_dashboard_structure():
    d = dashboard()
    assert d["uid"] == "vfiomond" and d["title"] and d["schemaVersion"] >= 36
    assert DASHBOARD.read_text().startswith('{\n  "'), "keep the JSON indented by 2"
    ids = [p["id"] for p in panels()]
    assert len(ids) == len(set(ids)), "duplicate panel ids"
    rows = [p["title"] for p in d["panels"] if p["type"] == "row"]
    assert [r.split(" (")[0] for r in rows] == ["Fleet overview", "Host detail", "Device detail", "Device health"]
    taken: Dict[Tuple[int, int], int] = {}
    for p in panels():
        g = p["gridPos"]
        assert g["x"] >= 0 and g["w"] > 0 and g["x"] + g["w"] <= 24, p["id"]
        for x in range(g["x"], g["x"] + g["w"]):
            for y in range(g["y"], g["y"] + g["h"]):
                assert (x, y) not in taken, "panels %s and %s overlap" % (taken[(x, y)], p["id"])
                taken[(x, y)] = p["id"]


def test_dashboard_variables():
    v = variables()
    assert v["datasource"]["type"] == "datasource" and v["datasource"]["query"] == "prometheus"
    assert variable_query(v["job"]) == "label_values(vfiomond_build_info, job)"
    assert variable_query(v["instance"]) == 'label_values(vfiomond_build_info{job=~"$job"}, instance)'
    assert variable_query(v["device"]).startswith("label_values(vfiomond_device_info{")
    assert 'instance=~"$instance"' in variable_query(v["device"])
    for name in ("instance", "device"):
        assert v[name]["multi"] and v[name]["includeAll"], name
    for name in ("job", "instance", "device"):
        assert v[name]["datasource"] == DATASOURCE, name


def test_every_panel_has_the_datasource_and_a_unit():
    for p in panels():
        assert p.get("datasource") == DATASOURCE, "panel %s" % p["id"]
        if p["type"] == "row":
            continue
        assert p["targets"], "panel %s has no query" % p["id"]
        for t in p["targets"]:
            assert t.get("datasource") == DATASOURCE, "panel %s %s" % (p["id"], t["refId"])
        assert p["fieldConfig"]["defaults"].get("unit"), "panel %s (%s) has no unit" % (p["id"], p["title"])


def test_rates_use_rate_interval():
    for where, expr in queries():
        for fn in re.findall(r"\b(\w+)\(", expr):
            assert fn not in ("irate", "delta", "idelta"), "%s: %s" % (where, fn)
        calls = len(re.findall(r"\b(?:rate|increase)\(", expr))
        ranges = re.findall(r"\[([^\]]*)\]", expr)
        assert ranges == ["$__rate_interval"] * calls, "%s: every rate/increase needs [$__rate_interval]: %s" % (where, expr)


def test_every_selector_filters_job_and_instance():
    for where, expr in queries():
        assert 'instance=~"$instance"' in expr, where
        for m in re.finditer(r"\b(vfiomond_[a-z0-9_]+|up|ALERTS)\b(?!\s*\()", expr):
            rest = expr[m.end():]
            assert rest.startswith("{"), "%s: %s has no label filter" % (where, m.group(1))
            matchers = rest[: rest.index("}")]
            assert 'job=~"$job"' in matchers and 'instance=~"$instance"' in matchers, "%s: %s" % (where, m.group(1))


def test_fleet_overview_aggregates_per_host():
    """Fleet panels must stay readable with many hosts: no per-pid series."""
    d = dashboard()["panels"]
    fleet = d[1: next(i for i, p in enumerate(d) if p["type"] == "row" and i > 0)]
    for p in fleet:
        for t in p["targets"]:
            expr = t["expr"]
            if p["type"] == "timeseries":
                assert re.match(r"(topk\(\d+, )?sum\b", expr), "panel %s: aggregate fleet time series" % p["id"]
            assert "pid" not in expr, p["id"]


def test_metrics_are_documented():
    known = documented_metrics()
    used = set()
    for _, expr in queries():
        used.update(METRIC.findall(expr))
    for v in variables().values():
        used.update(METRIC.findall(variable_query(v) or ""))
    for r in rule_blocks():
        used.update(METRIC.findall(r.get("expr", "")))
    unknown = {n for n in used if base_name(n, known) not in known}
    assert not unknown, "not in docs/metrics.md's Metrics table: %s" % sorted(unknown)
    for n in used:  # histogram suffixes only on histograms
        if n not in known:
            assert base_name(n, known).endswith("_seconds"), n


def test_dashboard_queries_are_valid_promql(tmp_path):
    lines = ["groups:", "  - name: dashboard", "    rules:"]
    for i, (where, expr) in enumerate(queries()):
        lines += ["      - record: dashboard_query_%d" % i, "        expr: %s" % json.dumps(substitute(expr))]
    for name, v in sorted(variables().items()):
        m = re.fullmatch(r"label_values\((.+), \w+\)", variable_query(v))
        if m:
            lines += ["      - record: dashboard_variable_%s" % name, "        expr: %s" % json.dumps(substitute(m.group(1)))]
    rules = tmp_path / "dashboard-queries.yml"
    rules.write_text("\n".join(lines) + "\n")
    out = run_promtool("check", "rules", "--lint=none", str(rules))
    assert "SUCCESS: %d rules found" % (len(queries()) + 3) in out, out


# --------------------------------------------------------------------- queries on data

J = 'job="vfiomond", instance="hv1:10119"'
D3 = J + ', device="0000:00:03.0"'
P1 = J + ', pid="4242", comm="qemu-system-x86", vm="guest1"'
# le bounds of vfiomond's log2 histograms: (2^i - 1) ns
LE = ("1.023e-06", "1.6383e-05", "0.000262143", "0.004194303", "0.067108863", "+Inf")


def histogram(name: str, labels: str, per_minute: int) -> List[Tuple[str, str]]:
    out = []
    for i, le in enumerate(LE):
        n = per_minute * (i + 1) // len(LE)
        out.append(('%s_bucket{%s, le="%s"}' % (name, labels, le), "0+%dx60" % n))
    out.append(("%s_count{%s}" % (name, labels), "0+%dx60" % per_minute))
    out.append(("%s_sum{%s}" % (name, labels), "0+0.01x60"))
    return out


# One host of each kind of series vfiomond exports, every anomaly present once,
# so that every panel (the "only hosts with events" ones too) has data.
SERIES: List[Tuple[str, str]] = [
    ('up{%s}' % J, "1x60"),
    ('up{job="vfiomond", instance="hv2:10119"}', "0x60"),
    ('vfiomond_build_info{%s, version="0.1.0", kernel="6.1.0-50-amd64"}' % J, "1x60"),
    ('vfiomond_probe_attached{%s, probe="bar_fault"}' % J, "1x60"),
    ('vfiomond_probe_attached{%s, probe="remap_pfn_range"}' % J, "0x60"),
    ('vfiomond_probe_info{%s, probe="bar_fault", symbols="vfio_pci_mmap_fault"}' % J, "1x60"),
    ('vfiomond_scrape_collector_success{%s, collector="faults"}' % J, "0x60"),
    ('vfiomond_scrape_collector_success{%s, collector="type1"}' % J, "1x60"),
    ('vfiomond_scrape_collector_duration_seconds{%s, collector="type1"}' % J, "0.002x60"),
    ('vfiomond_device_info{%s, vendor_id="1234", device_id="11e8", vendor="", model="",'
     ' iommu_group="2", driver="vfio-pci", numa_node="-1"}' % D3, "1x60"),
    ('vfiomond_device_users{%s}' % D3, "1x60"),
    ('vfiomond_bar_faults_concurrent_total{%s}' % D3, "0+1x60"),
    ('vfiomond_pfnmap_untrack_total{%s}' % D3, "0+1x60"),
    ('vfiomond_device_interrupts_total{%s, type="msix", vector="0"}' % D3, "0+50x60"),
    ('vfiomond_device_interrupt_vectors{%s, type="msix"}' % D3, "4x60"),
    ('vfiomond_device_aer_errors_total{%s, function="0000:00:1c.0", severity="correctable", error="RxErr"}' % D3,
     "0+2x60"),
    ('vfiomond_device_aer_messages_total{%s, function="0000:00:1c.0", severity="correctable"}' % D3, "0+2x60"),
    ('vfiomond_device_aer_root_port_messages_total{%s, root_port="0000:00:1c.0", severity="fatal"}' % D3, "0+1x60"),
    ('vfiomond_device_link_width{%s}' % D3, "8x60"),
    ('vfiomond_device_link_capable_width{%s}' % D3, "16x60"),
    ('vfiomond_device_link_speed_transfers_per_second{%s}' % D3, "8e9x60"),
    ('vfiomond_device_link_capable_speed_transfers_per_second{%s}' % D3, "16e9x60"),
    ('vfiomond_device_resets_total{%s, operation="function", method="flr", result="ok"}' % D3, "0+1x60"),
    ('vfiomond_device_reset_unresponsive_total{%s}' % D3, "0x30 1x30"),
    ('vfiomond_iommu_fault_interrupts_total{%s, iommu="dmar0"}' % J, "0+2x60"),
    ('vfiomond_iommu_faults_total{%s}' % D3, "0+1x60"),
    ('vfiomond_bar_dmabuf_exports_total{%s, result="ok"}' % D3, "0+1x60"),
    ('vfiomond_bar_dmabuf_revocations_total{%s, action="revoke"}' % D3, "0+1x60"),
    ('vfiomond_remap_pfn_range_bytes_total{%s, context="vfio_fault"}' % J, "0+1048576x60"),
    ('vfiomond_remap_pfn_range_errors_total{%s, context="vfio_fault", errno="ENOMEM"}' % J, "0+1x60"),
    ('vfiomond_dma_map_bytes_total{%s, backend="type1"}' % J, "0+4194304x60"),
    ('vfiomond_dma_unmap_bytes_total{%s, backend="type1"}' % J, "0+4194304x60"),
    ('vfiomond_dma_map_errors_total{%s, backend="type1", errno="ENOMEM"}' % J, "0+1x60"),
    ('vfiomond_dma_unmap_errors_total{%s, backend="type1", errno="EINVAL"}' % J, "0+1x60"),
    ('vfiomond_pinned_pages_total{%s, backend="type1"}' % J, "0+1024x60"),
    ('vfiomond_unpinned_pages_total{%s, backend="type1"}' % J, "0+1024x60"),
    ('vfiomond_locked_vm_charged_pages_total{%s, backend="type1"}' % J, "0+512x60"),
    ('vfiomond_locked_vm_uncharged_pages_total{%s, backend="type1"}' % J, "0+512x60"),
    ('vfiomond_locked_vm_charge_failures_total{%s, backend="type1"}' % J, "0+1x60"),
    ('vfiomond_zero_page_pins_total{%s, backend="type1"}' % J, "0+512x60"),
    ('vfiomond_process_locked_vm_bytes{%s}' % P1, "14680064x60"),
    ('vfiomond_process_pinned_vm_bytes{%s}' % P1, "0x60"),
    ('vfiomond_process_memlock_limit_bytes{%s}' % P1, "16777216x60"),
    ('vfiomond_process_dma_mapped_bytes{%s, backend="type1"}' % P1, "16777216x60"),
    ('vfiomond_process_charged_bytes{%s, backend="type1"}' % P1, "14680064x60"),
    ('vfiomond_process_uncharged_pinned_bytes{%s, backend="type1"}' % P1, "2097152x60"),
    ('vfiomond_process_locked_vm_charge_failures_total{%s, backend="type1"}' % P1, "0+1x60"),
    ('vfiomond_pin_samples{%s}' % J, "34x60"),
    ('vfiomond_pin_verifications_total{%s}' % J, "0+34x60"),
    ('vfiomond_pin_mismatches_total{%s}' % J, "0+1x60"),
    ('vfiomond_pin_mismatched_pages{%s, pid="4242", comm="qemu-system-x86"}' % J, "1x60"),
    ('vfiomond_kernel_events_total{%s, kind="bug", site="mm/memory.c", known_issue="vfio-concurrent-bar-fault"}' % J, "0+1x60"),
    ('vfiomond_kernel_events_total{%s, kind="iommu_fault", site="none", known_issue="none"}' % J, "0+1x60"),
    ('vfiomond_kernel_advisory_info{%s, id="ro-longterm-pin-divergence", severity="critical", status="affected"}' % J, "1x60"),
    ('vfiomond_alerts_total{%s, kind="pin_mismatch"}' % J, "0+1x60"),
    ('vfiomond_alerts_suppressed_total{%s, kind="pin_mismatch"}' % J, "0+1x60"),
    ('vfiomond_events_lost_total{%s, map="pin_events", reason="full"}' % J, "0+1x60"),
    ('ALERTS{%s, alertname="VfiomondPinMismatch", alertstate="firing", severity="critical"}' % J, "1x60"),
]
for _result in ("nopage", "sigbus"):
    SERIES += histogram("vfiomond_bar_fault_duration_seconds", D3 + ', region="bar0", order="0", result="%s"' % _result, 60)
SERIES += histogram("vfiomond_remap_pfn_range_duration_seconds", J + ', context="vfio_fault"', 60)
SERIES += histogram("vfiomond_device_reset_duration_seconds", D3 + ', operation="function", method="flr"', 2)
SERIES += histogram("vfiomond_dma_map_duration_seconds", J + ', backend="type1"', 6)
SERIES += histogram("vfiomond_dma_unmap_duration_seconds", J + ', backend="type1"', 6)


def test_every_dashboard_query_returns_data(tmp_path):
    """Each query runs in promtool's Prometheus engine on the series above and
    must return at least one sample that is a number (a NaN quantile is no data)."""
    all_queries = queries() + [
        ("variable " + name, re.fullmatch(r"label_values\((.+), \w+\)", variable_query(v)).group(1))
        for name, v in sorted(variables().items()) if v["type"] == "query"
    ]
    rules = ["groups:", "  - name: dashboard", "    rules:"]
    tests = ["rule_files: [dashboard-alerts.yml]", "evaluation_interval: 1m", "tests:", "  - interval: 1m",
             "    input_series:"]
    for series, values in SERIES:
        tests += ["      - series: %s" % json.dumps(series), "        values: %s" % json.dumps(values)]
    tests.append("    alert_rule_test:")
    names = {}
    for i, (where, expr) in enumerate(all_queries):
        name = "DashboardQuery%d" % i
        names[name] = where
        q = substitute(expr)
        rules += ["      - alert: %s" % name, "        expr: %s" % json.dumps("count((%s) == (%s))" % (q, q))]
        tests += ["      - eval_time: 30m", "        alertname: %s" % name, "        exp_alerts:", "          - exp_labels: {}"]
    (tmp_path / "dashboard-alerts.yml").write_text("\n".join(rules) + "\n")
    (tmp_path / "dashboard-test.yml").write_text("\n".join(tests) + "\n")
    proc = subprocess.run([promtool(), "test", "rules", "dashboard-test.yml"], cwd=str(tmp_path),
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT, universal_newlines=True, timeout=120)
    empty = sorted({names[n] for n in re.findall(r"alertname: (DashboardQuery\d+)", proc.stdout)})
    assert proc.returncode == 0, "queries without data: %s\n%s" % (empty, proc.stdout[-4000:])


def test_fault_rates_count_accesses_not_fallback_calls():
    """A huge-order call refused with VM_FAULT_FALLBACK is followed by a call at a smaller
    order for the same access: fault rates leave it out (the results panel shows it)."""
    def by_result(expr):
        return any("result" in labels for labels in re.findall(r"by \(([^)]*)\)", expr))

    rates = [(title, expr) for title, expr in queries()
             if "bar_fault_duration_seconds_count" in expr and not by_result(expr) and 'result=~"sigbus|oom"' not in expr]
    assert len(rates) == 2, rates  # Fleet activity, BAR fault rate
    for title, expr in rates:
        assert 'result!="fallback"' in expr, title
