"""Results pages regenerated from committed per-run tables, never copied (issue 23, rule 5).

A study writes one **per-run table** (``docs/results/<study>/runs.csv``: one row per run
with every figure its page uses, the git commit that produced the run and the hash of the
run's resolved scenario) and writes its page (``docs/results/<study>.md``) from that table
by a *pure* function ``render(table) -> str``.  :func:`write_page` renders from the table
as read back from disk, so the committed page is always a function of the committed CSV;
:func:`check_page` (used by the tests) renders again and compares, so a number edited by
hand on the page, or a table changed without regenerating the page, fails.

Floats are written with ``repr`` precision (``float_format=None``) and read back by
pandas' default (round-trip) parser, so the table round-trips bit for bit (a test checks).
"""

from __future__ import annotations

import hashlib
import subprocess
from collections.abc import Callable, Sequence
from pathlib import Path

import pandas as pd

from fleetsim.errors import FleetsimInputError

#: Columns every per-run table has besides the figures its page uses.
PROVENANCE_COLUMNS = ("run", "commit", "scenario_hash")

Render = Callable[[pd.DataFrame], str]


def scenario_hash(run_dir: Path) -> str:
    """The first 16 hex digits of the SHA-256 of a run's resolved ``scenario.yaml``
    (the scenario the run actually used, with every default filled in)."""
    path = Path(run_dir) / "scenario.yaml"
    try:
        return hashlib.sha256(path.read_bytes()).hexdigest()[:16]
    except OSError as exc:
        raise FleetsimInputError(f"{path}: cannot read the run's scenario ({exc})") from exc


def git_commit(repo: Path | None = None) -> str:
    """``git rev-parse HEAD`` of ``repo`` (default: the fleetsim source tree), with a
    ``+dirty`` suffix when tracked files differ from it; ``"unknown"`` outside git."""
    where = Path(repo) if repo is not None else Path(__file__).resolve().parent
    try:
        head = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=where, capture_output=True, text=True, check=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=where, capture_output=True, text=True, check=True,
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return head + ("+dirty" if dirty else "")


def _recorded_commit(run_dir: Path) -> str | None:
    """The commit the run's own ``summary.json`` records (``git_commit``, ``+dirty`` when
    ``git_dirty``); None for a run directory written before fleetsim recorded it."""
    import json

    try:
        summary = json.loads((run_dir / "summary.json").read_text())
    except (OSError, ValueError):
        return None
    head = summary.get("git_commit")
    if not head:
        return None
    return str(head) + ("+dirty" if summary.get("git_dirty") else "")


def runs_table(
    rows: pd.DataFrame, run_dirs: Sequence[Path], commit: str | None = None
) -> pd.DataFrame:
    """``rows`` (one row per run, a ``run`` column matching the directory names of
    ``run_dirs``) with the provenance columns ``commit`` and ``scenario_hash`` first.
    ``commit``: the given one, else the commit each run's ``summary.json`` records, else
    the source tree's HEAD now (runs written before fleetsim recorded it)."""
    if "run" not in rows.columns:
        raise FleetsimInputError("per-run table: needs a 'run' column")
    hashes = {Path(d).name: scenario_hash(Path(d)) for d in run_dirs}
    missing = sorted(set(rows["run"]) - set(hashes))
    if missing:
        raise FleetsimInputError(f"per-run table: no run directory for {', '.join(missing)}")
    out = rows.copy()
    recorded = {Path(d).name: _recorded_commit(Path(d)) for d in run_dirs}
    out.insert(1, "commit", [
        commit if commit is not None else (recorded[r] or git_commit())
        for r in out["run"]
    ])
    out.insert(2, "scenario_hash", [hashes[r] for r in out["run"]])
    return out


def write_runs_table(table: pd.DataFrame, path: Path) -> Path:
    """Write the per-run table as CSV (floats at full ``repr`` precision)."""
    missing = [c for c in PROVENANCE_COLUMNS if c not in table.columns]
    if missing:
        raise FleetsimInputError(f"{path}: per-run table lacks {', '.join(missing)}")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    table.to_csv(path, index=False, lineterminator="\n")
    return path


def read_runs_table(path: Path) -> pd.DataFrame:
    """Read a per-run table written by :func:`write_runs_table` (floats round-trip)."""
    try:
        table = pd.read_csv(path, keep_default_na=True)
    except (OSError, ValueError) as exc:
        raise FleetsimInputError(f"{path}: cannot read the per-run table ({exc})") from exc
    missing = [c for c in PROVENANCE_COLUMNS if c not in table.columns]
    if missing:
        raise FleetsimInputError(
            f"{path}: missing column(s) {', '.join(missing)}; a per-run table has "
            f"{', '.join(PROVENANCE_COLUMNS)} and the page's figures"
        )
    return table


def write_page(table_path: Path, page_path: Path, render: Render) -> Path:
    """Render ``page_path`` from the table *as read back from* ``table_path``."""
    text = render(read_runs_table(table_path))
    page_path = Path(page_path)
    page_path.parent.mkdir(parents=True, exist_ok=True)
    page_path.write_text(text)
    return page_path


def page_differences(table_path: Path, page_path: Path, render: Render) -> list[str]:
    """The lines where ``page_path`` differs from the page regenerated from
    ``table_path`` (``-`` committed, ``+`` regenerated); empty when they agree."""
    import difflib

    expected = render(read_runs_table(table_path)).splitlines()
    actual = Path(page_path).read_text().splitlines()
    return [
        line for line in difflib.unified_diff(actual, expected, lineterm="", n=0)
        if line[:1] in "+-" and not line.startswith(("+++", "---"))
    ]


def check_page(table_path: Path, page_path: Path, render: Render) -> None:
    """Raise :class:`FleetsimInputError` (one line) when the committed page is not the
    page regenerated from the committed table."""
    diff = page_differences(table_path, page_path, render)
    if diff:
        raise FleetsimInputError(
            f"{page_path}: not regenerated from {table_path} ({len(diff)} differing line(s), "
            f"first: {diff[0][:160]!r}); rerun the study script's page step"
        )


__all__ = [
    "PROVENANCE_COLUMNS",
    "check_page",
    "git_commit",
    "page_differences",
    "read_runs_table",
    "runs_table",
    "scenario_hash",
    "write_page",
    "write_runs_table",
]
