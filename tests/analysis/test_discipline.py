"""Issue 23's study discipline: equal horizons, equal evaluation grids, arms tuned on the
validation split, pages regenerated from committed per-run tables."""

import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from fleetsim.analysis.discipline import (
    check_eval_grids,
    check_horizons,
    require_equal_horizons,
    select_by_validation,
)
from fleetsim.analysis.load import load_runs
from fleetsim.analysis.pages import (
    check_page,
    page_differences,
    read_runs_table,
    runs_table,
    scenario_hash,
    write_page,
    write_runs_table,
)
from fleetsim.analysis.stats import mean_confidence_interval
from fleetsim.errors import FleetsimInputError

# The synthetic schedule (conftest): a step takes 2 s download + the slowest compute
# (10 s) + 1 s upload = 13 s; the run ends trailing_idle_s (10 s) after its last commit.


def test_horizons_reached_or_common_budget(make_run) -> None:
    long = make_run(name="long", accuracies=(0.3, 0.5, 0.45, 0.7))  # ends 4 × 13 + 10 = 62 s
    short = make_run(name="short", accuracies=(0.3, 0.4))  # ends 2 × 13 + 10 = 36 s
    near = make_run(name="near", accuracies=(0.3, 0.5, 0.45, 0.5), trailing_idle_s=9.5)  # 61.5
    runset = load_runs([long, short, near])
    # target 0.6: "long" reached it (its end, 62 s, is the budget: the longest run);
    # "short" (36 s < 0.99 × 62) ended without reaching it: refused.
    check = check_horizons(runset, [0.6])
    ends = check.ends.set_index("run")
    assert ends["end_s"].to_dict() == {"long": 62.0, "short": 36.0, "near": 61.5}
    assert ends["reached"].to_dict() == {"long": True, "short": False, "near": False}
    assert check.budget_s == 62.0
    assert ends["ok"].to_dict() == {"long": True, "short": False, "near": True}
    with pytest.raises(FleetsimInputError, match=r"short \(0\.01 h\)") as info:
        require_equal_horizons(runset, [0.6])
    assert "\n" not in str(info.value)
    # target 0.8: nobody reached it; budget 62 s; 61.5 s is within 1 %, 36 s is not
    check = check_horizons(runset, [0.8])
    assert check.budget_s == 62.0
    assert check.ends.set_index("run")["ok"].to_dict() == {
        "long": True, "short": False, "near": True
    }
    # a tolerance of 0.5 % no longer covers 61.5 s (61.5 < 0.995 × 62 = 61.69)
    assert not check_horizons(runset, [0.8], tolerance=0.005).ends.set_index("run").loc[
        "near", "ok"
    ]
    # without "short" the comparison is equal-horizon
    assert require_equal_horizons(load_runs([long, near]), [0.8]).ok
    # every run reached the target: fine whenever each ended (b at 13 + 10 = 23 s)
    both = check_horizons(load_runs([long, make_run(name="b", accuracies=(0.9,))]), [0.6])
    assert both.ok and both.budget_s == 62.0
    # a run that reached the target does not excuse one that did not run as long: "short"
    # ran 36 s, "long" needed 52 s to reach 0.7
    check = check_horizons(load_runs([long, short]), [0.7])
    assert check.ends.set_index("run")["ok"].to_dict() == {"long": True, "short": False}


def test_horizons_without_targets_need_one_end(make_run) -> None:
    a = make_run(name="a", accuracies=None)
    b = make_run(name="b", accuracies=None, trailing_idle_s=30.0)  # 4 × 13 + 30 = 82 s
    check = check_horizons(load_runs([a, b]))
    assert check.budget_s == 82.0
    assert check.ends.set_index("run")["ok"].to_dict() == {"a": False, "b": True}


