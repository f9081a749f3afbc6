"""Compile the probe areas with BCC and attach the selected probes.

Loose attach: a probe that cannot be attached is reported (log line and
``vfiomond_probe_attached{probe} 0``) and the daemon keeps running; strict mode
turns that into an error.
"""

import logging
import os
import platform
import re
import time
from typing import Callable, Dict, Iterable, Iterator, List, NamedTuple, Optional, Sequence, Set, Tuple

from vfiomond import (bar_dmabuf, bpfstats, btf, faults, footprint, iommu_faults, iommufd, kernel, layout, resets,
                      type1, users)
from vfiomond.errors import VfiomondError
from vfiomond.losses import LOSSES
from vfiomond.probes import (FEATURES, KPROBE, PROBES, TRAMPOLINE, Selected, attach_method, method_names,
                             trampoline_candidates)

log = logging.getLogger("vfiomond")

AREAS = {"faults": faults, "type1": type1, "iommufd": iommufd, "resets": resets, "iommu_faults": iommu_faults,
         "bar_dmabuf": bar_dmabuf, "users": users}

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
    methods: str = ""  # per symbol of detail, what it is attached as ("fentry+fexit,kprobe")


# Kernel facts the BPF programs read at run time from the kernel_facts array
# (enum kernel_fact in bpf/common.h): they change when vfio modules load.
RUNTIME_FACTS = ("VFIO_PCI_MMAP_OPS", "VFIO_PGOFF_IS_PFN", "TYPE1_IOCTL_MAP", "TYPE1_IOCTL_UNMAP", "PIN_MAPS",
                 "IOMMUFD_PIN_MAPS", "BAR_FAULT_NESTED", "VDEV_PDEV_AT")

# Kernel features (probes.FEATURES) only choose probes; the BPF programs do not read them.
_FEATURE_FACTS = {feature.fact for feature in FEATURES.values()}

HookKey = Tuple[str, str, str]  # (area, "k" or "r", symbol)

# Seconds of record handling one poll may spend before it returns, the rest left in
# the ring buffer in order: under a flood of records (a guest's vIOMMU mapping 4 KiB at
# a time) the main loop must still verify pins, follow udev and feed the watchdog.
# (Seen in the lab: with the guest's CPU shared with a kernel build, no verification
# pass ran in the 2.5 s after a 5 s map/unmap churn.)
POLL_BUDGET = 0.25


class _Attached(NamedTuple):
    fn: str
    module: str
    address: int
    method: str  # probes.KPROBE or probes.TRAMPOLINE


class _TrampolineSlot(NamedTuple):
    """Where a hook compiled as fentry/fexit lives: its compiled object and the
    program (BCC's name for it)."""

    bpf: object
    prog: bytes
    ret: bool


