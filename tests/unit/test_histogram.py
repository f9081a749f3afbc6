"""log2 slot -> Prometheus bucket conversion: the boundaries must be exact."""

import pytest

from vfiomond.histogram import Histogram, cumulative_buckets, merge, slot_of, slot_upper_bound_ns


def bpf_log2(v: int) -> int:
    """BCC helpers.h bpf_log2(), transcribed step by step (32-bit input)."""
    r = int(v > 0xFFFF) << 4
    v >>= r
    shift = int(v > 0xFF) << 3
    v >>= shift
    r |= shift
    shift = int(v > 0xF) << 2
    v >>= shift
    r |= shift
    shift = int(v > 0x3) << 1
    v >>= shift
    r |= shift
    r |= v >> 1
    return r


def bpf_log2l(v: int) -> int:
    hi = v >> 32
    return bpf_log2(hi) + 33 if hi else bpf_log2(v & 0xFFFFFFFF) + 1


EDGES = sorted({0, 1, 2, 3} | {x for k in range(2, 64) for x in ((1 << k) - 1, 1 << k, (1 << k) + 1)})


@pytest.mark.parametrize("v", EDGES)
def test_slot_of_matches_bcc(v):
    assert slot_of(v) == bpf_log2l(v)


@pytest.mark.parametrize("v", EDGES)
def test_value_lies_within_its_slot_bounds(v):
    slot = slot_of(v)
    assert v <= slot_upper_bound_ns(slot)
    if slot > 1:
        assert v > slot_upper_bound_ns(slot - 1)


def test_exact_power_of_two_is_not_under_the_lower_bound():
    # 1024 ns goes to slot 11; it must not be counted under le = 1023 ns.
    buckets = dict(cumulative_buckets({slot_of(1024): 1}, first_slot=10, last_slot=11))
    assert buckets[1023e-9] == 0
    assert buckets[2047e-9] == 1


def test_cumulative_buckets_fold_fast_values_into_first_and_slow_into_inf():
    slots = {1: 2, 5: 3, 10: 1, 12: 4, 40: 7}
    buckets = cumulative_buckets(slots, first_slot=10, last_slot=12)
    assert [n for _, n in buckets] == [6, 6, 10]
    assert [le for le, _ in buckets] == [1023e-9, 2047e-9, 4095e-9]
    assert Histogram(slots, 0).count == 17  # +Inf also holds slot 40


def test_bounds_are_increasing_and_counts_monotonic():
    buckets = cumulative_buckets({12: 1, 20: 2, 30: 3})
    les = [le for le, _ in buckets]
    counts = [n for _, n in buckets]
    assert les == sorted(les) and len(set(les)) == len(les)
    assert counts == sorted(counts)


def test_slot_zero_has_no_bound():
    with pytest.raises(ValueError):
        slot_upper_bound_ns(0)


def test_merge_adds_slots_and_sums():
    m = merge(Histogram({1: 1, 2: 2}, 10), Histogram({2: 3, 4: 1}, 5))
    assert m == Histogram({1: 1, 2: 5, 4: 1}, 15)
