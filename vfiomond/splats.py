"""Kernel splats: assemble multi-line reports from kernel log lines, attribute
them by the frames of their call trace and the file:line of their header, and
match them to known issues (vfiomond/known_issues.json).

Lines may come from dmesg ("[  45.23] ..."), ``journalctl -k`` ("Nov 22 10:00:00
host kernel: ..."), /dev/kmsg records or the journal's MESSAGE field.
"""

import re
from typing import Iterable, Iterator, List, NamedTuple, Optional, Tuple

from vfiomond.advisories import Version, parse_version

_PREFIXES = (
    re.compile(r"^\[\s*(?:\d+\.\d+)?\]\s?"),  # dmesg; "[]": a timestamp blanked in a mailed report
    re.compile(r"^\w{3} [ \d]\d \d\d:\d\d:\d\d \S+ kernel: "),  # journalctl -k (short)
    re.compile(r"^\d{4}-\d\d-\d\dT\S+ \S+ kernel: "),  # journalctl -k -o short-iso
)

# Header patterns, in order: (kind, regex). Multi-line kinds collect lines
# until "---[ end trace", the next header, or MAX_LINES.
_HEADERS = (
    ("warning", re.compile(r"^WARNING: CPU: \d+ PID: \d+ at (?P<site>[\w./-]+:\d+)(?: (?P<func>[\w.]+)\+0x)?")),
    ("lockdep", re.compile(r"^WARNING: (?:possible (?:circular|recursive) locking|suspicious RCU usage|inconsistent lock state|held lock freed|lock held when returning)")),
    ("bug", re.compile(r"^kernel BUG at (?P<site>[\w./-]+:\d+)!")),
    # "WARN: soft lockup" is how some vendor kernels word it.
    ("soft_lockup", re.compile(r"^(?:watchdog: )?(?:BUG|WARN): soft lockup")),
    # powerpc: "BUG: Kernel NULL pointer dereference on read at 0x..." (capital K).
    ("oops", re.compile(r"^(?:BUG: (?:unable to handle|[Kk]ernel NULL pointer)|Unable to handle kernel |Oops[: ])")),
    ("bug", re.compile(r"^BUG: ")),
    ("rcu_stall", re.compile(r"^rcu: INFO: rcu_\w+ (?:self-)?detected stall")),
)
# An ARM SMMUv3 event record (drivers/iommu/arm/arm-smmu-v3/arm-smmu-v3.c): every kernel
# prints "event 0xNN received:" and the record's four raw words ("\t0x%016llx"), which
# name no device (the StreamID is bits 63:32 of the first word, and how StreamIDs map to
# PCI requester IDs is the firmware's iommu-map).  Newer kernels' arm_smmu_dump_event
# (d814b70b9b90, 6.14) follows them with a decoded line naming the client device, "event:
# F_TRANSLATION client: 0000:01:00.0 sid: 0x100 ssid: 0x0 iova: ... ipa: ..." ("(unassigned
# sid)" where no device owns the StreamID; 6.14 to 7.2.12 print the same), and for
# faults of the translation class a second one, "unpriv data read s1 \"...\" stag: 0x0".
# The lines of one record make one iommu_fault report, headed by the decoded line where
# there is one.
_SMMU_RAW = re.compile(r"^arm-smmu-v3 \S+: event 0x[0-9a-f]{2} received:")
# A raw word is "\t0x%016llx": the tab arrives as "\x09" from /dev/kmsg, which escapes
# control characters (kernel/printk/printk.c).
_SMMU_WORD = re.compile(r"^arm-smmu-v3 \S+: (?:\s|\\x09)*0x[0-9a-f]{16}\s*$")
_SMMU_DECODED = re.compile(r"^arm-smmu-v3 \S+: event: \S+ client: ")
_SMMU_DETAIL = re.compile(r"^arm-smmu-v3 \S+: (?:un)?priv (?:inst|data) (?:read|write) s[12] ")
SUPPRESSED = re.compile(r"^(?P<func>[\w.]+): (?P<count>\d+) callbacks suppressed$")
# One-line events.
_SINGLE = (
    # AMD-Vi's line carries the device's prefix on newer kernels ("vfio-pci 0000:01:00.0:
    # AMD-Vi: Event logged [IO_PAGE_FAULT domain=...]"), a device= field on older ones.
    # An SMMUv3 decoded line outside a record (its raw words filtered out) is one too.
    ("iommu_fault", re.compile(r"^DMAR: \[DMA (?:Read|Write)|AMD-Vi: Event logged \[IO_PAGE_FAULT|io_page_fault|Unhandled context fault"
                               r"|" + _SMMU_DECODED.pattern)),
    ("memlock", re.compile(r"RLIMIT_MEMLOCK \(\d+\) exceeded")),
    ("vfio", re.compile(r"^vfio-pci \S+: |^vfio: ")),
    # pci_bridge_secondary_bus_reset (drivers/pci/pci.c, 6.10+): a bus reset whose
    # upstream bridge is not locked, "%pS" naming the caller (a mail may wrap it).
    ("unlocked_reset", re.compile(r"unlocked secondary bus reset via:(?: (?P<func>[A-Za-z_][\w.]*)\+0x)?")),
    # lib/ratelimit.c ___ratelimit: "FUNC: N callbacks suppressed", the lines a rate
    # limit dropped since the last one it let through (dmar_fault's IOMMU faults, say).
    ("suppressed", SUPPRESSED),
)
# A header that continues a BUG/oops in progress instead of starting one
# ("Oops: 0000 [#1]" follows "BUG: unable to handle", arm64 prints
# "Internal error: Oops - BUG" right after "kernel BUG at").
_CONTINUES = re.compile(r"^(?:Internal error: )?Oops")
_END = re.compile(r"^---\[ end trace")
# A call-trace frame, "func+0xOFF/0xLEN [module]", in each architecture's shape:
#   x86-64, arm64:   " func+0x../0x..", " ? func+0x../0x.." (unreliable)
#   s390, riscv, x86 before 4.x: " [<000003ff80243b0e>] func+0x../0x..", s390's
#       "([<...>] func+0x../0x..)" is the unreliable return-address guess
#   powerpc:         "[c0000010f29afc30] [c00800000fd60ee0] func+0x../0x.. [mod]",
#       "... (unreliable)" for the first frame
_FRAME = re.compile(
    r"^\s*(?P<paren>\()?(?:\[<?[0-9a-f]+>?\] (?:\[[0-9a-f]+\] )?)?(?P<unreliable>\? )?"
    r"(?P<func>[A-Za-z_][\w.]*)\+0x[0-9a-f]+/0x[0-9a-f]+(?: \[(?P<mod>\w+)\])?(?P<tail> \(unreliable\))?")
