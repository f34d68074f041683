"""What a protocol author writes: the hooks of a server strategy.

A protocol (Flower's ``Strategy``) says what differs between federated algorithms:
what a device runs (:attr:`Protocol.task_kind`, :meth:`Protocol.inferences_per_unit`),
what goes down and up the wire (:meth:`Protocol.download_payload`,
:meth:`Protocol.upload_fn`: one documented pair per protocol), and its round loop
(:meth:`Protocol.run`: when a step starts, whom it asks, how estimates are
aggregated).  Everything every protocol needs done the same way (eligible devices,
cohorts, dispatch, commit rules, carried work, step rows) is the
:class:`~fleetsim.protocols.server.StepServer`'s, handed to each hook as ``server``.
The hooks here are typed with :class:`~fleetsim.protocols.payload.ServerView`, the
part of the server their defaults read (this module never imports the server);
strategies that drive the server further annotate it as ``StepServer``.
New protocols register through the ``fleetsim.protocols`` entry-point group.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Generator
from typing import Any, Optional

import numpy as np

from fleetsim.protocols import payload
from fleetsim.protocols.config import ProtocolConfig
from fleetsim.protocols.payload import ServerView
from fleetsim.workload import TaskKind


class Protocol(ABC):
    """Base of every server strategy: the hooks, with FwdLLM's choices as defaults."""

    name: str = ""
    #: what devices run: forward-gradient perturbations or backprop steps
    task_kind: TaskKind = TaskKind.FORWARD_GRADIENT
    #: the method's name in its paper, used in every output (summary.json ``method``,
    #: ``fleetsim report``/``compare``); read from the class itself, never inherited, so
    #: a subclass that sets none is named by its registered ``name``
    paper_name: str = ""
    #: FedOpt's two learning rates (protocol.client_lr, protocol.server_lr) instead of
    #: the one server step size protocol.lr
    two_learning_rates: bool = False
    #: scenario ``peft`` settings that define the method (key → value): a scenario that
    #: sets one otherwise is refused, one that leaves it unset gets it
    peft_required: dict[str, Any] = {}
    #: ``peft`` settings of the method's paper, filled in when the scenario leaves them
    #: unset (an explicit value is kept)
    peft_defaults: dict[str, Any] = {}
    #: what the PEFT of a preset is, for error messages
    peft_reason: str = ""

    def __init__(self, config: ProtocolConfig) -> None:
        self.cfg = config

    @classmethod
    def method_label(cls, cfg: ProtocolConfig, server_optimizer: str) -> str:
        """The method's name as its paper gives it (``paper_name``), with what this
        configuration changes about it: a server optimiser other than SGD
        (``"FedSGD (server adam)"``) and seed-only transfers where the protocol's upload
        or download follows ``protocol.upload``/``download`` (``"FwdLLM (seed-only
        upload)"``).  ``server_optimizer``: ``numerics.server_optimizer.name``."""
        label = cls.__dict__.get("paper_name") or cls.name
        if server_optimizer != "sgd":
            label += f" (server {server_optimizer})"
        seeds = []
        if cls.upload_fn is Protocol.upload_fn and cfg.upload == "seeds":
            seeds.append("upload")
        if cls.download_payload is Protocol.download_payload and cfg.download == "seeds":
            seeds.append("download")
        if seeds:
            label += f" (seed-only {' and '.join(seeds)})"
        return label

    @classmethod
    def config_problem(cls, cfg: ProtocolConfig, server_optimizer: str) -> Optional[str]:
        """A one-line refusal (starting with the key) of settings that mean something
        else for this protocol, or None.  One knob per learning rate: protocols with
        one server step size (this default) refuse ``client_lr``/``server_lr``."""
        if cls.two_learning_rates:
            return None
        for key in ("client_lr", "server_lr"):
            if getattr(cfg, key) is not None:
                return (
                    f"protocol.{key}: {cls.name} takes one server step per batch with "
                    "step size protocol.lr; client_lr and server_lr belong to the FedAvg "
                    "family (fedavg, fedadapter); allowed: leave protocol."
                    f"{key} unset (null)"
                )
        return None

    @classmethod
    def peft_preset(
        cls, peft: dict[str, Any], explicitly_set: set[str]
    ) -> tuple[dict[str, Any], Optional[str]]:
        """What the method fixes of the scenario's ``peft`` section.

        ``peft``: the section's values; ``explicitly_set``: the keys the scenario gave.
        Returns (values to fill in, None), or ({}, a one-line refusal naming the key)
        when an explicit setting contradicts :attr:`peft_required`."""
        label = cls.__dict__.get("paper_name") or cls.name
        fills: dict[str, Any] = {}
        for key, value in cls.peft_required.items():
            if key in explicitly_set and peft.get(key) != value:
                allowed = (f"leave peft.{key} unset" if value is None
                           else f"{value!r} (or leave peft.{key} unset)")
                return {}, (
                    f"peft.{key}: protocol {cls.name} ({label}) {cls.peft_reason}; "
                    f"allowed: {allowed}"
                )
            if peft.get(key) != value:
                fills[key] = value
        for key, value in cls.peft_defaults.items():
            if key not in explicitly_set and peft.get(key) != value:
                fills[key] = value
        return fills, None

    @abstractmethod
    def run(self, server: ServerView) -> Generator:
        """The protocol's round loop, a SimPy generator driving ``server``."""

    def check(self, server: ServerView) -> None:
        """Refuse settings this protocol cannot honour (raise FleetsimInputError naming the
        key); called once when the server is built."""
        return None

    def steps_per_round(self, server: ServerView) -> tuple[int, int]:
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

    def pool_seeds(
        self, server: ServerView, step: int, device_id: int, ks: tuple[int, ...]
    ) -> Optional[tuple[int, ...]]:
        """Seed-pool protocols (FedKSeed): the pool index of each perturbation ``ks`` that
        ``device_id`` computed for ``step``, chosen server-side; None (this default): every
        perturbation has its own per-(step, device, k) seed."""
        return None

    def download_payload(self, server: ServerView, device_ids: np.ndarray) -> np.ndarray:
        """Bytes each device downloads before computing for the current step, shape
        ``(len(device_ids),)``.

        FwdLLM (this default): ``protocol.download: dense`` — the fp32 trainable vector
        (4 × trainable parameters), or nothing when the device already holds θ of this
        step (a variance repeat); ``seeds`` — 12 bytes per (seed, scalar) pair of every
        committed step the device has not applied (``StepServer.seed_download``)."""
        if self.cfg.download == "seeds":
            return payload.seed_download(server, device_ids)
        return payload.dense_download(server, device_ids)

    def upload_fn(self, server: ServerView) -> Callable[[int], int]:
        """Bytes a device uploads for ``units`` delivered units.

        FwdLLM (this default): ``protocol.upload: dense`` — its averaged estimate as one
        fp32 trainable vector whatever the number of units, nothing for 0; ``seeds`` — a
        64-bit seed and an fp32 scalar (12 bytes) per perturbation."""
        if self.cfg.upload == "seeds":
            return payload.seed_upload()
        return payload.dense_upload(server)
