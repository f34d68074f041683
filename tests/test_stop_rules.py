"""Stop rules and run statuses (issue 12, kinds 3, 4, 11).

* run.max_sim_hours stops the clock at the horizon even in the middle of a step: nothing
  commits after it, work in flight is recorded as ``unfinished``, device totals cover
  exactly [0, horizon], summary.json says which rule stopped the run;
* every other stop rule (protocol.max_steps, protocol.rounds, a stop request, nobody
  online) is named in ``stopped_by``;
* a run in which nothing could happen ends with status ``no_progress`` (exit 4, one line
  on stderr);
* a non-finite model never produces an accuracy (status ``diverged``, exit 3).
"""

from __future__ import annotations

import json
import math
import os
import re
import shutil
import signal
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from fleetsim.analysis.load import load_run
from fleetsim.cli import main
from fleetsim.record.status import STATUSES, STOP_RULES, exit_code, finite_accuracy
from fleetsim.record.summary import time_to_targets
from fleetsim.runner import run_loaded, run_scenario, stop_on_signals
from fleetsim.scenario.loader import load_scenario

ROOT = Path(__file__).resolve().parents[1]
CASES = ROOT / ".." / "shared" / "cases"

# Systems-only fwdllm on an always-online fleet whose uplink makes every step take
# ~1,036 s (a 12,948-byte dense upload at 1e-4 Mbit/s).
SLOW_UPLINK = """\
fleet: {{size: 4}}
traces:
  availability: {availability}
  network: {{type: fixed, uplink_mbps: 1.0e-4, downlink_mbps: 10}}
numerics: {{engine: none}}
model: {{name_or_path: tiny-bert, max_seq_len: 16}}
data: {{name: bbc_news, max_examples: 64, max_eval_examples: 40}}
protocol: {{devices_per_step: 2, rounds: 2, batches_per_round: 3{protocol}}}
run: {{name: slow, max_sim_hours: {hours}, progress: false}}
"""


def slow_uplink(tmp_path: Path, hours: float = 100.0, protocol: str = "",
                availability: str = "{kind: always_online}") -> Path:
    p = tmp_path / "slow.yaml"
    p.write_text(SLOW_UPLINK.format(hours=repr(hours), protocol=protocol,
                                    availability=availability))
    return p


