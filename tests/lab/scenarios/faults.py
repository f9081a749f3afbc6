#!/usr/bin/env python3
"""Scenario "faults": what production does to a daemon, while it is scraped without pause.

A scraper thread reads /metrics back to back for the whole scenario (every
answer's status and time recorded).  Steps, each recorded in the JSON summary:
  sigkill-map   a child MAP_DMAs 512 MiB of fresh memory and is SIGKILLed 0.2 s
                into the call, three times: nothing stays tracked, no alert
  unbind-busy   a thread faults ivshmem's BAR while vfio-pci is unbound from the
                device; the unbind waits until the user lets go; bound again
  modules       both devices unbound, vfio_pci, vfio_pci_core and
                vfio_iommu_type1 removed, loaded and bound again; then a MAP_DMA
                and a BAR touch: every probe attached again
  journald      journald stopped, a kernel splat written to /dev/kmsg (its alert
                cannot reach the journal), journald started, another splat
  kmsg-flood    FLOOD_LINES vfio-pci lines written to /dev/kmsg at about
                FLOOD_RATE a second: each one counted, or counted as lost
  sighup-flood  SIGHUP 100 times a second for SIGHUP_SECONDS
Prints one JSON line; exit 0 only if every step ran.
"""

import json
import os
import signal
import subprocess
import sys
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import vfiolib as v  # noqa: E402

SRC = "/lab/src"
OUT = "/lab/out"
MIB = 1 << 20
PORT = os.environ.get("VFIOMOND_PORT", "10119")
DAEMON = int(os.environ.get("VFIOMOND_PID", "0"))
MODULES = ("vfio_pci", "vfio_pci_core", "vfio_iommu_type1")  # in unload order; those loaded
KILL_SIZE = 512 * MIB
KILL_IOVA = 0x80000000
FLOOD_LINES = 50000
FLOOD_RATE = 10000
SIGHUP_SECONDS = 5.0
SPLAT = ("<4>BUG: unable to handle page fault for address: ffffc90000a00000",
         "<4>#PF: supervisor read access in kernel mode",
         "<4>Oops: 0000 [#1] PREEMPT SMP NOPTI",
         "<4>RIP: 0010:vfiomond_lab_fault+0x10/0x20",
         "<4>Call Trace:",
         "<4> <TASK>",
         "<4> vfiomond_lab_fault+0x10/0x20",
         "<4> </TASK>")


def log(msg):
    print("faults: " + msg, file=sys.stderr, flush=True)


class Scraper(threading.Thread):
    """GET /metrics back to back; every answer's outcome and time."""

    def __init__(self):
        super().__init__(daemon=True)
        self.stop = threading.Event()
        self.ok, self.failed, self.times, self.errors = 0, 0, [], []

    def run(self):
        while not self.stop.is_set():
            start = time.monotonic()
            try:
                v.scrape(PORT)
                self.ok += 1
                self.times.append(time.monotonic() - start)
            except Exception as e:  # recorded: the test requires none
                self.failed += 1
                self.errors.append("%s: %s" % (type(e).__name__, e))
                time.sleep(0.2)

    def report(self):
        times = sorted(self.times)
        pick = lambda q: round(times[min(len(times) - 1, int(q * len(times)))], 3) if times else None  # noqa: E731
        return {"ok": self.ok, "failed": self.failed, "p50_s": pick(0.5), "p99_s": pick(0.99),
                "errors": self.errors[:5]}


def edu_and_ivshmem():
    found = {d.name: d for d in v.find_devices()}
    return found["edu"], found["ivshmem"]


def wait_for(what, condition, timeout=120.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        result = condition()
        if result:
            return result
        time.sleep(0.5)
    raise RuntimeError("timed out waiting for " + what)


def sigkill_mid_map(edu):
    """A child maps KILL_SIZE of untouched memory (pinning faults every page in) and is killed in the call."""
    before = v.scrape(PORT)
    code = ("import sys, os; sys.path.insert(0, %r); import vfiolib as v\n"
            "c = v.Container(%r); buf = v.mmap_anonymous(%d)\n"
            "print('mapping', flush=True)\n"
            "c.map_dma(buf, %d, %d, v.VFIO_DMA_MAP_FLAG_READ | v.VFIO_DMA_MAP_FLAG_WRITE)\n"
            "print('mapped', flush=True)\n"
            % (os.path.dirname(os.path.abspath(__file__)), edu.iommu_group, KILL_SIZE, KILL_IOVA, KILL_SIZE))
    outcomes = []
    for _ in range(3):
        child = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, universal_newlines=True)
        assert child.stdout.readline().strip() == "mapping"
        time.sleep(0.2)
        child.kill()
        rest = child.stdout.read()
        child.wait()
        outcomes.append("finished before the kill" if "mapped" in rest else "killed in MAP_DMA")
    after = wait_for("the killed users' mappings to be gone",
                     lambda: (lambda t: v.total(t, "vfiomond_pin_mappings") == v.total(before, "vfiomond_pin_mappings")
                              and t)(v.scrape(PORT)), timeout=60)
    return {"outcomes": outcomes,
            "pin_mappings": [v.total(before, "vfiomond_pin_mappings"), v.total(after, "vfiomond_pin_mappings")],
            "pin_mismatches": v.total(after, "vfiomond_pin_mismatches_total") - v.total(before, "vfiomond_pin_mismatches_total")}


