"""The small base every availability format implements (one class per file in
``fleetsim/traces/formats/``), registered through :mod:`fleetsim.traces.registry` and the
``fleetsim.traces`` entry points.

A format is a small class::

    class MyFormat(TraceFormat):
        name = "my_format"            # the value of traces.availability.kind
        suffixes = (".mylog",)        # optional: lets `fleetsim traces validate` detect it

        def load(self, path, n_devices, seed, horizon_s) -> AvailabilityTrace: ...

        def sniff(self, path) -> bool:  # optional: content detection (see below)
            with open(path, "rb") as fh:
                return fh.read(64).startswith(b"MYLOG")

registered in the package's ``pyproject.toml``::

    [project.entry-points."fleetsim.traces"]
    my_format = "my_package.traces:MyFormat"

``load`` returns any :class:`~fleetsim.traces.base.AvailabilityTrace` (for
explicit windows build one with
:func:`fleetsim.traces.formats.common.intervals_to_trace`) and raises
:class:`fleetsim.errors.FleetsimInputError` for bad files.  Built-ins are
registered the same way (entry points listed in ``device_traces/README.md``)
and also directly in :mod:`fleetsim.traces.registry`, so they work from a source checkout.

Detection (:func:`detect_format`, used by ``fleetsim traces validate|inspect`` and by
``traces.availability.kind: auto``): every registered format is asked ``sniff(path)``
(built-ins first, then entry points by name); among those that accept the file, one
whose ``suffixes`` hold the file's suffix wins, else the first.  ``sniff`` must be
cheap: read at most a few KiB of the head, never the whole file.  The default
``sniff`` only compares suffixes, so a file without a suffix (FedScale ships
``client_behave_trace`` so) needs a content ``sniff``.  A format whose windows repeat
should fold them with :func:`fleetsim.traces.formats.common.wrap_windows`, number its
ids with :func:`~fleetsim.traces.formats.common.trace_id_order`, and read zone-less
timestamps in the scenario's ``traces.availability.timezone`` (override
:meth:`TraceFormat.load_with` to receive the scenario's availability section).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from pathlib import Path
from typing import Optional

from fleetsim.traces.base import AvailabilityTrace
from fleetsim.traces.report import WEEK_S, TraceReport, availability_report


class InspectSettings:
    """The ``traces.availability`` settings ``traces validate|inspect`` can give a format
    (``--timezone``); everything else at its default."""

    def __init__(self, timezone: str = "UTC") -> None:
        self.timezone = timezone


class TraceFormat(ABC):
    """One availability trace format."""

    name: str = ""
    suffixes: tuple[str, ...] = ()

    @abstractmethod
    def load(
        self, path: Optional[Path], n_devices: int, seed: int, horizon_s: float
    ) -> AvailabilityTrace: ...

    def sniff(self, path: Path) -> bool:
        """Whether ``path`` looks like this format (default: by suffix).  Must be cheap:
        read at most the first few KiB."""
        return Path(path).suffix.lower() in self.suffixes

    def load_with(
        self, path: Optional[Path], n_devices: int, seed: int, horizon_s: float, config
    ) -> AvailabilityTrace:
        """:meth:`load` with the scenario's ``traces.availability`` section ``config``
        (period_s, timezone, ...); the default ignores it."""
        return self.load(path, n_devices, seed, horizon_s)

    def report(self, path: Path, timezone: str = "UTC") -> TraceReport:
        """What ``fleetsim traces validate|inspect`` says about ``path``: by default the
        trace a run would load for 1,000 devices, summarised over a week (formats override
        it to report their own figures).  Raises FleetsimInputError for a bad file."""
        trace = self.load_with(path, 1000, 0, WEEK_S, InspectSettings(timezone))
        return availability_report(self.name, trace, WEEK_S)


def read_head(path: Path, size: int = 4096) -> bytes:
    try:
        with open(path, "rb") as fh:
            return fh.read(size)
    except OSError:
        return b""
