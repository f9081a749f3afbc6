#!/usr/bin/env python3
"""vfiomond's overhead and footprint, side by side with BCC's funclatency and a minimal
BCC program, measured in the lab guest (real kprobes; tests/lab/scenarios/bench.py).

    sudo python3 benchmarks/bench.py [--suite trixie] [--json FILE]

Boots the suite's lab guest once (QEMU TCG: absolute times are an emulated CPU's;
compare within one run), then prints, as ratios to the run without tracing:
per-fault time of BAR faults and MAP_DMA/UNMAP_DMA time of a large mapping under
each tracer, with the spread of the repetitions behind each median; the in-kernel
BPF time per traced call (kernel.bpf_stats_enabled), per tracer alone and with
vfiomond, funclatency and an empty program on each of vfiomond's attach points (the
floor of any tool hooking them) attached at once (the same calls, "side by side");
the tracers' CPU per fault, resident memory and start-up time; and the scale of
vfiomond's in-kernel work and user-space events with the mapping size.
"""

import argparse
import json
import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "tests", "lab"))
import lab  # noqa: E402

# vfiomond_mod: vfiomond with probes.module_trampolines (fentry/fexit on the vfio
# modules' functions too), in runs since 2026-12-03.
TRACERS = ("vfiomond", "vfiomond_mod", "funclatency", "minimal_bcc")


def tracers(ph):
    return [name for name in TRACERS if name in ph]


def ratio(a, b):
    return "%.2f" % (a / b) if b else "-"


PIN_PROGRAMS = ("on_pin_pages", "kretfunc__vfio_iommu_type1__vfio_pin_pages_remote")


def pin_program_cost(programs):
    """BPF ns per call of the pin function from vfiomond's per-program rows
    [(name, calls, ns)]: the kprobes on_pin_pages and on_pin_pages_return, or the one
    fexit program kretfunc__vfio_iommu_type1__vfio_pin_pages_remote; (ns, calls), or
    None where none ran."""
    progs = [r for r in programs if r[0].startswith("on_pin_pages") or r[0].endswith("__vfio_pin_pages_remote")]
    calls = [n for prog, n, _ in progs if prog in PIN_PROGRAMS]
    if not calls:
        return None
    return sum(ns for _, _, ns in progs) / calls[0], calls[0]


def reference_cost(run):
    """funclatency's BPF ns per traced call in a run (its entry and return programs
    each run once per call); (ns, calls), or None where it saw no call."""
    if not run or not run.get("bpf_programs"):
        return None
    calls = min(n for _, n, _ in run["bpf_programs"])
    return run["bpf_run_time_ns"] / calls, calls


def pin_call_cost(s):
    """[(tracer, BPF ns per call, calls)] on the pin function: vfiomond's programs on
    it in its DMA phase, funclatency's in its own run on it."""
    rows = []
    for name in ("vfiomond", "vfiomond_mod"):
        if name in s["phases"]:
            cost = pin_program_cost(s["phases"][name]["dma"].get("bpf_programs", []))
            if cost:
                rows.append((name,) + cost)
    cost = reference_cost(s["phases"]["funclatency"].get("pin"))
    if cost:
        rows.append(("funclatency",) + cost)
    return rows


def floor_pin_cost(floor_args, pin_fn, programs):
    """The floor's BPF ns per call of the pin function: minimal_bcc's programs on it,
    enter_I and leave_I (kprobes; I the pin function's place in its arguments) or
    k[ret]func__[MODULE__]PIN_FN (fentry, fexit); (ns, calls), or None where none ran there."""
    index = [arg.partition(":")[0] for arg in floor_args].index(pin_fn)
    progs = [r for r in programs if r[0] in ("enter_%d" % index, "leave_%d" % index) or
             (r[0].startswith(("kfunc__", "kretfunc__")) and r[0].endswith("__" + pin_fn))]
    if not progs:
        return None
    calls = max(n for _, n, _ in progs)
    return sum(ns for _, _, ns in progs) / calls, calls


