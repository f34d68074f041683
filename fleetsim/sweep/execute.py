"""Run a planned sweep: on Ray (a local instance by default, a cluster with ``address``;
:mod:`fleetsim.sweep.ray_backend`) or sequentially in this process.

Each run is isolated: its exceptions are caught on the worker and recorded as ``failed``
(``failed_to_start`` when the runner refused its input: FleetsimInputError; ``infeasible``
when the input is valid but no device of its fleet can hold the job: InfeasibleRunError);
a worker that dies (signal, out-of-memory kill) is recorded as ``killed`` by the driver
(``timed_out`` when the sweep's run timeout ended it).  Neither affects the other runs.
A run that ends with a ``summary.json`` is recorded with its own status: ``done``
(completed, horizon reached), ``diverged``, ``no_progress`` or ``stopped``
(:data:`fleetsim.sweep.index.OUTCOME_OF_RUN_STATUS`), with the run's ``status_detail`` as
the error.

Re-running a sweep never rewrites that history: a run whose directory holds its
``summary.json`` (for the same resolved scenario) keeps the status read from it, whether the
sweep ran once or many times; runs never started always run; runs that ended otherwise are
run again only when ``retry`` names their status
(:data:`fleetsim.sweep.index.RETRY_CHOICES`; default ``failed``: failed to start, failed,
killed, timed out, stopped).  Attempts and the last error are kept across invocations.  A
run directory that holds a run of a different resolved scenario is never reused: the sweep
refuses before it starts (:func:`fleetsim.sweep.plan.check_run_dirs`).
"""

from __future__ import annotations

import contextlib
import math
import os
import sys
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Optional

import yaml

from fleetsim.errors import FleetsimInputError
from fleetsim.record.atomic import write_text
from fleetsim.record.rundir import run_dir_state
from fleetsim.safe_yaml import load_bounded
from fleetsim.sweep.backend import (  # noqa: F401 - ERROR_FILE, RunFn, execute_run: public here too
    ERROR_FILE,
    RunFn,
    RunOutcome,
    _Callback,
    _DoneCallback,
    _first_line,
    _killed,
    _now,
    _number,
    execute_run,
    limit_threads,
    summary_outcome,
)
from fleetsim.sweep.config import LoadedSweep, load_sweep
from fleetsim.sweep.index import (
    DEFAULT_RETRY,
    INDEX_FILE,
    OUTCOME_OF_RUN_STATUS,
    RETRY_CHOICES,
    RunStatus,
    SweepIndex,
)
from fleetsim.sweep.infeasible import infeasible_record_holds
from fleetsim.sweep.plan import PlannedRun, check_run_dirs, plan_sweep

Backend = Literal["ray", "sequential"]

LOCK_FILE = ".sweep.lock"



@dataclass
class SweepResult:
    """The end of one ``fleetsim sweep`` invocation."""

    name: str
    out_dir: Path
    index_path: Path
    counts: dict[str, int]  # status -> runs, over the whole sweep
    executed: int  # runs started by this invocation
    skipped: int  # runs already finished before it
    backend: str
    host_seconds: float
    #: (run id, error) of every run of the sweep that is not ``done``, in plan order
    failures: list[tuple[str, str]] = field(default_factory=list)
    statuses: dict[str, str] = field(default_factory=dict)  # run id -> status, runs not done
    retry: str = DEFAULT_RETRY  # the --retry choice of this invocation

    @property
    def ok(self) -> bool:
        return self.counts.get(RunStatus.DONE.value, 0) == sum(self.counts.values())

    def advice(self) -> list[str]:
        """What a re-run would do for the runs that are not done, one line per kind: the
        sweep's last lines.  Empty when every run is done."""
        by_status: dict[str, int] = {}
        for status in self.statuses.values():
            by_status[status] = by_status.get(status, 0) + 1
        default = RETRY_CHOICES[DEFAULT_RETRY]
        lines = []
        retried = sum(n for s, n in by_status.items() if RunStatus(s) in default)
        if retried:
            kinds = "/".join(s for s in by_status if RunStatus(s) in default)
            timeout = (" (timed-out runs need a larger --run-timeout)"
                       if RunStatus.TIMED_OUT.value in by_status else "")
            lines.append(
                f"re-run the same command to retry the {retried} {kinds} run(s) "
                f"(--retry {DEFAULT_RETRY}, the default){timeout}"
            )
        for status, choice, why in (
            (RunStatus.DIVERGED.value, "diverged",
             "the same scenario and seed diverge again; fix the scenario (e.g. protocol.lr) "
             "and sweep into another --out"),
            (RunStatus.NO_PROGRESS.value, "all",
             "no step committed (see each run's error); change the scenario and sweep into "
             "another --out"),
            (RunStatus.INFEASIBLE.value, "all",
             "no device of the fleet can hold the job (see each run's error); change the "
             "model, PEFT, batch or population and sweep into another --out"),
        ):
            n = by_status.get(status, 0)
            if n:
                lines.append(
                    f"{n} {status} run(s) are kept as they ended: a re-run of the same command "
                    f"does not retry them ({why}, or run them again with --retry {choice})"
                )
        return lines