_INLINE = re.compile(r"^\s*(?P<func>[A-Za-z_]\w*) [\w./-]+\.[ch]:\d+ \[inline\]")
# The faulting instruction: x86-64 "RIP: 0010:", arm64 "pc : ", x86 before 4.x "IP: [<..>]",
# s390 "Krnl PSW : MASK ADDR (func+0x..)", powerpc "NIP [c0000...] func+0x..", riscv "epc : ".
_IP = re.compile(r"^(?:RIP: \w+:|pc : |IP: \[<[0-9a-f]+>\] |Krnl PSW : [0-9a-f]+ [0-9a-f]+ \(|NIP \[[0-9a-f]+\] |"
                 r"epc : )(?P<func>[A-Za-z_][\w.]*)\+0x")
_TAINT = re.compile(r"(?:Not tainted|Tainted: [A-Z ]*) (\d+\.\d+[\w.+-]*)")
MAX_LINES = 400

# Frames of the reporting machinery, never the culprit.
_REPORTING = frozenset({
    "__dump_stack", "dump_stack", "dump_stack_lvl", "show_stack", "__warn", "report_bug", "handle_bug",
    "exc_invalid_op", "asm_exc_invalid_op", "check_noncircular", "check_prev_add", "__lock_acquire", "lock_acquire",
    "print_circular_bug", "lockdep_rcu_suspicious", "panic", "die",
})

# Where an interrupt entered the kernel: a soft lockup or RCU stall is reported from the
# timer interrupt, and the stalled code is the frames below (after) this one (arm64
# el1_irq up to 5.x, el1_interrupt / el1h_64_irq from 5.13; x86 sysvec_* entries).
_IRQ_ENTRY = frozenset({
    "el1_irq", "el1_interrupt", "el1h_64_irq", "el1h_64_irq_handler", "asm_sysvec_apic_timer_interrupt",
    "sysvec_apic_timer_interrupt", "apic_timer_interrupt",
})

