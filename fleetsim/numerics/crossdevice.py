"""A step's work across devices in as few calls as the memory budget allows.

All devices that computed for the same server step share θ; each brings its own
batch and its own perturbations.  This module stacks them: device batches are
padded to one shape and gathered a call at a time (:class:`Cohort`), every *parameter
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
* ``jvp``: exact forward mode, tangent v_ik on set (i, k).  On a model the
  hand-written pass covers (:mod:`fleetsim.numerics.forward_mode`: BERT family, LoRA
  factors and head trainable) each device's primal runs once and each set adds one
  tangent pass; otherwise ``torch.func.jvp`` runs every set forward with its tangent.
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

import numpy as np
import torch
from torch import nn

from fleetsim.numerics.forward_mode import cohort_jvp, plan_for
from fleetsim.numerics.stacked import stacked_parameters

# Host cost of the exact estimators in forwards of the rows they run, for
# ``numerics.estimator: auto``.  backprop runs each device's rows forward and backward once
# (one parameter set per device, whatever v).  jvp through ``torch.func`` runs every
# (device, k) set forward with its tangent; the hand-written forward-mode pass
# (:mod:`fleetsim.numerics.forward_mode`, when the model qualifies) runs each device's
# primal once and one tangent pass per set.  Measured interleaved on the 2-core CPU
# (bench/regime.py: MiniLM top-layer LoRA + head, batch 8, 64 tokens, 100 devices,
# cross-device batched, projections cached; ``floor_cached`` = one forward of the same
# rows): backprop 2.1-2.2 forwards, torch.func jvp 3.5 per tangent, forward mode 1.0 per
# device + about 1.05 per tangent (measured 2.0 at v = 1 and 10.3 at v = 8).  So forward
# mode wins at v = 1 (by ~7 %) and backprop from v = 2 on; torch.func jvp never wins on a
# CPU.  CUDA is unmeasured: the
# CPU figures stand in until someone measures it.
EXACT_COST = {
    device: {"backprop": 2.2, "jvp": 3.5, "forward_mode_primal": 1.0,
             "forward_mode_tangent": 1.05}
    for device in ("cpu", "cuda")
}


def choose_exact(perturbations: Sequence[int], device: str, forward_mode: bool = False) -> str:
    """The cheaper exact estimator for a step whose devices run ``perturbations[i]``
    perturbations each: backprop costs ``EXACT_COST['backprop']`` forwards of every
    device's rows; jvp costs ``EXACT_COST['jvp']`` forwards per perturbation, or with the
    hand-written pass (``forward_mode``: the model qualifies,
    :func:`fleetsim.numerics.forward_mode.plan_for`) one primal forward per device plus
    ``forward_mode_tangent`` per perturbation."""
    cost = EXACT_COST.get(device, EXACT_COST["cpu"])
    devices = sum(1 for v in perturbations if v > 0)
    sets = sum(perturbations)
    jvp = (cost["forward_mode_primal"] * devices + cost["forward_mode_tangent"] * sets
           if forward_mode else cost["jvp"] * sets)
    return "jvp" if jvp < cost["backprop"] * devices else "backprop"


Loader = Callable[[np.ndarray], tuple[torch.Tensor, torch.Tensor, torch.Tensor]]
# (inputs, mask, labels, weights) of some devices' rows, device-major (Cohort.take)
Rows = tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]


@dataclass
class Cohort:
    """A step's device batches, gathered one call at a time: ``rows_of`` (N, B) holds
    device i's dataset rows, its ``sizes[i]`` real rows followed by padding rows that
    repeat its first row (weight 0 in its mean loss); ``load`` maps dataset rows to
    (inputs (R, W[, H+P]), mask (R, W), labels (R,)) with W trimmed to the rows' longest
    example.

    Gathering per call rather than once per step keeps each gather the size of one call
    (a few MiB that stay in cache and in the allocator's free lists) instead of the whole
    step's activations (≈ 300 MiB at 100 devices with the projection cache, measured at
    ≈ 70 ms of page faults and cache misses per step on the 2-core CPU)."""

    rows_of: np.ndarray
    sizes: np.ndarray
    load: Loader

    @classmethod
    def of(cls, rows: Sequence[Sequence[int]], load: Loader) -> Cohort:
        """From each device's dataset rows (ragged); padding repeats a device's first row."""
        sizes = np.asarray([len(r) for r in rows], dtype=np.int64)
        widest = int(sizes.max())
        rows_of = np.stack([np.concatenate([np.asarray(r, dtype=np.int64),
                                            np.full(widest - len(r), r[0], dtype=np.int64)])
                            for r in rows])
        return cls(rows_of, sizes, load)

    @property
    def rows(self) -> int:
        return int(self.rows_of.shape[1])

    def take(self, devices: torch.Tensor) -> Rows:
        """The rows of ``devices`` (D,) (repeats allowed), device-major: inputs (D·B, W[, ·]),
        mask (D·B, W), labels (D·B,), weights (D·B,) (1 a real row, 0 padding)."""
        picked = devices.cpu().numpy()
        inputs, mask, labels = self.load(self.rows_of[picked].reshape(-1))
        weights = (np.arange(self.rows)[None, :] < self.sizes[picked][:, None]).reshape(-1)
        return inputs, mask, labels, torch.as_tensor(weights, dtype=torch.float32,
                                                     device=inputs.device)


def set_losses(model: nn.Module, start: int, rows: Rows, stacked: dict[str, torch.Tensor]
               ) -> torch.Tensor:
    """Mean loss of each parameter set (shape (sets,)): set j holds ``stacked[n][j]`` and
    runs the j-th block of ``rows`` (:meth:`Cohort.take` of the sets' owners)."""
    inputs, mask, labels, weights = rows
    count = int(next(iter(stacked.values())).shape[0])
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
    if not counts or min(counts) < 1:
        # a device without a perturbation has no set to carry its base loss; the engine
        # drops such work before it gets here
        raise ValueError(f"cohort_directional: every device needs a perturbation, got {counts}")
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

            def total(stacked: dict[str, torch.Tensor], rows=cohort.take(owners)):
                losses = set_losses(model, start, rows, stacked)
                return losses.sum(), losses.detach()

            grad, losses = torch.func.grad(total, has_aux=True)(copies)
            base[part] = losses.float().cpu()
            for n in names:
                grads[n][part] = grad[n].float()
        d = sum(torch.einsum("j...,j...->j", flat_v[n].float(), grads[n][device_of])
                for n in names)
    elif estimator == "jvp" and (plan := plan_for(model, names, start)) is not None:
        # the hand-written forward-mode pass: one primal per device, one tangent per set
        pieces = []
        with torch.inference_mode():
            for part in _chunks(len(device_of), sets_per_call):
                owners = device_of[part]
                devices, local = torch.unique_consecutive(owners, return_inverse=True)
                derivs, losses = cohort_jvp(
                    plan, model, params, *cohort.take(devices), cohort.rows,
                    {n: flat_v[n][part] for n in names},
                    None if len(devices) == len(owners) else local,
                )
                pieces.append(derivs)
                base[devices.cpu()] = losses.cpu()
        d = torch.cat(pieces)
    elif estimator == "jvp":
        pieces = []
        for part in _chunks(len(device_of), sets_per_call):
            owners = device_of[part]
            primal = {n: p.detach().unsqueeze(0).repeat(len(owners), *([1] * p.dim()))
                      for n, p in params.items()}
            tangent = {n: flat_v[n][part] for n in names}
            with attention_context():
                losses, derivs = torch.func.jvp(
                    lambda s, rows=cohort.take(owners): set_losses(model, start, rows, s),
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
                    base[part] = set_losses(model, start, cohort.take(owners), at).float().cpu()
                base_dev = base.to(dev)
                for part in _chunks(len(device_of), sets_per_call):
                    owners = device_of[part]
                    stacked = {n: params[n] + h * flat_v[n][part] for n in names}
                    losses = set_losses(model, start, cohort.take(owners), stacked).float()
                    pieces.append((losses - base_dev[owners]) / h)
            elif estimator == "central":
                sums = torch.zeros(n_dev)
                for part in _chunks(len(device_of), max(1, sets_per_call // 2)):
                    owners = device_of[part]
                    plus = {n: params[n] + h * flat_v[n][part] for n in names}
                    minus = {n: params[n] - h * flat_v[n][part] for n in names}
                    both = {n: torch.cat([plus[n], minus[n]]) for n in names}
                    losses = set_losses(model, start, cohort.take(torch.cat([owners, owners])),
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
