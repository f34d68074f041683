"""Expand a sweep into runs, name each run from its parameters, and validate every
expanded scenario before anything runs."""

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
from fleetsim.scenario.loader import load_scenario, parse_override
from fleetsim.sweep.config import LoadedSweep

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
    """Parameter dicts of all runs: grid combinations × zip rows × seeds."""
    cfg = sweep.config
    grid_keys = list(cfg.grid)
    grid_rows = list(itertools.product(*(cfg.grid[k] for k in grid_keys)))
    zip_keys = list(cfg.zip)
    n_zip = len(next(iter(cfg.zip.values()))) if zip_keys else 1
    zip_rows = [tuple(cfg.zip[k][i] for k in zip_keys) for i in range(n_zip)]
    seeds: list[int | None] = list(cfg.seeds) if cfg.seeds is not None else [None]
    out: list[dict[str, Any]] = []
    for grid_row in grid_rows:
        for zip_row in zip_rows:
            for seed in seeds:
                params = dict(zip(grid_keys, grid_row))
                params.update(zip(zip_keys, zip_row))
                if seed is not None:
                    params["run.seed"] = int(seed)
                out.append(params)
    return out


def plan_sweep(
    sweep: LoadedSweep, extra_overrides: tuple[str, ...] = (), validate: bool = True
) -> list[PlannedRun]:
    """All runs of the sweep, each validated by the scenario loader (unless
    ``validate`` is false): a bad combination fails here, before anything runs."""
    fixed = [f"{k}={format_value(v)}" for k, v in sweep.config.fixed.items()]
    all_params = expand_params(sweep)
    swept = set(all_params[0]) if all_params else set()
    for text in extra_overrides:
        key = ".".join(parse_override(text)[0])
        if key in swept:
            raise FleetsimInputError(
                f"--set {text}: {key} is swept by {sweep.path}; change its values there"
            )
        fixed.append(text)
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
    for run_id, params in zip(ids, all_params):
        values = [f"{k}={format_value(v)}" for k, v in params.items()]
        overrides = tuple(fixed + values + list(SWEEP_RUN_OVERRIDES))
        resolved = ""
        if validate:
            try:
                resolved = load_scenario(sweep.base_path, list(overrides)).resolved_yaml()
            except FleetsimInputError as exc:
                errors.append(f"run {run_id}: {str(exc).splitlines()[0]}")
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
        raise FleetsimInputError(f"{sweep.path}: {errors[0]}{more}")
    return runs
