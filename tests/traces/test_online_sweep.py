"""The online sweep (issue 25) gives the plain lookup's answer for every device, to the bit.

:class:`~fleetsim.traces.online_sweep.OnlineSweep` keeps each device's online state by
applying the window boundaries the clock passes.  At every query it must equal
:meth:`IntervalAvailability.is_available` over the whole fleet: on tables with touching and
zero-length windows, windows from 0, to the period's end and past it, devices with no
window, with and without a period (and a period that is not a whole number of seconds),
for small steps, exact boundary times (as the lookup shifts them), bucket edges, jumps
inside a period and over several, and the clock moving back; with both ways of starting
again (walking the boundaries, one whole-fleet lookup) and many buckets or one.  Tables
the sweep may not keep (overlapping or unsorted windows, NaN, negative starts with a
period, slices that do not tile the table) are refused, and the cursor then looks
devices up one by one with the same answers.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from fleetsim.traces import online_sweep
from fleetsim.traces.base import IntervalAvailability
from fleetsim.traces.config import AvailabilityConfig, TracesConfig
from fleetsim.traces.fleet_builder import build_availability
from fleetsim.traces.online_sweep import NotSweepable, OnlineSweep, sweepable
from fleetsim.traces.window_cursor import AvailabilityCursor

DAY = 86_400.0
PERIODS = [DAY, 2 * DAY, 86_400.3, None]


def _table(rng: np.random.Generator, n: int, period: float | None) -> IntervalAvailability:
    """``n`` devices with sorted windows of every shape the sweep accepts."""
    span = period or 3 * DAY
    offsets, starts, ends = [0], [], []
    for d in range(n):
        kind = d % 7
        if kind == 0:  # no window
            cuts = np.array([])
        elif kind == 1:  # the whole period, and (with a period) past its end
            cuts = np.array([0.0, span * (1.25 if d % 2 else 1.0)])
        elif kind == 2:  # touching windows and a zero-length one
            a, b, c = np.sort(rng.uniform(0.05 * span, 0.95 * span, size=3))
            cuts = np.array([0.0, a, a, b, c, c])
        elif kind == 3:  # a window to the period's end exactly
            inner = np.sort(rng.uniform(0.1 * span, 0.9 * span, size=2))
            cuts = np.concatenate((inner, [span, span]))[:4]
            cuts[3] = span
        else:
            cuts = np.sort(rng.uniform(0.0, span, size=2 * int(rng.integers(1, 7))))
            # some times shared between devices (ties inside a bucket)
            cuts = np.round(cuts, -2) if d % 3 == 0 else cuts
        starts += cuts[0::2].tolist()
        ends += cuts[1::2].tolist()
        offsets.append(len(starts))
    return IntervalAvailability(np.array(offsets), np.array(starts), np.array(ends),
                                period_s=period)


def _times(rng: np.random.Generator, trace: IntervalAvailability) -> list[float]:
    """Query times: small steps, boundaries as the lookup shifts them (k * P + b), jumps
    inside a period and over several, and steps back."""
    p = trace.period_s or 0.0
    steps = np.cumsum(rng.exponential(700.0, size=250))
    raw = rng.choice(np.concatenate((trace.starts, trace.ends)), size=120)
    shifted = [b + k * p for b, k in zip(raw.tolist(), rng.integers(0, 3, size=len(raw)))]
    times = np.sort(np.concatenate((steps, shifted, [p, 2 * p, 2 * p - 1e-9])))
    times = times.tolist()
    last = times[-1]
    return times + [last + 0.4 * (p or DAY), last + 5 * (p or DAY), last - 300.0,
                    last - 3 * (p or DAY), last + 7 * (p or DAY) + 1.0]


@pytest.mark.parametrize("walk", [0, 10**9])  # restarts by lookup only / by walking only
@pytest.mark.parametrize("per_bucket", [4, 40, 10**9])  # many buckets ... one
@pytest.mark.parametrize("period", PERIODS)
def test_sweep_equals_the_lookup_at_every_query(period, per_bucket, walk, monkeypatch):
    monkeypatch.setattr(online_sweep, "BOUNDARIES_PER_BUCKET", per_bucket)
    monkeypatch.setattr(online_sweep, "WALK_PER_DEVICE", walk)
    rng = np.random.default_rng(11)
    trace = _table(rng, 210, period)
    assert sweepable(trace)
    sweep = OnlineSweep(trace)
    if per_bucket == 4:
        assert sweep._buckets == online_sweep.MAX_BUCKETS or sweep._buckets > 100
    ids = np.arange(trace.num_devices)
    for t in _times(rng, trace):
        np.testing.assert_array_equal(sweep.online_at(t), trace.is_available(ids, t),
                                      err_msg=f"t={t!r}")


@pytest.mark.parametrize("period", PERIODS)
def test_sweep_at_bucket_edges_and_each_boundary(period, monkeypatch):
    """Every boundary time of one period in turn (each query passes one boundary), then
    each bucket's latest boundary, shifted as the lookup shifts it."""
    monkeypatch.setattr(online_sweep, "BOUNDARIES_PER_BUCKET", 6)
    rng = np.random.default_rng(5)
    trace = _table(rng, 60, period)
    sweep = OnlineSweep(trace)
    ids = np.arange(trace.num_devices)
    base = (period or 0.0) * 3
    every = np.unique(np.concatenate((trace.starts, trace.ends))) + base
    edges = np.sort(sweep._latest[np.isfinite(sweep._latest)] + base)
    for t in np.concatenate((every, edges, np.nextafter(edges, np.inf))).tolist():
        if period and trace._period_index(t) != 3:
            continue
        np.testing.assert_array_equal(sweep.online_at(t), trace.is_available(ids, t),
                                      err_msg=f"t={t!r}")


