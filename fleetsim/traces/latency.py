"""Latency model: how long one unit of work takes on one phone backend.

Formula (documented in ``device_traces/catalogue/PROVENANCE.md``)::

    F(model)      = batch * seq_len * flops_per_token(model, seq_len)
    flops_per_token = 2 * N_body + 4 * n_layers * seq_len * attn_width
    forward_s     = ref_forward_s[device, backend] * F(model) / F(reference)
    backward_s    = backward_factor * forward_s * trained_depth_share
                    (backward_factor 2 for full fine-tuning, 1 for PEFT)
    trained_depth_share = (n_layers - lowest_trainable_layer) / n_layers

``N_body`` is the parameter count outside the embedding tables (matmul weights:
each costs one multiply-add per token), ``attn_width`` the width of the query/key
vectors (QK^T and AV: two ``seq_len x attn_width`` products per token and layer).
The reference forward is BERT-base at batch 8 x seq 128.  ``ref_forward_s`` per
phone and backend comes from the catalogue: measured throughput where the SoC was
measured, else a per-backend constant times the SoC's AI-Benchmark score
(:func:`fit_backend_constants`).

The backward pass stops at the lowest trainable layer: nothing below it needs an
activation gradient (top-layer PEFT such as FedAdapter's adapters backpropagates through
the top layers only).

The FwdLLM paper profile phone returns the paper's per-perturbation constants
exactly for DistilBERT and BERT-base (linear in batch size), and its backprop constants
(Adapter-BP and BitFit-BP 4.1634 s, Full-BP 6.939 s per batch of 8 on DistilBERT) times
the trained depth share (at least one layer's): the paper's FedAdapter constant,
1.3878 s for adapters in the top 2 of DistilBERT's 6 layers, is exactly 4.1634 × 2/6.

This module imports neither torch nor simpy.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Optional

import numpy as np

from fleetsim.errors import FleetsimInputError
from fleetsim.traces.base import DeviceTable
from fleetsim.workload import BACKEND_PREFERENCES, BACKENDS, JOB_KINDS, ModelFacts, PeftFacts

KINDS = JOB_KINDS
PREFERENCES = BACKEND_PREFERENCES

#: The reference workload that ``DeviceTable.ref_forward_s`` is expressed in.
REFERENCE_BATCH = 8
REFERENCE_SEQ_LEN = 128

#: backward/forward FLOP ratio: full fine-tuning computes activation gradients
#: and weight gradients (2x forward, Kaplan et al. 2020); PEFT (LoRA/adapters)
#: computes activation gradients through the frozen body but weight gradients
#: only for the small adapter matrices (~1x forward).
BACKWARD_FACTOR_FULL = 2.0
BACKWARD_FACTOR_PEFT = 1.0
#: a job counts as full fine-tuning when at least this share of weights trains.
FULL_FINETUNE_SHARE = 0.5


def forward_flops_per_token(
    n_body_params: float, n_layers: int, attn_width: int, seq_len: int
) -> float:
    """Forward FLOPs per token: 2 per body weight plus attention scores/mixing."""
    return 2.0 * float(n_body_params) + 4.0 * n_layers * seq_len * attn_width


# BERT-base: 12 layers x (4 h^2 + 2 h I) with h=768, I=3072, attention width 768.
_BERT_BASE_BODY = 12 * (4 * 768 * 768 + 2 * 768 * 3072)
REFERENCE_FLOPS = (
    REFERENCE_BATCH
    * REFERENCE_SEQ_LEN
    * forward_flops_per_token(_BERT_BASE_BODY, 12, 768, REFERENCE_SEQ_LEN)
)


def _cfg_get(config: dict, *keys: str, default=None):
    for key in keys:
        if key in config and config[key] is not None:
            return config[key]
    return default


def facts_from_hf_config(
    config: dict, name: str, batch_size: int, seq_len: int, trainable_params: int,
    peft: Optional[PeftFacts] = None, num_labels: int = 0,
) -> ModelFacts:
    """ModelFacts from a Hugging Face ``config.json`` dict (BERT-like or LLaMA-like).

    Pure dict arithmetic.  ``peft`` (where the trainable parameters sit) and
    ``num_labels`` pass through to the facts; the memory model needs ``peft``.
    Parameter counts ignore biases and norms (<0.5%).
    LLaMA-like configs (``model_type`` llama/qwen2/mistral/..., or a
    ``num_key_value_heads`` key) use a gated MLP (3 matrices) and grouped KV heads;
    an untied ``lm_head`` counts as body (it is a matmul per token).
    """
    if not isinstance(config, dict):
        raise FleetsimInputError("model config: expected a JSON object (dict)")
    hidden = _cfg_get(config, "hidden_size", "dim", "d_model", "n_embd")
    layers = _cfg_get(config, "num_hidden_layers", "n_layers", "n_layer", "num_layers")
    if hidden is None or layers is None:
        raise FleetsimInputError(
            "model config: missing 'hidden_size' (or 'dim'/'d_model') or "
            "'num_hidden_layers' (or 'n_layers')"
        )
    hidden, layers = int(hidden), int(layers)
    inter = int(_cfg_get(config, "intermediate_size", "hidden_dim", "ffn_dim", default=4 * hidden))
    heads = int(_cfg_get(config, "num_attention_heads", "n_heads", "n_head", default=hidden // 64))
    vocab = int(_cfg_get(config, "vocab_size", default=0))
    model_type = str(config.get("model_type", "")).lower()
    llama_like = "num_key_value_heads" in config or model_type in {
        "llama",
        "qwen2",
        "qwen3",
        "mistral",
        "gemma",
        "gemma2",
        "phi3",
        "smollm",
    }
    head_dim = hidden // max(heads, 1)
    if llama_like:
        kv_heads = int(_cfg_get(config, "num_key_value_heads", default=heads))
        attn = 2 * hidden * hidden + 2 * hidden * kv_heads * head_dim
        mlp = 3 * hidden * inter
        positions = 0
    else:
        attn = 4 * hidden * hidden
        mlp = 2 * hidden * inter
        positions = int(_cfg_get(config, "max_position_embeddings", default=0))
    body = layers * (attn + mlp)
    embed = vocab * hidden + positions * hidden
    tied = bool(config.get("tie_word_embeddings", not llama_like))
    if llama_like and not tied:
        body += vocab * hidden
    n_params = body + embed
    dtype = str(config.get("torch_dtype", config.get("dtype", "float32")))
    dtype_bytes = 2 if ("16" in dtype) else 4
    return ModelFacts(
        name=name,
        n_params=int(n_params),
        trainable_params=int(trainable_params),
        n_layers=layers,
        hidden_size=hidden,
        flops_per_token=forward_flops_per_token(body, layers, hidden, seq_len),
        seq_len=int(seq_len),
        batch_size=int(batch_size),
        dtype_bytes=dtype_bytes,
        vocab_size=vocab,
        intermediate_size=inter,
        family="llama" if llama_like else "bert",
        n_heads=heads,
        n_kv_heads=int(_cfg_get(config, "num_key_value_heads", default=heads)),
        num_labels=int(num_labels),
        peft=peft,
        lowest_trainable_layer=(
            0 if peft is None else max(0, min(peft.lowest_trainable_layer(layers), layers))
        ),
    )


def job_forward_flops(facts: ModelFacts) -> float:
    """FLOPs of one forward pass of the job (batch x seq tokens)."""
    return float(facts.flops_per_token) * facts.batch_size * facts.seq_len


# ---------------------------------------------------------------- paper profile

#: FwdLLM (Xu et al., arXiv 2308.13894) per-batch-of-8 constants, seconds.
#: Keys: (model family, backend, kind, training) -> seconds per unit at batch 8.
PAPER_PHONE = "FwdLLM paper profile"
PAPER_BATCH = 8
PAPER_CONSTANTS: dict[tuple[str, str, str], float] = {
    ("distilbert", "npu", "forward_gradient"): 0.3085584,
    ("distilbert", "cpu", "forward_gradient"): 3.35942,
    ("bert-base", "npu", "forward_gradient"): 0.669904,
    ("bert-base", "cpu", "forward_gradient"): 6.91072,
    # Adapter-BP and BitFit-BP; FedAdapter's 1.3878 s (top 2 of 6 layers) is this × 2/6,
    # the trained depth share unit_seconds applies to every backprop constant
    ("distilbert", "cpu", "backprop_peft"): 4.1634,
    ("distilbert", "cpu", "backprop_full"): 6.939,
}


def paper_model_family(name: str) -> str | None:
    """'distilbert' / 'bert-base' when ``name`` names one of the paper's models."""
    n = name.lower()
    if "distilbert" in n or "distil-bert" in n:
        return "distilbert"
    if re.search(r"(^|[/_\-\s])bert[-_\s]?base", n):
        return "bert-base"
    return None


