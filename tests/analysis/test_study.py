import importlib.util
import math
from pathlib import Path

import numpy as np
import pytest

from fleetsim.analysis.load import load_runs
from fleetsim.analysis.metrics import step_breakdown, time_to_accuracy_table
from fleetsim.analysis.plots import grouped_breakdown_figure, time_to_accuracy_figure
from fleetsim.analysis.study import StudyPoint, run_study

REPO = Path(__file__).resolve().parents[2]


def _load_script(study: str):
    spec = importlib.util.spec_from_file_location(study, REPO / "analysis" / study / "run.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _fake_runner(calls: list, write_synthetic_run):
    """Stands in for fleetsim.runner.run_scenario: writes a synthetic run whose
    perturbations per device come from the overrides."""

    def run(scenario_path: Path, overrides=(), run_dir=None) -> Path:
        calls.append((scenario_path, list(overrides), run_dir))
        values = dict(o.split("=", 1) for o in overrides)
        write_synthetic_run(
            run_dir.parent,
            name=run_dir.name,
            seed=int(values["run.seed"]),
            units_per_device=int(values.get("protocol.perturbations_per_device", 2)),
        )
        return run_dir

    return run


def test_run_study_grid_names_overrides_and_reuse(tmp_path: Path, write_synthetic_run) -> None:
    calls: list = []
    points = [
        StudyPoint("v1", ["protocol.perturbations_per_device=1"]),
        StudyPoint("v 5", ["protocol.perturbations_per_device=5"]),
    ]
    dirs = run_study(
        tmp_path / "s.yaml",
        points,
        [0, 1],
        tmp_path / "runs",
        common_overrides=["protocol.rounds=1"],
        run_function=_fake_runner(calls, write_synthetic_run),
        log=lambda _m: None,
    )
    assert [d.name for d in dirs] == ["v1-seed0", "v1-seed1", "v_5-seed0", "v_5-seed1"]
    assert calls[1][1] == [
        "protocol.rounds=1",
        "protocol.perturbations_per_device=1",
        "run.seed=1",
        "run.name=v1-seed1",
        "run.progress=false",
    ]
    runs = load_runs(dirs)
    assert list(runs.summary["protocol.perturbations_per_device"]) == [1, 1, 5, 5]
    # complete run directories are reused, unless asked to rerun
    run_study(
        tmp_path / "s.yaml",
        points,
        [0, 1],
        tmp_path / "runs",
        run_function=_fake_runner(calls, write_synthetic_run),
        log=lambda _m: None,
    )
    assert len(calls) == 4
    with pytest.raises(ValueError, match="unique"):
        run_study(
            tmp_path / "s.yaml",
            [points[0], points[0]],
            [0],
            tmp_path / "runs",
            run_function=_fake_runner(calls, write_synthetic_run),
        )


def test_time_to_accuracy_figure_series(make_run) -> None:
    dirs = [
        make_run(
            name=f"v{v}-s{s}",
            seed=s,
            units_per_device=v,
            accuracies=(0.3, 0.5, 0.7 if v == 1 else 0.4),
        )
        for v in (1, 5)
        for s in (0, 1)
    ]
    table = time_to_accuracy_table(
        load_runs(dirs), [0.5, 0.7], by="protocol.perturbations_per_device"
    )
    figure = time_to_accuracy_figure(
        table, "protocol.perturbations_per_device", target_labels={0.5: "half", 0.7: "most"}
    )
    (ax,) = figure.axes
    lines = {line.get_gid(): line for line in ax.get_lines() if line.get_gid()}
    assert set(lines) == {"1", "5"}
    np.testing.assert_allclose(lines["1"].get_ydata(), [26.0, 39.0])  # seconds at this scale
    assert ax.get_ylabel() == "median simulated time to reach (s)"
    assert math.isnan(lines["5"].get_ydata()[1])  # v=5 never reached 0.7: a gap, not a number
    assert ax.get_ylim()[0] == 0.0  # times: the axis (and every interval) starts at zero
    assert [t.get_text() for t in ax.get_xticklabels()] == ["half", "most"]


def test_grouped_breakdown_bars(make_run) -> None:
    dirs = [make_run(name="a", units_per_device=1), make_run(name="b", units_per_device=3)]
    runs = load_runs(dirs)
    group_of_run = dict(zip(runs.summary["run"], runs.summary["protocol.perturbations_per_device"]))
    figure = grouped_breakdown_figure(
        step_breakdown(runs.events, runs.steps), group_of_run, "protocol.perturbations_per_device"
    )
    (ax,) = figure.axes
    assert [t.get_text() for t in ax.get_xticklabels()] == ["1", "3"]
    heights = {}
    for patch in ax.patches:
        heights[patch.get_x()] = heights.get(patch.get_x(), 0.0) + patch.get_height()
    np.testing.assert_allclose(list(heights.values()), 13.0)  # every synthetic step lasts 13 s


def test_study_grids() -> None:
    devices = _load_script("devices_per_step")
    points = devices.grid(500, (5, 250))
    assert points[1].overrides == [
        "protocol.devices_per_step=250",
        "protocol.perturbations_per_device=2",
        "policy.total_perturbations=500",
    ]
    with pytest.raises(ValueError, match="split evenly"):
        devices.grid(500, (3,))
    perturbations = _load_script("perturbations_per_batch")
    assert perturbations.V_VALUES == (1, 3, 5, 10, 50)
    policies = _load_script("policies_under_churn")
    assert policies.POLICIES == (
        "uniform",
        "capability",
        "deadline",
        "variance_paced",
        "overcommit",
    )


def test_best_v_per_level(make_run) -> None:
    study = _load_script("perturbations_per_batch")
    dirs = [
        make_run(name="v1", units_per_device=1, accuracies=(0.5, 0.6, 0.7)),
        make_run(name="v5", units_per_device=5, accuracies=(0.3, 0.7, 0.9)),
    ]
    fractions = {0.5: 0.5, 0.7: 0.7, 0.9: 0.9, 0.95: 0.95}
    table = time_to_accuracy_table(load_runs(dirs), list(fractions), by=study.BY)
    best = study.best_v(table, fractions)
    assert best["best_v"].tolist()[:3] == [1, 5, 5]
    assert best["best_v"].isna().tolist() == [False, False, False, True]
