"""FedScale's ``client_behave_trace`` (``kind: fedscale``): a pickled dict client ->
``{active: [...], inactive: [...], finish_time}``, read with an unpickler that refuses
every global; windows ``[active[k], inactive[k])`` replayed modulo ``finish_time``.

Real-data quirks load as FedScale's own simulator reads them, and are counted in
``fleetsim traces validate`` (:data:`QUIRKS`) and in the trace's label.  FedScale decides
availability in ``ClientMetadata.is_active`` (``fedscale/cloud/internal/client_metadata.py``)
from ``norm_time = cur_time % finish_time`` and ``active[k] <= norm_time <= inactive[k]``, so
it only ever looks at trace times in ``[0, finish_time)``:

* a window starting at or after ``finish_time`` is never seen: skipped;
* a window running past ``finish_time`` is online up to ``finish_time`` and then the period
  starts again: clipped at ``finish_time`` (not wrapped around);
* a window starting before 0: online from 0 (clipped); one ending at or before 0 is never
  seen either (both skipped windows count as ``windows_outside_period_skipped``);
* an empty or reversed window (``inactive <= active``) holds no time: skipped;
* overlapping windows of a client: online in any of them (their union, merged);
* a client left without windows is never online (it still takes its place in the order).

Numbers that are not finite, lists of different lengths and a ``finish_time`` that is not
> 0 are refused (exit 2, one line naming the client).
"""

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
)
from fleetsim.traces.report import WEEK_S, availability_report

#: the quirks counted while reading (``traces validate`` shows each; module docstring)
QUIRKS = (
    "windows_outside_period_skipped",
    "windows_clipped_at_finish",
    "windows_before_zero_clipped",
    "empty_or_reversed_windows_skipped",
    "overlapping_windows_merged",
    "clients_never_online",
)


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
    out = np.asarray(value, dtype=float)
    if not np.isfinite(out).all():
        i = int(np.nonzero(~np.isfinite(out))[0][0])
        raise FleetsimInputError(
            f"{path}: client {client!r} field {key!r} entry {i + 1}: {value[i]!r} "
            "(allowed: finite numbers)"
        )
    return out


def _client_windows(
    act: np.ndarray, ina: np.ndarray, fin: float, quirks: dict[str, int]
) -> tuple[np.ndarray, np.ndarray]:
    """One client's windows as FedScale's ``is_active`` sees them within ``[0, fin)``
    (module docstring), sorted and merged; ``quirks`` counts what was changed."""
    empty = ina <= act
    after = ~empty & (act >= fin)
    below = ~empty & ~after & (ina <= 0.0)
    keep = ~(empty | after | below)
    quirks["empty_or_reversed_windows_skipped"] += int(empty.sum())
    quirks["windows_outside_period_skipped"] += int(after.sum()) + int(below.sum())
    quirks["windows_clipped_at_finish"] += int((keep & (ina > fin)).sum())
    quirks["windows_before_zero_clipped"] += int((keep & (act < 0.0)).sum())
    start = np.maximum(act[keep], 0.0)
    end = np.minimum(ina[keep], fin)
    dev = np.zeros(len(start), dtype=np.int64)
    _, s, e = merge_touching(dev, start, end)
    quirks["overlapping_windows_merged"] += _overlaps_merged(start, end)
    return s, e


def _overlaps_merged(start: np.ndarray, end: np.ndarray) -> int:
    """Windows that overlap an earlier one of the same client (merged into it); touching
    windows (``[a, b)`` then ``[b, c)``) are one window and not a quirk."""
    if len(start) < 2:
        return 0
    order = np.lexsort((end, start))
    s, e = start[order], end[order]
    reach = np.maximum.accumulate(e)
    return int((s[1:] < reach[:-1]).sum())


