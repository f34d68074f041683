"""Each study's --quick sweep, run for real (the CI smoke test of analysis/*/run.py), with
one figure of each checked against the run directories read another way."""

import json
import math
from pathlib import Path

import pandas as pd
import pytest

REPO = Path(__file__).resolve().parents[2]
DATA = REPO / ".." / "shared" / "datasets" / "ag_news" / "test.csv"
pytestmark = pytest.mark.skipif(not DATA.is_file(), reason="AG News not present")


def _script(study: str):
    from fleetsim.analysis.study import load_study_script

    return load_study_script(REPO / "analysis" / study / "run.py")


def _first_reach_s(run_dir: Path, target: float) -> float:
    steps = pd.read_parquet(run_dir / "steps.parquet")
    hit = steps[steps["accuracy"] >= target - 1e-12]
    return float(hit["sim_time_s"].min()) if len(hit) else math.inf


def test_perturbations_per_batch_quick(tmp_path: Path) -> None:
    """Issue 23 (a): stage 1 tunes each v's lr on the validation split, stage 2 reuses the
    chosen runs; every run ends at the one budget, the target comes from validation, the
    per-run table's times are each run's first reach on the test split, and the page is a
    function of the table."""
    module = _script("perturbations_per_batch")
    module.main(["--quick", "--out", str(tmp_path)])
    figures = tmp_path / "figures-quick"
    for name in ("runs.csv", "page.md", "curves.png", "study.json"):
        assert (figures / name).is_file(), name
    table = pd.read_csv(figures / "runs.csv")
    runs = tmp_path / "runs" / "quick"
    assert len(table) == 4 and table["scenario_hash"].str.len().eq(16).all()
    # equal horizons: every run ended at the budget (within the last step's overshoot)
    assert table["end_s"].min() >= 0.99 * table["end_s"].max()
    # the target: the best mean (over the tuning seeds) best validation accuracy, read from
    # the run directories directly
    best_val = {}
    for run in table["run"]:
        steps = pd.read_parquet(runs / run / "steps.parquet")
        best_val[run] = float(steps["val_accuracy"].max())
    table["direct_val"] = table["run"].map(best_val)
    target = table.groupby("protocol.perturbations_per_device")["direct_val"].mean().max()
    assert table["target_accuracy"].iloc[0] == pytest.approx(target)
    for _, row in table.iterrows():
        for fraction in module.FRACTIONS:
            assert row[module.tta_column(fraction)] == pytest.approx(
                _first_reach_s(runs / row["run"], fraction * target))
    assert (figures / "page.md").read_text() == module.render(
        pd.read_csv(figures / "runs.csv"))
    facts = json.loads((figures / "study.json").read_text())
    assert facts["chosen_lr"] == {"1": 0.03, "10": 0.03}


def test_end_to_end_quick(tmp_path: Path) -> None:
    """Study (b)'s smoke sweeps of its three settings through the study's own reducers:
    each row's times, steps and step cost are the run folders' read another way, each arm
    is its paper's method, the page is a function of the table, and setting fleet_llama7b
    charges the phones for LLaMA-2-7B while MiniLM supplies the learning signal."""
    module = _script("end_to_end")
    module.main(["--quick", "--out", str(tmp_path)])
    figures = tmp_path / "figures-quick"
    methods = {"fwdllm": "FwdLLM", "adapter_bp": "Adapter-BP", "fedadapter": "FedAdapter"}
    for setting in ("paper", "fleet", "fleet_llama7b"):
        table = pd.read_csv(figures / f"runs_{setting}.csv")
        assert (figures / f"page_{setting}.md").read_text() == module.render(table)
        runs = tmp_path / "runs"  # the run column is <sweep folder>/<run id>
        assert {"fwdllm", "adapter_bp"} <= set(table["arm"])
        for _, row in table.iterrows():
            assert row["method"] == methods[row["arm"]]
            assert row["run"].startswith(f"{setting}_quick/arm=")
            steps = pd.read_parquet(runs / row["run"] / "steps.parquet")
            for target in (0.7, 0.75, 0.8):
                assert row[f"tta_{target:g}_s"] == _first_reach_s(runs / row["run"], target)
            commits = steps.loc[steps["committed"] & (steps["attempt"] >= 0), "sim_time_s"]
            if len(commits):
                gaps = [b - a for a, b in zip([0.0, *sorted(commits)], sorted(commits))]
                assert row["s_per_step"] == pytest.approx(float(pd.Series(gaps).median()))
    paper = pd.read_csv(figures / "runs_paper.csv").set_index("arm")
    # one FwdLLM step is one perturbation per client over the whole cohort, on the paper's
    # closed form: 0.3085584 s + 450,340 fp32 weights at 10 Mibit/s
    assert paper.loc["fwdllm", "s_per_step"] == pytest.approx(
        0.3085584 + 450_340 * 32 / (10 * 2**20))
    seven = json.loads(next((tmp_path / "runs" / "fleet_llama7b_quick").glob(
        "arm=fwdllm*/summary.json")).read_text())
    assert seven["charged_model"] == "llama-2-7b"
    assert "learning signal from all-minilm-l6-v2" in seven["model_label"]


