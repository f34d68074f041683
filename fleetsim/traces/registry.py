"""The registry of availability formats: built-ins (one file each under
``fleetsim/traces/formats/``) and plug-ins from the ``fleetsim.traces`` entry points, all
reached the same way, ``get_format(kind)``, by runs (``traces.availability.kind``),
``fleetsim traces validate`` and ``fleetsim traces inspect``.  How to write a format:
:mod:`fleetsim.traces.formats.base`.

Detection (:func:`detect_format`, used by ``fleetsim traces validate|inspect`` and by
``traces.availability.kind: auto``): every registered file format is asked ``sniff(path)``
(built-ins first, then entry points by name); among those that accept the file, one whose
``suffixes`` hold the file's suffix wins, else the first.
"""

from __future__ import annotations

from importlib.metadata import entry_points
from pathlib import Path
from typing import Optional

from fleetsim.errors import FleetsimInputError
from fleetsim.traces.formats.always_online import AlwaysOnlineFormat
from fleetsim.traces.formats.base import TraceFormat
from fleetsim.traces.formats.diurnal_model import DiurnalModelFormat
from fleetsim.traces.formats.diurnal_windows import DiurnalWindowsFormat
from fleetsim.traces.formats.empirical import EmpiricalFormat
from fleetsim.traces.formats.fedscale import FedScaleFormat
from fleetsim.traces.formats.flash import FlashFormat
from fleetsim.traces.formats.flash_windows import FlashWindowsFormat
from fleetsim.traces.formats.intervals import IntervalsFormat

ENTRY_POINT_GROUP = "fleetsim.traces"

#: formats that read a file (or a model over a file), in detection order
BUILTIN_FORMATS: dict[str, type[TraceFormat]] = {
    "intervals": IntervalsFormat,
    "fedscale": FedScaleFormat,
    "flash": FlashFormat,
    "flash_windows": FlashWindowsFormat,
    "empirical": EmpiricalFormat,
    "diurnal_windows": DiurnalWindowsFormat,
}
#: models that need no file
MODEL_FORMATS: dict[str, type[TraceFormat]] = {
    "always_online": AlwaysOnlineFormat,
    "diurnal_model": DiurnalModelFormat,
}

__all__ = [
    "BUILTIN_FORMATS",
    "MODEL_FORMATS",
    "TraceFormat",
    "available_formats",
    "detect_format",
    "file_formats",
    "format_for_suffix",
    "get_format",
]


def _entry_point_formats() -> dict[str, object]:
    try:
        eps = entry_points(group=ENTRY_POINT_GROUP)
    except Exception:  # a broken installed distribution must not break built-ins
        return {}
    return {ep.name: ep for ep in eps}


def file_formats() -> list[str]:
    """Registered file formats in detection order: built-ins, then entry points by name."""
    return [*BUILTIN_FORMATS, *sorted(n for n in _entry_point_formats() if n not in
                                      BUILTIN_FORMATS)]


def detect_format(path: Path) -> Optional[str]:
    """The registered format of ``path`` by content (:meth:`TraceFormat.sniff`), or None.

    Among the formats that accept the file, one claiming its suffix wins, else the
    first in :func:`file_formats` order.  A plug-in that fails to import is skipped."""
    path = Path(path)
    accepted = []
    for name in file_formats():
        try:
            fmt = get_format(name)
            ok = bool(fmt.sniff(path))
        except FleetsimInputError:
            continue
        if ok:
            accepted.append((name, fmt))
    if not accepted:
        return None
    suffix = path.suffix.lower()
    for name, fmt in accepted:
        if suffix and suffix in fmt.suffixes:
            return name
    return accepted[0][0]


def format_for_suffix(path: Path) -> Optional[str]:
    """The first registered format (in :func:`file_formats` order) whose ``suffixes``
    hold ``path``'s suffix, or None: the fallback when no ``sniff`` accepts a file, so
    that its loader reports what is wrong with it."""
    suffix = Path(path).suffix.lower()
    if not suffix:
        return None
    for name in file_formats():
        try:
            if suffix in get_format(name).suffixes:
                return name
        except FleetsimInputError:
            continue
    return None


def available_formats() -> list[str]:
    """Names usable as ``traces.availability.kind`` (built-ins + entry points)."""
    names = {"auto", *MODEL_FORMATS, *BUILTIN_FORMATS, *_entry_point_formats()}
    return sorted(names)


def get_format(name: str) -> TraceFormat:
    """An instance of the format called ``name``."""
    if name in BUILTIN_FORMATS:
        return BUILTIN_FORMATS[name]()
    if name in MODEL_FORMATS:
        return MODEL_FORMATS[name]()
    eps = _entry_point_formats()
    if name not in eps:
        raise FleetsimInputError(
            f"traces.availability.kind: {name!r} is not one of {', '.join(available_formats())}"
        )
    try:
        cls = eps[name].load()
    except Exception as exc:
        raise FleetsimInputError(
            f"traces.availability.kind: entry point {name!r} ({eps[name].value}) failed to "
            f"import: {exc}"
        ) from None
    obj = cls() if isinstance(cls, type) else cls
    if not isinstance(obj, TraceFormat):
        raise FleetsimInputError(
            f"traces.availability.kind: entry point {name!r} is not a fleetsim TraceFormat"
        )
    return obj
