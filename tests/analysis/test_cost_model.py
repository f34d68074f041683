"""fleet.cost_model: the phones are charged for one model, another supplies the learning
signal.  Facts checked against parameter counts by hand; latency, memory and payload
follow the charged model; outputs name both."""

import json
from pathlib import Path

import numpy as np
import pytest

from fleetsim.cost_model import charged_facts, model_label
from fleetsim.scenario.loader import load_scenario
from fleetsim.traces.latency import REFERENCE_FLOPS, job_forward_flops, unit_seconds

REPO = Path(__file__).resolve().parents[2]
SCENARIO = REPO / "scenarios" / "paper_closed_form.yaml"
SMALL = ["fleet.size=4", "protocol.devices_per_step=4", "protocol.rounds=1",
         "protocol.batches_per_round=1"]
TINYLLAMA = ["fleet.cost_model.name_or_path=models/tinyllama-1.1b",
             "fleet.cost_model.dtype=int4"]


def _tinyllama_backbone_params() -> int:
    """TinyLlama-1.1B by hand: embeddings, 22 × (attention with 4 KV heads of 64 dims,
    SwiGLU FFN, two RMSNorms), final RMSNorm."""
    hidden, ffn, layers, vocab, kv = 2048, 5632, 22, 32000, 4 * 64
    attention = 2 * hidden * hidden + 2 * hidden * kv
    per_layer = attention + 3 * hidden * ffn + 2 * hidden
    return vocab * hidden + layers * per_layer + hidden


def test_charged_facts_count_the_charged_model_by_hand() -> None:
    loaded = load_scenario(SCENARIO, SMALL + TINYLLAMA)
    facts = charged_facts(loaded.scenario, loaded.base_dir)
    assert facts.name == "tinyllama-1.1b"
    assert facts.dtype_bytes == 0.5 and facts.seq_len == loaded.scenario.model.max_seq_len
    head = 2048 * 4 + 4  # the AG News head (4 classes) the scenario's peft trains
    adapters = facts.trainable_params - head
    assert adapters > 0  # the scenario's peft (bottleneck adapters) on the charged model
    assert facts.n_params - facts.trainable_params == _tinyllama_backbone_params()


def test_latency_memory_and_payload_follow_the_charged_model() -> None:
    from fleetsim.runner import validate_loaded
    from fleetsim.workload import TaskKind

    plain = validate_loaded(load_scenario(SCENARIO, SMALL))
    charged = validate_loaded(load_scenario(SCENARIO, SMALL + TINYLLAMA))
    assert plain.facts.name == "distilbert-base-uncased"
    assert charged.facts.name == "tinyllama-1.1b"
    kind = TaskKind.FORWARD_GRADIENT
    assert charged.memory[kind] > plain.memory[kind]
    # payload: dense upload of the charged model's trainable parameters, fp32
    assert charged.protocol.upload_fn()(1) == 4 * charged.facts.trainable_params
    # latency: the catalogue's reference forward time scaled by the charged model's FLOPs
    table = charged.table
    ids = np.arange(2)
    backends = np.array(["cpu", "cpu"], dtype=object)
    seconds = unit_seconds(table, ids, backends, charged.facts, "inference", 1.0)
    by_hand = table.ref_forward_s["cpu"][ids] * job_forward_flops(charged.facts) / REFERENCE_FLOPS
    np.testing.assert_allclose(seconds, by_hand)
    assert job_forward_flops(charged.facts) > 10 * job_forward_flops(plain.facts)


