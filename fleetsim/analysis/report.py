"""One-run reports (PNGs + a self-contained HTML page) and multi-run comparisons.

``write_report`` backs ``fleetsim report RUN_DIR``; ``compare_runs`` backs
``fleetsim compare RUN_DIR... [--by KEY]``.  Both accept runs of any protocol or
policy, and systems-only runs (no accuracy: the accuracy panels and
time-to-accuracy tables are left out, committed-step progress is shown instead).
"""

from __future__ import annotations

import base64
import html
import math
from collections.abc import Sequence
from pathlib import Path

import pandas as pd

from fleetsim.analysis.load import RunSet, check_key, load_runs
from fleetsim.analysis.metrics import (
    BREAKDOWN_PARTS,
    DEFAULT_TARGETS,
    UTILISATION_SHARES,
    breakdown_shares,
    check_targets,
    group_labels,
    step_breakdown,
    time_to_accuracy_runs,
    time_to_accuracy_table,
    utilisation,
)
from fleetsim.analysis.plots import (
    breakdown_figure,
    convergence_figure,
    has_accuracy,
    timeline_figure,
    utilisation_figure,
)
from fleetsim.analysis.stats import mean_confidence_interval
from fleetsim.analysis.tables import format_value, markdown_table

REPORT_DIR_NAME = "report"
REPORT_HTML = "report.html"


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


def _html_table(frame: pd.DataFrame) -> str:
    formatted = frame.copy()
    for column in formatted.columns:
        formatted[column] = [format_value(v) for v in formatted[column]]
    return formatted.to_html(index=False, escape=True, border=0, classes="table")


def _embed_png(path: Path, alt: str) -> str:
    data = base64.b64encode(path.read_bytes()).decode("ascii")
    return f'<img alt="{html.escape(alt)}" src="data:image/png;base64,{data}">'


_CSS = """
body { font-family: system-ui, sans-serif; margin: 2em auto; max-width: 1200px; color: #222; }
h1 { font-size: 1.5em; } h2 { font-size: 1.2em; margin-top: 2em; border-bottom: 1px solid #ddd; }
table.table { border-collapse: collapse; font-size: 0.85em; margin: 0.5em 0; }
table.table th, table.table td { padding: 0.2em 0.7em; border-bottom: 1px solid #eee;
  text-align: right; }
table.table th { background: #f4f4f4; }
img { max-width: 100%; } .note { color: #666; font-size: 0.9em; }
"""


def _page(title: str, subtitle: str, sections: list[tuple[str, str]]) -> str:
    # No generation timestamp: the same run directory gives a byte-identical page.
    body = "\n".join(f"<h2>{html.escape(h)}</h2>\n{content}" for h, content in sections)
    return (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        f"<title>{html.escape(title)}</title><style>{_CSS}</style></head><body>\n"
        f'<h1>{html.escape(title)}</h1>\n<p class="note">{html.escape(subtitle)} '
        "Times are simulated wall-clock time.</p>\n"
        f"{body}\n</body></html>\n"
    )


def _facts(summary: pd.Series) -> pd.DataFrame:
    keys = [
        ("scenario", "scenario_name"),
        ("method", "method"),  # as its paper names it (summary.json method)
        ("protocol", "protocol"),
        ("policy", "policy"),
        ("model", "model_label"),  # "phones charged for X; learning signal from Y"
        ("seed", "seed"),
        ("availability", "availability_label"),
        ("systems only", "systems_only"),
        ("status", "status"),
        ("stopped by", "stopped_by"),
        ("initial accuracy (t = 0)", "initial_accuracy"),  # the model before step 1
        ("final accuracy", "final_accuracy"),
        ("simulated hours", None),
        ("rounds", "rounds"),
        ("committed steps", "steps"),
        ("perturbations", "total_perturbations"),
        ("MB up", None),
        ("MB down", None),
        ("device energy (kJ)", None),
        ("host seconds", "host_seconds"),
    ]
    derived = {
        "simulated hours": float(summary["simulated_seconds"]) / 3600.0,
        "MB up": float(summary.get("bytes_up", math.nan)) / 1e6,
        "MB down": float(summary.get("bytes_down", math.nan)) / 1e6,
        "device energy (kJ)": float(summary.get("energy_j", math.nan)) / 1e3,
    }
    rows = []
    for label, key in keys:
        if key is None:
            rows.append((label, derived[label]))
        elif key in summary.index:
            rows.append((label, summary[key]))
    return pd.DataFrame(rows, columns=["quantity", "value"])


