"""Small helpers shared by the areas' metric families."""

from typing import List

from vfiomond.histogram import NS_PER_SECOND, Histogram, cumulative_buckets


def _le(seconds: float) -> str:
    return repr(seconds)


def histogram_family_add(family, labels: List[str], hist: Histogram) -> None:
    """Add one label set of a kernel log2 histogram (ns) to a HistogramMetricFamily."""
    buckets = [(_le(le), n) for le, n in cumulative_buckets(hist.slots)]
    buckets.append(("+Inf", hist.count))
    family.add_metric(labels, buckets, hist.sum_ns / NS_PER_SECOND)
