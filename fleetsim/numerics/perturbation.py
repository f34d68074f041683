"""Seeded perturbations v ~ N(0, I) on the trainable tensors, and discriminative sampling.

A perturbation is identified by (run seed, step, device, k) and regenerated from
``stream_seed(seed, "perturbation", step, device_id, k)`` with a CPU
``torch.Generator``; tensors are drawn in the engine's trainable-tensor order and
then moved to the compute device, so CPU and CUDA runs see the same v and a
device may upload a seed and a scalar instead of a dense vector.

Seed pool (FedKSeed, Qin et al. 2024): with ``protocol.seed_pool`` = K, the server
assigns each perturbation (step, device, k) an index j < K, and v is pool entry j's,
regenerated from ``stream_seed(seed, "seed-pool", j)`` (:func:`pool_perturbation`):
equal indices give equal v, so θ_T = θ_0 − Σ_j h_j v_j with h_j the server's
accumulated scalar of seed j.

Discriminative sampling (FwdLLM §4.3): with a previous aggregated gradient g,
each trainable tensor draws ``m`` candidates from the same generator and keeps
the one with the largest |cos(candidate, g)|.  The absolute value is used because
the estimate (∇L·v)v is unchanged under v → −v, so ranking by |cos| is ranking by
cos over the candidates and their negatives.  Candidates are generated in chunks
of at most ``chunk_elements`` numbers (memory-bounded) but *all* m candidates are
ranked; the reference implementation ranks only its last chunk of 1,000
candidates, which this module deliberately does not reproduce.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Optional

import torch

from fleetsim.rng import stream_seed


def perturbation_generator(seed: int, step: int, device_id: int, k: int) -> torch.Generator:
    """The CPU generator of perturbation (step, device_id, k)."""
    return torch.Generator(device="cpu").manual_seed(
        stream_seed(seed, "perturbation", step, device_id, k)
    )


def _best_candidate(
    generator: torch.Generator,
    shape: torch.Size,
    reference: torch.Tensor,
    candidates: int,
    chunk_elements: int,
) -> torch.Tensor:
    numel = max(1, reference.numel())
    per_chunk = max(1, chunk_elements // numel)
    ref = reference.detach().reshape(-1).to(device="cpu", dtype=torch.float32)
    ref_norm = ref.norm()
    best: Optional[torch.Tensor] = None
    best_score = -1.0
    remaining = candidates
    while remaining > 0:
        count = min(per_chunk, remaining)
        # one draw per candidate: the stream then does not depend on the chunk size
        # (torch fills large tensors in vectorised blocks)
        chunk = torch.stack([torch.randn(numel, generator=generator) for _ in range(count)])
        if ref_norm > 0:
            scores = (chunk @ ref).abs() / (chunk.norm(dim=1) * ref_norm).clamp_min(1e-30)
        else:  # no direction to prefer: keep the first candidate
            scores = torch.zeros(count)
            scores[0] = 1.0
        top = int(torch.argmax(scores))
        if float(scores[top]) > best_score:
            best_score = float(scores[top])
            best = chunk[top].clone()
        remaining -= count
    assert best is not None
    return best.reshape(shape)


def make_perturbation(
    seed: int,
    step: int,
    device_id: int,
    k: int,
    shapes: Sequence[torch.Size],
    *,
    previous_gradient: Optional[Sequence[torch.Tensor]] = None,
    candidates: int = 1,
    chunk_elements: int = 4_000_000,
    device: str | torch.device = "cpu",
    dtype: torch.dtype = torch.float32,
) -> list[torch.Tensor]:
    """v for (step, device_id, k): one tensor per trainable tensor, in ``shapes`` order.

    With ``previous_gradient`` and ``candidates`` > 1, each tensor is the best of
    ``candidates`` draws by |cosine| with the matching previous-gradient tensor."""
    generator = perturbation_generator(seed, step, device_id, k)
    out = []
    for index, shape in enumerate(shapes):
        if previous_gradient is not None and candidates > 1:
            tensor = _best_candidate(
                generator, torch.Size(shape), previous_gradient[index], candidates, chunk_elements
            )
        else:
            tensor = torch.randn(tuple(shape), generator=generator)
        out.append(tensor.to(device=device, dtype=dtype))
    return out


def stack_perturbations(
    seed: int,
    step: int,
    device_id: int,
    ks: Sequence[int],
    shapes: Sequence[torch.Size],
    **kwargs,
) -> list[torch.Tensor]:
    """Perturbations ks of one device stacked per tensor: list of (len(ks), *shape)."""
    per_k = [make_perturbation(seed, step, device_id, k, shapes, **kwargs) for k in ks]
    return [torch.stack([v[i] for v in per_k]) for i in range(len(shapes))]


def pool_generator(seed: int, index: int) -> torch.Generator:
    """The CPU generator of seed-pool entry ``index`` (FedKSeed's candidate seed j): its
    perturbation is the same at every step and on every device."""
    return torch.Generator(device="cpu").manual_seed(stream_seed(seed, "seed-pool", index))


def pool_perturbation(
    seed: int,
    index: int,
    shapes: Sequence[torch.Size],
    *,
    device: str | torch.device = "cpu",
    dtype: torch.dtype = torch.float32,
) -> list[torch.Tensor]:
    """v_j ~ N(0, I) of seed-pool entry ``index``: one tensor per trainable tensor, in
    ``shapes`` order, drawn like :func:`make_perturbation` (CPU generator, then moved)."""
    generator = pool_generator(seed, index)
    return [torch.randn(tuple(shape), generator=generator).to(device=device, dtype=dtype)
            for shape in shapes]


def stack_pool_perturbations(
    seed: int,
    indices: Sequence[int],
    shapes: Sequence[torch.Size],
    *,
    device: str | torch.device = "cpu",
    dtype: torch.dtype = torch.float32,
) -> list[torch.Tensor]:
    """Pool perturbations ``indices`` stacked per tensor: list of (len(indices), *shape)."""
    per_j = [pool_perturbation(seed, j, shapes, device=device, dtype=dtype) for j in indices]
    return [torch.stack([v[i] for v in per_j]) for i in range(len(shapes))]

