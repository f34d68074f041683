"""The empirical availability model: every simulated device replays a measured user's windows.

``kind: empirical`` (``path``: a ``flash_windows`` file).  Device ``i`` is given the cleaned
schedule of a measured user drawn with replacement (stream ``("availability", "empirical",
"user")``) and shifted by a whole number of days drawn uniformly in ``0 .. span_days - 1``
(stream ``("availability", "empirical", "day_shift")``), so the local time of day of every
window is kept; the schedule repeats with the trace's *observed* span as period (the whole
local days actually observed: :mod:`fleetsim.traces.formats.measured`) and windows crossing the
period's end wrap to its start (overnight charging).  Simulated time 0 is a local midnight.

Other eligibility conditions: the measured windows are charging windows.  Each window of the
period is kept with probability ``wifi_share`` (stream ``("availability", "wifi")``, one
uniform per window in device order), standing for "on an unmetered network during this
charging session"; the default 1 keeps every window (an assumption, not a measurement: the
trace holds no network state).  The device is assumed idle (screen off) while charging — the
windows do not record screen state either.
"""

from __future__ import annotations

from fleetsim.traces.formats.flash_windows import FlashWindowsFormat
from fleetsim.traces.formats.measured import load_measured, measured_model  # noqa: F401 - public here too


class EmpiricalFormat(FlashWindowsFormat):
    """The empirical model: devices resample the users of a ``flash_windows`` file with
    whole-day shifts (:mod:`fleetsim.traces.formats.empirical`)."""

    name = "empirical"
    suffixes = ()

    def sniff(self, path):
        return False  # a model over flash_windows files, not a file format of its own

    def load_with(self, path, n_devices, seed, horizon_s, config):
        return load_measured(path, n_devices, seed, config, resample=True)
