"""Every figure of summary.json recomputed another way, from the run's own event log.

A systems-only run with churn (diurnal availability, 'lose' interruptions), quorum commits
and carried work, stopped by the horizon in the middle of a step: the hardest case for the
accounting.  Bytes, energy, steps, staleness and unfinished work are each checked against
the events (an independent slow path: the fleet's ledger never reads them)."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from fleetsim.runner import run_scenario

SCENARIO = """\
fleet:
  size: 60
  interruption: lose
traces:
  population: flash_1000
  availability: {kind: diurnal_model}
  network: {type: flash_wifi}
numerics: {engine: none}
model: {name_or_path: all-minilm-l6-v2, max_seq_len: 64}
data: {name: bbc_news}
protocol:
  name: kseed
  devices_per_step: 12
  perturbations_per_device: 40
  rounds: 400
  batches_per_round: 3
  commit: {mode: quorum, quorum_fraction: 0.6, late_work: carry, max_staleness: 2,
           staleness_weighting: inverse_sqrt}
run: {name: figures, seed: 2, max_sim_hours: 0.6, progress: false}
"""


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    base = tmp_path_factory.mktemp("figures")
    (base / "s.yaml").write_text(SCENARIO)
    return run_scenario(base / "s.yaml", run_dir=base / "run")


def _tables(run_dir):
    summary = json.loads((run_dir / "summary.json").read_text())
    events = pd.read_parquet(run_dir / "events.parquet")
    steps = pd.read_parquet(run_dir / "steps.parquet")
    devices = pd.read_parquet(run_dir / "devices.parquet")
    return summary, events, steps, devices


def test_bytes_are_what_crossed_the_network(run_dir):
    summary, events, steps, devices = _tables(run_dir)
    ups = events[events.kind == "upload"]["payload_bytes"].sum()
    downs = events[events.kind == "download"]["payload_bytes"].sum()
    assert summary["bytes_up"] == ups == devices["bytes_up"].sum() > 0
    assert summary["bytes_down"] == downs == devices["bytes_down"].sum() > 0
    # the bytes steps used: uploads of the receipts each row turned into work
    assert summary["bytes_up_used"] == steps["bytes_up"].sum() <= ups


def test_steps_rounds_time_and_unfinished_work(run_dir):
    summary, events, steps, _ = _tables(run_dir)
    commits = events[events.kind == "step_commit"]
    assert summary["steps"] == len(commits) == int(steps["committed"].sum())
    assert summary["step_attempts"] == len(steps)
    assert summary["simulated_seconds"] == pytest.approx(events["time_s"].max())
    assert summary["simulated_seconds"] <= 0.6 * 3600 + 1e-9
    assert summary["stopped_by"] == "max_sim_hours"
    unfinished = events[events.kind == "unfinished"]
    assert summary["unfinished_tasks"] == len(unfinished)
    assigned = unfinished["detail"].str.extract(r"assigned=(\d+)")[0].astype(int)
    # nothing of an unfinished task was delivered
    assert summary["unfinished_units"] == int(assigned.sum())
    assert summary["total_perturbations"] == int(steps.loc[steps.committed, "perturbations"].sum())


def test_energy_and_device_time_cover_the_run(run_dir):
    summary, events, _, devices = _tables(run_dir)
    assert summary["energy_j"] == pytest.approx(devices["energy_j"].sum(), rel=1e-12)
    end = summary["simulated_seconds"]
    total = devices["busy_s"] + devices["idle_s"] + devices["offline_s"]
    # busy time can overlap the device's offline time only while paused; under 'lose' none
    assert np.allclose(total, end, rtol=0, atol=1e-6)
    # busy time from the events: finished transfers and compute spans, plus cut phases
    spans = events[events.kind.isin(["download", "compute", "upload"])]
    assert (spans.groupby("device_id")["duration_s"].sum()
            <= devices.set_index("device_id")["busy_s"] + 1e-6).all()


def test_staleness_columns_match_the_receipts(run_dir):
    _, events, steps, _ = _tables(run_dir)
    receipts = events[events.kind == "receipt"]
    assert (receipts["staleness"] >= 0).all() and receipts["staleness"].max() <= 2
    stale = receipts[receipts.staleness > 0]
    assert len(stale), "the scenario should carry some work"
    weight = stale["detail"].str.extract(r"weight=([0-9.e-]+)")[0].astype(float)
    assert np.allclose(weight, 1 / np.sqrt(1 + stale["staleness"]))
    assert steps["stale_units"].sum() == stale["units"].sum()
    assert steps["staleness_max"].max() == receipts["staleness"].max()
