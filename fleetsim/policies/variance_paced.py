"""``variance_paced``: the server sets each step's total perturbation budget from the
variance statistic and spreads it with ``capability``.

Rule: start at ``budget.initial``; after a step whose estimate was too noisy —
it needed variance repeats, or its split-half variance statistic exceeded
``protocol.variance.threshold`` (checked even when the gate itself is off) —
multiply the budget by ``budget.growth``; otherwise multiply by ``budget.decay``
(default 1: keep).
Bounded by [1, budget.maximum].  This reproduces the paper's observation that
the useful number of perturbations per batch grows as training proceeds, while
letting the fleet absorb the growth where capacity is."""

from __future__ import annotations

from fleetsim.policies.base import (
    Allocation,
    AllocationPolicy,
    FleetView,
    StepContext,
    spread_by_capability,
)


class VariancePacedPolicy(AllocationPolicy):
    name = "variance_paced"

    def __init__(self, config) -> None:
        super().__init__(config)
        self.budget = float(config.budget.initial)

    def allocate(self, view: FleetView, ctx: StepContext) -> Allocation:
        total = int(round(self.budget))
        return Allocation(view.device_ids, spread_by_capability(view, total, self.config.max_quota))

    def observe(self, ctx: StepContext, variance: float, repeats: int) -> None:
        b = self.config.budget
        threshold = ctx.variance_threshold
        noisy = repeats > 0 or (
            threshold is not None and variance == variance and variance > threshold
        )
        factor = b.growth if noisy else b.decay
        self.budget = min(max(self.budget * factor, 1.0), float(b.maximum))

    def state(self) -> dict:
        return {"budget": self.budget}

    def load_state(self, state: dict) -> None:
        self.budget = float(state["budget"])
