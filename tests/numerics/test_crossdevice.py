"""Cross-device batching gives the per-device results; ``auto`` picks an exact method.

Rotten-tomatoes snippets are short and of varied length, and batch 6 over 20
examples per client leaves a 2-row last batch, so the padding of both columns and
rows is exercised."""

from __future__ import annotations

import pytest
import torch

from fleetsim.numerics.base import GradientWork
from fleetsim.numerics.config import NumericsConfig
from fleetsim.numerics.crossdevice import EXACT_COST, choose_exact

TOL = 1e-5  # float32
MODELS = {
    "tiny-bert": ("mean", {"method": "lora", "rank": 4, "alpha": 8}),
    "tiny-llama": ("last", {"method": "lora", "rank": 4, "alpha": 8, "top_layers": 1}),
}


@pytest.fixture(scope="module")
def engine_for(ragged_engine):
    def build(model: str, **numerics):
        pooling, peft = MODELS[model]
        return ragged_engine(model, pooling, peft, **numerics)

    return build


def _work(step=None, weight=1.0, offset=0):
    shape = [(0, 3, 3), (1, 1, 1), (2, 3, 5), (3, 0, 2), (4, 2, 4)]  # (client, batch, v)
    return [GradientWork(device_id=c + offset, client_id=c, batch_index=b,
                         perturbations=tuple(range(v)), step=step, weight=weight)
            for c, b, v in shape]


def _run(engine, work_by_step):
    """Steps in order: each estimates its work, then applies it (θ moves)."""
    estimates = []
    for step, work in work_by_step:
        estimate = engine.forward_gradient(step, work)
        estimates.append(estimate)
        engine.apply(estimate, lr=0.5)
    return estimates


def _assert_same(a, b, engine_a, engine_b):
    assert a.n_perturbations == b.n_perturbations and a.n_devices == b.n_devices
    assert a.loss == pytest.approx(b.loss, abs=TOL)
    assert a.variance == pytest.approx(b.variance, rel=TOL, abs=TOL)
    for x, y in zip(engine_a.gradient_of(a), engine_b.gradient_of(b)):
        torch.testing.assert_close(x, y, rtol=TOL, atol=TOL)


@pytest.mark.parametrize("model", list(MODELS))
@pytest.mark.parametrize("estimator", ["backprop", "jvp", "onesided", "central"])
def test_cross_device_equals_per_device(engine_for, model, estimator):
    # h = 0.1: float32 rounding of a loss difference is amplified by 1/h; the comparison
    # is about batching, not about the finite-difference error
    results = {}
    for cross in (False, True):
        engine = engine_for(model, estimator=estimator, h=0.1, cross_device_batching=cross,
                            host_batch_perturbations=3)
        assert engine.host_batching == "stacked"
        engine.retain_steps(2)
        # step 1 mixes fresh work and work computed for step 0 (stale, at θ_0)
        steps = [(0, _work()), (1, _work() + _work(step=0, weight=0.5, offset=10))]
        results[cross] = (engine, _run(engine, steps))
        assert engine.describe()["cross_device_batching"] is cross
    (per, per_est), (cross, cross_est) = results[False], results[True]
    for a, b in zip(per_est, cross_est):
        _assert_same(a, b, per, cross)


@pytest.mark.parametrize("chunk", [1, 2, 64])
def test_call_size_changes_nothing(engine_for, chunk):
    reference = engine_for("tiny-bert", estimator="backprop", host_batch_perturbations=64,
                           cross_device_batching=False)
    engine = engine_for("tiny-bert", estimator="jvp", host_batch_perturbations=chunk)
    _assert_same(reference.forward_gradient(0, _work()), engine.forward_gradient(0, _work()),
                 reference, engine)


def test_auto_is_the_default_exact_and_recorded(engine_for):
    assert NumericsConfig().estimator == "auto"
    auto = engine_for("tiny-bert")
    exact = engine_for("tiny-bert", estimator="backprop", cross_device_batching=False)
    estimate = auto.forward_gradient(0, _work())
    assert auto.forward_mode  # tiny-bert with LoRA: the hand-written forward-mode pass
    picked = choose_exact([3, 1, 5, 2, 4], "cpu", forward_mode=True)
    assert estimate.extra["estimator"] == {picked: 1}
    _assert_same(exact.forward_gradient(0, _work()), estimate, exact, auto)
    described = auto.describe()
    assert described["estimator"] == "auto" and described["estimator_used"] == {picked: 1}
    assert described["jvp_implementation"] == (
        "forward_mode" if picked == "jvp" else None)  # null when no step took jvp


def test_auto_picks_forward_mode_at_one_perturbation(engine_for):
    """v = 1 everywhere: forward mode (one primal + one tangent) is cheaper than backprop,
    and gives the per-device backprop values."""
    work = [GradientWork(device_id=c, client_id=c, batch_index=0, perturbations=(0,))
            for c in range(6)]
    auto = engine_for("tiny-bert")
    exact = engine_for("tiny-bert", estimator="backprop", cross_device_batching=False)
    estimate = auto.forward_gradient(0, work)
    assert estimate.extra["estimator"] == {"jvp": 1}
    _assert_same(exact.forward_gradient(0, work), estimate, exact, auto)
    assert auto.describe()["jvp_implementation"] == "forward_mode"
    # the per-device path keeps torch.func.jvp (the independent slow path), as do models
    # the hand-written pass does not cover
    for engine in (engine_for("tiny-bert", estimator="jvp", cross_device_batching=False),
                   engine_for("tiny-llama", estimator="jvp")):
        assert engine.describe()["jvp_implementation"] is None  # nothing ran yet
        engine.forward_gradient(0, work)
        assert engine.describe()["jvp_implementation"] == "torch.func.jvp"
    # auto on a model without the pass takes backprop: no jvp step, nothing recorded
    llama = engine_for("tiny-llama")
    assert llama.forward_gradient(0, work).extra["estimator"] == {"backprop": 1}
    assert llama.describe()["jvp_implementation"] is None


def test_choose_exact_follows_the_cost_rule():
    cost = EXACT_COST["cpu"]
    for counts in ([1] * 10, [8] * 10, [1, 0, 2], [0]):
        devices = sum(1 for v in counts if v)
        expect = "jvp" if cost["jvp"] * sum(counts) < cost["backprop"] * devices else "backprop"
        assert choose_exact(counts, "cpu") == expect
    assert choose_exact([8] * 10, "cpu") == "backprop"  # many perturbations: one backprop