# ------------------------------------------------------------------ backends


def choose_backend(
    table: DeviceTable, device_ids: np.ndarray, kind: str, preference: str = "auto"
) -> np.ndarray:
    """Backend per device: object array of "npu"/"gpu"/"cpu".

    Rule:

    * backprop never runs on an NPU (phone NPUs run inference only).  With
      ``auto`` it runs on the CPU: mobile training runtimes run backward passes
      on the CPU, and the paper's and FLASH's backprop measurements are CPU.
    * inference-only work (forward gradients, inference) with ``auto`` runs on
      the present backend with the smallest reference latency (ties: NPU, then
      GPU, then CPU).  On every catalogued flagship that is the NPU; on SoCs
      whose NPU handles transformers poorly (AI-Benchmark INT8-transformer score
      below the GPU's predicted speed) it is the GPU.
    * an explicit preference is honoured where that backend exists (and is
      allowed for the kind), else the ``auto`` choice is used.
    """
    if kind not in KINDS:
        raise FleetsimInputError(f"latency kind: {kind!r} is not one of {', '.join(KINDS)}")
    if preference not in PREFERENCES:
        raise FleetsimInputError(
            f"backend preference: {preference!r} is not one of {', '.join(PREFERENCES)}"
        )
    ids = np.asarray(device_ids, dtype=np.int64)
    lat = {
        b: (table.ref_forward_s[b][ids] if b in table.ref_forward_s else np.full(len(ids), np.nan))
        for b in BACKENDS
    }
    present = {b: ~np.isnan(lat[b]) for b in BACKENDS}
    # Chosen as an index into BACKENDS, named at the end: an object array of a million
    # names costs more to fill than to gather (issue 25's profile).
    code = {b: i for i, b in enumerate(BACKENDS)}
    out = np.full(len(ids), code["cpu"], dtype=np.int8)
    if kind == "backprop":
        if preference == "gpu":
            out[present["gpu"]] = code["gpu"]
    else:
        best = np.where(present["cpu"], lat["cpu"], np.inf)
        for b in ("gpu", "npu"):  # later wins ties: NPU over GPU over CPU
            better = present[b] & (lat[b] <= best)
            out[better] = code[b]
            best = np.where(better, lat[b], best)
        if preference != "auto":
            out[present[preference]] = code[preference]
    return np.array(BACKENDS, dtype=object)[out]


