"""Figures of runs: convergence curves, device timelines, utilisation, step breakdown.

Figures are built with :class:`matplotlib.figure.Figure` directly (Agg canvas,
no pyplot state), so they are safe in scripts, tests and servers and never
accumulate in a global figure list.  Every function returns the Figure (tests
and notebooks can inspect lines, labels and legends) and saves a PNG when
given ``path``.  Lines and bar collections carry a ``gid``: the run id for
curve lines, the state or part name for timeline spans and breakdown bars.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib.figure import Figure
from matplotlib.patches import Patch

from fleetsim.analysis.load import RunSet
from fleetsim.analysis.metrics import (
    BREAKDOWN_PARTS,
    UTILISATION_SHARES,
    group_labels,
    work_spans,
)
from fleetsim.errors import FleetsimInputError
from fleetsim.rng import stream

X_AXES = {
    "hours": "simulated wall-clock time (h)",
    "steps": "committed steps",
    "perturbations": "perturbations used by committed steps",
    "energy": "device energy (kJ)",
    "bytes": "bytes moved, up + down (MB)",
}
METRICS = {
    "accuracy": "held-out accuracy",
    "loss": "training loss",
    "eval_loss": "held-out loss",
    "steps": "committed steps",
}
TIMELINE_STATES = ("offline", "available", "interrupted", "download", "compute", "upload")
_STATE_COLOURS = {
    "offline": "#d9d9d9",
    "available": "#c7e9c0",
    "interrupted": "#e41a1c",
    "download": "#377eb8",
    "compute": "#ff7f00",
    "upload": "#984ea3",
}
_PART_COLOURS = {
    "download": "#377eb8",
    "compute": "#ff7f00",
    "upload": "#984ea3",
    "straggler_wait": "#e41a1c",
    "variance_repeats": "#ffd92f",
    "other": "#bdbdbd",
    "used": "#4daf4a",
    "wasted": "#e41a1c",
    "idle": "#a6d854",
    "offline": "#d9d9d9",
}


def save_figure(figure: Figure, path: Path | str | None, dpi: int = 110) -> Figure:
    """Write ``figure`` as PNG to ``path`` (when given; parent folders are created)."""
    if path is not None:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        figure.savefig(path, dpi=dpi, bbox_inches="tight")
    return figure


def _cumulative_busy_energy(
    events: pd.DataFrame, devices: pd.DataFrame, horizon_s: float, times: np.ndarray
) -> np.ndarray:
    """Device energy spent up to each of ``times`` (J).

    The devices table holds each device's total energy only, so it is spread
    over that device's busy spans (download, compute, upload events) in
    proportion to their length; a device with energy but no busy span has it
    spread evenly over the run.  The last value equals the devices' total.
    """
    spans = events[events["kind"].isin(("download", "compute", "upload"))]
    busy = spans.groupby("device_id")["duration_s"].sum()
    energy = devices.set_index("device_id")["energy_j"].astype(float)
    starts, ends, rates = [], [], []
    if len(spans):
        span_busy = spans["device_id"].map(busy).to_numpy(dtype=float)
        span_energy = spans["device_id"].map(energy).fillna(0.0).to_numpy(dtype=float)
        duration = spans["duration_s"].to_numpy(dtype=float)
        keep = (duration > 0) & (span_busy > 0)
        ends.append(spans["time_s"].to_numpy(dtype=float)[keep])
        starts.append(ends[-1] - duration[keep])
        rates.append(span_energy[keep] / span_busy[keep])
    without_spans = energy[~energy.index.isin(busy[busy > 0].index)].sum()
    if without_spans > 0 and horizon_s > 0:
        starts.append(np.array([0.0]))
        ends.append(np.array([horizon_s]))
        rates.append(np.array([without_spans / horizon_s]))
    if not starts:
        return np.zeros_like(times, dtype=float)
    start, end, rate = np.concatenate(starts), np.concatenate(ends), np.concatenate(rates)
    # Piecewise-linear integral of the summed power: rate changes at span ends.
    breaks = np.concatenate([start, end])
    slope_change = np.concatenate([rate, -rate])
    order = np.argsort(breaks, kind="stable")
    breaks, slope_change = breaks[order], slope_change[order]
    slopes = np.cumsum(slope_change)
    integral = np.concatenate([[0.0], np.cumsum(slopes[:-1] * np.diff(breaks))])
    return np.interp(times, breaks, integral, left=0.0)


def progress_frame(runset: RunSet, run: str) -> pd.DataFrame:
    """One run's step rows in time order with every x axis of :data:`X_AXES` as a column."""
    steps = runset.steps[runset.steps["run"] == run].sort_values(
        ["sim_time_s", "step", "attempt"], kind="stable"
    )
    committed = steps["committed"].to_numpy(dtype=bool)
    frame = steps.assign(
        hours=steps["sim_time_s"] / 3600.0,
        steps=np.cumsum(committed),
        perturbations=np.cumsum(np.where(committed, steps["perturbations"], 0)),
        bytes=np.cumsum(steps["bytes_up"] + steps["bytes_down"]) / 1e6,
    )
    if "energy_j" in steps.columns:  # a recorder that logs per-row energy is used directly
        frame["energy"] = np.cumsum(steps["energy_j"].fillna(0.0)) / 1e3
    else:
        summary = runset.summary[runset.summary["run"] == run].iloc[0]
        frame["energy"] = (
            _cumulative_busy_energy(
                runset.events[runset.events["run"] == run],
                runset.devices[runset.devices["run"] == run],
                float(summary["simulated_seconds"]),
                frame["sim_time_s"].to_numpy(dtype=float),
            )
            / 1e3
        )
    return frame


