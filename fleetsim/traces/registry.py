"""Availability trace formats, built-in and plugged in through entry points.

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
:func:`fleetsim.traces.availability.intervals_to_trace`) and raises
:class:`fleetsim.errors.FleetsimInputError` for bad files.  Built-ins are
registered the same way (entry points listed in ``device_traces/README.md``)
and also directly here, so they work from a source checkout.

Detection (:func:`detect_format`, used by ``fleetsim traces validate|inspect`` and by
``traces.availability.kind: auto``): every registered format is asked ``sniff(path)``
(built-ins first, then entry points by name); among those that accept the file, one
whose ``suffixes`` hold the file's suffix wins, else the first.  ``sniff`` must be
cheap: read at most a few KiB of the head, never the whole file.  The default
``sniff`` only compares suffixes, so a file without a suffix (FedScale ships
``client_behave_trace`` so) needs a content ``sniff``.  A format whose windows repeat
should fold them with :func:`fleetsim.traces.availability.wrap_windows`, number its
ids with :func:`~fleetsim.traces.availability.trace_id_order`, and read zone-less
timestamps in the scenario's ``traces.availability.timezone`` (override
:meth:`TraceFormat.load_with` to receive the scenario's availability section).
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
        """Whether ``path`` looks like this format (default: by suffix).  Must be cheap:
        read at most the first few KiB."""
        return Path(path).suffix.lower() in self.suffixes

    def load_with(
        self, path: Optional[Path], n_devices: int, seed: int, horizon_s: float, config
    ) -> AvailabilityTrace:
        """:meth:`load` with the scenario's ``traces.availability`` section ``config``
        (period_s, timezone, ...); the default ignores it."""
        return self.load(path, n_devices, seed, horizon_s)


def _head(path: Path, size: int = 4096) -> bytes:
    try:
        with open(path, "rb") as fh:
            return fh.read(size)
    except OSError:
        return b""


class IntervalsFormat(TraceFormat):
    """CSV/TSV/Parquet ``device_id,start_s,end_s`` (seconds)."""

    name = "intervals"
    suffixes = (".csv", ".tsv", ".txt", ".parquet", ".pq")
    columns = ("device_id", "start_s", "end_s")

    def sniff(self, path):
        from fleetsim.traces.tables import TABLE_SUFFIXES, sniff_table

        path = Path(path)
        kind = TABLE_SUFFIXES.get(path.suffix.lower()) or sniff_table(path)
        if kind == "parquet":
            try:
                import pyarrow.parquet as pq

                names = set(pq.read_schema(path).names)
            except Exception:
                return False
        elif kind in ("csv", "tsv"):
            lines = _head(path).decode("utf-8", errors="replace").splitlines()
            if not lines:
                return False
            names = {c.strip() for c in lines[0].split("\t" if kind == "tsv" else ",")}
        else:
            return False
        return set(self.columns) <= names

    def load(self, path, n_devices, seed, horizon_s):
        from fleetsim.traces.availability import load_intervals

        return load_intervals(Path(path), n_devices)

    def load_with(self, path, n_devices, seed, horizon_s, config):
        from fleetsim.traces.availability import load_intervals

        return load_intervals(Path(path), n_devices, getattr(config, "period_s", None))


class FedScaleFormat(TraceFormat):
    """FedScale ``client_behave_trace``: a pickled dict client -> active/inactive/finish_time."""

    name = "fedscale"
    suffixes = (".pkl", ".pickle")

    def sniff(self, path):
        head = _head(Path(path), 64)
        # protocol 2+ opens with PROTO (0x80, version); 0/1 with MARK+DICT or EMPTY_DICT
        return (len(head) > 1 and head[0] == 0x80 and 2 <= head[1] <= 5) or head.startswith(
            (b"(dp", b"}q", b"}")
        )

    def load(self, path, n_devices, seed, horizon_s):
        from fleetsim.traces.availability import load_fedscale

        return load_fedscale(Path(path), n_devices, horizon_s)


class FlashFormat(TraceFormat):
    """FLASH ``state_traces.json``: a JSON object uid -> {"messages": "..."}."""

    name = "flash"
    suffixes = (".json",)

    def sniff(self, path):
        text = _head(Path(path)).decode("utf-8", errors="replace").lstrip("\ufeff \t\r\n")
        return text.startswith("{") and '"messages"' in text

    def load(self, path, n_devices, seed, horizon_s):
        from fleetsim.traces.availability import load_flash

        return load_flash(Path(path), n_devices, horizon_s)

    def load_with(self, path, n_devices, seed, horizon_s, config):
        from fleetsim.traces.availability import load_flash

        return load_flash(
            Path(path), n_devices, horizon_s, getattr(config, "timezone", None) or "UTC"
        )


class FlashWindowsFormat(TraceFormat):
    """Measured windows ``{user_id: [[start_s, end_s], ...]}`` (FLASH "ready" intervals):
    the file's users as they are (fleet device i = user i mod m), quirks cleaned
    (:mod:`fleetsim.traces.flash_windows`)."""

    name = "flash_windows"
    suffixes = (".json",)

    def sniff(self, path):
        from fleetsim.traces.flash_windows import is_windows_file

        return is_windows_file(Path(path))

    def load(self, path, n_devices, seed, horizon_s):
        return self.load_with(path, n_devices, seed, horizon_s, None)

    def load_with(self, path, n_devices, seed, horizon_s, config):
        from fleetsim.traces.empirical import load_measured

        return load_measured(path, n_devices, seed, config, resample=False)


class EmpiricalFormat(FlashWindowsFormat):
    """The empirical model: devices resample the users of a ``flash_windows`` file with
    whole-day shifts (:mod:`fleetsim.traces.empirical`)."""

    name = "empirical"
    suffixes = ()

    def sniff(self, path):
        return False  # a model over flash_windows files, not a file format of its own

    def load_with(self, path, n_devices, seed, horizon_s, config):
        from fleetsim.traces.empirical import load_measured

        return load_measured(path, n_devices, seed, config, resample=True)


class DiurnalWindowsFormat(TraceFormat):
    """The diurnal model recalibrated on measured windows; ``path``: optional fit file
    (:mod:`fleetsim.traces.diurnal_windows`)."""

    name = "diurnal_windows"
    suffixes = ()

    def sniff(self, path):
        return False

    def load(self, path, n_devices, seed, horizon_s):
        return self.load_with(path, n_devices, seed, horizon_s, None)

    def load_with(self, path, n_devices, seed, horizon_s, config):
        from fleetsim.traces.diurnal_windows import load_model

        return load_model(path, n_devices, seed, config)


BUILTIN_FORMATS: dict[str, type[TraceFormat]] = {
    "intervals": IntervalsFormat,
    "fedscale": FedScaleFormat,
    "flash": FlashFormat,
    "flash_windows": FlashWindowsFormat,
    "empirical": EmpiricalFormat,
    "diurnal_windows": DiurnalWindowsFormat,
}


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
    names = {"always_online", "diurnal_model", "auto", *BUILTIN_FORMATS,
             *_entry_point_formats()}
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
