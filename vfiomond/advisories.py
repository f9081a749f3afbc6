"""Which known VFIO kernel issues apply to a kernel (vfiomond/known_issues.json).

Distribution kernels hide the upstream stable release (Debian's "6.1.0-50-amd64"
is 6.1.176), so the version comes from where the distribution states it, and
symbol evidence (kallsyms) can rule an issue out when its code is absent.
"""

import json
import logging
import os
import re
from typing import Dict, List, NamedTuple, Optional, Sequence, Set, Tuple

from vfiomond.alerts import KERNEL_ADVISORY

log = logging.getLogger("vfiomond")

Version = Tuple[int, int, int]

_KB = os.path.join(os.path.dirname(os.path.abspath(__file__)), "known_issues.json")
_NUMBERS = re.compile(r"(\d+)\.(\d+)(?:\.(\d+))?")


def parse_version(text: str) -> Optional[Version]:
    """(major, minor, patch) of the first version in ``text``: "6.12.0-rc5+" -> (6, 12, 0)."""
    m = _NUMBERS.search(text)
    # No version has a 10-digit part; int() of 4300+ digits is a ValueError (the taint
    # line of a kernel log splat is text that reaches here).
    if not m or any(len(part) > 9 for part in m.groups("")):
        return None
    return int(m.group(1)), int(m.group(2)), int(m.group(3) or 0)


def running_version(release: str, uname_version: str, version_signature: str = "") -> Tuple[Optional[Version], str]:
    """The upstream version of the running kernel and where it was read.

    Debian puts it in ``uname -v`` ("... Debian 6.1.176-1 ..."), Ubuntu in
    /proc/version_signature ("Ubuntu 5.15.0-91.101-generic 5.15.131"); else the release.
    """
    m = re.search(r"Debian (\d+\.\d+\.\d+)", uname_version)
    if m:
        return parse_version(m.group(1)), "uname -v"
    if version_signature.strip():
        return parse_version(version_signature.split()[-1]), "/proc/version_signature"
    return parse_version(release), "uname -r"


def load(path: str = _KB) -> List[dict]:
    with open(path) as f:
        return json.load(f)["issues"]


def _in(version: Version, ranges: Sequence[Sequence[str]]) -> bool:
    return any(parse_version(lo) <= version < parse_version(hi) for lo, hi in ranges)


def _line(version: Version, lines: Sequence[str]) -> bool:
    return any(version[:2] == parse_version(line)[:2] for line in lines)


class Advisory(NamedTuple):
    id: str
    severity: str
    status: str  # "affected" or "possibly" (a stable fix exists, its release is not pinned)
    title: str
    fixed_by: Tuple[str, ...]


def evaluate(issues: List[dict], version: Version, symbols: Optional[Set[str]] = None) -> List[Advisory]:
    """Issues that apply to ``version``; with ``symbols`` (names known to be in
    kallsyms), an issue whose code is absent is ruled out.  An issue of a module few
    hosts load (``symbols_seen``: a variant driver) applies only once its code is seen."""
    out = []
    for issue in issues:
        if not _in(version, issue["affected"]):
            continue
        needed = issue.get("requires_symbols")
        if symbols is not None and needed and not symbols.intersection(needed):
            continue
        if issue.get("symbols_seen") and (symbols is None or not symbols.intersection(needed)):
            continue
        status = "possibly" if _line(version, issue.get("possibly_fixed_in", ())) else "affected"
        out.append(Advisory(issue["id"], issue["severity"], status, issue["title"], tuple(issue["fixed_by"])))
    return out


def by_id(issues: List[dict]) -> Dict[str, dict]:
    return {i["id"]: i for i in issues}


def running_kernel() -> Tuple[Optional[Version], str]:
    """running_version() of this host (reads uname and /proc/version_signature)."""
    try:
        with open("/proc/version_signature") as f:
            signature = f.read()
    except OSError:
        signature = ""
    return running_version(os.uname().release, os.uname().version, signature)


def symbol_names(issues: List[dict]) -> Set[str]:
    return {name for issue in issues for name in issue.get("requires_symbols", ())}


class AdvisoryReport:
    """The advisories of the running kernel, as evaluated once at start."""

    def __init__(self, advisories: List[Advisory]):
        self.advisories = advisories

    def families(self):
        from prometheus_client.core import GaugeMetricFamily

        g = GaugeMetricFamily(
            "vfiomond_kernel_advisory_info",
            "Known VFIO kernel issues that apply to the running kernel (status affected or possibly).",
            labels=["id", "severity", "status"],
        )
        for a in self.advisories:
            g.add_metric([a.id, a.severity, a.status], 1)
        yield g


class AdvisoryWatch:
    """The known issues the running kernel is exposed to; a journal entry for each
    one found, once.  Evaluated again when modules load: the symbol evidence
    counts only while the vfio modules are loaded."""

    def __init__(self, issues, sink, kernel=None):
        """``kernel``: () -> (version, source), running_kernel by default."""
        self.issues = issues
        self.report = AdvisoryReport([])
        self._sink = sink
        self._kernel = kernel or running_kernel
        self._alerted: Set[str] = set()

    def evaluate(self, syms) -> None:
        """``syms``: a vfiomond.kernel.Kallsyms holding the names of symbol_names()."""
        version, source = self._kernel()
        if version is None:
            log.warning("kernel advisories: cannot tell the kernel version")
            return
        symbols = None
        if syms.has("vfio_pci_mmap_ops"):
            symbols = {n for n in symbol_names(self.issues) if syms.has(n) or syms.function(n, True)}
        found = evaluate(self.issues, version, symbols)
        self.report.advisories = found
        text = ".".join(map(str, version))
        for a in found:
            if a.id in self._alerted:
                continue
            self._alerted.add(a.id)
            log.warning("kernel %s (%s) %s known issue %s: %s", text, source, a.status, a.id, a.title)
            self._sink.alert(
                KERNEL_ADVISORY, "kernel %s is %sexposed to %s: %s" % (text, "possibly " if a.status == "possibly" else "", a.id, a.title),
                ADVISORY_ID=a.id, SEVERITY=a.severity, STATUS=a.status, TITLE=a.title, KERNEL_VERSION=text,
                VERSION_SOURCE=source, FIXED_BY="; ".join(a.fixed_by),
            )