def test_policies_under_churn_quick(tmp_path: Path) -> None:
    _script("policies_under_churn").main(["--quick", "--out", str(tmp_path)])
    figures = tmp_path / "figures-quick"
    per_run = pd.read_csv(figures / "runs.csv")
    assert set(per_run["start_hour"]) == {9.0, 21.0}
    assert set(per_run["arm"]) == {"barrier", "overselect_deadline"}
    for _, row in per_run.iterrows():
        summary = json.loads((tmp_path / "runs" / "quick" / row["run"] / "summary.json")
                             .read_text())
        assert row["steps"] == summary["steps"]
        assert row["k_perturbations"] == pytest.approx(summary["total_perturbations"] / 1e3)
        assert row["kj_per_k_perturbations"] == pytest.approx(
            summary["energy_j"] / summary["total_perturbations"])
        assert summary["model_label"] == "tinyllama-1.1b"  # systems-only: no learning signal
    for name in ("churn.md", "churn_metrics.png", "steps_over_time.png", "step_time.png"):
        assert (figures / name).is_file(), name
    module = _script("policies_under_churn")
    assert (figures / "page.md").read_text() == module.render_systems(per_run)


def test_policies_under_churn_accuracy_quick(tmp_path: Path) -> None:
    # real forward gradients on the same fleet; the table's medians are the runs' own
    # times to target (one seed: reached -> its time, not reached -> inf)
    # with its tuning stage (each arm's rate chosen on a validation split, issue 23 rule 3)
    _script("policies_under_churn").main(["--accuracy", "--tune", "--quick", "--out",
                                          str(tmp_path)])
    figures = tmp_path / "figures-accuracy-quick"
    table = pd.read_csv(figures / "time_to_accuracy_wide.csv").set_index("variant")
    assert (table["start_hour"] == 9).all()
    both = pd.read_csv(figures / "runs.csv")
    tune = both[both["stage"] == "tune"]
    assert len(tune) == 4 and set(tune["lr"]) == {0.01, 0.03}
    for _, row in tune.iterrows():
        run_dir = tmp_path / "runs" / "accuracy_tune-quick" / row["run"]
        steps = pd.read_parquet(run_dir / "steps.parquet")
        summary = json.loads((run_dir / "summary.json").read_text())
        hits = steps[(steps["val_accuracy"] >= 0.5 - 1e-12)]
        first = float(hits["sim_time_s"].min()) if len(hits) else math.inf
        assert row["first_val_s"] == pytest.approx(first) if math.isfinite(first) \
            else math.isinf(row["first_val_s"])
        # a tuning run that reached the target on the validation split stopped there
        if math.isfinite(first):
            assert summary["stopped_by"] == "targets_reached"
            evaluated = steps.loc[steps["val_accuracy"].notna(), "sim_time_s"]
            assert float(evaluated.max()) == pytest.approx(first)  # no evaluation after it
    module = _script("policies_under_churn")
    selection = module.tuning_selection(both)
    assert sorted(selection.grid.loc[selection.grid["chosen"], "arm"]) == [
        "capability_10", "variance_paced"]
    page = (figures / "page.md").read_text()
    assert "## Tuning: each arm's learning rate on the validation split" in page
    per_run = both[both["stage"] == "final"].reset_index(drop=True)
    assert len(per_run) == 2
    assert set(per_run["arm"]) == {"variance_paced", "capability_10"}
    for _, row in per_run.iterrows():
        summary = json.loads((tmp_path / "runs" / "accuracy-quick" / row["run"]
                              / "summary.json").read_text())
        assert summary["learning_model"] != summary["charged_model"]
        for target in (0.4, 0.5):
            reached = summary["time_to_target"][f"{target:g}"]
            cell = table.loc[row["arm"], f"h_to_{target:g}"]
            if reached is None:
                assert math.isinf(cell)
                assert table.loc[row["arm"], f"reached_{target:g}"] == "reached 0 of 1"
            else:
                assert cell == pytest.approx(reached / 3600.0)
        if summary["time_to_target"]["0.5"] is not None:
            assert summary["stopped_by"] == "targets_reached"
    for name in ("time_to_accuracy.md", "accuracy.png", "churn.md"):
        assert (figures / name).is_file(), name
    # the control's budget is what it says: 10 perturbations in every committed step
    control = per_run.set_index("arm").loc["capability_10"]
    assert control["perturbations_per_step"] == pytest.approx(10.0)
    assert page == module.render_accuracy(both)


def test_devices_per_step_quick(tmp_path: Path) -> None:
    _script("devices_per_step").main(["--quick", "--out", str(tmp_path)])
    table = pd.read_csv(tmp_path / "figures-quick" / "step_time.csv")
    assert table["protocol.devices_per_step"].tolist() == [5, 20, 100]
    assert (table["step_s_ci_low"].isna() | (table["step_s_ci_low"] >= 0)).all()