def has_accuracy(runset: RunSet) -> bool:
    return bool(runset.steps["accuracy"].notna().any())


def convergence_figure(
    runset: RunSet,
    x: str = "hours",
    by: str | None = None,
    metrics: Sequence[str] | None = None,
    targets: Sequence[float] = (),
    path: Path | str | None = None,
) -> Figure:
    """Accuracy / loss (or committed steps for systems-only runs) against ``x``.

    One line per run, one colour per value of ``by`` (a summary or scenario
    key; each run is its own group when None); the legend has one entry per
    group.  ``metrics`` defaults to accuracy and loss when any run evaluated
    accuracy, else committed steps.  ``targets`` draws horizontal accuracy lines.
    """
    if x not in X_AXES:
        raise FleetsimInputError(f"x axis {x!r} unknown; allowed: {', '.join(X_AXES)}")
    if metrics is None:
        metrics = ("accuracy", "loss") if has_accuracy(runset) else ("steps",)
    for metric in metrics:
        if metric not in METRICS:
            raise FleetsimInputError(f"metric {metric!r} unknown; allowed: {', '.join(METRICS)}")
    labels = group_labels(runset, by)
    groups = list(dict.fromkeys(labels.astype(str)))
    colours = {g: f"C{i % 10}" for i, g in enumerate(groups)}
    run_group = dict(zip(runset.summary["run"], labels.astype(str)))
    counts = labels.astype(str).value_counts()

    figure = Figure(figsize=(6.0 * len(metrics), 4.2), layout="constrained")
    axes = figure.subplots(1, len(metrics), squeeze=False)[0]
    frames = {run: progress_frame(runset, run) for run in runset.runs}
    for ax, metric in zip(axes, metrics):
        labelled: set[str] = set()
        for run, frame in frames.items():
            group = run_group[run]
            if metric == "steps":
                points = frame[frame["committed"]]
                y = points["steps"]
            elif metric == "loss":
                points = frame[frame["committed"] & frame["loss"].notna()]
                y = points["loss"]
            else:
                points = frame[frame[metric].notna()]
                y = points[metric]
            if points.empty:
                continue
            n = int(counts[group])
            key = f"{by}={group}" if by is not None else group
            label = f"{key} ({n} runs)" if n > 1 else key
            line = ax.plot(
                points[x],
                y,
                color=colours[group],
                marker="o" if metric == "accuracy" and len(points) < 60 else None,
                markersize=3,
                linewidth=1.2,
                alpha=0.9 if n == 1 else 0.6,
                label=label if group not in labelled else f"_{label}",
            )[0]
            line.set_gid(run)
            labelled.add(group)
        if metric == "accuracy":
            for target in targets:
                ax.axhline(target, color="0.5", linestyle=":", linewidth=0.8, gid="target")
        ax.set_xlabel(X_AXES[x])
        ax.set_ylabel(METRICS[metric])
        ax.grid(alpha=0.3)
        if labelled:
            ax.legend(fontsize=8)
    title_by = f" by {by}" if by is not None else ""
    figure.suptitle(f"{' and '.join(METRICS[m] for m in metrics)} vs {X_AXES[x]}{title_by}")
    return save_figure(figure, path)


