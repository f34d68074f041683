import importlib.util
import json
import math
import shutil
from pathlib import Path

import numpy as np
import pytest

from fleetsim.analysis.load import load_runs
from fleetsim.analysis.metrics import step_breakdown, time_to_accuracy_table
from fleetsim.analysis.plots import grouped_breakdown_figure, time_to_accuracy_figure
from fleetsim.analysis.study import run_study
from fleetsim.errors import FleetsimInputError

REPO = Path(__file__).resolve().parents[2]


def _load_script(study: str):
    spec = importlib.util.spec_from_file_location(study, REPO / "analysis" / study / "run.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _fake_runner(calls: list, write_synthetic_run):
    """Stands in for fleetsim.runner.run_scenario under the sweep: writes a synthetic run
    whose perturbations per device come from the overrides, and the resolved scenario the
    sweep expects (so that a finished run is recognised and reused)."""
    from fleetsim.scenario.loader import load_scenario

    def run(scenario_path: Path, overrides, run_dir: Path) -> Path:
        calls.append((Path(scenario_path), list(overrides), Path(run_dir)))
        values = dict(o.split("=", 1) for o in overrides)
        if values.get("protocol.perturbations_per_device") == "7":
            raise RuntimeError("seven is refused")
        shutil.rmtree(run_dir, ignore_errors=True)  # the sweep made it (or an earlier try)
        write_synthetic_run(
            run_dir.parent,
            name=run_dir.name,
            seed=int(values["run.seed"]),
            units_per_device=int(values.get("protocol.perturbations_per_device", 2)),
        )
        resolved = load_scenario(Path(scenario_path), list(overrides)).resolved_yaml()
        (run_dir / "scenario.yaml").write_text(resolved)
        return run_dir

    return run


def test_run_study_goes_through_the_sweep_and_resumes(
    tmp_path: Path, write_synthetic_run
) -> None:
    sweep = tmp_path / "sweep.yaml"
    base = REPO / "analysis" / "perturbations_per_batch" / "scenario.yaml"
    sweep.write_text(
        f"base: {base}\ngrid:\n  protocol.perturbations_per_device: [1, 5]\n"
        "seeds: [0, 1]\nset:\n  protocol.batches_per_round: 3\n"
        "  protocol.eval_every_s: 0\n  protocol.eval_every_steps: 1\n"
    )
    calls: list = []
    runs = run_study(sweep, tmp_path / "out", run_fn=_fake_runner(calls, write_synthetic_run))
    names = [d.name for d in runs.run_dirs]
    assert names == [
        f"protocol.perturbations_per_device={v}__run.seed={s}" for v in (1, 5) for s in (0, 1)
    ]
    assert "protocol.batches_per_round=3" in calls[0][1]
    assert runs.seeds == [0, 1] and (tmp_path / "out" / "sweep_index.parquet").is_file()
    loaded = load_runs(runs.run_dirs)
    assert list(loaded.summary["protocol.perturbations_per_device"]) == [1, 1, 5, 5]
    # finished runs are reused: nothing runs again, no host time spent
    again = run_study(sweep, tmp_path / "out", run_fn=_fake_runner(calls, write_synthetic_run))
    assert len(calls) == 4 and again.host_seconds == 0.0
    # --set applies to every run: a different resolved scenario, which never replaces the
    # finished runs in place (the sweep refuses their folder, running nothing) ...
    before = {p: p.read_bytes() for p in (tmp_path / "out").rglob("*") if p.is_file()}
    with pytest.raises(FleetsimInputError, match=r"holds a run of a different scenario "
                       r"\(protocol.eval_every_steps: .* there, 7 in this sweep\)"):
        run_study(sweep, tmp_path / "out", ["protocol.eval_every_steps=7"],
                  run_fn=_fake_runner(calls, write_synthetic_run))
    assert len(calls) == 4
    assert {p: p.read_bytes() for p in (tmp_path / "out").rglob("*") if p.is_file()} == before
    # ... but runs them all from scratch with fresh (the study's --fresh)
    run_study(sweep, tmp_path / "out", ["protocol.eval_every_steps=7"], fresh=True,
              run_fn=_fake_runner(calls, write_synthetic_run))
    assert len(calls) == 8 and all("protocol.eval_every_steps=7" in c[1] for c in calls[4:])
    # seeds can be replaced (a first look with one seed reuses the finished runs)
    one = run_study(sweep, tmp_path / "out", ["protocol.eval_every_steps=7"], seeds=[1],
                    run_fn=_fake_runner(calls, write_synthetic_run))
    assert len(calls) == 8 and [d.name.split("__")[-1] for d in one.run_dirs] == ["run.seed=1"] * 2
    # a failing run is named, and the study stops before analysing half a grid
    sweep.write_text(sweep.read_text().replace("[1, 5]", "[1, 7]"))
    with pytest.raises(FleetsimInputError, match="perturbations_per_device=7.*seven"):
        run_study(sweep, tmp_path / "out", ["protocol.eval_every_steps=7"],
                  run_fn=_fake_runner(calls, write_synthetic_run))


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
    lines = {line.get_gid(): line for line in ax.get_lines()
             if line.get_gid() and ":" not in line.get_gid()}
    assert set(lines) == {"1", "5"}
    np.testing.assert_allclose(lines["1"].get_ydata(), [26.0, 39.0])  # seconds at this scale
    assert ax.get_ylabel() == "median simulated time to reach (s)"
    assert math.isnan(lines["5"].get_ydata()[1])  # v=5 never reached 0.7: a gap, not a number
    # ... marked on the top edge and named (issue 24)
    marker = next(ln for ln in ax.get_lines() if ln.get_gid() == "not_reached:5")
    assert marker.get_xdata().tolist() == [1.0] and marker.get_ydata()[0] == ax.get_ylim()[1]
    assert [t.get_text() for t in ax.texts] == ["not reached (0 of 2)"]
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
    assert [t.get_text() for t in ax.get_xticklabels()] == [  # in words (issue 24)
        "v = 1 perturbations per device", "v = 3 perturbations per device"]
    heights = {}
    for patch in ax.patches:
        heights[patch.get_x()] = heights.get(patch.get_x(), 0.0) + patch.get_height()
    np.testing.assert_allclose(list(heights.values()), 13.0)  # every synthetic step lasts 13 s


def test_study_grids_are_sweeps() -> None:
    from fleetsim.sweep import load_sweep, plan_sweep

    expected = {
        "perturbations_per_batch/sweep_tune.yaml": 20,  # 10 (v, lr) candidates x 2 seeds
        "perturbations_per_batch/sweep_tune_large_v.yaml": 6,  # 6 candidates x seed 0
        "policies_under_churn/sweep.yaml": 100,  # 5 arms x 2 start hours x 10 seeds
        "policies_under_churn/sweep_accuracy.yaml": 50,  # 5 arms x 10 seeds
    }
    for name, count in expected.items():
        runs = plan_sweep(load_sweep(REPO / "analysis" / name), validate=False)
        assert len(runs) == count, name
    plan = plan_sweep(load_sweep(REPO / "analysis" / "policies_under_churn" / "sweep.yaml"),
                      validate=False)
    assert {r.params["arm"] for r in plan} == {
        "barrier", "overselect_deadline", "capability", "deadline", "overcommit_carry"}
    assert {r.params["run.start_hour"] for r in plan} == {9, 21}


def test_every_shipped_sweep_validates() -> None:
    """Every run of every sweep file under analysis/ passes the scenario loader, as
    ``fleetsim sweep --dry-run`` checks it (a sweep whose runs are refused is a broken
    entry point, e.g. FedAvg under Adam with no server rate)."""
    from fleetsim.sweep import load_sweep, plan_sweep

    sweeps = sorted((REPO / "analysis").glob("*/sweep*.yaml"))
    assert len(sweeps) >= 10
    for path in sweeps:
        assert plan_sweep(load_sweep(path)), path


def test_run_study_analyses_runs_that_ended_diverged_or_without_progress(
    tmp_path: Path, write_synthetic_run, capsys
) -> None:
    """A diverged or no-progress run is a result (it never reaches a target), not a failure:
    the study keeps it, names it, and a re-run neither retries it nor turns it into done."""
    sweep = tmp_path / "sweep.yaml"
    base = REPO / "analysis" / "perturbations_per_batch" / "scenario.yaml"
    sweep.write_text(f"base: {base}\ngrid:\n  protocol.perturbations_per_device: [1, 3, 5]\n"
                     "seeds: [0]\n")
    calls: list = []
    fake = _fake_runner(calls, write_synthetic_run)
    ending = {"3": "diverged", "5": "no_progress"}

    def run(scenario_path: Path, overrides, run_dir: Path) -> Path:
        fake(scenario_path, overrides, run_dir)
        v = dict(o.split("=", 1) for o in overrides)["protocol.perturbations_per_device"]
        summary = json.loads((run_dir / "summary.json").read_text())
        summary["status"] = ending.get(v, "completed")
        summary["status_detail"] = f"ended {summary['status']}"
        (run_dir / "summary.json").write_text(json.dumps(summary))
        return run_dir

    runs = run_study(sweep, tmp_path / "out", run_fn=run)
    assert [d.name for d in runs.run_dirs] == [
        f"protocol.perturbations_per_device={v}__run.seed=0" for v in (1, 3, 5)]
    assert runs.not_done == {"protocol.perturbations_per_device=3__run.seed=0": "diverged",
                             "protocol.perturbations_per_device=5__run.seed=0": "no_progress"}
    assert "2 run(s) ended diverged/no_progress and count as never reaching a target" in (
        capsys.readouterr().err)
    again = run_study(sweep, tmp_path / "out", run_fn=run)
    assert len(calls) == 3 and again.not_done == runs.not_done


def test_study_b_step_facts_count_waits_and_read_steps_from_the_evaluation() -> None:
    """Study (b)'s decomposition: seconds per step are the gaps between commits (a failed
    attempt's time counts, as it does in the time to target) and the steps to a target
    are those the evaluation reaching it records (a grid evaluation, attempt -1: steps so
    far; a per-step evaluation: its step, numbered from 0, plus one)."""
    import pandas as pd

    from fleetsim.analysis.study import load_study_script

    module = load_study_script(REPO / "analysis" / "end_to_end" / "run.py", "e2e_facts")
    nan = float("nan")
    steps = pd.DataFrame({
        "sim_time_s": [0.0, 4.0, 8.0, 10.0, 12.0, 14.0, 15.0],
        "step": [0, 0, 1, 1, 1, 2, 3],
        "attempt": [-1, 0, 0, -1, 1, 0, -1],
        "committed": [False, True, False, False, True, True, False],
        "accuracy": [0.3, nan, nan, 0.6, nan, nan, 0.85],
    })
    per_step, to_target = module._step_facts(steps, 15.0)
    assert per_step == 4.0  # gaps 4, 8, 2
    assert to_target == 3.0
    assert module._step_facts(steps, 10.0)[1] == 1.0
    assert math.isnan(module._step_facts(steps, math.inf)[1])
    per_step_eval = steps.assign(accuracy=[nan, nan, nan, nan, nan, 0.9, nan])
    assert module._step_facts(per_step_eval, 14.0)[1] == 3.0  # step 2's row: 3 steps
