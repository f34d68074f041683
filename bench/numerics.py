"""Host cost of the forward-gradient estimators (P1) and their peak memory (P2).

P1: seconds per perturbation / seconds of one plain forward (same process, same
batch, inference mode), for each host estimator and K perturbations batched per
call, batch 8, seq 64 and 128; LoRA r=8 on query/value of every layer + head,
and LoRA on the top 2 layers + head with frozen-prefix reuse (prefix run once per
batch and counted).  P2: peak resident memory above the loaded model for one
one-sided call with K=32 perturbations batched vs one backprop step on the same
batch (SmolLM2-135M, batch 8, seq 128); each measurement runs in a fresh child
process so ``ru_maxrss`` is that measurement's own peak.  Also: samples/s of a
plain forward in eval mode, under ``torch.inference_mode`` and ``torch.compile``.

    .venv/bin/python bench/numerics.py                    # everything
    .venv/bin/python bench/numerics.py --models minilm --ks 1,8,32 --skip-p2

Ends with RESULT lines (see the issue for their names).
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

from fleetsim.numerics.config import ModelConfig, NumericsConfig, PeftConfig
from fleetsim.numerics.data import DataConfig
from fleetsim.numerics.engine import TorchEngine
from fleetsim.numerics.estimators import directional_derivatives
from fleetsim.numerics.perturbation import stack_perturbations

MODELS = {"minilm": "all-minilm-l6-v2", "smollm2": "smollm2-135m"}
ESTIMATORS = ("onesided", "central", "jvp", "backprop")


def build(model_key: str, seq: int, peft: PeftConfig, threads: int) -> TorchEngine:
    pooling = "mean" if model_key == "minilm" else "last"
    return TorchEngine(
        ModelConfig(name_or_path=MODELS[model_key], max_seq_len=seq, pooling=pooling),
        peft,
        DataConfig(name="bbc_news", batch_size=8, max_examples=64, max_eval_examples=8),
        NumericsConfig(threads=threads, prefix_cache_max_bytes=0),
        n_clients=1,
        seed=0,
        base_dir=Path("."),
    )


def timed(fn, repeats: int, warm=None) -> float:
    (warm or fn)()  # warm-up (allocator, vmap), by default one full run
    samples = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        samples.append(time.perf_counter() - start)
    return statistics.median(samples)


def full_batch(engine: TorchEngine, seq: int):
    batch = engine.plan.batches[0][0]
    rows = torch.as_tensor(engine._row_of[batch], dtype=torch.long)
    ids, mask = engine.input_ids[rows, :seq], engine.attention_mask[rows, :seq]
    assert int(mask.sum()) == ids.numel(), "benchmark batch must be full width"
    return ids, mask, engine.labels[rows]


def forward_seconds(engine: TorchEngine, ids, mask, repeats: int) -> float:
    def run() -> None:
        with torch.inference_mode():
            engine.model.logits(ids, mask)

    return timed(run, repeats)


def per_perturbation(
    engine: TorchEngine, ids, mask, labels, estimator: str, k: int, repeats: int
) -> float:
    """Seconds per perturbation for K perturbations in one batched call (plus, with a
    frozen prefix, the prefix run once for the batch)."""
    tangents = dict(zip(engine.names, stack_perturbations(0, 0, 0, range(k), engine.shapes)))
    params = engine.current_params()

    def run(count: int = k) -> None:
        if engine.start_layer > 0:
            with torch.inference_mode():
                inputs = engine.model.prefix(ids, mask, engine.start_layer)
        else:
            inputs = ids
        loss = engine.loss_fn(inputs, mask, labels)
        sub = {n: t[:count] for n, t in tangents.items()}
        directional_derivatives(loss, params, sub, estimator, 0.01, count)

    return timed(run, repeats, warm=lambda: run(min(k, 2))) / k


def p1(
    models: list[str], seqs: list[int], ks: list[int], repeats: int, threads: int, results: dict
) -> None:
    print("P1: host seconds per perturbation / plain forward (batch 8)")
    print(
        f"{'model':8} {'seq':>4} {'peft':10} {'estimator':9} "
        + " ".join(f"{'K=' + str(k):>7}" for k in ks)
        + "   forward_s"
    )
    for model_key in models:
        for seq in seqs:
            configs = [("lora-all", PeftConfig(method="lora", rank=8, alpha=16))]
            if model_key == "minilm":
                configs.append(
                    ("lora-top2", PeftConfig(method="lora", rank=8, alpha=16, top_layers=2))
                )
            for label, peft in configs:
                engine = build(model_key, seq, peft, threads)
                ids, mask, labels = full_batch(engine, seq)
                fwd = forward_seconds(engine, ids, mask, repeats)
                estimators = ESTIMATORS if label == "lora-all" else ("onesided",)
                for estimator in estimators:
                    ratios = []
                    for k in ks:
                        seconds = per_perturbation(engine, ids, mask, labels, estimator, k, repeats)
                        ratios.append(seconds / fwd)
                        results[(model_key, seq, label, estimator, k)] = seconds / fwd
                    print(
                        f"{model_key:8} {seq:>4} {label:10} {estimator:9} "
                        + " ".join(f"{r:7.2f}" for r in ratios)
                        + f"   {fwd:.3f}",
                        flush=True,
                    )
                if label == "lora-all":
                    compile_report(engine, ids, mask, repeats, model_key, seq)


def compile_report(engine: TorchEngine, ids, mask, repeats: int, model_key: str, seq: int) -> None:
    def plain() -> None:
        with torch.no_grad():
            engine.model.logits(ids, mask)

    def inference() -> None:
        with torch.inference_mode():
            engine.model.logits(ids, mask)

    line = (
        f"  samples/s {model_key} seq {seq}: no_grad {8 / timed(plain, repeats):.1f}, "
        f"inference_mode {8 / timed(inference, repeats):.1f}"
    )
    try:
        compiled = torch.compile(engine.model.logits)

        def run_compiled() -> None:
            with torch.inference_mode():
                compiled(ids, mask)

        line += f", torch.compile {8 / timed(run_compiled, repeats):.1f}"
    except Exception as exc:  # inductor needs a C++ toolchain; report, do not fail
        line += f", torch.compile unavailable ({type(exc).__name__})"
    print(line, flush=True)


def p2_child(mode: str, seq: int, threads: int) -> None:
    engine = build("smollm2", seq, PeftConfig(method="lora", rank=8, alpha=16), threads)
    ids, mask, labels = full_batch(engine, seq)
    tangents = dict(zip(engine.names, stack_perturbations(0, 0, 0, range(32), engine.shapes)))
    params = engine.current_params()
    loss = engine.loss_fn(ids, mask, labels)
    with torch.inference_mode():
        engine.model.logits(ids[:1], mask[:1])  # allocator warm, tiny
    base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    start = time.perf_counter()
    if mode == "onesided":
        directional_derivatives(loss, params, tangents, "onesided", 0.01, 32)
    else:
        directional_derivatives(loss, params, tangents, "backprop", 0.01, 32)
    seconds = time.perf_counter() - start
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    print(json.dumps({"mode": mode, "peak_above_model_kib": peak - base, "seconds": seconds}))


def p2(seq: int, threads: int) -> float:
    print(f"P2: peak memory above the loaded model, SmolLM2-135M, batch 8, seq {seq}")
    out = {}
    for mode in ("onesided", "backprop"):
        proc = subprocess.run(
            [
                sys.executable,
                __file__,
                "--p2-child",
                mode,
                "--p2-seq",
                str(seq),
                "--threads",
                str(threads),
            ],
            capture_output=True,
            text=True,
            check=True,
        )
        out[mode] = json.loads(proc.stdout.strip().splitlines()[-1])
        label = "one-sided, K=32 batched" if mode == "onesided" else "one backprop step"
        print(
            f"  {label:24}: peak +{out[mode]['peak_above_model_kib'] / 1024:.0f} MiB, "
            f"{out[mode]['seconds']:.1f} s",
            flush=True,
        )
    return out["onesided"]["peak_above_model_kib"] / max(1, out["backprop"]["peak_above_model_kib"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--models", default="minilm,smollm2")
    parser.add_argument("--seqs", default="64,128")
    parser.add_argument("--ks", default="1,8,32")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--skip-p1", action="store_true")
    parser.add_argument("--skip-p2", action="store_true")
    parser.add_argument("--p2-child", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--p2-seq", type=int, default=128)
    args = parser.parse_args()
    if args.p2_child:
        p2_child(args.p2_child, args.p2_seq, args.threads)
        return
    results: dict = {}
    if not args.skip_p1:
        p1(
            args.models.split(","),
            [int(s) for s in args.seqs.split(",")],
            [int(k) for k in args.ks.split(",")],
            args.repeats,
            args.threads,
            results,
        )
    memory_ratio = None if args.skip_p2 else p2(args.p2_seq, args.threads)
    for estimator in ESTIMATORS:
        key = ("minilm", 128, "lora-all", estimator, 32)
        if key in results:
            print(f"RESULT {estimator}_k32_minilm_seq128_over_forward={results[key]:.3f}")
    key = ("minilm", 128, "lora-top2", "onesided", 32)
    if key in results:
        print(f"RESULT onesided_k32_minilm_top2_seq128_over_forward={results[key]:.3f}")
    if memory_ratio is not None:
        print(f"RESULT smollm_fwdgrad_over_backprop_peak_memory={memory_ratio:.3f}")


if __name__ == "__main__":
    main()
