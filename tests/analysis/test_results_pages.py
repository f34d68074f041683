"""Issue 23, rule 5: every results page under docs/results/ that a study publishes is the
page its study script renders from the committed per-run table — rendered again here, so a
number edited by hand, or a table changed without regenerating its page, fails — and a few
of each page's headline numbers are recomputed here from the table by other means."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest

from fleetsim.analysis.pages import check_page, read_runs_table
from fleetsim.analysis.study import load_study_script

REPO = Path(__file__).resolve().parents[2]
RESULTS = REPO / "docs" / "results"

#: (study folder, render function, per-run table, page)
PAGES = [
    ("perturbations_per_batch", "render", "perturbations_per_batch/runs.csv",
     "perturbations_per_batch.md"),
    ("policies_under_churn", "render_systems", "policies_under_churn/runs.csv",
     "policies_under_churn.md"),
    ("policies_under_churn", "render_accuracy", "allocation_under_churn/runs.csv",
     "allocation_under_churn.md"),
    ("end_to_end", "render", "end_to_end/runs.csv", "end_to_end.md"),
]


def _rate_chosen_by_hand(tune_rows):
    """One arm's tuned rate from its tuning rows: most seeds reaching the validation target,
    then the smallest median time to it, then the best mean validation accuracy, then the
    smaller rate."""
    scored = []
    for lr, rows in tune_rows.groupby("lr"):
        first = rows["first_val_s"].to_numpy(dtype=float)
        scored.append((-int(np.isfinite(first).sum()), float(np.median(first)),
                       -float(rows["best_val_accuracy"].mean()), float(lr)))
    return min(scored)[3]


def _script(study: str):
    return load_study_script(REPO / "analysis" / study / "run.py", f"page_{study}")


@pytest.mark.parametrize("study,render,table,page", PAGES, ids=[p[3] for p in PAGES])
def test_page_is_rendered_from_its_committed_table(study, render, table, page):
    table_path, page_path = RESULTS / table, RESULTS / page
    assert table_path.is_file(), f"{table_path} is not committed"
    check_page(table_path, page_path, getattr(_script(study), render))


@pytest.mark.parametrize("study,render,table,page", PAGES, ids=[p[3] for p in PAGES])
def test_every_run_has_provenance(study, render, table, page):
    runs = read_runs_table(RESULTS / table)
    assert runs["run"].is_unique
    assert runs["scenario_hash"].str.fullmatch(r"[0-9a-f]{16}").all()
    assert runs["commit"].str.fullmatch(r"[0-9a-f]{40}(\+dirty)?").all()


def test_study_a_numbers_recomputed():
    """(a): the chosen lr per v (plain groupby here), the target, the ten-seed arms, and
    every time-to-fraction median where all of an arm's seeds reached (then the Kaplan–Meier
    median is the lower middle order statistic) appear on the page as rendered."""
    module = _script("perturbations_per_batch")
    runs = read_runs_table(RESULTS / "perturbations_per_batch" / "runs.csv")
    page = (RESULTS / "perturbations_per_batch.md").read_text()
    tune = runs[runs["stage"] == "tune"]
    assert set(tune["run.seed"]) <= set(module.TUNING_SEEDS)
    means = tune.groupby(["protocol.perturbations_per_device", "protocol.lr"])[
        "best_val_accuracy"].mean()
    chosen = {}
    for v in means.index.get_level_values(0).unique():
        part = means.loc[v]
        chosen[v] = float(part[part >= part.max() - 1e-12].index.min())
        assert f"**{part.max():.4f} (n = " in page
    target = max(means.loc[(v, chosen[v])] for v in chosen)
    assert f"Target (100 %): **{target:.4f}**" in page
    assert runs["target_accuracy"].eq(runs["target_accuracy"].iloc[0]).all()
    assert runs["target_accuracy"].iloc[0] == pytest.approx(target)
    final = runs[[chosen[v] == lr for v, lr in
                  zip(runs["protocol.perturbations_per_device"], runs["protocol.lr"])]]
    seeds = final.groupby("protocol.perturbations_per_device").size()
    assert seeds.eq(10).sum() >= module.TOP_ARMS
    for v, n in seeds.items():  # every v's seed count is on the page
        assert f"v = {v}: {n} seed" in page
    for fraction in module.FRACTIONS:
        for _, part in final.groupby("protocol.perturbations_per_device"):
            times = np.sort(part[module.tta_column(fraction)].to_numpy(dtype=float))
            if np.isfinite(times).all():
                median = times[(len(times) - 1) // 2]
                assert f"{median:.1f} [" in page


def test_study_c_means_recomputed():
    """(c): each arm's mean committed steps per start hour, recomputed with numpy."""
    runs = read_runs_table(RESULTS / "policies_under_churn" / "runs.csv")
    page = (RESULTS / "policies_under_churn.md").read_text()
    assert runs.groupby(["arm", "start_hour"]).size().ge(10).all()
    for (arm, _), part in runs.groupby(["arm", "start_hour"]):
        mean = float(np.mean(part["steps"].to_numpy(dtype=float)))
        assert any(line.startswith(f"| {arm} | {len(part)} | {mean:.4g}")
                   for line in page.splitlines()), arm
    accuracy = read_runs_table(RESULTS / "allocation_under_churn" / "runs.csv")
    accuracy = accuracy[accuracy["stage"] != "tune"]  # the tuning stage's rows apart
    sizes = accuracy.groupby("arm").size()
    page = (RESULTS / "allocation_under_churn.md").read_text()
    assert ", ".join(f"{arm} {n}" for arm, n in sizes.reindex(
        list(dict.fromkeys(accuracy["arm"]))).items()) in page
    assert not math.isnan(accuracy["end_s"].max())


