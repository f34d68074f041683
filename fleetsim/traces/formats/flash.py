"""FLASH's ``state_traces.json`` (``kind: flash``): available = screen locked ∧ charging ∧
Wi-Fi; flags start false, ``phone_off`` clears them; zone-less timestamps read in
``traces.availability.timezone``; each user's pattern repeats with period = its span."""

from __future__ import annotations

import json
import math
from datetime import datetime
from pathlib import Path

import numpy as np

from fleetsim.errors import FleetsimInputError
from fleetsim.traces.base import IntervalAvailability
from fleetsim.traces.formats.base import TraceFormat, read_head
from fleetsim.traces.formats.common import (
    intervals_to_trace,
    merge_touching,
    trace_id_order,
    zone,
)
from fleetsim.traces.report import WEEK_S, availability_report

_WIFI_ON = {"wifi"}


_WIFI_OFF = {"2g", "3g", "4g", "5g", "unknown", "none"}


#: windows one user's repeated pattern may expand to (a user whose messages span seconds,
#: repeated for months, would otherwise fill the memory)
MAX_REPEATED_WINDOWS = 2_000_000


def flash_intervals(
    path: Path, horizon_s: float, timezone: str = "UTC"
) -> tuple[np.ndarray, np.ndarray, np.ndarray, int]:
    """(device, start, end, number of users) from FLASH ``state_traces.json``.

    Available = screen locked ∧ charging ∧ Wi-Fi.  State starts False for each
    flag until an event sets it; ``phone_off`` clears all.  Times count from the
    user's first message; each user's pattern repeats with period = its span
    (last - first message) up to ``horizon_s``.  The messages' timestamps carry no
    zone: they are read in ``timezone`` (IANA name, default UTC; a daylight-saving
    change inside a trace shortens or lengthens that day), never the host's zone.
    Users are numbered in :func:`trace_id_order` (numeric uids numerically).
    """
    tz = zone(timezone)
    path = Path(path)
    if not path.exists():
        raise FleetsimInputError(f"{path}: file not found")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise FleetsimInputError(
            f"{path}: not UTF-8 text ({exc.reason} at byte {exc.start}); FLASH state_traces "
            "is a JSON object uid -> {'messages': ...}"
        ) from None
    if not text.strip():
        raise FleetsimInputError(f"{path}: file is empty")
    try:
        obj = json.loads(text)
    except json.JSONDecodeError as exc:
        raise FleetsimInputError(f"{path}: not valid JSON ({exc})") from None
    if not isinstance(obj, dict) or not obj:
        raise FleetsimInputError(
            f"{path}: expected a non-empty JSON object uid -> {{'messages': ...}}"
        )
    devs, starts, ends = [], [], []
    for i, uid in enumerate(trace_id_order(obj)):
        rec = obj[uid]
        if not isinstance(rec, dict) or not isinstance(rec.get("messages"), str):
            raise FleetsimInputError(
                f"{path}: user {uid!r}: missing string field 'messages' "
                "(lines 'YYYY-mm-dd HH:MM:SS<TAB>event')"
            )
        parsed = []  # (time, event), then in time order: the state machine needs it
        for ln, line in enumerate(rec["messages"].splitlines()):
            if not line.strip():
                continue
            stamp, _, event = line.partition("\t")
            try:
                t = (
                    datetime.strptime(stamp.strip(), "%Y-%m-%d %H:%M:%S")
                    .replace(tzinfo=tz)
                    .timestamp()
                )
            except ValueError:
                raise FleetsimInputError(
                    f"{path}: user {uid!r} messages line {ln + 1}: {line[:40]!r} does not start "
                    "with a 'YYYY-mm-dd HH:MM:SS' timestamp and a tab"
                ) from None
            parsed.append((t, event))
        # a log whose lines are out of time order is read in time order (stable: equal
        # stamps keep their file order); file order would make the span, and so the
        # repeat period, wrong and the repeated windows overlap
        parsed.sort(key=lambda item: item[0])
        times, avail = [], []
        locked = charging = wifi = False
        t0 = parsed[0][0] if parsed else 0.0
        for t, event in parsed:
            ev = event.strip().lower()
            if ev == "screen_lock":
                locked = True
            elif ev == "screen_unlock":
                locked = False
            elif ev == "battery_charged_on":
                charging = True
            elif ev == "battery_charged_off":
                charging = False
            elif ev in _WIFI_ON:
                wifi = True
            elif ev in _WIFI_OFF:
                wifi = False
            elif ev == "phone_off":
                locked = charging = wifi = False
            times.append(t - t0)
            avail.append(locked and charging and wifi)
        if not times:
            continue
        tt = np.asarray(times)
        av = np.asarray(avail)
        span = float(tt[-1])
        # rising/falling edges of the availability flag
        prev = np.concatenate(([False], av[:-1]))
        rise = tt[av & ~prev]
        fall_idx = np.nonzero(~av & prev)[0]
        fall = tt[fall_idx]
        if len(fall) < len(rise):
            fall = np.concatenate((fall, [span]))
        keep = fall > rise
        rise, fall = rise[keep], fall[keep]
        if span > 0 and len(rise):
            reps = max(int(math.ceil(horizon_s / span)), 1)
            if reps * len(rise) > MAX_REPEATED_WINDOWS:
                raise FleetsimInputError(
                    f"{path}: user {uid!r}: its messages span only {span:g} s, so repeating "
                    f"its pattern up to the horizon ({horizon_s / 3600:g} h) takes "
                    f"{reps * len(rise):,} windows (allowed: at most "
                    f"{MAX_REPEATED_WINDOWS:,} per user: drop the user or shorten the horizon)")
            k = np.repeat(np.arange(reps), len(rise))
            rise = np.tile(rise, reps) + k * span
            fall = np.tile(fall, reps) + k * span
        devs.append(np.full(len(rise), i, dtype=np.int64))
        starts.append(rise)
        ends.append(fall)
    if not devs or sum(len(d) for d in devs) == 0:
        raise FleetsimInputError(
            f"{path}: no user is ever available (screen locked, charging and on Wi-Fi)"
        )
    dev, start, end = np.concatenate(devs), np.concatenate(starts), np.concatenate(ends)
    return (*merge_touching(dev, start, end), len(obj))


