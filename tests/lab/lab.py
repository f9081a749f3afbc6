#!/usr/bin/env python3
"""The VFIO lab: boot a cached Debian guest under QEMU (q35, emulated Intel IOMMU,
edu + ivshmem-plain bound to vfio-pci, an e1000e for DPDK), run vfiomond and a scenario inside,
scrape /metrics from the host through a forwarded loopback port, power off.

    lab.py --suite bookworm --metrics-out /tmp/m.prom [--scenario standard] [--extra DIR]
    lab.py --suite trixie --demo        # stays up until Ctrl-C

The guest image comes from tests/lab/image.sh (cached outside the repository).
The checkout is shared read-only over virtio-9p; the guest writes its results
(steps, scenario.json, vfiomond.log, ...) into a host folder, printed at the end.
User networking is restrict=on: the guest reaches nothing outside.
"""

import argparse
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from typing import NamedTuple, Optional

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import hmp  # noqa: E402
import promserver  # noqa: E402
import timings  # noqa: E402
import webtls  # noqa: E402

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
GUEST_PORT = 10119
# The QEMU id of the device behind the root port (the device-health scenario injects AER errors into it).
PORT_DEVICE = "rpdev"
SUITES = ("bookworm", "trixie", "bullseye", "sid", "iommufd")
# The suites the lab tests boot: make test bookworm, trixie and iommufd (trixie with
# a 6.12 kernel built with CONFIG_IOMMUFD, tests/lab/kernel.sh: built once on a fresh
# machine while the other suites boot, then cached), make test-all all five.
TEST_SUITES = tuple(os.environ.get("VFIOMOND_LAB_SUITES", "bookworm trixie iommufd").split())
PROMETHEUS_HOLD = 8  # seconds: the standard scenario's 4 rounds of faults 2 s apart, one per scrape


class LabRun(NamedTuple):
    suite: str
    out: str  # the folder the guest wrote into
    metrics: str  # the scrape, as text
    scenario: dict  # the scenario's JSON summary; several scenarios: {"ok", "scenarios": {name: summary}}
    daemon_rc: Optional[int]  # vfiomond's exit status after SIGTERM
    prometheus: Optional[dict] = None  # promserver.PrometheusServer.report(), with --prometheus
    # With --prometheus (not --demo) the endpoint is secured (webtls): how it answered
    # scrapers it must not let in (HTTP status or error), and the scheme it served.
    web: Optional[dict] = None

    def part(self, name: str) -> "LabRun":
        """This boot as one of its scenarios saw it: that scenario's summary; the
        scrape, journal and logs are the boot's (taken after the last scenario)."""
        parts = self.scenario.get("scenarios")
        if parts is None:
            return self
        return self._replace(scenario=parts.get(name, {"ok": False, "error": "scenario %s did not run" % name}))


def scenario_names(scenario: str) -> list:
    """The scenarios of a boot: "a+b" runs a, then b, under one vfiomond (guest/init.sh)."""
    return scenario.split("+")


def _summaries(out: str, scenario: str) -> dict:
    def load(path):
        try:
            return json.loads(_read(path) or "{}")
        except ValueError:
            return {}

    names = scenario_names(scenario)
    if len(names) == 1:
        return load(os.path.join(out, "scenario.json"))
    parts = {name: load(os.path.join(out, "scenario-%s.json" % name)) for name in names}
    failed = ["%s: %s" % (n, p.get("error", "no summary")) for n, p in parts.items() if not p.get("ok")]
    summary = {"ok": not failed, "scenarios": parts}
    if failed:
        summary["error"] = "; ".join(failed)
    return summary


class LabError(Exception):
    pass


def log(msg: str) -> None:
    print("lab: " + msg, file=sys.stderr, flush=True)


def image(suite: str) -> str:
    proc = subprocess.run([os.path.join(REPO, "tests/lab/image.sh"), suite], stdout=subprocess.PIPE, text=True)
    if proc.returncode != 0:
        raise LabError("building the %s guest image failed" % suite)
    return proc.stdout.strip().splitlines()[-1]


def free_port(preferred: int = 0) -> int:
    for port in (preferred, 0):
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
            return s.getsockname()[1]
    raise LabError("no free loopback port")


