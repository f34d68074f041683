"""Running a study: its grid is a sweep file (``fleetsim sweep``), run through
:func:`fleetsim.sweep.run_sweep`, then analysed from the run directories.

Each study folder under ``analysis/`` holds ``scenario.yaml`` (the base scenario),
``sweep.yaml`` (the full grid × seeds) and ``sweep_quick.yaml`` (a small grid for a smoke
test, the one CI runs).  The study script runs one of them with :func:`run_study` — the
same machinery as ``fleetsim sweep analysis/<study>/sweep.yaml``: run directories named
from their parameters, a ``sweep_index.parquet`` of statuses, and resumption (a run that
ended with the same resolved scenario is kept, a failed or killed one is retried).  Runs that
ended diverged or without progress are results (they never reach a target) and are analysed
with the rest; the study names them on stderr.  So are runs no device of their fleet can
hold (``infeasible``): they have no run directory, so :attr:`StudyRuns.infeasible` carries
their error and scenario hash for the study's table.
"""

from __future__ import annotations

import argparse
import math
import shutil
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType

import pandas as pd

from fleetsim.errors import FleetsimInputError
from fleetsim.sweep import load_sweep, plan_sweep, run_sweep
from fleetsim.sweep.execute import RunFn
from fleetsim.sweep.index import RunStatus, read_index
from fleetsim.sweep.infeasible import infeasible_record

#: Statuses of runs that ended with an outcome of their own besides done: analysed (their
#: accuracy never counts: see fleetsim.record.status), never retried by a study.
OUTCOMES = (RunStatus.DIVERGED.value, RunStatus.NO_PROGRESS.value, RunStatus.INFEASIBLE.value)


@dataclass(frozen=True)
class InfeasibleRun:
    """A planned run refused before its clock started because no device of its fleet can
    hold its job (:class:`fleetsim.errors.InfeasibleRunError`): it never reaches anything."""

    run_id: str
    params: dict
    error: str  # the refusal: what the job needs, the most any device has
    scenario_hash: str  # of the resolved scenario it would have written (first 16 hex)
    scenario: dict  # that resolved scenario
    host_seconds: float  # the set-up that refused it
    commit: str  # the code that refused it (``+dirty`` when tracked files differed)


@dataclass
class StudyRuns:
    """The runs of one study invocation."""

    sweep_file: Path
    out_dir: Path  # the sweep folder (run directories + sweep_index.parquet)
    run_dirs: list[Path]  # finished runs, in sweep order
    host_seconds: float  # host time of this invocation (0 when everything was reused)
    run_host_seconds: float  # summed host seconds of all finished runs (their summaries)
    seeds: list[int]
    not_done: dict[str, str] = field(default_factory=dict)  # run id -> diverged/no_progress
    infeasible: list[InfeasibleRun] = field(default_factory=list)  # not in run_dirs


def sweep_file(study_dir: Path, quick: bool) -> Path:
    """``study_dir/sweep_quick.yaml`` with ``quick``, else ``study_dir/sweep.yaml``."""
    return Path(study_dir) / ("sweep_quick.yaml" if quick else "sweep.yaml")