def test_compare_refuses_unequal_horizons_with_one_line(make_run, tmp_path) -> None:
    long = make_run(name="long", accuracies=(0.3, 0.5, 0.45, 0.7))
    short = make_run(name="short", accuracies=(0.3, 0.4))
    # target 0.8: neither reached it; "short" ended at 36 s, before the budget of 62 s
    cmd = [sys.executable, "-m", "fleetsim", "compare", str(long), str(short),
           "--targets", "0.8", "--out", str(tmp_path / "cmp")]
    done = subprocess.run(cmd, capture_output=True, text=True)
    assert done.returncode == 2
    assert done.stderr.strip().count("\n") == 0 and "unequal horizons" in done.stderr
    assert "short" in done.stderr and "Traceback" not in done.stderr
    # --unequal-horizons mark: written, each run's end marked in every figure and the table
    done = subprocess.run([*cmd, "--unequal-horizons", "mark"], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    markdown = (tmp_path / "cmp" / "comparison.md").read_text()
    assert "unequal horizons" in markdown and "short (0.01 h)" in markdown


def test_convergence_figures_mark_each_run_end(make_run) -> None:
    from fleetsim.analysis.figures.convergence import convergence_figure

    runset = load_runs([make_run(name="long"), make_run(name="short", accuracies=(0.3, 0.4))])
    ends = {"long": 62.0, "short": 36.0}
    for x in ("hours", "perturbations"):
        figure = convergence_figure(runset, x=x, ends=ends)
        for ax in figure.axes:
            marks = {
                a.get_gid(): a for a in ax.get_children() if str(a.get_gid()).startswith("end:")
            }
            assert set(marks) == {"end:long", "end:short"}
            if x == "hours":  # a vertical line at the end, in hours
                assert marks["end:short"].get_xdata()[0] == pytest.approx(36.0 / 3600)
    # the time-to-target figure marks each group's earliest end (seconds at this scale)
    from fleetsim.analysis.figures.time_to_accuracy import time_to_accuracy_figure
    from fleetsim.analysis.metrics import time_to_accuracy_table

    table = time_to_accuracy_table(runset, [0.4, 0.7], by="scenario_name")
    ax = time_to_accuracy_figure(table, "scenario_name", ends=ends).axes[0]
    marks = {a.get_gid(): a.get_ydata()[0] for a in ax.get_lines()
             if str(a.get_gid()).startswith("end:")}
    assert set(marks) == {"end:long", "end:short"}
    unit = ax.get_ylabel().split("(")[-1].rstrip(")")
    scale = {"s": 1.0, "min": 60.0, "h": 3600.0}[unit]
    assert marks["end:long"] * scale == pytest.approx(62.0)
    assert marks["end:short"] * scale == pytest.approx(36.0)


def test_eval_grids_must_match(make_run) -> None:
    a = make_run(name="a", extra_params={"protocol.eval_every_s": 60.0})
    b = make_run(name="b", extra_params={"protocol.eval_every_s": 60.0})
    c = make_run(name="c", extra_params={"protocol.eval_every_s": 120.0})
    d = make_run(name="d", extra_params={"protocol.eval_every_steps": 1})
    grids = check_eval_grids(load_runs([a, b]))
    assert grids["protocol.eval_every_s"].tolist() == [60.0, 60.0]
    for other in (c, d):
        with pytest.raises(FleetsimInputError, match="unequal evaluation") as info:
            check_eval_grids(load_runs([a, other]))
        assert "\n" not in str(info.value)
    # every arm at every step: one grid too
    e = make_run(name="e", extra_params={"protocol.eval_every_steps": 1})
    assert len(check_eval_grids(load_runs([d, e]))) == 2


def _with_validation(run_dir: Path, values) -> Path:
    steps = pd.read_parquet(run_dir / "steps.parquet")
    steps["val_accuracy"] = np.asarray(values, dtype=float)
    steps.to_parquet(run_dir / "steps.parquet")
    return run_dir


def test_select_by_validation_picks_each_arms_lr(make_run) -> None:
    # arm fwdllm: lr 0.01 → best val per seed 0.6, 0.7 (mean 0.65); lr 0.1 → 0.8, 0.5 (0.65,
    # a tie: the smaller lr wins); lr 1.0 → 0.2, 0.3.  Test accuracy (0.9 for lr 1.0) never
    # enters the choice.
    # arm fedsgd: lr 0.01 → 0.4, 0.4; lr 0.1 → 0.5, 0.45 (wins).
    spec = {
        ("fwdllm", 0.01): [(0.1, 0.6, 0.2, 0.3), (0.2, 0.7, 0.3, 0.1)],
        ("fwdllm", 0.1): [(0.8, 0.2, 0.2, 0.2), (0.5, 0.1, 0.1, 0.1)],
        ("fwdllm", 1.0): [(0.2, 0.1, 0.1, 0.1), (0.3, 0.1, 0.1, 0.1)],
        ("fedsgd", 0.01): [(0.4, 0.1, 0.1, 0.1), (0.4, 0.1, 0.1, 0.1)],
        ("fedsgd", 0.1): [(0.1, 0.5, 0.1, 0.1), (0.45, 0.1, 0.1, 0.1)],
    }
    dirs = []
    for (protocol, lr), seeds in spec.items():
        for seed, val in enumerate(seeds):
            test = (0.9, 0.9, 0.9, 0.9) if lr == 1.0 else (0.3, 0.5, 0.45, 0.7)
            run = make_run(name=f"{protocol}-lr{lr}-s{seed}", protocol=protocol, seed=seed,
                           accuracies=test, extra_params={"protocol.lr": lr})
            dirs.append(_with_validation(run, val))
    runset = load_runs(dirs)
    chosen = select_by_validation(runset, ["protocol.name"], ["protocol.lr"])
    assert sorted(chosen.chosen_runs) == sorted(
        ["fwdllm-lr0.01-s0", "fwdllm-lr0.01-s1", "fedsgd-lr0.1-s0", "fedsgd-lr0.1-s1"]
    )
    grid = chosen.grid.set_index(["protocol.name", "protocol.lr"])
    assert grid.loc[("fwdllm", 0.01), "validation"] == pytest.approx(0.65)
    assert grid.loc[("fwdllm", 0.1), "validation"] == pytest.approx(0.65)
    assert grid.loc[("fedsgd", 0.1), "validation"] == pytest.approx(0.475)
    assert grid["runs"].tolist() == [2] * 5
    assert "ties to the smaller protocol.lr" in chosen.criterion
    page = chosen.markdown()
    assert page.startswith("Chosen by best val_accuracy over the run, mean over seeds")
    assert "| fwdllm | 0.01 | 2 | 0.6500 | chosen |" in page
    assert "| fwdllm | 0.1 | 2 | 0.6500 |  |" in page
    # a budget of 13 s (the first evaluation only) changes fwdllm's choice to lr 0.1
    # (0.8, 0.5 → 0.65 vs lr 0.01's 0.1, 0.2 → 0.15) and fedsgd's to lr 0.01 (0.4 vs 0.275)
    early = select_by_validation(runset, ["protocol.name"], ["protocol.lr"], budget_s=13.0)
    assert sorted(early.chosen_runs) == sorted(
        ["fwdllm-lr0.1-s0", "fwdllm-lr0.1-s1", "fedsgd-lr0.01-s0", "fedsgd-lr0.01-s1"]
    )
    with pytest.raises(FleetsimInputError, match="not a scenario key"):
        select_by_validation(runset, ["protocol.nope"])


def test_select_by_time_to_a_validation_target(make_run) -> None:
    # issue 23 (c): a time-to-accuracy study tunes each arm on how soon it reaches the target
    # on the validation split.  lr 0.01: both seeds reach 0.6, at evaluations 3 and 2; lr 0.1:
    # both reach it at evaluation 2 (sooner: chosen, although lr 0.01's best validation
    # accuracy is higher); lr 1.0: one seed only (the test split, 0.9, never counts).
    spec = {
        0.01: [(0.1, 0.2, 0.6, 0.9), (0.2, 0.6, 0.3, 0.9)],
        0.1: [(0.1, 0.6, 0.5, 0.5), (0.2, 0.65, 0.3, 0.3)],
        1.0: [(0.7, 0.1, 0.1, 0.1), (0.3, 0.1, 0.1, 0.1)],
    }
    dirs = []
    for lr, seeds in spec.items():
        for seed, val in enumerate(seeds):
            run = make_run(name=f"lr{lr}-s{seed}", protocol="fwdllm", seed=seed,
                           accuracies=(0.9, 0.9, 0.9, 0.9), extra_params={"protocol.lr": lr})
            dirs.append(_with_validation(run, val))
    runset = load_runs(dirs)
    times = runset.steps.groupby("run")["sim_time_s"].apply(list)
    chosen = select_by_validation(runset, ["protocol.name"], ["protocol.lr"], target=0.6)
    assert sorted(chosen.chosen_runs) == ["lr0.1-s0", "lr0.1-s1"]
    grid = chosen.grid.set_index("protocol.lr")
    assert grid["reached"].tolist() == [2, 2, 1]
    assert grid.loc[0.01, "median_s"] == pytest.approx(
        (times["lr0.01-s0"][2] + times["lr0.01-s1"][1]) / 2)
    assert grid.loc[0.1, "median_s"] == pytest.approx(times["lr0.1-s0"][1])
    assert grid.loc[1.0, "median_s"] == math.inf  # the median of one hit and one miss
    assert grid.loc[0.01, "validation"] > grid.loc[0.1, "validation"]
    assert chosen.criterion.startswith("most seeds reaching val_accuracy 0.6")
    page = chosen.markdown()
    assert "| fwdllm | 1 | 2 | 0.5000 | 1 of 2 | not reached |  |" in page
    assert "| fwdllm | 0.1 | 2 | 0.6250 | 2 of 2 | " in page
    # a budget before lr 0.1's hits: lr 1.0's single early hit now wins on seeds reaching
    early = select_by_validation(runset, ["protocol.name"], ["protocol.lr"], target=0.6,
                                 budget_s=times["lr1.0-s0"][0])
    assert sorted(early.chosen_runs) == ["lr1.0-s0", "lr1.0-s1"]
    # a page recomputes the choice from the committed per-run table alone
    from io import StringIO

    from fleetsim.analysis.discipline import choose_settings, validation_scores

    per_run = validation_scores(runset, ["protocol.name", "protocol.lr"], target=0.6)
    text = per_run.to_csv(index=False)
    again = choose_settings(pd.read_csv(StringIO(text)), ["protocol.name"], ["protocol.lr"],
                            by_time=True)
    pd.testing.assert_frame_equal(again.grid, chosen.grid)
    assert sorted(again.chosen_runs) == sorted(chosen.chosen_runs)


def test_select_by_validation_needs_a_validation_split(make_run) -> None:
    runset = load_runs([make_run(name="a")])
    with pytest.raises(FleetsimInputError, match="validation split"):
        select_by_validation(runset, ["protocol.name"])


def _render(table: pd.DataFrame) -> str:
    """A page computed from a per-run table only: per arm, mean time to target with its
    interval, and the runs it came from."""
    lines = ["# Synthetic study", "", "| arm | runs | minutes to target (95 % interval) |",
             "| --- | --- | --- |"]
    for arm, part in table.groupby("arm", sort=True):
        mean, low, high, _ = mean_confidence_interval(part["tta_s"] / 60.0)
        lines.append(f"| {arm} | {len(part)} | {mean:.4g} [{low:.4g}, {high:.4g}] |")
    commits = ", ".join(sorted(set(table["commit"])))
    lines += ["", f"Runs from commit {commits}."]
    return "\n".join(lines) + "\n"


def test_page_is_regenerated_from_the_committed_table(make_run, tmp_path) -> None:
    rng = np.random.default_rng(3)
    dirs, rows = [], []
    for arm in ("a", "b"):
        for seed in range(10):
            run = make_run(name=f"{arm}-{seed}", seed=seed)
            dirs.append(run)
            rows.append({"run": run.name, "arm": arm, "seed": seed,
                         "tta_s": float(rng.lognormal(4.0 if arm == "a" else 4.5, 0.3))})
    table = runs_table(pd.DataFrame(rows), dirs, commit="abc123")
    assert table.columns[:3].tolist() == ["run", "commit", "scenario_hash"]
    assert table.loc[0, "scenario_hash"] == scenario_hash(dirs[0]) and len(
        table.loc[0, "scenario_hash"]) == 16
    csv = write_runs_table(table, tmp_path / "results" / "synthetic" / "runs.csv")
    page = write_page(csv, tmp_path / "results" / "synthetic.md", _render)
    # the table round-trips bit for bit, and the page holds the numbers computed by hand
    back = read_runs_table(csv)
    assert back["tta_s"].tolist() == table["tta_s"].tolist()
    a = table[table["arm"] == "a"]["tta_s"] / 60.0
    mean, low, high, n = mean_confidence_interval(a)
    assert mean == pytest.approx(a.mean()) and n == 10 and low < mean < high
    assert f"| a | 10 | {a.mean():.4g} [{low:.4g}, {high:.4g}] |" in page.read_text()
    check_page(csv, page, _render)
    # a number edited by hand on the page fails the check
    edited = page.read_text().replace(f"{a.mean():.4g}", f"{a.mean() * 0.9:.4g}")
    page.write_text(edited)
    assert page_differences(csv, page, _render)
    with pytest.raises(FleetsimInputError, match="not regenerated"):
        check_page(csv, page, _render)
    # so does a table changed without regenerating the page
    write_page(csv, page, _render)
    changed = back.copy()
    changed.loc[0, "tta_s"] *= 2
    write_runs_table(changed, csv)
    with pytest.raises(FleetsimInputError, match="not regenerated"):
        check_page(csv, page, _render)


def test_runs_table_needs_provenance(tmp_path, make_run) -> None:
    with pytest.raises(FleetsimInputError, match="no run directory for x"):
        runs_table(pd.DataFrame({"run": ["x"]}), [make_run(name="y")])
    with pytest.raises(FleetsimInputError, match="lacks commit, scenario_hash"):
        write_runs_table(pd.DataFrame({"run": ["x"]}), tmp_path / "r.csv")


def test_study_discipline_refuses_full_and_marks_quick(make_run) -> None:
    from fleetsim.analysis.study import check_discipline

    long = make_run(name="long", accuracies=(0.3, 0.5, 0.45, 0.7))
    short = make_run(name="short", accuracies=(0.3, 0.4))
    with pytest.raises(FleetsimInputError, match="unequal horizons"):
        check_discipline([long, short], [0.8], mark=False)
    assert check_discipline([long, short], [0.8], mark=True) == {"long": 62.0, "short": 36.0}
    near = make_run(name="near", accuracies=(0.3, 0.5, 0.45, 0.5), trailing_idle_s=9.5)
    assert check_discipline([long, near], [0.6], mark=False) is None  # 61.5 s of 62 s
    other_grid = make_run(name="grid", extra_params={"protocol.eval_every_s": 30.0})
    with pytest.raises(FleetsimInputError, match="unequal evaluation"):
        check_discipline([long, other_grid], [0.6], mark=True)


def test_per_run_table_has_every_run_with_provenance(make_run) -> None:
    from fleetsim.analysis.study import per_run_table

    a = make_run(name="a", seed=0, accuracies=(0.3, 0.5, 0.45, 0.7))
    b = _with_validation(make_run(name="b", seed=1, accuracies=(0.3, 0.4)), (0.2, 0.35))
    table = per_run_table([a, b], ["run.seed"], targets=[0.5, 0.7])
    assert table["run"].tolist() == ["a", "b"]
    assert table.columns[:4].tolist() == ["run", "commit", "scenario_hash", "run.seed"]
    assert table["run.seed"].tolist() == [0, 1]
    assert table["end_s"].tolist() == [62.0, 36.0]
    # a reaches 0.5 at its second commit (26 s) and 0.7 at its fourth (52 s); b neither
    assert table["tta_0.5_s"].tolist() == [26.0, math.inf]
    assert table["tta_0.7_s"].tolist() == [52.0, math.inf]
    assert table["final_accuracy"].tolist() == [0.7, 0.4]
    assert table.loc[1, "best_val_accuracy"] == 0.35 and math.isnan(
        table.loc[0, "best_val_accuracy"])
    assert len(set(table["commit"])) == 1


def test_per_run_table_takes_the_commit_each_run_recorded(make_run) -> None:
    import json

    from fleetsim.analysis.pages import git_commit
    from fleetsim.analysis.study import per_run_table

    a, b = make_run(name="a", seed=0), make_run(name="b", seed=1)
    summary = json.loads((a / "summary.json").read_text())
    summary.update(git_commit="abc123", git_dirty=True)
    (a / "summary.json").write_text(json.dumps(summary))
    table = per_run_table([a, b], ["run.seed"])
    # a's own record; b (written before runs recorded it) falls back to the tree's HEAD
    assert table["commit"].tolist() == ["abc123+dirty", git_commit()]


def test_recorded_evaluation_points_must_match(make_run) -> None:
    nan = math.nan
    # the same scenario keys, but one run was evaluated every step, the other every second
    # step (as a protocol that ignores eval_every_steps would): refused
    every = make_run(name="every", accuracies=(0.3, 0.4, 0.5, 0.55, 0.6))
    second = make_run(name="second", accuracies=(nan, 0.4, nan, 0.55, 0.6))
    with pytest.raises(FleetsimInputError, match=r"second was evaluated at \[1, 3\]"):
        check_eval_grids(load_runs([every, second]))
    # the same points over the range both cover (a shorter run ends earlier): accepted
    longer = make_run(name="longer", accuracies=(nan, 0.4, nan, 0.55, nan, 0.6, 0.61))
    check_eval_grids(load_runs([second, longer]))


def test_compare_refuses_or_flags_different_grids(make_run, tmp_path, capsys) -> None:
    from fleetsim.cli import main

    a = make_run(name="a", extra_params={"protocol.eval_every_s": 60.0})
    b = make_run(name="b", extra_params={"protocol.eval_every_s": 120.0})
    out = tmp_path / "cmp"
    assert main(["compare", str(a), str(b), "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "unequal evaluation" in err
    assert "eval_every_s=120, protocol.eval_every_steps=0 (b)" in err
    assert main(["compare", str(a), str(b), "--out", str(out),
                 "--unequal-horizons", "mark"]) == 0
    assert "**unequal evaluation" in (out / "comparison.md").read_text()


@pytest.mark.parametrize("study", ["perturbations_per_batch", "end_to_end",
                                   "policies_under_churn"])
def test_study_scripts_report_bad_input_in_one_line(study, tmp_path) -> None:
    script = Path(__file__).resolve().parents[2] / "analysis" / study / "run.py"
    done = subprocess.run(
        [sys.executable, str(script), "--quick", "--out", str(tmp_path), "--set",
         "protocol.nope=1"], capture_output=True, text=True)
    assert done.returncode == 2
    assert done.stderr.startswith(f"{study}: error: ") and "protocol.nope" in done.stderr
    assert done.stderr.strip().count("\n") == 0 and "Traceback" not in done.stderr


def test_select_by_validation_over_lr_and_optimiser(make_run) -> None:
    # one arm, lr × optimiser grid, one seed each: best validation 0.5, 0.6, 0.7 (sgd, 0.1)
    # and 0.7 (adam, 0.1) — a tie between the two optimisers at lr 0.1 goes to the first in
    # sort order of (lr, optimiser): adam
    best = {(0.01, "adam"): 0.5, (0.01, "sgd"): 0.6, (0.1, "adam"): 0.7, (0.1, "sgd"): 0.7}
    dirs = []
    for (lr, optimiser), value in best.items():
        run = make_run(name=f"{optimiser}-{lr}", extra_params={
            "protocol.lr": lr, "numerics.server_optimizer.name": optimiser})
        dirs.append(_with_validation(run, (0.1, value, 0.2, 0.3)))
    keys = ("protocol.lr", "numerics.server_optimizer.name")
    chosen = select_by_validation(load_runs(dirs), ["protocol.name"], keys)
    assert chosen.chosen_runs == ["adam-0.1"]
    assert chosen.grid["chosen"].tolist() == [False, False, True, False]
