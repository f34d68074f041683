"""Figures of runs: convergence curves, device timelines, utilisation, step breakdown.

Figures are built with :class:`matplotlib.figure.Figure` directly (Agg canvas,
no pyplot state), so they are safe in scripts, tests and servers and never
accumulate in a global figure list.  Every function returns the Figure (tests
and notebooks can inspect lines, labels and legends) and saves a PNG when
given ``path`` (PNG, or each of ``formats``: png, pdf, svg).  Lines and bar collections
carry a ``gid``: the run id for a one-run curve, ``median:<group>``/``band:<group>`` for a
group of runs, the state or part name for timeline spans and breakdown bars, ``target``
for accuracy targets.

The figures live in :mod:`fleetsim.analysis.figures`, one module per family
(``convergence``, ``timeline``, ``breakdown``); this module gathers them under one name.
"""

from fleetsim.analysis.figures.breakdown import (
    MAX_STEP_BARS,
    breakdown_figure,
    grouped_breakdown_figure,
    utilisation_figure,
)
from fleetsim.analysis.figures.common import FIGURE_FORMATS, save_figure
from fleetsim.analysis.figures.convergence import (
    METRICS,
    X_AXES,
    convergence_figure,
    has_accuracy,
    median_band,
    progress_frame,
    write_run_convergence,
)
from fleetsim.analysis.figures.time_to_accuracy import time_to_accuracy_figure
from fleetsim.analysis.figures.timeline import (
    TIMELINE_STATES,
    device_spans,
    sample_devices,
    timeline_figure,
    trace_availability_spans,
    trace_phone_models,
)

__all__ = [
    "FIGURE_FORMATS",
    "MAX_STEP_BARS",
    "METRICS",
    "TIMELINE_STATES",
    "X_AXES",
    "breakdown_figure",
    "convergence_figure",
    "device_spans",
    "grouped_breakdown_figure",
    "has_accuracy",
    "median_band",
    "progress_frame",
    "sample_devices",
    "save_figure",
    "time_to_accuracy_figure",
    "timeline_figure",
    "trace_availability_spans",
    "trace_phone_models",
    "utilisation_figure",
    "write_run_convergence",
]
