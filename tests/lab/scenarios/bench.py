#!/usr/bin/env python3
"""Scenario "bench": vfiomond's cost on the VFIO hot paths, next to the reference tools
(run by benchmarks/bench.py; see benchmarks/RESULTS.md).

Workloads (the same in every phase), on edu through its type1 container:
- faults: BAR0 (1 MiB) mmap'ed; per pass, memory decode toggled (vfio zaps the
  mapping) and one read per 4 KiB page: per-fault time is the pass time over the
  process's minor faults (getrusage; 256 per pass where each page faults, 1 where
  the fault remaps the whole VMA);
- dma: a touched anonymous buffer of DMA_MIB MiB (MADV_HUGEPAGE) MAP_DMA'ed and
  UNMAP_DMA'ed REPEAT times, after WARM_REPEAT 2 MiB pairs that are not counted: each
  tracer's programs on the ioctl and the pin path run hot, as on a host that maps
  all day (under TCG the first runs of a program cost mostly its translation, which
  would otherwise dominate REPEAT calls);
- small_dma: 2 MiB of it (one huge page: one pinned run) MAP_DMA'ed and UNMAP_DMA'ed
  SMALL_REPEAT times in a row: the per-ioctl cost with the tracers' code hot (under
  TCG a program run a few times per second costs mostly its translation);
- steady: fault passes for STEADY_SECONDS, for the tracer's CPU at a sustained
  fault rate;
- scale: MAP_DMA of SCALE_MIB sizes once each with vfiomond, to show its
  in-kernel work and its events to user space per GiB;
- write faults: the host's copy-on-write path (do_wp_page), which vfiomond hooks
  for every process: WP_PAGES pages of fresh anonymous memory (THP off) read (the
  zero page is mapped) and then written (each write a do_wp_page that copies), by a
  process holding no pins ("write_faults") and by one holding a DMA mapping
  elsewhere ("write_faults_pinned": each fault goes to vfiomond as an event).

Phases: "vfiomond" (the daemon the lab started), "none" (vfiomond stopped),
"funclatency" (BCC's funclatency-bpfcc on the fault function, then on the map
function: the reference for kprobe + histogram cost), "minimal_bcc"
(benchmarks/minimal_bcc.py on every symbol vfiomond hooks: the footprint
reference), "vfiomond_mod" (vfiomond with probes.module_trampolines), "side_by_side"
(funclatency on the fault, map and pin functions, and minimal_bcc on vfiomond's own
attach points as the floor of any tool hooking them, with each vfiomond attached at
the same time: BPF time in the very same faults and ioctls), and vfiomond started again
(start-up time, memory), which the host scrapes as usual.  A vfiomond's "RSS steady"
is read after its phase's work and one housekeeping more (HOUSEKEEPING_INTERVAL).
In-kernel cost comes from kernel.bpf_stats_enabled: run_time_ns / run_cnt of the
tracer's BPF programs (/proc/PID/fdinfo).  Prints one JSON line.
"""

import ctypes
import json
import os
import re
import resource
import signal
import statistics
import struct
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import vfiolib as v  # noqa: E402

SRC = os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
sys.path.insert(0, SRC)
# Each housekeeping gives the heap freed since back to the kernel
# (footprint.release_free_heap); "RSS steady" is read after one.
from vfiomond.daemon import HOUSEKEEPING_INTERVAL  # noqa: E402
MIB = 1 << 20
FAULT_PASSES = 15
DMA_MIB = int(os.environ.get("BENCH_DMA_MIB", "1024"))
REPEAT = 5
SMALL_REPEAT = 1000
WARM_REPEAT = 50
STEADY_SECONDS = 20
SCALE_MIB = (256, 1024)
WP_PAGES, WP_PASSES = 4096, 9
WP_IOVA = 0x200000000
PORT = os.environ.get("VFIOMOND_PORT", "10119")
OUT = "/lab/out"


def log(msg):
    print("bench: " + msg, file=sys.stderr, flush=True)


