"""The packages and manifests agree with the project they ship: versions, the unit's
command and capabilities, the alert rules.  The Debian package itself is built
(scripts/build-deb.sh, lintian) and installed, upgraded and purged in the lab's systemd
scenario (tests/lab/test_systemd_lab.py); the RPM is built here, on this Debian host,
with stand-ins for Fedora's macro packages (packaging/rpm/macros.debian-host)."""

import os
import re
import shutil
import subprocess
import sys
import tarfile

import pytest
import yaml

import vfiomond

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def read(path):
    with open(os.path.join(ROOT, path)) as f:
        return f.read()


def unit_setting(name):
    m = re.search(r"^%s=(.*)$" % name, read("systemd/vfiomond.service"), re.M)
    return m.group(1).strip()


def test_every_package_has_the_version_of_the_code():
    assert re.match(r"vfiomond \(%s[)+]" % re.escape(vfiomond.__version__), read("debian/changelog"))
    assert re.search(r"^Version:\s+%s$" % re.escape(vfiomond.__version__), read("packaging/rpm/vfiomond.spec"), re.M)
    assert "image: vfiomond:%s" % vfiomond.__version__ in read("packaging/kubernetes/daemonset.yaml")


def test_debian_depends_on_what_pyproject_needs():
    control = read("debian/control")
    for package in ("python3-bpfcc", "python3-prometheus-client", "python3-pyudev", "python3-systemd",
                    "python3-tomli", "python3-toml"):
        assert re.search(r"\b%s\b" % package, control), package


def test_the_unit_runs_the_packaged_command():
    assert unit_setting("ExecStart") == "/usr/bin/vfiomond run --config /etc/vfiomond/vfiomond.toml"


def manifests():
    with open(os.path.join(ROOT, "packaging/kubernetes/daemonset.yaml")) as f:
        docs = list(yaml.safe_load_all(f))
    return {d["kind"]: d for d in docs}


def test_the_daemonset_runs_what_the_unit_runs_with_its_capabilities():
    ds = manifests()["DaemonSet"]
    pod = ds["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    assert ["/usr/bin/vfiomond"] + container["args"] == unit_setting("ExecStart").split()
    sc = container["securityContext"]
    assert sc["privileged"] is False and sc["capabilities"]["drop"] == ["ALL"]
    unit_caps = {c[len("CAP_"):] for c in unit_setting("CapabilityBoundingSet").split()}
    assert set(sc["capabilities"]["add"]) == unit_caps | {"SYS_RESOURCE"}  # LimitMEMLOCK=infinity's stand-in
    assert pod["hostPID"] is True and pod["hostNetwork"] is True
    assert container["ports"][0]["containerPort"] == 10119
    hostpaths = {v["hostPath"]["path"] for v in pod["volumes"] if "hostPath" in v}
    assert {"/lib/modules", "/usr/src", "/sys/kernel/debug", "/dev/kmsg", "/run/udev"} <= hostpaths
    config = manifests()["ConfigMap"]["data"]["vfiomond.toml"]
    assert 'listen = ":10119"' in config


def test_the_container_image_runs_what_the_unit_runs():
    text = read("packaging/kubernetes/Containerfile")
    entry = yaml.safe_load(re.search(r"^ENTRYPOINT (.*)$", text, re.M).group(1))
    cmd = yaml.safe_load(re.search(r"^CMD (.*)$", text, re.M).group(1))
    assert entry + cmd == unit_setting("ExecStart").split()


def test_the_pod_monitor_scrapes_the_daemonsets_port():
    m = manifests()
    with open(os.path.join(ROOT, "packaging/kubernetes/podmonitor.yaml")) as f:
        pm = yaml.safe_load(f)
    assert pm["spec"]["selector"]["matchLabels"].items() <= m["DaemonSet"]["spec"]["template"]["metadata"]["labels"].items()
    port = pm["spec"]["podMetricsEndpoints"][0]["port"]
    assert port in {p["name"] for p in m["DaemonSet"]["spec"]["template"]["spec"]["containers"][0]["ports"]}


def test_the_prometheus_rule_is_made_from_the_alert_rules_file():
    out = subprocess.run([sys.executable, os.path.join(ROOT, "scripts/prometheusrule.py")], capture_output=True,
                         text=True, check=True).stdout
    rule = yaml.safe_load(out)
    assert (rule["apiVersion"], rule["kind"]) == ("monitoring.coreos.com/v1", "PrometheusRule")
    with open(os.path.join(ROOT, "grafana/vfiomond-alerts.yml")) as f:
        assert rule["spec"]["groups"] == yaml.safe_load(f)["groups"]
    assert not os.path.exists(os.path.join(ROOT, "packaging/kubernetes/prometheusrule.yaml"))  # never a copy


@pytest.mark.skipif(shutil.which("rpmbuild") is None, reason="rpmbuild missing: scripts/install-deps.sh installs rpm")
def test_rpmbuild_builds_the_spec(tmp_path):
    version = vfiomond.__version__
    sources = tmp_path / "SOURCES"
    sources.mkdir()
    with tarfile.open(sources / ("vfiomond-%s.tar.gz" % version), "w:gz") as tar:
        for name in ("pyproject.toml", "README.md", "docs", "vfiomond", "bpf", "systemd", "grafana", "debian"):
            tar.add(os.path.join(ROOT, name), arcname="vfiomond-%s/%s" % (version, name),
                    filter=lambda t: None if "__pycache__" in t.name else t)
    env = dict(os.environ, PATH="/usr/bin:/bin")  # the distribution's python3 (python3-build, -installer)
    p = subprocess.run(["rpmbuild", "-bb", "--nodeps", "--define", "_topdir %s" % tmp_path,
                        "--load", os.path.join(ROOT, "packaging/rpm/macros.debian-host"),
                        os.path.join(ROOT, "packaging/rpm/vfiomond.spec")], capture_output=True, text=True, env=env)
    assert p.returncode == 0, p.stderr[-3000:]
    (rpm,) = (tmp_path / "RPMS" / "noarch").iterdir()
    query = lambda *q: subprocess.run(["rpm", "-qp"] + list(q) + [str(rpm)], capture_output=True, text=True,  # noqa: E731
                                      env=env).stdout
    files = query("-l").split()
    for path in ("/usr/bin/vfiomond", "/usr/lib/systemd/system/vfiomond.service", "/etc/vfiomond/vfiomond.toml",
                 "/usr/lib/systemd/catalog/vfiomond.catalog", "/usr/share/vfiomond/vfiomond-alerts.yml"):
        assert path in files
    assert any(f.endswith("/vfiomond/bpf/type1.c") for f in files)
    assert any(f.endswith("/vfiomond/known_issues.json") for f in files)
    assert query("-c").split() == ["/etc/vfiomond/vfiomond.toml"]
    assert "%config(noreplace) %{_sysconfdir}/vfiomond/vfiomond.toml" in read("packaging/rpm/vfiomond.spec")
    requires = query("--requires")
    assert "python3-bcc" in requires and "(python3 >= 3.11 or python3-tomli)" in requires
    scripts = query("--scripts")
    assert "try-restart vfiomond.service" in scripts and "journalctl --update-catalog" in scripts