def _availability_spans(
    device_events: pd.DataFrame, horizon_s: float
) -> list[tuple[str, float, float]]:
    """(state, start, end) spans of ``offline`` / ``available`` for one device.

    Online/offline events mark transitions; before the first one the device is
    taken to be in the opposite state (a first ``online`` means it was offline
    since the start).  A device without transitions was available throughout.
    """
    transitions = device_events[device_events["kind"].isin(("online", "offline"))]
    spans = []
    online = transitions.empty or transitions["kind"].iloc[0] == "offline"
    since = 0.0
    for kind, time in zip(transitions["kind"], transitions["time_s"]):
        now_online = kind == "online"
        if now_online == online:
            continue
        spans.append(("available" if online else "offline", since, float(time)))
        online, since = now_online, float(time)
    spans.append(("available" if online else "offline", since, horizon_s))
    return [s for s in spans if s[2] > s[1]]


def device_spans(
    events: pd.DataFrame,
    horizon_s: float | None = None,
    always_online: bool = False,
    availability: pd.DataFrame | None = None,
) -> pd.DataFrame:
    """Per device with events: ``device_id``, ``state``, ``start_s``, ``end_s``.

    ``download``/``compute``/``upload`` are the contiguous work spans of
    :func:`~fleetsim.analysis.metrics.work_spans`; ``interrupted`` spans are the
    pauses of suspended tasks (``resumed`` events carry the pause length); an
    interruption after which the task never resumed (lost work, device gone) is
    an ``interruption`` row with ``start_s == end_s``.  ``offline``/``available``
    come from ``online``/``offline`` transitions when the run recorded them; a
    run without transitions shows ``available`` throughout only when
    ``always_online`` (else availability is left out: it is unknown).
    ``availability`` (rows of ``device_id``, ``state``, ``start_s``, ``end_s``,
    e.g. from :func:`trace_availability_spans`) replaces the event-derived
    availability spans when given.
    """
    columns = ["device_id", "state", "start_s", "end_s"]
    device_events = events[events["device_id"] >= 0].sort_values(["seq"], kind="stable")
    if horizon_s is None:
        horizon_s = float(events["time_s"].max()) if len(events) else 0.0
    transitions_known = bool(device_events["kind"].isin(("online", "offline")).any())
    rows: list[tuple[int, str, float, float]] = []
    for device, frame in device_events.groupby("device_id", sort=True):
        if availability is None and (transitions_known or always_online):
            for state, start, end in _availability_spans(frame, horizon_s):
                rows.append((int(device), state, start, end))
        resumed = frame[(frame["kind"] == "resumed") & (frame["duration_s"] > 0)]
        for time, pause in zip(resumed["time_s"], resumed["duration_s"]):
            rows.append((int(device), "interrupted", float(time) - float(pause), float(time)))
        interrupted = frame[frame["kind"] == "interrupted"]
        for seq, step, time in zip(interrupted["seq"], interrupted["step"], interrupted["time_s"]):
            later = frame[(frame["seq"] > seq) & (frame["step"] == step)]
            if not (later["kind"] == "resumed").any():
                rows.append((int(device), "interruption", float(time), float(time)))
    spans = work_spans(device_events)
    work = pd.DataFrame(
        {
            "device_id": spans["device_id"].astype(int),
            "state": spans["kind"],
            "start_s": spans["start_s"],
            "end_s": spans["end_s"],
        }
    )
    frames = [pd.DataFrame(rows, columns=columns), work]
    if availability is not None:
        frames.append(availability[columns])
    out = pd.concat(frames, ignore_index=True)
    return out.sort_values(["device_id", "start_s"], kind="stable").reset_index(drop=True)