# --- the tracer processes -------------------------------------------------

_libc = ctypes.CDLL(None, use_errno=True)
SYS_BPF = 321  # x86_64
BPF_PROG_GET_FD_BY_ID, BPF_OBJ_GET_INFO_BY_FD, BPF_BTF_GET_FD_BY_ID = 13, 15, 19
PROG_INFO_SIZE, PROG_INFO_NAME = 192, 64  # struct bpf_prog_info: its first fields; name[16] at 64
# struct bpf_prog_info: btf_id, func_info_rec_size, func_info (pointer), nr_func_info
PROG_INFO_BTF_ID, PROG_INFO_FUNC_INFO = 128, 132


def _bpf(cmd, attr):
    return _libc.syscall(ctypes.c_long(SYS_BPF), ctypes.c_long(cmd), attr, ctypes.c_long(len(attr)))


def _fd_by_id(cmd, obj_id):
    return _bpf(cmd, ctypes.create_string_buffer(struct.pack("<I", obj_id), 128))


def _info(fd, info):
    return _bpf(BPF_OBJ_GET_INFO_BY_FD, ctypes.create_string_buffer(
        struct.pack("<IIQ", fd, len(info), ctypes.addressof(info)), 128)) == 0


def prog_name(prog_id):
    """The name of BPF program ``prog_id``, or its id: its function's name in the
    program's BTF (its first func_info) where it has BTF, the kernel's name
    otherwise, which keeps 15 characters and names BCC's fentry and fexit programs
    alike after the function they attach to."""
    fd = _fd_by_id(BPF_PROG_GET_FD_BY_ID, prog_id)
    if fd < 0:
        return "id %d" % prog_id
    try:
        func = ctypes.create_string_buffer(8)
        info = ctypes.create_string_buffer(PROG_INFO_SIZE)
        struct.pack_into("<IQI", info, PROG_INFO_FUNC_INFO, 8, ctypes.addressof(func), 1)
        if not _info(fd, info):
            return "id %d" % prog_id
        name = info.raw[PROG_INFO_NAME:PROG_INFO_NAME + 16].split(b"\0")[0].decode()
        btf_id = struct.unpack_from("<I", info.raw, PROG_INFO_BTF_ID)[0]
        if btf_id:
            name = _btf_func_name(btf_id, struct.unpack_from("<I", func.raw, 4)[0]) or name
        return name
    finally:
        os.close(fd)


def _btf_func_name(btf_id, type_id):
    """The name of type ``type_id`` in loaded BTF object ``btf_id`` (struct bpf_btf_info:
    btf, btf_size), or None."""
    from vfiomond import btf  # noqa: PLC0415 (the guest's PYTHONPATH has the source)

    fd = _fd_by_id(BPF_BTF_GET_FD_BY_ID, btf_id)
    if fd < 0:
        return None
    try:
        head = ctypes.create_string_buffer(32)
        if not _info(fd, head):
            return None
        data = ctypes.create_string_buffer(struct.unpack_from("<I", head.raw, 8)[0])
        struct.pack_into("<QI", head, 0, ctypes.addressof(data), len(data))
        if not _info(fd, head):
            return None
        types = btf.Types(data.raw)
        blob, pos = types._header(type_id)[:2]
        return blob.name(struct.unpack_from("<I", blob.data, pos)[0])
    except Exception:  # not BTF we can read: the cut name stays
        return None
    finally:
        os.close(fd)


def bpf_stats(pid):
    """Sum of run_time_ns and run_cnt over the BPF programs process ``pid`` holds,
    and each program's (by fd: its name, run_cnt, run_time_ns)."""
    total = {"run_time_ns": 0, "run_cnt": 0, "programs": {}}
    fd_dir = "/proc/%d/fd" % pid
    for fd in os.listdir(fd_dir):
        try:
            if os.readlink(os.path.join(fd_dir, fd)) != "anon_inode:bpf-prog":
                continue
            with open("/proc/%d/fdinfo/%s" % (pid, fd)) as f:
                info = {k.strip(): val.strip() for k, val in (line.split(":", 1) for line in f if ":" in line)}
        except OSError:
            continue
        cnt, ns = int(info.get("run_cnt", 0)), int(info.get("run_time_ns", 0))
        total["programs"][fd] = (prog_name(int(info["prog_id"])) if "prog_id" in info else info.get("prog_tag", "?"),
                                 cnt, ns)
        total["run_cnt"] += cnt
        total["run_time_ns"] += ns
    return total


