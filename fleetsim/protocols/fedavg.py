"""FedAvg with backprop and LoRA: each round, every cohort device runs
``local_epochs`` passes of local SGD (backprop) over its local batches and uploads
its trainable (adapter) weights; the server averages the deltas and applies
them with the server learning rate (1.0 = plain FedAvg).  One committed step per
round.  Devices whose RAM cannot hold backprop are refused by the fleet."""

from __future__ import annotations

from collections.abc import Callable, Generator

import numpy as np

from fleetsim.fleet.work import TaskKind
from fleetsim.policies.base import Allocation
from fleetsim.protocols.base import Protocol


class FedAvgProtocol(Protocol):
    name = "fedavg"
    task_kind = TaskKind.BACKPROP

    def inferences_per_unit(self) -> float:
        return 1.0

    def __init__(self, ctx) -> None:
        super().__init__(ctx)
        if self.cfg.commit.staleness_weighting != "none":
            from fleetsim.errors import FleetsimInputError

            raise FleetsimInputError(
                "protocol.commit.staleness_weighting: fedavg averages whole-model deltas per "
                "device and supports only 'none' (allowed here: none)"
            )

    def download_payload(self, device_ids: np.ndarray) -> np.ndarray:
        """The dense fp32 adapter (trainable) weights, 4 × trainable parameters; nothing for
        a device that already holds θ of this round's step."""
        return self.dense_download(device_ids)

    def upload_fn(self) -> Callable[[int], int]:
        """The device's locally trained adapter weights: one dense fp32 trainable vector."""
        dense = self.trainable_bytes()
        return lambda units: dense if units > 0 else 0

    def local_batches(self, device_id: int) -> list[int]:
        n = self.engine.batches_per_client(self.client_of(device_id))
        if self.cfg.batches_per_round is not None:
            n = min(n, self.cfg.batches_per_round)
        return list(range(max(n, 1))) * self.cfg.local_epochs

    def run(self) -> Generator:
        rec = self.ctx.recorder
        while self.round < self.cfg.rounds and not self.finished():
            cohort = yield from self.select_cohort(self.cfg.devices_per_step, 0.0)
            if len(cohort) == 0:
                self.gave_up = "no_devices_online"
                break
            rec.events.add(self.env.now, -1, "round_start", detail=f"round={self.round} "
                           f"cohort={len(cohort)}")
            ids = np.intersect1d(cohort, self.candidates())
            quotas = np.array([len(self.local_batches(d)) for d in ids.tolist()], dtype=np.int64)
            allocation = Allocation(ids, quotas)
            lr = self.lr_at(self.step)
            rec.events.add(self.env.now, -1, "step_start", step=self.step, units=allocation.total)
            outcome = yield from self.execute(allocation, batch_index=0, attempt=0)
            deltas = []
            # Late work from an earlier round trains from that round's θ (stale).
            for w in sorted(self.to_work(outcome.receipts + outcome.late),
                            key=lambda w: w.device_id):
                batches = self.local_batches(w.device_id)[: len(w.perturbations)]
                deltas.append(
                    self.engine.local_train(
                        self.step, w.device_id, w.client_id, batches, lr, source_step=w.step
                    )
                )
            estimate = None
            if deltas:
                estimate = self.engine.average(deltas)
                self.engine.apply(estimate, self.cfg.lr)
                rec.events.add(self.env.now, -1, "step_commit", step=self.step,
                               units=sum(d.n_perturbations for d in deltas))
            rec.events.add(self.env.now, -1, "round_end", detail=f"round={self.round}")
            evaluation = self.evaluate()
            self.record_step(outcome, estimate, 0, committed=estimate is not None, lr=lr,
                             evaluation=evaluation)
            if estimate is not None:
                self.step += 1
            self.round += 1
