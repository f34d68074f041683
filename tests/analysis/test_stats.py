"""Each statistic of fleetsim.analysis.stats against a value computed another way."""

import itertools
import math

import numpy as np
import pytest
from scipy import stats

from fleetsim.analysis.stats import censored_median, mean_confidence_interval


def _exact_bootstrap_means(values: list[float]) -> np.ndarray:
    """Every ordered resample of ``values`` (n^n of them, equally likely): the exact
    bootstrap distribution of the mean that scipy's Monte Carlo bootstrap samples."""
    return np.array([np.mean(r) for r in itertools.product(values, repeat=len(values))])


def test_mean_interval_is_the_exact_bootstrap_percentile_interval() -> None:
    values = [1.0, 2.0, 4.0, 10.0]
    mean, low, high, n = mean_confidence_interval(values)
    exact = _exact_bootstrap_means(values)  # 256 resamples
    assert (mean, n) == (4.25, 4)
    # The Monte Carlo percentile lies within a percentile point of the exact one.
    assert np.percentile(exact, 1.5) <= low <= np.percentile(exact, 3.5)
    assert np.percentile(exact, 96.5) <= high <= np.percentile(exact, 98.5)
    # deterministic: the bootstrap draws from a named stream
    assert mean_confidence_interval(values) == (mean, low, high, n)


def test_mean_interval_of_a_positive_quantity_never_goes_below_zero() -> None:
    values = [0.1, 0.2, 50.0]  # three seeds, one slow: a t-interval reaches far below zero
    t_low, _ = stats.t.interval(
        0.95, 2, loc=np.mean(values), scale=np.std(values, ddof=1) / math.sqrt(3)
    )
    assert t_low < 0
    mean, low, high, _ = mean_confidence_interval(values)
    assert min(values) <= low <= mean <= high <= max(values)


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
    assert result.label == f"reached {k} of {n}"
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