def per_program(before, after):
    """Programs that ran between two bpf_stats: [(name, calls, ns)], costliest first."""
    out = []
    for fd, (tag, cnt, ns) in after["programs"].items():
        _, cnt0, ns0 = before["programs"].get(fd, (tag, 0, 0))
        if cnt > cnt0:
            out.append((tag, cnt - cnt0, ns - ns0))
    return sorted(out, key=lambda row: -row[2])


def bpf_spent(before, after):
    """A tracer's BPF calls, time (ns) and programs between two bpf_stats."""
    return {"bpf_run_cnt": after["run_cnt"] - before["run_cnt"],
            "bpf_run_time_ns": after["run_time_ns"] - before["run_time_ns"],
            "bpf_programs": per_program(before, after)}


def cpu_seconds(pid):
    with open("/proc/%d/stat" % pid) as f:
        fields = f.read().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime + stime


def rss_kib(pid):
    return v.proc_status_kib("VmRSS", str(pid))


def anon_kib(pid):
    """The process's own resident memory: VmRSS less the file pages it maps
    (libbcc's LLVM and clang, Python's modules), which are shared page cache."""
    return v.proc_status_kib("RssAnon", str(pid))


def start_and_wait(cmd, ready, log_path, timeout=600):
    """Start ``cmd`` (output to log_path) and wait until a line matches ``ready``;
    returns (process, seconds to ready)."""
    start = time.monotonic()
    out = open(log_path, "w")
    proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT)
    while True:
        with open(log_path) as f:
            if re.search(ready, f.read(), re.M):
                return proc, time.monotonic() - start
        if proc.poll() is not None:
            raise RuntimeError("%s exited %s before ready; see %s" % (cmd[0], proc.returncode, log_path))
        if time.monotonic() - start > timeout:
            raise RuntimeError("%s not ready after %d s" % (cmd[0], timeout))
        time.sleep(0.2)


def wait_for_one_fault_hook(log_path, timeout=120):
    """Wait until the daemon's last "probe bar_fault attached" line (``log_path``) no
    longer lists vfio_pci_mmap_page_fault: on 6.12+ it attaches both fault hooks and
    drops that one once faults show it calls huge_fault (Daemon.drop_redundant_fault_hook),
    which took longer than a fixed warm-up in one slow run."""
    deadline = time.monotonic() + timeout
    while True:
        with open(log_path) as f:
            attached = re.findall(r"probe bar_fault attached: (\S+)", f.read())
        if attached and "vfio_pci_mmap_page_fault" not in attached[-1]:
            return
        if time.monotonic() > deadline:
            raise RuntimeError("the page_fault hook still attached after %d s; see %s" % (timeout, log_path))
        time.sleep(0.2)


def stop(proc_or_pid):
    pid = proc_or_pid if isinstance(proc_or_pid, int) else proc_or_pid.pid
    os.kill(pid, signal.SIGTERM)
    if isinstance(proc_or_pid, int):
        while os.path.exists("/proc/%d" % pid) and "Z" not in open("/proc/%d/stat" % pid).read().split()[2]:
            time.sleep(0.2)
    else:
        proc_or_pid.wait(timeout=120)


def spread_pct(values):
    """The interquartile range of ``values`` in percent of their median: how far one
    median of these repetitions can be trusted (a tracer's cost under it is noise)."""
    q1, median, q3 = statistics.quantiles(values, n=4, method="inclusive")
    return 100 * (q3 - q1) / median if median else 0.0


# --- the workloads --------------------------------------------------------

