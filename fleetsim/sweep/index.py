"""The sweep index: ``sweep_index.parquet``, one row per run with its status.

Written atomically after every change of status, so a sweep killed at any moment leaves
an index that says which runs finished.  A row left ``running`` by a sweep process that
died is read back as ``killed``.
"""

from __future__ import annotations

import json
import math
from enum import Enum
from pathlib import Path
from typing import Any, Optional

import pandas as pd

from fleetsim.record.atomic import write_parquet

INDEX_FILE = "sweep_index.parquet"


class RunStatus(str, Enum):
    """Status of a run in the sweep index.

    The first two are the sweep's bookkeeping; every other one is how the run's last attempt
    ended.  A run that wrote a ``summary.json`` takes its status from the run's own status
    (:data:`fleetsim.record.status.STATUSES`, kept in the index's ``run_status`` column);
    see :data:`OUTCOME_OF_RUN_STATUS`."""

    PENDING = "pending"  # planned, never started
    RUNNING = "running"  # handed to a worker
    DONE = "done"  # the run ended completed or horizon_reached (exit code 0)
    DIVERGED = "diverged"  # the run ended diverged: its model became non-finite (exit 3)
    NO_PROGRESS = "no_progress"  # the run ended without committing a step (exit 4)
    STOPPED = "stopped"  # the run ended on a stop request (Ctrl-C / SIGTERM; exit 130)
    INFEASIBLE = "infeasible"  # no device of the run's fleet can hold its job (exit 2)
    FAILED_TO_START = "failed_to_start"  # the runner refused the run's input (its exit 2)
    FAILED = "failed"  # the run raised instead of ending (it crashed)
    TIMED_OUT = "timed_out"  # killed by the sweep's run timeout (run_timeout_s)
    KILLED = "killed"  # the worker process died (signal, out of memory) or the sweep ended


#: What each status means, for the README's sweep reference (generated) and ``--help``.
STATUS_MEANING: dict[RunStatus, str] = {
    RunStatus.PENDING: "planned, never started",
    RunStatus.RUNNING: "handed to a worker (a row left so by a sweep process that died reads "
                       "as killed)",
    RunStatus.DONE: "the run ended `completed` or `horizon_reached` (its exit code 0)",
    RunStatus.DIVERGED: "the run ended `diverged`: its model became non-finite (exit code 3)",
    RunStatus.NO_PROGRESS: "the run ended `no_progress`: no step committed (exit code 4)",
    RunStatus.STOPPED: "the run ended `stop_requested` (Ctrl-C / SIGTERM reached it)",
    RunStatus.INFEASIBLE: "the runner refused the run before its clock started because no "
                          "device of its fleet can ever hold its job (`error`: the memory "
                          "it needs, the most any device has): an outcome of the scenario, "
                          "kept like `no_progress`",
    RunStatus.FAILED_TO_START: "the runner refused the run's input before its clock started "
                               "(what `fleetsim run` exits 2 for: e.g. a data or trace file "
                               "missing on the worker, an output folder it cannot write); "
                               "`error` names the file or key",
    RunStatus.FAILED: "the run raised instead of ending (it crashed); traceback in "
                      "RUN_DIR/sweep_error.txt",
    RunStatus.TIMED_OUT: "the Ray backend killed it after `run_timeout_s` / --run-timeout",
    RunStatus.KILLED: "its worker process died (a signal, out of memory) or the sweep was "
                      "interrupted or died while it ran",
}

#: ``summary.json`` status -> sweep status.  Summaries written before runs had a status
#: (no ``status`` key) read as ``done``.
OUTCOME_OF_RUN_STATUS: dict[str, RunStatus] = {
    "completed": RunStatus.DONE,
    "horizon_reached": RunStatus.DONE,
    "": RunStatus.DONE,
    "diverged": RunStatus.DIVERGED,
    "no_progress": RunStatus.NO_PROGRESS,
    "stop_requested": RunStatus.STOPPED,
}

#: What each ``--retry`` choice runs again, besides the runs never started (always run).
#: ``done`` runs are never run again (delete a run's directory to redo it).
RETRY_CHOICES: dict[str, frozenset[RunStatus]] = {
    "failed": frozenset(
        {RunStatus.FAILED_TO_START, RunStatus.FAILED, RunStatus.KILLED, RunStatus.TIMED_OUT,
         RunStatus.STOPPED}
    ),
    "diverged": frozenset({RunStatus.DIVERGED}),
    "all": frozenset(
        {RunStatus.FAILED_TO_START, RunStatus.FAILED, RunStatus.KILLED, RunStatus.TIMED_OUT,
         RunStatus.STOPPED, RunStatus.DIVERGED, RunStatus.NO_PROGRESS, RunStatus.INFEASIBLE}
    ),
    "none": frozenset(),
}
#: ``fleetsim sweep``'s ``--retry`` default: the runs that ended without an outcome of their
#: own (a refused input, an error, a killed worker, a timeout, a stop request).  A diverged,
#: no-progress or infeasible run is an outcome of its scenario and seed (the same run ends
#: the same way again), so it is kept unless asked for.
DEFAULT_RETRY = "failed"


