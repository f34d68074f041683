"""FedSGD with backprop (McMahan et al., 2017): the same step structure as FwdLLM, but
each device runs one backprop step on its local batch and uploads the dense gradient;
the server steps with ``protocol.lr`` through ``numerics.server_optimizer``.  Backprop
runs on CPU/GPU only and needs backprop memory, so phones whose RAM cannot hold it are
refused by the fleet (logged) and drop out.

FwdLLM's Fig. 10 backprop baselines (Xu et al., arXiv 2308.13894, §5) are FedSGD with
a fixed PEFT, one class each: :class:`AdapterBPProtocol` (bottleneck adapters in every
layer), :class:`BitFitBPProtocol` (biases only), :class:`FullBPProtocol` (every
parameter).  Each fixes ``peft`` (refusing a contradicting setting); cost, memory and
payload follow from that PEFT like any run's (paper profile: 4.1634, 4.1634 and
6.939 s per batch of 8 on DistilBERT, ``traces/latency.py``)."""

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
    paper_name = "FedSGD"

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


class AdapterBPProtocol(FedSGDProtocol):
    """Adapter-BP: FedSGD over backprop with bottleneck adapters after every layer's
    feed-forward output (FwdLLM Fig. 10; width ``peft.rank``, default 48 as the paper:
    450,340 trainable on DistilBERT with the 4-class head)."""

    name = "adapter_bp"
    paper_name = "Adapter-BP"
    peft_required = {"method": "adapter", "layers": None, "top_layers": None}
    peft_defaults = {"rank": 48}
    peft_reason = "trains bottleneck adapters in every layer"


class BitFitBPProtocol(FedSGDProtocol):
    """BitFit-BP: FedSGD over backprop training the bias terms of every layer (and the
    head) only (FwdLLM Fig. 10; BitFit: Ben Zaken et al., ACL 2022)."""

    name = "bitfit_bp"
    paper_name = "BitFit-BP"
    peft_required = {"method": "bitfit", "layers": None, "top_layers": None}
    peft_reason = "trains the biases of every layer"


class FullBPProtocol(FedSGDProtocol):
    """Full-BP: FedSGD over backprop training every parameter, embeddings included
    (FwdLLM Fig. 10)."""

    name = "full_bp"
    paper_name = "Full-BP"
    peft_required = {"method": "full", "layers": None, "top_layers": None}
    peft_reason = "trains every parameter"
