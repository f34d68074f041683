"""The command line's conventions (issue 24, point 6): --version, help on every argument,
the --set KEY VALUE hint, "did you mean" for unknown keys, range errors with units,
validate --print-resolved."""

from __future__ import annotations

import argparse
import subprocess
from pathlib import Path

import pytest
import yaml

from fleetsim.cli import build_parser, main, set_without_equals
from fleetsim.errors import FleetsimInputError, did_you_mean
from fleetsim.scenario.loader import load_scenario, unit_of

REPO = Path(__file__).resolve().parents[1]
QUICKSTART = REPO / "scenarios" / "quickstart.yaml"

MINIMAL = """\
fleet:
  size: 20
numerics:
  engine: none
traces:
  availability:
    kind: always_online
protocol:
  devices_per_step: 5
  rounds: 1
"""


def _write(tmp_path: Path, text: str, name: str = "s.yaml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def _error_line(capsys) -> str:
    err = capsys.readouterr().err
    assert "Traceback" not in err
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    return lines[0]


# --- --version -----------------------------------------------------------------------

def test_version_names_the_package_version_and_the_git_commit(capsys) -> None:
    from importlib import metadata

    with pytest.raises(SystemExit) as stop:
        main(["--version"])
    assert stop.value.code == 0
    out = capsys.readouterr().out.strip()
    version = metadata.version("fleetsim")
    head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPO, capture_output=True,
                          text=True, check=False)
    if head.returncode != 0:  # not a git checkout: the version alone
        assert out == f"fleetsim {version}"
        return
    dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"],
                           cwd=REPO, capture_output=True, text=True, check=True).stdout
    expected = f"fleetsim {version} (git {head.stdout.strip()}"
    assert out == expected + (", modified)" if dirty.strip() else ")")


# --- help on every argument ----------------------------------------------------------

def _walk(parser: argparse.ArgumentParser, path: str):
    """(command path, action) for every action of ``parser`` and its sub-commands."""
    for action in parser._actions:
        yield path, action
        if isinstance(action, argparse._SubParsersAction):
            helped = {a.dest for a in action._choices_actions}
            for name, sub in action.choices.items():
                assert name in helped, f"{path} {name}: sub-command without help"
                yield from _walk(sub, f"{path} {name}")


def test_every_argument_of_every_subcommand_has_help() -> None:
    seen = 0
    missing = []
    for path, action in _walk(build_parser(), "fleetsim"):
        seen += 1
        if isinstance(action, argparse._HelpAction):
            continue
        if not action.help or action.help == argparse.SUPPRESS:
            missing.append(f"{path} {'/'.join(action.option_strings) or action.dest}")
    assert not missing, missing
    assert seen > 50  # every sub-command was walked (run, validate, traces *, sweep, ...)


def test_help_pages_render(capsys) -> None:
    for command in (["--help"], ["compare", "--help"], ["validate", "--help"],
                    ["traces", "sample", "--help"], ["sweep", "--help"]):
        with pytest.raises(SystemExit) as stop:
            main(command)
        assert stop.value.code == 0
    out = capsys.readouterr().out
    assert "--print-resolved" in out and "--json" in out and "--version" in out
    assert "%%" not in out  # descriptions are not %-formatted


# --- --set KEY VALUE -----------------------------------------------------------------

@pytest.mark.parametrize("argv, hint", [
    (["run", "--set", "protocol.lr", "0.02", "scenarios/quickstart.yaml"],
     "--set protocol.lr 0.02: write KEY=VALUE (--set protocol.lr=0.02)"),
    (["run", "scenarios/quickstart.yaml", "--set", "protocol.lr", "0.02"],
     "--set protocol.lr 0.02: write KEY=VALUE (--set protocol.lr=0.02)"),
    (["validate", "--set", "fleet.size", "a.yaml"],
     "--set fleet.size: write KEY=VALUE (--set fleet.size=VALUE)"),
    (["sweep", "s.yaml", "--set", "protocol.rounds", "--no-progress"],
     "--set protocol.rounds: write KEY=VALUE (--set protocol.rounds=VALUE)"),
    (["run", "a.yaml", "--set", "protocol.lr"],
     "--set protocol.lr: write KEY=VALUE (--set protocol.lr=VALUE)"),
])
def test_set_without_equals_gets_one_line_and_exit_2(argv, hint, capsys) -> None:
    assert set_without_equals(argv) == hint
    assert main(argv) == 2
    assert _error_line(capsys) == f"fleetsim: error: {hint}"


def test_set_with_equals_is_not_hinted() -> None:
    assert set_without_equals(["run", "a.yaml", "--set", "protocol.lr=0.02"]) is None
    assert set_without_equals(["run", "a.yaml", "--set=protocol.lr=0.02"]) is None
    # after "--" everything is positional
    assert set_without_equals(["run", "--", "--set", "x"]) is None


# --- did you mean --------------------------------------------------------------------

def test_did_you_mean_picks_the_closest_allowed_word() -> None:
    assert did_you_mean("lrr", ["lr", "rounds", "lr_schedule"]) == " (did you mean 'lr'?)"
    assert did_you_mean("zzzz", ["lr", "rounds"]) == ""


