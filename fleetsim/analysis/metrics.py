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
from fleetsim.analysis.stats import censored_median
from fleetsim.errors import FleetsimInputError
from fleetsim.record.summary import first_times_reaching

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


def time_to_accuracy(steps: pd.DataFrame, targets: Sequence[float]) -> dict[float, float | None]:
    """Simulated seconds until the running maximum of evaluated accuracy first
    reaches each target, for ONE run's steps table; ``None`` when never reached
    (including systems-only runs, which have no accuracy).  The rule is
    :func:`fleetsim.record.summary.first_times_reaching`, the one summary.json uses."""
    if "run" in steps.columns and steps["run"].nunique() > 1:
        raise ValueError("time_to_accuracy takes one run's steps; use time_to_accuracy_table")
    targets = check_targets(targets)
    # One home for the rule: the recorder's (summary.json's time_to_target).
    return dict(zip(targets, first_times_reaching(steps, targets)))


def time_to_accuracy_runs(runset: RunSet, targets: Sequence[float]) -> pd.DataFrame:
    """One row per run and target: ``run``, ``target``, ``seconds`` (simulated seconds to
    the target, NaN when not reached) and ``end_s`` (the run's simulated end, where a run
    that did not reach the target is censored; ``inf`` when the summary lacks it)."""
    targets = check_targets(targets)
    ends = dict(zip(runset.summary["run"], runset.summary.get("simulated_seconds", [])))
    rows = []
    for run in runset.runs:
        reached = time_to_accuracy(runset.steps[runset.steps["run"] == run], targets)
        end = pd.to_numeric(pd.Series([ends.get(run)]), errors="coerce").iloc[0]
        end = float(end) if pd.notna(end) else math.inf
        for target in targets:
            seconds = reached[target]
            rows.append(
                {
                    "run": run,
                    "target": target,
                    "seconds": math.nan if seconds is None else seconds,
                    "end_s": end,
                }
            )
    return pd.DataFrame(rows, columns=["run", "target", "seconds", "end_s"])


def group_labels(runset: RunSet, by: str | None) -> pd.Series:
    """The group of each run (indexed like ``runset.summary``): the value of ``by``,
    or the run id when ``by`` is None."""
    if by is None:
        return runset.summary["run"].astype(str)
    check_key(runset, by)
    return runset.summary[by]


TTA_COLUMNS = ("runs", "reached", "median_s", "ci_low_s", "ci_high_s", "median_h")


def time_to_accuracy_table(
    runset: RunSet,
    targets: Sequence[float],
    by: str | None = "protocol",
    confidence: float = 0.95,
) -> pd.DataFrame:
    """Time to accuracy per group of runs (typically seeds of one configuration),
    counting the runs that never reached the target.

    One row per (group, target): ``runs`` (runs in the group), ``reached`` (runs whose
    accuracy reached the target), ``median_s`` the Kaplan–Meier median of simulated
    seconds with each non-reaching run censored at its simulated end
    (:func:`fleetsim.analysis.stats.censored_median`: ``inf`` = not reached, i.e. fewer
    than half of the runs got there), ``ci_low_s``/``ci_high_s`` its interval
    at ``confidence`` (``inf`` = unbounded; never below zero), ``median_h`` the median
    in hours.  Never the mean of only the runs that reached.
    """
    return _median_times(time_to_accuracy_runs(runset, targets), runset, by, confidence)


def _median_times(
    per_run: pd.DataFrame, runset: RunSet, by: str | None, confidence: float
) -> pd.DataFrame:
    """Per-run times to targets (``run``, ``target``, ``seconds``, ``end_s``) → one row per
    (group, target) with the censored median (see :func:`time_to_accuracy_table`)."""
    labels = group_labels(runset, by)
    group_of_run = dict(zip(runset.summary["run"], labels))
    per_run["group"] = per_run["run"].map(group_of_run)
    key = by if by is not None else "run"
    rows = []
    for (group, target), frame in per_run.groupby(["group", "target"], sort=True, dropna=False):
        missed = frame["seconds"].isna()
        result = censored_median(
            frame.loc[~missed, "seconds"], frame.loc[missed, "end_s"], confidence
        )
        rows.append(
            {
                key: group,
                "target": target,
                "runs": result.runs,
                "reached": result.reached,
                "median_s": result.median,
                "ci_low_s": result.low,
                "ci_high_s": result.high,
                "median_h": result.median / 3600.0,
            }
        )
    return pd.DataFrame(rows, columns=[key, "target", *TTA_COLUMNS])


