"""The BPF self-figures: fdinfo parsing, the maps a source declares, and the families
(fdinfo of real BPF objects is read in the lab: tests/lab/test_lab.py)."""

import os

from vfiomond import bpfstats
from vfiomond.bpfload import _source, AREAS

from test_faults import exposition, key

PROG_FDINFO = """pos:\t0
flags:\t02000002
mnt_id:\t15
ino:\t1057
prog_type:\t2
prog_jited:\t1
prog_tag:\t6deef7357e7b4530
memlock:\t4096
prog_id:\t42
run_time_ns:\t1500000000
run_cnt:\t3
recursion_misses:\t2
verified_insns:\t112
"""


def test_fdinfo_integers_only():
    info = bpfstats.parse_fdinfo(PROG_FDINFO)
    assert info["run_time_ns"] == 1500000000 and info["run_cnt"] == 3 and info["recursion_misses"] == 2
    assert "prog_tag" not in info
    assert "flags" in info  # octal text, read as decimal digits: not used


def test_program_stats_from_this_process_fdinfo(tmp_path):
    fd = os.open(str(tmp_path), os.O_RDONLY)
    try:
        (stat,) = bpfstats.program_stats([("on_x", fd)])  # not a BPF program: no run fields, zeros
        assert stat == bpfstats.ProgramStat("on_x", 0, 0.0, 0)
    finally:
        os.close(fd)
    assert bpfstats.program_stats([("gone", fd)]) == []


def test_growing_maps_of_every_area():
    names = set(bpfstats.growing_maps(_source(list(AREAS))))
    for expected in ("bar_fault_by_tid", "dma_by_tid", "pin_maps", "pin_spans", "vfio_openers", "proc_acct",
                     "iommufd_acct_by_tid", "bar_fault_hist"):
        assert expected in names
    for array in ("lost_events", "kernel_facts", "pin_events", "type1_counters", "pin_map_scratch"):
        assert array not in names


def test_families():
    progs = [bpfstats.ProgramStat("on_dma_map", 10, 0.5, 1)]
    maps = [bpfstats.MapStat("pin_maps", 262144, 1 << 20, 12), bpfstats.MapStat("dma_by_tid", 4096, 4096, None)]
    s = exposition(bpfstats.families(progs, maps, True, 1700000000.0))
    assert s[key("vfiomond_bpf_program_runs_total", program="on_dma_map")] == 10
    assert s[key("vfiomond_bpf_program_run_seconds_total", program="on_dma_map")] == 0.5
    assert s[key("vfiomond_bpf_program_misses_total", program="on_dma_map")] == 1
    assert s[key("vfiomond_bpf_stats_enabled")] == 1
    assert s[key("vfiomond_bpf_map_entries", map="pin_maps")] == 12
    assert s[key("vfiomond_bpf_map_max_entries", map="dma_by_tid")] == 4096
    assert key("vfiomond_bpf_map_entries", map="dma_by_tid") not in s
    assert s[key("vfiomond_bpf_map_entries_counted_timestamp_seconds")] == 1700000000.0


def test_stats_sysctl_absent(tmp_path):
    assert bpfstats.stats_enabled(str(tmp_path / "none")) is None
    (tmp_path / "on").write_text("1\n")
    assert bpfstats.stats_enabled(str(tmp_path / "on")) is True
