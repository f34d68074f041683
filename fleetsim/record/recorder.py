"""Collects a run's steps, events and device totals, and writes the run directory."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import pandas as pd

from fleetsim.record.atomic import write_json, write_parquet, write_text
from fleetsim.record.events import EventLog
from fleetsim.record.schema import DEVICE_COLUMNS, OPTIONAL_STEP_COLUMNS, STEP_COLUMNS


class Recorder:
    def __init__(self, record_events: bool = True) -> None:
        self.events = EventLog(enabled=record_events)
        self._steps: list[dict] = []

    # ----------------------------------------------------------- collection
    def add_step(self, row: dict) -> None:
        missing = set(STEP_COLUMNS) - set(row)
        if missing:
            raise ValueError(f"step row lacks {sorted(missing)}")
        kept = {k: row[k] for k in STEP_COLUMNS}
        kept.update({k: float(row[k]) for k in OPTIONAL_STEP_COLUMNS if k in row})
        self._steps.append(kept)

    def attach_evaluation(self, evaluation: Any) -> None:
        """Put an evaluation taken after the last step row onto that row."""
        if self._steps:
            self._steps[-1]["accuracy"] = float(evaluation.accuracy)
            self._steps[-1]["eval_loss"] = float(evaluation.loss)
            for key in OPTIONAL_STEP_COLUMNS:
                if hasattr(evaluation, key):
                    self._steps[-1][key] = float(getattr(evaluation, key))

    @property
    def step_rows(self) -> list[dict]:
        return self._steps

    def steps_frame(self) -> pd.DataFrame:
        frame = pd.DataFrame(
            {k: pd.Series([r[k] for r in self._steps], dtype=t) for k, t in STEP_COLUMNS.items()}
        )
        for key, dtype in OPTIONAL_STEP_COLUMNS.items():
            values = [r.get(key, math.nan) for r in self._steps]
            if any(not math.isnan(v) for v in values):
                frame[key] = pd.Series(values, dtype=dtype)
        return frame

    def state(self) -> dict:
        return {"steps": [dict(r) for r in self._steps], "events": self.events.state()}

    def load_state(self, state: dict) -> None:
        self._steps = [dict(r) for r in state["steps"]]
        self.events.load_state(state["events"])

    # ----------------------------------------------------------- writing
    def write(
        self,
        run_dir: Path,
        devices: pd.DataFrame,
        summary: dict,
        scenario_yaml: str,
    ) -> None:
        run_dir = Path(run_dir)
        run_dir.mkdir(parents=True, exist_ok=True)
        write_text(run_dir / "scenario.yaml", scenario_yaml)
        write_parquet(run_dir / "steps.parquet", self.steps_frame())
        write_parquet(run_dir / "events.parquet", self.events.to_frame())
        dev = devices.copy()
        for col, dtype in DEVICE_COLUMNS.items():
            if col not in dev:
                dev[col] = pd.Series(dtype=dtype)
        write_parquet(run_dir / "devices.parquet", dev[list(DEVICE_COLUMNS)])
        write_json(run_dir / "summary.json", _json_safe(summary))


def devices_frame(columns: dict[str, Any]) -> pd.DataFrame:
    """The ``devices.parquet`` table from per-device arrays keyed by column name
    (:meth:`fleetsim.fleet.fleet.Fleet.device_columns`), with the dtypes of
    :data:`~fleetsim.record.schema.DEVICE_COLUMNS`."""
    return pd.DataFrame(
        {name: pd.Series(columns[name], dtype=dtype) for name, dtype in DEVICE_COLUMNS.items()}
    )


def _json_safe(obj: Any) -> Any:
    if isinstance(obj, dict):
        return {str(k): _json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_json_safe(v) for v in obj]
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if hasattr(obj, "item") and not isinstance(obj, (str, bytes)):
        return _json_safe(obj.item())
    return obj
