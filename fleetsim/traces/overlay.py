"""``fleetsim traces inspect FILE --overlay OTHER``: two availability traces in one PNG.

Each file gives its window lengths and its online share by local hour of day:

* ``flash_windows`` files: the cleaned windows of the kept users over their span (as
  ``kind: flash_windows`` replays them);
* interval tables (``device_id,start_s,end_s``, e.g. written by ``fleetsim traces sample``):
  the windows as they are, touching windows of a device joined, over ``[0, end)`` with ``end``
  the last window end rounded up to a whole hour (t = 0 is a local midnight);
* any other registered format: loaded for 1,000 devices over a week, windows of one period.

The figure has the two window-length CDFs (log minutes) and the two hourly online-share
profiles; the table gives the two-sample KS distance of the lengths (``scipy.stats.ks_2samp``)
and the largest hourly difference.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from scipy import stats

from fleetsim.errors import FleetsimInputError
from fleetsim.traces.files import refuse_special_file
from fleetsim.traces.formats.common import DAY_S, merge_windows
from fleetsim.traces.formats.measured import hourly_online_share


@dataclass
class WindowsProfile:
    label: str
    lengths_s: np.ndarray
    hourly: np.ndarray  # [24]


def windows_profile(path: Path, fmt: str | None = None, timezone: str = "UTC") -> WindowsProfile:
    """Window lengths and hourly online share of an availability file (module docstring)."""
    from fleetsim.traces.formats.intervals import load_interval_table
    from fleetsim.traces.registry import detect_format, get_format

    path = refuse_special_file(Path(path))
    if not path.exists():
        raise FleetsimInputError(f"{path}: file not found")
    kind = fmt or detect_format(path)
    if kind == "flash_windows":
        from fleetsim.traces.formats.measured import measured_hourly_share, read_flash_windows

        m = read_flash_windows(path)
        return WindowsProfile(
            f"{path.name} (measured, {m.num_users} users)", m.lengths_s, measured_hourly_share(m)
        )
    if kind == "intervals":
        dev, start, end = load_interval_table(path)
        d, s, e = merge_windows(dev, start, end, 0.0)
        uniq = np.unique(d, return_inverse=True)[1]
        t1 = max(np.ceil(float(e.max()) / 3600.0) * 3600.0, 3600.0) if len(e) else 3600.0
        n = int(uniq.max()) + 1 if len(uniq) else 1
        return WindowsProfile(
            f"{path.name} ({n} devices)", e - s, hourly_online_share(uniq, s, e, n, 0.0, t1)
        )
    if kind is None:
        raise FleetsimInputError(
            f"{path}: cannot tell the availability format (allowed: flash_windows, intervals "
            "or another registered format; name it with --format)"
        )
    trace = get_format(kind).load(path, 1000, 0, 7 * DAY_S)
    if not hasattr(trace, "starts"):
        raise FleetsimInputError(f"{path}: format {kind!r} gives no explicit windows to overlay")
    period = float(trace.period_s or max(float(trace.ends.max(initial=0.0)), 3600.0))
    dev = np.repeat(np.arange(trace.num_devices), np.diff(trace.offsets))
    return WindowsProfile(
        f"{path.name} ({kind})",
        trace.ends - trace.starts,
        hourly_online_share(dev, trace.starts, trace.ends, trace.num_devices, 0.0, period),
    )


def overlay_figure(
    a: WindowsProfile,
    b: WindowsProfile,
    png: Path,
    title: str = "",
    formats: Sequence[str] = ("png",),
) -> pd.DataFrame:
    """Write the two-panel overlay figure (``png`` with its suffix replaced by each of
    ``formats``: png, pdf, svg); return the comparison table (field, value).  Shares in
    percent."""
    from matplotlib.figure import Figure
    from matplotlib.ticker import PercentFormatter

    from fleetsim.record.figure_files import save_figure

    fig = Figure(figsize=(12, 4.6), layout="constrained")
    axes = fig.subplots(1, 2)
    for prof, style in ((a, "-"), (b, "--")):
        v = np.sort(prof.lengths_s) / 60.0
        axes[0].plot(v, 100.0 * np.arange(1, len(v) + 1) / max(len(v), 1), style,
                     label=prof.label)
        axes[1].plot(np.arange(24) + 0.5, 100.0 * np.asarray(prof.hourly), style, marker="o",
                     ms=3, label=prof.label)
    axes[0].set_xscale("log")
    axes[0].set_xlabel("window length (minutes)")
    axes[0].set_ylabel("windows at most this long (%)")
    axes[0].set_title("window-length CDF")
    axes[0].legend(fontsize=8)
    axes[1].set_xlabel("local hour of day")
    axes[1].set_ylabel("devices online (%)")
    axes[1].set_xlim(0, 24)
    axes[1].set_title("online share by hour of day")
    axes[1].legend(fontsize=8)
    for ax in axes:
        ax.set_ylim(0, 100)
        ax.yaxis.set_major_formatter(PercentFormatter(100))
    if title:
        fig.suptitle(title)
    save_figure(fig, png, dpi=90, formats=formats)
    ks = stats.ks_2samp(a.lengths_s, b.lengths_s).statistic if len(a.lengths_s) and len(
        b.lengths_s
    ) else float("nan")
    qa = np.quantile(a.lengths_s, [0.25, 0.5, 0.75]) / 60.0
    qb = np.quantile(b.lengths_s, [0.25, 0.5, 0.75]) / 60.0
    rows = {
        "first": a.label,
        "second": b.label,
        "window_min_q25_q50_q75_first": "/".join(f"{v:.1f}" for v in qa),
        "window_min_q25_q50_q75_second": "/".join(f"{v:.1f}" for v in qb),
        "ks_window_length": f"{float(ks):.4f}",
        "mean_online_share_first": f"{float(a.hourly.mean()):.4f}",
        "mean_online_share_second": f"{float(b.hourly.mean()):.4f}",
        "hourly_share_max_abs_difference": f"{float(np.abs(a.hourly - b.hourly).max()):.4f}",
    }
    return pd.DataFrame({"field": list(rows), "value": list(rows.values())})
