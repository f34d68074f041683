"""Study (c): load allocation under churn, at a time scale where churn bites.

Base scenario ``analysis/policies_under_churn/scenario.yaml``: 10,000 market-share phones
for one simulated day, charged for TinyLlama-1.1B INT8 (``fleet.cost_model``), diurnal
charging windows fitted on FLASH, 3G, interrupted units lost; systems-only.  Grid
(``sweep.yaml``, through ``fleetsim sweep``'s machinery, resumable): the five policies plus
a tight deadline (600 s), a larger over-commit (2.0) and an over-commit that carries late
work into later steps, × ``run.start_hour`` ∈ {9, 21} × seeds 0–4.  ``--quick`` runs
``sweep_quick.yaml`` (two policies, 300 phones, 2 h).

Per run: committed steps in the day, median step time, wasted work (units lost to
interruptions, dropped or late, as a share of all units computed; wasted device-time share
of busy time), staleness of used work, straggler-wait share of step time, committed
perturbations and device energy per 1,000 of them (policies put very different amounts of
work into a step, so steps alone are no yardstick).  Per policy variant and start hour:
mean over seeds with a 95 % interval (Hall's skewness-corrected t).

Outputs (``figures/`` or ``figures-quick/``): ``churn.{csv,md}`` (the table),
``churn_wide.csv`` (numeric interval ends), ``per_run.csv``, ``churn_metrics.png`` (bars
with intervals), ``steps_over_time.png``,
``step_time.png`` (critical-path parts per variant), ``timeline_<variant>.png``
(device Gantt chart, first seed, first start hour), ``study.json``.  The runs are read one
at a time (a day of 10,000 phones is millions of events per run).

``--accuracy`` runs ``sweep_accuracy.yaml`` instead (``sweep_accuracy_quick.yaml`` with
``--quick``): the same fleet, day and charged model, with real forward gradients of a small
model supplying the learning signal (every run stops at the highest target or the day's
end).  Its folders are ``runs/accuracy[-quick]`` and ``figures-accuracy[-quick]``; besides
the tables above it writes ``time_to_accuracy.{csv,md}`` (per variant and target: the
Kaplan-Meier median hours with runs that never reached the target censored at their end,
its 95 % interval, and "reached k of n") and ``accuracy.png`` (held-out accuracy against
simulated hours).

    python analysis/policies_under_churn/run.py --quick
    python analysis/policies_under_churn/run.py --accuracy --quick
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from fleetsim.analysis import load_runs, step_breakdown, timeline_figure
from fleetsim.analysis.discipline import choose_settings, validation_scores
from fleetsim.analysis.load import RunSet
from fleetsim.analysis.metrics import breakdown_shares
from fleetsim.analysis.pages import write_page, write_runs_table
from fleetsim.analysis.plots import grouped_breakdown_figure, save_figure
from fleetsim.analysis.stats import (
    censored_median,
    mean_confidence_interval,
    paired_first_verdict,
    paired_verdict,
)
from fleetsim.analysis.study import (
    StudyRuns,
    check_discipline,
    host_note,
    interval_cells,
    per_run_table,
    run_study,
    study_arguments,
    study_entry,
    write_table,
)
from fleetsim.errors import FleetsimInputError

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
RESULTS = REPO / "docs" / "results"
#: (page, per-run table) each mode publishes with --publish.
PUBLISHED = {
    "systems": (RESULTS / "policies_under_churn.md",
                RESULTS / "policies_under_churn" / "runs.csv"),
    "accuracy": (RESULTS / "allocation_under_churn.md",
                 RESULTS / "allocation_under_churn" / "runs.csv"),
}
#: The arm every other is compared with, paired by seed (same fleet, same windows).
REFERENCE_ARM = "barrier"
#: the key each arm's tuning stage chooses (sweep_accuracy_tune.yaml's grid)
TUNED = "protocol.lr"
#: What the arms are, for the pages.
ARM_WORDS = {
    "barrier": "uniform v per device, the server waits for every cohort device (or its "
               "interruption): the plain synchronous barrier",
    "overselect_deadline": "as deployed systems run it (Bonawitz et al., MLSys 2019): 130 % of "
                           "the cohort selected, commit at 100 % of the needed units or at the "
                           "30-minute report deadline, late work dropped",
    "capability": "the step's 200 perturbations spread by predicted throughput",
    "deadline": "each device gets what it can finish within 30 minutes",
    "overcommit_carry": "130 % selected, commit at the needed units, late work carried into "
                        "later steps (staleness ≤ 4)",
    "variance_paced": "starts at 10 perturbations a step, doubles the budget after a noisy "
                      "step (split-half variance above the threshold), spread by capability",
    "capability_10": "equal-budget control for variance_paced: capability fixed at 10 "
                     "perturbations a step",
}
POLICIES = ("uniform", "capability", "deadline", "variance_paced", "overcommit")
METRICS = {
    "steps": "committed steps in the run",
    "k_perturbations": "committed perturbations (thousands)",
    "median_step_min": "median minutes per committed step",
    "wasted_unit_share": "units lost / dropped / late ÷ units computed",
    "wasted_time_share": "wasted busy device-time ÷ busy device-time",
    "straggler_share": "straggler wait ÷ step time",
    "mean_staleness": "mean staleness of used units (steps)",
    "kj_per_k_perturbations": "device energy per 1,000 committed perturbations (kJ)",
}


def variant(summary: pd.Series) -> str:
    """The sweep arm's name when the run came from an ``arms:`` sweep (its run id starts
    ``arm=<name>__``), else the policy name with its variant: ``deadline(600s)``,
    ``overcommit(x2)``, and ``+carry`` when late work is carried into later steps."""
    run = str(summary.get("run", ""))
    if run.startswith("arm="):
        return run[len("arm="):].split("__", 1)[0]
    name = str(summary["policy.name"])
    if name == "deadline":
        name = f"deadline({float(summary['policy.deadline_s']):g}s)"
    elif name == "overcommit":
        name = f"overcommit(x{float(summary['policy.overcommit_factor']):g})"
    if summary.get("protocol.commit.late_work") == "carry":
        name += "+carry"
    return name


def per_run_metrics(runset: RunSet, breakdown: pd.DataFrame | None = None) -> pd.DataFrame:
    """One row per run: its variant, start hour, seed and the :data:`METRICS`
    (``breakdown``: :func:`step_breakdown` of the runs, computed here when None)."""
    events, steps, devices = runset.events, runset.steps, runset.devices
    if breakdown is None:
        breakdown = step_breakdown(events, steps)
    shares = breakdown_shares(breakdown).set_index("run")
    rows = []
    for _, summary in runset.summary.iterrows():
        run = summary["run"]
        ev = events[events["run"] == run]
        st = steps[(steps["run"] == run) & steps["committed"]]
        dv = devices[devices["run"] == run]
        units = {k: float(ev.loc[ev["kind"] == k, "units"].clip(lower=0).sum())
                 for k in ("receipt", "lost_work", "dropped", "late")}
        wasted = units["lost_work"] + units["dropped"] + units["late"]
        computed_units = wasted + units["receipt"]
        receipts = ev[(ev["kind"] == "receipt") & (ev["units"] > 0)]
        staleness = (
            float(np.average(receipts["staleness"].clip(lower=0), weights=receipts["units"]))
            if len(receipts) else math.nan
        )
        busy = float(dv["busy_s"].sum())
        n_steps = int(len(st))
        committed = float(st["perturbations"].sum())
        rows.append(
            {
                "run": run,
                "variant": variant(summary),
                "start_hour": float(summary["run.start_hour"]),
                "seed": int(summary["run.seed"]),
                "steps": n_steps,
                "k_perturbations": committed / 1e3,
                "median_step_min": float(st["step_seconds"].median()) / 60.0
                if n_steps else math.nan,
                "wasted_unit_share": wasted / computed_units if computed_units else math.nan,
                "wasted_time_share": float(dv["wasted_s"].sum()) / busy if busy else math.nan,
                "straggler_share": float(shares.loc[run, "straggler_wait"])
                if run in shares.index else math.nan,
                "mean_staleness": staleness,
                "kj_per_k_perturbations": float(summary["energy_j"]) / committed
                if committed else math.nan,
                "perturbations_per_step": committed / n_steps if n_steps else math.nan,
                "host_s": float(summary.get("host_seconds", math.nan)),
            }
        )
    return pd.DataFrame(rows)


@dataclass
class StudyTables:
    """What the figures need, gathered one run at a time (a day of 10,000 phones is
    millions of events per run: the runs are never all in memory at once)."""

    per_run: pd.DataFrame
    breakdown: pd.DataFrame  # step_breakdown rows of every run
    commits: pd.DataFrame  # run, sim_time_s of every committed step
    summary: pd.DataFrame  # the runs' summary rows


def gather(run_dirs: list[Path]) -> StudyTables:
    """Per-run metrics, step breakdowns and commit times, loading one run at a time."""
    per_run, breakdowns, commits, summaries = [], [], [], []
    for run_dir in run_dirs:
        runset = load_runs([run_dir])
        breakdown = step_breakdown(runset.events, runset.steps)
        per_run.append(per_run_metrics(runset, breakdown))
        breakdowns.append(breakdown)
        committed = runset.steps[runset.steps["committed"]]
        commits.append(committed[["run", "sim_time_s"]])
        summaries.append(runset.summary)
        del runset
    return StudyTables(
        per_run=pd.concat(per_run, ignore_index=True),
        breakdown=pd.concat(breakdowns, ignore_index=True),
        commits=pd.concat(commits, ignore_index=True),
        summary=pd.concat(summaries, ignore_index=True),
    )


def churn_table(per_run: pd.DataFrame) -> pd.DataFrame:
    """Per variant and start hour: runs, and each metric's mean over seeds with its 95 %
    Hall skewness-corrected t interval (``<metric>``, ``<metric>_low``, ``<metric>_high``)."""
    rows = []
    order = {v: i for i, v in enumerate(dict.fromkeys(per_run["variant"]))}
    for (start, name), frame in per_run.groupby(["start_hour", "variant"], sort=False):
        row: dict[str, object] = {"start_hour": start, "variant": name, "runs": len(frame)}
        for metric in METRICS:
            mean, low, high, _ = mean_confidence_interval(frame[metric])
            row.update({metric: mean, f"{metric}_low": low, f"{metric}_high": high})
        rows.append(row)
    table = pd.DataFrame(rows)
    table["_order"] = table["variant"].map(order)
    return table.sort_values(["start_hour", "_order"]).drop(columns="_order").reset_index(
        drop=True
    )


def metrics_figure(table: pd.DataFrame, title: str, path: Path) -> Figure:
    """One panel per metric: bars per variant, grouped by start hour, 95 % intervals."""
    metrics = list(METRICS)
    figure = Figure(figsize=(13.0, 7.5), layout="constrained")
    axes = figure.subplots(2, 4).ravel()
    starts = sorted(table["start_hour"].unique())
    variants = list(dict.fromkeys(table["variant"]))
    width = 0.8 / max(len(starts), 1)
    x = np.arange(len(variants))
    for ax, metric in zip(axes, metrics):
        for i, start in enumerate(starts):
            part = table[table["start_hour"] == start].set_index("variant").reindex(variants)
            mean = part[metric].to_numpy(dtype=float)
            err = np.vstack(
                [np.nan_to_num(mean - part[f"{metric}_low"].to_numpy(dtype=float)),
                 np.nan_to_num(part[f"{metric}_high"].to_numpy(dtype=float) - mean)]
            )
            ax.bar(x + (i - (len(starts) - 1) / 2) * width, mean, width, yerr=err, capsize=2,
                   color=f"C{i}", label=f"start {start:02.0f}:00")
        ax.set_xticks(x)
        ax.set_xticklabels(variants, rotation=35, ha="right", fontsize=7)
        ax.set_title(METRICS[metric], fontsize=8)
        ax.set_ylim(bottom=0.0)
        ax.grid(alpha=0.3, axis="y")
    axes[0].legend(fontsize=7)
    figure.suptitle(title, fontsize=9)
    return save_figure(figure, path)


def steps_over_time_figure(commits: pd.DataFrame, per_run: pd.DataFrame, title: str,
                           path: Path) -> Figure:
    """Committed steps over simulated hours, one line per run, coloured by variant; one
    panel per start hour (``commits``: run, sim_time_s of each committed step)."""
    starts = sorted(per_run["start_hour"].unique())
    figure = Figure(figsize=(11.0, 4.2), layout="constrained")
    axes = np.atleast_1d(figure.subplots(1, len(starts), sharey=True))
    colours = {v: f"C{i % 10}" for i, v in enumerate(dict.fromkeys(per_run["variant"]))}
    for ax, start in zip(axes, starts):
        seen = set()
        for _, row in per_run[per_run["start_hour"] == start].iterrows():
            mine = commits.loc[commits["run"] == row["run"], "sim_time_s"]
            hours = np.sort(mine.to_numpy(dtype=float)) / 3600.0
            label = row["variant"] if row["variant"] not in seen else None
            seen.add(row["variant"])
            ax.step(np.r_[0.0, hours], np.arange(len(hours) + 1), where="post",
                    color=colours[row["variant"]], alpha=0.6, lw=1, label=label)
        ax.set_title(f"start {start:02.0f}:00", fontsize=9)
        ax.set_xlabel("simulated hours")
        ax.set_yscale("symlog", linthresh=10)
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("committed steps")
    axes[-1].legend(fontsize=7)
    figure.suptitle(title, fontsize=9)
    return save_figure(figure, path)


def time_to_accuracy_table(summary: pd.DataFrame, per_run: pd.DataFrame,
                           targets: list[float]) -> pd.DataFrame:
    """Per start hour, variant and target: the Kaplan-Meier median simulated hours to the
    target over seeds (a run that never reached it is censored at its simulated end), the
    95 % interval of that median (log-log band; inf: unbounded) and how many runs reached."""
    keys = per_run.set_index("run")[["start_hour", "variant"]]
    rows = []
    for (start, name), members in keys.groupby(["start_hour", "variant"], sort=False):
        mine = summary[summary["run"].isin(members.index)]
        row: dict[str, object] = {"start_hour": start, "variant": name, "runs": len(mine)}
        for target in targets:
            reached, censored = [], []
            for _, run in mine.iterrows():
                value = run.get(f"time_to_target.{target:g}")  # summary.json, flattened
                if value is None or not math.isfinite(float(value)):
                    censored.append(float(run["simulated_seconds"]) / 3600.0)
                else:
                    reached.append(float(value) / 3600.0)
            median = censored_median(reached, censored)
            row.update({f"h_to_{target:g}": median.median,
                        f"h_to_{target:g}_low": median.low,
                        f"h_to_{target:g}_high": median.high,
                        f"reached_{target:g}": median.label})
        finals = pd.to_numeric(mine["final_accuracy"], errors="coerce")
        row["final_accuracy_median"] = float(finals.median())
        row["energy_kj_median"] = float(pd.to_numeric(mine["energy_j"]).median()) / 1e3
        rows.append(row)
    return pd.DataFrame(rows).sort_values("start_hour", kind="stable").reset_index(drop=True)


def accuracy_figure(runs: StudyRuns, per_run: pd.DataFrame, title: str, path: Path,
                    ends: dict[str, float] | None = None) -> Figure:
    """Held-out accuracy against simulated minutes (log scale: the fast policies finish in
    minutes, uniform runs the whole day), one line per run, coloured by variant; ``ends``
    (run → simulated seconds) marks each run's end with a dashed line (unequal horizons)."""
    figure = Figure(figsize=(8.0, 4.6), layout="constrained")
    ax = figure.subplots()
    colours = {v: f"C{i % 10}" for i, v in enumerate(dict.fromkeys(per_run["variant"]))}
    variant_of = dict(zip(per_run["run"], per_run["variant"]))
    seen = set()
    for run_dir in runs.run_dirs:
        steps = pd.read_parquet(run_dir / "steps.parquet", columns=["sim_time_s", "accuracy"])
        steps = steps[steps["accuracy"].notna()]
        name = variant_of.get(run_dir.name)
        if name is None or steps.empty:
            continue
        ax.plot(steps["sim_time_s"] / 60.0, steps["accuracy"], color=colours[name],
                alpha=0.7, lw=1, label=None if name in seen else name)
        seen.add(name)
        if ends is not None and run_dir.name in ends:
            ax.axvline(ends[run_dir.name] / 60.0, color=colours[name], linestyle="--", lw=0.8,
                       alpha=0.7, gid=f"end:{run_dir.name}")
    ax.set_xscale("log")
    ax.set_xlabel("simulated minutes (log scale)")
    ax.set_ylabel("held-out accuracy")
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=7)
    figure.suptitle(title, fontsize=9)
    return save_figure(figure, path)


