"""Properties of every parser of text from outside the daemon: /dev/kmsg records and
journal entries, kernel log lines (splats), /proc/PID files and QEMU command lines,
sysfs and udev facts, kallsyms, /proc/cpuinfo, kernel versions, the environment and
the configuration file.

Each one takes anything: the result has its documented shape, or the error is the
documented one (ValueError, ConfigError) - never an IndexError, a UnicodeDecodeError,
an OverflowError or another traceback.  Where the format allows, a generated
well-formed input also reads back to what it was made from.

The hypothesis profile (no example database, no deadline) is in conftest.py.  Strategies
map with named functions and str methods, not lambdas: hypothesis reads a lambda's source
to describe it, which cost seconds.
"""

import base64
import math
import os
import socket
import tempfile
from unittest import mock

import pytest

hypothesis = pytest.importorskip("hypothesis")

from hypothesis import example, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from vfiomond import advisories, config, devices, kernellog, pagemap, processes, service, splats  # noqa: E402
from vfiomond.errors import ConfigError  # noqa: E402
from vfiomond.kernel import Kallsyms, unloading_modules  # noqa: E402

try:
    from vfiomond import webconfig
except ImportError:  # the web configuration (TLS, basic auth) is newer than some trees
    webconfig = None

KB = advisories.load()
KB_IDS = {issue["id"] for issue in KB}

# Text of one log or /proc line: anything but the line break (the kernel escapes it).
LINE = st.text(alphabet=st.characters(blacklist_characters="\n", blacklist_categories=("Cs",)), max_size=80)
WORD = st.from_regex(r"[A-Za-z_][A-Za-z0-9_]{0,15}", fullmatch=True)
U64 = st.integers(0, 2 ** 64 - 1)


class Sink:
    def __init__(self):
        self.alerts = []

    def alert(self, kind, message, **fields):
        assert isinstance(message, str)
        self.alerts.append((kind.name, message, fields))
        return True


def write_tree(root, files):
    """files: relative path -> bytes (a file) or ("link", target)."""
    for rel, content in files.items():
        path = os.path.join(root, rel)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        if isinstance(content, tuple):
            os.symlink(content[1], path)
        else:
            with open(path, "wb") as f:
                f.write(content)


# ------------------------------------------------------------------ /dev/kmsg


@given(st.binary(max_size=300))
def test_any_kmsg_record_gives_one_line_of_text(record):
    message = kernellog.parse_kmsg(record)
    assert isinstance(message, str) and "\n" not in message


@given(st.integers(0, 191), U64, U64, st.sampled_from("-c+"), st.sampled_from(["", ",caller=T123", ",x;y"]),
       LINE, st.lists(LINE.map(" {}".format), max_size=3))
def test_kmsg_record_gives_its_message(pri, seq, ts, flag, extra, message, dictionary):
    # "PRI,SEQ,TS,FLAGS[,...];MESSAGE\n KEY=VALUE\n ..." (Documentation/ABI/testing/dev-kmsg)
    header = "%d,%d,%d,%s%s;" % (pri, seq, ts, flag, extra.replace(";", ""))
    record = (header + message + "\n" + "".join(d + "\n" for d in dictionary)).encode()
    assert kernellog.parse_kmsg(record) == message


@given(st.one_of(st.binary(max_size=60), st.tuples(st.integers(0, 191), U64, st.binary(max_size=30)).map(
    b"%d,%d,%s".__mod__)))
@example(b"6," + b"1" * 5000 + b",0,-;x")
def test_the_seq_of_any_kmsg_record(record):
    seq_of = getattr(kernellog, "kmsg_seq", None)
    if seq_of is None:
        pytest.skip("no kmsg_seq")
    seq = seq_of(record)
    assert seq is None or isinstance(seq, int)
    if record[:1].isdigit() and record.count(b",") >= 2 and record.split(b",")[1].isdigit() and len(record) < 200:
        assert seq == int(record.split(b",")[1])


JOURNAL_VALUE = st.one_of(LINE, st.binary(max_size=40), st.lists(st.one_of(LINE, st.binary(max_size=20)), max_size=2),
                          st.integers(0, 23))


@given(st.dictionaries(st.sampled_from(["MESSAGE", "SYSLOG_IDENTIFIER", "SYSLOG_FACILITY", "PRIORITY"]), JOURNAL_VALUE))
def test_any_journal_entry_gives_a_line(entry):
    assert isinstance(kernellog.journal_line(entry), str)


@given(LINE, st.one_of(st.none(), WORD), st.sampled_from([0, 1, 3, "0", "3"]))
def test_a_journal_field_reads_the_same_as_text_or_as_bytes(message, ident, facility):
    # systemd-python gives bytes for a field that is not UTF-8; valid UTF-8 as bytes must read the same.
    text = {"MESSAGE": message, "SYSLOG_FACILITY": facility}
    raw = {"MESSAGE": message.encode(), "SYSLOG_FACILITY": facility}
    if ident is not None:
        text["SYSLOG_IDENTIFIER"], raw["SYSLOG_IDENTIFIER"] = ident, ident.encode()
    assert kernellog.journal_line(raw) == kernellog.journal_line(text)
    expected = "%s: %s" % (ident, message) if ident and str(facility) != "0" else message
    assert kernellog.journal_line(text) == expected


@given(LINE)
def test_blocked_removal_of_any_line(line):
    found = kernellog.blocked_removal(line)
    assert found is None or (isinstance(found[0], str) and found[0] and isinstance(found[1], bool))


