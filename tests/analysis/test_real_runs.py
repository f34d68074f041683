"""The analysis on run directories written by the real runner (short scenarios).

Systems-only runs (``numerics.engine: none``) of every protocol exercise the event and
device accounting; one short run with real forward gradients on a randomly initialised
tiny BERT exercises accuracy.  Expected values are recomputed here from the raw tables,
independently of the analysis code.
"""

from __future__ import annotations

import base64
import json
import math
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from fleetsim.analysis import (
    compare_runs,
    convergence_figure,
    load_runs,
    step_breakdown,
    time_to_accuracy,
    utilisation,
    write_report,
)
from fleetsim.analysis.metrics import BREAKDOWN_PARTS, UTILISATION_SHARES
from fleetsim.analysis.plots import trace_availability_spans

runner = pytest.importorskip("fleetsim.runner")

PROTOCOLS = ("fwdllm", "fedsgd", "fedavg", "kseed")

SYSTEMS_SCENARIO = """
description: analysis test (systems-only)
fleet:
  size: 12
traces:
  population: flash_1000
  availability:
    kind: diurnal_model
model:
  name_or_path: all-minilm-l6-v2
  max_seq_len: 64
peft:
  method: lora
  rank: 4
data:
  name: bbc_news
  batch_size: 8
numerics:
  engine: none
protocol:
  name: fwdllm
  devices_per_step: 4
  perturbations_per_device: 2
  rounds: 2
  batches_per_round: 3
policy:
  name: uniform
run:
  name: systems
  max_sim_hours: 200
"""

NUMERICS_SCENARIO = """
description: analysis test (tiny model, real forward gradients)
fleet:
  size: 6
traces:
  population: flash_1000
  availability:
    kind: always_online
model:
  name_or_path: tiny-bert
  max_seq_len: 32
peft:
  method: lora
  rank: 2
data:
  name: bbc_news
  batch_size: 4
  max_examples: 200
numerics:
  engine: torch
  eval_max_examples: 40
protocol:
  name: fwdllm
  lr: 0.05
  devices_per_step: 3
  perturbations_per_device: 2
  rounds: 2
  batches_per_round: 4
  eval_every_steps: 1
policy:
  name: uniform
run:
  name: numerics
  targets: [0.3, 0.5]
  max_sim_hours: 200
"""


@pytest.fixture(scope="module")
def real_runs(tmp_path_factory) -> dict[str, Path]:
    """Systems-only runs of every protocol (fast)."""
    root = tmp_path_factory.mktemp("real")
    systems = root / "systems.yaml"
    systems.write_text(SYSTEMS_SCENARIO)
    return {
        protocol: runner.run_scenario(
            systems, overrides=[f"protocol.name={protocol}"], run_dir=root / protocol
        )
        for protocol in PROTOCOLS
    }


@pytest.fixture(scope="module")
def numerics_run(tmp_path_factory) -> Path:
    """A short run with real forward gradients (tiny random BERT; ~20 s on 2 cores)."""
    root = tmp_path_factory.mktemp("numerics")
    scenario = root / "numerics.yaml"
    scenario.write_text(NUMERICS_SCENARIO)
    return runner.run_scenario(scenario, run_dir=root / "numerics")


def _first_reach(steps: pd.DataFrame, target: float) -> float | None:
    best = -math.inf
    for time, accuracy in zip(steps["sim_time_s"], steps["accuracy"]):
        if math.isnan(accuracy):
            continue
        best = max(best, accuracy)
        if best >= target:
            return float(time)
    return None


@pytest.mark.slow
def test_time_to_accuracy_on_a_real_run(numerics_run) -> None:
    run_dir = numerics_run
    runs = load_runs([run_dir])
    steps = pd.read_parquet(run_dir / "steps.parquet").sort_values(["sim_time_s", "step"])
    evaluated = steps["accuracy"].dropna()
    assert len(evaluated) >= 4
    targets = sorted({0.3, 0.5, float(evaluated.max()), float(evaluated.iloc[1])})
    reached = time_to_accuracy(runs.steps, targets + [1.0])
    for target in targets:
        assert reached[target] == _first_reach(steps, target)
    assert reached[float(evaluated.max())] is not None
    if evaluated.max() < 1.0:
        assert reached[1.0] is None
    # the recorder's own time_to_target agrees
    recorded = runs.summary.filter(like="time_to_target.").iloc[0]
    assert len(recorded) == 2
    for key, seconds in recorded.items():
        target = float(key.removeprefix("time_to_target."))
        expected = time_to_accuracy(runs.steps, [target])[target]
        assert (expected is None and math.isnan(seconds)) or expected == pytest.approx(seconds)


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_utilisation_and_breakdown_on_real_runs(real_runs, protocol: str) -> None:
    runs = load_runs([real_runs[protocol]])
    table = utilisation(runs)
    assert len(table) >= 3
    np.testing.assert_allclose(table[list(UTILISATION_SHARES)].sum(axis=1), 1.0)
    np.testing.assert_allclose(table["coverage"], 1.0, rtol=1e-6)
    devices = pd.read_parquet(real_runs[protocol] / "devices.parquet")
    fleet = table[table["level"] == "fleet"].iloc[0]
    assert fleet["devices"] == len(devices)
    total = devices[["busy_s", "idle_s", "offline_s"]].to_numpy().sum()
    assert fleet["offline"] == pytest.approx(devices["offline_s"].sum() / total)

    breakdown = step_breakdown(runs.events, runs.steps)
    committed = runs.steps[runs.steps["committed"]]
    assert len(breakdown) == len(committed) > 0
    np.testing.assert_allclose(
        breakdown[list(BREAKDOWN_PARTS)].sum(axis=1), breakdown["total_s"], atol=1e-6
    )
    assert (breakdown[list(BREAKDOWN_PARTS)] >= -1e-9).all().all()
    assert (breakdown["reference_device"] >= 0).all()