class Program:
    """The compiled BCC programs (one, or one per area after a compile failure),
    and which probes are attached to them now.

    ``apply`` makes the attachments match a probe selection, so the daemon calls
    it again whenever kernel modules come or go.
    """

    def __init__(self, programs: Dict[str, object], trampolines: Optional[Dict[HookKey, "_TrampolineSlot"]] = None,
                 left_out: Optional[Dict[str, str]] = None):
        self._programs = programs  # area -> BPF object
        self._left_out = left_out or {}  # area -> why it was not compiled (areas_to_compile)
        self._trampolines = trampolines or {}  # hooks compiled as fentry/fexit programs
        self._hooks: Dict[HookKey, _Attached] = {}
        self.statuses: List[ProbeStatus] = []  # replaced by apply; read by the HTTP thread
        self.features: Dict[str, bool] = {}  # kernel feature -> present (FEATURES), set by apply
        self._polled: List[object] = []  # BPF objects with an open ring buffer
        self._handling_since: Optional[float] = None  # first record of the poll in progress
        self.polls_cut = 0  # polls that returned with records left (POLL_BUDGET)
        self.bad_records: Dict[str, int] = {}  # ring buffer -> malformed records skipped
        self._daemon_losses: Dict[Tuple[str, str], int] = {}  # found by the daemon, not the programs

    def tables(self, area: str) -> Callable[[str], object]:
        """name -> the area's BCC table.  ``bpf[name]`` keeps the Table BCC made the first
        time; ``get_table`` would decode the key and value types into new ctypes classes
        on every call (every scrape, every table)."""
        bpf = self._programs[area]
        return lambda name: bpf[name]

    def _distinct(self) -> List[object]:
        return list({id(b): b for b in self._programs.values()}.values())

    def lost_events(self) -> Dict[Tuple[str, str], int]:
        """(BPF map, reason) -> events lost (losses.LOSSES, bpf/common.h enum loss)."""
        import ctypes

        out = dict.fromkeys(LOSSES, 0)
        for loss, n in list(self._daemon_losses.items()):  # a copy: the main loop adds keys
            out[loss] = out.get(loss, 0) + n  # daemon-side reasons (malformed) are not in LOSSES
        for bpf in self._distinct():
            table = bpf["lost_events"]
            for i, loss in enumerate(LOSSES):
                out[loss] += table[ctypes.c_int(i)].value
        return out

    def fault_nesting_seen(self) -> bool:
        """A BAR fault entered vfio_pci_mmap_huge_fault from inside vfio_pci_mmap_page_fault."""
        import ctypes

        if "faults" not in self._programs:
            return False
        return self._programs["faults"]["bar_fault_nested"][ctypes.c_int(0)].value > 0

    def areas(self) -> List[str]:
        return list(self._programs)

    def attached(self) -> Set[str]:
        return {s.name for s in self.statuses if s.attached}

    def apply(self, selections: Sequence[Selected], facts: Dict[str, int], disabled: Sequence[str],
              gone_modules: Iterable[str] = ()) -> List[ProbeStatus]:
        """Attach the selected probes and detach what no selection wants any more.

        A hook into a module named in ``gone_modules`` (unloaded since the last
        call) is detached and attached again, even when the module came back
        at the same address: the kernel drops kprobes of an unloaded module.
        Returns the statuses in probe-table order (also kept in ``statuses``).
        """
        gone = set(gone_modules)
        self.features = {name: feature.fact in facts for name, feature in FEATURES.items()}
        usable = [s for s in selections if s.available and s.probe.name not in disabled and s.probe.area in self._programs]
        wanted = {key: att for s in usable for key, att in self._hook_keys(s)}
        for key, att in list(self._hooks.items()):
            if wanted.get(key) != att or att.module in gone:
                self._detach(key)
        statuses = []
        for sel in selections:
            name = sel.probe.name
            if name in disabled:
                statuses.append(ProbeStatus(name, False, "disabled in the configuration"))
            elif not sel.available:
                statuses.append(ProbeStatus(name, False, sel.reason))
            elif sel.probe.area in self._left_out:
                statuses.append(ProbeStatus(name, False, "BPF program of area %s not compiled at start (%s): restart "
                                            "vfiomond" % (sel.probe.area, self._left_out[sel.probe.area])))
            elif sel.probe.area not in self._programs:
                statuses.append(ProbeStatus(name, False, "BPF program of area %s did not compile" % sel.probe.area))
            else:
                err = self._attach(sel)
                if err:
                    statuses.append(ProbeStatus(name, False, "attach failed: " + err))
                else:
                    statuses.append(self._attached_status(sel))
        # After attaching: a fact a variant sets says its hooks are in place
        # (PIN_MAPS: entries are made only while their removal is seen).
        attached = {st.name for st in statuses if st.attached}
        self._set_facts(facts, [s for s in usable if s.probe.name in attached])
        self.statuses = statuses
        return statuses

    def set_fact(self, name: str, value: int) -> None:
        """One runtime fact (RUNTIME_FACTS) in every program's kernel_facts map, now."""
        import ctypes

        for bpf in self._distinct():
            bpf["kernel_facts"][ctypes.c_int(RUNTIME_FACTS.index(name))] = ctypes.c_ulonglong(value)

    def _set_facts(self, facts: Dict[str, int], usable: Sequence[Selected]) -> None:
        import ctypes

        values = dict(facts)
        for sel in usable:
            values.update((d, 1) for d in sel.variant.sets_facts)
        for bpf in self._distinct():
            table = bpf["kernel_facts"]
            for i, name in enumerate(RUNTIME_FACTS):
                table[ctypes.c_int(i)] = ctypes.c_ulonglong(values.get(name, 0))

    def _hook_keys(self, sel: Selected) -> Iterator[Tuple[HookKey, _Attached]]:
        """The attachments of a selection.  A hook with a fexit handler (Hook.fexit) has
        its return first: while it is a trampoline, that fexit program does the entry's
        work too and no entry is attached; once the kernel refused that program
        (_trampoline_attached, during _attach's walk of this generator), the hook is a
        kprobe pair again."""
        for hook, sym in sel.hooks:
            kinds = (("r", hook.ret), ("k", hook.entry)) if hook.fexit else (("k", hook.entry), ("r", hook.ret))
            for kind, fn in kinds:
                key = (sel.probe.area, kind, sym.name)
                if not fn or (kind == "k" and hook.fexit and (sel.probe.area, "r", sym.name) in self._trampolines):
                    continue
                method = TRAMPOLINE if key in self._trampolines else KPROBE
                yield key, _Attached(fn, sym.module, sym.address, method)

    def _attached_status(self, sel: Selected) -> ProbeStatus:
        """After _attach: each symbol with the method its hooks got (self._hooks)."""
        methods: Dict[str, str] = {}
        for hook, sym in sel.hooks:
            key = next(k for k in ((sel.probe.area, kind, sym.name) for kind in "kr") if k in self._hooks)
            methods.setdefault(sym.name, method_names(hook, self._hooks[key].method))
        return ProbeStatus(sel.probe.name, True, ",".join(methods), ",".join(methods.values()))

    def _attach(self, sel: Selected) -> Optional[str]:
        """Attach every hook of a probe not attached yet; None on success, else the
        error (and the hooks attached by this call are detached again)."""
        bpf = self._programs[sel.probe.area]
        new = []
        try:
            for key, att in self._hook_keys(sel):
                if key in self._hooks:
                    continue  # shared: the type1 ioctl serves map and unmap
                _, kind, symbol = key
                if att.method == TRAMPOLINE and not self._trampoline_attached(key):
                    att = att._replace(method=KPROBE)
                if att.method == KPROBE:
                    (bpf.attach_kprobe if kind == "k" else bpf.attach_kretprobe)(event=symbol, fn_name=att.fn)
                self._hooks[key] = att
                new.append(key)
        except Exception as e:
            for key in new:
                self._detach(key)
            return _first_line(e)
        return None

    def _detach(self, key: HookKey) -> None:
        area, kind, symbol = key
        att = self._hooks.pop(key)
        bpf = self._programs[area]
        try:
            if att.method == TRAMPOLINE:
                self._trampoline_on(key, False)
            else:
                (bpf.detach_kprobe if kind == "k" else bpf.detach_kretprobe)(event=symbol, fn_name=att.fn)
        except Exception as e:  # the kernel may have dropped it with its module
            log.debug("detaching %s %s: %s", kind, symbol, _first_line(e))

    def _trampoline_attached(self, key: HookKey) -> bool:
        """Switch a trampoline hook on; False (it is a kprobe from now on) if the kernel
        refused its fentry/fexit program (the verifier at load, or the attach)."""
        try:
            self._trampoline_on(key, True)
            return True
        except Exception as e:
            log.warning("fentry/fexit program of %s refused (%s): attaching kprobes instead", key[2], _first_line(e))
            del self._trampolines[key]
            return False

    def _trampoline_on(self, key: HookKey, on: bool) -> None:
        slot = self._trampolines[key]
        if on:
            (slot.bpf.attach_kretfunc if slot.ret else slot.bpf.attach_kfunc)(fn_name=slot.prog)
        else:
            (slot.bpf.detach_kretfunc if slot.ret else slot.bpf.detach_kfunc)(fn_name=slot.prog)

    def open_ring_buffer(self, area: str, table: str, parse: Callable[[bytes], object],
                         callback: Callable[[object], None]) -> None:
        """Call ``callback(parse(raw bytes))`` for each record of a BPF_RINGBUF_OUTPUT table.
        A record ``parse`` refuses (ValueError) is a malformed one: counted as lost;
        a failure of ``callback`` is logged and the loop goes on."""
        import ctypes

        def on_record(_ctx, data, size):
            now = time.monotonic()
            if self._handling_since is None:
                self._handling_since = now
            try:
                record = parse(ctypes.string_at(data, size))
            except ValueError as e:  # a malformed record (pins.parse_event): counted, one line
                self.bad_records[table] = n = self.bad_records.get(table, 0) + 1
                # Exported as vfiomond_events_lost_total{map=table,reason="malformed"}.
                loss = (table, "malformed")
                self._daemon_losses[loss] = self._daemon_losses.get(loss, 0) + 1
                if n & (n - 1) == 0:  # the 1st, 2nd, 4th, ...: a stream of them is not a log flood
                    log.warning("skipped a malformed %s record (%d so far): %s", table, n, e)
            else:
                try:
                    callback(record)
                except Exception:  # a record whose handling fails must not stop the loop
                    log.exception("handling a %s record failed", table)
            if now - self._handling_since < POLL_BUDGET:
                return 0
            # libbpf stops consuming when a callback returns < 0 (this record is
            # consumed); the rest waits for the next poll.
            self.polls_cut += 1
            return -1

        bpf = self._programs[area]
        bpf[table].open_ring_buffer(on_record)
        self._daemon_losses.setdefault((table, "malformed"), 0)  # exported at 0 from the start
        if all(b is not bpf for b in self._polled):
            self._polled.append(bpf)  # one BCC object polls all of its ring buffers

    def forget_exited(self, area: str, table: str) -> int:
        """Delete the entries of a pid- or tid-keyed table whose process or thread is
        gone (/proc/ID names any live thread too); returns how many were deleted."""
        return len(self._delete_exited(self._programs[area][table]))

    def forget_exited_threads(self, area: str, table: str) -> int:
        """forget_exited for a thread-keyed table of calls (dma_by_tid,
        iommufd_dma_by_tid, dmabuf_by_tid): the entry of a gone thread that was still
        in flight was left by a return probe that never ran, and counts as a stale
        loss of that table (an entry with an ``active`` field, kept by its thread
        between calls, was in flight only while it is set); returns that count."""
        stale = sum(1 for v in self._delete_exited(self._programs[area][table]) if getattr(v, "active", 1))
        loss = (table, "stale")
        self._daemon_losses[loss] = self._daemon_losses.get(loss, 0) + stale
        return stale

    @staticmethod
    def _delete_exited(t) -> list:
        """Delete the entries of ``t`` whose id (pid or tid) is gone; their values."""
        deleted = []
        for k, v in list(t.items()):
            if os.path.exists("/proc/%d" % k.value):
                continue
            try:
                del t[k]
            except KeyError:  # deleted meanwhile (an id reused, its new call ended)
                continue
            deleted.append(v)
        return deleted

    def vfio_user_candidates(self) -> Set[int]:
        """PIDs that opened a VFIO or iommufd device (area users) or hold DMA mappings
        (the backends' per-process maps: a process handed its fds over a socket)."""
        out: Set[int] = set()
        for area, table in (("users", "vfio_openers"), ("type1", "proc_acct"), ("iommufd", "iommufd_proc_acct")):
            if area in self._programs:
                out.update(k.value for k in self._programs[area][table].keys())
        return out

    def loaded_programs(self) -> List[Tuple[str, int]]:
        """(BPF function name, fd) of every program loaded (attached now or before); a
        fentry/fexit program as kfunc__<function> / kretfunc__<function> whatever the
        BCC version (0.28+ puts vmlinux__ in between)."""
        out = []
        for bpf in self._distinct():
            for name, fn in list(bpf.funcs.items()):
                name = name.decode() if isinstance(name, bytes) else name  # BCC keys funcs by bytes
                out.append((name.replace("func__vmlinux__", "func__", 1), fn.fd))
        return out

    def growing_maps(self) -> List[Tuple[str, int, Callable[[], Iterable]]]:
        """(name, fd, key iterator) of the hash and LPM-trie maps of every compiled
        object (bpfstats.growing_maps of its sources)."""
        out = []
        for bpf in self._distinct():
            areas = [a for a, b in self._programs.items() if b is bpf]
            for name in dict.fromkeys(bpfstats.growing_maps(_source(areas))):
                try:
                    table = bpf[name]
                except KeyError:  # declared but optimised out
                    continue
                out.append((name, table.map_fd, table.keys))
        return out

    def forget_device(self, device: str) -> int:
        """Delete the map entries of a PCI device that left its VFIO driver."""
        return faults.forget_device(self.tables("faults"), device)

    def poll(self, timeout_ms: int) -> None:
        """Deliver ring-buffer records (waits up to ``timeout_ms`` on the first program,
        then drains the others: there are several only after a per-area compile)."""
        for i, bpf in enumerate(self._polled):
            self._handling_since = None
            bpf.ring_buffer_poll(timeout_ms if i == 0 else 0)

    def close(self) -> None:
        for bpf in self._distinct():
            bpf.cleanup()


