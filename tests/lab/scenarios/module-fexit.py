#!/usr/bin/env python3
"""Scenario "module-fexit": vfiomond with probes.module_trampolines, checked against the kernel.

A second daemon starts beside the lab's (port VFIOMOND_PORT + 1, the lab's
configuration plus ``[probes] module_trampolines = true`` and ``[pins] verify =
false``, the kernel log left to the lab's daemon, which verifies the pins): where
the kernel has
module BTF and BCC is 0.28+, the vfio modules' hooks (BAR fault, pin, unpin, the
charge marker) are fentry/fexit programs instead of kprobes.  A child process
then opens edu's type1 container, maps 8 MiB of touched memory read-write and
reads edu's BAR0 page by page, toggles memory decode (vfio zaps the BAR's
mapping) and reads it again, the kernel's page_fault_user tracepoint recording
its faults; the scenario scrapes
the second daemon while the child holds its mapping (with the child's VmLck) and
after the child unmapped, closed and exited.  The host's test compares its
numbers with the kernel's: VmLck, the pages mapped, the faults the child took
in the BAR (the tracepoint's).  The second daemon's log is module-fexit-vfiomond.log.
"""

import json
import os
import re
import signal
import subprocess
import sys
import time
import urllib.request

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import vfiolib as v  # noqa: E402

SRC = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", "..", ".."))
OUT = "/lab/out"
MIB = 1 << 20
BUFFER = 8 * MIB
IOVA = 0x8000000
PORT = str(int(os.environ.get("VFIOMOND_PORT") or 10119) + 1)
# The kernel log is the lab daemon's to watch: a second reader would raise the
# kernel-log scenario's alerts again.
CONFIG = """[daemon]
log_level = "info"
watch_kernel_log = false

[probes]
module_trampolines = true

[pins]
verify = false
verify_interval = 1.0
samples = 16
"""


def log(msg):
    print("module-fexit: " + msg, file=sys.stderr, flush=True)


def scrape():
    with urllib.request.urlopen("http://127.0.0.1:%s/metrics" % PORT, timeout=30) as r:
        return r.read().decode()


def check(path):
    """``vfiomond check --config`` with that configuration: {probe: methods}."""
    out = subprocess.run([sys.executable, "-m", "vfiomond", "check", "--json", "--config", path],
                         stdout=subprocess.PIPE, check=True, env=dict(os.environ, PYTHONPATH=SRC)).stdout
    return {row["probe"]: ",".join(row["methods"]) for row in json.loads(out)["probes"] if row["available"]}


def start_daemon():
    path = os.path.join(OUT, "module-fexit.toml")
    with open(path, "w") as f:
        f.write(CONFIG)
    log_path = os.path.join(OUT, "module-fexit-vfiomond.log")
    out = open(log_path, "w")
    proc = subprocess.Popen([sys.executable, "-m", "vfiomond", "run", "--config", path, "--listen", ":" + PORT],
                            stdout=out, stderr=subprocess.STDOUT, env=dict(os.environ, PYTHONPATH=SRC))
    deadline = time.monotonic() + 900
    while time.monotonic() < deadline:
        with open(log_path) as f:
            if "serving /metrics" in f.read():
                return proc
        if proc.poll() is not None:
            raise RuntimeError("the second vfiomond exited %d" % proc.returncode)
        time.sleep(0.5)
    raise RuntimeError("the second vfiomond not ready after 900 s")


class FaultTrace:
    """The kernel's own record of this process's user page faults: the x86
    ``exceptions:page_fault_user`` tracepoint (arch/x86/mm/fault.c) in a tracefs
    instance of its own, filtered to this pid.  Unlike getrusage's minor faults it
    gives each fault's address, so the interpreter's faults elsewhere drop out."""

    ROOT = "/sys/kernel/tracing/instances/vfiomond-module-fexit"
    EVENT = "events/exceptions/page_fault_user"

    def __init__(self):
        os.mkdir(self.ROOT)
        self._write(self.EVENT + "/filter", "common_pid == %d" % os.getpid())
        self._write(self.EVENT + "/enable", "1")

    def _write(self, path, text):
        with open(os.path.join(self.ROOT, path), "w") as f:
            f.write(text)

    def faults_in(self, start, size):
        """Faults recorded at addresses in [start, start + size); ends the trace."""
        self._write("tracing_on", "0")
        with open(os.path.join(self.ROOT, "trace")) as f:
            text = f.read()
        kept, written = re.search(r"entries-in-buffer/entries-written: (\d+)/(\d+)", text).groups()
        if kept != written:
            raise RuntimeError("the fault trace lost %d of %s events" % (int(written) - int(kept), written))
        found = re.findall(r"page_fault_user: address=(0x[0-9a-f]+)", text)
        self._write(self.EVENT + "/enable", "0")
        os.rmdir(self.ROOT)
        return sum(1 for a in found if start <= int(a, 16) < start + size)