def tuning_rows(run_dirs: list[Path]) -> pd.DataFrame:
    """The tuning stage's per-run rows (``stage`` "tune"): provenance, arm, ``lr``, seed,
    end, ``best_val_accuracy`` and ``first_val_s`` (simulated seconds to the highest target
    on the validation split within the budget; inf when not reached): what the page's
    choice (:func:`tuning_selection`) is recomputed from."""
    runset = load_runs(run_dirs)
    summary = runset.summary
    targets = [float(t) for t in json.loads(summary["run.targets"].iloc[0])]
    budget = float(summary["run.max_sim_hours"].max()) * 3600.0
    rows = per_run_table(run_dirs, [TUNED, "run.start_hour", "run.seed"], targets)
    scores = validation_scores(runset, [], target=max(targets), budget_s=budget)
    rows = rows.merge(scores[["run", "first_s"]], on="run", validate="one_to_one")
    arm = {run: variant(row) for run, row in zip(summary["run"], summary.to_dict("records"))}
    host = dict(zip(summary["run"], summary["host_seconds"].astype(float)))
    rows = rows.assign(arm=rows["run"].map(arm), host_s=rows["run"].map(host), stage="tune")
    return rows.rename(columns={TUNED: "lr", "run.start_hour": "start_hour",
                                "run.seed": "seed", "first_s": "first_val_s"})