def _source(areas: Sequence[str]) -> str:
    d = bpf_dir()
    parts = [open(os.path.join(d, "common.h")).read()]
    parts += [open(os.path.join(d, AREAS[a].SOURCE)).read() for a in areas]
    return "\n".join(parts)


# Free LRU nodes a CPU may hold on its own list (LOCAL_FREE_TARGET, kernel/bpf/bpf_lru_list.h,
# unchanged since the LRU maps came, 3a08c2fd7634, 4.10): a common LRU hash evicts once the
# others' lists hold what is left, long before it is full on a host with many CPUs.
LRU_LOCAL_FREE_TARGET = 128
THREADS_IN_FLIGHT = 4096  # threads in a probed call at once that the per-thread maps hold


def possible_cpus(path: str = "/sys/devices/system/cpu/possible") -> int:
    """CPUs the kernel sizes per-CPU data for ("0-63", "0,2-5"); os.cpu_count() if unreadable."""
    try:
        with open(path) as f:
            text = f.read().strip()
        n = 0
        for part in text.split(","):
            lo, _, hi = part.partition("-")
            n += int(hi or lo) - int(lo) + 1
        return n
    except (OSError, ValueError):
        return os.cpu_count() or 1


def thread_state_entries(cpus: int) -> int:
    """Entries of the per-thread LRU maps (THREAD_STATE in bpf/common.h): the threads
    in flight plus what every CPU's free list may hold, so an entry in use is not
    evicted before THREADS_IN_FLIGHT threads are in probed calls at once."""
    return THREADS_IN_FLIGHT + LRU_LOCAL_FREE_TARGET * cpus