def check_step_targets(targets: Sequence[int]) -> list[int]:
    """Step targets as positive whole numbers of committed steps, else
    :class:`FleetsimInputError`."""
    checked = []
    for target in targets:
        value = target
        if isinstance(target, float) and float(target).is_integer():
            value = int(target)
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
            raise FleetsimInputError(
                f"step targets: {target!r} is not a whole number of committed steps of at "
                "least 1"
            )
        checked.append(int(value))
    return checked


def time_to_steps_runs(runset: RunSet, targets: Sequence[int]) -> pd.DataFrame:
    """One row per run and target: ``run``, ``target`` (committed steps), ``seconds``
    (simulated seconds at which the run committed its ``target``-th step, NaN when it
    committed fewer) and ``end_s`` (the run's simulated end, where it is censored)."""
    targets = check_step_targets(targets)
    ends = dict(zip(runset.summary["run"], runset.summary.get("simulated_seconds", [])))
    committed = runset.steps[runset.steps["committed"]]
    rows = []
    for run in runset.runs:
        times = committed.loc[committed["run"] == run].sort_values("step")["sim_time_s"]
        end = pd.to_numeric(pd.Series([ends.get(run)]), errors="coerce").iloc[0]
        end = float(end) if pd.notna(end) else math.inf
        for target in targets:
            seconds = float(times.iloc[target - 1]) if len(times) >= target else math.nan
            rows.append({"run": run, "target": target, "seconds": seconds, "end_s": end})
    return pd.DataFrame(rows, columns=["run", "target", "seconds", "end_s"])


def time_to_steps_table(
    runset: RunSet,
    targets: Sequence[int],
    by: str | None = "protocol",
    confidence: float = 0.95,
) -> pd.DataFrame:
    """Simulated time to a number of committed steps per group of runs: the systems
    counterpart of :func:`time_to_accuracy_table` (it works for systems-only runs, which
    have no accuracy), with the same columns and the same censored (Kaplan–Meier) median
    over the runs of a group; ``target`` is the number of committed steps."""
    return _median_times(time_to_steps_runs(runset, targets), runset, by, confidence)


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


WORK_KINDS = ("download", "compute", "upload")
SPAN_COLUMNS = ["run", "device_id", "step", "kind", "start_s", "end_s"]


def work_spans(events: pd.DataFrame) -> pd.DataFrame:
    """Contiguous download / compute / upload spans of every device: ``run``,
    ``device_id``, ``step``, ``kind``, ``start_s``, ``end_s``.

    The fleet logs a compute event per contiguous piece, but a transfer once at
    its end with its total active time, and an ``interrupted`` event (detail =
    phase, duration = the active time of the piece it cut short) when the
    device goes offline mid-phase.  A transfer's last piece therefore starts no
    earlier than the device's last ``resumed`` event; the pieces before an
    interruption come from the ``interrupted`` events themselves.
    """
    if "run" not in events.columns:
        events = events.assign(run="run")
    device_events = events[events["device_id"] >= 0]
    work = device_events.loc[
        device_events["kind"].isin(WORK_KINDS),
        ["run", "device_id", "step", "kind", "time_s", "duration_s"],
    ]
    resumes = device_events.loc[device_events["kind"] == "resumed", ["run", "device_id", "time_s"]]
    work = work.assign(start_s=work["time_s"] - work["duration_s"])
    transfer = work["kind"] != "compute"
    if transfer.any() and len(resumes):
        transfers = work[transfer].reset_index().sort_values("time_s", kind="stable")
        resumes = resumes.rename(columns={"time_s": "resume_s"}).sort_values("resume_s")
        matched = pd.merge_asof(
            transfers,
            resumes,
            left_on="time_s",
            right_on="resume_s",
            by=["run", "device_id"],
            allow_exact_matches=False,
        ).set_index("index")
        work.loc[matched.index, "start_s"] = np.fmax(
            matched["start_s"], matched["resume_s"].fillna(-np.inf)
        )
    cut = device_events[
        (device_events["kind"] == "interrupted")
        & device_events["detail"].isin(("download", "upload"))
        & (device_events["duration_s"] > 0)
    ]
    pieces = pd.DataFrame(
        {
            "run": cut["run"],
            "device_id": cut["device_id"],
            "step": cut["step"],
            "kind": cut["detail"].astype(str),
            "start_s": cut["time_s"] - cut["duration_s"],
            "time_s": cut["time_s"],
        }
    )
    spans = pd.concat([work.drop(columns=["duration_s"]), pieces], ignore_index=True)
    spans = spans.rename(columns={"time_s": "end_s"})[SPAN_COLUMNS]
    return spans.sort_values(["run", "device_id", "start_s"], kind="stable").reset_index(drop=True)