def test_unknown_scenario_key_in_a_file_gets_did_you_mean(tmp_path, capsys) -> None:
    path = _write(tmp_path, MINIMAL.replace("rounds: 1", "rounds: 1\n  devices_per_stpe: 3"))
    assert main(["validate", str(path)]) == 2
    line = _error_line(capsys)
    assert line.startswith(f"fleetsim: error: {path}:11: protocol.devices_per_stpe: unknown "
                           "key (did you mean 'devices_per_step'?); allowed keys here: name, ")


def test_unknown_set_key_gets_did_you_mean(tmp_path, capsys) -> None:
    path = _write(tmp_path, MINIMAL)
    assert main(["validate", str(path), "--set", "fleet.sise=3"]) == 2
    assert _error_line(capsys).startswith(
        "fleetsim: error: --set fleet.sise: unknown key (did you mean 'size'?); allowed keys "
        "here: size, ")


def test_unknown_section_and_name_get_did_you_mean(tmp_path, capsys) -> None:
    path = _write(tmp_path, MINIMAL + "polcy: {}\n")
    assert main(["validate", str(path)]) == 2
    assert f"{path}:11: polcy: unknown key (did you mean 'policy'?)" in _error_line(capsys)
    path = _write(tmp_path, MINIMAL + "policy:\n  name: overcomit\n", "n.yaml")
    assert main(["validate", str(path)]) == 2
    assert (f"{path}:12: policy.name: unknown name 'overcomit' (did you mean 'overcommit'?); "
            "allowed: ") in _error_line(capsys)


def test_misspelt_choice_and_name_given_with_set(tmp_path, capsys) -> None:
    path = _write(tmp_path, MINIMAL)
    assert main(["validate", str(path), "--set", "policy.cohort=fastest"]) == 2
    assert _error_line(capsys) == (
        "fleetsim: error: --set policy.cohort: Input should be 'random', 'availability_aware' "
        "or 'fastest_first' (got 'fastest') (did you mean 'fastest_first'?)")
    # "--set KEY" names the key once
    assert main(["validate", str(path), "--set", "protocol.name=fwdlm"]) == 2
    assert _error_line(capsys).startswith(
        "fleetsim: error: --set protocol.name: unknown name 'fwdlm' (did you mean 'fwdllm'?); "
        "allowed: ")
    # a list given whole with --set: the error is located at that --set, not in the file
    assert main(["validate", str(path), "--set", "output.trackers=[tensorbord]"]) == 2
    assert _error_line(capsys) == (
        "fleetsim: error: --set output.trackers: output.trackers.0: Input should be "
        "'tensorboard' or 'mlflow' (got 'tensorbord') (did you mean 'tensorboard'?)")


def test_unknown_sweep_key_gets_did_you_mean(tmp_path, capsys) -> None:
    _write(tmp_path, MINIMAL, "base.yaml")
    sweep = _write(tmp_path, "base: base.yaml\nseed: [0, 1]\n", "sweep.yaml")
    assert main(["sweep", str(sweep), "--dry-run"]) == 2
    assert _error_line(capsys) == (
        f"fleetsim: error: {sweep}:2: seed: unknown key (did you mean 'seeds'?); allowed keys: "
        "base, name, arms, grid, zip, seeds, set, out, max_parallel, run_timeout_s, "
        "torch_threads_per_task")


def test_unknown_scenario_key_swept_by_a_sweep_gets_did_you_mean(tmp_path, capsys) -> None:
    _write(tmp_path, MINIMAL, "base.yaml")
    sweep = _write(tmp_path, "base: base.yaml\ngrid:\n  protocol.lrr: [0.1, 0.2]\n",
                   "sweep.yaml")
    assert main(["sweep", str(sweep), "--dry-run"]) == 2
    assert _error_line(capsys).startswith(
        f"fleetsim: error: {sweep}:3: grid.protocol.lrr: run protocol.lrr=0.1: unknown key "
        "(did you mean 'lr'?); allowed keys here: name, lr, ")


# --- range errors with units ---------------------------------------------------------

@pytest.mark.parametrize("override, message", [
    ("run.max_sim_hours=9000",
     "--set run.max_sim_hours: must be more than 0 h and at most 8,784 h (one year) (got 9000)"),
    ("run.start_hour=24",
     "--set run.start_hour: must be at least 0 h and less than 24 h (one day) (got 24)"),
    ("fleet.size=0", "--set fleet.size: must be at least 1 device (got 0)"),
    ("protocol.devices_per_step=0",
     "--set protocol.devices_per_step: must be at least 1 device (got 0)"),
    ("protocol.commit.deadline_s=0",
     "--set protocol.commit.deadline_s: must be more than 0 s (got 0)"),
    ("traces.network.uplink_mbps=-5",
     "--set traces.network.uplink_mbps: must be more than 0 Mbit/s (got -5)"),
    ("model.max_seq_len=5000",
     "--set model.max_seq_len: must be at least 4 tokens and at most 4,096 tokens (got 5000)"),
    ("protocol.commit.quorum_fraction=1.5",
     "--set protocol.commit.quorum_fraction: must be more than 0 and at most 1 (got 1.5)"),
    ("output.checkpoint_every_minutes=-1",
     "--set output.checkpoint_every_minutes: must be at least 0 min (got -1)"),
])
def test_range_errors_say_the_bound_with_its_unit(tmp_path, override, message) -> None:
    path = _write(tmp_path, MINIMAL)
    with pytest.raises(FleetsimInputError) as caught:
        load_scenario(path, [override])
    assert str(caught.value) == message


