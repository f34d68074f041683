"""Study (a): FwdLLM's perturbation-count table (Fig. 8) with real forward gradients, run
to one simulated-time budget, each v at its own learning rate tuned on a validation split.

Base scenario ``analysis/perturbations_per_batch/scenario.yaml``: the paper's closed-form
phones (charged for DistilBERT with the paper's constants), all-MiniLM-L6-v2 + top-layer
LoRA on AG News supplying the learning signal, plain SGD on the server (FwdLLM's), every run
evaluated on one 5 s simulated-time grid and stopped by one 120 s budget.

Two stages, each a sweep run through ``fleetsim sweep``'s machinery (resumable):

1. ``sweep_tune.yaml``: v ∈ {1, 3} × lr ∈ {0.003, 0.01, 0.03, 0.1} and v = 5 × lr ∈
   {0.03, 0.1}, tuning seeds 0, 1; ``sweep_tune_large_v.yaml``: v ∈ {10, 15, 50} × lr ∈
   {0.03, 0.1}, seed 0.  Each v's lr is the one with the best validation accuracy within the budget,
   mean over the tuning seeds (:func:`fleetsim.analysis.discipline.select_by_validation`);
   the test split never enters the choice.
2. ``sweep_chosen.yaml`` (written by this script from stage 1's choice): the two v with the
   best validation score at their chosen lr × seeds 0–9 (the tuning runs of seeds 0 and 1
   are reused: same scenario); the other v keep their tuning runs.

The target (100 %) comes from the validation split too: the best chosen candidate's mean
validation accuracy.  The page gives, per v and fraction of the target, the Kaplan–Meier
median simulated seconds to reach it on the *test* split over the ten seeds (runs that never
reached it censored at their end; "not reached (k of n)" when fewer than half did), its 95 %
interval, and per fraction the fastest v with a verdict (established only with ten seeds and
a paired ratio interval excluding 1, or non-overlapping intervals; else "not established").

Outputs: ``figures/`` (``figures-quick/`` with ``--quick``): ``runs.csv`` (the per-run
table: one row per run of both stages), ``page.md`` (the results page rendered from
``runs.csv`` by :func:`render`), ``curves.png`` (median test accuracy over seeds with its
interquartile band per v), ``study.json``.  ``--publish`` copies ``runs.csv`` to
``docs/results/perturbations_per_batch/runs.csv`` and renders
``docs/results/perturbations_per_batch.md`` from the copy (the test
``tests/analysis/test_results_pages.py`` renders it again and compares).

    python analysis/perturbations_per_batch/run.py --quick
    python analysis/perturbations_per_batch/run.py --publish      # about 1.5 h on 2 cores
"""

from __future__ import annotations

import json
import math
import os
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import yaml

from fleetsim.analysis.discipline import select_by_validation
from fleetsim.analysis.load import load_runs
from fleetsim.analysis.pages import read_runs_table, write_page, write_runs_table
from fleetsim.analysis.stats import (
    censored_median,
    mean_confidence_interval,
    paired_verdict,
)
from fleetsim.analysis.study import (
    check_discipline,
    per_run_table,
    run_study,
    study_arguments,
    study_entry,
)
from fleetsim.errors import FleetsimInputError

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
PAGE = REPO / "docs" / "results" / "perturbations_per_batch.md"
PUBLISHED_TABLE = REPO / "docs" / "results" / "perturbations_per_batch" / "runs.csv"
BY = "protocol.perturbations_per_device"
LR = "protocol.lr"
SEED = "run.seed"
FRACTIONS = (0.4, 0.6, 0.8, 0.9, 0.95, 0.99)
#: Seeds whose runs choose each v's learning rate (stage 1).
TUNING_SEEDS = (0, 1)
#: Stage 2 runs ten seeds for the ``TOP_ARMS`` v with the best validation score at their
#: chosen lr (decided on the validation split before any test number is read); the other v
#: keep their two tuning seeds, so no ranking involving them can be established.  Why: a
#: run's host cost grows with v × steps, i.e. with the simulated budget, so every v costs
#: about as much as v = 1 (3–6 host minutes on the shared 2-core host).
TOP_ARMS = 2
#: Stage 1's sweep files: v = 1, 3, 5 on both tuning seeds; v = 10, 15, 50 on seed 0 only
#: (each costs as much host time as a v = 1 run and none can be ranked on so few seeds).
TUNE_SWEEPS = ("sweep_tune.yaml", "sweep_tune_large_v.yaml")
TUNE_SWEEPS_QUICK = ("sweep_tune_quick.yaml",)
#: Simulated seconds at which the page reports each v's test accuracy (points of the
#: budget's evaluation grid; the quick smoke test's budget is 6 s on a 2 s grid).
ACCURACY_AT_S = (30.0, 60.0, 120.0)
ACCURACY_AT_S_QUICK = (2.0, 4.0, 6.0)
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