def is_finished(run: PlannedRun) -> bool:
    """A run has ended (with any status of its own: see :func:`ended_outcome`) when its
    summary.json exists and it ran the same scenario."""
    return ended_outcome(run) is not None


def ended_outcome(run: PlannedRun) -> Optional[dict[str, Any]]:
    """Index fields (:func:`summary_outcome`) of a run whose directory holds its
    ``summary.json`` for the planned resolved scenario; None when it holds none (never
    run, failed, killed) or holds another scenario's."""
    if not (run.run_dir / "summary.json").is_file():
        return None
    if not _run_dir_complete(run.run_dir):
        return None
    if not _same_scenario(run):
        return None
    return summary_outcome(run.run_dir) or None


def _run_dir_complete(run_dir: Path) -> bool:
    """Whether the run directory's writer finished it (its completion marker,
    :func:`fleetsim.record.rundir.run_dir_state`): a run killed while writing its
    directory is incomplete even with a summary.json, and its retry runs it again."""
    return bool(run_dir_state(run_dir).complete)


def _same_scenario(run: PlannedRun) -> bool:
    if not run.resolved_yaml:
        return True
    path = run.run_dir / "scenario.yaml"
    try:
        written = path.read_text()
    except OSError:
        return False
    if written == run.resolved_yaml:
        return True
    # The recorder may write the YAML in its own style: compare the data, not the text.
    try:
        return load_bounded(written, path) == yaml.safe_load(run.resolved_yaml)
    except (yaml.YAMLError, FleetsimInputError):
        return False


# ---------------------------------------------------------------------------------- backends



def _run_sequential(
    runs: list[PlannedRun],
    base_path: Path,
    threads: int,
    run_fn: Optional[RunFn],
    on_start: _Callback,
    on_done: _DoneCallback,
) -> None:
    previous_threads = _torch_threads()
    try:
        for run in runs:
            on_start(run)
            try:
                outcome = execute_run(
                    run.run_id, str(base_path), run.overrides, str(run.run_dir), threads, run_fn
                )
            except KeyboardInterrupt:
                on_done(run, _killed(run, "the sweep was interrupted while this run was going"))
                raise
            on_done(run, outcome)
    finally:
        if previous_threads is not None:
            limit_threads(previous_threads)


def _torch_threads() -> Optional[int]:
    torch = sys.modules.get("torch")
    return int(torch.get_num_threads()) if torch is not None else None




# ---------------------------------------------------------------------------------- driver


