"""What a protocol author writes: the hooks of a server strategy.

A protocol (Flower's ``Strategy``) says what differs between federated algorithms:
what a device runs (:attr:`Protocol.task_kind`, :meth:`Protocol.inferences_per_unit`),
what goes down and up the wire (:meth:`Protocol.download_payload`,
:meth:`Protocol.upload_fn`: one documented pair per protocol), and its round loop
(:meth:`Protocol.run`: when a step starts, whom it asks, how estimates are
aggregated).  Everything every protocol needs done the same way (eligible devices,
cohorts, dispatch, commit rules, carried work, step rows) is the
:class:`~fleetsim.protocols.server.StepServer`'s, handed to each hook as ``server``.
New protocols register through the ``fleetsim.protocols`` entry-point group.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Generator
from typing import TYPE_CHECKING

import numpy as np

from fleetsim.protocols.config import ProtocolConfig
from fleetsim.workload import TaskKind

if TYPE_CHECKING:
    from fleetsim.protocols.server import StepServer


class Protocol(ABC):
    """Base of every server strategy: the hooks, with FwdLLM's choices as defaults."""

    name: str = ""
    #: what devices run: forward-gradient perturbations or backprop steps
    task_kind: TaskKind = TaskKind.FORWARD_GRADIENT

    def __init__(self, config: ProtocolConfig) -> None:
        self.cfg = config

    @abstractmethod
    def run(self, server: StepServer) -> Generator:
        """The protocol's round loop, a SimPy generator driving ``server``."""

    def check(self, server: StepServer) -> None:
        """Refuse settings this protocol cannot honour (raise FleetsimInputError naming the
        key); called once when the server is built."""
        return None

    def steps_per_round(self, server: StepServer) -> tuple[int, int]:
        """(fewest, most) committed steps one round takes when nothing cuts it short
        (what ``protocol.lr_schedule`` plans with, :meth:`StepServer.step_plan`).  This
        default: one committed step per round (FedAvg: a round is one aggregation)."""
        return (1, 1)

    @classmethod
    def uses_finite_differences(cls) -> bool:
        """Whether devices difference perturbed forwards (so ``numerics.h`` matters)."""
        return cls.task_kind is TaskKind.FORWARD_GRADIENT

    def inferences_per_unit(self) -> float:
        """Forward passes a phone runs per unit (``protocol.phone_estimator``): central
        differences 2, one-sided 1, jvp ``jvp_cost_factor``."""
        mode = self.cfg.phone_estimator
        if mode == "central":
            return 2.0
        if mode == "jvp":
            return self.cfg.jvp_cost_factor
        return 1.0

    def setup_inferences_per_task(self) -> float:
        """Forward passes a phone runs once per task before its first unit: one-sided
        differences need the base loss L(θ) of the task's batch (one inference); central
        differences and jvp need none."""
        if self.task_kind is TaskKind.FORWARD_GRADIENT and self.cfg.phone_estimator == "onesided":
            return 1.0
        return 0.0

    def download_payload(self, server: StepServer, device_ids: np.ndarray) -> np.ndarray:
        """Bytes each device downloads before computing for the current step, shape
        ``(len(device_ids),)``.

        FwdLLM (this default): ``protocol.download: dense`` — the fp32 trainable vector
        (4 × trainable parameters), or nothing when the device already holds θ of this
        step (a variance repeat); ``seeds`` — 12 bytes per (seed, scalar) pair of every
        committed step the device has not applied (``StepServer.seed_download``)."""
        if self.cfg.download == "seeds":
            return server.seed_download(device_ids)
        return server.dense_download(device_ids)

    def upload_fn(self, server: StepServer) -> Callable[[int], int]:
        """Bytes a device uploads for ``units`` delivered units.

        FwdLLM (this default): ``protocol.upload: dense`` — its averaged estimate as one
        fp32 trainable vector whatever the number of units, nothing for 0; ``seeds`` — a
        64-bit seed and an fp32 scalar (12 bytes) per perturbation."""
        if self.cfg.upload == "seeds":
            return server.seed_upload()
        return server.dense_upload()