def side_costs(ph, fault_tracer, map_tracer, pin_cost):
    """One side-by-side row: BPF ns per fault (``fault_tracer``'s programs), per large
    MAP_DMA or UNMAP_DMA and per 2 MiB pair (``map_tracer``'s), per pin call
    (``pin_cost``, as pin_program_cost or reference_cost give it)."""
    faults, dma, small = ph["faults"], ph["dma"], ph["small_dma"]
    ns = lambda run, tracer, calls: run["tracers"][tracer]["bpf_run_time_ns"] / calls  # noqa: E731
    return (ns(faults, fault_tracer, faults["faults"]), ns(dma, map_tracer, 2 * dma["repeat"]),
            (pin_cost or (0, 0))[0], ns(small, map_tracer, small["repeat"]))


def side_by_side_lines(s):
    """The side_by_side phase: per vfiomond, its BPF ns next to funclatency's in the very
    same faults and ioctls (both attached at once), and the ratio; and the floor: an
    empty program on each of vfiomond's attach points, attached as vfiomond (and, since
    run 17, as vfiomond_mod) attaches them, in the same calls."""
    side = s.get("side_by_side")
    if not side:
        return []
    fn = s["functions"]
    lines = ["", "Side by side: funclatency on %s, %s and %s attached together with each vfiomond, the same "
             "faults and ioctls; BPF ns per fault, per %d MiB MAP_DMA or UNMAP_DMA, per pin call, per 2 MiB "
             "MAP_DMA+UNMAP_DMA pair:" % (fn["fault"], fn["map"], fn["pin"], s["phases"]["none"]["dma"]["size_mib"]),
             "%-26s %10s %6s %12s %6s %10s %6s %10s %6s" % ("tracer", "fault", "x", "(un)map", "x", "pin call", "x",
                                                           "2 MiB pair", "x")]
    for name, ph in side.items():
        tracers_in_dma = ph["dma"]["tracers"]
        ours = side_costs(ph, name, name, pin_program_cost(tracers_in_dma[name]["bpf_programs"]))
        theirs = side_costs(ph, "funclatency_fault", "funclatency_map", reference_cost(tracers_in_dma["funclatency_pin"]))
        rows = [(name, ours), ("  funclatency beside it", theirs)]
        # the floor: since 2026-12-04 beside vfiomond; as vfiomond_mod attaches since run 17
        floor = {"vfiomond": "floor", "vfiomond_mod": "floor_mod"}.get(name)
        if floor in tracers_in_dma:
            floor_pin = floor_pin_cost(fn[floor], fn["pin"], tracers_in_dma[floor]["bpf_programs"])
            rows.append(("  empty programs, its hooks", side_costs(ph, floor, floor, floor_pin)))
        for label, row in rows:
            cells = []
            for value, ref in zip(row, theirs):
                cells += ["%.0f" % value, ratio(value, ref)]
            lines.append("%-26s %10s %6s %12s %6s %10s %6s %10s %6s" % ((label,) + tuple(cells)))
    return lines


def write_fault_lines(s):
    """The host's write faults (do_wp_page copying the zero page), per fault: by a process
    holding no pins and by one holding a DMA mapping, untraced, under vfiomond, and
    under funclatency on do_wp_page (no pins: the reference kprobe + kretprobe)."""
    ph = s["phases"]
    if "write_faults" not in ph["none"]:
        return []
    lines = ["", "Write faults (do_wp_page, copying the zero page), %d per pass:" % ph["none"]["write_faults"]["faults_per_pass"],
             "%-24s %12s %8s %14s" % ("", "ns/fault", "x none", "BPF ns/fault")]
    rows = [("none", ph["none"]["write_faults"]), ("none, holding pins", ph["none"]["write_faults_pinned"]),
            ("vfiomond", ph["vfiomond"]["write_faults"]),
            ("vfiomond, holding pins", ph["vfiomond"]["write_faults_pinned"]),
            ("funclatency", ph["funclatency"].get("write_faults"))]
    for name, w in rows:
        if not w:
            continue
        base = ph["none"]["write_faults_pinned" if "pins" in name else "write_faults"]["pass_ns_per_fault"]
        lines.append("%-24s %12.0f %8s %14s" % (
            name, w["pass_ns_per_fault"], ratio(w["pass_ns_per_fault"], base),
            "%.0f" % (w["bpf_run_time_ns"] / w["faults"]) if "bpf_run_time_ns" in w else "-"))
    return lines


