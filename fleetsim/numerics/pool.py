"""Running sums behind an estimate (Σ w_k d_k v_k, Σ w_k) and FwdLLM's variance halves.

The variance statistic follows FwdLLM's ``calculate_var``
(UbiquitousLearning/FwdLLM, ``forward_training/utils/fwdgrad_utils.py`` lines 79–90,
commit 36ecdbc): the step's forward gradients on the check layer form a list in the
order they were computed (``tc_transformer_trainer_distribute.py`` line 140 appends
``jvp * v`` per perturbation; a variance repeat appends to the same list, the
client clears it only when the server moves on, ``FedSgdClientManager.py`` line 71);
the first half is ``list[:n//2]`` (line 82), the second half ``list[n//2:]`` (line 85),
each half is averaged and the statistic is ``torch.var`` (unbiased, two samples) of the
two means, averaged over elements (line 88):
``mean_i (ḡ₁ᵢ − ḡ₂ᵢ)² / 2``.  For odd n the second half has one entry more, as there.
With fewer than two forward gradients the reference has an empty half (``torch.stack``
of an empty list fails); here the statistic is then undefined (NaN) and the protocol
decides what the gate does (:mod:`fleetsim.protocols.fwdllm`).

fleetsim pools a cohort's perturbations rather than one client's, so its list is the
step's work in the order the engine receives it (work items sorted by source step and
device, perturbation indices ascending, attempts one after another).  A stale
perturbation carries its staleness weight w: each half's mean is Σ w g / Σ w (w = 1
for fresh work gives FwdLLM's plain mean).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Optional


@dataclass
class SplitHalves:
    """FwdLLM's list of check-layer forward gradients (``grad_for_var_check_list``).

    Each entry is one perturbation's w·(d_k v_k) on the check tensors and its weight w;
    like the reference, the whole list of the step is kept (n entries of the check
    tensors' size).  Tensors are never changed in place, so copies share them."""

    entries: list[tuple[list[Any], float]] = field(default_factory=list)

    @property
    def n(self) -> int:
        """Forward gradients in the list."""
        return len(self.entries)

    def append(self, weighted: list[Any], weight: float) -> None:
        """Add one perturbation's w·(d_k v_k) restricted to the check tensors, weight w."""
        self.entries.append((list(weighted), float(weight)))

    def extend(self, other: SplitHalves) -> None:
        """Append another list's entries after this one's."""
        self.entries.extend(other.entries)

    def sizes(self) -> list[int]:
        """Entries in the first and the second half: [n//2, n − n//2]."""
        return [self.n // 2, self.n - self.n // 2]

    def half_means(self) -> Optional[tuple[list[Any], list[Any]]]:
        """(mean of ``list[:n//2]``, mean of ``list[n//2:]``) per check tensor (weighted by
        w), or None when a half is empty (fewer than two entries) or weighs nothing."""
        if self.n < 2:
            return None
        cut = self.n // 2
        means = []
        for part in (self.entries[:cut], self.entries[cut:]):
            mass = sum(w for _, w in part)
            if mass <= 0:
                return None
            total = list(part[0][0])
            for grads, _ in part[1:]:
                total = [a + b for a, b in zip(total, grads)]
            means.append([t / mass for t in total])
        return means[0], means[1]

    def copy(self) -> SplitHalves:
        return SplitHalves(list(self.entries))


@dataclass
class EstimatePool:
    """Running sums behind an opaque StepEstimate.handle (engine-owned tensors)."""

    sums: list[Any]  # [tensor] -> Σ w_k d_k v_k (forward gradients) or Σ weighted gradients
    count: int = 0  # perturbations pooled
    loss_sum: float = 0.0
    loss_n: int = 0
    devices: set = field(default_factory=set)
    weight: float = 0.0  # for backprop / local-train estimates: Σ device weights
    # Σ staleness weights of the perturbations: the denominator of the weighted mean
    # (equal to ``count`` when every perturbation is fresh and weighs 1).
    mass: float = 0.0
    halves: SplitHalves = field(default_factory=SplitHalves)

    def copy(self) -> EstimatePool:
        """A copy whose sums are cloned (variance repeats pool onto a copy)."""
        return EstimatePool(
            [t.clone() for t in self.sums], self.count, self.loss_sum, self.loss_n,
            set(self.devices), self.weight, self.mass, self.halves.copy(),
        )
