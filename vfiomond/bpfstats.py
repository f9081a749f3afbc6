"""The BPF programs' and maps' own figures, as the kernel keeps them.

Programs, from /proc/self/fdinfo/FD of each loaded program (kernel/bpf/syscall.c
bpf_prog_show_fdinfo): ``run_time_ns`` and ``run_cnt`` (5.1+, commit 492ecee892c2;
counted only while the sysctl kernel.bpf_stats_enabled is 1, which costs every BPF
program of the host two clock reads per run, so vfiomond leaves it to the operator)
and ``recursion_misses`` (5.12+: runs the kernel skipped because a BPF program was
already running on that CPU; kprobe programs count them from 6.7, trace_call_bpf):
each such miss is a call vfiomond did not see.

Maps, from the map's fdinfo (bpf_map_show_fdinfo): ``max_entries`` and ``memlock``
(bytes charged for it).  Entries of the hash maps are counted by walking their
keys, at housekeeping and not per scrape: pin_maps holds an entry per live DMA
mapping (tens of thousands on a large host); their fdinfo is read then too.
"""

import os
import re
import threading
import time
from typing import Callable, Dict, Iterable, Iterator, List, NamedTuple, Optional, Tuple

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

# Maps whose entries come and go (enum bpf_map_type: HASH 1, PERCPU_HASH 5, LRU_HASH 9,
# LRU_PERCPU_HASH 10, LPM_TRIE 11): their fullness is worth a gauge; arrays are always full.
_GROWING_MAPS = re.compile(r"\bBPF_(?:HASH|LRU_HASH|PERCPU_HASH|LPM_TRIE)\(\s*(\w+)|"
                           r"\bBPF_F?_?TABLE\(\s*\"(?:hash|lru_hash|percpu_hash|lpm_trie)\"\s*,[^,]+,[^,]+,\s*(\w+)")


def growing_maps(source: str) -> List[str]:
    """Names of the hash and LPM-trie maps a BCC source declares (BPF_HASH(name, ...),
    BPF_TABLE("lru_hash", key, value, name, ...), BPF_F_TABLE, BPF_LPM_TRIE)."""
    return [a or b for a, b in _GROWING_MAPS.findall(source)]


def parse_fdinfo(text: str) -> Dict[str, int]:
    """The integer fields of a /proc/PID/fdinfo/FD text ("key:\\tvalue" lines); fields
    that are not decimal integers (prog_tag) are left out."""
    out = {}
    for line in text.split("\n"):
        key, sep, value = line.partition(":")
        value = value.strip()
        if sep and value.isdigit() and value.isascii():
            out[key.strip()] = int(value)
    return out