def unbind_while_faulting(ivshmem):
    container = v.Container(ivshmem.iommu_group)
    fd = container.device(ivshmem.bdf)
    info = v.region(fd, 2)
    bar = v.mmap_device(fd, info.size, info.offset)
    stop = threading.Event()
    faults = [0]

    def fault_loop():
        config = v.region(fd, v.VFIO_PCI_CONFIG_REGION_INDEX)
        while not stop.is_set():
            v.read_strided(bar, min(info.size, 16 * MIB), 4096)
            command = v.pci_command(fd, config)
            v.set_pci_command(fd, config, command & ~2)  # memory decode off: vfio zaps the BAR mapping
            v.set_pci_command(fd, config, command | 2)
            faults[0] += 1

    faulter = threading.Thread(target=fault_loop)
    faulter.start()
    def write_unbind():  # blocks in the kernel until the device's user lets go
        fd = os.open("/sys/bus/pci/drivers/vfio-pci/unbind", os.O_WRONLY)
        try:
            os.write(fd, ivshmem.bdf.encode())
        finally:
            os.close(fd)

    unbind = threading.Thread(target=write_unbind)
    start = time.monotonic()
    unbind.start()
    time.sleep(2.0)
    waited = unbind.is_alive()
    stop.set()
    faulter.join()
    v.munmap(bar, info.size)
    os.close(fd)
    container.close()
    unbind.join(60)
    seconds = round(time.monotonic() - start, 1)
    subprocess.run([os.path.join(SRC, "tests/lab/guest/bind.sh")], check=True, stdout=sys.stderr)
    return {"fault_rounds": faults[0], "unbind_waited_for_the_user": waited, "unbind_seconds": seconds}


def modules_under_load(edu):
    for d in v.find_devices():
        with open("/sys/bus/pci/drivers/vfio-pci/unbind", "w") as f:
            f.write(d.bdf)
    for module in MODULES:
        if os.path.isdir("/sys/module/" + module):  # vfio_pci_core: 5.15+ (vfio_pci alone before)
            subprocess.run(["rmmod", module], check=True)
    subprocess.run([os.path.join(SRC, "tests/lab/guest/bind.sh")], check=True, stdout=sys.stderr)
    edu, _ = edu_and_ivshmem()
    text = wait_for("every probe attached again", lambda: (lambda t: all(
        float(line.rpartition(" ")[2]) == 1 for line in t.splitlines() if line.startswith("vfiomond_probe_attached{"))
        and t)(v.scrape(PORT)))
    container = v.Container(edu.iommu_group)
    buf = v.mmap_anonymous(MIB)
    v.touch_pages(buf, MIB)
    container.map_dma(buf, 0x1000000, MIB, v.VFIO_DMA_MAP_FLAG_READ | v.VFIO_DMA_MAP_FLAG_WRITE)
    container.unmap_dma(0x1000000, MIB)
    container.close()
    after = v.scrape(PORT)
    return {"probes_attached": v.total(text, "vfiomond_probe_attached"),
            "map_calls_after": v.total(after, "vfiomond_dma_map_duration_seconds_count", backend="type1")}


def write_kmsg(lines):
    fd = os.open("/dev/kmsg", os.O_WRONLY)
    try:
        for line in lines:
            os.write(fd, (line + "\n").encode())
    finally:
        os.close(fd)


def journald_restart():
    pid = int(subprocess.run(["pidof", "systemd-journald"], stdout=subprocess.PIPE, universal_newlines=True,
                             check=True).stdout.split()[0])
    before = v.scrape(PORT)
    os.kill(pid, signal.SIGTERM)
    wait_for("journald to stop", lambda: not os.path.exists("/proc/%d" % pid), timeout=30)
    write_kmsg(SPLAT)
    down = wait_for("the splat's alert", lambda: (lambda t: v.total(t, "vfiomond_alerts_total", kind="kernel_splat")
                                                   > v.total(before, "vfiomond_alerts_total", kind="kernel_splat")
                                                   and t)(v.scrape(PORT)), timeout=60)
    subprocess.Popen(["/lib/systemd/systemd-journald"], stdout=open(os.path.join(OUT, "journald-2.log"), "w"),
                     stderr=subprocess.STDOUT)
    wait_for("journald's socket", lambda: subprocess.run(["journalctl", "-n", "1", "-q"],
                                                         stdout=subprocess.DEVNULL).returncode == 0, timeout=30)
    time.sleep(1.0)
    write_kmsg(l.replace("ffffc90000a00000", "ffffc90000b00000") for l in SPLAT)
    up = wait_for("the second splat's alert", lambda: (lambda t: v.total(t, "vfiomond_alerts_total", kind="kernel_splat")
                                                       > v.total(down, "vfiomond_alerts_total", kind="kernel_splat")
                                                       and t)(v.scrape(PORT)), timeout=60)
    return {"alerts": [v.total(t, "vfiomond_alerts_total", kind="kernel_splat") for t in (before, down, up)],
            "journal_failures": [v.total(t, "vfiomond_alerts_journal_failures_total", kind="kernel_splat")
                                 for t in (before, down, up)]}


