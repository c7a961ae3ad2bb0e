"""Small pure helpers for figures: medians, percentiles, rates."""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence


def median(values: Iterable[float]) -> float:
    """The median (NaN for no values)."""
    data = sorted(values)
    n = len(data)
    if n == 0:
        return math.nan
    mid = n // 2
    return data[mid] if n % 2 else (data[mid - 1] + data[mid]) / 2


def percentile(sorted_values: Sequence[float], p: float) -> float:
    """The ``p``-th percentile (0..100) of already sorted values, linear interpolation."""
    n = len(sorted_values)
    if n == 0:
        return math.nan
    if n == 1:
        return sorted_values[0]
    rank = (n - 1) * p / 100.0
    lo = math.floor(rank)
    hi = min(lo + 1, n - 1)
    return sorted_values[lo] + (sorted_values[hi] - sorted_values[lo]) * (rank - lo)


def rate(count: int, first: float, last: float) -> float:
    """Messages per second between the first and the last of ``count`` arrivals."""
    if count < 2 or last <= first:
        return math.nan
    return (count - 1) / (last - first)


def ratio(a: float, b: float) -> float:
    return a / b if b and not math.isnan(a) and not math.isnan(b) else math.nan