def tta_column(fraction: float) -> str:
    """The per-run table's column of simulated seconds to ``fraction`` of the target."""
    return f"tta_{fraction:g}_s"


# ------------------------------------------------------------------ pure reducers
def tuning_grid(table: pd.DataFrame) -> pd.DataFrame:
    """Stage 1 from the per-run table: per (v, lr), the mean over the tuning seeds of each
    run's best validation accuracy within the budget, and the chosen lr per v (highest mean;
    ties to the smaller lr)."""
    tune = table[table["stage"] == "tune"]  # the runs of the tuning sweeps, nothing else
    grid = (tune.groupby([BY, LR], sort=True)
            .agg(runs=(SEED, "size"), validation=("best_val_accuracy", "mean"))
            .reset_index())
    grid["chosen"] = False
    for _, part in grid.groupby(BY, sort=True):
        best = part["validation"].max()
        pick = part[part["validation"] >= best - 1e-12].sort_values(LR).index[0]
        grid.loc[pick, "chosen"] = True
    return grid


def chosen_lr(grid: pd.DataFrame) -> dict[int, float]:
    """v -> its chosen learning rate."""
    rows = grid[grid["chosen"]]
    return {int(v): float(lr) for v, lr in zip(rows[BY], rows[LR])}


def target_accuracy(grid: pd.DataFrame) -> float:
    """The target (100 %): the best chosen candidate's mean validation accuracy."""
    return float(grid.loc[grid["chosen"], "validation"].max())


def chosen_runs(table: pd.DataFrame) -> pd.DataFrame:
    """The runs of each v at its chosen lr (stage 2: seeds 0–9)."""
    lrs = chosen_lr(tuning_grid(table))
    mask = [lrs.get(int(v)) == float(lr) for v, lr in zip(table[BY], table[LR])]
    return table[mask].sort_values([BY, SEED]).reset_index(drop=True)


def time_to_fraction(table: pd.DataFrame) -> pd.DataFrame:
    """Per fraction and v (chosen runs): Kaplan–Meier median seconds with its 95 %
    interval, runs reached and runs."""
    runs = chosen_runs(table)
    rows = []
    for fraction in FRACTIONS:
        column = tta_column(fraction)
        for v, part in runs.groupby(BY, sort=True):
            times = part[column].to_numpy(dtype=float)
            reached = times[np.isfinite(times)]
            censored = part.loc[~np.isfinite(times), "end_s"].to_numpy(dtype=float)
            km = censored_median(reached, censored)
            rows.append({"fraction": fraction, "v": int(v), "median_s": km.median,
                         "low_s": km.low, "high_s": km.high, "reached": km.reached,
                         "runs": km.runs, "label": km.label})
    return pd.DataFrame(rows)


