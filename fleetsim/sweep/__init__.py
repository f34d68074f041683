"""Sweeps: a base scenario × a grid/zip over scenario keys × seeds, each run a Ray task
(or sequential), each in a run directory named from its parameters, with a Parquet index
of run statuses.  ``fleetsim sweep SWEEP.yaml``."""

from fleetsim.sweep.config import LoadedSweep, SweepConfig, load_sweep
from fleetsim.sweep.execute import RunOutcome, SweepResult, execute_run, run_sweep
from fleetsim.sweep.index import INDEX_FILE, RunStatus, read_index
from fleetsim.sweep.plan import PlannedRun, plan_sweep, run_id_for

__all__ = [
    "INDEX_FILE",
    "LoadedSweep",
    "PlannedRun",
    "RunOutcome",
    "RunStatus",
    "SweepConfig",
    "SweepResult",
    "execute_run",
    "load_sweep",
    "plan_sweep",
    "read_index",
    "run_id_for",
    "run_sweep",
]
