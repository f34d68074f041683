"""Real pretrained models end to end (slow: run with ``pytest -m slow``)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from fleetsim.numerics.base import GradientWork
from fleetsim.numerics.config import ModelConfig, NumericsConfig, PeftConfig
from fleetsim.numerics.data import DataConfig
from fleetsim.numerics.engine import build_engine
from fleetsim.numerics.estimators import directional_derivatives, exact_gradient
from fleetsim.numerics.perturbation import stack_perturbations

pytestmark = pytest.mark.slow


def test_smollm2_estimators_agree():
    engine = build_engine(
        ModelConfig(name_or_path="smollm2-135m", max_seq_len=32, pooling="last"),
        PeftConfig(method="lora", rank=4, alpha=8, top_layers=2),
        DataConfig(name="bbc_news", batch_size=2, max_examples=20, max_eval_examples=4),
        NumericsConfig(threads=1), n_clients=2, seed=0, base_dir=Path("."),
    )
    assert engine.start_layer == 28
    inputs, mask, labels = engine.batch_inputs(engine.plan.batches[0][0])
    loss = engine.loss_fn(inputs, mask, labels)
    params = {n: p + 0.01 for n, p in engine.current_params().items()}
    tangents = dict(zip(engine.names, stack_perturbations(0, 0, 0, range(3), engine.shapes)))
    grad, _ = exact_gradient(loss, params)
    truth = sum(torch.einsum("k...,...->k", tangents[n], grad[n]) for n in params)
    d, _ = directional_derivatives(loss, params, tangents, "jvp", 0.01, 3)
    assert float((d - truth).abs().max()) < 1e-3 * float(truth.abs().max())
    assert 0.0 <= engine.evaluate().accuracy <= 1.0


def test_quickstart_settings_learn():
    engine = build_engine(
        ModelConfig(name_or_path="all-minilm-l6-v2", max_seq_len=64, pooling="mean"),
        PeftConfig(method="lora", rank=4, alpha=8, top_layers=1),
        DataConfig(name="bbc_news", batch_size=8, max_eval_examples=200),
        NumericsConfig(threads=1, estimator="backprop", server_optimizer={"name": "adam"}),
        n_clients=50, seed=0, base_dir=Path("."),
    )
    first = engine.evaluate().accuracy
    for step in range(20):
        work = [GradientWork(d, d, step, tuple(range(8))) for d in range(10 * (step % 5),
                                                                          10 * (step % 5) + 10)]
        engine.apply(engine.forward_gradient(step, work), 0.01)
    assert engine.evaluate().accuracy > first + 0.3
