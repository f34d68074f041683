"""A run directory holds one run, finished or visibly unfinished — never a mix.

Each output file is written atomically (:mod:`fleetsim.record.atomic`), but a run writes
several; a run killed (SIGKILL, out of memory, power loss) or out of disk while
replacing another would leave the new run's first files beside the old run's last ones.
So a run directory's life is:

1. :func:`begin_run` — before the clock starts: create the folder, write
   ``run_in_progress.json`` (this also proves the folder writable: exit 2 naming
   ``output.dir`` when it is not), then remove ``run_complete.json`` and every other
   output a run owns (:data:`OWNED_OUTPUTS`; a resume keeps its checkpoint);
2. the run writes its checkpoints, tables and summary;
3. :func:`finish_run` — last: write ``run_complete.json`` (scenario hash, status, and
   the size in bytes of each output it vouches for, for the record), then remove
   ``run_in_progress.json``.

Killed anywhere before step 3 ends, the folder holds ``run_in_progress.json`` and no
``run_complete.json``: :func:`run_dir_state` says *incomplete*; ``report``, ``compare``
and :func:`fleetsim.analysis.load_runs` refuse it, and a sweep runs it again.

:func:`run_dir_state` is the one place that says whether a folder holds a finished run
and how it ended (``RunDirState.complete``, ``.status``: summary.json's ``status``).
Folders written before these markers existed are judged by their files: complete when
``summary.json`` and ``steps.parquet`` agree on the number of step rows.

:func:`scenario_hash` names a resolved scenario: runs whose scenarios have different
hashes never share a folder unless the user asks (``fleetsim run --replace``).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

from fleetsim.errors import FleetsimInputError
from fleetsim.record.atomic import fsync_dir, write_json

IN_PROGRESS_FILE = "run_in_progress.json"
COMPLETE_FILE = "run_complete.json"
#: The tables and summary ``run_complete.json`` vouches for (with their sizes).
RUN_TABLES = ("scenario.yaml", "steps.parquet", "events.parquet", "devices.parquet",
              "summary.json")
#: Everything a run (or ``fleetsim report`` into its default folder) writes in its run
#: directory: removed before a new run is written there.  Anything else is left alone.
OWNED_OUTPUTS = (*RUN_TABLES, "convergence.png", "convergence.pdf", "convergence.svg",
                 "report", "tensorboard", "mlflow", "checkpoint.npz", "checkpoint.pkl",
                 COMPLETE_FILE)
CHECKPOINT_FILES = ("checkpoint.npz",)
#: Keys left out of :func:`scenario_hash`: how a run is shown or where it is written,
#: never what it computes.
_UNHASHED = (("run", "progress"), ("output",))


def scenario_hash(resolved: dict[str, Any]) -> str:
    """SHA-256 (hex) of a resolved scenario mapping (``Scenario.model_dump(mode="json")``),
    canonical JSON with sorted keys, leaving out ``run.progress`` and the ``output``
    section (display and destination, not results)."""
    data = json.loads(json.dumps(resolved, sort_keys=True, default=str))
    for path in _UNHASHED:
        node = data
        for key in path[:-1]:
            node = node.get(key, {}) if isinstance(node, dict) else {}
        if isinstance(node, dict):
            node.pop(path[-1], None)
    text = json.dumps(data, sort_keys=True, separators=(",", ":"), allow_nan=True)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


@dataclass(frozen=True)
class RunDirState:
    """What a folder holds.  ``complete``: a finished run whose files all belong to it;
    ``status``: its summary.json ``status`` (``completed``, ``diverged``, ...; None when
    incomplete); ``reason``: why it is incomplete ('' when complete); ``scenario_hash``:
    the run's :func:`scenario_hash` when known; ``legacy``: written before the markers."""

    complete: bool
    status: Optional[str]
    reason: str
    scenario_hash: Optional[str]
    legacy: bool = False


