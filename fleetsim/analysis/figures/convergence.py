"""Convergence figures: accuracy / loss / progress against simulated time, and a run
directory's own convergence.png (time to accuracy: ``time_to_accuracy.py``)."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from fleetsim.analysis.figures.common import _time_unit, group_words, save_figure, titled
from fleetsim.analysis.load import RunSet
from fleetsim.analysis.metrics import (
    group_labels,
)
from fleetsim.errors import FleetsimInputError

X_AXES = {
    "hours": "simulated wall-clock time (h)",
    "minutes": "simulated wall-clock time (min)",
    "seconds": "simulated wall-clock time (s)",
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


def _with_initial_evaluation(steps: pd.DataFrame, summary: pd.Series) -> pd.DataFrame:
    """``steps`` with the initial model's evaluation (summary.json ``initial_accuracy`` /
    ``initial_eval_loss``, taken before the first step) as a first row at t = 0 — an
    evaluation row like a ``protocol.eval_every_s`` grid's (``attempt`` −1, not committed, no
    work) — unless the table has an evaluated row at t = 0 already (a grid run's) or the
    summary has none (systems-only runs, runs written before issue 24)."""
    accuracy = pd.to_numeric(pd.Series([summary.get("initial_accuracy")]), errors="coerce")[0]
    if not np.isfinite(accuracy):
        return steps
    if ((steps["sim_time_s"] <= 0) & steps["accuracy"].notna()).any():
        return steps
    loss = pd.to_numeric(pd.Series([summary.get("initial_eval_loss")]), errors="coerce")[0]
    row = {column: np.nan for column in steps.columns}
    row.update({
        "run": summary["run"], "sim_time_s": 0.0, "round": 0, "step": 0, "attempt": -1,
        "committed": False, "devices": 0, "perturbations": 0, "bytes_up": 0,
        "bytes_down": 0, "step_seconds": 0.0, "accuracy": float(accuracy),
        "eval_loss": float(loss),
    })
    first = pd.DataFrame([row], columns=list(steps.columns)).astype(
        {c: steps[c].dtype for c in ("committed", "attempt") if c in steps.columns})
    if not len(steps):
        return first
    # one block per dtype again (a concat of many columns leaves a fragmented frame)
    return pd.concat([first, steps], ignore_index=True).copy()


#: seconds per unit of each simulated-time x axis
TIME_AXES = {"hours": 3600.0, "minutes": 60.0, "seconds": 1.0}


def time_axis_for(horizon_s: float) -> str:
    """The simulated-time x axis that reads best for runs ending by ``horizon_s``
    (seconds): hours beyond 3 h, minutes beyond 3 min, else seconds (the units the device
    timeline uses), so a one-minute run is not drawn on ticks of 0.0025 h."""
    unit, _ = _time_unit(float(horizon_s))
    return {"h": "hours", "min": "minutes", "s": "seconds"}[unit]


def progress_frame(runset: RunSet, run: str) -> pd.DataFrame:
    """One run's step rows in time order with every x axis of :data:`X_AXES` as a column,
    starting with the initial model's evaluation at t = 0 where the run recorded one
    (:func:`_with_initial_evaluation`)."""
    summary = runset.summary[runset.summary["run"] == run].iloc[0]
    steps = _with_initial_evaluation(runset.steps[runset.steps["run"] == run], summary)
    steps = steps.sort_values(["sim_time_s", "step", "attempt"], kind="stable")
    committed = steps["committed"].to_numpy(dtype=bool)
    frame = steps.assign(
        hours=steps["sim_time_s"] / 3600.0,
        minutes=steps["sim_time_s"] / 60.0,
        seconds=steps["sim_time_s"],
        steps=np.cumsum(committed),
        perturbations=np.cumsum(np.where(committed, steps["perturbations"], 0)),
        bytes=np.cumsum(steps["bytes_up"] + steps["bytes_down"]) / 1e6,
    )
    if "energy_j" in steps.columns:  # a recorder that logs per-row energy is used directly
        frame["energy"] = np.cumsum(steps["energy_j"].fillna(0.0)) / 1e3
    else:
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


#: how the band around a group's median is drawn (quantiles over the group's runs)
BAND_QUANTILES = (0.25, 0.75)
_TARGET_STYLES = (":", "--", "-.", (0, (1, 4)), (0, (6, 2, 1, 2)))


def _metric_points(frame: pd.DataFrame, metric: str, x: str) -> tuple[np.ndarray, np.ndarray]:
    """(x, y) of one run's ``metric``: committed steps for ``steps``, the committed rows'
    training loss for ``loss``, every evaluated row (the t = 0 evaluation included) else."""
    if metric == "steps":
        points = frame[frame["committed"]]
        if not len(points):
            return np.array([], dtype=float), np.array([], dtype=float)
        # no step is committed at t = 0: the progress curve starts there like accuracy's
        return (np.concatenate([[0.0], points[x].to_numpy(dtype=float)]),
                np.concatenate([[0.0], points["steps"].to_numpy(dtype=float)]))
    if metric == "loss":
        points = frame[frame["committed"] & frame["loss"].notna()]
    else:
        points = frame[frame[metric].notna()]
    return points[x].to_numpy(dtype=float), points[metric].to_numpy(dtype=float)


def _held_to_end(xs: np.ndarray, ys: np.ndarray, end: float) -> tuple[np.ndarray, np.ndarray]:
    """A step curve extended to ``end`` (same unit as ``xs``) with its last value, when the
    run ended after its last point."""
    if len(xs) and math.isfinite(end) and end > float(xs[-1]):
        return np.append(xs, end), np.append(ys, ys[-1])
    return xs, ys


def median_band(
    curves: Sequence[tuple[np.ndarray, np.ndarray]],
    quantiles: tuple[float, float] = BAND_QUANTILES,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """The median and a quantile band over several runs' curves on one grid.

    ``curves``: per run (x, y), x non-decreasing.  The grid is the union of every run's x.
    At a grid point each run's value is its last observation at or before it (a run's
    accuracy at time t is that of its last evaluation; nothing is interpolated between
    evaluations) and a run counts only up to its own last x (no run is extended past its
    end).  Points where fewer than half of the runs count are left out, so the median is
    over at least half of the group.  Returns ``(grid, median, low, high)`` with ``low``/
    ``high`` the ``quantiles`` (default the interquartile range; ``numpy.nanquantile``,
    linear).  Units: those of the curves."""
    kept = [(np.asarray(cx, float), np.asarray(cy, float)) for cx, cy in curves if len(cx)]
    if not kept:
        empty = np.array([], dtype=float)
        return empty, empty, empty, empty
    grid = np.unique(np.concatenate([cx for cx, _ in kept]))
    values = np.full((len(kept), len(grid)), np.nan)
    for row, (cx, cy) in enumerate(kept):
        index = np.searchsorted(cx, grid, side="right") - 1
        inside = (index >= 0) & (grid <= cx[-1])
        values[row, inside] = cy[index[inside]]
    counted = np.isfinite(values).sum(axis=0)
    keep = counted * 2 >= len(kept)
    grid, values = grid[keep], values[:, keep]
    if not len(grid):
        empty = np.array([], dtype=float)
        return empty, empty, empty, empty
    median = np.nanmedian(values, axis=0)
    low = np.nanquantile(values, quantiles[0], axis=0)
    high = np.nanquantile(values, quantiles[1], axis=0)
    return grid, median, low, high


def _group_methods(runset: RunSet, members: Sequence[str]) -> list[str]:
    if "method" not in runset.summary.columns:
        return []
    rows = runset.summary[runset.summary["run"].isin(members)]
    return [m for m in rows["method"] if isinstance(m, str)]


def set_log_time(ax, xs: Sequence[float], axis: str = "x") -> None:
    """A symmetric-log time axis (``symlog``): logarithmic from the smallest positive time
    drawn, linear below it, so that t = 0 (the initial evaluation) stays on the axis."""
    positive = [float(v) for v in xs if np.isfinite(v) and v > 0]
    threshold = min(positive) if positive else 1.0
    if axis == "x":
        ax.set_xscale("symlog", linthresh=threshold)
    else:
        ax.set_yscale("symlog", linthresh=threshold)


def convergence_figure(
    runset: RunSet,
    x: str = "hours",
    by: str | None = None,
    metrics: Sequence[str] | None = None,
    targets: Sequence[float] = (),
    path: Path | str | None = None,
    ends: Mapping[str, float] | None = None,
    log_time: bool = False,
    formats: Sequence[str] = ("png",),
    title: str | None = None,
) -> Figure:
    """Accuracy / loss (or committed steps for systems-only runs) against ``x``.

    One curve per group of runs (the values of ``by``, a summary or scenario key; each run
    is its own group when None).  A group of one run draws that run (line gid: the run
    id; drawn as steps: a value holds until the next evaluation); a group of several runs
    (seeds of one configuration) draws their median on the
    union of their x values with the interquartile range as a band (:func:`median_band`;
    line gid ``median:<group>``, band gid ``band:<group>``), never one line per seed.
    Legend entries are in words (:func:`~fleetsim.analysis.figures.common.group_words`)
    with the number of runs.  Curves start at t = 0 (the initial model's evaluation every
    run with numerics takes before its first step; committed steps start at 0).
    ``targets`` draws horizontal accuracy lines labelled "target 0.7" in the legend
    (gid ``target``).  Panels share their x range.  ``log_time``: a symmetric-log x axis
    (:func:`set_log_time`).  The title names the metrics and the model(s)
    (:func:`~fleetsim.analysis.figures.common.models_line`); ``title`` replaces its first
    line.

    ``ends`` (run id → simulated seconds at its end) marks where each run stopped, for a
    comparison whose runs end at different simulated times (issue 23, equal horizons): a
    dashed vertical line in the run's colour on a simulated-time axis, an ✕ at the run's last
    point on the others (artist gid ``end:<run>``).

    ``metrics`` defaults to accuracy and loss when any run evaluated accuracy, else
    committed steps.  Saved to ``path`` in each of ``formats``."""
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
    raw_group = dict(zip(labels.astype(str), labels))
    members = {g: [r for r in runset.runs if run_group[r] == g] for g in groups}

    figure = Figure(figsize=(6.0 * len(metrics), 4.6), layout="constrained")
    axes = figure.subplots(1, len(metrics), squeeze=False, sharex=True)[0]
    frames = {run: progress_frame(runset, run) for run in runset.runs}
    drawn_x: list[float] = []
    for ax, metric in zip(axes, metrics):
        any_curve = False
        for group in groups:
            runs = members[group]
            n = len(runs)
            words = group_words(by, raw_group[group], _group_methods(runset, runs))
            curves = {run: _metric_points(frames[run], metric, x) for run in runs}
            marker = "o" if metric == "accuracy" else None
            if n == 1:
                cx, cy = curves[runs[0]]
                if not len(cx):
                    continue
                # held until the next evaluation, like a group's median
                line = ax.plot(cx, cy, color=colours[group], drawstyle="steps-post",
                               marker=marker if len(cx) < 60 else None, markersize=3,
                               linewidth=1.2, label=words)[0]
                line.set_gid(runs[0])
            else:
                if x in TIME_AXES:
                    # a run counts with its last value up to its own end, not only up to
                    # its last row: else the median dropped at the end as runs fell out
                    ends_s = dict(zip(runset.summary["run"],
                                      runset.summary["simulated_seconds"].astype(float)))
                    curves = {run: _held_to_end(cx, cy, ends_s.get(run, math.nan) / TIME_AXES[x])
                              for run, (cx, cy) in curves.items()}
                grid, median, low, high = median_band(list(curves.values()))
                if not len(grid):
                    continue
                n = sum(1 for cx, _ in curves.values() if len(cx))  # runs with this metric
                band = ax.fill_between(grid, low, high, step="post", color=colours[group],
                                       alpha=0.2, linewidth=0)
                band.set_gid(f"band:{group}")
                band.set_label(f"_band:{group}")
                line = ax.step(grid, median, where="post", color=colours[group],
                               linewidth=1.4,
                               label=f"{words}: median of {n} runs, band: quartiles")[0]
                line.set_gid(f"median:{group}")
                cx = grid
            any_curve = True
            drawn_x.extend(float(v) for v in cx)
            for run in runs:
                if ends is None or run not in ends:
                    continue
                if x in TIME_AXES:
                    ax.axvline(float(ends[run]) / TIME_AXES[x], color=colours[group],
                               linestyle="--",
                               linewidth=0.8, alpha=0.7, gid=f"end:{run}")
                else:
                    rx, ry = curves[run]
                    if len(rx):
                        ax.plot([rx[-1]], [ry[-1]], marker="X", markersize=8,
                                color=colours[group], linestyle="none", gid=f"end:{run}")
        if metric == "accuracy":
            for index, target in enumerate(sorted(targets)):
                ax.axhline(target, color="0.4", linewidth=0.9, gid="target",
                           linestyle=_TARGET_STYLES[index % len(_TARGET_STYLES)],
                           label=f"target {target:g}")
        ax.set_xlabel(X_AXES[x] + (" (symmetric log scale)" if log_time else ""))
        ax.set_ylabel(METRICS[metric])
        ax.grid(alpha=0.3)
        if len(groups) == 1 and (any_curve or (metric == "accuracy" and targets)):
            ax.legend(fontsize=8)
    if len(groups) > 1:
        # Several groups: one legend below the panels.  Inside a panel, four groups' long
        # names and the targets covered the curves they name.
        handles, names = [], []
        for ax in axes:
            for handle, name in zip(*ax.get_legend_handles_labels()):
                if name not in names:
                    handles.append(handle)
                    names.append(name)
        if handles:
            figure.legend(handles, names, fontsize=8, loc="outside lower center",
                          ncol=2 if len(metrics) > 1 else 1, frameon=False)
    if log_time:
        set_log_time(axes[0], drawn_x)
    if drawn_x:
        axes[0].set_xlim(left=0.0)
    heading = title if title is not None else (
        f"{' and '.join(METRICS[m] for m in metrics)} vs {X_AXES[x]}")
    titled(figure, heading, runset.summary)
    return save_figure(figure, path, formats=formats)


def write_run_convergence(run_dir: Path | str, title: str = "") -> Path:
    """``convergence.png`` of one run directory: :func:`convergence_figure` over simulated
    hours (accuracy and training loss; committed steps for a systems-only run), written
    atomically.  ``title`` heads the figure (the runner names the run, protocol, policy,
    seed and models)."""
    import io

    from fleetsim.analysis.load import load_run
    from fleetsim.record.atomic import write_bytes

    run_dir = Path(run_dir)
    # Grouped by the scenario's run name, not the run directory's: the figure must not
    # depend on where the run was written (outputs are byte-identical across hosts).
    figure = convergence_figure(load_run(run_dir), x="hours", by="run.name")
    if title:
        figure.suptitle(title)
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=110, bbox_inches="tight",
                   metadata={"Software": None})
    path = run_dir / "convergence.png"
    write_bytes(path, buffer.getvalue())
    return path
