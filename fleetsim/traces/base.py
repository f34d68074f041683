"""The contracts between device traces and the fleet engine.

A fleet is columnar: one numpy array per attribute, indexed by device id
(0..n-1), so that a million devices cost a few arrays and every lookup is
vectorised.  The fleet engine only reads these objects; it never opens files.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field

import numpy as np


@dataclass
class DeviceTable:
    """Static per-device facts of a synthesised (or loaded) fleet.

    ``phone_model_index`` points into ``phone_models`` (catalogue names) so the
    table stays numeric.  Latencies are seconds for ONE reference unit (see
    ``fleetsim.traces.latency``) per backend, NaN where the backend is absent;
    the fleet engine scales them to a job with the latency model.
    """

    phone_model_index: np.ndarray  # int32 [n]
    phone_models: list[str]  # names, catalogue order
    ram_bytes: np.ndarray  # int64 [n] total RAM
    usable_ram_bytes: np.ndarray  # int64 [n] share an app may use
    network_type_index: np.ndarray  # int16 [n] into network_types
    network_types: list[str]
    uplink_bps: np.ndarray  # float64 [n] bits per second
    downlink_bps: np.ndarray  # float64 [n]
    # seconds per reference forward (batch 8 x seq 128 of the reference model)
    # for each backend; NaN = backend absent on this phone.
    ref_forward_s: dict[str, np.ndarray] = field(default_factory=dict)
    source: str = ""  # provenance label written to outputs ("model: ...", "trace: ...")

    def __len__(self) -> int:
        return int(self.phone_model_index.shape[0])

    @property
    def device_ids(self) -> np.ndarray:
        return np.arange(len(self), dtype=np.int64)


class AvailabilityTrace(ABC):
    """When each device may work.  All queries are vectorised over device ids.

    Intervals are half-open ``[start, end)``: a device whose window ends at
    ``t`` is offline at ``t``; a window starting at ``t`` is online at ``t``.
    """

    #: shown in outputs: e.g. "model: diurnal (calibrated on FLASH 1000 users)"
    label: str = ""
    #: the windows repeat with this period (seconds); None: they do not repeat
    period_s: float | None = None

    @property
    @abstractmethod
    def num_devices(self) -> int: ...

    @abstractmethod
    def is_available(self, device_ids: np.ndarray, t: float) -> np.ndarray:
        """bool [len(device_ids)]"""

    @abstractmethod
    def window_end(self, device_ids: np.ndarray, t: float) -> np.ndarray:
        """End of the window containing ``t`` (``t`` itself where offline);
        ``np.inf`` where the device never goes offline again."""

    @abstractmethod
    def next_start(self, device_ids: np.ndarray, t: float) -> np.ndarray:
        """Start of the first window with ``end > t`` (``t`` where online now);
        ``np.inf`` where the device never comes online again."""

    def window_state(self, device_ids: np.ndarray, t: float) -> tuple[np.ndarray, np.ndarray]:
        """``(window_end, until)`` in one query: ``until`` is the window's end where the
        device is online at ``t`` and its next start where it is offline, the time until
        which its state at ``t`` holds (what :class:`~fleetsim.traces.window_cursor.
        AvailabilityCursor` caches).  A trace may override it to share one lookup."""
        ids = np.asarray(device_ids, dtype=np.int64)
        end = self.window_end(ids, t)
        online = end > t
        until = end
        if not online.all():
            until = end.copy()
            until[~online] = self.next_start(ids[~online], t)
        return end, until


class AlwaysOnline(AvailabilityTrace):
    """Every device online all the time (the paper's closed-form assumption)."""

    def __init__(self, n: int) -> None:
        self._n = int(n)
        self.label = "always online"

    @property
    def num_devices(self) -> int:
        return self._n

    def is_available(self, device_ids: np.ndarray, t: float) -> np.ndarray:
        return np.ones(len(device_ids), dtype=bool)

    def window_end(self, device_ids: np.ndarray, t: float) -> np.ndarray:
        return np.full(len(device_ids), np.inf)

    def next_start(self, device_ids: np.ndarray, t: float) -> np.ndarray:
        return np.full(len(device_ids), float(t))


#: Intervals per block of :meth:`IntervalAvailability._first_end_after_all`'s sweep.
_SWEEP_BLOCK = 1 << 16


class IntervalAvailability(AvailabilityTrace):
    """Availability from explicit sorted, non-overlapping intervals per device
    (CSR layout: device i owns ``starts[offsets[i]:offsets[i+1]]``).

    With ``period_s`` set the pattern repeats (a week of synthetic windows can
    serve a month-long run); otherwise a device is offline after its last window.
    """

    def __init__(
        self,
        offsets: np.ndarray,
        starts: np.ndarray,
        ends: np.ndarray,
        period_s: float | None = None,
        label: str = "",
    ) -> None:
        self.offsets = np.asarray(offsets, dtype=np.int64)
        self.starts = np.asarray(starts, dtype=np.float64)
        self.ends = np.asarray(ends, dtype=np.float64)
        self.period_s = period_s
        self.label = label

    @property
    def num_devices(self) -> int:
        return int(self.offsets.shape[0] - 1)

    def _period_index(self, t: float) -> float:
        """k with k*P <= t < (k+1)*P, computed the way window times are computed
        (k*P + offset), so that a time returned by ``next_start`` is online."""
        p = float(self.period_s)
        k = float(np.floor(t / p))
        if (k + 1.0) * p <= t:
            k += 1.0
        elif k * p > t:
            k -= 1.0
        return k

    def _first_end_after(
        self, lo: np.ndarray, hi: np.ndarray, shift: float, t: float
    ) -> np.ndarray:
        """Per device: smallest j in [lo, hi) with ends[j] + shift > t, else hi (``shift``:
        the same period offset for every device).

        A vectorised binary search over every device's slice at once (about
        log2(longest slice) numpy passes, no per-device Python loop)."""
        a = lo.copy()
        b = hi.copy()
        last = max(len(self.ends) - 1, 0)
        if len(self.ends) == 0:
            return a
        while True:
            active = a < b
            if not active.any():
                return a
            mid = (a + b) >> 1
            le = (self.ends[np.minimum(mid, last)] + shift) <= t
            right = active & le
            a = np.where(right, mid + 1, a)
            b = np.where(active ^ right, mid, b)

    def _whole_fleet(self, ids: np.ndarray) -> bool:
        """Whether ``ids`` is every device, in order (0, 1, ..., n - 1), of a table laid out
        as the class requires (the slices tile the intervals from 0 to the last)."""
        n = self.num_devices
        return (len(ids) == n and n > 0 and int(ids[0]) == 0 and int(ids[-1]) == n - 1
                and int(self.offsets[0]) == 0 and int(self.offsets[-1]) == len(self.ends)
                and bool((np.diff(ids) == 1).all()))

    def _first_end_after_all(self, shift: float, t: float) -> np.ndarray:
        """:meth:`_first_end_after` for every device's whole slice: the slice's start plus
        how many of its intervals end by ``t`` (the ends are sorted within a slice, so they
        are the ones before the first that ends after ``t``), counted in one pass."""
        n = len(self.ends)
        lo, hi = self.offsets[:-1], self.offsets[1:]
        if n == 0:
            return lo.copy()
        # In blocks, so that no interval-length float array is allocated (a million
        # phones have millions of intervals; fresh memory costs more than the arithmetic).
        ended = np.empty(n + 1, dtype=bool)
        ended[n] = False  # past the last interval: where a trailing empty slice points
        block = np.empty(min(n, _SWEEP_BLOCK))
        for start in range(0, n, _SWEEP_BLOCK):
            part = self.ends[start:start + _SWEEP_BLOCK]
            np.add(part, shift, out=block[:len(part)])
            np.less_equal(block[:len(part)], t, out=ended[start:start + len(part)])
        # reduceat sums [lo, next lo) (to the end for the last); for an empty slice
        # (lo == hi) it returns one element instead, which counts nothing here
        counts = np.add.reduceat(ended, lo, dtype=np.int64)
        return lo + np.where(hi > lo, counts, 0)

    def _lookup(self, device_ids: np.ndarray, t: float, hint: np.ndarray | None = None):
        """Per device: index of the first interval with end > t (global index),
        whether it exists, and the period offset added to its times.

        ``hint``: per device, the interval index of an earlier lookup (the cursor's), or -1
        where there is none.  Where the hinted interval, the one after it or the slice's
        first is provably the first with end > t (its predecessor in the device's slice
        ends at or before t, itself after t, both in t's period), the search is skipped;
        any other device is searched.  The answer is the same either way (a lower bound in a sorted
        slice is unique); the hint only saves the search when the clock moved past one
        boundary (issue 25's profile)."""
        ids = np.asarray(device_ids, dtype=np.int64)
        t = float(t)
        k = self._period_index(t) if self.period_s else 0.0
        base = k * float(self.period_s) if self.period_s else 0.0
        if hint is not None and not (hint >= 0).any():
            hint = None  # nothing to try (the cursor's first lookup)
        if hint is None and self._whole_fleet(ids):
            # Every device in order (the cursor's first lookup): one sequential sweep over
            # all intervals instead of a search with random reads per device.
            lo, hi = self.offsets[:-1], self.offsets[1:]
            idx = self._first_end_after_all(base, t)
        else:
            lo = self.offsets[ids]
            hi = self.offsets[ids + 1]
            if hint is None or len(self.ends) == 0:
                idx = self._first_end_after(lo, hi, base, t)
            else:
                idx = self._first_end_after_hinted(lo, hi, base, t, hint)
        exists = idx < hi
        if self.period_s:
            # Past the last window of this period: first window of the next one.
            wrap = ~exists & (hi > lo)
            idx = np.where(wrap, lo, idx)
            # (k + 1) * P, not shift + P: the same float _period_index will produce
            shift = np.where(wrap, (k + 1.0) * float(self.period_s), base)
            exists = exists | wrap
        else:
            shift = np.zeros(len(ids))
        return idx, exists, shift, t

    def _first_end_after_hinted(self, lo: np.ndarray, hi: np.ndarray, base: float, t: float,
                                hint_index: np.ndarray) -> np.ndarray:
        """:meth:`_first_end_after` where a hint verifies (see :meth:`_lookup`)."""
        last = len(self.ends) - 1
        ends = self.ends
        c = np.clip(hint_index, lo, np.maximum(hi - 1, lo))
        usable = (hint_index >= lo) & (hint_index < hi)
        after_c = ends[np.minimum(c, last)] + base > t
        before_ok = (c == lo) | (ends[np.maximum(c - 1, 0)] + base <= t)
        at_c = usable & after_c & before_ok
        nxt = c + 1
        # c ended by t: the next interval if it ends after t; none (hi) if c was the last
        at_next = usable & ~after_c & ((nxt >= hi) | (ends[np.minimum(nxt, last)] + base > t))
        idx = np.where(at_c, c, nxt)
        rest = np.flatnonzero(~(at_c | at_next))
        if len(rest):
            # Third guess, the slice's first interval: the clock crossed into a new period.
            first = lo[rest]
            at_first = (first < hi[rest]) & (ends[np.minimum(first, last)] + base > t)
            idx[rest[at_first]] = first[at_first]
            rest = rest[~at_first]
        if len(rest):
            idx[rest] = self._first_end_after(lo[rest], hi[rest], base, t)
        return idx

    def is_available(self, device_ids: np.ndarray, t: float) -> np.ndarray:
        idx, exists, shift, _ = self._lookup(device_ids, t)
        if len(self.starts) == 0:
            return np.zeros(len(idx), dtype=bool)
        safe = np.minimum(idx, len(self.starts) - 1)
        return exists & (self.starts[safe] + shift <= t)

    def window_end(self, device_ids: np.ndarray, t: float) -> np.ndarray:
        return self._window_end(device_ids, t, *self._lookup(device_ids, t)[:3])

    def window_state(self, device_ids: np.ndarray, t: float) -> tuple[np.ndarray, np.ndarray]:
        """One lookup for both answers (the cursor's refresh: issue 25's profile)."""
        return self.window_state_hinted(device_ids, t, None)[:2]

    def window_state_hinted(
        self, device_ids: np.ndarray, t: float, hint: np.ndarray | None
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """:meth:`window_state` plus each device's interval index (-1: none), to pass back
        as ``hint`` at a later lookup (:meth:`_lookup`; the availability cursor keeps
        them).  Same ``(end, until)`` with or without a hint, whatever the hint."""
        idx, exists, shift, _ = self._lookup(device_ids, t, hint)
        t = float(t)
        found = np.where(exists, idx, -1)
        if len(self.starts) == 0:
            return np.full(len(idx), t), np.full(len(idx), np.inf), found
        # _window_end and _next_start fused: the interval's shifted start read once.
        safe = np.minimum(idx, len(self.starts) - 1)
        start = self.starts[safe] + shift
        online = exists & (start <= t)
        end = self._end_where_online(device_ids, t, safe, shift, online)
        if online.all():
            return end, end, found
        next_start = np.where(exists, np.maximum(start, t), np.inf)
        return end, np.where(online, end, next_start), found

    def window_state_stepped(
        self, device_ids: np.ndarray, t: float, code: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """``(end, until, code)`` at ``t``: :meth:`window_state` for devices whose state
        the clock carried past (the availability cursor's stale devices), stepped on from
        each one's ``code`` at an earlier lookup (``2 * interval + online``, as returned
        here; -1 where unknown) and returning the code for the next.

        Each device is first taken one boundary on: an offline device into the interval
        it was waiting for, an online one into the interval after its window, or past its
        last window into the next period's first.  The guess is kept only where it is
        provably the plain lookup's answer: the interval is the device's, it ends after
        ``t`` and the one before it in the device's slice does not (or, past the last
        window, every window of the device ends by ``t``), the window holding ``t`` ends
        inside the period (no wrapping rule applies), and the next period's first window
        starts after ``t``.  Every other device (several boundaries passed, a wrapping
        window, no interval, any code at all) is looked up by :meth:`window_state_hinted`.  The
        answers equal the plain lookup's to the bit whatever the codes.

        Why: at 1,000 phones a round about 45 phones cross a window boundary per task
        (issue 25), and a lookup's cost is its random reads of per-device and
        per-interval arrays; the step reads four (the code, the device's slice, the
        interval's start and end) where a hinted lookup reads about ten."""
        ids = np.asarray(device_ids, dtype=np.int64)
        t = float(t)
        code = np.array(code, dtype=np.int64)  # a copy: the caller's codes stay as given
        n = len(self.ends)
        known = code >= 0
        if n == 0 or not known.any():  # nothing to step from (the cursor's first lookup)
            return self._coded_state(ids, t, code)
        p = float(self.period_s) if self.period_s else 0.0
        if p:
            k = self._period_index(t)
            base, cap = k * p, (k + 1.0) * p
        else:
            base, cap = 0.0, np.inf
        lo = np.take(self.offsets, ids)
        hi = np.take(self.offsets, ids + 1)
        guess = (code + 1) >> 1  # the interval one boundary on
        inside = known & (guess >= lo) & (guess < hi)
        found = np.where(inside, guess, lo)
        safe = np.minimum(found, n - 1)
        first_start = np.take(self.starts, safe)
        end_raw = np.take(self.ends, safe)
        before = np.take(self.ends, np.clip(guess - 1, 0, n - 1)) + base  # its predecessor
        end = end_raw + base
        # the device's interval, ending after t, its predecessor in the slice ending by t
        step = inside & (end > t) & ((guess == lo) | (before <= t))
        start = first_start + base
        online = start <= t
        if p:
            step &= ~online | (end_raw < p)  # a window reaching the period's end wraps
            # past the last window, which ended by t: the next period's first window
            past_last = known & (guess == hi) & (hi > lo) & (before <= t)
            if past_last.any():
                start = np.where(past_last, first_start + cap, start)
                past_last &= start > t
                online &= ~past_last
                step |= past_last
        end = np.where(online, np.minimum(end, cap), t)
        until = np.where(online, end, np.maximum(start, t))
        rest = np.flatnonzero(~step)
        if len(rest):
            end[rest], until[rest], code[rest] = self._coded_state(ids[rest], t, code[rest])
        code = np.where(step, 2 * found + online, code)
        return end, until, code

    def _coded_state(self, ids: np.ndarray, t: float, code: np.ndarray):
        """:meth:`window_state_hinted` with the hint and result as step codes."""
        end, until, found = self.window_state_hinted(ids, t, np.where(code >= 0, code >> 1, -1))
        return end, until, np.where(found >= 0, 2 * found + (end > t), -1)

    def _window_end(self, device_ids: np.ndarray, t: float, idx: np.ndarray,
                    exists: np.ndarray, shift: np.ndarray) -> np.ndarray:
        t = float(t)
        if len(self.starts) == 0:
            return np.full(len(idx), float(t))
        safe = np.minimum(idx, len(self.starts) - 1)
        online = exists & (self.starts[safe] + shift <= t)
        return self._end_where_online(device_ids, t, safe, shift, online)

    def _end_where_online(self, device_ids: np.ndarray, t: float, safe: np.ndarray,
                          shift: np.ndarray, online: np.ndarray) -> np.ndarray:
        """The end of the window holding ``t`` where ``online`` (interval ``safe``, shifted
        by ``shift``), else ``t``."""
        end = self.ends[safe] + shift
        if self.period_s:
            # A window reaching the period's end continues into the next period when
            # the device's first window starts at 0 (a window wrapped around the
            # boundary, e.g. 23:00-01:00): one window, not two touching ones.
            p = float(self.period_s)
            if not self._any_wrapping():
                # No device's first window starts at 0: neither rule below applies.
                return np.where(online, np.minimum(end, (np.round(shift / p) + 1.0) * p), t)
            first_end = self._wrapping_first_end()[np.asarray(device_ids, dtype=np.int64)]
            # NaN where the first window does not start at 0 (every comparison is False)
            cont = online & (first_end == first_end) & (self.ends[safe] >= p)
            k_next = np.round(shift / p) + 1.0
            # ends[j] + k*P may round one ulp past (k+1)*P, where _period_index already
            # reads the next period: the window ends at the period's end as computed there.
            end = np.minimum(end, k_next * p)
            end = np.where(cont, first_end + k_next * p, end)
            end = np.where(online & (first_end >= p), np.inf, end)  # online all period
        return np.where(online, end, t)

    def _wrapping_first_end(self) -> np.ndarray:
        """Per device: the end of its first window when that window starts at 0 (it may
        continue a window of the previous period), else NaN.  Computed once: a per-device
        constant that every lookup of a repeating trace needs (issue 25's profile)."""
        cached = getattr(self, "_first_end_cache", None)
        if cached is None:
            lo, hi = self.offsets[:-1], self.offsets[1:]
            first = np.minimum(lo, max(len(self.starts) - 1, 0))
            at_zero = (hi > lo) & (self.starts[first] <= 0.0)
            cached = np.where(at_zero, self.ends[first], np.nan)
            self._first_end_cache = cached
        return cached

    def _any_wrapping(self) -> bool:
        """Whether any device's first window starts at 0 (computed once)."""
        cached = getattr(self, "_any_wrapping_cache", None)
        if cached is None:
            cached = self._any_wrapping_cache = bool(
                np.any(~np.isnan(self._wrapping_first_end())))
        return cached

    def next_start(self, device_ids: np.ndarray, t: float) -> np.ndarray:
        idx, exists, shift, t = self._lookup(device_ids, t)
        return self._next_start(t, idx, exists, shift)

    def _next_start(self, t: float, idx: np.ndarray, exists: np.ndarray,
                    shift: np.ndarray) -> np.ndarray:
        if len(self.starts) == 0:
            return np.full(len(idx), np.inf)
        safe = np.minimum(idx, len(self.starts) - 1)
        start = np.maximum(self.starts[safe] + shift, float(t))
        return np.where(exists, start, np.inf)
