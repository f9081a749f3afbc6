"""The kernel's types as BTF describes them: how many arguments a function takes,
where a struct member sits.

A fentry/fexit program attaches by BTF id, and its return value sits after the
arguments in the context (ctx[nargs]); the BPF programs read struct members at
offsets from the same BTF (vfiomond.layout).  Source: the kernel's BTF
(/sys/kernel/btf/vmlinux, CONFIG_DEBUG_INFO_BTF, 5.2+; module split BTF 5.11+;
the format is include/uapi/linux/btf.h, whose kinds 1..19 run to
BTF_KIND_ENUM64, 6.0).

One pass over the ~130k types records where each header sits (4 bytes a type);
a lookup by name is a byte search for the name's string offset, so nothing else
is decoded that was not asked for.
"""

import functools
import os
import struct
from array import array
from bisect import bisect_left, bisect_right
from typing import Dict, Iterable, Iterator, Optional, Tuple

BTF_DIR = "/sys/kernel/btf"
VMLINUX_BTF = BTF_DIR + "/vmlinux"
BTF_MAGIC = 0xEB9F

KIND_FUNC = 12
KIND_FUNC_PROTO = 13

# Bytes that follow a type's 12-byte header, by kind: a fixed part, and a part per
# vlen member.
_FIXED = {1: 4, 3: 12, 14: 4, 17: 4}  # INT, ARRAY, VAR, DECL_TAG
_PER_MEMBER = {4: 12, 5: 12, 6: 8, 13: 8, 15: 12, 19: 12}  # STRUCT, UNION, ENUM, FUNC_PROTO, DATASEC, ENUM64
_FIXED_BY_KIND = [_FIXED.get(kind, 0) for kind in range(32)]
_PER_MEMBER_BY_KIND = [_PER_MEMBER.get(kind, 0) for kind in range(32)]


class BTFError(Exception):
    """BTF that cannot be read or parsed (a one-line reason)."""


def module_arities(wanted: Dict[str, Iterable[str]], btf_dir: str = BTF_DIR) -> Dict[str, int]:
    """``{function: number of arguments}`` for those of ``wanted`` that BTF lists
    as functions (a variadic one's ``...`` is not counted), by where they live:
    ``{"": vmlinux functions, module: its functions}``, a module's read from its
    split BTF (<btf_dir>/<module>, 5.11+) over vmlinux's.  A module without BTF
    (built without it, or gone) lends none of its functions.  Raises BTFError when
    vmlinux's BTF (<btf_dir>/vmlinux) cannot be read or is not BTF."""
    out: Dict[str, int] = {}
    base = vmlinux(os.path.join(btf_dir, "vmlinux"))
    for module, names in wanted.items():
        if not module:
            out.update(base.arities(names))
            continue
        try:
            out.update(Types.read(os.path.join(btf_dir, module), base).arities(names))
        except BTFError:
            continue
    return out


def parse_arities(data: bytes, wanted: Iterable[str]) -> Dict[str, int]:
    """As module_arities for vmlinux, from the bytes of one (base, not split) BTF blob."""
    return Types(data).arities(wanted)


def vmlinux(path: str = VMLINUX_BTF) -> "Types":
    """The kernel's BTF, read once for everything that asks while the daemon starts
    or follows a module load (hook arities, struct layout, module facts): a parse
    costs seconds in a slow guest.  ``release_vmlinux()`` drops it (6 MiB) after.
    Raises BTFError."""
    return _read_types(path)


@functools.lru_cache(maxsize=1)
def _read_types(path: str) -> "Types":
    return Types.read(path)


def release_vmlinux() -> None:
    _read_types.cache_clear()


def _read(path: str) -> bytes:
    try:
        with open(path, "rb") as f:
            return f.read()
    except OSError as e:
        raise BTFError("%s: %s" % (path, e.strerror or e)) from None


def _sections(data: bytes) -> Tuple[int, int, int, int]:
    """(start and end of the type section, start and length of the string section)
    of a BTF blob, checked against its header."""
    if len(data) < 24:
        raise BTFError("BTF too short (%d bytes)" % len(data))
    magic, _version, _flags, hdr_len = struct.unpack_from("<HBBI", data, 0)
    if magic != BTF_MAGIC:
        raise BTFError("not BTF (magic %#x), or not this machine's byte order" % magic)
    type_off, type_len, str_off, str_len = struct.unpack_from("<IIII", data, 8)
    types, strings = hdr_len + type_off, hdr_len + str_off
    if types + type_len > len(data) or strings + str_len > len(data):
        raise BTFError("BTF sections run past its end")
    return types, types + type_len, strings, str_len


def _type_offsets(data: bytes, pos: int, end: int) -> "array[int]":
    """Offset of each type's header in data[pos:end], in type id order: the one
    pass over every type (~130k in a distribution kernel), so kept tight."""
    offsets = array("I")
    add = offsets.append
    unpack = struct.Struct("<I").unpack_from
    fixed, per_member = _FIXED_BY_KIND, _PER_MEMBER_BY_KIND
    while pos < end:
        add(pos)
        info = unpack(data, pos + 4)[0]
        kind = (info >> 24) & 0x1F
        pos += 12 + fixed[kind] + per_member[kind] * (info & 0xFFFF)
    if pos != end:
        raise BTFError("BTF type section does not parse (unknown kind?)")
    return offsets