# The kernel builds with -fms-extensions since 6.19, and its headers use it (7.x's
# include/linux/fs.h: struct filename embeds struct __filename_head by tag); BCC
# passes it itself from 0.37.0 (iovisor/bcc c3f35ecc), for every kernel.  Without
# it, older BCCs fail on such headers (a static assertion on struct filename's size).
MS_EXTENSIONS = ["-fms-extensions", "-Wno-microsoft-anon-tag", "-Wno-unknown-warning-option"]


def _cflags(facts: Dict[str, int]) -> List[str]:
    return ["-D%s=%#x" % (k, v) for k, v in sorted(facts.items())] + ["-Wno-macro-redefined"] + MS_EXTENSIONS


class Trampoline(NamedTuple):
    """A hook's fentry or fexit program: its handler (whose body is ``<fn>__body``),
    the number of arguments of the kernel function (BTF), and the function's module."""

    fn: str
    nargs: int
    module: str = ""  # the function's module ("" for vmlinux): a module's BTF id


TrampolinePlan = Dict[HookKey, Trampoline]


def plan_trampolines(selections: Sequence[Selected], arities: Dict[str, int], usable: bool,
                     module_trampolines: bool = False) -> TrampolinePlan:
    """The hooks of ``selections`` that attach as fentry/fexit (probes.attach_method;
    module functions only with ``module_trampolines``).
    BCC names a fentry program after its function, so a compile unit has one per
    function and kind: a second area's hook on the same function stays a kprobe.
    A hook with a fexit handler (probes.Hook.fexit) is that one program."""
    plan: TrampolinePlan = {}
    taken = set()
    for sel in selections:
        for hook, sym in sel.hooks:
            if attach_method(hook, sym, arities, usable, module_trampolines)[0] != TRAMPOLINE:
                continue
            nargs = arities[sym.name]
            programs = [("r", Trampoline(hook.fexit, nargs, sym.module))] if hook.fexit else \
                [(kind, Trampoline(fn, nargs, module=sym.module)) for kind, fn in (("k", hook.entry), ("r", hook.ret))
                 if fn]
            for kind, program in programs:
                key = (sel.probe.area, kind, sym.name)
                if key in plan or (kind, sym.name) not in taken:
                    plan[key] = program
                    taken.add((kind, sym.name))
    return plan


