"""The sweep file (``SWEEP.yaml``): a base scenario, the keys to vary, the seeds.

Example::

    base: ../paper_closed_form.yaml      # relative to this file
    arms:                                # each arm's own settings (crossed with the rest)
      fwdllm: {protocol.name: fwdllm, protocol.devices_per_step: 100}
      fedsgd: {protocol.name: fedsgd, protocol.devices_per_step: 10}
    grid:                                # every combination of these values
      policy.name: [uniform, capability]
    zip:                                 # these lists advance together (equal lengths)
      fleet.size: [50, 100]
      protocol.devices_per_step: [10, 20]
    seeds: [0, 1, 2]
    set:                                 # fixed overrides for every run
      protocol.rounds: 2
    out: runs/sweeps/policies            # relative to the working directory
    max_parallel: 2

Runs = arms × grid combinations × zip rows × seeds, in that nesting order.  A run's
overrides are applied as ``--set`` would be, in this order: ``set``, the command line's
``--set``, the run's arm, its grid and zip values, its seed; so an arm's value replaces
``set``'s for that arm only.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from fleetsim.errors import FleetsimInputError, did_you_mean
from fleetsim.safe_yaml import load_bounded, read_yaml_text
from fleetsim.scenario.loader import RANGE_ERRORS, range_message

KeyPath = tuple[str, ...]


class SweepConfig(BaseModel):
    """A sweep over scenario keys and seeds."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    base: str = Field(
        description="Base scenario file; relative to the sweep file's folder.", min_length=1
    )
    name: Optional[str] = Field(
        None, min_length=1,
        description="Sweep name (default: the sweep file's name without extension).",
    )
    grid: dict[str, list[Any]] = Field(
        default_factory=dict,
        description="Dotted scenario key -> list of values; every combination is run.",
    )
    zip: dict[str, list[Any]] = Field(
        default_factory=dict,
        description="Dotted scenario key -> list of values; the lists (of equal length) advance "
        "together, each position is one combination (crossed with the grid).",
    )
    seeds: Optional[list[int]] = Field(
        None,
        description="run.seed values; each combination runs once per seed (default: the base "
        "scenario's own seed, once).",
    )
    arms: dict[str, Optional[dict[str, Any]]] = Field(
        default_factory=dict,
        description="Arm name -> that arm's own overrides (dotted scenario key -> value), "
        "applied after `set` to its runs only; every arm is crossed with grid, zip and seeds, "
        "and its name is the run's `arm` parameter (first in the run id and an index column). "
        "A key an arm sets cannot be swept by grid or zip. Use it for methods compared at "
        "their own settings, e.g. FwdLLM at 1,000 devices per step and Adapter-BP at 10.",
    )
    fixed: dict[str, Any] = Field(
        default_factory=dict,
        alias="set",
        description="Dotted scenario key -> value applied to every run (like --set).",
    )
    out: Optional[str] = Field(
        None,
        description="Sweep folder (run directories and sweep_index.parquet); relative to the "
        "working directory; default runs/sweeps/<name>.",
    )
    max_parallel: Optional[int] = Field(
        None, ge=1,
        description="Runs in flight at once (default: the machine's CPU count for a local Ray "
        "instance, the cluster's CPUs with --address; 1 with --backend sequential).",
    )
    run_timeout_s: Optional[float] = Field(
        None, gt=0,
        description="Ray backend: a run still going this many seconds after it started on its "
        "worker is killed (the worker process ends) and recorded as timed_out; None = no limit.",
    )
    torch_threads_per_task: Optional[int] = Field(
        None, ge=1,
        description="torch / OpenMP threads inside each run (default: CPU count // "
        "max_parallel, at least 1).",
    )

    @field_validator("grid", "zip", "fixed")
    @classmethod
    def _dotted_keys(cls, value: dict[str, Any]) -> dict[str, Any]:
        for key in value:
            if not isinstance(key, str) or not key or any(not p for p in key.split(".")):
                raise ValueError(
                    f"bad key {key!r}: expected a dotted scenario key such as policy.name"
                )
        return value

    @field_validator("grid", "zip")
    @classmethod
    def _non_empty_lists(cls, value: dict[str, list[Any]]) -> dict[str, list[Any]]:
        for key, values in value.items():
            if len(values) == 0:
                raise ValueError(f"{key}: needs at least one value")
        return value

    @field_validator("seeds")
    @classmethod
    def _seeds(cls, value: Optional[list[int]]) -> Optional[list[int]]:
        if value is None:
            return value
        if len(value) == 0:
            raise ValueError("needs at least one seed (or leave seeds out)")
        if any(s < 0 for s in value):
            raise ValueError(f"seeds must be >= 0, got {value}")
        if len(set(value)) != len(value):
            raise ValueError(f"seeds repeat a value: {value}")
        return value


@dataclass
class LoadedSweep:
    config: SweepConfig
    path: Path  # the sweep file
    base_path: Path  # the base scenario, resolved against the sweep file's folder
    name: str
    out_dir: Path
    lines: dict[KeyPath, int] = field(default_factory=dict)  # sweep file key -> line

    def where(self, loc: KeyPath) -> str:
        """``file:line`` of a key of the sweep file (the nearest enclosing key's line)."""
        return _where(self.path, self.lines, loc)


def _key_lines(text: str) -> dict[KeyPath, int]:
    """Line of every mapping key (1-based), for error messages."""
    lines: dict[KeyPath, int] = {}
    try:
        node = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.YAMLError:
        return lines

    def walk(n: Any, prefix: KeyPath) -> None:
        if isinstance(n, yaml.MappingNode):
            for key_node, value_node in n.value:
                key = prefix + (str(key_node.value),)
                lines[key] = key_node.start_mark.line + 1
                walk(value_node, key)
        elif isinstance(n, yaml.SequenceNode):
            for i, item in enumerate(n.value):
                lines[prefix + (str(i),)] = item.start_mark.line + 1

    if node is not None:
        walk(node, ())
    return lines