def read_fdinfo(fd: int) -> Optional[Dict[str, int]]:
    """parse_fdinfo of this process's fd; None when the fd is closed.  One os.read of
    the whole file (under 1 KiB), without a Python file object: a scrape reads one per
    BPF program."""
    try:
        info = os.open("/proc/self/fdinfo/%d" % fd, os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        return None
    try:
        return parse_fdinfo(os.read(info, 4096).decode("ascii", "replace"))
    except OSError:
        return None
    finally:
        os.close(info)


class ProgramStat(NamedTuple):
    program: str  # the BPF function's name (bpf/*.c)
    runs: int
    run_seconds: float
    misses: int  # recursion_misses; 0 where the kernel does not say


class MapStat(NamedTuple):
    map: str
    max_entries: int
    memory_bytes: int
    entries: Optional[int]  # None: not counted (not a growing map, or not yet)


def program_stats(programs: Iterable[Tuple[str, int]]) -> List[ProgramStat]:
    """(name, fd) of loaded programs -> their stats; a closed fd is left out."""
    out = []
    for name, fd in programs:
        info = read_fdinfo(fd)
        if info is not None:
            out.append(ProgramStat(name, info.get("run_cnt", 0), info.get("run_time_ns", 0) / 1e9,
                                   info.get("recursion_misses", 0)))
    return out


def stats_enabled(path: str = "/proc/sys/kernel/bpf_stats_enabled") -> Optional[bool]:
    """kernel.bpf_stats_enabled; None where the kernel has no such sysctl (before 5.1)."""
    try:
        with open(path) as f:
            return f.read().strip() not in ("", "0")
    except OSError:
        return None


class BpfSelf:
    """The figures above for one bpfload.Program: ``families`` for the scrape (one
    fdinfo read per program), ``count_entries`` for housekeeping (walks the growing
    maps' keys and reads their fdinfo).  ``program`` gives loaded_programs() and growing_maps()."""

    def __init__(self, program):
        self._program = program
        self._maps: Optional[List[Tuple[str, int, Callable[[], Iterable]]]] = None  # the objects never change
        self._lock = threading.Lock()
        self._map_stats: List[MapStat] = []
        self.counted_at: Optional[float] = None  # time.time() of the last count

    def _growing_maps(self) -> List[Tuple[str, int, Callable[[], Iterable]]]:
        if self._maps is None:
            self._maps = self._program.growing_maps()
        return self._maps

    def count_entries(self) -> None:
        """Count the growing maps' entries and read their fdinfo (max_entries, memlock):
        at housekeeping, not per scrape, since a walk costs per entry and the fdinfo
        reads one /proc file per map (0.15 s of a 0.4 s scrape in the lab under TCG,
        with the programs' reads)."""
        entries: Dict[str, int] = {}
        merged: Dict[str, MapStat] = {}
        for name, fd, keys in self._growing_maps():
            entries[name] = entries.get(name, 0) + sum(1 for _ in keys())
            info = read_fdinfo(fd)
            if info is None:
                continue
            was = merged.get(name, MapStat(name, 0, 0, None))
            # The same name in several compiled objects (after a per-area compile): summed.
            merged[name] = MapStat(name, was.max_entries + info.get("max_entries", 0),
                                   was.memory_bytes + info.get("memlock", 0), None)
        stats = [merged[n]._replace(entries=entries.get(n)) for n in sorted(merged)]
        with self._lock:
            self._map_stats, self.counted_at = stats, time.time()

    def map_stats(self) -> List[MapStat]:
        """The maps' figures as of the last count_entries ([] before the first)."""
        with self._lock:
            return list(self._map_stats)

    def families(self) -> Iterator:
        return families(program_stats(self._program.loaded_programs()), self.map_stats(), stats_enabled(),
                        self.counted_at)


def families(programs: List[ProgramStat], maps: List[MapStat], enabled: Optional[bool],
             counted_at: Optional[float]) -> Iterator:
    runs = CounterMetricFamily("vfiomond_bpf_program_runs", "Runs of each BPF program (kernel run_cnt; counted only "
                               "while kernel.bpf_stats_enabled is 1).", labels=["program"])
    seconds = CounterMetricFamily("vfiomond_bpf_program_run_seconds", "Time spent in each BPF program (kernel "
                                  "run_time_ns; counted only while kernel.bpf_stats_enabled is 1).", labels=["program"])
    misses = CounterMetricFamily("vfiomond_bpf_program_misses", "Runs the kernel skipped because a BPF program was "
                                 "already running on that CPU (recursion_misses; kprobes from 6.7): calls not seen.",
                                 labels=["program"])
    for p in sorted(programs):
        runs.add_metric([p.program], p.runs)
        seconds.add_metric([p.program], p.run_seconds)
        misses.add_metric([p.program], p.misses)
    yield runs
    yield seconds
    yield misses
    if enabled is not None:
        yield GaugeMetricFamily("vfiomond_bpf_stats_enabled", "kernel.bpf_stats_enabled: 1 while the kernel counts "
                                "BPF run time and runs (set by the operator; it costs every BPF program).",
                                value=1 if enabled else 0)
    size = GaugeMetricFamily("vfiomond_bpf_map_max_entries", "Entries a hash or LPM-trie BPF map can hold.",
                             labels=["map"])
    memory = GaugeMetricFamily("vfiomond_bpf_map_memory_bytes", "Memory the kernel charged for a BPF map "
                               "(fdinfo memlock; before 5.11 what RLIMIT_MEMLOCK was charged), as of the last count.", labels=["map"])
    entries = GaugeMetricFamily("vfiomond_bpf_map_entries", "Entries in a hash or LPM-trie BPF map, as of the last "
                                "count (vfiomond_bpf_map_entries_counted_timestamp_seconds).", labels=["map"])
    for m in maps:
        size.add_metric([m.map], m.max_entries)
        memory.add_metric([m.map], m.memory_bytes)
        if m.entries is not None:
            entries.add_metric([m.map], m.entries)
    yield size
    yield memory
    yield entries
    if counted_at is not None:
        yield GaugeMetricFamily("vfiomond_bpf_map_entries_counted_timestamp_seconds", "When the map entries were "
                                "last counted (every housekeeping pass).", value=counted_at)
