"""Stale work is evaluated where the phone computed it: at θ_s along step s's perturbations."""

from __future__ import annotations

import pytest
import torch

from fleetsim.numerics.base import GradientWork


def _grad(engine, estimate):
    return torch.cat([g.flatten() for g in engine.gradient_of(estimate)])


def test_carried_work_is_evaluated_at_its_own_step(make_engine):
    live = make_engine(estimator="central")
    live.retain_steps(3)
    ks = (0, 1, 2, 3)
    # Step 0: device 1 is computing for step 0 when step 0 commits with device 0's work.
    live.apply(live.forward_gradient(0, [GradientWork(0, 0, 0, ks)]), 0.05)
    live.apply(live.forward_gradient(1, [GradientWork(0, 0, 1, ks)]), 0.05)
    # Step 2: device 1's work for step 0 arrives (staleness 2).
    stale = live.forward_gradient(2, [GradientWork(1, 1, 0, ks, step=0)])

    # Independent slow path: a fresh engine at θ_0 computes the same work as step-0 work.
    reference = make_engine(estimator="central")
    at_theta0 = reference.forward_gradient(0, [GradientWork(1, 1, 0, ks)])
    torch.testing.assert_close(_grad(live, stale), _grad(reference, at_theta0), rtol=1e-5,
                               atol=1e-7)
    assert stale.loss == pytest.approx(at_theta0.loss, rel=1e-6)

    # ... and differs from treating it as fresh work at θ_2 with step-2 perturbations.
    fresh = live.forward_gradient(2, [GradientWork(1, 1, 0, ks)])
    assert not torch.allclose(_grad(live, stale), _grad(live, fresh), rtol=1e-3, atol=1e-6)


def test_staleness_weight_scales_the_pooled_mean(make_engine):
    engine = make_engine(estimator="central")
    engine.retain_steps(2)
    engine.apply(engine.forward_gradient(0, [GradientWork(0, 0, 0, (0, 1))]), 0.05)
    fresh_item = GradientWork(0, 0, 1, (0, 1))
    stale_item = GradientWork(1, 1, 0, (0, 1), step=0, weight=0.5)
    both = engine.forward_gradient(1, [fresh_item, stale_item])
    only_fresh = engine.forward_gradient(1, [fresh_item])
    only_stale = engine.forward_gradient(1, [GradientWork(1, 1, 0, (0, 1), step=0)])
    # weighted mean: (Σ fresh d v + 0.5 Σ stale d v) / (2 + 0.5 × 2)
    expected = (_grad(engine, only_fresh) * 2 + 0.5 * _grad(engine, only_stale) * 2) / 3
    torch.testing.assert_close(_grad(engine, both), expected, rtol=1e-5, atol=1e-7)
    assert both.n_perturbations == 4


def test_work_older_than_the_history_is_refused(make_engine):
    engine = make_engine()
    engine.retain_steps(1)
    for step in range(3):
        engine.apply(engine.forward_gradient(step, [GradientWork(0, 0, 0, (0,))]), 0.01)
    with pytest.raises(ValueError, match="not retained"):
        engine.forward_gradient(3, [GradientWork(1, 1, 0, (0,), step=0)])


def test_history_survives_a_checkpoint(make_engine):
    engine = make_engine()
    engine.retain_steps(2)
    engine.apply(engine.forward_gradient(0, [GradientWork(0, 0, 0, (0, 1))]), 0.05)
    engine.forward_gradient(1, [GradientWork(0, 0, 0, (0, 1))])
    restored = make_engine()
    restored.retain_steps(2)
    restored.load_state_dict(engine.state_dict())
    item = [GradientWork(1, 1, 0, (0, 1), step=0)]
    torch.testing.assert_close(_grad(engine, engine.forward_gradient(1, item)),
                               _grad(restored, restored.forward_gradient(1, item)))
