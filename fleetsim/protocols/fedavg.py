"""FedAvg with backprop and LoRA: each round, every cohort device runs
``local_epochs`` passes of local SGD (backprop) over its local batches and uploads
its trainable (adapter) weights; the server averages the deltas and applies
them with the server learning rate (1.0 = plain FedAvg).  One committed step per
round.  Devices whose RAM cannot hold backprop are refused by the fleet."""

from __future__ import annotations

from collections.abc import Callable, Generator

import numpy as np

from fleetsim.errors import FleetsimInputError
from fleetsim.policies.base import Allocation
from fleetsim.protocols.base import Protocol
from fleetsim.protocols.server import StepServer
from fleetsim.workload import TaskKind


class FedAvgProtocol(Protocol):
    name = "fedavg"
    task_kind = TaskKind.BACKPROP

    def inferences_per_unit(self) -> float:
        return 1.0

    def check(self, server: StepServer) -> None:
        if self.cfg.commit.staleness_weighting != "none":
            raise FleetsimInputError(
                "protocol.commit.staleness_weighting: fedavg averages whole-model deltas per "
                "device and supports only 'none' (allowed here: none)"
            )

    def download_payload(self, server: StepServer, device_ids: np.ndarray) -> np.ndarray:
        """The dense fp32 adapter (trainable) weights, 4 × trainable parameters; nothing for
        a device that already holds θ of this round's step."""
        return server.dense_download(device_ids)

    def upload_fn(self, server: StepServer) -> Callable[[int], int]:
        """The device's locally trained adapter weights: one dense fp32 trainable vector."""
        return server.dense_upload()

    def local_batches(self, server: StepServer, device_id: int) -> list[int]:
        n = server.engine.batches_per_client(server.client_of(device_id))
        if self.cfg.batches_per_round is not None:
            n = min(n, self.cfg.batches_per_round)
        return list(range(max(n, 1))) * self.cfg.local_epochs

    def run(self, server: StepServer) -> Generator:
        rec = server.ctx.recorder
        while server.round < self.cfg.rounds and not server.finished():
            cohort = yield from server.select_cohort(self.cfg.devices_per_step, 0.0)
            if len(cohort) == 0:
                server.gave_up = "no_devices_online"
                break
            rec.events.add(server.env.now, -1, "round_start", detail=f"round={server.round} "
                           f"cohort={len(cohort)}")
            ids = np.intersect1d(cohort, server.candidates())
            quotas = np.array([len(self.local_batches(server, d)) for d in ids.tolist()],
                              dtype=np.int64)
            allocation = Allocation(ids, quotas)
            lr = server.lr_at(server.step)
            rec.events.add(server.env.now, -1, "step_start", step=server.step,
                           units=allocation.total)
            outcome = yield from server.execute(allocation, batch_index=0, attempt=0)
            deltas = []
            # Late work from an earlier round trains from that round's θ (stale).
            for w in sorted(server.to_work(outcome.receipts + outcome.late),
                            key=lambda w: w.device_id):
                batches = self.local_batches(server, w.device_id)[: len(w.perturbations)]
                deltas.append(
                    server.engine.local_train(
                        server.step, w.device_id, w.client_id, batches, lr, source_step=w.step
                    )
                )
            estimate = None
            if deltas:
                estimate = server.engine.average(deltas)
                server.engine.apply(estimate, self.cfg.lr)
                rec.events.add(server.env.now, -1, "step_commit", step=server.step,
                               units=sum(d.n_perturbations for d in deltas))
            rec.events.add(server.env.now, -1, "round_end", detail=f"round={server.round}")
            evaluation = None if self.cfg.eval_every_s else server.evaluate()
            server.record_step(outcome, estimate, 0, committed=estimate is not None, lr=lr,
                               evaluation=evaluation)
            if estimate is not None:
                server.step += 1
            server.round += 1
