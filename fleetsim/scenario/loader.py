"""Load a scenario: YAML with ``extends:``, ``--set`` overrides and errors that name
the file, the line, the key path and what is allowed."""

from __future__ import annotations

import copy
import re
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

import yaml
from annotated_types import Ge, Gt, Le, Lt
from pydantic import BaseModel, ValidationError
from pydantic.fields import FieldInfo

from fleetsim.errors import FleetsimInputError, did_you_mean
from fleetsim.safe_yaml import load_bounded
from fleetsim.scenario.files import KeyPath, read_with_extends
from fleetsim.scenario.schema import Scenario

_KEY_PREFIX = re.compile(r"^([a-z_]+(?:\.[a-z_0-9]+)+): (.*)$", re.S)
_NO_INPUT = {"model_type", "dict_type", "extra_forbidden", "missing"}


@dataclass
class LoadedScenario:
    scenario: Scenario
    path: Path  # the file the user named
    base_dir: Path  # relative paths inside the scenario resolve against this
    raw: dict  # the merged mapping before validation
    origins: dict[KeyPath, tuple[Path, int]] = field(default_factory=dict)
    overridden: set[KeyPath] = field(default_factory=set)  # keys given with --set

    def resolved_yaml(self) -> str:
        """The fully resolved scenario (defaults filled in) as YAML."""
        data = self.scenario.model_dump(mode="json")
        return yaml.safe_dump(data, sort_keys=False, default_flow_style=False)


def parse_override(text: str) -> tuple[KeyPath, Any]:
    """``"protocol.lr=0.02"`` → (("protocol", "lr"), 0.02); the value is YAML."""
    if "=" not in text:
        raise FleetsimInputError(
            f"--set {text}: write KEY=VALUE (--set {text or 'protocol.lr'}=VALUE)"
        )
    key, _, value = text.partition("=")
    key = key.strip()
    if not key or any(not part for part in key.split(".")):
        raise FleetsimInputError(f"--set {text}: empty key path")
    try:
        parsed = load_bounded(value, Path(f"--set {key}")) if value.strip() else ""
    except yaml.YAMLError:
        parsed = value
    return tuple(key.split(".")), parsed


def apply_overrides(data: dict, overrides: list[str]) -> tuple[dict, set[KeyPath]]:
    data = copy.deepcopy(data)
    touched: set[KeyPath] = set()
    for text in overrides:
        keys, value = parse_override(text)
        node = data
        for i, k in enumerate(keys[:-1]):
            nxt = node.get(k)
            if nxt is None:
                nxt = node[k] = {}
            if not isinstance(nxt, dict):
                raise FleetsimInputError(
                    f"--set {text}: {'.'.join(keys[: i + 1])} is a value, not a section"
                )
            node = nxt
        node[keys[-1]] = value
        touched.add(keys)
    return data, touched


def _model_at(loc: KeyPath) -> Optional[type[BaseModel]]:
    """The pydantic model that owns the key at ``loc`` (for 'allowed keys' lists)."""
    model: Any = Scenario
    for part in loc[:-1]:
        fields = getattr(model, "model_fields", None)
        if not fields or part not in fields:
            return None
        ann = fields[part].annotation
        model = _unwrap_model(ann)
        if model is None:
            return None
    return model if isinstance(model, type) and issubclass(model, BaseModel) else None


def _unwrap_model(ann: Any) -> Optional[type[BaseModel]]:
    if isinstance(ann, type) and issubclass(ann, BaseModel):
        return ann
    for arg in typing.get_args(ann):
        found = _unwrap_model(arg)
        if found is not None:
            return found
    return None


#: pydantic's error types of a numeric bound (``Field(ge=..., le=...)``)
RANGE_ERRORS = {"greater_than", "greater_than_equal", "less_than", "less_than_equal"}

