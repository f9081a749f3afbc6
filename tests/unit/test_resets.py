"""Resets of VFIO devices: the area's records, the device check after a reset, the
series and the journal entries (vfiomond/resets.py).  The records' layout is
struct reset_event of bpf/resets.c; the lab (scenario device-health) checks the
whole path on real kernels."""

import errno
import re
import struct

import pytest

from vfiomond import resets
from vfiomond.alerts import DEVICE_RESET_FAILED

BDF = "0000:01:00.0"


def record(device=BDF, op=1, method=3, ret=0, duration_ns=2_500_000, pid=4242, comm=b"qemu-system-x86"):
    return struct.pack("<QiIBB6x16s16s", duration_ns, ret, pid, op, method, device.encode(), comm)


def test_record_layout_is_the_c_struct():
    source = open(resets.__file__.replace("vfiomond/resets.py", "bpf/resets.c")).read()
    body = re.search(r"struct reset_event \{(.*?)\};", source, re.S).group(1)
    fields = [line.split(";")[0].split()[-1] for line in body.strip().splitlines() if ";" in line]
    assert fields == ["duration_ns", "ret", "pid", "op", "method", "pad[6]", "device[DEVICE_LEN]", "comm[16]"]
    assert len(record()) == 56


def test_parse_event():
    r = resets.parse_event(record(ret=-errno.ENOTTY, method=0, op=2))
    assert r == resets.Reset(BDF, "bus", "none", errno.ENOTTY, 2_500_000, 4242, "qemu-system-x86")


def test_a_short_record_is_refused():
    with pytest.raises(ValueError):
        resets.parse_event(record()[:40])


def test_method_and_operation_names_follow_the_kernel_table():
    source = open(resets.__file__.replace("vfiomond/resets.py", "bpf/resets.c")).read()
    for name, value in re.findall(r"#define RESET_M_(\w+) (\d+)", source):
        assert resets.METHODS[int(value)] == name.lower()
    for name, value in re.findall(r"#define RESET_OP_(\w+) (\d+)", source):
        assert resets.OPERATIONS[int(value)] == name.lower()


def reset(error=0, method="flr", operation="function"):
    return resets.Reset(BDF, operation, method, error, 1, 1, "qemu")


def test_result_name():
    assert resets.result_name(reset()) == "ok"
    assert resets.result_name(reset(errno.ENOTTY, "none")) == "no_method"
    # every method tried failed (a device not ready after its FLR, a link that stayed down)
    assert resets.result_name(reset(errno.ENOTTY)) == "ENOTTY"
    assert resets.result_name(reset(errno.ENOTTY, "bus", "bus")) == "ENOTTY"
    assert resets.result_name(reset(4095)) == "4095"


def config(tmp_path, head: bytes):
    d = tmp_path / "bus/pci/devices" / BDF
    d.mkdir(parents=True)
    (d / "config").write_bytes(head + b"\0" * 62)
    return str(tmp_path)


def test_config_answers(tmp_path):
    assert resets.config_answers(BDF, config(tmp_path, b"\xf4\x1a")) is True


def test_all_ones_is_a_device_that_does_not_answer(tmp_path):
    assert resets.config_answers(BDF, config(tmp_path, b"\xff\xff")) is False


def test_a_device_gone_is_unknown(tmp_path):
    assert resets.config_answers(BDF, str(tmp_path)) is None


class Sink:
    def __init__(self):
        self.sent = []

    def alert(self, kind, message, **fields):
        self.sent.append((kind, message, fields))
        return True


def watch(answers=True, vfio=(BDF,)):
    sink = Sink()
    return resets.ResetWatch(lambda bdf: bdf in vfio, lambda: list(vfio), sink, answers=lambda bdf: answers), sink


def samples(w):
    return {(s.name, tuple(sorted(s.labels.items()))): s.value for fam in w.families() for s in fam.samples}


def test_resets_of_vfio_devices_are_counted_by_method_and_result():
    w, sink = watch()
    for _ in range(2):
        w.on_reset(resets.parse_event(record()))
    w.on_reset(resets.parse_event(record(op=2, method=6, duration_ns=300_000_000)))
    got = samples(w)
    assert got[("vfiomond_device_resets_total", (("device", BDF), ("method", "flr"), ("operation", "function"),
                                                  ("result", "ok")))] == 2
    assert got[("vfiomond_device_resets_total", (("device", BDF), ("method", "bus"), ("operation", "bus"),
                                                  ("result", "ok")))] == 1
    assert got[("vfiomond_device_reset_duration_seconds_count", (("device", BDF), ("method", "flr"),
                                                                 ("operation", "function")))] == 2
    assert got[("vfiomond_device_reset_duration_seconds_sum", (("device", BDF), ("method", "bus"),
                                                               ("operation", "bus")))] == pytest.approx(0.3)
    assert got[("vfiomond_device_reset_unresponsive_total", (("device", BDF),))] == 0
    assert sink.sent == []


def test_resets_of_other_devices_are_left_out():
    w, _ = watch(vfio=())
    w.on_reset(resets.parse_event(record()))
    w.on_reset(resets.parse_event(record(device="")))
    assert w.other_devices == 2
    assert not [k for k in samples(w) if k[0] == "vfiomond_device_resets_total"]


def test_a_device_that_does_not_answer_is_counted_and_alerted():
    w, sink = watch(answers=False)
    w.on_reset(resets.parse_event(record()))
    assert samples(w)[("vfiomond_device_reset_unresponsive_total", (("device", BDF),))] == 1
    (kind, message, fields), = sink.sent
    assert kind is DEVICE_RESET_FAILED and "does not answer" in message
    assert fields["DEVICE"] == BDF and fields["ANSWERS"] == 0 and fields["METHOD"] == "flr" and fields["PID"] == 4242


def test_a_failed_reset_is_alerted_but_no_method_or_a_busy_device_is_not():
    w, sink = watch()
    w.on_reset(resets.parse_event(record(ret=-errno.ENOTTY, method=0)))
    w.on_reset(resets.parse_event(record(ret=-errno.EAGAIN, method=0)))
    assert sink.sent == []
    w.on_reset(resets.parse_event(record(ret=-errno.EIO)))
    w.on_reset(resets.parse_event(record(ret=-errno.ENOTTY, op=2, method=6)))
    (_, message, fields), (_, bus_message, bus_fields) = sink.sent
    assert fields["RESULT"] == "EIO" and fields["ANSWERS"] == 1 and "failed: EIO" in message
    assert bus_fields["RESULT"] == "ENOTTY" and bus_message.startswith("Bus reset")


def test_a_device_that_left_vfio_leaves_no_series():
    w, _ = watch()
    w.on_reset(resets.parse_event(record()))
    w.forget_device(BDF)
    w._devices = lambda: []
    assert all(fam.samples == [] for fam in w.families())


def test_every_vfio_device_has_an_unresponsive_count_from_0_on():
    w, _ = watch()
    assert samples(w)[("vfiomond_device_reset_unresponsive_total", (("device", BDF),))] == 0
