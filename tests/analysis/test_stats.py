import math

import pytest

from fleetsim.analysis.stats import mean_confidence_interval, student_t_cdf, student_t_ppf


@pytest.mark.parametrize(
    ("df", "quantile"),
    # two-sided 95 % critical values from standard t tables
    [(1, 12.7062), (2, 4.3027), (4, 2.7764), (10, 2.2281), (30, 2.0423), (1000, 1.9623)],
)
def test_t_quantile_matches_tables(df: int, quantile: float) -> None:
    assert student_t_ppf(0.975, df) == pytest.approx(quantile, abs=1e-4)
    assert student_t_ppf(0.025, df) == pytest.approx(-quantile, abs=1e-4)
    assert student_t_cdf(student_t_ppf(0.9, df), df) == pytest.approx(0.9, abs=1e-9)


def test_mean_interval_by_hand() -> None:
    mean, low, high, n = mean_confidence_interval([26.0, 30.0, 34.0])
    half = 4.302653 * 4.0 / math.sqrt(3)
    assert (mean, n) == (30.0, 3)
    assert low == pytest.approx(30.0 - half, rel=1e-6)
    assert high == pytest.approx(30.0 + half, rel=1e-6)


def test_mean_interval_ignores_missing_and_is_undefined_for_one_value() -> None:
    mean, low, high, n = mean_confidence_interval([5.0, math.nan, None])
    assert (mean, n) == (5.0, 1) and math.isnan(low) and math.isnan(high)
    mean, low, high, n = mean_confidence_interval([math.nan])
    assert n == 0 and math.isnan(mean)
