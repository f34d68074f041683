"""FedKSeed's seed pool in the numerics: a pool seed's perturbation is the same wherever it is
drawn, and θ rebuilt from θ_0 and the server's K accumulated scalars is the engine's θ."""

from __future__ import annotations

import torch
from fleet_harness import build

from fleetsim.numerics.base import GradientWork
from fleetsim.numerics.perturbation import make_perturbation, pool_perturbation
from fleetsim.numerics_api import POOL_SCALARS


def test_same_pool_seed_same_perturbation_whatever_step_or_device(make_engine):
    engine = make_engine(estimator="central", h=1e-3)
    a = engine._perturbations(3, 1, (0, 1), None, (7, 2))
    b = engine._perturbations(9, 4, (5, 6), None, (2, 7))
    for ta, tb in zip(a, b):
        assert torch.equal(ta[0], tb[1]) and torch.equal(ta[1], tb[0])
    v7 = pool_perturbation(engine.seed, 7, engine.shapes)
    assert all(torch.equal(t[0], x) for t, x in zip(a, v7))
    # and differs from the per-(step, device, k) perturbation it replaces
    own = make_perturbation(engine.seed, 3, 1, 0, engine.shapes)
    assert not torch.equal(own[0], v7[0])


def test_pool_scalars_are_the_directional_derivatives(make_engine):
    engine = make_engine(estimator="central", h=1e-3)
    work = [GradientWork(0, 0, 0, (0, 1, 2), pool_seeds=(4, 4, 9)),
            GradientWork(1, 1, 0, (0,), pool_seeds=(9,), weight=0.5)]
    est = engine.forward_gradient(0, work)
    scalars = est.extra[POOL_SCALARS]
    assert [s[0] for s in scalars] == [4, 4, 9, 9]
    assert [s[2] for s in scalars] == [1.0, 1.0, 1.0, 0.5]
    # the same seed on the same batch gives the same scalar
    assert abs(scalars[0][1] - scalars[1][1]) < 1e-6
    # the estimate is Σ w d v_j / Σ w over these scalars
    g = engine.gradient_of(est)
    mass = sum(s[2] for s in scalars)
    rebuilt = [torch.zeros_like(t) for t in g]
    for j, d, w in scalars:
        for r, v in zip(rebuilt, pool_perturbation(engine.seed, j, engine.shapes)):
            r += w * d * v / mass
    for r, t in zip(rebuilt, g):
        assert torch.allclose(r, t, rtol=1e-4, atol=1e-6)


def test_theta_is_theta0_minus_accumulated_scalars_times_pool_perturbations(make_engine):
    """Run kseed (K = 32, FedKSeed's plain-SGD server, linear lr decay, stragglers carried
    with staleness weights) on a real model; the server's per-seed accumulated scalars h_j
    must rebuild θ: θ_T = θ_0 − Σ_j h_j v_j."""
    engine = make_engine(estimator="central", h=1e-3)
    theta0 = [p.detach().clone() for p in engine.params]
    h = build(n=6, unit_s=[1.0, 1.0, 1.0, 1.0, 1.0, 1.7], engine=engine,
              protocol={"name": "kseed", "seed_pool": 32, "seed_sampling": "importance",
                        "devices_per_step": 6, "perturbations_per_device": 3, "rounds": 2,
                        "batches_per_round": 3, "lr": 0.05, "lr_schedule": "linear",
                        "commit": {"mode": "quorum", "quorum_fraction": 0.8,
                                   "late_work": "carry", "max_staleness": 3,
                                   "staleness_weighting": "inverse_sqrt"}}).run()
    proto = h.protocol.protocol
    steps = h.recorder.steps_frame()
    assert steps["committed"].sum() == 6
    assert (steps["stale_units"] > 0).any()  # carried work was used, with weight < 1
    assert len(set(steps["lr"])) > 1  # the schedule moved
    h_j = torch.as_tensor(proto.accumulated, dtype=torch.float64)
    assert int((h_j != 0).sum()) > 10
    rebuilt = [t.double() for t in theta0]
    for j in range(32):
        if h_j[j] == 0:
            continue
        for r, v in zip(rebuilt, pool_perturbation(engine.seed, j, engine.shapes)):
            r -= h_j[j] * v.double()
    moved = max(float((p.detach().double() - t.double()).abs().max())
                for p, t in zip(engine.params, theta0))
    assert moved > 1e-4  # θ did move
    for r, p in zip(rebuilt, engine.params):
        assert torch.allclose(r, p.detach().double(), rtol=1e-5, atol=1e-6), \
            float((r - p.detach().double()).abs().max())
