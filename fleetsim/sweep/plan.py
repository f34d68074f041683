"""Expand a sweep into runs, name each run from its parameters, and validate every
expanded scenario before anything runs.

A run's scenario error is reported at the sweep file's line that set the offending value
(``sweep.yaml:7: arms.fwdllm.protocol.devices_per_step: run arm=fwdllm__run.seed=0: ...``).
A run directory that already holds a run of a different resolved scenario is never reused:
:func:`check_run_dirs` refuses the sweep before anything runs (one run directory holds one
run; see the README's "Sweeps" section)."""

from __future__ import annotations

import hashlib
import itertools
import json
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from fleetsim.errors import FleetsimInputError
from fleetsim.safe_yaml import load_bounded
from fleetsim.scenario.loader import load_scenario, parse_override
from fleetsim.sweep.config import ARM_PARAM, KeyPath, LoadedSweep

#: Longest run directory name; longer names are cut and given a hash suffix.
MAX_RUN_ID_CHARS = 150
_UNSAFE = re.compile(r"[^A-Za-z0-9._+=-]+")

# Every run of a sweep is written to its own directory without a progress bar of its own
# (the sweep shows one over runs); a failed earlier attempt may have left files behind, which
# the retry replaces.
SWEEP_RUN_OVERRIDES = ("run.progress=false", "output.overwrite=true")


@dataclass(frozen=True)
class PlannedRun:
    """One scenario × seed of a sweep."""

    run_id: str  # directory name, stable for the same parameters
    params: dict[str, Any]  # swept key -> value, in sweep order (seed last)
    overrides: tuple[str, ...]  # --set strings: fixed, then swept, then sweep bookkeeping
    run_dir: Path
    resolved_yaml: str = field(repr=False, default="")  # the scenario the run will write


def format_value(value: Any) -> str:
    """A value as YAML text that ``--set`` parses back to the same value."""
    if isinstance(value, str):
        # A string that YAML would read as something else (a number, true, null, a list) is
        # quoted so it stays a string.
        try:
            plain = value != "" and value.strip() == value and yaml.safe_load(value) == value
        except yaml.YAMLError:
            plain = False
        text = value if plain else json.dumps(value)
    else:
        text = yaml.safe_dump(value, default_flow_style=True, width=math.inf).strip()
        if text.endswith("\n..."):
            text = text[: -len("\n...")]
        elif text.endswith("..."):
            text = text[: -len("...")].strip()
    if yaml.safe_load(text) != value and not (
        isinstance(value, float) and math.isnan(value)
    ):
        raise FleetsimInputError(f"value {value!r} cannot be passed as a scenario override")
    return text


def _label(value: Any) -> str:
    """Short text for a value inside a run directory name."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if value is None:
        return "null"
    if isinstance(value, (int, float, str)):
        return str(value)
    return json.dumps(value, separators=(",", ":"), sort_keys=True)


def run_id_for(params: dict[str, Any]) -> str:
    """``policy.name=capability__run.seed=1``: readable, filesystem-safe, stable."""
    if not params:
        return "base"
    text = "__".join(f"{k}={_label(v)}" for k, v in params.items())
    safe = _UNSAFE.sub("-", text).strip("-.") or "run"
    if len(safe) > MAX_RUN_ID_CHARS:
        safe = safe[: MAX_RUN_ID_CHARS - 9] + "-" + _params_hash(params)
    return safe


def _params_hash(params: dict[str, Any]) -> str:
    canonical = json.dumps(params, sort_keys=True, default=str).encode()
    return hashlib.blake2b(canonical, digest_size=4).hexdigest()


def expand_params(sweep: LoadedSweep) -> list[dict[str, Any]]:
    """Parameter dicts of all runs: arms × grid combinations × zip rows × seeds (an arm is
    the parameter ``arm``, first)."""
    return [params for params, _ in _expand(sweep)]


def _expand(sweep: LoadedSweep) -> list[tuple[dict[str, Any], dict[str, KeyPath]]]:
    """Each run's parameters with, per parameter, the sweep file key that gave its value."""
    cfg = sweep.config
    grid_keys = list(cfg.grid)
    grid_rows = list(itertools.product(*(cfg.grid[k] for k in grid_keys)))
    zip_keys = list(cfg.zip)
    n_zip = len(next(iter(cfg.zip.values()))) if zip_keys else 1
    zip_rows = [tuple(cfg.zip[k][i] for k in zip_keys) for i in range(n_zip)]
    grid_index = list(itertools.product(*(range(len(cfg.grid[k])) for k in grid_keys)))
    seeds: list[int | None] = list(cfg.seeds) if cfg.seeds is not None else [None]
    arms: list[str | None] = list(cfg.arms) if cfg.arms else [None]
    out: list[tuple[dict[str, Any], dict[str, KeyPath]]] = []
    for arm in arms:
        for grid_row, grid_pos in zip(grid_rows, grid_index):
            for z, zip_row in enumerate(zip_rows):
                for s, seed in enumerate(seeds):
                    params: dict[str, Any] = {}
                    where: dict[str, KeyPath] = {}
                    if arm is not None:
                        params[ARM_PARAM] = arm
                        where[ARM_PARAM] = ("arms", arm)
                    for key, value, i in zip(grid_keys, grid_row, grid_pos):
                        params[key] = value
                        where[key] = ("grid", key, str(i))
                    for key, value in zip(zip_keys, zip_row):
                        params[key] = value
                        where[key] = ("zip", key, str(z))
                    if seed is not None:
                        params["run.seed"] = int(seed)
                        where["run.seed"] = ("seeds", str(s))
                    out.append((params, where))
    return out


