"""The classifier that can be run from any layer.

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

One cohesive class (the layer walk, the prefix, the projection cache and the head share
its state), kept whole.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Optional

import torch
from torch import nn

# The attention input projections of one layer, by family, and the module (inside the
# layer) their input passes through first (None: they read the layer input directly).
PROJECTIONS = {
    "bert": ("attention.self.query", "attention.self.key", "attention.self.value"),
    "llama": ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj"),
}
PROJECTION_INPUT = {"bert": None, "llama": "input_layernorm"}


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
