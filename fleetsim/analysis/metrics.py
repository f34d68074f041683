"""Run metrics: time to accuracy, fleet utilisation, where the time of a step went.

Every function takes the tidy tables of :mod:`fleetsim.analysis.load` (or a
:class:`~fleetsim.analysis.load.RunSet`) and returns plain pandas objects.
Missing outcomes (a target never reached, a quantity a systems-only run does not
have) are NaN / None, never a sentinel number.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import pandas as pd

from fleetsim.analysis.load import RunSet, check_key
from fleetsim.analysis.stats import mean_confidence_interval
from fleetsim.errors import FleetsimInputError

DEFAULT_TARGETS = (0.4, 0.6, 0.8, 0.9)


def check_targets(targets: Sequence[float]) -> list[float]:
    """Targets as floats in (0, 1] (accuracy fractions), else :class:`FleetsimInputError`."""
    checked = []
    for target in targets:
        try:
            value = float(target)
        except (TypeError, ValueError) as exc:
            raise FleetsimInputError(
                f"--targets: {target!r} is not a number; give accuracy fractions in (0, 1]"
            ) from exc
        if not 0.0 < value <= 1.0:
            raise FleetsimInputError(
                f"--targets: {value} is outside (0, 1]; accuracy targets are fractions "
                "(0.6 means 60 % accuracy)"
            )
        checked.append(value)
    return checked


def accuracy_points(steps: pd.DataFrame) -> pd.DataFrame:
    """The evaluated rows of one run's steps, in simulated-time order, with the
    running maximum of accuracy (the paper's convention) as ``best_accuracy``."""
    evaluated = steps[steps["accuracy"].notna()].sort_values(
        ["sim_time_s", "step", "attempt"], kind="stable"
    )
    evaluated = evaluated.assign(best_accuracy=evaluated["accuracy"].cummax())
    return evaluated


def time_to_accuracy(steps: pd.DataFrame, targets: Sequence[float]) -> dict[float, float | None]:
    """Simulated seconds until the running maximum of evaluated accuracy first
    reaches each target, for ONE run's steps table; ``None`` when never reached
    (including systems-only runs, which have no accuracy)."""
    if "run" in steps.columns and steps["run"].nunique() > 1:
        raise ValueError("time_to_accuracy takes one run's steps; use time_to_accuracy_table")
    points = accuracy_points(steps)
    times = points["sim_time_s"].to_numpy(dtype=float)
    best = points["best_accuracy"].to_numpy(dtype=float)
    result: dict[float, float | None] = {}
    for target in check_targets(targets):
        # The running max is non-decreasing, so the first index at or above target is the answer.
        index = int(np.searchsorted(best, target, side="left")) if best.size else 0
        result[target] = float(times[index]) if index < best.size else None
    return result


def time_to_accuracy_runs(runset: RunSet, targets: Sequence[float]) -> pd.DataFrame:
    """One row per run and target: ``run``, ``target``, ``seconds`` (NaN when not reached)."""
    targets = check_targets(targets)
    rows = []
    for run in runset.runs:
        reached = time_to_accuracy(runset.steps[runset.steps["run"] == run], targets)
        for target in targets:
            seconds = reached[target]
            rows.append(
                {"run": run, "target": target, "seconds": math.nan if seconds is None else seconds}
            )
    return pd.DataFrame(rows, columns=["run", "target", "seconds"])


def group_labels(runset: RunSet, by: str | None) -> pd.Series:
    """The group of each run (indexed like ``runset.summary``): the value of ``by``,
    or the run id when ``by`` is None."""
    if by is None:
        return runset.summary["run"].astype(str)
    check_key(runset, by)
    return runset.summary[by]


def time_to_accuracy_table(
    runset: RunSet,
    targets: Sequence[float],
    by: str | None = "protocol",
    confidence: float = 0.95,
) -> pd.DataFrame:
    """Time to accuracy per group of runs (typically seeds of one configuration).

    One row per (group, target) with ``runs`` (runs in the group), ``reached``
    (runs whose accuracy reached the target), and ``mean_s``, ``ci_low_s``,
    ``ci_high_s`` over the runs that reached it (t-distribution interval; NaN
    with fewer than two such runs), ``mean_h`` the mean in hours.  A group where
    no run reached the target has NaN times: read ``reached`` next to the mean,
    since a mean over the runs that reached is optimistic when some did not.
    """
    per_run = time_to_accuracy_runs(runset, targets)
    labels = group_labels(runset, by)
    group_of_run = dict(zip(runset.summary["run"], labels))
    per_run["group"] = per_run["run"].map(group_of_run)
    key = by if by is not None else "run"
    rows = []
    for (group, target), frame in per_run.groupby(["group", "target"], sort=True, dropna=False):
        mean, low, high, reached = mean_confidence_interval(frame["seconds"], confidence)
        rows.append(
            {
                key: group,
                "target": target,
                "runs": len(frame),
                "reached": reached,
                "mean_s": mean,
                "ci_low_s": low,
                "ci_high_s": high,
                "mean_h": mean / 3600.0,
            }
        )
    columns = [key, "target", "runs", "reached", "mean_s", "ci_low_s", "ci_high_s", "mean_h"]
    return pd.DataFrame(rows, columns=columns)


UTILISATION_SHARES = ("used", "wasted", "idle", "offline")


def utilisation(
    data: RunSet | pd.DataFrame, levels: Sequence[str] = ("fleet", "phone_model", "backend")
) -> pd.DataFrame:
    """Where device-time went, as shares that sum to one per group.

    From the devices table (one row per device that had work): ``used`` is
    busy time (download, compute, upload) whose work the server used
    (``busy_s - wasted_s``), ``wasted`` busy time whose work was dropped, rolled
    back, late or lost to an interruption (``wasted_s``), ``idle`` available but
    without work, ``offline`` unavailable.  ``compute_of_busy`` is the compute
    share of busy time (the rest is network transfer).  Rows per run and per
    level: ``fleet`` (all devices), each phone model, each backend.
    ``coverage`` compares accounted device-time with devices × simulated time
    (1.0 when the recorder's accounting is complete; shown, not enforced).
    """
    if isinstance(data, RunSet):
        devices = data.devices
        sim_seconds = dict(zip(data.summary["run"], data.summary["simulated_seconds"]))
    else:
        devices = data
        sim_seconds = {}
    if "run" not in devices.columns:
        devices = devices.assign(run="run")
    allowed_levels = ("fleet", "phone_model", "backend")
    for level in levels:
        if level not in allowed_levels:
            raise FleetsimInputError(
                f"utilisation level {level!r} unknown; allowed: {', '.join(allowed_levels)}"
            )
    seconds = pd.DataFrame(
        {
            "run": devices["run"].to_numpy(),
            "phone_model": devices["phone_model"].astype(str).to_numpy(),
            "backend": devices["backend"].astype(str).to_numpy(),
            "fleet": "all",
            "used": (devices["busy_s"] - devices["wasted_s"]).clip(lower=0.0).to_numpy(),
            "wasted": devices[["wasted_s", "busy_s"]].min(axis=1).to_numpy(),
            "idle": devices["idle_s"].to_numpy(),
            "offline": devices["offline_s"].to_numpy(),
            "compute": devices["compute_s"].to_numpy(),
            "busy": devices["busy_s"].to_numpy(),
        }
    )
    rows = []
    for level in levels:
        for (run, group), frame in seconds.groupby(["run", level], sort=True):
            total = float(frame[list(UTILISATION_SHARES)].to_numpy().sum())
            busy = float(frame["busy"].sum())
            row = {
                "run": run,
                "level": level,
                "group": group,
                "devices": len(frame),
                "device_hours": total / 3600.0,
            }
            for share in UTILISATION_SHARES:
                row[share] = float(frame[share].sum()) / total if total > 0 else math.nan
            row["compute_of_busy"] = float(frame["compute"].sum()) / busy if busy > 0 else math.nan
            horizon = sim_seconds.get(run)
            row["coverage"] = (
                total / (len(frame) * float(horizon))
                if horizon is not None and np.isfinite(horizon) and horizon > 0
                else math.nan
            )
            rows.append(row)
    columns = [
        "run",
        "level",
        "group",
        "devices",
        "device_hours",
        *UTILISATION_SHARES,
        "compute_of_busy",
        "coverage",
    ]
    return pd.DataFrame(rows, columns=columns)


BREAKDOWN_PARTS = ("download", "compute", "upload", "straggler_wait", "variance_repeats", "other")


def _clipped_total(spans: pd.DataFrame, start: float, end: float) -> float:
    """Total length of the event spans [time_s - duration_s, time_s] inside [start, end]."""
    if spans.empty or end <= start:
        return 0.0
    ends = spans["time_s"].to_numpy(dtype=float)
    begins = ends - spans["duration_s"].to_numpy(dtype=float)
    return float(np.clip(np.minimum(ends, end) - np.maximum(begins, start), 0.0, None).sum())


def step_breakdown(
    events: pd.DataFrame, steps: pd.DataFrame, reference: str = "median"
) -> pd.DataFrame:
    """Where the simulated time of each committed step went.

    A step runs from its start (commit time − ``step_seconds``) to its commit.
    ``variance_repeats`` is the time until the last rolled-back attempt of the
    step (the variance gate asked for more perturbations); the final attempt
    follows.  In it, a *reference* device is picked among those whose upload
    for the step arrived before the commit: the one with the median upload end
    (``reference="median"``: a typical device) or the last one
    (``reference="last"``: the critical path proper).  Its download, compute and
    upload spans inside the attempt are ``download``, ``compute``, ``upload``;
    the time from its upload to the commit is ``straggler_wait`` (waiting for
    slower devices or a deadline); what is left (waiting for assignment,
    interruptions, availability) is ``other``.  The parts sum to ``total_s``.
    Works per run when the tables carry a ``run`` column.
    """
    if reference not in ("median", "last"):
        raise FleetsimInputError(f"reference {reference!r} unknown; allowed: median, last")
    if "run" not in steps.columns:
        steps = steps.assign(run="run")
    if "run" not in events.columns:
        events = events.assign(run="run")
    work_kinds = ("download", "compute", "upload")
    rows = []
    for run, run_steps in steps.groupby("run", sort=True):
        run_events = events[(events["run"] == run) & events["kind"].isin(work_kinds)]
        by_step = {s: f for s, f in run_events.groupby("step", sort=False)}
        committed = run_steps[run_steps["committed"]]
        repeats_by_step = {
            s: f for s, f in run_steps[~run_steps["committed"]].groupby("step", sort=False)
        }
        for row in committed.itertuples(index=False):
            t_commit = float(row.sim_time_s)
            t_start = t_commit - float(row.step_seconds)
            repeats = repeats_by_step.get(row.step, run_steps.iloc[0:0])
            rolled_back = repeats[
                (repeats["sim_time_s"] <= t_commit) & (repeats["sim_time_s"] >= t_start)
            ]
            t_attempt = float(rolled_back["sim_time_s"].max()) if len(rolled_back) else t_start
            parts = dict.fromkeys(BREAKDOWN_PARTS, 0.0)
            parts["variance_repeats"] = t_attempt - t_start
            step_events = by_step.get(row.step, run_events.iloc[0:0])
            uploads = step_events[
                (step_events["kind"] == "upload")
                & (step_events["time_s"] > t_attempt)
                & (step_events["time_s"] <= t_commit)
            ]
            device = -1
            if uploads.empty:
                parts["other"] = t_commit - t_attempt
            else:
                last_upload = (
                    uploads.groupby("device_id")["time_s"].max().sort_values(kind="stable")
                )
                position = (len(last_upload) - 1) // 2 if reference == "median" else -1
                device = int(last_upload.index[position])
                upload_end = float(last_upload.iloc[position])
                mine = step_events[step_events["device_id"] == device]
                for kind in work_kinds:
                    parts[kind] = _clipped_total(mine[mine["kind"] == kind], t_attempt, upload_end)
                parts["straggler_wait"] = t_commit - upload_end
                parts["other"] = max(
                    (upload_end - t_attempt)
                    - parts["download"]
                    - parts["compute"]
                    - parts["upload"],
                    0.0,
                )
            rows.append(
                {
                    "run": run,
                    "step": int(row.step),
                    "start_s": t_start,
                    "commit_s": t_commit,
                    "total_s": t_commit - t_start,
                    "attempts": int(row.attempt) + 1,
                    "reference_device": device,
                    **parts,
                }
            )
    columns = [
        "run",
        "step",
        "start_s",
        "commit_s",
        "total_s",
        "attempts",
        "reference_device",
        *BREAKDOWN_PARTS,
    ]
    return pd.DataFrame(rows, columns=columns)


def breakdown_shares(breakdown: pd.DataFrame) -> pd.DataFrame:
    """Per run: the share of all committed-step time spent in each part (sums to one)."""
    rows = []
    for run, frame in breakdown.groupby("run", sort=True):
        total = float(frame["total_s"].sum())
        row = {"run": run, "steps": len(frame), "step_hours": total / 3600.0}
        for part in BREAKDOWN_PARTS:
            row[part] = float(frame[part].sum()) / total if total > 0 else math.nan
        rows.append(row)
    return pd.DataFrame(rows, columns=["run", "steps", "step_hours", *BREAKDOWN_PARTS])
