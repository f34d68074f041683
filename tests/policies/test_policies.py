"""Each allocation policy and cohort rule does what its docstring says."""

from __future__ import annotations

import numpy as np
import pytest

from fleetsim.errors import FleetsimInputError
from fleetsim.policies.base import FleetView, StepContext, spread_by_capability
from fleetsim.policies.cohort import AvailabilityAwareCohort, FastestFirstCohort, RandomCohort
from fleetsim.policies.config import PolicyConfig
from fleetsim.policies.registry import make_policy
from fleetsim.rng import stream


def view(unit, transfer=None, window=None, now=0.0, seed=0) -> FleetView:
    unit = np.asarray(unit, dtype=float)
    n = len(unit)
    return FleetView(
        now=now,
        device_ids=np.arange(10, 10 + n),
        unit_seconds=unit,
        transfer_seconds=np.zeros(n) if transfer is None else np.asarray(transfer, float),
        window_end=np.full(n, np.inf) if window is None else np.asarray(window, float),
        rng=stream(seed, "test"),
    )


def ctx(v=3, devices=4, deadline=None) -> StepContext:
    return StepContext(step=0, round=0, perturbations_per_device=v, devices_per_step=devices,
                       deadline_s=deadline)


def test_uniform_gives_everyone_v():
    alloc = make_policy(PolicyConfig(name="uniform")).allocate(view([1, 2, 4]), ctx(v=5))
    assert alloc.quotas.tolist() == [5, 5, 5]
    assert alloc.device_ids.tolist() == [10, 11, 12]


def test_capability_proportional_to_speed_and_sums_exactly():
    v = view([1.0, 2.0, 4.0])  # speeds 1, 0.5, 0.25 → shares 4/7, 2/7, 1/7
    alloc = make_policy(PolicyConfig(name="capability", total_perturbations=70)).allocate(v, ctx())
    assert alloc.quotas.tolist() == [40, 20, 10]
    # finish together: quota × unit time equal
    assert len(set((alloc.quotas * v.unit_seconds).tolist())) == 1
    odd = spread_by_capability(view([1.0, 1.0, 1.0]), 10, 1000)
    assert odd.sum() == 10 and sorted(odd.tolist()) == [3, 3, 4]


def test_capability_default_total_is_uniform_total():
    alloc = make_policy(PolicyConfig(name="capability")).allocate(view([1, 3]), ctx(v=4))
    assert alloc.total == 8


def test_deadline_fits_window_and_transfer():
    v = view(unit=[1.0, 2.0, 1.0, 10.0], transfer=[2.0, 2.0, 2.0, 2.0],
             window=[np.inf, np.inf, 5.0, np.inf], now=0.0)
    alloc = make_policy(PolicyConfig(name="deadline", deadline_s=12.0)).allocate(v, ctx())
    # (12-2)/1=10, (12-2)/2=5, (min(12,5)-2)/1=3, (12-2)/10=1
    assert alloc.quotas.tolist() == [10, 5, 3, 1]
    assert alloc.deadline_s == 12.0
    with pytest.raises(FleetsimInputError, match="deadline"):
        make_policy(PolicyConfig(name="deadline")).allocate(v, ctx())


def test_variance_paced_budget_grows_on_repeats_and_is_bounded():
    cfg = PolicyConfig(name="variance_paced", budget={"initial": 4, "growth": 2.0, "maximum": 20})
    pol = make_policy(cfg)
    assert pol.allocate(view([1, 1]), ctx()).total == 4
    pol.observe(ctx(), variance=0.5, repeats=2)
    assert pol.allocate(view([1, 1]), ctx()).total == 8
    pol.observe(ctx(), variance=0.05, repeats=0)  # decay 1: keep
    assert pol.allocate(view([1, 1]), ctx()).total == 8
    for _ in range(5):
        pol.observe(ctx(), variance=0.5, repeats=1)
    assert pol.allocate(view([1, 1]), ctx()).total == 20
    state = pol.state()
    fresh = make_policy(cfg)
    fresh.load_state(state)
    assert fresh.allocate(view([1, 1]), ctx()).total == 20


def test_overcommit_commits_on_needed_units():
    pol = make_policy(PolicyConfig(name="overcommit", overcommit_factor=1.5))
    assert pol.cohort_size(10) == 15
    alloc = pol.allocate(view([1.0] * 15), ctx(v=2, devices=10))
    assert alloc.total == 30 and alloc.commit_units == 20


def test_cohort_rules():
    v = view([5.0, 1.0, 3.0, 2.0, 4.0], window=[100, 5, 100, 100, 1], now=0.0)
    fast = FastestFirstCohort().select(v, 2, 0.0)
    assert fast.tolist() == [11, 13]
    aware = AvailabilityAwareCohort().select(v, 3, expected_round_s=50.0)
    assert aware.tolist() == [10, 12, 13]  # the three whose window covers 50 s
    aware4 = AvailabilityAwareCohort().select(v, 4, expected_round_s=50.0)
    assert aware4.tolist() == [10, 11, 12, 13]  # topped up by the longest remaining window
    r1 = RandomCohort().select(view([1.0] * 50, seed=3), 5, 0.0)
    r2 = RandomCohort().select(view([1.0] * 50, seed=3), 5, 0.0)
    assert r1.tolist() == r2.tolist() and len(set(r1.tolist())) == 5


def test_variance_paced_grows_on_statistic_above_threshold_without_gate():
    cfg = PolicyConfig(name="variance_paced", budget={"initial": 10, "growth": 2.0})
    pol = make_policy(cfg)
    c = StepContext(step=0, round=0, perturbations_per_device=1, devices_per_step=2,
                    variance_threshold=0.1)
    pol.observe(c, variance=0.05, repeats=0)
    assert pol.allocate(view([1, 1]), c).total == 10
    pol.observe(c, variance=0.3, repeats=0)
    assert pol.allocate(view([1, 1]), c).total == 20
    pol.observe(c, variance=float("nan"), repeats=0)  # systems-only: no statistic, keep
    assert pol.allocate(view([1, 1]), c).total == 20
