"""The shared vocabulary of the simulated side and the numerics: plain data, no torch.

What a job is (its kind), where a phone runs it (its backend) and what the model
costs (:class:`ModelFacts`) are defined here once; ``fleet/``, ``traces/``,
``record/``, ``policies/`` and ``protocols/`` take them from here and import nothing
from ``numerics/`` (tested by ``tests/test_layering.py``).
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum

#: Compute backends of a phone, in the order of preference among equally fast ones
#: (NPU over GPU over CPU), as the latency model breaks ties.
BACKENDS: tuple[str, ...] = ("npu", "gpu", "cpu")

#: Backend settings a scenario may ask for: ``auto`` picks the fastest present backend.
BACKEND_PREFERENCES: tuple[str, ...] = ("auto", *BACKENDS)


class TaskKind(str, Enum):
    """What a device runs for a server step."""

    FORWARD_GRADIENT = "forward_gradient"  # perturbed inferences only (NPU allowed)
    BACKPROP = "backprop"  # local SGD steps with backprop (CPU/GPU only)


#: Kinds of work the latency and memory models price: the task kinds plus plain inference.
JOB_KINDS: tuple[str, ...] = (TaskKind.FORWARD_GRADIENT.value, "inference",
                              TaskKind.BACKPROP.value)


@dataclass
class ModelFacts:
    """What the simulated side needs to know about the model: plain numbers."""

    name: str
    n_params: int  # all parameters (what the phone runs)
    trainable_params: int  # the PEFT subset (drives payload sizes)
    n_layers: int
    hidden_size: int
    flops_per_token: float  # forward FLOPs per token of the full model
    seq_len: int
    batch_size: int
    dtype_bytes: float = 4  # bytes per stored weight (0.5 = INT4)
    vocab_size: int = 0
    intermediate_size: int = 0
    #: 0-based index of the lowest transformer layer with a trainable parameter (0 when
    #: the embeddings train too; ``n_layers`` when only the head trains): backprop's
    #: backward pass stops there (FedAdapter's top-layer adapters)
    lowest_trainable_layer: int = 0
