"""fleet.cost_model.name_or_path: an unknown name is reported at its own key and line (not
at the learning model's ``model.name_or_path``), its allowed list offers the charged-model
folders, and those folders are accepted by name."""

from __future__ import annotations

from pathlib import Path

from fleetsim.cli import main
from fleetsim.cost_model import CHARGED_MODELS_DIR, charged_facts, charged_model_folders
from fleetsim.scenario.loader import load_scenario

REPO = Path(__file__).resolve().parents[2]
SCENARIO = REPO / "scenarios" / "paper_closed_form.yaml"
SMALL = ["fleet.size=4", "protocol.devices_per_step=4", "protocol.rounds=1",
         "protocol.batches_per_round=1"]


def test_charged_model_folders_are_the_shipped_config_folders() -> None:
    assert CHARGED_MODELS_DIR == REPO / "scenarios" / "models"
    folders = charged_model_folders()
    assert list(folders) == ["distilbert-base-uncased", "llama-2-7b", "tinyllama-1.1b"]
    assert all((p / "config.json").is_file() for p in folders.values())


def test_a_charged_model_folder_is_accepted_by_name() -> None:
    by_name = load_scenario(SCENARIO, SMALL + ["fleet.cost_model.name_or_path=tinyllama-1.1b"])
    by_path = load_scenario(SCENARIO, SMALL + ["fleet.cost_model.name_or_path="
                                               "models/tinyllama-1.1b"])
    named = charged_facts(by_name.scenario, by_name.base_dir)
    assert named == charged_facts(by_path.scenario, by_path.base_dir)
    assert named.name == "tinyllama-1.1b"


def test_unknown_cost_model_is_reported_at_its_own_key_and_line(tmp_path, capsys) -> None:
    scenario = tmp_path / "s.yaml"
    # (relative paths resolve against the file named: the base's are given absolute here)
    base = load_scenario(SCENARIO).scenario
    learning = (SCENARIO.parent / base.model.name_or_path).resolve()
    data = (SCENARIO.parent / base.data.path).resolve()
    scenario.write_text(f"extends: {SCENARIO}\nfleet:\n  size: 4\n  cost_model:\n"
                        f"    name_or_path: llama-2-7bb\nmodel:\n  name_or_path: {learning}\n"
                        f"data:\n  path: {data}\n")
    code = main(["validate", str(scenario), "--set", "protocol.devices_per_step=4"])
    err = capsys.readouterr().err
    assert code == 2 and "Traceback" not in err and len(err.strip().splitlines()) == 1
    assert err.strip() == (
        f"fleetsim: error: {scenario}:5: fleet.cost_model.name_or_path: 'llama-2-7bb' is "
        "neither a known model, a directory with a config.json, nor a hub id already in the "
        "local Hugging Face cache (fleetsim never downloads) (did you mean 'llama-2-7b'?); "
        "allowed: all-minilm-l6-v2, smollm2-135m, tiny-bert, tiny-llama, the charged-model "
        "folders distilbert-base-uncased, llama-2-7b, tinyllama-1.1b, a local directory or a "
        "cached hub id")


def test_unknown_learning_model_keeps_its_key(tmp_path, capsys) -> None:
    code = main(["validate", str(SCENARIO), *[a for o in SMALL for a in ("--set", o)],
                 "--set", "model.name_or_path=tiny-bertt"])
    err = capsys.readouterr().err.strip()
    assert code == 2
    assert err.startswith("fleetsim: error: --set model.name_or_path: 'tiny-bertt' is neither")
    assert "(did you mean 'tiny-bert'?); allowed: all-minilm-l6-v2, smollm2-135m, tiny-bert, " \
           "tiny-llama, a local directory or a cached hub id" in err


def test_systems_only_run_names_no_learning_signal(tmp_path) -> None:
    """A systems-only run computes no gradients: its label names the charged model alone,
    not 'learning signal from' a model that supplied none."""
    import json

    from fleetsim.runner import run_scenario

    out = run_scenario(SCENARIO, SMALL + ["numerics.engine=none",
                                          "fleet.cost_model.name_or_path=tinyllama-1.1b"],
                       run_dir=tmp_path / "r")
    summary = json.loads((out / "summary.json").read_text())
    assert summary["systems_only"] is True
    assert summary["charged_model"] == "tinyllama-1.1b"
    assert summary["model_label"] == "tinyllama-1.1b"
