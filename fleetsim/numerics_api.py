"""The one interface the server uses to get learning signal (ground floor: no torch).

The numerics engine owns θ (the trainable parameters), the data partitions and
the server optimiser.  It never reads the simulated clock: protocols call it at
commit time with the work that devices *delivered* (work receipts turned into
:class:`GradientWork`), and it computes exactly that work, batched as it likes.

This module imports neither torch nor simpy, so the server (``protocols/``),
systems-only runs and the checkpoint journal can depend on it without importing
``fleetsim.numerics``; the engines that implement it live there.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Any, Optional

from fleetsim.workload import ModelFacts

__all__ = [
    "POOL_SCALARS", "EvalResult", "GradientWork", "ModelFacts", "NumericsEngine", "StepEstimate",
]


@dataclass(frozen=True)
class GradientWork:
    """One device's delivered contribution to a step.

    ``perturbations`` are the perturbation indices k the device ran; each
    perturbation is regenerated from ``stream_seed(seed, "perturbation", step,
    device_id, k)`` so a device may upload seeds and scalars only.  Variance
    repeats of the same step use fresh k (the protocol offsets them).
    """

    device_id: int
    client_id: int  # data partition the device holds
    batch_index: int  # which of the client's local batches
    perturbations: tuple[int, ...]
    #: The server step the device computed for (it downloaded θ_step and drew step's
    #: perturbations).  ``None``: the step being estimated (fresh work).  Older steps are
    #: *stale* work: the engine evaluates it at θ_step from its bounded θ history
    #: (:meth:`NumericsEngine.retain_steps`), exactly what the phone computed.
    step: Optional[int] = None
    #: Staleness weight of every perturbation of this work in the step's average
    #: (1.0 for fresh work; e.g. 1/√(1+s) under FedBuff/FedAsync-style weighting).
    weight: float = 1.0
    #: Seed-pool protocols (FedKSeed): the pool index j of each of ``perturbations``, chosen
    #: by the server; the perturbation is then the pool seed's, regenerated from
    #: ``stream_seed(seed, "seed-pool", j)`` whatever the step, device or k, so equal
    #: indices mean equal v.  ``None``: per-(step, device, k) perturbations.
    pool_seeds: Optional[tuple[int, ...]] = None


#: ``StepEstimate.extra`` key of a seed-pool step's scalars: a list of ``[j, d, w]``, one per
#: pooled perturbation (pool index j, directional derivative d = ∇L·v_j in loss units per
#: unit of v, staleness weight w), in pooling order.  The estimate is then exactly
#: Σ w·d·v_j / Σ w, so the server can keep FedKSeed's per-seed accumulated scalars and
#: FedKSeed-Pro's scalar history from numbers alone.
POOL_SCALARS = "pool_scalars"


@dataclass
class StepEstimate:
    """An aggregated gradient estimate for one server step (engine-owned tensor
    inside ``handle``; protocols treat it as opaque; numbers for the protocol in
    ``extra``, e.g. :data:`POOL_SCALARS`)."""

    step: int
    n_perturbations: int
    n_devices: int
    loss: float = math.nan  # mean training loss at θ on the delivered batches
    variance: float = math.nan  # split-half variance statistic (see engine docs)
    handle: Any = None
    extra: dict = field(default_factory=dict)


@dataclass
class EvalResult:
    """Accuracy (fraction) and mean cross-entropy (nats) on the held-out test split; the
    same on the validation split (``data.validation_fraction``; NaN without one)."""

    accuracy: float
    loss: float
    n_examples: int
    val_accuracy: float = math.nan
    val_loss: float = math.nan


class NumericsEngine(ABC):
    """Facade over models, data, estimators and the server optimiser."""

    #: True when no gradient is computed (systems-only mode); outputs say so.
    systems_only: bool = False

    @abstractmethod
    def facts(self) -> ModelFacts: ...

    @abstractmethod
    def num_clients(self) -> int: ...

    @abstractmethod
    def batches_per_client(self, client_id: int) -> int: ...

    @abstractmethod
    def forward_gradient(
        self, step: int, work: list[GradientWork], previous: Optional[StepEstimate] = None
    ) -> StepEstimate:
        """Average the forward-gradient estimates of ``work`` (each perturbation
        weighs the same).  With ``previous`` (variance repeats of one step), the
        result pools previous and new perturbations."""

    @abstractmethod
    def backprop_gradient(self, step: int, work: list[GradientWork]) -> StepEstimate:
        """Exact gradient by backprop on the same batches (FedSGD baseline)."""

    @abstractmethod
    def local_train(
        self, step: int, device_id: int, client_id: int, batch_indices: list[int], lr: float,
        source_step: Optional[int] = None,
    ) -> StepEstimate:
        """FedAvg-style local SGD from θ_source_step (default: the current θ; an older
        step's θ for carried work, see :meth:`retain_steps`); the estimate holds the
        model delta (θ_local − θ) as a pseudo-gradient with sign flipped so that
        ``apply(avg, lr=1)`` with plain SGD moves θ to the average."""

    @abstractmethod
    def average(self, estimates: list[StepEstimate]) -> StepEstimate:
        """Weighted (by n_perturbations, else by n_devices) mean of estimates."""

    @abstractmethod
    def apply(self, estimate: StepEstimate, lr: float) -> None:
        """One server optimiser step with the estimate as the gradient."""

    @abstractmethod
    def evaluate(self) -> EvalResult: ...

    def retain_steps(self, max_staleness: int) -> None:
        """Keep θ (and what perturbation sampling depends on) of the last
        ``max_staleness`` steps, so that work computed for step s and delivered at
        step s + k (k ≤ max_staleness) is evaluated at θ_s.  0 (the default) keeps
        none: every work item must then be fresh.  Engines that compute nothing
        ignore it."""
        return None

    @abstractmethod
    def state_dict(self) -> dict:
        """Trainable weights, optimiser state, previous gradient: for checkpoints."""

    @abstractmethod
    def load_state_dict(self, state: dict) -> None: ...

    def describe(self) -> dict:
        """Metadata written to the run directory (estimator, host batching, ...)."""
        return {}
