"""Format ``flash_windows``: measured availability windows ``{user_id: [[start_s, end_s],
...]}`` replayed as measured, one device per user.  The reader, its cleaning rules and the
statistics are :mod:`fleetsim.traces.formats.measured`'s (shared with ``empirical`` and
``diurnal_windows``).
"""


from __future__ import annotations

from pathlib import Path

import numpy as np

from fleetsim.traces.formats.base import TraceFormat
from fleetsim.traces.formats.measured import (  # noqa: F401 - the reader's names, public here too
    DEFAULT_CLOCK_TOLERANCE_DAYS,
    DEFAULT_MERGE_GAP_S,
    DEFAULT_OBSERVED_DAY_MIN_SHARE,
    MeasuredWindows,
    clean_windows,
    hourly_online_share,
    is_windows_file,
    load_measured,
    measured_hourly_share,
    read_flash_windows,
)


class FlashWindowsFormat(TraceFormat):
    """Measured windows ``{user_id: [[start_s, end_s], ...]}`` (FLASH "ready" intervals):
    the file's users as they are (fleet device i = user i mod m), quirks cleaned
    (:mod:`fleetsim.traces.formats.measured`)."""

    name = "flash_windows"
    suffixes = (".json",)

    def sniff(self, path):

        return is_windows_file(Path(path))

    def report(self, path, timezone="UTC"):
        """The cleaned windows' figures and quirk counts, and the measured online share by
        hour of the observed days."""
        from fleetsim.traces.report import TraceReport

        m = read_flash_windows(Path(path))
        hourly = measured_hourly_share(m)
        summary = {"format": self.name, **m.summary(), "mean_online_share": float(hourly.mean()),
                   "peak_hour": int(np.argmax(hourly)), "trough_hour": int(np.argmin(hourly))}
        return TraceReport(self.name, summary, hourly_share=hourly)

    def load(self, path, n_devices, seed, horizon_s):
        return self.load_with(path, n_devices, seed, horizon_s, None)

    def load_with(self, path, n_devices, seed, horizon_s, config):

        return load_measured(path, n_devices, seed, config, resample=False)
