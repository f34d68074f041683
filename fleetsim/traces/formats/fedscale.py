"""FedScale's ``client_behave_trace`` (``kind: fedscale``): a pickled dict client ->
``{active: [...], inactive: [...], finish_time}``, read with an unpickler that refuses
every global; windows ``[active[k], inactive[k])`` replayed modulo ``finish_time`` (as
FedScale's client does)."""

from __future__ import annotations

import io
import math
import pickle
from pathlib import Path

import numpy as np

from fleetsim.errors import FleetsimInputError
from fleetsim.traces.base import IntervalAvailability
from fleetsim.traces.formats.base import TraceFormat, read_head
from fleetsim.traces.formats.common import (
    intervals_to_trace,
    merge_touching,
    trace_id_order,
    validate_intervals,
    wrap_windows,
)
from fleetsim.traces.report import WEEK_S, availability_report


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
    return (*merge_touching(dev, start, end), len(obj))


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


class FedScaleFormat(TraceFormat):
    """FedScale ``client_behave_trace``: a pickled dict client -> active/inactive/finish_time."""

    name = "fedscale"
    suffixes = (".pkl", ".pickle")

    def sniff(self, path):
        head = read_head(Path(path), 64)
        # protocol 2+ opens with PROTO (0x80, version); 0/1 with MARK+DICT or EMPTY_DICT
        return (len(head) > 1 and head[0] == 0x80 and 2 <= head[1] <= 5) or head.startswith(
            (b"(dp", b"}q", b"}")
        )

    def report(self, path, timezone="UTC"):
        """Every trace device over a week, plus the per-period online totals of the file."""
        dev, start, end, m = fedscale_intervals(path, horizon_s=WEEK_S)
        trace = intervals_to_trace(dev, start, end, m, None, f"FedScale {Path(path).name}", m)
        rep = availability_report("fedscale", trace, WEEK_S)
        online, period = fedscale_period_totals(path)
        rep.summary.update(
            online_s_per_period=round(float(online.mean()), 3),
            period_s=round(float(period.mean()), 3),
            online_share=float(online.sum() / period.sum()),
        )
        return rep

    def load(self, path, n_devices, seed, horizon_s):
        return load_fedscale(Path(path), n_devices, horizon_s)
