"""FwdLLM's variance statistic (``calculate_var``: first half / second half of the step's
forward gradients, torch.var of the two means averaged over elements) against hand
computations."""

from __future__ import annotations

import math

import pytest
import torch

from fleetsim.numerics.base import GradientWork
from fleetsim.numerics.estimators import exact_gradient
from fleetsim.numerics.perturbation import make_perturbation
from fleetsim.numerics.pool import SplitHalves


def test_split_halves_follow_calculate_var_by_hand():
    halves = SplitHalves()
    assert halves.half_means() is None  # empty: undefined
    halves.append([torch.tensor([1.0, 2.0])], 1.0)
    assert halves.half_means() is None  # one forward gradient: a half is empty
    halves.append([torch.tensor([3.0, 6.0])], 1.0)
    first, second = halves.half_means()
    assert first[0].tolist() == [1.0, 2.0] and second[0].tolist() == [3.0, 6.0]
    # list[:1] = [a], list[1:] = [b, c]: means (1, 2) and ((3+5)/2, (6+0)/2) = (4, 3)
    halves.append([torch.tensor([5.0, 0.0])], 1.0)
    assert halves.sizes() == [1, 2]
    first, second = halves.half_means()
    assert first[0].tolist() == [1.0, 2.0] and second[0].tolist() == [4.0, 3.0]
    # four entries: equal halves [a, b] and [c, d], whatever the order they were added in
    halves.append([torch.tensor([7.0, 2.0])], 1.0)
    first, second = halves.half_means()
    assert first[0].tolist() == [2.0, 4.0] and second[0].tolist() == [6.0, 1.0]
    # torch.var of two samples (unbiased) averaged over elements, as calculate_var does
    reference = torch.var(torch.stack([first[0], second[0]]), dim=0).mean()
    by_hand = ((2 - 6) ** 2 / 2 + (4 - 1) ** 2 / 2) / 2  # = 6.25
    assert float(reference) == pytest.approx(by_hand)
    # a copy shares nothing that a later append could change
    snapshot = halves.copy()
    halves.append([torch.tensor([100.0, 100.0])], 1.0)
    assert snapshot.n == 4 and halves.n == 5


def test_split_halves_weighted_means():
    halves = SplitHalves()
    # entries hold w·g: a stale g = (4, 4) at w = 0.5 is stored as (2, 2)
    halves.append([torch.tensor([2.0, 2.0])], 0.5)
    halves.append([torch.tensor([1.0, 3.0])], 1.0)
    halves.append([torch.tensor([3.0, 1.0])], 1.0)
    halves.append([torch.tensor([0.0, 0.0])], 0.0)
    first, second = halves.half_means()
    # first half [(2,2) w .5, (1,3) w 1]: (3, 5) / 1.5; second [(3,1) w 1, 0 w 0]: (3, 1) / 1
    torch.testing.assert_close(first[0], torch.tensor([2.0, 10.0 / 3.0]))
    torch.testing.assert_close(second[0], torch.tensor([3.0, 1.0]))


def test_engine_statistic_equals_hand_computation(make_engine):
    """Two devices, three perturbations (device 0: k = 0, 1; device 1: k = 0): the list is
    [g(0,0), g(0,1), g(1,0)] (devices in order, k ascending); calculate_var's halves are
    [g(0,0)] and [g(0,1), g(1,0)].  Exact d_k (backprop host estimator) on the same batch."""
    engine = make_engine(peft={"method": "head_only"}, estimator="backprop")
    step = 2
    work = [GradientWork(1, 1, 0, (0,)), GradientWork(0, 0, 0, (0, 1))]
    work_sorted = sorted(work, key=lambda w: w.device_id)  # the server hands it over sorted
    estimate = engine.forward_gradient(step, work_sorted)
    params = engine.current_params()
    entries = []
    for item in work_sorted:
        inputs, mask, labels = engine.batch_inputs(engine.plan.batches[item.client_id][0])
        grad, _ = exact_gradient(engine.loss_fn(inputs, mask, labels), params)
        for k in item.perturbations:
            v = make_perturbation(engine.seed, step, item.device_id, k, engine.shapes)
            d = sum(float((grad[n] * v[i]).sum()) for i, n in enumerate(engine.names))
            entries.append(torch.cat([(d * v[i]).reshape(-1) for i in engine.check_indices]))
    first = entries[0]
    second = (entries[1] + entries[2]) / 2
    by_hand = float(((first - second) ** 2 / 2).mean())
    assert estimate.extra["halves"] == [1, 2]
    assert estimate.n_perturbations == 3
    assert estimate.variance == pytest.approx(by_hand, rel=1e-4)
    # pooling a repeat appends to the same list: four entries, halves [e0, e1] | [e2, e3]
    repeat = [GradientWork(0, 0, 0, (2,))]
    pooled = engine.forward_gradient(step, repeat, previous=estimate)
    inputs, mask, labels = engine.batch_inputs(engine.plan.batches[0][0])
    grad, _ = exact_gradient(engine.loss_fn(inputs, mask, labels), params)
    v = make_perturbation(engine.seed, step, 0, 2, engine.shapes)
    d = sum(float((grad[n] * v[i]).sum()) for i, n in enumerate(engine.names))
    entries.append(torch.cat([(d * v[i]).reshape(-1) for i in engine.check_indices]))
    by_hand = float((((entries[0] + entries[1]) / 2 - (entries[2] + entries[3]) / 2) ** 2 / 2)
                    .mean())
    assert pooled.extra["halves"] == [2, 2]
    assert pooled.variance == pytest.approx(by_hand, rel=1e-4)


def test_engine_statistic_undefined_below_two(make_engine):
    engine = make_engine(peft={"method": "head_only"}, estimator="backprop")
    estimate = engine.forward_gradient(0, [GradientWork(0, 0, 0, (0,))])
    assert estimate.n_perturbations == 1 and math.isnan(estimate.variance)