#: The unit of each bounded scenario key: by the key's name ending (``_s`` seconds, ...),
#: else by the key itself; ``None``: a plain number (a factor, a share, a rank).
_UNIT_BY_SUFFIX = (
    ("_hours", "h"), ("_hour", "h"), ("_days", "days"), ("_minutes", "min"), ("_s", "s"),
    ("_mbps", "Mbit/s"), ("_bytes", "bytes"), ("_seq_len", "tokens"),
)
_UNIT_BY_KEY: dict[KeyPath, str] = {
    ("fleet", "size"): "devices",
    ("data", "batch_size"): "examples",
    ("data", "examples_per_client"): "examples",
    ("data", "max_examples"): "examples",
    ("data", "max_eval_examples"): "examples",
    ("numerics", "eval_max_examples"): "examples",
    ("numerics", "eval_batch_size"): "examples",
    ("numerics", "threads"): "threads",
    ("numerics", "discriminative", "candidates"): "candidates",
    ("numerics", "discriminative", "every"): "steps",
    ("numerics", "discriminative", "chunk_elements"): "elements",
    ("peft", "top_layers"): "layers",
    ("protocol", "rounds"): "rounds",
    ("protocol", "batches_per_round"): "steps",
    ("protocol", "max_steps"): "steps",
    ("protocol", "devices_per_step"): "devices",
    ("protocol", "perturbations_per_device"): "perturbations",
    ("protocol", "jvp_cost_factor"): "inferences",
    ("protocol", "seed_pool"): "seeds",
    ("protocol", "local_epochs"): "epochs",
    ("protocol", "eval_every_steps"): "steps",
    ("protocol", "variance", "max_repeats"): "repeats",
    ("protocol", "commit", "max_staleness"): "steps",
    ("protocol", "commit", "staleness_cutoff"): "steps",
    ("policy", "total_perturbations"): "perturbations",
    ("policy", "max_quota"): "perturbations",
    ("policy", "budget", "initial"): "perturbations",
    ("policy", "budget", "maximum"): "perturbations",
    ("output", "checkpoint_every_steps"): "steps",
    # sweep file keys (fleetsim.sweep.config: top-level, so no scenario key is one)
    ("max_parallel",): "runs",
    ("torch_threads_per_task",): "threads",
}
#: What a bound stands for, where it is a unit of its own: (key, bound) -> words.
_BOUND_NOTES: dict[tuple[KeyPath, float], str] = {
    (("run", "max_sim_hours"), 8784.0): "one year",
    (("run", "start_hour"), 24.0): "one day",
    (("traces", "availability", "night_start_hour"), 24.0): "one day",
}


def _field_at(loc: KeyPath) -> Optional[FieldInfo]:
    """The pydantic field of the scenario key ``loc`` (None when not a plain field)."""
    owner = _model_at(loc)
    return owner.model_fields.get(loc[-1]) if owner is not None and loc else None


def _section_at(loc: KeyPath) -> Optional[type[BaseModel]]:
    """The pydantic model of the scenario section (or sub-section) at ``loc``."""
    info = _field_at(loc)
    return _unwrap_model(info.annotation) if info is not None else None


def unit_of(loc: KeyPath) -> Optional[str]:
    """The unit of the scenario key ``loc`` in range errors ("h", "s", "devices", ...);
    None for a plain number (a share, a factor, a rank)."""
    if tuple(loc) in _UNIT_BY_KEY:
        return _UNIT_BY_KEY[tuple(loc)]
    for suffix, unit in _UNIT_BY_SUFFIX:
        if loc and loc[-1].endswith(suffix):
            return unit
    return None


def _number(value: float) -> str:
    """8784.0 -> '8,784'; 0.5 -> '0.5'."""
    if float(value).is_integer():
        return f"{int(value):,}"
    return f"{value:g}"


def range_message(loc: KeyPath, info: FieldInfo) -> str:
    """``"must be more than 0 h and at most 8,784 h (one year)"``: every bound of the
    bounded scenario key ``loc`` with its unit (:func:`unit_of`), for the one-line error
    of a value out of range."""
    unit = unit_of(loc)
    words = {Gt: "more than", Ge: "at least", Lt: "less than", Le: "at most"}
    parts = []
    for bound in info.metadata:
        kind = type(bound)
        if kind not in words:
            continue
        value = float(getattr(bound, kind.__name__.lower()))  # Gt(gt=0).gt
        text = f"{words[kind]} {_number(value)}"
        if unit is not None:
            plural = unit.endswith("s") and len(unit) > 2 and "/" not in unit  # not Mbit/s
            noun = unit[:-1] if value == 1 and plural else unit
            text += f" {noun}"
        note = _BOUND_NOTES.get((tuple(loc), value))
        if note:
            text += f" ({note})"
        parts.append(text)
    return "must be " + " and ".join(parts)