def tuning_selection(table: pd.DataFrame):
    """Each arm's chosen ``lr`` from the tuning rows of a per-run table
    (:func:`fleetsim.analysis.discipline.choose_settings` by time to the validation
    target); None without tuning rows."""
    if "stage" not in table.columns or not (table["stage"] == "tune").any():
        return None
    tune = table[table["stage"] == "tune"]
    frame = pd.DataFrame({"run": tune["run"], "arm": tune["arm"], "lr": tune["lr"],
                          "score": tune["best_val_accuracy"].fillna(-math.inf),
                          "first_s": tune["first_val_s"].astype(float)})
    selection = choose_settings(frame, ["arm"], ["lr"], by_time=True)
    # an arm that has not run every rate of the grid yet has no choice
    rates = {float(v) for v in selection.grid["lr"]}
    tried = selection.grid.groupby("arm")["lr"].transform(
        lambda v: {float(x) for x in v} == rates)
    selection.grid["chosen"] = selection.grid["chosen"] & tried.astype(bool)
    return selection


def final_rows(table: pd.DataFrame) -> pd.DataFrame:
    """The test-split runs of a per-run table (all rows of a table without a tuning
    stage)."""
    if "stage" not in table.columns:
        return table
    return table[table["stage"] != "tune"].reset_index(drop=True)