def write_report(
    run_dir: Path,
    out_dir: Path | None = None,
    targets: Sequence[float] | None = None,
    formats: Sequence[str] | str = ("png",),
    log_time: bool = False,
) -> Path:
    """Write the figures of one run as PNGs and one self-contained HTML page
    (figures embedded as base64) into ``out_dir`` (default ``RUN_DIR/report``);
    also the tables as CSV.  ``formats``: figure files besides the PNG the page embeds
    (``"pdf"``, ``"svg"``; :data:`~fleetsim.analysis.figures.common.FIGURE_FORMATS`).
    ``log_time``: convergence curves on a symmetric-log time axis.  Returns the HTML
    path."""
    from fleetsim.analysis.figures.common import parse_formats

    formats = ("png", *parse_formats(formats))
    formats = tuple(dict.fromkeys(formats))
    run_dir = Path(run_dir)
    out_dir = Path(out_dir) if out_dir is not None else run_dir / REPORT_DIR_NAME
    out_dir.mkdir(parents=True, exist_ok=True)
    runset = load_runs([run_dir])
    run = runset.runs[0]
    summary = runset.summary.iloc[0]
    accuracy = has_accuracy(runset)
    targets = check_targets(targets) if targets is not None else default_targets(runset)
    sections: list[tuple[str, str]] = [("Run", _html_table(_facts(summary)))]

    def figure_section(title: str, name: str, note: str = "") -> None:
        path = out_dir / name
        paragraph = f'<p class="note">{html.escape(note)}</p>' if note else ""
        sections.append((title, paragraph + _embed_png(path, title)))

    if accuracy:
        convergence_figure(
            runset, x="hours", targets=targets, path=out_dir / "convergence_time.png",
            formats=formats, log_time=log_time,
        )
        figure_section(
            "Convergence over simulated time",
            "convergence_time.png",
            "Grey lines: accuracy targets (named in the legend). The first point is the "
            "initial model's evaluation at t = 0.",
        )
        convergence_figure(
            runset,
            x="perturbations",
            targets=targets,
            path=out_dir / "convergence_perturbations.png",
            formats=formats,
        )
        figure_section("Convergence over perturbations", "convergence_perturbations.png")
        per_run = time_to_accuracy_runs(runset, targets)
        tta = pd.DataFrame(
            {
                "target accuracy": per_run["target"],
                "reached": per_run["seconds"].notna(),
                "simulated seconds": per_run["seconds"],
                "simulated hours": per_run["seconds"] / 3600.0,
            }
        )
        tta.to_csv(out_dir / "time_to_accuracy.csv", index=False)
        sections.append(
            (
                "Time to accuracy",
                '<p class="note">First time the running maximum of evaluated accuracy reaches '
                "the target; — means not reached.</p>" + _html_table(tta),
            )
        )
    else:
        convergence_figure(runset, x="hours", metrics=("steps",), path=out_dir / "progress.png",
                           formats=formats, log_time=log_time)
        figure_section(
            "Progress over simulated time",
            "progress.png",
            "Systems-only run: no accuracy was computed."
            if bool(summary["systems_only"])
            else "No accuracy was evaluated in this run.",
        )

    if len(runset.events):
        timeline_figure(runset, run=run, path=out_dir / "timeline.png", formats=formats)
        figure_section(
            "Device timelines",
            "timeline.png",
            "A seeded sample of devices that had work; vertical lines are commits.",
        )

    if len(runset.devices):
        util = utilisation(runset)
        util.to_csv(out_dir / "utilisation.csv", index=False)
        utilisation_figure(util, path=out_dir / "utilisation.png", formats=formats,
                           summary=runset.summary)
        figure_section(
            "Fleet utilisation",
            "utilisation.png",
            "Devices that had work.  used: busy on work the server used; wasted: busy on work "
            "dropped, rolled back, late or lost; idle: available without work.",
        )
        sections.append(
            (
                "Utilisation table",
                _html_table(
                    util[
                        [
                            "level",
                            "group",
                            "devices",
                            "device_hours",
                            *UTILISATION_SHARES,
                            "compute_of_busy",
                            "coverage",
                        ]
                    ]
                ),
            )
        )

    breakdown = step_breakdown(runset.events, runset.steps)
    if len(breakdown):
        breakdown.to_csv(out_dir / "step_breakdown.csv", index=False)
        breakdown_figure(breakdown, path=out_dir / "step_breakdown.png", formats=formats,
                         summary=runset.summary)
        figure_section(
            "Where the time of a step went",
            "step_breakdown.png",
            "A step runs from its first attempt's dispatch to its commit; variance repeats "
            "are its rolled-back attempts (their transfers included). Reference device: "
            "median upload among devices delivering to the committed attempt; straggler "
            "wait runs from its upload to the commit.",
        )
        shares = breakdown_shares(breakdown)
        means = breakdown[list(BREAKDOWN_PARTS)].mean()
        table = pd.DataFrame(
            {
                "part": list(BREAKDOWN_PARTS),
                "share of step time": [float(shares.iloc[0][p]) for p in BREAKDOWN_PARTS],
                "mean seconds per step": [float(means[p]) for p in BREAKDOWN_PARTS],
            }
        )
        sections.append(("Step time breakdown", _html_table(table)))

    params = runset.summary.loc[0, runset.param_columns]
    scenario = pd.DataFrame({"key": params.index, "value": params.to_numpy()})
    sections.append(
        (
            "Scenario",
            f"<details><summary>{len(scenario)} resolved keys</summary>"
            f"{_html_table(scenario)}</details>",
        )
    )
    page = out_dir / REPORT_HTML
    description = str(runset.scenarios[run].get("description") or "")
    subtitle = f"{description}." if description else ""
    page.write_text(_page(f"fleetsim run {run}", subtitle, sections))
    return page


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
        f"{len(runset.runs)} runs, {grouping}. Means over runs with 95 % intervals "
        "(Hall's skewness-corrected t); time to accuracy (tta, simulated hours) is the median "
        "over all runs with those that never reached the target censored at their end (∞ = "
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
    convergence_figure(
        runset, x="hours", by=by, targets=plot_targets, path=curves, ends=ends,
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
