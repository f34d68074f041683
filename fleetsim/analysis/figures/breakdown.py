"""Where time went: device utilisation shares and the per-step critical-path breakdown."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from fleetsim.analysis.figures.common import (
    _PART_COLOURS,
    PART_WORDS,
    _stacked_bars,
    _time_unit,
    group_words,
    save_figure,
    titled,
)
from fleetsim.analysis.metrics import (
    BREAKDOWN_PARTS,
    UTILISATION_SHARES,
)


def utilisation_figure(
    table: pd.DataFrame,
    path: Path | str | None = None,
    formats: Sequence[str] = ("png",),
    summary: pd.DataFrame | None = None,
) -> Figure:
    """Stacked share bars of :func:`~fleetsim.analysis.metrics.utilisation` output, in
    percent of device-time: one panel per level (fleet, phone model, backend; shared
    0–100 % x range), one bar per group (per run and group when the table holds several
    runs).  ``summary`` (the runs' summary rows) names the model(s) in the title."""
    levels = list(dict.fromkeys(table["level"]))
    several_runs = table["run"].nunique() > 1
    heights = [max(1, int((table["level"] == lv).sum())) for lv in levels]
    figure = Figure(
        figsize=(9.0, 1.0 + 0.32 * sum(heights) + 0.6 * len(levels)), layout="constrained"
    )
    axes = figure.subplots(len(levels), 1, squeeze=False, height_ratios=heights,
                           sharex=True)[:, 0]
    for ax, level in zip(axes, levels):
        part = table[table["level"] == level]
        labels = [
            f"{r}: {g}" if several_runs else str(g) for r, g in zip(part["run"], part["group"])
        ]
        _stacked_bars(ax, labels, part, UTILISATION_SHARES)
        ax.set_title(f"share of device-time, per {level.replace('_', ' ')}", fontsize=10)
    axes[-1].set_xlabel("share of device-time (%)")
    handles, labels = axes[0].get_legend_handles_labels()
    figure.legend(
        handles,
        labels,
        ncol=len(UTILISATION_SHARES),
        fontsize=8,
        loc="outside lower center",
        frameon=False,
    )
    if summary is not None:
        titled(figure, "where device-time went", summary)
    return save_figure(figure, path, formats=formats)


MAX_STEP_BARS = 80

# Space above the tallest stacked bar, as a fraction of it.  Zero-height parts stacked on
# top (no variance repeats, say) put matplotlib's sticky edge at the bar's top, so the
# autoscaled axis ended exactly there and the tallest bars read as cut off.
_HEADROOM = 0.06


def _headroom(ax, tallest: float) -> None:
    """Set the y range to 0 … ``tallest`` plus :data:`_HEADROOM`, so no bar touches the
    frame (``tallest`` in the axis' units; nothing is changed when it is not positive)."""
    if np.isfinite(tallest) and tallest > 0:
        ax.set_ylim(0.0, tallest * (1.0 + _HEADROOM))



def breakdown_figure(
    breakdown: pd.DataFrame,
    path: Path | str | None = None,
    formats: Sequence[str] = ("png",),
    summary: pd.DataFrame | None = None,
) -> Figure:
    """Where step time went: stacked seconds per committed step (one run) and the
    share of all step time per part in percent (one bar per run).  ``summary`` (the runs'
    summary rows) names the model(s) in the title."""
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
                    label=PART_WORDS[part],
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
                labels=[PART_WORDS[part] for part in BREAKDOWN_PARTS],
                colors=[_PART_COLOURS[part] for part in BREAKDOWN_PARTS],
                step="mid",
                linewidth=0,
            )
            for area, part in zip(areas, BREAKDOWN_PARTS):
                area.set_gid(part)
        _headroom(step_ax, float(breakdown[list(BREAKDOWN_PARTS)].sum(axis=1).max()) / scale)
        step_ax.set_xlabel("server step")
        step_ax.set_ylabel(f"simulated time ({unit})")
        handles, labels = step_ax.get_legend_handles_labels()
        figure.legend(
            handles, labels, fontsize=8, ncol=len(labels), loc="outside lower center",
        frameon=False
        )
        step_ax.set_title("time per committed step", fontsize=10)
    totals = breakdown.groupby("run", sort=True)[["total_s", *BREAKDOWN_PARTS]].sum()
    shares = totals[list(BREAKDOWN_PARTS)].div(
        totals["total_s"].where(totals["total_s"] > 0), axis=0
    )
    _stacked_bars(share_ax, [str(r) for r in shares.index], shares.reset_index(), BREAKDOWN_PARTS)
    share_ax.set_title("share of all step time", fontsize=10)
    share_ax.set_xlabel("share of step time (%)")
    if step_ax is None:
        share_ax.legend(fontsize=8, ncol=len(BREAKDOWN_PARTS))
    if summary is not None:
        titled(figure, "where the time of a step went", summary)
    return save_figure(figure, path, formats=formats)


def grouped_breakdown_figure(
    breakdown: pd.DataFrame,
    group_of_run: dict[str, object],
    by: str,
    path: Path | str | None = None,
    formats: Sequence[str] = ("png",),
    summary: pd.DataFrame | None = None,
) -> Figure:
    """Mean seconds per committed step, stacked by part, one bar per group of runs (named
    in words: :func:`~fleetsim.analysis.figures.common.group_words`).  ``summary`` (the
    runs' summary rows) names the model(s) in the title and the methods of protocol
    groups."""
    frame = breakdown.assign(_group=breakdown["run"].map(group_of_run))
    means = frame.groupby("_group", sort=True)[list(BREAKDOWN_PARTS)].mean()
    figure = Figure(figsize=(8.0, 4.5), layout="constrained")
    ax = figure.subplots()
    def methods(group: object) -> list[str]:
        if summary is None or "method" not in summary.columns:
            return []
        runs = [r for r, g in group_of_run.items() if g == group]
        return list(summary.loc[summary["run"].isin(runs), "method"])

    labels = [group_words(by, g, methods(g)) for g in means.index]
    bottom = np.zeros(len(labels))
    for part in BREAKDOWN_PARTS:
        values = means[part].to_numpy(dtype=float)
        bars = ax.bar(labels, values, bottom=bottom, color=_PART_COLOURS[part],
                      label=PART_WORDS[part])
        for bar in bars:
            bar.set_gid(part)
        bottom += values
    _headroom(ax, float(bottom.max()) if len(bottom) else 0.0)
    ax.set_ylabel("mean simulated seconds per committed step")
    handles, labels = ax.get_legend_handles_labels()
    figure.legend(handles, labels, fontsize=8, ncol=3, loc="outside lower center", frameon=False)
    ax.grid(alpha=0.3, axis="y")
    if summary is not None:
        titled(figure, "mean time per committed step", summary)
    return save_figure(figure, path, formats=formats)
