"""Statistics over the runs of a group (seeds of one configuration), from ``scipy.stats``.

Two summaries, chosen so that an interval never claims what the data cannot:

* :func:`mean_confidence_interval` — the mean of a positive (or bounded) quantity and
  its bootstrap *percentile* interval (``scipy.stats.bootstrap(method="percentile")``).
  Every bootstrap mean lies between the smallest and the largest value, so the
  interval of a time, an energy or an accuracy never leaves the range the runs
  spanned (never below zero for a time) — unlike a t-interval ``mean ± t·s/√n``,
  which on three seeds routinely reaches below zero.
* :func:`censored_median` — the median time to an event (an accuracy target) when
  some runs never got there.  A run that ended without reaching the target is
  *right-censored* at its end: it is known only to need longer than it ran.  The
  Kaplan–Meier estimate of the survival function (``scipy.stats.ecdf`` on
  ``scipy.stats.CensoredData``) gives the median as the first time where the
  fraction of runs still short of the target falls to one half or below; when more
  than half never reached, the median is *not reached* (``inf``).  Its interval is
  where the pointwise log-log confidence band of the survival function crosses one
  half (Brookmeyer & Crowley 1982); an upper end the band never reaches is ``inf``
  (unbounded).  Never the mean of only the runs that reached: that mean is
  optimistic by construction.

Sources: Efron & Tibshirani, *An Introduction to the Bootstrap* (1993) §13.3 for the
percentile interval; Kaplan & Meier (1958), Brookmeyer & Crowley, *Biometrics* 38 (1982)
for the median and its interval; ``scipy.stats.ecdf`` documentation for the band.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np
from scipy import stats

from fleetsim.rng import stream

#: Bootstrap resamples; enough for the 2.5 % / 97.5 % percentiles to be stable to ~1 %.
BOOTSTRAP_RESAMPLES = 9999
#: Seed of the bootstrap stream: the same values always give the same interval.
BOOTSTRAP_SEED = 0


def _finite(values: Iterable[float | None]) -> np.ndarray:
    array = np.asarray([math.nan if v is None else v for v in values], dtype=float)
    return array[np.isfinite(array)]


def mean_confidence_interval(
    values: Iterable[float | None], confidence: float = 0.95
) -> tuple[float, float, float, int]:
    """``(mean, low, high, n)`` over the finite ``values`` (None / NaN / inf dropped).

    ``low``/``high``: the bootstrap percentile interval of the mean at ``confidence``
    (``scipy.stats.bootstrap``, 9999 resamples from the named stream
    ``("analysis", "bootstrap")``, so deterministic); it lies within
    ``[min(values), max(values)]``.  With one value the interval is undefined (NaN);
    with none the mean is NaN too.  Units: those of ``values``.
    """
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"confidence must be in (0, 1), got {confidence}")
    finite = _finite(values)
    n = int(finite.size)
    if n == 0:
        return math.nan, math.nan, math.nan, 0
    mean = float(finite.mean())
    if n == 1:
        return mean, math.nan, math.nan, 1
    if np.all(finite == finite[0]):
        return mean, mean, mean, n
    result = stats.bootstrap(
        (finite,),
        np.mean,
        confidence_level=confidence,
        n_resamples=BOOTSTRAP_RESAMPLES,
        method="percentile",
        rng=stream(BOOTSTRAP_SEED, "analysis", "bootstrap"),
    )
    interval = result.confidence_interval
    return mean, float(interval.low), float(interval.high), n


@dataclass(frozen=True)
class CensoredMedian:
    """The Kaplan–Meier median of times with non-reaching runs right-censored.

    ``median``, ``low``, ``high``: seconds (the units of the input); ``inf`` means
    not reached (median) or unbounded (interval end); NaN when there are no runs.
    ``reached`` of ``runs`` got to the event."""

    median: float
    low: float
    high: float
    reached: int
    runs: int

    @property
    def label(self) -> str:
        """``"reached k of n"``."""
        return f"reached {self.reached} of {self.runs}"


def _first_at_or_below_half(times: np.ndarray, survival: np.ndarray) -> float:
    hits = np.flatnonzero(survival <= 0.5 + 1e-12)
    return float(times[hits[0]]) if hits.size else math.inf


def censored_median(
    reached_times: Iterable[float | None],
    censored_times: Iterable[float | None] = (),
    confidence: float = 0.95,
) -> CensoredMedian:
    """Median time to an event over runs, counting runs that never reached it.

    ``reached_times``: the times of the runs that reached (NaN / None entries are
    ignored); ``censored_times``: for each run that did not, the time it ran until
    (its simulated end; ``inf`` or NaN when unknown — it then counts as never
    reaching at any time).  The median is the first time at which the Kaplan–Meier
    survival estimate is at most 1/2 (so for uncensored odd n the middle value, for
    even n the lower middle value); ``inf`` when more than half of the runs
    never reached.  ``low``/``high``: where the log-log pointwise band at
    ``confidence`` crosses 1/2 (``inf`` where it never does).  Raises ValueError for
    a negative time.
    """
    events = _finite(reached_times)
    raw_censored = np.asarray(
        [math.inf if c is None else c for c in censored_times], dtype=float
    )
    censored = np.where(np.isnan(raw_censored), math.inf, raw_censored)
    if (events < 0).any() or (censored < 0).any():
        raise ValueError("times to an event must be >= 0")
    runs = int(events.size + censored.size)
    if events.size == 0:
        if runs == 0:
            return CensoredMedian(math.nan, math.nan, math.nan, 0, 0)
        return CensoredMedian(math.inf, math.inf, math.inf, 0, runs)
    # Censored at infinity and censored after the last event are the same to the estimate;
    # scipy wants finite censoring times.
    finite_cap = float(max(events.max(), censored[np.isfinite(censored)].max(initial=0.0))) + 1.0
    data = stats.CensoredData(uncensored=events, right=np.minimum(censored, finite_cap))
    survival = stats.ecdf(data).sf
    times, probabilities = survival.quantiles, survival.probabilities
    median = _first_at_or_below_half(times, probabilities)
    with warnings.catch_warnings():
        # The band is undefined where the estimate is 0 or 1; handled below.
        warnings.simplefilter("ignore", RuntimeWarning)
        band = survival.confidence_interval(confidence, method="log-log")
    band_low = band.low.probabilities
    band_high = band.high.probabilities
    # Undefined band points: the lower band at an estimate of 0 is 0; an undefined upper
    # band is taken as "not yet below 1/2" (the conservative choice).
    band_low = np.where(np.isnan(band_low), np.where(probabilities <= 0.0, 0.0, 1.0), band_low)
    band_high = np.where(np.isnan(band_high), 1.0, band_high)
    low = _first_at_or_below_half(times, band_low)
    high = _first_at_or_below_half(times, band_high)
    return CensoredMedian(median, min(low, median), max(high, median), int(events.size), runs)
