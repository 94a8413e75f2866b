"""Statistics of per-seed values that skip the non-finite ones (a diverged run's NaN)."""

from __future__ import annotations

import math
import statistics
from collections.abc import Iterable

__all__ = ["finite", "mean_std", "nanmean", "nanmedian"]


def finite(values: Iterable[float]) -> list[float]:
    """The finite values, in order."""
    return [v for v in values if math.isfinite(v)]


def nanmean(values: Iterable[float]) -> float:
    """The mean of the finite values (NaN if none).

    Example::

        >>> nanmean([1.0, float("nan"), 3.0])
        2.0
    """
    kept = finite(values)
    return statistics.fmean(kept) if kept else math.nan


def nanmedian(values: Iterable[float]) -> float:
    """The median of the finite values (NaN if none)."""
    kept = finite(values)
    return statistics.median(kept) if kept else math.nan


def mean_std(values: Iterable[float]) -> tuple[float, float]:
    """Mean and sample standard deviation of the finite values (NaN if none; std 0 for one).

    Example::

        >>> mean_std([1.0, 3.0, float("nan")])
        (2.0, 1.4142135623730951)
    """
    kept = finite(values)
    if not kept:
        return math.nan, math.nan
    return statistics.fmean(kept), (statistics.stdev(kept) if len(kept) > 1 else 0.0)
