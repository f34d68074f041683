"""The ``fleetsim`` command line.

Every bad input ends as one line on stderr and exit code 2, never a traceback.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Optional

from fleetsim.errors import FleetsimInputError, RunStopped

EXIT_BAD_INPUT = 2
EXIT_RUN_STOPPED = 3


def _cmd_run(args: argparse.Namespace) -> int:
    from fleetsim.runner import resume_run, run_loaded, stop_on_signals
    from fleetsim.scenario.loader import load_scenario, locate_error

    progress = False if args.no_progress else None
    if args.resume:
        if args.scenario or args.set:
            raise FleetsimInputError("--resume RUN_DIR takes no scenario or --set: the run "
                                     "continues with the scenario stored in its checkpoint")
        with stop_on_signals() as requested:
            out = resume_run(Path(args.resume), progress, stop_requested=requested)
    else:
        if not args.scenario:
            raise FleetsimInputError("run: give a scenario file (or --resume RUN_DIR)")
        loaded = load_scenario(args.scenario, args.set)
        try:
            with stop_on_signals() as requested:
                out = run_loaded(loaded, Path(args.out) if args.out else None, progress,
                                 stop_requested=requested)
        except FleetsimInputError as exc:
            raise FleetsimInputError(locate_error(loaded, str(exc))) from None
    import json

    from fleetsim.record.status import exit_code

    summary = json.loads((out / "summary.json").read_text(encoding="utf-8"))
    acc = summary.get("final_accuracy")
    status = str(summary.get("status", "completed"))
    if acc is not None:
        acc_text = f"{acc:.4f}"
    elif status == "diverged":
        acc_text = "none (non-finite model)"
    else:
        acc_text = "n/a (systems-only)" if summary.get("systems_only") else "not evaluated"
    print(
        f"run directory: {out}\n"
        f"final accuracy: {acc_text} | simulated: {summary['simulated_seconds'] / 3600:.3f} h | "
        f"rounds: {summary['rounds']} | steps: {summary['steps']} | "
        f"host: {summary['host_seconds']:.1f} s | status: {status} "
        f"(stopped by {summary.get('stopped_by', '?')})"
    )
    code = exit_code(status)
    if code:
        print(f"fleetsim: {status}: {summary.get('status_detail', '')}; outputs are in {out}",
              file=sys.stderr)
    return code


def _cmd_validate(args: argparse.Namespace) -> int:
    from fleetsim.runner import validate_loaded
    from fleetsim.scenario.loader import load_scenario, locate_error

    loaded = load_scenario(args.scenario, args.set)
    sc = loaded.scenario
    try:
        built = validate_loaded(loaded)
    except FleetsimInputError as exc:
        raise FleetsimInputError(locate_error(loaded, str(exc))) from None
    model = sc.model.name_or_path
    if sc.fleet.cost_model is not None:  # name both: fleet.cost_model is what phones pay for
        model = f"{model} (phones charged for {built.facts.name}, {sc.fleet.cost_model.dtype})"
    print(
        f"{args.scenario}: ok ({sc.fleet.size} devices, protocol {sc.protocol.name}, "
        f"policy {sc.policy.name}, model {model}, data {sc.data.name}; "
        f"availability: {built.availability.label or sc.traces.availability.kind})"
    )
    return 0


def _cmd_traces(args: argparse.Namespace) -> int:
    from fleetsim.traces.inspect import inspect_trace_file, validate_trace_file

    path = Path(args.path)
    if args.traces_command == "validate":
        print(validate_trace_file(path, args.format, args.timezone))
        return 0
    out_dir = Path(args.out) if args.out else Path(".")
    overlay = Path(args.overlay) if args.overlay else None
    table, png = inspect_trace_file(path, out_dir, args.format, args.timezone, overlay)
    print(table.to_string(index=False))
    print(f"figure: {png}")
    return 0


def _cmd_traces_sample(args: argparse.Namespace) -> int:
    from fleetsim.traces.sample import sample_scenario

    out, df, label = sample_scenario(args.scenario, args.set, args.devices, args.hours,
                                     Path(args.out))
    print(f"{out}: {len(df)} windows of {args.devices} devices over {args.hours:g} h "
          f"(t = 0 is local midnight); availability: {label}")
    return 0


def _cmd_report(args: argparse.Namespace) -> int:
    from fleetsim.analysis.report import write_report

    html = write_report(Path(args.run_dir), Path(args.out) if args.out else None)
    print(f"report: {html}")
    return 0


def _cmd_compare(args: argparse.Namespace) -> int:
    from fleetsim.analysis.report import compare_runs

    targets = None
    if args.targets:
        try:
            targets = [float(t) for t in args.targets.split(",")]
        except ValueError:
            raise FleetsimInputError(
                f"--targets {args.targets}: expected comma-separated accuracies in (0, 1], "
                "e.g. 0.5,0.7"
            ) from None
        if not all(0 < t <= 1 for t in targets):
            raise FleetsimInputError(f"--targets {args.targets}: each target must be in (0, 1]")
    paths = compare_runs(
        [Path(p) for p in args.run_dirs], args.by, Path(args.out), targets,
        unequal_horizons=args.unequal_horizons,
    )
    for name, p in paths.items():
        print(f"{name}: {p}")
    return 0


def _cmd_reference(args: argparse.Namespace) -> int:
    from fleetsim.scenario.reference import scenario_reference

    print(scenario_reference())
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="fleetsim",
        description="Simulate phone fleets fine-tuning language models with forward gradients.",
    )
    sub = parser.add_subparsers(dest="command", required=True)

    run = sub.add_parser("run", help="run a scenario and write a run directory")
    run.add_argument("scenario", nargs="?", help="scenario YAML file")
    run.add_argument("--resume", metavar="RUN_DIR",
                     help="continue an interrupted run from its last checkpoint")
    run.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                     help="override a scenario key, e.g. --set protocol.lr=0.02 (repeatable)")
    run.add_argument("--out", help="run directory (default: output.dir of the scenario)")
    run.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    run.set_defaults(func=_cmd_run)

    val = sub.add_parser(
        "validate",
        help="check a scenario without running it: loads its trace, catalogue, population, "
        "power and data files and refuses what run would refuse",
    )
    val.add_argument("scenario")
    val.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    val.set_defaults(func=_cmd_validate)

    tr = sub.add_parser("traces", help="check or summarise a device trace file")
    trs = tr.add_subparsers(dest="traces_command", required=True)
    tv = trs.add_parser("validate", help="check a trace file")
    ti = trs.add_parser("inspect", help="summary table and a PNG of a trace file")
    for p in (tv, ti):
        p.add_argument("path")
        p.add_argument("--format", metavar="NAME",
                       help="skip detection: a registered trace format (intervals, fedscale, "
                       "flash, ...) or catalogue, population, network_distribution, "
                       "network_profiles (default: detected by suffix, else by content)")
        p.add_argument("--timezone", default="UTC", metavar="ZONE",
                       help="IANA zone for timestamps without one (default: UTC)")
    tv.set_defaults(func=_cmd_traces)
    ti.add_argument("--out", help="folder for the PNG (default: current folder)")
    ti.add_argument("--overlay", metavar="FILE",
                    help="another availability file (e.g. from `traces sample`): one PNG "
                    "overlaying window-length CDFs and online share by hour of day")
    ti.set_defaults(func=_cmd_traces)
    ts = trs.add_parser("sample", help="write the windows a scenario's availability gives N "
                        "devices over H hours (CSV device_id,start_s,end_s)")
    ts.add_argument("scenario")
    ts.add_argument("--devices", type=int, required=True, help="number of devices")
    ts.add_argument("--hours", type=float, required=True, help="simulated hours from t = 0 "
                    "(local midnight)")
    ts.add_argument("--out", required=True, help="CSV file to write")
    ts.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    ts.set_defaults(func=_cmd_traces_sample)

    rep = sub.add_parser("report", help="PNGs and one self-contained HTML page for a run")
    rep.add_argument("run_dir")
    rep.add_argument("--out", help="output folder (default: RUN_DIR/report)")
    rep.set_defaults(func=_cmd_report)

    cmp_ = sub.add_parser("compare", help="comparison table and overlaid curves of runs")
    cmp_.add_argument("run_dirs", nargs="+")
    cmp_.add_argument("--by", help="scenario key to group runs by, e.g. policy.name")
    cmp_.add_argument("--out", default="comparison", help="output folder (default: comparison)")
    cmp_.add_argument("--targets", help="comma-separated target accuracies, e.g. 0.5,0.7")
    cmp_.add_argument(
        "--unequal-horizons", choices=("refuse", "mark"), default="refuse",
        help="runs that ended short of the common simulated-time budget without reaching "
        "every target, or runs evaluated on different grids: refuse (default, exit 2) or mark "
        "(each run's end in every figure, the problem named in comparison.md)",
    )
    cmp_.set_defaults(func=_cmd_compare)

    from fleetsim.sweep.cli import add_sweep_parser

    add_sweep_parser(sub)

    ref = sub.add_parser("scenario-reference", help="print the scenario reference (Markdown)")
    ref.set_defaults(func=_cmd_reference)
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except FleetsimInputError as exc:
        print(f"fleetsim: error: {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except RunStopped as exc:
        print(f"fleetsim: stopped: {exc}", file=sys.stderr)
        return EXIT_RUN_STOPPED
    except KeyboardInterrupt:
        print("fleetsim: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
