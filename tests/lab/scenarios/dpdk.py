#!/usr/bin/env python3
"""Scenario "dpdk": DPDK's testpmd on the lab's e1000e (82574L), bound to vfio-pci by
DPDK's own dpdk-devbind.py, on 2 MiB hugepages.

Runs (one testpmd each, interactive, driven on its stdin):
  quit-1, quit-2   started, forwarding started and stopped, "quit"
  kill             started, forwarding started, SIGKILL while it holds its mappings

For each run the summary holds DPDK's own account next to vfiomond's /metrics at the
same moments: the memory segments DPDK has (testpmd's dump_physmem: what its EAL maps
for DMA, IOVA = VA with VFIO), which IOMMU backend its EAL chose (its log),
/proc/PID/status VmLck and VmPin; tests/lab/test_dpdk_lab.py compares.
"""

import glob
import json
import os
import re
import signal
import subprocess
import sys
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import vmm  # noqa: E402

E1000E = ("0x8086", "0x10d3")
HUGEPAGES = 256  # 512 MiB of 2 MiB pages
PROMPT = "testpmd> "
# dump_physmem (lib/eal/common/eal_common_memory.c rte_dump_physmem_layout):
# "Segment 3-0: IOVA:0x..., len:2097152, virt:0x..., socket_id:0, hugepage_sz:2097152, ..."
SEGMENT = re.compile(r"Segment [\d-]+: IOVA:0x([0-9a-f]+), len:(\d+), virt:0x([0-9a-f]+)")
# Its EAL's log of each change of its heap (lib/eal/common/malloc_heap.c), which the VFIO
# mem event callback maps or unmaps for DMA: "Heap on socket 0 was expanded by 6MB".
HEAP = re.compile(r"Heap on socket \d+ was (expanded|shrunk) by (\d+)MB")


def find_e1000e(sysfs: str = "/sys") -> str:
    root = os.path.join(sysfs, "bus/pci/devices")
    for bdf in sorted(os.listdir(root)):
        with open(os.path.join(root, bdf, "vendor")) as f, open(os.path.join(root, bdf, "device")) as g:
            if (f.read().strip(), g.read().strip()) == E1000E:
                return bdf
    raise OSError("no e1000e (8086:10d3) in the lab guest")


class Testpmd:
    def __init__(self, bdf: str, log_path: str):
        # Line-buffered stdout: dump_physmem's lines come before the next prompt, and
        # none are lost to SIGKILL.
        argv = ["stdbuf", "-oL", "dpdk-testpmd", "-l", "0-1", "-n", "1", "-a", bdf, "--file-prefix", "vfiomond-lab",
                "--log-level", "lib.eal:debug", "--", "-i", "--total-num-mbufs", "2048", "--nb-cores", "1"]
        self.log_path = log_path
        self.proc = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                     text=True, bufsize=1)
        self.output = []
        self.lock = threading.Lock()
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()
        self.wait_prompt(1, 300)

    def _read(self):
        chunk = ""
        while True:
            c = self.proc.stdout.read(1)
            if not c:
                break
            chunk += c
            if c == "\n" or chunk.endswith(PROMPT):
                with self.lock:
                    self.output.append(chunk)
                chunk = ""

    def text(self) -> str:
        with self.lock:
            return "".join(self.output)

    def wait_prompt(self, count: int, timeout: float = 120) -> None:
        deadline = time.monotonic() + timeout
        while self.text().count(PROMPT) < count:
            if self.proc.poll() is not None:
                raise OSError("testpmd exited (%s): %s" % (self.proc.returncode, self.text()[-1500:]))
            if time.monotonic() > deadline:
                raise OSError("testpmd: no prompt after %.0f s: %s" % (timeout, self.text()[-1500:]))
            time.sleep(0.1)

    def command(self, line: str, timeout: float = 120) -> str:
        before = self.text()
        self.proc.stdin.write(line + "\n")
        self.proc.stdin.flush()
        self.wait_prompt(before.count(PROMPT) + 1, timeout)
        return self.text()[len(before):]

    def close(self, how: str) -> int:
        if how == "quit":
            self.proc.stdin.write("quit\n")
            self.proc.stdin.flush()
        else:
            self.proc.send_signal(signal.SIGKILL)
        rc = self.proc.wait(timeout=120)
        self.reader.join(timeout=10)
        with open(self.log_path, "w") as f:
            f.write(self.text())
        return rc


def mount_hugetlbfs(path: str = "/dev/hugepages") -> None:
    """Where DPDK's EAL finds its hugepages (systemd mounts it on a usual host)."""
    with open("/proc/mounts") as f:
        if any(line.split()[1] == path and line.split()[2] == "hugetlbfs" for line in f):
            return
    os.makedirs(path, exist_ok=True)
    subprocess.run(["mount", "-t", "hugetlbfs", "-o", "pagesize=2M", "hugetlbfs", path], check=True)