def _backward_factor(facts: ModelFacts) -> float:
    share = facts.trainable_params / max(facts.n_params, 1)
    return BACKWARD_FACTOR_FULL if share >= FULL_FINETUNE_SHARE else BACKWARD_FACTOR_PEFT


def trained_depth_share(facts: ModelFacts) -> float:
    """Share of the transformer layers a backward pass runs through: from the lowest
    trainable layer to the top, ``(n_layers − lowest_trainable_layer) / n_layers`` (1
    when every layer trains, 0 when only the head does)."""
    layers = max(int(facts.n_layers), 1)
    lowest = min(max(int(facts.lowest_trainable_layer), 0), layers)
    return (layers - lowest) / layers


def unit_seconds(
    table: DeviceTable,
    device_ids: np.ndarray,
    backends: np.ndarray,
    facts: ModelFacts,
    kind: str,
    inferences_per_unit: float,
) -> np.ndarray:
    """Simulated seconds for one unit of work on each device.

    One forward-gradient unit (a perturbation) = ``inferences_per_unit`` forwards;
    one inference unit = ``inferences_per_unit`` forwards; one backprop unit = one
    forward + a backward through the trained depth (:func:`trained_depth_share`).
    Paper-profile phones return the paper constants for DistilBERT / BERT-base (per
    perturbation, independent of ``inferences_per_unit``) scaled linearly with batch
    size, backprop's times the trained depth share (FedAdapter: 4.1634 × 2/6 = 1.3878 s).
    """
    if kind not in KINDS:
        raise FleetsimInputError(f"latency kind: {kind!r} is not one of {', '.join(KINDS)}")
    ids = np.asarray(device_ids, dtype=np.int64)
    be = np.asarray(backends, dtype=object)
    if kind == "backprop" and np.any(be == "npu"):
        raise FleetsimInputError("latency: backprop cannot run on backend 'npu' (inference only)")
    scale = job_forward_flops(facts) / REFERENCE_FLOPS
    ref = np.full(len(ids), np.nan)
    for b in BACKENDS:
        mask = be == b
        if mask.any() and b in table.ref_forward_s:
            ref[mask] = table.ref_forward_s[b][ids[mask]]
    depth = trained_depth_share(facts)
    if kind == "backprop":
        seconds = ref * scale * (1.0 + _backward_factor(facts) * depth)
    else:
        seconds = ref * scale * float(inferences_per_unit)
    family = paper_model_family(facts.name)
    if family is not None and PAPER_PHONE in table.phone_models:
        paper_idx = table.phone_models.index(PAPER_PHONE)
        on_paper = table.phone_model_index[ids] == paper_idx
        if on_paper.any():
            if kind == "backprop":
                full = _backward_factor(facts) == BACKWARD_FACTOR_FULL
                key_kind = "backprop_full" if full else "backprop_peft"
            else:
                key_kind = "forward_gradient"
            for b in BACKENDS:
                const = PAPER_CONSTANTS.get((family, b, key_kind))
                if const is None:
                    continue
                mask = on_paper & (be == b)
                seconds[mask] = const * facts.batch_size / PAPER_BATCH
                if kind == "backprop" and depth != 1.0:
                    # the paper's FedAdapter constant: Adapter-BP's × the trained depth,
                    # at least one layer's share (a head-only step is not free)
                    seconds[mask] *= max(depth, 1.0 / max(int(facts.n_layers), 1))
    if np.any(np.isnan(seconds)):
        bad = int(ids[np.isnan(seconds)][0])
        raise FleetsimInputError(
            f"latency: device {bad} has no latency for backend "
            f"{be[np.isnan(seconds)][0]!r} (backend absent on its phone model)"
        )
    return seconds


