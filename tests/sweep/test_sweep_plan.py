"""The sweep file, its expansion into runs, run names and up-front validation."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import yaml

from fleetsim.errors import FleetsimInputError
from fleetsim.scenario.loader import parse_override
from fleetsim.sweep.config import load_sweep
from fleetsim.sweep.plan import MAX_RUN_ID_CHARS, format_value, plan_sweep, run_id_for


def write_sweep(tmp_path: Path, text: str, name: str = "sweep.yaml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def test_grid_zip_seeds_expand_in_order(tmp_path, base_scenario):
    path = write_sweep(
        tmp_path,
        "base: base.yaml\n"
        "grid:\n  policy.name: [uniform, capability]\n"
        "zip:\n  fleet.size: [8, 12]\n  protocol.devices_per_step: [2, 3]\n"
        "seeds: [0, 5]\n"
        "set:\n  protocol.lr: 0.5\n"
        f"out: {tmp_path / 'out'}\n",
    )
    loaded = load_sweep(path)
    runs = plan_sweep(loaded)
    assert len(runs) == 2 * 2 * 2
    assert runs[0].params == {
        "policy.name": "uniform", "fleet.size": 8, "protocol.devices_per_step": 2, "run.seed": 0
    }
    assert runs[1].params["run.seed"] == 5
    assert runs[2].params["fleet.size"] == 12 and runs[2].params["protocol.devices_per_step"] == 3
    assert runs[4].params["policy.name"] == "capability"
    assert runs[0].run_id == (
        "policy.name=uniform__fleet.size=8__protocol.devices_per_step=2__run.seed=0"
    )
    assert runs[0].run_dir == tmp_path / "out" / runs[0].run_id
    assert len({r.run_id for r in runs}) == len(runs)
    # Fixed overrides come first, swept values after, and every run gets them.
    assert runs[0].overrides[0] == "protocol.lr=0.5"
    assert "run.seed=5" in runs[1].overrides
    # Each run's resolved scenario carries its own values.
    resolved = yaml.safe_load(runs[7].resolved_yaml)
    assert resolved["fleet"]["size"] == 12
    assert resolved["policy"]["name"] == "capability"
    assert resolved["run"]["seed"] == 5
    assert resolved["protocol"]["lr"] == 0.5


def test_same_file_gives_same_names(tmp_path, base_scenario):
    path = write_sweep(tmp_path, "base: base.yaml\ngrid:\n  protocol.lr: [0.1, 0.02]\n")
    first = [r.run_id for r in plan_sweep(load_sweep(path))]
    second = [r.run_id for r in plan_sweep(load_sweep(path))]
    assert first == second == ["protocol.lr=0.1", "protocol.lr=0.02"]
    assert load_sweep(path).out_dir == Path("runs/sweeps/sweep")


def test_no_swept_keys_is_one_base_run(tmp_path, base_scenario):
    runs = plan_sweep(load_sweep(write_sweep(tmp_path, "base: base.yaml\n")))
    assert [r.run_id for r in runs] == ["base"]


@pytest.mark.parametrize(
    "value",
    ["capability", "1", "true", "null", "a: b", "", " padded", "x=y", 3, 0.02, 1e-5, True, None,
     [1, 2], {"a": [1, "b"]}, -0.0, 12345678901234],
)
def test_values_round_trip_through_set(value):
    _, parsed = parse_override(f"some.key={format_value(value)}")
    assert parsed == value and type(parsed) is type(value)


def test_run_ids_are_safe_and_bounded():
    rid = run_id_for({"traces.availability.path": "../traces/a b.csv", "run.seed": 1})
    assert "/" not in rid and " " not in rid and not rid.startswith(".")
    assert rid.endswith("__run.seed=1")
    long = run_id_for({"description": "x" * 400})
    assert len(long) == MAX_RUN_ID_CHARS
    assert long != run_id_for({"description": "x" * 399 + "y"})


def test_colliding_names_get_hash_suffixes(tmp_path, base_scenario):
    path = write_sweep(tmp_path, "base: base.yaml\ngrid:\n  description: ['a/b', 'a b']\n")
    ids = [r.run_id for r in plan_sweep(load_sweep(path))]
    assert len(set(ids)) == 2 and all(i.startswith("description=a-b-") for i in ids)


BAD_SWEEPS = [
    # (id, sweep text, expected substrings)
    ("unknown_key", "base: base.yaml\ngird:\n  a.b: [1]\n", ["sweep.yaml:2", "gird", "unknown key",
                                                             "grid"]),
    ("missing_base", "grid:\n  protocol.lr: [1]\n", ["base", "required key is missing"]),
    ("base_not_found", "base: nothere.yaml\n", ["sweep.yaml:1", "base scenario file not found"]),
    ("grid_not_list", "base: base.yaml\ngrid:\n  protocol.lr: 0.1\n",
     ["sweep.yaml:3", "grid.protocol.lr", "valid list"]),
    ("empty_grid_list", "base: base.yaml\ngrid:\n  protocol.lr: []\n",
     ["grid", "at least one value"]),
    ("zip_lengths", "base: base.yaml\nzip:\n  protocol.lr: [1, 2]\n  fleet.size: [8]\n",
     ["sweep.yaml:2", "equal lengths", "protocol.lr: 2", "fleet.size: 1"]),
    ("grid_and_zip", "base: base.yaml\ngrid:\n  protocol.lr: [1]\nzip:\n  protocol.lr: [2]\n",
     ["sweep.yaml:5", "both grid and zip"]),
    ("seed_twice", "base: base.yaml\ngrid:\n  run.seed: [1]\nseeds: [0]\n",
     ["grid.run.seed", "set by seeds"]),
    ("negative_seed", "base: base.yaml\nseeds: [-1]\n", ["seeds", ">= 0"]),
    ("repeated_seed", "base: base.yaml\nseeds: [1, 1]\n", ["seeds", "repeat"]),
    ("bad_key_path", "base: base.yaml\ngrid:\n  'protocol..lr': [1]\n", ["dotted scenario key"]),
    ("not_mapping", "- base.yaml\n", ["must be a mapping", "base, name, arms, grid"]),
    ("yaml_syntax", "base: base.yaml\ngrid: [1, 2\n", ["not valid YAML"]),
    ("zero_parallel", "base: base.yaml\nmax_parallel: 0\n",
     ["sweep.yaml:2", "max_parallel: must be at least 1 run (got 0)"]),
    # A combination the scenario rejects fails before anything runs, naming the run.
    ("bad_combination", "base: base.yaml\ngrid:\n  protocol.devices_per_step: [2, 50]\n",
     ["sweep.yaml:3: grid.protocol.devices_per_step: run protocol.devices_per_step=50",
      "must be at most fleet.size, 8 devices (got 50)"]),
    ("unknown_scenario_key", "base: base.yaml\ngrid:\n  protocol.speed: [1]\n",
     ["sweep.yaml:3: grid.protocol.speed: run protocol.speed=1: unknown key"]),
    ("bad_value_type", "base: base.yaml\nseeds: [0]\ngrid:\n  protocol.lr: [fast]\n",
     ["protocol.lr=fast", "valid number"]),
    ("unknown_policy", "base: base.yaml\ngrid:\n  policy.name: [uniform, greedy]\n",
     ["run policy.name=greedy", "unknown name 'greedy'"]),
]


@pytest.mark.parametrize("case", BAD_SWEEPS, ids=[c[0] for c in BAD_SWEEPS])
def test_bad_sweep_exits_2_before_running(case, tmp_path, base_scenario, sweep_main, capsys):
    _, text, expected = case
    path = write_sweep(tmp_path, text)
    out = tmp_path / "out"
    code = sweep_main(["sweep", str(path), "--backend", "sequential", "--out", str(out)])
    err = capsys.readouterr().err
    assert code == 2, err
    assert "Traceback" not in err
    assert err.startswith("fleetsim: error: ") and len(err.strip().splitlines()) == 1, err
    for needle in expected:
        assert needle in err, f"{needle!r} not in {err!r}"
    assert not out.exists()  # nothing ran, nothing was written


def test_missing_sweep_file_and_bad_flags(tmp_path, sweep_main, capsys):
    assert sweep_main(["sweep", str(tmp_path / "none.yaml")]) == 2
    assert "sweep file not found" in capsys.readouterr().err
    assert sweep_main(["sweep", str(tmp_path / "none.yaml"), "--max-parallel", "0"]) == 2
    assert "--max-parallel 0" in capsys.readouterr().err


def test_dry_run_lists_runs_and_runs_nothing(tmp_path, base_scenario, sweep_main, capsys):
    path = write_sweep(tmp_path, "base: base.yaml\nseeds: [0, 1, 2]\n")
    out = tmp_path / "out"
    assert sweep_main(["sweep", str(path), "--dry-run", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "3 runs, all valid" in printed and "run.seed=2" in printed
    assert not out.exists()


def test_bad_set_override_names_the_flag(tmp_path, base_scenario):
    path = write_sweep(tmp_path, "base: base.yaml\n")
    with pytest.raises(FleetsimInputError, match="--set fleet.size"):
        plan_sweep(load_sweep(path), ("fleet.size=-3",))


def test_set_cannot_override_a_swept_key(tmp_path, base_scenario):
    path = write_sweep(tmp_path, "base: base.yaml\nseeds: [0, 1]\ngrid:\n  protocol.lr: [1, 2]\n")
    with pytest.raises(FleetsimInputError, match="--set protocol.lr=3: protocol.lr is swept"):
        plan_sweep(load_sweep(path), ("protocol.lr=3",))
    with pytest.raises(FleetsimInputError, match="run.seed is swept"):
        plan_sweep(load_sweep(path), ("run.seed=3",))


def test_nan_is_not_silently_changed():
    assert math.isnan(parse_override(f"k={format_value(float('nan'))}")[1])
