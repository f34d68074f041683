"""Each statistic of fleetsim.analysis.stats against a value computed another way."""

import math

import numpy as np
import pytest
from scipy import stats

from fleetsim.analysis.stats import (
    censored_median,
    interval_verdict,
    mean_confidence_interval,
    paired_first_verdict,
    paired_ratio_interval,
    paired_verdict,
)


def _hall_by_hand(values: list[float], confidence: float = 0.95) -> tuple[float, float]:
    """Hall (1992) eq. 2.6 written out: invert g(T) = T + aT²/3 + a²T³/27 + a/6 at ±t."""
    x = np.asarray(values)
    n = x.size
    m, s = x.mean(), x.std(ddof=1)
    m3 = ((x - m) ** 3).sum() / n
    gamma = (m3 / (((x - m) ** 2).sum() / n) ** 1.5) * math.sqrt(n * (n - 1)) / (n - 2)
    a = gamma / math.sqrt(n)
    t = stats.t.ppf(0.5 + confidence / 2, n - 1)

    def inverse(z: float) -> float:
        return (math.copysign(abs(1 + a * (z - a / 6)) ** (1 / 3), 1 + a * (z - a / 6)) - 1) / (
            a / 3
        )

    return m - inverse(t) * s / math.sqrt(n), m - inverse(-t) * s / math.sqrt(n)


def test_mean_interval_is_halls_skewness_corrected_t_interval() -> None:
    values = [3.1, 4.0, 2.2, 9.5, 5.7, 3.3, 4.8, 2.9, 6.1, 3.6]
    mean, low, high, n = mean_confidence_interval(values)
    assert n == 10 and mean == pytest.approx(np.mean(values))
    expected_low, expected_high = _hall_by_hand(values)
    assert (low, high) == (pytest.approx(expected_low), pytest.approx(expected_high))
    # right-skewed data: the interval reaches further above the mean than below it
    assert high - mean > mean - low > 0
    # symmetric data: the plain t interval
    sym = [1.0, 2.0, 3.0, 4.0, 5.0]
    _, lo, hi, _ = mean_confidence_interval(sym)
    half = stats.t.ppf(0.975, 4) * np.std(sym, ddof=1) / math.sqrt(5)
    assert (lo, hi) == (pytest.approx(3.0 - half), pytest.approx(3.0 + half))
    # two values: skewness undefined, plain t
    _, lo, hi, _ = mean_confidence_interval([1.0, 3.0])
    half = stats.t.ppf(0.975, 1) * math.sqrt(2.0) / math.sqrt(2)
    assert (lo, hi) == (pytest.approx(2.0 - half), pytest.approx(2.0 + half))


_POPULATIONS = {
    # (draw, true mean): the shapes seed-to-seed times, energies and accuracies take
    "normal": (lambda rng, shape: rng.normal(5.0, 1.0, shape), 5.0),
    "lognormal(0.5)": (lambda rng, shape: rng.lognormal(0.0, 0.5, shape), math.exp(0.125)),
    "gamma(2)": (lambda rng, shape: rng.gamma(2.0, 1.0, shape), 2.0),
    "exponential": (lambda rng, shape: rng.exponential(1.0, shape), 1.0),
}


@pytest.mark.parametrize("population", sorted(_POPULATIONS))
def test_mean_interval_coverage_is_simulated_at_least_093_for_ten_seeds(population) -> None:
    """Issue 23: a stated 95 % interval must cover >= 0.93 at n = 10 (simulated)."""
    draw, true_mean = _POPULATIONS[population]
    rng = np.random.default_rng(20261204)
    samples = draw(rng, (2000, 10))
    covered = 0
    for row in samples:
        _, low, high, _ = mean_confidence_interval(row)
        covered += low <= true_mean <= high
    assert covered / len(samples) >= 0.93