def fastest_v(table: pd.DataFrame) -> pd.DataFrame:
    """Per fraction: the v with the lowest median time and the verdict against the runner-up
    (paired by seed: same data split and partition).  A run that never reached the level
    counts as slower than any that did (its time is taken as +∞ in the ranking of medians);
    the paired ratio uses the seeds where both reached, so when either v missed the level
    in some seed the verdict needs its interval to exclude 1 over the remaining pairs and at
    least ten of them."""
    runs = chosen_runs(table)
    km = time_to_fraction(table)
    rows = []
    for fraction in FRACTIONS:
        level = km[km["fraction"] == fraction].sort_values(["median_s", "v"])
        finite = level[np.isfinite(level["median_s"])]
        if finite.empty:
            rows.append({"fraction": fraction, "fastest_v": None, "median_s": math.inf,
                         "verdict": "not established (no v reached this level in at least "
                                    "half of its runs)"})
            continue
        best, second = finite.iloc[0], level.iloc[1] if len(level) > 1 else None
        column = tta_column(fraction)
        verdict = "no other v"
        if float(best["median_s"]) == 0.0:
            verdict = ("the initial model (t = 0) already reaches this level in at least half "
                       "of the runs: no v is faster")
        elif second is not None:
            a = runs[runs[BY] == best["v"]].set_index(SEED)[column]
            b = runs[runs[BY] == second["v"]].set_index(SEED)[column]
            b = b.reindex(a.index).dropna()  # seeds the runner-up ran (inf: never reached)
            a = a.reindex(b.index)
            if len(b) and not np.isfinite(b.to_numpy(dtype=float)).any():
                # the runner-up never reached the level in any paired seed: established only
                # when the fastest v reached it in each of at least ten such pairs
                won = int(np.isfinite(a.to_numpy(dtype=float)).sum())
                verdict = (f"v = {int(best['v'])} reached it in {won} of {len(b)} paired "
                           f"seeds, the runner-up v = {int(second['v'])} in none")
                verdict = (verdict if won >= 10 and won == len(b)
                           else f"not established ({verdict}; fewer than 10 paired seeds "
                                "where only the fastest v reached it)")
            else:
                verdict = paired_verdict(f"v = {int(best['v'])}", a.to_numpy(dtype=float),
                                         f"v = {int(second['v'])}", b.to_numpy(dtype=float),
                                         quantity="time").text
        at_start = float(best["median_s"]) == 0.0  # no v can be faster than the initial model
        rows.append({"fraction": fraction, "fastest_v": None if at_start else int(best["v"]),
                     "median_s": float(best["median_s"]), "verdict": verdict})
    return pd.DataFrame(rows)


def accuracy_times(table: pd.DataFrame) -> list[float]:
    """The reporting times the table has ``acc_at_<t>s`` columns for, ascending."""
    return sorted(float(c[len("acc_at_"):-1]) for c in table.columns
                  if c.startswith("acc_at_") and c.endswith("s"))


def accuracy_at(table: pd.DataFrame) -> pd.DataFrame:
    """Per v (chosen runs) and reporting time: mean test accuracy over seeds with its 95 %
    interval (Hall's skewness-corrected t)."""
    runs = chosen_runs(table)
    rows = []
    for v, part in runs.groupby(BY, sort=True):
        row: dict[str, object] = {"v": int(v)}
        for t in accuracy_times(table):
            mean, low, high, n = mean_confidence_interval(part[f"acc_at_{t:g}s"])
            row[f"{t:g}s"] = (mean, low, high, n)
        rows.append(row)
    return pd.DataFrame(rows)


# ------------------------------------------------------------------ the page
def _s(x: float) -> str:
    return "∞" if math.isinf(x) else f"{x:.1f}"


def _interval(mean: float, low: float, high: float, n: int) -> str:
    if math.isnan(low) or n < 3:  # with one or two seeds an interval says nothing
        return f"{mean:.3f} (n = {n})"
    return f"{mean:.3f} [{low:.3f}, {high:.3f}]"


def answer(table: pd.DataFrame) -> str:
    """The page's answer, in words, from the table alone."""
    fast = fastest_v(table)
    established = fast[~fast["verdict"].str.startswith("not established")
                       & fast["fastest_v"].notna()]
    open_ = fast[fast["verdict"].str.startswith("not established")]
    parts = []
    if not established.empty:
        parts.append("Established: " + "; ".join(
            f"to {f:.0%} of the target v = {int(v)} is fastest"
            for f, v in zip(established["fraction"], established["fastest_v"])) + ".")
    if not open_.empty:
        parts.append("Not established at " + ", ".join(f"{f:.0%}" for f in open_["fraction"])
                     + " (see the verdicts).")
    at_start = fast[fast["median_s"] == 0.0]
    if not at_start.empty:
        parts.append("The initial model already reaches "
                     + ", ".join(f"{f:.0%}" for f in at_start["fraction"])
                     + " of the target (t = 0).")
    grows = [int(v) for v in fast["fastest_v"].dropna()]
    if len(set(grows)) > 1:
        trend = ("grows" if grows == sorted(grows) else "does not grow monotonically") + \
            " with the level (" + " → ".join(str(v) for v in grows) + ")"
    elif grows:
        trend = f"is v = {grows[0]} at every level any v reached"
    else:
        trend = "cannot be named: no v reached any level"
    parts.append(f"The fastest v by median time {trend} (medians of a v with fewer than ten "
                 "seeds are shown, never ranked).")
    return " ".join(parts)


