"""Directional derivatives against backprop, unbiasedness, and the engine estimators."""

from __future__ import annotations

import math

import pytest
import torch

from fleetsim.numerics.base import GradientWork
from fleetsim.numerics.estimators import directional_derivatives, exact_gradient
from fleetsim.numerics.perturbation import stack_perturbations


def _batch_problem(engine, client: int = 0, batch: int = 0, k: int = 6):
    inputs, mask, labels = engine.batch_inputs(engine.plan.batches[client][batch])
    loss = engine.loss_fn(inputs, mask, labels)
    params = engine.current_params()
    # non-zero LoRA B and head so every trainable tensor has a gradient
    params = {n: p + 0.05 * torch.randn(p.shape, generator=torch.Generator().manual_seed(i))
              for i, (n, p) in enumerate(params.items())}
    tangents = dict(zip(engine.names, stack_perturbations(7, 0, 0, range(k), engine.shapes)))
    grad, _ = exact_gradient(loss, params)
    truth = sum(torch.einsum("k...,...->k", tangents[n], grad[n]) for n in params)
    return loss, params, tangents, truth


@pytest.mark.parametrize("model,pooling", [("tiny-bert", "mean"), ("tiny-llama", "last")])
def test_estimators_agree_with_backprop_directional_derivative(make_engine, model, pooling):
    engine = make_engine(model=model, pooling=pooling)
    loss, params, tangents, truth = _batch_problem(engine)
    scale = float(truth.abs().max())
    assert scale > 1e-4
    # central: float32 rounding (eps·L/h) dominates the O(h²) error at h = 0.01
    bounds = {"jvp": 1e-4, "backprop": 1e-5, "central": 2e-2, "onesided": 0.1}
    for estimator, bound in bounds.items():
        for chunk in (1, 4):
            d, base = directional_derivatives(loss, params, tangents, estimator, 0.01, chunk)
            relative = float((d - truth).abs().max()) / scale
            assert relative < bound, (estimator, chunk, relative)
            assert math.isfinite(base)
    # central differences are O(h^2): a larger h must be measurably worse
    d_big, _ = directional_derivatives(loss, params, tangents, "central", 0.5, 4)
    d_small, _ = directional_derivatives(loss, params, tangents, "central", 0.01, 4)
    assert float((d_big - truth).abs().max()) > float((d_small - truth).abs().max())


def test_forward_gradient_cosine_grows_like_sqrt_k_over_d(make_engine):
    # head only on tiny-bert: d = 32*5 + 5 = 165 trainable parameters
    engine = make_engine(peft={"method": "head_only"}, estimator="jvp",
                         host_batch_perturbations=64)
    d = engine.trainable_params
    batch = engine.plan.batches[0][0]
    inputs, mask, labels = engine.batch_inputs(batch)
    grad, _ = exact_gradient(engine.loss_fn(inputs, mask, labels), engine.current_params())
    truth = torch.cat([grad[n].reshape(-1) for n in engine.names])

    def mean_cosine(k: int, repeats: int) -> float:
        values = []
        for r in range(repeats):
            work = [GradientWork(device_id=r, client_id=0, batch_index=0,
                                 perturbations=tuple(range(k)))]
            estimate = engine.forward_gradient(r, work)
            g = torch.cat([t.reshape(-1) for t in engine.gradient_of(estimate)])
            values.append(float(torch.nn.functional.cosine_similarity(g, truth, dim=0)))
        return sum(values) / len(values)

    for k, repeats in ((1, 40), (20, 10), (200, 4)):
        expected = math.sqrt(k / (k + d + 1))  # E cos for Gaussian v, large d
        measured = mean_cosine(k, repeats)
        assert 0.6 * expected < measured < 1.4 * expected, (k, measured, expected)


def test_pooling_previous_equals_one_call(make_engine):
    engine = make_engine()
    first = [GradientWork(0, 0, 0, (0, 1, 2))]
    second = [GradientWork(1, 1, 0, (0, 1)), GradientWork(0, 0, 0, (3, 4))]
    pooled = engine.forward_gradient(3, second, previous=engine.forward_gradient(3, first))
    together = engine.forward_gradient(3, first + second)
    assert pooled.n_perturbations == together.n_perturbations == 7
    for a, b in zip(engine.gradient_of(pooled), engine.gradient_of(together)):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-7)
    assert pooled.variance == pytest.approx(together.variance, rel=1e-5)


def test_frozen_prefix_reuse_changes_nothing_but_cost(make_engine):
    peft = {"method": "lora", "rank": 4, "alpha": 8, "top_layers": 1}
    reuse = make_engine(peft=peft, frozen_prefix_reuse=True)
    plain = make_engine(peft=peft, frozen_prefix_reuse=False)
    assert reuse.start_layer == 2 and plain.start_layer == -1
    work = [GradientWork(0, 0, 0, (0, 1, 2, 3)), GradientWork(1, 1, 1, (0, 1))]
    a = reuse.forward_gradient(0, work)
    b = plain.forward_gradient(0, work)
    assert a.loss == pytest.approx(b.loss, rel=1e-5)
    for x, y in zip(reuse.gradient_of(a), plain.gradient_of(b)):
        torch.testing.assert_close(x, y, rtol=2e-3, atol=1e-5)
    assert reuse.evaluate().loss == pytest.approx(plain.evaluate().loss, rel=1e-5)


def test_split_half_variance_falls_as_perturbations_pool(make_engine):
    engine = make_engine(peft={"method": "head_only"}, estimator="backprop")

    def stats(k: int) -> tuple[float, float]:
        estimate = engine.forward_gradient(0, [GradientWork(0, 0, 0, tuple(range(k)))])
        assert sum(estimate.extra["halves"]) == k
        return estimate.variance, estimate.extra["variance_normalised"]

    few, many = stats(8), stats(800)
    # the variance of the half-means falls like 1/K; the normalised form tends to 0 from ~1
    assert many[0] < few[0] / 20
    assert few[1] > 0.5 and many[1] < 0.5
