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


def _sim_time(seconds: float) -> str:
    """Simulated time in the unit that reads (a 40 s run printed "0.011 h")."""
    if seconds < 180:
        return f"{seconds:.1f} s"
    if seconds < 3 * 3600:
        return f"{seconds / 60:.1f} min"
    return f"{seconds / 3600:.3f} h"


def _cmd_run(args: argparse.Namespace) -> int:
    from fleetsim.runner import resume_run, run_loaded, stop_on_signals
    from fleetsim.scenario.loader import load_scenario, locate_error

    progress = False if args.no_progress else None
    if args.resume:
        if args.scenario or args.set or args.replace:
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
                                 stop_requested=requested, replace=args.replace)
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
        f"final accuracy: {acc_text} | simulated: {_sim_time(summary['simulated_seconds'])} | "
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
    if args.print_resolved:  # the scenario every default filled in, as run would use it
        print(loaded.resolved_yaml(), end="")
        return 0
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
        catalogue = Path(args.catalogue) if args.catalogue else None
        print(validate_trace_file(path, args.format, args.timezone, catalogue))
        return 0
    out_dir = Path(args.out) if args.out else Path(".")
    overlay = Path(args.overlay) if args.overlay else None
    table, png = inspect_trace_file(path, out_dir, args.format, args.timezone, overlay,
                                    formats=args.figure_format)
    print(table.to_string(index=False))
    print(f"figure: {png}" if png is not None else "figure: none (no latency, availability or "
          "bandwidth data in this file)")
    return 0


def _cmd_traces_catalogue(args: argparse.Namespace) -> int:
    from fleetsim.traces.catalogue_row import append_row, catalogue_row, parse_latency

    row = catalogue_row(args.phone, args.ram_gb, [parse_latency(t) for t in args.from_latency],
                        args.batch, args.seq_len, args.model, args.flops_per_token, Path("."))
    print(row.to_csv(index=False), end="")
    if args.out:
        append_row(Path(args.out), row)
        print(f"written: {args.out}")
    return 0


def _cmd_traces_sample(args: argparse.Namespace) -> int:
    from fleetsim.scenario.loader import load_scenario
    from fleetsim.traces.sample import check_sample_size, sample_availability

    check_sample_size(args.devices, args.hours)  # before the scenario is read
    loaded = load_scenario(args.scenario, args.set)
    sc = loaded.scenario
    out, df, label = sample_availability(sc.traces, sc.run.seed, loaded.base_dir, args.devices,
                                         args.hours, Path(args.out))
    print(f"{out}: {len(df)} windows of {args.devices} devices over {args.hours:g} h "
          f"(t = 0 is local midnight); availability: {label}")
    return 0


def _cmd_report(args: argparse.Namespace) -> int:
    from fleetsim.analysis.report import write_report

    html = write_report(Path(args.run_dir), Path(args.out) if args.out else None,
                        formats=args.format, log_time=args.log_time)
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
        unequal_horizons=args.unequal_horizons, formats=args.format, log_time=args.log_time,
    )
    from fleetsim.analysis.narrow import comparison_json, narrow_comparison, read_comparison

    table = read_comparison(paths["csv"])
    if args.json:
        print(comparison_json(table, args.by, paths))
        return 0
    print(narrow_comparison(table, args.by))
    print("files: " + ", ".join(str(p) for p in paths.values()))
    return 0


def _figure_arguments(parser: argparse.ArgumentParser, note: str) -> None:
    """``--format`` and ``--log-time`` of ``report`` and ``compare``."""
    parser.add_argument("--format", default="png", metavar="FORMATS",
                        help="figure files to write, comma-separated: png, pdf, svg (e.g. "
                        f"png,pdf; {note})")
    parser.add_argument("--log-time", action="store_true",
                        help="convergence curves on a symmetric-log time axis (linear below "
                        "the first evaluation, so t = 0 stays on it)")


def _cmd_reference(args: argparse.Namespace) -> int:
    from fleetsim.scenario.reference import scenario_reference

    print(scenario_reference())
    return 0


def version_text() -> str:
    """``fleetsim 0.1.0 (git 77656f7a…, modified)``: the installed package's version
    (package metadata, else ``fleetsim.__version__``) and, when fleetsim runs from a git
    checkout, its commit and whether tracked files differ from it
    (:func:`fleetsim.record.provenance.code_provenance`, as summary.json records it)."""
    from importlib import metadata

    from fleetsim.record.provenance import code_provenance

    prov = code_provenance()
    try:
        version = metadata.version("fleetsim")
    except metadata.PackageNotFoundError:
        version = str(prov["fleetsim_version"])
    if prov["git_commit"] is None:
        return f"fleetsim {version}"
    dirty = ", modified" if prov["git_dirty"] else ""
    return f"fleetsim {version} (git {prov['git_commit']}{dirty})"


