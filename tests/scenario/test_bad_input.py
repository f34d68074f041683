"""Bad scenarios: exit code 2, one clear message naming file, line, key and what is
allowed; never a traceback."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from fleetsim.cli import main

REPO = Path(__file__).resolve().parents[2]

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


def write(tmp_path: Path, text: str, name: str = "s.yaml") -> Path:
    p = tmp_path / name
    p.write_text(text)
    return p


def run_cli(args: list[str], capsys) -> tuple[int, str]:
    code = main(args)
    err = capsys.readouterr().err
    assert "Traceback" not in err
    return code, err


def test_minimal_scenario_validates(tmp_path, capsys):
    p = write(tmp_path, MINIMAL)
    code = main(["validate", str(p)])
    assert code == 0, capsys.readouterr().err


CASES = [
    # (id, scenario text or None for "file missing", extra args, expected substrings)
    ("missing_file", None, [], ["scenario file not found"]),
    ("yaml_syntax", "fleet:\n  size: [1, 2\n", [], ["not valid YAML", ":3"]),
    ("not_mapping", "- a\n- b\n", [], ["must be a mapping of sections"]),
    ("unknown_section", MINIMAL + "fleeet: {}\n", [], ["fleeet", "unknown key", "fleet, traces"]),
    ("unknown_nested", MINIMAL.replace("rounds: 1", "rounds: 1\n  lrr: 0.1"), [],
     ["s.yaml:11", "protocol.lrr", "unknown key", "lr_schedule"]),
    ("wrong_type", MINIMAL.replace("rounds: 1", "rounds: 1\n  lr: fast"), [],
     ["protocol.lr", "valid number", "'fast'"]),
    ("out_of_range", MINIMAL.replace("rounds: 1", "rounds: 1\n  lr: -1"), [],
     ["protocol.lr: must be more than 0 (got -1)"]),
    ("bad_literal", MINIMAL + "policy:\n  cohort: smart\n", [],
     ["policy.cohort", "'random'", "'fastest_first'"]),
    ("missing_required", "numerics:\n  engine: none\n", [], ["fleet", "required key is missing"]),
    ("zero_fleet", MINIMAL.replace("size: 20", "size: 0"), [], ["s.yaml:2", "fleet.size"]),
    ("extends_missing", "extends: nothere.yaml\n" + MINIMAL, [],
     ["extends", "scenario file not found", "nothere.yaml"]),
    ("set_no_equals", MINIMAL, ["--set", "protocol.lr"], ["KEY=VALUE"]),
    ("set_unknown_key", MINIMAL, ["--set", "protocol.speed=3"], ["--set protocol.speed",
                                                                   "unknown key"]),
    ("set_wrong_type", MINIMAL, ["--set", "run.seed=abc"], ["--set run.seed", "valid integer"]),
    ("set_into_value", MINIMAL, ["--set", "fleet.size.x=3"], ["fleet.size is a value"]),
    ("rate_beside_a_trace_network", MINIMAL.replace(
        "kind: always_online", "kind: always_online\n  network:\n    type: flash_wifi\n"
        "    uplink_mbps: 10"), [],
     ["s.yaml:10: traces.network.uplink_mbps: applies only to type: fixed", "'flash_wifi'"]),
    ("downlink_beside_a_trace_network", MINIMAL, ["--set", "traces.network.downlink_mbps=5"],
     ["--set traces.network.downlink_mbps: applies only to type: fixed"]),
    ("mebibit_beside_a_trace_network", MINIMAL, ["--set", "traces.network.type=hsdpa_3g",
                                                 "--set", "traces.network.mebibit=true"],
     ["traces.network.mebibit: applies only to type: fixed", "'hsdpa_3g'"]),
    ("radio_beside_a_trace_network", MINIMAL, ["--set", "traces.network.type=5g_mmwave",
                                               "--set", "traces.network.radio=wifi"],
     ["traces.network.radio: type '5g_mmwave' implies radio '5g' (got 'wifi')"]),
    ("table_beside_fixed_rates", MINIMAL, ["--set", "traces.network.type=fixed",
                                           "--set", "traces.network.uplink_mbps=10",
                                           "--set", "traces.network.path=table.csv"],
     ["traces.network.path: a distribution table applies only to the trace types"]),
    ("cohort_too_big", MINIMAL.replace("devices_per_step: 5", "devices_per_step: 50"), [],
     ["s.yaml:9: protocol.devices_per_step: must be at most fleet.size, 20 devices "
      "(got 50)"]),
    ("unknown_dataset", MINIMAL + "data:\n  name: bbc_nws\n", [],
     ["s.yaml:12: data.name: unknown dataset 'bbc_nws' (did you mean 'bbc_news'?); allowed: "
      "bbc_news, rotten_tomatoes"]),
    ("hours_with_unit", MINIMAL + "run:\n  max_sim_hours: 2h\n", [],
     ["s.yaml:12: run.max_sim_hours: ", "(got '2h'); expected a number of hours, without its "
      "unit (2, not '2h'), more than 0 h and at most 8,784 h (one year)"]),
    ("whole_number", MINIMAL, ["--set", "protocol.devices_per_step=2.5"],
     ["--set protocol.devices_per_step: ", "expected a whole number of devices, at least 1"]),
    ("section_given_a_value", MINIMAL.replace(
        "size: 20", "size: 20\n  cost_model:\n    name_or_path: tiny-bert\n    peft: lora"), [],
     ["s.yaml:5: fleet.cost_model.peft: must be a section (a mapping of keys: method, rank, ",
      "not 'lora' (did you mean {method: lora}?)"]),
    ("deadline_policy_without_deadline", MINIMAL + "policy:\n  name: deadline\n", [],
     ["policy.deadline_s", "needs"]),
    ("deadline_commit_without_deadline",
     MINIMAL.replace("rounds: 1", "rounds: 1\n  commit:\n    mode: deadline"), [],
     ["protocol.commit", "deadline_s is required"]),
    ("targets_range", MINIMAL + "run:\n  targets: [1.5]\n", [], ["run.targets", "(0, 1]"]),
    ("systems_only_with_targets", MINIMAL + "run:\n  targets: [0.5]\n", [],
     ["systems-only", "remove the targets"]),
    ("unknown_protocol", MINIMAL.replace("rounds: 1", "rounds: 1\n  name: fedprox"), [],
     ["protocol.name", "fedprox", "fwdllm"]),
    ("unknown_policy", MINIMAL + "policy:\n  name: greedy\n", [],
     ["policy.name", "greedy", "capability"]),
    ("negative_seed", MINIMAL + "run:\n  seed: -1\n", [],
     ["run.seed: must be at least 0 (got -1)"]),
    ("bad_quorum", MINIMAL.replace("rounds: 1", "rounds: 1\n  commit:\n    quorum_fraction: 2"),
     [], ["protocol.commit.quorum_fraction: must be more than 0 and at most 1 (got 2)"]),
    ("seed_pool_not_kseed", MINIMAL.replace("rounds: 1", "rounds: 1\n  seed_pool: 64"), [],
     ["protocol.seed_pool", "kseed", "null"]),
    ("importance_without_pool", MINIMAL.replace(
        "rounds: 1", "rounds: 1\n  name: kseed\n  seed_pool: null\n  seed_sampling: importance"),
     [], ["protocol.seed_sampling", "seed_pool", "uniform"]),
    ("seed_pool_with_adam", MINIMAL.replace("rounds: 1", "rounds: 1\n  name: kseed").replace(
        "engine: none", "engine: none\n  server_optimizer:\n    name: adam"),
     [], ["numerics.server_optimizer", "seed_pool", "sgd"]),
    ("seed_pool_with_discriminative", MINIMAL.replace("rounds: 1", "rounds: 1\n  name: kseed")
     .replace("engine: none", "engine: none\n  discriminative:\n    enabled: true"),
     [], ["numerics.discriminative.enabled", "false"]),
]


@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_bad_scenario_exits_2_with_clear_message(case, tmp_path, capsys):
    _, text, extra, expected = case
    path = tmp_path / "s.yaml" if text is None else write(tmp_path, text)
    code, err = run_cli(["validate", str(path), *extra], capsys)
    assert code == 2, err
    assert err.startswith("fleetsim: error: ")
    for needle in expected:
        assert needle in err, f"{needle!r} not in {err!r}"


def test_extends_cycle(tmp_path, capsys):
    write(tmp_path, "extends: b.yaml\n" + MINIMAL, "a.yaml")
    write(tmp_path, "extends: a.yaml\n", "b.yaml")
    code, err = run_cli(["validate", str(tmp_path / "a.yaml")], capsys)
    assert code == 2
    assert "cycle in extends chain" in err and "a.yaml" in err and "b.yaml" in err


def test_misspelt_extends_path_names_its_line_and_the_close_file(tmp_path, capsys):
    write(tmp_path, MINIMAL, "base.yaml")
    child = write(tmp_path, "description: child\nextends: bse.yaml\n", "child.yaml")
    code, err = run_cli(["validate", str(child)], capsys)
    assert code == 2 and err.count("\n") == 1
    assert (f"{child}:2: extends: scenario file not found: {tmp_path / 'bse.yaml'} "
            "(did you mean 'base.yaml'?)") in err
    (tmp_path / "sub").mkdir()
    write(tmp_path / "sub", MINIMAL, "base.yaml")
    listed = write(tmp_path, "extends:\n  - base.yaml\n  - sub/bas.yaml\n", "listed.yaml")
    code, err = run_cli(["validate", str(listed)], capsys)
    assert code == 2 and f"{listed}:3: extends: " in err
    assert "(did you mean 'sub/base.yaml'?)" in err


def test_extends_merges_and_overrides(tmp_path):
    from fleetsim.scenario.loader import load_scenario

    write(tmp_path, MINIMAL, "base.yaml")
    child = write(tmp_path, "extends: base.yaml\nprotocol:\n  lr: 0.5\n", "child.yaml")
    loaded = load_scenario(child, ["run.seed=7"])
    sc = loaded.scenario
    assert sc.protocol.lr == 0.5
    assert sc.protocol.devices_per_step == 5  # inherited
    assert sc.fleet.size == 20
    assert sc.run.seed == 7
    # The error for a bad inherited key points at the parent file's line.
    write(tmp_path, MINIMAL.replace("rounds: 1", "rounds: 0"), "badbase.yaml")
    bad = write(tmp_path, "extends: badbase.yaml\n", "badchild.yaml")
    with pytest.raises(Exception) as info:
        load_scenario(bad)
    assert "badbase.yaml:10" in str(info.value)


def test_real_process_exit_code_and_no_traceback(tmp_path):
    p = write(tmp_path, MINIMAL.replace("rounds: 1", "rounds: -3"))
    proc = subprocess.run(
        [sys.executable, "-m", "fleetsim", "run", str(p)], capture_output=True, text=True
    )
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr
    assert "protocol.rounds" in proc.stderr


def test_errors_found_while_building_a_run_name_file_and_line(tmp_path, capsys):
    """A file that validates but cannot be run (an unreadable power file) is reported at the
    line that set the key, or as --set, and nothing is written."""
    text = MINIMAL.replace(
        "fleet:\n  size: 20\n",
        "fleet:\n  size: 20\n  energy:\n    power_file: missing-power.yaml\n",
    )
    path = write(tmp_path, text)
    out = tmp_path / "run"
    code, err = run_cli(["run", str(path), "--out", str(out), "--no-progress"], capsys)
    assert code == 2
    assert f"{path}:4: fleet.energy.power_file: cannot read power figures" in err
    assert str(tmp_path / "missing-power.yaml") in err  # resolved next to the scenario
    assert not out.exists() or not any(out.iterdir())
    code, err = run_cli(["run", str(write(tmp_path, MINIMAL, "ok.yaml")), "--out", str(out),
                         "--no-progress", "--set", "fleet.energy.power_file=nope.yaml"], capsys)
    assert code == 2
    assert "error: --set fleet.energy.power_file: cannot read power figures" in err


def test_paths_of_an_extended_scenario_resolve_beside_it(tmp_path):
    """A scenario extending one in another folder: the relative paths the base writes name
    files beside the base (here data.path and the charged model's folder), not beside the
    extending file; names that are not paths (a model id) stay as written."""
    from fleetsim.scenario.loader import load_scenario

    base = REPO / "analysis" / "end_to_end" / "scenario.yaml"
    mine = write(tmp_path, f"extends: {base}\nfleet:\n  size: 120\n", "mine.yaml")
    loaded = load_scenario(mine)
    data_path = (loaded.base_dir / loaded.scenario.data.path).resolve()
    assert data_path == (base.parent / "../../../shared/datasets/ag_news/test.csv").resolve()
    charged = (loaded.base_dir / loaded.scenario.fleet.cost_model.name_or_path).resolve()
    assert charged == (REPO / "scenarios" / "models" / "distilbert-base-uncased").resolve()
    assert loaded.scenario.model.name_or_path == "all-minilm-l6-v2"
    assert loaded.scenario.fleet.size == 120
    # the same folder: nothing rewritten (the shipped pair keeps its scenario hash)
    same = load_scenario(REPO / "analysis" / "end_to_end" / "scenario_fleet.yaml")
    assert same.scenario.data.path == "../../../shared/datasets/ag_news/test.csv"
