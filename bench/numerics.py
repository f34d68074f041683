"""Host cost of the forward-gradient estimators (P1) and their peak memory (P2).

P1: seconds per perturbation / seconds of one plain forward (same process, same
batch, inference mode), for each host estimator and K = 1, 8, 32 perturbations of
one batch, evaluated as the engine does (``host_batch_perturbations`` 'auto'
perturbations per call, one stacked forward over perturbations × batch rows),
batch 8, seq 64 and 128; LoRA r=8 on query/value of every layer + head, and LoRA
on the top 2 layers + head with frozen-prefix reuse (the prefix is run once per
batch and counted).  For MiniLM, a sweep over perturbations per call shows why
'auto' picks what it picks.  P2: peak resident memory above the loaded model for
one one-sided call with K=32 perturbations batched as in P1 (and, for the record,
all 32 in one call) vs one backprop step on the same batch (SmolLM2-135M, batch 8,
seq 128); each measurement runs in a fresh child process whose peak resident set is
reset after loading, so the peak is that call's own.  Also: samples/s of a plain
forward in eval mode, under ``torch.inference_mode`` and ``torch.compile``.

    .venv/bin/python bench/numerics.py                    # everything (~40 min)
    .venv/bin/python bench/numerics.py --models minilm --seqs 128 --skip-p2  # ~6 min

Ends with RESULT lines (see the issue for their names).
"""

from __future__ import annotations

import argparse
import gc
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


def per_perturbation(
    engine: TorchEngine, ids, mask, labels, estimator: str, k: int, repeats: int,
    chunk: int | None = None,
) -> tuple[float, float]:
    """(host cost per perturbation / plain forward, plain forward seconds) for K
    perturbations of one batch, evaluated as the engine does (``chunk`` perturbations per
    batched call, default the engine's ``host_batch_perturbations``), plus, with a frozen
    prefix, the prefix run once for the batch.

    Forward samples are interleaved with the estimator's (three forwards before each
    timed estimator call), so that drift in the machine's speed hits numerator and
    denominator alike; the ratio is of the two medians."""
    tangents = dict(zip(engine.names, stack_perturbations(0, 0, 0, range(k), engine.shapes)))
    params = engine.current_params()
    chunk = chunk or engine.host_chunk

    def run(count: int = k) -> None:
        if engine.start_layer > 0:
            with torch.inference_mode():
                inputs = engine.model.prefix(ids, mask, engine.start_layer)
        else:
            inputs = ids
        sub = {n: t[:count] for n, t in tangents.items()}
        directional_derivatives(
            engine.loss_fn(inputs, mask, labels), params, sub, estimator, 0.01, chunk,
            engine.batched_loss_fn(inputs, mask, labels),
        )

    def forward() -> None:
        with torch.inference_mode():
            engine.model.logits(ids, mask)

    run(min(k, 2))  # warm-up (allocator, vmap)
    forward()
    forwards, runs = [], []
    for _ in range(repeats):
        for _ in range(3):
            start = time.perf_counter()
            forward()
            forwards.append(time.perf_counter() - start)
        start = time.perf_counter()
        run()
        runs.append((time.perf_counter() - start) / k)
    fwd = statistics.median(forwards)
    return statistics.median(runs) / fwd, fwd


def chunk_sweep(engine: TorchEngine, ids, mask, labels, k: int, repeats: int,
                label: str) -> None:
    """One-sided, K perturbations: cost per perturbation against perturbations per call."""
    cells = []
    for chunk in (1, 2, 4, 8, 16, 32):
        if chunk > k:
            break
        ratio, _ = per_perturbation(engine, ids, mask, labels, "onesided", k, repeats, chunk)
        cells.append(f"{chunk}:{ratio:.2f}")
    print(f"  {label}: one-sided K={k}, perturbations per call:ratio  " + "  ".join(cells),
          flush=True)


def p1(
    models: list[str], seqs: list[int], ks: list[int], repeats: int, threads: int, results: dict,
    sweep: bool = True,
) -> None:
    print("P1: host seconds per perturbation / plain forward (batch 8); perturbations run "
          "batched, host_batch_perturbations='auto' per call (stacked forward)")
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
                estimators = ESTIMATORS if label == "lora-all" else ("onesided",)
                for estimator in estimators:
                    ratios, forwards = [], []
                    for k in ks:
                        ratio, fwd = per_perturbation(
                            engine, ids, mask, labels, estimator, k, repeats
                        )
                        ratios.append(ratio)
                        forwards.append(fwd)
                        results[(model_key, seq, label, estimator, k)] = ratio
                    print(
                        f"{model_key:8} {seq:>4} {label:10} {estimator:9} "
                        + " ".join(f"{r:7.2f}" for r in ratios)
                        + f"   {statistics.median(forwards):.3f}",
                        flush=True,
                    )
                if sweep and model_key == "minilm" and max(ks) >= 8:
                    chunk_sweep(engine, ids, mask, labels, max(ks), repeats, label)
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
    batched = engine.batched_loss_fn(ids, mask, labels)
    gc.collect()
    base = reset_peak_rss_kib()
    start = time.perf_counter()
    if mode == "onesided":  # P1's fast configuration: the engine's perturbations per call
        directional_derivatives(loss, params, tangents, "onesided", 0.01, engine.host_chunk,
                                batched)
    elif mode == "onesided-one-call":  # all 32 perturbations in one call (256 rows)
        directional_derivatives(loss, params, tangents, "onesided", 0.01, 32, batched)
    else:
        directional_derivatives(loss, params, tangents, "backprop", 0.01, 32)
    seconds = time.perf_counter() - start
    peak = peak_rss_kib()
    print(json.dumps({"mode": mode, "peak_above_model_kib": peak - base, "seconds": seconds}))


def _status_kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"/proc/self/status has no {field}")


def reset_peak_rss_kib() -> int:
    """Reset the process's peak resident set (Linux: ``5`` into ``/proc/self/clear_refs``)
    so that loading the model does not hide the measured call's peak; returns the
    resident set now.  Elsewhere the lifetime peak (``ru_maxrss``) is the fallback, valid
    only when the call peaks above everything before it."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return _status_kib("VmRSS")
    except OSError:
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss


def peak_rss_kib() -> int:
    try:
        return _status_kib("VmHWM")
    except OSError:
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss


def p2(seq: int, threads: int) -> float:
    print(f"P2: peak memory above the loaded model, SmolLM2-135M, batch 8, seq {seq}")
    out = {}
    labels = {
        "onesided": "one-sided, K=32, auto",
        "onesided-one-call": "one-sided, K=32, 1 call",
        "backprop": "one backprop step",
    }
    for mode in labels:
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
        print(
            f"  {labels[mode]:24}: peak +{out[mode]['peak_above_model_kib'] / 1024:.0f} MiB, "
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
    parser.add_argument("--smollm-repeats", type=int, default=1,
                        help="timed repeats for SmolLM2 (its K=32 central call takes minutes)")
    parser.add_argument("--no-sweep", action="store_true",
                        help="skip the perturbations-per-call sweep (MiniLM)")
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
        for model_key in args.models.split(","):
            p1(
                [model_key],
                [int(s) for s in args.seqs.split(",")],
                [int(k) for k in args.ks.split(",")],
                args.smollm_repeats if model_key == "smollm2" else args.repeats,
                args.threads,
                results,
                sweep=not args.no_sweep,
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
