"""Statistics of per-seed values: summaries that skip the non-finite ones (a diverged run's
NaN), and the intervals and verdict rules of the main job's report."""

from __future__ import annotations

import math
import statistics
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Literal

__all__ = [
    "ClaimVerdict",
    "Interval",
    "decide",
    "decide_at_most",
    "detectable",
    "fewest_seeds",
    "finite",
    "mann_whitney_counts",
    "mean_std",
    "median_interval",
    "nanmean",
    "nanmedian",
    "power_of",
    "seeds_for_power",
    "shift_interval",
]


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


# --- intervals and verdicts for few seeds ------------------------------------------------------
#
# Two distribution-free intervals, exact for continuous data at any number of seeds (ties, e.g.
# test errors on a finite split, make them slightly conservative): the Hodges-Lehmann shift
# between two samples with its Mann-Whitney (Moses) interval, and the median of one sample with
# its order-statistic (binomial) interval. Neither assumes normal errors, and both accept
# ``inf`` for a run that never got there (it ranks last), so a failed seed is counted, not
# dropped.


@dataclass(frozen=True)
class Interval:
    """An estimate with its confidence interval; ``low``/``high`` may be infinite (the data
    cannot bound that side), ``coverage`` is the interval's exact coverage (at least the
    confidence asked for; ``1.0`` when too few values allow any)."""

    estimate: float
    low: float
    high: float
    coverage: float


def _lower_tail(counts: list[int], alpha: float) -> tuple[int, float]:
    """For a null distribution given as counts over 0, 1, 2, ...: the largest ``k`` with
    P(X <= k - 1) <= alpha / 2 and that tail probability (``k = 0``: none)."""
    total = sum(counts)
    k, tail, cumulative = 0, 0.0, 0
    for value, count in enumerate(counts):
        cumulative += count
        if cumulative / total > alpha / 2:
            break
        k, tail = value + 1, cumulative / total
    return k, tail


def mann_whitney_counts(m: int, n: int) -> list[int]:
    """How many of the C(m+n, m) orderings of two samples give each Mann-Whitney count U
    (0..m*n): the null distribution, without ties.

    Example::

        >>> mann_whitney_counts(2, 2)
        [1, 1, 2, 1, 1]
    """
    # ways[k][u]: k items chosen among the values seen so far, with count u
    ways = [[0] * (m * n + 1) for _ in range(m + 1)]
    ways[0][0] = 1
    for seen in range(m + n):
        for k in range(min(seen, m - 1), -1, -1):
            # choosing the next value for the first sample adds the second-sample values below
            below = seen - k
            if below > n:
                continue
            for u in range(m * n - below, -1, -1):
                if ways[k][u]:
                    ways[k + 1][u + below] += ways[k][u]
    return ways[m]


def _pair_difference(a: float, b: float) -> float:
    if math.isinf(a) and math.isinf(b) and (a > 0) == (b > 0):
        return 0.0  # both never got there: a tie
    return a - b


def shift_interval(a: Sequence[float], b: Sequence[float], confidence: float = 0.95) -> Interval:
    """The shift ``a - b`` (Hodges-Lehmann: the median of all pairwise differences) and its
    distribution-free confidence interval (Moses' interval from the Mann-Whitney null
    distribution: the k-th smallest and largest pairwise differences).

    Values may be ``inf`` (a run that never reached a target ranks last); NaN is refused.

    Example::

        >>> iv = shift_interval([1.0, 2.0, 3.0, 4.0, 5.0], [11.0, 12.0, 13.0, 14.0, 15.0])
        >>> iv.estimate, iv.low, iv.high
        (-10.0, -13.0, -7.0)
    """
    if not a or not b:
        raise ValueError(f"two non-empty samples expected, got {len(a)} and {len(b)} values")
    if any(math.isnan(v) for v in (*a, *b)):
        raise ValueError("NaN in a sample: map a failed run to inf (it never got there)")
    diffs = sorted(_pair_difference(x, y) for x in a for y in b)
    k, tail = _lower_tail(mann_whitney_counts(len(a), len(b)), 1 - confidence)
    estimate = _median(diffs)
    if k == 0:
        return Interval(estimate, -math.inf, math.inf, 1.0)
    return Interval(estimate, diffs[k - 1], diffs[len(diffs) - k], 1 - 2 * tail)


def _median(ordered: Sequence[float]) -> float:
    """The median of sorted values, the lower middle one for an even count when the mean of
    the two middle ones is undefined (inf and -inf)."""
    middle = len(ordered) // 2
    if len(ordered) % 2:
        return ordered[middle]
    lo, hi = ordered[middle - 1], ordered[middle]
    return lo if math.isinf(lo) and math.isinf(hi) and lo != hi else (lo + hi) / 2


def median_interval(values: Sequence[float], confidence: float = 0.95) -> Interval:
    """The median and its distribution-free confidence interval: the k-th smallest and largest
    values, k from the binomial(n, 1/2) distribution of how many values fall below the true
    median. ``inf`` is allowed (it ranks last); NaN is refused.

    Example::

        >>> iv = median_interval([float(v) for v in range(1, 11)])
        >>> iv.estimate, iv.low, iv.high, round(iv.coverage, 4)
        (5.5, 2.0, 9.0, 0.9785)
    """
    if not values:
        raise ValueError("a non-empty sample expected")
    if any(math.isnan(v) for v in values):
        raise ValueError("NaN in a sample: map a failed run to inf (it never got there)")
    ordered = sorted(values)
    n = len(ordered)
    k, tail = _lower_tail([math.comb(n, i) for i in range(n + 1)], 1 - confidence)
    estimate = _median(ordered)
    if k == 0:
        return Interval(estimate, -math.inf, math.inf, 1.0)
    return Interval(estimate, ordered[k - 1], ordered[n - k], 1 - 2 * tail)