class Rig:
    """edu's type1 container: its BAR0 mapped for faults, and a buffer for DMA."""

    def __init__(self):
        edu = next(d for d in v.find_devices() if d.name == "edu")
        self.container = v.Container(edu.iommu_group)
        self.device_fd = self.container.device(edu.bdf)
        self.bar = v.region(self.device_fd, edu.bar)
        self.config = v.region(self.device_fd, v.VFIO_PCI_CONFIG_REGION_INDEX)
        command = v.pci_command(self.device_fd, self.config)
        v.set_pci_command(self.device_fd, self.config, command | v.PCI_COMMAND_MEMORY)
        self.addr = v.mmap_device(self.device_fd, self.bar.size, self.bar.offset)
        size = max(DMA_MIB, *SCALE_MIB) * MIB
        self.buffer = v.mmap_anonymous(size)
        v.madvise_hugepage(self.buffer, size)  # physically contiguous runs, as a VM's memory has
        v.touch_pages(self.buffer, size)

    def zap(self):
        command = v.pci_command(self.device_fd, self.config)
        v.set_pci_command(self.device_fd, self.config, command & ~v.PCI_COMMAND_MEMORY)
        v.set_pci_command(self.device_fd, self.config, command | v.PCI_COMMAND_MEMORY)

    def faults(self):
        """Per-fault ns (median over passes), faults per pass, faults per second."""
        per_fault, rates, counts, total_ns = [], [], [], 0
        for _ in range(FAULT_PASSES):
            self.zap()
            before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
            t0 = time.perf_counter_ns()
            v.read_strided(self.addr, self.bar.size, v.PAGE)
            elapsed = time.perf_counter_ns() - t0
            n = resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before
            total_ns += elapsed
            counts.append(n)
            per_fault.append(elapsed / max(n, 1))
            rates.append(n / (elapsed / 1e9))
        return {"pass_ns_per_fault": statistics.median(per_fault), "spread_pct": spread_pct(per_fault),
                "faults_per_pass": statistics.median(counts), "faults_per_second": statistics.median(rates),
                "passes": FAULT_PASSES, "faults": sum(counts), "seconds": total_ns / 1e9}

    def steady(self, seconds):
        """Fault passes for ``seconds``: the daemon's CPU at a sustained fault rate."""
        faults, start = 0, time.monotonic()
        while time.monotonic() - start < seconds:
            self.zap()
            before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
            v.read_strided(self.addr, self.bar.size, v.PAGE)
            faults += resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before
        elapsed = time.monotonic() - start
        return {"faults": faults, "seconds": elapsed, "faults_per_second": faults / elapsed}

    def map_unmap(self, size):
        t0 = time.perf_counter_ns()
        self.container.map_dma(self.buffer, 0x100000000, size, v.VFIO_DMA_MAP_FLAG_READ | v.VFIO_DMA_MAP_FLAG_WRITE)
        t1 = time.perf_counter_ns()
        unmapped = self.container.unmap_dma(0x100000000, size)
        t2 = time.perf_counter_ns()
        if unmapped != size:
            raise RuntimeError("unmapped %d of %d bytes" % (unmapped, size))
        return t1 - t0, t2 - t1

    def write_faults(self, holding_pins=False):
        """Per-fault ns (median over passes) of writes to pages that map the zero page."""
        size = WP_PAGES * v.PAGE
        if holding_pins:
            self.container.map_dma(self.buffer, WP_IOVA, 2 * MIB, v.VFIO_DMA_MAP_FLAG_READ | v.VFIO_DMA_MAP_FLAG_WRITE)
        per_fault, counts, total_ns = [], [], 0
        try:
            for _ in range(WP_PASSES):
                buf = v.mmap_untouched(size)
                v.read_strided(buf, size, v.PAGE)  # read faults: the zero page everywhere
                before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
                t0 = time.perf_counter_ns()
                v.touch_pages(buf, size)  # write faults: a copy per page
                elapsed = time.perf_counter_ns() - t0
                n = resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before
                v.munmap(buf, size)
                total_ns += elapsed
                counts.append(n)
                per_fault.append(elapsed / max(n, 1))
        finally:
            if holding_pins:
                self.container.unmap_dma(WP_IOVA, 2 * MIB)
        return {"pass_ns_per_fault": statistics.median(per_fault), "faults_per_pass": statistics.median(counts),
                "passes": WP_PASSES, "faults": sum(counts), "seconds": total_ns / 1e9, "holding_pins": holding_pins}

    def dma_runs(self, mib, repeat, unit, per_ns):
        """MAP_DMA + UNMAP_DMA of ``mib`` MiB ``repeat`` times: median map and unmap
        time in ``unit`` (``per_ns`` ns each)."""
        maps, unmaps = zip(*(self.map_unmap(mib * MIB) for _ in range(repeat)))
        return {"size_mib": mib, "map_" + unit: statistics.median(maps) / per_ns,
                "unmap_" + unit: statistics.median(unmaps) / per_ns, "repeat": repeat,
                "map_spread_pct": spread_pct(maps), "unmap_spread_pct": spread_pct(unmaps),
                "seconds": (sum(maps) + sum(unmaps)) / 1e9}

    def dma(self):
        return self.dma_runs(DMA_MIB, REPEAT, "ms", 1e6)

    def warm_dma(self):
        """Before dma, outside its measurement: the ioctl and pin paths' code hot."""
        self.dma_runs(2, WARM_REPEAT, "us", 1e3)

    def small_dma(self):
        return self.dma_runs(2, SMALL_REPEAT, "us", 1e3)