def backend_of(log: str) -> str:
    """The IOMMU backend DPDK's EAL chose, from its log (lib/eal/linux/eal_vfio.c)."""
    m = re.search(r"using IOMMU type (\d+) \(([^)]*)\)", log, re.I)
    if m:
        return "type%s (%s)" % (m.group(1), m.group(2))
    return "cdev/iommufd" if "iommufd" in log.lower() else "unknown"


def heap_changes(log: str) -> dict:
    """Bytes DPDK's heap grew and shrank by, from its EAL log; "unmapped": what it shrank
    while its VFIO mem event callback was registered (lib/eal/linux/eal_vfio.c), which
    unmaps it.  DPDK 24.11 unregisters the callback before its heap's last shrink at exit,
    which then is no unmap call: the kernel drops the mapping when the container closes."""
    out = {"expanded": 0, "shrunk": 0, "unmapped": 0}
    registered = False
    for line in log.splitlines():
        if "Mem event callback 'vfio_mem_event_clb" in line:
            registered = not line.rstrip().endswith("unregistered")
            continue
        m = HEAP.search(line)
        if m:
            size = int(m.group(2)) << 20
            out[m.group(1)] += size
            if m.group(1) == "shrunk" and registered:
                out["unmapped"] += size
    return out


def run(name: str, bdf: str, port: str, end: str, out_dir: str) -> dict:
    before = vmm.vfiomond_view(port, 0)["totals"]
    pmd = Testpmd(bdf, os.path.join(out_dir, "dpdk-%s.log" % name))
    out = {"run": name, "pid": pmd.proc.pid, "totals_before": before}
    try:
        physmem = pmd.command("dump_physmem")
        segments = [(int(m.group(1), 16), int(m.group(2)), int(m.group(3), 16)) for m in SEGMENT.finditer(physmem)]
        out["segments"] = len(segments)
        out["segment_bytes"] = sum(length for _, length, _ in segments)
        out["iova_is_va"] = all(iova == virt for iova, _, virt in segments)
        pmd.command("start")
        time.sleep(1)
        pmd.command("stop")
        out["proc"] = vmm.proc_status(pmd.proc.pid)
        out["vfiomond_running"] = vmm.settle(port, pmd.proc.pid, "vfiomond_process_dma_mapped_bytes", True)
        if end == "kill":
            pmd.command("start")
        out["backend"] = backend_of(pmd.text())
        out["heap_running"] = heap_changes(pmd.text())
        out["exit"] = pmd.close(end)
        out["heap_final"] = heap_changes(pmd.text())
        out["vfiomond_after_exit"] = vmm.settle(port, pmd.proc.pid, "vfiomond_process_dma_mapped_bytes", False)
        out["totals_after"] = vmm.vfiomond_view(port, 0)["totals"]
    finally:
        if pmd.proc.poll() is None:
            pmd.close("kill")
    return out


def main():
    port = os.environ.get("VFIOMOND_PORT", "10119")
    out_dir = "/lab/out"
    summary = {"scenario": "dpdk", "kernel": os.uname().release, "runs": {}}
    try:
        version = subprocess.run(["dpkg-query", "-W", "-f", "${Version}", "dpdk-dev"], stdout=subprocess.PIPE,
                                 text=True).stdout
        summary["dpdk"] = version
        bdf = find_e1000e()
        summary["device"] = bdf
        bind = subprocess.run(["dpdk-devbind.py", "--bind", "vfio-pci", bdf], stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, text=True)
        summary["devbind"] = bind.stdout.strip()
        if bind.returncode != 0:
            raise OSError("dpdk-devbind.py failed: %s" % bind.stdout.strip())
        summary["hugepages"] = vmm.reserve_hugepages(HUGEPAGES)
        mount_hugetlbfs()
        for name, end in (("quit-1", "quit"), ("quit-2", "quit"), ("kill", "kill")):
            summary["runs"][name] = run(name, bdf, port, end, out_dir)
    except (OSError, subprocess.SubprocessError, ValueError) as e:
        summary.update(ok=False, error="%s: %s" % (type(e).__name__, e))
        print(json.dumps(summary))
        return 1
    finally:
        # A killed testpmd leaves its hugepage files (as DPDK does): remove them, or the
        # pages stay taken for the scenarios after this one.
        for name in glob.glob("/dev/hugepages/vfiomond-lab*"):
            os.unlink(name)
        try:
            vmm.reserve_hugepages(0)
        except OSError:
            pass
    summary["ok"] = True
    print(json.dumps(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main())