#: pydantic's error types of a value that is not a number where one is needed
NUMBER_ERRORS = {"float_parsing", "float_type", "int_parsing", "int_type", "int_from_float"}
#: a number written with its unit ("2h", "30 s", "10Mbit/s"): the number, then the unit
_NUMBER_WITH_UNIT = re.compile(r"\s*([-+]?(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][-+]?\d+)?)\s*[^\d\s].*")
_UNIT_WORDS = {"h": "hours", "s": "seconds", "min": "minutes"}


def number_expected(loc: KeyPath, info: FieldInfo, kind: str, value: Any) -> str:
    """``"; expected a number of hours, without its unit (2, not '2h'), more than 0 h and
    at most 8,784 h (one year)"``: what the numeric scenario key ``loc`` takes, for the
    one-line error of a value that is not a number (or not a whole one)."""
    whole = kind.startswith("int")
    unit = unit_of(loc)
    text = f"; expected a {'whole ' if whole else ''}number"
    if unit is not None:
        text += f" of {_UNIT_WORDS.get(unit, unit)}"
    written = _NUMBER_WITH_UNIT.fullmatch(value) if isinstance(value, str) else None
    if written is not None:
        text += f", without its unit ({written.group(1)}, not {value!r})"
    bounds = range_message(loc, info)
    if bounds != "must be ":
        text += f", {bounds[len('must be '):]}"
    return text


def mapping_expected(model: type[BaseModel], value: Any) -> str:
    """``"must be a section (a mapping of keys: method, rank, ...), not 'lora' (did you
    mean {method: lora}?)"``: for a section given a single value; the hint names the key
    whose allowed values include it."""
    hint = ""
    for name, info in model.model_fields.items():
        choices = [a for a in typing.get_args(info.annotation)
                   if typing.get_origin(info.annotation) is typing.Literal]
        if isinstance(value, str) and value in choices:
            hint = f" (did you mean {{{name}: {value}}}?)"
            break
    return (f"must be a section (a mapping of keys: {', '.join(model.model_fields)}), not "
            f"{value!r}{hint}")


def format_validation_error(
    exc: ValidationError,
    path: Path,
    origins: dict[KeyPath, tuple[Path, int]],
    overridden: set[KeyPath],
) -> str:
    msgs = []
    for err in exc.errors():
        loc = tuple(str(p) for p in err["loc"])
        key = ".".join(loc) or "(top level)"
        where = f"{path}"
        # the innermost key given with --set (a list or section set whole names its item)
        given = next((loc[:n] for n in range(len(loc), 0, -1) if loc[:n] in overridden), None)
        if given is not None:
            where = f"--set {'.'.join(given)}"
        else:
            for n in range(len(loc), 0, -1):
                if loc[:n] in origins:
                    f, line = origins[loc[:n]]
                    where = f"{f}:{line}"
                    break
        kind = err["type"]
        if kind == "extra_forbidden":
            owner = _model_at(loc)
            allowed = ", ".join(owner.model_fields) if owner else "see the scenario reference"
            hint = did_you_mean(loc[-1], owner.model_fields) if owner else ""
            msg = f"unknown key{hint}; allowed keys here: {allowed}"
        elif kind == "missing":
            msg = "required key is missing"
        elif kind in ("model_type", "dict_type") and (section := _section_at(loc)) is not None:
            msg = mapping_expected(section, err.get("input"))
        elif kind in RANGE_ERRORS and _field_at(loc) is not None:
            msg = range_message(loc, _field_at(loc))
            value = err.get("input")
            if isinstance(value, (int, float)) and not isinstance(value, bool):
                msg += f" (got {value!r})"
        else:
            msg = err["msg"]
            if msg.startswith("Value error, "):
                msg = msg[len("Value error, "):]
            # Cross-field validators name the exact key at the start of their message.
            named = _KEY_PREFIX.match(msg)
            if named and named.group(1).split(".")[0] in Scenario.model_fields:
                key, msg = named.group(1), named.group(2)
                kp = tuple(key.split("."))
                if kp in overridden:
                    where = f"--set {key}"
                elif kp in origins:
                    where = "{}:{}".format(*origins[kp])
            value = err.get("input")
            if isinstance(value, (str, int, float, bool)) and kind not in _NO_INPUT:
                msg += f" (got {value!r})"
            if kind == "literal_error" and isinstance(value, str):  # a misspelt choice
                msg += did_you_mean(value, re.findall(r"'([^']*)'",
                                                      str(err.get("ctx", {}).get("expected"))))
            if kind in NUMBER_ERRORS and _field_at(loc) is not None:
                msg += number_expected(loc, _field_at(loc), kind, value)
        # "--set KEY" already names the key
        msgs.append(f"{where}: {msg}" if where == f"--set {key}" else f"{where}: {key}: {msg}")
    return msgs[0] if len(msgs) == 1 else msgs[0] + "".join(f"\n  also {m}" for m in msgs[1:])


