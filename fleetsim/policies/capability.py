"""``capability``: quotas proportional to each device's predicted throughput, so that
devices finish together.  The step total is ``policy.total_perturbations`` or
devices_per_step × perturbations_per_device (the uniform total, re-spread)."""

from __future__ import annotations

from fleetsim.policies.base import (
    Allocation,
    AllocationPolicy,
    FleetView,
    StepContext,
    spread_by_capability,
)


class CapabilityPolicy(AllocationPolicy):
    name = "capability"

    def step_total(self, view: FleetView, ctx: StepContext) -> int:
        if self.config.total_perturbations is not None:
            return self.config.total_perturbations
        return len(view) * ctx.perturbations_per_device

    def allocate(self, view: FleetView, ctx: StepContext) -> Allocation:
        total = self.step_total(view, ctx)
        return Allocation(view.device_ids, spread_by_capability(view, total, self.config.max_quota))