def analyse(runs: StudyRuns, figures: Path, mark: bool = False,
            tuning: pd.DataFrame | None = None) -> dict:
    """Tables and figures from the finished runs; returns the facts of ``study.json``.
    Issue 23's discipline: runs on different evaluation grids are refused, and so are runs
    that ended short of the common simulated-time budget without reaching every target
    unless ``mark`` (then each run's end is marked in the accuracy figure); ``runs.csv`` is
    the per-run table."""
    tables = gather(runs.run_dirs)
    per_run, summary = tables.per_run, tables.summary
    label = str(summary["model_label"].iloc[0])
    figures.mkdir(parents=True, exist_ok=True)
    run_targets = ([float(t) for t in json.loads(summary["run.targets"].iloc[0])]
                   if "run.targets" in summary else [])
    ends = check_discipline(runs.run_dirs, run_targets, mark)
    keys = [k for k in ("policy.name", "protocol.commit.late_work", "run.start_hour", "run.seed",
                        TUNED) if k in summary.columns]
    provenance = per_run_table(runs.run_dirs, keys, run_targets)
    table = page_table(provenance, per_run)
    if tuning is not None and len(tuning):
        # one table, both stages: the page recomputes the choice from its tuning rows
        table = pd.concat([table.assign(stage="final"), tuning], ignore_index=True)
    write_runs_table(table, figures / "runs.csv")
    write_page(figures / "runs.csv", figures / "page.md",
               render_accuracy if run_targets else render_systems)
    table = churn_table(per_run)
    fleet = int(summary["fleet_size"].iloc[0])
    hours = float(summary["simulated_seconds"].max()) / 3600.0
    title = f"{fleet} phones, {hours:.3g} simulated h; {label}"
    note = (f"{title}. Mean over seeds [95 % interval, Hall's skewness-corrected t]. "
            f"{host_note(runs)}.")
    table.to_csv(figures / "churn_wide.csv", index=False)
    write_table(interval_cells(table, list(METRICS)), figures, "churn", note)
    metrics_figure(table, title, figures / "churn_metrics.png")
    steps_over_time_figure(tables.commits, per_run, title, figures / "steps_over_time.png")
    group_of_run = dict(zip(per_run["run"], per_run["variant"]))
    grouped_breakdown_figure(tables.breakdown, group_of_run, "policy",
                             path=figures / "step_time.png")
    targets = ([float(t) for t in json.loads(summary["run.targets"].iloc[0])]
               if "run.targets" in summary else [])
    accuracy_facts: dict[str, object] = {}
    if targets:
        tta = time_to_accuracy_table(summary, per_run, targets)
        tta.to_csv(figures / "time_to_accuracy_wide.csv", index=False)
        shown = tta[["start_hour", "variant", "runs"]].copy()
        for target in targets:
            key = f"h_to_{target:g}"
            shown[f"hours to {target:g} [95 % CI] (reached)"] = [
                f"{m:.3g} [{lo:.3g}, {hi:.3g}] ({k})".replace("inf", "∞")
                for m, lo, hi, k in zip(tta[key], tta[f"{key}_low"], tta[f"{key}_high"],
                                        tta[f"reached_{target:g}"])]
        shown["final accuracy (median)"] = tta["final_accuracy_median"].round(3)
        shown["device energy per run, kJ (median)"] = tta["energy_kj_median"].round(1)
        write_table(shown, figures, "time_to_accuracy",
                    f"{title}. Kaplan-Meier median simulated hours to each held-out accuracy "
                    "over seeds; a run that never reached it is censored at its end (∞: more "
                    f"than half never did). {host_note(runs)}.")
        accuracy_figure(runs, per_run, title, figures / "accuracy.png", ends)
        accuracy_facts = {"targets": targets}
    first = per_run[(per_run["seed"] == per_run["seed"].min())
                    & (per_run["start_hour"] == per_run["start_hour"].min())]
    by_name = {d.name: d for d in runs.run_dirs}
    for _, row in first.iterrows():
        one = load_runs([by_name[row["run"]]])
        timeline_figure(one, run=row["run"], path=figures / f"timeline_{row['variant']}.png")
    facts = {"model_label": label, "fleet_size": fleet, "simulated_hours": hours,
             "seeds": runs.seeds, "runs": len(runs.run_dirs),
             "host_minutes_summed": runs.run_host_seconds / 60.0,
             "sweep": os.path.relpath(runs.sweep_file, HERE.parents[1]),
             "unequal_horizons_s": ends, **accuracy_facts}
    (figures / "study.json").write_text(json.dumps(facts, indent=2) + "\n")
    return facts


