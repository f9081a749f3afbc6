import math

import pytest

from vfiomond.processes import (ProcAcct, ProcessInfo, dma_spaces, families, guest_ram_bytes, has_ipc_lock,
                                parse_memlock_limit, parse_status, read_process, vm_name)

from test_faults import exposition, key

STATUS = """Name:\tqemu-system-x86
VmPeak:\t 9436124 kB
VmLck:\t 4194304 kB
VmPin:\t       8 kB
VmRSS:\t 4300000 kB
"""

LIMITS = """Limit                     Soft Limit           Hard Limit           Units
Max cpu time              unlimited            unlimited            seconds
Max locked memory         16777216             33554432             bytes
Max address space         unlimited            unlimited            bytes
"""


def test_status_in_bytes():
    assert parse_status(STATUS) == {"VmLck": 4194304 * 1024, "VmPin": 8 * 1024}
    assert parse_status("Name:\tx\n") == {"VmLck": 0, "VmPin": 0}  # kernel threads


def test_a_counter_taken_below_zero_is_read_as_the_negative_it_is():
    """What 7.2.12 printed for a process whose pinned_vm an unmap took to -1024 pages
    (IOMMU_IOAS_CHANGE_PROCESS in account mode NONE, the lab's iommufd scenario)."""
    assert parse_status("VmLck:\t       0 kB\nVmPin:\t18446744073709547520 kB\n") == \
        {"VmLck": 0, "VmPin": -4 * 1024 * 1024}
    assert parse_status("VmPin:\t9223372036854775807 kB\n")["VmPin"] == 9223372036854775807 * 1024


def test_cap_ipc_lock_lifts_the_limit_vfio_applies(tmp_path):
    assert has_ipc_lock("CapEff:\t0000000000004000\n") and has_ipc_lock("CapEff:\t000001ffffffffff\n")
    assert not has_ipc_lock("CapEff:\t0000000000000000\n") and not has_ipc_lock("Name:\tx\n")
    for capeff, limit in (("0000000000000000", 16777216), ("000001ffffffffff", math.inf)):
        d = tmp_path / capeff / "42"
        d.mkdir(parents=True)
        (d / "status").write_text(STATUS + "CapEff:\t%s\n" % capeff)
        (d / "limits").write_text(LIMITS)
        (d / "comm").write_text("qemu\n")
        (d / "cmdline").write_bytes(b"qemu\0")
        (d / "cgroup").write_text("0::/\n")
        assert read_process(42, proc=str(tmp_path / capeff)).memlock_limit_bytes == limit


def test_memlock_soft_limit():
    assert parse_memlock_limit(LIMITS) == 16777216
    assert parse_memlock_limit(LIMITS.replace("16777216    ", "unlimited   ")) == math.inf
    assert math.isnan(parse_memlock_limit(""))


@pytest.mark.parametrize(
    "cmdline, cgroup, name",
    [
        (b"/usr/bin/qemu-system-x86_64\0-name\0guest=web01,debug-threads=on\0-m\x004096\0", "", "web01"),
        (b"qemu-system-x86_64\0-name\0db,,primary\0", "", "db,primary"),
        (b"qemu-system-x86_64\0-name\0guest=a,,b,debug-threads=on\0", "", "a,b"),
        (b"qemu-system-x86_64\0-m\x002048\0", "0::/machine.slice/machine-qemu\\x2d3\\x2dwin\\x2d11.scope/libvirt/emulator\n", "win-11"),
        (b"dpdk-testpmd\0-l\x000-3\0", "0::/system.slice/dpdk.service\n", ""),
        (b"qemu\0-name\0", "", ""),
    ],
)
def test_vm_name(cmdline, cgroup, name):
    assert vm_name(cmdline, cgroup) == name


def test_families_per_process():
    infos = [ProcessInfo(42, "qemu", "web01", 8 << 20, 0, 16 << 20), ProcessInfo(43, "testpmd", "", 0, 4096, math.inf)]
    acct = {42: ProcAcct(12 << 20, 3072, 2048, 1), 99: ProcAcct(1, 1, 1, 1)}  # 99: gone, no series
    s = exposition(families(infos, {"type1": acct}))
    web = dict(pid="42", comm="qemu", vm="web01")
    assert s[key("vfiomond_process_locked_vm_bytes", **web)] == 8 << 20
    assert s[key("vfiomond_process_memlock_limit_bytes", **web)] == 16 << 20
    assert s[key("vfiomond_process_dma_mapped_bytes", backend="type1", **web)] == 12 << 20
    assert s[key("vfiomond_process_charged_bytes", backend="type1", **web)] == 2048 * 4096
    assert s[key("vfiomond_process_uncharged_pinned_bytes", backend="type1", **web)] == 1024 * 4096
    assert s[key("vfiomond_process_locked_vm_charge_failures_total", backend="type1", **web)] == 1
    pmd = dict(pid="43", comm="testpmd", vm="")
    assert s[key("vfiomond_process_memlock_limit_bytes", **pmd)] == math.inf
    assert s[key("vfiomond_process_dma_mapped_bytes", backend="type1", **pmd)] == 0
    assert not any('"99"' in k or "'99'" in k for k in s)