def kmsg_flood():
    before = v.scrape(PORT)
    fd = os.open("/dev/kmsg", os.O_WRONLY)
    start = time.monotonic()
    try:
        for i in range(FLOOD_LINES):
            os.write(fd, b"<6>vfio-pci 0000:00:02.0: vfiomond-lab flood line %d\n" % i)
            if i % 100 == 99:
                ahead = (i + 1) / FLOOD_RATE - (time.monotonic() - start)
                if ahead > 0:
                    time.sleep(ahead)
    finally:
        os.close(fd)
    seconds = time.monotonic() - start
    counted = lambda t: (v.total(t, "vfiomond_kernel_events_total", kind="vfio")  # noqa: E731
                         - v.total(before, "vfiomond_kernel_events_total", kind="vfio"))
    lost = lambda t: (v.total(t, "vfiomond_kernel_log_lines_lost_total")  # noqa: E731
                      - v.total(before, "vfiomond_kernel_log_lines_lost_total"))
    # The watcher catches up; done when every line is counted or known lost.
    after = wait_for("the flood read", lambda: (lambda t: counted(t) + lost(t) >= FLOOD_LINES and t)(v.scrape(PORT)),
                     timeout=300)
    time.sleep(3.0)
    after = v.scrape(PORT)
    return {"lines": FLOOD_LINES, "seconds": round(seconds, 1), "counted": counted(after), "lost": lost(after)}


def sighup_flood():
    before = v.scrape(PORT)
    sent = 0
    start = time.monotonic()
    while time.monotonic() - start < SIGHUP_SECONDS:
        os.kill(DAEMON, signal.SIGHUP)
        sent += 1
        time.sleep(0.01)
    time.sleep(3.0)
    after = v.scrape(PORT)
    return {"sent": sent,
            "reloads": {r: v.total(after, "vfiomond_config_reloads_total", result=r)
                        - v.total(before, "vfiomond_config_reloads_total", result=r) for r in ("success", "failure")},
            "last_reload_successful": v.total(after, "vfiomond_config_last_reload_successful")}


def main():
    summary = {"scenario": "faults", "pid": os.getpid(), "daemon": DAEMON}
    with open("/proc/sys/kernel/printk_devkmsg", "w") as f:
        f.write("on\n")
    scraper = Scraper()
    scraper.start()
    try:
        edu, ivshmem = edu_and_ivshmem()
        first = v.scrape(PORT)
        for name, step in (("sigkill-map", lambda: sigkill_mid_map(edu)),
                           ("unbind-busy", lambda: unbind_while_faulting(ivshmem)),
                           ("modules", lambda: modules_under_load(edu)),
                           ("journald", journald_restart),
                           ("kmsg-flood", kmsg_flood),
                           ("sighup-flood", sighup_flood)):
            log("step " + name)
            t0 = time.monotonic()
            summary[name] = step()
            summary[name]["step_seconds"] = round(time.monotonic() - t0, 1)
        last = v.scrape(PORT)
        summary["alerts"] = {kind: v.total(last, "vfiomond_alerts_total", kind=kind)
                             - v.total(first, "vfiomond_alerts_total", kind=kind)
                             for kind in ("pin_mismatch", "zero_page_pin", "memlock_refused", "kernel_splat",
                                          "probe_lost", "device_gone_in_use", "kernel_advisory")}
        summary["task_failures"] = v.total(last, "vfiomond_task_failures_total")
        summary["worker_restarts"] = v.total(last, "vfiomond_worker_restarts_total")
        summary["collector_failures"] = sum(1 for line in last.splitlines()
                                            if line.startswith("vfiomond_scrape_collector_success{")
                                            and float(line.rpartition(" ")[2]) != 1)
        summary["daemon_alive"] = os.path.exists("/proc/%d" % DAEMON)
        summary["ok"] = True
    except Exception as e:
        summary.update(ok=False, error="%s: %s" % (type(e).__name__, e))
    scraper.stop.set()
    scraper.join(60)
    summary["scrapes"] = scraper.report()
    print(json.dumps(summary))
    return 0 if summary["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
