"""``summary.json``: a run's headline figures, and time to target accuracy.

Every figure here is read off the run's own tables (steps, devices) or the server's
counters, so a test can recompute it from the run directory: accuracy and time to
target from ``steps.parquet`` (finite evaluations only), bytes and energy from
``devices.parquet`` (everything transferred, including work that was later dropped or
left unfinished), steps and rounds from the server.
"""

from __future__ import annotations

from typing import Any, Optional

import pandas as pd

from fleetsim.record.status import finite_accuracy

#: summary.json ``transfer_energy``: what ``fleet.transfers`` does to time and to energy.
TRANSFER_ENERGY = {
    "both": "every transfer takes simulated time; radio energy = per-byte term x bytes + "
            "base power x transfer seconds (Huang et al. 2012)",
    "uplink_only": "downloads take no simulated time but still cost their per-byte radio "
                   "energy (no base power); uploads are timed and charged in full",
    "none": "transfers take no simulated time but still cost their per-byte radio energy "
            "(no base power)",
}


def first_times_reaching(steps: pd.DataFrame, targets: list[float]) -> list[Optional[float]]:
    """For each target, the simulated seconds at which the running max of evaluated accuracy
    first reaches it (the paper's convention); None when never reached.  Only evaluations
    with a finite loss count (:func:`fleetsim.record.status.finite_accuracy`); ties in time
    are ordered by step and attempt.  One run's steps table."""
    steps = steps.assign(accuracy=finite_accuracy(steps))
    order = [c for c in ("sim_time_s", "step", "attempt") if c in steps.columns]
    evaluated = steps.dropna(subset=["accuracy"]).sort_values(order, kind="stable")
    best = evaluated["accuracy"].cummax()
    out: list[Optional[float]] = []
    for target in targets:
        hit = evaluated["sim_time_s"][best >= target]
        out.append(float(hit.iloc[0]) if len(hit) else None)
    return out


def time_to_targets(steps: pd.DataFrame, targets: list[float]) -> dict[str, Optional[float]]:
    """:func:`first_times_reaching` keyed by the targets formatted with ``:g`` (summary.json's
    ``time_to_target``)."""
    return {f"{t:g}": v for t, v in zip(targets, first_times_reaching(steps, list(targets)))}


def build_summary(
    scenario: Any,
    steps: pd.DataFrame,
    devices: pd.DataFrame,
    *,
    end_s: float,
    rounds: int,
    committed_steps: int,
    final_evaluation_finite: bool,
    host_seconds: float,
    status: str,
    stopped_by: str,
    status_detail: str,
    diverged_at_step: Optional[int],
    unfinished: list,
    labels: dict[str, Any],
) -> dict[str, Any]:
    """The ``summary.json`` mapping of one run.

    ``scenario``: the validated scenario; ``steps``/``devices``: the run's tables;
    ``labels``: descriptive entries (systems-only mode, model names, availability and
    device sources, numerics metadata) merged in as they are; ``unfinished``: receipts
    of the tasks a stop rule cut (``units_assigned``, ``units_delivered``)."""
    sc = scenario
    evaluated = finite_accuracy(steps).dropna()
    committed = steps[steps["committed"]]
    return {
        "scenario_name": sc.run.name,
        "description": sc.description,
        "protocol": sc.protocol.name,
        # the method as its paper names it (labels["method"], from the protocol's registry)
        "method": labels.get("method", sc.protocol.name),
        "policy": sc.policy.name,
        "cohort": sc.policy.cohort,
        "seed": sc.run.seed,
        **{k: labels[k] for k in ("systems_only", "mode") if k in labels},
        # A non-finite model has no accuracy: the final one is None when the last evaluation
        # was not finite; best and time_to_target count finite evaluations only.
        "final_accuracy": (float(evaluated.iloc[-1])
                           if len(evaluated) and final_evaluation_finite else None),
        "best_accuracy": float(evaluated.max()) if len(evaluated) else None,
        "simulated_seconds": end_s,
        "simulated_hours": end_s / 3600.0,
        "rounds": int(rounds),
        "steps": int(committed_steps),
        # rows with attempt -1 are evaluations on protocol.eval_every_s's grid, not attempts
        "step_attempts": int((steps["attempt"] >= 0).sum()),
        "variance_repeats": int((~steps["committed"] & (steps["attempt"] >= 0)).sum()),
        "host_seconds": host_seconds,
        "time_to_target": time_to_targets(steps, sc.run.targets),
        "total_perturbations": int(committed["perturbations"].sum()),
        # Everything that crossed the network, as the devices' ledger counted it (work that
        # was dropped, arrived late or was cut by a stop rule included); steps.parquet's
        # per-step bytes count only the work each step used.
        "bytes_up": int(devices["bytes_up"].sum()) if len(devices) else 0,
        "bytes_down": int(devices["bytes_down"].sum()) if len(devices) else 0,
        "bytes_up_used": int(steps["bytes_up"].sum()),
        "bytes_down_used": int(steps["bytes_down"].sum()),
        "energy_j": float(devices["energy_j"].sum()) if len(devices) else 0.0,
        "transfers": sc.fleet.transfers,
        "transfer_energy": TRANSFER_ENERGY[sc.fleet.transfers],
        "fleet_size": sc.fleet.size,
        "devices_with_work": int(len(devices)),
        **{k: v for k, v in labels.items() if k not in ("systems_only", "mode", "method")},
        "status": status,
        "stopped_by": stopped_by,
        "status_detail": status_detail,
        "diverged_at_step": diverged_at_step,
        "max_sim_hours": sc.run.max_sim_hours,
        "unfinished_tasks": len(unfinished),
        "unfinished_units": int(sum(r.units_assigned - r.units_delivered for r in unfinished)),
    }


__all__ = ["build_summary", "time_to_targets"]