@given(st.from_regex(r"[0-9a-f]{4}:[0-9a-f]{2}:[0-9a-f]{2}\.[0-7]", fullmatch=True), st.booleans(), LINE)
def test_blocked_removal_names_the_device(bdf, told, rest):
    line = "vfio-pci %s: %s%s" % (bdf, "Relaying device request to user (#0)" if told
                                  else "No device request channel registered", rest)
    assert kernellog.blocked_removal(line) == (bdf, told)


# ------------------------------------------------------------------ splats

def frame_line(unreliable, func, offset, module):
    return " %s%s+0x%x/0x%x%s" % ("? " if unreliable else "", func, offset, offset + 16, " [%s]" % module if module else "")


def no_space(s):
    return " " not in s


PREFIX = st.one_of(
    st.just(""),
    st.tuples(st.integers(0, 99999), st.integers(0, 999999)).map("[%5d.%06d] ".__mod__),
    st.tuples(st.sampled_from(["Jan", "Nov"]), st.integers(1, 31), st.from_regex(r"[a-z0-9-]{1,12}", fullmatch=True)).map(
        "%s %2d 10:00:00 %s kernel: ".__mod__),
    st.from_regex(r"[a-z0-9-]{1,12}", fullmatch=True).map("2024-11-22T10:00:00+0000 {} kernel: ".format),
)
SITE = st.builds("{}/{}.c:{}".format, st.sampled_from(["drivers/vfio", "mm", "arch/x86/mm/pat"]),
                 st.sampled_from(["vfio_main", "memory", "memtype", "gup"]), st.integers(1, 9999))
FRAME_FUNC = st.one_of(WORD, st.sampled_from(sorted(splats.PFNMAP_FUNCTIONS) + ["vfio_pin_pages_remote", "vfio_pci_mmap_fault"]))
VERSION_TEXT = st.builds("{}.{}.{}{}".format, st.integers(2, 7), st.integers(0, 20),
                         st.integers(0, 300), st.sampled_from(["", "-rc5+", "-amd64", "+"]))
LOG_LINE = st.one_of(
    st.builds("WARNING: CPU: {} PID: {} at {} {}+0x10/0x20".format,
              st.integers(0, 512), st.integers(1, 2 ** 22), SITE, FRAME_FUNC),
    st.builds("kernel BUG at {}!".format, SITE),
    st.sampled_from([
        "BUG: unable to handle page fault for address: ffffc90000a00000", "BUG: kernel NULL pointer dereference",
        "Oops: 0000 [#1] PREEMPT SMP NOPTI", "Internal error: Oops - BUG: 0 [#1] SMP", "BUG: soft lockup - CPU#3 stuck for 22s!",
        "watchdog: BUG: soft lockup - CPU#0 stuck for 26s! [qemu:1234]", "rcu: INFO: rcu_sched self-detected stall on CPU",
        "WARNING: possible circular locking dependency detected", "WARNING: suspicious RCU usage", "BUG: scheduling while atomic",
        "Call Trace:", " <TASK>", " </TASK>", "Modules linked in: vfio_pci vfio_pci_core vfio_iommu_type1 vfio",
        "DMAR: [DMA Read NO_PASID] Request device [00:03.0] fault addr 0x1000", "AMD-Vi: Event logged [IO_PAGE_FAULT domain=0x0000",
        "vfio-pci 0000:00:03.0: Relaying device request to user (#0)", "vfio: unable to enable", "vfio-pci 0000:00:03.0: enabling device",
    ]),
    st.builds("vfio_pin_pages_remote: RLIMIT_MEMLOCK ({}) exceeded".format, U64),
    st.builds(frame_line, st.booleans(), FRAME_FUNC, st.integers(0, 2 ** 16), st.one_of(st.just(""), WORD)),
    st.builds(" {} drivers/vfio/vfio_main.c:123 [inline]".format, FRAME_FUNC),
    st.builds("RIP: 0010:{}+0x1f/0x40".format, FRAME_FUNC),
    st.builds("CPU: {} PID: 77 Comm: {} Not tainted {} #1".format, st.integers(0, 64), LINE.filter(no_space), VERSION_TEXT),
    st.builds("CPU: 1 PID: 2 Comm: x Tainted: G        W          {}".format, VERSION_TEXT),
    st.builds("---[ end trace {:016x} ]---".format, U64),
    LINE,
)
KINDS = {"warning", "lockdep", "bug", "oops", "soft_lockup", "rcu_stall", "iommu_fault", "memlock", "vfio"}


def check_splat(s):
    assert s.kind in KINDS
    assert 1 <= len(s.lines) <= splats.MAX_LINES and s.lines[0] == s.header
    assert all(isinstance(x, str) and "\n" not in x for x in s.lines)
    assert s.kernel is None or (len(s.kernel) == 3 and all(isinstance(n, int) and n >= 0 for n in s.kernel))
    assert s.site == "" or ":" in s.site
    assert all(any(f in line for line in s.lines) for f in s.frames)
    assert isinstance(s.function, str) and isinstance(s.vfio, bool) and isinstance(s.pfnmap, bool)
    assert isinstance(s.site_file, str) and s.text.count("\n") == len(s.lines) - 1
    issue = splats.match(s, KB, None)
    assert issue is None or issue in KB_IDS


@given(st.lists(st.tuples(PREFIX, LOG_LINE), max_size=40), st.one_of(st.none(), st.tuples(
    st.integers(2, 7), st.integers(0, 20), st.integers(0, 300))))
def test_any_kernel_log_assembles_into_well_formed_splats(lines, running):
    raw = [prefix + line for prefix, line in lines]
    out = list(splats.scan(raw))
    for s in out:
        check_splat(s)
        issue = splats.match(s, KB, running)
        assert issue is None or issue in KB_IDS
    # Every line is in one splat at most.
    assert sum(len(s.lines) for s in out) <= len(raw)


