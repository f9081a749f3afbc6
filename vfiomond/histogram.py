"""Kernel log2 histograms -> Prometheus cumulative buckets.

The BPF programs bucket a nanosecond duration ``v`` with BCC's ``bpf_log2l(v)``
(helpers.h): ``floor(log2(v)) + 1`` for v >= 1, and 1 for v == 0.  So slot ``i``
(i >= 1) holds the integers ``[2**(i-1), 2**i - 1]`` (slot 1 also holds 0) and
slot 0 is never used.  An integer v is in slots ``<= i`` exactly when
``v <= 2**i - 1``, so the exact Prometheus bound of slot i is ``le = (2**i - 1) ns``.
Using ``2**i`` instead is the classic off-by-one of eBPF exporters: a value of
exactly ``2**i`` ns would then be counted under the wrong bound.
"""

from typing import Dict, List, Mapping, NamedTuple, Tuple

NS_PER_SECOND = 1_000_000_000

# Bounds exported for latency histograms: slot 10 (le 1.023 us) .. slot 34
# (le 17.18 s).  Faster events land in the first bucket, slower ones only in +Inf.
FIRST_SLOT = 10
LAST_SLOT = 34


def slot_of(value_ns: int) -> int:
    """The slot ``bpf_log2l`` gives a value (a reference for tests and docs)."""
    return max(int(value_ns), 1).bit_length()


def slot_upper_bound_ns(slot: int) -> int:
    """Largest integer nanosecond value held in ``slot`` (slot >= 1)."""
    if slot < 1:
        raise ValueError("slot must be >= 1, got %d" % slot)
    return (1 << slot) - 1


class Histogram(NamedTuple):
    """One label set of a kernel histogram: counts per log2 slot and the sum in ns."""

    slots: Dict[int, int]
    sum_ns: int

    @property
    def count(self) -> int:
        return sum(self.slots.values())


def merge(a: Histogram, b: Histogram) -> Histogram:
    slots = dict(a.slots)
    for slot, n in b.slots.items():
        slots[slot] = slots.get(slot, 0) + n
    return Histogram(slots, a.sum_ns + b.sum_ns)


def cumulative_buckets(
    slots: Mapping[int, int], first_slot: int = FIRST_SLOT, last_slot: int = LAST_SLOT
) -> List[Tuple[float, int]]:
    """``[(le_seconds, cumulative_count), ...]`` for slots first..last, without +Inf.

    Every bound is exact (see the module docstring): the count under
    ``le = (2**i - 1) ns`` is the sum of slots 0..i.
    """
    out = []
    running = sum(n for slot, n in slots.items() if slot < first_slot)
    for slot in range(first_slot, last_slot + 1):
        running += slots.get(slot, 0)
        out.append((slot_upper_bound_ns(slot) / NS_PER_SECOND, running))
    return out
