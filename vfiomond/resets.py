"""Probe area "resets" (bpf/resets.c): resets of VFIO devices, their method,
duration and result, and whether the device answered afterwards.

The BPF program sends one record per reset of any PCI device (resets are rare);
the daemon keeps those of devices bound to a VFIO driver when the record
arrives, reads the device's config space (its vendor ID: all ones, 0xffff, is
what a read returns when nothing answers, drivers/pci/access.c
PCI_POSSIBLE_ERROR, 5.19+; the same all-ones convention before) and writes a
journal entry when the reset failed or the device does not answer.
"""

import errno
import logging
import os
import struct
import threading
from typing import Callable, Dict, Iterable, Iterator, NamedTuple, Optional, Set, Tuple

from prometheus_client.core import CounterMetricFamily, HistogramMetricFamily

from vfiomond.histogram import Histogram, merge, slot_of
from vfiomond.metricsutil import cstr, histogram_family_add

log = logging.getLogger("vfiomond")

SOURCE = "resets.c"
PROBES = ("resets",)
EVENTS = "reset_events"  # the area's ring buffer

# RESET_OP_* and RESET_M_* of bpf/resets.c; the method names are those of the
# kernel's pci_reset_fn_methods (sysfs reset_method, 5.15+).
OPERATIONS = {1: "function", 2: "bus"}
METHODS = {0: "none", 1: "device_specific", 2: "acpi", 3: "flr", 4: "af_flr", 5: "pm", 6: "bus", 7: "cxl_bus"}

# Results that are no failure of the device: "no_method", ENOTTY before any method
# was entered (pci_try_reset_function on a device without one: every vfio-pci open of
# such a device), and EAGAIN (busy: pci_dev_trylock failed).  ENOTTY after a method
# was entered is one: every method tried failed, e.g. a device not ready after its FLR
# or a link that did not come back after a bus reset (pci_dev_wait,
# pci_bridge_wait_for_secondary_bus: "Data Link Layer Link Active not set").
NOT_FAILURES = frozenset({"ok", "no_method", "EAGAIN"})

# struct reset_event: duration_ns u64, ret s32, pid u32, op u8, method u8, pad[6],
# device char[16], comm char[16].
_EVENT = struct.Struct("<QiIBB6x16s16s")


class Reset(NamedTuple):
    device: str  # PCI address; "" when the kernel read failed
    operation: str  # "function" or "bus"
    method: str  # METHODS, "none" when no method was entered (or "bus" for a bus reset)
    error: int  # 0, or the errno the reset returned
    duration_ns: int
    pid: int  # the process that reset it
    comm: str


def parse_event(raw: bytes) -> Reset:
    """A reset_events record; ValueError if it is too short."""
    if len(raw) < _EVENT.size:
        raise ValueError("reset record of %d bytes, want %d" % (len(raw), _EVENT.size))
    duration, ret, pid, op, method, device, comm = _EVENT.unpack_from(raw)
    return Reset(cstr(device), OPERATIONS.get(op, "unknown"), METHODS.get(method, "unknown"),
                 -ret if ret < 0 else 0, duration, pid, cstr(comm))


def result_name(r: Reset) -> str:
    """"ok", "no_method" (ENOTTY with no method entered), or the errno's name ("ENOTTY")."""
    if r.error == 0:
        return "ok"
    if r.error == errno.ENOTTY and r.method == "none":
        return "no_method"
    return errno.errorcode.get(r.error, str(r.error))


def config_answers(device: str, sysfs: str = "/sys") -> Optional[bool]:
    """Whether the device's config space answers: its vendor ID is not 0xffff.
    None when it cannot be read (the device is gone).  Read from
    /sys/bus/pci/devices/BDF/config, which the kernel reads from the device."""
    try:
        with open(os.path.join(sysfs, "bus/pci/devices", device, "config"), "rb") as f:
            head = f.read(2)
    except OSError:
        return None
    if len(head) < 2:
        return None
    return struct.unpack("<H", head)[0] != 0xFFFF


def read(tables) -> None:
    """The area's series come from its records (ResetWatch), not from a map read."""
    return None


def families(snap, attached: Set[str]) -> Iterator:
    return iter(())


ResetLabels = Tuple[str, str, str]  # device, operation, method


