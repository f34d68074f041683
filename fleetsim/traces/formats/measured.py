"""Measured availability windows, read and summarised once for the three formats that use
them (``flash_windows``, ``empirical``, ``diurnal_windows``): the reader and cleaner
(:func:`read_flash_windows`), the measured-users replay (:func:`measured_model`,
:func:`load_measured`) and the online share by hour (:func:`hourly_online_share`,
:func:`measured_hourly_share`).

The file: ``{user_id: [[start_s, end_s], ...]}``.

The shape of the FLASH trace's per-user "ready" (charging) intervals (see
``../shared/device_data/flash_ready_windows/SOURCE.md``): seconds from a reference midnight
in the users' local time, one list of intervals per user.  Reading cleans the real-data quirks
and counts each one in :attr:`MeasuredWindows.quirks` (shown by ``fleetsim traces validate``):

* zero-length (``end == start``) and reversed (``end < start``) intervals: dropped;
* exact duplicate intervals: one kept; overlapping intervals of a user: merged;
* gaps of at most ``merge_gap_s`` seconds between a user's windows: merged (default 60 s —
  repeated charge events a few seconds apart, e.g. ``[61336, 61865]`` then ``[61866, 62551]``,
  are one charging session: gaps between a user's raw intervals are most often 1-2 s and
  their density per second falls about 250-fold from 1-2 s to 30-60 s, then flattens into
  a tail of real unplug/replug gaps; see ``device_traces/availability/PROVENANCE.md``);
* users with no interval left: skipped (the authors' derivation drops each user's last
  interval, so ``[]`` means "at most one charging session recorded", not "never charges");
* users whose clock was wrong: the *days in the file* are the run of consecutive local days
  holding interval starts around the median start day (gaps of at most
  ``clock_tolerance_days`` empty days allowed); a user with an interval starting outside that
  run, or ending more than ``clock_tolerance_days`` after it, is skipped;
* the edges of the observation: the trace's **observed span** (``span_start_s``,
  ``span_days``, hence the period the models replay) is the run of whole local days from the
  first to the last day whose window coverage (online seconds of the cleaned windows inside
  that day) is at least ``observed_day_min_share`` of the busiest day's (default 0.5).  A day
  at the edge of an observation holds only the tails of windows straddling it (in FLASH's
  ``ready_strict.json``: 46 and 82 online hours on the first and last of its 4 days against
  3,853 and 5,309 on the two observed ones, under 2 % of the busiest), while an observed day
  varies with the weekday by tens of percent, so half the busiest day separates them with a
  wide margin; a day watched for less than about half its hours counts as an edge.  A window
  belongs to the local day it *starts* on: windows starting outside the observed span are
  dropped and counted (``edge_windows_dropped``; a user left without windows:
  ``users_edge_only_skipped``); a window starting inside it and ending after it is kept whole
  (it wraps into the period's start when the span repeats).  So the windows per user per
  observed day and the online share (the kept windows' seconds per observed device-second)
  are those of the observed days only.  ``observed_day_min_share: 0`` keeps every day of the
  file.

Malformed files (not JSON, not an object of lists of ``[start, end]`` number pairs) raise
:class:`~fleetsim.errors.FleetsimInputError` naming the file, line and user.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from fleetsim.errors import FleetsimInputError
from fleetsim.rng import stream
from fleetsim.traces.base import IntervalAvailability
from fleetsim.traces.formats.common import DAY_S, merge_windows, periodic_windows, trace_id_order

DEFAULT_MERGE_GAP_S = 60.0
DEFAULT_CLOCK_TOLERANCE_DAYS = 1.0
DEFAULT_OBSERVED_DAY_MIN_SHARE = 0.5
_SNIFF = re.compile(r'^\s*\{\s*(\}|"(?:[^"\\]|\\.)*"\s*:\s*\[)')


@dataclass
class MeasuredWindows:
    """Cleaned windows of the kept users, in trace seconds (from the reference midnight).

    ``device`` [w] int: index into ``user_ids`` (sorted ids of kept users); ``start``/``end``
    [w] float seconds, sorted per user, non-overlapping, gaps > ``merge_gap_s``.  The observed
    span is ``[span_start_s, span_start_s + span_days * 86400)`` (whole local days, module
    docstring); every window starts inside it and may end up to ``clock_tolerance_days``
    after it (it wraps when the span repeats).  ``day_coverage_h``: online hours of the
    cleaned windows in each local day of the file (before the edge windows were dropped),
    keyed by day index (day 0 starts at trace second 0).
    """

    source: str
    user_ids: list[str]
    device: np.ndarray
    start: np.ndarray
    end: np.ndarray
    span_start_s: float
    span_days: int
    merge_gap_s: float
    quirks: dict[str, int] = field(default_factory=dict)
    day_coverage_h: dict[int, float] = field(default_factory=dict)

    @property
    def num_users(self) -> int:
        return len(self.user_ids)

    @property
    def period_s(self) -> float:
        return self.span_days * DAY_S

    @property
    def lengths_s(self) -> np.ndarray:
        return self.end - self.start

    def select(self, users: np.ndarray) -> MeasuredWindows:
        """The windows of the kept users ``users`` (indices, renumbered in that order)."""
        users = np.asarray(users, dtype=np.int64)
        remap = np.full(self.num_users, -1, dtype=np.int64)
        remap[users] = np.arange(len(users))
        keep = remap[self.device] >= 0
        d = remap[self.device[keep]]
        order = np.lexsort((self.start[keep], d))
        return MeasuredWindows(
            self.source, [self.user_ids[i] for i in users], d[order], self.start[keep][order],
            self.end[keep][order], self.span_start_s, self.span_days, self.merge_gap_s,
            dict(self.quirks), dict(self.day_coverage_h),
        )

    def summary(self) -> dict:
        """Counts and window-length quartiles (minutes) for ``traces validate``."""
        q = np.quantile(self.lengths_s, [0.25, 0.5, 0.75]) / 60.0 if len(self.start) else [0] * 3
        total = np.bincount(self.device, weights=self.lengths_s, minlength=self.num_users)
        return {
            "users_kept": self.num_users,
            **self.quirks,
            "windows": int(len(self.start)),
            "span_days": self.span_days,
            "span_start_s": self.span_start_s,
            "day_coverage_h": " ".join(
                f"{d}:{h:.0f}" for d, h in sorted(self.day_coverage_h.items())
            ),
            "merge_gap_s": self.merge_gap_s,
            "window_min_q25_q50_q75": "/".join(f"{v:.1f}" for v in q),
            "median_user_total_h": float(np.median(total) / 3600.0) if len(total) else 0.0,
        }


def _line_of(text: str, uid: str) -> int:
    pos = text.find(json.dumps(uid))
    return text.count("\n", 0, pos) + 1 if pos >= 0 else 1


def parse_windows_json(path: Path) -> dict[str, np.ndarray]:
    """``{user_id: float array [k, 2]}`` from the file, checking only its shape."""
    path = Path(path)
    if not path.exists():
        raise FleetsimInputError(f"{path}: file not found")
    text = path.read_text()
    if not text.strip():
        raise FleetsimInputError(f"{path}: file is empty")
    try:
        obj = json.loads(text)
    except json.JSONDecodeError as exc:
        raise FleetsimInputError(
            f"{path}: line {exc.lineno}: not valid JSON ({exc.msg}) (allowed: an object "
            "user_id -> [[start_s, end_s], ...])"
        ) from None
    if not isinstance(obj, dict):
        raise FleetsimInputError(
            f"{path}: line 1: expected a JSON object user_id -> [[start_s, end_s], ...], got "
            f"{type(obj).__name__}"
        )
    users: dict[str, np.ndarray] = {}
    for uid, value in obj.items():
        ok = isinstance(value, list) and all(
            isinstance(p, list)
            and len(p) == 2
            and all(isinstance(x, (int, float)) and not isinstance(x, bool) for x in p)
            for p in value
        )
        arr = np.asarray(value, dtype=np.float64).reshape(-1, 2) if ok else None
        if arr is None or not np.all(np.isfinite(arr)):
            raise FleetsimInputError(
                f"{path}: line {_line_of(text, uid)}: user {uid!r}: expected a list of "
                "[start_s, end_s] pairs of finite numbers"
            )
        users[str(uid)] = arr
    if not users:
        raise FleetsimInputError(f"{path}: line 1: no users (allowed: at least one user)")
    return users


def span_days_of(start_days: np.ndarray, tolerance_days: float) -> tuple[int, int]:
    """``(first_day, last_day)``: the run of days holding starts around the median start
    day, where consecutive days with starts are at most ``1 + tolerance_days`` apart."""
    days = np.unique(start_days)
    mid = int(np.searchsorted(days, np.median(start_days)))
    mid = min(mid, len(days) - 1)
    lo = hi = mid
    while lo > 0 and days[lo] - days[lo - 1] <= 1 + tolerance_days:
        lo -= 1
    while hi < len(days) - 1 and days[hi + 1] - days[hi] <= 1 + tolerance_days:
        hi += 1
    return int(days[lo]), int(days[hi])


def day_coverage(
    start: np.ndarray, end: np.ndarray, first_day: int, last_day: int
) -> np.ndarray:
    """[last_day - first_day + 1] online seconds of the windows ``[start, end)`` (trace
    seconds) inside each local day ``first_day .. last_day`` (day k = ``[k, k + 1) * 86400``)."""
    lo = np.arange(first_day, last_day + 1, dtype=float)[None, :] * DAY_S
    s, e = np.asarray(start, float)[:, None], np.asarray(end, float)[:, None]
    return np.clip(np.minimum(e, lo + DAY_S) - np.maximum(s, lo), 0.0, None).sum(axis=0)


def observed_days(coverage: np.ndarray, min_share: float) -> tuple[int, int]:
    """``(lo, hi)`` indices into ``coverage`` (online seconds per consecutive day): the first
    and last day whose coverage is at least ``min_share`` of the largest (module docstring)."""
    cov = np.asarray(coverage, float)
    ok = np.nonzero(cov >= min_share * cov.max())[0] if cov.size and cov.max() > 0 else []
    if len(ok) == 0:
        return 0, len(cov) - 1
    return int(ok[0]), int(ok[-1])


def clean_windows(
    users: dict[str, np.ndarray],
    source: str,
    merge_gap_s: float = DEFAULT_MERGE_GAP_S,
    clock_tolerance_days: float = DEFAULT_CLOCK_TOLERANCE_DAYS,
    observed_day_min_share: float = DEFAULT_OBSERVED_DAY_MIN_SHARE,
) -> MeasuredWindows:
    """Apply the documented quirk handling (module docstring) to parsed users."""
    if merge_gap_s < 0 or clock_tolerance_days < 0:
        raise FleetsimInputError(
            f"{source}: merge_gap_s {merge_gap_s:g} and clock_tolerance_days "
            f"{clock_tolerance_days:g} must be >= 0"
        )
    if not 0.0 <= observed_day_min_share <= 1.0:
        raise FleetsimInputError(
            f"{source}: observed_day_min_share {observed_day_min_share:g} (allowed: 0 <= "
            "share <= 1)"
        )
    ids = trace_id_order(users)  # numeric ids in numeric order, as every format numbers them
    counts = np.array([len(users[u]) for u in ids], dtype=np.int64)
    pairs = np.concatenate([users[u] for u in ids]) if counts.sum() else np.zeros((0, 2))
    dev = np.repeat(np.arange(len(ids)), counts)
    s, e = pairs[:, 0], pairs[:, 1]
    quirks = {
        "users_in_file": len(ids),
        "intervals_in_file": int(len(s)),
        "zero_length_dropped": int((e == s).sum()),
        "reversed_dropped": int((e < s).sum()),
    }
    keep = e > s
    dev, s, e = dev[keep], s[keep], e[keep]
    uniq = pd.DataFrame({"d": dev, "s": s, "e": e}).drop_duplicates()
    quirks["duplicates_dropped"] = int(len(dev) - len(uniq))
    dev, s, e = uniq["d"].to_numpy(np.int64), uniq["s"].to_numpy(), uniq["e"].to_numpy()
    wrong = np.zeros(len(ids), dtype=bool)
    first_day = last_day = 0
    if len(s):
        first_day, last_day = span_days_of(np.floor(s / DAY_S), clock_tolerance_days)
        lo, hi = first_day * DAY_S, (last_day + 1 + clock_tolerance_days) * DAY_S
        bad = (s < lo) | (s >= (last_day + 1) * DAY_S) | (e > hi)
        wrong[dev[bad]] = True
    quirks["users_wrong_clock_skipped"] = int(wrong.sum())
    ok = ~wrong[dev]
    dev, s, e = dev[ok], s[ok], e[ok]
    d0, s0, e0 = merge_windows(dev, s, e, 0.0)
    quirks["overlaps_merged"] = int(len(dev) - len(d0))
    d1, s1, e1 = merge_windows(d0, s0, e0, float(merge_gap_s))
    quirks["gaps_merged"] = int(len(d0) - len(d1))
    had = np.zeros(len(ids), dtype=bool)
    had[d1] = True
    quirks["users_empty_skipped"] = int((~had & ~wrong).sum())
    cover = day_coverage(s1, e1, first_day, last_day) if len(s1) else np.zeros(1)
    lo, hi = observed_days(cover, float(observed_day_min_share))
    coverage_h = {first_day + k: float(c / 3600.0) for k, c in enumerate(cover)}
    first_day, last_day = first_day + lo, first_day + hi
    inside = (s1 >= first_day * DAY_S) & (s1 < (last_day + 1) * DAY_S)
    quirks["edge_days_trimmed"] = int(len(cover) - (hi - lo + 1))
    quirks["edge_windows_dropped"] = int((~inside).sum())
    d1, s1, e1 = d1[inside], s1[inside], e1[inside]
    has = np.zeros(len(ids), dtype=bool)
    has[d1] = True
    quirks["users_edge_only_skipped"] = int((had & ~has).sum())
    kept = np.nonzero(has)[0]
    remap = np.full(len(ids), -1, dtype=np.int64)
    remap[kept] = np.arange(len(kept))
    if len(kept) == 0:
        raise FleetsimInputError(
            f"{source}: no user has a usable window (users {len(ids)}, "
            + ", ".join(f"{k} {v}" for k, v in quirks.items() if k != "users_in_file")
            + ")"
        )
    return MeasuredWindows(
        source=source,
        user_ids=[ids[i] for i in kept],
        device=remap[d1],
        start=s1,
        end=e1,
        span_start_s=first_day * DAY_S,
        span_days=last_day - first_day + 1,
        merge_gap_s=float(merge_gap_s),
        quirks=quirks,
        day_coverage_h=coverage_h,
    )


def read_flash_windows(
    path: Path,
    merge_gap_s: float = DEFAULT_MERGE_GAP_S,
    clock_tolerance_days: float = DEFAULT_CLOCK_TOLERANCE_DAYS,
    observed_day_min_share: float = DEFAULT_OBSERVED_DAY_MIN_SHARE,
) -> MeasuredWindows:
    """Read and clean a ``{user_id: [[start_s, end_s], ...]}`` file (module docstring)."""
    path = Path(path)
    return clean_windows(
        parse_windows_json(path), path.name, merge_gap_s, clock_tolerance_days,
        observed_day_min_share,
    )


def hourly_online_share(
    device: np.ndarray,
    start: np.ndarray,
    end: np.ndarray,
    n_devices: int,
    t0: float,
    t1: float,
) -> np.ndarray:
    """[24] mean share of ``n_devices`` online at each local hour over ``[t0, t1)`` (exact:
    overlap seconds of every window with every hour-of-day, t = 0 at a local midnight)."""
    s = np.clip(np.asarray(start, float), t0, t1)[:, None]
    e = np.clip(np.asarray(end, float), t0, t1)[:, None]
    h = np.arange(24)[None, :] * 3600.0

    def in_hour(t: np.ndarray) -> np.ndarray:  # seconds of [0, t) falling in hour h of a day
        return np.floor(t / DAY_S) * 3600.0 + np.clip(np.mod(t, DAY_S) - h, 0.0, 3600.0)

    online = (in_hour(e) - in_hour(s)).sum(axis=0)
    exposure = (in_hour(np.array([[t1]])) - in_hour(np.array([[t0]])))[0] * n_devices
    return online / np.maximum(exposure, 1e-300)


def is_windows_file(path: Path) -> bool:
    """Whether ``path`` opens as a JSON object whose first value is a list (this format),
    as opposed to FLASH's ``state_traces.json`` (values are objects); reads 4 KiB."""
    path = Path(path)
    if not path.is_file():
        return False
    with open(path, encoding="utf-8", errors="replace") as fh:
        head = fh.read(4096)
    return bool(_SNIFF.match(head))


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


def measured_hourly_share(m: MeasuredWindows) -> np.ndarray:
    """[24] online share by local hour of the measured users over their observed span
    (windows folded into the span, as the empirical model replays them)."""
    tr = measured_model(m, m.num_users, 0, resample=False)
    dev = np.repeat(np.arange(tr.num_devices), np.diff(tr.offsets))
    return hourly_online_share(dev, tr.starts, tr.ends, tr.num_devices, 0.0, m.period_s)
