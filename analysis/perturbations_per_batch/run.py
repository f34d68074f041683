"""Study (a): FwdLLM's perturbation-count table (Fig. 8) with real forward gradients.

Base scenario ``analysis/perturbations_per_batch/scenario.yaml``: the paper's closed-form
phones (charged for DistilBERT with the paper's constants), all-MiniLM-L6-v2 + top-layer
LoRA on AG News supplying the learning signal.  Grid (``sweep.yaml``, run through
``fleetsim sweep``'s machinery, resumable): ``protocol.perturbations_per_device`` v ∈ {1, 3,
5, 10, 15, 50} × seeds 0, 1, 2.  ``--quick`` runs ``sweep_quick.yaml`` (v ∈ {1, 10}, one
seed, 4 steps on 80 training items).

The target (100 %) is the best held-out accuracy any run reached (``--target-accuracy``
fixes it).  The table gives, per v and fraction of the target (0.4 … 0.99 as the paper's),
the median simulated minutes to reach it over seeds, with seeds that never reached it
censored at their end ("n/r" when more than half did not), beside the paper's table; and
which v was fastest at each level.

Outputs (``figures/`` or ``figures-quick/``): ``minutes_to_fraction.{csv,md}``,
``paper_vs_here.{csv,md}``, ``best_v.{csv,md}``, ``time_to_fraction.png``, ``curves.png``,
``curves_perturbations.png``, ``comparison.{csv,md}``, ``study.json`` (host time, seeds).

    python analysis/perturbations_per_batch/run.py --quick
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

import numpy as np
import pandas as pd

from fleetsim.analysis import compare_runs, load_runs, time_to_accuracy_table
from fleetsim.analysis.pages import write_runs_table
from fleetsim.analysis.plots import time_to_accuracy_figure
from fleetsim.analysis.study import (
    StudyRuns,
    check_discipline,
    host_note,
    per_run_table,
    run_study,
    study_arguments,
    study_entry,
    study_folders,
    write_table,
)

HERE = Path(__file__).resolve().parent
BY = "protocol.perturbations_per_device"
V_VALUES = (1, 3, 5, 10, 15, 50)
FRACTIONS = (0.4, 0.6, 0.8, 0.9, 0.95, 0.99)
#: FwdLLM Fig. 8 (DistilBERT, AG News, 10 clients): minutes to each fraction of the 0.88
#: target per v; None = not reached.
PAPER_MINUTES: dict[float, dict[int, float | None]] = {
    0.40: {1: 0.42, 3: 1.73, 5: 1.46, 10: 1.11, 15: 1.50, 50: 4.20},
    0.60: {1: None, 3: 2.30, 5: 2.92, 10: 3.34, 15: 4.50, 50: 8.40},
    0.80: {1: None, 3: 4.03, 5: 5.10, 10: 6.69, 15: 12.01, 50: 25.20},
    0.90: {1: None, 3: None, 5: 9.48, 10: 10.03, 15: 13.51, 50: 33.60},
    0.95: {1: None, 3: None, 5: None, 10: 16.72, 15: 21.01, 50: 67.21},
    0.99: {1: None, 3: None, 5: None, 10: None, 15: None, 50: 176.42},
}


def best_v(table: pd.DataFrame, fractions: dict[float, float]) -> pd.DataFrame:
    """Per accuracy level, the v with the lowest median time (non-reaching seeds censored,
    :func:`~fleetsim.analysis.metrics.time_to_accuracy_table`); None when no v's median
    reached the level (more than half of its seeds never got there)."""
    rows = []
    for target, fraction in fractions.items():
        level = table[(table["target"] == target) & np.isfinite(table["median_s"])]
        if level.empty:
            rows.append(
                {
                    "fraction_of_target": fraction,
                    "accuracy": target,
                    "best_v": None,
                    "median_h": math.nan,
                }
            )
            continue
        fastest = level.loc[level["median_s"].idxmin()]
        rows.append(
            {
                "fraction_of_target": fraction,
                "accuracy": target,
                "best_v": int(fastest[BY]),
                "median_h": fastest["median_h"],
            }
        )
    return pd.DataFrame(rows)


def paper_best_v() -> dict[float, int]:
    """The paper's fastest v per fraction (from :data:`PAPER_MINUTES`)."""
    best = {}
    for fraction, row in PAPER_MINUTES.items():
        reached = {v: m for v, m in row.items() if m is not None}
        best[fraction] = min(reached, key=reached.get)
    return best


def _cell(minutes: float, reached: int, runs: int) -> str:
    if not math.isfinite(minutes):
        return f"n/r ({reached}/{runs})"
    return f"{minutes:.2f} ({reached}/{runs})"