def run_sweep(
    sweep: LoadedSweep | Path | str,
    backend: Backend = "ray",
    address: Optional[str] = None,
    max_parallel: Optional[int] = None,
    torch_threads: Optional[int] = None,
    overrides: Sequence[str] = (),
    progress: bool = True,
    run_fn: Optional[RunFn] = None,
    run_timeout_s: Optional[float] = None,
    retry: str = DEFAULT_RETRY,
) -> SweepResult:
    """Plan, validate and run a sweep; returns the counts by status and the index path.

    Arguments override the sweep file's ``max_parallel`` / ``torch_threads_per_task`` /
    ``run_timeout_s`` (a limit the Ray backend enforces; sequential runs cannot be stopped);
    ``overrides`` (``--set``) apply to every run.  ``retry`` (a key of
    :data:`~fleetsim.sweep.index.RETRY_CHOICES`) says which runs that already ended are run
    again.  ``run_fn`` replaces the runner (tests).

    Raises FleetsimInputError (nothing run, nothing written) for a bad sweep, a bad run
    scenario, or a run directory in ``out`` that holds a run of a different resolved
    scenario (:func:`~fleetsim.sweep.plan.check_run_dirs`).
    """
    host_start = time.perf_counter()
    loaded = sweep if isinstance(sweep, LoadedSweep) else load_sweep(sweep)
    if backend not in ("ray", "sequential"):
        raise FleetsimInputError(f"--backend {backend}: allowed: ray, sequential")
    if retry not in RETRY_CHOICES:
        raise FleetsimInputError(f"--retry {retry}: allowed: {', '.join(RETRY_CHOICES)}")
    plan = plan_sweep(loaded, tuple(overrides))
    check_run_dirs(loaded, plan)
    out_dir = loaded.out_dir
    if out_dir.exists() and not out_dir.is_dir():
        raise FleetsimInputError(f"{loaded.path}: out: {out_dir} exists and is not a folder")
    out_dir.mkdir(parents=True, exist_ok=True)
    with _sweep_lock(out_dir, loaded.path):
        # Under the lock: another invocation may have written run directories meanwhile.
        check_run_dirs(loaded, plan)
        return _run_locked(loaded, plan, out_dir, backend, address, max_parallel, torch_threads,
                           progress, run_fn, run_timeout_s, host_start, retry)