@settings(max_examples=50)
@given(st.lists(st.text(max_size=120), max_size=30))
def test_any_text_assembles_into_well_formed_splats(lines):
    for s in splats.scan(lines):
        check_splat(s)


def plain_frame(func):
    return "io_page_fault" not in func  # an IOMMU fault's one-line event wherever it is


@given(PREFIX, SITE, FRAME_FUNC, st.lists(FRAME_FUNC.filter(plain_frame), max_size=6),
       st.tuples(st.integers(2, 7), st.integers(0, 20), st.integers(0, 300)))
def test_a_warning_splat_reads_back(prefix, site, func, frames, version):
    lines = ["WARNING: CPU: 3 PID: 77 at %s %s+0x10/0x20" % (site, func), "Modules linked in: vfio_pci vfio",
             "CPU: 3 PID: 77 Comm: qemu Not tainted %d.%d.%d #1" % version, "RIP: 0010:%s+0x1f/0x40" % func,
             "Call Trace:", " <TASK>"] + [" %s+0x1/0x2 [vfio]" % f for f in frames] + [
             " </TASK>", "---[ end trace 0000000000000000 ]---"]
    s, = splats.scan(prefix + line for line in lines)
    assert (s.kind, s.site, s.function, s.frames, s.kernel) == ("warning", site, func, tuple(frames), version)
    assert s.modules == (("vfio",) if frames else ()) and s.lines == tuple(lines)


@given(PREFIX, LINE)
def test_the_log_prefix_is_stripped(prefix, message):
    assert splats.strip_prefix(prefix + message + "\n") == (message if prefix else splats.strip_prefix(message))


@settings(max_examples=50)
@given(st.lists(st.one_of(st.none(), st.tuples(PREFIX, LOG_LINE)), max_size=30), st.dictionaries(
    st.integers(1, 2 ** 22), st.sampled_from(["qemu", "\ufffd", ""]), max_size=2), st.booleans())
def test_the_kernel_log_watcher_takes_any_log(items, holders, probed):
    lines = [None if item is None else item[0] + item[1] for item in items]
    sink = Sink()
    watcher = kernellog.KernelLogWatcher(KB, sink, (6, 1, 0), holders=lambda bdf: holders,
                                         memlock_probed=lambda: probed)
    watcher._run(lambda *args: iter(lines))  # a traceback here would end the watcher's thread
    assert getattr(watcher, "handling_errors", 0) == 0  # nor any failure logged and passed over
    assert len(sink.alerts) <= sum(watcher.counts.values())  # one alert per splat at most
    family, = [f for f in watcher.families() if f.name == "vfiomond_kernel_events"]
    assert sum(s.value for s in family.samples if s.name.endswith("_total")) == sum(watcher.counts.values())


# ------------------------------------------------------------------ kernel versions


@given(st.text(max_size=40))
@example("1" * 5000 + ".1")
@example("\u0663.\u0664.\u0665")  # ARABIC-INDIC digits: \d matches them
def test_any_text_gives_a_version_or_none(text):
    v = advisories.parse_version(text)
    assert v is None or (len(v) == 3 and all(isinstance(n, int) and n >= 0 for n in v))


@given(st.integers(0, 999), st.integers(0, 999), st.one_of(st.none(), st.integers(0, 99999)),
       st.sampled_from(["", "-rc5+", "-50-amd64", "-generic", "+", "_foo"]), st.sampled_from(["", "Linux ", "x"]))
def test_a_release_gives_its_version(major, minor, patch, suffix, before):
    release = "%s%d.%d%s%s" % (before, major, minor, "" if patch is None else ".%d" % patch, suffix)
    assert advisories.parse_version(release) == (major, minor, patch or 0)


@given(st.text(max_size=30), st.text(max_size=60), st.text(max_size=60))
def test_running_version_of_any_uname(release, uname_v, signature):
    version, source = advisories.running_version(release, uname_v, signature)
    assert source in ("uname -v", "/proc/version_signature", "uname -r")
    assert version is None or len(version) == 3


@given(st.tuples(st.integers(0, 10), st.integers(0, 30), st.integers(0, 400)),
       st.one_of(st.none(), st.sets(st.sampled_from(sorted(advisories.symbol_names(KB)) + ["x"]))))
def test_every_kernel_version_evaluates(version, symbols):
    for a in advisories.evaluate(KB, version, symbols):
        assert a.id in KB_IDS and a.status in ("affected", "possibly")


# ------------------------------------------------------------------ /proc/PID/status, limits


@given(st.text(max_size=200))
@example("VmLck:")
@example("CapEff:")
@example("VmPin:\t" + "9" * 5000 + " kB")
def test_any_status_text_gives_numbers_or_a_value_error(text):
    try:
        status = processes.parse_status(text)
    except ValueError:
        pass
    else:
        assert set(status) == {"VmLck", "VmPin"} and all(isinstance(v, int) for v in status.values())
    try:
        assert isinstance(processes.has_ipc_lock(text), bool)
    except ValueError:
        pass


def comm_name(s):
    return s.replace("\\", "")[:64]  # the kernel escapes "\n" and "\\" (LINE has no "\n")


STATUS_NAME = LINE.map(comm_name)


@given(STATUS_NAME, st.integers(0, 2 ** 40), st.integers(0, 2 ** 40), st.integers(0, 2 ** 41 - 1),
       st.lists(st.sampled_from(["State:\tS (sleeping)", "VmRSS:\t  1024 kB", "Threads:\t4", "CapPrm:\t0000000000000000"]),
                max_size=3))
