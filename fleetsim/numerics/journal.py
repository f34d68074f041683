"""Journal of every numerics-engine call, for exact resume.

:class:`JournalEngine` wraps the real engine.  Live, it records each call's result
(scalars only: no tensors); on resume it answers from a checkpoint's journal without
computing and without touching θ, and loads the checkpointed engine state the moment
the journal runs out.  The checkpoint file format itself is
:mod:`fleetsim.record.checkpoint`'s.
"""

from __future__ import annotations

import copy
from typing import Any, Optional

from fleetsim.numerics.base import EvalResult, ModelFacts, NumericsEngine, StepEstimate


def _scalars(est: StepEstimate) -> StepEstimate:
    """A copy without the engine-owned tensor (what the protocol may look at)."""
    return StepEstimate(
        step=est.step, n_perturbations=est.n_perturbations, n_devices=est.n_devices,
        loss=est.loss, variance=est.variance, handle=None,
        extra={k: v for k, v in est.extra.items() if isinstance(v, (int, float, str, list))},
    )


class JournalEngine(NumericsEngine):
    """Wraps the real engine: records every call's result (live mode), or answers
    from a journal without computing (replay mode) and switches to live — after
    loading the checkpointed engine state — when the journal is exhausted."""

    def __init__(
        self,
        inner: NumericsEngine,
        replay: Optional[list[tuple[str, Any]]] = None,
        state_at_end: Optional[dict] = None,
    ) -> None:
        self.inner = inner
        self.systems_only = inner.systems_only
        self.journal: list[tuple[str, Any]] = []
        self._replay = list(replay or [])
        self._cursor = 0
        self._state_at_end = state_at_end
        if not self._replay and state_at_end is not None:
            inner.load_state_dict(state_at_end)

    @property
    def replaying(self) -> bool:
        return self._cursor < len(self._replay)

    def _answer(self, kind: str) -> Any:
        recorded_kind, value = self._replay[self._cursor]
        if recorded_kind != kind:
            raise RuntimeError(
                f"resume diverged: the run asked the engine for {kind!r} where the journal "
                f"has {recorded_kind!r} (call {self._cursor}); was the scenario changed?"
            )
        self._cursor += 1
        self.journal.append((kind, value))
        if not self.replaying and self._state_at_end is not None:
            self.inner.load_state_dict(self._state_at_end)
            self._state_at_end = None
        return copy.deepcopy(value)

    def _call(self, kind: str, fn, *args) -> Any:
        if self.replaying:
            return self._answer(kind)
        result = fn(*args)
        if isinstance(result, StepEstimate):
            self.journal.append((kind, _scalars(result)))
        elif isinstance(result, EvalResult):
            self.journal.append((kind, copy.deepcopy(result)))
        else:
            self.journal.append((kind, None))
        return result

    # static facts pass straight through
    def facts(self) -> ModelFacts:
        return self.inner.facts()

    def num_clients(self) -> int:
        return self.inner.num_clients()

    def batches_per_client(self, client_id: int) -> int:
        return self.inner.batches_per_client(client_id)

    def describe(self) -> dict:
        return self.inner.describe()

    def forward_gradient(self, step, work, previous=None):
        return self._call("forward_gradient", self.inner.forward_gradient, step, work, previous)

    def backprop_gradient(self, step, work):
        return self._call("backprop_gradient", self.inner.backprop_gradient, step, work)

    def local_train(self, step, device_id, client_id, batch_indices, lr, source_step=None):
        return self._call(
            "local_train", self.inner.local_train, step, device_id, client_id, batch_indices, lr,
            source_step,
        )

    def retain_steps(self, max_staleness: int) -> None:
        self.inner.retain_steps(max_staleness)

    def average(self, estimates):
        return self._call("average", self.inner.average, estimates)

    def apply(self, estimate, lr):
        return self._call("apply", self.inner.apply, estimate, lr)

    def evaluate(self):
        return self._call("evaluate", self.inner.evaluate)

    def state_dict(self) -> dict:
        return self.inner.state_dict()

    def load_state_dict(self, state: dict) -> None:
        self.inner.load_state_dict(state)