# ------------------------------------------------------------------ results pages
def page_table(provenance: pd.DataFrame, per_run: pd.DataFrame) -> pd.DataFrame:
    """The per-run table a page is rendered from: :func:`per_run_table`'s provenance, end,
    stop rule and seconds to each target, with :func:`per_run_metrics`' columns."""
    # seed and start hour come from the provenance (run.seed, run.start_hour): kept once
    metrics = per_run.drop(columns=["seed", "start_hour"]).rename(columns={"variant": "arm"})
    overlap = [c for c in metrics.columns if c in provenance.columns and c != "run"]
    metrics = metrics.drop(columns=overlap)  # the provenance's own (e.g. steps: the same)
    table = provenance.merge(metrics, on="run", how="left", validate="one_to_one")
    return table.rename(columns={"run.start_hour": "start_hour", "run.seed": "seed",
                                 TUNED: "lr"})


def _num(x: float, digits: int = 3) -> str:
    if math.isnan(x):
        return "—"
    return "∞" if math.isinf(x) else f"{x:.{digits}g}"


def _mean_cell(values: pd.Series, digits: int = 3) -> str:
    mean, low, high, _ = mean_confidence_interval(values.to_numpy(dtype=float))
    if math.isnan(low):
        return _num(mean, digits)
    return f"{_num(mean, digits)} [{_num(low, digits)}, {_num(high, digits)}]"


def _arms(table: pd.DataFrame) -> list[str]:
    return list(dict.fromkeys(table["arm"]))


def _paired(table: pd.DataFrame, start: float, arm: str, other: str, column: str,
            quantity: str) -> str:
    """Paired-by-seed verdict of ``arm`` against ``other`` on ``column`` at ``start``."""
    part = table[table["start_hour"] == start]
    a = part[part["arm"] == arm].set_index("seed")[column]
    b = part[part["arm"] == other].set_index("seed")[column].reindex(a.index)
    return paired_verdict(arm, a.to_numpy(dtype=float), other, b.to_numpy(dtype=float),
                          quantity=quantity).text


SYSTEMS_COLUMNS = {
    "steps": ("committed steps in the day", 4),
    "k_perturbations": ("committed perturbations (thousands)", 3),
    "median_step_min": ("median minutes per step", 3),
    "wasted_time_share": ("wasted ÷ busy device-time", 2),
    "straggler_share": ("straggler wait ÷ step time", 2),
    "kj_per_k_perturbations": ("device kJ per 1,000 committed perturbations", 3),
}