def trace_availability_spans(
    scenario: dict, run_dir: Path, device_ids: Sequence[int], horizon_s: float
) -> pd.DataFrame | None:
    """``available`` / ``offline`` spans of ``device_ids`` rebuilt from the run's
    availability trace (the same seeded trace the run used: same traces
    section, fleet size, seed and horizon), or None when it cannot be rebuilt
    (e.g. a trace file whose relative path does not resolve from the run
    directory)."""
    from pydantic import ValidationError

    from fleetsim.errors import FleetsimInputError as InputError
    from fleetsim.traces.config import TracesConfig
    from fleetsim.traces.fleet_builder import build_availability

    try:
        config = TracesConfig.model_validate(scenario["traces"])
        size = int(scenario["fleet"]["size"])
        seed = int(scenario["run"]["seed"])
        run_horizon = float(scenario["run"]["max_sim_hours"]) * 3600.0
        trace = build_availability(config, size, seed, run_horizon, Path(run_dir))
    except (InputError, ValidationError, KeyError, TypeError, ValueError, OSError):
        return None
    rows = []
    for device in device_ids:
        ids = np.array([device], dtype=np.int64)
        t = 0.0
        while t < horizon_s:
            start = float(trace.next_start(ids, t)[0])
            if start > t:
                rows.append((int(device), "offline", t, min(start, horizon_s)))
            if not math.isfinite(start) or start >= horizon_s:
                break
            end = float(trace.window_end(ids, start)[0])
            rows.append((int(device), "available", start, min(end, horizon_s)))
            if end <= start:  # a zero-length window: step past it
                end = float(np.nextafter(start, np.inf))
            t = end
    return pd.DataFrame(rows, columns=["device_id", "state", "start_s", "end_s"])


def _time_unit(horizon_s: float) -> tuple[str, float]:
    if horizon_s > 3 * 3600:
        return "h", 3600.0
    if horizon_s > 180:
        return "min", 60.0
    return "s", 1.0


def sample_devices(events: pd.DataFrame, sample: int, seed: int = 0) -> list[int]:
    """Up to ``sample`` device ids among those with events, drawn from the
    ``("analysis", "timeline_sample")`` stream of ``seed`` and sorted."""
    candidates = np.sort(events.loc[events["device_id"] >= 0, "device_id"].unique())
    if candidates.size <= sample:
        return [int(d) for d in candidates]
    chosen = stream(seed, "analysis", "timeline_sample").choice(
        candidates, size=sample, replace=False
    )
    return sorted(int(d) for d in chosen)