class ResetWatch:
    """Counts the resets of VFIO devices from the area's records (``on_reset``, the
    main loop) for the scrape (``families``, the HTTP threads).

    ``is_vfio_device(bdf)``: the device is bound to a VFIO driver now.
    ``devices()``: the PCI addresses of the VFIO devices, whose unresponsive count is
    exported from 0 on (so that a rule's increase() sees the first one).
    ``sink``: an alerts.AlertSink for the journal entries.
    """

    def __init__(self, is_vfio_device: Callable[[str], bool], devices: Callable[[], Iterable[str]], sink,
                 sysfs: str = "/sys", answers: Callable[[str], Optional[bool]] = None):
        self._is_vfio = is_vfio_device
        self._devices = devices
        self._sink = sink
        self._answers = answers or (lambda device: config_answers(device, sysfs))
        self._lock = threading.Lock()
        self.results: Dict[Tuple[str, str, str, str], int] = {}  # (device, operation, method, result) -> resets
        self.durations: Dict[ResetLabels, Histogram] = {}
        self.unresponsive: Dict[str, int] = {}  # device -> resets after which it did not answer
        self.other_devices = 0  # resets of devices not bound to a VFIO driver, left out

    def on_reset(self, r: Reset) -> None:
        if not r.device or not self._is_vfio(r.device):
            self.other_devices += 1
            return
        answered = self._answers(r.device)
        result = result_name(r)
        labels = (r.device, r.operation, r.method)
        with self._lock:
            key = labels + (result,)
            self.results[key] = self.results.get(key, 0) + 1
            h = Histogram({slot_of(r.duration_ns): 1}, r.duration_ns)
            self.durations[labels] = merge(self.durations[labels], h) if labels in self.durations else h
            if answered is False:
                self.unresponsive[r.device] = self.unresponsive.get(r.device, 0) + 1
        what = "device %s: %s reset (method %s) by %s[%d] in %.1f ms: %s" % (
            r.device, r.operation, r.method, r.comm, r.pid, r.duration_ns / 1e6, result)
        if answered is False:
            what += "; its config space reads all ones afterwards: the device does not answer"
        if answered is False or result not in NOT_FAILURES:
            log.warning("%s", what)
            self._alert(r, result, answered)
        else:
            log.info("%s", what)

    def _alert(self, r: Reset, result: str, answered: Optional[bool]) -> None:
        from vfiomond.alerts import DEVICE_RESET_FAILED

        if answered is False:
            message = "VFIO device %s does not answer after a %s reset by %s[%d]" % (r.device, r.operation, r.comm, r.pid)
        else:
            message = "%s reset of VFIO device %s by %s[%d] failed: %s" % (
                r.operation.capitalize(), r.device, r.comm, r.pid, result)
        self._sink.alert(DEVICE_RESET_FAILED, message, DEVICE=r.device, OPERATION=r.operation, METHOD=r.method,
                         RESULT=result, ANSWERS=int(bool(answered)) if answered is not None else "unknown",
                         DURATION_MS="%.1f" % (r.duration_ns / 1e6), PID=r.pid, COMM=r.comm)

    def forget_device(self, device: str) -> None:
        """A device that left its VFIO driver leaves no series."""
        with self._lock:
            for table in (self.results, self.durations):
                for key in [k for k in table if k[0] == device]:
                    del table[key]
            self.unresponsive.pop(device, None)

    def families(self) -> Iterator:
        with self._lock:
            results, durations, unresponsive = dict(self.results), dict(self.durations), dict(self.unresponsive)
        total = CounterMetricFamily(
            "vfiomond_device_resets", "Resets of the VFIO device by the PCI core (pci_try_reset_function, "
            "pci_reset_function, __pci_reset_function_locked: operation function; pci_reset_bus: operation bus), "
            "by the method that did it (sysfs reset_method names; none: no method entered) and result (ok, "
            "no_method: ENOTTY before any method, or the errno).",
            labels=["device", "operation", "method", "result"])
        for labels, n in sorted(results.items()):
            total.add_metric(list(labels), n)
        yield total
        hist = HistogramMetricFamily(
            "vfiomond_device_reset_duration_seconds", "Time the PCI core took to reset the VFIO device, "
            "including the wait for it to answer again.", labels=["device", "operation", "method"])
        for labels, h in sorted(durations.items()):
            histogram_family_add(hist, list(labels), h)
        yield hist
        dead = CounterMetricFamily(
            "vfiomond_device_reset_unresponsive", "Resets of the VFIO device after which its config space read all "
            "ones (vendor ID 0xffff): the device did not come back.", labels=["device"])
        for device in sorted(set(self._devices()) | set(unresponsive)):
            dead.add_metric([device], unresponsive.get(device, 0))
        yield dead