@example("\x1cCapEff: 4000", 0, 0, 0, [])  # a process names itself (PR_SET_NAME): 13 bytes
@example("\u2028VmLck: 1", 0, 0, 0, [])
def test_status_gives_its_values_whatever_the_process_is_named(name, lck, pin, cap, others):
    text = "Name:\t%s\nUmask:\t0022\n%s\nVmLck:\t%8d kB\nVmPin:\t%8d kB\nCapInh:\t0000000000000000\nCapEff:\t%016x\n" % (
        name, "\n".join(others), lck, pin, cap)
    assert processes.parse_status(text) == {"VmLck": lck * 1024, "VmPin": pin * 1024}
    assert processes.has_ipc_lock(text) == bool(cap >> processes.CAP_IPC_LOCK & 1)


@given(st.text(max_size=200))
@example("Max locked memory")
@example("Max locked memory   \u00b2  8 bytes")
def test_any_limits_text_gives_a_limit_or_a_value_error(text):
    try:
        limit = processes.parse_memlock_limit(text)
    except ValueError:
        return
    assert isinstance(limit, float) and (math.isnan(limit) or limit >= 0)


@given(st.one_of(st.just("unlimited"), st.integers(0, 2 ** 64 - 2)), st.one_of(st.just("unlimited"), U64))
def test_limits_give_the_soft_memlock_limit(soft, hard):
    text = ("Limit                     Soft Limit           Hard Limit           Units     \n"
            "Max cpu time              unlimited            unlimited            seconds   \n"
            "Max locked memory         %-20s %-20s bytes     \n"
            "Max address space         unlimited            unlimited            bytes     \n") % (soft, hard)
    assert processes.parse_memlock_limit(text) == (math.inf if soft == "unlimited" else float(soft))


# ------------------------------------------------------------------ QEMU command lines

def not_an_option(arg):
    return arg not in ("-m", "--m", "-name")


def no_nul(s):
    return "\0" not in s


def no_nul_or_equals(s):
    return "\0" not in s and "=" not in s


ARG = st.text(alphabet=st.characters(blacklist_characters="\0", blacklist_categories=("Cs",)), max_size=12).filter(
    not_an_option)
SIZE_SUFFIX = {"": 20, "b": 0, "B": 0, "k": 10, "K": 10, "m": 20, "M": 20, "g": 30, "G": 30, "t": 40, "T": 40}


def cmdline(*args):
    return b"".join(a.encode() + b"\0" for a in args)


def unambiguous(parts):
    """",," escapes a comma, so a separator followed by a comma reads as an escaped comma
    then (QEMU's get_opt_value too): a part after the first may not start with a comma,
    nor be empty unless it is the last."""
    return all(p and p[0] != "," for p in parts[1:-1]) and not (len(parts) > 1 and parts[-1].startswith(","))


@given(st.lists(st.text(max_size=6), min_size=1, max_size=5).filter(unambiguous))
def test_qemu_options_split_back_to_their_parts(parts):
    assert processes._qemu_options(",".join(p.replace(",", ",,") for p in parts)) == parts


@given(st.text(max_size=30))
def test_qemu_options_of_any_text(value):
    parts = processes._qemu_options(value)
    assert len(parts) >= 1 and sum(map(len, parts)) <= len(value)


@given(st.integers(0, 2 ** 24), st.sampled_from(sorted(SIZE_SUFFIX)), st.sampled_from(
    ["%d%s", "size=%d%s", "size=%d%s,slots=4,maxmem=64G", "slots=2,size=%d%s", "%d %s"]),
    st.lists(ARG, max_size=4), st.lists(ARG, max_size=4), st.sampled_from(["-m", "--m"]))
def test_guest_ram_is_the_size_of_m(n, suffix, form, before, after, flag):
    args = ["qemu-system-x86_64"] + before + [flag, form % (n, suffix)] + after
    size = n << SIZE_SUFFIX[suffix]
    assert processes.guest_ram_bytes(cmdline(*args)) == (size if size < 2 ** 64 else None)  # QEMU: ERANGE


@given(st.integers(0, 2 ** 20), st.from_regex(r"[0-9]{1,3}", fullmatch=True), st.sampled_from("kMG"))
def test_guest_ram_with_a_fraction(n, fraction, suffix):
    value = "%d.%s%s" % (n, fraction, suffix)
    assert processes.guest_ram_bytes(cmdline("qemu", "-m", value)) == int(float("%d.%s" % (n, fraction)) * (
        1 << SIZE_SUFFIX[suffix]))


@given(st.binary(max_size=200))
@example(b"qemu\0-m\0" + b"9" * 400 + b"\0")  # float() of it is inf
@example(b"qemu\0-m\0" + b"0" * 5000 + b"1\0")
@example(b"qemu\0-m\0" + b"1" * 5000 + b"\0")
@example("qemu\0-m\0\u0663G\0".encode())  # not a size QEMU takes
def test_guest_ram_of_any_command_line(raw):
    ram = processes.guest_ram_bytes(raw)
    assert ram is None or (isinstance(ram, int) and 0 <= ram < 2 ** 64)


@given(st.lists(ARG, max_size=3), LINE.filter(no_nul), st.booleans(), st.lists(ARG, max_size=3))
def test_vm_name_from_name_guest(before, name, debug, after):
    value = "guest=" + name.replace(",", ",,") + (",debug-threads=on" if debug else "")
    assert processes.vm_name(cmdline(*(["qemu"] + before + ["-name", value] + after)), "") == name


@given(LINE.filter(no_nul_or_equals), st.booleans())
def test_vm_name_from_a_plain_name(name, more):
    value = name.replace(",", ",,") + (",process=x" if more else "")
    assert processes.vm_name(cmdline("qemu", "-name", value), "") == name