class _VersionAction(argparse.Action):
    """``--version``: print :func:`version_text` and exit 0 (git is asked only then)."""

    def __init__(self, option_strings: Sequence[str], dest: str = argparse.SUPPRESS,
                 default: str = argparse.SUPPRESS, help: Optional[str] = None) -> None:
        super().__init__(option_strings=option_strings, dest=dest, default=default, nargs=0,
                         help=help)

    def __call__(self, parser, namespace, values, option_string=None) -> None:  # noqa: ANN001
        print(version_text())
        parser.exit()


_SET_HELP = "override a scenario key, e.g. --set protocol.lr=0.02 (repeatable)"


def set_without_equals(argv: Sequence[str]) -> Optional[str]:
    """The one-line hint for ``--set KEY VALUE`` written without ``=`` (argparse would
    take VALUE for the scenario file), or None: ``"--set protocol.lr 0.02: write
    KEY=VALUE (--set protocol.lr=0.02)"``.  A VALUE that names a YAML file is the
    scenario, not the value."""
    argv = list(argv)
    end = argv.index("--") if "--" in argv else len(argv)
    for i in range(end - 1):
        key = argv[i + 1]
        if argv[i] != "--set" or "=" in key or key.startswith("-"):
            continue
        value = argv[i + 2] if i + 2 < end else None
        if value is None or value.startswith("-") or value.endswith((".yaml", ".yml")):
            return f"--set {key}: write KEY=VALUE (--set {key}=VALUE)"
        return f"--set {key} {value}: write KEY=VALUE (--set {key}={value})"
    return None


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="fleetsim",
        description="Simulate phone fleets fine-tuning language models with forward gradients.",
    )
    parser.add_argument("--version", action=_VersionAction,
                        help="print the fleetsim version (and git commit) and exit")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND",
                                help="run, validate, traces, report, compare, sweep or "
                                "scenario-reference (fleetsim COMMAND --help for its options)")

    run = sub.add_parser("run", help="run a scenario and write a run directory")
    run.add_argument("scenario", nargs="?", help="scenario YAML file")
    run.add_argument("--resume", metavar="RUN_DIR",
                     help="continue an interrupted run from its last checkpoint")
    run.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help=_SET_HELP)
    run.add_argument("--out", help="run directory (default: output.dir of the scenario)")
    run.add_argument("--replace", action="store_true",
                     help="let this run replace a run of a different resolved scenario in its "
                     "run directory (every output of that run is removed first); without it "
                     "such a directory is refused")
    run.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    run.set_defaults(func=_cmd_run)

    val = sub.add_parser(
        "validate",
        help="check a scenario without running it: loads its trace, catalogue, population, "
        "power and data files and refuses what run would refuse",
    )
    val.add_argument("scenario", help="scenario YAML file")
    val.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help=_SET_HELP)
    val.add_argument("--print-resolved", action="store_true",
                     help="print the fully resolved scenario (extends merged, --set applied, "
                     "every default filled in) as YAML instead of the one-line check")
    val.set_defaults(func=_cmd_validate)

    tr = sub.add_parser("traces", help="check or summarise a device trace file")
    trs = tr.add_subparsers(dest="traces_command", required=True, metavar="TRACES_COMMAND",
                            help="validate, inspect or sample")
    tv = trs.add_parser("validate", help="check a trace file")
    ti = trs.add_parser("inspect",
                        help="summary table and a figure (PNG, PDF or SVG) of a trace file")
    for p in (tv, ti):
        p.add_argument("path", help="trace, catalogue, population or network file")
        p.add_argument("--format", metavar="NAME",
                       help="skip detection: a registered trace format (intervals, fedscale, "
                       "flash, ...) or catalogue, population, network_distribution, "
                       "network_profiles (default: detected by suffix, else by content)")
        p.add_argument("--timezone", default="UTC", metavar="ZONE",
                       help="IANA zone for timestamps without one (default: UTC)")
    tv.add_argument("--catalogue", metavar="FILE",
                    help="check a population (phone_model,weight) or a FedScale "
                    "client_behave_trace's phone models against this catalogue "
                    "(default: the shipped one)")
    tv.set_defaults(func=_cmd_traces)
    ti.add_argument("--out", help="folder for the figure (default: current folder)")
    ti.add_argument("--figure-format", default="png", metavar="FORMATS",
                    help="figure files to write, comma-separated: png, pdf, svg (default: png; "
                    "--format names the trace's format)")
    ti.add_argument("--overlay", metavar="FILE",
                    help="another availability file (e.g. from `traces sample`): one PNG "
                    "overlaying window-length CDFs and online share by hour of day")
    ti.set_defaults(func=_cmd_traces)
    tc = trs.add_parser(
        "catalogue", help="a catalogue row (seconds per BERT-base forward at batch 8 x seq "
        "128) from a forward latency measured on your own model")
    tc.add_argument("--from-latency", action="append", required=True, metavar="[BACKEND=]S",
                    help="seconds for one forward of --model at --batch x --seq-len on the "
                    "phone; BACKEND cpu (default), gpu or npu; repeatable, cpu required")
    tc.add_argument("--phone", required=True, help="the phone model's name (catalogue key)")
    tc.add_argument("--ram-gb", type=float, required=True, help="the phone's RAM in GB")
    tc.add_argument("--model", help="the measured model: bert-base, distilbert, "
                    "all-minilm-l6-v2, smollm2-135m, or a config.json (or its folder)")
    tc.add_argument("--flops-per-token", type=float,
                    help="instead of --model: its forward FLOPs per token at --seq-len")
    tc.add_argument("--batch", type=int, required=True, help="batch size of the measurement")
    tc.add_argument("--seq-len", type=int, required=True,
                    help="sequence length (tokens) of the measurement")
    tc.add_argument("--out", metavar="FILE", help="catalogue CSV to write, or to append the "
                    "row to when it exists")
    tc.set_defaults(func=_cmd_traces_catalogue)
    ts = trs.add_parser("sample", help="write the windows a scenario's availability gives N "
                        "devices over H hours (CSV device_id,start_s,end_s)")
    ts.add_argument("scenario", help="scenario YAML file whose traces.availability is sampled")
    ts.add_argument("--devices", type=int, required=True, help="number of devices")
    ts.add_argument("--hours", type=float, required=True, help="simulated hours from t = 0 "
                    "(local midnight)")
    ts.add_argument("--out", required=True, help="CSV file to write")
    ts.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help=_SET_HELP)
    ts.set_defaults(func=_cmd_traces_sample)

    rep = sub.add_parser("report", help="PNGs and one self-contained HTML page for a run")
    rep.add_argument("run_dir", help="run directory (holds summary.json and steps.parquet)")
    rep.add_argument("--out", help="output folder (default: RUN_DIR/report)")
    _figure_arguments(rep, "the PNGs the HTML page embeds are always written")
    rep.set_defaults(func=_cmd_report)

    cmp_ = sub.add_parser(
        "compare", help="comparison table and overlaid curves of runs",
        description="Compare runs: prints a narrow table (one row per group and target "
        "accuracy: runs, final accuracy and the median simulated hours to the target with "
        "95 % intervals) and writes comparison.csv/.md and the curves to --out.")
    cmp_.add_argument("run_dirs", nargs="+", metavar="RUN_DIR",
                      help="run directories, or sweep folders (every run in them)")
    cmp_.add_argument("--by", help="scenario or summary key to group runs by, e.g. "
                      "policy.name, or method (each method as its paper names it)")
    cmp_.add_argument("--out", default="comparison", help="output folder (default: comparison)")
    cmp_.add_argument("--targets", help="comma-separated target accuracies, e.g. 0.5,0.7")
    cmp_.add_argument("--json", action="store_true",
                      help="print the comparison as JSON instead (the numbers of "
                      "comparison.csv: one object per group; NaN as null, infinity as \"inf\")")
    cmp_.add_argument(
        "--unequal-horizons", choices=("refuse", "mark"), default="refuse",
        help="runs that ended short of the common simulated-time budget without reaching "
        "every target, or runs evaluated on different grids: refuse (default, exit 2) or mark "
        "(each run's end in every figure, the problem named in comparison.md)",
    )
    _figure_arguments(cmp_, "default: png")
    cmp_.set_defaults(func=_cmd_compare)

    from fleetsim.sweep.cli import add_sweep_parser

    add_sweep_parser(sub)

    ref = sub.add_parser("scenario-reference", help="print the scenario reference (Markdown)")
    ref.set_defaults(func=_cmd_reference)
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = build_parser()
    hint = set_without_equals(sys.argv[1:] if argv is None else argv)
    if hint is not None:  # before argparse, which would read VALUE as the scenario file
        print(f"fleetsim: error: {hint}", file=sys.stderr)
        return EXIT_BAD_INPUT
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
