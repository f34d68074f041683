"""Cohort selection rules (one small class each)."""

from __future__ import annotations

import numpy as np

from fleetsim.policies.base import CohortSelector, FleetView


class RandomCohort(CohortSelector):
    """Uniformly random among candidates (FedAvg / FwdLLM)."""

    name = "random"

    def select(self, view: FleetView, k: int, expected_round_s: float) -> np.ndarray:
        if len(view) <= k:
            return np.sort(view.device_ids)
        return np.sort(view.rng.choice(view.device_ids, size=k, replace=False))


class AvailabilityAwareCohort(CohortSelector):
    """Prefer devices whose availability window covers the expected round time;
    random among those, topped up by the longest remaining windows."""

    name = "availability_aware"

    def select(self, view: FleetView, k: int, expected_round_s: float) -> np.ndarray:
        if len(view) <= k:
            return np.sort(view.device_ids)
        remaining = view.window_end - view.now
        covers = remaining >= expected_round_s
        chosen = view.device_ids[covers]
        if len(chosen) >= k:
            return np.sort(view.rng.choice(chosen, size=k, replace=False))
        rest = ~covers
        order = np.lexsort((view.device_ids[rest], -remaining[rest]))
        top_up = view.device_ids[rest][order[: k - len(chosen)]]
        return np.sort(np.concatenate([chosen, top_up]))


class FastestFirstCohort(CohortSelector):
    """Highest predicted throughput first (ties by device id)."""

    name = "fastest_first"

    def select(self, view: FleetView, k: int, expected_round_s: float) -> np.ndarray:
        per_unit = view.unit_seconds + view.transfer_seconds + view.setup_seconds
        order = np.lexsort((view.device_ids, per_unit))
        return np.sort(view.device_ids[order[:k]])


COHORT_SELECTORS: dict[str, type[CohortSelector]] = {
    cls.name: cls for cls in (RandomCohort, AvailabilityAwareCohort, FastestFirstCohort)
}