def _header(title: str, table: pd.DataFrame, publish_flag: str) -> list[str]:
    seeds = sorted(int(s) for s in table["seed"].unique())
    starts = sorted(float(h) for h in table["start_hour"].unique())
    return [
        f"# {title}",
        "",
        f"<!-- Written by analysis/policies_under_churn/run.py {publish_flag} from its "
        "runs.csv; tests/analysis/test_results_pages.py renders it again. Do not edit by "
        "hand. -->",
        "",
        "| | |",
        "|---|---|",
        "| fleet | 10,000 phones of the 2024 market-share mix, one simulated day from the "
        "start hour, diurnal charging windows fitted on FLASH, 3G, an interrupted unit is "
        "lost; charged for TinyLlama-1.1B INT8 (128 tokens per item) |",
        "| step | FwdLLM, 100 devices a step (availability-aware cohort), 2 perturbations per "
        "device (200 a step) unless the arm says otherwise |",
        f"| runs | {len(table)}: {len(_arms(table))} arms × start "
        + ", ".join(f"{h:02.0f}:00" for h in starts)
        + f", seeds {seeds[0]}–{seeds[-1]}; runs per arm: "
        + ", ".join(f"{arm} {n}" for arm, n in table.groupby("arm", sort=False).size().items())
        + " (paired: a seed is the same fleet and windows for every arm; seed counts as the "
        "host budget allowed, an arm with fewer than ten is never ranked) |",
        f"| host time | {table['host_s'].sum() / 60.0:.1f} min summed over the runs (2-core "
        "host, shared) |",
        f"| commit | {', '.join(sorted(set(table['commit'])))} |",
        "",
        "Arms:",
        "",
        *[f"* `{arm}`: {ARM_WORDS.get(arm, arm)}" for arm in _arms(table)],
        "",
        "Means over seeds with a 95 % interval (Hall's skewness-corrected t). Verdicts: "
        "paired by seed against `barrier`, the geometric-mean ratio with its 95 % interval; "
        "established only with at least 10 pairs and an interval excluding 1, else \"not "
        "established\".",
        "",
    ]


def _best_established(table: pd.DataFrame, start: float) -> tuple[str | None, list[str]]:
    """At ``start``: the verdict lines against the barrier on committed perturbations, and
    the arm committing the most of those established against it (None if none is)."""
    part = table[table["start_hour"] == start]
    best, most, texts = None, -math.inf, []
    for arm in _arms(part):
        if arm == REFERENCE_ARM:
            continue
        text = _paired(table, start, arm, REFERENCE_ARM, "k_perturbations",
                       "committed perturbations")
        texts.append(text)
        mean = float(part[part["arm"] == arm]["k_perturbations"].mean())
        if not text.startswith("not established") and mean > most:
            best, most = arm, mean
    return best, texts


def answer_systems(table: pd.DataFrame) -> str:
    """The systems page's answer, in words, from the table alone."""
    answers = []
    for start in sorted(table["start_hour"].unique()):
        best, _ = _best_established(table, start)
        if best is not None:
            answers.append(f"starting {start:02.0f}:00, `{best}` commits the most "
                           "perturbations in the day of the arms established against the "
                           "barrier")
    text = "; ".join(answers) if answers else "no arm is established against the barrier"
    return text[0].upper() + text[1:] + "."


def render_systems(table: pd.DataFrame) -> str:
    """The systems-side page (policies_under_churn.md) from its per-run table (pure)."""
    lines = _header("(c) Load allocation under churn: what each policy gets out of a day",
                    table, "--publish")
    lines[4:4] = [f"**Answer.** {answer_systems(table)} Each arm's verdict against the "
                  "barrier is below; time to accuracy is on the learning-signal page, "
                  "[allocation_under_churn.md](allocation_under_churn.md).", ""]
    for start in sorted(table["start_hour"].unique()):
        part = table[table["start_hour"] == start]
        lines += [f"## Start {start:02.0f}:00", "",
                  "| arm | runs | " + " | ".join(w for w, _ in SYSTEMS_COLUMNS.values()) + " |",
                  "|---|---|" + "---|" * len(SYSTEMS_COLUMNS)]
        for arm in _arms(part):
            mine = part[part["arm"] == arm]
            lines.append(f"| {arm} | {len(mine)} | " + " | ".join(
                _mean_cell(mine[c], d) for c, (_, d) in SYSTEMS_COLUMNS.items()) + " |")
        lines += ["", "Committed perturbations in the day against the barrier:", ""]
        lines += [f"* {text}" for text in _best_established(table, start)[1]]
        lines.append("")
    lines += ["![committed steps over the day](policies_under_churn/steps_over_time.png)", ""]
    return "\n".join(lines)


def _targets(table: pd.DataFrame) -> list[float]:
    return sorted(float(c[len("tta_"):-2]) for c in table.columns
                  if c.startswith("tta_") and c.endswith("_s"))


def _first_to(table: pd.DataFrame, start: float, arm: str, other: str, target: float) -> str:
    """Paired-by-seed verdict on which arm reaches ``target`` first, runs that ended
    without it censored at their end (:func:`paired_first_verdict`)."""
    part = table[table["start_hour"] == start]
    column = f"tta_{target:g}_s"
    a = part[part["arm"] == arm].set_index("seed")
    b = part[part["arm"] == other].set_index("seed").reindex(a.index).dropna(subset=["end_s"])
    a = a.reindex(b.index)
    return paired_first_verdict(arm, a[column].to_numpy(float), a["end_s"].to_numpy(float),
                                other, b[column].to_numpy(float), b["end_s"].to_numpy(float),
                                f"{target:g}").text


