"""``deadline``: each device gets what it can finish before the step deadline, given
its predicted compute and network time and its remaining availability window:

    quota_i = floor((min(deadline, window_end_i - now) - transfer_i) / unit_i)

capped at ``max_quota``.  Devices that cannot finish one unit get 0.  The server
commits at the deadline with what arrived."""

from __future__ import annotations

from typing import Optional

import numpy as np

from fleetsim.errors import FleetsimInputError
from fleetsim.policies.base import Allocation, AllocationPolicy, FleetView, StepContext
from fleetsim.policies.config import PolicyConfig


class DeadlinePolicy(AllocationPolicy):
    name = "deadline"

    @classmethod
    def planning_deadline(
        cls, config: PolicyConfig, commit_deadline_s: Optional[float]
    ) -> Optional[float]:
        return config.deadline_s or commit_deadline_s

    @classmethod
    def config_problem(
        cls, config: PolicyConfig, commit_deadline_s: Optional[float]
    ) -> Optional[str]:
        if cls.planning_deadline(config, commit_deadline_s) is None:
            return ("policy.deadline_s: the deadline policy needs policy.deadline_s or "
                    "protocol.commit.deadline_s")
        return None

    def allocate(self, view: FleetView, ctx: StepContext) -> Allocation:
        deadline = self.config.deadline_s or ctx.deadline_s
        if deadline is None:
            raise FleetsimInputError(
                "policy.deadline_s: the deadline policy needs a per-step deadline "
                "(set policy.deadline_s or protocol.commit.deadline_s)"
            )
        usable = (np.minimum(deadline, view.window_end - view.now) - view.transfer_seconds
                  - view.setup_seconds)
        quotas = np.floor(np.maximum(usable, 0.0) / np.maximum(view.unit_seconds, 1e-12))
        quotas = np.minimum(quotas, self.config.max_quota).astype(np.int64)
        return Allocation(view.device_ids, quotas, deadline_s=deadline)
