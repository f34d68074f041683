"""Devices per step: a fixed total of perturbations per step split over 5...500 devices.

Scenario file: ``analysis/devices_per_step/scenario.yaml`` (systems-only).  Grid
(``sweep.yaml``, through ``fleetsim sweep``'s machinery, resumable): 500 perturbations per
step over n ∈ {5, 10, 25, 50, 100, 250, 500} devices (``protocol.devices_per_step`` = n,
``protocol.perturbations_per_device`` = 500 / n) × seeds 0, 1, 2.  ``--quick``
(``sweep_quick.yaml``): 100 perturbations over n ∈ {5, 20, 100}, seed 0, one round.

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
from fleetsim.analysis.study import (
    host_note,
    run_study,
    study_arguments,
    study_folders,
    write_table,
)

HERE = Path(__file__).resolve().parent
BY = "protocol.devices_per_step"


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


def main(argv: list[str] | None = None) -> None:
    args = study_arguments(__doc__.splitlines()[0]).parse_args(argv)
    sweep, out_dir, figures = study_folders(args, HERE)
    runs = run_study(sweep, out_dir, args.set, args.fresh, args.backend, args.max_parallel,
                     seeds=args.seeds)
    table, breakdown, group_of_run = step_time_table(runs.run_dirs)
    write_table(
        table,
        figures,
        "step_time",
        "A fixed number of perturbations per step (policy.total_perturbations); means over "
        "committed steps, then over seeds (95 % Hall skewness-corrected t interval of the per-run "
        f"mean step time). {host_note(runs)}.",
    )
    grouped_breakdown_figure(breakdown, group_of_run, BY, path=figures / "step_time.png")
    compare_runs(runs.run_dirs, BY, figures)
    print(f"figures and tables in {figures}")


if __name__ == "__main__":
    main()