def locate_error(loaded: LoadedScenario, message: str) -> str:
    """Prefix an error found after validation (a missing GPU, an unreadable model or power
    file) that names a scenario key with where that key was set: ``file:line``, ``--set``
    or the scenario file.  Messages that name no key (trace files name their own) pass."""
    named = _KEY_PREFIX.match(message)
    if not named or named.group(1).split(".")[0] not in Scenario.model_fields:
        return message
    key = tuple(named.group(1).split("."))
    if key in loaded.overridden:  # "--set KEY" names the key
        return f"--set {named.group(1)}: {named.group(2)}"
    for n in range(len(key), 0, -1):
        if key[:n] in loaded.origins:
            origin, line = loaded.origins[key[:n]]
            return f"{origin}:{line}: {message}"
    return f"{loaded.path}: {message}"


def load_scenario(path: Path | str, overrides: Optional[list[str]] = None) -> LoadedScenario:
    """Read, merge ``extends``, apply ``--set`` overrides and validate."""
    path = Path(path)
    data, origins = read_with_extends(path)
    data, touched = apply_overrides(data, list(overrides or []))
    try:
        scenario = Scenario.model_validate(data)
    except ValidationError as exc:
        raise FleetsimInputError(format_validation_error(exc, path, origins, touched)) from None
    loaded = LoadedScenario(
        scenario=scenario, path=path, base_dir=path.resolve().parent, raw=data, origins=origins,
        overridden=set(touched),
    )
    _check_registered_names(loaded, touched)
    return loaded


def validate_raw(data: dict, path: Path, base_dir: Path) -> LoadedScenario:
    """Validate an already merged mapping (a checkpoint's scenario)."""
    try:
        scenario = Scenario.model_validate(data)
    except ValidationError as exc:
        raise FleetsimInputError(format_validation_error(exc, path, {}, set())) from None
    return LoadedScenario(scenario=scenario, path=path, base_dir=base_dir, raw=data)


def _where(loaded: LoadedScenario, key: KeyPath, overridden: set[KeyPath]) -> str:
    if key in overridden:
        return "--set " + ".".join(key)
    if key in loaded.origins:
        f, line = loaded.origins[key]
        return f"{f}:{line}"
    return str(loaded.path)


def _at(loaded: LoadedScenario, key: KeyPath, overridden: set[KeyPath]) -> str:
    """``"file:line: key: "``, or ``"--set key: "`` (which names the key already)."""
    where = _where(loaded, key, overridden)
    return f"{where}: " if where.startswith("--set ") else f"{where}: {'.'.join(key)}: "


def _check_registered_names(loaded: LoadedScenario, overridden: set[KeyPath]) -> None:
    """Protocol, policy and callback names are open sets (entry points), checked after the
    schema, as is the package each of ``output.trackers`` needs."""
    from fleetsim.policies.registry import available_policies
    from fleetsim.protocols.registry import available_protocols

    sc = loaded.scenario
    for key, name, found in (
        (("protocol", "name"), sc.protocol.name, available_protocols()),
        (("policy", "name"), sc.policy.name, available_policies()),
    ):
        if name not in found:
            raise FleetsimInputError(
                f"{_at(loaded, key, overridden)}unknown name {name!r}"
                f"{did_you_mean(name, found)}; allowed: {', '.join(sorted(found))}"
            )
    from fleetsim.callback_registry import scenario_callback_problems

    for key, problem in scenario_callback_problems(sc.output):
        listed = key[:-1]  # the list (output.trackers / output.callbacks), key = its item
        at = key if key in loaded.origins and listed not in overridden else listed
        where = _where(loaded, at, overridden)
        named = "" if where.startswith("--set ") else f" {'.'.join(listed)}:"
        raise FleetsimInputError(f"{where}:{named} {problem}")