def _embedded_pngs(page: str) -> list[bytes]:
    images = re.findall(r'src="data:image/png;base64,([^"]+)"', page)
    return [base64.b64decode(i) for i in images]


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_report_for_each_real_run(real_runs, protocol: str, tmp_path: Path) -> None:
    page = write_report(real_runs[protocol], tmp_path / protocol).read_text()
    images = _embedded_pngs(page)
    assert len(images) == 4 and all(i.startswith(b"\x89PNG") for i in images)
    assert "Time to accuracy" not in page and "Progress over simulated time" in page
    figure = convergence_figure(load_runs([real_runs[protocol]]))
    (line,) = [x for x in figure.axes[0].get_lines() if x.get_gid() == protocol]
    steps = pd.read_parquet(real_runs[protocol] / "steps.parquet")
    # issue 24: the progress curve starts at t = 0 with no step committed
    np.testing.assert_allclose(line.get_ydata(), np.arange(0, steps["committed"].sum() + 1))


@pytest.mark.slow
def test_report_for_a_real_run_with_accuracy(numerics_run, tmp_path: Path) -> None:
    page = write_report(numerics_run, tmp_path / "numerics").read_text()
    images = _embedded_pngs(page)
    assert len(images) == 5 and all(i.startswith(b"\x89PNG") for i in images)
    assert "Time to accuracy" in page
    figure = convergence_figure(load_runs([numerics_run]))
    (line,) = [x for x in figure.axes[0].get_lines() if x.get_gid() == "numerics"]
    steps = pd.read_parquet(numerics_run / "steps.parquet")
    # issue 24: the curve starts with the initial model's evaluation at t = 0 (summary.json)
    initial = json.loads((numerics_run / "summary.json").read_text())["initial_accuracy"]
    np.testing.assert_allclose(line.get_ydata(), [initial, *steps["accuracy"].dropna()])
    assert line.get_xdata()[0] == 0.0


def test_compare_real_runs_by_protocol(real_runs, tmp_path: Path) -> None:
    written = compare_runs([real_runs[p] for p in PROTOCOLS], "protocol.name", tmp_path)
    table = pd.read_csv(written["csv"])
    assert sorted(table["protocol.name"]) == sorted(PROTOCOLS)
    summaries = load_runs([real_runs[p] for p in PROTOCOLS]).summary.set_index("protocol")
    table = table.set_index("protocol.name")
    for protocol in PROTOCOLS:
        assert table.loc[protocol, "steps"] == summaries.loc[protocol, "steps"]
        assert table.loc[protocol, "simulated_hours"] == pytest.approx(
            summaries.loc[protocol, "simulated_seconds"] / 3600
        )


@pytest.mark.parametrize("protocol", ["fwdllm", "fedavg"])
def test_rebuilt_availability_matches_device_accounting(real_runs, protocol: str) -> None:
    runs = load_runs([real_runs[protocol]])
    run = runs.runs[0]
    horizon = float(runs.summary.loc[0, "simulated_seconds"])
    devices = runs.devices.set_index("device_id")
    spans = trace_availability_spans(
        runs.scenarios[run], runs.run_dirs[run], list(devices.index), horizon
    )
    assert spans is not None
    spans = spans.assign(length=spans["end_s"] - spans["start_s"])
    available = spans[spans["state"] == "available"].groupby("device_id")["length"].sum()
    offline = spans[spans["state"] == "offline"].groupby("device_id")["length"].sum()
    for device, row in devices.iterrows():
        assert available.get(device, 0.0) == pytest.approx(row["busy_s"] + row["idle_s"], abs=1e-6)
        assert offline.get(device, 0.0) == pytest.approx(row["offline_s"], abs=1e-6)


def test_rebuilt_phone_models_match_the_devices_table(real_runs) -> None:
    # issue 24 (seen in a browser): devices without work (refused for memory) were drawn
    # as bare "device 38"; their phones are rebuilt from the scenario's seeded population
    from fleetsim.analysis.plots import timeline_figure, trace_phone_models

    runs = load_runs([real_runs["fwdllm"]])
    run = runs.runs[0]
    devices = runs.devices.set_index("device_id")["phone_model"]
    size = int(runs.scenarios[run]["fleet"]["size"])
    rebuilt = trace_phone_models(runs.scenarios[run], runs.run_dirs[run], list(range(size)))
    assert len(rebuilt) == size
    assert {d: rebuilt[d] for d in devices.index} == devices.to_dict()
    idle = [d for d in range(size) if d not in devices.index]
    assert idle, "the scenario should leave some phones without work"
    figure = timeline_figure(runs, run=run, device_ids=idle[:3])
    labels = [t.get_text() for t in figure.axes[0].get_yticklabels()]
    assert labels == [f"device {d} ({rebuilt[d]})" for d in idle[:3]]
