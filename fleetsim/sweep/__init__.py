"""Sweeps: a base scenario × arms (each with its own settings) × a grid/zip over scenario
keys × seeds, each run a Ray task (or sequential), each in a run directory named from its
parameters, with a Parquet index of each run's own final status; a re-run retries only what
``--retry`` names.  ``fleetsim sweep SWEEP.yaml``."""

from fleetsim.sweep.config import LoadedSweep, SweepConfig, load_sweep
from fleetsim.sweep.execute import RunOutcome, SweepResult, execute_run, run_sweep
from fleetsim.sweep.index import DEFAULT_RETRY, INDEX_FILE, RETRY_CHOICES, RunStatus, read_index
from fleetsim.sweep.plan import PlannedRun, check_run_dirs, plan_sweep, run_id_for

__all__ = [
    "DEFAULT_RETRY",
    "INDEX_FILE",
    "LoadedSweep",
    "PlannedRun",
    "RETRY_CHOICES",
    "RunOutcome",
    "RunStatus",
    "SweepConfig",
    "SweepResult",
    "check_run_dirs",
    "execute_run",
    "load_sweep",
    "plan_sweep",
    "read_index",
    "run_id_for",
    "run_sweep",
]