def trampoline_source(plan: TrampolinePlan) -> str:
    """C text of the fentry/fexit programs for ``plan``: each puts the call's arguments
    (and return value) where PT_REGS_PARMn (PT_REGS_RC) read them, in a pt_regs on its
    stack, and runs the handler's body (bpf/common.h).  Empty without a plan."""
    out = []
    for (area, kind, symbol), program in sorted(plan.items()):
        ret = kind == "r"
        # Every argument declared: BCC 0.18's KFUNC_PROBE does not compile without one.
        params = ["u64 arg%d" % i for i in range(program.nargs)] + (["u64 ret"] if ret else [])
        macro = "KRETFUNC_PROBE" if ret else "KFUNC_PROBE"
        where = symbol
        if program.module:  # BCC 0.28+ (80fcfc99): the module's BTF id
            macro, where = "MODULE_" + macro, "%s, %s" % (program.module, symbol)
        out += ["%s(%s, %s)" % (macro, where, ", ".join(params)), "{", "    struct pt_regs regs = {};"]
        out += ["    PT_REGS_PARM%d(&regs) = arg%d;" % (i + 1, i) for i in range(program.nargs)]
        if ret:
            out.append("    PT_REGS_RC(&regs) = ret;")
        out += ["    return %s__body(&regs);" % program.fn, "}"]
    return "\n".join(out) + "\n" if out else ""


