"""Which run directories a ``load_runs`` argument names: a run directory, a sweep folder
(its ``sweep_index.parquet`` lists the runs), a glob pattern, or a list of any of these.

A string or path is one source, never a sequence of characters.  Directories are returned
in a stable order (a sweep in its index's plan order, a glob's matches sorted), each once.
"""

from __future__ import annotations

import glob
import os
import warnings
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Union

from fleetsim.errors import FleetsimInputError

#: what ``load_runs`` accepts: a path, or paths (list, tuple, generator, pandas Series)
RunSource = Union[str, "os.PathLike[str]", Iterable[Union[str, "os.PathLike[str]"]]]

SWEEP_INDEX_FILE = "sweep_index.parquet"  # fleetsim.sweep.index.INDEX_FILE
_GLOB_CHARS = frozenset("*?[")


def is_sweep_folder(path: Path) -> bool:
    """A folder written by ``fleetsim sweep`` (it holds ``sweep_index.parquet``)."""
    return (Path(path) / SWEEP_INDEX_FILE).is_file()


def sweep_run_dirs(sweep_dir: Path, skip_unfinished: bool = False) -> list[Path]:
    """The run directories of a sweep folder, in plan order: ``SWEEP/<run_id>`` for each
    row of its index (the folder may have been moved since the sweep ran).

    Runs whose status is not ``done`` (pending, running, failed, killed) are refused
    (:class:`FleetsimInputError` naming them), or with ``skip_unfinished`` left out with a
    :class:`UserWarning` naming them: a median over only the runs that finished is a
    different number, so leaving runs out is never silent."""
    import pandas as pd

    sweep_dir = Path(sweep_dir)
    index_path = sweep_dir / SWEEP_INDEX_FILE
    try:
        index = pd.read_parquet(index_path, columns=["run_id", "status"])
    except Exception as exc:  # noqa: BLE001 - any unreadable index: one line
        raise FleetsimInputError(f"{index_path}: cannot read the sweep index ({exc})") from None
    unfinished = [(str(r), str(s)) for r, s in zip(index["run_id"], index["status"])
                  if s != "done"]
    if unfinished:
        listed = ", ".join(f"{r} ({s})" for r, s in unfinished[:5])
        more = f" and {len(unfinished) - 5} more" if len(unfinished) > 5 else ""
        message = (f"{sweep_dir}: {len(unfinished)} of {len(index)} runs of this sweep are not "
                   f"done: {listed}{more}")
        if not skip_unfinished:
            raise FleetsimInputError(
                f"{message}; run the sweep again to finish them, or pass "
                f"skip_unfinished=True to load the {len(index) - len(unfinished)} done runs"
            )
        warnings.warn(f"{message}; loading the other {len(index) - len(unfinished)}",
                      UserWarning, stacklevel=3)
    done = {r for r, _ in unfinished}
    return [sweep_dir / str(r) for r in index["run_id"] if str(r) not in done]


def _one_source(text: str, skip_unfinished: bool) -> list[Path]:
    path = Path(text)
    if not path.exists() and _GLOB_CHARS & set(text):
        matches = sorted(Path(m) for m in glob.glob(text) if Path(m).is_dir())
        if not matches:
            raise FleetsimInputError(
                f"{text}: no folder matches this pattern (give a run directory, a sweep folder, "
                "a glob pattern of them, or a list of these)"
            )
        found: list[Path] = []
        for match in matches:
            found += _one_source(str(match), skip_unfinished)
        return found
    if path.is_dir() and is_sweep_folder(path):
        return sweep_run_dirs(path, skip_unfinished)
    if path.is_dir() and not (path / "summary.json").exists():
        runs_inside = [c for c in path.iterdir() if (c / "summary.json").is_file()]
        if runs_inside:
            raise FleetsimInputError(
                f"{path}: not a run directory but a folder of {len(runs_inside)} of them (and "
                f"no {SWEEP_INDEX_FILE}); give a glob pattern: {str(path / '*')!r}"
            )
    return [path]


def run_directories(source: RunSource, skip_unfinished: bool = False) -> list[Path]:
    """The run directories ``source`` names (see the module docstring), each once, in order.

    Raises :class:`FleetsimInputError` when nothing is named, a pattern matches no folder,
    or a sweep has runs that are not done (unless ``skip_unfinished``).  Whether each
    directory really is a run directory is checked by the loader."""
    if isinstance(source, (str, os.PathLike)):
        items = [source]
    elif isinstance(source, Mapping):
        raise FleetsimInputError(
            "load_runs: got a mapping; pass its paths (e.g. run_dirs.values()), a run "
            "directory, a sweep folder, a glob pattern, or a list of these"
        )
    elif isinstance(source, Iterable) and not isinstance(source, bytes):
        items = list(source)  # a list, tuple, generator, pandas Series of paths
    else:
        raise FleetsimInputError(
            f"load_runs: got a {type(source).__name__}; give a run directory, a sweep folder, "
            "a glob pattern, or a list of these (str or pathlib.Path)"
        )
    found: list[Path] = []
    seen: set[Path] = set()
    for item in items:
        if not isinstance(item, (str, os.PathLike)):
            raise FleetsimInputError(
                f"load_runs: {item!r} is a {type(item).__name__}; each entry must be a path "
                "(str or pathlib.Path)"
            )
        for path in _one_source(os.fspath(item), skip_unfinished):
            key = path.resolve()
            if key not in seen:
                seen.add(key)
                found.append(path)
    return found
