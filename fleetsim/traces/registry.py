"""Availability trace formats, built-in and plugged in through entry points.

A format is a small class::

    class MyFormat(TraceFormat):
        name = "my_format"            # the value of traces.availability.kind
        suffixes = (".mylog",)        # optional: lets `fleetsim traces validate` detect it

        def load(self, path, n_devices, seed, horizon_s) -> AvailabilityTrace: ...

registered in the package's ``pyproject.toml``::

    [project.entry-points."fleetsim.traces"]
    my_format = "my_package.traces:MyFormat"

``load`` returns any :class:`~fleetsim.traces.base.AvailabilityTrace` (for
explicit windows build one with
:func:`fleetsim.traces.availability.intervals_to_trace`) and raises
:class:`fleetsim.errors.FleetsimInputError` for bad files.  Built-ins are
registered the same way (entry points listed in ``device_traces/README.md``)
and also directly here, so they work from a source checkout.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from importlib.metadata import entry_points
from pathlib import Path
from typing import Optional

from fleetsim.errors import FleetsimInputError
from fleetsim.traces.base import AvailabilityTrace

ENTRY_POINT_GROUP = "fleetsim.traces"


class TraceFormat(ABC):
    """One availability trace format."""

    name: str = ""
    suffixes: tuple[str, ...] = ()

    @abstractmethod
    def load(
        self, path: Optional[Path], n_devices: int, seed: int, horizon_s: float
    ) -> AvailabilityTrace: ...

    def sniff(self, path: Path) -> bool:
        """Whether ``path`` looks like this format (default: by suffix)."""
        return path.suffix.lower() in self.suffixes


class IntervalsFormat(TraceFormat):
    name = "intervals"
    suffixes = (".csv", ".parquet", ".pq")

    def load(self, path, n_devices, seed, horizon_s):
        from fleetsim.traces.availability import load_intervals

        return load_intervals(Path(path), n_devices)


class FedScaleFormat(TraceFormat):
    name = "fedscale"
    suffixes = (".pkl", ".pickle")

    def load(self, path, n_devices, seed, horizon_s):
        from fleetsim.traces.availability import load_fedscale

        return load_fedscale(Path(path), n_devices, horizon_s)


class FlashFormat(TraceFormat):
    name = "flash"
    suffixes = (".json",)

    def load(self, path, n_devices, seed, horizon_s):
        from fleetsim.traces.availability import load_flash

        return load_flash(Path(path), n_devices, horizon_s)


BUILTIN_FORMATS: dict[str, type[TraceFormat]] = {
    "intervals": IntervalsFormat,
    "fedscale": FedScaleFormat,
    "flash": FlashFormat,
}


def _entry_point_formats() -> dict[str, object]:
    try:
        eps = entry_points(group=ENTRY_POINT_GROUP)
    except Exception:  # a broken installed distribution must not break built-ins
        return {}
    return {ep.name: ep for ep in eps}


def available_formats() -> list[str]:
    """Names usable as ``traces.availability.kind`` (built-ins + entry points)."""
    names = {"always_online", "diurnal_model", *BUILTIN_FORMATS, *_entry_point_formats()}
    return sorted(names)


def get_format(name: str) -> TraceFormat:
    """An instance of the format called ``name``."""
    if name in BUILTIN_FORMATS:
        return BUILTIN_FORMATS[name]()
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
