"""How long a run goes and at what learning rate: the stop rules a
:class:`~fleetsim.protocols.server.StepServer` checks between steps (targets, max_steps,
max_sim_hours, a stop request), the reason the run ended, the planned number of steps
and ``protocol.lr_schedule``.

:class:`RunSchedule` is a part of the server (a mixin): it reads ``cfg`` (the
``ProtocolConfig``), ``ctx``, ``step``, ``env``, ``protocol``, ``gave_up``,
``stopped_at_target``, ``last_eval`` and ``_plan``, which the server sets up.
"""

from __future__ import annotations

import math
from typing import Optional

from fleetsim.errors import FleetsimInputError


class RunSchedule:
    """Stop rules, the planned steps and the learning-rate schedule of a run."""

    def finished(self) -> bool:
        if self.target_reached:
            # remembered: only a loop that stopped here was stopped by the target (the final
            # evaluation after another stop rule may reach it too)
            self.stopped_at_target = True
            return True
        if self.cfg.max_steps is not None and self.step >= self.cfg.max_steps:
            return True
        if self.env.now >= self.ctx.max_sim_seconds:
            return True
        return bool(self.ctx.stop_requested())

    def stop_reason(self) -> str:
        """Which stop rule ended :meth:`run` (asked once it has returned): ``gave_up``
        when the protocol set it (e.g. ``no_devices_online``), else ``max_steps``,
        ``stop_request``, ``max_sim_hours`` or ``rounds`` (see fleetsim.record.status)."""
        if self.gave_up:
            return self.gave_up
        if self.stopped_at_target:
            return "targets_reached"
        if self.cfg.max_steps is not None and self.step >= self.cfg.max_steps:
            return "max_steps"
        if self.ctx.stop_requested():
            return "stop_request"
        if self.env.now >= self.ctx.max_sim_seconds:
            return "max_sim_hours"
        return "rounds"

    def step_plan(self) -> tuple[Optional[int], str]:
        """(committed steps the run takes when no other stop rule ends it first, how that
        was worked out); None when it cannot be known before the run.

        ``protocol.rounds`` × the protocol's steps per round
        (:meth:`~fleetsim.protocols.base.Protocol.steps_per_round`: FwdLLM one per local
        batch, FedAvg one), capped by ``protocol.max_steps``.  When a round's steps
        depend on the cohort drawn (clients with different numbers of local batches)
        only ``max_steps`` can fix the count, and only when every round is sure to
        reach it.  A round cut short (its cohort went away), no device left online, or
        ``run.max_sim_hours`` end the run earlier: summary.json then shows fewer
        ``steps`` than ``lr_planned_steps``."""
        if self._plan is None:
            rounds, cap = self.cfg.rounds, self.cfg.max_steps
            fewest, most = self.protocol.steps_per_round(self)
            if fewest == most:
                by_rounds = rounds * fewest
                if cap is not None and cap < by_rounds:
                    self._plan = (cap, f"protocol.max_steps ({cap}) < protocol.rounds × "
                                       f"steps per round ({rounds} × {fewest})")
                else:
                    self._plan = (by_rounds, f"protocol.rounds × steps per round "
                                             f"({rounds} × {fewest})")
            elif cap is not None and cap <= rounds * fewest:
                self._plan = (cap, f"protocol.max_steps ({cap}); every round takes at least "
                                   f"{fewest} steps")
            else:
                self._plan = (None, f"protocol.rounds ({rounds}) × {fewest} to {most} steps "
                                    "per round, as the cohort drawn decides")
        return self._plan

    def planned_steps(self) -> int:
        """The steps ``protocol.lr_schedule`` spans (:meth:`step_plan`); raises
        FleetsimInputError (exit 2) when they cannot be known before the run."""
        planned, why = self.step_plan()
        if planned is None:
            raise FleetsimInputError(
                f"protocol.lr_schedule: 'linear' needs the number of steps the run takes, "
                f"but it is {why} (clients hold different numbers of local batches); set "
                f"protocol.batches_per_round, or protocol.max_steps at most "
                f"{self.cfg.rounds * self.protocol.steps_per_round(self)[0]}, or "
                "lr_schedule: constant (allowed: constant, linear)"
            )
        return planned

    def lr_at(self, step: int) -> float:
        """The learning rate of committed step ``step`` (0-based): ``protocol.lr``, or under
        ``lr_schedule: linear`` ``lr × (1 − step / N)`` over the N planned steps
        (:meth:`planned_steps`): the last step N − 1 runs at lr / N, never at 0 (the
        linear decay of HF transformers' ``get_linear_schedule_with_warmup`` without
        warmup)."""
        if self.cfg.lr_schedule == "linear":
            total = max(self.planned_steps(), 1)
            return self.cfg.lr * max(1.0 - step / total, 0.0)
        return self.cfg.lr

    def schedule_labels(self) -> dict:
        """summary.json's account of what the schedule planned with."""
        planned, why = self.step_plan()
        return {"lr_schedule": self.cfg.lr_schedule, "lr_planned_steps": planned,
                "lr_planned_from": why}

    @property
    def target_reached(self) -> bool:
        """run.stop_at_target: the last evaluation reached the highest target (on the
        validation split with run.stop_split: validation)."""
        last = self.last_eval
        if last is None:
            return False
        accuracy = last.val_accuracy if self.ctx.stop_on_validation else last.accuracy
        return bool(math.isfinite(accuracy) and math.isfinite(last.loss)
                    and accuracy >= self.ctx.stop_accuracy)
