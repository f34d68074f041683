"""run.start_hour and period wrap-around: every availability decision at a window boundary
is exact (issue 22 kind 7).  The cursor the fleet dispatches from, ``is_available``,
``window_end`` and ``next_start`` agree at every instant, window edges and the doubles
next to them included, for random windows, periods and start offsets."""

from __future__ import annotations

import numpy as np
from hypothesis import given, note, settings
from hypothesis import strategies as st

from fleetsim.traces.base import IntervalAvailability
from fleetsim.traces.shift import StartShifted, first_instant_reaching
from fleetsim.traces.window_cursor import AvailabilityCursor

HOUR = 3600.0


def test_issue_scenario_offline_phone_is_offline_after_shift() -> None:
    # a window whose end, mapped back by t + off - off, rounds one ulp above t (the issue)
    off = 15 * HOUR
    found = None
    for t in np.linspace(1000.0, 50_000.0, 20_001):
        if (t + off) - off > t:
            found = float(t)
            break
    assert found is not None
    u = found + off
    # device 0 online [0, u): offline at simulated t = found, window ends exactly at u
    trace = StartShifted(IntervalAvailability(np.array([0, 1]), np.array([0.0]),
                                              np.array([u])), off)
    ids = np.array([0])
    assert not trace.is_available(ids, found)[0]
    assert trace.window_end(ids, found)[0] == found  # offline: t itself, not t + 1 ulp
    cursor = AvailabilityCursor(trace)
    assert not cursor.available_mask(found)[0]
    # the old view, window_end(t) = inner.window_end(t + off) - off, said online here
    assert trace.inner.window_end(ids, found + off)[0] - off > found
    # the window's last online instant: the double before the first that reaches u
    first = float(first_instant_reaching(np.array([u]), off)[0])
    assert first <= found and first + off == u
    before = float(np.nextafter(first, -np.inf))
    assert trace.is_available(ids, before)[0]
    assert AvailabilityCursor(trace).available_mask(before)[0]
    assert trace.window_end(ids, before)[0] == first


@settings(max_examples=300, deadline=None)
@given(edge=st.floats(0.0, 1e7), off=st.sampled_from([0.0, 3 * HOUR, 9 * HOUR, 15 * HOUR,
                                                       21 * HOUR, 12345.678, 1e-3]))
def test_first_instant_reaching_is_the_smallest(edge: float, off: float) -> None:
    x = float(first_instant_reaching(np.array([edge]), off)[0])
    assert x + off >= edge
    assert float(np.nextafter(x, -np.inf)) + off < edge


@st.composite
def shifted_traces(draw):
    n = draw(st.integers(1, 4))
    periodic = draw(st.booleans())
    period = draw(st.sampled_from([86400.0, 7 * 86400.0, 1000.0, 3333.3, 0.1 * 86400.0 + 0.3]))
    starts, ends, offsets = [], [], [0]
    for _ in range(n):
        k = draw(st.integers(0, 4))
        pts = sorted(draw(st.lists(st.floats(0.0, period if periodic else 3 * period,
                                             allow_nan=False), min_size=2 * k,
                                   max_size=2 * k, unique=True)))
        # edges at least 1 ms apart: a window or gap shorter than the spacing of doubles
        # at the run's times cannot be seen at all (kP + 1e-136 == kP)
        pts = sorted(set(round(x, 3) for x in pts))
        for a, b in zip(pts[::2], pts[1::2]):
            starts.append(a)
            ends.append(b)
        offsets.append(len(starts))
    trace = IntervalAvailability(np.array(offsets), np.array(starts, dtype=float),
                                 np.array(ends, dtype=float),
                                 period_s=period if periodic else None)
    off = draw(st.one_of(st.sampled_from([0.0, 3 * HOUR, 15 * HOUR, 9 * HOUR, 21 * HOUR]),
                         st.floats(0.0, 3 * period, allow_nan=False)))
    return trace, off


def _boundary_instants(trace: IntervalAvailability, off: float, draw_extra) -> list[float]:
    p = trace.period_s or 0.0
    reps = range(3) if p else range(1)
    edges = [float(e) + k * p for e in np.concatenate([trace.starts, trace.ends]) for k in reps]
    out = []
    for e in edges:
        for x in (e - off, float(first_instant_reaching(np.array([e]), off)[0])):
            if x >= 0:
                out += [x, float(np.nextafter(x, -np.inf)), float(np.nextafter(x, np.inf))]
    return sorted(set(v for v in out + draw_extra if v >= 0))


