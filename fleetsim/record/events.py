"""The run's event log: one row per simulated event, columnar in memory."""

from __future__ import annotations

import pandas as pd

from fleetsim.record.schema import EVENT_COLUMNS, EVENT_KINDS

_KINDS = frozenset(EVENT_KINDS)


class EventLog:
    """Append-only columnar log.  ``seq`` is the append order, which on the
    SimPy clock is the order events happened in (ties at equal time keep the
    order in which the simulation processed them, which is deterministic for a
    fixed seed)."""

    def __init__(self, enabled: bool = True) -> None:
        self.enabled = enabled
        self._cols: dict[str, list] = {name: [] for name in EVENT_COLUMNS}

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
        c = self._cols
        c["seq"].append(len(c["seq"]))
        c["time_s"].append(float(time_s))
        c["device_id"].append(int(device_id))
        c["kind"].append(kind)
        c["step"].append(int(step))
        c["payload_bytes"].append(int(payload_bytes))
        c["duration_s"].append(float(duration_s))
        c["units"].append(int(units))
        c["detail"].append(detail)
        c["staleness"].append(int(staleness))

    def __len__(self) -> int:
        return len(self._cols["seq"])

    def to_frame(self) -> pd.DataFrame:
        return pd.DataFrame(
            {name: pd.Series(vals, dtype=EVENT_COLUMNS[name]) for name, vals in self._cols.items()}
        )

    def state(self) -> dict:
        """For checkpoints."""
        return {k: list(v) for k, v in self._cols.items()}

    def load_state(self, state: dict) -> None:
        self._cols = {k: list(state[k]) for k in EVENT_COLUMNS}
