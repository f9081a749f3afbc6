"""Kernel functions as BTF describes them: which exist, and how many arguments each takes.

A fentry/fexit program attaches by BTF id, and its return value sits after the
arguments in the context (ctx[nargs]): both come from the kernel's BTF
(/sys/kernel/btf/vmlinux, CONFIG_DEBUG_INFO_BTF, 5.2+; the format is
include/uapi/linux/btf.h, whose kinds 1..19 run to BTF_KIND_ENUM64, 6.0).

Only BTF_KIND_FUNC names that were asked for are kept, so memory follows the
hooks, not the ~100k types of a distribution kernel.
"""

import struct
from typing import Dict, Iterable, Optional

VMLINUX_BTF = "/sys/kernel/btf/vmlinux"
BTF_MAGIC = 0xEB9F

KIND_FUNC = 12
KIND_FUNC_PROTO = 13

# Bytes that follow a type's 12-byte header: a fixed part, and a part per vlen member.
_FIXED = {1: 4, 3: 12, 14: 4, 17: 4}  # INT, ARRAY, VAR, DECL_TAG
_PER_MEMBER = {4: 12, 5: 12, 6: 8, 13: 8, 15: 12, 19: 12}  # STRUCT, UNION, ENUM, FUNC_PROTO, DATASEC, ENUM64


class BTFError(Exception):
    """BTF that cannot be read or parsed (a one-line reason)."""


def function_arities(wanted: Iterable[str], path: str = VMLINUX_BTF) -> Dict[str, int]:
    """``{function: number of arguments}`` for those of ``wanted`` that BTF
    lists as functions (a variadic one's ``...`` is not counted).  Raises
    BTFError when ``path`` cannot be read or is not BTF."""
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError as e:
        raise BTFError("%s: %s" % (path, e.strerror or e)) from None
    return parse_arities(data, set(wanted))


def parse_arities(data: bytes, wanted: set) -> Dict[str, int]:
    """As function_arities, from the bytes of one (base, not split) BTF blob."""
    if len(data) < 24:
        raise BTFError("BTF too short (%d bytes)" % len(data))
    magic, _version, _flags, hdr_len = struct.unpack_from("<HBBI", data, 0)
    if magic != BTF_MAGIC:
        raise BTFError("not BTF (magic %#x), or not this machine's byte order" % magic)
    type_off, type_len, str_off, str_len = struct.unpack_from("<IIII", data, 8)
    types = hdr_len + type_off
    strings = hdr_len + str_off
    if types + type_len > len(data) or strings + str_len > len(data):
        raise BTFError("BTF sections run past its end")
    wanted_names = {name.encode(): name for name in wanted}
    funcs: Dict[str, int] = {}  # name -> FUNC_PROTO type id
    protos: Dict[int, int] = {}  # FUNC_PROTO type id -> argument count
    pos, end, type_id = types, types + type_len, 1
    unpack = struct.Struct("<III").unpack_from
    while pos < end:
        name_off, info, size_or_type = unpack(data, pos)
        kind = (info >> 24) & 0x1F
        vlen = info & 0xFFFF
        if kind == KIND_FUNC:
            name = _string(data, strings, str_len, name_off)
            if name in wanted_names:
                funcs[wanted_names[name]] = size_or_type
        elif kind == KIND_FUNC_PROTO:
            protos[type_id] = _arguments(data, pos + 12, vlen)
        pos += 12 + _FIXED.get(kind, 0) + _PER_MEMBER.get(kind, 0) * vlen
        type_id += 1
    if pos != end:
        raise BTFError("BTF type section does not parse (unknown kind?)")
    return {name: protos[proto] for name, proto in funcs.items() if proto in protos}


def _arguments(data: bytes, params: int, vlen: int) -> int:
    """A FUNC_PROTO's parameters, less a trailing variadic one (name 0, type 0)."""
    if vlen and struct.unpack_from("<II", data, params + 8 * (vlen - 1)) == (0, 0):
        return vlen - 1
    return vlen


def _string(data: bytes, strings: int, str_len: int, off: int) -> Optional[bytes]:
    if off >= str_len:
        return None
    start = strings + off
    return data[start:data.index(b"\0", start, strings + str_len)]
