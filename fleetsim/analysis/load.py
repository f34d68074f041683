"""Load run directories into tidy pandas tables.

A run directory (written by ``fleetsim.record``) holds ``scenario.yaml``,
``steps.parquet``, ``events.parquet``, ``devices.parquet`` and ``summary.json``.
:func:`load_runs` reads one or many of them (a run directory, a sweep folder, a glob
pattern or a list of these) into a :class:`RunSet` whose tables all carry a ``run``
column; ``summary``, ``steps`` and ``devices`` also carry the fully resolved
scenario flattened to dotted columns (``protocol.lr``, ``policy.name``,
``run.seed``) so any scenario key can be used to group runs.
Events stay lean (``run`` only) because they can be millions of rows; use
:meth:`RunSet.with_params` to attach scenario columns where needed.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd
import pyarrow as pa
import yaml

from fleetsim.analysis.sources import RunSource, run_directories
from fleetsim.errors import FleetsimInputError, did_you_mean
from fleetsim.record.rundir import require_complete
from fleetsim.record.schema import DEVICE_COLUMNS, EVENT_COLUMNS, STEP_COLUMNS
from fleetsim.record.status import finite_accuracy
from fleetsim.safe_yaml import load_bounded, read_yaml_text

SCENARIO_FILE = "scenario.yaml"
SUMMARY_FILE = "summary.json"
STEPS_FILE = "steps.parquet"
EVENTS_FILE = "events.parquet"
DEVICES_FILE = "devices.parquet"
RUN_FILES = (SCENARIO_FILE, SUMMARY_FILE, STEPS_FILE, EVENTS_FILE, DEVICES_FILE)

# Summary keys every run directory must have; the rest are optional extras.
REQUIRED_SUMMARY_KEYS = (
    "final_accuracy",
    "simulated_seconds",
    "steps",
    "systems_only",
    "protocol",
    "policy",
    "seed",
)


@dataclass
class RunSet:
    """Tables of one or many runs.

    ``summary`` has one row per run (``run`` id, summary.json keys with nested
    dicts flattened to dotted names, and the flattened scenario).  ``steps``,
    ``events`` and ``devices`` follow the column contracts of
    ``fleetsim.record.schema`` plus ``run`` (and scenario columns for steps and
    devices).  ``run_dirs`` maps each run id to its directory and ``scenarios``
    to its parsed scenario mapping.
    """

    summary: pd.DataFrame
    steps: pd.DataFrame
    events: pd.DataFrame
    devices: pd.DataFrame
    run_dirs: dict[str, Path] = field(default_factory=dict)
    scenarios: dict[str, dict[str, Any]] = field(default_factory=dict)

    @property
    def runs(self) -> list[str]:
        return list(self.summary["run"])

    @property
    def param_columns(self) -> list[str]:
        """Flattened scenario keys (dotted names) present in ``summary``."""
        return [c for c in self.summary.columns if c.startswith(_SCENARIO_SECTIONS_PREFIXES)]

    def varying_params(self) -> list[str]:
        """Scenario keys whose value differs between runs (the natural ``by`` keys)."""
        varying = []
        for col in self.param_columns:
            values = self.summary[col].astype(str)
            if values.nunique(dropna=False) > 1:
                varying.append(col)
        return varying

    def with_params(self, frame: pd.DataFrame, keys: Sequence[str]) -> pd.DataFrame:
        """``frame`` (which has a ``run`` column) with the summary columns ``keys`` joined on."""
        for key in keys:
            check_key(self, key)
        cols = ["run", *[k for k in keys if k != "run" and k not in frame.columns]]
        return frame.merge(self.summary[cols], on="run", how="left")

    def subset(self, runs: Sequence[str]) -> RunSet:
        """The runs ``runs`` only (same tables, filtered)."""
        wanted = set(runs)
        return RunSet(
            summary=self.summary[self.summary["run"].isin(wanted)].reset_index(drop=True),
            steps=self.steps[self.steps["run"].isin(wanted)].reset_index(drop=True),
            events=self.events[self.events["run"].isin(wanted)].reset_index(drop=True),
            devices=self.devices[self.devices["run"].isin(wanted)].reset_index(drop=True),
            run_dirs={r: p for r, p in self.run_dirs.items() if r in wanted},
            scenarios={r: s for r, s in self.scenarios.items() if r in wanted},
        )


# Top-level sections of a resolved scenario (see fleetsim.scenario); used to tell
# scenario columns from summary columns in ``RunSet.summary``.
SCENARIO_SECTIONS = (
    "description",
    "fleet",
    "traces",
    "model",
    "data",
    "peft",
    "numerics",
    "protocol",
    "policy",
    "run",
    "output",
)
_SCENARIO_SECTIONS_PREFIXES = tuple(f"{s}." for s in SCENARIO_SECTIONS if s != "description")


def check_key(runset: RunSet, key: str) -> None:
    """Raise :class:`FleetsimInputError` unless ``key`` is a column of ``runset.summary``."""
    if key not in runset.summary.columns:
        varying = runset.varying_params()
        hint = ", ".join(varying) if varying else "(no scenario key differs between these runs)"
        params = set(runset.param_columns)
        summary_keys = sorted(
            c for c in runset.summary.columns if c not in params and "." not in c and c != "run"
        )
        raise FleetsimInputError(
            f"--by {key!r}: no such scenario or summary key in the loaded runs"
            f"{did_you_mean(key, runset.summary.columns)}; keys that "
            f"differ between runs: {hint}; any other resolved scenario key in dotted form "
            f"({len(params)} keys, e.g. policy.name, protocol.devices_per_step, run.seed) or a "
            f"summary key ({', '.join(summary_keys)}) is allowed too"
        )


def flatten(mapping: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """Nested mapping → ``{"a.b.c": value}``.  Lists and other non-scalars become
    JSON text so that every column can be grouped on."""
    flat: dict[str, Any] = {}
    for key, value in mapping.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            if value:
                flat.update(flatten(value, prefix=f"{name}."))
            else:
                flat[name] = "{}"
        elif isinstance(value, (list, tuple)):
            flat[name] = json.dumps(list(value), default=str)
        else:
            flat[name] = value
    return flat


def _read_yaml(path: Path) -> dict[str, Any]:
    try:
        # bounded: a run directory from elsewhere may hold a hostile scenario.yaml
        data = load_bounded(read_yaml_text(path, "the scenario YAML"), path)
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as exc:
        raise FleetsimInputError(f"{path}: cannot read the scenario YAML ({exc})") from exc
    if not isinstance(data, dict):
        raise FleetsimInputError(
            f"{path}: the scenario must be a YAML mapping of sections "
            f"({', '.join(SCENARIO_SECTIONS)}), got {type(data).__name__}"
        )
    return data


def _read_summary(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise FleetsimInputError(f"{path}: cannot read the run summary JSON ({exc})") from exc
    if not isinstance(data, dict):
        raise FleetsimInputError(f"{path}: the summary must be a JSON object")
    missing = [k for k in REQUIRED_SUMMARY_KEYS if k not in data]
    if missing:
        raise FleetsimInputError(
            f"{path}: missing summary key(s) {', '.join(missing)}; "
            f"required keys: {', '.join(REQUIRED_SUMMARY_KEYS)}"
        )
    return data


def _upgrade_steps(frame: pd.DataFrame) -> pd.DataFrame:
    """Steps tables written before ``step_start_s`` and ``variance_gate`` existed: the
    step's start is its earliest attempt start among its rows, the gate outcome unknown
    ("")."""
    if "step_start_s" not in frame.columns and {"sim_time_s", "step_seconds", "step"} <= set(
        frame.columns
    ):
        attempt_start = frame["sim_time_s"] - frame["step_seconds"]
        frame = frame.assign(
            step_start_s=attempt_start.groupby(frame["step"]).transform("min")
        )
    if "variance_gate" not in frame.columns:
        frame = frame.assign(variance_gate="")
    return frame


def _read_table(path: Path, columns: Mapping[str, str]) -> pd.DataFrame:
    try:
        frame = pd.read_parquet(path)
    except (OSError, ValueError, pa.ArrowException) as exc:
        raise FleetsimInputError(f"{path}: cannot read the Parquet table ({exc})") from exc
    if columns is STEP_COLUMNS:
        frame = _upgrade_steps(frame)
    missing = [c for c in columns if c not in frame.columns]
    if missing:
        raise FleetsimInputError(
            f"{path}: missing column(s) {', '.join(missing)}; "
            f"required columns: {', '.join(columns)}"
        )
    try:
        for name, dtype in columns.items():
            if dtype == "string":
                frame[name] = frame[name].astype("string").fillna("")
            else:
                frame[name] = frame[name].astype(dtype)
    except (TypeError, ValueError) as exc:
        raise FleetsimInputError(
            f"{path}: column {name!r} cannot be read as {dtype} ({exc})"
        ) from exc
    return frame


def _run_ids(run_dirs: Sequence[Path]) -> list[str]:
    """Directory names, made unique with the parent name (then an index) on clashes."""
    names = [p.name or str(p) for p in run_dirs]
    if len(set(names)) == len(names):
        return names
    names = [f"{p.parent.name}/{p.name}" for p in run_dirs]
    if len(set(names)) == len(names):
        return names
    return [f"{n}#{i}" for i, n in enumerate(names)]


def _empty(columns: Mapping[str, str]) -> pd.DataFrame:
    return pd.DataFrame({name: pd.Series([], dtype=dtype) for name, dtype in columns.items()})


def _summary_row(summary: dict[str, Any]) -> dict[str, Any]:
    # A nested summary entry named like a scenario section (e.g. the numerics engine's
    # self-description under "numerics") is kept apart from the scenario's own keys.
    renamed = {
        (f"summary.{k}" if k in SCENARIO_SECTIONS and isinstance(v, Mapping) else k): v
        for k, v in summary.items()
    }
    row = flatten(renamed)
    # JSON null for a float field (final accuracy, time to target) is a missing value.
    return {k: (math.nan if v is None else v) for k, v in row.items()}


def _drop_nonfinite_accuracy(steps: pd.DataFrame, summary_row: dict[str, Any]) -> None:
    """An accuracy whose evaluation loss is not finite (a non-finite model; run directories
    written before evaluate() refused them) is no accuracy: set it to NaN in ``steps`` and,
    when any was dropped, recompute the summary's final (NaN if the last evaluation was one
    of them) and best accuracy from the finite evaluations.  In place."""
    finite = finite_accuracy(steps)
    dropped = steps["accuracy"].notna() & finite.isna()
    if not dropped.any():
        return
    evaluated = steps["accuracy"].notna()
    last_dropped = bool(dropped[evaluated].iloc[-1])
    steps["accuracy"] = finite
    kept = finite.dropna()
    summary_row["final_accuracy"] = (
        math.nan if last_dropped or not len(kept) else float(kept.iloc[-1])
    )
    if "best_accuracy" in summary_row:
        summary_row["best_accuracy"] = float(kept.max()) if len(kept) else math.nan


def load_run(run_dir: Path) -> RunSet:
    """One run directory as a :class:`RunSet` with one run."""
    return load_runs([run_dir])


def load_runs(runs: RunSource, skip_unfinished: bool = False) -> RunSet:
    """Read run directories into one :class:`RunSet`.

    ``runs``: a run directory, a sweep folder (every run of its ``sweep_index.parquet``), a
    glob pattern (``"runs/sweeps/policies/*"``), or a list of any of these, as str or Path
    (:func:`fleetsim.analysis.sources.run_directories`).  A sweep with runs that are not
    done is refused unless ``skip_unfinished`` (then they are left out with a warning).

    Raises :class:`FleetsimInputError` naming the directory or file when one is
    missing, unreadable or lacks a required column / key.
    """
    paths = run_directories(runs, skip_unfinished)
    if not paths:
        raise FleetsimInputError("no run directories given; pass at least one RUN_DIR")
    for path in paths:
        if not path.is_dir():
            raise FleetsimInputError(
                f"{path}: not a run directory (expected a folder with {', '.join(RUN_FILES)})"
            )
        # A run killed or out of disk while writing leaves a folder marked incomplete (or,
        # before the markers existed, files of two runs): never read it as a finished run.
        require_complete(path)
        for name in RUN_FILES:
            if not (path / name).is_file():
                raise FleetsimInputError(
                    f"{path / name}: missing; a run directory holds {', '.join(RUN_FILES)}"
                )

    ids = _run_ids(paths)
    summaries, steps, events, devices = [], [], [], []
    scenarios: dict[str, dict[str, Any]] = {}
    for run_id, path in zip(ids, paths):
        scenario = _read_yaml(path / SCENARIO_FILE)
        scenarios[run_id] = scenario
        params = flatten(scenario)
        summary_row = _summary_row(_read_summary(path / SUMMARY_FILE))
        for frame_list, name, columns in (
            (steps, STEPS_FILE, STEP_COLUMNS),
            (events, EVENTS_FILE, EVENT_COLUMNS),
            (devices, DEVICES_FILE, DEVICE_COLUMNS),
        ):
            frame = _read_table(path / name, columns)
            frame.insert(0, "run", run_id)
            frame_list.append(frame)
        _drop_nonfinite_accuracy(steps[-1], summary_row)
        # Scenario keys go second so a summary key never hides a scenario key of the same name.
        summaries.append({"run": run_id, **summary_row, **params})

    summary = pd.DataFrame(summaries)
    summary["systems_only"] = summary["systems_only"].astype(bool)
    param_cols = [c for c in summary.columns if c.startswith(_SCENARIO_SECTIONS_PREFIXES)]

    def combine(frames: list[pd.DataFrame], columns: Mapping[str, str]) -> pd.DataFrame:
        non_empty = [f for f in frames if len(f)]
        if not non_empty:
            out = _empty(columns)
            out.insert(0, "run", pd.Series([], dtype=object))
            return out
        return pd.concat(non_empty, ignore_index=True)

    steps_all = combine(steps, STEP_COLUMNS).sort_values(
        ["run", "sim_time_s", "step", "attempt"], kind="stable"
    )
    events_all = combine(events, EVENT_COLUMNS).sort_values(["run", "seq"], kind="stable")
    devices_all = combine(devices, DEVICE_COLUMNS).sort_values(["run", "device_id"], kind="stable")
    params = summary[["run", *param_cols]]
    return RunSet(
        summary=summary,
        steps=steps_all.merge(params, on="run", how="left").reset_index(drop=True),
        events=events_all.reset_index(drop=True),
        devices=devices_all.merge(params, on="run", how="left").reset_index(drop=True),
        run_dirs=dict(zip(ids, paths)),
        scenarios=scenarios,
    )
