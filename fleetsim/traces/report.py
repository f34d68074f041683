"""What ``fleetsim traces validate|inspect`` reports about a trace file: one summary
and, for availability traces, the online share by hour of day."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from fleetsim.traces.base import AvailabilityTrace

#: the week over which availability traces are summarised (seconds)
WEEK_S = 7 * 86400.0

#: hours of the day in the online-share profile
SUMMARY_HOURS = 24


@dataclass
class TraceReport:
    kind: str
    summary: dict
    latency: pd.DataFrame | None = None  # phone_model, backend, ref_forward_s
    hourly_share: np.ndarray | None = None  # [24]
    bandwidth: dict = field(default_factory=dict)  # label -> Mbit/s samples (sorted)


def hourly_share(trace: AvailabilityTrace, days: int) -> np.ndarray:
    """Mean share of devices online in each hour of the day over ``days`` days, shape (24,).

    Exact (online seconds per hour, from the windows) for interval traces, always-online
    fleets and traces that answer ``online_seconds`` in closed form; other models are
    sampled every 15 minutes.  Sampling missed short windows: a trace online 96 s a day
    could read as always online, or two 13-minute windows as never (a new-user trial)."""
    from fleetsim.traces.base import AlwaysOnline, IntervalAvailability
    from fleetsim.traces.window_cursor import online_seconds

    ids = np.arange(trace.num_devices)
    if isinstance(trace, (IntervalAvailability, AlwaysOnline)) or callable(
            getattr(trace, "online_seconds", None)):
        edges = np.arange(days * SUMMARY_HOURS + 1) * 3600.0
        cumulative = np.array([float(online_seconds(trace, ids, t).mean()) for t in edges])
        per_hour = np.diff(cumulative) / 3600.0
        return per_hour.reshape(days, SUMMARY_HOURS).mean(axis=0)
    share = np.zeros(SUMMARY_HOURS)
    for d in range(days):
        for h in range(SUMMARY_HOURS):
            for quarter in range(4):
                t = d * 86400.0 + h * 3600.0 + quarter * 900.0
                share[h] += trace.is_available(ids, t).mean()
    return share / (days * 4)


def availability_report(kind: str, trace: AvailabilityTrace, horizon_s: float) -> TraceReport:
    days = max(1, min(14, int(np.ceil(horizon_s / 86400.0))))
    hourly = hourly_share(trace, days)
    summary = {
        "format": kind,
        "devices": trace.num_devices,
        "mean_online_share": float(hourly.mean()),
        "peak_hour": int(np.argmax(hourly)),
        "trough_hour": int(np.argmin(hourly)),
        "label": trace.label,
    }
    if hasattr(trace, "starts"):
        dur = trace.ends - trace.starts
        summary.update(
            windows=int(len(dur)),
            median_window_s=float(np.median(dur)) if len(dur) else 0.0,
            span_s=float(trace.ends.max() - trace.starts.min()) if len(dur) else 0.0,
        )
    return TraceReport(kind, summary, hourly_share=hourly)
