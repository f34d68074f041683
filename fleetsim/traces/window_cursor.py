"""Vectorised availability state for a whole fleet on a monotone clock.

The fleet never runs a process per idle device.  Instead it keeps, per device, the
availability state it last looked up and the time until which that state is certain
(``valid_until``: the window's end when online, the next window's start when offline).
A query at time ``t`` re-reads only the devices whose certainty ran out (``valid_until <=
t``), with a fresh lookup *at t* — never by stepping one interval forward — so a large
jump of the clock cannot leave a stale window behind (the FedScale failure mode).

Whole-fleet queries (:meth:`AvailabilityCursor.available_mask`) on a table the loaders
produce go through :class:`~fleetsim.traces.online_sweep.OnlineSweep` instead, which
applies the window boundaries the clock passed in time order (no per-device lookups);
per-device queries (:meth:`AvailabilityCursor.state`) keep the cache above.
"""

from __future__ import annotations

import numpy as np

from fleetsim.traces.base import AlwaysOnline, AvailabilityTrace, IntervalAvailability
from fleetsim.traces.online_sweep import NotSweepable, OnlineSweep


class AvailabilityCursor:
    """Cached ``is_available`` / ``window_end`` for all devices of a trace.

    ``sweep``: answer whole-fleet queries of a :func:`~fleetsim.traces.online_sweep.
    sweepable` interval table with an :class:`~fleetsim.traces.online_sweep.OnlineSweep`
    (built at the first such query; the same answers, issue 25); False: always refresh
    the per-device cache (:meth:`refresh_all`)."""

    def __init__(self, trace: AvailabilityTrace, sweep: bool = True) -> None:
        self.trace = trace
        self._sweep: OnlineSweep | None = None
        self._try_sweep = sweep and isinstance(trace, IntervalAvailability)
        n = trace.num_devices
        self.online = np.zeros(n, dtype=bool)
        # -inf: nothing known yet, the first query looks every device up.
        self.valid_until = np.full(n, -np.inf)
        self._last_t = -np.inf
        # Interval traces: each device's step code (interval and online flag) at its last
        # lookup, from which the next lookup steps one boundary on when the clock moved
        # past one (IntervalAvailability.window_state_stepped; each step is verified).
        self._stepped = isinstance(trace, IntervalAvailability)
        if self._stepped:
            self._step_code = np.full(n, -1, dtype=np.int64)

    def _refresh(self, ids: np.ndarray, t: float) -> None:
        if len(ids) == 0:
            return
        if self._stepped:
            end, until, self._step_code[ids] = self.trace.window_state_stepped(
                ids, t, self._step_code[ids])
        else:
            end, until = self.trace.window_state(ids, t)
        self.online[ids] = end > t
        self.valid_until[ids] = until

    def refresh_all(self, t: float) -> None:
        """Bring every device up to date at ``t`` (vectorised over the stale ones only)."""
        if t < self._last_t:
            # Queries going back in time (a caller asking about the past): the cache is
            # only valid forward, so look everything up again.
            self.valid_until[:] = -np.inf
        self._last_t = t
        stale = np.flatnonzero(self.valid_until <= t)
        self._refresh(stale, t)

    def available_ids(self, t: float) -> np.ndarray:
        """Devices online at ``t``, ascending."""
        return np.flatnonzero(self.available_mask(t))

    def available_mask(self, t: float) -> np.ndarray:
        """bool ``[n]``: online at ``t``.  The cursor's own array: read it before the next
        query, do not modify it."""
        if self._try_sweep:
            self._try_sweep = False  # decided once: the table does not change
            try:
                self._sweep = OnlineSweep(self.trace)
            except NotSweepable:  # looked up device by device instead
                pass
        if self._sweep is not None:
            return self._sweep.online_at(t)
        self.refresh_all(t)
        return self.online

    def state(self, ids: np.ndarray, t: float) -> tuple[np.ndarray, np.ndarray]:
        """(online, window end) at ``t`` for ``ids``; window end is ``t`` where offline."""
        ids = np.asarray(ids, dtype=np.int64)
        if t < self._last_t:
            end = self.trace.window_end(ids, t)
            return end > t, end
        # The cache holds lookups at earlier times only (refresh_all starts again when the
        # clock moves back past this).
        self._last_t = t
        stale = ids[self.valid_until[ids] <= t]
        if len(stale):
            if len(stale) > 1 and not bool((stale[1:] > stale[:-1]).all()):
                stale = np.unique(stale)  # (a dispatch batch's ids come sorted and distinct)
            self._refresh(stale, t)
        online = self.online[ids]
        return online, np.where(online, self.valid_until[ids], float(t))

    def next_start(self, device_id: int, t: float) -> float:
        """When the (offline) device is next online; ``inf`` if never."""
        ids = np.array([device_id], dtype=np.int64)
        start = float(self.trace.next_start(ids, t)[0])
        return start


