"""Experiment-tracker export (``output.trackers``): TensorBoard event files and a local
MLflow file store, written under the run directory as callbacks
(:class:`fleetsim.callbacks.RunCallback`).

What each tracker gets:

* **every committed step** (a ``steps.parquet`` row with ``committed`` true, with the
  values that row has in ``steps.parquet``): each finite column of :data:`STEP_METRICS`
  (loss, accuracy and evaluation loss when evaluated, variance statistic, lr, devices,
  perturbations, bytes, step seconds, staleness, round, ``sim_time_s``).  A row is logged
  once nothing can change it any more (an evaluation taken at the end of a round is put
  on the round's last row), i.e. when the next row arrives or the run ends;
* **the summary figures** at the end: every finite number of ``summary.json``, flattened
  (``summary/time_to_target/0.5``), at the last committed step and the simulated end;
* **the resolved scenario** as parameters, one per flattened key (``protocol.lr``; lists
  as JSON text, ``null`` for None);
* **the run's PNGs** (those of the run directory written by this run) as artefacts.

The x-axis.  TensorBoard plots against its integer ``step`` or the event's wall time, and
cannot use another scalar as the x-axis, so each step metric is written twice:
``by_step/<metric>`` at step = the committed step index, and ``by_sim_time_ms/<metric>`` at
step = the simulated time of the commit in milliseconds (rounded to a whole millisecond).
Choose the horizontal axis "Step" in TensorBoard: ``by_sim_time_ms/`` then reads in
simulated milliseconds since the run start.  Every event's wall time is the simulated time
of its commit (seconds), so "Relative" reads simulated time since the first committed step.
Values are written as float64 tensors (TensorBoard's ``new_style`` scalars), so nothing is
rounded to float32.  MLflow logs each metric under its own name at step = the committed
step, with the metric timestamp = the simulated time in milliseconds, and ``sim_time_s`` as
a metric of its own, which MLflow's chart editor offers as the x-axis.

The MLflow store is a file store (``mlflow/`` in the run directory, no server; MLflow 3
refuses file stores unless ``MLFLOW_ALLOW_FILE_STORE=true``, which fleetsim sets around its
own MLflow calls only, see :func:`mlflow_environment`); read it with
:func:`open_mlflow_store` or ``MLFLOW_ALLOW_FILE_STORE=true mlflow ui --backend-store-uri
RUN_DIR/mlflow``.  A run that starts in a directory (a new run or ``--resume``, which replays
every step) replaces the tracker folders there, so they always hold exactly one run.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import shutil
import time
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

from fleetsim.callbacks import RunCallback, RunState
from fleetsim.record.schema import STEP_COLUMNS

TENSORBOARD_DIR = "tensorboard"
MLFLOW_DIR = "mlflow"

#: steps.parquet columns logged per committed step (the step index is the x-axis)
STEP_METRICS: tuple[str, ...] = tuple(
    c for c, kind in STEP_COLUMNS.items()
    if c not in ("step", "attempt", "committed") and kind != "string"
)
#: MLflow's limits: entities per log_batch (params), characters of a parameter value
_MLFLOW_PARAMS_PER_BATCH = 100
_MLFLOW_MAX_PARAM_CHARS = 6000


class _CommittedRows:
    """Hands out each committed step row of the recorder once it is final: every row
    but the last is (:meth:`Recorder.attach_evaluation` changes only the last row);
    ``all_rows`` at the end of the run."""

    def __init__(self) -> None:
        self.next = 0

    def take(self, rows: list[dict], all_rows: bool = False) -> list[dict]:
        end = len(rows) if all_rows else len(rows) - 1
        taken = [r for r in rows[self.next:end] if r["committed"]]
        self.next = max(self.next, end)
        return taken


def step_metrics(row: Mapping[str, Any]) -> dict[str, float]:
    """The finite values of :data:`STEP_METRICS` in a step row, as floats (NaN = not
    measured in that row, e.g. accuracy between evaluations: not logged)."""
    out = {}
    for name in STEP_METRICS:
        value = float(row[name])
        if math.isfinite(value):
            out[name] = value
    return out


def summary_figures(summary: Mapping[str, Any], prefix: str = "") -> dict[str, float]:
    """Every finite number of a summary (nested mappings flattened with ``/``; booleans,
    text, None and non-finite values left out)."""
    out: dict[str, float] = {}
    for key, value in summary.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            out.update(summary_figures(value, prefix=f"{name}/"))
        elif isinstance(value, (int, float)) and not isinstance(value, bool):
            if math.isfinite(float(value)):
                out[name] = float(value)
    return out


def scenario_params(scenario: Any) -> dict[str, Any]:
    """The resolved scenario (a pydantic Scenario) as ``{"protocol.lr": 0.01, ...}``:
    scalars as they are, lists as JSON text, None as ``"null"``."""

    def walk(node: Mapping[str, Any], prefix: str) -> Iterator[tuple[str, Any]]:
        for key, value in node.items():
            name = f"{prefix}{key}"
            if isinstance(value, Mapping) and value:
                yield from walk(value, f"{name}.")
            elif isinstance(value, (Mapping, list, tuple)):
                yield name, json.dumps(value)
            elif value is None:
                yield name, "null"
            else:
                yield name, value

    return dict(walk(scenario.model_dump(mode="json"), ""))


def run_pngs(run_dir: Path, since_ns: int) -> list[Path]:
    """PNG files at the top of ``run_dir`` written at or after ``since_ns`` (time.time_ns):
    the run's own figures, not ones an earlier run left there."""
    return sorted(p for p in Path(run_dir).glob("*.png")
                  if p.is_file() and p.stat().st_mtime_ns >= since_ns)


