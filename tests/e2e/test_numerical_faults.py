"""A non-finite loss or estimate stops the run cleanly (exit 3, final checkpoint, outputs
written, event logged), or is skipped and logged when the scenario says so."""

from __future__ import annotations

import json

import pandas as pd

from fleetsim.cli import main
from fleetsim.record.checkpoint import CHECKPOINT_NAME

SCENARIO = """\
fleet:
  size: 12
traces:
  availability:
    kind: always_online
numerics:
  engine: torch
  server_optimizer: {{name: sgd}}
  on_nonfinite: {mode}
model:
  name_or_path: tiny-bert
  max_seq_len: 16
data:
  name: bbc_news
  max_examples: 200
  max_eval_examples: 40
protocol:
  lr: 1.0e+30         # step 0 throws θ to ~1e30: every loss of step 1 is non-finite
  devices_per_step: 4
  perturbations_per_device: 2
  rounds: 1
  batches_per_round: 2
run:
  name: faults
output:
  checkpoint_every_steps: 1
"""


def test_nonfinite_stops_run_with_message_checkpoint_and_outputs(tmp_path, capsys):
    p = tmp_path / "s.yaml"
    p.write_text(SCENARIO.format(mode="stop"))
    out = tmp_path / "run"
    code = main(["run", str(p), "--out", str(out), "--no-progress"])
    err = capsys.readouterr().err
    assert code == 3
    assert "numerical fault" in err and "Traceback" not in err
    assert (out / CHECKPOINT_NAME).is_file()
    summary = json.loads((out / "summary.json").read_text())
    assert summary["status"] == "diverged" and summary["stopped_by"] == "numerical_fault"
    assert summary["diverged_at_step"] == 1
    ev = pd.read_parquet(out / "events.parquet")
    assert (ev["kind"] == "numerical_fault").sum() == 1


def test_nonfinite_skip_logs_each_skipped_estimate(tmp_path, capsys):
    p = tmp_path / "s.yaml"
    p.write_text(SCENARIO.format(mode="skip"))
    out = tmp_path / "run"
    code = main(["run", str(p), "--out", str(out), "--no-progress"])
    err = capsys.readouterr().err
    # every estimate of step 1 is skipped and logged; the model itself (θ ~ 1e30 after
    # step 0) then fails its evaluation, which no skip rule hides: exit 3, "diverged"
    assert code == 3 and "evaluated to a non-finite loss" in err, err
    ev = pd.read_parquet(out / "events.parquet")
    faults = ev[ev["kind"] == "numerical_fault"]
    assert len(faults) >= 4 and (faults["device_id"] >= 0).all()
    assert faults["detail"].str.contains("skipped").all()
    assert set(faults["step"]) == {1}