def _read_json(path: Path) -> Optional[dict]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def run_dir_state(run_dir: Path | str) -> RunDirState:
    """Whether ``run_dir`` holds a finished run, and how it ended.  Cheap (reads two
    small JSON files and checks the tables exist; legacy folders also read a Parquet
    footer).  Complete means: no ``run_in_progress.json``, and ``run_complete.json`` with
    every table it lists present (or, for a legacy folder, summary and tables that agree)."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        return RunDirState(False, None, "no such folder", None)
    progress = run_dir / IN_PROGRESS_FILE
    if progress.exists():
        started = _read_json(progress) or {}
        return RunDirState(False, None, "a run was writing here and did not finish (killed, "
                           "out of disk, or still running)", started.get("scenario_hash"))
    marker = _read_json(run_dir / COMPLETE_FILE)
    if (run_dir / COMPLETE_FILE).exists() and marker is None:
        return RunDirState(False, None, f"{COMPLETE_FILE} is unreadable", None)
    if marker is not None:
        sizes = marker.get("files")
        if not isinstance(sizes, dict) or not sizes:
            return RunDirState(False, None, f"{COMPLETE_FILE} lists no files", None)
        for name in sorted(sizes):
            if not (run_dir / str(name)).is_file():
                return RunDirState(False, None, f"{name} is missing", marker.get("scenario_hash"))
        return RunDirState(True, marker.get("status"), "", marker.get("scenario_hash"))
    return _legacy_state(run_dir)


def _legacy_state(run_dir: Path) -> RunDirState:
    """A folder without markers (written before they existed): incomplete without a
    summary.json, or when its summary and step table are of two different runs (the
    summary's ``step_attempts`` is not the number of rows of steps.parquet).  Files that
    cannot be read are left to the readers, which name them."""
    summary = _read_json(run_dir / "summary.json")
    if summary is None:
        if run_dir.is_dir() and not any(run_dir.iterdir()):
            # an empty folder was never a run: "did not finish" would send a user
            # looking for a run that never started
            return RunDirState(False, None, "an empty folder, not a run directory", None)
        return RunDirState(False, None, "no readable summary.json (the run did not finish)",
                           None)
    from fleetsim.safe_yaml import load_bounded  # yaml reading stays bounded

    digest = None
    try:
        text = (run_dir / "scenario.yaml").read_text(encoding="utf-8")
        scenario = load_bounded(text, run_dir / "scenario.yaml")
    except (OSError, UnicodeDecodeError, ValueError, FleetsimInputError):
        scenario = None
    if isinstance(scenario, dict):
        digest = scenario_hash(scenario)
    if isinstance(summary.get("step_attempts"), int):
        import pyarrow.parquet as pq

        try:
            rows = pq.ParquetFile(run_dir / "steps.parquet").metadata.num_rows
        except Exception:  # noqa: BLE001 - unreadable: the reader names it
            rows = None
        if rows is not None and rows != summary["step_attempts"]:
            return RunDirState(False, None, f"files of two runs: summary.json counts "
                               f"{summary['step_attempts']} step rows, steps.parquet has {rows}",
                               digest)
    return RunDirState(True, summary.get("status"), "", digest, legacy=True)


def require_complete(run_dir: Path | str) -> RunDirState:
    """:func:`run_dir_state`, raising FleetsimInputError (one line) when incomplete."""
    state = run_dir_state(run_dir)
    if not state.complete:
        raise FleetsimInputError(
            f"{run_dir}: not a finished run directory: {state.reason}; run it again "
            "(or `fleetsim run --resume` it when it has a checkpoint)"
        )
    return state


def owned_outputs_present(run_dir: Path) -> list[str]:
    """The :data:`OWNED_OUTPUTS` and markers present in ``run_dir`` (sorted)."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        return []
    names = (*OWNED_OUTPUTS, IN_PROGRESS_FILE)
    return sorted(n for n in names if (run_dir / n).exists() or (run_dir / n).is_symlink())


def begin_run(run_dir: Path, digest: str, *, keep_checkpoint: bool = False) -> None:
    """Step 1 of the module note.  Raises FleetsimInputError naming ``output.dir`` when
    the folder cannot be created or written."""
    run_dir = Path(run_dir)
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
        write_json(run_dir / IN_PROGRESS_FILE, {"scenario_hash": digest})
    except OSError as exc:
        raise FleetsimInputError(
            f"output.dir: cannot write the run directory {run_dir}: {exc.strerror or exc}"
        ) from None
    keep = set(CHECKPOINT_FILES) if keep_checkpoint else set()
    try:
        for name in (COMPLETE_FILE, *OWNED_OUTPUTS):  # the completion marker first
            if name in keep:
                continue
            path = run_dir / name
            if path.is_dir() and not path.is_symlink():
                shutil.rmtree(path)
            else:
                with contextlib.suppress(FileNotFoundError):
                    path.unlink()
        fsync_dir(run_dir)
    except OSError as exc:
        raise FleetsimInputError(
            f"output.dir: cannot remove the previous run's {name} in {run_dir}: "
            f"{exc.strerror or exc}"
        ) from None


def finish_run(run_dir: Path, digest: str, summary: dict[str, Any]) -> None:
    """Step 3 of the module note (after every table and summary.json is written)."""
    run_dir = Path(run_dir)
    files = {name: (run_dir / name).stat().st_size for name in RUN_TABLES
             if (run_dir / name).exists()}
    write_json(run_dir / COMPLETE_FILE, {
        "scenario_hash": digest,
        "status": summary.get("status"),
        "stopped_by": summary.get("stopped_by"),
        "files": files,
    })
    (run_dir / IN_PROGRESS_FILE).unlink()
    fsync_dir(run_dir)


__all__ = [
    "COMPLETE_FILE",
    "IN_PROGRESS_FILE",
    "OWNED_OUTPUTS",
    "RunDirState",
    "begin_run",
    "finish_run",
    "owned_outputs_present",
    "require_complete",
    "run_dir_state",
    "scenario_hash",
]