def _trampoline_slots(bpf, plan: TrampolinePlan) -> Dict[HookKey, _TrampolineSlot]:
    """Each trampoline hook's program, by the name BCC gave it: kfunc__<symbol> up to
    BCC 0.27, kfunc__vmlinux__<symbol> from 0.28, kfunc__<module>__<symbol> for a
    module's function (kretfunc__ likewise)."""
    if not plan:
        return {}
    from bcc import lib

    names = [lib.bpf_function_name(bpf.module, i) for i in range(lib.bpf_num_functions(bpf.module))]
    slots = {}
    for key in plan:
        prefix = b"kretfunc__" if key[1] == "r" else b"kfunc__"
        symbol = key[2].encode()
        module = plan[key].module.encode() or b"vmlinux"
        prog = next((n for n in (prefix + module + b"__" + symbol, prefix + symbol) if n in names), None)
        if prog is None:
            raise VfiomondError("BCC did not compile the %s program of %s" % (prefix[:-2].decode(), key[2]))
        slots[key] = _TrampolineSlot(bpf, prog, key[1] == "r")
    return slots


def _without_autoload(BPF):
    """BCC's BPF, less the attaching at load of the programs whose names say where
    (kfunc__*, kprobe__*...): Program.apply attaches every program as its probe is
    wanted, configuration included, and a fentry program the kernel refuses is one hook
    that falls back to its kprobe, not a whole compile lost."""

    class Loaded(BPF):
        def _trace_autoload(self):
            pass

    return Loaded


