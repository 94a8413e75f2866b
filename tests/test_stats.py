"""The main job's statistics against textbook cases and independent computations: the
Mann-Whitney null distribution by enumeration, Moses' interval by inverting scipy's exact
Mann-Whitney test, the median's binomial interval, the verdict rules on each case, coverage,
type I error and power by simulation, and the claims of a report built from synthetic runs with
known effects (a known effect, a known null, an equivalence case, a failed method)."""

from __future__ import annotations

import itertools
import math
import random
import statistics
from collections import Counter

import pytest

from weightnorm.experiments._stats import (
    Interval,
    decide,
    decide_at_most,
    detectable,
    fewest_seeds,
    mann_whitney_counts,
    median_interval,
    power_of,
    seeds_for_power,
    shift_interval,
)

# --- the null distributions ---------------------------------------------------------------------


@pytest.mark.parametrize(("m", "n"), [(1, 1), (2, 3), (3, 3), (4, 6), (5, 5), (3, 7)])
def test_mann_whitney_counts_match_enumeration(m: int, n: int) -> None:
    counts: Counter[int] = Counter()
    for first in itertools.combinations(range(m + n), m):  # ranks of the first sample
        counts[sum(sum(1 for j in range(m + n) if j not in first and j < i) for i in first)] += 1
    assert mann_whitney_counts(m, n) == [counts[u] for u in range(m * n + 1)]
    assert sum(mann_whitney_counts(m, n)) == math.comb(m + n, m)


@pytest.mark.parametrize(
    ("m", "k"),
    [(5, 3), (8, 14), (10, 24)],  # textbook two-sided 5% critical values of U: 2, 13, 23 (k - 1)
)
def test_moses_interval_uses_the_textbook_critical_value(m: int, k: int) -> None:
    a = [float(i) for i in range(m)]
    b = [100.0 + 10 * i for i in range(m)]  # every difference distinct
    iv = shift_interval(a, b)
    diffs = sorted(x - y for x in a for y in b)
    assert (iv.low, iv.high) == (diffs[k - 1], diffs[m * m - k])
    assert iv.estimate == statistics.median(diffs)
    assert 0.95 <= iv.coverage < 0.97


def test_moses_interval_inverts_scipys_exact_mann_whitney_test() -> None:
    """The interval is the set of shifts d that the exact two-sided test of a - d against b does
    not reject at 5%: just inside each end it does not, just outside it does."""
    scipy_stats = pytest.importorskip("scipy.stats")
    rng = random.Random(3)
    for _ in range(5):
        a = [rng.gauss(0.3, 1.0) for _ in range(9)]
        b = [rng.gauss(0.0, 1.0) for _ in range(10)]
        iv = shift_interval(a, b)

        def p_value(d: float, a: list[float] = a, b: list[float] = b) -> float:
            return float(scipy_stats.mannwhitneyu([x - d for x in a], b, method="exact").pvalue)

        eps = 1e-9
        assert p_value(iv.low + eps) > 0.05
        assert p_value(iv.high - eps) > 0.05
        assert p_value(iv.low - eps) <= 0.05
        assert p_value(iv.high + eps) <= 0.05


@pytest.mark.parametrize(("n", "k"), [(6, 1), (10, 2), (25, 8)])
def test_median_interval_uses_the_binomial_order_statistics(n: int, k: int) -> None:
    values = [float(v) for v in range(1, n + 1)]
    iv = median_interval(values)
    assert (iv.low, iv.high) == (values[k - 1], values[n - k])
    tail = sum(math.comb(n, i) for i in range(k)) / 2**n
    assert iv.coverage == pytest.approx(1 - 2 * tail)
    assert iv.coverage >= 0.95


def test_too_few_values_give_no_interval() -> None:
    assert shift_interval([1.0, 2.0], [3.0, 4.0]) == Interval(-2.0, -math.inf, math.inf, 1.0)
    iv = median_interval([1.0, 2.0, 3.0, 4.0, 5.0])  # n = 5: P(all on one side) = 1/16 > 5%
    assert (iv.low, iv.high) == (-math.inf, math.inf)
    assert decide(shift_interval([1.0, 2.0], [30.0, 40.0]), 0.5) == "inconclusive"


def test_failed_runs_rank_last_and_nan_is_refused() -> None:
    never = [math.inf] * 10
    iv = shift_interval([float(v) for v in range(10)], never)
    assert iv.high == -math.inf  # a trained seed beats one that never got there, every pair
    assert decide(iv, 0.5) == "held"
    assert shift_interval(never, never).estimate == 0.0  # two failures tie
    assert decide(shift_interval(never, [float(v) for v in range(10)]), 0.5) == "did not hold"
    with pytest.raises(ValueError, match="NaN"):
        shift_interval([1.0, math.nan], [1.0])
    with pytest.raises(ValueError, match="NaN"):
        median_interval([math.nan])
    with pytest.raises(ValueError, match="non-empty"):
        shift_interval([], [1.0])