def online_seconds(trace: AvailabilityTrace, ids: np.ndarray, end_time: float) -> np.ndarray:
    """Seconds each device is online in ``[0, end_time]``.

    Vectorised for :class:`AlwaysOnline` and :class:`IntervalAvailability` (CSR gather over
    the devices' intervals), and for any trace with an ``online_seconds(ids, end_time)``
    method; other traces are walked window by window through the public API, grouped by
    query time (slow for many devices)."""
    ids = np.asarray(ids, dtype=np.int64)
    end_time = float(end_time)
    if len(ids) == 0 or end_time <= 0:
        return np.zeros(len(ids))
    if isinstance(trace, AlwaysOnline):
        return np.full(len(ids), end_time)
    # A trace model may answer in closed form (e.g. one window per period): optional hook.
    own = getattr(trace, "online_seconds", None)
    if callable(own):
        return np.asarray(own(ids, end_time), dtype=np.float64)
    if isinstance(trace, IntervalAvailability):
        period = trace.period_s
        if period:
            full, rest = divmod(end_time, period)
            per_period = _interval_overlap(trace, ids, 0.0, float(period))
            return full * per_period + _interval_overlap(trace, ids, 0.0, rest)
        return _interval_overlap(trace, ids, 0.0, end_time)
    return _walk_online_seconds(trace, ids, end_time)


def _interval_overlap(
    trace: IntervalAvailability, ids: np.ndarray, lo_t: float, hi_t: float
) -> np.ndarray:
    lo = trace.offsets[ids]
    counts = trace.offsets[ids + 1] - lo
    total = int(counts.sum())
    if total == 0 or hi_t <= lo_t:
        return np.zeros(len(ids))
    first = np.cumsum(counts) - counts
    owner = np.repeat(np.arange(len(ids)), counts)
    index = np.repeat(lo, counts) + (np.arange(total) - first[owner])
    overlap = np.minimum(trace.ends[index], hi_t) - np.maximum(trace.starts[index], lo_t)
    return np.bincount(owner, weights=np.maximum(overlap, 0.0), minlength=len(ids))


def _walk_online_seconds(trace: AvailabilityTrace, ids: np.ndarray, end_time: float) -> np.ndarray:
    total = np.zeros(len(ids))
    t = np.zeros(len(ids))
    active = np.arange(len(ids))
    while len(active):
        starts = np.empty(len(active))
        for value in np.unique(t[active]):
            sel = t[active] == value
            starts[sel] = trace.next_start(ids[active[sel]], float(value))
        ends = starts.copy()
        live = np.isfinite(starts) & (starts < end_time)
        for value in np.unique(starts[live]):
            sel = live & (starts == value)
            ends[sel] = trace.window_end(ids[active[sel]], float(value))
        total[active] += np.where(live, np.minimum(ends, end_time) - starts, 0.0)
        t[active] = ends
        active = active[live & (ends < end_time)]
    return total
