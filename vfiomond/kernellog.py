"""Watch the kernel log for splats: /dev/kmsg, or the journal's kernel transport
(systemd-python) where /dev/kmsg cannot be read.  Each complete splat is counted in
``vfiomond_kernel_events_total{kind,site,known_issue}`` and raised as one journal
alert with its text and attribution.  Only new lines are read (from the end).
"""

import logging
import os
import re
import select
import threading
from typing import Callable, Dict, Iterator, List, Optional, Tuple

from prometheus_client.core import CounterMetricFamily

from vfiomond import splats

log = logging.getLogger("vfiomond")

IDLE_FLUSH = 2.0  # seconds without a line after which a splat in progress is complete

# vfio_pci_core_request() (vfio_pci_request() before 5.15): the kernel wants the
# device back (unbind, hot-unplug) while a user still has it open; the removal
# blocks until the user lets go.  "#0" is the first request of a removal.
_REMOVAL_BLOCKED = re.compile(
    r"^vfio-pci (\S+): (?:Relaying device request to user \(#0\)|No device request channel registered)")


def blocked_removal(line: str) -> Optional[Tuple[str, bool]]:
    """(PCI address, whether the user was told) if ``line`` says a device removal
    waits for its VFIO user; None otherwise."""
    m = _REMOVAL_BLOCKED.match(line)
    return (m.group(1), "Relaying" in line) if m else None


def parse_kmsg(record: bytes) -> str:
    """The message of one /dev/kmsg record: "PRI,SEQ,TS,FLAGS[,..];MESSAGE\\n KEY=VALUE..."."""
    text = record.decode("utf-8", "replace")
    _, _, rest = text.partition(";")
    return rest.split("\n", 1)[0]


def kmsg_seq(record: bytes) -> Optional[int]:
    """The sequence number of a /dev/kmsg record (its second field); None if unreadable."""
    try:
        return int(record.split(b",", 2)[1])
    except (IndexError, ValueError):
        return None


class LogPosition:
    """Where a kernel log reader is, so that a restarted reader goes on from there
    (no line read twice, none skipped), and the lines it could not read.
    ``seq``: the last /dev/kmsg record read; ``cursor``: the last journal entry's."""

    def __init__(self) -> None:
        self.seq: Optional[int] = None
        self.cursor: Optional[str] = None
        self.lost = 0  # records the kernel overwrote before they were read (/dev/kmsg)

    def read_kmsg(self, seq: Optional[int]) -> bool:
        """Record ``seq`` as read; False for a record read before (a restarted reader)."""
        if seq is None:
            return True
        if self.seq is not None:
            if seq <= self.seq:
                return False
            self.lost += seq - self.seq - 1
        self.seq = seq
        return True


def kmsg_lines(stop: threading.Event, position: Optional[LogPosition] = None,
               path: str = "/dev/kmsg") -> Iterator[Optional[str]]:
    """New kernel log lines; None when idle for IDLE_FLUSH seconds.  From the end of
    the log on a first start, from ``position`` on a restart.  A record the kernel
    overwrote before it was read (EPIPE, a flood) is counted in ``position.lost``
    from the gap in sequence numbers."""
    position = position if position is not None else LogPosition()
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
    try:
        if position.seq is None:
            os.lseek(fd, 0, os.SEEK_END)
        poller = select.poll()
        poller.register(fd, select.POLLIN)
        while not stop.is_set():
            if not poller.poll(IDLE_FLUSH * 1000):
                yield None
                continue
            try:
                record = os.read(fd, 8192)
            except BlockingIOError:
                continue
            except BrokenPipeError:  # overwritten before we read it: the next record's seq shows how many
                continue
            if position.read_kmsg(kmsg_seq(record)):
                yield parse_kmsg(record)
    finally:
        os.close(fd)


def journal_line(entry) -> str:
    """The log line of a journal entry of the kernel transport.

    For records that user space wrote to /dev/kmsg (a facility other than 0,
    kern), journald splits a leading "WORD:" off as SYSLOG_IDENTIFIER ("BUG:
    unable to handle..." -> "BUG" + "unable to handle..."); put it back.
    Records of the kernel itself (facility 0) are never split.
    """
    message = _field_text(entry.get("MESSAGE", ""))
    ident = _field_text(entry.get("SYSLOG_IDENTIFIER", ""))
    if ident and _field_text(entry.get("SYSLOG_FACILITY", "0")) != "0":
        return "%s: %s" % (ident, message)
    return message


def _field_text(value) -> str:
    """A journal field as text.  systemd-python hands a field that is not valid UTF-8
    (a kernel line quoting a process's comm) over as bytes, and one that occurs twice
    as a list: str() of them gave "b'BUG: ...'", which matches no splat header."""
    if isinstance(value, list):
        value = value[0] if value else ""
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    return str(value)