def test_summary_and_report_name_both_models(tmp_path: Path) -> None:
    from fleetsim.analysis.report import write_report
    from fleetsim.runner import run_scenario

    run_dir = run_scenario(SCENARIO, SMALL + TINYLLAMA + ["run.progress=false"],
                           run_dir=tmp_path / "run")
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["charged_model"] == "tinyllama-1.1b"
    assert summary["learning_model"] == "distilbert-base-uncased"
    # systems-only (the paper profile computes no gradients): no model supplies a learning
    # signal, so the label names the charged model alone (found by a new-user trial)
    label = "tinyllama-1.1b"
    assert summary["model_label"] == label
    assert summary["mode"].startswith("systems-only")
    # each model with its own trainable count, labelled (issue 24.1): the charged count is
    # the charged model's facts, the learned one the learning engine's
    loaded = load_scenario(SCENARIO, SMALL + TINYLLAMA)
    assert summary["charged_trainable_params"] == charged_facts(
        loaded.scenario, loaded.base_dir).trainable_params
    from fleetsim.runner import validate_loaded

    learning = validate_loaded(load_scenario(SCENARIO, SMALL)).facts  # no cost model
    assert learning.name == "distilbert-base-uncased"
    assert summary["learned_trainable_params"] == learning.trainable_params
    assert summary["charged_trainable_params"] > summary["learned_trainable_params"]
    assert "model" not in summary and "trainable_params" not in summary
    assert label in write_report(run_dir).read_text()


def test_label_is_one_name_when_the_models_agree() -> None:
    assert model_label("a", "a") == "a"
    with pytest.raises(Exception, match="cost_model"):
        load_scenario(SCENARIO, ["fleet.cost_model.dtype=int3"])


def test_validate_names_the_charged_model(capsys) -> None:
    from fleetsim.cli import main

    sets = [arg for o in SMALL + TINYLLAMA for arg in ("--set", o)]
    assert main(["validate", str(SCENARIO), *sets]) == 0
    out = capsys.readouterr().out
    assert "(phones charged for tinyllama-1.1b, int4)" in out


# fleet.cost_model.peft: the phones are charged for the paper's PEFT (adapters, width 48, on
# every layer of DistilBERT) while the host learns with a top-layer LoRA (issue 23 (b))
CHEAP_LEARNING = ["peft.method=lora", "peft.rank=4", "peft.alpha=8", "peft.top_layers=1"]
PAPER_CHARGE = ["fleet.cost_model.name_or_path=models/distilbert-base-uncased",
                "fleet.cost_model.dtype=float32", "fleet.cost_model.peft.method=adapter",
                "fleet.cost_model.peft.rank=48"]


def test_charged_peft_prices_the_phones_and_leaves_the_learning_peft() -> None:
    from fleetsim.numerics.facts import model_facts
    from fleetsim.runner import validate_loaded

    paper = validate_loaded(load_scenario(SCENARIO, SMALL))  # adapters learn and are charged
    split = load_scenario(SCENARIO, SMALL + CHEAP_LEARNING + PAPER_CHARGE)
    charged = charged_facts(split.scenario, split.base_dir)
    # the phones pay for exactly what the paper profile's own PEFT costs ...
    assert charged.trainable_params == paper.facts.trainable_params
    assert charged.peft.method == "adapter" and charged.peft.rank == 48
    assert charged.peft.layers == tuple(range(6))
    built = validate_loaded(split)
    assert built.facts.trainable_params == paper.facts.trainable_params
    assert built.protocol.upload_fn()(1) == paper.protocol.upload_fn()(1)
    kind = next(iter(paper.memory))
    assert built.memory[kind] == paper.memory[kind]
    # ... while the learning model keeps the cheap LoRA of the top layer
    learning = model_facts(split.scenario.model, split.scenario.peft, split.scenario.data,
                           split.scenario.numerics, split.base_dir)
    assert learning.peft.method == "lora" and learning.peft.layers == (5,)
    assert learning.trainable_params < charged.trainable_params / 10
    # without the key the charged PEFT is peft: (the learning one) on the charged model
    same = load_scenario(SCENARIO, SMALL + CHEAP_LEARNING + PAPER_CHARGE[:2])
    assert charged_facts(same.scenario, same.base_dir).trainable_params == \
        learning.trainable_params