def render(table: pd.DataFrame) -> str:
    """The results page (Markdown) from the per-run table alone (pure)."""
    grid = tuning_grid(table)
    lrs = chosen_lr(grid)
    target = target_accuracy(grid)
    km = time_to_fraction(table)
    fast = fastest_v(table)
    acc = accuracy_at(table)
    runs = chosen_runs(table)
    host_min = float(table["host_s"].sum()) / 60.0
    budget = float(table["end_s"].max())
    times = accuracy_times(table)
    commits = sorted(set(table["commit"]))
    lines = [
        "# (a) Perturbations per batch: FwdLLM's Fig. 8 with real forward gradients",
        "",
        "<!-- Written by analysis/perturbations_per_batch/run.py --publish from "
        "perturbations_per_batch/runs.csv; tests/analysis/test_results_pages.py renders it "
        "again. Do not edit by hand. -->",
        "",
        f"**Answer.** {answer(table)}",
        "",
        "## How it was run",
        "",
        "| | |",
        "|---|---|",
        "| phones | the paper's closed-form profile: 10 identical, always-online phones, NPU, "
        "uplink-only 10 Mibit/s, charged for DistilBERT (`fleet.cost_model`): a step of v "
        "perturbations per device costs the paper's per-batch constant × v plus the upload |",
        "| learning signal | all-MiniLM-L6-v2, LoRA rank 4 on query/value of the top layer + "
        "head; forward gradients, v tangents per device per step, directional derivatives "
        "exact (`numerics.estimator: auto`); server: plain SGD (FwdLLM's), constant lr |",
        "| data | AG News (`../shared/datasets/ag_news/test.csv`, 7,600 items), per seed "
        "80 % train / 20 % test; 800 training items of which 25 % (200) are the validation "
        "split (tuning only), 600 train iid over the 10 clients; 32 tokens; test accuracy "
        "on 200 items |",
        f"| horizon | every run to one budget of {budget:.0f} s simulated "
        "(`run.max_sim_hours`), evaluated on one simulated-time grid from t = 0 "
        "(`protocol.eval_every_s`) |",
        f"| runs | {len(table)} ({int((table['stage'] == 'tune').sum())} in the tuning "
        f"stage, seeds {', '.join(map(str, TUNING_SEEDS))}); at its chosen lr, "
        + ", ".join(f"v = {int(v)}: {n} seed{'s' if n > 1 else ''}" for v, n in
                    runs.groupby(BY).size().items())
        + " (seeds per v as the host budget allowed; which v got more seeds was decided "
        "without reading any test number; a ranking needs ten paired seeds of both v, so a v "
        "with fewer is never ranked: every run costs host time in proportion to its "
        "simulated time) |",
        f"| host time | {host_min:.1f} min summed over the runs (2-core host, shared) |",
        f"| commit | {', '.join(commits)} |",
        "",
        "## Tuning: each v's learning rate on the validation split",
        "",
        "Criterion: best validation accuracy within the budget, mean over the tuning seeds; "
        "ties to the smaller lr.  The chosen lr is in bold.",
        "",
        "| v | " + " | ".join(f"lr {lr:g}" for lr in sorted(grid[LR].unique())) + " |",
        "|---|" + "---|" * grid[LR].nunique(),
    ]
    for v, part in grid.groupby(BY, sort=True):
        cells = []
        by_lr = part.set_index(LR)
        for lr in sorted(grid[LR].unique()):
            if lr not in by_lr.index:
                cells.append("—")  # not in this v's grid
                continue
            row = by_lr.loc[lr]
            text = f"{row['validation']:.4f} (n = {int(row['runs'])})"
            cells.append(f"**{text}**" if row["chosen"] else text)
        lines.append(f"| {int(v)} | " + " | ".join(cells) + " |")
    own = grid.groupby(BY)[LR].agg(["min", "max", "size"])  # each v's own grid
    edge = [v for v, lr in lrs.items()
            if own.loc[v, "size"] > 1 and lr in (own.loc[v, "min"], own.loc[v, "max"])]
    lines += [
        "",
        f"Target (100 %): **{target:.4f}**, the best chosen candidate's mean validation "
        "accuracy (the test split is not used for it).",
    ]
    if edge:
        lines.append(f"The chosen lr lies at an end of the grid for v = "
                     f"{', '.join(map(str, edge))}: a wider grid might choose differently.")
    lines += [
        "",
        "## Simulated seconds to each fraction of the target (test split)",
        "",
        "Kaplan–Meier median over the seeds, runs that never reached the level censored at "
        f"their end ({budget:.0f} s); 95 % log-log interval; \"not reached (k of n)\" when "
        "fewer than half reached.",
        "",
        "| fraction | accuracy | " + " | ".join(f"v = {v}" for v in sorted(lrs)) + " |",
        "|---|---|" + "---|" * len(lrs),
    ]
    for fraction in FRACTIONS:
        level = km[km["fraction"] == fraction].set_index("v")
        cells = []
        for v in sorted(lrs):
            row = level.loc[v]
            if math.isinf(row["median_s"]):
                cells.append(row["label"])
            else:
                cells.append(f"{_s(row['median_s'])} [{_s(row['low_s'])}, "
                             f"{_s(row['high_s'])}] ({int(row['reached'])}/{int(row['runs'])})")
        lines.append(f"| {fraction:.0%} | {fraction * target:.4f} | " + " | ".join(cells) + " |")
    lines += [
        "",
        "## The fastest v per level, beside the paper's",
        "",
        "Paper: FwdLLM Fig. 8 (DistilBERT, AG News, 10 clients, minutes to each fraction of "
        "its 0.88 target).  Here: the fastest v by median and the verdict against the "
        "runner-up (paired by seed: ratio of times, geometric mean with its 95 % interval; "
        "established only with at least 10 pairs and an interval excluding 1).",
        "",
        "| fraction | paper's fastest v (min) | fastest v here (s) | verdict |",
        "|---|---|---|---|",
    ]
    for _, row in fast.iterrows():
        paper = {v: m for v, m in PAPER_MINUTES[round(row["fraction"], 2)].items()
                 if m is not None}
        p_v = min(paper, key=paper.get)
        here = ("—" if row["fastest_v"] is None or pd.isna(row["fastest_v"])
                else f"v = {int(row['fastest_v'])} ({_s(row['median_s'])})")
        lines.append(f"| {row['fraction']:.0%} | v = {p_v} ({paper[p_v]:.2f}) | {here} | "
                     f"{row['verdict']} |")
    lines += [
        "",
        "## Test accuracy along the budget",
        "",
        "Mean over the seeds with its 95 % interval (Hall's skewness-corrected t), at the "
        "evaluation grid's points.",
        "",
        "| v | lr | " + " | ".join(f"at {t:g} s" for t in times) + " |",
        "|---|---|" + "---|" * len(times),
    ]
    for _, row in acc.iterrows():
        cells = [_interval(*row[f"{t:g}s"]) for t in times]
        lines.append(f"| {row['v']} | {lrs[int(row['v'])]:g} | " + " | ".join(cells) + " |")
    lines += [
        "",
        "![test accuracy over simulated time, median and interquartile band per v]"
        "(perturbations_per_batch/curves.png)",
        "",
        "What fleetsim leaves out here: DistilBERT's own learning curve (MiniLM stands in: "
        "the phones are charged for DistilBERT), the paper's 120,000 AG News training items "
        "(600 here), and FwdLLM's variance-controlled pacing (off: v is fixed per run, as in "
        "Fig. 8).",
        "",
    ]
    return "\n".join(lines)