def _compile(BPF, areas: Sequence[str], cflags: List[str], plan: TrampolinePlan, struct_layout: str
             ) -> Tuple[Dict[str, object], Dict[HookKey, _TrampolineSlot]]:
    """One BCC program for all areas (one clang run); with the kernel headers if
    the struct layout from BTF does not compile; without fentry/fexit programs if
    those fail to load; per area if it still fails."""
    unit_plan = {k: v for k, v in plan.items() if k[0] in areas}
    try:
        bpf = BPF(text=struct_layout + _source(areas) + trampoline_source(unit_plan), cflags=cflags)
        return {a: bpf for a in areas}, _trampoline_slots(bpf, unit_plan)
    except Exception as e:  # BCC raises bare Exception on compile errors
        if "KERNEL_LAYOUT_BTF" in struct_layout:
            log.warning("BPF programs with struct offsets from BTF did not compile (%s); with the kernel headers",
                        _first_line(e))
            return _compile(BPF, areas, cflags, plan, layout.header_defines())
        vmlinux_plan = {k: v for k, v in unit_plan.items() if not v.module}
        if len(vmlinux_plan) < len(unit_plan):
            log.warning("fentry/fexit programs on module functions did not compile (%s; BCC 0.28+ has "
                        "MODULE_KFUNC_PROBE); kprobes on module functions", _first_line(e))
            return _compile(BPF, areas, cflags, vmlinux_plan, struct_layout)
        if unit_plan:
            log.warning("fentry/fexit programs did not compile (%s); every hook a kprobe", _first_line(e))
            return _compile(BPF, areas, cflags, {}, struct_layout)
        if len(areas) == 1:
            log.error("BPF program of area %s does not compile on this kernel: %s", areas[0], _first_line(e))
            return {}, {}
        log.warning("BPF compile failed (%s); compiling each area alone", _first_line(e))
    out: Dict[str, object] = {}
    slots: Dict[HookKey, _TrampolineSlot] = {}
    for area in areas:
        programs, area_slots = _compile(BPF, [area], cflags, plan, struct_layout)
        out.update(programs)
        slots.update(area_slots)
    return out, slots


def _trampoline_support(BPF, selections: Sequence[Selected], kernel_trampolines: bool, module_trampolines: bool = False
                        ) -> Tuple[Dict[str, int], bool]:
    """(argument counts from the kernel's BTF of the hooked functions that could be
    trampolines, vmlinux's and with ``module_trampolines`` the modules', whether this
    kernel and BCC attach fentry/fexit)."""
    if module_trampolines and not _bcc_has_module_trampolines():
        log.warning("probes.module_trampolines: this BCC has no fentry/fexit on module functions "
                    "(MODULE_KFUNC_PROBE, BCC 0.28+): kprobes on module functions")
        module_trampolines = False
    wanted = trampoline_candidates(selections, module_trampolines)
    try:
        usable = bool(wanted) and _bcc_attaches_trampolines(BPF, kernel_trampolines)
    except Exception as e:  # a BCC without kfunc support
        log.info("no fentry/fexit (%s): every hook a kprobe", _first_line(e))
        return {}, False
    if not usable:
        if wanted:
            log.info("no fentry/fexit on this kernel (BCC: no BPF trampolines or no kernel BTF): every hook a kprobe")
        return {}, False
    try:
        return btf.module_arities(wanted), True
    except btf.BTFError as e:
        log.warning("kernel BTF unreadable, every hook a kprobe: %s", e)
        return {}, False


def areas_to_compile(facts: Dict[str, int], installable: Callable[[], Optional[Set[str]]]
                     ) -> Tuple[List[str], Dict[str, str]]:
    """(the probe areas to compile, {area left out: why}).  An area is left out
    only when none of its probes can ever apply on this kernel: each needs a
    feature (probes.FEATURES) absent from kallsyms now that no module of this
    kernel can bring (Feature.modules against ``installable()``, the module names
    of kernel.installable_modules, asked only then; None: unknown, so compiled).
    On Debian's kernels, which have no iommufd, that leaves the iommufd area out."""
    modules: List[Optional[Set[str]]] = []

    def can_come(feature_name: str) -> bool:
        feature = FEATURES[feature_name]
        if feature.fact in facts or feature.modules is None:
            return True
        if not modules:
            modules.append(installable())
        known = modules[0]
        return known is None or any(m in known for m in feature.modules)

    areas = list(dict.fromkeys(p.area for p in PROBES))
    left_out: Dict[str, str] = {}
    for area in areas:
        needed = {p.feature for p in PROBES if p.area == area}
        if None in needed or any(can_come(f) for f in needed):
            continue
        left_out[area] = "; ".join(_never_there(f) for f in sorted(needed))
    return [a for a in areas if a not in left_out], left_out