@pytest.mark.parametrize("walk", [0, 10**9])
@pytest.mark.parametrize("period", PERIODS)
def test_sweep_from_a_start_on_a_boundary_or_just_before_a_bucket_ends(period, walk,
                                                                       monkeypatch):
    """A fresh sweep whose first query falls on a boundary, or just before a bucket's
    latest boundary, then the queries after it up to the bucket's end."""
    monkeypatch.setattr(online_sweep, "BOUNDARIES_PER_BUCKET", 6)
    monkeypatch.setattr(online_sweep, "WALK_PER_DEVICE", walk)
    rng = np.random.default_rng(8)
    trace = _table(rng, 60, period)
    ids = np.arange(trace.num_devices)
    base = (period or 0.0) * 2
    latest = OnlineSweep(trace)._latest
    latest = np.sort(latest[np.isfinite(latest)]) + base
    firsts = np.concatenate((rng.choice(np.concatenate((trace.starts, trace.ends)), 40) + base,
                             latest - 0.5, np.nextafter(latest, -np.inf)))
    for first in firsts.tolist():
        sweep = OnlineSweep(trace)
        later = latest[latest >= first]
        for t in [first] + later[:3].tolist() + (later[:3] + 0.25).tolist():
            if t < first or (period and trace._period_index(t) != 2):
                continue
            np.testing.assert_array_equal(sweep.online_at(t), trace.is_available(ids, t),
                                          err_msg=f"first={first!r} t={t!r}")


def test_sweep_with_infinite_times_and_no_period():
    trace = IntervalAvailability(np.array([0, 1, 3, 3, 4]),
                                 np.array([-np.inf, 5.0, 10.0, 7.0]),
                                 np.array([3.0, 10.0, np.inf, 8.0]))
    sweep = OnlineSweep(trace)
    ids = np.arange(4)
    for t in [-1e300, -5.0, 2.999, 3.0, 5.0, 9.0, 10.0, 1e9, 7.5, 1e300]:
        np.testing.assert_array_equal(sweep.online_at(t), trace.is_available(ids, t))