def _arguments(data: bytes, params: int, vlen: int) -> int:
    """A FUNC_PROTO's parameters, less a trailing variadic one (name 0, type 0)."""
    if vlen and struct.unpack_from("<II", data, params + 8 * (vlen - 1)) == (0, 0):
        return vlen - 1
    return vlen


# Kinds a member's type passes through before it has a size of its own.
KIND_INT, KIND_PTR, KIND_ARRAY, KIND_STRUCT, KIND_UNION, KIND_ENUM = 1, 2, 3, 4, 5, 6
KIND_FWD, KIND_TYPEDEF, KIND_VOLATILE, KIND_CONST, KIND_RESTRICT = 7, 8, 9, 10, 11
KIND_TYPE_TAG, KIND_ENUM64 = 18, 19
_QUALIFIERS = {KIND_TYPEDEF, KIND_VOLATILE, KIND_CONST, KIND_RESTRICT, KIND_TYPE_TAG}
POINTER_SIZE = struct.calcsize("P")


class Types:
    """The type section of one BTF blob, read on demand: a struct's size, the byte
    offset and size of a member path (``dev.kobj.name``, ``rlim[8].rlim_cur``), an
    enumerator's value.  ``base``: the vmlinux Types a module's split BTF
    (/sys/kernel/btf/<module>, 5.11+, 36e68442d114) continues; its type ids and
    string offsets follow the base's."""

    def __init__(self, data: bytes, base: Optional["Types"] = None):
        self.types, self.types_end, self.strings, self.str_len = _sections(data)
        self.data, self.base = data, base
        self.first_id = base.first_id + len(base.pos) if base else 1
        self.str_base = base.str_base + base.str_len if base else 0
        # type id - first_id -> offset of its header in data (ascending)
        self.pos = _type_offsets(data, self.types, self.types_end)

    @classmethod
    def read(cls, path: str, base: Optional["Types"] = None) -> "Types":
        return cls(_read(path), base)

    def _header(self, type_id: int) -> Tuple["Types", int, int, int, int, int]:
        """(blob, header offset, kind, vlen, kind_flag, size_or_type) of a type id."""
        if type_id < self.first_id:
            if self.base is None:
                raise BTFError("BTF type id %d out of range" % type_id)
            return self.base._header(type_id)
        pos = self.pos[type_id - self.first_id]
        _name, info, size_or_type = struct.unpack_from("<III", self.data, pos)
        return self, pos, (info >> 24) & 0x1F, info & 0xFFFF, info >> 31, size_or_type

    def name(self, off: int) -> str:
        if off < self.str_base:
            return self.base.name(off)
        start = self.strings + off - self.str_base
        return self.data[start:self.data.index(b"\0", start, self.strings + self.str_len)].decode()

    def _string_offset(self, name: str) -> Optional[int]:
        """Offset of ``name`` in the string sections (BTF stores each string once)."""
        key = name.encode() + b"\0"
        if self.data.startswith(key, self.strings):  # a split BTF's first string has no "" before it
            return self.str_base
        own = self.data.find(b"\0" + key, self.strings, self.strings + self.str_len)
        if own >= 0:
            return own + 1 - self.strings + self.str_base
        return self.base._string_offset(name) if self.base else None

    def _word_hits(self, word: int) -> Iterator[int]:
        """Offsets in this blob's type section where the 4-byte word ``word`` sits,
        4-aligned as every field there is: a byte search in C, so a lookup costs
        no Python pass over every type.  Callers check what each hit is."""
        key = struct.pack("<I", word)
        hit = self.data.find(key, self.types, self.types_end)
        while hit >= 0:
            if (hit - self.types) % 4 == 0:
                yield hit
            hit = self.data.find(key, hit + 1, self.types_end)

    def _words_at_headers(self, word: int) -> Iterator[int]:
        """Indexes in ``pos`` (type id - first_id) of this blob's types whose first
        word (the name offset) is ``word``."""
        for hit in self._word_hits(word):
            i = bisect_left(self.pos, hit)
            if i < len(self.pos) and self.pos[i] == hit:
                yield i

    def _find_all(self, name: str, kinds) -> Iterator[int]:
        """Type ids named ``name`` of one of ``kinds``, this blob's first, then its base's."""
        off = self._string_offset(name)
        if off is not None:
            for i in self._words_at_headers(off):
                info = struct.unpack_from("<I", self.data, self.pos[i] + 4)[0]
                if (info >> 24) & 0x1F in kinds:
                    yield self.first_id + i
        if self.base:
            yield from self.base._find_all(name, kinds)

    def find(self, name: str, kinds=(KIND_STRUCT, KIND_UNION)) -> Optional[int]:
        """Type id of the complete struct/union ``name`` in this blob or its base."""
        return next(self._find_all(name, kinds), None)

    def arities(self, wanted: Iterable[str]) -> Dict[str, int]:
        """``{function: number of arguments}`` of the BTF_KIND_FUNCs named in
        ``wanted``; a name whose functions disagree (two static functions of one
        name) is left out: a hook could not know which one it sits on."""
        out: Dict[str, int] = {}
        for name in set(wanted):
            counts = set()
            for func in self._find_all(name, (KIND_FUNC,)):
                proto = self._header(func)[5]
                blob, pos, kind, vlen, _flag, _ret = self._header(proto)
                if kind == KIND_FUNC_PROTO:
                    counts.add(_arguments(blob.data, pos + 12, vlen))
            if len(counts) == 1:
                out[name] = counts.pop()
        return out

    def resolve(self, type_id: int) -> int:
        """The type under typedefs and qualifiers."""
        for _ in range(32):
            _blob, _pos, kind, _vlen, _flag, next_id = self._header(type_id)
            if kind not in _QUALIFIERS:
                return type_id
            type_id = next_id
        raise BTFError("BTF type %d: typedef chain too long" % type_id)

    def size(self, type_id: int) -> int:
        """Bytes of a type (sizeof)."""
        type_id = self.resolve(type_id)
        blob, pos, kind, _vlen, _flag, size_or_type = self._header(type_id)
        if kind == KIND_PTR:
            return POINTER_SIZE
        if kind == KIND_ARRAY:
            elem, _index, count = struct.unpack_from("<III", blob.data, pos + 12)
            return count * self.size(elem)
        if kind in (KIND_INT, KIND_STRUCT, KIND_UNION, KIND_ENUM, KIND_ENUM64):
            return size_or_type
        raise BTFError("BTF type %d (kind %d) has no size" % (type_id, kind))

    def _member(self, type_id: int, name: str) -> Optional[Tuple[int, int]]:
        """(byte offset, type id) of member ``name`` of a struct/union, looking into
        anonymous members; None if it has none of that name."""
        blob, pos, kind, vlen, kind_flag, _size = self._header(self.resolve(type_id))
        if kind not in (KIND_STRUCT, KIND_UNION):
            raise BTFError("BTF type %d is not a struct or union" % type_id)
        for i in range(vlen):
            name_off, member_type, offset = struct.unpack_from("<III", blob.data, pos + 12 + 12 * i)
            bits = offset & 0xFFFFFF if kind_flag else offset
            if name_off == 0:
                inner = self._member(member_type, name) if self._header(self.resolve(member_type))[2] in (
                    KIND_STRUCT, KIND_UNION) else None
                if inner:
                    return bits // 8 + inner[0], inner[1]
            elif self.name(name_off) == name:
                if kind_flag and offset >> 24:
                    raise BTFError("member %s is a bitfield" % name)
                return bits // 8, member_type
        return None

    def member(self, struct_name: str, path: str) -> Tuple[int, int]:
        """(byte offset, size in bytes) of ``path`` in struct ``struct_name``, as
        __builtin_offsetof(struct s, path) and sizeof(((struct s *)0)->path) give
        them.  Raises BTFError if the struct or a member is missing."""
        type_id = self.find(struct_name)
        if type_id is None:
            raise BTFError("no struct %s in BTF" % struct_name)
        offset = 0
        for part in path.split("."):
            name, _, index = part.partition("[")
            found = self._member(type_id, name)
            if found is None:
                raise BTFError("struct %s has no member %s" % (struct_name, path))
            offset += found[0]
            type_id = found[1]
            if index:
                blob, pos, kind, _vlen, _flag, _size = self._header(self.resolve(type_id))
                if kind != KIND_ARRAY:
                    raise BTFError("%s.%s is not an array" % (struct_name, name))
                elem, _index_type, count = struct.unpack_from("<III", blob.data, pos + 12)
                i = int(index.rstrip("]"))
                if i >= count:
                    raise BTFError("%s.%s has %d elements, not %d" % (struct_name, name, count, i + 1))
                offset += i * self.size(elem)
                type_id = elem
        return offset, self.size(type_id)

    def struct_size(self, struct_name: str) -> int:
        type_id = self.find(struct_name)
        if type_id is None:
            raise BTFError("no struct %s in BTF" % struct_name)
        return self.size(type_id)

    def enumerator(self, name: str) -> int:
        """Value of enumerator ``name`` (an ENUM's; 32-bit, signed when the enum is)."""
        off = self._string_offset(name)
        for hit in self._word_hits(off) if off is not None else ():
            # The enumerators (name offset, value) follow their ENUM's 12-byte header.
            header = self.pos[bisect_right(self.pos, hit) - 1]
            info = struct.unpack_from("<I", self.data, header + 4)[0]
            inside = hit - header - 12
            if (info >> 24) & 0x1F == KIND_ENUM and inside >= 0 and inside % 8 == 0 and inside // 8 < info & 0xFFFF:
                return struct.unpack_from("<i" if info >> 31 else "<I", self.data, hit + 4)[0]
        if self.base:
            return self.base.enumerator(name)
        raise BTFError("no enumerator %s in BTF" % name)