# --- the rules ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("low", "high", "expected"),
    [
        (-3.0, -1.0, "held"),  # below 0, past the margin
        (1.0, 3.0, "did not hold"),
        (-0.4, 0.4, "no difference larger than delta"),  # inside the margin
        (-0.4, -0.1, "no difference larger than delta"),  # inside: first, whatever the sign
        (0.1, 0.45, "no difference larger than delta"),
        (-0.6, -0.1, "held"),  # below 0 but reaching past the margin
        (-0.6, 0.2, "inconclusive"),  # holds 0 and reaches past the margin
        (-0.2, 0.5, "inconclusive"),  # touching the margin is not inside it
        (-math.inf, math.inf, "inconclusive"),
    ],
)
def test_decide_rules(low: float, high: float, expected: str) -> None:
    assert decide(Interval((low + high) / 2, low, high, 0.95), 0.5) == expected


def test_decide_at_most_rules() -> None:
    def at_most(low: float, high: float) -> str:
        return decide_at_most(Interval(low, low, high, 0.95), 0.10)

    assert at_most(0.02, 0.08) == "held"
    assert at_most(0.12, 0.2) == "did not hold"
    assert at_most(0.05, 0.15) == "inconclusive"
    with pytest.raises(ValueError, match="delta must be > 0"):
        decide(Interval(0.0, -1.0, 1.0, 0.95), 0.0)


# --- by simulation: coverage, type I error, equivalence, power -----------------------------------


def _samples(rng: random.Random, shift: float, sd: float, n: int) -> tuple[list[float], ...]:
    return [rng.gauss(shift, sd) for _ in range(n)], [rng.gauss(0.0, sd) for _ in range(n)]


def test_shift_interval_covers_the_true_shift() -> None:
    rng = random.Random(0)
    reps = 300
    hits = 0
    for _ in range(reps):
        a, b = _samples(rng, 0.7, 1.0, 10)
        iv = shift_interval(a, b)
        hits += iv.low <= 0.7 <= iv.high
    assert 0.92 <= hits / reps <= 0.99  # exact coverage 0.957; the simulation's own noise: 0.012


def test_known_null_rarely_held_and_known_effect_held() -> None:
    rng = random.Random(1)
    reps = 300
    null = Counter(decide(shift_interval(*_samples(rng, 0.0, 1.0, 10)), 0.5) for _ in range(reps))
    assert (null["held"] + null["did not hold"]) / reps <= 0.08  # two-sided 5% (+ noise)
    effect = Counter(decide(shift_interval(*_samples(rng, -2.0, 1.0, 10)), 0.5)
                     for _ in range(reps))  # fmt: skip
    assert effect["held"] / reps >= 0.97
    assert effect["did not hold"] == 0


def test_equivalence_case() -> None:
    """No true difference and a spread small against the margin: "no difference larger than
    delta" nearly always; a true difference of twice the margin: never."""
    rng = random.Random(2)
    reps = 200
    same = Counter(decide(shift_interval(*_samples(rng, 0.0, 0.2, 10)), 0.5) for _ in range(reps))
    assert same["no difference larger than delta"] / reps >= 0.95
    apart = Counter(decide(shift_interval(*_samples(rng, 1.0, 0.2, 10)), 0.5) for _ in range(reps))
    assert apart["no difference larger than delta"] == 0
    assert apart["did not hold"] / reps >= 0.95


def test_power_formula_and_its_check_by_simulation() -> None:
    z = statistics.NormalDist().inv_cdf
    expected = 2 * (z(0.975) + z(0.8)) ** 2 / (3 / math.pi)  # textbook n, / the rank efficiency
    assert seeds_for_power(1.0, 1.0) == math.ceil(expected) == 17
    assert seeds_for_power(0.5, 1.0) == math.ceil(expected / 4)
    assert power_of(1.0, 1.0, 17) >= 0.8 > power_of(1.0, 1.0, 16)
    assert power_of(0.0, 1.0, 4) == 1.0
    # 3 seeds bound no 95% interval (P(complete separation) = 1/20): no power, whatever the spread
    assert fewest_seeds() == 4
    assert power_of(0.0, 1.0, 3) == power_of(1.0, 100.0, 3) == 0.0
    assert detectable(1.0, 3) == math.inf
    assert seeds_for_power(0.01, 1.0) == 4
    for sd, n in ((0.5, 10), (2.0, 7)):  # the detectable difference is the power's inverse
        assert power_of(sd, detectable(sd, n), n) == pytest.approx(0.8)
    # the rank interval really detects a shift of one sd with 17 seeds about 80% of the time
    rng = random.Random(4)
    reps = 300
    detected = sum(shift_interval(*_samples(rng, -1.0, 1.0, 17)).high < 0 for _ in range(reps))
    assert 0.72 <= detected / reps <= 0.9
    with pytest.raises(ValueError, match="delta > 0"):
        seeds_for_power(1.0, 0.0)