def measured(pid, fn, warm=None):
    """Run workload ``fn`` (after ``warm``, not counted); with a tracer ``pid``, add its
    CPU and BPF time spent meanwhile."""
    if warm:
        warm()
    if pid is None:
        return fn()
    cpu, stats = cpu_seconds(pid), bpf_stats(pid)
    result = fn()
    result.update(bpf_spent(stats, bpf_stats(pid)))
    result["tracer_cpu_seconds"] = cpu_seconds(pid) - cpu
    result["tracer_rss_kib"] = rss_kib(pid)
    result["tracer_anon_kib"] = anon_kib(pid)
    return result


def measured_together(pids, fn, warm=None):
    """Run workload ``fn`` once (after ``warm``, not counted) with several tracers attached
    at the same time (``pids``: name -> pid): per tracer, its BPF calls, time and programs
    in that one run, under "tracers"."""
    if warm:
        warm()
    before = {name: bpf_stats(pid) for name, pid in pids.items()}
    result = fn()
    result["tracers"] = {name: bpf_spent(before[name], bpf_stats(pid)) for name, pid in pids.items()}
    return result


def settled_memory(pid):
    """VmRSS and RssAnon (KiB) of a vfiomond after its next housekeeping, which returns
    the heap its work freed: phases of different lengths read alike."""
    time.sleep(HOUSEKEEPING_INTERVAL + 2)
    return rss_kib(pid), anon_kib(pid)


def scrape_value(name, **labels):
    return sum(v.sample(v.scrape(PORT), name, **labels))


def scale(rig, pid):
    """One MAP_DMA of each size under vfiomond: its BPF programs' calls and time,
    pages pinned, and pin samples it tracks (events to user space are bounded by those)."""
    out = []
    for mib in SCALE_MIB:
        before, pinned = bpf_stats(pid), scrape_value("vfiomond_pinned_pages_total", backend="type1")
        rig.container.map_dma(rig.buffer, 0x100000000, mib * MIB, v.VFIO_DMA_MAP_FLAG_READ | v.VFIO_DMA_MAP_FLAG_WRITE)
        after = bpf_stats(pid)
        time.sleep(1)  # the daemon's ring-buffer poll
        out.append({"size_mib": mib, "bpf_run_cnt": after["run_cnt"] - before["run_cnt"],
                    "bpf_run_time_ns": after["run_time_ns"] - before["run_time_ns"],
                    "pinned_pages": scrape_value("vfiomond_pinned_pages_total", backend="type1") - pinned,
                    "pin_samples_tracked": scrape_value("vfiomond_pin_samples")})
        rig.container.unmap_dma(0x100000000, mib * MIB)
    return out


