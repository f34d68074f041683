"""Multi-run comparisons, behind ``fleetsim compare RUN_DIR... [--by KEY]``: one table row and
one curve per group of runs, after the study discipline's checks of horizons and
evaluation grids; and the default accuracy targets both the comparison and the one-run
report (:mod:`fleetsim.analysis.report`, which re-exports these names) use."""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

import pandas as pd

from fleetsim.analysis.figures.convergence import time_axis_for
from fleetsim.analysis.load import RunSet, check_key, load_runs
from fleetsim.analysis.metrics import (
    DEFAULT_TARGETS,
    breakdown_shares,
    check_targets,
    group_labels,
    step_breakdown,
    time_to_accuracy_table,
    utilisation,
)
from fleetsim.analysis.plots import (
    convergence_figure,
    has_accuracy,
)
from fleetsim.analysis.stats import mean_confidence_interval
from fleetsim.analysis.tables import markdown_table


def default_targets(runset: RunSet) -> list[float]:
    """The targets named in the runs' ``time_to_target`` summaries, else 40/60/80/90 %."""
    named: set[float] = set()
    for column in runset.summary.columns:
        if column.startswith("time_to_target."):
            try:
                named.add(float(column.removeprefix("time_to_target.")))
            except ValueError:
                continue
    named = {t for t in named if 0.0 < t <= 1.0}
    return sorted(named) if named else list(DEFAULT_TARGETS)


def _sorted_groups(values: pd.Series) -> list:
    unique = list(dict.fromkeys(values))
    try:
        return sorted(unique)
    except TypeError:  # mixed types (e.g. numbers and None): order as text
        return sorted(unique, key=str)


def comparison_table(
    runset: RunSet, by: str | None, targets: Sequence[float] | None = None
) -> pd.DataFrame:
    """One row per group of runs (values of ``by``; each run when None): run count,
    means and 95 % intervals over the group's runs of final accuracy and time to
    each target (Kaplan–Meier median with non-reaching runs censored, its interval, and
    how many runs reached it; ``inf`` = not reached / unbounded), and means of simulated hours,
    committed steps, perturbations, energy, bytes, useful and wasted device-time
    shares and the straggler-wait and variance-repeat shares of step time (every attempt
    of a step counted: :func:`~fleetsim.analysis.metrics.step_breakdown`)."""
    if by is not None:
        check_key(runset, by)
    key = by if by is not None else "run"
    labels = group_labels(runset, by)
    summary = runset.summary.assign(_group=labels.to_numpy())
    accuracy = has_accuracy(runset)
    if targets is None:
        targets = default_targets(runset) if accuracy else []
    targets = check_targets(targets)
    tta = time_to_accuracy_table(runset, targets, by=by) if targets else None
    util = utilisation(runset, levels=("fleet",)) if len(runset.devices) else None
    shares = breakdown_shares(step_breakdown(runset.events, runset.steps))

    rows = []
    for group in _sorted_groups(summary["_group"]):
        members = summary[summary["_group"] == group]
        runs = list(members["run"])
        row: dict[str, object] = {key: group, "runs": len(runs)}
        if key != "method" and "method" in members.columns:
            # the methods as their papers name them (FedAdam, Adapter-BP, ...)
            row["method"] = " / ".join(sorted(set(members["method"].dropna().astype(str))))
        if accuracy:
            mean, low, high, n = mean_confidence_interval(members["final_accuracy"])
            row.update(final_accuracy=mean, final_accuracy_ci_low=low, final_accuracy_ci_high=high)
        row["simulated_hours"] = float(members["simulated_seconds"].mean()) / 3600.0
        row["steps"] = float(members["steps"].mean())
        for column, out, scale in (
            ("total_perturbations", "perturbations", 1.0),
            ("energy_j", "energy_kj", 1e-3),
        ):
            if column in members.columns:
                row[out] = float(pd.to_numeric(members[column], errors="coerce").mean()) * scale
        if "bytes_up" in members.columns and "bytes_down" in members.columns:
            moved = pd.to_numeric(members["bytes_up"], errors="coerce") + pd.to_numeric(
                members["bytes_down"], errors="coerce"
            )
            row["mb_moved"] = float(moved.mean()) / 1e6
        if util is not None:
            mine = util[util["run"].isin(runs)]
            row["used_share"] = float(mine["used"].mean()) if len(mine) else math.nan
            row["wasted_share"] = float(mine["wasted"].mean()) if len(mine) else math.nan
        mine = shares[shares["run"].isin(runs)]
        for part in ("straggler_wait", "variance_repeats"):
            row[f"{part}_share"] = float(mine[part].mean()) if len(mine) else math.nan
        if tta is not None:
            for target in targets:
                match = tta[(tta[key].astype(str) == str(group)) & (tta["target"] == target)]
                cell = match.iloc[0]
                name = f"tta_{target:g}"
                row[f"{name}_median_h"] = cell["median_s"] / 3600.0
                row[f"{name}_ci_low_h"] = cell["ci_low_s"] / 3600.0
                row[f"{name}_ci_high_h"] = cell["ci_high_s"] / 3600.0
                row[f"{name}_reached"] = f"{int(cell['reached'])}/{int(cell['runs'])}"
        rows.append(row)
    return pd.DataFrame(rows)