def read_run(out: Path) -> tuple[dict, pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    return (
        json.loads((out / "summary.json").read_text()),
        pd.read_parquet(out / "steps.parquet"),
        pd.read_parquet(out / "events.parquet"),
        pd.read_parquet(out / "devices.parquet"),
    )


def assert_devices_cover(devices: pd.DataFrame, end_s: float) -> None:
    """Every device row accounts for exactly [0, end_s]: nothing past the end."""
    assert len(devices)
    assert (devices["busy_s"] <= end_s + 1e-6).all()
    total = devices["busy_s"] + devices["idle_s"] + devices["offline_s"]
    assert np.allclose(total, end_s, rtol=0, atol=1e-6), total.tolist()


def case_dir(name: str, tmp_path: Path) -> Path:
    src = CASES / name
    if not (src / "scenario.yaml").is_file():
        pytest.skip(f"shared case {name} not present")
    dst = tmp_path / name
    shutil.copytree(src, dst)
    return dst


# ------------------------------------------------------------------ the horizon (kind 4)


@pytest.mark.parametrize("mbps", ["1.0e-12", "1.0e-300"])
def test_case_horizon_overrun_tiny_bandwidth(tmp_path, capsys, mbps):
    case = case_dir("horizon_overrun_tiny_bandwidth", tmp_path)
    out = tmp_path / "out"
    code = main(["run", str(case / "scenario.yaml"), "--set",
                 f"traces.network.uplink_mbps={mbps}", "--out", str(out), "--no-progress"])
    captured = capsys.readouterr()
    summary, steps, events, devices = read_run(out)
    # Nothing could commit before the horizon: its own status, exit 4, one line saying why.
    assert code == 4 == exit_code("no_progress")
    assert summary["status"] == "no_progress"
    assert summary["stopped_by"] == "max_sim_hours"
    assert summary["simulated_seconds"] == 24 * 3600.0
    assert summary["steps"] == 0 and not steps["committed"].any()
    assert not (events["kind"] == "step_commit").any()
    assert events["time_s"].max() == 24 * 3600.0
    err = [line for line in captured.err.splitlines() if line.strip()]
    assert len(err) == 1 and "no step committed" in err[0] and "max_sim_hours=24" in err[0]
    assert "Traceback" not in captured.err
    # The summary line shows the horizon, not 28 million (or 10^296) hours.
    assert re.search(r"simulated: 24\.000 h", captured.out), captured.out
    # The two assigned devices were uploading at the horizon: one unfinished event each.
    assigned = set(events.loc[events["kind"] == "assign", "device_id"])
    unfinished = events[events["kind"] == "unfinished"]
    assert set(unfinished["device_id"]) == assigned and len(unfinished) == len(assigned) == 2
    assert unfinished["detail"].str.contains("phase=upload").all()
    assert summary["unfinished_tasks"] == 2 and summary["unfinished_units"] == 2
    # Device accounting: uploading from the end of compute to the horizon.
    computed = events[events["kind"] == "compute"].set_index("device_id")["time_s"]
    for row in devices.itertuples():
        assert row.busy_s == pytest.approx(86400.0, abs=1e-6)
        assert row.network_s == pytest.approx(86400.0 - row.compute_s, abs=1e-6)
        assert computed[row.device_id] < 1.0  # download and compute took well under a second
    assert_devices_cover(devices, 86400.0)
    ends = events[events["kind"] == "run_stopped"]
    assert len(ends) == 1 and "stopped_by=max_sim_hours" in ends["detail"].iloc[0]


def test_horizon_in_the_middle_of_a_step_commits_nothing_after_it(tmp_path, capsys):
    # The same run twice: to the end, then with the horizon half-way through step 2.
    full = run_scenario(slow_uplink(tmp_path), run_dir=tmp_path / "full")
    s_full, steps_full, _, _ = read_run(full)
    assert s_full["status"] == "completed" and s_full["stopped_by"] == "rounds"
    assert s_full["steps"] == 6 and s_full["unfinished_tasks"] == 0
    commits = steps_full.loc[steps_full["committed"], "sim_time_s"].to_numpy()
    assert 900 < commits[0] < 1200  # ~1,036 s per step (12,948 B at 100 bit/s)
    horizon_s = float((commits[1] + commits[2]) / 2)

    out = tmp_path / "cut"
    code = main(["run", str(slow_uplink(tmp_path, hours=horizon_s / 3600)), "--out", str(out),
                 "--no-progress"])
    assert code == 0, capsys.readouterr().err
    summary, steps, events, devices = read_run(out)
    assert summary["status"] == "horizon_reached" and summary["stopped_by"] == "max_sim_hours"
    assert summary["simulated_seconds"] == pytest.approx(horizon_s, rel=1e-12)
    # Exactly the steps the full run committed before the horizon, at the same times.
    assert summary["steps"] == 2
    pd.testing.assert_frame_equal(steps.reset_index(drop=True),
                                  steps_full.iloc[:2].reset_index(drop=True))
    assert (events["time_s"] <= summary["simulated_seconds"]).all()
    assert (events.loc[events["kind"] == "step_commit", "time_s"] < horizon_s).all()
    # Step 2's two devices were out at the horizon.
    unfinished = events[events["kind"] == "unfinished"]
    assert len(unfinished) == 2 and (unfinished["step"] == 2).all()
    assert summary["unfinished_tasks"] == 2
    assert_devices_cover(devices, summary["simulated_seconds"])
    # Devices' busy time, counted from the events: the logged phases of the finished tasks
    # plus, for each unfinished one, assignment to horizon (always online, never waiting).
    done = events[events["kind"].isin(["download", "compute", "upload"]) & (events["step"] < 2)]
    started = events.loc[(events["kind"] == "assign") & (events["step"] == 2), "time_s"]
    assert len(started) == 2
    expected = done["duration_s"].sum() + (horizon_s - started).sum()
    assert devices["busy_s"].sum() == pytest.approx(expected, rel=1e-12)


def test_max_steps_and_rounds_are_named(tmp_path):
    out = run_scenario(slow_uplink(tmp_path, protocol=", max_steps: 4"), run_dir=tmp_path / "m")
    summary, steps, events, devices = read_run(out)
    assert summary["stopped_by"] == "max_steps" and summary["status"] == "completed"
    assert summary["steps"] == 4 == int(steps["committed"].sum())
    assert_devices_cover(devices, summary["simulated_seconds"])
    out = run_scenario(slow_uplink(tmp_path), run_dir=tmp_path / "r")
    summary, steps, _, devices = read_run(out)
    assert summary["stopped_by"] == "rounds" and summary["rounds"] == 2
    assert summary["steps"] == 6
    assert_devices_cover(devices, summary["simulated_seconds"])


def test_stop_request_ends_the_run_between_steps(tmp_path):
    loaded = load_scenario(slow_uplink(tmp_path))
    calls = {"n": 0}

    def requested() -> bool:  # true from the third question on
        calls["n"] += 1
        return calls["n"] >= 3

    out = run_loaded(loaded, tmp_path / "req", progress=False, stop_requested=requested)
    summary, steps, events, devices = read_run(out)
    assert summary["status"] == "stop_requested" and summary["stopped_by"] == "stop_request"
    assert exit_code("stop_requested") == 130
    assert 0 < summary["steps"] < 6
    assert (events["time_s"] <= summary["simulated_seconds"]).all()
    assert_devices_cover(devices, summary["simulated_seconds"])


def test_signals_request_a_stop_then_abort():
    with stop_on_signals() as requested:
        assert not requested()
        os.kill(os.getpid(), signal.SIGINT)
        assert requested()
        with pytest.raises(KeyboardInterrupt):
            os.kill(os.getpid(), signal.SIGINT)
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler


# ------------------------------------------------------------------ nothing happened (kind 11)


def test_nobody_online_before_the_horizon_says_so(tmp_path, capsys):
    windows = tmp_path / "late.csv"
    # Every device's first window opens two days in: after the 24 h horizon.
    windows.write_text("device_id,start_s,end_s\n" + "".join(
        f"{d},{172800 + d},{200000 + d}\n" for d in range(4)))
    scenario = slow_uplink(tmp_path, hours=24.0,
                           availability=f"{{kind: intervals, path: {windows}}}")
    out = tmp_path / "out"
    code = main(["run", str(scenario), "--out", str(out), "--no-progress"])
    captured = capsys.readouterr()
    assert code == 4
    err = [line for line in captured.err.splitlines() if line.strip()]
    assert len(err) == 1 and "no eligible device came online" in err[0], captured.err
    summary, steps, events, _ = read_run(out)
    assert summary["status"] == "no_progress"
    assert summary["stopped_by"] == "no_devices_online"
    assert summary["steps"] == 0 and len(steps) == 0
    assert not (events["kind"] == "assign").any()
    # It covered the simulated time up to the horizon, as a run the horizon stops does.
    assert summary["simulated_seconds"] == 24 * 3600.0
    assert events["time_s"].max() == 24 * 3600.0


def test_nobody_online_after_some_steps_covers_the_horizon(tmp_path):
    windows = tmp_path / "early.csv"
    # Every device is online for the first 40 minutes only (no period): steps commit, then
    # the server finds nobody will come online again before the 24 h horizon.
    windows.write_text("device_id,start_s,end_s\n" + "".join(
        f"{d},0,2400\n" for d in range(4)))
    scenario = slow_uplink(tmp_path, hours=24.0,
                           availability=f"{{kind: intervals, path: {windows}}}")
    out = tmp_path / "out"
    assert main(["run", str(scenario), "--out", str(out), "--no-progress"]) == 0
    summary, steps, events, devices = read_run(out)
    assert summary["stopped_by"] == "no_devices_online" and summary["steps"] > 0
    assert summary["simulated_seconds"] == 24 * 3600.0
    assert summary["simulated_hours"] == 24.0
    assert_devices_cover(devices, 24 * 3600.0)
    # online the first 40 minutes of the 24 hours each
    assert np.allclose(devices["offline_s"], 24 * 3600.0 - 2400.0)


# ------------------------------------------------------------------ non-finite models (kind 3)


def test_case_nan_model_reaches_target(tmp_path, capsys):
    case = case_dir("nan_model_reaches_target", tmp_path)
    out = tmp_path / "out"
    code = main(["run", str(case / "scenario.yaml"), "--set", "run.targets=[0.2]",
                 "--out", str(out), "--no-progress"])
    err = capsys.readouterr().err
    assert code == 3 == exit_code("diverged")
    assert "numerical fault" in err and "Traceback" not in err
    summary, steps, events, _ = read_run(out)
    assert summary["status"] == "diverged"
    # lr 1e30: the update of step 0 makes the model non-finite; step 1's loss faults.
    assert summary["diverged_at_step"] == 0
    assert "after step 0" in summary["status_detail"]
    assert summary["final_accuracy"] is None and summary["best_accuracy"] is None
    assert summary["time_to_target"] == {"0.2": None}
    assert steps["accuracy"].isna().all() and steps["eval_loss"].isna().all()
    evals = events[events["kind"] == "evaluate"]
    assert len(evals) >= 1 and evals["detail"].str.contains("accuracy=nan").all()
    # report/compare/analysis pick nothing up either.
    runset = load_run(out)
    assert runset.steps["accuracy"].isna().all()
    assert math.isnan(runset.summary["final_accuracy"].iloc[0])


def test_nonfinite_evaluation_without_a_fault_is_diverged(tmp_path, capsys):
    # on_nonfinite: skip drops the non-finite estimates, so no fault stops the run; the
    # non-finite evaluations alone make it diverged (exit 3, one line on stderr).
    case = case_dir("nan_model_reaches_target", tmp_path)
    out = tmp_path / "out"
    code = main(["run", str(case / "scenario.yaml"), "--set", "numerics.on_nonfinite=skip",
                 "--set", "protocol.rounds=1", "--set", "protocol.batches_per_round=2",
                 "--set", "output.checkpoint_every_steps=0", "--out", str(out), "--no-progress"])
    captured = capsys.readouterr()
    assert code == 3
    err = [line for line in captured.err.splitlines() if line.strip()]
    assert len(err) == 1 and err[0].startswith("fleetsim: diverged: the model after step 0")
    assert "final accuracy: none (non-finite model)" in captured.out
    summary, steps, _, _ = read_run(out)
    assert summary["status"] == "diverged" and summary["stopped_by"] == "rounds"
    assert summary["diverged_at_step"] == 0 and summary["steps"] == 2
    assert summary["final_accuracy"] is None and summary["best_accuracy"] is None
    assert steps["accuracy"].isna().all()


def _steps(acc: list[float], loss: list[float]) -> pd.DataFrame:
    n = len(acc)
    return pd.DataFrame({"sim_time_s": np.arange(n, dtype=float) * 10.0, "step": np.arange(n),
                         "accuracy": acc, "eval_loss": loss})


def test_an_accuracy_without_a_finite_loss_does_not_count():
    nan = math.nan
    steps = _steps([0.3, 0.9, nan, 0.5], [1.2, nan, nan, 1.0])
    assert finite_accuracy(steps).tolist()[0] == 0.3
    assert math.isnan(finite_accuracy(steps).tolist()[1])
    # 0.9 came with a NaN loss: the 0.4 target is first reached by the 0.5 at t = 30 s.
    assert time_to_targets(steps, [0.25, 0.4, 0.8]) == {"0.25": 0.0, "0.4": 30.0, "0.8": None}


def test_old_run_directories_lose_nonfinite_accuracies_on_load(tmp_path):
    # A run directory written before evaluate() refused non-finite models: rewrite one run's
    # last evaluation to "accuracy 0.95 with a NaN loss" and load it.
    out = run_scenario(slow_uplink(tmp_path, protocol=", max_steps: 2"), run_dir=tmp_path / "o")
    steps = pd.read_parquet(out / "steps.parquet")
    steps["accuracy"] = [0.4, 0.95]
    steps["eval_loss"] = [1.1, math.nan]
    steps.to_parquet(out / "steps.parquet")
    summary = json.loads((out / "summary.json").read_text())
    summary.update(final_accuracy=0.95, best_accuracy=0.95)
    (out / "summary.json").write_text(json.dumps(summary))
    runset = load_run(out)
    assert runset.steps["accuracy"].tolist()[0] == 0.4
    assert math.isnan(runset.steps["accuracy"].tolist()[1])
    assert math.isnan(runset.summary["final_accuracy"].iloc[0])  # the final model was NaN
    assert runset.summary["best_accuracy"].iloc[0] == 0.4


# ------------------------------------------------------------------ documentation


def test_readme_documents_every_status_and_stop_rule():
    readme = (ROOT / "README.md").read_text()
    assert "## Stop rules and run statuses" in readme
    section = readme.split("## Stop rules and run statuses", 1)[1].split("\n## ", 1)[0]
    for status, (code, _) in STATUSES.items():
        assert re.search(rf"\|\s*`{status}`\s*\|\s*{code}\s*\|", section), status
    for rule in STOP_RULES:
        assert f"`{rule}`" in section, rule


# ------------------------------------------------------------------ run.stop_at_target

LEARNING = """\
fleet: {{size: 4}}
traces:
  availability: {{kind: always_online}}
  network: {{type: fixed, uplink_mbps: 10, downlink_mbps: 10}}
model: {{name_or_path: tiny-bert, max_seq_len: 16}}
data: {{name: bbc_news, max_examples: 96, max_eval_examples: 40, batch_size: 4}}
numerics: {{threads: 1}}
protocol: {{devices_per_step: 2, perturbations_per_device: 4, rounds: 1, batches_per_round: 12,
           eval_every_steps: 1, lr: 0.05}}
run: {{name: learn, progress: false, targets: {targets}, stop_at_target: {stop}}}
"""


def test_stop_at_target_ends_the_run_at_the_first_evaluation_that_reaches_it(tmp_path):
    full = tmp_path / "full.yaml"
    full.write_text(LEARNING.format(targets="[0.05]", stop="false"))
    summary, steps, _, _ = read_run(run_scenario(full, run_dir=tmp_path / "full"))
    acc = steps["accuracy"].to_numpy()
    assert summary["stopped_by"] == "rounds" and np.isfinite(acc).all()
    # a target the run reaches after its first evaluation: the best accuracy seen later
    later = acc[1:]
    target = float(later.max())
    first = int(np.flatnonzero(acc >= target)[0])
    stop = tmp_path / "stop.yaml"
    stop.write_text(LEARNING.format(targets=f"[{acc.min() / 2:.6f}, {target!r}]", stop="true"))
    summary_s, steps_s, _, _ = read_run(run_scenario(stop, run_dir=tmp_path / "stop"))
    assert summary_s["stopped_by"] == "targets_reached"
    assert summary_s["status"] == "completed" and exit_code(summary_s["status"]) == 0
    assert len(steps_s) == first + 1  # nothing after the step whose evaluation reached it
    np.testing.assert_array_equal(steps_s["accuracy"].to_numpy(), acc[: first + 1])
    reached = summary_s["time_to_target"][f"{target:g}"]
    assert reached == pytest.approx(float(steps["sim_time_s"].iloc[first]))


def test_stop_at_target_without_targets_is_bad_input(tmp_path, capsys):
    bad = tmp_path / "bad.yaml"
    bad.write_text(LEARNING.format(targets="[]", stop="true"))
    assert main(["validate", str(bad)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "run.stop_at_target" in err[0] and "bad.yaml" in err[0]


def test_the_final_evaluation_does_not_relabel_another_stop(tmp_path):
    # max_steps stops the run between evaluations; the final model's evaluation reaches
    # the (tiny) target, but the target did not stop the run: stopped_by stays max_steps
    text = LEARNING.format(targets="[0.01]", stop="true").replace(
        "eval_every_steps: 1", "eval_every_steps: 5, max_steps: 3")
    scenario = tmp_path / "s.yaml"
    scenario.write_text(text)
    summary, steps, _, _ = read_run(run_scenario(scenario, run_dir=tmp_path / "o"))
    assert summary["steps"] == 3 and summary["stopped_by"] == "max_steps"
    assert summary["time_to_target"]["0.01"] is not None  # it was reached, at the end


def test_stop_split_validation_stops_on_the_validation_split(tmp_path):
    # issue 23, rule 3: a tuning run may stop at a target, but on the validation split: the
    # test split must not decide even when a tuning run ends
    def scenario(name: str, targets: str, stop: str, split: str) -> Path:
        text = LEARNING.format(targets=targets, stop=stop).replace(
            "max_eval_examples: 40,", "max_eval_examples: 40, validation_fraction: 0.25,")
        text = text.replace("stop_at_target:", f"stop_split: {split}, stop_at_target:")
        path = tmp_path / f"{name}.yaml"
        path.write_text(text)
        return path

    _, steps, _, _ = read_run(run_scenario(scenario("full", "[0.05]", "false", "test"),
                                           run_dir=tmp_path / "full"))
    val, acc = steps["val_accuracy"].to_numpy(), steps["accuracy"].to_numpy()
    assert np.isfinite(val).all() and np.isfinite(acc).all()
    # a target both splits reach, first at different evaluations
    candidates = [t for t in sorted(set(val[1:]) | set(acc[1:]))
                  if (val >= t).any() and (acc >= t).any()
                  and np.flatnonzero(val >= t)[0] != np.flatnonzero(acc >= t)[0]]
    assert candidates, "the splits should reach some target at different evaluations"
    target = float(candidates[-1])
    by_val, by_test = (int(np.flatnonzero(a >= target)[0]) for a in (val, acc))
    for split, first in (("validation", by_val), ("test", by_test)):
        path = scenario(split, f"[{target!r}]", "true", split)
        summary, stopped, _, _ = read_run(run_scenario(path, run_dir=tmp_path / split))
        assert summary["stopped_by"] == "targets_reached", split
        assert len(stopped) == first + 1, split
    # a validation stop needs a validation split
    bad = tmp_path / "bad.yaml"
    bad.write_text(LEARNING.format(targets="[0.5]", stop="true").replace(
        "stop_at_target:", "stop_split: validation, stop_at_target:"))
    assert main(["validate", str(bad)]) == 2
