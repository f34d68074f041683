"""Bounded YAML reading for scenario and sweep files: hostile input ends as one line.

PyYAML's safe loader keeps aliases as shared references, so loading a "billion laughs"
file is cheap, but everything that walks the result (the key-line map, merging, JSON
dumps of sweep values, pydantic) visits a shared node once per path: ten levels of ten
aliases are 10^10 visits.  The classic defence (CVE-2019-11253, Kubernetes' YAML parser)
is to bound what a document may *expand to* before anything walks it.  Scenario and
sweep files are a few kB and a few hundred nodes, so the bounds below are far above any
real file and far below what hurts a host:

* :data:`MAX_FILE_BYTES`: the file's size, checked with ``stat`` before reading (a 1 GiB
  one-line scenario took minutes and 4.4 GB to parse);
* :data:`MAX_EXPANDED_NODES`: scalars, sequences and mappings the document holds once
  every alias is expanded (counted without expanding: each node's size is memoised);
* :data:`MAX_ALIASES`: alias references (``*name``) in one file;
* nesting deeper than Python's recursion limit (PyYAML composes recursively).

Every refusal is a :class:`~fleetsim.errors.FleetsimInputError` naming the file and the
line, so the CLI exits 2 with one line.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path
from typing import Any, Optional

import yaml

from fleetsim.errors import FleetsimInputError

#: Largest scenario or sweep file read (bytes): 1 MiB (the largest shipped one is ~4 kB).
MAX_FILE_BYTES = 1 << 20
#: Most YAML nodes one file may expand to, aliases expanded.
MAX_EXPANDED_NODES = 200_000
#: Most alias references (``*name``) in one file.
MAX_ALIASES = 1_000


def read_yaml_text(path: Path, what: str = "scenario") -> str:
    """The text of a scenario or sweep file (UTF-8, whatever the host locale), refused
    when it is not a regular file or larger than :data:`MAX_FILE_BYTES`."""
    path = Path(path)
    try:
        st = os.stat(path)
    except OSError as exc:
        raise FleetsimInputError(f"{path}: cannot read {what}: {exc.strerror or exc}") from None
    if not stat.S_ISREG(st.st_mode):
        raise FleetsimInputError(
            f"{path}: cannot read {what}: not a regular file (a folder, FIFO or device)"
        )
    if st.st_size > MAX_FILE_BYTES:
        raise FleetsimInputError(
            f"{path}: {what} file of {st.st_size:,} bytes refused: at most "
            f"{MAX_FILE_BYTES:,} bytes (1 MiB) are read"
        )
    try:
        with open(path, "rb") as fh:
            data = fh.read(MAX_FILE_BYTES + 1)
        if len(data) > MAX_FILE_BYTES:  # grew since stat
            raise FleetsimInputError(
                f"{path}: {what} file refused: larger than {MAX_FILE_BYTES:,} bytes (1 MiB)"
            )
        return data.decode("utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise FleetsimInputError(f"{path}: cannot read {what}: {exc}") from None


def _check_expansion(root: yaml.Node, path: Path) -> None:
    """Refuse a document whose alias-expanded size passes :data:`MAX_EXPANDED_NODES`.
    Iterative, each distinct node once (a node reached through an alias is the same
    Python object as its anchor)."""
    size: dict[int, int] = {}
    stack: list[tuple[yaml.Node, bool]] = [(root, False)]
    while stack:
        node, children_done = stack.pop()
        key = id(node)
        if key in size:
            continue
        if isinstance(node, yaml.MappingNode):
            children = [n for pair in node.value for n in pair]
        elif isinstance(node, yaml.SequenceNode):
            children = list(node.value)
        else:
            children = []
        if not children_done:
            stack.append((node, True))
            stack.extend((c, False) for c in children if id(c) not in size)
            continue
        total = 1 + sum(size.get(id(c), 0) for c in children)
        size[key] = total
        if total > MAX_EXPANDED_NODES:
            raise FleetsimInputError(
                f"{path}:{node.start_mark.line + 1}: YAML refused: it expands to more than "
                f"{MAX_EXPANDED_NODES:,} nodes once its aliases are expanded (nested aliases, "
                "a 'billion laughs' file); write the values out"
            )


class _CountingLoader(yaml.SafeLoader):
    """SafeLoader that counts alias references while composing."""

    def __init__(self, stream: str, path: Path) -> None:
        super().__init__(stream)
        self.aliases = 0
        self.fleetsim_path = path

    def compose_node(self, parent: Optional[yaml.Node], index: Any) -> Optional[yaml.Node]:
        if self.check_event(yaml.AliasEvent):
            self.aliases += 1
            if self.aliases > MAX_ALIASES:
                mark = self.peek_event().start_mark
                raise FleetsimInputError(
                    f"{self.fleetsim_path}:{mark.line + 1}: YAML refused: more than "
                    f"{MAX_ALIASES:,} aliases (*name); write the values out"
                )
        return super().compose_node(parent, index)


def compose_bounded(text: str, path: Path) -> tuple[Optional[yaml.Node], Any]:
    """The YAML node tree of ``text`` (None for an empty document) and its Python value
    (safe types only), refusing a document beyond the bounds of this module.
    ``yaml.MarkedYAMLError`` / ``yaml.YAMLError`` propagate for invalid YAML."""
    if len(text.encode("utf-8", "surrogatepass")) > MAX_FILE_BYTES:
        raise FleetsimInputError(
            f"{path}: YAML refused: larger than {MAX_FILE_BYTES:,} bytes (1 MiB)"
        )
    loader = _CountingLoader(text, path)
    try:
        node = loader.get_single_node()
        if node is None:
            return None, None
        _check_expansion(node, path)
        return node, loader.construct_document(node)
    except RecursionError:
        raise FleetsimInputError(
            f"{path}: YAML refused: nested too deeply to read"
        ) from None
    finally:
        loader.dispose()


def load_bounded(text: str, path: Path) -> Any:
    """:func:`compose_bounded`'s Python value."""
    return compose_bounded(text, path)[1]


__all__ = [
    "MAX_ALIASES",
    "MAX_EXPANDED_NODES",
    "MAX_FILE_BYTES",
    "compose_bounded",
    "load_bounded",
    "read_yaml_text",
]