def hooked_symbols(config=None):
    """The symbols vfiomond attaches on this kernel (vfiomond check --json, following
    ``config``'s probes.module_trampolines): (probe -> its symbols, every symbol sorted,
    symbol -> the methods of the programs vfiomond runs on it: kprobe, kretprobe,
    fentry, fexit)."""
    command = [sys.executable, "-m", "vfiomond", "check", "--json"] + (["--config", config] if config else [])
    out = subprocess.run(command, stdout=subprocess.PIPE, universal_newlines=True, check=True).stdout
    rows = [r for r in json.loads(out)["probes"] if r["available"]]
    methods = {}
    for r in rows:
        for symbol, names in zip(r["symbols"], r["methods"]):
            methods.setdefault(symbol, set()).update(names.split("+"))
    symbols = {r["probe"]: r["symbols"] for r in rows}
    return symbols, sorted(methods), methods


def floor_arguments(methods, fault_symbols, fault_fn):
    """minimal_bcc.py's arguments for vfiomond's own attach points, SYMBOL:METHODS: an
    empty program wherever vfiomond runs one, attached as vfiomond attaches it.  Of the
    fault handlers, only the one vfiomond keeps (6.12+ drops the page_fault hook once it
    sees huge_fault nested in it)."""
    return ["%s:%s" % (symbol, "+".join(sorted(methods[symbol]))) for symbol in sorted(methods)
            if symbol not in fault_symbols or symbol == fault_fn]


def traced_fault_function(symbols, programs):
    """The BAR fault handler that saw vfiomond's fault passes, for funclatency:
    huge_fault where its program ran (6.12+), else the page fault handler (a
    build that inlines huge_fault into vfio_pci_mmap_page_fault still exports
    it, reached only for PMD and PUD faults).  programs: per_program's rows."""
    huge = [s for s in symbols if s.endswith("_huge_fault")]
    if huge and any(name.startswith("on_bar_huge_fau") for name, _, _ in programs):
        return huge[0]
    return ([s for s in symbols if s not in huge] or symbols)[0]


def lab_config_plus(name, section, setting):
    """The lab's vfiomond configuration with one more setting in ``section`` (under
    its header where the file has one); returns its path."""
    config = "%s/vfiomond-%s.toml" % (OUT, name)
    with open(SRC + "/tests/lab/guest/vfiomond.toml") as f:
        text = f.read()
    header = "[%s]\n" % section
    text = text.replace(header, header + setting + "\n", 1) if header in text else \
        text + "\n" + header + setting + "\n"
    with open(config, "w") as f:
        f.write(text)
    return config


def module_trampolines_config():
    """The lab's vfiomond configuration plus probes.module_trampolines (the vfio modules'
    hooks as fentry/fexit where BCC and the kernel's BTF allow); returns its path."""
    return lab_config_plus("module-trampolines", "probes", "module_trampolines = true")


def start_vfiomond(config, log_path):
    """A vfiomond on the bench's port, started and waited for until it serves /metrics:
    (process, seconds to that, (VmRSS, RssAnon) in KiB then)."""
    proc, ready = start_and_wait([sys.executable, "-m", "vfiomond", "run", "--config", config, "--listen", ":" + PORT],
                                 r"serving /metrics", log_path)
    memory = rss_kib(proc.pid), anon_kib(proc.pid)
    return proc, ready, memory


