"""Warnings for values that are valid but implausible: the likely unit slip, named.

A value a loader accepts can still be off by a unit: a latency written in milliseconds
in a seconds column, an uplink in kbit/s in a Mbit/s column, window times in minutes or
hours in a seconds column.  Each check prints ONE line to stderr per finding
(``fleetsim: warning: FILE: column 'C' row R: ...; likely unit slip: ...``) and never
stops the run: the value may be right (a 90 s forward of a 7B model on an old phone).

Thresholds (the bounds of what a phone does):

* a reference forward (BERT-base, batch 8 x seq 128) over :data:`MAX_FORWARD_S` = 60 s:
  the slowest catalogued phone CPU takes 24 s (``device_traces/catalogue``), so
  60 s is 2.5x beyond it, while milliseconds written as seconds read 1,000x too slow;
* an uplink or downlink over :data:`MAX_LINK_MBPS` = 10,000 Mbit/s (10 Gbit/s): beyond
  5G mmWave's and Wi-Fi 7's peak rates; kbit/s or bit/s written as Mbit/s read 10^3 or
  10^6 too fast;
* a median availability window under :data:`MIN_MEDIAN_WINDOW_S` = 60 s: the measured
  FLASH charging windows have a median of 31 min (README); minutes or hours written as
  seconds read 60x or 3,600x too short.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

#: seconds per reference forward above which a catalogue latency is implausible
MAX_FORWARD_S = 60.0
#: Mbit/s above which a link rate is implausible (10 Gbit/s)
MAX_LINK_MBPS = 10_000.0
#: seconds under which a trace's median availability window is implausible
MIN_MEDIAN_WINDOW_S = 60.0


def warn(message: str) -> None:
    """One warning line on stderr (``fleetsim: warning: ...``)."""
    print(f"fleetsim: warning: {message}", file=sys.stderr)


def _rows_text(rows: np.ndarray) -> str:
    """'row 3' or 'row 3 (and 4 more rows)' for 0-based indices ``rows``."""
    first = f"row {int(rows[0]) + 1}"
    return first if len(rows) == 1 else f"{first} (and {len(rows) - 1} more rows)"


def check_forward_seconds(path: Path | str, column: str, values: np.ndarray) -> list[str]:
    """Warn when a latency column holds a forward over :data:`MAX_FORWARD_S` seconds.

    ``values``: seconds per reference forward per row (NaN = backend absent).
    Returns the warning lines printed (empty when none)."""
    v = np.asarray(values, dtype=float)
    rows = np.nonzero(~np.isnan(v) & (v > MAX_FORWARD_S))[0]
    if not len(rows):
        return []
    x = float(v[rows[0]])
    line = (
        f"{path}: column {column!r} {_rows_text(rows)}: {x:g} s for one reference forward "
        f"(BERT-base, batch 8 x seq 128) is over {MAX_FORWARD_S:g} s; likely unit slip: "
        f"milliseconds written as seconds ({x:g} ms = {x / 1000:g} s)"
    )
    warn(line)
    return [line]


def check_link_mbps(
    path: Path | str, column: str, values, scenario_key: bool = False,
    slip: str | None = None,
) -> list[str]:
    """Warn when a link rate (``values`` in Mbit/s) is over :data:`MAX_LINK_MBPS`
    (10 Gbit/s).  ``scenario_key``: ``column`` is a scenario key
    (``traces.network.uplink_mbps``) and ``path`` the scenario, so no row is named.
    ``slip``: the likely slip when the column is not in Mbit/s (default: kbit/s or bit/s
    written as Mbit/s)."""
    v = np.asarray(values, dtype=float)
    rows = np.nonzero(np.isfinite(v) & (v > MAX_LINK_MBPS))[0]
    if not len(rows):
        return []
    x = float(v[rows[0]])
    where = f"{column}" if scenario_key else f"column {column!r} {_rows_text(rows)}"
    slip = slip or (f"kbit/s written as Mbit/s ({x:g} kbit/s = {x / 1000:g} Mbit/s) "
                    "or bit/s")
    line = f"{path}: {where}: {x:g} Mbit/s is over 10 Gbit/s; likely unit slip: {slip}"
    warn(line)
    return [line]


def check_median_window(
    path: Path | str, columns: str, starts: np.ndarray, ends: np.ndarray
) -> list[str]:
    """Warn when the median availability window (``ends - starts``, seconds) is under
    :data:`MIN_MEDIAN_WINDOW_S`.  ``columns`` names the time fields (e.g.
    ``"'start_s', 'end_s'"``)."""
    d = np.asarray(ends, dtype=float) - np.asarray(starts, dtype=float)
    d = d[np.isfinite(d)]
    if not len(d):
        return []
    med = float(np.median(d))
    if med >= MIN_MEDIAN_WINDOW_S:
        return []
    line = (
        f"{path}: columns {columns}: the median availability window is {med:g} s, under a "
        f"minute (measured phone charging windows: median 31 min); likely unit slip: minutes "
        f"or hours written as seconds ({med:g} min = {med * 60:g} s, {med:g} h = "
        f"{med * 3600:g} s)"
    )
    warn(line)
    return [line]
