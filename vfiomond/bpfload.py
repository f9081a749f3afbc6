"""Compile the probe areas with BCC and attach the selected probes.

Loose attach: a probe that cannot be attached is reported (log line and
``vfiomond_probe_attached{probe} 0``) and the daemon keeps running; strict mode
turns that into an error.
"""

import logging
import os
from typing import Callable, Dict, List, NamedTuple, Optional, Sequence

from vfiomond import faults, type1
from vfiomond.errors import VfiomondError
from vfiomond.probes import Selected

log = logging.getLogger("vfiomond")

AREAS = {"faults": faults, "type1": type1}

_HERE = os.path.dirname(os.path.abspath(__file__))
# Installed: vfiomond/bpf/ (package data); from a checkout: ../bpf/.
BPF_DIRS = (os.path.join(_HERE, "bpf"), os.path.join(os.path.dirname(_HERE), "bpf"))


def bpf_dir() -> str:
    for d in BPF_DIRS:
        if os.path.isfile(os.path.join(d, "common.h")):
            return d
    raise VfiomondError("BPF sources not found in %s" % " or ".join(BPF_DIRS))


def import_bcc():
    try:
        from bcc import BPF  # noqa: PLC0415 (optional at import time of the package)
    except ImportError:
        raise VfiomondError(
            "BCC's Python bindings are missing: install python3-bpfcc (Debian, Ubuntu) or python3-bcc (RHEL, Fedora)"
        ) from None
    return BPF


class ProbeStatus(NamedTuple):
    name: str
    attached: bool
    detail: str  # symbols attached, or why not


class Program:
    """The compiled BCC programs (one, or one per area after a compile failure)."""

    def __init__(self, programs: Dict[str, object]):
        self._programs = programs  # area -> BPF object

    def tables(self, area: str) -> Callable[[str], object]:
        bpf = self._programs[area]
        return lambda name: bpf.get_table(name)

    def lost_events(self) -> int:
        import ctypes

        seen, total = set(), 0
        for bpf in self._programs.values():
            if id(bpf) in seen:
                continue
            seen.add(id(bpf))
            total += bpf.get_table("lost_events")[ctypes.c_int(0)].value
        return total

    def areas(self) -> List[str]:
        return list(self._programs)

    def open_ring_buffer(self, area: str, table: str, callback: Callable[[bytes], None]) -> None:
        """Call ``callback(raw bytes)`` for each record of a BPF_RINGBUF_OUTPUT table."""
        import ctypes

        def on_record(_ctx, data, size):
            try:
                callback(ctypes.string_at(data, size))
            except Exception:  # a bad record must not stop the loop
                log.exception("handling a %s record failed", table)
            return 0

        self._programs[area][table].open_ring_buffer(on_record)
        self._polled = self._programs[area]

    def forget_exited(self, area: str, table: str) -> int:
        """Delete the entries of a pid-keyed table whose process is gone."""
        t = self._programs[area][table]
        gone = [k for k in list(t.keys()) if not os.path.exists("/proc/%d" % k.value)]
        for k in gone:
            try:
                del t[k]
            except KeyError:
                pass
        return len(gone)

    def poll(self, timeout_ms: int) -> None:
        """Deliver ring-buffer records (waits up to ``timeout_ms``)."""
        bpf = getattr(self, "_polled", None)
        if bpf is not None:
            bpf.ring_buffer_poll(timeout_ms)

    def close(self) -> None:
        seen = set()
        for bpf in self._programs.values():
            if id(bpf) not in seen:
                seen.add(id(bpf))
                bpf.cleanup()


def _source(areas: Sequence[str]) -> str:
    d = bpf_dir()
    parts = [open(os.path.join(d, "common.h")).read()]
    parts += [open(os.path.join(d, AREAS[a].SOURCE)).read() for a in areas]
    return "\n".join(parts)


def _cflags(facts: Dict[str, int], defines: Sequence[str]) -> List[str]:
    flags = ["-D%s=%#x" % (k, v) for k, v in sorted(facts.items())]
    return flags + ["-D%s=1" % d for d in sorted(set(defines))] + ["-Wno-macro-redefined"]


def _compile(BPF, areas: Sequence[str], cflags: List[str]) -> Dict[str, object]:
    """One BCC program for all areas (one clang run); per area if that fails."""
    try:
        bpf = BPF(text=_source(areas), cflags=cflags)
        return {a: bpf for a in areas}
    except Exception as e:  # BCC raises bare Exception on compile errors
        if len(areas) == 1:
            log.error("BPF program of area %s does not compile on this kernel: %s", areas[0], _first_line(e))
            return {}
        log.warning("BPF compile failed (%s); compiling each area alone", _first_line(e))
    out = {}
    for area in areas:
        out.update(_compile(BPF, [area], cflags))
    return out


def _first_line(e: Exception) -> str:
    text = str(e).strip()
    return text.splitlines()[0] if text else type(e).__name__


def _attach(bpf, sel: Selected, shared: set) -> Optional[str]:
    """Attach every hook of a selected probe; None on success, else the error.

    ``shared`` holds the (kind, symbol) pairs already attached in this program:
    two probes may share a hook (the type1 ioctl fallback serves map and unmap).
    """
    done = []
    try:
        for hook, sym in sel.hooks:
            for kind, fn in (("k", hook.entry), ("r", hook.ret)):
                if not fn or (kind, sym.name) in shared:
                    continue
                if kind == "k":
                    bpf.attach_kprobe(event=sym.name, fn_name=fn)
                else:
                    bpf.attach_kretprobe(event=sym.name, fn_name=fn)
                done.append((kind, sym.name))
                shared.add((kind, sym.name))
    except Exception as e:
        for kind, name in done:
            shared.discard((kind, name))
            try:
                (bpf.detach_kprobe if kind == "k" else bpf.detach_kretprobe)(event=name)
            except Exception:
                pass
        return _first_line(e)
    return None


def load(selections: Sequence[Selected], facts: Dict[str, int], disabled: Sequence[str]):
    """Compile and attach. Returns (Program, [ProbeStatus]) in probe-table order."""
    BPF = import_bcc()
    wanted = [s for s in selections if s.available and s.probe.name not in disabled]
    areas = list(dict.fromkeys(s.probe.area for s in wanted))
    defines = [d for s in wanted for d in s.variant.defines]
    programs = _compile(BPF, areas, _cflags(facts, defines)) if areas else {}
    shared: Dict[int, set] = {}
    statuses = []
    for sel in selections:
        name = sel.probe.name
        if name in disabled:
            statuses.append(ProbeStatus(name, False, "disabled in the configuration"))
        elif not sel.available:
            statuses.append(ProbeStatus(name, False, sel.reason))
        elif sel.probe.area not in programs:
            statuses.append(ProbeStatus(name, False, "BPF program of area %s did not compile" % sel.probe.area))
        else:
            bpf = programs[sel.probe.area]
            err = _attach(bpf, sel, shared.setdefault(id(bpf), set()))
            if err:
                statuses.append(ProbeStatus(name, False, "attach failed: " + err))
            else:
                symbols = ",".join(dict.fromkeys(sym.name for _, sym in sel.hooks))
                statuses.append(ProbeStatus(name, True, symbols))
    return Program(programs), statuses
