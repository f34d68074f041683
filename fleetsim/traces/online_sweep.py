"""Every device's online state on a forward-moving clock, kept by applying the window
boundaries the clock passes.

The availability cursor (:mod:`fleetsim.traces.window_cursor`) answers "which devices
are online now" for the whole fleet each round.  Looking each device up again when its
cached state expires costs a few random reads of the interval table per device that
crossed a boundary (about 45,000 a round at a million phones, issue 25).  This module
does the same work in the order the clock meets it: the windows' starts and ends are
grouped once into time buckets, and moving the clock on applies the boundaries it
passed, +1 for a start and -1 for an end, to an online count per device.  Whole buckets
need no time reads at all; only the bucket holding the current time is read.

Why this equals the plain lookup (:meth:`IntervalAvailability.is_available`) to the bit,
for the tables it accepts (:func:`sweepable`): within one period (all time when the
windows do not repeat) a device's boundaries are ``s_0 <= e_0 <= s_1 <= e_1 <= ...`` and
the lookup takes ``idx``, the first window with ``e + base > t`` (``base``: the period's
offset, the same float the lookup adds), and says online iff ``s_idx + base <= t``.
Adding ``base`` keeps the order (rounding is monotone), so exactly the ends before
``idx`` and the starts up to ``idx`` (``idx`` itself iff it is online) satisfy
``b + base <= t``: the count of passed starts less passed ends is the lookup's answer.
Where no window ends after ``t`` the lookup wraps to the next period's first window,
which starts at or after ``(k + 1) * P > t`` (its start is not negative): offline, as
the count (every window passed) says.  A new period, or a clock moving back, starts again
(from a zero count, or from one whole-fleet :meth:`~IntervalAvailability.is_available`);
every boundary of the period is then applied at most once.

The time domain: the proof needs ``(k + 1) * P > t`` for the period index ``k`` that
:meth:`IntervalAvailability._period_index` returns.  Where that fails (a time past about
``2**51`` periods, an infinite time with a period) or ``t`` is NaN, the sweep answers with
the plain lookup.  The lookup itself has a one-ulp instant at a period's end when ``P``
is not a whole number (``fl(k * P + P) < fl((k + 1) * P)``): ``is_available`` reads a
window ending at ``P`` as offline there while ``window_end`` reads it as continuing; the
sweep follows ``is_available``.  Periods of whole seconds (a day, a week) have no such
instant.

Units: seconds of simulated time.
"""

from __future__ import annotations

import numpy as np

from fleetsim.traces.base import IntervalAvailability

#: At most this many time buckets per period (their index is a uint8: a one-pass sort).
MAX_BUCKETS = 256
#: About this many boundaries per bucket, fewer buckets for small tables: the bucket
#: holding the current time is re-read at each query, each bucket costs a few numpy calls.
BOUNDARIES_PER_BUCKET = 16_384
#: A restart applies the boundaries passed so far when they are at most this many per
#: device (about 15 ns each), else looks every device up (about 90 ns a device).
WALK_PER_DEVICE = 2
_BLOCK = 1 << 16  # elements per block of the one-off float passes (no float temporaries
# the length of the table; the uint8 keys and the argsort's int64 result still are)
assert MAX_BUCKETS <= 256  # the keys are uint8


class NotSweepable(ValueError):
    """The table is not one :class:`OnlineSweep` may keep (:func:`sweepable`)."""


def sweepable(trace: IntervalAvailability) -> bool:
    """Whether :class:`OnlineSweep` may keep ``trace``'s online state (module docstring):
    at least one window; the device slices tile the table in order; within each slice
    ``s_0 <= e_0 <= s_1 <= e_1 <= ...`` (no NaN); a period, if any, finite and above 0,
    and then no start below 0.  The loaders' tables satisfy this (bar a table with no
    window at all); any other table is looked up device by device."""
    offsets, starts, ends = trace.offsets, trace.starts, trace.ends
    n = len(ends)
    if n == 0 or len(starts) != n or len(offsets) < 2:
        return False
    if int(offsets[0]) != 0 or int(offsets[-1]) != n or bool((np.diff(offsets) < 0).any()):
        return False
    if trace.period_s is not None and not (np.isfinite(trace.period_s) and trace.period_s > 0):
        return False
    if not bool(np.all(starts <= ends)):  # NaN compares False
        return False
    # each window ends by the next one's start, unless the next is another device's first
    touching = ends[:-1] <= starts[1:]
    firsts = offsets[1:-1]
    firsts = firsts[(firsts > 0) & (firsts < n)]
    touching[firsts - 1] = True
    if not bool(touching.all()):
        return False
    return not (trace.period_s and bool((starts < 0).any()))


