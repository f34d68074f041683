"""Exact directional derivatives by a hand-written forward-mode pass (BERT-family suffix).

``torch.func.jvp`` obtains d = ∇L(θ)·v exactly, but through eager attention on a CPU it
costs about 3.5 forwards per tangent (``bench/regime.py``): every operator carries a
dual tensor and its batching rule.  For the suffix fleetsim actually runs — BERT-family
encoder layers whose only trainable tensors are LoRA factors, plus the linear head —
the tangent is short to write by hand, and two facts make it cheap:

* the layer input is frozen (prefix cache), so the first trainable layer's input
  tangent is zero and a LoRA projection's tangent is the low-rank
  ``s·((x·Ȧᵀ)·Bᵀ + (x·Aᵀ)·Ḃᵀ)``; a frozen projection of a zero tangent is skipped;
* the remaining tangent products (attention output, the two feed-forward products)
  reuse the primal's frozen weights, and softmax's and GELU's tangents are the
  fused kernels autograd uses for their backward (both Jacobians are symmetric:
  ``_softmax_backward_data`` and ``gelu_backward`` applied to the tangent).

Tangent rules (x̂ = (z − μ)·ρ with ρ = 1/σ, the layer-norm statistics of the primal):

* linear ``y = x·Wᵀ + b``: ``ẏ = ẋ·Wᵀ``; LoRA ``y = base(x) + s·(x·Aᵀ)·Bᵀ``:
  ``ẏ = ẋ·Wᵀ + s·((ẋ·Aᵀ + x·Ȧᵀ)·Bᵀ + (x·Aᵀ)·Ḃᵀ)``;
* attention ``S = c·Q·Kᵀ + M``, ``P = softmax(S)``, ``C = P·V``: ``Ṡ = c·(Q̇·Kᵀ + Q·K̇ᵀ)``,
  ``Ṗ = P ⊙ (Ṡ − Σ_j P ⊙ Ṡ)``, ``Ċ = Ṗ·V + P·V̇``;
* layer norm ``y = γ ⊙ x̂ + β``: ``ẏ = γ ⊙ ρ ⊙ (ż − mean(ż) − x̂ ⊙ mean(ż ⊙ x̂))``;
* GELU / ReLU: ``ġ = act'(u) ⊙ u̇``;
* mean / first-token pooling is linear; head ``ℓ = p·Wᵀ + b``: ``ℓ̇ = ṗ·Wᵀ + p·Ẇᵀ + ḃ``;
* cross-entropy: ``L̇ = (softmax(ℓ) − onehot(y))·ℓ̇``, averaged with the rows' weights.

The primal runs once per device and is shared by that device's parameter sets (one set
per perturbation), so a device with v perturbations costs one forward plus v tangent
passes.  :func:`plan_for` says whether a model qualifies; anything else (BitFit, adapters,
trainable layer norms or embeddings, the LLaMA family, other activations, training-mode
dropout) keeps ``torch.func.jvp``.  ``tests/numerics/test_forward_mode.py`` compares the
pass with autograd's gradients, device by device, to float32 precision.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch
from torch import nn
from torch.nn import functional as F

# activation name in the model config -> ``approximate`` argument of gelu / "relu"
ACTIVATIONS = {"gelu": "none", "gelu_new": "tanh", "gelu_pytorch_tanh": "tanh", "relu": "relu"}
# the linear projections of a BERT-family encoder layer, in the order they run
LINEARS = ("attention.self.query", "attention.self.key", "attention.self.value",
           "attention.output.dense", "intermediate.dense", "output.dense")
NORMS = ("attention.output.LayerNorm", "output.LayerNorm")


@dataclass
class LinearSpec:
    """One projection of the suffix: its frozen base and, when LoRA-wrapped, the names of
    its trainable factors A (r, in) and B (out, r) and the scaling s."""

    base: nn.Linear
    lora_a: Optional[str] = None
    lora_b: Optional[str] = None
    scaling: float = 1.0


@dataclass
class LayerSpec:
    linears: dict[str, LinearSpec]
    norms: dict[str, nn.LayerNorm]
    heads: int
    head_size: int
    activation: str


@dataclass
class ForwardPlan:
    """What the hand-written pass needs to know about a qualifying model."""

    layers: list[LayerSpec]
    start: int  # -1: the inputs are token ids and the (frozen) embeddings run first
    pooling: str
    head: nn.Linear
    # cached projections of layer ``start``: linear path -> (offset, width) in the
    # P columns that follow the H hidden columns of the cohort inputs
    cached: dict[str, tuple[int, int]]


def _lora_spec(module: nn.Module, path: str, trainable: set[str]) -> Optional[LinearSpec]:
    """A peft LoRA linear with one active, un-merged, dropout-free adapter whose two
    factors are trainable; None when it is anything else."""
    try:
        from peft.tuners.lora.layer import Linear as LoraLinear
    except ImportError:  # pragma: no cover - peft is a dependency
        return None
    if not isinstance(module, LoraLinear) or getattr(module, "merged", False):
        return None
    adapters = list(module.active_adapters)
    if len(adapters) != 1:
        return None
    name = adapters[0]
    if (module.use_dora.get(name, False) or module.lora_bias.get(name, False)
            or not isinstance(module.lora_dropout[name], nn.Identity)):
        return None
    a, b = f"{path}.lora_A.{name}.weight", f"{path}.lora_B.{name}.weight"
    base = module.base_layer
    if (type(base) is not nn.Linear or any(p.requires_grad for p in base.parameters())
            or a not in trainable or b not in trainable):
        return None
    return LinearSpec(base, a, b, float(module.scaling[name]))


def plan_for(model: nn.Module, names: list[str], start: int) -> Optional[ForwardPlan]:
    """The forward-mode plan for ``model`` (a :class:`fleetsim.numerics.models.TextClassifier`)
    run from layer ``start`` with trainable tensors ``names``, or None when some part of
    the suffix has no hand-written tangent here (then ``torch.func.jvp`` is used)."""
    if getattr(model, "family", None) != "bert" or model.training or start < -1:
        return None
    config = model.backbone.config
    activation = ACTIVATIONS.get(str(getattr(config, "hidden_act", "")))
    if (activation is None or getattr(config, "is_decoder", False)
            or getattr(config, "add_cross_attention", False)
            or getattr(config, "position_embedding_type", "absolute") not in (None, "absolute")
            or model.pooling not in ("mean", "cls")):
        return None
    trainable = set(names)
    covered = {n for n in ("head.weight", "head.bias") if n in trainable}
    layers = []
    for index in range(max(start, 0), model.n_layers):
        prefix = f"backbone.encoder.layer.{index}"
        layer = model.get_submodule(prefix)
        linears = {}
        for path in LINEARS:
            full = f"{prefix}.{path}"
            module = layer.get_submodule(path)
            if type(module) is nn.Linear:
                if any(p.requires_grad for p in module.parameters()):
                    return None  # BitFit bias or a trainable projection
                linears[path] = LinearSpec(module)
                continue
            spec = _lora_spec(module, full, trainable)
            if spec is None:
                return None
            covered |= {spec.lora_a, spec.lora_b}
            linears[path] = spec
        norms = {}
        for path in NORMS:
            norm = layer.get_submodule(path)
            if type(norm) is not nn.LayerNorm or any(p.requires_grad for p in norm.parameters()):
                return None
            norms[path] = norm
        attention = layer.attention.self
        layers.append(LayerSpec(linears, norms, attention.num_attention_heads,
                                attention.attention_head_size, activation))
    if covered != trainable:
        return None  # a trainable tensor outside the suffix's LoRA factors and the head
    cached = {}
    if model._projections and model._projection_layer == start:
        offset = 0
        by_module = {id(spec.base): path for path, spec in layers[0].linears.items()}
        for module in model._projections:
            cached[by_module[id(module)]] = (offset, module.out_features)
            offset += module.out_features
    return ForwardPlan(layers, start, model.pooling, model.head, cached)


class _Pass:
    """One call: the primal over ``devices`` device batches (R = devices·B rows), the
    tangents over ``sets`` parameter sets, set j owning device ``local[j]``'s rows."""

    def __init__(self, params: dict[str, torch.Tensor], tangents: dict[str, torch.Tensor],
                 local: Optional[torch.Tensor], sets: int, rows: int) -> None:
        self.params, self.tangents, self.local = params, tangents, local
        self.sets, self.rows = sets, rows  # rows: examples per device batch (B)

    def ex(self, t: torch.Tensor) -> torch.Tensor:
        """A primal tensor (devices·B, …) laid out per parameter set: (sets·B, …)."""
        if self.local is None:
            return t
        shaped = t.view(-1, self.rows, *t.shape[1:])
        return shaped[self.local].reshape(self.sets * self.rows, *t.shape[1:])

    def linear(self, spec: LinearSpec, x: torch.Tensor, xd: Optional[torch.Tensor],
               base: Optional[torch.Tensor] = None
               ) -> tuple[torch.Tensor, Optional[torch.Tensor]]:
        """(y, ẏ) of one projection; ``base`` is its cached frozen output, if any."""
        y = F.linear(x, spec.base.weight, spec.base.bias) if base is None else base
        yd = None if xd is None else F.linear(xd, spec.base.weight)
        if spec.lora_a is None:
            return y, yd
        a, b = self.params[spec.lora_a], self.params[spec.lora_b]
        xa = F.linear(x, a)
        y = y + spec.scaling * F.linear(xa, b)
        width, rank, out = x.shape[-1], a.shape[0], b.shape[0]
        # (sets, B·W, ·): each set's rows times its own tangent factors
        low = torch.bmm(self.ex(x).reshape(self.sets, -1, width),
                        self.tangents[spec.lora_a].transpose(1, 2))
        if xd is not None:
            low = low + F.linear(xd, a).reshape(self.sets, -1, rank)
        delta = F.linear(low, b) + torch.bmm(self.ex(xa).reshape(self.sets, -1, rank),
                                             self.tangents[spec.lora_b].transpose(1, 2))
        delta = (spec.scaling * delta).reshape(self.sets * self.rows, *x.shape[1:-1], out)
        return y, delta if yd is None else yd + delta

    def norm(self, module: nn.LayerNorm, z: torch.Tensor, zd: Optional[torch.Tensor]
             ) -> tuple[torch.Tensor, Optional[torch.Tensor]]:
        y, mean, rstd = torch.native_layer_norm(z, module.normalized_shape, module.weight,
                                                module.bias, module.eps)
        if zd is None:
            return y, None
        # ρ·(ż − mean(ż) − x̂·mean(ż ⊙ x̂)) is layer norm's backward without γ applied to
        # ż (the bracket is symmetric); one fused kernel instead of eight element-wise passes
        centred = torch.ops.aten.native_layer_norm_backward(
            zd, self.ex(z), module.normalized_shape, self.ex(mean), self.ex(rstd), None, None,
            [True, False, False])[0]
        return y, module.weight * centred

    def layer(self, spec: LayerSpec, x: torch.Tensor, xd: Optional[torch.Tensor],
              additive: torch.Tensor, cached: dict[str, torch.Tensor]
              ) -> tuple[torch.Tensor, Optional[torch.Tensor]]:
        lin = spec.linears
        q, qd = self.linear(lin[LINEARS[0]], x, xd, cached.get(LINEARS[0]))
        k, kd = self.linear(lin[LINEARS[1]], x, xd, cached.get(LINEARS[1]))
        v, vd = self.linear(lin[LINEARS[2]], x, xd, cached.get(LINEARS[2]))

        def heads(t: torch.Tensor) -> torch.Tensor:  # (rows, W, H) -> (rows, heads, W, d)
            return t.view(*t.shape[:-1], spec.heads, spec.head_size).transpose(1, 2)

        scale = spec.head_size ** -0.5
        qh, kh, vh = heads(q), heads(k), heads(v)
        probs = torch.softmax(torch.matmul(qh, kh.transpose(2, 3)) * scale + additive, dim=-1)
        context = torch.matmul(probs, vh).transpose(1, 2).reshape(x.shape[:-1] + (-1,))
        sd = None
        if qd is not None:
            sd = torch.matmul(heads(qd), self.ex(kh).transpose(2, 3))
        if kd is not None:
            term = torch.matmul(self.ex(qh), heads(kd).transpose(2, 3))
            sd = term if sd is None else sd + term
        contextd = None
        probs_s = self.ex(probs) if (sd is not None or vd is not None) else None
        if sd is not None:
            pd = torch.ops.aten._softmax_backward_data(sd * scale, probs_s, -1, probs.dtype)
            contextd = torch.matmul(pd, self.ex(vh))
        if vd is not None:
            term = torch.matmul(probs_s, heads(vd))
            contextd = term if contextd is None else contextd + term
        if contextd is not None:
            contextd = contextd.transpose(1, 2).reshape(contextd.shape[0], x.shape[1], -1)
        a, ad = self.linear(lin[LINEARS[3]], context, contextd)
        z1d = ad if xd is None else (xd if ad is None else ad + xd)
        h1, h1d = self.norm(spec.norms[NORMS[0]], a + x, z1d)
        u, ud = self.linear(lin[LINEARS[4]], h1, h1d)
        # the tangent first (it reads u), then the activation in place: two intermediate
        # tensors live instead of four, which keeps them in cache (measured ≈ 5 % of a step)
        gd = ud
        if ud is not None and spec.activation == "relu":
            gd = ud.mul_(self.ex(u) > 0)
        elif ud is not None:
            gd = torch.ops.aten.gelu_backward.grad_input(
                ud, self.ex(u), approximate=spec.activation, grad_input=ud)
        g = (torch.relu_(u) if spec.activation == "relu"
             else torch.ops.aten.gelu_(u, approximate=spec.activation))
        o, od = self.linear(lin[LINEARS[5]], g, gd)
        z2d = od if h1d is None else (h1d if od is None else od + h1d)
        return self.norm(spec.norms[NORMS[1]], o + h1, z2d)