def spread_lines(s):
    """Per tracer, the interquartile range of the repetitions behind each user-visible
    median (fault passes, 1 GiB maps and unmaps, 2 MiB maps and unmaps) in percent of
    it: a difference from "none" smaller than both spreads is within the noise."""
    ph = s["phases"]
    if "spread_pct" not in ph["none"]["faults"]:
        return []
    cell = lambda d, key: "%.1f" % d[key] if d and key in d else "-"  # noqa: E731
    lines = ["", "Spread of those medians (interquartile range, % of the median):",
             "%-12s %10s %10s %10s %14s %14s" % ("tracer", "faults", "map", "unmap", "2 MiB map", "2 MiB unmap")]
    for name in ["none"] + tracers(ph):
        p = ph[name]
        lines.append("%-12s %10s %10s %10s %14s %14s" % (
            name, cell(p.get("faults"), "spread_pct"), cell(p.get("dma"), "map_spread_pct"),
            cell(p.get("dma"), "unmap_spread_pct"), cell(p.get("small_dma"), "map_spread_pct"),
            cell(p.get("small_dma"), "unmap_spread_pct")))
    return lines


def small_dma_lines(s):
    """MAP_DMA + UNMAP_DMA of 2 MiB, many times in a row: the per-ioctl cost with each
    tracer's code hot, as BPF ns per map + unmap pair next to funclatency's on the ioctl."""
    ph = s["phases"]
    if "small_dma" not in ph["none"]:
        return []
    none = ph["none"]["small_dma"]
    ref = ph["funclatency"].get("small_dma", {})
    per_pair = lambda d: d["bpf_run_time_ns"] / d["repeat"]  # noqa: E731
    lines = ["", "MAP_DMA + UNMAP_DMA of 2 MiB (one pinned run), %d times in a row:" % none["repeat"],
             "%-12s %10s %8s %10s %8s %18s %16s" % ("tracer", "map us", "x none", "unmap us", "x none",
                                                     "BPF ns/(map+unmap)", "x funclatency")]
    for name in ["none"] + tracers(ph):
        d = ph[name].get("small_dma")
        if not d:
            continue
        traced = "bpf_run_time_ns" in d
        lines.append("%-12s %10.1f %8s %10.1f %8s %18s %16s" % (
            name, d["map_us"], ratio(d["map_us"], none["map_us"]), d["unmap_us"], ratio(d["unmap_us"], none["unmap_us"]),
            "%.0f" % per_pair(d) if traced else "-",
            ratio(per_pair(d), per_pair(ref)) if traced and "bpf_run_time_ns" in ref else "-"))
    return lines + program_lines(ph, "small_dma", "the 2 MiB runs", 8)


def program_lines(ph, phase, what, top):
    """Each tracer's ``top`` costliest BPF programs during ``phase``."""
    lines = ["", "BPF programs during %s (calls x ns per call), costliest first:" % what]
    for name in tracers(ph):
        progs = ph[name].get(phase, {}).get("bpf_programs", [])
        lines.append("%-12s %s" % (name, "; ".join("%s %d x %.0f" % (prog, n, ns / n) for prog, n, ns in progs[:top])))
    return lines


