"""The availability cursor's hinted lookups (issue 25) give the unhinted answers exactly.

:meth:`IntervalAvailability.window_state_hinted` skips its search where the interval of
an earlier lookup (or the next one) provably is the answer.  Whatever the hint (the
cursor's, stale, from another period, or out of range), ``(end, until)`` must equal the plain
lookup's to the bit, on traces with windows that wrap around the period, cover it, touch
its end, devices with no window, and without a period.
"""

from __future__ import annotations

import numpy as np
import pytest

from fleetsim.traces.base import AvailabilityTrace, IntervalAvailability
from fleetsim.traces.window_cursor import AvailabilityCursor

DAY = 86_400.0


def _trace(rng: np.random.Generator, n: int, period: float | None,
           wrapping: bool = True) -> IntervalAvailability:
    """``n`` devices; with ``wrapping``, some windows start at 0 or cover the period (the
    continuation rules); without, none does (the lookup's shortcut)."""
    offsets, starts, ends = [0], [], []
    span = period or 3 * DAY
    for d in range(n):
        kind = d % 6 if wrapping else 3 + d % 3
        if kind == 0:  # no window at all
            cuts = np.array([])
        elif kind == 1:  # one window covering the whole period
            cuts = np.array([0.0, span])
        elif kind == 2:  # a window from 0 (wraps from the previous period) and one to the end
            inner = np.sort(rng.uniform(0.1 * span, 0.9 * span, size=2))
            cuts = np.concatenate(([0.0], inner, [span]))
        else:
            cuts = np.sort(rng.uniform(0.0, span, size=2 * int(rng.integers(1, 6))))
        starts += cuts[0::2].tolist()
        ends += cuts[1::2].tolist()
        offsets.append(len(starts))
    return IntervalAvailability(np.array(offsets), np.array(starts), np.array(ends),
                                period_s=period)


def _plain(trace: IntervalAvailability, ids: np.ndarray, t: float):
    """``(end, until)`` from the separate ``window_end`` / ``next_start`` lookups (the base
    class's composition), not the fused one under test."""
    return AvailabilityTrace.window_state(trace, ids, t)


@pytest.mark.parametrize("wrapping", [True, False])
@pytest.mark.parametrize("period", [DAY, 2 * DAY, None])
def test_hinted_lookups_equal_plain_ones_along_a_clock(period, wrapping):
    rng = np.random.default_rng(7)
    trace = _trace(rng, 240, period, wrapping)
    ids = np.arange(trace.num_devices)
    index = np.full(len(ids), -1, dtype=np.int64)
    # Small steps (one boundary at a time: the hint's case), large jumps, exact boundaries.
    times = np.cumsum(rng.exponential(900.0, size=400))
    boundaries = rng.choice(np.concatenate((trace.starts, trace.ends)), size=60)
    times = np.sort(np.concatenate((times, boundaries, boundaries + 3 * DAY)))
    hinted = 0
    for t in times.tolist():
        plain = _plain(trace, ids, t)
        end, until, index_now = trace.window_state_hinted(ids, t, index)
        np.testing.assert_array_equal(end, plain[0])
        np.testing.assert_array_equal(until, plain[1])
        np.testing.assert_array_equal((end, until), trace.window_state(ids, t))
        hinted += int(np.sum(index_now == index))
        index = index_now
    assert hinted > 0  # the hint was used, not only checked


@pytest.mark.parametrize("period", [DAY, None])
def test_any_hint_gives_the_plain_answer(period):
    rng = np.random.default_rng(11)
    trace = _trace(rng, 120, period)
    ids = np.arange(trace.num_devices)
    for t in rng.uniform(0.0, 4 * DAY, size=80).tolist():
        plain = _plain(trace, ids, t)
        index = rng.integers(-2, len(trace.ends) + 2, size=len(ids))
        end, until, _ = trace.window_state_hinted(ids, t, index)
        np.testing.assert_array_equal(end, plain[0])
        np.testing.assert_array_equal(until, plain[1])


@pytest.mark.parametrize("wrapping", [True, False])
@pytest.mark.parametrize("period", [DAY, 2 * DAY, None])
def test_cursor_state_matches_the_trace_at_every_step(period, wrapping):
    """The cursor's whole-fleet state (cached, refreshed by hinted lookups) and its
    per-device answers equal fresh lookups: small steps, exact boundary times, several
    boundaries of one phone between two queries, a jump over whole periods, a query back
    in time."""
    rng = np.random.default_rng(3)
    trace = _trace(rng, 300, period, wrapping)
    cursor = AvailabilityCursor(trace)
    ids = np.arange(trace.num_devices)
    steps = np.cumsum(rng.exponential(1_200.0, size=300))
    boundaries = rng.choice(np.concatenate((trace.starts, trace.ends)), size=80)
    times = np.sort(np.concatenate((steps, boundaries + DAY, boundaries + 2 * DAY)))
    times = np.concatenate((times, [times[-1] + 5 * DAY, times[-1] + 5 * DAY + 1.0,
                                    times[-1] - 100.0, times[-1] + 6 * DAY]))
    for t in times.tolist():
        online = cursor.available_mask(t).copy()
        np.testing.assert_array_equal(online, trace.is_available(ids, t))
        sample = rng.choice(ids, size=40, replace=False)
        on, end = cursor.state(sample, t)
        np.testing.assert_array_equal(on, trace.is_available(sample, t))
        np.testing.assert_array_equal(end, trace.window_end(sample, t))