@given(st.from_regex(r"[A-Za-z0-9_-]{1,24}", fullmatch=True), st.integers(1, 999))
def test_vm_name_from_the_libvirt_scope(name, n):
    cgroup = "0::/machine.slice/machine-qemu\\x2d%d\\x2d%s.scope/libvirt/emulator\n" % (n, name.replace("-", "\\x2d"))
    assert processes.vm_name(b"", cgroup) == name


@given(st.binary(max_size=120), st.text(max_size=120))
def test_vm_name_of_anything(raw, cgroup):
    assert isinstance(processes.vm_name(raw, cgroup), str)


# ------------------------------------------------------------------ /proc trees

PROC_FILE = st.one_of(st.none(), st.binary(max_size=120))


@settings(max_examples=60)
@given(st.fixed_dictionaries({name: PROC_FILE for name in ("status", "limits", "comm", "cmdline", "cgroup")}))
def test_read_process_of_any_proc_files(files):
    with tempfile.TemporaryDirectory() as proc:
        write_tree(proc, {"42/" + k: v for k, v in files.items() if v is not None})
        info = processes.read_process(42, proc)
    if info is not None:
        assert isinstance(info.comm, str) and isinstance(info.vm, str)
        assert info.guest_ram_bytes is None or 0 <= info.guest_ram_bytes < 2 ** 64


@settings(max_examples=60)
@given(st.binary(min_size=1, max_size=15), st.binary(max_size=60), st.integers(0, 2 ** 30))
def test_a_process_is_read_whatever_bytes_name_it(comm, cgroup, lck):
    with tempfile.TemporaryDirectory() as proc:
        write_tree(proc, {
            "42/status": b"Name:\t" + comm.replace(b"\n", b"\\n") + b"\nVmLck:\t%d kB\nVmPin:\t0 kB\nCapEff:\t0\n" % lck,
            "42/limits": b"Max locked memory         65536                65536                bytes\n",
            "42/comm": comm + b"\n", "42/cmdline": b"qemu\0-m\x001G\0", "42/cgroup": cgroup,
        })
        info = processes.read_process(42, proc)
    assert info is not None and info.locked_vm_bytes == lck * 1024 and info.guest_ram_bytes == 1 << 30
    # (text mode reads "\r" as a line end)
    assert info.comm == comm.decode("utf-8", "replace").replace("\r\n", "\n").replace("\r", "\n").strip()


@pytest.mark.parametrize("error", [FileNotFoundError, ProcessLookupError, PermissionError])
@pytest.mark.parametrize("at", range(5))
def test_a_process_that_vanishes_mid_read_is_skipped(error, at):
    calls = []

    def read(path, mode="r"):
        calls.append(path)
        if len(calls) > at:
            raise error(2, "gone")
        return b"qemu\0" if "b" in mode else "Name:\tq\nVmLck:\t1 kB\nCapEff:\t0\n"

    with mock.patch.object(processes, "_read", read):
        assert processes.read_process(1234, "/nonexistent") is None


def test_vanished_processes_have_no_files_and_no_devices():
    from vfiomond.pins import comm, vfio_devices

    with tempfile.TemporaryDirectory() as root:
        assert processes.vfio_files(1234, root) is None
        assert vfio_devices(1234, root, root) is None
        assert processes.open_vfio_files(root) == {}
    assert comm(2 ** 22 + 1) == ""  # above pid_max


@settings(max_examples=60)
@given(st.dictionaries(st.integers(1, 99), st.fixed_dictionaries(
    {"comm": PROC_FILE, "cmdline": PROC_FILE, "cgroup": PROC_FILE}), max_size=3))
def test_holder_family_of_any_proc_files(procs):
    holders = {"0000:00:03.0": {pid: "group" for pid in procs}}
    with tempfile.TemporaryDirectory() as proc:
        write_tree(proc, {"%d/%s" % (pid, k): v for pid, files in procs.items() for k, v in files.items() if v is not None})
        family = devices.holder_family(holders, proc)
    assert len(family.samples) <= len(procs)
    assert all(isinstance(v, str) for s in family.samples for v in s.labels.values())


# ------------------------------------------------------------------ sysfs, udev

FACT = st.one_of(st.text(max_size=12), st.sampled_from(["vfio-pci", "mlx5_vfio_pci", "nvme", "", "0x1234", "1"]))
FACTS = st.dictionaries(st.sampled_from(devices.FACT_KEYS), FACT)
BDFS = ["0000:00:02.0", "0000:00:03.0", "0000:41:00.1"]


@given(st.sampled_from(BDFS), FACTS)
def test_any_facts_give_a_record_or_none(bdf, facts):
    dev = devices.record(bdf, facts)
    if dev is None:
        assert not devices.is_vfio_driver(facts.get("driver", ""))
        return
    assert all(isinstance(v, str) for v in dev) and dev.device == bdf
    assert all(p.startswith("/dev/vfio/") for p in dev.paths())


@given(st.lists(st.tuples(st.sampled_from(["add", "remove", "change", "bind", "unbind", "move"]),
                          st.sampled_from(["pci", "module"]), st.sampled_from(BDFS), FACTS), max_size=20),
       st.dictionaries(st.integers(1, 9), st.lists(st.sampled_from(["/dev/vfio/1", "/dev/vfio/devices/vfio0", "/dev/null"]))))
def test_the_inventory_follows_the_last_event_of_each_device(events, open_files):
    inv = devices.Inventory()
    last = {}
    for action, subsystem, name, facts in events:
        change = inv.apply(devices.UdevEvent(action, subsystem, name, facts))
        assert change is None or change.kind in ("added", "changed", "removed")
        if subsystem == "pci":
            last[name] = (action, facts)
    bound = {n for n, (action, facts) in last.items()
             if action != "remove" and devices.is_vfio_driver(facts.get("driver", ""))}
    assert set(inv.devices) == bound
    for bdf, pids in inv.holders(open_files).items():
        assert bdf in bound and all(set(inv.devices[bdf].paths()) & set(open_files[p]) for p in pids)


