"""θ and its history: the trainable tensors of a :class:`~fleetsim.numerics.engine.TorchEngine`,
the θ of recent steps kept for stale work, the server optimiser's step and the checkpoint state.

:class:`ThetaState` is a part of :class:`~fleetsim.numerics.engine.TorchEngine` (a mixin): it
reads ``names``, ``params`` (the trainable tensors, engine order), ``optimizer`` (a
:class:`fleetsim.numerics.optim.ServerOptimizer`, the update rules), ``previous_gradient``,
``_retain`` and ``_history``, which the engine sets up, and ``cfg.on_nonfinite``.

``theta_version`` counts the changes of θ (an applied step, a loaded checkpoint): an
evaluation of an unchanged θ is the same numbers, so the engine reuses it (a simulated-time
evaluation grid evaluates many times between two slow steps).
"""

from __future__ import annotations

from typing import Any, Optional

from fleetsim.numerics.base import GradientWork, StepEstimate


class ThetaState:
    """θ, its history for stale work, the server optimiser step, checkpoint state."""

    #: incremented whenever θ changes (see the module docstring)
    theta_version: int = 0

    def current_params(self) -> dict:
        return {n: p.detach() for n, p in zip(self.names, self.params)}

    # ------------------------------------------------------------------ staleness
    def retain_steps(self, max_staleness: int) -> None:
        self._retain = max(int(max_staleness), 0)

    def _snapshot(self, step: int) -> None:
        """Remember θ_step (the current θ: called before step's update is applied)."""
        if self._retain <= 0:
            return
        if step not in self._history:
            self._history[step] = (
                {n: p.detach().clone() for n, p in zip(self.names, self.params)},
                self.previous_gradient,  # replaced (never mutated) by apply()
            )
        for old in [s for s in self._history if s < step - self._retain]:
            del self._history[old]

    def _source(self, step: int, item: GradientWork) -> tuple[int, dict, Optional[list[Any]]]:
        """(source step, θ, previous gradient) a work item was computed with."""
        source = step if item.step is None else int(item.step)
        if source == step:
            return step, self.current_params(), self.previous_gradient
        if source not in self._history:
            raise ValueError(
                f"work of device {item.device_id} was computed for step {source}, but θ of that "
                f"step is not retained (estimating step {step}, retaining {self._retain} steps); "
                "the protocol must drop work older than its max_staleness"
            )
        params, previous = self._history[source]
        return source, params, previous


    # ------------------------------------------------------- the server optimiser
    def apply(self, estimate: StepEstimate, lr: float) -> None:
        import torch

        from fleetsim.numerics.errors import NumericalFault

        gradient = self.gradient_of(estimate)
        if not all(bool(torch.isfinite(g).all()) for g in gradient):
            if self.cfg.on_nonfinite == "stop":
                raise NumericalFault(estimate.step, -1, "aggregated estimate")
            return
        with torch.no_grad():
            self.optimizer.step([p.data for p in self.params], gradient, lr)
        self.theta_version += 1
        self.previous_gradient = [g.detach().to("cpu") for g in gradient]

    # ---------------------------------------------------------------- checkpoints
    def state_dict(self) -> dict:
        return {
            "params": {n: p.detach().cpu().clone() for n, p in zip(self.names, self.params)},
            "optimizer": self.optimizer.state_dict(),
            "previous_gradient": None if self.previous_gradient is None
            else [g.clone() for g in self.previous_gradient],
            "history": {
                step: ({n: t.detach().cpu().clone() for n, t in params.items()}, previous)
                for step, (params, previous) in self._history.items()
            },
        }

    def load_state_dict(self, state: dict) -> None:
        import torch

        missing = set(self.names) - set(state["params"])
        if missing:
            raise ValueError(f"checkpoint lacks trainable tensors: {sorted(missing)}")
        with torch.no_grad():
            for name, param in zip(self.names, self.params):
                param.copy_(state["params"][name].to(param.device, param.dtype))
        self.theta_version += 1
        self.optimizer.load_state_dict(state["optimizer"])
        previous = state.get("previous_gradient")
        self.previous_gradient = None if previous is None else [g.clone() for g in previous]
        self._history = {
            int(step): ({n: t.to(self.device, self.dtype) for n, t in params.items()}, prev)
            for step, (params, prev) in state.get("history", {}).items()
        }