@settings(max_examples=200, deadline=None)
@given(data=shifted_traces(), extra=st.lists(st.floats(0.0, 5e6, allow_nan=False),
                                             max_size=8))
def test_cursor_and_is_available_agree_at_random_instants(data, extra) -> None:
    inner, off = data
    note(f"offsets={inner.offsets.tolist()} starts={inner.starts.tolist()} "
         f"ends={inner.ends.tolist()} period={inner.period_s!r} offset={off!r}")
    trace = StartShifted(inner, off) if off else inner
    _check_agreement(trace, _boundary_instants(inner, off, extra))


def _check_agreement(trace, times: list[float]) -> None:
    """The walking cursor, fresh cursors, window_end and next_start all agree with
    is_available at every instant of ``times`` (sorted)."""
    ids = np.arange(trace.num_devices)
    walking = AvailabilityCursor(trace)  # one cursor on the monotone clock, as a run uses
    for t in times:
        truth = trace.is_available(ids, t)
        np.testing.assert_array_equal(walking.available_mask(t), truth, err_msg=f"t={t!r}")
        fresh = AvailabilityCursor(trace)
        np.testing.assert_array_equal(fresh.available_mask(t), truth)
        online, end = walking.state(ids, t)
        np.testing.assert_array_equal(online, truth)
        end = trace.window_end(ids, t)
        start = trace.next_start(ids, t)
        np.testing.assert_array_equal(end > t, truth)
        np.testing.assert_array_equal(start == t, truth)
        for d in ids:
            if truth[d] and np.isfinite(end[d]):
                # online up to the double below the reported end, offline at it
                last = float(np.nextafter(end[d], -np.inf))
                assert trace.is_available(ids[d:d + 1], last)[0]
                assert not trace.is_available(ids[d:d + 1], float(end[d]))[0]
            if not truth[d] and np.isfinite(start[d]):
                assert start[d] > t
                assert trace.is_available(ids[d:d + 1], float(start[d]))[0]
                assert not trace.is_available(
                    ids[d:d + 1], float(np.nextafter(start[d], -np.inf)))[0]


@settings(max_examples=150, deadline=None)
@given(offsets=st.lists(st.floats(0.0, 86400.0), min_size=1, max_size=4),
       durations=st.lists(st.floats(0.001, 86000.0), min_size=4, max_size=4),
       period=st.sampled_from([86400.0, 3333.3 * 26, 7 * 86400.0]),
       off=st.sampled_from([3 * HOUR, 9 * HOUR, 15 * HOUR, 21 * HOUR, 12345.678]),
       extra=st.lists(st.floats(0.0, 2e6, allow_nan=False), max_size=6))
def test_diurnal_model_agrees_under_shifts(offsets, durations, period, off, extra) -> None:
    from fleetsim.traces.formats.diurnal_model import DiurnalAvailability

    inner = DiurnalAvailability(np.array(offsets), np.array(durations[:len(offsets)]), period)
    trace = StartShifted(inner, off)
    times = list(extra)
    for a, dur in zip(inner.offset_s, inner.duration_s):
        for k in range(3):
            for edge in (a + k * period, a + k * period + dur):
                x = float(first_instant_reaching(np.array([edge]), off)[0])
                times += [x, float(np.nextafter(x, -np.inf)), float(edge - off)]
    _check_agreement(trace, sorted(v for v in set(times) if v >= 0))


def test_window_ending_at_the_period_end_never_overruns_the_next_period() -> None:
    # ends[j] + 12 * P rounds one ulp above 13 * P (P = 3333.3): the window must end at
    # 13 * P as computed where the next period starts, else the double before the reported
    # end reads as offline while the cursor holds the device online (found by hypothesis)
    p = 3333.3
    trace = IntervalAvailability(np.array([0, 2]), np.array([1.0, 7.0]),
                                 np.array([2.0, p]), period_s=p)
    ids = np.array([0])
    assert 3333.3 + 12 * p > 13.0 * p  # the rounding this guards against
    end = trace.window_end(ids, 40007.0)[0]
    assert end == 13.0 * p
    assert trace.is_available(ids, float(np.nextafter(end, -np.inf)))[0]
    assert not trace.is_available(ids, end)[0]
    shifted = StartShifted(trace, 32400.0)
    end = shifted.window_end(ids, 7607.0)[0]
    assert shifted.is_available(ids, float(np.nextafter(end, -np.inf)))[0]
    assert not shifted.is_available(ids, end)[0]
