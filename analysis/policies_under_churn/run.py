"""Study (c): allocation policies under churn.

Scenario file: ``analysis/policies_under_churn/scenario.yaml`` (systems-only, diurnal
availability).  Grid: ``policy.name`` ∈ {uniform, capability, deadline, variance_paced,
overcommit} × seeds 0, 1, 2; the deadline policy plans for ``policy.deadline_s`` (``--deadline-s``).
``--quick``: seed 0, one round.

Outputs (in ``analysis/policies_under_churn/``): ``runs/``, ``figures/comparison.{csv,md}``
(per policy: simulated hours, steps, useful / wasted device-time, straggler share),
``figures/curves.png`` (committed steps over simulated time per policy),
``figures/step_time.png`` (mean seconds per step by critical-path part, per policy),
``figures/utilisation.png`` (device-time shares per policy), ``figures/timeline_<policy>.png``
(device Gantt chart of seed 0 of each policy).

    python analysis/policies_under_churn/run.py --quick
"""

from __future__ import annotations

from pathlib import Path

from fleetsim.analysis import (
    compare_runs,
    load_runs,
    step_breakdown,
    timeline_figure,
    utilisation,
    utilisation_figure,
)
from fleetsim.analysis.plots import grouped_breakdown_figure
from fleetsim.analysis.study import StudyPoint, run_study, study_arguments

HERE = Path(__file__).resolve().parent
SCENARIO = HERE / "scenario.yaml"
POLICIES = ("uniform", "capability", "deadline", "variance_paced", "overcommit")
BY = "policy.name"


def main() -> None:
    parser = study_arguments(__doc__.splitlines()[0], default_seeds=(0, 1, 2))
    parser.add_argument(
        "--deadline-s",
        type=float,
        default=900.0,
        help="deadline the deadline policy plans for (simulated seconds)",
    )
    args = parser.parse_args()
    out = args.out or HERE
    seeds = args.seeds or ([0] if args.quick else [0, 1, 2])
    common = ["protocol.rounds=1"] if args.quick else []
    points = [
        StudyPoint(
            name,
            [f"{BY}={name}"]
            + ([f"policy.deadline_s={args.deadline_s}"] if name == "deadline" else []),
        )
        for name in POLICIES
    ]
    run_dirs = run_study(
        SCENARIO, points, seeds, out / "runs", common_overrides=common, reuse=not args.fresh
    )
    figures = out / "figures"
    compare_runs(run_dirs, BY, figures)
    runs = load_runs(run_dirs)
    breakdown = step_breakdown(runs.events, runs.steps)
    group_of_run = dict(zip(runs.summary["run"], runs.summary[BY]))
    grouped_breakdown_figure(breakdown, group_of_run, BY, path=figures / "step_time.png")
    fleet = utilisation(runs, levels=("fleet",))
    fleet["group"] = fleet["run"].map(group_of_run)
    fleet = fleet.groupby("group", sort=True).mean(numeric_only=True).reset_index()
    fleet.insert(0, "run", "mean over seeds")
    fleet.insert(1, "level", "policy")
    utilisation_figure(fleet, path=figures / "utilisation.png")
    first_seed = runs.summary[runs.summary["run.seed"] == seeds[0]]
    for run, policy in zip(first_seed["run"], first_seed[BY]):
        timeline_figure(runs, run=run, path=figures / f"timeline_{policy}.png")
    print(f"figures and tables in {figures}")


if __name__ == "__main__":
    main()
