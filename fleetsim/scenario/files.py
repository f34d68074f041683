"""Reading a scenario file: YAML within the bounds of :mod:`fleetsim.safe_yaml`, the line of
every key (for errors that name it), and ``extends:`` (parents merged under the file, their
relative paths rebased to the file's folder)."""

from __future__ import annotations

import copy
import os
from pathlib import Path
from typing import Any

import yaml

from fleetsim.errors import FleetsimInputError, did_you_mean
from fleetsim.safe_yaml import compose_bounded, read_yaml_text

KeyPath = tuple[str, ...]


def compose_lines(text: str, path: Path) -> tuple[Any, dict[KeyPath, int]]:
    """The scenario mapping and the line of every key, within the bounds of
    :mod:`fleetsim.safe_yaml` (a file that expands beyond them is refused)."""
    try:
        node, data = compose_bounded(text, path)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line = f":{mark.line + 1}" if mark is not None else ""
        raise FleetsimInputError(
            f"{path}{line}: not valid YAML: {exc.problem or exc}"
        ) from None
    except yaml.YAMLError as exc:
        raise FleetsimInputError(f"{path}: not valid YAML: {exc}") from None
    lines: dict[KeyPath, int] = {}

    def walk(n: Any, prefix: KeyPath) -> None:
        if isinstance(n, yaml.MappingNode):
            for key_node, value_node in n.value:
                key = str(key_node.value)
                lines[prefix + (key,)] = key_node.start_mark.line + 1
                walk(value_node, prefix + (key,))
        elif isinstance(n, yaml.SequenceNode):
            for i, item in enumerate(n.value):
                lines[prefix + (str(i),)] = item.start_mark.line + 1
                walk(item, prefix + (str(i),))

    if node is not None:
        walk(node, ())
    return (data if node is not None else {}), lines


def deep_merge(base: dict, over: dict) -> dict:
    out = copy.deepcopy(base)
    for k, v in over.items():
        if isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = deep_merge(out[k], v)
        else:
            out[k] = copy.deepcopy(v)
    return out


def read_with_extends(
    path: Path, stack: tuple[Path, ...] = ()
) -> tuple[dict, dict[KeyPath, tuple[Path, int]]]:
    path = path.resolve() if path.exists() else path
    if path in stack:
        chain = " -> ".join(str(p) for p in stack + (path,))
        raise FleetsimInputError(f"{stack[-1]}: extends: cycle in extends chain: {chain}")
    if not path.is_file():  # the one named on the command line (extends: is checked below)
        raise FleetsimInputError(f"scenario file not found: {path}")
    text = read_yaml_text(path, "scenario")  # UTF-8, at most 1 MiB, a regular file
    data, lines = compose_lines(text, path)
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise FleetsimInputError(
            f"{path}:1: the scenario must be a mapping of sections "
            f"(fleet, traces, model, peft, data, numerics, protocol, policy, run, output)"
        )
    origins = {k: (path, line) for k, line in lines.items()}
    parent = data.pop("extends", None)
    if parent is None:
        return data, origins
    parents = parent if isinstance(parent, list) else [parent]
    merged: dict = {}
    merged_origins: dict[KeyPath, tuple[Path, int]] = {}
    for i, p in enumerate(parents):
        line = lines.get(("extends", str(i)), lines.get(("extends",), 1))
        if not isinstance(p, str) or not p:
            raise FleetsimInputError(
                f"{path}:{line}: extends: must be a file path (string) or a list of them, "
                f"got {p!r}"
            )
        target = path.parent / p
        if not target.is_file():
            raise FleetsimInputError(
                f"{path}:{line}: extends: scenario file not found: {target}"
                f"{did_you_mean(p, _scenario_files_beside(Path(p), target.parent))}"
            )
        pdata, porigins = read_with_extends(target, stack + (path,))
        if target.parent.resolve() != path.parent.resolve():
            _rebase_paths(pdata, target.parent, path.parent)
        merged = deep_merge(merged, pdata)
        merged_origins.update(porigins)
    merged = deep_merge(merged, data)
    merged_origins.update({k: v for k, v in origins.items() if k != ("extends",)})
    return merged, merged_origins


def _rebase_paths(data: dict, source: Path, target: Path, top: bool = True) -> None:
    """Relative paths written in a scenario that another one extends from another folder
    name files beside *that* scenario: rewrite each, in place, relative to ``target``, the
    folder every path of the merged scenario resolves against.  A path is a string value
    naming an existing file or folder relative to ``source`` (names such as a model id or
    ``default`` are left alone); ``output`` (relative to the working directory) and
    ``description`` are not paths of this kind."""
    for key, value in data.items():
        if top and key in ("output", "description"):
            continue
        if isinstance(value, dict):
            _rebase_paths(value, source, target, top=False)
        elif isinstance(value, list):
            data[key] = [_rebased(v, source, target) for v in value]
        else:
            data[key] = _rebased(value, source, target)


def _rebased(value: object, source: Path, target: Path) -> object:
    if not isinstance(value, str) or not value or "\n" in value or len(value) > 4096:
        return value
    given = Path(value).expanduser()
    try:
        if given.is_absolute() or not (source / given).exists():
            return value
    except OSError:
        return value
    return os.path.relpath((source / given).resolve(), target.resolve())


def _scenario_files_beside(given: Path, folder: Path) -> list[str]:
    """The YAML files in ``folder``, each written as ``given`` was (its folder part
    kept): what a misspelt ``extends:`` path is compared with for a did-you-mean."""
    try:
        names = sorted(f.name for f in folder.iterdir()
                       if f.suffix in (".yaml", ".yml") and f.is_file())
    except OSError:  # no such folder, or unreadable
        return []
    return [str(given.parent / name) for name in names]