def journal_lines(stop: threading.Event, position: Optional[LogPosition] = None) -> Iterator[Optional[str]]:
    """The journal's kernel messages, from its end on a first start, after
    ``position.cursor`` on a restart."""
    from systemd import journal

    position = position if position is not None else LogPosition()
    reader = journal.Reader()
    reader.add_match(_TRANSPORT="kernel")
    if position.cursor is not None:
        reader.seek_cursor(position.cursor)
        reader.get_next()  # the entry at the cursor was read before
    else:
        reader.seek_tail()
        reader.get_previous()
    while not stop.is_set():
        if reader.wait(IDLE_FLUSH) == journal.NOP:  # seconds
            yield None
            continue
        for entry in reader:
            position.cursor = entry.get("__CURSOR", position.cursor)
            yield journal_line(entry)


def choose_source() -> Tuple[str, Callable[..., Iterator[Optional[str]]]]:
    """/dev/kmsg if it can be opened (CAP_SYSLOG where dmesg_restrict=1), else the
    journal's kernel transport.  /dev/kmsg first: in the lab (6.1, 5.10) journald
    stored nothing while a device removal waited for its VFIO user, so through the
    journal the device_gone_in_use alert came only after the user let go."""
    try:
        os.close(os.open("/dev/kmsg", os.O_RDONLY | os.O_NONBLOCK))
        return "/dev/kmsg", kmsg_lines
    except OSError:
        pass
    try:
        from systemd import journal

        reader = journal.Reader()
        reader.add_match(_TRANSPORT="kernel")
        if reader.get_next():
            return "journal", journal_lines
    except Exception:  # no systemd-python, or no journal
        pass
    raise OSError("neither /dev/kmsg nor the journal's kernel messages can be read")


def _holders_now(bdf: str) -> Dict[int, str]:
    from vfiomond.devices import holders
    from vfiomond.processes import open_vfio_files

    return holders(bdf, open_vfio_files())


def _counter(name: str, doc: str, label: str, items: List[Tuple[str, int]]) -> CounterMetricFamily:
    """A counter family with one label, from (label value, count) pairs."""
    family = CounterMetricFamily(name, doc, labels=[label])
    for value, n in items:
        family.add_metric([value], n)
    return family


def _vfio_bound_now(bdf: str) -> bool:
    """Whether the device is bound to a VFIO driver at this moment (sysfs)."""
    from vfiomond.devices import is_vfio_driver, link_name

    return is_vfio_driver(link_name("/sys/bus/pci/devices/%s/driver" % bdf))


