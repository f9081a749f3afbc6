"""docs/lab.md's kernel coverage table is what vfiomond's probe selection makes of the
kallsyms each lab kernel showed (scripts/coverage_table.py)."""

import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.join(ROOT, "scripts"))

import coverage_table  # noqa: E402


def test_documented_table_is_the_generated_one():
    proc = subprocess.run([sys.executable, os.path.join(ROOT, "scripts", "coverage_table.py"), "--check"],
                          stdout=subprocess.PIPE, universal_newlines=True)
    assert proc.returncode == 0, proc.stdout


def test_every_suite_has_a_fixture_with_its_kernel():
    for suite, _ in coverage_table.SUITES:
        assert suite in coverage_table.suites_present(), suite
        assert coverage_table.kernel_line(suite) != "?", suite


def test_every_probe_is_available_on_every_lab_kernel():
    for suite in coverage_table.suites_present():
        missing = [name for name, s in coverage_table.selection(suite).items() if not s.available]
        assert not missing, (suite, missing)
