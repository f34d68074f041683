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

from fleetsim.analysis.comparison import (  # compare_runs, comparison_table: re-exported
    compare_runs,
    comparison_table,
    default_targets,
)
from fleetsim.analysis.figures.common import PART_WORDS
from fleetsim.analysis.figures.convergence import time_axis_for
from fleetsim.analysis.load import load_runs
from fleetsim.analysis.metrics import (
    BREAKDOWN_PARTS,
    UTILISATION_SHARES,
    breakdown_shares,
    check_targets,
    step_breakdown,
    time_to_accuracy_runs,
    utilisation,
)
from fleetsim.analysis.plots import (
    breakdown_figure,
    convergence_figure,
    has_accuracy,
    timeline_figure,
    utilisation_figure,
)
from fleetsim.analysis.tables import format_value, markdown_table  # markdown_table: re-exported
from fleetsim.errors import FleetsimInputError

REPORT_DIR_NAME = "report"
REPORT_HTML = "report.html"


def _html_table(frame: pd.DataFrame) -> str:
    formatted = frame.copy()
    for column in formatted.columns:
        formatted[column] = [format_value(v) for v in formatted[column]]
    return formatted.to_html(index=False, escape=True, border=0, classes="table")


# Sums of float differences leave residues of ~1e-15 where a share is exactly zero; a
# table that prints 2.296e-15 % reads as a measurement.  Below this a value is shown as 0.
_RESIDUE = 1e-9


def _clean(value: float) -> float:
    return 0.0 if abs(value) < _RESIDUE else value


def _percent(share: float) -> float:
    """A share in [0, 1] as percent rounded to 0.1 (the precision the figures show)."""
    return round(100.0 * _clean(share), 1) if math.isfinite(share) else share


def _utilisation_words(util: pd.DataFrame) -> pd.DataFrame:
    """The utilisation table as the page shows it: shares in percent, columns in words."""
    table = pd.DataFrame(
        {
            "level": [str(v).replace("_", " ") for v in util["level"]],
            "group": util["group"],
            "devices": util["devices"],
            "device hours": [round(float(v), 3) for v in util["device_hours"]],
        }
    )
    for share in UTILISATION_SHARES:
        table[f"{share} (%)"] = [_percent(float(v)) for v in util[share]]
    table["compute of busy (%)"] = [_percent(float(v)) for v in util["compute_of_busy"]]
    table["coverage (%)"] = [_percent(float(v)) for v in util["coverage"]]
    return table


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
table.table td:first-child, table.table th:first-child { text-align: left; }
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
    # Load (and so validate) before creating anything: a report on a folder that is not a
    # finished run must leave no report/ behind, or `fleetsim run` later finds an
    # unidentified run there and refuses the directory.
    runset = load_runs([run_dir])
    if len(runset.runs) != 1:
        # a sweep folder: a one-run page would title one run and draw all of them
        raise FleetsimInputError(
            f"{run_dir}: holds {len(runset.runs)} runs (a sweep folder?); `fleetsim report` "
            f"shows one run: give one of its run directories (e.g. {run_dir}/"
            f"{runset.runs[0]}), or compare them with `fleetsim compare {run_dir}`"
        )
    out_dir.mkdir(parents=True, exist_ok=True)
    run = runset.runs[0]
    summary = runset.summary.iloc[0]
    accuracy = has_accuracy(runset)
    time_axis = time_axis_for(float(summary["simulated_seconds"]))
    targets = check_targets(targets) if targets is not None else default_targets(runset)
    sections: list[tuple[str, str]] = [("Run", _html_table(_facts(summary)))]

    def figure_section(title: str, name: str, note: str = "") -> None:
        path = out_dir / name
        paragraph = f'<p class="note">{html.escape(note)}</p>' if note else ""
        sections.append((title, paragraph + _embed_png(path, title)))

    if accuracy:
        convergence_figure(
            runset, x=time_axis, targets=targets, path=out_dir / "convergence_time.png",
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
        convergence_figure(runset, x=time_axis, metrics=("steps",), path=out_dir / "progress.png",
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
        sections.append(("Utilisation table", _html_table(_utilisation_words(util))))

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
                "part": [PART_WORDS[p] for p in BREAKDOWN_PARTS],
                "share of step time (%)": [
                    _percent(float(shares.iloc[0][p])) for p in BREAKDOWN_PARTS
                ],
                "mean seconds per step": [_clean(float(means[p])) for p in BREAKDOWN_PARTS],
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


__all__ = [
    "compare_runs", "comparison_table", "default_targets", "markdown_table", "write_report",
]