def test_readme_results_table_is_written_from_the_tables():
    """The README's results table is analysis/results_readme.py's rendering of the committed
    per-run tables (each answer by its page's own function)."""
    module = load_study_script(REPO / "analysis" / "results_readme.py", "results_readme")
    assert module.render_block() in (REPO / "README.md").read_text()


def test_load_study_script_names_a_missing_file(tmp_path):
    from fleetsim.errors import FleetsimInputError

    with pytest.raises(FleetsimInputError, match="no such study script"):
        load_study_script(tmp_path / "run.py")


def test_study_a_never_ranks_against_a_runner_up_with_too_few_seeds():
    """A runner-up that never reached a level is evidence only over the seeds it ran: ten
    wins of the fastest v against one unpaired miss establish nothing."""
    import pandas as pd

    module = _script("perturbations_per_batch")
    rows = []
    for v, seeds, t in ((1, range(10), 50.0), (3, range(1), float("inf"))):
        for seed in seeds:
            row = {"run": f"v{v}s{seed}", "protocol.perturbations_per_device": v,
                   "protocol.lr": 0.01, "run.seed": seed, "end_s": 120.0,
                   "best_val_accuracy": 0.7, "stage": "tune" if seed < 2 else "final"}
            row.update({module.tta_column(f): (0.0 if f == 0.4 else t)
                        for f in module.FRACTIONS})
            rows.append(row)
    fast = module.fastest_v(pd.DataFrame(rows)).set_index("fraction")
    assert fast.loc[0.8, "fastest_v"] == 1
    assert fast.loc[0.8, "verdict"].startswith("not established")
    assert "1 paired seeds" in fast.loc[0.8, "verdict"]


def test_study_c_first_to_target_counts_recomputed():
    """(c) accuracy: for each arm against the barrier, the paired seeds where the arm got to
    the highest target first, counted here by hand from the committed table (a run that
    ended without the target is censored at its end), appear on the page."""
    runs = read_runs_table(RESULTS / "allocation_under_churn" / "runs.csv")
    runs = runs[runs["stage"] != "tune"]  # the test-split runs (tuning rows apart)
    page = (RESULTS / "allocation_under_churn.md").read_text()
    top = max(float(c[len("tta_"):-2]) for c in runs.columns
              if c.startswith("tta_") and c.endswith("_s"))
    column = f"tta_{top:g}_s"
    barrier = runs[runs["arm"] == "barrier"].set_index("seed")
    for arm in set(runs["arm"]) - {"barrier"}:
        mine = runs[runs["arm"] == arm].set_index("seed")
        wins = ordered = 0
        for seed, row in mine.iterrows():
            a, a_end = float(row[column]), float(row["end_s"])
            b, b_end = float(barrier.loc[seed, column]), float(barrier.loc[seed, "end_s"])
            a_hit, b_hit = math.isfinite(a), math.isfinite(b)
            if a_hit and b_hit:
                if a != b:
                    ordered += 1
                    wins += a < b
            elif a_hit and a <= b_end:
                ordered, wins = ordered + 1, wins + 1
            elif b_hit and b <= a_end:
                ordered += 1
        both = np.isfinite(mine[column].to_numpy(float)).all() and np.isfinite(
            barrier.reindex(mine.index)[column].to_numpy(float)).all()
        if both:  # every pair reached it: the page gives the ratio of times instead
            continue
        assert f"{arm} reached {top:g} before barrier in {wins} of {ordered} paired" in page, arm