class OnlineSweep:
    """The online state at ``t`` of every device of a :func:`sweepable` trace, for a
    clock that mostly moves forward (module docstring).

    Memory kept: two int32 (int64 past 2**31 windows) permutations of the windows and an
    int32 owner per window, about 12 bytes a window, plus one byte a device; building it
    holds a uint8 key and an int64 argsort result per window (side by side) for a moment."""

    def __init__(self, trace: IntervalAvailability) -> None:
        if not sweepable(trace):
            raise NotSweepable("OnlineSweep needs a sweepable table (see sweepable())")
        self.trace = trace
        n = len(trace.ends)
        self._period = float(trace.period_s) if trace.period_s else 0.0
        buckets = int(np.clip(2 * n // BOUNDARIES_PER_BUCKET, 1, MAX_BUCKETS))
        if self._period:
            scale, shift = buckets / self._period, 0.0
        else:
            finite = np.concatenate([trace.starts[np.isfinite(trace.starts)],
                                     trace.ends[np.isfinite(trace.ends)]])
            first, last = ((float(finite.min()), float(finite.max())) if len(finite)
                           else (0.0, 0.0))
            with np.errstate(over="ignore"):
                scale = buckets / (last - first) if last > first else 0.0
            shift = float(np.floor(first * scale)) if np.isfinite(scale) else 0.0
        if not (np.isfinite(scale) and scale > 0 and np.isfinite(shift)):
            buckets = 1  # a span too small or too large to scale: one bucket, no keys
        self._buckets = buckets
        index = np.int32 if n < 2**31 else np.int64
        # Starts (+1) and ends (-1) apart: each side's windows in bucket order, the
        # bucket bounds, and the latest time in each bucket (-inf when empty).
        self._order, self._bounds, latest = [], [], []
        for times in (trace.starts, trace.ends):
            key = _bucket_keys(times, scale, shift, buckets)
            per_bucket = np.zeros(buckets, dtype=np.int64)
            top = np.full(buckets, -np.inf)
            for at in range(0, n, _BLOCK):
                part = key[at:at + _BLOCK]
                per_bucket += np.bincount(part, minlength=buckets)
                np.maximum.at(top, part, times[at:at + _BLOCK])
            self._order.append(np.argsort(key, kind="stable").astype(index))
            self._bounds.append(np.concatenate(([0], np.cumsum(per_bucket))).tolist())
            latest.append(top)
        #: per bucket, its latest boundary: the whole bucket is passed at t iff
        #: latest + base <= t (buckets follow the time order: a key never decreases)
        self._latest = np.maximum(latest[0], latest[1])
        windows = np.diff(trace.offsets)  # per device
        self._owner = np.repeat(np.arange(len(windows), dtype=np.int32 if len(windows) < 2**31
                                          else np.int64), windows)
        longest = max(max(np.diff(b)) for b in self._bounds)
        self._plus = np.ones(longest, dtype=np.int8)
        self._minus = np.full(longest, -1, dtype=np.int8)
        # int8 [devices]: 0 offline, 1 online once a query's boundaries are all applied (a
        # bucket's starts are added before its ends, so a phone with over 127 windows in
        # one bucket wraps around in between: the sum is exact modulo 256, and it ends 0/1)
        self._count: np.ndarray | None = None
        self._online: np.ndarray | None = None  # its bool view, read-only
        self._valid = False  # whether the count is the state at _t (else: restart)
        self._k = 0.0  # the period the count is for
        self._t = -np.inf
        self._next = 0  # buckets before it are applied, or pending
        self._pending: tuple[np.ndarray, np.ndarray, np.ndarray] | None = None

    def online_at(self, t: float) -> np.ndarray:
        """bool ``[devices]``, read-only, the same array at every call and updated in place
        (except a fresh one where the period's arithmetic breaks down, module docstring):
        whether each device is online at ``t`` (:meth:`IntervalAvailability.is_available`
        for every device, to the bit)."""
        t = float(t)
        k = self.trace._period_index(t) if self._period else 0.0
        if t != t or (self._period and not (k + 1.0) * self._period > t):
            # NaN, or a time so large against the period that _period_index cannot keep
            # (k + 1) * P above it (the proof's wrap step needs that): plain lookup.
            self._valid = False  # the next query starts again
            online = self.trace.is_available(
                np.arange(self.trace.num_devices, dtype=np.int64), t)
            online.flags.writeable = False
            return online
        if not self._valid or k != self._k or t < self._t:
            self._restart(t, k)
        else:
            self._advance(t)
        self._t = t
        return self._online

    # ------------------------------------------------------------------ internals
    def _restart(self, t: float, k: float) -> None:
        """The state at ``t`` in period ``k``, from nothing: by applying the period's
        boundaries up to ``t`` to a zero count where they are at most
        :data:`WALK_PER_DEVICE` per device (a new period, the usual case), else from one
        whole-fleet :meth:`~IntervalAvailability.is_available` with the later boundaries
        of ``t``'s bucket pending."""
        trace = self.trace
        base = k * self._period
        # the first bucket whose latest boundary is still ahead; every earlier one passed
        ahead = np.flatnonzero(self._latest + base > t)
        first = int(ahead[0]) if len(ahead) else self._buckets
        passed = self._bounds[0][first] + self._bounds[1][first]
        self._k, self._pending = k, None
        if passed <= WALK_PER_DEVICE * trace.num_devices:
            state = np.zeros(trace.num_devices, dtype=np.int8)
            self._next = 0
        else:
            # is_available itself (window_state's end can differ from it by an ulp at
            # huge times, where _end_where_online's period count rounds)
            state = trace.is_available(np.arange(trace.num_devices, dtype=np.int64),
                                       t).astype(np.int8)
            self._next = first
            if first < self._buckets:
                dev, sign, times = self._read(first)
                self._next += 1
                keep = times + base > t  # the lookup counted the rest already
                self._pending = dev[keep], sign[keep], times[keep]
        if self._count is None or self._online is None:
            self._count = np.empty(trace.num_devices, dtype=np.int8)
            self._online = self._count.view(np.bool_)
            self._online.flags.writeable = False
        self._count[:] = state  # the same array as before: callers may hold it
        self._valid = True
        if self._next == 0:
            self._advance(t)

    def _advance(self, t: float) -> None:
        """Apply the boundaries from the last query's time up to ``t`` (same period, not
        earlier).  Invariant: every boundary in the buckets before ``_next`` is applied,
        except ``_pending``, bucket ``_next - 1``'s that were still ahead at the last
        query."""
        base = self._k * self._period
        count = self._count
        while True:
            if self._pending is not None:
                dev, sign, times = self._pending
                due = times + base <= t
                if not due.all():
                    if due.any():
                        np.add.at(count, dev[due], sign[due])
                        ahead = ~due
                        self._pending = dev[ahead], sign[ahead], times[ahead]
                    return
                np.add.at(count, dev, sign)
                self._pending = None
            if self._next >= self._buckets:
                return
            i = self._next
            self._next += 1
            if self._latest[i] + base <= t:  # passed whole: no time needs reading
                for order, bounds, sign in ((self._order[0], self._bounds[0], self._plus),
                                            (self._order[1], self._bounds[1], self._minus)):
                    lo, hi = bounds[i], bounds[i + 1]
                    np.add.at(count, self._owner[order[lo:hi]], sign[:hi - lo])
                continue
            self._pending = self._read(i)

    def _read(self, i: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Bucket ``i``'s boundaries: owners, signs (+1 start, -1 end) and times."""
        (s_order, e_order), (s_bounds, e_bounds) = self._order, self._bounds
        starts = s_order[s_bounds[i]:s_bounds[i + 1]]
        ends = e_order[e_bounds[i]:e_bounds[i + 1]]
        dev = np.concatenate((self._owner[starts], self._owner[ends]))
        sign = np.concatenate((self._plus[:len(starts)], self._minus[:len(ends)]))
        times = np.concatenate((self.trace.starts[starts], self.trace.ends[ends]))
        return dev, sign, times


def _bucket_keys(times: np.ndarray, scale: float, shift: float, buckets: int) -> np.ndarray:
    """uint8 ``[len(times)]``: ``clip(floor(times * scale) - shift, 0, buckets - 1)``, a key
    that never decreases as the time grows (so buckets follow the time order), computed
    in blocks."""
    if buckets == 1:  # scale 0: inf * 0 would be NaN
        return np.zeros(len(times), dtype=np.uint8)
    key = np.empty(len(times), dtype=np.uint8)
    block = np.empty(min(len(times), _BLOCK))
    for lo in range(0, len(times), _BLOCK):
        part = block[:len(times[lo:lo + _BLOCK])]
        np.multiply(times[lo:lo + _BLOCK], scale, out=part)
        np.floor(part, out=part)
        np.subtract(part, shift, out=part)
        np.clip(part, 0, buckets - 1, out=part)
        key[lo:lo + len(part)] = part
    return key
