"""Engine behaviour: PEFT methods, optimiser, faults, checkpoints, systems-only facts."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

from fleetsim.errors import FleetsimInputError
from fleetsim.numerics.base import GradientWork
from fleetsim.numerics.config import (
    ModelConfig,
    NumericsConfig,
    PeftConfig,
    ServerOptimizerConfig,
)
from fleetsim.numerics.engine import build_engine
from fleetsim.numerics.errors import NumericalFault
from fleetsim.numerics.facts import model_facts
from fleetsim.numerics.optim import ServerOptimizer


@pytest.mark.parametrize(
    "model,peft,expected",
    [
        # LoRA r=4 on query+value of 3 layers (32x32): 3*2*(4*32+32*4) + head 32*5+5
        ("tiny-bert", {"method": "lora", "rank": 4, "alpha": 8}, 3 * 2 * 256 + 165),
        ("tiny-bert", {"method": "lora", "rank": 4, "top_layers": 1}, 2 * 256 + 165),
        # adapter width 4 after the FFN output (32 -> 4 -> 32, with biases)
        ("tiny-bert", {"method": "adapter", "rank": 4, "layers": [-1]}, 32 * 4 + 4 + 4 * 32 + 32
         + 165),
        ("tiny-bert", {"method": "head_only"}, 165),
        ("tiny-llama", {"method": "lora", "rank": 2, "target_modules": ["q_proj"]},
         3 * (2 * 32 + 32 * 2) + 165),
    ],
)
def test_peft_trainable_counts_match_systems_only_facts(make_engine, small_data, model, peft,
                                                         expected):
    engine = make_engine(model=model, peft=peft)
    assert engine.trainable_params == expected
    cheap = model_facts(ModelConfig(name_or_path=model, max_seq_len=32), PeftConfig(**peft),
                        small_data, NumericsConfig())
    assert cheap.trainable_params == expected
    assert cheap.n_params == engine.total_params
    assert engine.facts().trainable_params == expected


def test_bitfit_trains_biases_of_selected_layers(make_engine):
    engine = make_engine(peft={"method": "bitfit", "layers": [2]})
    backbone = [n for n in engine.names if n.startswith("backbone.")]
    assert backbone and all(n.endswith(".bias") and ".layer.2." in n for n in backbone)
    assert engine.start_layer == 2


def test_training_on_one_batch_lowers_its_loss(make_engine):
    engine = make_engine(estimator="onesided", server_optimizer=ServerOptimizerConfig(name="adam"))
    work = [GradientWork(0, 0, 0, tuple(range(16)))]
    losses = []
    for step in range(25):
        estimate = engine.forward_gradient(step, work)
        losses.append(estimate.loss)
        engine.apply(estimate, 0.01)
        assert math.isfinite(estimate.variance) and estimate.variance >= 0
    assert losses[-1] < losses[0] - 0.05


def test_backprop_and_local_train_semantics(make_engine):
    engine = make_engine(server_optimizer=ServerOptimizerConfig(name="sgd"))
    before = [p.detach().clone() for p in engine.params]
    local = engine.local_train(0, device_id=3, client_id=1, batch_indices=[0, 1], lr=0.1)
    # theta untouched by local training; applying the pseudo-gradient with lr 1 lands on theta_local
    assert all(torch.equal(a, p) for a, p in zip(before, engine.params))
    engine.apply(engine.average([local]), 1.0)
    manual = {n: b.clone() for n, b in zip(engine.names, before)}
    from fleetsim.numerics.estimators import exact_gradient

    for batch in (0, 1):
        inputs, mask, labels = engine.batch_inputs(engine.plan.batches[1][batch])
        grad, _ = exact_gradient(engine.loss_fn(inputs, mask, labels), manual)
        manual = {n: manual[n] - 0.1 * grad[n] for n in manual}
    for name, param in zip(engine.names, engine.params):
        torch.testing.assert_close(param.detach(), manual[name], rtol=1e-5, atol=1e-6)
    exact = engine.backprop_gradient(1, [GradientWork(0, 0, 0, ()), GradientWork(1, 1, 0, ())])
    assert exact.n_devices == 2 and exact.n_perturbations == 0 and math.isfinite(exact.loss)


def test_nonfinite_stop_and_skip(make_engine):
    engine = make_engine(on_nonfinite="stop")
    with torch.no_grad():
        engine.params[0].fill_(float("nan"))
    with pytest.raises(NumericalFault):
        engine.forward_gradient(0, [GradientWork(0, 0, 0, (0, 1))])
    skipper = make_engine(on_nonfinite="skip")
    with torch.no_grad():
        skipper.params[0].fill_(float("nan"))
    estimate = skipper.forward_gradient(0, [GradientWork(4, 0, 0, (0, 1))])
    assert estimate.extra["skipped"] == [{"device_id": 4, "reason": "loss"}]
    assert estimate.n_perturbations == 0


def test_state_dict_round_trip_and_determinism(make_engine):
    a = make_engine(server_optimizer=ServerOptimizerConfig(name="momentum"))
    b = make_engine(server_optimizer=ServerOptimizerConfig(name="momentum"))
    work = [GradientWork(0, 0, 0, (0, 1, 2)), GradientWork(2, 2, 1, (0, 1))]
    for step in range(2):
        a.apply(a.forward_gradient(step, work), 0.05)
    b.load_state_dict(a.state_dict())
    ea, eb = a.forward_gradient(5, work), b.forward_gradient(5, work)
    for x, y in zip(a.gradient_of(ea), b.gradient_of(eb)):
        assert torch.equal(x, y)
    a.apply(ea, 0.05)
    b.apply(eb, 0.05)
    assert all(torch.equal(x, y) for x, y in zip(a.params, b.params))


def test_discriminative_engine_uses_previous_gradient(make_engine):
    engine = make_engine(discriminative={"enabled": True, "candidates": 8, "every": 2})
    work = [GradientWork(0, 0, 0, (0, 1))]
    engine.apply(engine.forward_gradient(0, work), 0.01)
    assert engine.previous_gradient is not None
    plain = make_engine()
    plain.apply(plain.forward_gradient(0, work), 0.01)
    odd_a = engine._perturbations(1, 0, (0,), engine.previous_gradient)
    odd_b = plain._perturbations(1, 0, (0,))
    assert all(torch.equal(x, y) for x, y in zip(odd_a, odd_b))  # odd step: plain draws
    even_a = engine._perturbations(2, 0, (0,), engine.previous_gradient)
    even_b = plain._perturbations(2, 0, (0,))
    assert not all(torch.equal(x, y) for x, y in zip(even_a, even_b))


def test_server_optimizers_match_torch():
    for name, factory in (
        ("sgd", lambda p: torch.optim.SGD(p, lr=0.1)),
        ("momentum", lambda p: torch.optim.SGD(p, lr=0.1, momentum=0.9)),
        ("adam", lambda p: torch.optim.Adam(p, lr=0.1)),
    ):
        mine = [torch.ones(3)]
        theirs = [torch.ones(3, requires_grad=True)]
        optimizer = ServerOptimizer(ServerOptimizerConfig(name=name))
        reference = factory(theirs)
        for step in range(4):
            grad = torch.tensor([1.0, -2.0, 0.5]) * (step + 1)
            optimizer.step(mine, [grad], 0.1)
            theirs[0].grad = grad.clone()
            reference.step()
        torch.testing.assert_close(mine[0], theirs[0].detach())


def test_systems_only_engine(small_data):
    engine = build_engine(ModelConfig(name_or_path="all-minilm-l6-v2", max_seq_len=64),
                          PeftConfig(method="lora", rank=4, alpha=8, top_layers=1), small_data,
                          NumericsConfig(engine="none"), n_clients=7, seed=0, base_dir=Path("."))
    assert engine.systems_only
    # 120 training examples over 7 clients in batches of 4
    assert sum(engine.batches_per_client(c) for c in range(7)) == sum(
        math.ceil(n / 4) for n in (18, 17, 17, 17, 17, 17, 17))
    facts = engine.facts()
    assert facts.trainable_params == 2 * 2 * 384 * 4 + 384 * 5 + 5 == 8069
    assert facts.n_layers == 6 and facts.hidden_size == 384
    estimate = engine.forward_gradient(0, [GradientWork(0, 0, 0, (0, 1, 2))])
    assert estimate.n_perturbations == 3 and math.isnan(estimate.loss)
    assert math.isnan(engine.evaluate().accuracy)


def test_smollm2_facts_need_no_conversion(small_data):
    facts = model_facts(ModelConfig(name_or_path="smollm2-135m", max_seq_len=128),
                        PeftConfig(method="lora", rank=8, alpha=16), small_data,
                        NumericsConfig(engine="none"))
    assert facts.n_layers == 30 and facts.hidden_size == 576
    # q_proj 576->576, v_proj 576->192 (3 kv heads of 64): r*(in+out) each, 30 layers
    assert facts.trainable_params == 30 * 8 * ((576 + 576) + (576 + 192)) + 576 * 5 + 5


def test_bad_model_inputs_name_the_key(tmp_path, small_data):
    with pytest.raises(FleetsimInputError, match="model.name_or_path"):
        model_facts(ModelConfig(name_or_path=str(tmp_path / "nope")), PeftConfig(), small_data,
                    NumericsConfig())
    (tmp_path / "empty").mkdir()
    with pytest.raises(FleetsimInputError, match="config.json"):
        model_facts(ModelConfig(name_or_path=str(tmp_path / "empty")), PeftConfig(), small_data,
                    NumericsConfig())
    with pytest.raises(FleetsimInputError, match="peft.layers"):
        model_facts(ModelConfig(name_or_path="tiny-bert"), PeftConfig(layers=[7]), small_data,
                    NumericsConfig())


def test_describe_is_json_and_bfloat16_runs(make_engine):
    import json

    engine = make_engine(estimator="jvp")
    info = json.loads(json.dumps(engine.describe()))
    assert info["estimator"] == "jvp" and info["trainable_params"] == engine.trainable_params
    assert info["frozen_prefix_layer"] == -1  # LoRA on every layer: nothing frozen below
    half = make_engine(estimator="jvp", dtype="bfloat16")
    assert half.params[0].dtype == torch.bfloat16
    work = [GradientWork(0, 0, 0, tuple(range(8)))]
    a = torch.cat([t.reshape(-1) for t in engine.gradient_of(engine.forward_gradient(0, work))])
    b = torch.cat([t.reshape(-1) for t in half.gradient_of(half.forward_gradient(0, work))])
    assert float(torch.nn.functional.cosine_similarity(a, b.float(), dim=0)) > 0.9


def test_bert_attention_targets_name_the_same_projections_on_llama():
    # one peft section for a BERT learning model and a LLaMA charged model
    from fleetsim.numerics.models import targets_for

    assert targets_for("llama", ["query", "value", "gate_proj"]) == ["q_proj", "v_proj",
                                                                    "gate_proj"]
    assert targets_for("bert", ["q_proj", "key", "dense"]) == ["query", "key", "dense"]


def test_evaluation_of_an_unchanged_theta_is_reused_and_a_step_renews_it(make_engine,
                                                                          monkeypatch):
    """A simulated-time evaluation grid evaluates many times between two slow steps (Full-BP
    takes 209 simulated s a step, evaluated every 15 s): while θ is unchanged the engine
    returns the last numbers without running the model; an applied step or a loaded
    checkpoint makes it evaluate again, and the numbers equal a fresh evaluation's."""
    engine = make_engine(server_optimizer=ServerOptimizerConfig(name="sgd"))
    calls = []
    real = engine._evaluate_on
    monkeypatch.setattr(engine, "_evaluate_on", lambda idx: calls.append(1) or real(idx))
    first = engine.evaluate()
    again = engine.evaluate()
    assert len(calls) == 1 and again == first and again is not first
    again.accuracy = -1.0  # a caller's change never reaches the cache
    assert engine.evaluate() == first
    state = engine.state_dict()
    work = [GradientWork(0, 0, 0, tuple(range(8)))]
    engine.apply(engine.forward_gradient(0, work), 0.5)
    stepped = engine.evaluate()
    assert len(calls) == 2 and stepped.loss != first.loss
    assert stepped == real(engine.eval_idx)
    engine.load_state_dict(state)
    assert engine.evaluate() == first and len(calls) == 3
