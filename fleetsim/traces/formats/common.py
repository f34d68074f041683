"""Helpers shared by the availability formats: one trace-id order, period wrap and
merge, time zones, intervals to a CSR trace.

Trace ids are put in ONE order in every format (:func:`trace_id_order`): ids that are
integers (``7``, ``"10"``) in numeric order, so ``"9"`` comes before ``"10"``, then any
other ids (hashes, user names: ``"dev0"``) in string order — sorted, never the order of
first appearance, so a file's row order changes nothing.  Trace devices are assigned to
fleet devices cyclically: fleet device ``i`` uses the ``(i mod m)``-th trace device.

Windows of a repeating trace that cross the period boundary wrap around
(:func:`wrap_windows`, :func:`periodic_windows`): ``[82800, 90000)`` with a period of
86,400 s is 23:00-01:00 every day, as FLASH's ``get_available_time`` replays a window past
``trace_end`` into the next repetition.

Timestamps without a zone are read in the zone ``traces.availability.timezone`` (default
UTC, via :mod:`zoneinfo`, :func:`zone`), never the host's.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import numpy as np
import pandas as pd

from fleetsim.errors import FleetsimInputError
from fleetsim.traces.base import IntervalAvailability

DAY_S = 86_400.0


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


HOST_ZONE_LINKS = ("localtime", "posixrules")


def zone(name: str, what: str = "traces.availability.timezone") -> ZoneInfo:
    """The IANA zone ``name`` (e.g. ``UTC``, ``Asia/Shanghai``) for timestamps without one.
    ``localtime`` / ``posixrules`` are refused: the zone database's links to the host's own
    zone would make a run depend on the machine it runs on."""
    if str(name).strip().lower() in HOST_ZONE_LINKS:
        raise FleetsimInputError(
            f"{what}: {name!r} is the host's own zone, which would make the run depend on the "
            "machine (allowed: an IANA zone name, e.g. UTC, Europe/Paris, Asia/Shanghai)")
    try:
        return ZoneInfo(str(name))
    except (ZoneInfoNotFoundError, ValueError, TypeError):
        raise FleetsimInputError(
            f"{what}: {name!r} is not an IANA time zone (allowed: e.g. UTC, Europe/Paris, "
            "Asia/Shanghai)"
        ) from None


def merge_touching(
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


def wrap_windows(
    path: Path,
    device: np.ndarray,
    start: np.ndarray,
    end: np.ndarray,
    period_s: np.ndarray | float,
    key: str,
    what: str = "window",
    names: list[object] | None = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Windows of a repeating trace folded into one period ``[0, P)``.

    A window ``[s, e)`` with ``s < P < e`` crosses the period boundary and wraps
    around: it becomes ``[s, P)`` and ``[0, e - P)`` (``[82800, 90000)`` with
    ``P = 86400`` is 23:00-01:00 every day).  ``period_s`` is one number or one per
    window (FedScale: each client's ``finish_time``).  Windows must be validated
    (``end > start``) already.

    A wrapped piece that overlaps or touches another window of the device joins it
    (the union: the README's ``0,0,3600`` plus ``0,82800,90000`` is online 23:00-01:00).

    Raises FleetsimInputError, naming ``path``, ``key`` and the device (``names[device]``
    when given), for a window starting at or after its period or longer than one period.
    Returns (device, start, end) sorted by device then start, overlapping or touching
    windows merged.
    """
    period = np.broadcast_to(np.asarray(period_s, dtype=np.float64), start.shape)

    def name(d) -> object:
        return names[int(d)] if names is not None else d
    late = start >= period
    if late.any():
        i = int(np.nonzero(late)[0][0])
        raise FleetsimInputError(
            f"{path}: {what} {i + 1} (device {name(device[i])}): start {start[i]:g} is not inside "
            f"the period {key} = {period[i]:g} (allowed: 0 <= start < period; a window may "
            "end after the period and then wraps around to the period's start)"
        )
    long = (end - start) > period
    if long.any():
        i = int(np.nonzero(long)[0][0])
        raise FleetsimInputError(
            f"{path}: {what} {i + 1} (device {name(device[i])}): [{start[i]:g}, {end[i]:g}) is "
            f"longer than the period {key} = {period[i]:g} (allowed: at most one period)"
        )
    cross = end > period
    dev = np.concatenate([device, device[cross]])
    s = np.concatenate([start, np.zeros(int(cross.sum()))])
    e = np.concatenate([np.where(cross, period, end), end[cross] - period[cross]])
    return merge_touching(dev, s, e)


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
    trace = IntervalAvailability(offsets, start[pos], end[pos], period_s=period_s, label=label)
    trace.trace_devices = m  # fleet device i replays trace device i mod m (traces/replay.py)
    return trace