def timeline_figure(
    runset: RunSet,
    run: str | None = None,
    device_ids: Sequence[int] | None = None,
    sample: int = 12,
    seed: int = 0,
    time_range_s: tuple[float, float] | None = None,
    path: Path | str | None = None,
) -> Figure:
    """Gantt chart of a sample of devices of one run: offline / available /
    interrupted / download / compute / upload spans over simulated time, with
    step commits as vertical lines (rollbacks dashed)."""
    run = _one_run(runset, run)
    events = runset.events[runset.events["run"] == run]
    summary = runset.summary[runset.summary["run"] == run].iloc[0]
    horizon = float(summary["simulated_seconds"])
    if not math.isfinite(horizon) or horizon <= 0:
        horizon = float(events["time_s"].max()) if len(events) else 1.0
    if device_ids is None:
        device_ids = sample_devices(events, sample, seed)
    device_ids = list(device_ids)
    always_online = str(summary.get("traces.availability.kind", "")) == "always_online"
    recorded = bool(events["kind"].isin(("online", "offline")).any())
    rebuilt = None
    if not (always_online or recorded) and run in runset.scenarios:
        rebuilt = trace_availability_spans(
            runset.scenarios[run], runset.run_dirs[run], device_ids, horizon
        )
    availability_known = always_online or recorded or rebuilt is not None
    spans = device_spans(
        events[events["device_id"].isin(device_ids)],
        horizon,
        always_online=always_online or recorded,
        availability=rebuilt,
    )
    unit, scale = _time_unit(horizon)

    figure = Figure(figsize=(11.0, 1.2 + 0.38 * max(len(device_ids), 1)), layout="constrained")
    ax = figure.subplots()
    for row, device in enumerate(device_ids):
        mine = spans[spans["device_id"] == device]
        for state in TIMELINE_STATES:
            part = mine[mine["state"] == state]
            if part.empty:
                continue
            # Background states fill the row; work spans are drawn thinner on top.
            height = 0.8 if state in ("offline", "available") else 0.5
            collection = ax.broken_barh(
                list(zip(part["start_s"] / scale, (part["end_s"] - part["start_s"]) / scale)),
                (row - height / 2, height),
                facecolors=_STATE_COLOURS[state],
                edgecolor="none",
            )
            collection.set_gid(state)
            collection.set_label(f"_{state}")
        lost = mine[mine["state"] == "interruption"]
        if len(lost):
            ax.plot(
                lost["start_s"] / scale,
                np.full(len(lost), row),
                linestyle="none",
                marker="x",
                color=_STATE_COLOURS["interrupted"],
                gid="interruption",
                label="_interruption",
            )
    server = events[events["device_id"] < 0]
    commits = server.loc[server["kind"] == "step_commit", "time_s"].to_numpy(dtype=float)
    if commits.size == 0:  # older recorders: commit times from the steps table
        steps = runset.steps[(runset.steps["run"] == run) & runset.steps["committed"]]
        commits = steps["sim_time_s"].to_numpy(dtype=float)
    rollbacks = server.loc[server["kind"] == "step_rollback", "time_s"].to_numpy(dtype=float)
    top = max(len(device_ids), 1) - 0.5
    if commits.size:
        ax.vlines(
            commits / scale, -0.5, top, colors="0.35", linewidth=0.5, alpha=0.6, gid="step_commit"
        )
    if rollbacks.size:
        ax.vlines(
            rollbacks / scale,
            -0.5,
            top,
            colors="#e41a1c",
            linewidth=0.5,
            linestyles="dashed",
            alpha=0.6,
            gid="step_rollback",
        )
    ax.set_yticks(range(len(device_ids)))
    ax.set_yticklabels([f"device {d}" for d in device_ids], fontsize=8)
    ax.set_ylim(-0.6, top + 0.1)
    if time_range_s is not None:
        ax.set_xlim(time_range_s[0] / scale, time_range_s[1] / scale)
    else:
        ax.set_xlim(0, horizon / scale)
    ax.set_xlabel(f"simulated time ({unit})")
    shown = TIMELINE_STATES if availability_known else TIMELINE_STATES[2:]
    handles = [Patch(color=_STATE_COLOURS[s], label=s) for s in shown]
    handles.append(Patch(color="0.35", label="step commit"))
    if rollbacks.size:
        handles.append(Patch(color="#e41a1c", label="step rollback", fill=False))
    ax.legend(
        handles=handles,
        loc="upper center",
        bbox_to_anchor=(0.5, -0.12 - 0.3 / max(len(device_ids), 1)),
        ncol=len(handles),
        fontsize=8,
        frameon=False,
    )
    note = "" if availability_known else "; availability not recorded, only pauses shown"
    ax.set_title(f"device timelines, {len(device_ids)} sampled devices ({run}){note}")
    return save_figure(figure, path)


def _one_run(runset: RunSet, run: str | None) -> str:
    if run is None:
        if len(runset.runs) != 1:
            raise FleetsimInputError(
                f"this figure shows one run; choose one of: {', '.join(runset.runs)}"
            )
        return runset.runs[0]
    if run not in runset.runs:
        raise FleetsimInputError(f"run {run!r} not loaded; loaded: {', '.join(runset.runs)}")
    return run


def _stacked_bars(ax, labels: list[str], shares: pd.DataFrame, parts: Sequence[str]) -> None:
    left = np.zeros(len(labels))
    for part in parts:
        values = shares[part].fillna(0.0).to_numpy(dtype=float)
        bars = ax.barh(labels, values, left=left, color=_PART_COLOURS[part], label=part)
        for bar in bars:
            bar.set_gid(part)
        left += values
    ax.set_xlim(0, 1)
    ax.invert_yaxis()


