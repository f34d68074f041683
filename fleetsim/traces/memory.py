"""Memory model: peak bytes of a job on a phone.

Formula (bytes; ``w`` = bytes per weight, ``a`` = activation bytes = 2 for
fp16/int8/int4 runtimes, 4 for fp32; ``b`` batch, ``s`` seq_len, ``h`` hidden,
``L`` layers, ``heads = h/64``, ``T`` trainable params, ``V`` vocabulary)::

    weights      = n_params * w * (1 + RUNTIME_OVERHEAD)
    layer_act    = b * s * h * (34 + 5 * heads * s / h) * a / 2
                   (Korthikanti et al. 2022, "Reducing Activation Recomputation
                   in Large Transformer Models", eq. 1: 16-bit bytes per layer)
    logits       = b * s * V * a   (LM head output; 0 when V = 0)

    inference        = weights + layer_act + logits
    forward_gradient = weights + 2 * layer_act + 2 * logits + 3 * T * 4
                       (forward-mode AD keeps a tangent next to each primal
                       activation of the live layer; fp32 master copy of the
                       trainable weights, the perturbation v and the jvp
                       tangent of the trainable weights)
    backprop         = weights + L * layer_act + logits + T * 4 * 4
                       (every layer's activations stay for the backward pass;
                       fp32 trainable weights, gradients and two Adam moments)

``RUNTIME_OVERHEAD`` = 0.09 is the median ratio of measured llama.cpp INT4 peak
memory to INT4 weight bytes (4.5 bits/weight with block scales) over the 27
TinyLLMLeaderBoard LLMs (see device_traces/catalogue/PROVENANCE.md).  The
FwdLLM paper's LLaMA-7B figures (FP16 15.6 GB, INT8 7.9 GB, INT4 4.0 GB) are a
check of the result, not an input.
"""

from __future__ import annotations

from fleetsim.errors import FleetsimInputError
from fleetsim.workload import JOB_KINDS, ModelFacts

#: effective bytes per weight: int8/int4 carry one fp16 scale per 32 weights (GGUF q8_0/q4_0)
BYTES_PER_WEIGHT = {1: 34 / 32, 2: 2.0, 4: 4.0}
INT4_BYTES_PER_WEIGHT = 18 / 32
RUNTIME_OVERHEAD = 0.09
PEFT_KINDS = ("lora", "adapter", "bitfit", "prefix", "head_only", "full", "none")


def weight_bytes_per_param(dtype_bytes: float) -> float:
    """Bytes per stored weight for ``ModelFacts.dtype_bytes`` (0.5 = INT4)."""
    if dtype_bytes == 0.5:
        return INT4_BYTES_PER_WEIGHT
    if dtype_bytes in BYTES_PER_WEIGHT:
        return BYTES_PER_WEIGHT[int(dtype_bytes)]
    raise FleetsimInputError(
        f"model dtype_bytes: {dtype_bytes!r} is not supported (allowed: 0.5, 1, 2, 4)"
    )


def layer_activation_bytes(facts: ModelFacts, act_bytes: float) -> float:
    b, s, h = facts.batch_size, facts.seq_len, facts.hidden_size
    heads = max(h // 64, 1)
    return b * s * h * (34.0 + 5.0 * heads * s / h) * act_bytes / 2.0


def job_memory_bytes(facts: ModelFacts, kind: str, peft: str = "lora") -> int:
    """Peak bytes of the job on a phone (formula in the module docstring).

    ``kind``: "inference" | "forward_gradient" | "backprop".  ``peft``: the
    trainable subset; "full"/"none" means every weight trains (T = n_params).
    """
    if kind not in JOB_KINDS:
        raise FleetsimInputError(
            f"memory kind: {kind!r} is not one of inference, forward_gradient, backprop"
        )
    if peft not in PEFT_KINDS:
        raise FleetsimInputError(f"peft: {peft!r} is not one of {', '.join(PEFT_KINDS)}")
    w = weight_bytes_per_param(facts.dtype_bytes)
    act = 4.0 if facts.dtype_bytes == 4 else 2.0
    weights = facts.n_params * w * (1.0 + RUNTIME_OVERHEAD)
    layer = layer_activation_bytes(facts, act)
    logits = facts.batch_size * facts.seq_len * facts.vocab_size * act
    trainable = facts.n_params if peft in ("full", "none") else facts.trainable_params
    if kind == "inference":
        total = weights + layer + logits
    elif kind == "forward_gradient":
        total = weights + 2.0 * layer + 2.0 * logits + 3.0 * trainable * 4.0
    else:
        total = weights + facts.n_layers * layer + logits + trainable * 4.0 * 4.0
    return int(total)
