"""A step's work across devices in as few calls as the memory budget allows.

All devices that computed for the same server step share θ; each brings its own
batch and its own perturbations.  This module stacks them: device batches are
gathered in one call and padded to one shape (:class:`Cohort`), every *parameter
set* (a device at θ, or a device's perturbed θ + h·v_k) owns the rows of its
device's batch, and
:mod:`fleetsim.numerics.stacked` runs ``sets`` parameter sets over
``sets × rows`` rows in one forward.  Sets are cut into calls of at most
``sets_per_call`` (the ``host_batch_perturbations`` token budget).

Padding changes nothing: extra columns are masked (right padding, attention mask
0), extra rows repeat the device's first example and weigh 0 in its mean loss.

Estimators (``d[i][k] = ∇L_i(θ)·v_ik``, float32; ``base[i] = L_i(θ)``):

* ``backprop``: per-device exact gradients from ONE reverse pass per call: θ is
  copied per device (shape ``(sets, *p)``), the sets' losses are summed and
  differentiated, so the gradient of copy i is ∇L_i; then d_ik = ⟨∇L_i, v_ik⟩.
* ``jvp``: one forward-mode pass over all (device, k) sets, tangent v_ik on set
  (i, k); exact.
* ``onesided`` / ``central``: finite differences over the perturbed sets; the
  one-sided base losses come from the device sets at θ.

Shapes: a device batch is ``inputs`` (B_i, W_i) token ids or (B_i, W_i, H[+P]) hidden
states entering the first trainable layer (with its P cached projection outputs,
:meth:`fleetsim.numerics.models.TextClassifier.enable_projection_cache`), ``mask``
(B_i, W_i), ``labels`` (B_i,).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from fleetsim.numerics.stacked import stacked_parameters

# Host cost of the exact estimators in forwards of the rows they run, for
# ``numerics.estimator: auto``: backprop runs each device's rows forward and backward once
# (one parameter set per device, whatever v); jvp runs every (device, k) set forward with
# its tangent.  Measured interleaved on the 2-core CPU (bench/regime.py: MiniLM top-layer
# LoRA + head, batch 8, 64 tokens, 100 devices x v = 1, cross-device batched, projections
# cached): backprop 2.00 s and jvp 3.21 s against 0.92 s for one forward of the same rows
# (``floor_cached``), i.e. 2.2 and 3.5 forwards (forward-mode AD through eager attention is
# slow on CPU), so on a CPU backprop wins at every v >= 1.  CUDA is unmeasured: the CPU
# figures stand in until someone measures it.
EXACT_COST = {"cpu": {"backprop": 2.2, "jvp": 3.5}, "cuda": {"backprop": 2.2, "jvp": 3.5}}


def choose_exact(perturbations: Sequence[int], device: str) -> str:
    """The cheaper exact estimator for a step whose devices run ``perturbations[i]``
    perturbations each: backprop costs ``EXACT_COST['backprop']`` forwards of every
    device's rows, jvp ``EXACT_COST['jvp']`` forwards per perturbation."""
    cost = EXACT_COST.get(device, EXACT_COST["cpu"])
    devices = sum(1 for v in perturbations if v > 0)
    sets = sum(perturbations)
    return "jvp" if cost["jvp"] * sets < cost["backprop"] * devices else "backprop"


@dataclass
class Cohort:
    """Device batches padded to one (B, W) shape, built by :meth:`gathered`: ``inputs``
    (N, B, W[, H]), ``mask`` (N, B, W), ``labels`` (N, B), ``weights`` (N, B) (1 real row,
    0 padding)."""

    inputs: torch.Tensor
    mask: torch.Tensor
    labels: torch.Tensor
    weights: torch.Tensor

    @classmethod
    def gathered(cls, inputs: torch.Tensor, mask: torch.Tensor, labels: torch.Tensor,
                 sizes: Sequence[int]) -> Cohort:
        """From one gather of every device's rows, device i's ``sizes[i]`` real rows
        followed by padding rows up to ``max(sizes)`` (the caller repeats the device's
        first row there): ``inputs`` (N·B, W[, H]), ``mask`` (N·B, W), ``labels`` (N·B,).
        No copy: the cohort views the gathered tensors."""
        n, rows = len(sizes), max(sizes)
        weights = (torch.arange(rows)[None, :] < torch.as_tensor(sizes)[:, None]).to(
            torch.float32).to(inputs.device)
        return cls(inputs.view(n, rows, *inputs.shape[1:]), mask.view(n, rows, -1),
                   labels.view(n, rows), weights)

    @property
    def rows(self) -> int:
        return int(self.labels.shape[1])


