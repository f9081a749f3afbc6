import re

import pytest

from vfiomond.advisories import evaluate, load, parse_version, running_version

KB = load()


def ids(version, symbols=None):
    return {a.id: a.status for a in evaluate(KB, parse_version(version), symbols)}


# Kernel versions, and what applies to each (the stable releases of the fixes from
# Debian's kernel changelogs and the fixes' own mails; see "sources" in the knowledge base).
OLD_TYPE1 = {"type1-pin-rcu-stall", "vfio-pci-trigger-lock-cycle"}  # fixed late or not in these lines


@pytest.mark.parametrize(
    "version, expected",
    [
        ("5.10.50", {"vfio-concurrent-bar-fault", "pat-failed-fork-warn", "ro-longterm-pin-divergence"} | OLD_TYPE1),
        ("5.10.223", {"pat-failed-fork-warn", "ro-longterm-pin-divergence"} | OLD_TYPE1),  # the lab's bullseye
        ("5.13.0", {"vfio-concurrent-bar-fault", "type1-zero-page-refcount", "pat-failed-fork-warn",
                    "ro-longterm-pin-divergence"} | OLD_TYPE1),
        ("6.1.0", {"pat-failed-fork-warn", "ro-longterm-pin-divergence"} | OLD_TYPE1),
        ("6.1.90", {"fork-vfio-pat-untrack", "pat-failed-fork-warn", "ro-longterm-pin-divergence"} | OLD_TYPE1),
        ("6.1.95", {"pat-failed-fork-warn", "ro-longterm-pin-divergence"} | OLD_TYPE1),
        ("6.1.149", {"pat-failed-fork-warn", "ro-longterm-pin-divergence", "vfio-pci-trigger-lock-cycle"}),
        # the lab's bookworm: dc84bc2aba85 came with 6.1.160, 98693e0897f7 not at all
        ("6.1.176", {"ro-longterm-pin-divergence", "vfio-pci-trigger-lock-cycle"}),
        ("6.6.30", {"vfio-fault-mmap-lock", "fork-vfio-pat-untrack", "pat-failed-fork-warn",
                    "iommufd-compat-unmap-empty"} | OLD_TYPE1),
        ("6.6.35", {"vfio-fault-mmap-lock", "pat-failed-fork-warn", "iommufd-compat-unmap-empty"} | OLD_TYPE1),
        ("6.6.87", {"vfio-fault-mmap-lock", "iommufd-compat-unmap-empty"} | OLD_TYPE1),
        ("6.9.5", {"vfio-fault-mmap-lock", "fork-vfio-pat-untrack", "pat-failed-fork-warn",
                   "iommufd-compat-unmap-empty"} | OLD_TYPE1),
        ("6.9.11", {"pat-failed-fork-warn", "iommufd-compat-unmap-empty"} | OLD_TYPE1),
        ("6.10.5", {"pat-failed-fork-warn", "iommufd-compat-unmap-empty", "pci-unlocked-bus-reset"} | OLD_TYPE1),
        ("6.12.5", {"pat-failed-fork-warn", "huge-pfnmap-unaligned-pfn", "iommufd-compat-unmap-empty",
                    "pci-unlocked-bus-reset"} | OLD_TYPE1),
        ("6.12.20", {"pat-failed-fork-warn", "huge-fault-oom-race", "iommufd-compat-unmap-empty",
                     "pci-unlocked-bus-reset"} | OLD_TYPE1),
        ("6.12.60", {"pci-unlocked-bus-reset", "vfio-pci-trigger-lock-cycle"}),
        ("6.12.75", set()),
        ("6.12.117", set()),  # the lab's trixie
        ("6.15.0", {"iommufd-compat-unmap-empty", "pci-unlocked-bus-reset"} | OLD_TYPE1),
        ("7.2.12", set()),  # the lab's iommufd build
        ("7.2.13", set()),  # the lab's sid
    ],
)
def test_version_table(version, expected):
    assert set(ids(version)) == expected


def test_stable_fix_with_unpinned_release_is_possibly():
    # b1779e4f209c was in 6.16's stable review, 98693e0897f7 went to 6.17.13 and 6.12.63:
    # which 6.16.y or 6.18.y took them is not pinned
    assert ids("6.16.1")["type1-pin-rcu-stall"] == "possibly"
    assert ids("6.18.3")["vfio-pci-trigger-lock-cycle"] == "possibly"
    assert ids("6.6.87")["type1-pin-rcu-stall"] == "affected"  # 6.6.103 took it
    assert ids("6.13.0")["huge-fault-oom-race"] == "affected"


def test_a_variant_drivers_issue_needs_its_code_seen():
    # hisi_acc / pds / qat: by version alone (vfio not loaded) nothing; with vfio-pci
    # loaded but none of them, nothing; with one of them loaded, the issue applies.
    assert "vfio-variant-reset-lock-cycle" not in ids("7.2.13")
    assert "vfio-variant-reset-lock-cycle" not in ids("7.2.13", symbols={"vfio_pci_mmap_huge_fault"})
    assert ids("7.2.13", symbols={"qat_vf_pci_aer_reset_done"})["vfio-variant-reset-lock-cycle"] == "affected"
    assert "vfio-variant-reset-lock-cycle" not in ids("6.8.5", symbols={"qat_vf_pci_aer_reset_done"})


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
    assert first == {"pat-failed-fork-warn", "huge-pfnmap-unaligned-pfn", "iommufd-compat-unmap-empty",
                     "pci-unlocked-bus-reset"} | OLD_TYPE1
    assert sorted(e[1] for e in sink.entries) == sorted(first)
    assert all(re.match(r"kernel 6\.12\.5 is (possibly )?exposed to %s: " % e[1], e[2]) for e in sink.entries)

    # vfio-pci loaded without the huge-fault code: those issues are ruled out, nothing is alerted again.
    loaded = Kallsyms.parse(["ffffffffc0a09000 d vfio_pci_mmap_ops\t[vfio_pci_core]",
                             "ffffffff81002000 T untrack_pfn"], {"vfio_pci_mmap_ops", "untrack_pfn"})
    watch.evaluate(loaded)
    assert {a.id for a in watch.report.advisories} < first
    assert len(sink.entries) == len(first)