def test_study_c_tuning_choice_recomputed():
    """(c) accuracy: each arm's tuned rate, chosen here by hand from the committed tuning
    rows (most seeds reaching the target on the validation split, then the smallest median
    time, then the best validation accuracy, then the smaller rate), is the page's, and
    the arm's test runs ran at it."""
    runs = read_runs_table(RESULTS / "allocation_under_churn" / "runs.csv")
    page = (RESULTS / "allocation_under_churn.md").read_text()
    tune, final = runs[runs["stage"] == "tune"], runs[runs["stage"] != "tune"]
    assert len(tune) and set(tune["arm"]) == set(final["arm"])
    for arm, part in tune.groupby("arm"):
        chosen = _rate_chosen_by_hand(part)
        assert f"* `{arm}`: chosen {chosen:g}" in page, arm
        assert set(final.loc[final["arm"] == arm, "lr"].astype(float)) == {chosen}, arm


def _g4(x: float) -> str:
    """The page's number format at four digits: in full with separators from 10,000 up."""
    if math.isnan(x):
        return "—"
    return f"{x:,.0f}" if abs(x) >= 1e4 else f"{x:.4g}"


def test_study_b_numbers_recomputed():
    """(b): per setting and arm, the median simulated seconds per step, the committed steps
    (median and range), the median steps to the highest target ("not reached" when at most
    half reached it) and the paper's implied steps recomputed with numpy from the committed
    table; each arm's tuned rate chosen here
    by hand (most seeds reaching the validation target, then the smallest median time, then
    the best validation accuracy, then the smaller rate) is the page's and its test runs ran
    at it;
    every test-run arm has ten seeds in every setting."""
    runs = read_runs_table(RESULTS / "end_to_end" / "runs.csv")
    page = (RESULTS / "end_to_end.md").read_text()
    final = runs[runs["stage"] == "final"]
    top = max(float(c[4:-2]) for c in final.columns
              if c.startswith("tta_") and final[c].notna().any())
    paper_minutes = {"fwdllm": 25.2, "fedadapter": 30.6, "adapter_bp": 92.8,
                     "bitfit_bp": 103.9, "full_bp": 418.9}
    for (setting, arm), part in final.groupby(["setting", "arm"]):
        assert sorted(part["seed"]) == list(range(10)), (setting, arm)
        # over the runs that committed a step (a run with none has no time per step)
        s_per_step = part["s_per_step"].to_numpy(float)
        per_step = (float(np.median(s_per_step[np.isfinite(s_per_step)]))
                    if np.isfinite(s_per_step).any() else math.nan)
        steps = part[f"steps_to_{top:g}"].to_numpy(float)
        hit = np.sort(steps[np.isfinite(steps)])
        row = f"| {arm} | {part['method'].iloc[0]} | "
        line = next(x for x in page.split(f"## Setting `{setting}`")[1].splitlines()
                    if x.startswith(row))
        committed = part["steps"].to_numpy(float)
        steps_cell = (f"{_g4(np.median(committed))} ({_g4(committed.min())}–"
                      f"{_g4(committed.max())})")
        assert f" | {_g4(per_step)} | {steps_cell} | " in line, (setting, arm)
        if hit.size == len(steps):
            # every run reached it: the Kaplan-Meier median is the lower middle value
            lower_middle = hit[(len(hit) + 1) // 2 - 1]
            assert f" | {steps_cell} | {_g4(lower_middle)} ({hit.size}/{len(steps)}) | " \
                in line, (setting, arm)
        else:
            assert f"({hit.size}/{len(steps)})" in line or \
                f"({hit.size} of {len(steps)})" in line, (setting, arm)
        refused = part["stopped_by"].astype(str).str.startswith("infeasible")
        if refused.any():  # runs no phone could hold: named under the setting's table
            section = page.split(f"## Setting `{setting}`")[1].split("## ")[0]
            assert (f"`{arm}` could not start in {int(refused.sum())} of {len(part)} runs"
                    in section), (setting, arm)
            assert np.isinf(part.loc[refused, f"tta_{top:g}_s"]).all()
        if setting == "paper" and arm in paper_minutes:
            implied = paper_minutes[arm] * 60.0 / per_step
            assert line.endswith(f" | {paper_minutes[arm]:.3g} | {implied:.4g} |"), arm
    tune = runs[runs["stage"] == "tune"]
    assert set(tune["arm"]) == set(final["arm"])
    for arm, part in tune.groupby("arm"):
        chosen = _rate_chosen_by_hand(part)
        bullet = next(x for x in page.splitlines() if x.startswith(f"* `{arm}`: grid "))
        assert f"; chosen {chosen:g}" in bullet and bullet.endswith("its test runs ran at it."), \
            arm
        assert set(final.loc[final["arm"] == arm, "lr"].astype(float)) == {chosen}, arm