# Fixed columns of the index, in order, with their dtypes.  Each swept key also gets a
# column of its own (named by the key, e.g. ``policy.name``) after ``params``.
INDEX_COLUMNS: dict[str, str] = {
    "run_id": "string",
    "status": "string",  # a RunStatus value
    "run_status": "string",  # summary.json's status (completed, diverged, ...); "" if none
    "params": "string",  # JSON object: swept key -> value
    "run_dir": "string",
    "error": "string",  # "" for done runs: why the run did not end done (kept across re-runs)
    "host_seconds": "float64",  # wall-clock seconds of the run on its worker
    "final_accuracy": "float64",  # NaN for systems-only runs or unfinished runs
    "simulated_seconds": "float64",
    "attempts": "int64",  # how many times the sweep started this run
    "worker": "string",  # host:pid that ran the last attempt
    "started_at": "string",  # UTC ISO time of the last attempt's start ("" if none)
    "finished_at": "string",
}


def _empty_row(run_id: str, params: dict[str, Any], run_dir: Path) -> dict[str, Any]:
    return {
        "run_id": run_id,
        "status": RunStatus.PENDING.value,
        "run_status": "",
        "params": json.dumps(params, default=str),
        "run_dir": str(run_dir),
        "error": "",
        "host_seconds": math.nan,
        "final_accuracy": math.nan,
        "simulated_seconds": math.nan,
        "attempts": 0,
        "worker": "",
        "started_at": "",
        "finished_at": "",
    }


def _param_column_values(values: list[Any]) -> tuple[list[Any], Optional[str]]:
    """Values and pandas dtype of one swept key's column: native when all values share one
    scalar type, else their JSON text (Parquet columns have one type)."""
    kinds = {type(v) for v in values}
    if kinds == {bool}:
        return values, "bool"
    if kinds <= {int} and kinds:
        return values, "int64"
    if kinds <= {int, float} and kinds:
        return [float(v) for v in values], "float64"
    if kinds == {str}:
        return values, "string"
    return [json.dumps(v, default=str) for v in values], "string"


class SweepIndex:
    """In-memory rows of the index, keyed by run id, in plan order."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self.rows: dict[str, dict[str, Any]] = {}
        self.params: dict[str, dict[str, Any]] = {}

    @classmethod
    def read_previous(cls, path: Path) -> dict[str, dict[str, Any]]:
        """Rows of an existing index by run id ({} if there is none or it is unreadable)."""
        path = Path(path)
        if not path.is_file():
            return {}
        try:
            frame = pd.read_parquet(path)
        except Exception:  # noqa: BLE001 - a damaged index is rebuilt from the run directories
            return {}
        if "run_id" not in frame.columns:
            return {}
        rows = {}
        for record in frame.to_dict("records"):
            rows[str(record["run_id"])] = {
                k: record.get(k, _empty_row("", {}, Path())[k]) for k in INDEX_COLUMNS
            }
        return rows

    def add(self, run_id: str, params: dict[str, Any], run_dir: Path,
            previous: Optional[dict[str, Any]] = None) -> dict[str, Any]:
        row = _empty_row(run_id, params, run_dir)
        if previous:
            row["attempts"] = int(previous.get("attempts") or 0)
        self.rows[run_id] = row
        self.params[run_id] = params
        return row

    def update(self, run_id: str, **fields: Any) -> None:
        unknown = set(fields) - set(INDEX_COLUMNS)
        if unknown:
            raise KeyError(f"not index columns: {sorted(unknown)}")
        self.rows[run_id].update(fields)

    def counts(self) -> dict[str, int]:
        out = {s.value: 0 for s in RunStatus}
        for row in self.rows.values():
            out[row["status"]] += 1
        return out

    def frame(self) -> pd.DataFrame:
        ids = list(self.rows)
        data: dict[str, pd.Series] = {
            name: pd.Series([self.rows[i][name] for i in ids], dtype=dtype)
            for name, dtype in INDEX_COLUMNS.items()
        }
        keys: list[str] = []
        for params in self.params.values():
            keys.extend(k for k in params if k not in keys and k not in INDEX_COLUMNS)
        columns: dict[str, pd.Series] = {}
        for name in INDEX_COLUMNS:
            columns[name] = data[name]
            if name == "params":
                for key in keys:
                    values, dtype = _param_column_values(
                        [self.params[i].get(key) for i in ids]
                    )
                    columns[key] = pd.Series(values, dtype=dtype)
        return pd.DataFrame(columns)

    def write(self) -> Path:
        write_parquet(self.path, self.frame())
        return self.path


def read_index(path: Path) -> pd.DataFrame:
    """The sweep index of a sweep folder (or of the index file itself)."""
    path = Path(path)
    if path.is_dir():
        path = path / INDEX_FILE
    return pd.read_parquet(path)