def test_paired_ratio_interval_coverage_and_value() -> None:
    rng = np.random.default_rng(7)
    true_ratio, covered, trials = 0.6, 0, 2000
    for _ in range(trials):
        seed_effect = rng.lognormal(0.0, 0.4, 10)  # shared by both arms (same seed, fleet)
        b = 100.0 * seed_effect * rng.lognormal(0.0, 0.2, 10)
        a = true_ratio * 100.0 * seed_effect * rng.lognormal(0.0, 0.2, 10)
        r = paired_ratio_interval(a, b)
        covered += r.low <= true_ratio <= r.high
    assert covered / trials >= 0.93
    r = paired_ratio_interval([2.0, 8.0, None, -1.0], [1.0, 2.0, 3.0, 1.0])
    assert r.n == 2 and r.ratio == pytest.approx(math.sqrt(2.0 * 4.0))
    with pytest.raises(ValueError, match="equal lengths"):
        paired_ratio_interval([1.0], [1.0, 2.0])


def test_rankings_need_ten_seeds_and_separated_intervals() -> None:
    a = [10.0, 11.0, 9.5, 10.2, 10.8, 9.9, 10.1, 10.4, 9.7, 10.6]
    b = [20.0, 23.0, 19.0, 21.0, 22.0, 20.5, 19.5, 21.5, 20.2, 22.4]
    verdict = paired_verdict("FwdLLM", a, "FedSGD", b)
    assert verdict.established and verdict.text.startswith("FwdLLM's time is 0.4")
    few = paired_verdict("FwdLLM", a[:5], "FedSGD", b[:5])
    assert not few.established and few.text.startswith("not established")
    assert "fewer than 10 seeds" in few.text
    same = paired_verdict("A", a, "B", [x * (1.02 if i % 2 else 0.98) for i, x in enumerate(a)])
    assert not same.established and "contains 1" in same.text
    separated = interval_verdict({"x": (1.0, 0.9, 1.1, 10), "y": (2.0, 1.8, 2.2, 10)})
    assert separated.established and separated.text.startswith("x < y")
    overlapping = interval_verdict({"x": (1.0, 0.9, 1.9, 10), "y": (2.0, 1.8, 2.2, 10)})
    assert not overlapping.established and "overlap" in overlapping.text
    unbounded = interval_verdict({"x": (1.0, 0.9, math.inf, 10), "y": (2.0, 1.8, 2.2, 10)})
    assert not unbounded.established


def test_mean_interval_ignores_missing_and_is_undefined_for_one_value() -> None:
    mean, low, high, n = mean_confidence_interval([5.0, math.nan, None])
    assert (mean, n) == (5.0, 1) and math.isnan(low) and math.isnan(high)
    mean, low, high, n = mean_confidence_interval([math.nan])
    assert n == 0 and math.isnan(mean)
    assert mean_confidence_interval([3.0, 3.0]) == (3.0, 3.0, 3.0, 2)


@pytest.mark.parametrize(
    ("reached", "censored", "median", "k", "n"),
    [
        # all reached: the middle value (odd n), the lower middle value (even n)
        ([30.0, 10.0, 20.0], [], 20.0, 3, 3),
        ([10.0, 20.0, 30.0, 40.0], [], 20.0, 4, 4),
        # two of four reached, the others ran to 25 and 30 s: S(10)=3/4, S(20)=1/2
        ([10.0, 20.0], [25.0, 30.0], 20.0, 2, 4),
        # one of three reached: more than half never did → not reached
        ([10.0], [100.0, 100.0], math.inf, 1, 3),
        # ... also when the others were censored early (Kaplan–Meier alone would give 10)
        ([10.0], [5.0, 6.0], math.inf, 1, 3),
        ([], [5.0, 6.0], math.inf, 0, 2),
        # a run censored early (it stopped at 15 s) leaves the risk set: S(10)=3/4,
        # S(20)=3/4·(1-1/2)=3/8 ≤ 1/2 → 20, where "middle of the reached" would say 30
        ([10.0, 20.0, 30.0], [15.0], 20.0, 3, 4),
    ],
)
def test_censored_median_by_hand(reached, censored, median, k, n) -> None:
    result = censored_median(reached, censored)
    assert result.median == median
    assert (result.reached, result.runs) == (k, n)
    label = f"reached {k} of {n}" if math.isfinite(median) else f"not reached ({k} of {n})"
    assert result.label == label
    assert 0.0 <= result.low <= result.median <= result.high


