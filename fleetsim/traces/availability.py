"""Availability: the documented diurnal model and loaders for real trace formats.

* :class:`DiurnalAvailability` — closed form, one window per device per day
  (``[offset + k*P, offset + k*P + duration)``), vectorised, O(n) memory.
* :func:`diurnal_model` — draws per-device offset/duration calibrated on the
  FLASH 1,000 users' charging and screen-on totals (see
  ``device_traces/availability/PROVENANCE.md``).  It is a model, and its label
  says so in every output.
* Loaders: plain intervals (CSV/Parquet ``device_id,start_s,end_s``), FedScale's
  ``client_behave_trace`` (pickle read with an unpickler that refuses every
  global), FLASH's ``state_traces.json``.

Trace devices are assigned to fleet devices cyclically: fleet device ``i`` uses
the ``(i mod m)``-th trace device, so a 100-device trace can serve a
1,000,000-device fleet and the mapping needs no randomness.  Trace ids are put in
ONE order in every format (:func:`trace_id_order`): ids that are integers (``7``,
``"10"``) in numeric order, so ``"9"`` comes before ``"10"``, then any other ids in
string order.

Windows of a repeating trace (``period_s`` of interval files, FedScale's
``finish_time``) that cross the period boundary wrap around (:func:`wrap_windows`):
``[82800, 90000)`` with a period of 86,400 s is 23:00-01:00 every day, as FLASH's
``get_available_time`` replays a window past ``trace_end`` into the next repetition.

Timestamps without a zone (FLASH's ``YYYY-mm-dd HH:MM:SS``) are read in the zone
``traces.availability.timezone`` (default UTC, via :mod:`zoneinfo`), never the
host's.
"""

from __future__ import annotations

import io
import json
import math
import pickle
from collections.abc import Iterable
from datetime import datetime
from pathlib import Path
from statistics import NormalDist
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import numpy as np
import pandas as pd

from fleetsim.errors import FleetsimInputError
from fleetsim.rng import stream
from fleetsim.traces.base import AvailabilityTrace, IntervalAvailability
from fleetsim.traces.tables import (
    AVAILABILITY_CALIBRATION,
    AVAILABILITY_QUANTILES,
    numeric_column,
    read_table,
    require_columns,
)

DAY_S = 86_400.0