# ------------------------------------------------------------- calibration


@dataclass(frozen=True)
class BackendFit:
    """Throughput model of one backend: FLOP/s = constant * score(SoC)."""

    backend: str
    constant: float  # FLOP/s per AI-Benchmark score point
    n_socs: int


def fit_backend_constant(throughput: np.ndarray, score: np.ndarray) -> float:
    """Geometric-mean ratio of throughput to score (least squares in log space)."""
    t = np.asarray(throughput, dtype=float)
    s = np.asarray(score, dtype=float)
    return float(np.exp(np.mean(np.log(t) - np.log(s))))


def held_out_error_factors(measurements, scores: dict[str, dict[str, float]]) -> dict:
    """Leave-one-SoC-out evaluation of the score-scaling latency model.

    ``measurements``: DataFrame with columns soc, backend, flops, latency_s.
    ``scores``: backend -> soc -> AI-Benchmark score used for that backend.
    For each SoC, the backend constant is fitted on every *other* SoC's measured
    throughput (per-SoC geometric mean), then the SoC's rows are predicted.
    Returns per-backend and overall error factors exp(|log(pred/measured)|):
    geometric mean, median, 90th percentile, max, and the number of rows.
    """
    import pandas as pd

    df = measurements.copy()
    df["throughput"] = df["flops"] / df["latency_s"]
    rows = []
    for backend, group in df.groupby("backend"):
        table = scores.get(str(backend), {})
        group = group[group["soc"].isin(list(table))]
        per_soc = group.groupby("soc")["throughput"].apply(lambda x: math.exp(np.log(x).mean()))
        for soc in per_soc.index:
            others = per_soc.drop(soc)
            if len(others) == 0:
                continue
            const = fit_backend_constant(
                others.to_numpy(), np.array([table[s] for s in others.index])
            )
            held = group[group["soc"] == soc]
            pred = held["flops"] / (const * table[soc])
            for p, m in zip(pred.to_numpy(), held["latency_s"].to_numpy()):
                rows.append((backend, soc, math.exp(abs(math.log(p / m)))))
    res = pd.DataFrame(rows, columns=["backend", "soc", "factor"])

    def summary(f: np.ndarray) -> dict:
        return {
            "geo_mean": float(np.exp(np.mean(np.log(f)))),
            "median": float(np.median(f)),
            "p90": float(np.quantile(f, 0.9)),
            "max": float(np.max(f)),
            "rows": int(len(f)),
        }

    out = {"all": summary(res["factor"].to_numpy())}
    for backend, g in res.groupby("backend"):
        out[str(backend)] = summary(g["factor"].to_numpy())
    return out
