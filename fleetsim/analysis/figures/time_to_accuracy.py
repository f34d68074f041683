"""Time to accuracy: the median simulated time to each target per group, with its interval,
"not reached (k of n)" marks and each arm's end (issue 23, equal horizons)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from fleetsim.analysis.figures.common import _time_unit, group_words, save_figure, titled
from fleetsim.analysis.figures.convergence import set_log_time


def time_to_accuracy_figure(
    table: pd.DataFrame,
    by: str,
    target_labels: dict[float, str] | None = None,
    path: Path | str | None = None,
    ends: Mapping[object, float] | None = None,
    log_time: bool = False,
    formats: Sequence[str] = ("png",),
    summary: pd.DataFrame | None = None,
) -> Figure:
    """Median time to each target (s, min or h by scale) from
    :func:`~fleetsim.analysis.metrics.time_to_accuracy_table` (non-reaching runs
    censored), one line per group of ``by`` (legend in words), its interval as error bars.

    Nothing is clipped: the time axis reaches above every finite median and interval end.
    A target whose median is not reached (fewer than half of the group's runs got there)
    is an open marker on the axis's top edge annotated "not reached (k of n)" (gid
    ``not_reached:<group>``); an interval unbounded above (typical with a few seeds: the
    log-log band never falls below one half) is an open triangle on the top edge instead
    of an upper bar (gid ``unbounded:<group>``).  ``target_labels`` renames the x ticks.
    ``ends`` (group → the earliest simulated end of its runs, seconds) marks where each
    group's runs stopped, a dashed horizontal line in its colour (gid ``end:<group>``): no
    time beyond it can be reached by that group (issue 23, unequal horizons).
    ``log_time``: a symmetric-log time axis.  ``summary`` (the runs' summary rows): the
    models line of the title and the methods of protocol groups."""
    figure = Figure(figsize=(7.5, 4.8), layout="constrained")
    ax = figure.subplots()
    targets = sorted(table["target"].unique())
    finite = pd.concat([table["ci_high_s"], table["ci_low_s"], table["median_s"]])
    finite = finite.replace([np.inf, -np.inf], np.nan).dropna()
    highest = float(finite.max()) if len(finite) else 0.0
    if ends:
        highest = max(highest, max(float(e) for e in ends.values()))
    unit, scale = _time_unit(highest)
    top = highest / scale * 1.12 if highest > 0 else 1.0
    positions = {t: i for i, t in enumerate(targets)}
    plotted: list[float] = []
    for index, group in enumerate(list(dict.fromkeys(table[by]))):
        part = table[table[by] == group].sort_values("target")
        methods: list[str] = []
        if summary is not None and "method" in summary.columns and by in summary.columns:
            methods = list(summary.loc[summary[by].astype(str) == str(group), "method"])
        words = group_words(by, group, methods)
        x = np.array([positions[t] for t in part["target"]], dtype=float)
        median = part["median_s"].to_numpy(dtype=float) / scale
        not_reached = np.isinf(median)
        median[not_reached] = np.nan
        low = part["ci_low_s"].to_numpy(dtype=float) / scale
        high = part["ci_high_s"].to_numpy(dtype=float) / scale
        unbounded = np.isinf(high) & np.isfinite(median)
        high = np.where(np.isinf(high), median, high)
        errors = np.vstack([np.nan_to_num(median - low), np.nan_to_num(high - median)])
        colour = f"C{index % 10}"
        container = ax.errorbar(x, median, yerr=errors, marker="o", capsize=3, color=colour,
                                label=words)
        container.lines[0].set_gid(str(group))
        plotted.extend(float(v) for v in np.concatenate([median, low, high]) if np.isfinite(v))
        if unbounded.any():
            ax.plot(x[unbounded], np.full(unbounded.sum(), top), "^", color=colour, mfc="none",
                    ms=6, clip_on=False, gid=f"unbounded:{group}",
                    label=f"{words}: interval unbounded above")
        if not_reached.any():
            reached = part["reached"].to_numpy()[not_reached]
            runs = part["runs"].to_numpy()[not_reached]
            ax.plot(x[not_reached], np.full(not_reached.sum(), top), "o", color=colour,
                    mfc="none", ms=7, clip_on=False, gid=f"not_reached:{group}",
                    label=f"{words}: median not reached")
            for xi, k, n in zip(x[not_reached], reached, runs):
                ax.annotate(f"not reached ({int(k)} of {int(n)})", (xi, top),
                            textcoords="offset points", xytext=(0, -12 - 9 * index),
                            ha="center",
                            fontsize=7, color=colour, gid=f"not_reached_text:{group}")
        if ends is not None and group in ends:
            ax.axhline(float(ends[group]) / scale, color=colour, linestyle="--", linewidth=0.8,
                       alpha=0.7, gid=f"end:{group}", label=f"{words}: runs end")
    if log_time:
        set_log_time(ax, plotted, axis="y")
        ax.set_ylim(bottom=0.0, top=top * 1.5)
    else:
        ax.set_ylim(bottom=0.0, top=top)
    ax.set_xticks(range(len(targets)))
    ax.set_xticklabels([(target_labels or {}).get(t, f"{t:.0%}") for t in targets])
    ax.set_xlabel("accuracy target")
    scale_words = " (symmetric log scale)" if log_time else ""
    ax.set_ylabel(f"median simulated time to reach ({unit}){scale_words}")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    heading = "median simulated time to each accuracy target"
    if summary is not None:
        titled(figure, heading, summary)
    else:
        figure.suptitle(heading, fontsize=11)
    return save_figure(figure, path, formats=formats)