PFNMAP_FUNCTIONS = frozenset({
    "remap_pfn_range", "remap_pfn_range_notrack", "remap_pfn_range_internal", "io_remap_pfn_range",
    "untrack_pfn", "untrack_pfn_copy", "track_pfn_copy", "track_pfn_remap", "track_pfn_insert", "get_pat_info",
    "follow_phys", "pfnmap_track", "pfnmap_untrack", "vmf_insert_pfn", "vmf_insert_pfn_prot", "vmf_insert_pfn_pmd",
    "vmf_insert_pfn_pud", "reserve_pfn_range", "free_pfn_range",
})


# The device an IOMMU fault line names: Intel VT-d "Request device [BB:DD.F]" (no PCI
# segment: drivers/iommu/intel/dmar.c dmar_fault_do_one prints bus, device, function),
# AMD-Vi "device=BB:DD.F" (older) or the device's own prefix "DRIVER SSSS:BB:DD.F: AMD-Vi:".
_FAULT_DEVICE = (
    re.compile(r"Request device \[(?:(?P<seg>[0-9a-f]{4}):)?(?P<bdf>[0-9a-f]{2}:[0-9a-f]{2}\.[0-7])\]"),
    re.compile(r"IO_PAGE_FAULT device=(?:(?P<seg>[0-9a-f]{4}):)?(?P<bdf>[0-9a-f]{2}:[0-9a-f]{2}\.[0-7])"),
    re.compile(r"^\S+ (?P<seg>[0-9a-f]{4}):(?P<bdf>[0-9a-f]{2}:[0-9a-f]{2}\.[0-7]): AMD-Vi: "),
    re.compile(_SMMU_DECODED.pattern + r"(?P<seg>[0-9a-f]{4}):(?P<bdf>[0-9a-f]{2}:[0-9a-f]{2}\.[0-7]) "),
)


def fault_device(line: str) -> Optional[str]:
    """The PCI address an IOMMU fault line names ("0000:" when the line gives no
    segment), or None."""
    for pattern in _FAULT_DEVICE:
        m = pattern.search(line)
        if m:
            return "%s:%s" % (m.group("seg") or "0000", m.group("bdf"))
    return None


def strip_prefix(line: str) -> str:
    line = line.rstrip("\n")
    for prefix in _PREFIXES:
        m = prefix.match(line)
        if m:
            return line[m.end():]
    return line


class Splat(NamedTuple):
    kind: str  # warning, lockdep, bug, oops, soft_lockup, rcu_stall, iommu_fault, memlock, vfio, unlocked_reset, suppressed
    header: str
    site: str  # "file:line" of the header, "" if none
    function: str  # the function the header or the instruction pointer names
    frames: Tuple[str, ...]  # call-trace functions, innermost first, unreliable "?" frames left out
    modules: Tuple[str, ...]
    kernel: Optional[Version]  # from "Not tainted 6.12.0-rc5+", when the splat says
    lines: Tuple[str, ...]

    @property
    def site_file(self) -> str:
        return self.site.rsplit(":", 1)[0]

    @property
    def vfio(self) -> bool:
        names = self.frames + (self.function,)
        return (
            self.kind in ("vfio", "memlock")
            or any(f.startswith("vfio") for f in names)
            or any(m.startswith("vfio") for m in self.modules)
        )

    @property
    def pfnmap(self) -> bool:
        return self.site_file == "arch/x86/mm/pat/memtype.c" or bool(
            PFNMAP_FUNCTIONS.intersection(self.frames + (self.function,))
        )

    @property
    def text(self) -> str:
        return "\n".join(self.lines)


def _finish(kind: str, header: str, site: str, lines: List[str]) -> Splat:
    frames, modules, function, kernel = [], [], "", None
    for line in lines:
        m = _FRAME.match(line) or _INLINE.match(line)
        g = m.groupdict() if m else {}
        if m and not (g.get("unreliable") or g.get("paren") or g.get("tail")):
            frames.append(m.group("func"))
            if g.get("mod"):
                modules.append(g["mod"])
        ip = _IP.match(line.lstrip())
        if ip and not function:
            function = ip.group("func")
        taint = _TAINT.search(line)
        if taint and kernel is None:
            kernel = parse_version(taint.group(1))
    header_func = next((h.match(header).groupdict().get("func") for k, h in _HEADERS if k == kind and h.match(header)), None)
    interrupted = frames
    if kind in ("soft_lockup", "rcu_stall"):
        entries = [i for i, f in enumerate(frames) if f in _IRQ_ENTRY]
        if entries:
            interrupted = frames[entries[-1] + 1:]
    culprit = next((f for f in interrupted if f not in _REPORTING), "")
    return Splat(kind, header, site, header_func or function or culprit,
                 tuple(frames), tuple(dict.fromkeys(modules)), kernel, tuple(lines))


