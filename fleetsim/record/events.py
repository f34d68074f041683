"""The run's event log: one row per simulated event, columnar in memory."""

from __future__ import annotations

import numpy as np
import pandas as pd

from fleetsim.record.schema import EVENT_COLUMNS, EVENT_KINDS

_KINDS = frozenset(EVENT_KINDS)


class EventLog:
    """Append-only log, written in time order.  ``seq`` is the row's place in that order:
    rows are sorted by time, and rows of equal time keep the order in which they were
    appended, which is deterministic for a fixed seed.  Most rows are appended at the
    simulated instant they describe; a task run on one timer
    (:mod:`fleetsim.fleet.timer_path`) appends its phase events when its timer fires,
    with their own earlier times, which the sort puts in place.

    Rows are kept as tuples (one list append per event: the log is on the hot path of
    every task, ``bench/fleet.py``) and turned into columns only by :meth:`to_frame` and
    :meth:`state`."""

    _FIELDS = tuple(name for name in EVENT_COLUMNS if name != "seq")

    def __init__(self, enabled: bool = True) -> None:
        self.enabled = enabled
        self._rows: list[tuple] = []

    def add(
        self,
        time_s: float,
        device_id: int,
        kind: str,
        step: int = -1,
        payload_bytes: int = 0,
        duration_s: float = 0.0,
        units: int = 0,
        detail: str = "",
        staleness: int = -1,
    ) -> None:
        if not self.enabled:
            return
        if kind not in _KINDS:
            raise ValueError(f"unknown event kind {kind!r}; allowed: {', '.join(EVENT_KINDS)}")
        self._rows.append((float(time_s), int(device_id), kind, int(step), int(payload_bytes),
                           float(duration_s), int(units), detail, int(staleness)))

    def add_rows(self, rows: tuple[tuple, ...]) -> None:
        """Append rows already in column order and typed as :meth:`add` types them
        ``(time_s: float, device_id: int, kind: str, step: int, payload_bytes: int,
        duration_s: float, units: int, detail: str, staleness: int)``, with ``kind`` one of
        the schema's kinds.  For the per-task hot path (a task's phase events in one call,
        :mod:`fleetsim.fleet.timer_path`); callers pass literal kinds and values they took
        from :meth:`add`-checked sources, so nothing is converted or checked here."""
        if self.enabled:
            self._rows.extend(rows)

    def __len__(self) -> int:
        return len(self._rows)

    def ordered(self) -> list[tuple]:
        """The rows in time order (a stable sort: equal times keep their append order)."""
        rows = self._rows
        times = np.fromiter((row[0] for row in rows), dtype=np.float64, count=len(rows))
        if len(rows) < 2 or bool((times[1:] >= times[:-1]).all()):
            return rows
        return [rows[i] for i in np.argsort(times, kind="stable").tolist()]

    def _columns(self) -> dict[str, list]:
        rows = self.ordered()
        columns = {"seq": list(range(len(rows)))}
        if rows:
            columns.update(zip(self._FIELDS, map(list, zip(*rows))))
        else:
            columns.update((name, []) for name in self._FIELDS)
        return columns

    def to_frame(self) -> pd.DataFrame:
        return pd.DataFrame(
            {name: pd.Series(vals, dtype=EVENT_COLUMNS[name])
             for name, vals in self._columns().items()}
        )

    def state(self) -> dict:
        """For checkpoints: the columns as lists (keys: ``EVENT_COLUMNS``)."""
        return self._columns()

    def load_state(self, state: dict) -> None:
        self._rows = list(zip(*(state[k] for k in self._FIELDS)))
