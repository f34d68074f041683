"""Start a run at another time of day: an availability trace seen from a later clock.

``run.start_hour`` = h makes simulated time 0 correspond to the trace's time h × 3600 s
(for the diurnal models and FLASH-derived traces, whose time 0 is local midnight, h is the
local hour the run starts at).  A run started at 09:00 meets the morning's few charging
phones first; one started at 21:00 meets the evening's many.

Exactness at window boundaries.  A simulated instant ``t`` is the trace instant
``u = fl(t + offset)`` (one IEEE-754 addition, rounded to nearest): every availability
decision is made by the inner trace at ``u``, in the trace's own frame.  A window edge ``e``
of the trace (a start or an end) is mapped back not as ``fl(e - offset)``, which can round
to a simulated instant whose ``u`` falls on the other side of ``e`` (an offline phone
counted online for one instant: issue 22 kind 7), but as the *first simulated instant whose
trace instant reaches it*: the smallest double ``x`` with ``fl(x + offset) >= e``
(:func:`first_instant_reaching`).  So ``is_available(t)`` holds exactly for ``t`` in
``[next_start, window_end)`` as this view reports them, for any offset and period.
"""

from __future__ import annotations

import numpy as np

from fleetsim.traces.base import AvailabilityTrace

_SIGN = np.int64(-0x8000000000000000)


def _order_key(x: np.ndarray) -> np.ndarray:
    """int64 keys ordered as the doubles ``x`` are (−0.0 and +0.0 share key 0)."""
    bits = np.ascontiguousarray(x, dtype=np.float64).view(np.int64)
    return np.where(bits >= 0, bits, -(bits & np.int64(0x7FFFFFFFFFFFFFFF)))


def _from_key(key: np.ndarray) -> np.ndarray:
    bits = np.where(key >= 0, key, (-key) | _SIGN).astype(np.int64)
    return bits.view(np.float64)


def first_instant_reaching(edge: np.ndarray, offset_s: float) -> np.ndarray:
    """Elementwise the smallest double ``x`` with ``fl(x + offset_s) >= edge``: the first
    simulated instant that a trace seen ``offset_s`` later places at or after the trace
    instant ``edge``.  ``±inf`` and NaN pass through as ``edge - offset_s``.

    ``fl(x + offset_s)`` is non-decreasing in ``x``, so the answer is found by bisection on
    the doubles' ordering keys between two brackets around ``edge - offset_s`` (at most 64
    numpy passes over the elements whose first guess is not already exact)."""
    edge = np.asarray(edge, dtype=np.float64)
    off = float(offset_s)
    out = np.array(edge - off, dtype=np.float64)
    idx = np.flatnonzero(np.isfinite(out))
    if len(idx) == 0:
        return out
    v = edge.reshape(-1)[idx] if edge.ndim else np.atleast_1d(edge)
    x = out.reshape(-1)[idx] if out.ndim else np.atleast_1d(out)
    # first guess exact: reaches the edge, and the double below it does not
    below = np.nextafter(x, -np.inf)
    todo = np.flatnonzero(~((x + off >= v) & (below + off < v)))
    if len(todo):
        vt, xt = v[todo], x[todo]
        step = np.spacing(np.maximum(np.maximum(np.abs(vt), np.abs(xt)), abs(off)))
        lo, hi = xt - step, xt + step
        while True:  # brackets: fl(lo + off) < v <= fl(hi + off)
            bad_lo = lo + off >= vt
            bad_hi = hi + off < vt
            if not (bad_lo.any() or bad_hi.any()):
                break
            step = np.where(bad_lo | bad_hi, 2.0 * step, step)
            lo = np.where(bad_lo, lo - step, lo)
            hi = np.where(bad_hi, hi + step, hi)
        klo, khi = _order_key(lo), _order_key(hi)
        live = np.flatnonzero(khi - klo > 1)
        while len(live):
            mid = klo[live] + (khi[live] - klo[live]) // 2
            reach = _from_key(mid) + off >= vt[live]
            khi[live[reach]] = mid[reach]
            klo[live[~reach]] = mid[~reach]
            live = live[khi[live] - klo[live] > 1]
        x = x.copy()
        x[todo] = _from_key(khi)
    if out.ndim:
        out.reshape(-1)[idx] = x
        return out
    return np.float64(x[0])


class StartShifted(AvailabilityTrace):
    """``inner`` seen ``offset_s`` seconds later: availability at simulated time t is the
    inner trace's at ``fl(t + offset_s)``; window ends and starts are mapped back to the
    first simulated instant at which that holds (module docstring), so the answers of
    ``is_available``, ``window_end`` and ``next_start`` agree at every instant."""

    def __init__(self, inner: AvailabilityTrace, offset_s: float) -> None:
        if offset_s < 0:
            raise ValueError(f"offset_s must be >= 0, got {offset_s}")
        self.inner = inner
        self.offset_s = float(offset_s)
        self.period_s = inner.period_s
        hours = self.offset_s / 3600.0
        self.label = f"{inner.label} (run starts at hour {hours:g} of the trace)"

    @property
    def num_devices(self) -> int:
        return self.inner.num_devices

    def _u(self, t: float) -> float:
        return float(t) + self.offset_s

    def is_available(self, device_ids: np.ndarray, t: float) -> np.ndarray:
        return self.inner.is_available(device_ids, self._u(t))

    def window_end(self, device_ids: np.ndarray, t: float) -> np.ndarray:
        """End of the current window (the first simulated instant the device is offline);
        exactly ``t`` where the inner trace is offline at ``fl(t + offset_s)``."""
        u = self._u(t)
        end = np.asarray(self.inner.window_end(device_ids, u), dtype=np.float64)
        online = end > u  # the inner trace's own decision, in its own frame
        out = np.full(end.shape, float(t))
        if online.any():
            out[online] = first_instant_reaching(end[online], self.offset_s)
        return out

    def next_start(self, device_ids: np.ndarray, t: float) -> np.ndarray:
        """First simulated instant the device is online: ``t`` where online now."""
        u = self._u(t)
        start = np.asarray(self.inner.next_start(device_ids, u), dtype=np.float64)
        later = start > u
        out = np.full(start.shape, float(t))
        if later.any():
            out[later] = first_instant_reaching(start[later], self.offset_s)
        return out

    def online_seconds(self, device_ids: np.ndarray, end_time: float) -> np.ndarray:
        """Online seconds in simulated ``[0, end_time]`` = the inner trace's in
        ``[offset, offset + end_time]``."""
        from fleetsim.traces.window_cursor import online_seconds

        ids = np.asarray(device_ids, dtype=np.int64)
        upto_end = online_seconds(self.inner, ids, self.offset_s + float(end_time))
        upto_start = online_seconds(self.inner, ids, self.offset_s)
        return upto_end - upto_start


def shift_start(trace: AvailabilityTrace, start_hour: float) -> AvailabilityTrace:
    """``trace`` itself for hour 0, else a :class:`StartShifted` view."""
    return trace if start_hour == 0 else StartShifted(trace, start_hour * 3600.0)
