"""Figure files: the formats fleetsim writes (PNG, PDF, SVG), their names and saving.

Used by the run figures (:mod:`fleetsim.analysis.figures`, ``report``/``compare
--format``) and ``traces inspect --figure-format``.  PNG through matplotlib's Agg
backend, PDF and SVG through its vector backends (text stays text).  No creation date,
producer or software version is embedded, so the same inputs give the same bytes.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from matplotlib import rc_context
from matplotlib.figure import Figure

from fleetsim.errors import FleetsimInputError

#: Figure file formats ``report``/``compare --format`` and ``traces inspect --figure-format``
#: accept (matplotlib's Agg, PDF and SVG backends).
FIGURE_FORMATS = ("png", "pdf", "svg")

# No creation date or software version in the files: the same runs give the same bytes.
_METADATA = {"png": {"Software": None}, "pdf": {"CreationDate": None, "Producer": None},
             "svg": {"Date": None, "Creator": None}}


def parse_formats(text: str | Sequence[str] | None, flag: str = "--format") -> tuple[str, ...]:
    """``"png,pdf"`` (or a list) → ``("png", "pdf")``, duplicates dropped, order kept; None or
    empty → ``("png",)``.  Raises :class:`FleetsimInputError` naming ``flag`` and the allowed
    formats for an unknown one."""
    if text is None:
        return ("png",)
    items = text.split(",") if isinstance(text, str) else list(text)
    formats = [f.strip().lower().lstrip(".") for f in items if f.strip()]
    for fmt in formats:
        if fmt not in FIGURE_FORMATS:
            raise FleetsimInputError(
                f"{flag} {fmt!r}: unknown figure format (allowed: {', '.join(FIGURE_FORMATS)}, "
                "comma-separated)"
            )
    return tuple(dict.fromkeys(formats)) or ("png",)


def figure_paths(path: Path | str, formats: Sequence[str] = ("png",)) -> list[Path]:
    """The files :func:`save_figure` writes for ``path``: its name with each format's suffix."""
    path = Path(path)
    return [path.with_suffix(f".{fmt}") for fmt in parse_formats(formats)]


def save_figure(
    figure: Figure, path: Path | str | None, dpi: int = 110, formats: Sequence[str] = ("png",)
) -> Figure:
    """Write ``figure`` to ``path`` (when given; parent folders are created) once per format
    of ``formats`` (:data:`FIGURE_FORMATS`), the suffix of ``path`` replaced by the
    format's: ``curves.png`` with ``("png", "pdf")`` writes ``curves.png`` and
    ``curves.pdf``.  PDF and SVG are vector files (text stays text); no date is embedded."""
    if path is not None:
        for target in figure_paths(path, formats):
            target.parent.mkdir(parents=True, exist_ok=True)
            fmt = target.suffix[1:]
            # a fixed salt: SVG element ids are hashes, random (uuid) without one
            with rc_context({"svg.hashsalt": "fleetsim"}):
                figure.savefig(target, dpi=dpi, bbox_inches="tight", format=fmt,
                               metadata=_METADATA[fmt])
    return figure
