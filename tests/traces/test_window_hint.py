"""The availability cursor's hinted lookups (issue 25) give the unhinted answers exactly.

:meth:`IntervalAvailability.window_state_hinted` skips its search where the interval of
an earlier lookup (or the next one) provably is the answer.  Whatever the hint (the
cursor's, stale, from another period, or out of range), ``(end, until)`` must equal the plain
lookup's to the bit, on traces with windows that wrap around the period, cover it, touch
its end, devices with no window, and without a period.  Likewise
:meth:`IntervalAvailability.window_state_stepped` (the cursor's refresh) from any step code,
and the first lookup's sweep over every interval (``_lookup`` on the whole fleet in order).
"""

from __future__ import annotations

import numpy as np
import pytest

from fleetsim.traces import base as base_module
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
@pytest.mark.parametrize("period", [DAY, 2 * DAY, 86_400.3, None])
def test_cursor_state_matches_the_trace_at_every_step(period, wrapping):
    """The cursor's whole-fleet state (cached, refreshed by stepped lookups: online, valid
    until, and the step codes of the devices it refreshed) and its per-device answers equal
    fresh lookups: small steps, exact boundary times, several boundaries of one phone
    between two queries, a jump over whole periods, a query back in time.  Without the
    online sweep, which answers whole-fleet queries of loader-made tables instead
    (tests/traces/test_online_sweep.py): this tests the refresh the other tables use."""
    rng = np.random.default_rng(3)
    trace = _trace(rng, 300, period, wrapping)
    cursor = AvailabilityCursor(trace, sweep=False)
    ids = np.arange(trace.num_devices)
    steps = np.cumsum(rng.exponential(1_200.0, size=300))
    boundaries = rng.choice(np.concatenate((trace.starts, trace.ends)), size=80)
    times = np.sort(np.concatenate((steps, boundaries + DAY, boundaries + 2 * DAY)))
    times = np.concatenate((times, [times[-1] + 5 * DAY, times[-1] + 5 * DAY + 1.0,
                                    times[-1] - 100.0, times[-1] + 6 * DAY]))
    for t in times.tolist():
        refreshed = (cursor.valid_until <= t) | (t < cursor._last_t)
        online = cursor.available_mask(t).copy()
        np.testing.assert_array_equal(online, trace.is_available(ids, t))
        # every device's cached state, not a sample: online, until when, the step code
        end, until = _plain(trace, ids, t)
        np.testing.assert_array_equal(cursor.online, end > t)
        np.testing.assert_array_equal(cursor.valid_until, until)
        np.testing.assert_array_equal(cursor._step_code[refreshed],
                                      _plain_codes(trace, ids[refreshed], t, end[refreshed]))
        sample = rng.choice(ids, size=40, replace=False)
        on, end = cursor.state(sample, t)
        np.testing.assert_array_equal(on, trace.is_available(sample, t))
        np.testing.assert_array_equal(end, trace.window_end(sample, t))


# ------------------------------------------------------------------ stepped lookups (codes)

PERIODS = [DAY, 2 * DAY, 86_400.3, None]


def _plain_codes(trace: IntervalAvailability, ids: np.ndarray, t: float,
                 end: np.ndarray) -> np.ndarray:
    """``2 * i + online`` with ``i`` the first interval of each device's slice that ends
    after ``t`` in ``t``'s period (the next period's first past the last; -1 where there is
    none), found by ``np.searchsorted`` one device at a time: not the lookups under test."""
    p = trace.period_s
    base = trace._period_index(t) * float(p) if p else 0.0
    codes = np.full(len(ids), -1, dtype=np.int64)
    for j, d in enumerate(np.asarray(ids).tolist()):
        lo, hi = int(trace.offsets[d]), int(trace.offsets[d + 1])
        i = lo + int(np.searchsorted(trace.ends[lo:hi] + base, t, side="right"))
        if i == hi:
            if not p or hi == lo:
                continue
            i = lo
        codes[j] = 2 * i + int(end[j] > t)
    return codes


def _check_stepped(trace: IntervalAvailability, ids: np.ndarray, t: float,
                   code: np.ndarray, plain=None, codes=None) -> np.ndarray:
    """``window_state_stepped`` from ``code`` equals the plain lookup (and its codes)."""
    end_p, until_p = plain if plain is not None else _plain(trace, ids, t)
    end, until, out = trace.window_state_stepped(ids, t, code.copy())
    np.testing.assert_array_equal(end, end_p)
    np.testing.assert_array_equal(until, until_p)
    np.testing.assert_array_equal(out, _plain_codes(trace, ids, t, end_p) if codes is None
                                  else codes)
    # the code's own consistency: an interval of the device's slice, its online bit
    has = out >= 0
    i = out[has] >> 1
    d = ids[has]
    assert ((trace.offsets[d] <= i) & (i < trace.offsets[d + 1])).all()
    np.testing.assert_array_equal((out[has] & 1) == 1, end_p[has] > t)
    return out


