"""The backend contract of a sweep: what one attempt of one run is (:func:`execute_run`,
the run function :data:`RunFn` it calls, the :class:`RunOutcome` it returns) and the
callbacks a backend reports through (``on_start(run)``, ``on_done(run, outcome)``).

The sequential backend (:mod:`fleetsim.sweep.execute`) and the Ray backend
(:mod:`fleetsim.sweep.ray_backend`) both run each planned run through
:func:`execute_run`; the driver (:func:`fleetsim.sweep.execute.run_sweep`) picks one.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import signal
import socket
import sys
import threading
import time
import traceback
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Optional

from fleetsim.errors import FleetsimInputError, InfeasibleRunError, RunStopped
from fleetsim.record.atomic import write_text
from fleetsim.sweep.index import OUTCOME_OF_RUN_STATUS, RunStatus
from fleetsim.sweep.infeasible import record_infeasible
from fleetsim.sweep.plan import PlannedRun

#: ``(scenario_path, overrides, run_dir) -> run directory``; default: fleetsim.runner's
RunFn = Callable[[Path, Sequence[str], Path], Path]

ERROR_FILE = "sweep_error.txt"
_THREAD_VARS = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS")


@dataclass
class RunOutcome:
    """What one attempt of one run ended with (plain data: it crosses process boundaries)."""

    run_id: str
    status: str
    error: str = ""
    run_status: str = ""  # summary.json's status, "" when the run wrote none
    host_seconds: float = math.nan
    final_accuracy: float = math.nan
    simulated_seconds: float = math.nan
    worker: str = ""
    started_at: str = ""
    finished_at: str = ""

    def index_fields(self) -> dict[str, Any]:
        return {
            "status": self.status,
            "run_status": self.run_status,
            "error": self.error,
            "host_seconds": self.host_seconds,
            "final_accuracy": self.final_accuracy,
            "simulated_seconds": self.simulated_seconds,
            "worker": self.worker,
            "started_at": self.started_at,
            "finished_at": self.finished_at,
        }



def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def _number(value: Any) -> float:
    try:
        return math.nan if value is None else float(value)
    except (TypeError, ValueError):
        return math.nan


def summary_outcome(run_dir: Path) -> dict[str, Any]:
    """Index fields of a run from its ``summary.json``: ``status`` (the sweep status of the
    run's own status, :data:`~fleetsim.sweep.index.OUTCOME_OF_RUN_STATUS`), ``run_status``,
    ``error`` (the run's ``status_detail`` when it did not end done), final accuracy and
    simulated and host seconds.  ``{}`` when there is no readable summary."""
    try:
        summary = json.loads((Path(run_dir) / "summary.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    if not isinstance(summary, dict):
        return {}
    run_status = str(summary.get("status") or "")
    status = OUTCOME_OF_RUN_STATUS.get(run_status)
    detail = " | ".join(
        line.strip() for line in str(summary.get("status_detail") or "").splitlines()
        if line.strip()
    )
    if status is None:
        status, error = RunStatus.FAILED, f"summary.json has an unknown status {run_status!r}"
    elif status is RunStatus.DONE:
        error = ""
    else:
        error = detail or f"the run ended {run_status}"
    return {
        "status": status.value,
        "run_status": run_status,
        "error": error,
        "final_accuracy": _number(summary.get("final_accuracy")),
        "simulated_seconds": _number(summary.get("simulated_seconds")),
        "host_seconds": _number(summary.get("host_seconds")),
    }


def limit_threads(threads: int) -> None:
    """Make torch / OpenMP use ``threads`` threads in this process, so parallel runs on one
    machine do not fight over its cores."""
    for var in _THREAD_VARS:
        os.environ[var] = str(threads)
    # torch reads OMP_NUM_THREADS when it is first imported; once imported, it is told.
    # (Importing it here would cost seconds per fresh worker of a systems-only sweep.)
    torch = sys.modules.get("torch")
    if torch is not None:
        torch.set_num_threads(int(threads))


def _default_run_fn(scenario_path: Path, overrides: Sequence[str], run_dir: Path) -> Path:
    from fleetsim.runner import run_scenario

    return run_scenario(scenario_path, overrides, run_dir=run_dir, progress=False)


def execute_run(
    run_id: str,
    scenario_path: str,
    overrides: Sequence[str],
    run_dir: str,
    torch_threads: int,
    run_fn: Optional[RunFn] = None,
    run_timeout_s: Optional[float] = None,
) -> RunOutcome:
    """One attempt of one run, on whichever process executes it.  Never raises for a
    failing run: the error (one line) goes into the outcome and the traceback into
    ``RUN_DIR/sweep_error.txt``.

    ``run_timeout_s`` (worker processes only: it ends the process) kills the process when
    the run is still going after that many seconds, leaving the reason in
    ``RUN_DIR/sweep_error.txt`` for the driver."""
    started_at = _now()
    start = time.perf_counter()
    worker = f"{socket.gethostname()}:{os.getpid()}"
    limit_threads(torch_threads)
    fn = run_fn or _default_run_fn
    with contextlib.suppress(FileNotFoundError):
        (Path(run_dir) / ERROR_FILE).unlink()  # a reason left by an earlier attempt
    watchdog = None
    if run_timeout_s is not None:
        watchdog = threading.Timer(
            run_timeout_s, _end_timed_out_run, (Path(run_dir), run_timeout_s)
        )
        watchdog.daemon = True
        watchdog.start()
    try:
        fn(Path(scenario_path), list(overrides), Path(run_dir))
    except Exception as exc:  # noqa: BLE001 - any failure of one run is recorded, not raised
        fields = summary_outcome(Path(run_dir)) if isinstance(exc, RunStopped) else {}
        if fields and fields["status"] != RunStatus.DONE.value:
            # The run stopped itself (a numerical fault) after writing its outputs: it ended
            # with its own status, recorded as a later invocation reads it back from disk.
            fields.pop("host_seconds")
            return RunOutcome(
                run_id=run_id, host_seconds=time.perf_counter() - start, worker=worker,
                started_at=started_at, finished_at=_now(), **fields,
            )
        refused = isinstance(exc, FleetsimInputError)
        if refused:
            message = str(exc)
        else:
            message = f"{type(exc).__name__}: {exc}"
        one_line = " | ".join(line.strip() for line in message.splitlines() if line.strip())
        with contextlib.suppress(OSError):
            write_text(Path(run_dir) / ERROR_FILE, traceback.format_exc())
        if isinstance(exc, InfeasibleRunError):
            record_infeasible(Path(run_dir), Path(scenario_path), overrides,
                              one_line or type(exc).__name__)
        status = (RunStatus.INFEASIBLE if isinstance(exc, InfeasibleRunError)
                  else RunStatus.FAILED_TO_START if refused else RunStatus.FAILED)
        return RunOutcome(
            run_id=run_id,
            status=status.value,
            error=one_line or type(exc).__name__,
            host_seconds=time.perf_counter() - start,
            worker=worker,
            started_at=started_at,
            finished_at=_now(),
        )
    finally:
        if watchdog is not None:
            watchdog.cancel()
    fields = summary_outcome(Path(run_dir))
    if not fields:
        return RunOutcome(
            run_id=run_id,
            status=RunStatus.FAILED.value,
            error=f"the run ended without writing {Path(run_dir) / 'summary.json'}",
            host_seconds=time.perf_counter() - start,
            worker=worker,
            started_at=started_at,
            finished_at=_now(),
        )
    fields.pop("host_seconds")
    return RunOutcome(
        run_id=run_id,
        host_seconds=time.perf_counter() - start,
        worker=worker,
        started_at=started_at,
        finished_at=_now(),
        **fields,
    )


_TIMEOUT_NOTE = "killed after the run timeout of"


def _end_timed_out_run(run_dir: Path, run_timeout_s: float) -> None:
    """Watchdog of a run past its time limit: a run cannot be stopped from inside (it may be
    deep in torch), so the worker process ends, as if killed, with the reason on disk."""
    with contextlib.suppress(OSError):
        write_text(run_dir / ERROR_FILE, f"{_TIMEOUT_NOTE} {run_timeout_s:g} s\n")
    os.kill(os.getpid(), signal.SIGKILL)


def _timeout_note(run_dir: Path) -> str:
    try:
        text = (Path(run_dir) / ERROR_FILE).read_text().strip()
    except OSError:
        return ""
    return text if text.startswith(_TIMEOUT_NOTE) else ""


_Callback = Callable[[PlannedRun], None]
_DoneCallback = Callable[[PlannedRun, RunOutcome], None]


def _killed(run: PlannedRun, why: str) -> RunOutcome:
    return RunOutcome(
        run_id=run.run_id, status=RunStatus.KILLED.value, error=why, finished_at=_now()
    )


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    for line in text.splitlines():
        if line.strip():
            return f"{type(exc).__name__}: {line.strip()}"
    return type(exc).__name__