def test_families_per_process_and_backend():
    infos = [ProcessInfo(42, "qemu", "web01", 0, 8192 * 4096, math.inf)]
    type1 = {42: ProcAcct(1 << 20, 256, 200, 0, account="mm")}
    # iommufd NONE mode (CAP_IPC_LOCK): pinned, charged nowhere, by design
    iommufd = {42: ProcAcct(32 << 20, 8192, 0, 0, exempt_pages=8192, account="none")}
    s = exposition(families(infos, {"type1": type1, "iommufd": iommufd}))
    web = dict(pid="42", comm="qemu", vm="web01")
    assert s[key("vfiomond_process_pinned_vm_bytes", **web)] == 8192 * 4096
    assert s[key("vfiomond_process_dma_mapped_bytes", backend="iommufd", **web)] == 32 << 20
    assert s[key("vfiomond_process_dma_mapped_bytes", backend="type1", **web)] == 1 << 20
    assert s[key("vfiomond_process_uncharged_pinned_bytes", backend="iommufd", **web)] == 0
    assert s[key("vfiomond_process_uncharged_pinned_bytes", backend="type1", **web)] == 56 * 4096
    assert s[key("vfiomond_process_pin_account_info", backend="iommufd", account="none", **web)] == 1
    assert s[key("vfiomond_process_pin_account_info", backend="type1", account="mm", **web)] == 1


def test_vfio_files_from_a_proc_tree(tmp_path):
    from vfiomond.processes import open_vfio_files, vfio_files

    fd = tmp_path / "7" / "fd"
    fd.mkdir(parents=True)
    (fd / "3").symlink_to("/dev/vfio/vfio")
    (fd / "4").symlink_to("/dev/vfio/12")
    (fd / "5").symlink_to("/dev/null")
    (tmp_path / "8" / "fd").mkdir(parents=True)
    assert sorted(vfio_files(7, str(tmp_path))) == ["/dev/vfio/12", "/dev/vfio/vfio"]
    assert open_vfio_files(str(tmp_path)) == {7: vfio_files(7, str(tmp_path))}  # 8 uses no VFIO
    assert vfio_files(9, str(tmp_path)) is None  # gone


def test_one_proc_scan_per_scrape():
    from vfiomond.processes import _PerScrape

    scans = []
    scan = _PerScrape(lambda: scans.append(1) or {len(scans): ["/dev/vfio/2"]})
    assert scan() == scan() == {1: ["/dev/vfio/2"]}  # shared within a scrape
    scan.new_scrape()
    assert scan() == {2: ["/dev/vfio/2"]}  # never stale across scrapes
    assert len(scans) == 2


@pytest.mark.parametrize(
    "cmdline, ram",
    [
        (b"qemu-system-x86_64\0-m\x004096\0", 4096 << 20),  # MiB without a suffix
        (b"qemu-system-x86_64\0-m\0size=4194304k,slots=16,maxmem=16G\0", 4 << 30),  # libvirt
        (b"qemu-system-x86_64\0-m\x00256M\0", 256 << 20),
        (b"qemu-system-x86_64\0-m\x001.5G\0", 3 << 29),
        (b"qemu-system-x86_64\0-m\0slots=4,size=2G\0", 2 << 30),
        (b"qemu-system-x86_64\0-name\0guest=a\0", None),  # QEMU's machine default: unknown here
        (b"dpdk-testpmd\0-l\x000-1\0", None),
        (b"qemu-system-x86_64\0-m\0lots\0", None),
    ],
)
def test_guest_ram_from_the_qemu_command_line(cmdline, ram):
    assert guest_ram_bytes(cmdline) == ram


def test_dma_spaces_count_containers_and_iommufd_contexts():
    assert dma_spaces(["/dev/vfio/vfio", "/dev/vfio/12", "/dev/vfio/13"]) == 1
    assert dma_spaces(["/dev/vfio/vfio", "/dev/vfio/12", "/dev/vfio/vfio", "/dev/vfio/13"]) == 2  # vIOMMU: one each
    assert dma_spaces(["/dev/iommu", "/dev/vfio/devices/vfio0"]) == 1
    assert dma_spaces(["/dev/vfio/12"]) == 0


