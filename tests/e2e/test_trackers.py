"""Experiment trackers (output.trackers) and user callbacks (output.callbacks): what a run
logs is read back with the trackers' own readers and compared with the run's tables."""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import pandas as pd
import pytest

from fleetsim.callbacks import RunCallback
from fleetsim.cli import main
from fleetsim.record import rundir
from fleetsim.runner import run_scenario
from fleetsim.trackers import open_mlflow_store

pytest.importorskip("tensorboard")
pytest.importorskip("mlflow")

# Real forward gradients of a tiny BERT, evaluated at each round's end (the evaluation is
# put on the round's last step row after that row was recorded), with variance repeats:
# the strict threshold makes every step repeat once, so half the rows are not committed.
NUMERICS = """\
fleet: {size: 8}
traces:
  availability: {kind: always_online}
  network: {type: fixed, uplink_mbps: 1.0, downlink_mbps: 10}
numerics: {engine: torch}
model: {name_or_path: tiny-bert, max_seq_len: 16}
data: {name: bbc_news, max_examples: 64, max_eval_examples: 40}
protocol:
  devices_per_step: 4
  perturbations_per_device: 2
  rounds: 2
  batches_per_round: 2
  variance: {enabled: true, threshold: 1.0e-9, max_repeats: 1}
run: {name: tracked, progress: false}
output: {trackers: [tensorboard, mlflow]}
"""

SYSTEMS = """\
fleet: {size: 4}
traces:
  availability: {kind: always_online}
  network: {type: fixed, uplink_mbps: 1.0, downlink_mbps: 10}
numerics: {engine: none}
model: {name_or_path: tiny-bert, max_seq_len: 16}
data: {name: bbc_news, max_examples: 64, max_eval_examples: 40}
protocol: {devices_per_step: 2, rounds: 2, batches_per_round: 3}
run: {name: plain, progress: false}
output: {output_keys}
"""


def systems(tmp_path: Path, output: str) -> Path:
    p = tmp_path / "s.yaml"
    p.write_text(SYSTEMS.replace("{output_keys}", output))
    return p


