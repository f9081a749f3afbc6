#!/usr/bin/env python3
"""Scenario "systemd": vfiomond run by its shipped unit, systemd as PID 1.

Installed from its Debian package by apt-get (tests/lab/guest/systemd-job.sh), with one lab
drop-in: WatchdogSec=20s, TimeoutAbortSec=5s.  Steps, each recorded in the
JSON summary printed on stdout (the lab test asserts on it):
  start      systemctl start (returns at READY=1); state, STATUS text, watchdog,
             the main process's capabilities; /metrics scraped
  watchdog   WatchdogTimestampMonotonic moves: the main loop pings
  removal    edu's device held open while vfio-pci is unbound from it: the
             device_gone_in_use alert counted (scrape), the unbind waiting; the
             device closed; the alert's journal entry, `journalctl -x` with its catalog text
  bad-reload a config with an unknown key, systemctl reload: still active, same
             PID, STATUS says the old configuration runs, reload metric 0
  reload     disable = ["vfio_fork"]: the probe detaches; the original
             config again: attached again
  hang       SIGSTOP on the main process: the watchdog fires, systemd restarts it
Exit 0 only if every step ran.

After the host's scrape, the job runs the package's later life:
  systemd.py upgrade DEBDIR   the conffile edited, apt-get install of the rebuilt
                              package (+rebuild1): version, a restarted daemon, the edit kept
  systemd.py purge            apt-get purge: none of the package's files, its
                              configuration or its unit left
"""

import json
import os
import re
import subprocess
import sys
import time
import urllib.request

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import vfiolib as v  # noqa: E402

OUT = "/lab/out"
CONFIG = "/etc/vfiomond/vfiomond.toml"
DEVICE_GONE_IN_USE = "e596ff4670cd4258a1a919415499d840"
PROPS = ("ActiveState", "SubState", "StatusText", "MainPID", "NRestarts", "Type", "WatchdogUSec",
         "WatchdogTimestampMonotonic", "Result")


def log(msg):
    print("systemd: " + msg, file=sys.stderr, flush=True)


def run(*cmd, timeout=300):
    p = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, universal_newlines=True, timeout=timeout)
    log("%s -> %d" % (" ".join(cmd), p.returncode))
    return p


def show():
    text = run("systemctl", "show", "vfiomond", *("-p" + p for p in PROPS)).stdout
    return dict(line.split("=", 1) for line in text.splitlines() if "=" in line)


def scrape():
    with urllib.request.urlopen("http://127.0.0.1:10119/metrics", timeout=30) as r:
        return r.read().decode()


def sample(text, name, **labels):
    for line in text.splitlines():
        if line.startswith(name + "{") or line.startswith(name + " "):
            head, _, value = line.rpartition(" ")
            if all('%s="%s"' % kv in head for kv in labels.items()):
                return float(value)
    return None


def wait_for(what, condition, timeout=120.0, interval=0.5):
    start = time.monotonic()
    while True:
        value = condition()
        if value:
            log("%s after %.1f s" % (what, time.monotonic() - start))
            return value
        if time.monotonic() - start > timeout:
            raise RuntimeError("timed out after %.0f s waiting for %s" % (timeout, what))
        time.sleep(interval)


def journal(*matches):
    text = run("journalctl", "-o", "json", "--no-pager", *matches).stdout
    return [json.loads(line) for line in text.splitlines() if line.startswith("{")]


def step_start(summary):
    t0 = time.monotonic()
    p = run("systemctl", "start", "vfiomond")
    summary["start"] = {"rc": p.returncode, "seconds": round(time.monotonic() - t0, 1), "show": show()}
    pid = summary["start"]["show"]["MainPID"]
    with open("/proc/%s/status" % pid) as f:
        status = dict(line.split(":\t", 1) for line in f if ":\t" in line)
    summary["start"]["caps"] = {k: v.strip() for k, v in status.items() if k.startswith("Cap")}
    summary["start"]["seccomp"] = status.get("Seccomp", "").strip()  # 2: a filter is in force
    props = run("systemctl", "show", "vfiomond", "-pMemoryDenyWriteExecute", "-pSystemCallErrorNumber").stdout
    summary["start"]["sandbox"] = dict(line.split("=", 1) for line in props.splitlines() if "=" in line)
    security = run("systemd-analyze", "security", "--no-pager", "vfiomond.service").stdout
    m = re.search(r"Overall exposure level for vfiomond.service: ([0-9.]+)", security)
    summary["start"]["exposure"] = float(m.group(1)) if m else None
    with open(OUT + "/systemctl-status.txt", "w") as f:
        f.write(run("systemctl", "status", "--no-pager", "-l", "vfiomond").stdout)
    text = scrape()
    summary["start"]["probes_attached"] = sum(
        float(line.rpartition(" ")[2]) for line in text.splitlines() if line.startswith("vfiomond_probe_attached{"))