#: The outcome of a claim under the report's rules (:func:`decide`).
ClaimVerdict = Literal["held", "did not hold", "no difference larger than delta", "inconclusive"]


def decide(interval: Interval, delta: float) -> ClaimVerdict:
    """The verdict on a claim "A is lower than B" from the interval of the effect ``A - B``:

    1. *no difference larger than delta*: the interval lies inside ``(-delta, delta)`` (an
       equivalence test). This comes first: an interval that bounds the difference below what
       matters says so whatever its sign.
    2. *held*: the interval lies below 0 (the claimed side).
    3. *did not hold*: the interval lies above 0.
    4. *inconclusive*: otherwise (the interval holds 0 and reaches past ``delta``).

    Example::

        >>> decide(Interval(-2.0, -3.0, -1.0, 0.95), 0.5)
        'held'
        >>> decide(Interval(0.1, -0.2, 0.3, 0.95), 0.5)
        'no difference larger than delta'
        >>> decide(Interval(0.1, -0.2, 0.9, 0.95), 0.5)
        'inconclusive'
    """
    if not delta > 0:
        raise ValueError(f"delta must be > 0, got {delta}")
    if -delta < interval.low and interval.high < delta:
        return "no difference larger than delta"
    if interval.high < 0:
        return "held"
    if interval.low > 0:
        return "did not hold"
    return "inconclusive"


def decide_at_most(interval: Interval, delta: float) -> ClaimVerdict:
    """The verdict on a claim "the effect is at most ``delta``" (e.g. "at most 10% slower"):
    *held* when the interval lies below ``delta``, *did not hold* when it lies above,
    *inconclusive* otherwise (a non-inferiority test).

    Example::

        >>> decide_at_most(Interval(0.04, 0.02, 0.06, 0.95), 0.10)
        'held'
    """
    if interval.high < delta:
        return "held"
    if interval.low > delta:
        return "did not hold"
    return "inconclusive"


#: Asymptotic efficiency of the rank-based interval relative to the t interval for normal data.
RANK_EFFICIENCY = 3 / math.pi


def seeds_for_power(sd: float, delta: float, *, power: float = 0.8, alpha: float = 0.05) -> int:
    """Seeds per method for a two-sided test at level ``alpha`` to detect a true difference of
    ``delta`` with probability ``power``, when seeds spread with standard deviation ``sd``:
    the normal approximation ``2 (z_{1-alpha/2} + z_power)^2 sd^2 / delta^2``, divided by the
    rank method's efficiency (3/pi) and rounded up.

    Example::

        >>> seeds_for_power(1.0, 1.0)  # 2 * (1.96 + 0.84)^2 = 15.7, / 0.955
        17
    """
    if not (sd >= 0 and delta > 0):
        raise ValueError(f"sd >= 0 and delta > 0 expected, got sd={sd}, delta={delta}")
    z = statistics.NormalDist().inv_cdf
    n = 2 * (z(1 - alpha / 2) + z(power)) ** 2 * sd**2 / delta**2 / RANK_EFFICIENCY
    return max(fewest_seeds(alpha), math.ceil(n))


def fewest_seeds(alpha: float = 0.05) -> int:
    """The fewest seeds per method for which a ``1 - alpha`` shift interval exists at all:
    with fewer, even a complete separation of the two methods is as likely as ``alpha`` by
    chance, the interval is unbounded and every verdict inconclusive (4 at 95%).

    Example::

        >>> fewest_seeds()
        4
    """
    n = 1
    while _lower_tail(mann_whitney_counts(n, n), alpha)[0] == 0:
        n += 1
    return n


def detectable(sd: float, seeds: int, *, power: float = 0.8, alpha: float = 0.05) -> float:
    """The true difference that ``seeds`` seeds per method detect with probability ``power``
    (:func:`seeds_for_power` solved for the difference).

    Example::

        >>> round(detectable(1.0, 17), 2)
        0.98
    """
    if seeds < 1 or sd < 0:
        raise ValueError(f"seeds >= 1 and sd >= 0 expected, got seeds={seeds}, sd={sd}")
    if seeds < fewest_seeds(alpha):
        return math.inf
    z = statistics.NormalDist().inv_cdf
    return (z(1 - alpha / 2) + z(power)) * sd * math.sqrt(2 / (seeds * RANK_EFFICIENCY))


def power_of(sd: float, delta: float, seeds: int, *, alpha: float = 0.05) -> float:
    """The power :func:`seeds_for_power` inverts: the probability of detecting a true
    difference of ``delta`` with ``seeds`` seeds per method.

    Example::

        >>> round(power_of(1.0, 1.0, 17), 2)
        0.81
    """
    if seeds < fewest_seeds(alpha):
        return 0.0  # no interval is bounded: no difference can be found
    if sd == 0:
        return 1.0
    dist = statistics.NormalDist()
    shift = delta / (sd * math.sqrt(2 / (seeds * RANK_EFFICIENCY)))
    return dist.cdf(shift - dist.inv_cdf(1 - alpha / 2))
