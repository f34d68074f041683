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

As the paper: each device uploads its estimate densely (one fp32 trainable vector per
step, ``protocol.upload: dense``) and computes one perturbation per batch
(``protocol.perturbations_per_device: 1``).  ``protocol.upload: seeds`` (seed + scalar
per perturbation) is a variant, named "FwdLLM (seed-only upload)" in every output.
"""

from __future__ import annotations

import math
from collections.abc import Generator
from typing import TYPE_CHECKING, Optional

import numpy as np

from fleetsim.numerics_api import StepEstimate
from fleetsim.policies.base import Allocation, StepContext
from fleetsim.protocols.base import Protocol
from fleetsim.protocols.server import StepServer
from fleetsim.workload import TaskKind

if TYPE_CHECKING:
    from simpy import Event


class FwdLLMProtocol(Protocol):
    name = "fwdllm"
    task_kind = TaskKind.FORWARD_GRADIENT
    paper_name = "FwdLLM"

    def cohort_size(self, server: StepServer) -> int:
        """Devices asked per round: the policy's choice (over-commit asks more)."""
        return int(server.ctx.policy.cohort_size(self.cfg.devices_per_step))

    def batches_in_round(self, server: StepServer, cohort: np.ndarray) -> int:
        if self.cfg.batches_per_round is not None:
            return self.cfg.batches_per_round
        counts = [server.engine.batches_per_client(server.client_of(d)) for d in cohort.tolist()]
        return max(min(counts), 1) if counts else 1

    def steps_per_round(self, server: StepServer) -> tuple[int, int]:
        """A round takes one step per batch index (:meth:`batches_in_round`):
        ``protocol.batches_per_round`` when set, else the fewest local batches among the
        cohort's clients, which lies between the fewest and the most local batches of
        the clients an eligible device can serve (the data plan's ``batches_per_client``)."""
        if self.cfg.batches_per_round is not None:
            return (self.cfg.batches_per_round, self.cfg.batches_per_round)
        engine = server.engine
        clients = np.unique(server.eligible_ids() % max(engine.num_clients(), 1))
        counts = [max(engine.batches_per_client(int(c)), 1) for c in clients.tolist()]
        if not counts:
            return (1, 1)
        return (min(counts), max(counts))

    def expected_round_seconds(self, server: StepServer, n_batches: int) -> float:
        # What a cohort selector may plan with: a median device's step time × steps.
        ids = server.candidates()
        if len(ids) == 0:
            return 0.0
        sample = ids[:: max(len(ids) // 256, 1)]
        v = server.view(sample, "estimate")
        quota = self.cfg.perturbations_per_device
        per_step = np.median(v.unit_seconds * quota + v.transfer_seconds + v.setup_seconds)
        return float(per_step) * n_batches

    def step_context(self, server: StepServer) -> StepContext:
        return StepContext(
            step=server.step,
            round=server.round,
            perturbations_per_device=self.cfg.perturbations_per_device,
            devices_per_step=self.cfg.devices_per_step,
            deadline_s=self.cfg.commit.deadline_s,
            variance_threshold=self.cfg.variance.threshold,
            history=list(server.history),
        )

    def allocate(self, server: StepServer, cohort: np.ndarray) -> Allocation:
        ids = np.intersect1d(cohort, server.candidates())
        return server.ctx.policy.allocate(server.view(ids, "allocate"), self.step_context(server))

    def aggregate(
        self, server: StepServer, step: int, work, previous: Optional[StepEstimate]
    ) -> StepEstimate:
        return server.engine.forward_gradient(step, work, previous)

    def run(self, server: StepServer) -> Generator:
        rec = server.ctx.recorder
        while server.round < self.cfg.rounds and not server.finished():
            guess = self.batches_in_round(server, server.candidates()[: self.cfg.devices_per_step])
            cohort = yield from server.select_cohort(
                self.cohort_size(server), self.expected_round_seconds(server, guess)
            )
            if len(cohort) == 0:
                server.gave_up = "no_devices_online"
                break  # nobody will come online again within the horizon
            n_batches = self.batches_in_round(server, cohort)
            rec.events.add(server.env.now, -1, "round_start", detail=f"round={server.round} "
                           f"cohort={len(cohort)} batches={n_batches}")
            for b in range(n_batches):
                if server.finished():
                    break
                ok = yield from self.one_step(server, cohort, b)
                if not ok:
                    break  # the cohort went away: end the round early, draw a new one
            rec.events.add(server.env.now, -1, "round_end", detail=f"round={server.round}")
            if not self.cfg.eval_every_steps and not self.cfg.eval_every_s:
                evaluation = server.evaluate()
                rec.attach_evaluation(evaluation)
            server.round += 1

    def one_step(self, server: StepServer, cohort: np.ndarray, batch_index: int) -> Generator:
        """Run one server step to its commit; False when it had to be given up."""
        rec = server.ctx.recorder
        gate = self.cfg.variance
        lr = server.lr_at(server.step)
        estimate: Optional[StepEstimate] = None
        attempt = 0
        outcome = None
        waiting_since: Optional[float] = None
        while True:
            allocation = self.allocate(server, cohort)
            if allocation.total <= 0:
                if server.finished() or len(allocation.device_ids):
                    # Online cohort devices got no work (e.g. none fits the deadline):
                    # give the round up rather than spin; a new cohort is drawn.
                    return False
                # No cohort device can work now: wait until one comes online or finishes its
                # carried work, for at most wait_offline_s in all.
                if waiting_since is None:
                    waiting_since = float(server.env.now)
                wait = self._wait_for_cohort(server, cohort, waiting_since)
                if wait is None:
                    return False
                yield wait
                continue
            waiting_since = None
            rec.events.add(server.env.now, -1, "step_start", step=server.step,
                           units=allocation.total, detail=f"attempt={attempt}")
            outcome = yield from server.execute(allocation, batch_index, attempt)
            work = server.to_work(outcome.receipts + outcome.late)
            if not work:
                attempt += 1
                if attempt > self.cfg.variance.max_repeats + 3:
                    return False  # repeatedly nothing delivered: give the step up
                continue
            seen = len(estimate.extra.get("skipped", [])) if estimate is not None else 0
            estimate = self.aggregate(server, server.step, work, estimate)
            for item in estimate.extra.get("skipped", [])[seen:]:
                dev = item["device_id"] if isinstance(item, dict) else item
                reason = item.get("reason", "") if isinstance(item, dict) else ""
                rec.events.add(server.env.now, int(dev), "numerical_fault", step=server.step,
                               detail=f"non-finite {reason} skipped (numerics.on_nonfinite: skip)")
            outcome_of_gate = self.gate(server, estimate, attempt)
            if outcome_of_gate in ("rolled_back", "too_few") and attempt < gate.max_repeats:
                server.record_step(outcome, estimate, attempt, committed=False, lr=lr,
                                   variance_gate=outcome_of_gate)
                rec.events.add(server.env.now, -1, "step_rollback", step=server.step,
                               units=estimate.n_perturbations,
                               detail=f"variance={estimate.variance:.6g} "
                               f"threshold={gate.threshold:.6g} attempt={attempt} "
                               f"gate={outcome_of_gate}")
                attempt += 1
                continue
            if outcome_of_gate in ("too_few", "not_computed"):
                rec.events.add(server.env.now, -1, "variance_unchecked", step=server.step,
                               units=estimate.n_perturbations,
                               detail=f"gate={outcome_of_gate} perturbations="
                               f"{estimate.n_perturbations} attempt={attempt}")
            break
        server.engine.apply(estimate, lr)
        server.note_commit(estimate.n_perturbations)
        rec.events.add(server.env.now, -1, "step_commit", step=server.step,
                       units=estimate.n_perturbations, detail=f"attempts={attempt + 1}")
        server.history.append((float(estimate.variance), attempt))
        server.ctx.policy.observe(self.step_context(server), float(estimate.variance), attempt)
        evaluation = None
        if self.cfg.eval_every_steps and (server.step + 1) % self.cfg.eval_every_steps == 0:
            evaluation = server.evaluate()
        server.record_step(outcome, estimate, attempt, committed=True, lr=lr, evaluation=evaluation,
                           variance_gate=outcome_of_gate)
        server.step += 1
        return True

    def gate(self, server: StepServer, estimate: StepEstimate, attempt: int) -> str:
        """What the variance gate makes of the pooled estimate of this attempt (one of
        :data:`fleetsim.record.schema.VARIANCE_GATE_OUTCOMES`).

        FwdLLM's server asks for more perturbations while the statistic exceeds the
        threshold (``FedSgdServerManager.py`` line 68 of UbiquitousLearning/FwdLLM); its
        statistic needs two forward gradients (one per half).  With fewer the gate cannot
        be evaluated: ``too_few``, which asks for more perturbations like a failed check
        (at most ``max_repeats`` times) and otherwise commits, logged as a
        ``variance_unchecked`` event.  A statistic that is NaN although two were pooled
        (systems-only numerics compute none) is ``not_computed``: committed, logged."""
        gate = self.cfg.variance
        if not gate.enabled:
            return "off"
        if estimate.n_perturbations < 2:
            return "too_few"
        if not math.isfinite(estimate.variance):
            return "not_computed"
        if estimate.variance <= gate.threshold:
            return "passed"
        return "rolled_back" if attempt < gate.max_repeats else "over_threshold"

    def _wait_for_cohort(
        self, server: StepServer, cohort: np.ndarray, waiting_since: float
    ) -> Optional[Event]:
        """An event that fires when a cohort device may be able to work: the next time an
        offline one comes online, or carried work of a busy one arrives; None when neither
        can happen before ``protocol.commit.wait_offline_s`` has passed since
        ``waiting_since`` (the round is then given up and a new cohort drawn)."""
        env, now = server.env, float(server.env.now)
        left = waiting_since + self.cfg.commit.wait_offline_s - now
        if left <= 0:
            return None
        busy = server.fleet.busy_ids()
        idle = np.setdiff1d(np.intersect1d(cohort, server.eligible_ids()), busy)
        starts = server.fleet.availability.next_start(idle, now) if len(idle) else idle
        starts = starts[np.isfinite(starts) & (starts > now)]
        waits = []
        if len(starts) and float(starts.min()) - now <= left:
            waits.append(env.timeout(float(starts.min()) - now))
        carried = server.carried_events(cohort)
        if carried:
            waits += carried + [env.timeout(left)]
        return env.any_of(waits) if waits else None
