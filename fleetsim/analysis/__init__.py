"""Wall-clock convergence analysis of run directories (pandas in, pandas and matplotlib out).

from fleetsim.analysis import load_runs, time_to_accuracy_table, write_report, compare_runs
runs = load_runs("runs/sweeps/policies")  # a run directory, a sweep folder, a glob or a list
time_to_accuracy_table(runs, [0.6, 0.8], by="protocol.perturbations_per_device")
"""

from fleetsim.analysis.load import RunSet, load_run, load_runs
from fleetsim.analysis.metrics import (
    breakdown_shares,
    step_breakdown,
    time_to_accuracy,
    time_to_accuracy_runs,
    time_to_accuracy_table,
    time_to_steps_runs,
    time_to_steps_table,
    utilisation,
    work_spans,
)
from fleetsim.analysis.plots import (
    breakdown_figure,
    convergence_figure,
    device_spans,
    grouped_breakdown_figure,
    time_to_accuracy_figure,
    timeline_figure,
    trace_availability_spans,
    utilisation_figure,
)
from fleetsim.analysis.report import compare_runs, comparison_table, write_report

__all__ = [
    "RunSet",
    "breakdown_figure",
    "breakdown_shares",
    "compare_runs",
    "comparison_table",
    "convergence_figure",
    "device_spans",
    "grouped_breakdown_figure",
    "load_run",
    "load_runs",
    "step_breakdown",
    "time_to_accuracy",
    "time_to_accuracy_runs",
    "time_to_accuracy_figure",
    "time_to_accuracy_table",
    "time_to_steps_runs",
    "time_to_steps_table",
    "timeline_figure",
    "trace_availability_spans",
    "utilisation",
    "utilisation_figure",
    "work_spans",
    "write_report",
]