def step_watchdog(summary):
    first = show()["WatchdogTimestampMonotonic"]
    later = wait_for("a watchdog ping", lambda: (lambda s: s["WatchdogTimestampMonotonic"] != first and s)(show()),
                     timeout=30)
    summary["watchdog"] = {"first": int(first), "later": int(later["WatchdogTimestampMonotonic"])}


def step_removal(summary):
    """The alert is counted at once; its journal entry may come only after the user
    let go: journald itself waited while the removal did (seen on 6.1 + systemd 252)."""
    edu = next(d for d in v.find_devices() if d.name == "edu")
    container = v.Container(edu.iommu_group)
    device = container.device(edu.bdf)
    t0 = time.monotonic()
    unbind = subprocess.Popen(["sh", "-c", "echo %s > /sys/bus/pci/drivers/vfio-pci/unbind" % edu.bdf])
    try:
        wait_for("device_gone_in_use counted", lambda: sample(scrape(), "vfiomond_alerts_total", kind="device_gone_in_use"), 60)
        counted = time.monotonic() - t0
        time.sleep(2)
        blocked = unbind.poll() is None
    finally:
        os.close(device)
        container.close()
    released = time.monotonic() - t0
    unbind.wait(timeout=60)
    entries = wait_for("the device_gone_in_use journal entry", lambda: journal("MESSAGE_ID=" + DEVICE_GONE_IN_USE), 60)
    in_journal = time.monotonic() - t0
    explained = run("journalctl", "-x", "--no-pager", "MESSAGE_ID=" + DEVICE_GONE_IN_USE).stdout
    with open(OUT + "/journal-x.txt", "w") as f:
        f.write(explained)
    e = entries[0]
    summary["removal"] = {
        "device": edu.bdf, "scenario_pid": os.getpid(), "unbind_rc": unbind.returncode, "unbind_blocked": blocked,
        "seconds": {"counted": round(counted, 1), "released": round(released, 1), "in_journal": round(in_journal, 1)},
        "alert": {k: e.get(k) for k in ("MESSAGE", "PRIORITY", "DEVICE", "PIDS", "COMMS", "REQUEST_CHANNEL",
                                        "VFIOMOND_ALERT", "_SYSTEMD_UNIT")},
        "catalog_subject": bool(re.search(r"PCI device %s is being removed while in use" % re.escape(edu.bdf), explained)),
        "catalog_what_to_do": "What to do:" in explained,
    }
    with open("/sys/bus/pci/drivers_probe", "w") as f:
        f.write(edu.bdf)
    summary["removal"]["rebound"] = os.path.basename(os.readlink("/sys/bus/pci/devices/%s/driver" % edu.bdf))


def reload(config_text, condition, what):
    with open(CONFIG, "w") as f:
        f.write(config_text)
    before = show()
    p = run("systemctl", "reload", "vfiomond")
    wait_for(what, lambda: condition(scrape()))
    after = show()
    return {"rc": p.returncode, "pid_before": before["MainPID"], "after": after}


def step_reloads(summary, original):
    broken = original.replace("samples = 16", "samples = 16\nverify_intervall = 5")
    summary["bad_reload"] = reload(broken,
                                   lambda t: sample(t, "vfiomond_config_last_reload_successful") == 0, "the failed reload")
    summary["bad_reload"]["log"] = [line for line in run("journalctl", "-u", "vfiomond", "-o", "cat", "--no-pager").stdout
                                    .splitlines() if "reload failed" in line]
    disabled = original.replace("disable = []", 'disable = ["vfio_fork"]')
    summary["reload"] = reload(disabled, lambda t: (
        sample(t, "vfiomond_config_last_reload_successful") == 1
        and sample(t, "vfiomond_probe_attached", probe="vfio_fork") == 0), "vfio_fork detached")
    summary["reload_back"] = reload(original, lambda t: (
        sample(t, "vfiomond_probe_attached", probe="vfio_fork") == 1), "vfio_fork attached again")
    summary["reloads_total"] = {r: sample(scrape(), "vfiomond_config_reloads_total", result=r) for r in ("success", "failure")}