def test_memlock_a_vm_needs_and_its_pinning_time():
    infos = [ProcessInfo(42, "qemu", "web01", 0, 0, 5 << 30, 4 << 30), ProcessInfo(43, "testpmd", "", 0, 0, math.inf)]
    acct = {42: ProcAcct(4 << 30, 1 << 20, 1 << 20, 0, map_seconds=12.5, map_bytes=6 << 30)}
    s = exposition(families(infos, {"type1": acct}, spaces={42: 2, 43: 1}))
    web = dict(pid="42", comm="qemu", vm="web01")
    assert s[key("vfiomond_process_memlock_required_bytes", **web)] == 8 << 30  # two containers: RAM twice
    assert not any("memlock_required" in k and '"43"' in k for k in s)  # not QEMU: no guess
    assert s[key("vfiomond_process_dma_map_seconds_total", backend="type1", **web)] == 12.5
    assert s[key("vfiomond_process_dma_map_bytes_total", backend="type1", **web)] == 6 << 30


# Processes sharing one mm (CLONE_VM): real kcmp(KCMP_VM) on the running kernel.
import os  # noqa: E402
import sys  # noqa: E402
import threading  # noqa: E402

from vfiomond.processes import MmCompare, mm_owners  # noqa: E402

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "lab", "scenarios"))
import vfiolib  # noqa: E402


@pytest.fixture
def kcmp():
    compare = MmCompare()
    if compare(os.getpid(), os.getpid()) is None:
        pytest.skip("kcmp unavailable here: %s" % compare.reason)
    return compare


def test_kcmp_tells_a_clone_vm_process_from_a_fork(kcmp):
    sharer = vfiolib.spawn_mm_sharer()
    forked = os.fork()
    if forked == 0:
        vfiolib.signal.pause()
        os._exit(0)
    try:
        assert kcmp(os.getpid(), sharer) == 0
        assert kcmp(os.getpid(), forked) in (1, 2)
        assert kcmp(sharer, forked) in (1, 2)
        owners = mm_owners([forked, sharer, os.getpid()], kcmp)
        low = min(os.getpid(), sharer)
        assert owners == {os.getpid(): low, sharer: low, forked: forked}
    finally:
        vfiolib.kill_mm_sharer(sharer)
        os.kill(forked, 9)
        os.waitpid(forked, 0)


def test_kcmp_sees_threads_share_the_mm(kcmp):
    tids = []
    stop = threading.Event()
    t = threading.Thread(target=lambda: (tids.append(threading.get_native_id()), stop.wait(10)))
    t.start()
    while not tids:
        pass
    try:
        assert kcmp(os.getpid(), tids[0]) == 0
    finally:
        stop.set()
        t.join()


def test_a_gone_process_is_its_own_owner(kcmp):
    child = os.fork()
    if child == 0:
        os._exit(0)
    os.waitpid(child, 0)
    assert kcmp(os.getpid(), child) is None and kcmp.available
    assert mm_owners([os.getpid(), child], kcmp) == {os.getpid(): os.getpid(), child: child}


def test_mm_owners_groups_equal_mms_in_n_log_n():
    mm = {10: "a", 11: "b", 12: "a", 13: "c", 14: "b", 15: "a"}
    calls = []

    def compare(x, y):
        calls.append((x, y))
        return 0 if mm[x] == mm[y] else (1 if mm[x] < mm[y] else 2)

    assert mm_owners(mm, compare) == {10: 10, 12: 10, 15: 10, 11: 11, 14: 11, 13: 13}
    assert len(calls) <= 3 * 6 * 3


def test_unknown_architecture_makes_no_groups():
    compare = MmCompare(machine="vax")
    assert not compare.available and "vax" in compare.reason
    assert compare(1, 1) is None


def test_what_belongs_to_the_mm_is_reported_once():
    infos = [ProcessInfo(42, "qemu", "web01", 8 << 20, 4096, 16 << 20, guest_ram_bytes=1 << 30),
             ProcessInfo(50, "qemu", "web01", 8 << 20, 4096, 16 << 20, guest_ram_bytes=1 << 30)]
    acct = {42: ProcAcct(8 << 20, 2048, 2048, 0), 50: ProcAcct(0, 0, 0, 0)}
    s = exposition(families(infos, {"type1": acct}, {42: 1, 50: 1}, mm_owner={42: 42, 50: 42}))
    web, helper = dict(pid="42", comm="qemu", vm="web01"), dict(pid="50", comm="qemu", vm="web01")
    assert s[key("vfiomond_process_locked_vm_bytes", **web)] == 8 << 20
    assert s[key("vfiomond_process_memlock_required_bytes", **web)] == 1 << 30
    for name in ("locked_vm_bytes", "pinned_vm_bytes", "memlock_required_bytes"):
        assert key("vfiomond_process_" + name, **helper) not in s
    assert s[key("vfiomond_process_mm_shared_info", mm_pid="42", **helper)] == 1
    assert s[key("vfiomond_process_memlock_limit_bytes", **helper)] == 16 << 20
    assert sum(v for k, v in s.items() if k.startswith("vfiomond_process_locked_vm_bytes")) == 8 << 20