def qemu_command(img: str, out: str, extra: str, host_port: int, scenario: str, demo: bool, hold: int = 0,
                 monitor: str = ""):
    append = " ".join([
        "console=ttyS0", "root=/dev/vda", "rw", "intel_iommu=on", "init=/sbin/vfiomond-lab-init", "panic=-1",
        "vfiomond.scenario=" + scenario, "vfiomond.port=%d" % GUEST_PORT, "vfiomond.demo=%d" % demo,
        "vfiomond.hold=%d" % hold,
    ])
    return [
        "qemu-system-x86_64", "-accel", "tcg,thread=multi", "-cpu", "max",
        "-machine", "q35,kernel-irqchip=split", "-smp", "2", "-m", "3G",
        "-device", "intel-iommu,intremap=on,caching-mode=on",
        "-device", "edu",
        "-object", "memory-backend-ram,id=shm,size=256M", "-device", "ivshmem-plain,memdev=shm",
        "-drive", "file=%s/rootfs.img,if=virtio,format=raw,cache=unsafe" % img, "-snapshot",
        "-kernel", img + "/vmlinuz", "-append", append,
        "-virtfs", "local,path=%s,mount_tag=src,security_model=none,readonly=on" % REPO,
        "-virtfs", "local,path=%s,mount_tag=out,security_model=none" % out,
        "-virtfs", "local,path=%s,mount_tag=extra,security_model=none,readonly=on" % extra,
        "-netdev", "user,id=n0,restrict=on,hostfwd=tcp:127.0.0.1:%d-:%d" % (host_port, GUEST_PORT),
        "-device", "virtio-net-pci,netdev=n0",
        # An 82574L for DPDK's e1000 PMD (scenario dpdk binds it to vfio-pci); its
        # network reaches nothing.
        "-netdev", "user,id=n1,restrict=on", "-device", "e1000e,netdev=n1",
        # A virtio-rng behind a PCIe root port, for the device-health scenario: AER errors
        # injected through the monitor (QEMU's virtio-pci has an AER capability with
        # aer=on and writable error-reporting enables; its e1000e's are read-only), a
        # link with a port above it.  Last on the command line, so that the devices above
        # keep their addresses.
        "-device", "pcie-root-port,id=rp1,chassis=1,slot=1",
        "-device", "virtio-rng-pci,bus=rp1,aer=on,id=%s" % PORT_DEVICE,
        "-display", "none", "-monitor", ("unix:%s,server=on,wait=off" % monitor) if monitor else "none", "-serial", "file:" + os.path.join(out, "console.log"),
        "-no-reboot",
    ] + (["-initrd", img + "/initrd.img"] if os.path.exists(img + "/initrd.img") else [])


def _read(path: str) -> str:
    try:
        with open(path) as f:
            return f.read()
    except OSError:
        return ""


