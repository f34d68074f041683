"""``uniform``: every device of the cohort computes the same number of perturbations
(FwdLLM's setting: v perturbations per device per batch)."""

from __future__ import annotations

import numpy as np

from fleetsim.policies.base import Allocation, AllocationPolicy, FleetView, StepContext


class UniformPolicy(AllocationPolicy):
    name = "uniform"

    def allocate(self, view: FleetView, ctx: StepContext) -> Allocation:
        quota = min(ctx.perturbations_per_device, self.config.max_quota)
        return Allocation(view.device_ids, np.full(len(view), quota, dtype=np.int64))
