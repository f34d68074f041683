"""Plain interval tables (``kind: intervals``): CSV/TSV/Parquet ``device_id,start_s,end_s``,
half-open ``[start, end)`` seconds, non-overlapping per device (touching windows merge);
an optional ``period_s`` repeats them (windows crossing the period wrap around).
``device_id`` may be any id (integers, hashes, user names); trace devices are numbered in
:func:`~fleetsim.traces.formats.common.trace_id_order` (integer ids numerically, then the
other ids in string order)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from fleetsim.traces.base import IntervalAvailability
from fleetsim.traces.formats.base import TraceFormat, read_head
from fleetsim.traces.formats.common import (
    intervals_to_trace,
    merge_touching,
    trace_ids,
    validate_intervals,
    wrap_windows,
)
from fleetsim.traces.report import availability_report
from fleetsim.traces.tables import (
    numeric_column,
    read_table,
    require_columns,
)


def read_interval_table(
    path: Path,
) -> tuple[list[object], np.ndarray, np.ndarray, np.ndarray]:
    """``(ids, device, start, end)`` of a CSV/TSV/Parquet interval file, validated: ``ids``
    the distinct trace-device ids in :func:`~fleetsim.traces.formats.common.trace_id_order`
    (any ids: integers, hashes, user names), ``device`` each row's index into ``ids``."""
    path = Path(path)
    df = read_table(path)
    require_columns(df, path, ("device_id", "start_s", "end_s"))
    ids, dev = trace_ids(path, df["device_id"], "device_id")
    start = numeric_column(df, path, "start_s", non_negative=True)
    end = numeric_column(df, path, "end_s", non_negative=True)
    validate_intervals(path, dev, start, end, names=ids)
    return ids, dev, start, end


def load_interval_table(path: Path) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Validated (device, start, end) arrays from a CSV/Parquet interval file; ``device``
    numbers the trace devices 0..m-1 in trace-id order (:func:`read_interval_table`)."""
    _, dev, start, end = read_interval_table(path)
    return dev, start, end


def load_intervals(
    path: Path, n_devices: int, period_s: float | None = None
) -> IntervalAvailability:
    """Fleet availability from an interval table (CSV/TSV/Parquet ``device_id,start_s,
    end_s``, seconds).  With ``period_s`` the windows repeat, and a window crossing the
    period boundary wraps around (:func:`wrap_windows`).  Trace device ids are numbered
    in numeric order (:func:`trace_id_order`), devices mapped cyclically."""
    path = Path(path)
    ids, dev, start, end = read_interval_table(path)
    if period_s is not None:
        dev, start, end = wrap_windows(
            path, dev, start, end, float(period_s), "traces.availability.period_s", "row",
            names=ids,
        )
    else:
        dev, start, end = merge_touching(dev, start, end)
    label = f"trace: intervals {path.name} ({len(ids)} trace devices)"
    return intervals_to_trace(dev, start, end, n_devices, period_s, label, len(ids))


class IntervalsFormat(TraceFormat):
    """CSV/TSV/Parquet ``device_id,start_s,end_s`` (seconds)."""

    name = "intervals"
    suffixes = (".csv", ".tsv", ".txt", ".parquet", ".pq")
    columns = ("device_id", "start_s", "end_s")

    def sniff(self, path):
        from fleetsim.traces.tables import TABLE_SUFFIXES, sniff_table

        path = Path(path)
        kind = TABLE_SUFFIXES.get(path.suffix.lower()) or sniff_table(path)
        if kind == "parquet":
            try:
                import pyarrow.parquet as pq

                names = set(pq.read_schema(path).names)
            except Exception:
                return False
        elif kind in ("csv", "tsv"):
            lines = read_head(path).decode("utf-8", errors="replace").splitlines()
            if not lines:
                return False
            names = {c.strip() for c in lines[0].split("\t" if kind == "tsv" else ",")}
        else:
            return False
        return set(self.columns) <= names

    def report(self, path, timezone="UTC"):
        """Every device of the file, over the file's own span."""
        ids, dev, start, end = read_interval_table(path)
        trace = intervals_to_trace(dev, start, end, len(ids), None, Path(path).name, len(ids))
        rep = availability_report("intervals", trace, float(end.max()))
        rep.summary.update(
            trace_devices=len(ids), non_integer_ids=sum(not isinstance(i, int) for i in ids),
            id_order="integer ids numerically then other ids in string order",
        )
        return rep

    def load(self, path, n_devices, seed, horizon_s):
        return load_intervals(Path(path), n_devices)

    def load_with(self, path, n_devices, seed, horizon_s, config):
        return load_intervals(Path(path), n_devices, getattr(config, "period_s", None))
