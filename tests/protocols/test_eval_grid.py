"""protocol.eval_every_s: every arm evaluated on one simulated-time grid (issue 23, rule 2).

A grid run and a run evaluated after every step train identically (evaluation draws no
randomness), so the model current at grid time t is the one the step-evaluated run
evaluated after the last commit at or before t: their evaluations must be equal."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from fleetsim.cli import main
from fleetsim.runner import run_scenario

SCENARIO = """\
fleet: {{size: 4}}
traces:
  availability: {{kind: always_online}}
  network: {{type: fixed, uplink_mbps: 10, downlink_mbps: 10}}
model: {{name_or_path: tiny-bert, max_seq_len: 16}}
data: {{name: bbc_news, max_examples: 96, max_eval_examples: 40, batch_size: 4}}
numerics: {{threads: 1}}
protocol: {{devices_per_step: 2, perturbations_per_device: 4, rounds: 1, batches_per_round: 6,
           lr: 0.05, {evaluation}}}
run: {{name: grid, progress: false}}
"""


def _run(tmp_path: Path, name: str, evaluation: str) -> tuple[pd.DataFrame, dict]:
    path = tmp_path / f"{name}.yaml"
    path.write_text(SCENARIO.format(evaluation=evaluation))
    out = run_scenario(path, run_dir=tmp_path / name)
    return pd.read_parquet(out / "steps.parquet"), json.loads((out / "summary.json").read_text())


def test_time_grid_evaluates_the_model_current_at_exact_grid_times(tmp_path: Path) -> None:
    every = 0.03  # simulated seconds; a step takes ~0.021 s here
    per_step, _ = _run(tmp_path, "per_step", "eval_every_steps: 1")
    grid, summary = _run(tmp_path, "grid", f"eval_every_s: {every}")
    commits = grid[grid["committed"]]
    evals = grid[grid["attempt"] == -1]
    # the same training: identical commit times
    np.testing.assert_array_equal(commits["sim_time_s"], per_step["sim_time_s"])
    end = float(commits["sim_time_s"].max())
    k = np.arange(int(np.floor(end / every)) + 1)
    assert (evals["sim_time_s"].to_numpy() == k * every).all()  # exact, t = 0 included
    assert (evals[["devices", "perturbations", "bytes_up", "bytes_down"]] == 0).all().all()
    assert not evals["committed"].any() and grid[grid["attempt"] >= 0]["accuracy"].isna().all()
    for _, row in evals.iterrows():
        done = per_step[per_step["sim_time_s"] <= row["sim_time_s"]]
        # steps committed so far; the model is the one evaluated after the last of them
        assert row["step"] == len(done)
        if len(done):
            assert row["eval_loss"] == done["eval_loss"].iloc[-1]
            assert row["accuracy"] == done["accuracy"].iloc[-1]
    # t = 0 is the initial model, before the first step: not any step's model
    assert evals["eval_loss"].iloc[0] not in set(per_step["eval_loss"])
    # evaluation rows are neither attempts nor variance repeats
    assert summary["steps"] == 6 and summary["step_attempts"] == 6
    assert summary["variance_repeats"] == 0
    assert summary["final_accuracy"] == evals["accuracy"].iloc[-1]
    # byte-identical on a rerun
    again, _ = _run(tmp_path, "again", f"eval_every_s: {every}")
    pd.testing.assert_frame_equal(grid, again)


@pytest.mark.parametrize("bad", ["eval_every_s: 60, eval_every_steps: 2", "eval_every_s: -1"])
def test_time_grid_refuses_a_second_grid_or_negative_interval(tmp_path, capsys, bad) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text(SCENARIO.format(evaluation=bad))
    assert main(["validate", str(path)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "eval_every_s" in err[0] and "bad.yaml" in err[0]


def test_grid_evaluations_record_validation_and_test_accuracy(tmp_path: Path) -> None:
    from fleetsim.numerics.config import DataConfig
    from fleetsim.numerics.datasets import load_text_dataset
    from fleetsim.numerics.partition import split_with_validation

    plain, _ = _run(tmp_path, "plain", "eval_every_s: 0.03")
    assert "val_accuracy" not in plain.columns  # no validation split: no column
    path = tmp_path / "val.yaml"
    path.write_text(SCENARIO.format(evaluation="eval_every_s: 0.03").replace(
        "batch_size: 4}", "batch_size: 4, validation_fraction: 0.25}"))
    out = run_scenario(path, run_dir=tmp_path / "val")
    steps = pd.read_parquet(out / "steps.parquet")
    evals = steps[steps["attempt"] == -1]
    assert np.isfinite(evals[["val_accuracy", "val_loss", "accuracy"]].to_numpy()).all()
    assert steps[steps["attempt"] >= 0]["val_accuracy"].isna().all()
    # the splits the engine evaluated: accuracy × size is a whole number of examples for
    # the validation split (0.25 of the 80 % training part of bbc_news, 445 examples) and
    # the 40-example test cap
    cfg = DataConfig(name="bbc_news", max_examples=96, max_eval_examples=40, batch_size=4,
                     validation_fraction=0.25)
    train, validation, test = split_with_validation(
        cfg, load_text_dataset(cfg, tmp_path).labels, seed=0)
    assert (len(train), len(validation), len(test)) == (96, 445, 40)
    for column, n in (("val_accuracy", len(validation)), ("accuracy", len(test))):
        counts = evals[column].to_numpy() * n
        np.testing.assert_allclose(counts, np.round(counts), atol=1e-9)