@settings(max_examples=60)
@given(st.fixed_dictionaries({n: PROC_FILE for n in ("vendor", "device", "numa_node")}),
       st.one_of(st.none(), WORD), st.one_of(st.none(), st.from_regex(r"[0-9]{1,3}", fullmatch=True)),
       st.dictionaries(st.sampled_from(["ID_VENDOR_FROM_DATABASE", "ID_MODEL_FROM_DATABASE", "X"]), st.text(max_size=10)))
def test_sysfs_facts_of_any_files(files, driver, group, properties):
    with tempfile.TemporaryDirectory() as root:
        os.mkdir(os.path.join(root, "dev"))
        tree = {"dev/" + k: v for k, v in files.items() if v is not None}
        if driver:
            tree["dev/driver"] = ("link", "../../bus/pci/drivers/" + driver)
        if group:
            tree["dev/iommu_group"] = ("link", "../../kernel/iommu_groups/" + group)
        write_tree(root, tree)
        facts = devices.read_facts(os.path.join(root, "dev"), properties)
        gone = devices.read_facts(os.path.join(root, "gone"), properties)
    assert set(facts) == set(devices.FACT_KEYS) and all(isinstance(v, str) for v in facts.values())
    assert facts["driver"] == (driver or "") and facts["iommu_group"] == (group or "")
    assert gone == {}


# ------------------------------------------------------------------ kallsyms, /proc/modules

SYMBOL_NAME = st.builds("{}{}".format, st.sampled_from(["vfio_lock_acct", "remap_pfn_range", "foo"]),
                        st.sampled_from(["", ".part.0", ".isra.0", ".constprop.2", ".cold", ".llvm.123", ".part.0.isra.0"]))
KALLSYMS_LINE = st.builds("{:016x} {} {}{}".format, U64, st.sampled_from("tTdDbBrRW"), SYMBOL_NAME,
                          st.sampled_from(["", "\t[vfio]", "\t[kvm]"]))


@given(st.lists(st.one_of(KALLSYMS_LINE, st.text(max_size=40)), max_size=30),
       st.sets(st.sampled_from(["vfio_lock_acct", "remap_pfn_range", "bar"])), st.sets(st.sampled_from(["vfio", "kvm"])))
def test_kallsyms_of_any_lines(lines, wanted, skip):
    syms = Kallsyms.parse(lines, wanted, skip)
    assert syms.lines == len(lines)
    for name, sym in syms._symbols.items():
        assert name.split(".", 1)[0] in wanted and sym.module not in skip and isinstance(sym.address, int)
        assert not name.endswith(".cold")
    for base in wanted:
        found = syms.function(base, True)
        assert found is None or (found.kind in "tT" and found.name.split(".", 1)[0] == base)


@given(st.binary(max_size=200))
def test_proc_modules_of_any_bytes(raw):
    with tempfile.TemporaryDirectory() as root:
        path = os.path.join(root, "modules")
        write_tree(root, {"modules": raw})
        modules = unloading_modules(path)
    assert all(isinstance(m, str) for m in modules)


# ------------------------------------------------------------------ /proc/cpuinfo


@given(st.binary(max_size=200))
@example(b"\xff\xfe address sizes")
@example("address sizes\t: \u00b2 bits physical, 48 bits virtual\n".encode())
@example(b"address sizes\t: 99999999999999999999 bits physical, 48 bits virtual\n")
def test_cpuinfo_of_any_bytes(raw):
    with tempfile.TemporaryDirectory() as root:
        write_tree(root, {"cpuinfo": raw})
        decode = pagemap.pte_pfn_decoder(os.path.join(root, "cpuinfo"))
    assert decode is None or isinstance(decode(2 ** 64 - 1), int)


@given(st.integers(13, 64), st.integers(32, 57), U64)
def test_cpuinfo_address_bits_mask_the_pte(phys, virt, pte):
    with tempfile.TemporaryDirectory() as root:
        write_tree(root, {"cpuinfo": b"processor\t: 0\naddress sizes\t: %d bits physical, %d bits virtual\n" % (phys, virt)})
        decode = pagemap.pte_pfn_decoder(os.path.join(root, "cpuinfo"))
    shift = (pagemap.PAGE - 1).bit_length()
    assert decode(pte) == (pte & ((1 << phys) - 1)) >> shift


@given(U64)
def test_any_pagemap_entry_gives_a_pfn_or_none(entry):
    pfn = pagemap.pfn_of(entry)
    assert pfn is None or (0 < pfn <= pagemap.PFN_MASK and entry & pagemap.PRESENT)


@given(st.binary(max_size=64), st.integers(-8, pagemap.PFN_MASK))
def test_kpageflags_of_any_bytes(raw, pfn):
    with tempfile.TemporaryDirectory() as root:
        write_tree(root, {"kpageflags": raw})
        zero = pagemap.is_zero_page(pfn, os.path.join(root, "kpageflags"))
    assert zero is None or isinstance(zero, bool)


@settings(max_examples=30)
@given(st.lists(st.integers(0, 2 ** 64 - 1), max_size=8))
def test_pagemap_of_this_process_at_any_address(vaddrs):
    try:
        pfns = pagemap.read_pfns(os.getpid(), [v - v % pagemap.PAGE for v in vaddrs])
    except PermissionError:
        pytest.skip("/proc/self/pagemap is not readable here")
    assert all(p is None or p > 0 for p in pfns.values())