class KernelLogWatcher:
    """Counts and alerts splats; runs its reader in a daemon thread."""

    def __init__(self, issues: List[dict], sink, running: Optional[Tuple[int, int, int]],
                 holders: Optional[Callable[[str], Dict[int, str]]] = None,
                 memlock_probed: Callable[[], bool] = lambda: False,
                 vfio_bound: Callable[[str], bool] = _vfio_bound_now):
        self.issues = issues
        # IOMMU faults of a device bound to a VFIO driver when its line arrives are
        # counted per device (a device rebound later is not looked up again).
        self._vfio_bound = vfio_bound
        self.iommu_faults: Dict[str, int] = {}
        self._holders = holders or _holders_now
        # Whether a probe raises the memlock_refused alert for type1's refusals itself
        # (with the process, the request and the limit): then the kernel's log line of
        # the same refusal is counted only, so that one refusal is one alert.
        self._memlock_probed = memlock_probed
        self.sink = sink
        self.running = running
        self.counts: Dict[Tuple[str, str, str], int] = {}
        self.suppressed: Dict[str, int] = {}  # function -> lines its rate limit dropped
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: Optional[threading.Thread] = None
        self.position = LogPosition()  # a restarted reader goes on from here
        self.handling_errors = 0  # splats whose handling raised (logged; the reader goes on)
        self.source = ""

    def start(self) -> None:
        """Start the reader thread (again, after it died: from where it was)."""
        self.source, lines = choose_source()
        self._thread = threading.Thread(target=self._run, args=(lines,), name="kernellog", daemon=True)
        self._thread.start()
        log.info("watching the kernel log through %s", self.source)

    def alive(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def stop(self) -> None:
        self._stop.set()

    def _run(self, lines) -> None:
        assembler = splats.Assembler()
        try:
            for line in lines(self._stop, self.position):
                for splat in assembler.feed(line) if line is not None else assembler.flush():
                    self._handle(splat)
        except OSError as e:
            log.error("kernel log watch stopped: %s", e)

    def _handle(self, splat: "splats.Splat") -> None:
        """One splat; a failure to handle it is counted and logged, and the reader goes on."""
        try:
            self.on_splat(splat)
        except Exception as e:
            with self._lock:
                self.handling_errors += 1
            log.error("handling a kernel log report failed (%s: %s): %s", type(e).__name__, e, splat.header[:200])

    def on_splat(self, splat: splats.Splat) -> None:
        from vfiomond.alerts import KERNEL_SPLAT

        if splat.kind == "suppressed":
            m = splats.SUPPRESSED.match(splat.header)
            with self._lock:
                self.suppressed[m.group("func")] = self.suppressed.get(m.group("func"), 0) + int(m.group("count"))
            return
        issue = splats.match(splat, self.issues, self.running)
        key = (splat.kind, splat.site_file or "none", issue or "none")
        with self._lock:
            self.counts[key] = self.counts.get(key, 0) + 1
        if splat.kind == "vfio":
            self._check_removal(splat.header)
            return  # other vfio-pci messages are counted, not alerted
        device = splats.fault_device(splat.header) if splat.kind == "iommu_fault" else None
        if device is not None and self._vfio_bound(device):
            with self._lock:
                self.iommu_faults[device] = self.iommu_faults.get(device, 0) + 1
        else:
            device = None
        if splat.kind == "memlock":
            self._memlock_refused(splat.header)
            return
        held = {}
        if device is not None:  # who held the faulting device: the VM or DMA user whose DMA failed
            users = self._holders(device)
            held = {"PIDS": ",".join(str(p) for p in sorted(users)), "COMMS": ",".join(users[p] for p in sorted(users))}
        self.sink.alert(
            KERNEL_SPLAT,
            "kernel %s%s%s: %s" % (splat.kind, " in VFIO" if splat.vfio or device else "",
                                   " (known issue %s)" % issue if issue else "", splat.header),
            KIND=splat.kind, SITE=splat.site or "", FUNCTION=splat.function, FRAMES=" ".join(splat.frames[:16]),
            VFIO=int(splat.vfio or device is not None), PFNMAP=int(splat.pfnmap), KNOWN_ISSUE=issue or "",
            SPLAT=splat.text, **({"DEVICE": device} if device else {}), **held,
        )

    def _memlock_refused(self, header: str) -> None:
        """type1's "vfio_pin_pages_remote: RLIMIT_MEMLOCK (N) exceeded" (a refusal, not a
        splat): the memlock_refused alert, unless the pin probe raises it already."""
        if self._memlock_probed():
            return
        from vfiomond.alerts import MEMLOCK_REFUSED

        m = re.search(r"RLIMIT_MEMLOCK \((\d+)\) exceeded", header)
        self.sink.alert(
            MEMLOCK_REFUSED,
            "VFIO DMA mapping refused: %s (from the kernel log; no attached probe names the process)" % header,
            LIMIT_BYTES=m.group(1) if m else "", BACKEND="type1", SOURCE="kernel_log",
        )

    def _check_removal(self, line: str) -> None:
        found = blocked_removal(line)
        if found is None:
            return
        from vfiomond.alerts import DEVICE_GONE_IN_USE

        bdf, told = found
        users = self._holders(bdf)
        who = ", ".join("%s[%d]" % (comm, pid) for pid, comm in sorted(users.items())) or "a process that has since let go"
        self.sink.alert(
            DEVICE_GONE_IN_USE,
            "PCI device %s is being removed from vfio-pci while in use by %s; the removal waits for the user%s"
            % (bdf, who, "" if told else " (no device request channel: it is never told)"),
            DEVICE=bdf, PIDS=",".join(str(p) for p in sorted(users)), COMMS=",".join(users[p] for p in sorted(users)),
            REQUEST_CHANNEL=int(told),
        )

    def families(self):
        c = CounterMetricFamily(
            "vfiomond_kernel_events_total",
            "Kernel log events: splats (warning, bug, oops, lockdep, rcu_stall, soft_lockup), IOMMU faults, unlocked bus resets, "
            "RLIMIT_MEMLOCK and vfio-pci messages.",
            labels=["kind", "site", "known_issue"],
        )
        with self._lock:
            for key, n in sorted(self.counts.items()):
                c.add_metric(list(key), n)
            errors = self.handling_errors
            suppressed = sorted(self.suppressed.items())
            faults = sorted(self.iommu_faults.items())
        yield c
        yield _counter(
            "vfiomond_iommu_faults", "IOMMU fault lines of the kernel log naming a device that was bound to a VFIO "
            "driver when the line arrived (Intel DMAR \"Request device\", AMD-Vi IO_PAGE_FAULT, ARM SMMUv3 \"client:\" "
            "of 6.14+); lines the kernel's "
            "rate limit dropped are in vfiomond_kernel_log_lines_suppressed_total.", "device", faults)
        yield _counter(
            "vfiomond_kernel_log_lines_suppressed", "Kernel log lines a rate limit dropped, by the function that "
            "limits them, from its \"FUNC: N callbacks suppressed\" lines (lib/ratelimit.c): e.g. dmar_fault's "
            "IOMMU fault lines beyond the first of each burst.", "function", suppressed)
        yield CounterMetricFamily(
            "vfiomond_kernel_log_lines_lost", "Kernel log records overwritten in the kernel's buffer before they were "
            "read (/dev/kmsg sequence gaps: a flood of lines); their reports may be missing.", value=self.position.lost)
        yield CounterMetricFamily(
            "vfiomond_kernel_log_handling_errors", "Kernel log reports whose handling failed (logged; the watch "
            "goes on).", value=errors)