@contextlib.contextmanager
def _sweep_lock(out_dir: Path, sweep_path: Path) -> Iterator[None]:
    """One sweep invocation per sweep folder at a time: two would overwrite each other's
    index and run the same runs twice."""
    import fcntl

    with open(out_dir / LOCK_FILE, "a+") as fh:
        try:
            fcntl.flock(fh.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise FleetsimInputError(
                f"{sweep_path}: out: another fleetsim sweep is running in {out_dir}; wait for "
                "it to end or choose another folder (--out)"
            ) from None
        try:
            yield
        finally:
            fcntl.flock(fh.fileno(), fcntl.LOCK_UN)


def _run_locked(
    loaded: LoadedSweep,
    plan: list[PlannedRun],
    out_dir: Path,
    backend: Backend,
    address: Optional[str],
    max_parallel: Optional[int],
    torch_threads: Optional[int],
    progress: bool,
    run_fn: Optional[RunFn],
    run_timeout_s: Optional[float],
    host_start: float,
    retry: str = DEFAULT_RETRY,
) -> SweepResult:
    base_path = loaded.base_path.resolve()
    # Workers may run in another folder (a cluster node): hand them absolute paths.
    plan = [
        PlannedRun(r.run_id, r.params, r.overrides, r.run_dir.resolve(), r.resolved_yaml)
        for r in plan
    ]

    cpus = os.cpu_count() or 1
    if backend == "sequential":
        parallel = 1
    else:
        parallel = max_parallel or loaded.config.max_parallel or (None if address else cpus)
    threads = (
        torch_threads
        or loaded.config.torch_threads_per_task
        or max(1, cpus // (parallel or cpus))
    )

    index = SweepIndex(out_dir / INDEX_FILE)
    previous = SweepIndex.read_previous(index.path)
    to_run: list[PlannedRun] = []
    retried = RETRY_CHOICES[retry]
    for run in plan:
        status = _reconcile(index, run, previous.get(run.run_id))
        if status is RunStatus.PENDING or status in retried:
            to_run.append(run)
    skipped = len(plan) - len(to_run)
    index.write()
    # Copy of the sweep file beside the index: the folder documents how it was made.
    write_text(out_dir / "sweep.yaml", loaded.path.read_text())

    started_ray = False
    if to_run and backend == "ray":
        # Before the progress bar: Ray's start-up messages would break its line.
        from fleetsim.sweep.ray_backend import start_ray

        started_ray = start_ray(address, parallel)
        if parallel is None:
            import ray

            parallel = max(1, int(ray.cluster_resources().get("CPU", 1)))

    bar = None
    if progress and to_run:
        from tqdm import tqdm

        bar = tqdm(total=len(to_run), desc=f"sweep {loaded.name}", unit="run",
                   file=sys.stderr, dynamic_ncols=True)
        if skipped:
            bar.write(f"sweep {loaded.name}: {skipped} of {len(plan)} runs already finished",
                      file=sys.stderr)

    def on_start(run: PlannedRun) -> None:
        row = index.rows[run.run_id]
        # A new attempt: nothing of the previous one's outcome stays in its row.
        index.update(run.run_id, status=RunStatus.RUNNING.value, error="", run_status="",
                     attempts=int(row["attempts"]) + 1, started_at=_now(), finished_at="",
                     host_seconds=math.nan, final_accuracy=math.nan,
                     simulated_seconds=math.nan, worker="")
        index.write()

    def on_done(run: PlannedRun, outcome: RunOutcome) -> None:
        fields = outcome.index_fields()
        if not fields["started_at"]:
            fields["started_at"] = index.rows[run.run_id]["started_at"]
        index.update(run.run_id, **fields)
        index.write()
        if bar is not None:
            counts = index.counts()
            bar.set_postfix_str(
                " | ".join(f"{s} {n}" for s, n in counts.items()
                           if n and s not in (RunStatus.PENDING.value, RunStatus.RUNNING.value)),
                refresh=False,
            )
            bar.update(1)

    try:
        if not to_run:
            pass
        elif backend == "sequential":
            _run_sequential(to_run, base_path, threads, run_fn, on_start, on_done)
        else:
            from fleetsim.sweep.ray_backend import run_ray

            run_ray(to_run, base_path, threads, parallel, run_fn, on_start, on_done,
                     run_timeout_s or loaded.config.run_timeout_s)
    finally:
        if bar is not None:
            bar.close()
        if started_ray:
            import ray

            ray.shutdown()
    return SweepResult(
        name=loaded.name,
        out_dir=out_dir,
        index_path=index.path,
        counts=index.counts(),
        executed=len(to_run),
        skipped=skipped,
        backend=backend,
        host_seconds=time.perf_counter() - host_start,
        failures=[(run_id, str(row["error"])) for run_id, row in index.rows.items()
                  if row["status"] != RunStatus.DONE.value],
        statuses={run_id: str(row["status"]) for run_id, row in index.rows.items()
                  if row["status"] != RunStatus.DONE.value},
        retry=retry,
    )


#: Statuses a run can only have when its directory holds its summary.json.
_ENDED_WITH_SUMMARY = frozenset(OUTCOME_OF_RUN_STATUS.values())


def _reconcile(
    index: SweepIndex, run: PlannedRun, prior: Optional[dict[str, Any]]
) -> RunStatus:
    """Put ``run``'s row in the index as this invocation finds it, and return its status.

    The run directory is the record of how a run ended (a ``summary.json`` of the planned
    scenario), so a run's status is the same however often the sweep ran; the previous
    index keeps what the directory cannot say (attempts, worker, times, the error of a run
    that wrote no summary)."""
    row = index.add(run.run_id, run.params, run.run_dir, prior)
    if prior:
        row.update({k: v for k, v in prior.items()
                    if k not in ("run_id", "params", "run_dir")})
    ended = ended_outcome(run)
    if ended is not None:
        if prior and math.isfinite(_number(prior.get("host_seconds"))):
            # The attempt's wall time as its worker measured it (the summary's own
            # host_seconds leaves out the run's start-up and its last writes).
            ended.pop("host_seconds")
        index.update(run.run_id, **ended)
        # A run with a summary was started at least once (an index lost or made by an older
        # fleetsim may not say so).
        index.update(run.run_id, attempts=max(1, int(row["attempts"])))
        return RunStatus(ended["status"])
    try:
        status = RunStatus(prior["status"]) if prior else RunStatus.PENDING
    except ValueError:  # a status this fleetsim does not know: start from scratch
        index.update(run.run_id, status=RunStatus.PENDING.value)
        return RunStatus.PENDING
    if status is RunStatus.RUNNING:
        # The sweep that started it ended without hearing back: the run was killed.
        index.update(run.run_id, status=RunStatus.KILLED.value,
                     error="the sweep process ended while this run was going")
        return RunStatus.KILLED
    if status is RunStatus.INFEASIBLE and not infeasible_record_holds(run):
        # Refused for another scenario (base, set, arm changed) or its directory deleted.
        index.update(run.run_id, status=RunStatus.PENDING.value, error="")
        return RunStatus.PENDING
    if status in _ENDED_WITH_SUMMARY:
        # Its results are gone (the directory was deleted to redo the run): run it again.
        index.update(run.run_id, status=RunStatus.PENDING.value, run_status="", error="",
                     final_accuracy=math.nan, simulated_seconds=math.nan)
        return RunStatus.PENDING
    return status