def _never_there(feature_name: str) -> str:
    modules = FEATURES[feature_name].modules
    if not modules:
        return "%s not in kallsyms, and only vmlinux has it" % feature_name
    return "%s not in kallsyms, and this kernel has no module %s" % (feature_name, " or ".join(modules))


def _bcc_attaches_trampolines(BPF, kernel_trampolines: bool) -> bool:
    """BCC's BPF.support_kfunc() without the kallsyms read it does (BCC's symbol
    cache loads every kernel symbol: 3 s of a start in the lab's guests), from
    the same facts: x86-64 (the only architecture BCC makes trampolines for), BTF
    for the kernel (libbcc's bpf_has_kernel_btf), and ``kernel_trampolines``,
    the kernel's trampoline code in the kallsyms the daemon read
    (probes.TRAMPOLINE_MARKER).  A libbcc without bpf_has_kernel_btf: its own
    support_kfunc(), raising AttributeError where BCC has none."""
    if not kernel_trampolines or platform.machine() != "x86_64":
        return False
    try:
        from bcc.libbcc import lib  # noqa: PLC0415 (optional at import time of the package)
        has_kernel_btf = lib.bpf_has_kernel_btf
    except (ImportError, AttributeError):
        return bool(BPF.support_kfunc())
    return bool(has_kernel_btf())


def _bcc_has_module_trampolines() -> bool:
    """BCC 0.28+ (80fcfc99, MODULE_KFUNC_PROBE) by its version, e.g. "0.31.0+ds";
    an unreadable version: True (a compile that fails falls back, _compile)."""
    try:
        import bcc  # noqa: PLC0415

        version = tuple(int(part) for part in re.findall(r"\d+", str(bcc.__version__))[:2])
    except Exception:  # no BCC, or no version to read
        return True
    return len(version) < 2 or version >= (0, 28)


def _first_line(e: Exception) -> str:
    text = str(e).strip()
    return text.splitlines()[0] if text else type(e).__name__


def load(selections: Sequence[Selected], facts: Dict[str, int], disabled: Sequence[str], kernel_trampolines: bool,
         module_trampolines: bool = False) -> Program:
    """Compile every area, whatever this kernel offers now (modules may load
    later) and whatever the configuration disables (a reload may enable it),
    except one this kernel can never use (areas_to_compile), and attach the
    selected probes.

    ``facts``: RUNTIME_FACTS go to the kernel_facts map, the others (ZERO_PFN,
    PIN_SAMPLES) are compiled in as -D defines.  ``kernel_trampolines``: kallsyms
    has the kernel's BPF trampoline code (probes.TRAMPOLINE_MARKER).
    ``module_trampolines``: fentry/fexit on module functions too, for the modules
    loaded now (probes.attach_method: they cannot be unloaded while the daemon runs).
    """
    BPF = import_bcc()
    areas, left_out = areas_to_compile(facts, lambda: kernel.installable_modules(kernel.release()))
    for area, why in left_out.items():
        log.info("BPF area %s left out of the compile: %s", area, why)
    compiled = {k: v for k, v in facts.items() if k not in RUNTIME_FACTS and k not in _FEATURE_FACTS}
    plan = plan_trampolines(selections, *_trampoline_support(BPF, selections, kernel_trampolines, module_trampolines),
                            module_trampolines=module_trampolines)
    struct_layout, source = layout.choose()
    log.info("kernel struct offsets from %s", source)
    programs, slots = (_compile(_without_autoload(BPF), areas, _cflags(compiled), plan, struct_layout)
                       if areas else ({}, {}))
    btf.release_vmlinux()  # read for the arities, the layout and the module facts
    program = Program(programs, slots, left_out)
    footprint.release_free_heap()
    program.apply(selections, facts, disabled)
    released = footprint.release_compiler_code() if areas else 0
    if released:
        log.info("compiler code unmapped after the compile: %.1f MiB of resident memory (it stays in the page cache)",
                 released / 1024)
    return program
