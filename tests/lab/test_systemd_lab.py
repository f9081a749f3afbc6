"""vfiomond as an operator runs it: installed from its Debian package by apt-get
(built on the host by scripts/build-deb.sh), started by its shipped unit, systemd as
PID 1 in the lab guest (scenario "systemd", see tests/lab/scenarios/systemd.py);
then upgraded to a rebuilt package and purged.  One boot per suite, about 5 minutes."""

import json
import os
import re

import pytest

from test_lab import (EXPECTED_SYMBOLS, DISTRO_SUITES as SUITES, STRUCT_OFFSETS_FROM_BTF, Scrape, boot,
                      journal_entries, kernel_has_iommufd)

# The unit's CapabilityBoundingSet: DAC_READ_SEARCH 2, SYS_PTRACE 19, SYS_ADMIN 21, SYSLOG 34, PERFMON 38, BPF 39.
UNIT_CAPS = sum(1 << c for c in (2, 19, 21, 34, 38, 39))
PROBE_LOST = "286ab4a7fb4b451bbf7ab26f61586336"


LAB_BOOT = ("systemd", False)  # (scenario, Prometheus): what tests/lab/conftest.py schedules


@pytest.fixture(scope="module", params=SUITES)
def run(request):
    return boot(request.param, *LAB_BOOT)


@pytest.fixture(scope="module")
def summary(run):
    assert run.scenario.get("ok") is True, "scenario failed: %s (logs in %s)" % (run.scenario.get("error"), run.out)
    return run.scenario


def test_systemd_is_pid_1(run):
    with open(os.path.join(run.out, "steps")) as f:
        assert "PID 1 is systemd" in f.read()


def test_the_unit_starts_ready_with_its_status(run, summary):
    start = summary["start"]
    assert start["rc"] == 0
    show = start["show"]
    assert (show["ActiveState"], show["SubState"], show["Type"]) == ("active", "running", "notify")
    assert re.match(r"serving /metrics on :10119; (\d+) of \1 probes attached; 2 VFIO devices$", show["StatusText"]), show
    assert start["probes_attached"] == len(EXPECTED_SYMBOLS[run.suite])


def test_status_is_what_systemctl_status_shows(run, summary):
    with open(os.path.join(run.out, "systemctl-status.txt")) as f:
        status = f.read()
    assert "Active: active (running)" in status
    assert "Status: \"%s\"" % summary["start"]["show"]["StatusText"] in status


def test_capabilities_are_the_units_and_nothing_more(summary):
    caps = summary["start"]["caps"]
    assert int(caps["CapEff"], 16) == UNIT_CAPS
    assert int(caps["CapBnd"], 16) == UNIT_CAPS


def test_the_unit_filters_system_calls_and_denies_writable_executable_memory(summary):
    """SystemCallFilter=@system-service bpf perf_event_open and MemoryDenyWriteExecute=yes
    are in force, and the daemon attached every probe under them (the other tests of this
    boot: scrape, reload, watchdog, removal alert)."""
    start = summary["start"]
    assert start["seccomp"] == "2", start
    assert start["sandbox"]["MemoryDenyWriteExecute"] == "yes", start
    # systemd-analyze security: 5.2 MEDIUM before these two settings, on the host's systemd 252.
    assert start["exposure"] is not None and start["exposure"] <= 4.5, start


def test_the_watchdog_is_armed_and_fed(summary):
    assert summary["start"]["show"]["WatchdogUSec"] == "20s"
    assert summary["watchdog"]["later"] > summary["watchdog"]["first"] > 0


def test_a_hung_daemon_is_restarted_by_the_watchdog(run, summary):
    hang = summary["hang"]
    assert hang["after"]["NRestarts"] == "1" and hang["after"]["MainPID"] != hang["pid_before"]
    assert hang["seconds"] >= 20
    assert any("Watchdog timeout" in line for line in hang["systemd_said"]), hang["systemd_said"]
    assert run.daemon_rc == 0, "the restarted vfiomond did not stop cleanly"


def test_removing_a_device_in_use_is_alerted_with_catalog_text(summary):
    removal = summary["removal"]
    alert = removal["alert"]
    assert alert["VFIOMOND_ALERT"] == "device_gone_in_use" and alert["PRIORITY"] == "3"
    assert alert["DEVICE"] == removal["device"] and str(removal["scenario_pid"]) in alert["PIDS"].split(",")
    assert alert["_SYSTEMD_UNIT"] == "vfiomond.service"
    assert alert["REQUEST_CHANNEL"] == "0"  # the scenario registers no request eventfd
    assert removal["catalog_subject"] and removal["catalog_what_to_do"]
    assert removal["unbind_blocked"] and removal["unbind_rc"] == 0 and removal["rebound"] == "vfio-pci"
    assert removal["seconds"]["counted"] < removal["seconds"]["released"]


