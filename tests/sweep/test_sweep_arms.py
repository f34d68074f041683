"""Per-arm settings in a sweep (issue 21, point 2): each arm's runs resolve to that arm's
settings, the other arms keep theirs, run ids are deterministic, and a bad arm setting is
reported at its line of the sweep file."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from sweep_fakes import fake_run

from fleetsim.errors import FleetsimInputError
from fleetsim.scenario.loader import load_scenario
from fleetsim.sweep import load_sweep, plan_sweep, read_index, run_sweep

# The paper's Fig. 10 shape: FwdLLM at 1,000 clients a step against Adapter-BP at 10, one
# sweep (README "Sweeps").
PAPER_ARMS = """\
base: base.yaml
set:
  fleet.size: 1000
  protocol.rounds: 2
  protocol.perturbations_per_device: 3
arms:
  fwdllm:
    protocol.name: fwdllm
    protocol.devices_per_step: 1000
    protocol.perturbations_per_device: 1
    protocol.lr: 0.005
  adapter_bp:
    protocol.name: fedsgd
    protocol.devices_per_step: 10
    peft: {method: adapter}
    protocol.rounds: 5
grid:
  policy.name: [uniform, capability]
seeds: [0, 1]
"""


def _write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "sweep.yaml"
    path.write_text(text + f"out: {tmp_path / 'out'}\n")
    return path


def test_each_arm_resolves_to_its_own_settings(tmp_path, base_scenario):
    path = _write(tmp_path, PAPER_ARMS)
    runs = plan_sweep(load_sweep(path))
    # arms × grid × seeds, arms outermost, in file order
    assert [r.run_id for r in runs] == [
        f"arm={arm}__policy.name={policy}__run.seed={seed}"
        for arm in ("fwdllm", "adapter_bp")
        for policy in ("uniform", "capability")
        for seed in (0, 1)
    ]
    assert runs[0].params == {"arm": "fwdllm", "policy.name": "uniform", "run.seed": 0}
    # What a run without an arm setting gets: the base scenario with the sweep's set.
    base = load_scenario(base_scenario, ["fleet.size=1000", "protocol.rounds=2",
                                         "protocol.perturbations_per_device=3"]).scenario
    assert base.protocol.devices_per_step == 4  # SYSTEMS_ONLY's own value
    for run in runs:
        sc = yaml.safe_load(run.resolved_yaml)
        protocol, arm = sc["protocol"], run.params["arm"]
        assert sc["fleet"]["size"] == 1000  # set: every arm
        assert sc["policy"]["name"] == run.params["policy.name"]
        assert sc["run"]["seed"] == run.params["run.seed"]
        if arm == "fwdllm":
            assert protocol["name"] == "fwdllm"
            assert protocol["devices_per_step"] == 1000
            assert protocol["perturbations_per_device"] == 1
            assert protocol["lr"] == 0.005
            assert protocol["rounds"] == 2  # from set
            assert sc["peft"]["method"] == base.peft.method  # the base's, not adapter_bp's
        else:
            assert protocol["name"] == "fedsgd"
            assert protocol["devices_per_step"] == 10
            assert protocol["perturbations_per_device"] == 3  # set's, not fwdllm's 1
            # not fwdllm's: the base's own value
            assert protocol["lr"] == base.protocol.lr
            assert protocol["rounds"] == 5  # the arm's value replaces set's, for this arm only
            assert sc["peft"]["method"] == "adapter"
    assert base.peft.method != "adapter" and base.protocol.lr != 0.005


def test_arm_run_ids_are_deterministic_and_written_to_the_index(tmp_path, base_scenario):
    path = _write(tmp_path, PAPER_ARMS)
    first = [(r.run_id, r.overrides) for r in plan_sweep(load_sweep(path))]
    assert first == [(r.run_id, r.overrides) for r in plan_sweep(load_sweep(path))]
    # Reordering the keys inside an arm changes nothing but the order they are applied in.
    swapped = PAPER_ARMS.replace(
        "    protocol.devices_per_step: 10\n    peft: {method: adapter}\n",
        "    peft: {method: adapter}\n    protocol.devices_per_step: 10\n",
    )
    path2 = tmp_path / "other.yaml"
    path2.write_text(swapped + f"out: {tmp_path / 'out'}\n")
    assert [r.run_id for r in plan_sweep(load_sweep(path2))] == [rid for rid, _ in first]

    result = run_sweep(path, backend="sequential", progress=False, run_fn=fake_run)
    assert result.ok and result.executed == 8
    index = read_index(tmp_path / "out")
    assert list(index["arm"]) == ["fwdllm"] * 4 + ["adapter_bp"] * 4
    for row in index.to_dict("records"):
        written = yaml.safe_load((Path(row["run_dir"]) / "scenario.yaml").read_text())
        assert written["protocol"]["devices_per_step"] == (
            1000 if row["arm"] == "fwdllm" else 10)


def test_arm_without_settings_is_the_base(tmp_path, base_scenario):
    path = _write(tmp_path, "base: base.yaml\narms:\n  base:\n  fast:\n    protocol.lr: 2\n")
    runs = plan_sweep(load_sweep(path))
    assert [r.run_id for r in runs] == ["arm=base", "arm=fast"]
    base = load_scenario(base_scenario).scenario
    assert yaml.safe_load(runs[0].resolved_yaml)["protocol"]["lr"] == base.protocol.lr
    assert yaml.safe_load(runs[1].resolved_yaml)["protocol"]["lr"] == 2


BAD_ARMS = [
    # (id, sweep text, the exact one-line error after the sweep file's path)
    ("unknown_key", "base: base.yaml\narms:\n  a: {}\n  b:\n    protocol.speed: 1\n",
     ":5: arms.b.protocol.speed: run arm=b: unknown key; allowed keys here: name, lr"),
    ("bad_value", "base: base.yaml\narms:\n  a:\n    protocol.devices_per_step: 0\n",
     ":4: arms.a.protocol.devices_per_step: run arm=a: must be at least 1 device "
     "(got 0)"),
    ("bad_section_value", "base: base.yaml\narms:\n  a:\n    peft: {method: lorra}\n",
     ":4: arms.a.peft: run arm=a: peft.method: Input should be 'lora', 'bitfit', 'adapter', "
     "'head_only' or 'full' (got 'lorra')"),
    ("cross_key", "base: base.yaml\narms:\n  a:\n    fleet.size: 2\n",
     ":4: arms.a.fleet.size: run arm=a: protocol.devices_per_step: must be at most "
     "fleet.size, 2 devices (got 4)"),
    ("bad_name", "base: base.yaml\narms:\n  a/b: {}\n",
     ":3: arms.a/b: an arm name is letters, digits and _ . + - (starting with a letter or "
     "digit), e.g. fwdllm or adapter_bp"),
    ("swept_key", "base: base.yaml\ngrid:\n  protocol.lr: [1]\narms:\n  a:\n    protocol.lr: 2\n",
     ":6: arms.a.protocol.lr: key is also swept by grid; an arm cannot set it"),
    ("seed_key", "base: base.yaml\nseeds: [0]\narms:\n  a:\n    run.seed: 2\n",
     ":5: arms.a.run.seed: run.seed is set by seeds; remove one of them"),
    ("bad_key_path", "base: base.yaml\narms:\n  a:\n    'protocol..lr': 2\n",
     ":4: arms.a.protocol..lr: expected a dotted scenario key such as protocol.lr"),
    ("not_mapping", "base: base.yaml\narms: [a, b]\n",
     ":2: arms: Input should be a valid dictionary"),
    ("arm_not_mapping", "base: base.yaml\narms:\n  a: 3\n",
     ":3: arms.a: Input should be a valid dictionary"),
]


@pytest.mark.parametrize("case", BAD_ARMS, ids=[c[0] for c in BAD_ARMS])
def test_bad_arm_is_located_at_its_line(case, tmp_path, base_scenario, sweep_main, capsys):
    _, text, expected = case
    path = tmp_path / "sweep.yaml"
    path.write_text(text)
    out = tmp_path / "out"
    code = sweep_main(["sweep", str(path), "--backend", "sequential", "--out", str(out)])
    err = capsys.readouterr().err
    assert code == 2, err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err
    assert err.startswith(f"fleetsim: error: {path}{expected}"), err
    assert not out.exists()


def test_command_line_set_cannot_change_an_arm_key(tmp_path, base_scenario):
    path = _write(tmp_path, "base: base.yaml\narms:\n  a:\n    protocol.lr: 2\n  b: {}\n")
    with pytest.raises(FleetsimInputError, match=r"^--set protocol.lr=3: protocol.lr is set "
                       r"by arm a in .*sweep.yaml \(.*sweep.yaml:4\); change it there$"):
        plan_sweep(load_sweep(path), ("protocol.lr=3",))
    # Other keys apply to every arm.
    runs = plan_sweep(load_sweep(path), ("protocol.rounds=7",))
    assert [yaml.safe_load(r.resolved_yaml)["protocol"]["rounds"] for r in runs] == [7, 7]