# ------------------------------------------------------------------ the runs
def build_table(run_dirs: list[Path], target: float,
                times: tuple[float, ...] = ACCURACY_AT_S,
                tune_names: frozenset[str] = frozenset()) -> pd.DataFrame:
    """The per-run table of both stages: provenance, v, lr, seed, simulated end, best
    validation accuracy, host seconds, seconds to each fraction of ``target`` and the test
    accuracy at the evaluation-grid points ``times`` (simulated seconds)."""
    fractions = [f * target for f in FRACTIONS]
    table = per_run_table(run_dirs, [BY, LR, SEED], fractions)
    table = table.rename(columns={f"tta_{t:g}_s": tta_column(f)
                                  for t, f in zip(fractions, FRACTIONS)})
    runset = load_runs(run_dirs)
    host = dict(zip(runset.summary["run"], runset.summary["host_seconds"]))
    table["host_s"] = table["run"].map(host).astype(float)
    grid_rows = runset.steps[runset.steps["attempt"] == -1]
    for t in times:
        at = grid_rows[np.isclose(grid_rows["sim_time_s"], t)].groupby("run")["accuracy"].max()
        table[f"acc_at_{t:g}s"] = table["run"].map(at).astype(float)
    table["target_accuracy"] = target
    # stage: "tune" for a run of the tuning sweeps (the only runs the lr choice and the
    # target read), "final" for stage 2's
    table["stage"] = ["tune" if run in tune_names else "final" for run in table["run"]]
    return table


