"""FedOpt's two learning rates on the host: FedAdam's first server step, by hand.

Reddi et al. (2021), Algorithm 2: the server treats the average client delta
Δ̄ = θ − mean_i θ_i as a pseudo-gradient; Adam's first step from zero moments has
bias-corrected moments m̂ = Δ̄ and v̂ = Δ̄², so θ₁ = θ₀ − η · Δ̄ / (|Δ̄| + ε)."""

from __future__ import annotations

import torch

from fleetsim.numerics.base import GradientWork
from fleetsim.numerics.config import ServerOptimizerConfig


def test_fedadam_first_step_is_adam_on_the_averaged_delta(make_engine):
    client_lr, server_lr, eps = 0.3, 0.05, 1e-8
    engine = make_engine(estimator="backprop", server_optimizer=ServerOptimizerConfig(
        name="adam", eps=eps))
    theta0 = [p.detach().clone().float() for p in engine.params]
    # one local SGD step on each device's batch 0 gives Δ_d = η_l · g_d exactly
    grads = [engine.gradient_of(engine.backprop_gradient(0, [GradientWork(d, d, 0, ())]))
             for d in (0, 1)]
    deltas = [engine.local_train(0, d, d, [0], client_lr) for d in (0, 1)]
    for d, delta in enumerate(deltas):
        for got, g in zip(engine.gradient_of(delta), grads[d]):
            torch.testing.assert_close(got, client_lr * g, rtol=1e-5, atol=1e-7)
    engine.apply(engine.average(deltas), server_lr)
    for p, t0, g0, g1 in zip(engine.params, theta0, grads[0], grads[1]):
        pseudo = client_lr * (g0 + g1) / 2  # Δ̄, the pseudo-gradient
        expected = t0 - server_lr * pseudo / (pseudo.abs() + eps)
        torch.testing.assert_close(p.detach().float(), expected, rtol=0, atol=1e-6)
    # the step is Adam's sign-like first step: every coordinate with a clear
    # pseudo-gradient moved by almost exactly η, whatever η_l was
    moved = torch.cat([(p.detach().float() - t0).abs().flatten()
                       for p, t0 in zip(engine.params, theta0)])
    clear = torch.cat([((g0 + g1) / 2).abs().flatten() * client_lr > 1e-4
                       for g0, g1 in zip(grads[0], grads[1])])
    assert clear.any()
    torch.testing.assert_close(moved[clear], torch.full_like(moved[clear], server_lr),
                               rtol=1e-3, atol=0)