def _times(rng: np.random.Generator, trace: IntervalAvailability, size: int) -> np.ndarray:
    """Random times over several periods and exact boundaries (a start or an end plus a
    whole number of periods, summed as the lookups sum them)."""
    p = trace.period_s or 0.0
    span = trace.period_s or 3 * DAY
    edges = rng.choice(np.concatenate((trace.starts, trace.ends)), size=size)
    k = rng.integers(0, 4, size=size) if p else np.zeros(size)
    return np.concatenate((rng.uniform(0.0, 5 * span, size=size), edges + k * p))


@pytest.mark.parametrize("wrapping", [True, False])
@pytest.mark.parametrize("period", PERIODS)
def test_stepped_lookup_from_any_code_gives_the_plain_answer(period, wrapping):
    rng = np.random.default_rng(13)
    trace = _trace(rng, 150, period, wrapping)
    n, m = trace.num_devices, len(trace.ends)
    ids = np.arange(n)
    earlier = None
    for t in _times(rng, trace, 30).tolist():
        plain = _plain(trace, ids, t)
        right = _plain_codes(trace, ids, t, plain[0])
        # the right code, its neighbours (one boundary off, the other online bit), another
        # device's, an earlier time's, negative, zero, past the last interval, random
        sources = np.stack([
            right, right + 1, right - 1, right + 2, right - 2, right ^ 1,
            rng.permutation(right), earlier if earlier is not None else right,
            np.full(n, -5), np.full(n, -1), np.zeros(n, dtype=np.int64),
            np.full(n, 2 * m), np.full(n, 2 * m + 1), np.full(n, 2 * m + 7),
            rng.integers(-5, 2 * m + 6, size=n),
        ])
        for code in sources:
            _check_stepped(trace, ids, t, code, plain, right)
        mixed = sources[rng.integers(0, len(sources), size=n), ids]
        _check_stepped(trace, ids, t, mixed, plain, right)
        # a subset of devices, in any order, some twice (the cursor's stale devices)
        sub = rng.choice(n, size=n // 2)
        _check_stepped(trace, sub, t, mixed[sub], (plain[0][sub], plain[1][sub]), right[sub])
        earlier = right


@pytest.mark.parametrize("period", [DAY, None])
def test_stepped_lookup_on_a_trace_without_windows(period):
    trace = IntervalAvailability(np.zeros(5, dtype=np.int64), np.array([]), np.array([]),
                                 period_s=period)
    ids = np.arange(4)
    for t in (0.0, 10.0, 3 * DAY + 0.5):
        for code in (np.full(4, -1), np.array([0, 1, 2, -5])):
            out = _check_stepped(trace, ids, t, code)
            np.testing.assert_array_equal(out, -1)


@pytest.mark.parametrize("wrapping", [True, False])
@pytest.mark.parametrize("period", PERIODS)
def test_stepped_lookups_along_a_clock_step_most_devices(period, wrapping, monkeypatch):
    """Fed its own codes back for the devices whose state ran out (as the cursor does), the
    stepped lookup equals the plain one at every step: small steps, exact boundary times,
    jumps over several periods.  At small steps most devices are stepped, not looked up."""
    fallback = [0]
    coded_state = IntervalAvailability._coded_state

    def counting(self, ids, t, code):
        fallback[0] += len(ids)
        return coded_state(self, ids, t, code)

    monkeypatch.setattr(IntervalAvailability, "_coded_state", counting)
    rng = np.random.default_rng(17)
    trace = _trace(rng, 200, period, wrapping)
    ids = np.arange(trace.num_devices)
    p = trace.period_s or 0.0
    span = trace.period_s or 3 * DAY
    small = np.cumsum(rng.exponential(600.0, size=int(2 * span / 600.0)))
    edges = rng.choice(np.concatenate((trace.starts, trace.ends)), size=60) + (p if p else 0.0)
    small = np.sort(np.concatenate((small, edges[edges <= small[-1]])))
    jumps = small[-1] + np.cumsum(rng.uniform(2.0, 4.0, size=12) * span)
    jumps = np.sort(np.concatenate((jumps, jumps + rng.uniform(1.0, 900.0, size=12))))
    code = np.full(len(ids), -1, dtype=np.int64)
    until = np.full(len(ids), -np.inf)
    stepped_total = fallback_total = 0
    for part, times in (("small", small), ("jumps", jumps)):
        for t in times.tolist():
            plain = _plain(trace, ids, t)
            stale = np.flatnonzero(until <= t)
            fallback[0] = 0
            if len(stale):
                code[stale] = _check_stepped(trace, stale, t, code[stale],
                                             (plain[0][stale], plain[1][stale]))
                until[stale] = plain[1][stale]
            if part == "small" and t > small[0]:
                stepped_total += len(stale)
                fallback_total += fallback[0]
            # the cached state of the others still holds; their codes too give the answer
            np.testing.assert_array_equal(until, plain[1])
            end, until_all, _ = trace.window_state_stepped(ids, t, code.copy())
            np.testing.assert_array_equal(end, plain[0])
            np.testing.assert_array_equal(until_all, plain[1])
    assert stepped_total > 200
    assert fallback_total < 0.4 * stepped_total, (fallback_total, stepped_total)


# ------------------------------------------------------------------ the first lookup's sweep

def _fleet_with_empty_ends(rng: np.random.Generator, period: float | None) -> IntervalAvailability:
    """Devices without a window at the start, the middle and the end of the fleet."""
    base = _trace(rng, 40, period, wrapping=True)
    counts = np.diff(base.offsets)
    counts = np.concatenate(([0, 0], counts, [0, 0, 0]))
    return IntervalAvailability(np.concatenate(([0], np.cumsum(counts))), base.starts,
                                base.ends, period_s=period)


@pytest.mark.parametrize("block", [None, 1, 7])
@pytest.mark.parametrize("period", PERIODS)
def test_whole_fleet_sweep_equals_the_binary_search(period, block, monkeypatch):
    """The first lookup's sweep (every device, in order, no hint) gives the binary search's
    answer, also in blocks smaller than the trace (``block``: intervals per block, None the
    module's); any other ids of the fleet's length are searched, with the same answers."""
    if block is not None:
        monkeypatch.setattr(base_module, "_SWEEP_BLOCK", block)
    sweeps = [0]
    sweep = IntervalAvailability._first_end_after_all

    def counting(self, shift, t):
        sweeps[0] += 1
        return sweep(self, shift, t)

    monkeypatch.setattr(IntervalAvailability, "_first_end_after_all", counting)
    rng = np.random.default_rng(19)
    trace = _fleet_with_empty_ends(rng, period)
    n = trace.num_devices
    ids = np.arange(n)
    lo, hi = trace.offsets[:-1], trace.offsets[1:]
    p = trace.period_s
    swapped = ids.copy()
    swapped[[1, 2]] = swapped[[2, 1]]  # first and last in place, not in order
    repeated = ids.copy()
    repeated[3] = 4  # length n, 0 first and n - 1 last, one id twice
    for t in _times(rng, trace, 20).tolist():
        base = trace._period_index(t) * float(p) if p else 0.0
        searched = trace._first_end_after(lo, hi, base, t)
        single = [trace._lookup(np.array([d]), t) for d in range(n)]
        for hint in (None, np.full(n, -1)):
            sweeps[0] = 0
            idx, exists, shift, _ = trace._lookup(ids, t, hint)
            assert sweeps[0] == 1
            # the binary search's answer; with a period, past the last window the next
            # period's first (none for a device without a window)
            wrap = (searched == hi) & (hi > lo) if p else np.zeros(n, dtype=bool)
            np.testing.assert_array_equal(idx, np.where(wrap, lo, searched))
            np.testing.assert_array_equal(exists, (searched < hi) | wrap)
            k = trace._period_index(t) if p else 0.0
            np.testing.assert_array_equal(
                shift, np.where(wrap, (k + 1.0) * float(p), base) if p else 0.0)
            np.testing.assert_array_equal(idx, [s[0][0] for s in single])
            np.testing.assert_array_equal(exists, [s[1][0] for s in single])
            np.testing.assert_array_equal(shift, [s[2][0] for s in single])
        for other in (rng.permutation(n), swapped, repeated, ids[::-1].copy()):
            sweeps[0] = 0
            idx, exists, shift, _ = trace._lookup(other, t)
            assert sweeps[0] == 0
            np.testing.assert_array_equal(idx, [single[d][0][0] for d in other])
            np.testing.assert_array_equal(exists, [single[d][1][0] for d in other])
            np.testing.assert_array_equal(shift, [single[d][2][0] for d in other])
    # no window on any device: the sweep over nothing
    empty = IntervalAvailability(np.zeros(4, dtype=np.int64), np.array([]), np.array([]),
                                 period_s=period)
    idx, exists, _, _ = empty._lookup(np.arange(3), 5.0)
    np.testing.assert_array_equal(idx, 0)
    assert not exists.any()


def test_stepped_lookup_leaves_the_callers_codes_as_given():
    rng = np.random.default_rng(21)
    trace = _trace(rng, 60, DAY)
    ids = np.arange(trace.num_devices)
    code = rng.integers(-3, 2 * len(trace.ends) + 3, size=len(ids)).astype(np.int64)
    given = code.copy()
    trace.window_state_stepped(ids, 5_000.0, code)
    np.testing.assert_array_equal(code, given)


def test_a_table_whose_slices_do_not_tile_its_intervals_is_not_swept():
    # offsets end before the last interval: the sweep would count the stray interval
    trace = IntervalAvailability(np.array([0, 1]), np.array([100.0, 0.0]),
                                 np.array([200.0, 5.0]))
    assert not trace._whole_fleet(np.arange(1))
    np.testing.assert_array_equal(trace.window_state(np.arange(1), 50.0),
                                  _plain(trace, np.arange(1), 50.0))