def _fresh_dir(path: Path) -> Path:
    if path.exists():
        shutil.rmtree(path)
    path.mkdir(parents=True)
    return path


class TensorBoardTracker(RunCallback):
    """TensorBoard event files in ``RUN_DIR/tensorboard/`` through torch's
    :class:`torch.utils.tensorboard.SummaryWriter` (see the module docstring for the tags
    and the x-axis)."""

    def on_train_begin(self, run: RunState) -> None:
        from torch.utils.tensorboard import SummaryWriter

        self.since_ns = time.time_ns()
        self.rows = _CommittedRows()
        log_dir = _fresh_dir(Path(run.run_dir) / TENSORBOARD_DIR)
        self.writer = SummaryWriter(log_dir=str(log_dir), max_queue=1000, flush_secs=30)
        self.writer.add_text("scenario", "```yaml\n" + run.loaded.resolved_yaml() + "```",
                             global_step=0, walltime=0.0)

    def _scalar(self, tag: str, value: float, step: int, walltime: float) -> None:
        self.writer.add_scalar(tag, value, step, walltime=walltime, new_style=True,
                               double_precision=True)

    def _log_rows(self, rows: list[dict]) -> None:
        for row in rows:
            t = float(row["sim_time_s"])
            for name, value in step_metrics(row).items():
                self._scalar(f"by_step/{name}", value, int(row["step"]), t)
                self._scalar(f"by_sim_time_ms/{name}", value, int(round(t * 1000)), t)

    def after_central_iteration(self, run: RunState, row: dict) -> None:
        self._log_rows(self.rows.take(run.recorder.step_rows))

    def on_outputs_written(self, run: RunState, summary: dict) -> None:
        from torch.utils.tensorboard.summary import hparams

        self._log_rows(self.rows.take(run.recorder.step_rows, all_rows=True))
        end_step, end_s = int(summary["steps"]), float(summary["simulated_seconds"])
        figures = {f"summary/{k}": v for k, v in summary_figures(summary).items()}
        for tag, value in figures.items():
            self._scalar(tag, value, end_step, end_s)
        # The HParams dashboard: the resolved scenario against the summary figures.
        file_writer = self.writer._get_file_writer()
        for part in hparams(scenario_params(run.loaded.scenario), figures):
            file_writer.add_summary(part, end_step, end_s)
        for png in run_pngs(run.run_dir, self.since_ns):
            from matplotlib.image import imread

            self.writer.add_image(f"figures/{png.stem}", imread(png)[..., :3], end_step,
                                  walltime=end_s, dataformats="HWC")
        self.writer.close()