class Assembler:
    """Feed log lines one by one; complete splats come out of ``feed`` and ``flush``."""

    def __init__(self):
        self._kind: Optional[str] = None
        self._header = ""
        self._site = ""
        self._lines: List[str] = []
        self._smmu: List[str] = []  # an SMMUv3 event record in progress
        self._smmu_header = ""

    def _start(self, line: str) -> Optional[Tuple[str, str]]:
        for kind, pattern in _HEADERS:
            m = pattern.match(line)
            if m:
                return kind, m.groupdict().get("site") or ""
        return None

    def _smmu_record(self, bare: str, line: str) -> Tuple[bool, List[Splat]]:
        """Whether ``bare`` is a line of an SMMUv3 record (taken), and the reports it
        completes: a line of anything else completes the record in progress."""
        if self._smmu and _SMMU_WORD.match(bare):
            self._smmu.append(line)
            return True, []
        if self._smmu and not self._smmu_header and _SMMU_DECODED.match(bare):
            self._smmu.append(line)
            self._smmu_header = bare
            return True, []
        if self._smmu_header and _SMMU_DETAIL.match(bare):
            self._smmu.append(line)
            return True, self._smmu_flush()
        done = self._smmu_flush()
        if _SMMU_RAW.match(bare):
            self._smmu = [line]
            return True, done
        return False, done

    def _smmu_flush(self) -> List[Splat]:
        if not self._smmu:
            return []
        header = self._smmu_header or self._smmu[0].lstrip()
        splat = Splat("iommu_fault", header, "", "", (), (), None, tuple(self._smmu))
        self._smmu, self._smmu_header = [], ""
        return [splat]

    def feed(self, raw: str) -> List[Splat]:
        line = strip_prefix(raw)
        # Headers are matched without leading blanks: reports quoted in mail or commit
        # messages are indented.  The lines are kept as printed.
        bare = line.lstrip()
        taken, out = self._smmu_record(bare, line)
        if taken:
            return out
        for kind, pattern in _SINGLE:
            m = pattern.search(bare)
            if m:
                function = m.groupdict().get("func") or ""
                out.append(Splat(kind, bare, "", function, (function,) if function else (), (), None, (line,)))
                return out
        if self._kind in ("bug", "oops") and _CONTINUES.match(bare):
            self._lines.append(line)
            return out
        started = self._start(bare)
        if started:
            out += self.flush()
            self._kind, self._site = started
            self._header = bare
            self._lines = [line]
            return out
        if self._kind is None:
            return out
        self._lines.append(line)
        if _END.match(bare) or len(self._lines) >= MAX_LINES:
            out += self.flush()
        return out

    def flush(self) -> List[Splat]:
        out = self._smmu_flush()
        if self._kind is None:
            return out
        splat = _finish(self._kind, self._header, self._site, self._lines)
        self._kind, self._lines = None, []
        return out + [splat]


def scan(lines: Iterable[str]) -> Iterator[Splat]:
    a = Assembler()
    for line in lines:
        yield from a.feed(line)
    yield from a.flush()


def match(splat: Splat, issues: List[dict], running: Optional[Version] = None) -> Optional[str]:
    """The id of the known issue whose signature the splat fits, else None.

    A version-gated signature (one that also fits unrelated splats) needs the
    splat's kernel, or else the running kernel, to be in the issue's range.
    """
    from vfiomond.advisories import _in

    frames = set(splat.frames) | {splat.function}
    for issue in issues:
        sig = issue.get("signature")
        if not sig or splat.kind not in sig["kinds"]:
            continue
        if sig.get("site_file") and splat.site_file != sig["site_file"]:
            continue
        if not set(sig.get("frames_all", ())) <= frames:
            continue
        if sig.get("frames_any") and not frames.intersection(sig["frames_any"]):
            continue
        if sig.get("frames_some") and not frames.intersection(sig["frames_some"]):
            continue
        if frames.intersection(sig.get("frames_none", ())):
            continue
        if sig.get("version_gated"):
            version = splat.kernel or running
            if version is None or not _in(version, issue["affected"]):
                continue
        return issue["id"]
    return None