def report(s):
    ph = s["phases"]
    none = ph["none"]
    lines = ["kernel %s; fault function %s, map function %s" % (s["kernel"], s["functions"]["fault"],
                                                                 s["functions"]["map"]),
             "BAR faults: %d per pass over edu's BAR0 (%d KiB), %.0f faults/s untraced; THP %s" % (
                 none["faults"]["faults_per_pass"], s["region_size"] // 1024, none["faults"]["faults_per_second"],
                 s.get("thp", "?")),
             "",
             "%-12s %12s %8s %12s %8s %12s %8s %14s %14s" % (
                 "tracer", "ns/fault", "x none", "map ms", "x none", "unmap ms", "x none", "BPF ns/fault",
                 "BPF ns/(un)map")]
    for name in ["none"] + tracers(ph):
        p = ph[name]
        f, d = p["faults"], p["dma"]
        faults = f["faults"]
        lines.append("%-12s %12.0f %8s %12.1f %8s %12.1f %8s %14s %14s" % (
            name, f["pass_ns_per_fault"], ratio(f["pass_ns_per_fault"], none["faults"]["pass_ns_per_fault"]),
            d["map_ms"], ratio(d["map_ms"], none["dma"]["map_ms"]),
            d["unmap_ms"], ratio(d["unmap_ms"], none["dma"]["unmap_ms"]),
            "%.0f" % (f["bpf_run_time_ns"] / faults) if "bpf_run_time_ns" in f else "-",
            "%.0f" % (d["bpf_run_time_ns"] / (2 * d["repeat"])) if "bpf_run_time_ns" in d else "-"))
    lines += spread_lines(s)
    lines += ["", "%-12s %16s %13s %16s %14s %14s %14s %11s" % (
        "tracer", "steady faults/s", "tracer CPU %", "RSS after start", "anon", "RSS steady", "anon", "start-up s")]
    for name in tracers(ph):
        p = ph[name]
        st = p.get("steady")
        start = p.get("start_seconds", p.get("faults_start_seconds"))
        lines.append("%-12s %16s %13s %12s KiB %10s KiB %10s KiB %10s KiB %11.1f" % (
            name, "%.0f" % st["faults_per_second"] if st else "-",
            "%.2f" % (100 * st["tracer_cpu_seconds"] / st["seconds"]) if st else "-",
            p.get("rss_kib_after_start", "-"), p.get("anon_kib_after_start", "-"), p["rss_kib"], p.get("anon_kib", "-"),
            start))
    for phase, what in (("faults", "the fault passes"), ("dma", "the MAP_DMA/UNMAP_DMA runs")):
        lines += program_lines(ph, phase, what, 6)
    pin = pin_call_cost(s)
    if pin:
        lines += ["", "BPF ns per call of %s (once per physically contiguous run of a MAP_DMA): %s" % (
            s["functions"].get("pin", "the pin function"), "; ".join("%s %.0f (%d calls)" % row for row in pin))]
    lines += small_dma_lines(s)
    lines += side_by_side_lines(s)
    lines += write_fault_lines(s)
    lines += ["", "vfiomond's work per MAP_DMA by size (type1, touched anonymous memory):",
              "%10s %12s %14s %16s %18s" % ("MiB", "BPF calls", "BPF us", "pages pinned", "pin samples held")]
    for row in s["scale"]:
        lines.append("%10d %12d %14.0f %16d %18d" % (row["size_mib"], row["bpf_run_cnt"], row["bpf_run_time_ns"] / 1e3,
                                                      row["pinned_pages"], row["pin_samples_tracked"]))
    return "\n".join(lines)


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--suite", default="trixie", choices=lab.SUITES)
    p.add_argument("--json", metavar="FILE", help="also write the scenario's raw JSON here")
    args = p.parse_args()
    if os.geteuid() != 0:
        sys.exit("bench: needs root (the lab: debootstrap, QEMU)")
    try:
        result = lab.run(args.suite, "bench", timeout=1800)
    except lab.LabError as e:
        sys.exit("bench: %s" % e)
    s = result.scenario
    if args.json:
        with open(args.json, "w") as f:
            json.dump(s, f, indent=1)
    if not s.get("ok"):
        sys.exit("bench: the scenario failed: %s (logs in %s)" % (s.get("error"), result.out))
    print(report(s))
    print("\n(raw results and logs: %s)" % result.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