def test_the_mask_is_read_only_and_kept_up_to_date():
    trace = IntervalAvailability(np.array([0, 1, 2]), np.array([0.0, 50.0]),
                                 np.array([100.0, 200.0]), period_s=DAY)
    sweep = OnlineSweep(trace)
    mask = sweep.online_at(10.0)
    assert mask.tolist() == [True, False]
    with pytest.raises(ValueError):
        mask[0] = False
    sweep.online_at(150.0)
    assert mask.tolist() == [False, True]  # the same array, updated in place
    assert sweep.online_at(DAY + 60.0) is mask  # a new period: still the same array
    assert mask.tolist() == [True, True]
    assert sweep.online_at(20.0) is mask and mask.tolist() == [True, False]  # back in time


def _refused_tables() -> dict[str, IntervalAvailability]:
    iv = IntervalAvailability
    return {
        "overlapping": iv(np.array([0, 2]), np.array([0.0, 50.0]), np.array([100.0, 200.0]),
                          period_s=DAY),
        "unsorted": iv(np.array([0, 2]), np.array([500.0, 0.0]), np.array([600.0, 100.0])),
        "start after end": iv(np.array([0, 1]), np.array([10.0]), np.array([5.0])),
        "NaN": iv(np.array([0, 1]), np.array([np.nan]), np.array([5.0])),
        "negative start with a period": iv(np.array([0, 1]), np.array([-10.0]),
                                           np.array([5.0]), period_s=DAY),
        "slices not tiling": iv(np.array([0, 1, 1]), np.array([0.0, 5.0]),
                                np.array([1.0, 6.0])),
        "no window": iv(np.array([0, 0, 0]), np.array([]), np.array([])),
    }


@pytest.mark.parametrize("name", list(_refused_tables()))
def test_tables_the_sweep_may_not_keep_are_looked_up_instead(name):
    trace = _refused_tables()[name]
    assert not sweepable(trace)
    with pytest.raises(NotSweepable):
        OnlineSweep(trace)
    cursor = AvailabilityCursor(trace)
    ids = np.arange(trace.num_devices)
    for t in [0.0, 4.0, 5.0, 60.0, 150.0, 550.0, DAY + 60.0]:
        mask = cursor.available_mask(t)
        if name not in ("overlapping", "unsorted", "start after end"):
            # (those three break IntervalAvailability's own contract: no answer is right)
            np.testing.assert_array_equal(mask, trace.is_available(ids, t))
    assert cursor._sweep is None


@pytest.mark.parametrize("period", PERIODS)
def test_cursor_uses_the_sweep_with_the_same_answers(period, monkeypatch):
    """The cursor's whole-fleet answers come from the sweep on a loader-shaped table, and
    its per-device answers (``state``) still from its cache, in any order of calls."""
    monkeypatch.setattr(online_sweep, "BOUNDARIES_PER_BUCKET", 8)
    rng = np.random.default_rng(2)
    trace = _table(rng, 150, period)
    cursor = AvailabilityCursor(trace)
    plain = AvailabilityCursor(trace, sweep=False)
    ids = np.arange(trace.num_devices)
    for t in _times(rng, trace)[::2]:
        sample = rng.choice(ids, size=30, replace=False)
        on, end = cursor.state(sample, t)
        np.testing.assert_array_equal(on, trace.is_available(sample, t))
        np.testing.assert_array_equal(end, trace.window_end(sample, t))
        np.testing.assert_array_equal(cursor.available_mask(t), plain.available_mask(t))
        np.testing.assert_array_equal(cursor.available_ids(t), np.flatnonzero(
            trace.is_available(ids, t)))
    assert cursor._sweep is not None


def test_state_after_a_later_query_is_not_answered_from_the_future():
    """A per-device query back in time after a later one: looked up afresh (the cache only
    holds lookups at earlier times), whether or not whole-fleet queries came between."""
    trace = IntervalAvailability(np.array([0, 1]), np.array([100.0]), np.array([200.0]))
    cursor = AvailabilityCursor(trace)
    ids = np.array([0])
    assert cursor.state(ids, 150.0)[0].tolist() == [True]
    assert cursor.state(ids, 50.0)[0].tolist() == [False]
    assert cursor.state(ids, 150.0)[0].tolist() == [True]


