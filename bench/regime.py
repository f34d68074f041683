"""Host seconds per simulated step at FwdLLM's scale (issue 15).

MiniLM, LoRA r=4 on query/value of the top layer + head, frozen-prefix cache,
batch 8, seq 64 (the quickstart's learning setup).  For devices ∈ {10, 100, 1000}
× perturbations per device v ∈ {1, 8}, one process times, interleaved (every
repetition runs every method once, in turn, on the same work):

* ``default``   — fleetsim's defaults (``numerics.estimator: auto``, cross-device
  batching), the engine's ``forward_gradient`` on the step's work;
* ``onesided``, ``central``, ``jvp``, ``backprop`` — each host estimator, batched
  across devices;
* ``baseline``  — the code before issue 15: one-sided, one device at a time
  (``cross_device_batching: false``), the old default;
* ``floor``     — one plain forward of the trainable suffix over all devices'
  examples of the step, from the cached prefix activations (the hidden states entering
  the top layer; inference mode, the token budget per call), as issue 15 defines it;
* ``floor_cached`` — the same forward fed the cached frozen query/key/value
  projections too (``numerics.frozen_projection_reuse``, on by default): the cheapest
  forward fleetsim itself can run, shown so that default ÷ floor is read beside it;
* ``reference`` — FwdLLM's own trainer loop, re-written here (not copied) from
  ``forward_training/tc_transformer_trainer_distribute.py`` and ``calculate_jvp`` in
  UbiquitousLearning/FwdLLM: per device and perturbation, a tangent over every parameter
  tensor of the model (zeros for the frozen ones), two functional forwards of the whole
  model from token ids (no prefix cache) on fresh tuples θ ± h·v of every tensor, central
  difference, Σ d·v accumulated over every tensor;
* ``reference_lean`` — the same loop with the tuples over the trainable tensors only, to
  show how much of the reference's cost is its tuple handling rather than its forwards.

  Both cost the same for every device, so they are timed on ``--reference-devices``
  devices and scaled linearly to n (said so in the table).

``jvp`` is the engine's exact forward mode: on this model the hand-written pass
(:mod:`fleetsim.numerics.forward_mode`), one primal per device and one tangent per
perturbation.

The step's work: device d holds client d mod ``--clients``, batch 0 (BBC News, 200
clients: a full batch of 8 each), perturbations 0..v−1 of step ``rep``.  Costly
cells are left out ('—'): central beyond n·v = 800, jvp, one-sided and the
baseline beyond 1,000 (for v = 1: twice those), the reference beyond 100 at v > 1, and
every cell that took longer than ``--cell-budget`` seconds on an earlier repetition.

Ends with ``RESULT`` lines: ``regime_n100_v8_over_floor`` (default ÷ floor, the median of
the per-repetition ratios of the two, which run next to each other; goal
≤ 2.0), ``regime_n100_v1_over_floor`` (goal ≤ 1.6), ``reference_over_fleetsim_n100_v1``
(goal ≥ 10; ``reference_lean_over_fleetsim_n100_v1`` beside it),
``regime_n1000_v1_default_s``, ``regime_n1000_v1_over_floor``, and the
baseline ratio ``baseline_over_default_n100_v8``.  Never a timed test: run it by
hand, on a quiet machine if you can (``uptime`` is printed beside the figures).

    .venv/bin/python bench/regime.py                       # the whole table (~10 min quiet)
    .venv/bin/python bench/regime.py --devices 10,100 --reps 3
    .venv/bin/python bench/regime.py --devices 1000 --reps 1
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from pathlib import Path

import torch

from fleetsim.numerics.base import GradientWork
from fleetsim.numerics.config import ModelConfig, NumericsConfig, PeftConfig
from fleetsim.numerics.data import DataConfig
from fleetsim.numerics.data import batch_of as _batch_of
from fleetsim.numerics.engine import TorchEngine

METHODS = ("default", "onesided", "central", "jvp", "backprop", "baseline", "floor",
           "floor_cached", "reference", "reference_lean")


def build(clients: int, threads: int) -> TorchEngine:
    return TorchEngine(
        ModelConfig(name_or_path="all-minilm-l6-v2", max_seq_len=64, pooling="mean"),
        PeftConfig(method="lora", rank=4, alpha=8, target_modules=["query", "value"],
                   top_layers=1, train_head=True),
        DataConfig(name="bbc_news", batch_size=8),
        NumericsConfig(threads=threads),
        n_clients=clients, seed=0, base_dir=Path("."),
    )


def step_work(n: int, v: int, clients: int) -> list[GradientWork]:
    return [GradientWork(device_id=d, client_id=d % clients, batch_index=0,
                         perturbations=tuple(range(v))) for d in range(n)]


def run_engine(engine: TorchEngine, work: list[GradientWork], rep: int, **settings) -> None:
    engine.cfg = engine.cfg.model_copy(update=settings)
    engine.forward_gradient(rep, work)


def run_floor(engine: TorchEngine, work: list[GradientWork], cached: bool = False) -> None:
    """One plain forward of the suffix over every device's examples from the cached
    hidden states entering it (``cached``: with the cached projections as well)."""
    hidden = engine.model.backbone.config.hidden_size
    rows = engine.host_chunk * engine.data_cfg.batch_size  # the token budget per call
    indices = torch.cat([torch.as_tensor(_batch_of(engine.plan, w.client_id, w.batch_index))
                         for w in work]).numpy()
    params = engine.current_params()
    with torch.inference_mode():
        for start in range(0, len(indices), rows):
            inputs, mask, labels = engine.batch_inputs(indices[start:start + rows])
            if not cached:
                inputs = inputs[..., :hidden].contiguous()
            logits = torch.func.functional_call(
                engine.model, params, (inputs, mask, engine.start_layer), strict=False)
            torch.nn.functional.cross_entropy(logits, labels)


def run_reference(engine: TorchEngine, work: list[GradientWork], rep: int, h: float,
                  whole_model: bool = True) -> None:
    """FwdLLM's trainer, re-written here (``forward_training/
    tc_transformer_trainer_distribute.py`` and ``utils/fwdgrad_utils.py::calculate_jvp`` in
    UbiquitousLearning/FwdLLM): the model is made functional over *all* its parameter
    tensors; per device batch and perturbation, a tangent tuple over every tensor
    (Gaussian for the trainable ones, zeros for the frozen), L(θ − hv) and L(θ + hv) from
    two whole-model forwards over token ids, each on a fresh tuple ``p ± h·v`` of every
    tensor, and ``g += d·v`` accumulated over every tensor.  ``whole_model=False``: the
    same loop with tuples over the trainable tensors only (``reference_lean``: the part
    of FwdLLM's cost that is its tuple handling, not its forwards)."""
    trainable = engine.current_params()
    if whole_model:
        params = {n: p.detach() for n, p in engine.model.named_parameters()}
        params.update(trainable)
    else:
        params = trainable
    gradient = {n: torch.zeros_like(p) for n, p in params.items()}
    with torch.no_grad():
        for item in work:
            rows = torch.as_tensor(
                engine._row_of[_batch_of(engine.plan, item.client_id, item.batch_index)])
            ids, mask = engine.input_ids[rows], engine.attention_mask[rows]
            labels = engine.labels[rows]
            for k in item.perturbations:
                drawn = dict(zip(engine.names,
                                 engine._perturbations(rep, item.device_id, (k,))))
                v = {n: drawn[n][0] if n in drawn else torch.zeros_like(p)
                     for n, p in params.items()}
                losses = []
                for sign in (-1.0, 1.0):
                    shifted = {n: p + sign * h * v[n] for n, p in params.items()}
                    logits = torch.func.functional_call(
                        engine.model, shifted, (ids, mask, -1), strict=False)
                    losses.append(torch.nn.functional.cross_entropy(logits, labels))
                d = (losses[1] - losses[0]) / (2 * h)
                for n in gradient:
                    gradient[n].add_(d * v[n])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--devices", default="10,100,1000")
    parser.add_argument("--vs", default="1,8")
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--clients", type=int, default=200)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--reference-devices", type=int, default=5)
    parser.add_argument("--cell-budget", type=float, default=40.0,
                        help="leave out a cell that took longer than this (seconds)")
    parser.add_argument("--methods", default=",".join(METHODS))
    args = parser.parse_args()
    devices = [int(x) for x in args.devices.split(",")]
    vs = [int(x) for x in args.vs.split(",")]
    methods = args.methods.split(",")

    started = time.perf_counter()
    engine = build(args.clients, args.threads)
    engine.warm_prefix_cache()
    h = engine.cfg.h
    print(f"engine ready in {time.perf_counter() - started:.1f}s; trainable "
          f"{engine.trainable_params}, prefix layer {engine.start_layer}, host batching "
          f"{engine.host_batching}, {engine.host_chunk} sets per call; threads {args.threads}",
          flush=True)

    def one(method: str, n: int, v: int, rep: int) -> float:
        work = step_work(n, v, args.clients)
        t0 = time.perf_counter()
        if method == "default":
            run_engine(engine, work, rep, estimator="auto", cross_device_batching=True)
        elif method == "baseline":
            run_engine(engine, work, rep, estimator="onesided", cross_device_batching=False)
        elif method in ("floor", "floor_cached"):
            run_floor(engine, work, cached=method == "floor_cached")
        elif method in ("reference", "reference_lean"):
            run_reference(engine, work[: args.reference_devices], rep, h,
                          whole_model=method == "reference")
            return (time.perf_counter() - t0) * n / min(n, args.reference_devices)
        else:
            run_engine(engine, work, rep, estimator=method, cross_device_batching=True)
        return time.perf_counter() - t0

    cells = [(n, v) for n in devices for v in vs]
    times: dict[tuple[int, int, str], list[float]] = {}
    skipped: set[tuple[int, int, str]] = set()
    # cells left out up front (their cost: central 2 forwards per perturbation, jvp and
    # one-sided about 1, the per-device baseline 1; the table leaves the same out)
    limits = {"jvp": 1000, "central": 800, "onesided": 1000, "baseline": 1000,
              "reference": 100, "reference_lean": 100}
    for n, v in cells:
        skipped |= {(n, v, m) for m, limit in limits.items() if n * v > limit and v > 1}
        skipped |= {(n, v, m) for m, limit in limits.items()
                    if n * v > 2 * limit and not m.startswith("reference")}
    # default and floor run next to each other: their per-repetition ratio is paired
    methods = [m for m in ("default", "floor") if m in methods] + [
        m for m in methods if m not in ("default", "floor")]
    for m in methods:  # warm-up: the first call of each path pays one-off costs
        one(m, 10, 1, 0)
    for rep in range(args.reps):
        for n, v in cells:
            for m in methods:
                key = (n, v, m)
                if key in skipped:
                    continue
                elapsed = one(m, n, v, rep)
                times.setdefault(key, []).append(elapsed)
                if elapsed > args.cell_budget:
                    skipped.add(key)
        print(f"repetition {rep + 1}/{args.reps} done at {time.perf_counter() - started:.0f}s;"
              f" load {os.getloadavg()[0]:.1f}", flush=True)

    def med(n: int, v: int, m: str) -> float:
        values = times.get((n, v, m))
        return statistics.median(values) if values else float("nan")

    load = os.getloadavg()
    print(f"\nhost seconds per simulated step (median of {args.reps} interleaved repetitions;"
          f" load average {load[0]:.1f} {load[1]:.1f} {load[2]:.1f} on {os.cpu_count()} "
          f"cores; reference timed on {args.reference_devices} devices and scaled to n)")
    print("| devices×v | " + " | ".join(methods) + " | default÷floor |")
    print("|---" * (len(methods) + 2) + "|")
    for n, v in cells:
        row = [f"{med(n, v, m):.2f}" if (n, v, m) in times else "—" for m in methods]
        ratio = med(n, v, "default") / med(n, v, "floor")
        print(f"| {n}×{v} | " + " | ".join(row) + f" | {ratio:.2f} |")
    engine.cfg = engine.cfg.model_copy(update={"estimator": "auto"})
    def paired(n: int, v: int) -> float:
        pairs = list(zip(times.get((n, v, "default"), []), times.get((n, v, "floor"), [])))
        return statistics.median(a / b for a, b in pairs) if pairs else float("nan")

    print("default÷floor, median of the paired per-repetition ratios: " + ", ".join(
        f"{n}×{v}: {paired(n, v):.2f}" for n, v in cells))
    print("auto picks: " + ", ".join(
        f"{n}×{v}: {engine.step_estimator([v] * n)}" for n, v in cells))

    def result(name: str, value: float) -> None:
        if value == value:  # not NaN: the cell was measured
            print(f"RESULT {name}={value:.3g}")

    result("regime_n100_v8_over_floor", paired(100, 8))
    result("regime_n100_v1_over_floor", paired(100, 1))
    result("reference_over_fleetsim_n100_v1", med(100, 1, "reference") / med(100, 1, "default"))
    result("reference_lean_over_fleetsim_n100_v1",
           med(100, 1, "reference_lean") / med(100, 1, "default"))
    result("baseline_over_default_n100_v8", med(100, 8, "baseline") / med(100, 8, "default"))
    result("baseline_over_default_n100_v1", med(100, 1, "baseline") / med(100, 1, "default"))
    result("regime_n1000_v1_default_s", med(1000, 1, "default"))
    result("regime_n1000_v1_over_floor", paired(1000, 1))
    result("regime_n1000_v8_over_floor", paired(1000, 8))


if __name__ == "__main__":
    main()
