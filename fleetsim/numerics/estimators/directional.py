"""Directional derivatives d_k = ∇L(θ)·v_k for a batch of tangents, four ways.

``loss_fn(params)`` maps a dict of trainable tensors to the scalar mean loss of
one batch (frozen weights and inputs are closed over).  Tangents arrive stacked:
``tangents[name]`` has shape ``(K, *param.shape)``.

* ``central``: (L(θ+hv) − L(θ−hv)) / 2h; the 2K perturbed forwards run batched,
  ``chunk`` parameter sets at a time, through ``batched_loss`` when the caller
  has one (:mod:`fleetsim.numerics.stacked`: one forward over chunk × batch rows,
  the frozen base weights as one large matrix product, the LoRA / head deltas as
  batched low-rank products), else ``torch.vmap`` over the stacked parameter
  sets.  Activations that do not depend on θ (the frozen prefix) are computed once.
* ``onesided``: L(θ) once, then (L(θ+hv) − L(θ)) / h, K perturbed forwards batched.
* ``jvp``: exact forward mode, ``torch.func.jvp`` vmapped over tangents.
* ``backprop``: one reverse pass for ∇L, then d_k = ⟨∇L, v_k⟩ — the same exact
  values as ``jvp`` at the cost of one backprop for any K.

All return (d, base_loss) with d of shape (K,) in float32.  ``base_loss`` is
L(θ) (for central: the mean of L(θ±hv), equal to L(θ) up to O(h²)).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Optional

import torch

LossFn = Callable[[dict[str, torch.Tensor]], torch.Tensor]
# stacked parameter sets {name: (K, *shape)} -> the K losses, shape (K,)
BatchedLossFn = Callable[[dict[str, torch.Tensor]], torch.Tensor]
ESTIMATORS = ("central", "onesided", "jvp", "backprop")


def _chunks(k: int, size: int) -> list[slice]:
    return [slice(start, min(k, start + size)) for start in range(0, k, size)]


def _batched_losses(
    loss_fn: LossFn, stacked: dict[str, torch.Tensor], batched_loss: Optional[BatchedLossFn]
) -> torch.Tensor:
    count = next(iter(stacked.values())).shape[0]
    if batched_loss is not None:
        return batched_loss(stacked)
    if count == 1:  # vmap adds nothing for one parameter set
        return loss_fn({n: t[0] for n, t in stacked.items()}).reshape(1)
    return torch.vmap(loss_fn, in_dims=({n: 0 for n in stacked},))(stacked)


def _forward_ad_attention():
    """SDPA's fused CPU kernels have no forward-mode AD: jvp runs attention on the math
    backend (eager-attention models are unaffected)."""
    from torch.nn.attention import SDPBackend, sdpa_kernel

    return sdpa_kernel(SDPBackend.MATH)


def _jvp_chunk(one_jvp: Callable, sub: dict[str, torch.Tensor], part: slice
               ) -> tuple[torch.Tensor, torch.Tensor]:
    if part.stop - part.start == 1:
        value, derivative = one_jvp({n: t[0] for n, t in sub.items()})
        return value.reshape(1), derivative.reshape(1)
    return torch.vmap(one_jvp, in_dims=({n: 0 for n in sub},))(sub)


def directional_derivatives(
    loss_fn: LossFn,
    params: dict[str, torch.Tensor],
    tangents: dict[str, torch.Tensor],
    estimator: str,
    h: float = 0.01,
    chunk: int = 32,
    batched_loss: Optional[BatchedLossFn] = None,
) -> tuple[torch.Tensor, float]:
    """d_k = ∇L·v_k for every stacked tangent k, and the base loss.

    ``batched_loss`` (optional) evaluates many parameter sets at once for the
    finite-difference estimators; without it they use ``torch.vmap(loss_fn)``."""
    if estimator not in ESTIMATORS:
        raise ValueError(f"unknown estimator {estimator!r}; allowed: {', '.join(ESTIMATORS)}")
    params = {n: p.detach() for n, p in params.items()}
    k_total = next(iter(tangents.values())).shape[0]
    if estimator == "backprop":
        grad, loss = exact_gradient(loss_fn, params)
        d = sum(
            torch.einsum("k...,...->k", tangents[n].float(), grad[n].float()) for n in params
        )
        return d, loss
    pieces: list[torch.Tensor] = []
    if estimator == "jvp":
        base = float("nan")

        def one_jvp(tangent: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
            return torch.func.jvp(loss_fn, (params,), (tangent,))

        for part in _chunks(k_total, chunk):
            sub = {n: t[part] for n, t in tangents.items()}
            with _forward_ad_attention():
                value, derivative = _jvp_chunk(one_jvp, sub, part)
            base = float(value[0])
            pieces.append(derivative.float())
        return torch.cat(pieces), base
    with torch.inference_mode():
        if estimator == "onesided":
            base_t = loss_fn(params).float()
            for part in _chunks(k_total, chunk):
                stacked = {n: params[n] + h * tangents[n][part] for n in params}
                losses = _batched_losses(loss_fn, stacked, batched_loss).float()
                pieces.append((losses - base_t) / h)
            return torch.cat(pieces), float(base_t)
        # central: each chunk holds ⌈chunk/2⌉ perturbations as ± pairs
        base_sum = 0.0
        for part in _chunks(k_total, max(1, chunk // 2)):
            plus = {n: params[n] + h * tangents[n][part] for n in params}
            minus = {n: params[n] - h * tangents[n][part] for n in params}
            both = {n: torch.cat([plus[n], minus[n]]) for n in params}
            losses = _batched_losses(loss_fn, both, batched_loss).float()
            count = part.stop - part.start
            pieces.append((losses[:count] - losses[count:]) / (2 * h))
            base_sum += float(losses.sum()) / 2
        return torch.cat(pieces), base_sum / k_total


def exact_gradient(
    loss_fn: LossFn, params: dict[str, torch.Tensor]
) -> tuple[dict[str, torch.Tensor], float]:
    """∇L(θ) by backprop (torch.func.grad), and L(θ)."""
    params = {n: p.detach() for n, p in params.items()}
    grad, loss = torch.func.grad_and_value(loss_fn)(params)
    return grad, float(loss)
