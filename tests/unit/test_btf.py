"""vfiomond.btf: function argument counts from BTF (include/uapi/linux/btf.h)."""

import os
import struct

import pytest

from vfiomond import btf


def blob(types, strings):
    """A BTF blob: 24-byte header, then the type section and the string section."""
    type_bytes = b"".join(types)
    return struct.pack("<HBBIIIII", btf.BTF_MAGIC, 1, 0, 24, 0, len(type_bytes), len(type_bytes), len(strings)) \
        + type_bytes + strings


def type_header(name_off, kind, vlen, size_or_type):
    return struct.pack("<III", name_off, (kind << 24) | vlen, size_or_type)


STRINGS = b"\0int\0f\0g\0x\0y\0s\0"
INT, F, G, X, Y, S = 1, 5, 7, 9, 11, 13


def sample():
    return blob([
        type_header(INT, 1, 0, 4) + struct.pack("<I", 32),  # 1: int
        type_header(S, 4, 2, 8) + struct.pack("<III", X, 1, 0) + struct.pack("<III", Y, 1, 32),  # 2: struct s
        type_header(0, 13, 2, 1) + struct.pack("<II", X, 1) + struct.pack("<II", Y, 2),  # 3: int (int x, struct s y)
        type_header(F, 12, 0, 3),  # 4: f
        type_header(0, 13, 2, 1) + struct.pack("<II", X, 1) + struct.pack("<II", 0, 0),  # 5: int (int x, ...)
        type_header(G, 12, 0, 5),  # 6: g
    ], STRINGS)


def test_function_argument_counts():
    assert btf.parse_arities(sample(), {"f", "g", "missing"}) == {"f": 2, "g": 1}


def test_only_asked_functions_are_kept():
    assert btf.parse_arities(sample(), {"g"}) == {"g": 1}


def test_not_btf_is_an_error():
    with pytest.raises(btf.BTFError, match="not BTF"):
        btf.parse_arities(b"\0" * 64, {"f"})
    with pytest.raises(btf.BTFError, match="too short"):
        btf.parse_arities(b"", {"f"})


def test_truncated_btf_is_an_error():
    data = sample()
    with pytest.raises(btf.BTFError):
        btf.parse_arities(data[:-20], {"f"})


def test_unreadable_file_is_an_error(tmp_path):
    with pytest.raises(btf.BTFError, match="nope"):
        btf.function_arities({"f"}, str(tmp_path / "nope"))


@pytest.mark.skipif(not os.access(btf.VMLINUX_BTF, os.R_OK), reason="this kernel exposes no BTF")
def test_the_running_kernel():
    arities = btf.function_arities({"do_wp_page", "wake_up_new_task", "_printk", "not_a_kernel_function"})
    assert arities.get("do_wp_page") == 1 and arities.get("wake_up_new_task") == 1
    assert "not_a_kernel_function" not in arities
    if "_printk" in arities:  # int _printk(const char *fmt, ...) from 5.15
        assert arities["_printk"] == 1