def test_a_bad_reload_keeps_the_daemon_and_its_configuration(summary):
    bad = summary["bad_reload"]
    assert bad["rc"] == 0
    assert bad["after"]["ActiveState"] == "active" and bad["after"]["MainPID"] == bad["pid_before"]
    assert bad["after"]["StatusText"].startswith("reload failed, running with the previous configuration: ")
    assert "unknown key pins.verify_intervall" in bad["after"]["StatusText"]
    assert any("unknown key pins.verify_intervall" in line for line in bad["log"]), bad["log"]


def test_a_good_reload_applies_without_a_restart(summary):
    for step in ("reload", "reload_back"):
        assert summary[step]["after"]["MainPID"] == summary[step]["pid_before"] == summary["bad_reload"]["pid_before"]
    assert summary["reloads_total"] == {"success": 2, "failure": 1}


def test_disabling_a_probe_by_configuration_is_not_a_lost_probe(run):
    assert journal_entries(run, PROBE_LOST) == []


def test_the_restarted_daemon_serves_both_devices(run):
    scrape = Scrape(run.metrics)
    assert len(scrape.values("vfiomond_device_info")) == 2
    for probe in EXPECTED_SYMBOLS[run.suite]:
        assert scrape.one("vfiomond_probe_attached", probe=probe) == 1, probe


def test_no_traceback_in_the_units_log(run):
    with open(os.path.join(run.out, "vfiomond.log")) as f:
        assert "Traceback" not in f.read()



def test_the_unit_leaves_the_kernels_btf_readable(run):
    """The unit's sandbox (ProtectKernelTunables, ProtectKernelModules) still lets the
    daemon read /sys/kernel/btf and /sys/module: struct offsets from BTF, as unconfined."""
    with open(os.path.join(run.out, "vfiomond.log")) as f:
        log = f.read()
    if STRUCT_OFFSETS_FROM_BTF[run.suite]:
        assert "kernel struct offsets from BTF\n" in log and "did not compile" not in log
    else:
        assert "kernel struct offsets from kernel headers (" in log


def test_the_unit_lets_the_daemon_see_which_modules_the_kernel_has(run):
    """The sandbox leaves depmod's files readable: Debian's kernels, which have no
    iommufd module (kmod's `modprobe -n iommufd` in the guest), compile without the
    iommufd area under the unit as they do unconfined."""
    with open(os.path.join(run.out, "vfiomond.log")) as f:
        log = f.read()
    assert ("BPF area iommufd left out of the compile" in log) == (not kernel_has_iommufd(run)), log

# ------------------------------------------------- the package (debian/, scripts/build-deb.sh)

def package_step(run, name):
    with open(os.path.join(run.out, "package-%s.json" % name)) as f:
        result = json.load(f)
    assert result.get("ok") is True, result
    return result


def test_the_package_installs_enabled_and_started(run):
    with open(os.path.join(run.out, "install.log")) as f:
        log = f.read()
    assert "Setting up vfiomond (" in log, log[-2000:]
    for name, expected in (("enabled", "enabled"), ("active", "active")):
        with open(os.path.join(run.out, "%s-after-install" % name)) as f:
            assert f.read().strip() == expected


def test_an_upgrade_restarts_the_daemon_and_keeps_the_edited_conffile(run):
    upgrade = package_step(run, "upgrade")
    assert upgrade["rc"] == 0, upgrade["output"]
    assert upgrade["version"].endswith("+rebuild1")
    assert upgrade["after"]["ActiveState"] == "active" and upgrade["after"]["MainPID"] != upgrade["pid_before"]
    assert upgrade["conffile_kept"]
    assert upgrade["probes_attached"] == len(EXPECTED_SYMBOLS[run.suite])


def test_a_purge_leaves_nothing_behind(run):
    purge = package_step(run, "purge")
    assert purge["rc"] == 0, purge["output"]
    assert purge["files_before"] > 40
    assert purge["left"] == []
    assert not purge["status"].startswith(("ii", "rc")), purge["status"]
    assert purge["load_state"] == "not-found"
