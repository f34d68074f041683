"""The shared vocabulary of the simulated side and the numerics: plain data, no torch.

What a job is (its kind), where a phone runs it (its backend) and what the model
costs (:class:`ModelFacts`) are defined here once; ``fleet/``, ``traces/``,
``record/``, ``policies/`` and ``protocols/`` take them from here and import nothing
from ``numerics/`` (tested by ``tests/test_layering.py``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum
from typing import Optional

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


#: PEFT methods the memory model knows (``PeftFacts.method``): ``full`` = every parameter
#: trains (Full-BP); ``head_only`` = only what sits above the transformer layers.
PEFT_METHODS: tuple[str, ...] = ("lora", "adapter", "bitfit", "head_only", "full")


@dataclass(frozen=True)
class PeftFacts:
    """Where the trainable parameters sit: what the memory model needs to know about the
    PEFT, as plain numbers (derived from the model's ``requires_grad`` flags by
    ``fleetsim.numerics.facts.peft_facts``; ``traces/memory.py`` reads them).

    ``layers``: indices (ascending, 0 = the layer next to the embeddings) of the
    transformer layers holding trainable tensors; ``embeddings_trainable``: whether the
    embeddings train (full fine-tuning); ``trainable_per_layer``: trainable parameters of
    the embeddings, of each layer and of what sits above the layers (final norm, head),
    length ``n_layers + 2``; ``rank``: LoRA rank or adapter bottleneck width (0 for the
    others); ``lora_targets``: paths, inside a layer, of the projections LoRA adapts in
    each of ``layers`` (Hugging Face module names, e.g. ``("attention.self.query",
    "attention.self.value")`` for BERT, ``("self_attn.q_proj", "self_attn.v_proj")`` for
    LLaMA)."""

    method: str
    layers: tuple[int, ...]
    trainable_per_layer: tuple[int, ...]
    embeddings_trainable: bool = False
    rank: int = 0
    lora_targets: tuple[str, ...] = ()

    def lowest_trainable_layer(self, n_layers: int) -> int:
        """-1 when the embeddings train, else the lowest of ``layers``, else ``n_layers``
        (only the final norm / head trains): the layer from which activations are kept."""
        if self.embeddings_trainable:
            return -1
        return min(self.layers) if self.layers else n_layers


@dataclass
class ModelFacts:
    """What the simulated side needs to know about the model: plain numbers.

    ``family``: ``bert`` (post-norm encoder, GELU feed-forward with biases) or ``llama``
    (pre-RMSNorm decoder, gated SiLU feed-forward, rotary positions, no biases): the
    memory model's layer structure ("" = not known: the memory model refuses).
    ``n_heads`` / ``n_kv_heads``: attention heads and key/value heads (grouped-query
    attention when fewer).  ``num_labels``: outputs of the
    classification head.  ``peft``: where the trainable parameters sit (None: not known,
    e.g. facts from a bare config; the memory model then refuses)."""

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
    family: str = ""
    n_heads: int = 0
    n_kv_heads: int = 0
    num_labels: int = 0
    peft: Optional[PeftFacts] = field(default=None)
    #: 0-based index of the lowest transformer layer with a trainable parameter (0 when
    #: the embeddings train too; ``n_layers`` when only the head trains): backprop's
    #: backward pass stops there (FedAdapter's top-layer adapters)
    lowest_trainable_layer: int = 0