SHARED = Path(__file__).resolve().parents[2] / ".." / "shared" / "device_data"
READY = SHARED / "flash_ready_windows" / "ready_strict.json"


@pytest.mark.skipif(not READY.exists(), reason="../shared/device_data not present")
@pytest.mark.parametrize("kind", ["empirical", "flash_windows", "diurnal_windows"])
def test_the_loaders_interval_tables_are_swept(kind, tmp_path):
    """The measured windows (FLASH, ../shared) and the diurnal model fitted to them give
    tables the sweep keeps, with the lookup's answers over two simulated days."""
    path = None if kind == "diurnal_windows" else str(READY)
    cfg = TracesConfig(availability=AvailabilityConfig(kind=kind, path=path))
    trace = build_availability(cfg, 2_000, 0, 3 * DAY, tmp_path)
    assert isinstance(trace, IntervalAvailability) and sweepable(trace)
    cursor = AvailabilityCursor(trace)
    ids = np.arange(trace.num_devices)
    for t in np.arange(0.0, 2 * DAY, 1_789.0).tolist():
        np.testing.assert_array_equal(cursor.available_mask(t), trace.is_available(ids, t))
    assert cursor._sweep is not None


def test_times_the_period_arithmetic_cannot_hold_are_looked_up():
    """Where ``(k + 1) * P`` no longer exceeds ``t`` (a tiny period against a huge time) the
    proof does not hold: the sweep answers with the plain lookup, then carries on."""
    trace = IntervalAvailability(np.array([0, 2, 3]), np.array([1.25e-8, 6.25e-8, 0.0]),
                                 np.array([3.75e-8, 1e-7, 5e-8]), period_s=1e-7)
    sweep = OnlineSweep(trace)
    ids = np.arange(2)
    for t in [2.5e-8, 3.0e16, -2.758e8, 7.1e-8, np.nan, 1.3e-6]:
        k = trace._period_index(t) if t == t else np.nan
        holds = (k + 1.0) * 1e-7 > t
        np.testing.assert_array_equal(sweep.online_at(t), trace.is_available(ids, t))
        assert holds or not sweep._valid


def test_a_restart_by_lookup_at_a_huge_time_reads_is_available(monkeypatch):
    """At ~2**52 periods ``window_state``'s end rounds below ``t`` for a window ending at
    ``P`` while ``is_available`` says online: the restart uses the latter (reviewer's case)."""
    monkeypatch.setattr(online_sweep, "BOUNDARIES_PER_BUCKET", 2)
    monkeypatch.setattr(online_sweep, "WALK_PER_DEVICE", 0)
    trace = IntervalAvailability(
        np.array([0, 4]),
        np.array([5223.998825989369, 23441.727710132865, 64485.14810009399, 72609.82328387583]),
        np.array([18570.12704306099, 53969.65376558177, 69278.96182479335, 86400.0]),
        period_s=DAY)
    t = 3.166098346679724e20
    np.testing.assert_array_equal(OnlineSweep(trace).online_at(t),
                                  trace.is_available(np.arange(1), t))


@pytest.mark.parametrize("times", [[0.0, 1e-310], [-1e308, 1e308], [5.0, 5.0]])
def test_spans_too_small_or_large_to_scale_take_one_bucket(times):
    """No period and a span whose scale is not finite: one bucket, no NaN keys (numpy
    warnings are errors here)."""
    trace = IntervalAvailability(np.array([0, 1, 2]), np.array([times[0], times[1]]),
                                 np.array([times[0], times[1] + abs(times[1]) * 0.0]))
    with np.errstate(all="raise"):
        sweep = OnlineSweep(trace)
        for t in [-np.inf, times[0], times[1], 0.0, 1.0, np.inf]:
            np.testing.assert_array_equal(sweep.online_at(t), trace.is_available(np.arange(2), t))
