"""Start a run at another time of day: an availability trace seen from a later clock.

``run.start_hour`` = h makes simulated time 0 correspond to the trace's time h × 3600 s
(for the diurnal models and FLASH-derived traces, whose time 0 is local midnight, h is the
local hour the run starts at).  A run started at 09:00 meets the morning's few charging
phones first; one started at 21:00 meets the evening's many.
"""

from __future__ import annotations

import numpy as np

from fleetsim.traces.base import AvailabilityTrace


class StartShifted(AvailabilityTrace):
    """``inner`` seen ``offset_s`` seconds later: availability at simulated time t is the
    inner trace's at ``t + offset_s``; window ends and starts are mapped back."""

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

    def is_available(self, device_ids: np.ndarray, t: float) -> np.ndarray:
        return self.inner.is_available(device_ids, t + self.offset_s)

    def window_end(self, device_ids: np.ndarray, t: float) -> np.ndarray:
        return np.asarray(self.inner.window_end(device_ids, t + self.offset_s)) - self.offset_s

    def next_start(self, device_ids: np.ndarray, t: float) -> np.ndarray:
        return np.asarray(self.inner.next_start(device_ids, t + self.offset_s)) - self.offset_s

    def online_seconds(self, device_ids: np.ndarray, end_time: float) -> np.ndarray:
        """Online seconds in simulated ``[0, end_time]`` = the inner trace's in
        ``[offset, offset + end_time]``."""
        from fleetsim.fleet.window_cursor import online_seconds

        ids = np.asarray(device_ids, dtype=np.int64)
        upto_end = online_seconds(self.inner, ids, self.offset_s + float(end_time))
        upto_start = online_seconds(self.inner, ids, self.offset_s)
        return upto_end - upto_start


def shift_start(trace: AvailabilityTrace, start_hour: float) -> AvailabilityTrace:
    """``trace`` itself for hour 0, else a :class:`StartShifted` view."""
    return trace if start_hour == 0 else StartShifted(trace, start_hour * 3600.0)
