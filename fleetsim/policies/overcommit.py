"""``overcommit``: ask more devices than needed and commit when enough work arrived.

The needed work is the uniform total (devices_per_step × v, or
``total_perturbations``); the view handed in already holds
``overcommit_factor`` × the cohort, every one asked for v units; the commit
fires once the needed units arrived.  Late work is dropped or carried per
``protocol.commit.late_work``."""

from __future__ import annotations

import numpy as np

from fleetsim.policies.base import Allocation, AllocationPolicy, FleetView, StepContext


class OvercommitPolicy(AllocationPolicy):
    name = "overcommit"

    def allocate(self, view: FleetView, ctx: StepContext) -> Allocation:
        quota = min(ctx.perturbations_per_device, self.config.max_quota)
        needed = self.config.total_perturbations or ctx.devices_per_step * quota
        quotas = np.full(len(view), quota, dtype=np.int64)
        return Allocation(view.device_ids, quotas, commit_units=min(needed, int(quotas.sum())))

    def cohort_size(self, devices_per_step: int) -> int:
        return int(np.ceil(devices_per_step * self.config.overcommit_factor))