def minutes_table(table: pd.DataFrame, fractions: dict[float, float]) -> pd.DataFrame:
    """The paper's layout: one row per fraction, one column per v; cells are median
    simulated minutes with "(reached/runs)", "n/r" when the median was not reached."""
    rows = []
    for target, fraction in fractions.items():
        row: dict[str, object] = {"fraction": fraction, "accuracy": round(target, 4)}
        for v in sorted(table[BY].unique()):
            cell = table[(table["target"] == target) & (table[BY] == v)].iloc[0]
            row[f"v={v}"] = _cell(cell["median_s"] / 60.0, int(cell["reached"]), int(cell["runs"]))
        rows.append(row)
    return pd.DataFrame(rows)


def paper_vs_here(table: pd.DataFrame, fractions: dict[float, float]) -> pd.DataFrame:
    """Per fraction: the paper's best v and minutes beside this study's."""
    here = best_v(table, fractions).set_index("fraction_of_target")
    paper = paper_best_v()
    rows = []
    for fraction in fractions.values():
        p_v = paper.get(round(fraction, 2))
        mine = here.loc[fraction] if fraction in here.index else None
        rows.append(
            {
                "fraction": fraction,
                "paper_best_v": p_v,
                "paper_minutes": PAPER_MINUTES.get(round(fraction, 2), {}).get(p_v),
                "here_best_v": None if mine is None or pd.isna(mine["best_v"])
                else int(mine["best_v"]),
                "here_minutes": math.nan if mine is None else mine["median_h"] * 60.0,
            }
        )
    return pd.DataFrame(rows)


def analyse(
    runs: StudyRuns, figures: Path, target_accuracy: float | None = None, mark: bool = False
) -> dict:
    """Tables and figures of the study from its finished runs; returns the facts
    ``study.json`` records.  Issue 23's discipline: runs on different evaluation grids are
    refused, and so are runs that ended short of the common simulated-time budget without
    reaching the highest fraction unless ``mark`` (then each run's end is marked in the
    curves); ``runs.csv`` is the per-run table."""
    runset = load_runs(runs.run_dirs)
    reference = target_accuracy or float(runset.steps["accuracy"].max())
    fractions = {round(f * reference, 6): f for f in FRACTIONS}
    ends = check_discipline(runs.run_dirs, list(fractions), mark)
    write_runs_table(per_run_table(runs.run_dirs, [BY, "run.seed"], list(fractions)),
                     figures / "runs.csv")
    table = time_to_accuracy_table(runset, list(fractions), by=BY)
    table.insert(1, "fraction_of_target", table["target"].map(fractions))
    label = str(runset.summary["model_label"].iloc[0]) if "model_label" in runset.summary else ""
    note = (
        f"{label}. Target accuracy (100 %): {reference:.4f} (best held-out accuracy of any "
        "run). Median simulated time over seeds, seeds that never reached a level censored "
        "at their end (Kaplan-Meier); ∞ = not reached by more than half of the seeds; "
        f"interval: 95 % log-log band. {host_note(runs)}."
    )
    write_table(table, figures, "time_to_fraction", note)
    write_table(minutes_table(table, fractions), figures, "minutes_to_fraction", note)
    write_table(best_v(table, fractions), figures, "best_v", note)
    write_table(paper_vs_here(table, fractions), figures, "paper_vs_here", note)
    group_ends = None
    if ends is not None:  # unequal horizons (marked, not refused): each v's earliest end
        arm = dict(zip(runset.summary["run"], runset.summary[BY]))
        group_ends = {}
        for run, end in ends.items():
            group_ends[arm[run]] = min(end, group_ends.get(arm[run], math.inf))
    time_to_accuracy_figure(
        table,
        BY,
        target_labels={t: f"{f:.0%}" for t, f in fractions.items()},
        path=figures / "time_to_fraction.png",
        ends=group_ends,
    )
    compare_runs(runs.run_dirs, BY, figures, targets=list(fractions), unequal_horizons="mark")
    facts = {
        "unequal_horizons_s": ends,
        "target_accuracy": reference,
        "model_label": label,
        "seeds": runs.seeds,
        "runs": len(runs.run_dirs),
        "host_minutes_summed": runs.run_host_seconds / 60.0,
        "sweep": os.path.relpath(runs.sweep_file, HERE.parents[1]),
    }
    (figures / "study.json").write_text(json.dumps(facts, indent=2) + "\n")
    return facts


def main(argv: list[str] | None = None) -> None:
    parser = study_arguments(__doc__.splitlines()[0])
    parser.add_argument(
        "--target-accuracy", type=float, default=None,
        help="accuracy that 100 %% stands for (default: the best any run reached)",
    )
    args = parser.parse_args(argv)
    sweep, out_dir, figures = study_folders(args, HERE)
    runs = run_study(sweep, out_dir, args.set, args.fresh, args.backend, args.max_parallel,
                     seeds=args.seeds)
    analyse(runs, figures, args.target_accuracy, args.quick or args.allow_unequal_horizons)
    print(f"figures and tables in {figures}")


if __name__ == "__main__":
    raise SystemExit(study_entry(main))