def module_trampolines_phase(rig):
    """vfiomond with probes.module_trampolines: start-up, memory, faults, DMA and the
    steady fault rate, as for vfiomond."""
    log_path = OUT + "/vfiomond-module-trampolines.log"
    proc, ready, (rss, anon) = start_vfiomond(module_trampolines_config(), log_path)
    try:
        phase = {"start_seconds": ready, "rss_kib_after_start": rss, "anon_kib_after_start": anon}
        rig.faults()
        wait_for_one_fault_hook(log_path)
        phase.update(faults=measured(proc.pid, rig.faults), dma=measured(proc.pid, rig.dma, rig.warm_dma),
                     small_dma=measured(proc.pid, rig.small_dma),
                     steady=measured(proc.pid, lambda: rig.steady(STEADY_SECONDS)))
        phase["rss_kib"], phase["anon_kib"] = settled_memory(proc.pid)
        return phase
    finally:
        stop(proc)


def side_by_side_phase(rig, functions):
    """funclatency on the fault, map and pin functions, minimal_bcc on vfiomond's attach
    points (functions["floor"]: an empty program where vfiomond runs one, attached as it
    attaches; functions["floor_mod"]: likewise as vfiomond_mod attaches) and vfiomond
    (the lab's configuration, then with module trampolines, then with pins.verify = false:
    no kernel table of live mappings), all attached at once: each
    tracer's BPF time in the same faults and ioctls.  Separate phases run minutes apart, and a
    TCG host's speed drifts between them (benchmarks/RESULTS.md, runs 9 and 10); here
    it cannot move one tracer's cost against the other's.  No user-visible times: every
    tracer adds to them."""
    references = {}
    try:
        for what in ("fault", "map", "pin"):
            references["funclatency_" + what], _ = start_and_wait(
                ["funclatency-bpfcc", functions[what]], r"^Tracing", "%s/side-funclatency-%s.log" % (OUT, what))
        for floor in ("floor", "floor_mod"):  # floor_mod: as vfiomond_mod attaches, where it has trampolines
            if floor in functions:
                references[floor], _ = start_and_wait([sys.executable, SRC + "/benchmarks/minimal_bcc.py"] +
                                                      functions[floor], r"^attached", "%s/side-%s.log" % (OUT, floor))
        out = {}
        for name, config in (("vfiomond", SRC + "/tests/lab/guest/vfiomond.toml"),
                             ("vfiomond_mod", module_trampolines_config()),
                             ("vfiomond_noverify", lab_config_plus("no-verify", "pins", "verify = false"))):
            log_path = "%s/side-%s.log" % (OUT, name)
            proc, _, _ = start_vfiomond(config, log_path)
            try:
                rig.faults()
                wait_for_one_fault_hook(log_path)
                pids = dict({name: proc.pid}, **{ref: p.pid for ref, p in references.items()})
                out[name] = {"faults": measured_together(pids, rig.faults),
                             "dma": measured_together(pids, rig.dma, rig.warm_dma),
                             "small_dma": measured_together(pids, rig.small_dma)}
            finally:
                stop(proc)
        return out
    finally:
        for proc in references.values():
            stop(proc)