def stage2_sweep(lrs: dict[int, float], seeds: list[int], out: str, quick: bool,
                 base: str = "scenario.yaml") -> str:
    """The text of ``sweep_chosen[_quick].yaml``: each v at its chosen lr × ``seeds``."""
    body = {
        "base": base,
        "zip": {BY: sorted(lrs), LR: [lrs[v] for v in sorted(lrs)]},
        "seeds": seeds,
        "out": out,
    }
    if quick:
        body["set"] = yaml.safe_load((HERE / "sweep_tune_quick.yaml").read_text())["set"]
    header = ("# Study (a), stage 2: each v at the learning rate stage 1 chose on the "
              "validation split.\n# Written by run.py from sweep_tune"
              f"{'_quick' if quick else ''}.yaml's runs; do not edit.\n")
    return header + yaml.safe_dump(body, sort_keys=False)


def main(argv: list[str] | None = None) -> None:
    parser = study_arguments(__doc__.splitlines()[0])
    parser.add_argument("--publish", action="store_true",
                        help="copy runs.csv to docs/results/ and render the results page")
    parser.add_argument("--analyse-only", action="store_true",
                        help="run no stage-2 runs: analyse the finished runs at each v's chosen "
                        "lr as they are (what the committed page was made with)")
    args = parser.parse_args(argv)
    out = args.out or HERE
    kind = "quick" if args.quick else "full"
    out_dir = out / "runs" / kind
    figures = out / ("figures-quick" if args.quick else "figures")
    suffix = "_quick" if args.quick else ""
    tune_dirs: list[Path] = []
    for i, name in enumerate(TUNE_SWEEPS_QUICK if args.quick else TUNE_SWEEPS):
        tune_dirs += run_study(HERE / name, out_dir, args.set, args.fresh and i == 0,
                               args.backend, args.max_parallel).run_dirs
    tuned = load_runs(tune_dirs)
    selection = select_by_validation(tuned, [BY], [LR])
    chosen = tuned.summary[tuned.summary["run"].isin(selection.chosen_runs)]
    lrs = {int(v): float(lr) for v, lr in zip(chosen[BY], chosen[LR])}
    grid = selection.grid
    ranked = grid[grid["chosen"]].sort_values(["validation", BY], ascending=[False, True])
    top = {int(v): lrs[int(v)] for v in ranked[BY].head(TOP_ARMS)}
    seeds = list(args.seeds) if args.seeds else (
        list(TUNING_SEEDS) if args.quick else list(range(10)))
    # The stage-2 sweep file lives beside the study (committed) unless --out puts the study
    # elsewhere (then beside its runs, its base scenario named by absolute path).
    inside = out.resolve() == HERE
    if args.analyse_only:
        # Publish what was run: every finished run at a v's chosen lr (seed counts may then
        # differ by v; the page lists them and ranks nothing on fewer than ten seeds).
        final_dirs = sorted(
            d for d in out_dir.glob("protocol.*")
            if (d / "run_complete.json").is_file()
            and d.name not in {t.name for t in tune_dirs}
            and any(d.name.startswith(f"{BY}={v}__{LR}={lr:g}__") for v, lr in lrs.items()))
    else:
        stage2 = (HERE if inside else out) / f"sweep_chosen{suffix}.yaml"
        where = out_dir.resolve()
        shown = os.path.relpath(where, REPO) if where.is_relative_to(REPO) else str(where)
        stage2.parent.mkdir(parents=True, exist_ok=True)
        stage2.write_text(stage2_sweep(top, seeds, shown, args.quick,
                                       "scenario.yaml" if inside else str(HERE / "scenario.yaml")))
        final_dirs = run_study(stage2, out_dir, args.set, False, args.backend,
                               args.max_parallel).run_dirs
    run_dirs = list(dict.fromkeys([*tune_dirs, *final_dirs]))
    target = float(grid.loc[grid["chosen"], "validation"].max())
    chosen_dirs = [d for d in tune_dirs if d.name in set(selection.chosen_runs)]
    compared = list(dict.fromkeys([*chosen_dirs, *final_dirs]))
    check_discipline(compared, [f * target for f in FRACTIONS],
                     args.quick or args.allow_unequal_horizons)
    table = build_table(run_dirs, target, ACCURACY_AT_S_QUICK if args.quick else ACCURACY_AT_S,
                        frozenset(d.name for d in tune_dirs))
    if abs(target_accuracy(tuning_grid(table)) - target) > 1e-12:  # one definition, two readers
        raise FleetsimInputError("study (a): the page's target differs from the table's")
    figures.mkdir(parents=True, exist_ok=True)
    write_runs_table(table, figures / "runs.csv")
    write_page(figures / "runs.csv", figures / "page.md", render)
    curves(read_runs_table(figures / "runs.csv"), compared, figures / "curves.png")
    facts = {"target_accuracy": target, "chosen_lr": lrs, "ten_seed_v": sorted(top),
             "runs": len(run_dirs),
             "host_minutes_summed": float(table["host_s"].sum()) / 60.0}
    (figures / "study.json").write_text(json.dumps(facts, indent=2) + "\n")
    if args.publish:
        PUBLISHED_TABLE.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(figures / "runs.csv", PUBLISHED_TABLE)
        shutil.copyfile(figures / "curves.png", PUBLISHED_TABLE.parent / "curves.png")
        write_page(PUBLISHED_TABLE, PAGE, render)
        print(f"published {PAGE}")
    print(f"figures and tables in {figures}")


