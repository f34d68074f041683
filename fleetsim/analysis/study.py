"""Running a study: a grid of scenario overrides × seeds, each into its own run directory.

The study scripts in ``analysis/`` describe their grid with :class:`StudyPoint`
and call :func:`run_study`, then build figures from the run directories with
the rest of :mod:`fleetsim.analysis`.  A run directory that already holds a
complete run (all files of ``fleetsim.analysis.load.RUN_FILES``) is reused, so
an interrupted study resumes where it stopped.
"""

from __future__ import annotations

import argparse
import re
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from fleetsim.analysis.load import RUN_FILES

RunFunction = Callable[..., Path]


@dataclass(frozen=True)
class StudyPoint:
    """One configuration of a study: a label (used in the run directory name) and
    the ``dotted.key=value`` overrides applied to the study's scenario file."""

    label: str
    overrides: Sequence[str] = field(default_factory=tuple)


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.=-]+", "_", text).strip("_") or "point"


def is_complete_run(run_dir: Path) -> bool:
    return all((run_dir / name).is_file() for name in RUN_FILES)


def run_study(
    scenario_path: Path,
    points: Sequence[StudyPoint],
    seeds: Sequence[int],
    runs_dir: Path,
    common_overrides: Sequence[str] = (),
    reuse: bool = True,
    run_function: RunFunction | None = None,
    log: Callable[[str], None] | None = None,
) -> list[Path]:
    """Run ``scenario_path`` once per point and seed into ``runs_dir/<label>-seed<seed>``.

    Overrides are applied in the order: ``common_overrides``, the point's own,
    then ``run.seed``, ``run.name`` and ``run.progress=false``.  ``run_function``
    defaults to :func:`fleetsim.runner.run_scenario` (imported on first use).
    Returns the run directories in grid order.
    """
    if run_function is None:
        from fleetsim.runner import run_scenario as run_function
    if log is None:

        def log(message: str) -> None:
            print(message, file=sys.stderr, flush=True)

    runs_dir = Path(runs_dir)
    labels = [p.label for p in points]
    duplicates = sorted({label for label in labels if labels.count(label) > 1})
    if duplicates:
        raise ValueError(f"study point labels must be unique; repeated: {', '.join(duplicates)}")
    run_dirs = []
    total = len(points) * len(seeds)
    for index, (point, seed) in enumerate(((p, s) for p in points for s in seeds), start=1):
        name = f"{_slug(point.label)}-seed{seed}"
        run_dir = runs_dir / name
        run_dirs.append(run_dir)
        if reuse and is_complete_run(run_dir):
            log(f"[{index}/{total}] {name}: reusing {run_dir}")
            continue
        overrides = [
            *common_overrides,
            *point.overrides,
            f"run.seed={seed}",
            f"run.name={name}",
            "run.progress=false",
        ]
        started = time.perf_counter()
        run_function(Path(scenario_path), overrides=overrides, run_dir=run_dir)
        log(f"[{index}/{total}] {name}: done in {time.perf_counter() - started:.1f} s host time")
    return run_dirs


def study_arguments(description: str, default_seeds: Sequence[int]) -> argparse.ArgumentParser:
    """The command line every study script shares."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument(
        "--quick", action="store_true", help="a small version (one seed, short runs) to try it out"
    )
    parser.add_argument(
        "--seeds",
        type=int,
        nargs="+",
        default=None,
        help=f"run seeds (default: {' '.join(map(str, default_seeds))}; --quick: 0)",
    )
    parser.add_argument(
        "--out",
        type=Path,
        default=None,
        help="output folder (default: the study's own folder next to the script)",
    )
    parser.add_argument(
        "--fresh", action="store_true", help="rerun runs whose directories already exist"
    )
    return parser


def write_table(frame: pd.DataFrame, folder: Path, name: str, note: str = "") -> tuple[Path, Path]:
    """``frame`` as ``name.csv`` and ``name.md`` (Markdown, missing values as —) in ``folder``."""
    from fleetsim.analysis.report import markdown_table

    folder.mkdir(parents=True, exist_ok=True)
    csv_path, md_path = folder / f"{name}.csv", folder / f"{name}.md"
    frame.to_csv(csv_path, index=False)
    md_path.write_text((note + "\n\n" if note else "") + markdown_table(frame))
    return csv_path, md_path