def utilisation_figure(table: pd.DataFrame, path: Path | str | None = None) -> Figure:
    """Stacked share bars of :func:`~fleetsim.analysis.metrics.utilisation` output:
    one panel per level (fleet, phone model, backend), one bar per group (per
    run and group when the table holds several runs)."""
    levels = list(dict.fromkeys(table["level"]))
    several_runs = table["run"].nunique() > 1
    heights = [max(1, int((table["level"] == lv).sum())) for lv in levels]
    figure = Figure(
        figsize=(9.0, 1.0 + 0.32 * sum(heights) + 0.6 * len(levels)), layout="constrained"
    )
    axes = figure.subplots(len(levels), 1, squeeze=False, height_ratios=heights)[:, 0]
    for ax, level in zip(axes, levels):
        part = table[table["level"] == level]
        labels = [
            f"{r}: {g}" if several_runs else str(g) for r, g in zip(part["run"], part["group"])
        ]
        _stacked_bars(ax, labels, part, UTILISATION_SHARES)
        ax.set_title(f"share of device-time, per {level.replace('_', ' ')}", fontsize=10)
    axes[-1].set_xlabel("share of device-time")
    handles, labels = axes[0].get_legend_handles_labels()
    figure.legend(
        handles,
        labels,
        ncol=len(UTILISATION_SHARES),
        fontsize=8,
        loc="outside upper center",
        frameon=False,
    )
    return save_figure(figure, path)


MAX_STEP_BARS = 80


def breakdown_figure(breakdown: pd.DataFrame, path: Path | str | None = None) -> Figure:
    """Where step time went: stacked seconds per committed step (one run) and the
    share of all step time per part (one bar per run)."""
    several_runs = breakdown["run"].nunique() > 1
    figure = Figure(figsize=(12.0, 4.2), layout="constrained")
    if several_runs:
        share_ax = figure.subplots()
        step_ax = None
    else:
        step_ax, share_ax = figure.subplots(1, 2, width_ratios=[3, 1.2])
    if step_ax is not None and len(breakdown):
        steps = breakdown["step"].to_numpy()
        bottom = np.zeros(len(breakdown))
        unit, scale = _time_unit(float(breakdown["total_s"].max()))
        if len(breakdown) <= MAX_STEP_BARS:
            for part in BREAKDOWN_PARTS:
                values = breakdown[part].to_numpy(dtype=float) / scale
                bars = step_ax.bar(
                    steps,
                    values,
                    bottom=bottom,
                    width=1.0,
                    color=_PART_COLOURS[part],
                    label=part,
                    linewidth=0,
                )
                for bar in bars:
                    bar.set_gid(part)
                bottom += values
        else:
            # Thousands of bar patches make saving slow; stacked step areas draw the same.
            areas = step_ax.stackplot(
                steps,
                *[breakdown[part].to_numpy(dtype=float) / scale for part in BREAKDOWN_PARTS],
                labels=list(BREAKDOWN_PARTS),
                colors=[_PART_COLOURS[part] for part in BREAKDOWN_PARTS],
                step="mid",
                linewidth=0,
            )
            for area, part in zip(areas, BREAKDOWN_PARTS):
                area.set_gid(part)
        step_ax.set_xlabel("server step")
        step_ax.set_ylabel(f"simulated time ({unit})")
        handles, labels = step_ax.get_legend_handles_labels()
        figure.legend(
            handles, labels, fontsize=8, ncol=len(labels), loc="outside upper center", frameon=False
        )
        step_ax.set_title("time per committed step", fontsize=10)
    totals = breakdown.groupby("run", sort=True)[["total_s", *BREAKDOWN_PARTS]].sum()
    shares = totals[list(BREAKDOWN_PARTS)].div(
        totals["total_s"].where(totals["total_s"] > 0), axis=0
    )
    _stacked_bars(share_ax, [str(r) for r in shares.index], shares.reset_index(), BREAKDOWN_PARTS)
    share_ax.set_title("share of all step time", fontsize=10)
    if step_ax is None:
        share_ax.legend(fontsize=8, ncol=len(BREAKDOWN_PARTS))
    return save_figure(figure, path)


