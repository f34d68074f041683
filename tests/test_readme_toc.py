"""The README's table of contents lists every ## and ### heading, linked by GitHub's anchor rule.

Regenerate it with ``python tests/test_readme_toc.py`` after adding or renaming a section."""

from __future__ import annotations

import re
import sys
from pathlib import Path

README = Path(__file__).resolve().parents[1] / "README.md"
BEGIN, END = "<!-- toc:begin -->", "<!-- toc:end -->"


def anchor(title: str) -> str:
    """GitHub's heading anchor: lower case, punctuation dropped (hyphens and underscores
    kept), spaces to hyphens."""
    text = re.sub(r"[^\w\- ]", "", title.strip().lower())
    return text.replace(" ", "-")


def toc(text: str) -> str:
    body = text.split(END, 1)[-1]
    lines, in_code = [], False
    for line in body.splitlines():
        if line.startswith("```"):
            in_code = not in_code
        if in_code:
            continue
        match = re.match(r"^(##|###) (.+)$", line)
        if match:
            indent = "  " if match.group(1) == "###" else ""
            title = match.group(2).strip()
            lines.append(f"{indent}- [{title}](#{anchor(title)})")
    return "\n".join(lines)


def with_toc(text: str) -> str:
    head, rest = text.split(BEGIN, 1)
    _, tail = rest.split(END, 1)
    return f"{head}{BEGIN}\n{toc(text)}\n{END}{tail}"


def test_readme_toc_lists_every_section() -> None:
    text = README.read_text()
    assert BEGIN in text and END in text
    assert with_toc(text) == text, "stale table of contents: python tests/test_readme_toc.py"


def test_anchor_rule() -> None:
    assert anchor("Sweeps, checkpoints and resume") == "sweeps-checkpoints-and-resume"
    assert anchor("Performance at FwdLLM's scale") == "performance-at-fwdllms-scale"


if __name__ == "__main__":  # rewrite the README's table of contents
    path = Path(sys.argv[1]) if len(sys.argv) > 1 else README
    path.write_text(with_toc(path.read_text()))