def accuracy_verdicts(table: pd.DataFrame) -> dict[str, str]:
    """Paired verdicts on reaching the highest target first: each arm against the
    barrier, and variance_paced against its equal-budget control."""
    top = max(_targets(table))
    start = float(table["start_hour"].iloc[0])
    verdicts = {arm: _first_to(table, start, arm, REFERENCE_ARM, top)
                for arm in _arms(table) if arm != REFERENCE_ARM}
    if {"variance_paced", "capability_10"} <= set(_arms(table)):
        verdicts["variance_paced vs capability_10"] = _first_to(
            table, start, "variance_paced", "capability_10", top)
    return verdicts


def answer_accuracy(table: pd.DataFrame) -> str:
    """The learning-signal page's answer, in words, from the table alone."""
    verdicts = accuracy_verdicts(final_rows(table))
    established = [v for v in verdicts.values() if not v.startswith("not established")]
    if not established:
        return "No ranking is established (see the verdicts)."
    return ("Established (paired by seed): " + "; ".join(established)
            + ". Rankings not listed here are not established.")


def render_accuracy(table: pd.DataFrame) -> str:
    """The learning-signal page (allocation_under_churn.md) from its per-run table (pure):
    the test-split runs, and the tuning stage's choice when the table has its rows."""
    selection = tuning_selection(table)
    table = final_rows(table)
    targets = _targets(table)
    lines = _header("(c) Load allocation under churn: time to accuracy", table,
                    "--accuracy --publish")
    rates = sorted({float(v) for v in table["lr"]}) if "lr" in table.columns else [0.01]
    lines += [
        "Learning signal: all-MiniLM-L6-v2, LoRA rank 4 on query/value of the top layer + "
        "head, real forward gradients on AG News (each phone holds a uniform sample of 8 of "
        "the 6,080 training items), Adam on the server at "
        + ", ".join(f"{r:g}" for r in rates) + " in these runs"
        + (" (the tuning stage below chose each arm's rate on a validation split). "
           if selection is not None else
           " for every arm (the arms differ in allocation, not in the update rule; the "
           "learning rate is not tuned per arm: issue 23's rule 3 is not met here). ")
        + "Every arm is evaluated on one simulated-time grid, every simulated minute from t = 0, "
        "on 200 held-out items; a run stops at the first evaluation reaching the highest "
        f"target, else at the common budget of {table['end_s'].max() / 3600:.3g} simulated "
        "hours.",
        "",
        "Kaplan–Meier median minutes to each held-out accuracy over the seeds (runs that "
        "never reached it censored at their end), 95 % log-log interval, \"not reached (k of "
        "n)\" when fewer than half reached.",
        "",
    ]
    lines += ["| arm | " + " | ".join(f"to {t:g}" for t in targets)
              + " | perturbations per step | device kJ per run |",
              "|---|" + "---|" * (len(targets) + 2)]
    for arm in _arms(table):
        mine = table[table["arm"] == arm]
        cells = []
        for t in targets:
            times = mine[f"tta_{t:g}_s"].to_numpy(dtype=float)
            km = censored_median(times[np.isfinite(times)] / 60.0,
                                 mine.loc[~np.isfinite(times), "end_s"].to_numpy(float) / 60.0)
            cells.append(km.label if math.isinf(km.median) else
                         f"{_num(km.median)} [{_num(km.low)}, {_num(km.high)}] "
                         f"({km.reached}/{km.runs})")
        energy = mine["kj_per_k_perturbations"] * mine["k_perturbations"]
        lines.append(f"| {arm} | " + " | ".join(cells) + f" | "
                     f"{_mean_cell(mine['perturbations_per_step'])} | {_mean_cell(energy)} |")
    top = max(targets)
    lines += ["", f"Which arm reaches {top:g} first, against the barrier and variance_paced "
              "against its equal-budget control (paired by seed; a run that ended without "
              "it is censored at its end, so a pair's order is known when one arm reached it "
              "before the other's run ended; the ratio of times when every pair reached it):",
              ""]
    verdicts = accuracy_verdicts(table)
    lines += [f"* {v}" for v in verdicts.values()]
    established = [k for k, v in verdicts.items() if not v.startswith("not established")]
    lines.insert(4, "**Answer.** " + (
        "Established (paired by seed): " + "; ".join(
            verdicts[k] for k in established) + "." if established else
        "No ranking is established (see the verdicts).")
        + " Rankings not listed here are not established.")
    lines.insert(5, "")
    if selection is not None:
        lines += ["", *tuning_section(table, selection)]
    lines += ["", "![held-out accuracy over simulated minutes]"
              "(allocation_under_churn/accuracy.png)", ""]
    return "\n".join(lines)