class DiurnalAvailability(AvailabilityTrace):
    """One window per device per period: ``[offset + k*P, offset + k*P + duration)``.

    ``duration <= 0``: never online; ``duration >= P``: always online.  Window
    times are always computed as ``offset + k*P`` so a time returned by
    :meth:`next_start` tests online and one returned by :meth:`window_end` tests
    offline (no floating-point drift between the methods).
    """

    def __init__(
        self,
        offset_s: np.ndarray,
        duration_s: np.ndarray,
        period_s: float = DAY_S,
        label: str = "",
    ) -> None:
        self.offset_s = np.mod(np.asarray(offset_s, dtype=np.float64), period_s)
        self.duration_s = np.asarray(duration_s, dtype=np.float64)
        self.period_s = float(period_s)
        self.label = label

    @property
    def num_devices(self) -> int:
        return int(self.offset_s.shape[0])

    def _window(self, ids: np.ndarray, t: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(offset, k, duration) of the latest window starting at or before ``t``:
        that window starts at ``offset + k*P`` (always computed in this form)."""
        a = self.offset_s[ids]
        p = self.period_s
        k = np.floor((t - a) / p)
        k = np.where(a + (k + 1.0) * p <= t, k + 1.0, k)
        k = np.where(a + k * p > t, k - 1.0, k)
        return a, k, self.duration_s[ids]

    def _online(self, a, k, dur, t: float) -> np.ndarray:
        return (dur >= self.period_s) | ((dur > 0) & (t < a + k * self.period_s + dur))

    def is_available(self, device_ids: np.ndarray, t: float) -> np.ndarray:
        ids = np.asarray(device_ids, dtype=np.int64)
        t = float(t)
        a, k, dur = self._window(ids, t)
        return self._online(a, k, dur, t)

    def window_end(self, device_ids: np.ndarray, t: float) -> np.ndarray:
        ids = np.asarray(device_ids, dtype=np.int64)
        t = float(t)
        a, k, dur = self._window(ids, t)
        online = self._online(a, k, dur, t)
        end = np.where(online, a + k * self.period_s + dur, t)
        return np.where(dur >= self.period_s, np.inf, end)

    def next_start(self, device_ids: np.ndarray, t: float) -> np.ndarray:
        ids = np.asarray(device_ids, dtype=np.int64)
        t = float(t)
        a, k, dur = self._window(ids, t)
        online = self._online(a, k, dur, t)
        nxt = np.where(online, t, a + (k + 1.0) * self.period_s)
        return np.where(dur <= 0, np.inf, nxt)

    def online_seconds(self, device_ids: np.ndarray, end_time: float) -> np.ndarray:
        """Online seconds in ``[0, end_time)`` in closed form (the fleet's accounting hook).

        With G(t) = k·d + min(t − (a + kP), d), k = floor((t − a)/P), the online time
        accumulated up to t counted from window 0, the answer is G(end) − G(0)."""
        ids = np.asarray(device_ids, dtype=np.int64)
        a = self.offset_s[ids]
        p = self.period_s
        d = np.clip(self.duration_s[ids], 0.0, p)

        def cumulative(t: float) -> np.ndarray:
            k = np.floor((t - a) / p)
            return k * d + np.minimum(t - (a + k * p), d)

        return np.maximum(cumulative(float(end_time)) - cumulative(0.0), 0.0)

    def online_share_by_hour(self, device_ids: np.ndarray, days: int = 1) -> np.ndarray:
        """Share of devices online at each hour of the day (for ``traces inspect``)."""
        return np.array(
            [self.is_available(device_ids, h * 3600.0 + 1800.0).mean() for h in range(24)]
        )


def _calibration() -> dict:
    with open(AVAILABILITY_CALIBRATION, encoding="utf-8") as fh:
        return json.load(fh)


def diurnal_model(
    n_devices: int,
    seed: int,
    trace_span_days: float = 7.0,
    night_share: float = 0.7,
    night_start_hour: float = 23.0,
    night_start_sd_hours: float = 1.5,
    wifi_share: float = 1.0,
) -> DiurnalAvailability:
    """Per-device daily idle-charging window, calibrated on FLASH's 1,000 users.

    Per device: a (charging total, screen-on total) pair is drawn from the FLASH
    per-user marginals (shipped quantile tables) joined by a Gaussian copula with
    the correlation measured on the same users; over ``trace_span_days`` this
    gives daily charging seconds ``c`` and screen-on share ``s``.  The device is
    available (charging, screen off, on Wi-Fi) for ``c * (1 - s) * wifi_share``
    seconds a day, in one window starting around ``night_start_hour`` (share
    ``night_share`` of devices) or at a uniform hour.  Draws come from the named
    streams ``("availability", <variable>)``: device ``i``'s values do not depend
    on the fleet size.
    """
    n = int(n_devices)
    table = pd.read_csv(AVAILABILITY_QUANTILES)
    rho = float(_calibration()["copula_rho"])
    q = np.clip(table["quantile"].to_numpy(), 1e-4, 1 - 1e-4)
    zgrid = np.array([NormalDist().inv_cdf(float(x)) for x in q])
    z1 = stream(seed, "availability", "charging").standard_normal(n)
    e = stream(seed, "availability", "screen").standard_normal(n)
    z2 = rho * z1 + math.sqrt(max(1.0 - rho * rho, 0.0)) * e
    charge = np.interp(z1, zgrid, table["charging_s_total"].to_numpy())
    screen = np.interp(z2, zgrid, table["screen_on_s_total"].to_numpy())
    span = trace_span_days * DAY_S
    charge_per_day = charge / trace_span_days
    screen_share = np.clip(screen / span, 0.0, 1.0)
    duration = np.clip(charge_per_day * (1.0 - screen_share) * wifi_share, 0.0, DAY_S)
    night = stream(seed, "availability", "night").random(n) < night_share
    night_hour = stream(seed, "availability", "night_hour").normal(
        night_start_hour, night_start_sd_hours, n
    )
    day_hour = stream(seed, "availability", "day_hour").uniform(0.0, 24.0, n)
    hour = np.mod(np.where(night, night_hour, day_hour), 24.0)
    label = (
        "model: diurnal idle-charging windows calibrated on FLASH 1000 users' charging and "
        f"screen-on totals (span {trace_span_days:g} d assumed, night share {night_share:g}, "
        f"Wi-Fi share {wifi_share:g})"
    )
    return DiurnalAvailability(hour * 3600.0, duration, DAY_S, label)


# ------------------------------------------------------------ ids and periods


def _numeric_id(value: object) -> int | None:
    """The integer a trace id stands for (``7``, ``7.0``, ``"7"``, ``" 07 "``), else None."""
    if isinstance(value, bool):
        return None
    if isinstance(value, (int, np.integer)):
        return int(value)
    if isinstance(value, (float, np.floating)):
        return int(value) if float(value).is_integer() else None
    if isinstance(value, str):
        text = value.strip()
        if text and text.lstrip("+-").isdigit() and text.isascii():
            return int(text)
    return None


def trace_id_order(ids: Iterable[object]) -> list[object]:
    """Trace ids in the order trace devices are numbered (0, 1, ...) in every format.

    Ids that are integers, or strings of an integer, come first in numeric order
    (``"9"`` before ``"10"``); any other ids follow in string order.  The input
    order (file order, JSON key order, pickle dict order) never matters."""

    def key(value: object) -> tuple:
        n = _numeric_id(value)
        return (0, n, str(value)) if n is not None else (1, 0, str(value))

    return sorted(ids, key=key)


def wrap_windows(
    path: Path,
    device: np.ndarray,
    start: np.ndarray,
    end: np.ndarray,
    period_s: np.ndarray | float,
    key: str,
    what: str = "window",
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Windows of a repeating trace folded into one period ``[0, P)``.

    A window ``[s, e)`` with ``s < P < e`` crosses the period boundary and wraps
    around: it becomes ``[s, P)`` and ``[0, e - P)`` (``[82800, 90000)`` with
    ``P = 86400`` is 23:00-01:00 every day).  ``period_s`` is one number or one per
    window (FedScale: each client's ``finish_time``).  Windows must be validated
    (``end > start``) already.

    A wrapped piece that overlaps or touches another window of the device joins it
    (the union: the README's ``0,0,3600`` plus ``0,82800,90000`` is online 23:00-01:00).

    Raises FleetsimInputError, naming ``path`` and ``key``, for a window starting at
    or after its period or longer than one period.  Returns (device, start, end)
    sorted by device then start, overlapping or touching windows merged.
    """
    period = np.broadcast_to(np.asarray(period_s, dtype=np.float64), start.shape)
    late = start >= period
    if late.any():
        i = int(np.nonzero(late)[0][0])
        raise FleetsimInputError(
            f"{path}: {what} {i + 1} (device {device[i]}): start {start[i]:g} is not inside "
            f"the period {key} = {period[i]:g} (allowed: 0 <= start < period; a window may "
            "end after the period and then wraps around to the period's start)"
        )
    long = (end - start) > period
    if long.any():
        i = int(np.nonzero(long)[0][0])
        raise FleetsimInputError(
            f"{path}: {what} {i + 1} (device {device[i]}): [{start[i]:g}, {end[i]:g}) is "
            f"longer than the period {key} = {period[i]:g} (allowed: at most one period)"
        )
    cross = end > period
    dev = np.concatenate([device, device[cross]])
    s = np.concatenate([start, np.zeros(int(cross.sum()))])
    e = np.concatenate([np.where(cross, period, end), end[cross] - period[cross]])
    return _merge_touching(dev, s, e)


def zone(name: str, what: str = "traces.availability.timezone") -> ZoneInfo:
    """The IANA zone ``name`` (e.g. ``UTC``, ``Asia/Shanghai``) for timestamps without one."""
    try:
        return ZoneInfo(str(name))
    except (ZoneInfoNotFoundError, ValueError, TypeError):
        raise FleetsimInputError(
            f"{what}: {name!r} is not an IANA time zone (allowed: e.g. UTC, Europe/Paris, "
            "Asia/Shanghai)"
        ) from None


# ------------------------------------------------------------ intervals → CSR


def intervals_to_trace(
    device: np.ndarray,
    start: np.ndarray,
    end: np.ndarray,
    n_devices: int,
    period_s: float | None,
    label: str,
    n_trace_devices: int | None = None,
) -> IntervalAvailability:
    """CSR IntervalAvailability for ``n_devices`` fleet devices from validated,
    non-overlapping intervals of trace devices ``0..m-1`` (cyclic mapping).

    ``device`` holds dense trace-device indices; ``n_trace_devices`` (default:
    max index + 1) counts trace devices without any window too (never online)."""
    order = np.lexsort((start, device))
    device, start, end = device[order], start[order], end[order]
    m = int(n_trace_devices) if n_trace_devices is not None else int(device.max(initial=-1)) + 1
    if m <= 0:
        raise FleetsimInputError(f"{label}: trace holds no devices")
    counts = np.bincount(device, minlength=m).astype(np.int64)
    first = np.zeros(m, dtype=np.int64)
    np.cumsum(counts[:-1], out=first[1:])
    td = np.arange(int(n_devices)) % m
    lens = counts[td]
    offsets = np.zeros(int(n_devices) + 1, dtype=np.int64)
    np.cumsum(lens, out=offsets[1:])
    total = int(offsets[-1])
    # ragged arange: the j-th window of fleet device i is window first[td[i]] + j
    pos = np.repeat(first[td] - offsets[:-1], lens) + np.arange(total)
    return IntervalAvailability(offsets, start[pos], end[pos], period_s=period_s, label=label)


def validate_intervals(
    path: Path, device: np.ndarray, start: np.ndarray, end: np.ndarray, what: str = "row"
) -> None:
    """Reversed/empty and overlapping intervals raise with the device and times named."""
    bad = end <= start
    if bad.any():
        i = int(np.nonzero(bad)[0][0])
        raise FleetsimInputError(
            f"{path}: {what} {i + 1}: interval of device {int(device[i])} has end_s "
            f"{end[i]:g} <= start_s {start[i]:g} (allowed: end_s > start_s)"
        )
    order = np.lexsort((start, device))
    d, s, e = device[order], start[order], end[order]
    same = d[1:] == d[:-1]
    overlap = same & (s[1:] < e[:-1])
    if overlap.any():
        j = int(np.nonzero(overlap)[0][0])
        raise FleetsimInputError(
            f"{path}: device {int(d[j])} has overlapping intervals [{s[j]:g}, {e[j]:g}) and "
            f"[{s[j + 1]:g}, {e[j + 1]:g}) (allowed: sorted, non-overlapping per device)"
        )


def _merge_touching(
    device: np.ndarray, start: np.ndarray, end: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """[a, b) followed by [b, c) (or overlapping it) on one device is one window: the
    union of a device's windows, sorted by device then start."""
    order = np.lexsort((start, device))
    d, s, e = device[order], start[order], end[order]
    if len(d) == 0:
        return d, s, e
    # latest end so far within each device (a long window may cover several later ones)
    reach = pd.Series(e).groupby(d).cummax().to_numpy()
    new_run = np.ones(len(d), dtype=bool)
    new_run[1:] = (d[1:] != d[:-1]) | (s[1:] > reach[:-1])
    first = np.nonzero(new_run)[0]
    return d[first], s[first], np.maximum.reduceat(e, first)


def load_interval_table(path: Path) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Validated (device, start, end) arrays from a CSV/Parquet interval file."""
    path = Path(path)
    df = read_table(path)
    require_columns(df, path, ("device_id", "start_s", "end_s"))
    dev = numeric_column(df, path, "device_id", non_negative=True)
    if np.any(dev != np.floor(dev)):
        i = int(np.nonzero(dev != np.floor(dev))[0][0])
        raise FleetsimInputError(
            f"{path}: column 'device_id' row {i + 1}: {dev[i]:g} is not an integer "
            "(allowed: integers >= 0)"
        )
    start = numeric_column(df, path, "start_s", non_negative=True)
    end = numeric_column(df, path, "end_s", non_negative=True)
    validate_intervals(path, dev, start, end)
    return dev.astype(np.int64), start, end


def load_intervals(
    path: Path, n_devices: int, period_s: float | None = None
) -> IntervalAvailability:
    """Fleet availability from an interval table (CSV/TSV/Parquet ``device_id,start_s,
    end_s``, seconds).  With ``period_s`` the windows repeat, and a window crossing the
    period boundary wraps around (:func:`wrap_windows`).  Trace device ids are numbered
    in numeric order (:func:`trace_id_order`), devices mapped cyclically."""
    path = Path(path)
    dev, start, end = load_interval_table(path)
    if period_s is not None:
        dev, start, end = wrap_windows(
            path, dev, start, end, float(period_s), "traces.availability.period_s", "row"
        )
    else:
        dev, start, end = _merge_touching(dev, start, end)
    uniq, dense = np.unique(dev, return_inverse=True)
    label = f"trace: intervals {path.name} ({len(uniq)} trace devices)"
    return intervals_to_trace(dense, start, end, n_devices, period_s, label, len(uniq))


# ------------------------------------------------------------------ FedScale


class BuiltinOnlyUnpickler(pickle.Unpickler):
    """Unpickler that refuses every global: only builtin data (dict, list, tuple,
    str, bytes, int, float, bool, None) can be built, so loading a trace can
    never import or call anything."""

    def __init__(self, file, source: str) -> None:
        super().__init__(file)
        self._source = source

    def find_class(self, module: str, name: str):  # noqa: D401 - pickle API
        raise FleetsimInputError(
            f"{self._source}: pickle refers to {module}.{name}; refused (allowed: builtin "
            "data only: dict, list, tuple, str, bytes, int, float, bool, None)"
        )

    def persistent_load(self, pid):
        raise FleetsimInputError(
            f"{self._source}: pickle uses persistent ids; refused (allowed: builtin data only)"
        )


def safe_unpickle(path: Path) -> object:
    path = Path(path)
    if not path.exists():
        raise FleetsimInputError(f"{path}: file not found")
    data = path.read_bytes()
    if not data:
        raise FleetsimInputError(f"{path}: file is empty")
    try:
        return BuiltinOnlyUnpickler(io.BytesIO(data), str(path)).load()
    except FleetsimInputError:
        raise
    except Exception as exc:
        raise FleetsimInputError(f"{path}: not a readable pickle ({exc})") from None


def _number_list(path: Path, client, key: str, value) -> np.ndarray:
    if not isinstance(value, (list, tuple)) or not all(
        isinstance(x, (int, float)) and not isinstance(x, bool) for x in value
    ):
        raise FleetsimInputError(
            f"{path}: client {client!r} field {key!r}: expected a list of numbers"
        )
    return np.asarray(value, dtype=float)


def fedscale_intervals(
    path: Path, horizon_s: float
) -> tuple[np.ndarray, np.ndarray, np.ndarray, int]:
    """(device, start, end, number of clients) from FedScale's client_behave_trace,
    windows repeated with each client's ``finish_time`` period up to ``horizon_s``
    (FedScale's client replays its trace modulo finish_time); a window ending after
    ``finish_time`` wraps around to the period's start (:func:`wrap_windows`).
    Clients are numbered in :func:`trace_id_order` (numeric ids numerically)."""
    path = Path(path)
    obj = safe_unpickle(path)
    if not isinstance(obj, dict) or not obj:
        raise FleetsimInputError(
            f"{path}: expected a non-empty dict client_id -> {{'active', 'inactive', "
            f"'finish_time'}}, got {type(obj).__name__}"
        )
    devs, starts, ends = [], [], []
    for i, client in enumerate(trace_id_order(obj)):
        rec = obj[client]
        if not isinstance(rec, dict):
            raise FleetsimInputError(f"{path}: client {client!r}: expected a dict")
        missing = [k for k in ("active", "inactive", "finish_time") if k not in rec]
        if missing:
            raise FleetsimInputError(
                f"{path}: client {client!r}: missing key(s) {', '.join(missing)} "
                "(required: active, inactive, finish_time)"
            )
        act = _number_list(path, client, "active", rec["active"])
        ina = _number_list(path, client, "inactive", rec["inactive"])
        fin = rec["finish_time"]
        if not isinstance(fin, (int, float)) or isinstance(fin, bool) or not fin > 0:
            raise FleetsimInputError(
                f"{path}: client {client!r} field 'finish_time': {fin!r} (allowed: number > 0)"
            )
        if len(act) != len(ina):
            raise FleetsimInputError(
                f"{path}: client {client!r}: 'active' has {len(act)} entries but 'inactive' "
                f"has {len(ina)} (must match)"
            )
        dev = np.full(len(act), i, dtype=np.int64)
        validate_intervals(path, dev, act, ina, what=f"client {client!r} window")
        _, act, ina = wrap_windows(
            path, dev, act, ina, float(fin), f"finish_time of client {client!r}",
            f"client {client!r} window",
        )
        reps = max(int(math.ceil(horizon_s / float(fin))), 1)
        k = np.repeat(np.arange(reps), len(act))
        devs.append(np.full(len(k), i, dtype=np.int64))
        starts.append(np.tile(act, reps) + k * float(fin))
        ends.append(np.tile(ina, reps) + k * float(fin))
    dev, start, end = np.concatenate(devs), np.concatenate(starts), np.concatenate(ends)
    return (*_merge_touching(dev, start, end), len(obj))


def fedscale_period_totals(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """Per client (in :func:`trace_id_order`): online seconds in one period and the
    period (``finish_time``), both in seconds; windows wrapped as in
    :func:`fedscale_intervals` (which validates the file)."""
    path = Path(path)
    obj = safe_unpickle(path)
    periods = np.array([float(obj[c]["finish_time"]) for c in trace_id_order(obj)])
    dev, start, end, m = fedscale_intervals(path, horizon_s=float(periods.max()))
    inside = np.clip(np.minimum(end, periods[dev]) - start, 0.0, None)
    return np.bincount(dev, weights=inside, minlength=m), periods


def load_fedscale(path: Path, n_devices: int, horizon_s: float) -> IntervalAvailability:
    dev, start, end, m = fedscale_intervals(path, horizon_s)
    label = f"trace: FedScale client_behave_trace {Path(path).name} ({m} clients)"
    return intervals_to_trace(dev, start, end, n_devices, None, label, m)


# --------------------------------------------------------------------- FLASH

_WIFI_ON = {"wifi"}
_WIFI_OFF = {"2g", "3g", "4g", "5g", "unknown", "none"}


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
        times, avail = [], []
        locked = charging = wifi = False
        t0 = None
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
            if t0 is None:
                t0 = t
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
    return (*_merge_touching(dev, start, end), len(obj))


def load_flash(
    path: Path, n_devices: int, horizon_s: float, timezone: str = "UTC"
) -> IntervalAvailability:
    dev, start, end, m = flash_intervals(path, horizon_s, timezone)
    label = (
        f"trace: FLASH state_traces {Path(path).name} ({m} users; "
        "available = locked & charging & Wi-Fi)"
    )
    return intervals_to_trace(dev, start, end, n_devices, None, label, m)
