"""shared/cases of issue 22 kinds 1–4 as tests of the right value: the linear schedule over
the steps the run takes, FwdLLM's variance gate, the step breakdown over every attempt,
energy of downloads the clock ignores (see each case's README)."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import pandas as pd
import pytest

from fleetsim.analysis.metrics import BREAKDOWN_PARTS
from fleetsim.analysis.report import write_report
from fleetsim.cli import main
from fleetsim.fleet.energy import PowerTable
from fleetsim.runner import run_scenario

CASES = Path(__file__).resolve().parents[2].parent / "shared" / "cases"


def _case(name: str, tmp_path: Path) -> Path:
    src = CASES / name
    if not src.is_dir():
        pytest.skip(f"needs ../shared/cases/{name}")
    dst = tmp_path / name
    shutil.copytree(src, dst)
    for path in dst.rglob("*"):
        path.chmod(0o644 if path.is_file() else 0o755)
    return dst


def _committed(run: Path) -> pd.DataFrame:
    steps = pd.read_parquet(run / "steps.parquet")
    return steps[steps["committed"]]


def test_linear_lr_decays_over_the_steps_taken(tmp_path, monkeypatch):
    case = _case("linear_lr_decays_over_rounds_not_steps", tmp_path)
    monkeypatch.chdir(case)
    # fwdllm: 3 rounds × 3 local batches = 9 steps; lr_k = 0.01 (1 − k/9), last 0.01/9
    out = run_scenario(case / "scenario.yaml", run_dir=tmp_path / "fwdllm")
    lrs = _committed(out)["lr"].tolist()
    assert lrs == pytest.approx([0.01 * (1 - k / 9) for k in range(9)])
    summary = json.loads((out / "summary.json").read_text())
    assert summary["lr_planned_steps"] == summary["steps"] == 9
    assert summary["lr_planned_from"] == "protocol.rounds × steps per round (3 × 3)"
    # fedavg: one committed step a round, 4 rounds: 0.01, 0.0075, 0.005, 0.0025
    out = run_scenario(case / "fedavg.yaml", run_dir=tmp_path / "fedavg")
    assert _committed(out)["lr"].tolist() == pytest.approx([0.01, 0.0075, 0.005, 0.0025])
    assert json.loads((out / "summary.json").read_text())["lr_planned_steps"] == 4


def test_linear_lr_refused_when_the_cohort_decides_the_steps(tmp_path, monkeypatch, capsys):
    case = _case("linear_lr_decays_over_rounds_not_steps", tmp_path)
    monkeypatch.chdir(case)
    # Dirichlet partitions give clients different numbers of local batches.
    code = main(["validate", str(case / "scenario.yaml"), "--set", "data.partition=dirichlet",
                 "--set", "data.alpha=0.1"])
    err = capsys.readouterr().err.strip()
    assert code == 2
    assert len(err.splitlines()) == 1 and "protocol.lr_schedule: 'linear' needs" in err
    assert "scenario.yaml:" in err  # where the key was set


def test_variance_gate_never_skipped_with_two_perturbations(tmp_path, monkeypatch):
    case = _case("variance_gate_coin_split_empty_half", tmp_path)
    monkeypatch.chdir(case)
    out = run_scenario(case / "scenario.yaml", run_dir=tmp_path / "out")
    steps = pd.read_parquet(out / "steps.parquet")
    assert len(steps) == 16
    first = steps[steps["attempt"] == 0]
    # two forward gradients: one per half, a finite positive statistic, rolled back each time
    assert len(first) == 8 and first["variance"].map(math.isfinite).all()
    assert (first["variance"] > 0).all() and not first["committed"].any()
    assert (first["variance_gate"] == "rolled_back").all()
    second = steps[steps["attempt"] == 1]
    assert second["committed"].all() and (second["variance_gate"] == "over_threshold").all()
    assert (second["perturbations"] == 4).all()
    events = pd.read_parquet(out / "events.parquet")
    assert (events["kind"] == "step_rollback").sum() == 8


def test_report_breakdown_counts_every_attempt(tmp_path, monkeypatch):
    case = _case("report_breakdown_hides_variance_repeats", tmp_path)
    monkeypatch.chdir(case)
    out = run_scenario(case / "scenario.yaml", run_dir=tmp_path / "out")
    report = write_report(out)
    table = pd.read_csv(Path(report).parent / "step_breakdown.csv")
    steps = pd.read_parquet(out / "steps.parquet")
    previous_commit = 0.0
    for _, row in table.iterrows():
        rows = steps[steps["step"] == row["step"]].sort_values("attempt")
        assert len(rows) == 3 and row["attempts"] == 3  # two rollbacks, then the commit
        # the step runs from its first attempt's dispatch (the previous commit) to its commit
        assert row["start_s"] == pytest.approx(previous_commit)
        assert row["commit_s"] == pytest.approx(rows["sim_time_s"].iloc[-1])
        assert row["total_s"] == pytest.approx(rows["step_seconds"].sum())
        assert sum(row[p] for p in BREAKDOWN_PARTS) == pytest.approx(row["total_s"])
        # the rolled-back attempts: from the start to the second rollback
        assert row["variance_repeats"] == pytest.approx(rows["sim_time_s"].iloc[1]
                                                        - previous_commit)
        assert row["variance_repeats"] > 0.5 * row["total_s"]
        # the downloads of attempt 0 are the step's
        assert row["bytes_down"] == rows["bytes_down"].sum() > 0
        assert row["bytes_up"] == rows["bytes_up"].sum()
        previous_commit = row["commit_s"]


def test_uplink_only_downloads_still_cost_energy(tmp_path, monkeypatch):
    case = _case("uplink_only_downloads_cost_no_energy", tmp_path)
    monkeypatch.chdir(case)
    slow = run_scenario(case / "scenario.yaml", run_dir=tmp_path / "uplink_only")
    fast = run_scenario(case / "scenario.yaml", ["fleet.transfers=both",
                                                 "traces.network.downlink_mbps=1000000"],
                        run_dir=tmp_path / "fast_down")
    a = json.loads((slow / "summary.json").read_text())
    b = json.loads((fast / "summary.json").read_text())
    assert a["bytes_down"] == b["bytes_down"] > 0
    # same bytes, same per-byte energy; only the base power of ~0 s downloads differs
    assert a["energy_j"] == pytest.approx(b["energy_j"], rel=1e-3)
    # hand count: compute watts × compute seconds + α_down·bytes_down + α_up·bytes_up
    # + β × upload seconds (downloads take none)
    power = PowerTable.load()
    wifi = power.radio["wifi"]
    devices = pd.read_parquet(slow / "devices.parquet")
    compute = sum(power.compute_w[b] * s for b, s in zip(devices["backend"], devices["compute_s"]))
    up_s = a["bytes_up"] * 8 / 10e6  # every upload at 10 Mbit/s
    radio = (wifi.down_mw_per_mbps * a["bytes_down"] + wifi.up_mw_per_mbps * a["bytes_up"]) * (
        8e-6 / 1000) + wifi.base_mw / 1000 * up_s
    assert devices["network_s"].sum() == pytest.approx(up_s)
    assert a["energy_j"] == pytest.approx(compute + radio, rel=1e-9)
    assert a["transfers"] == "uplink_only" and "per-byte" in a["transfer_energy"]