def step_hang(summary):
    pid = show()["MainPID"]
    t0 = time.monotonic()
    run("kill", "-STOP", pid)
    after = wait_for("a restarted vfiomond", lambda: (lambda s: s["MainPID"] not in (pid, "0") and s["ActiveState"] == "active"
                                                      and s)(show()), timeout=300, interval=1)
    lines = run("journalctl", "-u", "vfiomond", "-o", "cat", "--no-pager").stdout.splitlines()
    summary["hang"] = {"pid_before": pid, "seconds": round(time.monotonic() - t0, 1), "after": after,
                       "systemd_said": [line for line in lines if "atchdog" in line]}


OPERATOR_EDIT = "# an operator's edit, kept across upgrades (lab)\n"


def step_upgrade(deb_dir):
    """The rebuilt package over the installed one, the daemon running."""
    rebuilt = [f for f in os.listdir(deb_dir) if "+rebuild" in f and f.endswith("_all.deb")]
    with open(CONFIG, "a") as f:
        f.write(OPERATOR_EDIT)
    before = show()
    p = subprocess.run(["apt-get", "install", "-y", "--no-install-recommends", os.path.join(deb_dir, rebuilt[0])],
                       capture_output=True, text=True, timeout=600,
                       env=dict(os.environ, DEBIAN_FRONTEND="noninteractive"))
    after = wait_for("the upgraded daemon", lambda: (lambda s: s["MainPID"] not in (before["MainPID"], "0")
                                                     and s["ActiveState"] == "active" and s)(show()), timeout=300)
    with open(CONFIG) as f:
        kept = OPERATOR_EDIT in f.read()
    text = scrape()
    return {"rc": p.returncode, "output": p.stdout[-2000:] + p.stderr[-2000:], "pid_before": before["MainPID"],
            "after": after, "conffile_kept": kept,
            "version": run("dpkg-query", "-W", "-f=${Version}", "vfiomond").stdout,
            "probes_attached": sum(float(line.rpartition(" ")[2]) for line in text.splitlines()
                                   if line.startswith("vfiomond_probe_attached{"))}


def step_purge():
    """apt-get purge, then every file the package had is looked for."""
    files = run("dpkg-query", "-L", "vfiomond").stdout.splitlines()
    p = subprocess.run(["apt-get", "purge", "-y", "vfiomond"], capture_output=True, text=True, timeout=300,
                       env=dict(os.environ, DEBIAN_FRONTEND="noninteractive"))
    left = [f for f in files if f.startswith("/") and os.path.lexists(f) and not os.path.isdir(f)]
    left += [d for d in ("/etc/vfiomond", "/usr/lib/python3/dist-packages/vfiomond", "/usr/share/vfiomond",
                         "/etc/systemd/system/multi-user.target.wants/vfiomond.service") if os.path.lexists(d)]
    return {"rc": p.returncode, "output": p.stdout[-2000:] + p.stderr[-2000:], "files_before": len(files),
            "left": left, "status": run("dpkg-query", "-W", "-f=${db:Status-Abbrev}", "vfiomond").stdout,
            "load_state": run("systemctl", "show", "-p", "LoadState", "--value", "vfiomond").stdout.strip()}


def package_step(argv):
    try:
        result = step_upgrade(argv[1]) if argv[0] == "upgrade" else step_purge()
        result["ok"] = True
    except Exception as e:
        result = {"ok": False, "error": "%s: %s" % (type(e).__name__, e)}
        log(result["error"])
    print(json.dumps(result, indent=1))
    return 0 if result["ok"] else 1


def main():
    if sys.argv[1:2] in (["upgrade"], ["purge"]):
        return package_step(sys.argv[1:])
    summary = {"ok": False}
    with open(CONFIG) as f:
        original = f.read()
    try:
        step_start(summary)
        step_watchdog(summary)
        step_removal(summary)
        step_reloads(summary, original)
        step_hang(summary)
        summary["ok"] = True
    except Exception as e:  # the summary says which step failed and why
        summary["error"] = "%s: %s" % (type(e).__name__, e)
        log(summary["error"])
    print(json.dumps(summary, indent=1))
    return 0 if summary["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
