"""Drive the numerics engine the way the FwdLLM protocol does in the quickstart.

Each step, ``--devices`` devices (round-robin over clients) each run ``--k``
perturbations on their own next local batch; the engine pools them, the server
optimiser takes one step; held-out accuracy every ``--eval-every`` steps.
Prints host time (model load, tokenisation, prefix cache, training, evaluation)
and ends with RESULT lines.

    .venv/bin/python bench/quickstart_numerics.py --steps 60

``--scenario scenarios/quickstart.yaml`` instead runs the real quickstart end to end
(``fleetsim run``, in this process) with fleetsim's defaults and with the code path
before issue 15 (one-sided, one device at a time: ``--set numerics.estimator=onesided
--set numerics.cross_device_batching=false``), alternating ``--reps`` times, and prints
each run's accuracy and host seconds (``summary.json``), the baseline ÷ new ratio and
``RESULT quickstart_host_s`` (median of the new runs).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time
from pathlib import Path

from fleetsim.numerics.base import GradientWork
from fleetsim.numerics.config import (
    ModelConfig,
    NumericsConfig,
    PeftConfig,
    ServerOptimizerConfig,
)
from fleetsim.numerics.data import DataConfig
from fleetsim.numerics.engine import build_engine


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--devices", type=int, default=10)
    parser.add_argument("--clients", type=int, default=50)
    parser.add_argument("--k", type=int, default=8)
    parser.add_argument("--lr", type=float, default=0.01)
    parser.add_argument("--optimizer", default="adam")
    parser.add_argument("--estimator", default="auto")
    parser.add_argument("--seq", type=int, default=64)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--rank", type=int, default=4)
    parser.add_argument("--top-layers", type=int, default=1)
    parser.add_argument("--method", default="lora")
    parser.add_argument("--pooling", default="mean")
    parser.add_argument("--eval-every", type=int, default=10)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--scenario", default=None, help="run this scenario end to end")
    parser.add_argument("--reps", type=int, default=1)
    args = parser.parse_args()
    if args.scenario:
        scenario_runs(args.scenario, args.reps)
        return

    started = time.perf_counter()
    cpu_started = time.process_time()
    engine = build_engine(
        ModelConfig(name_or_path="all-minilm-l6-v2", max_seq_len=args.seq, pooling=args.pooling),
        PeftConfig(
            method=args.method,
            rank=args.rank,
            alpha=2.0 * args.rank,
            top_layers=args.top_layers if args.method != "head_only" else None,
        ),
        DataConfig(name="bbc_news", batch_size=args.batch),
        NumericsConfig(
            estimator=args.estimator,
            threads=args.threads,
            server_optimizer=ServerOptimizerConfig(name=args.optimizer),
        ),
        n_clients=args.clients,
        seed=args.seed,
        base_dir=Path("."),
    )
    built = time.perf_counter()
    engine.warm_prefix_cache()
    cached = time.perf_counter()
    print(
        f"build {built - started:.1f}s  prefix cache {cached - built:.1f}s  "
        f"trainable {engine.trainable_params}  start layer {engine.start_layer}",
        flush=True,
    )
    first = engine.evaluate()
    print(f"step 0 acc {first.accuracy:.3f} loss {first.loss:.3f}", flush=True)
    eval_s = 0.0
    next_batch = [0] * args.clients
    result = first
    for step in range(args.steps):
        work = []
        for slot in range(args.devices):
            device = (step * args.devices + slot) % args.clients
            work.append(
                GradientWork(
                    device_id=device,
                    client_id=device,
                    batch_index=next_batch[device],
                    perturbations=tuple(range(args.k)),
                )
            )
            next_batch[device] += 1
        estimate = engine.forward_gradient(step, work)
        engine.apply(estimate, args.lr)
        if (step + 1) % args.eval_every == 0 or step + 1 == args.steps:
            t0 = time.perf_counter()
            result = engine.evaluate()
            eval_s += time.perf_counter() - t0
            print(
                f"step {step + 1} acc {result.accuracy:.3f} loss {result.loss:.3f} "
                f"train-loss {estimate.loss:.3f} var {estimate.variance:.3g} "
                f"t {time.perf_counter() - started:.1f}s",
                flush=True,
            )
    total = time.perf_counter() - started
    cpu = time.process_time() - cpu_started
    print(
        f"host wall {total:.1f}s, process CPU {cpu:.1f}s (on a contended machine, an idle "
        f"2-core wall time lies between CPU/threads and CPU)"
    )
    print(f"RESULT quickstart_final_accuracy={result.accuracy:.4f}")
    print(f"RESULT quickstart_host_cpu_seconds={cpu:.1f}")
    print(f"RESULT quickstart_host_seconds={total:.1f}")
    print(f"RESULT quickstart_host_s={total:.1f}")
    print(f"RESULT quickstart_eval_seconds={eval_s:.1f}")


BASELINE = ["numerics.estimator=onesided", "numerics.cross_device_batching=false"]


def scenario_runs(scenario: str, reps: int) -> None:
    from fleetsim.cli import main as cli

    results: dict[str, list[tuple[float, float, float]]] = {"new": [], "baseline": []}
    with tempfile.TemporaryDirectory() as tmp:
        for rep in range(reps):
            for name, overrides in (("new", []), ("baseline", BASELINE)):
                out = Path(tmp) / f"{name}{rep}"
                args = ["run", scenario, "--out", str(out), "--no-progress"]
                for item in overrides:
                    args += ["--set", item]
                if cli(args) != 0:
                    raise SystemExit(f"fleetsim run failed: {args}")
                summary = json.loads((out / "summary.json").read_text())
                steps = __import__("pandas").read_parquet(out / "steps.parquet")
                first = steps["accuracy"].dropna()
                start = float(first.iloc[0]) if len(first) else float("nan")
                row = (start, float(summary["final_accuracy"]), float(summary["host_seconds"]))
                results[name].append(row)
                print(f"{name:8s} rep {rep}: accuracy at the first evaluation {row[0]:.3f}, "
                      f"final {row[1]:.3f}, host "
                      f"{row[2]:.1f} s (estimator used "
                      f"{summary.get('numerics', {}).get('estimator_used')}; load "
                      f"{os.getloadavg()[0]:.1f})", flush=True)
    new = statistics.median(r[2] for r in results["new"])
    old = statistics.median(r[2] for r in results["baseline"])
    print(f"host seconds: new {new:.1f}, baseline (one-sided, per device) {old:.1f}, "
          f"baseline / new {old / new:.2f}; load average {os.getloadavg()[0]:.1f} on "
          f"{os.cpu_count()} cores")
    print(f"RESULT quickstart_final_accuracy={results['new'][0][1]:.4f}")
    print(f"RESULT quickstart_baseline_final_accuracy={results['baseline'][0][1]:.4f}")
    print(f"RESULT quickstart_host_s={new:.1f}")
    print(f"RESULT quickstart_baseline_over_new={old / new:.2f}")


if __name__ == "__main__":
    main()
