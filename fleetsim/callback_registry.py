"""The callbacks a scenario asks for: experiment trackers (``output.trackers``, built in,
:mod:`fleetsim.trackers`) and user callbacks (``output.callbacks``, by name from the
``fleetsim.callbacks`` entry-point group).

A third-party package registers a callback the way it registers a trace format, policy
or protocol::

    [project.entry-points."fleetsim.callbacks"]
    my_logger = "my_package.logging:MyLogger"

where ``MyLogger`` is a :class:`fleetsim.callbacks.RunCallback` subclass (built with no
arguments; it reads what it needs from the :class:`~fleetsim.callbacks.RunState` its hooks
receive) or a function of no arguments returning one.  ``output.callbacks: [my_logger]``
then adds it to a run, after the built-in callbacks and the trackers.
"""

from __future__ import annotations

import importlib.util
from importlib.metadata import entry_points
from typing import Any, Optional

from fleetsim.callbacks import RunCallback
from fleetsim.errors import FleetsimInputError

ENTRY_POINT_GROUP = "fleetsim.callbacks"

#: tracker name → (module to import, the distribution that provides it)
TRACKER_PACKAGES: dict[str, tuple[str, str]] = {
    "tensorboard": ("tensorboard", "tensorboard"),
    "mlflow": ("mlflow", "mlflow-skinny"),
}
INSTALL_HINT = "pip install -e '.[trackers]' (or pip install 'fleetsim[trackers]')"


def _entry_points() -> dict[str, Any]:
    """Entry points of the ``fleetsim.callbacks`` group by name (loaded lazily on use)."""
    try:
        eps = entry_points(group=ENTRY_POINT_GROUP)
    except Exception:  # a broken installed distribution must not break runs without callbacks
        return {}
    return {ep.name: ep for ep in eps}


def available_callbacks() -> list[str]:
    """Names usable in ``output.callbacks``, sorted."""
    return sorted(_entry_points())


def _allowed() -> str:
    names = available_callbacks()
    if names:
        return ", ".join(names)
    return f"(none: no package registers one in the {ENTRY_POINT_GROUP} entry-point group)"


def unknown_callback_problem(name: str) -> Optional[str]:
    """Why ``name`` cannot be used in ``output.callbacks`` (None when it can)."""
    if name in _entry_points():
        return None
    return f"unknown callback {name!r}; allowed: {_allowed()}"


def tracker_problem(name: str) -> Optional[str]:
    """Why tracker ``name`` cannot run here (its package is not installed), or None."""
    module, distribution = TRACKER_PACKAGES[name]
    try:
        found = importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):
        found = False
    if found:
        return None
    return (f"the {name} tracker needs the {distribution} package, which is not installed; "
            f"install fleetsim's trackers extra: {INSTALL_HINT}")


def make_callback(name: str) -> RunCallback:
    """The callback registered as ``name`` in the ``fleetsim.callbacks`` group.

    Raises :class:`FleetsimInputError` (one line, key ``output.callbacks``) when the name
    is unknown, its module fails to import, or it is not a RunCallback."""
    problem = unknown_callback_problem(name)
    if problem is not None:
        raise FleetsimInputError(f"output.callbacks: {problem}")
    ep = _entry_points()[name]
    try:
        factory = ep.load()
        callback = factory()
    except Exception as exc:  # noqa: BLE001 - a user's plug-in: report it in one line
        raise FleetsimInputError(
            f"output.callbacks: callback {name!r} ({getattr(ep, 'value', ep)}) could not be "
            f"loaded: {type(exc).__name__}: {exc}"
        ) from None
    if not isinstance(callback, RunCallback):
        raise FleetsimInputError(
            f"output.callbacks: {name!r} ({getattr(ep, 'value', ep)}) gave a "
            f"{type(callback).__name__}, not a fleetsim.callbacks.RunCallback; register a "
            "RunCallback subclass or a function of no arguments returning one"
        )
    return callback


def make_tracker(name: str) -> RunCallback:
    """The tracker callback ``name`` (``output.trackers``); FleetsimInputError naming the
    extra to install when its package is missing."""
    problem = tracker_problem(name)
    if problem is not None:
        raise FleetsimInputError(f"output.trackers: {problem}")
    from fleetsim.trackers import MlflowTracker, TensorBoardTracker

    return {"tensorboard": TensorBoardTracker, "mlflow": MlflowTracker}[name]()


def scenario_callbacks(output: Any) -> list[RunCallback]:
    """The callbacks ``output`` (a scenario's ``output`` section) asks for: its trackers,
    then its user callbacks, each in the order listed."""
    return ([make_tracker(name) for name in output.trackers]
            + [make_callback(name) for name in output.callbacks])


def scenario_callback_problems(output: Any) -> list[tuple[tuple[str, ...], str]]:
    """``(key path, problem)`` for each tracker whose package is missing and each unknown
    callback name of ``output`` (checked when a scenario is loaded)."""
    problems = []
    for i, name in enumerate(output.trackers):
        problem = tracker_problem(name)
        if problem is not None:
            problems.append((("output", "trackers", str(i)), problem))
    for i, name in enumerate(output.callbacks):
        problem = unknown_callback_problem(name)
        if problem is not None:
            problems.append((("output", "callbacks", str(i)), problem))
    return problems