def run_study(
    sweep_path: Path,
    out_dir: Path,
    overrides: Sequence[str] = (),
    fresh: bool = False,
    backend: str = "sequential",
    max_parallel: int | None = None,
    run_fn: RunFn | None = None,
    progress: bool = False,
    seeds: Sequence[int] | None = None,
    allow_infeasible: bool = False,
) -> StudyRuns:
    """Run (or resume) the sweep ``sweep_path`` into ``out_dir``; ``overrides`` apply to
    every run (``--set``); ``seeds`` replaces the sweep file's seeds; ``fresh`` deletes
    ``out_dir`` first.  Returns the finished run directories in sweep order (runs that
    ended diverged or without progress included, named in ``not_done``; infeasible runs,
    which have none, in ``infeasible``, only with ``allow_infeasible``: a study that tables
    them itself); raises :class:`FleetsimInputError` naming the runs that ended without
    an outcome (failed, killed, ...; rerunning retries them), or the infeasible runs of a
    study that does not table them."""
    out_dir = Path(out_dir)
    if fresh and out_dir.exists():
        shutil.rmtree(out_dir)
    loaded = load_sweep(sweep_path, out=str(out_dir))
    if seeds is not None:
        loaded.config = loaded.config.model_copy(update={"seeds": [int(x) for x in seeds]})
    started = time.perf_counter()
    result = run_sweep(
        loaded,
        backend=backend,  # type: ignore[arg-type]
        max_parallel=max_parallel,
        overrides=tuple(overrides),
        progress=progress,
        run_fn=run_fn,
    )
    missing = [(run_id, error) for run_id, error in result.failures
               if result.statuses.get(run_id) not in OUTCOMES]
    if missing:
        listed = "; ".join(f"{run_id} ({result.statuses.get(run_id, 'failed')}): {error}"
                           for run_id, error in missing[:3])
        raise FleetsimInputError(
            f"{sweep_path}: {len(missing)} run(s) ended without a result ({listed}); "
            + "; ".join(result.advice())
        )
    not_done = {run_id: result.statuses[run_id] for run_id, _ in result.failures}
    if not_done:
        print(f"{sweep_path}: {len(not_done)} run(s) ended "
              f"{'/'.join(sorted(set(not_done.values())))} and count as never reaching a "
              f"target: {', '.join(not_done)}", file=sys.stderr)
    plan = plan_sweep(loaded, tuple(overrides), validate=False)
    index = read_index(result.index_path).set_index("run_id")
    refused = {r for r, status in not_done.items() if status == RunStatus.INFEASIBLE.value}
    if refused and not allow_infeasible:
        first = sorted(refused)[0]
        raise FleetsimInputError(
            f"{sweep_path}: {len(refused)} run(s) no phone of the fleet can hold, e.g. "
            f"{first}: {index.loc[first, 'error']}; this study does not table such runs: "
            "change the scenario (model, PEFT, batch or population)")
    infeasible = []
    for run in plan:
        if run.run_id not in refused:
            continue
        record = infeasible_record(run) or {}
        commit = (str(record["git_commit"]) + ("+dirty" if record.get("git_dirty") else "")
                  if record.get("git_commit") else "unknown")
        infeasible.append(InfeasibleRun(
            run.run_id, dict(run.params), str(index.loc[run.run_id, "error"]),
            *_resolved(loaded.base_path, run.overrides),
            float(index.loc[run.run_id, "host_seconds"]), commit))
    run_dirs = [run.run_dir for run in plan if run.run_id not in refused]
    host = pd.to_numeric(index.loc[[r.run_id for r in plan], "host_seconds"], errors="coerce")
    seeds = sorted({int(r.params["run.seed"]) for r in plan if "run.seed" in r.params})
    return StudyRuns(
        sweep_file=Path(sweep_path),
        out_dir=out_dir,
        run_dirs=run_dirs,
        host_seconds=time.perf_counter() - started if result.executed else 0.0,
        run_host_seconds=float(host.sum()),
        not_done=not_done,
        seeds=seeds,
        infeasible=infeasible,
    )


def _resolved(base: Path, overrides: Sequence[str]) -> tuple[str, dict]:
    """The hash :func:`fleetsim.analysis.pages.scenario_hash` gives the ``scenario.yaml`` a
    run of ``base`` with ``overrides`` writes, and that resolved scenario."""
    import hashlib

    import yaml

    from fleetsim.scenario.loader import load_scenario

    resolved = load_scenario(base, list(overrides)).resolved_yaml()
    return (hashlib.sha256(resolved.encode("utf-8")).hexdigest()[:16],
            yaml.safe_load(resolved))


