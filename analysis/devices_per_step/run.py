"""Study (b): a fixed total of perturbations per step split over 5...500 devices.

Scenario file: ``analysis/devices_per_step/scenario.yaml`` (systems-only).
Grid: 500 perturbations per step over n ∈ {5, 10, 25, 50, 100, 250, 500} devices
(``protocol.devices_per_step`` = n, ``protocol.perturbations_per_device`` = 500 / n) × seeds
0, 1, 2.  ``--quick``: 100 perturbations over n ∈ {5, 10, 20, 50, 100}, seed 0, one round.

Outputs (in ``analysis/devices_per_step/``): ``runs/``, ``figures/step_time.png`` (mean
seconds per committed step by critical-path part, per n), ``figures/step_time.{csv,md}``
(per n: mean step time with 95 % interval over seeds, parts, bytes and energy per step,
useful and wasted device-time shares), ``figures/curves.png`` (committed steps over
simulated time per n), ``figures/comparison.{csv,md}``.

    python analysis/devices_per_step/run.py --quick
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from fleetsim.analysis import compare_runs, load_runs, step_breakdown, utilisation
from fleetsim.analysis.metrics import BREAKDOWN_PARTS
from fleetsim.analysis.plots import grouped_breakdown_figure
from fleetsim.analysis.stats import mean_confidence_interval
from fleetsim.analysis.study import StudyPoint, run_study, study_arguments, write_table

HERE = Path(__file__).resolve().parent
SCENARIO = HERE / "scenario.yaml"
BY = "protocol.devices_per_step"


def grid(total: int, device_counts: tuple[int, ...]) -> list[StudyPoint]:
    points = []
    for n in device_counts:
        if total % n:
            raise ValueError(f"{total} perturbations do not split evenly over {n} devices")
        points.append(
            StudyPoint(
                f"n{n}",
                [
                    f"{BY}={n}",
                    f"protocol.perturbations_per_device={total // n}",
                    f"policy.total_perturbations={total}",
                ],
            )
        )
    return points


def step_time_table(run_dirs: list[Path]) -> tuple[pd.DataFrame, pd.DataFrame, dict]:
    runs = load_runs(run_dirs)
    breakdown = step_breakdown(runs.events, runs.steps)
    group_of_run = dict(zip(runs.summary["run"], runs.summary[BY]))
    util = utilisation(runs, levels=("fleet",)).set_index("run")
    rows = []
    for n, members in runs.summary.groupby(BY, sort=True):
        names = list(members["run"])
        mine = breakdown[breakdown["run"].isin(names)]
        per_run_step = mine.groupby("run")["total_s"].mean()
        mean, low, high, _ = mean_confidence_interval(per_run_step)
        steps = members["steps"].sum()
        rows.append(
            {
                BY: n,
                "perturbations_per_device": int(
                    members["protocol.perturbations_per_device"].iloc[0]
                ),
                "runs": len(names),
                "step_s": mean,
                "step_s_ci_low": low,
                "step_s_ci_high": high,
                **{f"{part}_s": float(mine[part].mean()) for part in BREAKDOWN_PARTS},
                "mb_per_step": float((members["bytes_up"] + members["bytes_down"]).sum())
                / steps
                / 1e6,
                "energy_kj_per_step": float(members["energy_j"].sum()) / steps / 1e3,
                "used_share": float(util.loc[names, "used"].mean()),
                "wasted_share": float(util.loc[names, "wasted"].mean()),
            }
        )
    return pd.DataFrame(rows), breakdown, group_of_run


def main() -> None:
    parser = study_arguments(__doc__.splitlines()[0], default_seeds=(0, 1, 2))
    args = parser.parse_args()
    out = args.out or HERE
    if args.quick:
        total, counts, seeds, common = 100, (5, 10, 20, 50, 100), [0], ["protocol.rounds=1"]
    else:
        total, counts, seeds, common = 500, (5, 10, 25, 50, 100, 250, 500), [0, 1, 2], []
    seeds = args.seeds or seeds
    run_dirs = run_study(
        SCENARIO,
        grid(total, counts),
        seeds,
        out / "runs",
        common_overrides=common,
        reuse=not args.fresh,
    )
    figures = out / "figures"
    table, breakdown, group_of_run = step_time_table(run_dirs)
    write_table(
        table,
        figures,
        "step_time",
        f"{total} perturbations per step; means over committed steps, then over seeds "
        "(95 % t-interval of the per-run mean step time).",
    )
    grouped_breakdown_figure(breakdown, group_of_run, BY, path=figures / "step_time.png")
    compare_runs(run_dirs, BY, figures)
    print(f"figures and tables in {figures}")


if __name__ == "__main__":
    main()