def set_losses(model: nn.Module, start: int, cohort: Cohort, owners: torch.Tensor,
               stacked: dict[str, torch.Tensor]) -> torch.Tensor:
    """Mean loss of each parameter set (shape (sets,)): set j holds ``stacked[n][j]``
    and runs the rows of device ``owners[j]``."""
    count = int(owners.shape[0])
    first = int(owners[0]) if count else 0
    if count and bool((owners == torch.arange(first, first + count, device=owners.device)).all()):
        pick = slice(first, first + count)  # consecutive devices: a view, no copy
    else:
        pick = owners

    def flat(t: torch.Tensor) -> torch.Tensor:
        return t[pick].reshape(count * cohort.rows, *t.shape[2:])

    inputs, mask, labels, weights = (flat(cohort.inputs), flat(cohort.mask),
                                     flat(cohort.labels), flat(cohort.weights))
    with stacked_parameters(model, stacked):
        logits = model(inputs, mask, start, 1)
    per_row = nn.functional.cross_entropy(logits, labels, reduction="none") * weights
    return per_row.view(count, -1).sum(dim=1) / weights.view(count, -1).sum(dim=1)


def _chunks(total: int, size: int) -> list[slice]:
    return [slice(s, min(total, s + size)) for s in range(0, total, max(1, size))]


def cohort_directional(
    model: nn.Module,
    start: int,
    params: dict[str, torch.Tensor],
    cohort: Cohort,
    tangents: Sequence[dict[str, torch.Tensor]],
    estimator: str,
    h: float,
    sets_per_call: int,
    attention_context: Callable[[], Any],
) -> tuple[list[torch.Tensor], torch.Tensor]:
    """Directional derivatives of every device's perturbations and every device's base
    loss: (list over devices of (v_i,) float32 tensors, (N,) float32 base losses).

    ``tangents[i][name]`` has shape (v_i, *param.shape); ``attention_context`` returns the
    context manager forward-mode AD runs under (jvp only)."""
    n_dev = len(tangents)
    names = list(params)
    counts = [int(t[names[0]].shape[0]) for t in tangents]
    dev = next(iter(params.values())).device
    device_of = torch.repeat_interleave(torch.arange(n_dev), torch.tensor(counts)).to(dev)
    # flat (Σ v_i, *shape) tangents, set j = (device_of[j], k)
    flat_v = {n: torch.cat([t[n] for t in tangents]) for n in names}
    base = torch.full((n_dev,), float("nan"))
    if estimator == "backprop":
        grads = {n: torch.empty((n_dev, *p.shape), dtype=torch.float32, device=dev)
                 for n, p in params.items()}
        for part in _chunks(n_dev, sets_per_call):
            owners = torch.arange(part.start, part.stop, device=dev)
            copies = {n: p.detach().unsqueeze(0).repeat(len(owners), *([1] * p.dim()))
                      for n, p in params.items()}

            def total(stacked: dict[str, torch.Tensor], owners=owners):
                losses = set_losses(model, start, cohort, owners, stacked)
                return losses.sum(), losses.detach()

            grad, losses = torch.func.grad(total, has_aux=True)(copies)
            base[part] = losses.float().cpu()
            for n in names:
                grads[n][part] = grad[n].float()
        d = sum(torch.einsum("j...,j...->j", flat_v[n].float(), grads[n][device_of])
                for n in names)
    elif estimator == "jvp":
        pieces = []
        for part in _chunks(len(device_of), sets_per_call):
            owners = device_of[part]
            primal = {n: p.detach().unsqueeze(0).repeat(len(owners), *([1] * p.dim()))
                      for n, p in params.items()}
            tangent = {n: flat_v[n][part] for n in names}
            with attention_context():
                losses, derivs = torch.func.jvp(
                    lambda s, owners=owners: set_losses(model, start, cohort, owners, s),
                    (primal,), (tangent,),
                )
            pieces.append(derivs.float())
            # every set of a device has the same primal loss
            base[owners.cpu()] = losses.detach().float().cpu()
        d = torch.cat(pieces)
    else:
        with torch.inference_mode():
            pieces = []
            if estimator == "onesided":
                for part in _chunks(n_dev, sets_per_call):
                    owners = torch.arange(part.start, part.stop, device=dev)
                    at = {n: p.unsqueeze(0).expand(len(owners), *p.shape)
                          for n, p in params.items()}
                    base[part] = set_losses(model, start, cohort, owners, at).float().cpu()
                base_dev = base.to(dev)
                for part in _chunks(len(device_of), sets_per_call):
                    owners = device_of[part]
                    stacked = {n: params[n] + h * flat_v[n][part] for n in names}
                    losses = set_losses(model, start, cohort, owners, stacked).float()
                    pieces.append((losses - base_dev[owners]) / h)
            elif estimator == "central":
                sums = torch.zeros(n_dev)
                for part in _chunks(len(device_of), max(1, sets_per_call // 2)):
                    owners = device_of[part]
                    plus = {n: params[n] + h * flat_v[n][part] for n in names}
                    minus = {n: params[n] - h * flat_v[n][part] for n in names}
                    both = {n: torch.cat([plus[n], minus[n]]) for n in names}
                    losses = set_losses(model, start, cohort, torch.cat([owners, owners]),
                                        both).float()
                    count = len(owners)
                    pieces.append((losses[:count] - losses[count:]) / (2 * h))
                    sums.index_add_(0, owners.cpu(), (losses[:count] + losses[count:]).cpu() / 2)
                base = sums / torch.tensor(counts, dtype=torch.float32).clamp_min(1)
            else:
                raise ValueError(f"unknown estimator {estimator!r}")
            d = torch.cat(pieces)
    out = list(torch.split(d.float(), counts))
    return out, base
