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

_TORCH_DTYPE = "__torch_dtype__"
_TORCH_DATA = "__torch_data__"


def portable_state(state: Any) -> Any:
    """An engine state with every torch tensor replaced by ``{"__torch_dtype__": name,
    "__torch_data__": numpy array}`` (bfloat16 as its int16 bit pattern, which numpy
    lacks): what a checkpoint stores (:mod:`fleetsim.record.checkpoint` holds data only,
    no torch objects).  Exact: :func:`restore_state` gives back equal tensors, bit for bit."""
    if isinstance(state, dict):
        return {k: portable_state(v) for k, v in state.items()}
    if isinstance(state, list):
        return [portable_state(v) for v in state]
    if isinstance(state, tuple):
        return tuple(portable_state(v) for v in state)
    if type(state).__module__.startswith("torch") and hasattr(state, "detach"):
        import torch

        t = state.detach().cpu().contiguous()
        name = str(t.dtype).removeprefix("torch.")
        data = t.view(torch.int16).numpy() if t.dtype == torch.bfloat16 else t.numpy()
        return {_TORCH_DTYPE: name, _TORCH_DATA: data.copy()}
    return state


def restore_state(state: Any) -> Any:
    """Inverse of :func:`portable_state`."""
    if isinstance(state, dict):
        if set(state) == {_TORCH_DTYPE, _TORCH_DATA}:
            import numpy as np
            import torch

            dtype = getattr(torch, str(state[_TORCH_DTYPE]), None)
            if not isinstance(dtype, torch.dtype):
                raise ValueError(f"unknown tensor dtype {state[_TORCH_DTYPE]!r}")
            data = torch.from_numpy(np.array(state[_TORCH_DATA], copy=True))
            return data.view(torch.bfloat16) if dtype == torch.bfloat16 else data.to(dtype)
        return {k: restore_state(v) for k, v in state.items()}
    if isinstance(state, list):
        return [restore_state(v) for v in state]
    if isinstance(state, tuple):
        return tuple(restore_state(v) for v in state)
    return state


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
        # A checkpoint stores tensors as arrays (portable_state): turn them back.
        state_at_end = restore_state(state_at_end) if state_at_end is not None else None
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

    def portable_state_dict(self) -> dict:
        """:meth:`state_dict` with tensors as numpy arrays (:func:`portable_state`)."""
        return portable_state(self.inner.state_dict())

    def load_state_dict(self, state: dict) -> None:
        self.inner.load_state_dict(state)
