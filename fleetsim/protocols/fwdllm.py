"""FwdLLM (Xu et al., arXiv 2308.13894): step-level FedSGD over forward gradients.

Per round a cohort is selected; for each batch index b of the round every
participating device computes its quota of perturbations on its local batch b
and uploads its estimate; the server averages all estimates of the step and
takes one SGD step.  With variance control on, a step whose split-half variance
statistic exceeds the threshold is rolled back: its estimates are kept, devices
compute fresh perturbations on the same batch, and the pooled estimate is
checked again (at most ``max_repeats`` times; every hit is logged).  The round
ends when the cohort has used its local batches; then the model is evaluated
and a new cohort drawn.
"""

from __future__ import annotations

import math
from collections.abc import Generator
from typing import Optional

import numpy as np

from fleetsim.fleet.work import TaskKind
from fleetsim.numerics.base import StepEstimate
from fleetsim.policies.base import Allocation, StepContext
from fleetsim.protocols.base import Protocol


class FwdLLMProtocol(Protocol):
    name = "fwdllm"
    task_kind = TaskKind.FORWARD_GRADIENT

    def cohort_size(self) -> int:
        size = self.cfg.devices_per_step
        factor = getattr(self.ctx.policy, "cohort_size", None)
        return int(factor(size)) if callable(factor) else size

    def batches_in_round(self, cohort: np.ndarray) -> int:
        if self.cfg.batches_per_round is not None:
            return self.cfg.batches_per_round
        counts = [self.engine.batches_per_client(self.client_of(d)) for d in cohort.tolist()]
        return max(min(counts), 1) if counts else 1

    def expected_round_seconds(self, n_batches: int) -> float:
        # What a cohort selector may plan with: a median device's step time × steps.
        ids = self.candidates()
        if len(ids) == 0:
            return 0.0
        sample = ids[:: max(len(ids) // 256, 1)]
        v = self.view(sample, "estimate")
        quota = self.cfg.perturbations_per_device
        per_step = np.median(v.unit_seconds * quota + v.transfer_seconds)
        return float(per_step) * n_batches

    def step_context(self) -> StepContext:
        return StepContext(
            step=self.step,
            round=self.round,
            perturbations_per_device=self.cfg.perturbations_per_device,
            devices_per_step=self.cfg.devices_per_step,
            deadline_s=self.cfg.commit.deadline_s,
            variance_threshold=self.cfg.variance.threshold,
            history=list(self.history),
        )

    def allocate(self, cohort: np.ndarray) -> Allocation:
        ids = np.intersect1d(cohort, self.candidates())
        return self.ctx.policy.allocate(self.view(ids, "allocate"), self.step_context())

    def aggregate(self, step: int, work, previous: Optional[StepEstimate]) -> StepEstimate:
        return self.engine.forward_gradient(step, work, previous)

    def run(self) -> Generator:
        rec = self.ctx.recorder
        while self.round < self.cfg.rounds and not self.finished():
            guess = self.batches_in_round(self.candidates()[: self.cfg.devices_per_step])
            cohort = yield from self.select_cohort(
                self.cohort_size(), self.expected_round_seconds(guess)
            )
            if len(cohort) == 0:
                self.gave_up = "no_devices_online"
                break  # nobody will come online again within the horizon
            n_batches = self.batches_in_round(cohort)
            rec.events.add(self.env.now, -1, "round_start", detail=f"round={self.round} "
                           f"cohort={len(cohort)} batches={n_batches}")
            for b in range(n_batches):
                if self.finished():
                    break
                ok = yield from self.one_step(cohort, b)
                if not ok:
                    break  # the cohort went away: end the round early, draw a new one
            rec.events.add(self.env.now, -1, "round_end", detail=f"round={self.round}")
            if not self.cfg.eval_every_steps:
                evaluation = self.evaluate()
                rec.attach_evaluation(evaluation)
            self.round += 1
        self.drop_carried()
        rows = self.ctx.recorder.step_rows
        if rows and not self.engine.systems_only and math.isnan(rows[-1]["accuracy"]):
            # Stopped between evaluations (max_steps, horizon): evaluate the final model.
            self.ctx.recorder.attach_evaluation(self.evaluate())

    def one_step(self, cohort: np.ndarray, batch_index: int) -> Generator:
        """Run one server step to its commit; False when it had to be given up."""
        rec = self.ctx.recorder
        lr = self.lr_at(self.step)
        estimate: Optional[StepEstimate] = None
        attempt = 0
        outcome = None
        while True:
            allocation = self.allocate(cohort)
            if allocation.total <= 0:
                if self.finished() or len(allocation.device_ids):
                    # Online cohort devices got no work (e.g. none fits the deadline):
                    # give the round up rather than spin; a new cohort is drawn.
                    return False
                # No cohort device online: wait for one (bounded by wait_offline_s).
                wait = self._wait_for_cohort(cohort)
                if wait is None:
                    return False
                yield self.env.timeout(wait)
                continue
            rec.events.add(self.env.now, -1, "step_start", step=self.step, units=allocation.total,
                           detail=f"attempt={attempt}")
            outcome = yield from self.execute(allocation, batch_index, attempt)
            work = self.to_work(outcome.receipts + outcome.late)
            if not work:
                attempt += 1
                if attempt > self.cfg.variance.max_repeats + 3:
                    return False  # repeatedly nothing delivered: give the step up
                continue
            seen = len(estimate.extra.get("skipped", [])) if estimate is not None else 0
            estimate = self.aggregate(self.step, work, estimate)
            for item in estimate.extra.get("skipped", [])[seen:]:
                dev = item["device_id"] if isinstance(item, dict) else item
                reason = item.get("reason", "") if isinstance(item, dict) else ""
                rec.events.add(self.env.now, int(dev), "numerical_fault", step=self.step,
                               detail=f"non-finite {reason} skipped (numerics.on_nonfinite: skip)")
            gate = self.cfg.variance
            failed = (
                gate.enabled
                and math.isfinite(estimate.variance)
                and estimate.variance > gate.threshold
                and attempt < gate.max_repeats
            )
            if failed:
                self.record_step(outcome, estimate, attempt, committed=False, lr=lr)
                rec.events.add(self.env.now, -1, "step_rollback", step=self.step,
                               units=estimate.n_perturbations,
                               detail=f"variance={estimate.variance:.6g} "
                               f"threshold={gate.threshold:.6g} attempt={attempt}")
                attempt += 1
                continue
            break
        self.engine.apply(estimate, lr)
        self.note_commit(estimate.n_perturbations)
        rec.events.add(self.env.now, -1, "step_commit", step=self.step,
                       units=estimate.n_perturbations, detail=f"attempts={attempt + 1}")
        self.history.append((float(estimate.variance), attempt))
        self.ctx.policy.observe(self.step_context(), float(estimate.variance), attempt)
        evaluation = None
        if self.cfg.eval_every_steps and (self.step + 1) % self.cfg.eval_every_steps == 0:
            evaluation = self.evaluate()
        self.record_step(outcome, estimate, attempt, committed=True, lr=lr, evaluation=evaluation)
        self.step += 1
        return True

    def _wait_for_cohort(self, cohort: np.ndarray) -> Optional[float]:
        nxt = self.fleet.availability.next_start(cohort, float(self.env.now))
        nxt = nxt[np.isfinite(nxt)]
        busy_free = self.env.now + 1.0 if len(self.fleet.busy_ids()) else math.inf
        t = min(float(nxt.min()) if len(nxt) else math.inf, busy_free)
        if not math.isfinite(t) or t - self.env.now > self.cfg.commit.wait_offline_s:
            return None
        return max(t - float(self.env.now), 1e-6)
