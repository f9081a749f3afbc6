"""VFIO users are found from candidates: a scrape reads the open files of the processes
the probes named (and of those a full scan found), not of every process."""

import os

from vfiomond.processes import UserFinder


def proc_tree(tmp_path, fds):
    """pid -> fd targets, as /proc/PID/fd symlinks (targets need not exist)."""
    for pid, targets in fds.items():
        d = tmp_path / str(pid) / "fd"
        d.mkdir(parents=True, exist_ok=True)
        for fd, target in enumerate(targets):
            os.symlink(target, str(d / str(fd)))
    return str(tmp_path)


def test_a_scrape_reads_only_the_candidates(tmp_path, monkeypatch):
    proc = proc_tree(tmp_path, {10: ["/dev/null", "/dev/vfio/vfio", "/dev/vfio/7"], 11: ["/dev/iommu"],
                                12: ["/dev/null"] * 5})
    read = []
    import vfiomond.processes as processes
    real = processes.vfio_files
    monkeypatch.setattr(processes, "vfio_files", lambda pid, p="/proc": read.append(pid) or real(pid, p))
    finder = UserFinder(lambda: [10, 12, 99], proc)
    assert {pid: sorted(files) for pid, files in finder().items()} == {10: ["/dev/vfio/7", "/dev/vfio/vfio"]}
    assert sorted(read) == [10, 12, 99]  # 11 is a VFIO user no probe named: left to the full scan


def test_a_full_scan_finds_users_no_probe_saw_and_keeps_them_while_they_hold_vfio_files(tmp_path):
    proc = proc_tree(tmp_path, {10: ["/dev/vfio/vfio"], 11: ["/dev/iommu"], 12: ["/dev/null"]})
    finder = UserFinder(lambda: [10], proc)
    assert sorted(finder.full_scan()) == [10, 11]
    assert finder.found_by_scan_only == 1 and finder.full_scans == 1
    assert sorted(finder()) == [10, 11]
    os.unlink(str(tmp_path / "11" / "fd" / "0"))  # 11 closed its /dev/iommu
    assert sorted(finder()) == [10]
    os.symlink("/dev/iommu", str(tmp_path / "11" / "fd" / "0"))
    assert sorted(finder()) == [10]  # forgotten until the next full scan (or a probe names it)
    families = {s.name: s.value for f in finder.families() for s in f.samples}
    assert families["vfiomond_vfio_users_full_scans_total"] == 1


def test_a_candidate_that_is_gone_is_skipped(tmp_path):
    finder = UserFinder(lambda: [4242], proc_tree(tmp_path, {}))
    assert finder() == {}


def test_candidates_are_the_openers_and_the_dma_mappers_of_the_bpf_maps():
    from types import SimpleNamespace as NS

    from vfiomond.bpfload import Program

    class Table:
        def __init__(self, *pids):
            self.pids = pids

        def keys(self):
            return [NS(value=p) for p in self.pids]

    bpf = {"vfio_openers": Table(10), "proc_acct": Table(11), "iommufd_proc_acct": Table(10)}
    assert Program({"users": bpf, "type1": bpf, "iommufd": bpf}).vfio_user_candidates() == {10, 11}
