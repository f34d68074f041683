"""FedAvg (McMahan et al., 2017) with backprop, and its FedOpt generalisation (Reddi et
al., 2021, "Adaptive Federated Optimization"): each round every cohort device runs
``local_epochs`` passes of local SGD (backprop) over its local batches with the client
learning rate η_l (``protocol.client_lr``) and uploads its trainable weights; the server
averages the deltas Δ = θ − θ_local and applies them through ``numerics.server_optimizer``
with the server learning rate η (``protocol.server_lr``): SGD at η = 1.0 moves θ to the
clients' average (McMahan's FedAvg), Adam gives FedAdam, heavy-ball momentum FedAvgM
(Hsu et al., 2019), each so named in every output.  One committed step per round.
Devices whose RAM cannot hold backprop are refused by the fleet.

``protocol.lr`` is the server step size of the FedSGD-type protocols; FedAvg refuses any
value other than its default (a FedAvg configuration names its two rates).  The server
rate defaults to 1.0 with SGD only: FedAdam and FedAvgM need ``protocol.server_lr``.
``protocol.lr_schedule`` scales the client rate; the steps table's ``lr`` column records
the client rate of each round.

:class:`FedAdapterProtocol` is FedAdapter (Cai et al., MobiCom 2022) as FwdLLM's Fig. 10
runs it: FedAvg over bottleneck adapters in the top layers only, server SGD at 1.0."""

from __future__ import annotations

from collections.abc import Callable, Generator
from typing import Any, Optional

import numpy as np

from fleetsim.errors import FleetsimInputError
from fleetsim.policies.base import Allocation
from fleetsim.protocols.base import Protocol
from fleetsim.protocols.config import (
    DEFAULT_CLIENT_LR,
    DEFAULT_LR,
    DEFAULT_SERVER_LR,
    ProtocolConfig,
)
from fleetsim.protocols.server import StepServer
from fleetsim.workload import TaskKind

#: FedAvg's name by server optimiser (numerics.server_optimizer.name): FedOpt's family.
FEDOPT_NAMES = {"sgd": "FedAvg", "adam": "FedAdam", "momentum": "FedAvgM"}


class FedAvgProtocol(Protocol):
    name = "fedavg"
    task_kind = TaskKind.BACKPROP
    paper_name = "FedAvg"
    two_learning_rates = True

    @classmethod
    def method_label(cls, cfg: ProtocolConfig, server_optimizer: str) -> str:
        """FedAvg, FedAdam or FedAvgM by the server optimiser (FedOpt's names)."""
        if cls.__dict__.get("paper_name") == "FedAvg":
            return FEDOPT_NAMES.get(server_optimizer, f"FedAvg (server {server_optimizer})")
        return super().method_label(cfg, server_optimizer)

    @classmethod
    def config_problem(cls, cfg: ProtocolConfig, server_optimizer: str) -> Optional[str]:
        """``protocol.lr`` set to anything but its default is ambiguous here: refused."""
        if cfg.lr != DEFAULT_LR:
            return (
                f"protocol.lr: {cls.name} has two learning rates (FedOpt, Reddi et al. "
                "2021): protocol.client_lr for the devices' local SGD (default "
                f"{DEFAULT_CLIENT_LR:g}) and protocol.server_lr for the server step on the "
                f"averaged delta (default {DEFAULT_SERVER_LR:g} = weight averaging); "
                "allowed: leave protocol.lr unset and set those"
            )
        if server_optimizer != "sgd" and cfg.server_lr is None:
            # 1.0 is SGD's weight averaging; an adaptive server step has no such default
            return (
                f"protocol.server_lr: {cls.method_label(cfg, server_optimizer)} "
                f"({cls.name} with numerics.server_optimizer {server_optimizer}) has no "
                f"default server step size ({DEFAULT_SERVER_LR:g} is SGD's weight "
                "averaging; Reddi et al. 2021 tune η per task, e.g. 0.01 for FedAdam); "
                "allowed: a positive number"
            )
        return None

    def client_lr(self) -> float:
        """η_l before ``protocol.lr_schedule``."""
        return self.cfg.client_lr if self.cfg.client_lr is not None else DEFAULT_CLIENT_LR

    def server_lr(self) -> float:
        """η, the server optimiser's step size on the averaged delta."""
        return self.cfg.server_lr if self.cfg.server_lr is not None else DEFAULT_SERVER_LR

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
            # protocol.lr_schedule's factor at this step, applied to the client rate
            lr = self.client_lr() * server.lr_at(server.step) / self.cfg.lr
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
                server.engine.apply(estimate, self.server_lr())
                rec.events.add(server.env.now, -1, "step_commit", step=server.step,
                               units=sum(d.n_perturbations for d in deltas))
            rec.events.add(server.env.now, -1, "round_end", detail=f"round={server.round}")
            evaluation = None if self.cfg.eval_every_s else server.evaluate()
            server.record_step(outcome, estimate, 0, committed=estimate is not None, lr=lr,
                               evaluation=evaluation)
            if estimate is not None:
                server.step += 1
            server.round += 1


class FedAdapterProtocol(FedAvgProtocol):
    """FedAdapter (Cai et al., "FedAdapter: Efficient Federated Learning for Modern NLP",
    MobiCom 2022) as FwdLLM's Fig. 10 baseline: FedAvg over bottleneck adapters in the
    top ``peft.top_layers`` layers only (default 2, width ``peft.rank`` default 48: on
    DistilBERT 152,164 trainable with the head), server SGD at 1.0 (weight averaging).
    Backprop stops at the lowest adapted layer, which is what makes it cheap
    (paper profile: 1.3878 s per batch of 8 on DistilBERT, ``traces/latency.py``).

    Left out: FedAdapter's progressive search over adapter depth and width (its
    trial groups and configuration upgrades during training) and its activation cache;
    the depth and width are fixed for the run."""

    name = "fedadapter"
    paper_name = "FedAdapter"
    peft_required = {"method": "adapter", "layers": None}
    peft_defaults = {"top_layers": 2, "rank": 48}
    peft_reason = "trains bottleneck adapters in the top peft.top_layers layers only"

    @classmethod
    def config_problem(cls, cfg: ProtocolConfig, server_optimizer: str) -> Optional[str]:
        if server_optimizer != "sgd":
            return (
                f"numerics.server_optimizer.name: fedadapter averages the devices' weights "
                f"(server SGD at 1.0); got {server_optimizer!r}; allowed: sgd (or protocol "
                "fedavg for FedAdam/FedAvgM)"
            )
        if cfg.server_lr is not None and cfg.server_lr != DEFAULT_SERVER_LR:
            return (
                f"protocol.server_lr: fedadapter averages the devices' weights (server SGD "
                f"at {DEFAULT_SERVER_LR:g}); allowed: {DEFAULT_SERVER_LR:g} (or protocol "
                "fedavg for other server rates)"
            )
        return super().config_problem(cfg, server_optimizer)

    @classmethod
    def peft_preset(
        cls, peft: dict[str, Any], explicitly_set: set[str]
    ) -> tuple[dict[str, Any], Optional[str]]:
        fills, problem = super().peft_preset(peft, explicitly_set)
        if problem is None and {**peft, **fills}.get("top_layers") is None:
            return {}, (
                "peft.top_layers: protocol fedadapter (FedAdapter) trains adapters in the "
                "top layers only; allowed: a number of top layers (paper: 2)"
            )
        return fills, problem
