"""Model facts without weights: what the simulated side needs to know about a model
(parameters, trainable PEFT subset, FLOPs per token), from its architecture on the meta
device."""

from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from fleetsim.numerics.base import ModelFacts
from fleetsim.numerics.config import (
    DTYPE_BYTES,
    DataConfig,
    ModelConfig,
    NumericsConfig,
    PeftConfig,
)
from fleetsim.numerics.datasets import load_text_dataset
from fleetsim.workload import PeftFacts

BUILTIN_NUM_LABELS = {"bbc_news": 5, "rotten_tomatoes": 2, "ag_news_csv": 4}

# Known configurations, so that systems-only runs need neither weights nor a GGUF conversion.
SMOLLM2_135M_CONFIG = {
    "model_type": "llama", "hidden_size": 576, "num_hidden_layers": 30,
    "num_attention_heads": 9, "num_key_value_heads": 3, "intermediate_size": 1536,
    "vocab_size": 49152, "tie_word_embeddings": True,
}


def _cfg_get(config: Any, key: str, default: Any = 0) -> Any:
    if isinstance(config, dict):
        return config.get(key, default)
    return getattr(config, key, default)


def peft_facts(model: Any, trainable_names: list[str], peft: PeftConfig) -> PeftFacts:
    """Where the trainable parameters of ``model`` (a ``numerics.models.TextClassifier``,
    on any device, the meta device included) sit, read from their names: the layers
    holding them, whether the embeddings train, trainable parameters per embeddings /
    layer / top, LoRA's adapted projections.  ``method`` is ``peft.method``, or ``full``
    when every parameter trains."""
    n_layers = model.n_layers
    named = dict(model.named_parameters())
    per_layer = [0] * (n_layers + 2)
    layers: set[int] = set()
    targets: set[str] = set()
    for name in trainable_names:
        layer = model.layer_of(name)
        per_layer[layer + 1] += int(named[name].numel())
        if 0 <= layer < n_layers:
            layers.add(layer)
        found = re.match(r".*?\.layers?\.\d+\.(.+)\.lora_A\.", name)
        if found:  # the projection's path inside its layer
            targets.add(found.group(1))
    everything = len(trainable_names) == len(named)
    method = "full" if everything else str(peft.method)
    return PeftFacts(
        method=method, layers=tuple(sorted(layers)), trainable_per_layer=tuple(per_layer),
        embeddings_trainable=per_layer[0] > 0,
        rank=int(peft.rank) if method in ("lora", "adapter") else 0,
        lora_targets=tuple(sorted(targets)) if method == "lora" else (),
    )


def facts_from_config(
    name: str, config: Any, n_params: int, trainable: int, seq_len: int, batch_size: int,
    dtype_bytes: int, num_labels: int = 0, peft: PeftFacts | None = None,
    lowest_trainable_layer: int = 0,
) -> ModelFacts:
    hidden = int(_cfg_get(config, "hidden_size"))
    layers = int(_cfg_get(config, "num_hidden_layers"))
    vocab = int(_cfg_get(config, "vocab_size"))
    intermediate = int(_cfg_get(config, "intermediate_size"))
    heads = int(_cfg_get(config, "num_attention_heads", 1)) or 1
    kv_heads = int(_cfg_get(config, "num_key_value_heads", heads) or heads)
    head_dim = hidden // heads
    if _cfg_get(config, "model_type", "") in ("llama", "mistral", "qwen2"):
        per_layer = (
            2 * hidden * hidden + 2 * hidden * kv_heads * head_dim + 3 * hidden * intermediate
        )
    else:
        per_layer = 4 * hidden * hidden + 2 * hidden * intermediate
    # 2 FLOPs per multiply-add in the projections, plus QK^T and AV over the sequence
    flops = 2.0 * layers * per_layer + 4.0 * layers * seq_len * hidden
    return ModelFacts(
        name=name, n_params=n_params, trainable_params=trainable, n_layers=layers,
        hidden_size=hidden, flops_per_token=flops, seq_len=seq_len, batch_size=batch_size,
        dtype_bytes=dtype_bytes, vocab_size=vocab, intermediate_size=intermediate,
        family=_family(config), n_heads=heads, n_kv_heads=kv_heads, num_labels=num_labels,
        peft=peft,
        # one source of truth: the PEFT layout when known (its -1, embeddings train, is 0)
        lowest_trainable_layer=max(0, min(int(
            peft.lowest_trainable_layer(layers) if peft is not None
            else lowest_trainable_layer
        ), layers)),
    )


def _family(config: Any) -> str:
    from fleetsim.numerics import models as model_lib

    return model_lib.model_family(config)


def _num_labels(data: DataConfig, base_dir: Path, known: int | None = None) -> int:
    if data.name in BUILTIN_NUM_LABELS and data.name != "ag_news_csv":
        return BUILTIN_NUM_LABELS[data.name]
    if known is not None:  # the run's data plan has loaded the dataset already
        return known
    return load_text_dataset(data, base_dir).num_classes


def _known_config(
    model: ModelConfig, base_dir: Path, error_key: str = "model.name_or_path",
    also_allowed: Sequence[str] = (),
) -> tuple[str, Any]:
    """(name, config) without loading weights or converting a GGUF."""
    from fleetsim.numerics import models as model_lib

    key = model.name_or_path.lower()
    if key == "smollm2-135m":
        from transformers import LlamaConfig

        return key, LlamaConfig(**SMOLLM2_135M_CONFIG)
    if key in ("tiny-bert", "tiny-llama", "all-minilm-l6-v2"):
        resolved = model_lib.resolve_model(model, base_dir, Path("/nonexistent"))
        return resolved.name, resolved.config
    resolved = model_lib.resolve_model(model, base_dir, Path("/nonexistent"), error_key,
                                       also_allowed)
    return resolved.name, resolved.config


def model_facts(
    model: ModelConfig, peft: PeftConfig, data: DataConfig, numerics: NumericsConfig,
    base_dir: Path = Path("."), key: str = "model.name_or_path",
    also_allowed: Sequence[str] = (),
    num_labels: int | None = None,
) -> ModelFacts:
    """Cheap facts: the architecture is instantiated on the meta device (no weights, no
    memory) and the PEFT method applied to count parameters exactly.  ``key`` and
    ``also_allowed``: the scenario key an unknown model is reported at and further names
    its allowed list offers (:func:`fleetsim.numerics.models.resolve_model`).  ``num_labels``:
    the dataset's class count when already known (a run's data plan), else the dataset is
    read for it (built-in datasets: from their table)."""
    import torch
    from transformers import AutoModel

    from fleetsim.numerics import models as model_lib

    name, config = _known_config(model, base_dir, key, also_allowed)
    family = model_lib.model_family(config, key)
    num_labels = _num_labels(data, base_dir, num_labels)
    with torch.device("meta"):
        backbone = AutoModel.from_config(config, attn_implementation="eager")
        classifier = model_lib.TextClassifier(backbone, family, num_labels, model.pooling)
        names = model_lib.apply_peft(classifier, peft, 0)
    named = dict(classifier.named_parameters())
    trainable = int(sum(named[n].numel() for n in names))
    total = int(sum(p.numel() for p in classifier.parameters()))
    return facts_from_config(
        name, config, total, trainable, model.max_seq_len, data.batch_size,
        DTYPE_BYTES[numerics.dtype], num_labels, peft_facts(classifier, names, peft),
    )