def test_a_protocol_preset_binds_the_charged_peft_too() -> None:
    from fleetsim.errors import FleetsimInputError

    preset = ["protocol.name=bitfit_bp", "peft.method=bitfit"]
    loaded = load_scenario(SCENARIO, SMALL + preset + [
        "fleet.cost_model.name_or_path=models/distilbert-base-uncased",
        "fleet.cost_model.peft.rank=8"])
    assert loaded.scenario.fleet.cost_model.peft.method == "bitfit"  # filled in
    with pytest.raises(FleetsimInputError, match=r"fleet\.cost_model\.peft\.method"):
        load_scenario(SCENARIO, SMALL + preset + PAPER_CHARGE)


def test_outputs_name_each_peft_when_they_differ(tmp_path: Path) -> None:
    from fleetsim.cost_model import peft_words
    from fleetsim.runner import run_scenario

    run_dir = run_scenario(SCENARIO, SMALL + CHEAP_LEARNING + PAPER_CHARGE
                           + ["run.progress=false"], run_dir=tmp_path / "run")
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["charged_peft"] == "adapter, width 48, 6 of 6 layers, head"
    assert summary["learning_peft"] == "lora, rank 4, 1 of 6 layers, head"
    # systems-only: the charged model and PEFT alone; with numerics, both (model_label)
    assert summary["model_label"] == (
        "distilbert-base-uncased (adapter, width 48, 6 of 6 layers, head)")
    assert model_label("distilbert-base-uncased", "distilbert-base-uncased",
                       summary["charged_peft"], summary["learning_peft"]) == (
        "phones charged for distilbert-base-uncased (adapter, width 48, 6 of 6 layers, head); "
        "learning signal from distilbert-base-uncased (lora, rank 4, 1 of 6 layers, head)")
    loaded = load_scenario(SCENARIO, SMALL + CHEAP_LEARNING + PAPER_CHARGE)
    assert peft_words(charged_facts(loaded.scenario, loaded.base_dir)) == summary["charged_peft"]


def test_a_charged_peft_error_names_its_own_key(capsys) -> None:
    # found by a new-user trial: a layer index beyond the charged model's was blamed on
    # the learning peft: at its line
    from fleetsim.cli import main

    sets = ["fleet.cost_model.name_or_path=llama-2-7b", "fleet.cost_model.peft.method=lora",
            "fleet.cost_model.peft.layers=[40]"]
    args = [a for o in SMALL + sets for a in ("--set", o)]
    assert main(["validate", str(SCENARIO), *args]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1
    assert "--set fleet.cost_model.peft.layers: " in err[0] and "-32..31" in err[0]


def test_memory_refusal_names_the_charged_model(capsys) -> None:
    # found by a new-user trial: the refusal named the learning model for the charged
    # model's memory (7 GiB "of all-minilm-l6-v2")
    from fleetsim.cli import main

    sets = ["fleet.cost_model.name_or_path=llama-2-7b", "fleet.cost_model.dtype=float32"]
    args = [a for o in SMALL + sets for a in ("--set", o)]
    assert main(["validate", str(SCENARIO), *args]) == 2
    err = capsys.readouterr().err.strip()
    assert "no device can hold the job" in err
    assert "of llama-2-7b (float32; fleet.cost_model) needs" in err


def test_an_unknown_lora_target_is_refused(capsys) -> None:
    # found by a new-user trial: peft trains the targets that match and ignores the rest,
    # so a typo silently trained (and charged) fewer modules than the scenario named
    from fleetsim.cli import main

    for sets in (["peft.method=lora", "peft.target_modules=[query, foo]"],
                 ["fleet.cost_model.name_or_path=llama-2-7b", "fleet.cost_model.peft.method=lora",
                  "fleet.cost_model.peft.target_modules=[q_proj, foo]"]):
        args = [a for o in SMALL + sets for a in ("--set", o)]
        assert main(["validate", str(SCENARIO), *args]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and "'foo' names no linear module" in err[0], err
        assert "target_modules" in err[0] and "allowed:" in err[0]
    ok = ["peft.method=lora", "peft.target_modules=[query, attention.self.value]"]
    assert main(["validate", str(SCENARIO), *[a for o in SMALL + ok for a in ("--set", o)]]) == 0