def tuning_section(final: pd.DataFrame, selection) -> list[str]:
    """The page's account of the tuning stage: the grid, the criterion, the choice, and
    for each arm whether its test runs ran at the chosen rate."""
    grid = selection.grid
    lines = ["## Tuning: each arm's learning rate on the validation split", "",
             "Each arm's Adam rate from the grid " + ", ".join(
                 f"{v:g}" for v in sorted(set(grid["lr"]))) + " (sweep_accuracy_tune.yaml), on "
             "5 % of the training items carved off as a validation split; a tuning run stops "
             "when its validation accuracy reaches the highest target, so the test split "
             "decides nothing. Chosen by: most tuning seeds reaching it within the budget, "
             "then the smallest median simulated time to it, then the best mean validation "
             "accuracy; ties to the smaller rate.", "",
             selection.markdown().split("\n\n", 1)[1].rstrip("\n"), ""]
    used = final.groupby("arm")["lr"].agg(lambda v: sorted({float(x) for x in v})) \
        if "lr" in final.columns else {}
    rates = sorted({float(v) for v in grid["lr"]})
    for arm, part in grid.groupby("arm", sort=False):
        ran = used.get(arm, []) if len(used) else []
        ran_text = ", ".join(f"{r:g}" for r in ran) or "no rate"
        tried = sorted(float(v) for v in part["lr"])
        if tried != rates:
            lines.append(f"* `{arm}`: tuning incomplete ({len(tried)} of {len(rates)} rates "
                         f"run), so no rate is chosen; its test runs ran at {ran_text}.")
            continue
        chosen = float(part.loc[part["chosen"], "lr"].iloc[0])
        # a choice at the end of the grid may be short of the best rate
        edge = (" (at the end of the grid: a rate beyond it was not tried)"
                if chosen in (rates[0], rates[-1]) else "")
        if ran == [chosen]:
            lines.append(f"* `{arm}`: chosen {chosen:g}{edge}; its test runs ran at it.")
        else:
            lines.append(f"* `{arm}`: chosen {chosen:g}{edge}; its test runs ran at "
                         f"{ran_text}, so its verdicts above are provisional until it is "
                         "rerun at the chosen rate.")
    return lines


def publish(figures: Path, mode: str) -> Path:
    """Copy the per-run table and the page's figures to docs/results/ and render the page
    from the copy."""
    import shutil

    page, table = PUBLISHED[mode]
    table.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(figures / "runs.csv", table)
    for name in ("steps_over_time.png", "accuracy.png", "churn_metrics.png", "step_time.png"):
        if (figures / name).is_file():
            shutil.copyfile(figures / name, table.parent / name)
    return write_page(table, page, render_accuracy if mode == "accuracy" else render_systems)


def finished(sweep: Path, out_dir: Path) -> StudyRuns:
    """The finished runs in a sweep folder, as they are (``--analyse-only``)."""
    done = sorted(d for d in out_dir.glob("arm=*") if (d / "run_complete.json").is_file())
    host = sum(float(json.loads((d / "summary.json").read_text()).get("host_seconds") or 0)
               for d in done)
    seeds = sorted({int(d.name.rsplit("run.seed=", 1)[1]) for d in done})
    return StudyRuns(sweep, out_dir, done, 0.0, host, seeds)


def main(argv: list[str] | None = None) -> None:
    parser = study_arguments(__doc__.splitlines()[0])
    parser.add_argument("--accuracy", action="store_true",
                        help="the variant with real forward gradients (sweep_accuracy.yaml)")
    parser.add_argument("--publish", action="store_true",
                        help="copy runs.csv to docs/results/ and render the results page")
    parser.add_argument("--tune", action="store_true",
                        help="with --accuracy: run the tuning stage (sweep_accuracy_tune.yaml, "
                        "each arm's learning rate on a validation split) first and put its "
                        "runs and choice in the table and on the page")
    parser.add_argument("--analyse-only", action="store_true",
                        help="run nothing: analyse the finished runs in the sweep folder as they "
                        "are (seed counts may then differ by arm; the page lists them)")
    args = parser.parse_args(argv)
    out = args.out or HERE
    kind = ("accuracy" if args.accuracy else "") + ("-quick" if args.quick else "")
    kind = kind.strip("-") or "full"
    stem = "sweep" + ("_accuracy" if args.accuracy else "") + ("_quick" if args.quick else "")
    sweep, out_dir = HERE / f"{stem}.yaml", out / "runs" / kind
    figures = out / ("figures" if kind == "full" else f"figures-{kind}")
    tuning = None
    if args.tune:
        if not args.accuracy:
            raise FleetsimInputError("--tune: the tuning stage belongs to --accuracy")
        tune_sweep = HERE / ("sweep_accuracy_tune" + ("_quick" if args.quick else "") + ".yaml")
        tune_dir = out / "runs" / ("accuracy_tune" + ("-quick" if args.quick else ""))
        tune_runs = (finished(tune_sweep, tune_dir) if args.analyse_only else run_study(
            tune_sweep, tune_dir, args.set, args.fresh, args.backend, args.max_parallel))
        tuning = tuning_rows(tune_runs.run_dirs)
    runs = (finished(sweep, out_dir) if args.analyse_only else run_study(
        sweep, out_dir, args.set, args.fresh, args.backend, args.max_parallel, seeds=args.seeds))
    analyse(runs, figures, args.quick or args.allow_unequal_horizons, tuning)
    if args.publish:
        print(f"published {publish(figures, 'accuracy' if args.accuracy else 'systems')}")
    print(f"figures and tables in {figures}")


if __name__ == "__main__":
    raise SystemExit(study_entry(main))
