"""Convergence figures: accuracy / loss / progress against simulated time, time to accuracy,
and a run directory's own convergence.png."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from fleetsim.analysis.figures.common import _time_unit, save_figure
from fleetsim.analysis.load import RunSet
from fleetsim.analysis.metrics import (
    group_labels,
)
from fleetsim.errors import FleetsimInputError

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
    ends: Mapping[str, float] | None = None,
) -> Figure:
    """Accuracy / loss (or committed steps for systems-only runs) against ``x``.

    ``ends`` (run id → simulated seconds at its end) marks where each run stopped, for a
    comparison whose runs end at different simulated times (issue 23, equal horizons): a
    dashed vertical line in the run's colour on the hours axis, an ✕ at the run's last
    point on the others (artist gid ``end:<run>``).

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
            if ends is not None and run in ends:
                if x == "hours":
                    ax.axvline(float(ends[run]) / 3600.0, color=colours[group], linestyle="--",
                               linewidth=0.8, alpha=0.7, gid=f"end:{run}")
                else:
                    ax.plot([points[x].iloc[-1]], [y.iloc[-1]], marker="X", markersize=8,
                            color=colours[group], linestyle="none", gid=f"end:{run}")
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


def time_to_accuracy_figure(
    table: pd.DataFrame,
    by: str,
    target_labels: dict[float, str] | None = None,
    path: Path | str | None = None,
    ends: Mapping[object, float] | None = None,
) -> Figure:
    """Median time to each target (s, min or h by scale) from
    :func:`~fleetsim.analysis.metrics.time_to_accuracy_table` (non-reaching runs
    censored), one line per group of ``by``, its interval as error bars.  A target
    whose median is not reached (fewer than half of the group's runs got there)
    leaves a gap; an interval unbounded above (typical with a few seeds: the log-log
    band never falls below one half) has no upper bar, an open triangle above the point
    instead.  ``target_labels`` renames the x ticks.  ``ends`` (group → the earliest
    simulated end of its runs, seconds) marks where each group's runs stopped, a dashed
    horizontal line in its colour (artist gid ``end:<group>``): no time beyond it can be
    reached by that group (issue 23, unequal horizons)."""
    figure = Figure(figsize=(7.5, 4.5), layout="constrained")
    ax = figure.subplots()
    targets = sorted(table["target"].unique())
    finite = pd.concat([table["ci_high_s"], table["median_s"]]).replace(np.inf, np.nan)
    longest = finite.max()
    unit, scale = _time_unit(float(longest) if pd.notna(longest) else 0.0)
    finite_median = table["median_s"].replace(np.inf, np.nan).max()
    top_s = finite_median if pd.notna(finite_median) else longest
    top = (float(top_s) / scale * 1.15) if pd.notna(top_s) and top_s > 0 else 1.0
    if ends:
        top = max(top, max(float(e) for e in ends.values()) / scale * 1.05)
    positions = {t: i for i, t in enumerate(targets)}
    for index, group in enumerate(list(dict.fromkeys(table[by]))):
        part = table[table[by] == group].sort_values("target")
        x = np.array([positions[t] for t in part["target"]], dtype=float)
        median = part["median_s"].to_numpy(dtype=float) / scale
        median[np.isinf(median)] = np.nan
        low = part["ci_low_s"].to_numpy(dtype=float) / scale
        high = part["ci_high_s"].to_numpy(dtype=float) / scale
        unbounded = np.isinf(high) & np.isfinite(median)
        high = np.where(np.isinf(high), median, np.minimum(high, top))
        errors = np.vstack([np.nan_to_num(median - low), np.nan_to_num(high - median)])
        colour = f"C{index % 10}"
        container = ax.errorbar(
            x, median, yerr=errors, marker="o", capsize=3, color=colour, label=f"{by}={group}"
        )
        container.lines[0].set_gid(str(group))
        if unbounded.any():
            ax.plot(x[unbounded], median[unbounded] + 0.03 * top, "^", color=colour,
                    mfc="none", ms=5)
        if ends is not None and group in ends:
            ax.axhline(float(ends[group]) / scale, color=colour, linestyle="--", linewidth=0.8,
                       alpha=0.7, gid=f"end:{group}", label=f"{by}={group}: runs end")
    ax.set_ylim(bottom=0.0, top=top)
    ax.set_xticks(range(len(targets)))
    ax.set_xticklabels([(target_labels or {}).get(t, f"{t:.0%}") for t in targets])
    ax.set_xlabel("accuracy target")
    ax.set_ylabel(f"median simulated time to reach ({unit})")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
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