def _wait_for(out: str, name: str, qemu: subprocess.Popen, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not os.path.exists(os.path.join(out, name)):
        if os.path.exists(os.path.join(out, "failed")):
            raise LabError("guest: " + _read(os.path.join(out, "failed")).strip())
        if qemu.poll() is not None:
            raise LabError("the guest powered off before '%s' (qemu exit %s)" % (name, qemu.returncode))
        if time.monotonic() > deadline:
            raise LabError("timed out after %d s waiting for '%s'" % (timeout, name))
        time.sleep(0.5)


def scrape(port: int, web: Optional["webtls.Web"] = None) -> str:
    if web is not None:
        return web.get("https://127.0.0.1:%d/metrics" % port).decode()
    with urllib.request.urlopen("http://127.0.0.1:%d/metrics" % port, timeout=30) as r:
        return r.read().decode()


class EarlyCrash(LabError):
    """The guest kernel died, or hung, before the lab's init script ran."""


# Seconds the guest kernel may take to start the lab's init (its first step): 20-80 s
# with two boots at once under TCG, systemd as PID 1 included.  Once (sid's 7.2, with a
# BPF compile running in the other boot) it stopped after "smpboot: Total of 2
# processors activated" and kept its CPUs busy for 14 minutes without printing more.
INIT_TIMEOUT = 400


def run(suite: str, scenario: str = "standard", extra: Optional[str] = None, demo: bool = False,
        out: Optional[str] = None, timeout: float = 600, prometheus: bool = False) -> LabRun:
    """Boot, run the scenario, scrape, power off.  A guest kernel that dies before
    init (seen once in about 30 boots: an int3 oops while the 6.12 kernel patches
    its text at boot under multi-threaded TCG) or does not reach it within
    INIT_TIMEOUT is booted once more, and said so."""
    try:
        return _run(suite, scenario, extra, demo, out, timeout, prometheus)
    except EarlyCrash as e:
        log("the guest kernel crashed or hung before init; booting once more. %s" % str(e).splitlines()[0])
        return _run(suite, scenario, extra, demo, out and out + "-again", timeout, prometheus)


def build_packages(out: str) -> None:
    """The Debian packages the systemd scenario installs, upgrades to and purges
    (tests/lab/guest/systemd-job.sh), in OUT/deb: this checkout's
    (scripts/build-deb.sh, lintian-clean) and a rebuild of it one version up."""
    deb_dir = os.path.join(out, "deb")

    def build(*extra: str) -> None:
        p = subprocess.run([os.path.join(REPO, "scripts/build-deb.sh"), "--out", deb_dir] + list(extra),
                           capture_output=True, text=True)
        if p.returncode != 0:
            raise LabError("scripts/build-deb.sh %s failed:\n%s" % (" ".join(extra), p.stderr[-2000:]))

    build()
    version = subprocess.run(["dpkg-parsechangelog", "-S", "Version", "-l", os.path.join(REPO, "debian/changelog")],
                             capture_output=True, text=True)
    if version.returncode != 0:
        raise LabError("dpkg-parsechangelog: %s" % version.stderr.strip())
    build("--upgrade-of", version.stdout.strip())


def _run(suite: str, scenario: str, extra: Optional[str], demo: bool, out: Optional[str], timeout: float,
         prometheus: bool) -> LabRun:
    if suite not in SUITES:
        raise LabError("unknown suite %r (%s)" % (suite, ", ".join(SUITES)))
    for name in scenario_names(scenario):
        if not os.path.isfile(os.path.join(REPO, "tests/lab/scenarios", name + ".py")):
            raise LabError("unknown scenario %r" % name)
    if extra and not os.access(os.path.join(extra, "run"), os.X_OK):
        raise LabError("EXTRA=%s has no executable 'run'" % extra)
    img = image(suite)
    out = out or tempfile.mkdtemp(prefix="vfiomond-lab-%s-" % suite)
    os.makedirs(out, exist_ok=True)
    empty = tempfile.mkdtemp(prefix="vfiomond-lab-noextra-")
    port = free_port(GUEST_PORT if demo else 0)
    # With a Prometheus scraping every 2 s (its timeout too: at 1 s, scrapes of a guest
    # sharing the host's cores with another timed out, up to 9 of 31), the scenario
    # holds its mappings for a few seconds (VFIOMOND_HOLD) so that the per-process
    # series get scraped.
    hold = PROMETHEUS_HOLD if prometheus else 0
    # The test boot with Prometheus also secures the endpoint; the demo stays plain HTTP
    # for the browser.
    web = webtls.make(out) if prometheus and not demo else None
    if "systemd" in scenario_names(scenario):
        build_packages(out)
    # The monitor's socket path must fit in sun_path (108 bytes): a short folder of its own.
    monitor = os.path.join(empty + "-hmp", "monitor.sock")
    os.makedirs(os.path.dirname(monitor))
    cmd = qemu_command(img, out, os.path.abspath(extra) if extra else empty, port, scenario, demo, hold, monitor)
    log("booting %s (logs in %s)" % (suite, out))
    start = time.monotonic()
    qemu = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=open(os.path.join(out, "qemu.log"), "w"))
    server = None
    report = None
    bridge = hmp.HmpBridge(monitor, out)
    bridge.start()
    try:
        if prometheus:
            security = {} if web is None else dict(scheme="https", ca_file=web.cert, server_name=webtls.SERVER_NAME,
                                                   basic_auth=(webtls.USER, web.password))
            server = promserver.PrometheusServer(port, out.rstrip("/") + "-prometheus", **security)
            server.start()
            log("Prometheus scrapes the guest every %s: %s" % (server.interval, server.url("/graph")))
        _wait_for(out, "steps", qemu, INIT_TIMEOUT)  # init's first step: the kernel booted
        _wait_for(out, "ready", qemu, timeout)
        log("scenario done after %.0f s; scraping 127.0.0.1:%d" % (time.monotonic() - start, port))
        metrics = scrape(port, web)
        web_report = None if web is None else {"scheme": "https", "rejected": web.rejections(port)}
        if web_report is not None:
            with open(os.path.join(out, "web-checks.json"), "w") as f:
                json.dump(web_report, f)
        if server is not None and not demo:
            server.wait_for_scrapes(3)
            report = server.report()
            with open(os.path.join(out, "prometheus.json"), "w") as f:
                json.dump(report, f, indent=1)
        if demo:
            log("vfiomond is up: open http://127.0.0.1:%d/ (metrics at /metrics); Ctrl-C powers the guest off" % port)
            try:
                while qemu.poll() is None:
                    time.sleep(1)
            except KeyboardInterrupt:
                pass
            open(os.path.join(out, "stop"), "w").close()
        else:
            open(os.path.join(out, "scraped"), "w").close()
        # The systemd scenario upgrades and purges its package after the scrape: the upgrade
        # restarts the daemon, a BPF compile of 200-300 s under TCG with another boot beside it
        # (at af4b225 trixie's upgrade and purge took over 300 s).
        _wait_for(out, "done", qemu, 600 if "systemd" in scenario_names(scenario) else 120)
        qemu.wait(timeout=60)
        log("guest powered off after %.0f s" % (time.monotonic() - start))
        record_timings(suite, scenario, out, time.monotonic() - start)
    except (LabError, OSError, subprocess.TimeoutExpired, promserver.PrometheusError) as e:
        console = _read(os.path.join(out, "console.log"))
        tail = console.splitlines()[-25:]
        crashed = not os.path.exists(os.path.join(out, "steps")) and ("Kernel panic" in console or "timed out" in str(e))
        raise (EarlyCrash if crashed else LabError)(
            "%s\n--- guest console (last lines) ---\n%s" % (e, "\n".join(tail))) from None
    finally:
        bridge.stop()
        if server is not None:
            server.stop()
        if qemu.poll() is None:
            qemu.send_signal(signal.SIGTERM)
            try:
                qemu.wait(timeout=10)
            except subprocess.TimeoutExpired:
                qemu.kill()
        shutil.rmtree(empty, ignore_errors=True)
        shutil.rmtree(os.path.dirname(monitor), ignore_errors=True)
    summary = _summaries(out, scenario)
    rc = _read(os.path.join(out, "vfiomond.rc")).strip()
    return LabRun(suite, out, metrics, summary, int(rc) if rc else None, report, web_report)


