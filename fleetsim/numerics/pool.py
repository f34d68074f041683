"""Running sums behind an estimate: Σ d_k v_k per variance half, with their weights."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass
class EstimatePool:
    """Running sums behind an opaque StepEstimate.handle (engine-owned tensors)."""

    sums: list[list[Any]]  # [half][tensor] -> Σ d_k v_k
    counts: list[int]  # perturbations per half
    loss_sum: float = 0.0
    loss_n: int = 0
    devices: set = field(default_factory=set)
    weight: float = 0.0  # for backprop / local-train estimates: Σ device weights
    # Σ staleness weights per half: the denominators of the weighted mean (equal to
    # ``counts`` when every perturbation is fresh and weighs 1).
    mass: list[float] = field(default_factory=lambda: [0.0, 0.0])

    def total(self) -> list[Any]:
        return [a + b for a, b in zip(self.sums[0], self.sums[1])]

    def copy(self) -> EstimatePool:
        """A deep copy (the tensors cloned): variance repeats pool onto a copy."""
        return EstimatePool(
            [[t.clone() for t in half] for half in self.sums], list(self.counts),
            self.loss_sum, self.loss_n, set(self.devices), self.weight, list(self.mass),
        )
