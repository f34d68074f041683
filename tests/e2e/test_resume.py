"""Kill a run with SIGKILL mid-way, resume it, get byte-identical outputs."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest

from fleetsim.cli import main
from fleetsim.record.checkpoint import CHECKPOINT_NAME, read_checkpoint

SCENARIO = """\
fleet:
  size: 30
  interruption: lose
traces:
  availability:
    kind: diurnal_model
numerics:
  engine: torch
  server_optimizer:
    name: adam
model:
  name_or_path: tiny-bert
  max_seq_len: 32
data:
  name: bbc_news
  max_examples: 300
  max_eval_examples: 60
protocol:
  devices_per_step: 6
  perturbations_per_device: 4
  rounds: 6
  batches_per_round: 3
  eval_every_steps: 3
  variance:
    enabled: true
    threshold: 0.6
    max_repeats: 1
run:
  name: resume
  seed: 5
output:
  checkpoint_every_steps: 2
"""


#: FedKSeed-Pro: the seed draws depend on the scalars of every committed step, which a
#: resumed run gets back from the journal, not from recomputing.
KSEED = SCENARIO.replace("name: adam", "name: sgd").replace(
    "protocol:\n", "protocol:\n  name: kseed\n  seed_pool: 64\n  seed_sampling: importance\n")


#: Issue 23: evaluations on a simulated-time grid (a SimPy process of its own) and on a
#: validation split beside the test split resume byte-identically too.
GRID = SCENARIO.replace("eval_every_steps: 3", "eval_every_s: 1").replace(
    "max_eval_examples: 60", "max_eval_examples: 60\n  validation_fraction: 0.1\n"
    "  max_validation_examples: 40")


@pytest.mark.parametrize("text", [SCENARIO, KSEED, GRID],
                         ids=["fwdllm", "kseed-importance", "time-grid-validation"])
def test_sigkill_then_resume_is_byte_identical(tmp_path, text):
    scenario = tmp_path / "s.yaml"
    scenario.write_text(text)
    full = tmp_path / "full"
    assert main(["run", str(scenario), "--out", str(full), "--no-progress"]) == 0

    killed = tmp_path / "killed"
    env = dict(os.environ, FLEETSIM_TEST_STEP_DELAY_S="0.4")
    proc = subprocess.Popen(
        [sys.executable, "-m", "fleetsim", "run", str(scenario), "--out", str(killed),
         "--no-progress"], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    ckpt = killed / CHECKPOINT_NAME
    deadline = time.time() + 240
    while time.time() < deadline:
        if ckpt.exists() and read_checkpoint(killed).committed_steps >= 4:
            break
        if proc.poll() is not None:
            pytest.fail(f"run ended before it could be killed: {proc.stderr.read()!r}")
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not (killed / "steps.parquet").exists()  # it really died mid-way
    done = read_checkpoint(killed).committed_steps
    assert 4 <= done < 18

    assert main(["run", "--resume", str(killed), "--no-progress"]) == 0
    for name in ("steps.parquet", "events.parquet"):
        assert (killed / name).read_bytes() == (full / name).read_bytes(), name
    if text is GRID:  # the grid and the validation split were really exercised
        import pandas as pd

        steps = pd.read_parquet(full / "steps.parquet")
        grid = steps[steps["attempt"] == -1]
        assert len(grid) >= 2 and (grid["sim_time_s"] % 1 == 0).all()
        assert grid["val_accuracy"].notna().all()


def test_resume_without_checkpoint_is_bad_input(tmp_path, capsys):
    # a run killed before it wrote a checkpoint
    (tmp_path / "run_in_progress.json").write_text("{}")
    assert main(["run", "--resume", str(tmp_path)]) == 2
    assert "no checkpoint.pkl" in capsys.readouterr().err