@contextlib.contextmanager
def mlflow_environment() -> Iterator[None]:
    """Run MLflow calls with the settings a local file store needs, the process's
    environment restored afterwards: ``MLFLOW_ALLOW_FILE_STORE=true`` (MLflow 3 refuses a
    file store without it) and ``MLFLOW_DISABLE_TELEMETRY=true`` unless the user set it
    (a local store needs no network; MLflow reads it when first imported)."""
    keys = ("MLFLOW_ALLOW_FILE_STORE", "MLFLOW_DISABLE_TELEMETRY")
    saved = {k: os.environ.get(k) for k in keys}
    os.environ["MLFLOW_ALLOW_FILE_STORE"] = "true"
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    try:
        yield
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


@contextlib.contextmanager
def open_mlflow_store(run_dir: Path | str) -> Iterator[Any]:
    """An :class:`mlflow.tracking.MlflowClient` on a run directory's MLflow store, usable
    inside the ``with`` block: ``with open_mlflow_store("runs/x") as client:
    client.search_runs(...)``."""
    uri = (Path(run_dir) / MLFLOW_DIR).resolve().as_uri()
    with mlflow_environment():
        from mlflow.store.tracking.file_store import FileStore
        from mlflow.tracking import MlflowClient

        # MLflow keeps one store object per URI for the process; when a later run replaced
        # the folder, that object would not lay it out again: a FileStore made here does.
        FileStore(uri, uri)
        yield MlflowClient(tracking_uri=uri)


class MlflowTracker(RunCallback):
    """One MLflow run in a local file store in ``RUN_DIR/mlflow/`` (experiment =
    ``run.name``, run name = ``NAME-seedSEED``), through :class:`mlflow.tracking.MlflowClient`
    on that store only (no global MLflow state: sweeps and tests do not interfere)."""

    def on_train_begin(self, run: RunState) -> None:
        from mlflow.entities import Param

        self.since_ns = time.time_ns()
        self.rows = _CommittedRows()
        store = Path(run.run_dir) / MLFLOW_DIR
        if store.exists():
            shutil.rmtree(store)
        sc = run.loaded.scenario
        with open_mlflow_store(run.run_dir) as client:
            self.client = client
            experiment = client.create_experiment(sc.run.name)
            self.run_id = client.create_run(
                experiment, run_name=f"{sc.run.name}-seed{sc.run.seed}",
                tags={"fleetsim.x_axis": "step = committed step; timestamp = simulated ms"},
            ).info.run_id
            params = []
            for key, value in scenario_params(sc).items():
                text = str(value)
                if len(text) > _MLFLOW_MAX_PARAM_CHARS:
                    text = text[: _MLFLOW_MAX_PARAM_CHARS - 40] + " ... (in artefact scenario.yaml)"
                params.append(Param(key, text))
            for i in range(0, len(params), _MLFLOW_PARAMS_PER_BATCH):
                client.log_batch(self.run_id, params=params[i:i + _MLFLOW_PARAMS_PER_BATCH])

    def _log_rows(self, rows: list[dict]) -> None:
        from mlflow.entities import Metric

        if not rows:
            return
        metrics = [
            Metric(name, value, int(round(float(row["sim_time_s"]) * 1000)), int(row["step"]))
            for row in rows for name, value in step_metrics(row).items()
        ]
        with mlflow_environment():
            self.client.log_batch(self.run_id, metrics=metrics)

    def after_central_iteration(self, run: RunState, row: dict) -> None:
        self._log_rows(self.rows.take(run.recorder.step_rows))

    def on_outputs_written(self, run: RunState, summary: dict) -> None:
        from mlflow.entities import Metric

        self._log_rows(self.rows.take(run.recorder.step_rows, all_rows=True))
        end_step = int(summary["steps"])
        end_ms = int(round(float(summary["simulated_seconds"]) * 1000))
        figures = [Metric(f"summary/{k}", v, end_ms, end_step)
                   for k, v in summary_figures(summary).items()]
        run_dir = Path(run.run_dir)
        with mlflow_environment():
            for i in range(0, len(figures), 1000):
                self.client.log_batch(self.run_id, metrics=figures[i:i + 1000])
            for path in [*run_pngs(run_dir, self.since_ns), run_dir / "scenario.yaml",
                         run_dir / "summary.json"]:
                if path.is_file():
                    self.client.log_artifact(self.run_id, str(path))
            self.client.set_terminated(self.run_id,
                                       "FAILED" if run.fault is not None else "FINISHED")