def child(dev, to_parent, from_parent):
    """Map, fault, report, wait for the parent's scrape, unmap, close."""
    container = v.Container(dev.iommu_group)
    buf = v.mmap_anonymous(BUFFER)
    v.touch_pages(buf, BUFFER)
    container.map_dma(buf, IOVA, BUFFER, v.VFIO_DMA_MAP_FLAG_READ | v.VFIO_DMA_MAP_FLAG_WRITE)
    device_fd = container.device(dev.bdf)
    bar = v.region(device_fd, dev.bar)
    config = v.region(device_fd, v.VFIO_PCI_CONFIG_REGION_INDEX)
    command = v.pci_command(device_fd, config)
    addr = v.mmap_device(device_fd, bar.size, bar.offset)
    trace = FaultTrace()
    v.read_strided(addr, bar.size, v.PAGE)  # faults the BAR in
    # Decode off and on: vfio zaps the BAR's mapping, so the next read faults again.
    v.set_pci_command(device_fd, config, command & ~v.PCI_COMMAND_MEMORY)
    v.set_pci_command(device_fd, config, command | v.PCI_COMMAND_MEMORY)
    v.read_strided(addr, bar.size, v.PAGE)
    faults = trace.faults_in(addr, bar.size)
    report = {"pid": os.getpid(), "vm_lck": v.proc_status_kib("VmLck") * 1024, "mapped": BUFFER,
              "page": v.PAGE, "bar_size": bar.size, "bar_pages": bar.size // v.PAGE, "bar_reads": 2,
              "bar_faults": faults}
    os.write(to_parent, (json.dumps(report) + "\n").encode())
    os.read(from_parent, 1)  # scraped
    v.munmap(addr, bar.size)
    report = {"unmapped": container.unmap_dma(IOVA, BUFFER)}
    os.close(device_fd)
    container.close()
    os.write(to_parent, (json.dumps(report) + "\n").encode())


def run_child(dev):
    """(the child's report while mapped, a scrape then, the child's report at its end)."""
    up_r, up_w = os.pipe()
    down_r, down_w = os.pipe()
    pid = os.fork()
    if pid == 0:
        code = 0
        try:
            child(dev, up_w, down_r)
        except BaseException as e:
            os.write(up_w, (json.dumps({"error": "%s: %s" % (type(e).__name__, e)}) + "\n").encode())
            code = 1
        os._exit(code)
    lines = os.fdopen(up_r)
    mapped = json.loads(lines.readline() or '{"error": "the child died"}')
    time.sleep(2.5)  # two of the daemon's 1 s refreshes of its per-process series
    during = scrape()
    os.write(down_w, b"x")
    ended = json.loads(lines.readline() or '{"error": "the child died"}')
    os.waitpid(pid, 0)
    return mapped, during, ended


def main():
    summary = {"scenario": "module-fexit", "kernel": os.uname().release}
    proc = None
    try:
        edu = next(d for d in v.find_devices() if d.name == "edu")
        proc = start_daemon()
        log("second vfiomond ready (pid %d)" % proc.pid)
        summary["check"] = check(os.path.join(OUT, "module-fexit.toml"))
        summary["before"] = scrape()
        mapped, during, ended = run_child(edu)
        if "error" in mapped or "error" in ended:
            raise RuntimeError(mapped.get("error") or ended.get("error"))
        time.sleep(2.5)
        summary.update(device=edu.bdf, child=mapped, child_end=ended, during=during, after=scrape(), ok=True)
        log("child %d: mapped %d bytes, %d BAR faults, VmLck %d" % (
            mapped["pid"], mapped["mapped"], mapped["bar_faults"], mapped["vm_lck"]))
    except Exception as e:
        summary.update(ok=False, error="%s: %s" % (type(e).__name__, e))
    finally:
        if proc is not None:
            proc.send_signal(signal.SIGTERM)
            try:
                summary["daemon_exit"] = proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                proc.kill()
                summary["daemon_exit"] = "killed"
    print(json.dumps(summary))
    return 0 if summary.get("ok") else 1


if __name__ == "__main__":
    sys.exit(main())