def curves(table: pd.DataFrame, run_dirs: list[Path], path: Path) -> None:
    """Median test accuracy over seeds per v on the evaluation grid, with the
    interquartile band (chosen runs only)."""
    from matplotlib.figure import Figure

    keep = set(chosen_runs(table)["run"])
    runset = load_runs([d for d in run_dirs if d.name in keep])
    grid_rows = runset.steps[runset.steps["attempt"] == -1]
    v_of = dict(zip(runset.summary["run"], runset.summary[BY]))
    grid_rows = grid_rows.assign(v=grid_rows["run"].map(v_of))
    fig = Figure(figsize=(7, 4.2))
    ax = fig.add_subplot()
    for i, (v, part) in enumerate(grid_rows.groupby("v", sort=True)):
        by_t = part.groupby("sim_time_s")["accuracy"]
        t = by_t.median().index.to_numpy()
        ax.plot(t, by_t.median().to_numpy(), color=f"C{i}", label=f"v = {int(v)}")
        ax.fill_between(t, by_t.quantile(0.25).to_numpy(), by_t.quantile(0.75).to_numpy(),
                        color=f"C{i}", alpha=0.15, lw=0)
    target = float(table["target_accuracy"].iloc[0])
    ax.axhline(target, color="k", ls="--", lw=0.8, label=f"target {target:.3f}")
    ax.set_xlabel("simulated time (s)")
    ax.set_ylabel("test accuracy")
    ax.set_title("Phones charged for DistilBERT; learning signal from all-MiniLM-L6-v2\n"
                 "median over seeds, interquartile band", fontsize=9)
    ax.legend(fontsize=8, ncol=2)
    fig.tight_layout()
    fig.savefig(path, dpi=130)


if __name__ == "__main__":
    raise SystemExit(study_entry(main))