def test_censored_median_interval_is_the_greenwood_log_log_band_crossing_one_half() -> None:
    times = np.array([10.0, 20.0, 30.0, 40.0, 50.0, 60.0, 70.0, 80.0, 90.0])
    n = times.size
    at_risk = n - np.arange(n)
    survival = np.cumprod(1.0 - 1.0 / at_risk)
    z = stats.norm.ppf(0.975)
    with np.errstate(divide="ignore", invalid="ignore"):
        greenwood = np.cumsum(1.0 / (at_risk * (at_risk - 1.0)))
        half_width = z * np.sqrt(greenwood) / np.log(survival)
        low_band, high_band = survival ** np.exp(-half_width), survival ** np.exp(half_width)
    expected_low = times[np.flatnonzero(np.nan_to_num(low_band, nan=0.0) <= 0.5)[0]]
    crossing = np.flatnonzero(np.nan_to_num(high_band, nan=1.0) <= 0.5)
    expected_high = times[crossing[0]] if crossing.size else math.inf
    result = censored_median(times)
    assert result.median == 50.0
    assert (result.low, result.high) == (expected_low, expected_high)
    assert result.low < 50.0 < result.high < math.inf


def test_censored_median_rejects_negative_times_and_handles_no_runs() -> None:
    with pytest.raises(ValueError, match=">= 0"):
        censored_median([-1.0])
    assert math.isnan(censored_median([]).median)


def test_paired_first_verdict_orders_censored_pairs() -> None:
    nan = math.nan
    # A reached it in every seed within 5 min; B reached it once (seed 0, later), and its
    # other runs ended at 120 min without it: A first in all ten.
    a = [60.0 * (1 + i % 5) for i in range(10)]
    b = [600.0] + [nan] * 9
    verdict = paired_first_verdict("A", a, [7200.0] * 10, "B", b, [7200.0] * 10, "0.75")
    assert verdict.established
    assert "A reached 0.75 before B in 10 of 10 paired seeds" in verdict.text
    # reversed: the verdict names the arm that was first, whichever side it was given on
    reverse = paired_first_verdict("B", b, [7200.0] * 10, "A", a, [7200.0] * 10, "0.75")
    assert reverse.established
    assert "A reached 0.75 before B in 10 of 10 paired seeds" in reverse.text
    assert "[0.69, 1.00]" in reverse.text
    mostly_b = paired_first_verdict("A", [nan] * 9 + [5.0], [7200.0] * 10, "B",
                                    a[:9] + [50.0], [7200.0] * 10, "0.75")
    assert "B reached 0.75 before A in 9 of 10" in mostly_b.text and mostly_b.established
    # a reach after the other's run ended (a shorter run) has no known order
    short = paired_first_verdict("A", [9000.0] * 10, [9000.0] * 10, "B", [nan] * 10,
                                 [7200.0] * 10, "0.75")
    assert not short.established and "no pair of 10 has a known order" in short.text
    # nine ordered pairs are too few; ten with one loss still excludes 1/2 (CP [0.55, 1.0])
    assert not paired_first_verdict("A", a[:9], [7200.0] * 9, "B", b[:9], [7200.0] * 9).established
    mixed_b = [30.0] + [nan] * 9
    assert paired_first_verdict("A", a, [7200.0] * 10, "B", mixed_b, [7200.0] * 10).established
    # all reached: the paired ratio verdict
    both = paired_first_verdict("A", a, [7200.0] * 10, "B", [2 * x for x in a], [7200.0] * 10)
    assert "0.5× B's" in both.text and both.established


def test_paired_first_verdict_false_rankings_are_rare_by_simulation() -> None:
    """Two arms with the same time distribution, censored at a common budget: a ranking is
    declared (either way) in at most 5 % of studies (the sign test's exact level), and a
    clear difference is found in most."""
    rng = np.random.default_rng(23)
    budget = np.full(12, 100.0)
    false_rankings = found = 0
    trials = 2000
    for _ in range(trials):
        a = rng.exponential(80.0, 12)
        b = rng.exponential(80.0, 12)
        a[a > budget] = math.nan
        b[b > budget] = math.nan
        false_rankings += paired_first_verdict("A", a, budget, "B", b, budget).established
        fast = rng.exponential(10.0, 12)
        found += paired_first_verdict("A", fast, budget, "B", b,
                                      budget).established
    assert false_rankings / trials <= 0.05
    assert found / trials >= 0.5