def plan_sweep(
    sweep: LoadedSweep, extra_overrides: tuple[str, ...] = (), validate: bool = True
) -> list[PlannedRun]:
    """All runs of the sweep, each validated by the scenario loader (unless
    ``validate`` is false): a bad combination fails here, before anything runs."""
    cfg = sweep.config
    # (override text, the sweep file key it came from; None for the command line's --set)
    fixed: list[tuple[str, KeyPath | None]] = [
        (f"{k}={format_value(v)}", ("set", k)) for k, v in cfg.fixed.items()
    ]
    expanded = _expand(sweep)
    all_params = [params for params, _ in expanded]
    swept = set(all_params[0]) if all_params else set()
    for text in extra_overrides:
        key = ".".join(parse_override(text)[0])
        if key in swept:
            raise FleetsimInputError(
                f"--set {text}: {key} is swept by {sweep.path}; change its values there"
            )
        arm = next((a for a, settings in cfg.arms.items() if key in (settings or {})), None)
        if arm is not None:
            raise FleetsimInputError(
                f"--set {text}: {key} is set by arm {arm} in {sweep.path} "
                f"({sweep.where(('arms', arm, key))}); change it there"
            )
        fixed.append((text, None))
    ids = [run_id_for(p) for p in all_params]
    # Two parameter sets can sanitise to the same name ("a/b" and "a-b"): keep the names
    # distinct (and stable) with the parameters' hash.
    counts: dict[str, int] = {}
    for run_id in ids:
        counts[run_id] = counts.get(run_id, 0) + 1
    ids = [
        f"{rid[: MAX_RUN_ID_CHARS - 9]}-{_params_hash(p)}" if counts[rid] > 1 else rid
        for rid, p in zip(ids, all_params)
    ]
    if len(set(ids)) != len(ids):
        dup = next(i for i in ids if ids.count(i) > 1)
        raise FleetsimInputError(
            f"{sweep.path}: grid/zip: two runs have the same parameters ({dup}); "
            "remove the repeated values"
        )
    runs: list[PlannedRun] = []
    errors: list[str] = []
    for run_id, (params, where) in zip(ids, expanded):
        sources = list(fixed)
        arm = params.get(ARM_PARAM)
        if arm is not None:
            sources += [(f"{k}={format_value(v)}", ("arms", arm, k))
                        for k, v in (cfg.arms[arm] or {}).items()]
        sources += [(f"{k}={format_value(v)}", where[k])
                    for k, v in params.items() if k != ARM_PARAM]
        overrides = tuple([text for text, _ in sources] + list(SWEEP_RUN_OVERRIDES))
        resolved = ""
        if validate:
            try:
                resolved = load_scenario(sweep.base_path, list(overrides)).resolved_yaml()
            except FleetsimInputError as exc:
                errors.append(_locate(sweep, run_id, str(exc).splitlines()[0], sources))
                continue
        runs.append(
            PlannedRun(
                run_id=run_id,
                params=params,
                overrides=overrides,
                run_dir=sweep.out_dir / run_id,
                resolved_yaml=resolved,
            )
        )
    if errors:
        more = f" (and {len(errors) - 1} more bad runs)" if len(errors) > 1 else ""
        raise FleetsimInputError(f"{errors[0]}{more}")
    return runs