def test_the_pagemap_of_a_gone_process_is_an_os_error():
    with pytest.raises(OSError):
        pagemap.read_pfns(2 ** 22 + 1, [0])


# ------------------------------------------------------------------ environment


@given(st.dictionaries(st.sampled_from(["WATCHDOG_USEC", "WATCHDOG_PID", "NOTIFY_SOCKET"]), st.text(max_size=25)),
       st.integers(1, 2 ** 22))
@example({"WATCHDOG_USEC": "\u00b2"}, 1)
@example({"WATCHDOG_USEC": "1" * 5000}, 1)
def test_watchdog_interval_of_any_environment(environ, pid):
    interval = service.watchdog_interval(environ, pid)
    assert interval is None or (isinstance(interval, float) and interval > 0)


@given(st.integers(1, 2 ** 64 - 1), st.integers(1, 2 ** 22), st.booleans())
def test_watchdog_interval_is_half_of_watchdog_usec(usec, pid, own):
    environ = {"WATCHDOG_USEC": str(usec), "WATCHDOG_PID": str(pid if own else pid + 1)}
    assert service.watchdog_interval(environ, pid) == (usec / 1e6 / 2 if own else None)


# ------------------------------------------------------------------ HTTP Authorization header

AUTH_SCHEME = st.sampled_from(["Basic ", "basic ", "BASIC\t", "Basic  ", "Bearer ", "Basic"])


def basic_header(scheme, credentials):
    return scheme + base64.b64encode(credentials).decode()


@given(st.one_of(st.none(), st.text(max_size=60), st.builds(basic_header, AUTH_SCHEME, st.binary(max_size=40))))
def test_any_authorization_header_gives_credentials_or_none(header):
    if webconfig is None:
        pytest.skip("no web configuration here")
    credentials = webconfig.parse_basic(header)
    assert credentials is None or (isinstance(credentials[0], str) and isinstance(credentials[1], bytes))


@given(st.text(alphabet=st.characters(blacklist_characters=":", blacklist_categories=("Cs",)), max_size=12),
       st.binary(max_size=24))
def test_basic_credentials_read_back(user, password):
    if webconfig is None:
        pytest.skip("no web configuration here")
    header = basic_header("Basic ", user.encode() + b":" + password)
    assert webconfig.parse_basic(header) == (user, password)


WEB_YAML_LINE = st.one_of(st.sampled_from([
    "tls_server_config:", "http_server_config:", "basic_auth_users:", "  headers:", "    X-Frame-Options: deny",
    "  cert_file: /nonexistent/cert.pem", "  key_file: key.pem", "  prometheus: $2y$10$abcdefghijklmnopqrstuv",
    "  client_auth_type: RequireAnyClientCert", "  min_version: TLS12", "  cipher_suites: [a]", "  http2: true",
    "  client_allowed_sans: [1]", "- 1", "&a x", "*a", "!!python/object/apply:os.system [true]", "  cert: |", "    x",
    "a: !!binary aGk=", "? [1]\n: 2", "{a: [1]}: 1"]), st.text(max_size=20))


def web_yaml(lines):
    return "\n".join(lines).encode()


@settings(max_examples=60)
@given(st.one_of(st.lists(WEB_YAML_LINE, max_size=8).map(web_yaml), st.binary(max_size=60)))
def test_any_web_config_file_gives_a_config_or_a_config_error(raw):
    if webconfig is None:
        pytest.skip("no web configuration here")
    with tempfile.TemporaryDirectory() as root:
        write_tree(root, {"web.yml": raw})
        try:
            web = webconfig.load(os.path.join(root, "web.yml"))
        except ConfigError as e:
            assert "\n" not in str(e)
            return
    assert isinstance(web, webconfig.WebConfig)


# ------------------------------------------------------------------ configuration
#
# Hosts of any text (not IDNA names, NULs, brackets), ports of any digits (superscripts,
# other scripts'), probes.disable holding lists and tables, section and key names with
# line breaks: each is a config or a one-line ConfigError.

PROBE_NAMES = sorted(p.name for p in config.PROBES)
HOST = st.one_of(st.sampled_from(["", "localhost", "127.0.0.1", "[::1]", "[::]", "nohost.invalid", "a" * 64, "a..b",
                                  "\udcff", "[::1]:", "[localhost]", "[::1", "::1", "localhost\0x", "[fe80::1%eth0]"]),
                 st.from_regex(r"[a-z0-9]{1,20}(\.[a-z0-9]{1,20}){0,2}", fullmatch=True), st.text(max_size=12))
LISTEN = st.builds("{}{}{}".format, HOST, st.sampled_from([":", "", "::"]),
                   st.text(alphabet="0123456789ab-\u00b2\u0661", max_size=7))
SCALAR = st.one_of(st.booleans(), st.integers(), st.floats(), st.text(max_size=10))
DISABLE = st.lists(st.one_of(st.sampled_from(PROBE_NAMES), SCALAR, st.lists(SCALAR, max_size=2),
                             st.dictionaries(st.text(max_size=3), SCALAR, max_size=2)), max_size=4)
VALUES = {
    "listen": st.one_of(LISTEN, st.booleans(), st.integers(), st.floats()),
    "log_level": st.one_of(st.sampled_from(config.LOG_LEVELS), SCALAR),
    "watch_kernel_log": SCALAR, "strict": SCALAR, "disable": st.one_of(DISABLE, SCALAR), "verify": SCALAR,
    "verify_interval": st.one_of(st.floats(), st.integers(-5, 100000), SCALAR),
    "samples": st.one_of(st.integers(-5, 100), SCALAR),
    # A file it reads: no random paths; a NUL, a line break, a directory, a device.
    "web_config_file": st.one_of(st.sampled_from(["", "/nonexistent/web.yml", "/", "a\0b", "a\nb", "/dev/zero",
                                                  "/dev/null"]), st.booleans(), st.integers()),
}
NAME = st.text(max_size=8)
SECTION = st.one_of(st.sampled_from(sorted(config._SCHEMA)), NAME)


