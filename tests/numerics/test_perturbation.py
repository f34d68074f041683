"""Seeded perturbations: regeneration across processes, order independence, discriminative."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import torch

from fleetsim.numerics.perturbation import make_perturbation, stack_perturbations

SHAPES = [torch.Size([4, 3]), torch.Size([7]), torch.Size([2, 2, 2])]


def _digest(tensors: list[torch.Tensor]) -> list[float]:
    return [round(float(t.double().sum()), 10) for t in tensors] + [
        round(float(t.double().pow(2).sum()), 10) for t in tensors
    ]


def test_same_perturbation_in_another_process() -> None:
    here = make_perturbation(11, 5, 3, 2, SHAPES)
    code = textwrap.dedent(
        """
        import json, torch
        from fleetsim.numerics.perturbation import make_perturbation
        v = make_perturbation(11, 5, 3, 2, [torch.Size([4, 3]), torch.Size([7]),
                                            torch.Size([2, 2, 2])])
        print(json.dumps([t.reshape(-1).tolist() for t in v]))
        """
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True, cwd=".", env={"PYTHONPATH": ".", "PATH": ""})
    import json

    there = [torch.tensor(x) for x in json.loads(out.stdout)]
    for a, b in zip(here, there):
        assert torch.equal(a.reshape(-1), b)


def test_order_and_other_draws_do_not_matter() -> None:
    first = make_perturbation(1, 2, 3, 4, SHAPES)
    torch.randn(100)  # global RNG use must not leak into perturbations
    make_perturbation(1, 2, 3, 5, SHAPES)
    again = make_perturbation(1, 2, 3, 4, SHAPES)
    assert _digest(first) == _digest(again)
    stacked = stack_perturbations(1, 2, 3, [5, 4], SHAPES)
    assert all(torch.equal(s[1], f) for s, f in zip(stacked, first))
    other = make_perturbation(1, 2, 4, 4, SHAPES)  # another device
    assert _digest(other) != _digest(first)


def test_discriminative_sampling_prefers_the_previous_direction() -> None:
    shapes = [torch.Size([50]), torch.Size([10, 10])]
    previous = [torch.randn(s, generator=torch.Generator().manual_seed(9)) for s in shapes]

    def mean_abs_cos(candidates: int, chunk: int) -> float:
        total = 0.0
        for k in range(30):
            v = make_perturbation(0, 1, 0, k, shapes, previous_gradient=previous,
                                  candidates=candidates, chunk_elements=chunk)
            total += sum(
                float(torch.nn.functional.cosine_similarity(a.reshape(-1), b.reshape(-1), dim=0)
                      .abs()) for a, b in zip(v, previous)
            )
        return total / 30

    plain = mean_abs_cos(1, 4_000_000)
    chosen = mean_abs_cos(10, 4_000_000)
    assert chosen > 1.5 * plain
    # chunking bounds memory but ranks every candidate: same choice
    a = make_perturbation(0, 1, 0, 0, shapes, previous_gradient=previous, candidates=10,
                          chunk_elements=4_000_000)
    b = make_perturbation(0, 1, 0, 0, shapes, previous_gradient=previous, candidates=10,
                          chunk_elements=150)  # 3 and 1 candidates per chunk
    assert all(torch.equal(x, y) for x, y in zip(a, b))
