"""The sweep-file reference (Markdown), generated from :class:`SweepConfig`, the run
statuses of the sweep index and the ``--retry`` choices.

The README embeds this text between markers; a test keeps the two in sync
(``python -m fleetsim.sweep.reference README.md`` rewrites it)."""

from __future__ import annotations

from fleetsim.scenario.reference import _default, _type_name
from fleetsim.sweep.config import SweepConfig
from fleetsim.sweep.index import (
    DEFAULT_RETRY,
    OUTCOME_OF_RUN_STATUS,
    RETRY_CHOICES,
    STATUS_MEANING,
)

BEGIN = "<!-- sweep-reference:begin -->"
END = "<!-- sweep-reference:end -->"


def _cell(text: str) -> str:
    return text.replace("\n", " ").replace("|", "\\|")


def sweep_reference() -> str:
    """Three Markdown tables: the sweep file's keys, the index's run statuses, ``--retry``."""
    lines = ["| sweep file key | type | default | meaning |", "|---|---|---|---|"]
    for name, field in SweepConfig.model_fields.items():
        key = field.alias or name
        lines.append(f"| `{key}` | {_type_name(field.annotation)} | {_default(field)} | "
                     f"{_cell(field.description or '')} |")
    lines += ["", "| index `status` | run's own `summary.json` status | meaning |",
              "|---|---|---|"]
    for status, meaning in STATUS_MEANING.items():
        own = ", ".join(f"`{s}`" for s, o in OUTCOME_OF_RUN_STATUS.items() if o is status and s)
        lines.append(f"| `{status.value}` | {own} | {_cell(meaning)} |")
    lines += ["", "| `--retry` | runs again (besides runs never started) |", "|---|---|"]
    for choice, statuses in RETRY_CHOICES.items():
        names = ", ".join(f"`{s.value}`" for s in STATUS_MEANING if s in statuses) or "nothing"
        default = " (default)" if choice == DEFAULT_RETRY else ""
        lines.append(f"| `{choice}`{default} | {names} |")
    return "\n".join(lines)


def render_readme(readme_text: str) -> str:
    """README text with the block between the markers replaced by the reference."""
    from fleetsim.scenario.reference import replace_between

    return replace_between(readme_text, BEGIN, END, sweep_reference())


if __name__ == "__main__":  # python -m fleetsim.sweep.reference README.md
    import sys
    from pathlib import Path

    target = Path(sys.argv[1] if len(sys.argv) > 1 else "README.md")
    target.write_text(render_readme(target.read_text()))