def test_range_error_in_a_file_names_file_line_key_and_unit(tmp_path) -> None:
    path = _write(tmp_path, MINIMAL + "run:\n  max_sim_hours: 10000\n")
    with pytest.raises(FleetsimInputError) as caught:
        load_scenario(path)
    assert str(caught.value) == (f"{path}:12: run.max_sim_hours: must be more than 0 h and at "
                                 "most 8,784 h (one year) (got 10000)")


@pytest.mark.parametrize("line, message", [
    ("run_timeout_s: 0", "run_timeout_s: must be more than 0 s (got 0)"),
    ("max_parallel: 0", "max_parallel: must be at least 1 run (got 0)"),
])
def test_sweep_file_range_errors_have_units(tmp_path, capsys, line, message) -> None:
    _write(tmp_path, MINIMAL, "base.yaml")
    sweep = _write(tmp_path, f"base: base.yaml\n{line}\n", "sweep.yaml")
    assert main(["sweep", str(sweep), "--dry-run"]) == 2
    assert _error_line(capsys) == f"fleetsim: error: {sweep}:2: {message}"


def test_units_of_bounded_keys() -> None:
    assert unit_of(("run", "max_sim_hours")) == "h"
    assert unit_of(("traces", "availability", "merge_gap_s")) == "s"
    assert unit_of(("traces", "availability", "clock_tolerance_days")) == "days"
    assert unit_of(("numerics", "prefix_cache_max_bytes")) == "bytes"
    assert unit_of(("protocol", "rounds")) == "rounds"
    assert unit_of(("peft", "alpha")) is None  # a plain number


def test_range_message_singular_and_rates() -> None:
    from pydantic import Field
    from pydantic.fields import FieldInfo

    from fleetsim.scenario.loader import range_message

    one = FieldInfo.merge_field_infos(Field(None, ge=1, le=1))
    assert range_message(("traces", "network", "uplink_mbps"), one) == (
        "must be at least 1 Mbit/s and at most 1 Mbit/s")
    assert range_message(("protocol", "max_steps"), one) == (
        "must be at least 1 step and at most 1 step")
    assert range_message(("fleet", "thermal", "cooldown_s"), one) == (
        "must be at least 1 s and at most 1 s")


# --- validate --print-resolved -------------------------------------------------------

def test_validate_print_resolved_prints_the_resolved_scenario(tmp_path, capsys) -> None:
    base = _write(tmp_path, MINIMAL, "base.yaml")
    child = _write(tmp_path, f"extends: {base.name}\nprotocol:\n  rounds: 3\n", "child.yaml")
    code = main(["validate", str(child), "--set", "protocol.lr=0.02", "--print-resolved"])
    assert code == 0
    printed = yaml.safe_load(capsys.readouterr().out)
    expected = load_scenario(child, ["protocol.lr=0.02"]).scenario.model_dump(mode="json")
    assert printed == expected
    # extends merged, --set applied, defaults filled in
    assert printed["fleet"]["size"] == 20 and printed["protocol"]["rounds"] == 3
    assert printed["protocol"]["lr"] == 0.02
    assert printed["protocol"]["devices_per_step"] == 5
    assert printed["run"]["seed"] == 0 and printed["policy"]["name"] == "uniform"


def test_progress_line_shows_the_step_just_committed_and_no_accuracy_before_one() -> None:
    """The run's live progress line: after the first commit it reads "step 1" (it read
    "step 0", one behind the bar's count) and "acc –" until an evaluation (not "acc nan")."""
    import io
    import math

    from fleetsim.callbacks import ProgressBar

    bar = ProgressBar(3, "t")
    bar.bar.fp = io.StringIO()  # keep the test's stderr clean
    row = {"sim_time_s": 3600.0, "step": 0, "committed": True, "loss": 0.5,
           "accuracy": math.nan}
    bar.after_central_iteration(None, row)
    assert bar.bar.n == 1
    assert bar.bar.postfix == "sim 1.00 h | step 1 | loss 0.5000 | acc –"
    bar.after_central_iteration(None, {**row, "step": 1, "committed": False})  # a repeat
    assert bar.bar.postfix.startswith("sim 1.00 h | step 1 |")
    bar.after_central_iteration(None, {**row, "step": 1, "accuracy": 0.25})
    assert bar.bar.n == 2 and bar.bar.postfix.endswith("| step 2 | loss 0.5000 | acc 0.250")
    bar.on_train_end(None)