def study_arguments(description: str) -> argparse.ArgumentParser:
    """The command line every study script shares."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument(
        "--quick", action="store_true",
        help="run sweep_quick.yaml (a small grid, short runs: the CI smoke test)",
    )
    parser.add_argument(
        "--out", type=Path, default=None,
        help="output folder (default: the study's own folder); runs go to OUT/runs/<full|quick>, "
        "figures and tables to OUT/figures[-quick]",
    )
    parser.add_argument("--fresh", action="store_true", help="delete earlier runs first")
    parser.add_argument(
        "--allow-unequal-horizons", action="store_true",
        help="mark each run's end in the figures instead of refusing runs that ended short "
        "of the common simulated-time budget without reaching the target (a first look; "
        "--quick always marks)",
    )
    parser.add_argument(
        "--seeds", type=int, nargs="+", default=None,
        help="run.seed values instead of the sweep file's (e.g. a first look with one seed)",
    )
    parser.add_argument(
        "--backend", choices=("sequential", "ray"), default="sequential",
        help="sweep backend (default: sequential; ray runs --max-parallel runs at once)",
    )
    parser.add_argument("--max-parallel", type=int, default=None, help="ray: runs at once")
    parser.add_argument(
        "--set", action="append", default=[], metavar="KEY=VALUE",
        help="override a scenario key in every run (repeatable), as fleetsim sweep --set",
    )
    return parser


def study_folders(args: argparse.Namespace, here: Path) -> tuple[Path, Path, Path]:
    """(sweep file, sweep folder, figures folder) of a parsed study command line."""
    out = args.out or here
    kind = "quick" if args.quick else "full"
    figures = out / ("figures-quick" if args.quick else "figures")
    return sweep_file(here, args.quick), out / "runs" / kind, figures


def write_table(frame: pd.DataFrame, folder: Path, name: str, note: str = "") -> tuple[Path, Path]:
    """``frame`` as ``name.csv`` and ``name.md`` (Markdown, missing values as —, infinite
    as ∞) in ``folder``."""
    from fleetsim.analysis.tables import markdown_table

    folder.mkdir(parents=True, exist_ok=True)
    csv_path, md_path = folder / f"{name}.csv", folder / f"{name}.md"
    frame.to_csv(csv_path, index=False)
    md_path.write_text((note + "\n\n" if note else "") + markdown_table(frame))
    return csv_path, md_path


def interval_cells(table: pd.DataFrame, metrics: Sequence[str]) -> pd.DataFrame:
    """``table`` with each metric's ``<m>``, ``<m>_low``, ``<m>_high`` columns folded into
    one text column ``"mean [low, high]"`` (3 significant digits; "—" for a missing end)."""

    def fmt(value: object) -> str:
        number = float(value)  # type: ignore[arg-type]
        if math.isnan(number):
            return "—"
        return "∞" if math.isinf(number) else f"{number:.3g}"

    out = table.copy()
    for metric in metrics:
        low, high = f"{metric}_low", f"{metric}_high"
        out[metric] = [
            f"{fmt(m)} [{fmt(lo)}, {fmt(hi)}]" if not math.isnan(float(lo)) else fmt(m)
            for m, lo, hi in zip(out[metric], out[low], out[high])
        ]
        out = out.drop(columns=[low, high])
    return out


def host_note(runs: StudyRuns) -> str:
    """One line: runs, seeds and host time, for a results page."""
    return (
        f"{len(runs.run_dirs)} runs (seeds {', '.join(map(str, runs.seeds))}) from "
        f"`{runs.sweep_file.name}`; host time {runs.run_host_seconds / 60:.1f} min summed over "
        "runs"
    )


# ---------------------------------------------------------------- the study discipline
# Issue 23: rules 1 and 2 checked on every study's runs, rule 5's per-run table written
# beside its figures (see fleetsim.analysis.discipline and fleetsim.analysis.pages).


def check_discipline(
    run_dirs: Sequence[Path], targets: Sequence[float], mark: bool
) -> dict[str, float] | None:
    """Rules 1 and 2 of issue 23 on a study's finished runs.

    Different evaluation grids are always refused; unequal horizons
    (:func:`fleetsim.analysis.discipline.check_horizons`) are refused unless ``mark``
    (a ``--quick`` smoke test, a few steps per arm by design, or
    ``--allow-unequal-horizons`` for a first look), which returns each run's simulated end
    (run id → seconds) for the figures to mark.  Returns None when the horizons are
    equal.  Raises :class:`FleetsimInputError` (one line)."""
    from fleetsim.analysis.discipline import check_eval_grids, check_horizons
    from fleetsim.analysis.load import load_runs

    runset = load_runs(run_dirs)
    check_eval_grids(runset)
    horizon = check_horizons(runset, targets)
    if horizon.ok:
        return None
    if not mark:
        raise FleetsimInputError(horizon.message())
    return dict(zip(horizon.ends["run"], horizon.ends["end_s"]))


def per_run_table(
    run_dirs: Sequence[Path], keys: Sequence[str], targets: Sequence[float] = ()
) -> pd.DataFrame:
    """The per-run table of a study (issue 23, rule 5): one row per run with ``run``,
    ``commit``, ``scenario_hash``, the scenario ``keys`` (e.g. the arm and ``run.seed``),
    ``end_s`` (simulated end), ``stopped_by``, ``steps``, ``final_accuracy`` and, per
    target t, ``tta_<t>_s`` (simulated seconds to the running maximum's first reach;
    ``inf`` when not reached — censored at ``end_s``), plus ``best_val_accuracy`` when the
    runs evaluated a validation split.  ``commit`` is the commit each run's
    ``summary.json`` records (``+dirty`` when tracked files differed), else the tree's
    ``git rev-parse HEAD`` when the table is written."""
    from fleetsim.analysis.load import load_runs
    from fleetsim.analysis.metrics import time_to_accuracy_runs
    from fleetsim.analysis.pages import runs_table

    runset = load_runs(run_dirs)
    summary = runset.summary
    missing = [k for k in keys if k not in summary.columns]
    if missing:
        raise FleetsimInputError(
            f"per-run table: {', '.join(missing)} not scenario keys of the runs"
        )
    rows = summary[["run", *keys]].copy()
    rows["end_s"] = pd.to_numeric(summary["simulated_seconds"], errors="coerce")
    for column in ("stopped_by", "steps", "final_accuracy"):
        rows[column] = summary[column] if column in summary.columns else math.nan
    if targets:
        reached = time_to_accuracy_runs(runset, targets)
        for target in targets:
            part = reached[reached["target"] == target].set_index("run")["seconds"]
            rows[f"tta_{target:g}_s"] = rows["run"].map(part).fillna(math.inf).to_numpy()
    if "val_accuracy" in runset.steps.columns:
        best = runset.steps.groupby("run")["val_accuracy"].max()
        rows["best_val_accuracy"] = rows["run"].map(best).to_numpy()
    return runs_table(rows.reset_index(drop=True), run_dirs)


def load_study_script(path: Path, name: str | None = None) -> ModuleType:
    """Import a study script (``analysis/<study>/run.py``, not a package module) from its
    file, under ``name`` (default: ``study_<folder>``), so its reducers and page renderers
    can be called (by the README's results table, the page tests).  Raises
    :class:`FleetsimInputError` when the file is missing."""
    import importlib.util

    path = Path(path)
    if not path.is_file():
        raise FleetsimInputError(f"{path}: no such study script")
    spec = importlib.util.spec_from_file_location(name or f"study_{path.parent.name}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)  # type: ignore[union-attr]
    return module


def study_entry(main: Callable[[], object]) -> int:
    """Run a study script's ``main`` as a command: bad input (a refused comparison, a
    failed run, an unknown key) is one line on stderr and exit code 2, as ``fleetsim``'s
    own commands; otherwise 0.  Use as ``raise SystemExit(study_entry(main))``."""
    try:
        main()
    except FleetsimInputError as exc:
        print(f"{Path(sys.argv[0]).parent.name}: error: {exc}", file=sys.stderr)
        return 2
    return 0
