"""``fleetsim sweep SWEEP.yaml``: the sub-command, registered by fleetsim/cli.py with
``add_sweep_parser(sub)``."""

from __future__ import annotations

import argparse
from typing import Any

from fleetsim.sweep.index import DEFAULT_RETRY, RETRY_CHOICES

EXIT_RUNS_FAILED = 1


def _cmd_sweep(args: argparse.Namespace) -> int:
    from fleetsim.errors import FleetsimInputError
    from fleetsim.sweep.config import load_sweep
    from fleetsim.sweep.execute import run_sweep
    from fleetsim.sweep.index import RunStatus
    from fleetsim.sweep.plan import check_run_dirs, plan_sweep

    for flag, value in (("--max-parallel", args.max_parallel),
                        ("--torch-threads", args.torch_threads)):
        if value is not None and value < 1:
            raise FleetsimInputError(f"{flag} {value}: must be an integer >= 1")
    if args.run_timeout is not None and not args.run_timeout > 0:
        raise FleetsimInputError(f"--run-timeout {args.run_timeout}: must be a number > 0")
    loaded = load_sweep(args.sweep, out=args.out)
    if args.dry_run:
        runs = plan_sweep(loaded, tuple(args.set))
        check_run_dirs(loaded, runs)
        for run in runs:
            print(run.run_dir)
        print(f"{len(runs)} runs, all valid; sweep folder: {loaded.out_dir}")
        return 0
    result = run_sweep(
        loaded,
        backend=args.backend,
        address=args.address,
        max_parallel=args.max_parallel,
        torch_threads=args.torch_threads,
        run_timeout_s=args.run_timeout,
        overrides=tuple(args.set),
        progress=not args.no_progress,
        retry=args.retry,
    )
    counts = result.counts
    others = "".join(
        f", {n} {status}" for status, n in counts.items()
        if n and status not in (RunStatus.DONE.value, RunStatus.PENDING.value)
    )
    print(
        f"sweep {result.name}: {counts['done']} done{others} ({result.executed} run now, "
        f"{result.skipped} already ended, --retry {result.retry}) in "
        f"{result.host_seconds:.1f} s on {result.backend}\n"
        f"index: {result.index_path}"
    )
    for run_id, error in result.failures:
        print(f"  {run_id} ({result.statuses[run_id]}): {error}")
    for line in result.advice():
        print(line)
    return 0 if result.ok else EXIT_RUNS_FAILED


def add_sweep_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Register ``sweep`` on the ``fleetsim`` sub-command parsers."""
    sweep = subparsers.add_parser(
        "sweep",
        help="run a sweep (grid/zip over scenario keys × seeds) on Ray or sequentially",
        description="Run every scenario × seed of SWEEP.yaml, each in its own run directory "
        "named from its parameters, and keep a sweep index (sweep_index.parquet) of their "
        "status.  Re-running keeps every run's status and retries only what --retry names "
        "(default: runs that failed to start, failed, were killed, timed out or stopped).  "
        "Exit code 1 when a run did not end done, 2 for a bad sweep file or scenario or a "
        "sweep folder holding runs of other settings.",
    )
    sweep.add_argument("sweep", help="sweep YAML file (base, grid, zip, seeds, set, out, ...)")
    sweep.add_argument(
        "--backend", choices=("ray", "sequential"), default="ray",
        help="ray (default): one Ray task per run; sequential: one run after the other in "
        "this process (debugging, baselines)",
    )
    sweep.add_argument(
        "--address",
        help="join a running Ray cluster (e.g. HEAD_IP:6379, or 'auto' on the head node) "
        "instead of starting a local instance",
    )
    sweep.add_argument("--max-parallel", type=int, metavar="N",
                       help="runs at once (default: the sweep file's, else the CPU count)")
    sweep.add_argument("--torch-threads", type=int, metavar="K",
                       help="torch threads per run (default: CPU count // max parallel)")
    sweep.add_argument("--run-timeout", type=float, metavar="SECONDS",
                       help="ray backend: kill a run still going after SECONDS (recorded as "
                       "timed_out, retried by the next invocation's default --retry failed)")
    sweep.add_argument("--out", help="sweep folder (default: the sweep file's out)")
    sweep.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                       help="override a scenario key in every run (repeatable); not a key "
                       "the sweep file sweeps or an arm sets")
    sweep.add_argument(
        "--retry", choices=tuple(RETRY_CHOICES), default=DEFAULT_RETRY,
        help="which runs that already ended to run again: failed (default: runs that failed "
        "to start or failed, were killed, timed out or stopped), diverged (runs whose model "
        "became non-finite: the same settings diverge again), all (every run not done, "
        "no-progress runs included), none (only runs never started); done runs are never "
        "re-run",
    )
    sweep.add_argument("--dry-run", action="store_true",
                       help="validate every run and list their directories; run nothing")
    sweep.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    sweep.set_defaults(func=_cmd_sweep)
    return sweep