_SCENARIO_KEY = re.compile(r"[A-Za-z_][A-Za-z0-9_]*(?:\.[A-Za-z0-9_]+)*")


def _error_key(message: str) -> tuple[str, str] | None:
    """The scenario key a loader error names and the rest of the message:
    ``--set KEY: msg`` or ``FILE[:LINE]: KEY: msg``."""
    if message.startswith("--set "):
        key, sep, rest = message[len("--set "):].partition(": ")
        return (key, rest) if sep and _SCENARIO_KEY.fullmatch(key) else None
    parts = message.split(": ")
    for i in range(1, len(parts) - 1):
        if _SCENARIO_KEY.fullmatch(parts[i]) and "." in parts[i]:
            return parts[i], ": ".join(parts[i + 1:])
    return None


def _locate(
    sweep: LoadedSweep, run_id: str, message: str, sources: list[tuple[str, KeyPath | None]]
) -> str:
    """A run's scenario error at the sweep file line that set the key it names (the last
    override of that key or of a section holding it), else at the sweep file."""
    def at(loc: KeyPath, text: str) -> str:
        shown = loc[:-1] if loc[0] in ("grid", "zip", "seeds") else loc
        return f"{sweep.where(loc)}: {'.'.join(shown)}: run {run_id}: {text}"

    found = _error_key(message)
    if found is not None:
        key, rest = found
        path = tuple(key.split("."))
        for text, loc in reversed(sources):
            over = parse_override(text)[0]
            if path[: len(over)] != over:
                continue
            if loc is None:  # the command line's --set: the loader's own words say so
                return f"{sweep.path}: run {run_id}: {message}"
            return at(loc, f"{key}: {rest}" if path != over else rest)
    # A check across keys ("protocol.devices_per_step: must be at most fleet.size, 8
    # devices (got 50)"): blame the last override of a key it names (that line, not the
    # base scenario's line of the first key).
    rest = message.rpartition("(top level): ")[2]
    if found is not None:
        rest = f"{found[0]}: {found[1]}"
    named = {tuple(k.split(".")) for k in _SCENARIO_KEY.findall(rest) if "." in k}
    for text, loc in reversed(sources):
        over = parse_override(text)[0]
        if loc is not None and any(k[: len(over)] == over for k in named):
            return at(loc, rest)
    return f"{sweep.path}: run {run_id}: {message}"


def _flat(data: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(data, dict) and data:
        out: dict[str, Any] = {}
        for k, v in data.items():
            out.update(_flat(v, f"{prefix}{k}."))
        return out
    return {prefix[:-1]: data}


def scenario_difference(written: Any, planned: Any) -> str:
    """The first key (in sorted order) where two resolved scenarios differ, as
    ``key: A there, B here``; "" when they are equal."""
    a, b = _flat(written), _flat(planned)
    missing = object()
    for key in sorted(set(a) | set(b)):
        x, y = a.get(key, missing), b.get(key, missing)
        if x != y:
            def show(v: Any) -> str:
                return "(absent)" if v is missing else json.dumps(v, default=str)
            return f"{key or '(top level)'}: {show(x)} there, {show(y)} in this sweep"
    return ""


def check_run_dirs(sweep: LoadedSweep, runs: list[PlannedRun]) -> None:
    """Refuse (FleetsimInputError, before anything runs or is written) when a planned run's
    directory already holds a run of a different resolved scenario: the sweep would replace
    it or mix its files with another run's.  This happens when a sweep's base scenario,
    ``set``, an arm or ``--set`` changed, or another sweep used the same folder; the message
    names the first differing key.  Sweep into another folder (``--out``), or delete the
    run directory to redo it.  A directory with no ``scenario.yaml`` (a run that failed
    before writing its outputs) is reused by its retry."""
    for run in runs:
        if not run.resolved_yaml:
            continue
        path = run.run_dir / "scenario.yaml"
        if not path.is_file():
            continue
        try:
            written = load_bounded(path.read_text(), path)
        except (OSError, UnicodeDecodeError, yaml.YAMLError, FleetsimInputError) as exc:
            diff = f"its scenario.yaml cannot be read ({type(exc).__name__})"
        else:
            diff = scenario_difference(written, yaml.safe_load(run.resolved_yaml))
        if diff:
            raise FleetsimInputError(
                f"{sweep.where(('out',))}: out: {run.run_dir} holds a run of a different "
                f"scenario ({diff}); nothing was run: sweep into another folder (--out) or "
                "delete that run directory to redo it"
            )
