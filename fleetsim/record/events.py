"""The run's event log: one row per simulated event, columnar in memory."""

from __future__ import annotations

import pandas as pd

from fleetsim.record.schema import EVENT_COLUMNS, EVENT_KINDS

_KINDS = frozenset(EVENT_KINDS)


class EventLog:
    """Append-only log.  ``seq`` is the append order, which on the SimPy clock is the
    order events happened in (ties at equal time keep the order in which the simulation
    processed them, which is deterministic for a fixed seed).

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

    def __len__(self) -> int:
        return len(self._rows)

    def _columns(self) -> dict[str, list]:
        columns = {"seq": list(range(len(self._rows)))}
        if self._rows:
            columns.update(zip(self._FIELDS, map(list, zip(*self._rows))))
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