def time_to_accuracy_figure(
    table: pd.DataFrame,
    by: str,
    target_labels: dict[float, str] | None = None,
    path: Path | str | None = None,
) -> Figure:
    """Median time to each target (s, min or h by scale) from
    :func:`~fleetsim.analysis.metrics.time_to_accuracy_table` (non-reaching runs
    censored), one line per group of ``by``, its interval as error bars.  A target
    whose median is not reached (more than half of the group's runs never got there)
    leaves a gap; an unbounded upper interval end is drawn to the top of the axes
    with an open arrow head.  ``target_labels`` renames the x ticks."""
    figure = Figure(figsize=(7.5, 4.5), layout="constrained")
    ax = figure.subplots()
    targets = sorted(table["target"].unique())
    finite = pd.concat([table["ci_high_s"], table["median_s"]]).replace(np.inf, np.nan)
    longest = finite.max()
    unit, scale = _time_unit(float(longest) if pd.notna(longest) else 0.0)
    top = (float(longest) / scale * 1.1) if pd.notna(longest) and longest > 0 else 1.0
    positions = {t: i for i, t in enumerate(targets)}
    for index, group in enumerate(list(dict.fromkeys(table[by]))):
        part = table[table[by] == group].sort_values("target")
        x = np.array([positions[t] for t in part["target"]], dtype=float)
        median = part["median_s"].to_numpy(dtype=float) / scale
        median[np.isinf(median)] = np.nan
        low = part["ci_low_s"].to_numpy(dtype=float) / scale
        high = part["ci_high_s"].to_numpy(dtype=float) / scale
        unbounded = np.isinf(high) & np.isfinite(median)
        high = np.where(np.isinf(high), top, high)
        errors = np.vstack([np.nan_to_num(median - low), np.nan_to_num(high - median)])
        colour = f"C{index % 10}"
        container = ax.errorbar(
            x, median, yerr=errors, marker="o", capsize=3, color=colour, label=f"{by}={group}"
        )
        container.lines[0].set_gid(str(group))
        if unbounded.any():
            ax.plot(x[unbounded], np.full(unbounded.sum(), top), "^", color=colour, mfc="none")
    ax.set_ylim(bottom=0.0, top=top)
    ax.set_xticks(range(len(targets)))
    ax.set_xticklabels([(target_labels or {}).get(t, f"{t:.0%}") for t in targets])
    ax.set_xlabel("accuracy target")
    ax.set_ylabel(f"median simulated time to reach ({unit})")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return save_figure(figure, path)


def grouped_breakdown_figure(
    breakdown: pd.DataFrame,
    group_of_run: dict[str, object],
    by: str,
    path: Path | str | None = None,
) -> Figure:
    """Mean seconds per committed step, stacked by part, one bar per group of runs."""
    frame = breakdown.assign(_group=breakdown["run"].map(group_of_run))
    means = frame.groupby("_group", sort=True)[list(BREAKDOWN_PARTS)].mean()
    figure = Figure(figsize=(8.0, 4.5), layout="constrained")
    ax = figure.subplots()
    labels = [str(g) for g in means.index]
    bottom = np.zeros(len(labels))
    for part in BREAKDOWN_PARTS:
        values = means[part].to_numpy(dtype=float)
        bars = ax.bar(labels, values, bottom=bottom, color=_PART_COLOURS[part], label=part)
        for bar in bars:
            bar.set_gid(part)
        bottom += values
    ax.set_xlabel(by)
    ax.set_ylabel("mean simulated seconds per committed step")
    handles, labels = ax.get_legend_handles_labels()
    figure.legend(handles, labels, fontsize=8, ncol=3, loc="outside upper center", frameon=False)
    ax.grid(alpha=0.3, axis="y")
    return save_figure(figure, path)


def write_run_convergence(run_dir: Path | str, title: str = "") -> Path:
    """``convergence.png`` of one run directory: :func:`convergence_figure` over simulated
    hours (accuracy and training loss; committed steps for a systems-only run), written
    atomically.  ``title`` heads the figure (the runner names the run, protocol, policy,
    seed and models)."""
    import io

    from fleetsim.analysis.load import load_run
    from fleetsim.record.atomic import write_bytes

    run_dir = Path(run_dir)
    figure = convergence_figure(load_run(run_dir), x="hours")
    if title:
        figure.suptitle(title)
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=110, bbox_inches="tight",
                   metadata={"Software": None})
    path = run_dir / "convergence.png"
    write_bytes(path, buffer.getvalue())
    return path