def section_body(section):
    keys = sorted(config._SCHEMA.get(section, {"x": str}))
    return st.one_of(SCALAR, st.dictionaries(st.one_of(st.sampled_from(keys), NAME), st.one_of(
        *[VALUES.get(k, SCALAR) for k in keys])))


def fake_getaddrinfo(host, port, *args, **kwargs):
    host.encode("idna")  # what socket.getaddrinfo does first (UnicodeError for a bad name)
    try:
        socket.inet_aton(host)
        return [(socket.AF_INET, socket.SOCK_STREAM, 6, "", (host, 0))]
    except OSError:
        pass
    if host == "localhost":
        return [(socket.AF_INET, socket.SOCK_STREAM, 6, "", ("127.0.0.1", 0))]
    raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")  # no lookups from tests


@pytest.fixture(autouse=True, scope="module")
def no_name_lookups():
    with mock.patch.object(socket, "getaddrinfo", fake_getaddrinfo):
        yield


@st.composite
def config_tables(draw):
    data = {}
    for _ in range(draw(st.integers(0, 3))):
        section = draw(SECTION)
        data[section] = draw(section_body(section))
    return data


@given(config_tables())
def test_any_config_table_gives_a_config_or_a_config_error(data):
    try:
        cfg = config.from_dict(data, "config test.toml")
    except ConfigError as e:
        assert "\n" not in str(e)
        return
    assert 2 <= cfg.pin_samples <= config.MAX_PIN_SAMPLES and 0.1 <= cfg.pin_verify_interval <= 86400
    assert set(cfg.disable) <= set(PROBE_NAMES) and cfg.log_level in config.LOG_LEVELS


@given(st.sampled_from(["", "localhost", "127.0.0.1", "[::1]", "[2001:db8::1]", "0.0.0.0"]), st.integers(1, 65535))
def test_listen_gives_its_host_and_port(host, port):
    expected = host[1:-1] if host.startswith("[") else host
    assert config.parse_listen("%s:%d" % (host, port)) == (expected, port)


def toml_string_safe(s):
    """Writable as is in a TOML basic string: no quote, backslash or control character."""
    return s.isprintable() and '"' not in s and "\\" not in s


TOML_LINE = st.one_of(
    st.sampled_from(["[daemon]", "[probes]", "[pins]", "[other]", "strict = true", "verify = false", "x = 1", "",
                     "# comment", "watch_kernel_log = 1", "[daemon", "log_level = 'debug'"]),
    st.builds('listen = "{}"'.format, LISTEN.filter(toml_string_safe)),
    st.builds('log_level = "{}"'.format, st.sampled_from(config.LOG_LEVELS + ("loud",))),
    st.builds("samples = {}".format, st.integers(-3, 100)),
    st.builds("verify_interval = {}".format, st.sampled_from(["0.05", "0.1", "30", "1e9", "nan", "inf", "-inf", "'5'"])),
    st.builds("disable = [{}]".format, st.lists(st.one_of(st.sampled_from(PROBE_NAMES).map('"{}"'.format),
                                                          st.sampled_from(["1", "true", '"nope"', "1.5"])),
                                                max_size=3).map(", ".join)),
    st.text(max_size=20),
)


def toml_file(lines):
    return "\n".join(lines).encode()


@given(st.one_of(st.lists(TOML_LINE, max_size=10).map(toml_file), st.binary(max_size=80)))
def test_any_config_file_gives_a_config_or_a_config_error(raw):
    with tempfile.TemporaryDirectory() as root:
        path = os.path.join(root, "vfiomond.toml")
        write_tree(root, {"vfiomond.toml": raw})
        try:
            cfg = config.load(path)
        except ConfigError as e:
            assert "\n" not in str(e).strip()
            return
    assert isinstance(cfg, config.Config)


def test_an_unreadable_config_is_a_config_error():
    with tempfile.TemporaryDirectory() as root:
        for path in (os.path.join(root, "missing.toml"), root):
            with pytest.raises(ConfigError):
                config.load(path)


# Faults of config.py found by the properties above, fixed: kept as examples.
@pytest.mark.parametrize("listen", [":\u00b2", "a" * 64 + ":10119", "\udcff:10119", "a..b:10119"])
def test_a_bad_listen_address_is_a_config_error(listen):
    with pytest.raises(ConfigError):
        config.parse_listen(listen)


@pytest.mark.parametrize("data", [{"\n": {}}, {"daemon": {"a\nb": 1}}, {"probes": {"x\u2028y": 1}}])
def test_a_config_error_is_one_line(data):
    with pytest.raises(ConfigError) as e:
        config.from_dict(data, "config x.toml")
    assert len(str(e.value).splitlines()) == 1


def test_a_web_config_path_with_a_nul_is_a_config_error():
    # TOML: web_config_file = "a\u0000b"; open() raises ValueError (embedded null byte), not OSError.
    if "web_config_file" not in config._SCHEMA["daemon"]:
        pytest.skip("no daemon.web_config_file")
    with pytest.raises(ConfigError):
        config.from_dict({"daemon": {"web_config_file": "a\0b"}}, "config x.toml")


@pytest.mark.parametrize("disable", [[[1]], [{}], [["dma_map"]]])
def test_a_disable_list_of_lists_is_a_config_error(disable):
    with pytest.raises(ConfigError):
        config.from_dict({"probes": {"disable": disable}}, "config x.toml")
