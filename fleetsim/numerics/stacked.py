"""K parameter sets in one forward pass, written by hand instead of ``torch.vmap``.

A finite-difference estimator evaluates L(θ + h·v_k) for K tangents v_k that only
touch the PEFT subset θ.  Running those K models as one forward over K × batch
rows (row ``k·B + b`` is example ``b`` under parameter set ``k``) lets every
frozen weight run as one large matrix product over all K × batch rows, while each
trainable tensor becomes a small batched product:

* a trainable ``nn.Linear`` (LoRA A/B, adapter projections, the head) computes
  ``bmm(x_k, W_kᵀ) + b_k`` per parameter set; for LoRA this is the batched
  low-rank delta beside the frozen base projection, which stays one matmul;
* a frozen ``nn.Linear`` or ``nn.LayerNorm`` with only a trainable bias (BitFit)
  runs once over all rows and adds ``b_k`` per parameter set.

The same could be had from ``torch.vmap(functional_call)``, but vmap's batching
rules add a per-operator cost that, on a CPU, took 1.3–1.5 forwards per
perturbation where this path takes close to one (``bench/numerics.py``).  Models
whose trainable tensors live elsewhere (an embedding table, a custom module) are
reported unsupported by :func:`stackable` and the estimator falls back to vmap.

:func:`stacked_parameters` patches the owning modules' ``forward`` for the
duration of a ``with`` block (instance attributes, removed on exit, also on
error), so the model is never copied and nothing outside the block changes.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from typing import Optional

import torch
from torch import nn

STACKABLE_OWNERS = (nn.Linear, nn.LayerNorm)


def _owner(model: nn.Module, name: str) -> tuple[nn.Module, str]:
    path, _, attr = name.rpartition(".")
    return model.get_submodule(path), attr


def stackable(model: nn.Module, names: list[str], shared_prefix_modules: tuple[str, ...] = ()
              ) -> bool:
    """Whether every trainable tensor is the weight or bias of a Linear / LayerNorm that
    runs after the rows have been repeated (not inside ``shared_prefix_modules``)."""
    for name in names:
        if any(name.startswith(prefix) for prefix in shared_prefix_modules):
            return False
        try:
            module, attr = _owner(model, name)
        except AttributeError:
            return False
        if not isinstance(module, STACKABLE_OWNERS) or attr not in ("weight", "bias"):
            return False
    return True


def _rows(x: torch.Tensor, count: int) -> torch.Tensor:
    """(count·B, …, d) → (count, B·…, d): the rows of each parameter set together."""
    if x.shape[0] % count:
        raise RuntimeError(
            f"stacked forward: leading dimension {x.shape[0]} is not a multiple of the "
            f"{count} parameter sets (an input was not repeated)"
        )
    return x.reshape(count, -1, x.shape[-1])


def _linear_forward(module: nn.Linear, weight: Optional[torch.Tensor],
                    bias: Optional[torch.Tensor], count: int) -> Callable:
    def forward(x: torch.Tensor) -> torch.Tensor:
        lead = x.shape[:-1]
        if weight is None:  # frozen weight, trainable bias: one big product for all rows
            y = _rows(nn.functional.linear(x, module.weight), count)
        else:
            y = torch.bmm(_rows(x, count), weight.transpose(1, 2))
            if module.bias is not None and bias is None:
                y = y + module.bias
        if bias is not None:
            y = y + bias.unsqueeze(1)
        return y.reshape(*lead, y.shape[-1])

    return forward


def _layer_norm_forward(module: nn.LayerNorm, weight: Optional[torch.Tensor],
                        bias: Optional[torch.Tensor], count: int) -> Callable:
    def forward(x: torch.Tensor) -> torch.Tensor:
        # a shared bias can join the normalisation only when no per-set scale follows it
        y = nn.functional.layer_norm(
            x, module.normalized_shape, module.weight if weight is None else None,
            module.bias if bias is None and weight is None else None, module.eps,
        )
        y = _rows(y, count)
        if weight is not None:
            y = y * weight.unsqueeze(1)
            if bias is None and module.bias is not None:
                y = y + module.bias
        if bias is not None:
            y = y + bias.unsqueeze(1)
        return y.reshape(x.shape)

    return forward


@contextmanager
def stacked_parameters(model: nn.Module, stacked: Mapping[str, torch.Tensor]) -> Iterator[int]:
    """Inside the block, every module owning a tensor of ``stacked`` (shape ``(K, *p)``)
    computes K outputs from inputs whose leading dimension is K × batch; yields K."""
    count = int(next(iter(stacked.values())).shape[0])
    owners: dict[nn.Module, dict[str, torch.Tensor]] = {}
    for name, tensor in stacked.items():
        module, attr = _owner(model, name)
        if not isinstance(module, STACKABLE_OWNERS):
            raise TypeError(f"{name}: {type(module).__name__} cannot run stacked parameters")
        owners.setdefault(module, {})[attr] = tensor
    patched = []
    try:
        for module, tensors in owners.items():
            build = _linear_forward if isinstance(module, nn.Linear) else _layer_norm_forward
            module.forward = build(module, tensors.get("weight"), tensors.get("bias"), count)
            patched.append(module)
        yield count
    finally:
        for module in patched:
            del module.forward  # the class's forward is visible again