def step_breakdown(
    events: pd.DataFrame, steps: pd.DataFrame, reference: str = "median"
) -> pd.DataFrame:
    """Where the simulated time of each committed step went.

    A step runs from the dispatch of its *first* attempt (``step_start_s`` of the
    steps table) to its commit, so ``total_s`` is the step's whole wall time.
    ``variance_repeats`` is the time from that start to the last rolled-back attempt
    of the step (the variance gate asked for more perturbations: their downloads,
    compute, uploads and waits); the final attempt follows.  ``bytes_down`` and
    ``bytes_up`` are the bytes of every attempt of the step.  In the final attempt,
    a *reference* device is picked among those whose upload for the step arrived
    before the commit: the one with the median upload end (``reference="median"``:
    a typical device) or the last one (``reference="last"``: the critical path
    proper).  Its download, compute and upload spans inside the attempt are
    ``download``, ``compute``, ``upload``; the time from its upload to the commit
    is ``straggler_wait`` (waiting for slower devices or a deadline); what is left
    (waiting for assignment, interruptions, availability) is ``other``.  The parts
    sum to ``total_s``.
    Works per run when the tables carry a ``run`` column.
    """
    if reference not in ("median", "last"):
        raise FleetsimInputError(f"reference {reference!r} unknown; allowed: median, last")
    if "run" not in steps.columns:
        steps = steps.assign(run="run")
    if "run" not in events.columns:
        events = events.assign(run="run")
    columns = [
        "run",
        "step",
        "start_s",
        "commit_s",
        "total_s",
        "attempts",
        "reference_device",
        *BREAKDOWN_PARTS,
        "bytes_down",
        "bytes_up",
    ]
    steps = steps.assign(_start=_first_attempt_start(steps))
    committed = steps.loc[
        steps["committed"], ["run", "step", "attempt", "sim_time_s", "_start"]
    ]
    if committed.empty:
        return pd.DataFrame(columns=columns)
    windows = pd.DataFrame(
        {
            "run": committed["run"].to_numpy(),
            "step": committed["step"].to_numpy(dtype=np.int64),
            "attempts": committed["attempt"].to_numpy(dtype=np.int64) + 1,
            "commit_s": committed["sim_time_s"].to_numpy(dtype=float),
        }
    )
    windows["start_s"] = committed["_start"].to_numpy(dtype=float)
    windows["window"] = np.arange(len(windows))
    # Bytes of every attempt of the step (its rows up to the commit).
    attempts = steps[["run", "step", "sim_time_s", "bytes_down", "bytes_up"]].merge(
        windows[["run", "step", "window", "start_s", "commit_s"]], on=["run", "step"]
    )
    attempts = attempts[
        (attempts["sim_time_s"] >= attempts["start_s"])
        & (attempts["sim_time_s"] <= attempts["commit_s"])
    ]
    moved = attempts.groupby("window")[["bytes_down", "bytes_up"]].sum()
    for column in ("bytes_down", "bytes_up"):
        windows[column] = windows["window"].map(moved[column]).fillna(0).astype(np.int64)

    # Last rolled-back attempt of each committed step (inside its window).
    # (attempt -1 rows are evaluations on protocol.eval_every_s's grid, not attempts)
    rolled_back = ~steps["committed"] & (steps["attempt"] >= 0)
    repeats = steps.loc[rolled_back, ["run", "step", "sim_time_s"]].merge(
        windows[["run", "step", "window", "start_s", "commit_s"]], on=["run", "step"]
    )
    repeats = repeats[
        (repeats["sim_time_s"] >= repeats["start_s"])
        & (repeats["sim_time_s"] <= repeats["commit_s"])
    ]
    last_rollback = repeats.groupby("window")["sim_time_s"].max()
    windows["attempt_s"] = windows["window"].map(last_rollback).fillna(windows["start_s"])

    # The reference device: median (or last) of the devices' last upload in the final attempt.
    work = work_spans(events).rename(columns={"end_s": "time_s"})
    window_keys = windows[["run", "step", "window", "attempt_s", "commit_s"]]
    # Completed uploads only (an interrupted upload piece is not a delivery).
    completed = events.loc[
        (events["kind"] == "upload") & (events["device_id"] >= 0),
        ["run", "step", "device_id", "time_s"],
    ]
    uploads = completed.merge(window_keys, on=["run", "step"])
    uploads = uploads[
        (uploads["time_s"] > uploads["attempt_s"]) & (uploads["time_s"] <= uploads["commit_s"])
    ]
    per_device = uploads.groupby(["window", "device_id"], sort=False)["time_s"].max().reset_index()
    per_device = per_device.sort_values(["window", "time_s", "device_id"], kind="stable")
    per_device["rank"] = per_device.groupby("window").cumcount()
    count = per_device.groupby("window")["device_id"].transform("size")
    wanted = (count - 1) // 2 if reference == "median" else count - 1
    chosen = per_device[per_device["rank"] == wanted].set_index("window")
    windows["reference_device"] = windows["window"].map(chosen["device_id"]).fillna(-1)
    windows["upload_end_s"] = windows["window"].map(chosen["time_s"])

    # The reference device's spans, clipped to [attempt start, its upload end].
    mine = work.merge(
        windows.loc[
            windows["reference_device"] >= 0,
            ["run", "step", "window", "reference_device", "attempt_s", "upload_end_s"],
        ],
        left_on=["run", "step", "device_id"],
        right_on=["run", "step", "reference_device"],
    )
    begin = np.maximum(mine["start_s"], mine["attempt_s"])
    end = np.minimum(mine["time_s"], mine["upload_end_s"])
    mine = mine.assign(clipped=np.clip(end - begin, 0.0, None))
    spent = mine.pivot_table(index="window", columns="kind", values="clipped", aggfunc="sum")
    has_reference = windows["reference_device"] >= 0
    for kind in ("download", "compute", "upload"):
        values = windows["window"].map(spent[kind]) if kind in spent.columns else 0.0
        windows[kind] = np.where(has_reference, pd.Series(values).fillna(0.0), 0.0)
    windows["variance_repeats"] = windows["attempt_s"] - windows["start_s"]
    windows["straggler_wait"] = np.where(
        has_reference, windows["commit_s"] - windows["upload_end_s"], 0.0
    )
    busy = windows["download"] + windows["compute"] + windows["upload"]
    windows["other"] = np.where(
        has_reference,
        np.clip(windows["upload_end_s"] - windows["attempt_s"] - busy, 0.0, None),
        windows["commit_s"] - windows["attempt_s"],
    )
    windows["total_s"] = windows["commit_s"] - windows["start_s"]
    windows["reference_device"] = windows["reference_device"].astype(np.int64)
    out = windows.sort_values(["run", "commit_s", "step"], kind="stable")[columns]
    return out.reset_index(drop=True)


def _first_attempt_start(steps: pd.DataFrame) -> pd.Series:
    """Per row: when its step's first attempt was dispatched.  ``step_start_s`` when the
    table has it; for tables written before it existed, the earliest attempt start
    (``sim_time_s − step_seconds``) among the step's rows."""
    if "step_start_s" in steps.columns:
        return steps["step_start_s"].astype(float)
    attempt_start = steps["sim_time_s"] - steps["step_seconds"]
    return attempt_start.groupby([steps["run"], steps["step"]]).transform("min")


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
