"""FedSGD with backprop: the same step structure as FwdLLM, but each device runs one
backprop step on its local batch and uploads the dense gradient.  Backprop runs
on CPU/GPU only and needs backprop memory, so phones whose RAM cannot hold it
are refused by the fleet (logged) and drop out."""

from __future__ import annotations

from collections.abc import Callable
from typing import Optional

import numpy as np

from fleetsim.numerics_api import StepEstimate
from fleetsim.policies.base import Allocation
from fleetsim.protocols.fwdllm import FwdLLMProtocol
from fleetsim.protocols.server import StepServer
from fleetsim.workload import TaskKind


class FedSGDProtocol(FwdLLMProtocol):
    name = "fedsgd"
    task_kind = TaskKind.BACKPROP

    def inferences_per_unit(self) -> float:
        return 1.0  # a unit is one backprop step; the latency model prices it

    def download_payload(self, server: StepServer, device_ids: np.ndarray) -> np.ndarray:
        """The dense fp32 trainable vector (4 × trainable parameters); nothing for a device
        that already holds θ of this step."""
        return server.dense_download(device_ids)

    def upload_fn(self, server: StepServer) -> Callable[[int], int]:
        """The device's exact gradient: one dense fp32 trainable vector (0 for no work)."""
        return server.dense_upload()

    def allocate(self, server: StepServer, cohort: np.ndarray) -> Allocation:
        ids = np.intersect1d(cohort, server.candidates())
        return Allocation(ids, np.ones(len(ids), dtype=np.int64))

    def aggregate(
        self, server: StepServer, step: int, work, previous: Optional[StepEstimate]
    ) -> StepEstimate:
        # Exact gradients need no variance repeats; pooling keeps the interface uniform.
        estimate = server.engine.backprop_gradient(step, work)
        return estimate if previous is None else server.engine.average([previous, estimate])
