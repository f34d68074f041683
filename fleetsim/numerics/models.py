"""Models: the classifier runnable from any layer, the PEFT methods, model loading.

The pieces live in their own rooms: :mod:`fleetsim.numerics.classifier` (the
:class:`TextClassifier`: backbone + pooling + head, runnable from any layer, with the
frozen-prefix and projection caches), :mod:`fleetsim.numerics.peft_methods` (LoRA,
BitFit, bottleneck adapters, head-only), :mod:`fleetsim.numerics.model_source` (resolving
``model.name_or_path``, the model family, loading the tokenizer and the seeded
classifier); this module gathers them under one name (``from fleetsim.numerics import
models as model_lib``).
"""

from fleetsim.numerics.classifier import (
    PROJECTION_INPUT,
    PROJECTIONS,
    LayerContext,
    TextClassifier,
)
from fleetsim.numerics.model_source import (
    BERT_FAMILY,
    LLAMA_FAMILY,
    ResolvedModel,
    default_cache_dir,
    load_classifier,
    load_tokenizer,
    minilm_dir,
    model_family,
    package_dir,
    resolve_model,
    tiny_config,
)
from fleetsim.numerics.peft_methods import (
    EQUIVALENT_TARGETS,
    BottleneckAdapter,
    apply_peft,
    default_targets,
    targets_for,
)

__all__ = [
    "BERT_FAMILY", "EQUIVALENT_TARGETS", "LLAMA_FAMILY", "PROJECTIONS", "PROJECTION_INPUT",
    "BottleneckAdapter", "LayerContext", "ResolvedModel", "TextClassifier", "apply_peft",
    "default_cache_dir", "default_targets", "load_classifier", "load_tokenizer",
    "minilm_dir", "model_family", "package_dir", "resolve_model", "targets_for",
    "tiny_config",
]
