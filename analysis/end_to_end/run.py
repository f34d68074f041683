"""Study (b): end to end — does FwdLLM's speed-up survive a real fleet? (FwdLLM Fig. 10)

**Withdrawn, being redone (issue 23; docs/results/end_to_end.md says why).**  Only
``--quick`` runs: the pipeline's smoke test on the ``*_quick.yaml`` sweeps.  The full sweeps
of the design below were removed.

Three settings, each a sweep run through ``fleetsim sweep``'s machinery (resumable):
(i) ``sweep_paper.yaml`` on ``scenario.yaml`` — the paper's closed-form profile (identical,
always-online phones charged for DistilBERT with the paper's constants); (ii)
``sweep_fleet.yaml`` on ``scenario_fleet.yaml`` — the same cohort size on 200 market-share
phones with their own latency, RAM admission, diurnal charging windows and FLASH Wi-Fi;
(iii) ``sweep_fleet_llama7b.yaml`` — that fleet with the phones charged for LLaMA-2-7B INT4
(``fleet.cost_model``): a billion-parameter model's latency, memory and payload.
Protocols: fwdllm, fedsgd (backprop, same PEFT), fedavg (local backprop, top-layer PEFT as
FedAdapter), kseed (seed-only) × seeds 0–2; all-MiniLM-L6-v2 + top-layer LoRA on AG News
supplies the learning signal.  ``--quick`` runs the ``*_quick.yaml`` sweeps (fwdllm and
fedsgd, one seed, 2 steps).

The common target (``--target-accuracy``; default: 95 % of the lowest, over settings (i)
and (ii) and protocols, median best accuracy) is reached or not by each run; per setting and
protocol the table gives the median simulated minutes to it (runs that never reached censored at
their end), "reached k of n", and FwdLLM's speed-up over each baseline (ratio of medians)
beside the paper's ratios.

Outputs (``figures/`` or ``figures-quick/``): ``speedup.{csv,md}``, ``time_to_target.{csv,md}``,
``step_time_<setting>.png``, ``curves_<setting>.png``, ``timeline_fleet_<protocol>.png``,
``admission.{csv,md}`` (phones that refused the task for memory), ``study.json``.

    python analysis/end_to_end/run.py --quick
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pandas as pd

from fleetsim.analysis import convergence_figure, load_runs, step_breakdown, timeline_figure
from fleetsim.analysis.load import RunSet
from fleetsim.analysis.metrics import time_to_accuracy_table
from fleetsim.analysis.pages import write_runs_table
from fleetsim.analysis.plots import grouped_breakdown_figure
from fleetsim.analysis.study import (
    StudyRuns,
    check_discipline,
    host_note,
    per_run_table,
    run_study,
    study_arguments,
    study_entry,
    write_table,
)
from fleetsim.errors import FleetsimInputError

HERE = Path(__file__).resolve().parent
BY = "protocol.name"
SETTINGS = ("paper", "fleet", "fleet_llama7b")
#: the settings whose runs set the default common target (the charged model of (iii) changes
#: only the clock, not what is learned per step)
TARGET_SETTINGS = ("paper", "fleet")
#: FwdLLM Fig. 10, DistilBERT on AG News: minutes to 0.88 (closed formula).
PAPER_MINUTES = {"FwdLLM": 25.2, "FedAdapter": 30.6, "Adapter-BP": 92.8, "BitFit-BP": 103.9,
                 "Full-BP": 418.9}
#: The paper's method each fleetsim protocol is (None: not in the paper's Fig. 10; fedsgd
#: with another PEFT is not Adapter-BP, nor FedAvg/FedAdam FedAdapter: README, Protocols).
PAPER_NAME = {"fwdllm": "FwdLLM", "fedadapter": "FedAdapter", "adapter_bp": "Adapter-BP",
              "bitfit_bp": "BitFit-BP", "full_bp": "Full-BP", "fedavg": None, "fedsgd": None,
              "kseed": None}


def default_target(runsets: dict[str, RunSet]) -> float:
    """95 % of the lowest median (over seeds) best accuracy of any (setting, protocol) of
    :data:`TARGET_SETTINGS`."""
    lowest = math.inf
    for setting, runset in runsets.items():
        if setting not in TARGET_SETTINGS:
            continue
        best = runset.steps.groupby("run")["accuracy"].max()
        protocol = runset.summary.set_index("run")[BY]
        medians = best.groupby(protocol.reindex(best.index)).median()
        lowest = min(lowest, float(medians.min()))
    return round(0.95 * lowest, 4)


def speedup_table(tta: dict[str, pd.DataFrame]) -> pd.DataFrame:
    """Per setting and protocol: median minutes to target, reached k of n, FwdLLM's
    speed-up (baseline median ÷ FwdLLM median; ∞ when FwdLLM reached and the baseline's
    median did not, NaN when FwdLLM's did not) and the paper's ratio."""
    rows = []
    for setting, table in tta.items():
        by_protocol = table.set_index(BY)
        fwd = float(by_protocol.loc["fwdllm", "median_s"]) if "fwdllm" in by_protocol.index \
            else math.nan
        for protocol, cell in by_protocol.iterrows():
            median = float(cell["median_s"])
            if not math.isfinite(fwd):
                ratio = math.nan
            else:
                ratio = median / fwd if math.isfinite(median) else math.inf
            paper = PAPER_NAME.get(str(protocol))
            rows.append(
                {
                    "setting": setting,
                    "protocol": protocol,
                    "paper_name": paper or "—",
                    "median_min": median / 60.0,
                    "ci_low_min": float(cell["ci_low_s"]) / 60.0,
                    "ci_high_min": float(cell["ci_high_s"]) / 60.0,
                    "reached": f"{int(cell['reached'])} of {int(cell['runs'])}",
                    "fwdllm_speedup": ratio,
                    "paper_speedup": PAPER_MINUTES[paper] / PAPER_MINUTES["FwdLLM"]
                    if paper else math.nan,
                }
            )
    return pd.DataFrame(rows)


def admission_table(runsets: dict[str, RunSet]) -> pd.DataFrame:
    """Per setting and protocol: fleet size, distinct phones that refused a task for memory
    (``refuse_memory`` events) and phones that did any work (mean over seeds)."""
    rows = []
    for setting, runset in runsets.items():
        refused = (runset.events[runset.events["kind"] == "refuse_memory"]
                   .groupby("run")["device_id"].nunique())
        worked = runset.devices.groupby("run")["device_id"].nunique()
        for protocol, members in runset.summary.groupby(BY, sort=True):
            runs = list(members["run"])
            rows.append({
                "setting": setting, "protocol": protocol,
                "fleet_size": int(members["fleet_size"].iloc[0]),
                "phones_refused_for_memory": float(refused.reindex(runs).fillna(0).mean()),
                "phones_with_work": float(worked.reindex(runs).fillna(0).mean()),
            })
    return pd.DataFrame(rows)


def analyse(
    runs: dict[str, StudyRuns], figures: Path, target: float | None, mark: bool = False
) -> dict:
    """Tables and figures of the three settings.  Issue 23's discipline per setting: runs
    on different evaluation grids are refused, and so are runs that ended short of the
    common simulated-time budget without reaching the target unless ``mark`` (then each
    run's end is marked in the curves); ``runs_<setting>.csv`` are the per-run tables."""
    runsets = {setting: load_runs(r.run_dirs) for setting, r in runs.items()}
    target = target or default_target(runsets)
    ends = {s: check_discipline(r.run_dirs, [target], mark) for s, r in runs.items()}
    for setting, r in runs.items():
        write_runs_table(per_run_table(r.run_dirs, [BY, "run.seed"], [target]),
                         figures / f"runs_{setting}.csv")
    tta = {s: time_to_accuracy_table(rs, [target], by=BY) for s, rs in runsets.items()}
    label = str(next(iter(runsets.values())).summary["model_label"].iloc[0])
    notes = "; ".join(f"{s}: {host_note(r)}" for s, r in runs.items())
    note = (
        f"{label}. Common target accuracy {target:.4f}. Median simulated minutes over seeds, "
        "runs that never reached the target censored at their end (∞ = not reached by more "
        "than half); interval: 95 % log-log band; speed-up = baseline median ÷ FwdLLM median. "
        f"{notes}."
    )
    write_table(speedup_table(tta), figures, "speedup", note)
    write_table(pd.concat([t.assign(setting=s) for s, t in tta.items()]), figures,
                "time_to_target", note)
    write_table(admission_table(runsets), figures, "admission", note)
    for setting, runset in runsets.items():
        breakdown = step_breakdown(runset.events, runset.steps)
        group = dict(zip(runset.summary["run"], runset.summary[BY]))
        grouped_breakdown_figure(breakdown, group, BY, path=figures / f"step_time_{setting}.png")
        convergence_figure(runset, x="hours", by=BY, metrics=("accuracy",), targets=[target],
                           path=figures / f"curves_{setting}.png", ends=ends[setting])
    fleet = runsets.get("fleet")
    if fleet is not None:
        first = fleet.summary[fleet.summary["run.seed"] == fleet.summary["run.seed"].min()]
        for run, protocol in zip(first["run"], first[BY]):
            timeline_figure(fleet, run=run, path=figures / f"timeline_fleet_{protocol}.png")
    facts = {
        "unequal_horizons_s": ends,
        "target_accuracy": target,
        "model_label": label,
        "seeds": sorted({s for r in runs.values() for s in r.seeds}),
        "runs": int(np.sum([len(r.run_dirs) for r in runs.values()])),
        "host_minutes_summed": float(sum(r.run_host_seconds for r in runs.values()) / 60.0),
    }
    (figures / "study.json").write_text(json.dumps(facts, indent=2) + "\n")
    return facts


def main(argv: list[str] | None = None) -> None:
    parser = study_arguments(__doc__.splitlines()[0])
    parser.add_argument("--target-accuracy", type=float, default=None,
                        help="common target accuracy (default: see the module docstring)")
    args = parser.parse_args(argv)
    if not args.quick:
        # The full sweeps ran the withdrawn design (FwdLLM 10 phones x 10 perturbations, Adam
        # at FwdLLM's rate for every arm): removed so that nobody regenerates its numbers.
        raise FleetsimInputError(
            "study (b) is withdrawn and being redone (issue 23, docs/results/end_to_end.md): "
            "its full sweeps are gone; --quick still runs the pipeline's smoke test"
        )
    out = args.out or HERE
    figures = out / ("figures-quick" if args.quick else "figures")
    runs = {}
    for setting in SETTINGS:
        name = f"sweep_{setting}_quick.yaml" if args.quick else f"sweep_{setting}.yaml"
        folder = out / "runs" / (f"{setting}_quick" if args.quick else setting)
        runs[setting] = run_study(HERE / name, folder, args.set, args.fresh, args.backend,
                                  args.max_parallel, seeds=args.seeds)
    analyse(runs, figures, args.target_accuracy, args.quick or args.allow_unequal_horizons)
    print(f"figures and tables in {figures}")


if __name__ == "__main__":
    raise SystemExit(study_entry(main))
