"""What every figure family shares: saving, time units, stacked bars, one-run lookup."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from fleetsim.analysis.load import RunSet
from fleetsim.errors import FleetsimInputError

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


def _time_unit(horizon_s: float) -> tuple[str, float]:
    if horizon_s > 3 * 3600:
        return "h", 3600.0
    if horizon_s > 180:
        return "min", 60.0
    return "s", 1.0


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
