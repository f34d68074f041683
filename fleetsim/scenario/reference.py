"""The scenario reference (Markdown), generated from the pydantic schema.

The README embeds this text between markers; a test keeps the two in sync
(``fleetsim scenario-reference`` prints it)."""

from __future__ import annotations

import typing
from typing import Any

from pydantic import BaseModel
from pydantic_core import PydanticUndefined

from fleetsim.scenario.schema import Scenario

BEGIN = "<!-- scenario-reference:begin -->"
END = "<!-- scenario-reference:end -->"


def _type_name(ann: Any) -> str:
    origin = typing.get_origin(ann)
    if origin is typing.Literal:
        return " \\| ".join(f"`{a}`" for a in typing.get_args(ann))
    if origin is typing.Union:
        args = [a for a in typing.get_args(ann) if a is not type(None)]
        inner = " \\| ".join(_type_name(a) for a in args)
        return f"{inner} (optional)" if len(args) < len(typing.get_args(ann)) else inner
    if origin in (list, tuple):
        args = typing.get_args(ann)
        return f"list of {_type_name(args[0])}" if args else "list"
    if origin is dict:
        k, v = typing.get_args(ann)
        return f"map {_type_name(k)} → {_type_name(v)}"
    if isinstance(ann, type):
        if issubclass(ann, BaseModel):
            return "section"
        return ann.__name__
    return str(ann).replace("typing.", "")


def _default(field: Any) -> str:
    if field.default is PydanticUndefined:
        if field.default_factory is not None:
            value = field.default_factory()
            if isinstance(value, BaseModel):
                return "(section)"
            return f"`{value!r}`"
        return "**required**"
    return f"`{field.default!r}`"


def _rows(model: type[BaseModel], prefix: str) -> list[str]:
    rows = []
    for name, field in model.model_fields.items():
        key = f"{prefix}{name}"
        ann = field.annotation
        nested = ann if isinstance(ann, type) and issubclass(ann, BaseModel) else None
        if nested is None:
            for arg in typing.get_args(ann):
                if isinstance(arg, type) and issubclass(arg, BaseModel):
                    nested = arg
        desc = (field.description or "").replace("\n", " ").replace("|", "\\|")
        if nested is not None:
            if not desc and nested.__doc__:
                desc = nested.__doc__.strip().splitlines()[0].replace("|", "\\|")
            rows.append(f"| `{key}` | section | | {desc} |")
            rows.extend(_rows(nested, key + "."))
        else:
            rows.append(f"| `{key}` | {_type_name(ann)} | {_default(field)} | {desc} |")
    return rows


def scenario_reference() -> str:
    lines = ["| key | type | default | meaning |", "|---|---|---|---|"]
    lines += _rows(Scenario, "")
    return "\n".join(lines)


def replace_between(text: str, begin: str, end: str, block: str) -> str:
    """``text`` with what stands between the markers ``begin`` and ``end`` replaced by
    ``block``; ValueError naming a missing marker."""
    head, sep, rest = text.partition(begin)
    if not sep:
        raise ValueError(f"README lacks the marker {begin}")
    _, sep2, tail = rest.partition(end)
    if not sep2:
        raise ValueError(f"README lacks the marker {end}")
    return f"{head}{begin}\n{block}\n{end}{tail}"


def render_readme(readme_text: str) -> str:
    """README text with the block between the markers replaced by the reference."""
    return replace_between(readme_text, BEGIN, END, scenario_reference())


if __name__ == "__main__":  # python -m fleetsim.scenario.reference README.md
    import sys
    from pathlib import Path

    target = Path(sys.argv[1] if len(sys.argv) > 1 else "README.md")
    target.write_text(render_readme(target.read_text()))
