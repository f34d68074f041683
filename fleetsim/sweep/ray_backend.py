"""The Ray backend of a sweep: a local Ray instance (or a cluster) runs each planned run as
one task, at most ``max_parallel`` at a time; a worker that dies marks its run ``killed``.

Joining a cluster (``--address``): start Ray on the head node (``ray start --head``) and
on each worker node (``ray start --address=HEAD:6379``), with fleetsim installed and the
scenario's data paths valid on every node, and the sweep folder on a filesystem every node
writes to; then ``fleetsim sweep SWEEP.yaml --address HEAD:6379`` (or ``--address auto``
on the head node).
"""

from __future__ import annotations

import contextlib
import os
from collections import deque
from pathlib import Path
from typing import Any, Optional

from fleetsim.errors import FleetsimInputError
from fleetsim.sweep.backend import (
    RunFn,
    RunOutcome,
    _Callback,
    _DoneCallback,
    _first_line,
    _killed,
    _now,
    _timeout_note,
    execute_run,
)
from fleetsim.sweep.index import RunStatus
from fleetsim.sweep.plan import PlannedRun


def _package_root() -> str:
    import fleetsim

    return str(Path(fleetsim.__file__).resolve().parent.parent)


#: Object store of a local Ray instance.  A sweep passes only run outcomes (a few KB each)
#: through it; Ray's default reserves 30 % of the machine's memory in /dev/shm (5.2 GB on a
#: 24 GiB laptop-sized machine, ``bench/sweep.py``), which a small /dev/shm cannot hold
#: (Ray then falls back to slower disk) and other programs see as taken.
LOCAL_OBJECT_STORE_BYTES = 256 << 20


def start_ray(address: Optional[str], num_cpus: Optional[int]) -> bool:
    """Connect to (``address``) or start a local Ray instance; True if this call started
    or joined it (and should shut it down).  A Ray already initialised in this process is
    reused as it is.  A local instance gets ``num_cpus`` CPUs (one run each) and a
    :data:`LOCAL_OBJECT_STORE_BYTES` object store; no dashboard."""
    try:
        import ray
    except ImportError:
        raise FleetsimInputError(
            "--backend ray: Ray is not installed; install it (pip install 'fleetsim[ray]') "
            "or use --backend sequential"
        ) from None
    if ray.is_initialized():
        return False
    kwargs: dict[str, Any] = {
        "include_dashboard": False,
        "log_to_driver": False,
        "logging_level": "warning",
    }
    if address:
        kwargs["address"] = address
    else:
        kwargs["num_cpus"] = num_cpus
        kwargs["object_store_memory"] = LOCAL_OBJECT_STORE_BYTES
        # Workers of a local instance import fleetsim from the same checkout as the driver,
        # even when it is not installed and the sweep runs from another folder.
        path = os.pathsep.join(p for p in (_package_root(), os.environ.get("PYTHONPATH")) if p)
        kwargs["runtime_env"] = {"env_vars": {"PYTHONPATH": path}}
    try:
        ray.init(**kwargs)
    except ConnectionError as exc:
        raise FleetsimInputError(
            f"--address {address}: cannot join the Ray cluster ({exc}); start it with "
            "`ray start --head` or leave --address out for a local instance"
        ) from None
    return True


def run_ray(
    runs: list[PlannedRun],
    base_path: Path,
    threads: int,
    max_parallel: int,
    run_fn: Optional[RunFn],
    on_start: _Callback,
    on_done: _DoneCallback,
    run_timeout_s: Optional[float] = None,
) -> None:
    import ray
    from ray.exceptions import RayTaskError

    remote_run = ray.remote(num_cpus=1, max_retries=0)(execute_run)
    waiting = deque(runs)
    in_flight: dict[Any, PlannedRun] = {}
    try:
        while waiting or in_flight:
            # At most max_parallel runs are handed out, so the index's "running" means running
            # and a cluster larger than asked for is not flooded.
            while waiting and len(in_flight) < max_parallel:
                run = waiting.popleft()
                ref = remote_run.remote(
                    run.run_id,
                    str(base_path),
                    list(run.overrides),
                    str(run.run_dir),
                    threads,
                    run_fn,
                    run_timeout_s,
                )
                in_flight[ref] = run
                on_start(run)
            ready, _ = ray.wait(list(in_flight), num_returns=1)
            for ref in ready:
                run = in_flight.pop(ref)
                try:
                    outcome = ray.get(ref)
                except RayTaskError as exc:
                    # execute_run catches every error of the run itself: this one is of the
                    # task machinery (e.g. the run function could not be unpickled): the run
                    # never started.
                    outcome = RunOutcome(
                        run_id=run.run_id,
                        status=RunStatus.FAILED_TO_START.value,
                        error=_first_line(exc),
                        finished_at=_now(),
                    )
                except ray.exceptions.RayError as exc:
                    note = _timeout_note(run.run_dir)
                    outcome = _killed(run, note or f"worker died: {_first_line(exc)}")
                    if note:
                        outcome.status = RunStatus.TIMED_OUT.value
                on_done(run, outcome)
    except KeyboardInterrupt:
        for ref, run in in_flight.items():
            with contextlib.suppress(Exception):
                ray.cancel(ref, force=True)
            on_done(run, _killed(run, "the sweep was interrupted while this run was going"))
        raise