def fedscale_intervals(
    path: Path, horizon_s: float, quirks: dict[str, int] | None = None
) -> tuple[np.ndarray, np.ndarray, np.ndarray, int]:
    """(device, start, end, number of clients) from FedScale's client_behave_trace,
    windows repeated with each client's ``finish_time`` period up to ``horizon_s``
    (FedScale's client replays its trace modulo finish_time), read as FedScale reads them
    (module docstring); ``quirks``, when given, receives the count of each of
    :data:`QUIRKS`.  Clients are numbered in :func:`trace_id_order` (numeric ids
    numerically, then any other ids in string order)."""
    path = Path(path)
    obj = safe_unpickle(path)
    if not isinstance(obj, dict) or not obj:
        raise FleetsimInputError(
            f"{path}: expected a non-empty dict client_id -> {{'active', 'inactive', "
            f"'finish_time'}}, got {type(obj).__name__}"
        )
    counts = dict.fromkeys(QUIRKS, 0)
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
        if (not isinstance(fin, (int, float)) or isinstance(fin, bool) or not fin > 0
                or not math.isfinite(fin)):
            raise FleetsimInputError(
                f"{path}: client {client!r} field 'finish_time': {fin!r} (allowed: number > 0)"
            )
        if len(act) != len(ina):
            raise FleetsimInputError(
                f"{path}: client {client!r}: 'active' has {len(act)} entries but 'inactive' "
                f"has {len(ina)} (must match)"
            )
        act, ina = _client_windows(act, ina, float(fin), counts)
        if len(act) == 0:
            counts["clients_never_online"] += 1
            continue
        reps = max(int(math.ceil(horizon_s / float(fin))), 1)
        k = np.repeat(np.arange(reps), len(act))
        devs.append(np.full(len(k), i, dtype=np.int64))
        starts.append(np.tile(act, reps) + k * float(fin))
        ends.append(np.tile(ina, reps) + k * float(fin))
    if quirks is not None:
        quirks.update(counts)
    if not devs:
        raise FleetsimInputError(
            f"{path}: no client has a window inside [0, finish_time) (FedScale would never "
            "see any client online)")
    dev, start, end = np.concatenate(devs), np.concatenate(starts), np.concatenate(ends)
    return (*merge_touching(dev, start, end), len(obj))


def quirk_note(quirks: dict[str, int]) -> str:
    """``"; 2 windows after finish skipped, ..."`` for a label ("" when there were none)."""
    parts = [f"{n} {k.replace('_', ' ')}" for k, n in quirks.items() if n]
    return "; " + ", ".join(parts) if parts else ""


def fedscale_period_totals(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """Per client (in :func:`trace_id_order`): online seconds in one period and the
    period (``finish_time``), both in seconds; windows read as in
    :func:`fedscale_intervals` (which validates the file)."""
    path = Path(path)
    dev, start, end, m = fedscale_intervals(path, horizon_s=0.0)
    obj = safe_unpickle(path)
    periods = np.array([float(obj[c]["finish_time"]) for c in trace_id_order(obj)])
    inside = np.clip(np.minimum(end, periods[dev]) - start, 0.0, None)
    return np.bincount(dev, weights=inside, minlength=m), periods


def load_fedscale(path: Path, n_devices: int, horizon_s: float) -> IntervalAvailability:
    quirks: dict[str, int] = {}
    dev, start, end, m = fedscale_intervals(path, horizon_s, quirks)
    label = (f"trace: FedScale client_behave_trace {Path(path).name} ({m} clients"
             f"{quirk_note(quirks)})")
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
        quirks: dict[str, int] = {}
        dev, start, end, m = fedscale_intervals(path, horizon_s=WEEK_S, quirks=quirks)
        trace = intervals_to_trace(dev, start, end, m, None, f"FedScale {Path(path).name}", m)
        rep = availability_report("fedscale", trace, WEEK_S)
        rep.summary.update(clients=m, **quirks)
        online, period = fedscale_period_totals(path)
        rep.summary.update(
            online_s_per_period=round(float(online.mean()), 3),
            period_s=round(float(period.mean()), 3),
            online_share=float(online.sum() / period.sum()),
        )
        return rep

    def load(self, path, n_devices, seed, horizon_s):
        return load_fedscale(Path(path), n_devices, horizon_s)