def main():
    summary = {"scenario": "bench", "kernel": os.uname().release, "phases": {}}
    daemon = int(os.environ["VFIOMOND_PID"])
    try:
        with open("/proc/sys/kernel/bpf_stats_enabled", "w") as f:
            f.write("1")
        probes, symbols, methods = hooked_symbols()
        map_fn, pin_fn = probes["dma_map"][0], probes["pin_pages"][0]
        rig = Rig()
        summary["region_size"] = rig.bar.size
        with open("/sys/kernel/mm/transparent_hugepage/enabled") as f:
            summary["thp"] = f.read().strip()
        phases = summary["phases"]

        log("phase vfiomond")
        # Warm-up: on 6.12+ the first faults show vfiomond that vfio_pci_mmap_page_fault
        # calls huge_fault, and it drops the page_fault hook (its main loop, 0.5 s).
        rig.faults()
        wait_for_one_fault_hook(OUT + "/vfiomond.log")
        phases["vfiomond"] = {"faults": measured(daemon, rig.faults), "dma": measured(daemon, rig.dma, rig.warm_dma),
                              "small_dma": measured(daemon, rig.small_dma),
                              "steady": measured(daemon, lambda: rig.steady(STEADY_SECONDS)),
                              "write_faults": measured(daemon, rig.write_faults),
                              "write_faults_pinned": measured(daemon, lambda: rig.write_faults(holding_pins=True))}
        phases["vfiomond"]["rss_kib"], phases["vfiomond"]["anon_kib"] = settled_memory(daemon)
        summary["scale"] = scale(rig, daemon)
        fault_fn = traced_fault_function(probes["bar_fault"], phases["vfiomond"]["faults"]["bpf_programs"])
        summary["functions"] = {"fault": fault_fn, "map": map_fn, "pin": pin_fn, "vfiomond_symbols": symbols,
                                "floor": floor_arguments(methods, probes["bar_fault"], fault_fn)}
        _, _, mod_methods = hooked_symbols(module_trampolines_config())
        if any(m & {"fentry", "fexit"} for m in mod_methods.values()):
            summary["functions"]["floor_mod"] = floor_arguments(mod_methods, probes["bar_fault"], fault_fn)
        stop(daemon)

        log("phase none")
        phases["none"] = {"faults": rig.faults(), "dma": measured(None, rig.dma, rig.warm_dma), "small_dma": rig.small_dma(),
                          "steady": rig.steady(STEADY_SECONDS),
                          "write_faults": rig.write_faults(), "write_faults_pinned": rig.write_faults(holding_pins=True)}

        log("phase funclatency")
        phases["funclatency"] = {}
        for what, fn, workload in (("faults", fault_fn, rig.faults), ("dma", map_fn, rig.dma),
                                   ("small_dma", map_fn, rig.small_dma), ("pin", pin_fn, rig.dma),
                                   ("write_faults", "do_wp_page", rig.write_faults)):
            proc, ready = start_and_wait(["funclatency-bpfcc", fn], r"^Tracing", "%s/funclatency-%s.log" % (OUT, what))
            phases["funclatency"][what] = measured(proc.pid, workload, rig.warm_dma if workload == rig.dma else None)
            phases["funclatency"][what + "_start_seconds"] = ready
            phases["funclatency"]["rss_kib"], phases["funclatency"]["anon_kib"] = rss_kib(proc.pid), anon_kib(proc.pid)
            stop(proc)

        log("phase minimal_bcc")
        proc, ready = start_and_wait([sys.executable, SRC + "/benchmarks/minimal_bcc.py"] + symbols, r"^attached",
                                     OUT + "/minimal_bcc.log")
        phases["minimal_bcc"] = {"start_seconds": ready, "rss_kib_after_start": rss_kib(proc.pid),
                                 "anon_kib_after_start": anon_kib(proc.pid),
                                 "faults": measured(proc.pid, rig.faults), "dma": measured(proc.pid, rig.dma, rig.warm_dma),
                                 "small_dma": measured(proc.pid, rig.small_dma),
                                 "steady": measured(proc.pid, lambda: rig.steady(STEADY_SECONDS))}
        phases["minimal_bcc"]["rss_kib"], phases["minimal_bcc"]["anon_kib"] = rss_kib(proc.pid), anon_kib(proc.pid)
        stop(proc)

        log("phase vfiomond_mod")
        phases["vfiomond_mod"] = module_trampolines_phase(rig)

        log("side by side")
        summary["side_by_side"] = side_by_side_phase(rig, summary["functions"])

        # Started last and left running: the lab scrapes it after the scenario.
        log("vfiomond again")
        proc, ready, (rss, anon) = start_vfiomond(SRC + "/tests/lab/guest/vfiomond.toml", OUT + "/vfiomond-bench.log")
        phases["vfiomond"]["start_seconds"] = ready
        phases["vfiomond"]["rss_kib_after_start"] = rss
        phases["vfiomond"]["anon_kib_after_start"] = anon
        summary["vfiomond_again_pid"] = proc.pid
        summary["ok"] = True
    except Exception as e:
        summary.update(ok=False, error="%s: %s" % (type(e).__name__, e))
    print(json.dumps(summary))
    return 0 if summary["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
