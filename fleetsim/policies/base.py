"""Small interfaces for load allocation and cohort selection.

Policies see a :class:`FleetView` (numpy arrays of predictions, no trace files,
no torch) and return numbers.  They never touch the clock either: the protocol
builds the view at the current simulated time.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Optional

import numpy as np

from fleetsim.policies.config import PolicyConfig


@dataclass
class FleetView:
    """What a policy may know about the candidate devices at ``now``.

    Arrays are aligned with ``device_ids``.  ``unit_seconds``, ``transfer_seconds``
    and ``setup_seconds`` (forwards a task runs once before its first unit: the base
    loss of one-sided differences; zeros otherwise) are the latency model's predictions
    (no noise); ``window_end`` is the end of each device's current availability window.
    A task of q units is predicted to take ``setup + q·unit + transfer`` seconds.
    """

    now: float
    device_ids: np.ndarray
    unit_seconds: np.ndarray
    transfer_seconds: np.ndarray
    window_end: np.ndarray
    rng: np.random.Generator
    setup_seconds: Optional[np.ndarray] = None

    def __post_init__(self) -> None:
        if self.setup_seconds is None:
            self.setup_seconds = np.zeros(len(self.device_ids))

    def __len__(self) -> int:
        return int(self.device_ids.shape[0])

    def subset(self, mask_or_index: np.ndarray) -> FleetView:
        return FleetView(
            now=self.now,
            device_ids=self.device_ids[mask_or_index],
            unit_seconds=self.unit_seconds[mask_or_index],
            transfer_seconds=self.transfer_seconds[mask_or_index],
            window_end=self.window_end[mask_or_index],
            rng=self.rng,
            setup_seconds=self.setup_seconds[mask_or_index],
        )


@dataclass
class StepContext:
    """The protocol's state that a policy may use."""

    step: int
    round: int
    perturbations_per_device: int
    devices_per_step: int
    deadline_s: Optional[float] = None
    variance_threshold: Optional[float] = None  # protocol.variance.threshold (gate on or off)
    # (variance statistic, repeats needed) of previous committed steps
    history: list[tuple[float, int]] = field(default_factory=list)


@dataclass
class Allocation:
    """Quotas for the devices of a view (0 = not asked) and the commit rule the
    policy wants (``commit_units``: commit once this many units arrived)."""

    device_ids: np.ndarray
    quotas: np.ndarray
    commit_units: Optional[int] = None
    deadline_s: Optional[float] = None  # relative to step start

    @property
    def total(self) -> int:
        return int(self.quotas.sum())


class AllocationPolicy(ABC):
    """Decides each device's quota for a step."""

    name: str = ""

    def __init__(self, config: PolicyConfig) -> None:
        self.config = config

    @abstractmethod
    def allocate(self, view: FleetView, ctx: StepContext) -> Allocation: ...

    def cohort_size(self, devices_per_step: int) -> int:
        """Devices to ask per round for ``protocol.devices_per_step`` (over-commit asks
        more)."""
        return int(devices_per_step)

    @classmethod
    def planning_deadline(
        cls, config: PolicyConfig, commit_deadline_s: Optional[float]
    ) -> Optional[float]:
        """The per-step deadline in seconds that this policy plans quotas for (None: none);
        the server's commit deadline by default."""
        return commit_deadline_s

    @classmethod
    def config_problem(
        cls, config: PolicyConfig, commit_deadline_s: Optional[float]
    ) -> Optional[str]:
        """A one-line reason the settings cannot work with this policy, or None."""
        return None

    def observe(self, ctx: StepContext, variance: float, repeats: int) -> None:
        """Called after each committed step (budget-driven policies adapt here)."""
        return None

    def state(self) -> dict:
        return {}

    def load_state(self, state: dict) -> None:
        return None  # stateless by default


class CohortSelector(ABC):
    """Picks a round's cohort among the candidate devices."""

    name: str = ""

    @abstractmethod
    def select(self, view: FleetView, k: int, expected_round_s: float) -> np.ndarray:
        """Return up to ``k`` device ids (a subset of ``view.device_ids``)."""


def spread_by_capability(view: FleetView, total: int, max_quota: int) -> np.ndarray:
    """Split ``total`` units over the view's devices in proportion to predicted
    throughput (1 / unit_seconds), so that devices finish together; largest-
    remainder rounding keeps the sum exact."""
    n = len(view)
    if n == 0 or total <= 0:
        return np.zeros(n, dtype=np.int64)
    speed = 1.0 / np.maximum(view.unit_seconds, 1e-12)
    share = speed / speed.sum() * total
    quotas = np.floor(share).astype(np.int64)
    remainder = int(total - quotas.sum())
    if remainder > 0:
        # Ties broken by device id for determinism.
        order = np.lexsort((view.device_ids, -(share - quotas)))
        quotas[order[:remainder]] += 1
    return np.minimum(quotas, max_quota)