def load_flash(
    path: Path, n_devices: int, horizon_s: float, timezone: str = "UTC"
) -> IntervalAvailability:
    dev, start, end, m = flash_intervals(path, horizon_s, timezone)
    label = (
        f"trace: FLASH state_traces {Path(path).name} ({m} users; "
        "available = locked & charging & Wi-Fi)"
    )
    return intervals_to_trace(dev, start, end, n_devices, None, label, m)


class FlashFormat(TraceFormat):
    """FLASH ``state_traces.json``: a JSON object uid -> {"messages": "..."}."""

    name = "flash"
    suffixes = (".json",)

    def sniff(self, path):
        text = read_head(Path(path)).decode("utf-8", errors="replace").lstrip("\ufeff \t\r\n")
        return text.startswith("{") and '"messages"' in text

    def report(self, path, timezone="UTC"):
        """Every trace device over a week, timestamps read in ``timezone``."""
        dev, start, end, m = flash_intervals(path, horizon_s=WEEK_S, timezone=timezone)
        trace = intervals_to_trace(dev, start, end, m, None, f"FLASH {Path(path).name}", m)
        return availability_report("flash", trace, WEEK_S)

    def load(self, path, n_devices, seed, horizon_s):
        return load_flash(Path(path), n_devices, horizon_s)

    def load_with(self, path, n_devices, seed, horizon_s, config):
        return load_flash(
            Path(path), n_devices, horizon_s, getattr(config, "timezone", None) or "UTC"
        )