def cohort_jvp(
    plan: ForwardPlan,
    model: nn.Module,
    params: dict[str, torch.Tensor],
    inputs: torch.Tensor,
    mask: torch.Tensor,
    labels: torch.Tensor,
    weights: torch.Tensor,
    rows: int,
    tangents: dict[str, torch.Tensor],
    local: Optional[torch.Tensor],
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-set directional derivatives (S,) and per-device mean losses (D,), float32.

    ``inputs`` (D·B, W, H[+P]): the hidden states entering layer ``plan.start`` (token ids
    (D·B, W) when it is -1) of D device
    batches of B = ``rows`` rows each (cached projections appended when the plan has
    them); ``mask`` (D·B, W); ``labels`` and ``weights`` (D·B,) (weight 0: a padding row).
    ``tangents[name]``: (S, *param.shape); set j belongs to device ``local[j]`` (None:
    S = D and set j is device j)."""
    devices = int(labels.shape[0]) // rows
    sets = int(next(iter(tangents.values())).shape[0])
    width = model.backbone.config.hidden_size
    if plan.start < 0:
        inputs = model.embed(inputs, model.context(mask, plan.head.weight.dtype))
    x = inputs[..., :width].contiguous()
    cached = {path: inputs[..., width + offset: width + offset + size]
              for path, (offset, size) in plan.cached.items()}
    attention_mask = mask
    dtype = x.dtype
    additive = model.context(attention_mask, dtype).additive_mask
    run = _Pass(params, tangents, local, sets, rows)
    xd = None
    for index, spec in enumerate(plan.layers):
        x, xd = run.layer(spec, x, xd, additive, cached if index == 0 else {})
    if plan.pooling == "cls":
        pooled, pooled_d = x[:, 0], None if xd is None else xd[:, 0]
    else:
        share = attention_mask.to(dtype)
        share = share / share.sum(dim=1, keepdim=True).clamp_min(1.0)
        pooled = torch.einsum("bth,bt->bh", x, share)
        pooled_d = None if xd is None else torch.einsum("bth,bt->bh", xd, run.ex(share))
    head_w = params.get("head.weight", plan.head.weight)
    head_b = params.get("head.bias", plan.head.bias)
    logits = F.linear(pooled, head_w, head_b).float()
    logits_d = torch.zeros(sets * rows, logits.shape[-1], dtype=dtype, device=logits.device)
    if pooled_d is not None:
        logits_d = logits_d + F.linear(pooled_d, head_w)
    if "head.weight" in tangents:
        logits_d = logits_d + torch.bmm(run.ex(pooled).view(sets, rows, -1),
                                        tangents["head.weight"].transpose(1, 2)).reshape(
            sets * rows, -1)
    if "head.bias" in tangents:
        logits_d = logits_d + tangents["head.bias"].repeat_interleave(rows, dim=0)
    flat_labels, flat_weights = labels.reshape(-1), weights.reshape(-1).float()
    losses = F.cross_entropy(logits, flat_labels, reduction="none") * flat_weights
    base = losses.view(devices, rows).sum(1) / flat_weights.view(devices, rows).sum(1)
    slope = torch.softmax(logits, dim=-1)
    slope[torch.arange(slope.shape[0], device=slope.device), flat_labels] -= 1.0
    per_row = (run.ex(slope) * logits_d.float()).sum(-1) * run.ex(flat_weights)
    d = per_row.view(sets, rows).sum(1) / run.ex(flat_weights).view(sets, rows).sum(1)
    return d, base

