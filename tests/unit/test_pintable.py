"""pintable.PinTable: how the daemon reads bpf/common.h's pin_maps (BCC tables faked
with ctypes structures of the same layout)."""

import ctypes

from vfiomond.pins import PAGE, sample_slots
from vfiomond.pintable import PinTable

VADDR, IOVA, SPACE = 0x7F0000000000, 0x100000, 0xFFFF888000001000


class Key(ctypes.Structure):
    _fields_ = [("space", ctypes.c_ulonglong), ("iova", ctypes.c_ulonglong)]


def value_type(samples):
    """struct pin_map of bpf/common.h for PIN_SAMPLES = samples."""
    slots = samples + 1

    class Value(ctypes.Structure):
        _fields_ = [("seq", ctypes.c_ulonglong), ("vaddr", ctypes.c_ulonglong), ("size", ctypes.c_ulonglong),
                    ("pid", ctypes.c_uint), ("complete", ctypes.c_ubyte), ("backend", ctypes.c_ubyte),
                    ("pad", ctypes.c_ubyte * 2), ("filled", ctypes.c_ulonglong * ((slots + 63) // 64)),
                    ("pfn", ctypes.c_ulonglong * slots)]
    return Value


class Span(ctypes.Structure):
    _fields_ = [("space", ctypes.c_ulonglong), ("iova", ctypes.c_ulonglong), ("vaddr", ctypes.c_ulonglong),
                ("size", ctypes.c_ulonglong), ("seq", ctypes.c_ulonglong), ("backend", ctypes.c_ulonglong)]


class BccTable:
    """(key, value) pairs, as BCC's items() gives them; lookups and deletes by key."""

    Key = Key

    def __init__(self, pairs):
        self.pairs = list(pairs)

    def items(self):
        return list(self.pairs)

    def _find(self, key):
        for i, (k, _) in enumerate(self.pairs):
            if bytes(k) == bytes(key):
                return i
        raise KeyError(key)

    def __getitem__(self, key):
        return self.pairs[self._find(key)][1]

    def pop(self, key, default=None):
        try:
            return self.pairs.pop(self._find(key))[1]
        except KeyError:
            return default


def counter(n):
    return lambda: n


def test_a_backends_complete_entries_with_their_filled_slots_and_no_stale_ones():
    samples = 64
    Value = value_type(samples)
    size = 1 << 30
    full = Value(seq=5, vaddr=VADDR, size=size, pid=10, complete=1, backend=1)
    slots = sample_slots(size, samples)
    for slot in (0, 63, 64):  # the second word of the bitmap holds the last page's slot
        full.filled[slot // 64] |= 1 << (slot % 64)
        full.pfn[slot] = 0x4000 + slot
    making = Value(seq=6, vaddr=VADDR, size=PAGE, pid=10, complete=0, backend=1)
    stale = Value(seq=2, vaddr=VADDR, size=PAGE, pid=11, complete=1, backend=1)
    iommufd = Value(seq=8, vaddr=VADDR, size=PAGE, pid=12, complete=1, backend=2)
    pin_maps = BccTable([(Key(SPACE, IOVA), full), (Key(SPACE, 0x9000), making), (Key(0xAA, 0), stale),
                         (Key(SPACE, 0xA000), iommufd)])
    space_stale = BccTable([(ctypes.c_ulonglong(0xAA), ctypes.c_ulonglong(3))])  # its entries before 3 prove nothing
    tables = {"pin_maps": pin_maps, "pin_space_stale": space_stale}
    table = PinTable("type1", tables.get, samples, kept=lambda: True, outside=counter(4))
    [m] = table.mappings()
    assert (m.space, m.iova, m.seq, m.pid, m.vaddr, m.size) == (SPACE, IOVA, 5, 10, VADDR, size)
    assert m.pinned == {slots[0]: 0x4000, slots[63]: 0x4000 + 63, size - PAGE: 0x4000 + 64}
    assert [e.pid for e in PinTable("iommufd", tables.get, samples, lambda: True, counter(0)).mappings()] == [12]
    assert table.outside() == 4
    assert table.seq(SPACE, IOVA) == 5 and table.seq(SPACE, 0x7000) is None


def test_a_backends_entries_are_emptied_once_when_its_removal_hook_goes():
    Value = value_type(4)
    pin_maps = BccTable([(Key(SPACE, IOVA), Value(seq=1, backend=1)), (Key(SPACE, 0x9000), Value(seq=2, backend=2))])
    pin_spans = BccTable([(Key(1, 1), Span(backend=1)), (Key(2, 2), Span(backend=2))])
    tables = {"pin_maps": pin_maps, "pin_spans": pin_spans, "pin_space_stale": BccTable([])}
    kept = [True]
    table = PinTable("type1", tables.get, 4, kept=lambda: kept[0], outside=counter(0))
    assert table.mappings() == []  # the entry is not complete
    kept[0] = False
    assert table.mappings() is None
    assert [v.backend for _, v in pin_maps.items()] == [2] and [v.backend for _, v in pin_spans.items()] == [2]
