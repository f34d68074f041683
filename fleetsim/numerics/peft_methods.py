"""PEFT methods applied to a :class:`~fleetsim.numerics.classifier.TextClassifier`: LoRA
through ``peft.inject_adapter_in_model`` (module paths stay those of the backbone), BitFit
by un-freezing bias terms, bottleneck adapters by wrapping each selected layer's
feed-forward output projection, and head-only training.
"""

from __future__ import annotations

import torch
from torch import nn

from fleetsim.errors import FleetsimInputError
from fleetsim.numerics.classifier import TextClassifier
from fleetsim.numerics.config import PeftConfig


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
    linear_paths = [name for name, module in model.layers.named_modules()
                    if isinstance(module, nn.Linear)]
    layer_linears = sorted({name.rsplit(".", 1)[-1] for name in linear_paths})
    unknown = [t for t in targets
               if not any(n == t or n.endswith("." + t) for n in linear_paths)]
    if unknown:
        # peft only needs one target to match and ignores the rest: a typo would silently
        # train (and charge) fewer modules than the scenario names
        raise FleetsimInputError(
            f"peft.target_modules: {', '.join(repr(t) for t in unknown)} names no linear "
            f"module of this {model.family}-family model's layers; allowed: "
            f"{', '.join(layer_linears)}"
        )
    lora = LoraConfig(
        r=peft.rank, lora_alpha=peft.alpha, lora_dropout=0.0, bias="none",
        target_modules=targets, layers_to_transform=layers,
        layers_pattern="layer" if model.family == "bert" else "layers",
    )
    try:
        inject_adapter_in_model(lora, model.backbone)
    except ValueError as exc:
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
