"""Study (a): perturbations per batch and time to accuracy.

Scenario file: ``analysis/perturbations_per_batch/scenario.yaml`` (real forward gradients).
Grid: ``protocol.perturbations_per_device`` = v ∈ {1, 3, 5, 10, 50} × seeds 0, 1, 2.
``--quick``: seed 0, 10 steps of 5 devices per run (see ``QUICK_OVERRIDES``).

The target accuracy is the best held-out accuracy any run of the study reached
(``--target-accuracy`` fixes it instead); the study reports the simulated time
to reach 40/60/80/90 % of it per v (mean and 95 % interval over seeds), which v
was fastest to each level (FwdLLM observed the best v rising from 1 to 50 as
training proceeds), and overlaid convergence curves.

Outputs (in ``analysis/perturbations_per_batch/``): ``runs/`` (run directories),
``figures/time_to_fraction.png``, ``figures/curves.png``,
``figures/curves_perturbations.png``, ``figures/comparison.{csv,md}``,
``figures/time_to_fraction.{csv,md}``, ``figures/best_v.{csv,md}``.

    python analysis/perturbations_per_batch/run.py --quick
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd

from fleetsim.analysis import compare_runs, load_runs, time_to_accuracy_table
from fleetsim.analysis.plots import time_to_accuracy_figure
from fleetsim.analysis.study import StudyPoint, run_study, study_arguments, write_table

HERE = Path(__file__).resolve().parent
SCENARIO = HERE / "scenario.yaml"
V_VALUES = (1, 3, 5, 10, 50)
FRACTIONS = (0.4, 0.6, 0.8, 0.9)
BY = "protocol.perturbations_per_device"
# --quick: 10 steps of 5 devices on 32-token inputs, evaluated every 2 steps on 100 examples.
QUICK_OVERRIDES = [
    "protocol.rounds=2",
    "protocol.batches_per_round=5",
    "protocol.devices_per_step=5",
    "protocol.eval_every_steps=2",
    "numerics.eval_max_examples=100",
    "model.max_seq_len=32",
]


def best_v(table: pd.DataFrame, fractions: dict[float, float]) -> pd.DataFrame:
    """Per accuracy level, the v with the lowest median time (non-reaching seeds censored,
    :func:`~fleetsim.analysis.metrics.time_to_accuracy_table`); None when no v's median
    reached the level (more than half of its seeds never got there)."""
    rows = []
    for target, fraction in fractions.items():
        level = table[(table["target"] == target) & np.isfinite(table["median_s"])]
        if level.empty:
            rows.append(
                {
                    "fraction_of_target": fraction,
                    "accuracy": target,
                    "best_v": None,
                    "median_h": math.nan,
                }
            )
            continue
        fastest = level.loc[level["median_s"].idxmin()]
        rows.append(
            {
                "fraction_of_target": fraction,
                "accuracy": target,
                "best_v": int(fastest[BY]),
                "median_h": fastest["median_h"],
            }
        )
    return pd.DataFrame(rows)


def main() -> None:
    parser = study_arguments(__doc__.splitlines()[0], default_seeds=(0, 1, 2))
    parser.add_argument(
        "--target-accuracy",
        type=float,
        default=None,
        help="accuracy that 100 %% stands for (default: best reached)",
    )
    args = parser.parse_args()
    out = args.out or HERE
    seeds = args.seeds or ([0] if args.quick else [0, 1, 2])
    common = QUICK_OVERRIDES if args.quick else []
    points = [StudyPoint(f"v{v}", [f"{BY}={v}"]) for v in V_VALUES]
    run_dirs = run_study(
        SCENARIO, points, seeds, out / "runs", common_overrides=common, reuse=not args.fresh
    )

    figures = out / "figures"
    runs = load_runs(run_dirs)
    reference = args.target_accuracy or float(runs.steps["accuracy"].max())
    fractions = {round(f * reference, 6): f for f in FRACTIONS}
    table = time_to_accuracy_table(runs, list(fractions), by=BY)
    table.insert(1, "fraction_of_target", table["target"].map(fractions))
    note = (
        f"Target accuracy (100 %): {reference:.4f}. Times in simulated seconds/hours; mean "
        "over the seeds that reached the level, 95 % t-interval; — = not reached."
    )
    write_table(table, figures, "time_to_fraction", note)
    write_table(best_v(table, fractions), figures, "best_v", note)
    time_to_accuracy_figure(
        table,
        BY,
        target_labels={t: f"{f:.0%} of {reference:.3f}" for t, f in fractions.items()},
        path=figures / "time_to_fraction.png",
    )
    compare_runs(run_dirs, BY, figures, targets=list(fractions))
    print(f"figures and tables in {figures}")


if __name__ == "__main__":
    main()
