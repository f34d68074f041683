"""Whole runs from scenario files: the closed-form timeline, determinism, the run directory."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest

from fleetsim.cli import main
from fleetsim.runner import run_scenario

ROOT = Path(__file__).resolve().parents[2]
SCENARIOS = ROOT / "scenarios"
AG_NEWS = ROOT.parent / "shared" / "datasets" / "ag_news" / "test.csv"

CHURN = """\
fleet:
  size: 60
  interruption: {interruption}
traces:
  availability:
    kind: diurnal_model
  network:
    type: hsdpa_3g
numerics:
  engine: {engine}
model:
  name_or_path: tiny-bert
  max_seq_len: 32
data:
  name: bbc_news
  max_examples: 400
  max_eval_examples: 100
protocol:
  devices_per_step: 8
  perturbations_per_device: 3
  rounds: 2
  batches_per_round: 3
  variance:
    enabled: {variance}
    threshold: 0.5
    max_repeats: 2
policy:
  name: {policy}
  cohort: availability_aware
run:
  name: churn
  seed: {seed}
"""


def churn(tmp_path: Path, name="s.yaml", engine="none", policy="capability", seed=1,
          interruption="lose", variance="false") -> Path:
    p = tmp_path / name
    p.write_text(CHURN.format(engine=engine, policy=policy, seed=seed,
                              interruption=interruption, variance=variance))
    return p


@pytest.mark.skipif(not AG_NEWS.exists(), reason="needs ../shared/datasets/ag_news/test.csv")
def test_paper_closed_form_minutes_per_round(tmp_path):
    out = run_scenario(SCENARIOS / "paper_closed_form.yaml", run_dir=tmp_path / "run")
    s = json.loads((out / "summary.json").read_text())
    # phones are charged for the paper's DistilBERT adapters; the learning model is the same
    assert s["charged_trainable_params"] == 450_340 == s["learned_trainable_params"]
    assert "model" not in s and "trainable_params" not in s
    minutes = s["simulated_seconds"] / s["rounds"] / 60
    assert f"{minutes:.4g}" == "0.4207"
    steps = pd.read_parquet(out / "steps.parquet")
    assert (steps.groupby("round")["step"].count() == 15).all()
    assert s["systems_only"] is True and "systems-only" in s["mode"]


def test_run_directory_contents(tmp_path):
    out = run_scenario(churn(tmp_path), run_dir=tmp_path / "run")
    for name in ("scenario.yaml", "steps.parquet", "events.parquet", "devices.parquet",
                 "summary.json", "convergence.png"):
        assert (out / name).is_file(), name
    s = json.loads((out / "summary.json").read_text())
    for key in ("final_accuracy", "simulated_seconds", "rounds", "steps", "host_seconds",
                "time_to_target"):
        assert key in s
    assert s["final_accuracy"] is None and s["systems_only"]
    assert s["availability_label"].startswith("model")
    dev = pd.read_parquet(out / "devices.parquet")
    assert dev["perturbations"].sum() == s["total_perturbations"] or s["total_perturbations"] > 0
    # no temporary files left behind
    assert not [p for p in out.iterdir() if p.name.startswith(".")]


@pytest.mark.parametrize("interruption", ["pause", "lose"])
def test_same_seed_byte_identical_outputs(tmp_path, interruption):
    a = run_scenario(churn(tmp_path, interruption=interruption), run_dir=tmp_path / "a")
    b = run_scenario(churn(tmp_path, interruption=interruption), run_dir=tmp_path / "b")
    for name in ("steps.parquet", "events.parquet", "devices.parquet"):
        assert (a / name).read_bytes() == (b / name).read_bytes(), name
    c = run_scenario(churn(tmp_path, "c.yaml", seed=2, interruption=interruption),
                     run_dir=tmp_path / "c")
    assert (a / "events.parquet").read_bytes() != (c / "events.parquet").read_bytes()


def test_same_seed_identical_with_real_numerics(tmp_path):
    kw = dict(engine="torch", policy="uniform", variance="true")
    a = run_scenario(churn(tmp_path, **kw), run_dir=tmp_path / "a")
    b = run_scenario(churn(tmp_path, **kw), run_dir=tmp_path / "b")
    for name in ("steps.parquet", "events.parquet"):
        assert (a / name).read_bytes() == (b / name).read_bytes(), name
    steps = pd.read_parquet(a / "steps.parquet")
    assert steps["loss"].notna().all() and steps["accuracy"].notna().any()


def test_initial_evaluation_is_in_the_summary_and_changes_nothing_else(tmp_path, monkeypatch):
    """Issue 24: every run with numerics evaluates the initial model before its first step
    (summary.json ``initial_accuracy``/``initial_eval_loss``; accuracy curves start there).
    Its value is the initial model's: that of the t = 0 row of a ``protocol.eval_every_s``
    grid, which evaluates the same model by another path.  Steps, events and every other
    summary number are those of the same run without it, byte for byte."""
    from fleetsim.analysis.figures.convergence import progress_frame
    from fleetsim.analysis.load import load_run
    from fleetsim.protocols.server import StepServer

    kw = dict(engine="torch", policy="uniform", variance="true")
    a = run_scenario(churn(tmp_path, **kw), run_dir=tmp_path / "a")
    grid = churn(tmp_path, "grid.yaml", **kw)
    grid.write_text(grid.read_text().replace(
        "  rounds: 2\n", "  rounds: 2\n  eval_every_s: 1000000\n"))
    g = run_scenario(grid, run_dir=tmp_path / "g")
    with monkeypatch.context() as patch:
        patch.setattr(StepServer, "_evaluate_initial_model", lambda self: None)
        b = run_scenario(churn(tmp_path, **kw), run_dir=tmp_path / "b")
    for name in ("steps.parquet", "events.parquet", "devices.parquet"):
        assert (a / name).read_bytes() == (b / name).read_bytes(), name
    summary = json.loads((a / "summary.json").read_text())
    without = json.loads((b / "summary.json").read_text())
    grid_first = pd.read_parquet(g / "steps.parquet").iloc[0]
    assert grid_first["sim_time_s"] == 0.0 and grid_first["attempt"] == -1
    assert summary["initial_accuracy"] == grid_first["accuracy"]
    assert summary["initial_eval_loss"] == grid_first["eval_loss"]
    assert json.loads((g / "summary.json").read_text())["initial_accuracy"] == \
        grid_first["accuracy"]
    assert without["initial_accuracy"] is None
    for key in ("final_accuracy", "best_accuracy", "time_to_target", "steps", "rounds",
                "simulated_seconds", "stopped_by", "status", "step_attempts"):
        assert summary[key] == without[key], key
    # the curves start at t = 0 with it
    frame = progress_frame(load_run(a), load_run(a).runs[0])
    first = frame.iloc[0]
    assert (first["sim_time_s"], first["accuracy"]) == (0.0, summary["initial_accuracy"])
    assert first["steps"] == 0 and first["perturbations"] == 0


def test_cli_set_overrides_and_validate(tmp_path, capsys):
    p = churn(tmp_path)
    assert main(["validate", str(p), "--set", "protocol.lr=0.02"]) == 0
    out = tmp_path / "run"
    code = main(["run", str(p), "--set", "protocol.rounds=1", "--set", "run.seed=3",
                 "--out", str(out), "--no-progress"])
    assert code == 0
    resolved = (out / "scenario.yaml").read_text()
    assert "rounds: 1" in resolved and "seed: 3" in resolved
