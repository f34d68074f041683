"""The engine of systems-only runs (``numerics.engine: none``): computes nothing, says
so, and knows the data plan's batch counts so that protocols run unchanged."""

from __future__ import annotations

import math
from typing import Optional

import numpy as np

from fleetsim.numerics.base import (
    EvalResult,
    GradientWork,
    ModelFacts,
    NumericsEngine,
    StepEstimate,
)


class SystemsOnlyEngine(NumericsEngine):
    """Computes nothing: NaN losses and variance, NaN accuracy; knows the data plan so
    protocols run unchanged."""

    systems_only = True

    def __init__(self, facts: ModelFacts, batches: list[int], info: Optional[dict] = None
                 ) -> None:
        self._facts = facts
        self._batches = list(batches)
        self._info = dict(info or {})
        self._steps = 0

    def facts(self) -> ModelFacts:
        return self._facts

    def num_clients(self) -> int:
        return len(self._batches)

    def batches_per_client(self, client_id: int) -> int:
        return self._batches[client_id]

    def _nan(self, step: int, n_perturbations: int, n_devices: int) -> StepEstimate:
        return StepEstimate(step=step, n_perturbations=n_perturbations, n_devices=n_devices,
                            extra={"skipped": [], "systems_only": True})

    def forward_gradient(
        self, step: int, work: list[GradientWork], previous: Optional[StepEstimate] = None
    ) -> StepEstimate:
        n = sum(len(w.perturbations) for w in work)
        devices = {w.device_id for w in work if w.perturbations}
        if previous is not None:
            n += previous.n_perturbations
            devices |= set(previous.extra.get("devices", np.empty(0, np.int64)).tolist())
        estimate = self._nan(step, n, len(devices))
        # An array, not a list: the resume journal keeps only plain scalars and lists of an
        # estimate, so a long run's journal does not grow by a device list per step (the
        # list is needed only across the variance repeats of one step, never past a commit,
        # where checkpoints are taken).
        estimate.extra["devices"] = np.fromiter(sorted(devices), dtype=np.int64)
        return estimate

    def backprop_gradient(self, step: int, work: list[GradientWork]) -> StepEstimate:
        return self._nan(step, 0, len({w.device_id for w in work}))

    def local_train(
        self, step: int, device_id: int, client_id: int, batch_indices: list[int], lr: float,
        source_step: Optional[int] = None,
    ) -> StepEstimate:
        return self._nan(step, 0, 1)

    def average(self, estimates: list[StepEstimate]) -> StepEstimate:
        step = max((e.step for e in estimates), default=0)
        return self._nan(step, sum(e.n_perturbations for e in estimates),
                         sum(e.n_devices for e in estimates))

    def apply(self, estimate: StepEstimate, lr: float) -> None:
        self._steps += 1

    def evaluate(self) -> EvalResult:
        return EvalResult(math.nan, math.nan, 0)

    def state_dict(self) -> dict:
        return {"steps": self._steps}

    def load_state_dict(self, state: dict) -> None:
        self._steps = int(state.get("steps", 0))

    def describe(self) -> dict:
        return {"engine": "none", "systems_only": True, **self._info}