def tensorboard_series(log_dir: Path) -> tuple[dict, object]:
    """tag → [(step, value, wall_time)] of every float64 scalar, and the accumulator."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    from tensorboard.util import tensor_util

    acc = EventAccumulator(str(log_dir), size_guidance={"tensors": 0, "images": 0,
                                                        "scalars": 0})
    acc.Reload()
    series = {}
    for tag in acc.Tags()["tensors"]:
        events = acc.Tensors(tag)
        if events and events[0].tensor_proto.dtype == 2:  # DT_DOUBLE: our scalars
            series[tag] = [(e.step, tensor_util.make_ndarray(e.tensor_proto).item(), e.wall_time)
                           for e in events]
    return series, acc


@pytest.fixture(scope="module")
def tracked_run(tmp_path_factory) -> Path:
    tmp = tmp_path_factory.mktemp("tracked")
    scenario = tmp / "s.yaml"
    scenario.write_text(NUMERICS)
    return run_scenario(scenario, run_dir=tmp / "run")


def test_tensorboard_holds_every_committed_step_and_the_summary(tracked_run: Path) -> None:
    steps = pd.read_parquet(tracked_run / "steps.parquet")
    summary = json.loads((tracked_run / "summary.json").read_text())
    committed = steps[steps["committed"]]
    assert (~steps["committed"]).sum() >= 1  # the check below can tell the two apart
    assert committed["accuracy"].notna().sum() == 2  # one evaluation per round
    series, acc = tensorboard_series(tracked_run / "tensorboard")
    for column in ("loss", "accuracy", "eval_loss", "variance", "sim_time_s", "bytes_up",
                   "devices", "lr", "step_seconds", "round"):
        rows = committed[committed[column].notna()]
        expected = [(int(s), float(v), float(t)) for s, v, t in
                    zip(rows["step"], rows[column], rows["sim_time_s"])]
        assert series[f"by_step/{column}"] == expected, column
        assert series[f"by_sim_time_ms/{column}"] == [
            (round(t * 1000), v, t) for _, v, t in expected], column
    # every finite summary figure, at the last committed step and the simulated end
    end = (summary["steps"], summary["simulated_seconds"])
    assert series["summary/final_accuracy"] == [(*end[:1], summary["final_accuracy"], end[1])]
    assert series["summary/simulated_seconds"] == [(end[0], summary["simulated_seconds"],
                                                    end[1])]
    assert series["summary/rounds"] == [(end[0], 2.0, end[1])]
    # the resolved scenario as text and hyper-parameters, the run's PNG as an image
    assert "scenario/text_summary" in acc.Tags()["tensors"]
    assert acc.Tags()["images"] == ["figures/convergence"]
    image = acc.Images("figures/convergence")[0]
    from matplotlib.image import imread
    height, width = imread(tracked_run / "convergence.png").shape[:2]
    assert (image.height, image.width) == (height, width)
    hparams = acc.SummaryMetadata("_hparams_/session_start_info").plugin_data
    from tensorboard.plugins.hparams import plugin_data_pb2
    data = plugin_data_pb2.HParamsPluginData.FromString(hparams.content)
    assert data.session_start_info.hparams["protocol.devices_per_step"].number_value == 4
    assert data.session_start_info.hparams["numerics.engine"].string_value == "torch"


def test_mlflow_store_holds_every_committed_step_and_the_summary(tracked_run: Path) -> None:
    steps = pd.read_parquet(tracked_run / "steps.parquet")
    summary = json.loads((tracked_run / "summary.json").read_text())
    committed = steps[steps["committed"]]
    with open_mlflow_store(tracked_run) as client:
        experiments = client.search_experiments()
        runs = client.search_runs([e.experiment_id for e in experiments])
        assert [r.info.run_name for r in runs] == ["tracked-seed0"]
        run = runs[0]
        assert run.info.status == "FINISHED"
        for column in ("loss", "accuracy", "sim_time_s", "bytes_down", "perturbations"):
            rows = committed[committed[column].notna()]
            history = sorted(client.get_metric_history(run.info.run_id, column),
                             key=lambda m: m.step)
            assert [(m.step, m.value, m.timestamp) for m in history] == [
                (int(s), float(v), round(t * 1000))
                for s, v, t in zip(rows["step"], rows[column], rows["sim_time_s"])], column
        final = client.get_metric_history(run.info.run_id, "summary/final_accuracy")
        assert [(m.step, m.value) for m in final] == [(summary["steps"],
                                                       summary["final_accuracy"])]
        params = run.data.params
        assert params["protocol.devices_per_step"] == "4"
        assert params["protocol.variance.threshold"] == "1e-09"
        assert params["data.name"] == "bbc_news"
        assert params["run.targets"] == "[]"
        artefacts = {a.path for a in client.list_artifacts(run.info.run_id)}
        assert artefacts == {"convergence.png", "scenario.yaml", "summary.json"}


def test_a_second_run_in_the_directory_replaces_the_tracker_folders(tmp_path: Path) -> None:
    scenario = systems(tmp_path, "{trackers: [tensorboard, mlflow], convergence_png: false}")
    out = tmp_path / "run"
    run_scenario(scenario, run_dir=out)
    run_scenario(scenario, ["protocol.rounds=1"], run_dir=out, replace=True)
    steps = pd.read_parquet(out / "steps.parquet")
    assert list(steps["step"]) == [0, 1, 2]
    assert len(list((out / "tensorboard").glob("events.out.tfevents.*"))) == 1
    series, acc = tensorboard_series(out / "tensorboard")
    assert [s for s, _, _ in series["by_step/sim_time_s"]] == [0, 1, 2]
    assert acc.Tags()["images"] == []  # no PNG written by this run
    assert "by_step/loss" not in series  # systems-only: no loss to log
    with open_mlflow_store(out) as client:
        runs = client.search_runs([e.experiment_id for e in client.search_experiments()])
        assert len(runs) == 1
        history = client.get_metric_history(runs[0].info.run_id, "sim_time_s")
        assert sorted(m.value for m in history) == list(steps["sim_time_s"])
        assert client.list_artifacts(runs[0].info.run_id) != []
        assert {a.path for a in client.list_artifacts(runs[0].info.run_id)} == {
            "scenario.yaml", "summary.json"}


@pytest.mark.parametrize("tracker, distribution", [("mlflow", "mlflow-skinny"),
                                                   ("tensorboard", "tensorboard")])
def test_a_missing_tracker_package_names_the_extra(tmp_path, capsys, monkeypatch, tracker,
                                                   distribution) -> None:
    scenario = systems(tmp_path, f"\n  trackers:\n    - {tracker}\n")
    monkeypatch.setitem(sys.modules, tracker, None)  # import fails as if not installed
    assert main(["run", str(scenario), "--no-progress", "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1
    assert f"s.yaml:12: output.trackers: the {tracker} tracker needs the {distribution} " \
           "package" in err[0]
    assert ".[trackers]" in err[0]
    assert not (tmp_path / "o").exists()


def test_an_unknown_tracker_is_refused_with_the_allowed_names(tmp_path, capsys) -> None:
    scenario = systems(tmp_path, "{trackers: [wandb]}")
    assert main(["validate", str(scenario)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "output.trackers.0" in err[0] and "'tensorboard'" in err[0] \
        and "'mlflow'" in err[0] and "wandb" in err[0]


# ------------------------------------------------------------------ user callbacks


class StepLog(RunCallback):
    """A user's callback: keeps (step, simulated time) of every committed step row and the
    summary it is handed at the end."""

    made: list[StepLog] = []

    def __init__(self) -> None:
        self.rows: list[tuple[int, float]] = []
        self.summary: dict = {}
        StepLog.made.append(self)

    def after_central_iteration(self, run, row: dict) -> None:
        if row["committed"]:
            self.rows.append((row["step"], row["sim_time_s"]))

    def on_outputs_written(self, run, summary: dict) -> None:
        self.summary = summary


class FakeEntryPoint:
    def __init__(self, name: str, target: object) -> None:
        self.name, self.value, self._target = name, f"tests:{name}", target

    def load(self) -> object:
        if isinstance(self._target, Exception):
            raise self._target
        return self._target


@pytest.fixture
def registered(monkeypatch):
    """The fleetsim.callbacks entry-point group as an installed plug-in would make it."""
    import fleetsim.callback_registry as registry

    eps = {"step_log": FakeEntryPoint("step_log", StepLog),
           "broken": FakeEntryPoint("broken", ImportError("no module named 'nowhere'")),
           "not_a_callback": FakeEntryPoint("not_a_callback", dict)}
    monkeypatch.setattr(registry, "_entry_points", lambda: eps)
    StepLog.made.clear()
    return eps


def test_a_registered_callback_selected_by_name_sees_the_run(tmp_path, registered) -> None:
    out = run_scenario(systems(tmp_path, "{callbacks: [step_log]}"), run_dir=tmp_path / "o")
    steps = pd.read_parquet(out / "steps.parquet")
    [log] = StepLog.made
    assert log.rows == list(zip(steps["step"], steps["sim_time_s"]))
    assert log.summary == json.loads((out / "summary.json").read_text())
    assert len(steps) == 6 and math.isclose(log.summary["simulated_seconds"],
                                            steps["sim_time_s"].iloc[-1])


def test_an_unknown_callback_lists_the_registered_ones(tmp_path, capsys, registered) -> None:
    scenario = systems(tmp_path, "\n  callbacks: [step_log, nope]\n")
    assert main(["validate", str(scenario)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"fleetsim: error: {scenario}:11: output.callbacks: unknown callback "
                   "'nope'; allowed: broken, not_a_callback, step_log"]


@pytest.mark.parametrize("name, says", [
    ("broken", "could not be loaded: ImportError: no module named 'nowhere'"),
    ("not_a_callback", "gave a dict, not a fleetsim.callbacks.RunCallback"),
])
def test_a_faulty_plugin_is_one_line(tmp_path, capsys, registered, name, says) -> None:
    scenario = systems(tmp_path, f"{{callbacks: [{name}]}}")
    # with the progress bar on: refused before any bar is drawn
    assert main(["run", str(scenario), "--set", "run.progress=true", "--out",
                 str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "output.callbacks" in err[0] and says in err[0], err


def test_no_plugin_installed_says_so(tmp_path, capsys, monkeypatch) -> None:
    import fleetsim.callback_registry as registry

    monkeypatch.setattr(registry, "_entry_points", lambda: {})
    assert main(["validate", str(systems(tmp_path, "{callbacks: [mine]}"))]) == 2
    err = capsys.readouterr().err.strip()
    assert "unknown callback 'mine'; allowed: (none: no package registers one in the " \
           "fleetsim.callbacks entry-point group)" in err


def test_a_resumed_run_logs_every_step_once(tmp_path: Path) -> None:
    from fleetsim.runner import resume_run

    scenario = systems(tmp_path, "{trackers: [tensorboard, mlflow], checkpoint_every_steps: 4, "
                                 "convergence_png: false}")
    out = run_scenario(scenario, run_dir=tmp_path / "run")
    # What a kill after the checkpoint of step 4 leaves (the in-progress marker, the
    # checkpoint, the tracker folders): the resumed run replays steps 0-3 and computes 4-5.
    digest = json.loads((out / rundir.COMPLETE_FILE).read_text())["scenario_hash"]
    for name in (*rundir.RUN_TABLES, rundir.COMPLETE_FILE):
        (out / name).unlink()
    (out / rundir.IN_PROGRESS_FILE).write_text(json.dumps({"scenario_hash": digest}))
    resume_run(out)
    steps = pd.read_parquet(out / "steps.parquet")
    series, _ = tensorboard_series(out / "tensorboard")
    assert [(s, v) for s, v, _ in series["by_step/sim_time_s"]] == list(
        zip(steps["step"], steps["sim_time_s"]))
    with open_mlflow_store(out) as client:
        [run] = client.search_runs([e.experiment_id for e in client.search_experiments()])
        history = client.get_metric_history(run.info.run_id, "sim_time_s")
        assert sorted((m.step, m.value) for m in history) == list(
            zip(steps["step"], steps["sim_time_s"]))
