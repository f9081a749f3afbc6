import re

import pytest

from vfiomond.advisories import evaluate, load, parse_version, running_version

KB = load()


def ids(version, symbols=None):
    return {a.id: a.status for a in evaluate(KB, parse_version(version), symbols)}


# The issue's table of kernel versions, and what applies to each.
@pytest.mark.parametrize(
    "version, expected",
    [
        ("5.10.50", {"vfio-concurrent-bar-fault", "pat-failed-fork-warn", "ro-longterm-pin-divergence"}),
        ("5.13.0", {"vfio-concurrent-bar-fault", "type1-zero-page-refcount", "pat-failed-fork-warn", "ro-longterm-pin-divergence"}),
        ("6.1.0", {"pat-failed-fork-warn", "ro-longterm-pin-divergence"}),
        ("6.1.90", {"fork-vfio-pat-untrack", "pat-failed-fork-warn", "ro-longterm-pin-divergence"}),
        ("6.1.95", {"pat-failed-fork-warn", "ro-longterm-pin-divergence"}),
        ("6.6.30", {"vfio-fault-mmap-lock", "fork-vfio-pat-untrack", "pat-failed-fork-warn"}),
        ("6.6.35", {"vfio-fault-mmap-lock", "pat-failed-fork-warn"}),
        ("6.6.87", {"vfio-fault-mmap-lock"}),
        ("6.9.5", {"vfio-fault-mmap-lock", "fork-vfio-pat-untrack", "pat-failed-fork-warn"}),
        ("6.9.11", {"pat-failed-fork-warn"}),
        ("6.12.5", {"pat-failed-fork-warn", "huge-pfnmap-unaligned-pfn", "huge-fault-oom-race"}),
        ("6.12.107", {"pat-failed-fork-warn", "huge-pfnmap-unaligned-pfn", "huge-fault-oom-race"}),
        # Debian's 6.12.117 source carries dc84bc2aba85, 09dfc8a5f2ce and c1d9dac0db16.
        ("6.12.117", set()),
        ("6.15.0", set()),
    ],
)
def test_version_table(version, expected):
    assert set(ids(version)) == expected


def test_stable_fix_with_unpinned_release_is_possibly():
    assert ids("6.12.107")["huge-pfnmap-unaligned-pfn"] == "possibly"
    assert ids("6.13.0")["huge-fault-oom-race"] == "affected"


def test_absent_code_rules_an_issue_out():
    # 6.9.5 with the 6.10-style vfio (no vfio_pci_mmap_open) backported: neither vfio issue.
    found = ids("6.9.5", symbols={"vfio_pci_mmap_fault", "vfio_pin_pages_remote"})
    assert "fork-vfio-pat-untrack" not in found and "vfio-fault-mmap-lock" not in found
    assert "pat-failed-fork-warn" in found  # no code requirement


@pytest.mark.parametrize(
    "release, uname_v, signature, expected",
    [
        ("6.1.0-50-amd64", "#1 SMP PREEMPT_DYNAMIC Debian 6.1.176-1 (2026-10-01)", "", ((6, 1, 176), "uname -v")),
        ("6.12.107+deb13-amd64", "#1 SMP PREEMPT_DYNAMIC Debian 6.12.107-1 (2026-10-02)", "", ((6, 12, 107), "uname -v")),
        ("5.15.0-91-generic", "#101-Ubuntu SMP", "Ubuntu 5.15.0-91.101-generic 5.15.131", ((5, 15, 131), "/proc/version_signature")),
        ("5.14.0-427.el9.x86_64", "#1 SMP PREEMPT_DYNAMIC", "", ((5, 14, 0), "uname -r")),
    ],
)
def test_running_version(release, uname_v, signature, expected):
    assert running_version(release, uname_v, signature) == expected


def test_every_issue_is_well_formed():
    for issue in KB:
        assert issue["severity"] in ("critical", "warning", "info")
        assert issue["fixed_by"] and issue["title"]
        for lo, hi in issue["affected"]:
            assert parse_version(lo) < parse_version(hi), issue["id"]


class RecordingSink:
    def __init__(self):
        self.entries = []

    def alert(self, kind, message, **fields):
        self.entries.append((kind.name, fields["ADVISORY_ID"], message))
        return True


def test_watch_alerts_once_and_follows_module_loads():
    from vfiomond.advisories import AdvisoryWatch
    from vfiomond.kernel import Kallsyms

    sink = RecordingSink()
    watch = AdvisoryWatch(KB, sink, kernel=lambda: (parse_version("6.12.5"), "test"))
    no_modules = Kallsyms.parse([], set())
    watch.evaluate(no_modules)  # versions alone
    first = {a.id for a in watch.report.advisories}
    assert first == {"pat-failed-fork-warn", "huge-pfnmap-unaligned-pfn", "huge-fault-oom-race"}
    assert sorted(e[1] for e in sink.entries) == sorted(first)
    assert all(re.match(r"kernel 6\.12\.5 is (possibly )?exposed to %s: " % e[1], e[2]) for e in sink.entries)

    # vfio-pci loaded without the huge-fault code: those issues are ruled out, nothing is alerted again.
    loaded = Kallsyms.parse(["ffffffffc0a09000 d vfio_pci_mmap_ops\t[vfio_pci_core]",
                             "ffffffff81002000 T untrack_pfn"], {"vfio_pci_mmap_ops", "untrack_pfn"})
    watch.evaluate(loaded)
    assert {a.id for a in watch.report.advisories} < first
    assert len(sink.entries) == len(first)
