"""``fleetsim traces sample SCENARIO --devices N --hours H --out FILE.csv``.

Writes the availability windows a scenario's ``traces.availability`` gives ``N`` devices over
``H`` hours as an interval CSV ``device_id,start_s,end_s`` (the ``intervals`` format, so
``fleetsim traces inspect`` reads it back, e.g. with ``--overlay`` against a measured trace).
Times are seconds from the scenario's time zero, which is a local midnight (fleetsim
scenarios have no start-hour setting: every availability model and trace puts t = 0 at
00:00 local time).  Windows are clipped to ``[0, H h)``; a window continuing past ``H`` ends
at ``H * 3600``.  The windows are found through the public
:class:`~fleetsim.traces.base.AvailabilityTrace` API the simulator uses (``next_start``,
``window_end``), so the file is exactly what a run sees, including windows that wrap around a
repeating trace's period.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from fleetsim.errors import FleetsimInputError
from fleetsim.traces.base import AvailabilityTrace
from fleetsim.traces.config import TracesConfig

#: the longest sample: a year, as ``run.max_sim_hours`` (windows are expanded to it)
MAX_SAMPLE_HOURS = 24.0 * 366


def trace_windows(trace: AvailabilityTrace, horizon_s: float) -> pd.DataFrame:
    """``device_id,start_s,end_s`` of every window of ``trace`` within ``[0, horizon_s)``,
    sorted by device then start.  Devices are queried together at each distinct time."""
    n = trace.num_devices
    horizon = float(horizon_s)
    t = np.zeros(n)
    active = np.arange(n)
    out_d, out_s, out_e = [], [], []
    while len(active):
        start = np.empty(len(active))
        for value in np.unique(t[active]):
            sel = t[active] == value
            start[sel] = trace.next_start(active[sel], float(value))
        live = np.isfinite(start) & (start < horizon)
        end = start.copy()
        for value in np.unique(start[live]):
            sel = live & (start == value)
            end[sel] = trace.window_end(active[sel], float(value))
        out_d.append(active[live])
        out_s.append(start[live])
        out_e.append(np.minimum(end[live], horizon))
        t[active] = end
        active = active[live & (end < horizon)]
    df = pd.DataFrame(
        {
            "device_id": np.concatenate(out_d) if out_d else np.zeros(0, np.int64),
            "start_s": np.concatenate(out_s) if out_s else np.zeros(0),
            "end_s": np.concatenate(out_e) if out_e else np.zeros(0),
        }
    )
    return df.sort_values(["device_id", "start_s"], kind="stable").reset_index(drop=True)


def check_sample_size(devices: int, hours: float) -> None:
    """Refuse a ``traces sample`` size before anything is read: ``devices`` ≥ 1 and
    0 < ``hours`` ≤ :data:`MAX_SAMPLE_HOURS` (FleetsimInputError naming the option)."""
    if devices < 1:
        raise FleetsimInputError(f"--devices: {devices} (allowed: integer >= 1)")
    if not 0 < hours <= MAX_SAMPLE_HOURS:
        raise FleetsimInputError(
            f"--hours: {hours:g} (allowed: number > 0 and <= {MAX_SAMPLE_HOURS:g}, a year)")


def sample_availability(
    traces: TracesConfig, seed: int, base_dir: Path, devices: int, hours: float, out: Path
) -> tuple[Path, pd.DataFrame, str]:
    """Write the windows of ``devices`` devices over ``hours`` hours of a scenario's
    ``traces`` section (run seed ``seed``, relative paths from ``base_dir``) as CSV to
    ``out``; return (path, windows, availability label).  The scenario is loaded by the
    caller (``fleetsim traces sample``), so this floor never imports the scenario's."""
    from fleetsim.traces.fleet_builder import build_availability

    check_sample_size(devices, hours)
    horizon = float(hours) * 3600.0
    trace = build_availability(traces, int(devices), seed, horizon, base_dir)
    df = trace_windows(trace, horizon)
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    df.to_csv(out, index=False, float_format="%.3f")
    return out, df, trace.label