# Steps of init.sh's timeline that end a phase of a boot: (phase, the step's first words).
TIMELINE_PHASES = (("kernel+udev", "systemd-udevd running"), ("bind+check", "vfiomond check (and doctor) done"),
                   ("vfiomond start", "vfiomond ready"), ("scenario", "scenario "))


def record_timings(suite: str, scenario: str, out: str, seconds: float) -> None:
    """One boot's time, and its phases from the guest's timeline (guest uptime)."""
    name = "%s %s" % (suite, scenario)
    timings.record("boot", name, seconds)
    stamps = {}
    for line in _read(os.path.join(out, "timeline")).splitlines():
        uptime, _, step = line.partition(" ")
        for phase, prefix in TIMELINE_PHASES:
            # The last scenario's step ends the scenario phase (a boot may run several).
            if step.startswith(prefix) and (phase not in stamps or phase == "scenario"):
                try:
                    stamps[phase] = float(uptime)
                except ValueError:
                    pass
    last = 0.0
    for phase, _ in TIMELINE_PHASES:
        if phase in stamps:
            timings.record("  " + phase, name, stamps[phase] - last)
            last = stamps[phase]


def _interrupt(signum, _frame):
    raise KeyboardInterrupt


def main() -> int:
    # SIGTERM / SIGHUP end a run like Ctrl-C: the guest is powered off, never left behind.
    signal.signal(signal.SIGTERM, _interrupt)
    signal.signal(signal.SIGHUP, _interrupt)
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--suite", default="bookworm", choices=SUITES)
    p.add_argument("--scenario", default="standard")
    p.add_argument("--metrics-out", metavar="FILE")
    p.add_argument("--extra", metavar="DIR", help="folder copied into the guest; its ./run runs after the scenario")
    p.add_argument("--demo", action="store_true", help="keep the guest up until Ctrl-C")
    p.add_argument("--prometheus", action="store_true",
                   help="a real Prometheus server scrapes the guest; its report of the dashboard's queries and "
                        "the alert rules goes to the output folder (prometheus.json)")
    p.add_argument("--out", metavar="DIR", help="folder for the guest's logs (default: a new temporary one)")
    p.add_argument("--timeout", type=float, default=600, metavar="SECONDS",
                   help="for the boot and the scenarios to finish (default 600; the soak scenario needs more)")
    args = p.parse_args()
    if not args.demo and not args.metrics_out:
        p.error("--metrics-out FILE is required (or --demo)")
    if os.geteuid() != 0:
        print("lab: needs root (debootstrap, mkfs)", file=sys.stderr)
        return 1
    try:
        result = run(args.suite, args.scenario, args.extra, args.demo, args.out, timeout=args.timeout,
                     prometheus=args.prometheus)
    except LabError as e:
        print("lab: error: %s" % e, file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("lab: interrupted; the guest was powered off", file=sys.stderr)
        return 130
    if args.metrics_out:
        with open(args.metrics_out, "w") as f:
            f.write(result.metrics)
        log("scrape written to %s" % args.metrics_out)
    problems = []
    if not result.scenario.get("ok"):
        problems.append("scenario failed: %s" % result.scenario.get("error", "no summary"))
    if result.daemon_rc != 0:
        problems.append("vfiomond did not stop cleanly (exit %s)" % result.daemon_rc)
    if os.path.exists(os.path.join(result.out, "extra.rc")) and _read(os.path.join(result.out, "extra.rc")).strip() != "0":
        problems.append("EXTRA run failed; see %s/extra.log" % result.out)
    for problem in problems:
        print("lab: error: " + problem, file=sys.stderr)
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
