"""`vfiomond doctor` on the plain host (no VM): its verdicts must match what this host offers."""

import json
import os
import shutil
import subprocess
import sys
import tempfile

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def doctor(*prefix):
    """Run doctor from a world-readable copy of the package (nobody may not read the checkout)."""
    tmp = tempfile.mkdtemp(prefix="vfiomond-doctor-")
    os.chmod(tmp, 0o755)
    for part in ("vfiomond", "bpf"):
        shutil.copytree(os.path.join(REPO, part), os.path.join(tmp, part), ignore=shutil.ignore_patterns("__pycache__"))
    try:
        proc = subprocess.run(
            list(prefix) + [sys.executable, "-B", "-m", "vfiomond", "doctor", "--json"],
            cwd=tmp, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=dict(os.environ, PYTHONPATH=tmp),
        )
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    assert proc.stderr == "", proc.stderr  # no traceback, no warnings
    report = json.loads(proc.stdout)
    return proc.returncode, {c["name"]: c for c in report["checks"]}, report


def test_host_report_matches_the_host():
    rc, checks, _ = doctor()
    kprobes = os.path.isdir("/sys/bus/event_source/devices/kprobe") or os.path.exists("/sys/kernel/tracing/kprobe_events")
    assert checks["kprobes"]["status"] == ("ok" if kprobes else "attention")
    iommu = bool(os.path.isdir("/sys/class/iommu") and os.listdir("/sys/class/iommu"))
    assert checks["iommu"]["status"] == ("ok" if iommu else "attention")
    assert checks["vfio modules"]["status"] == ("ok" if os.path.isdir("/sys/module/vfio") else "attention")
    assert rc == (1 if any(c["status"] == "attention" for c in checks.values()) else 0)


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to drop to nobody")
def test_host_report_without_root():
    rc, checks, report = doctor("setpriv", "--reuid=65534", "--regid=65534", "--clear-groups")
    assert report["root"] is False
    assert checks["memlock"]["status"] == "unknown"
    assert rc in (0, 1)
