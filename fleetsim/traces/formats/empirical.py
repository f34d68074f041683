"""The empirical availability model: every simulated device replays a measured user's windows.

``kind: empirical`` (``path``: a ``flash_windows`` file).  Device ``i`` is given the cleaned
schedule of a measured user drawn with replacement (stream ``("availability", "empirical",
"user")``) and shifted by a whole number of days drawn uniformly in ``0 .. span_days - 1``
(stream ``("availability", "empirical", "day_shift")``), so the local time of day of every
window is kept; the schedule repeats with the trace's *observed* span as period (the whole
local days actually observed: :mod:`fleetsim.traces.formats.flash_windows`) and windows crossing the
period's end wrap to its start (overnight charging).  Simulated time 0 is a local midnight.

Other eligibility conditions: the measured windows are charging windows.  Each window of the
period is kept with probability ``wifi_share`` (stream ``("availability", "wifi")``, one
uniform per window in device order), standing for "on an unmetered network during this
charging session"; the default 1 keeps every window (an assumption, not a measurement: the
trace holds no network state).  The device is assumed idle (screen off) while charging — the
windows do not record screen state either.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from fleetsim.errors import FleetsimInputError
from fleetsim.rng import stream
from fleetsim.traces.base import IntervalAvailability
from fleetsim.traces.formats.common import DAY_S, periodic_windows
from fleetsim.traces.formats.flash_windows import (
    DEFAULT_CLOCK_TOLERANCE_DAYS,
    DEFAULT_MERGE_GAP_S,
    DEFAULT_OBSERVED_DAY_MIN_SHARE,
    FlashWindowsFormat,
    MeasuredWindows,
    read_flash_windows,
)


def measured_model(
    m: MeasuredWindows,
    n_devices: int,
    seed: int,
    resample: bool = True,
    wifi_share: float = 1.0,
) -> IntervalAvailability:
    """``n_devices`` devices from measured users (module docstring).

    ``resample=False``: device ``i`` gets user ``i mod m`` with no day shift (the plain
    ``flash_windows`` format).  Device ``i``'s draws do not depend on the fleet size."""
    n = int(n_devices)
    if n < 1:
        raise FleetsimInputError(f"fleet size: {n} (allowed: >= 1)")
    if not 0.0 <= wifi_share <= 1.0:
        raise FleetsimInputError(
            f"traces.availability.wifi_share: {wifi_share:g} (allowed: 0 <= share <= 1)"
        )
    if resample:
        user = stream(seed, "availability", "empirical", "user").integers(m.num_users, size=n)
        day = stream(seed, "availability", "empirical", "day_shift").integers(m.span_days, size=n)
    else:
        user = np.arange(n) % m.num_users
        day = np.zeros(n, dtype=np.int64)
    counts = np.bincount(m.device, minlength=m.num_users)
    first = np.concatenate([[0], np.cumsum(counts)[:-1]])
    lens = counts[user]
    owner = np.repeat(np.arange(n), lens)
    pos = np.repeat(first[user] - (np.cumsum(lens) - lens), lens) + np.arange(int(lens.sum()))
    start = m.start[pos] - m.span_start_s + day[owner] * DAY_S
    end = m.end[pos] - m.span_start_s + day[owner] * DAY_S
    if wifi_share < 1.0:
        keep = stream(seed, "availability", "wifi").random(len(pos)) < wifi_share
        owner, start, end = owner[keep], start[keep], end[keep]
    how = (
        "resampled with replacement, whole-day shifts"
        if resample
        else f"device i = user i mod {m.num_users}"
    )
    label = (
        f"{'empirical' if resample else 'trace: flash_windows'}: measured charging windows of "
        f"{m.num_users} users from {m.source} "
        f"({how}; period {m.span_days} d; gaps <= {m.merge_gap_s:g} s merged; "
        f"Wi-Fi share {wifi_share:g})"
    )
    trace = periodic_windows(owner, start, end, n, m.period_s, label)
    if not resample:  # device i replays user i mod m (traces/replay.py)
        trace.trace_devices = m.num_users
    return trace


def load_measured(
    path: Path | None, n_devices: int, seed: int, config=None, resample: bool = True
) -> IntervalAvailability:
    """Kinds ``empirical`` (``resample=True``) and ``flash_windows``: read ``path`` with the
    scenario's ``traces.availability`` settings ``config`` (``merge_gap_s``,
    ``clock_tolerance_days``, ``observed_day_min_share``, ``wifi_share``; None: defaults)."""
    kind = "empirical" if resample else "flash_windows"
    if path is None:
        raise FleetsimInputError(f"traces.availability.path: kind {kind!r} needs a windows file")
    m = read_flash_windows(
        Path(path),
        float(getattr(config, "merge_gap_s", DEFAULT_MERGE_GAP_S)),
        float(getattr(config, "clock_tolerance_days", DEFAULT_CLOCK_TOLERANCE_DAYS)),
        float(getattr(config, "observed_day_min_share", DEFAULT_OBSERVED_DAY_MIN_SHARE)),
    )
    wifi = float(getattr(config, "wifi_share", 1.0))
    return measured_model(m, n_devices, seed, resample=resample, wifi_share=wifi)


class EmpiricalFormat(FlashWindowsFormat):
    """The empirical model: devices resample the users of a ``flash_windows`` file with
    whole-day shifts (:mod:`fleetsim.traces.formats.empirical`)."""

    name = "empirical"
    suffixes = ()

    def sniff(self, path):
        return False  # a model over flash_windows files, not a file format of its own

    def load_with(self, path, n_devices, seed, horizon_s, config):

        return load_measured(path, n_devices, seed, config, resample=True)
