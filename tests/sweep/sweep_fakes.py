"""Run functions for sweep tests: a fast stand-in for the runner that writes what a finished
run writes, and fault injection keyed by the scenario's ``description`` (a key the sweep can
vary without changing anything else)."""

from __future__ import annotations

import json
import os
import signal
import time
from collections.abc import Sequence
from pathlib import Path

from fleetsim.scenario.loader import load_scenario

SYSTEMS_ONLY = """\
fleet:
  size: 8
numerics:
  engine: none
traces:
  availability:
    kind: always_online
protocol:
  devices_per_step: 4
  rounds: 1
  batches_per_round: 2
run:
  name: sweeptest
"""


def _record_attempt(run_dir: Path) -> None:
    run_dir.mkdir(parents=True, exist_ok=True)
    with open(run_dir / "attempts.log", "a") as fh:
        fh.write(f"{os.getpid()}\n")


#: While this file exists in the sweep folder, runs described as "flaky" fail and runs
#: described as "flaky_kill" kill their process: a transient fault that a retry gets past.
FLAKY_MARKER = "FLAKY"


def _fault(description: str, run_dir: Path) -> None:
    if (run_dir.parent / FLAKY_MARKER).exists() and description.startswith("flaky"):
        description = "kill" if description == "flaky_kill" else "fail"
    if description == "fail":
        raise RuntimeError("injected failure\nsecond line of the message")
    if description == "infeasible":  # what the runner raises when no phone can hold the job
        from fleetsim.errors import InfeasibleRunError

        raise InfeasibleRunError("traces: no device can hold the job: backprop of m needs "
                                 "9 MiB, the largest usable RAM in the fleet is 1 MiB")
    if description == "refuse":  # what the runner raises for an input it refuses (exit 2)
        from fleetsim.errors import FleetsimInputError

        raise FleetsimInputError("data.path: data/missing.csv not found on this worker")
    if description == "kill":
        os.kill(os.getpid(), signal.SIGKILL)
    if description == "interrupt":
        raise KeyboardInterrupt
    if description == "hang":
        time.sleep(600)


#: description -> (summary.json status, status_detail) of a run that ends with that status
#: (the runner's own words: fleetsim.record.status.decide)
ENDINGS = {
    "horizon": ("horizon_reached", "stopped at the horizon (run.max_sim_hours=1) after 3 "
                "committed step(s); 2 task(s) in flight recorded as unfinished"),
    "diverge": ("diverged", "the model after step 0 evaluated to a non-finite loss (its "
                "accuracy is not counted); numerical fault: non-finite loss at step 1"),
    "noprog": ("no_progress", "no step committed: no eligible device came online before the "
               "horizon (run.max_sim_hours=1)"),
    "stop": ("stop_requested", "stopped on request after 1 committed step(s); 0 task(s) in "
             "flight recorded as unfinished"),
}


def fake_run(scenario_path: Path, overrides: Sequence[str], run_dir: Path) -> Path:
    """Validate the scenario like the runner, then write scenario.yaml and summary.json
    (with the status :data:`ENDINGS` gives the description, else ``completed``; a
    ``diverge`` run raises RunStopped after writing them, as the runner does)."""
    loaded = load_scenario(scenario_path, list(overrides))
    sc = loaded.scenario
    _record_attempt(run_dir)
    _fault(sc.description, run_dir)
    (run_dir / "scenario.yaml").write_text(loaded.resolved_yaml())
    status, detail = ENDINGS.get(sc.description, ("completed", "completed: protocol.rounds"))
    summary = {
        "final_accuracy": None if status == "diverged" else 0.5 + sc.run.seed / 100,
        "simulated_seconds": float(1000 * sc.fleet.size + sc.run.seed),
        "host_seconds": 0.01,
        "seed": sc.run.seed,
        "overrides": list(overrides),
        "status": status,
        "status_detail": detail,
    }
    (run_dir / "summary.json").write_text(json.dumps(summary))
    if status == "diverged":
        from fleetsim.errors import RunStopped

        raise RunStopped(f"run stopped at step 1 by a numerical fault: {detail}")
    return run_dir


def real_run_with_faults(scenario_path: Path, overrides: Sequence[str], run_dir: Path) -> Path:
    """The real runner, except for the runs whose description names a fault."""
    from fleetsim.runner import run_scenario

    loaded = load_scenario(scenario_path, list(overrides))
    _record_attempt(run_dir)
    _fault(loaded.scenario.description, run_dir)
    return run_scenario(scenario_path, overrides, run_dir=run_dir, progress=False)


def attempts(run_dir: Path) -> int:
    path = Path(run_dir) / "attempts.log"
    return len(path.read_text().splitlines()) if path.exists() else 0