def merge_windows(
    device: np.ndarray, start: np.ndarray, end: np.ndarray, gap_s: float
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per device, windows overlapping or separated by at most ``gap_s`` become one.

    Inputs need not be sorted; output sorted by (device, start)."""
    df = pd.DataFrame({"d": device, "s": start, "e": end}).sort_values(["d", "s", "e"])
    if df.empty:
        return (np.zeros(0, np.int64), np.zeros(0), np.zeros(0))
    reach = df.groupby("d", sort=False)["e"].cummax()
    prev = reach.groupby(df["d"], sort=False).shift()
    run = (prev.isna() | (df["s"] > prev + gap_s)).cumsum()
    g = df.groupby(run, sort=False).agg(d=("d", "first"), s=("s", "min"), e=("e", "max"))
    return g["d"].to_numpy(np.int64), g["s"].to_numpy(float), g["e"].to_numpy(float)


def periodic_windows(
    device: np.ndarray,
    start: np.ndarray,
    end: np.ndarray,
    n_devices: int,
    period_s: float,
    label: str,
) -> IntervalAvailability:
    """CSR :class:`IntervalAvailability` repeating with ``period_s``, from windows given in
    any period position: each window is reduced modulo ``period_s``, split where it crosses
    the period's end (the base class joins the pieces again at run time), and merged where
    pieces touch or overlap.  ``device`` indexes ``0..n_devices-1``."""
    p = float(period_s)
    start = np.asarray(start, float)
    length = np.minimum(np.asarray(end, float) - start, p)
    s = np.mod(start, p)
    e = s + length
    cross = e > p
    dev = np.concatenate([device, device[cross]])
    ss = np.concatenate([s, np.zeros(int(cross.sum()))])
    ee = np.concatenate([np.minimum(e, p), e[cross] - p])
    dev, ss, ee = merge_windows(dev, ss, ee, 0.0)
    counts = np.bincount(dev, minlength=int(n_devices)).astype(np.int64)
    offsets = np.zeros(int(n_devices) + 1, dtype=np.int64)
    np.cumsum(counts, out=offsets[1:])
    return IntervalAvailability(offsets, ss, ee, period_s=p, label=label)


def trace_ids(path: Path, values: pd.Series, column: str) -> tuple[list[object], np.ndarray]:
    """A column of trace-device ids (any ids: integers, hashes, user names) as
    ``(ids, index)``: ``ids`` the distinct ids in :func:`trace_id_order`, ``index[r]`` the
    position of row r's id in it.  An id that is an integer or a string of one is that
    integer (``7``, ``"7"``, ``" 07 "`` and ``7.0`` name one device); any other id is its
    text, stripped.  Raises FleetsimInputError for a missing or blank id, naming the row."""
    codes, uniques = pd.factorize(values, use_na_sentinel=True)
    if (codes < 0).any():
        i = int(np.nonzero(codes < 0)[0][0])
        raise FleetsimInputError(f"{path}: column {column!r} row {i + 1}: value is missing")
    keys: list[object] = []
    for value in uniques.tolist():
        n = _numeric_id(value)
        keys.append(n if n is not None else str(value).strip())
    blank = [j for j, k in enumerate(keys) if k == ""]
    if blank:
        i = int(np.nonzero(codes == blank[0])[0][0])
        raise FleetsimInputError(
            f"{path}: column {column!r} row {i + 1}: the id is blank (allowed: any non-empty id)")
    ordered = trace_id_order(set(keys))
    rank = {k: r for r, k in enumerate(ordered)}
    to_rank = np.array([rank[k] for k in keys], dtype=np.int64)
    return ordered, to_rank[codes]


def validate_intervals(
    path: Path, device: np.ndarray, start: np.ndarray, end: np.ndarray, what: str = "row",
    names: list[object] | None = None,
) -> None:
    """Reversed/empty and overlapping intervals raise with the device and times named
    (``names[device]`` when given: the trace's own ids)."""

    def name(d) -> object:
        return names[int(d)] if names is not None else int(d)

    bad = end <= start
    if bad.any():
        i = int(np.nonzero(bad)[0][0])
        raise FleetsimInputError(
            f"{path}: {what} {i + 1}: interval of device {name(device[i])} has end_s "
            f"{end[i]:g} <= start_s {start[i]:g} (allowed: end_s > start_s)"
        )
    order = np.lexsort((start, device))
    d, s, e = device[order], start[order], end[order]
    same = d[1:] == d[:-1]
    overlap = same & (s[1:] < e[:-1])
    if overlap.any():
        j = int(np.nonzero(overlap)[0][0])
        raise FleetsimInputError(
            f"{path}: device {name(d[j])} has overlapping intervals [{s[j]:g}, {e[j]:g}) and "
            f"[{s[j + 1]:g}, {e[j + 1]:g}) (allowed: sorted, non-overlapping per device)"
        )