def _where(path: Path, lines: dict[KeyPath, int], loc: KeyPath) -> str:
    for n in range(len(loc), 0, -1):
        if loc[:n] in lines:
            return f"{path}:{lines[loc[:n]]}"
    return str(path)


ALLOWED_KEYS = (
    "base, name, arms, grid, zip, seeds, set, out, max_parallel, run_timeout_s, "
    "torch_threads_per_task"
)
#: An arm's name is used as is in run directory names.
ARM_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.+-]*")
#: The run parameter (index column, run id part) that names a run's arm.
ARM_PARAM = "arm"


def load_sweep(path: Path | str, out: Optional[str] = None) -> LoadedSweep:
    """Read and check a sweep file (not its runs: see :func:`fleetsim.sweep.plan.plan_sweep`).

    ``out`` (the CLI's ``--out``) replaces the file's ``out``."""
    path = Path(path)
    if not path.is_file():
        raise FleetsimInputError(f"sweep file not found: {path}")
    # At most 1 MiB and 200,000 nodes once aliases are expanded (fleetsim.safe_yaml).
    text = read_yaml_text(path, "sweep file")
    try:
        data = load_bounded(text, path)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line = f":{mark.line + 1}" if mark is not None else ""
        raise FleetsimInputError(f"{path}{line}: not valid YAML: {exc.problem or exc}") from None
    except yaml.YAMLError as exc:
        raise FleetsimInputError(f"{path}: not valid YAML: {exc}") from None
    if not isinstance(data, dict):
        raise FleetsimInputError(
            f"{path}:1: a sweep file must be a mapping with the keys {ALLOWED_KEYS}"
        )
    lines = _key_lines(text)
    try:
        config = SweepConfig.model_validate(data)
    except ValidationError as exc:
        err = exc.errors()[0]
        loc = tuple(str(p) for p in err["loc"])
        key = ".".join(loc) or "(top level)"
        if err["type"] == "extra_forbidden":
            hint = did_you_mean(loc[-1], ALLOWED_KEYS.split(", ")) if len(loc) == 1 else ""
            msg = f"unknown key{hint}; allowed keys: {ALLOWED_KEYS}"
        elif err["type"] == "missing":
            msg = "required key is missing"
        elif err["type"] in RANGE_ERRORS and len(loc) == 1 and loc[0] in SweepConfig.model_fields:
            # the bound with its unit, as a scenario key's (run_timeout_s: seconds)
            msg = range_message(loc, SweepConfig.model_fields[loc[0]])
            if isinstance(err.get("input"), (int, float)):
                msg += f" (got {err['input']!r})"
        else:
            msg = err["msg"]
            if "input" in err and err["type"] not in ("model_type", "dict_type"):
                msg += f" (got {err['input']!r})"
        more = len(exc.errors()) - 1
        tail = f" (and {more} more problem{'s' if more > 1 else ''})" if more else ""
        raise FleetsimInputError(f"{_where(path, lines, loc)}: {key}: {msg}{tail}") from None

    def fail(loc: KeyPath, msg: str) -> FleetsimInputError:
        return FleetsimInputError(f"{_where(path, lines, loc)}: {'.'.join(loc)}: {msg}")

    both = sorted(set(config.grid) & set(config.zip))
    if both:
        raise fail(("zip", both[0]), "key is swept in both grid and zip; use one of them")
    fixed_and_swept = sorted(set(config.fixed) & (set(config.grid) | set(config.zip)))
    if fixed_and_swept:
        raise fail(("set", fixed_and_swept[0]), "key is both fixed (set) and swept (grid/zip)")
    if config.seeds is not None:
        for section in ("grid", "zip", "set"):
            if "run.seed" in getattr(config, "fixed" if section == "set" else section):
                raise fail((section, "run.seed"), "run.seed is set by seeds; remove one of them")
    for arm, settings in config.arms.items():
        if not isinstance(arm, str) or ARM_NAME.fullmatch(arm) is None:
            raise fail(("arms", str(arm)), "an arm name is letters, digits and _ . + - "
                       "(starting with a letter or digit), e.g. fwdllm or adapter_bp")
        if settings is None:
            config.arms[arm] = settings = {}
        for key in settings:
            loc = ("arms", arm, str(key))
            if not isinstance(key, str) or not key or any(not p for p in key.split(".")):
                raise fail(loc, "expected a dotted scenario key such as protocol.lr")
            for section in ("grid", "zip"):
                if key in getattr(config, section):
                    raise fail(loc, f"key is also swept by {section}; an arm cannot set it "
                               f"(move the values into the arms, or drop the key here)")
            if key == "run.seed" and config.seeds is not None:
                raise fail(loc, "run.seed is set by seeds; remove one of them")
    lengths = {k: len(v) for k, v in config.zip.items()}
    if len(set(lengths.values())) > 1:
        described = ", ".join(f"{k}: {n}" for k, n in lengths.items())
        raise fail(("zip",), f"zip lists must have equal lengths, got {described}")

    base_path = (path.parent / config.base) if not os.path.isabs(config.base) else Path(
        config.base
    )
    if not base_path.is_file():
        raise fail(("base",), f"base scenario file not found: {base_path}")
    name = config.name or path.stem
    out_text = out if out is not None else config.out
    out_dir = Path(out_text) if out_text else Path("runs") / "sweeps" / name
    return LoadedSweep(
        config=config, path=path, base_path=base_path, name=name, out_dir=out_dir, lines=lines
    )
