"""What a step leaves behind: its steps.parquet row (one per attempt, with the staleness
of the work it used), the evaluations (after commits and on ``protocol.eval_every_s``'s
time grid) and :class:`StepOutcome`, what one attempt's dispatch returned.

:class:`StepRecords` is a part of the :class:`~fleetsim.protocols.server.StepServer` (a
mixin): it reads ``ctx`` (recorder, on_step), ``env``, ``round``, ``step``, ``engine``,
``_step_start`` and ``_used_staleness``, and sets ``last_eval`` and
``initial_evaluation``.
"""

from __future__ import annotations

import math
from collections.abc import Generator
from dataclasses import dataclass
from typing import Optional

from fleetsim.fleet.work import WorkReceipt
from fleetsim.numerics_api import EvalResult, StepEstimate


@dataclass
class StepOutcome:
    receipts: list[WorkReceipt]
    late: list[WorkReceipt]
    started: float
    committed: float
    assigned_units: int


class StepRecords:
    """Step rows and evaluations."""

    def record_step(
        self,
        outcome: StepOutcome,
        estimate: Optional[StepEstimate],
        attempt: int,
        committed: bool,
        lr: float,
        evaluation: Optional[EvalResult] = None,
        variance_gate: str = "off",
    ) -> dict:
        """Add the step row of one attempt (``variance_gate``: one of
        :data:`fleetsim.record.schema.VARIANCE_GATE_OUTCOMES`)."""
        used = [r for r in outcome.receipts + outcome.late if r.units_delivered > 0]
        row = {
            "sim_time_s": float(self.env.now),
            "round": self.round,
            "step": self.step,
            "attempt": attempt,
            "committed": committed,
            "devices": len({r.device_id for r in used}),
            "perturbations": int(estimate.n_perturbations) if estimate else 0,
            "loss": float(estimate.loss) if estimate else math.nan,
            "accuracy": evaluation.accuracy if evaluation else math.nan,
            "eval_loss": evaluation.loss if evaluation else math.nan,
            "val_accuracy": evaluation.val_accuracy if evaluation else math.nan,
            "val_loss": evaluation.val_loss if evaluation else math.nan,
            "variance": float(estimate.variance) if estimate else math.nan,
            "variance_gate": variance_gate,
            "lr": lr,
            "bytes_up": int(sum(r.bytes_up for r in outcome.receipts + outcome.late)),
            "bytes_down": int(sum(r.bytes_down for r in outcome.receipts + outcome.late)),
            "step_seconds": outcome.committed - outcome.started,
            "step_start_s": (self._step_start[1] if self._step_start[0] == self.step
                             else outcome.started),
            **self._staleness_columns(),
        }
        self.ctx.recorder.add_step(row)
        if self.ctx.on_step is not None:
            self.ctx.on_step(row)
        return row

    def _staleness_columns(self) -> dict:
        """Per-row staleness of the work used since the last row (units-weighted)."""
        used, self._used_staleness = self._used_staleness, []
        units = sum(u for u, _ in used)
        stale = [(u, s) for u, s in used if s > 0]
        return {
            "stale_units": int(sum(u for u, _ in stale)),
            "staleness_max": int(max((s for _, s in used), default=0)),
            "staleness_mean": float(sum(u * s for u, s in used) / units) if units else 0.0,
        }

    def _evaluation_grid(self, every_s: float) -> Generator:
        """protocol.eval_every_s: evaluate the model current at t = k × ``every_s``
        (k = 0, 1, …; computed as a product, so grid times are exact multiples) until the
        run ends, each as its own steps.parquet row: ``attempt`` −1, not committed, no
        work, ``step`` = steps committed so far.  A SimPy process started before the
        protocol's loop, so t = 0 is evaluated before the first step; a grid time equal to a
        commit time sees the model of whichever SimPy schedules first (deterministic).
        Issue 23: arms evaluated on one time grid, not at step counts whose times differ."""
        k = 0
        while True:
            due = k * every_s
            if due > self.env.now:
                yield self.env.timeout(due - self.env.now)
            evaluation = self._record_evaluation_row()
            if k == 0:
                self.initial_evaluation = evaluation
            k += 1

    def _record_evaluation_row(self) -> EvalResult:
        """Evaluate the current model and record it as its own steps.parquet row of the
        ``protocol.eval_every_s`` grid: ``attempt`` −1, not committed, no work, ``step`` =
        steps committed so far.  Returns the evaluation."""
        evaluation = self.evaluate()
        self.ctx.recorder.add_step({
            "sim_time_s": float(self.env.now), "round": self.round, "step": self.step,
            "attempt": -1, "committed": False, "devices": 0, "perturbations": 0,
            "loss": math.nan, "accuracy": evaluation.accuracy,
            "eval_loss": evaluation.loss, "val_accuracy": evaluation.val_accuracy,
            "val_loss": evaluation.val_loss, "variance": math.nan, "lr": math.nan,
            "bytes_up": 0, "bytes_down": 0, "step_seconds": 0.0, "stale_units": 0,
            "staleness_max": 0, "staleness_mean": 0.0,
            # an evaluation, not an attempt: no gate, no step start
            "variance_gate": "off", "step_start_s": math.nan,
        })
        return evaluation

    def _evaluate_initial_model(self) -> None:
        """Evaluate the model before the first step (t = 0; issue 24: accuracy curves start
        there), for a run without a ``protocol.eval_every_s`` grid (whose t = 0 row is this
        evaluation).  Kept in summary.json (:meth:`initial_evaluation_fields`), not as a
        steps row and not in the event log: the tables, the summary's accuracies and time to
        target and the stop rules are those of a run without it (it stops no run:
        run.stop_at_target counts evaluations of trained models).  It draws no random numbers
        and moves no simulated time; a resumed run replays it from the engine's journal like
        every other call."""
        self.initial_evaluation = self.engine.evaluate()

    def initial_evaluation_fields(self) -> dict:
        """summary.json's ``initial_accuracy`` and ``initial_eval_loss``: the evaluation of
        the model before the first step (t = 0), where accuracy curves start (issue 24);
        None for systems-only runs and for a non-finite initial model's accuracy."""
        evaluation = self.initial_evaluation
        if evaluation is None or not evaluation.n_examples:
            return {"initial_accuracy": None, "initial_eval_loss": None}
        finite = math.isfinite(evaluation.loss) and math.isfinite(evaluation.accuracy)
        return {"initial_accuracy": float(evaluation.accuracy) if finite else None,
                "initial_eval_loss": float(evaluation.loss) if finite else None}

    def evaluate(self) -> EvalResult:
        result = self.engine.evaluate()
        self.last_eval = result
        self.ctx.recorder.events.add(
            self.env.now, -1, "evaluate", step=self.step,
            detail=f"accuracy={result.accuracy:.6f} loss={result.loss:.6f}",
        )
        return result