def compare_runs(
    run_dirs: Sequence[Path],
    by: str | None,
    out_dir: Path,
    targets: Sequence[float] | None = None,
    unequal_horizons: str = "mark",
    formats: Sequence[str] | str = ("png",),
    log_time: bool = False,
) -> dict[str, Path]:
    """Write ``comparison.csv``, ``comparison.md`` and overlaid curves
    (``curves.png`` over simulated time; ``curves_perturbations.png`` too when
    the runs have accuracy) into ``out_dir``.  Returns the paths by kind
    (``csv``, ``markdown``, ``curves``, ``curves_perturbations``; the curves in the first
    of ``formats``, each further format as ``curves.pdf``, ``curves_perturbations.svg``,
    ...).  The curves are the median over each group's runs with the interquartile range
    as a band (:func:`~fleetsim.analysis.figures.convergence.convergence_figure`);
    ``formats``: figure files to write (:data:`~fleetsim.analysis.figures.common.
    FIGURE_FORMATS`, default PNG); ``log_time``: a symmetric-log time axis.

    Equal horizons (:mod:`fleetsim.analysis.discipline`): when a run ended short of the
    common simulated-time budget without reaching every target, ``unequal_horizons``
    ``"refuse"`` raises :class:`FleetsimInputError`; ``"mark"`` writes the comparison with
    a line naming those runs in ``comparison.md`` and each run's end marked in every
    figure.  Runs evaluated on different grids
    (:func:`fleetsim.analysis.discipline.check_eval_grids`) are refused or, with
    ``"mark"``, flagged in ``comparison.md`` the same way."""
    from fleetsim.analysis.discipline import check_eval_grids, check_horizons
    from fleetsim.analysis.figures.common import figure_paths, parse_formats
    from fleetsim.errors import FleetsimInputError

    formats = parse_formats(formats)

    if unequal_horizons not in ("refuse", "mark"):
        raise FleetsimInputError(
            f"unequal_horizons {unequal_horizons!r}: allowed values refuse, mark"
        )
    out_dir = Path(out_dir)
    runset = load_runs(run_dirs)
    horizon = check_horizons(runset, check_targets(targets) if targets else ())
    if not horizon.ok and unequal_horizons == "refuse":
        raise FleetsimInputError(horizon.message())
    grid_problem = ""
    try:
        check_eval_grids(runset)
    except FleetsimInputError as exc:
        if unequal_horizons == "refuse":
            raise
        grid_problem = str(exc)
    ends = None if horizon.ok else dict(zip(horizon.ends["run"], horizon.ends["end_s"]))
    table = comparison_table(runset, by, targets)
    out_dir.mkdir(parents=True, exist_ok=True)
    written: dict[str, Path] = {}
    written["csv"] = out_dir / "comparison.csv"
    table.to_csv(written["csv"], index=False)
    written["markdown"] = out_dir / "comparison.md"
    grouping = f"grouped by `{by}`" if by is not None else "one row per run"
    note = (
        f"{len(runset.runs)} runs, {grouping}. Final accuracy: the mean over runs with a 95 % "
        "interval (Hall's skewness-corrected t); the other quantities are means over runs "
        "without an interval, shares as fractions of 1 (0.5 = 50 %); time to accuracy (tta, "
        "simulated hours) is the median over all runs with those that never reached the "
        "target censored at their end (∞ = "
        "not reached by at least half, or an unbounded interval end; see the reached "
        "column); — = missing.\n\n"
    )
    if not horizon.ok:
        note += f"**{horizon.message()}** (each run's end is marked in the figures).\n\n"
    if grid_problem:
        note += f"**{grid_problem}**.\n\n"
    written["markdown"].write_text(note + markdown_table(table))
    accuracy = has_accuracy(runset)
    plot_targets = (
        check_targets(targets)
        if targets is not None
        else (default_targets(runset) if accuracy else [])
    )
    curves = out_dir / "curves.png"
    # minutes for a sweep of minute-long runs, not ticks of 0.005 h
    time_axis = time_axis_for(float(runset.summary["simulated_seconds"].max()))
    convergence_figure(
        runset, x=time_axis, by=by, targets=plot_targets, path=curves, ends=ends,
        formats=formats, log_time=log_time,
    )
    kinds = [("curves", curves)]
    if accuracy:
        curves_perturbations = out_dir / "curves_perturbations.png"
        convergence_figure(
            runset,
            x="perturbations",
            by=by,
            metrics=("accuracy",),
            targets=plot_targets,
            path=curves_perturbations,
            ends=ends,
            formats=formats,
        )
        kinds.append(("curves_perturbations", curves_perturbations))
    for kind, path in kinds:
        first, *more = figure_paths(path, formats)
        written[kind] = first
        for extra in more:
            written[extra.name] = extra
    return written
