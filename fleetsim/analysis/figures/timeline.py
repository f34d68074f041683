"""Device timelines: who was offline, available, interrupted, downloading, computing,
uploading, and when."""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib.figure import Figure
from matplotlib.patches import Patch

from fleetsim.analysis.figures.common import _one_run, _time_unit, save_figure, titled
from fleetsim.analysis.load import RunSet
from fleetsim.analysis.metrics import (
    work_spans,
)
from fleetsim.rng import stream

TIMELINE_STATES = ("offline", "available", "interrupted", "download", "compute", "upload")
_STATE_COLOURS = {
    "offline": "#d9d9d9",
    "available": "#c7e9c0",
    "interrupted": "#e41a1c",
    "download": "#377eb8",
    "compute": "#ff7f00",
    "upload": "#984ea3",
}


def _availability_spans(
    device_events: pd.DataFrame, horizon_s: float
) -> list[tuple[str, float, float]]:
    """(state, start, end) spans of ``offline`` / ``available`` for one device.

    Online/offline events mark transitions; before the first one the device is
    taken to be in the opposite state (a first ``online`` means it was offline
    since the start).  A device without transitions was available throughout.
    """
    transitions = device_events[device_events["kind"].isin(("online", "offline"))]
    spans = []
    online = transitions.empty or transitions["kind"].iloc[0] == "offline"
    since = 0.0
    for kind, time in zip(transitions["kind"], transitions["time_s"]):
        now_online = kind == "online"
        if now_online == online:
            continue
        spans.append(("available" if online else "offline", since, float(time)))
        online, since = now_online, float(time)
    spans.append(("available" if online else "offline", since, horizon_s))
    return [s for s in spans if s[2] > s[1]]


def device_spans(
    events: pd.DataFrame,
    horizon_s: float | None = None,
    always_online: bool = False,
    availability: pd.DataFrame | None = None,
) -> pd.DataFrame:
    """Per device with events: ``device_id``, ``state``, ``start_s``, ``end_s``.

    ``download``/``compute``/``upload`` are the contiguous work spans of
    :func:`~fleetsim.analysis.metrics.work_spans`; ``interrupted`` spans are the
    pauses of suspended tasks (``resumed`` events carry the pause length); an
    interruption after which the task never resumed (lost work, device gone) is
    an ``interruption`` row with ``start_s == end_s``.  ``offline``/``available``
    come from ``online``/``offline`` transitions when the run recorded them; a
    run without transitions shows ``available`` throughout only when
    ``always_online`` (else availability is left out: it is unknown).
    ``availability`` (rows of ``device_id``, ``state``, ``start_s``, ``end_s``,
    e.g. from :func:`trace_availability_spans`) replaces the event-derived
    availability spans when given.
    """
    columns = ["device_id", "state", "start_s", "end_s"]
    device_events = events[events["device_id"] >= 0].sort_values(["seq"], kind="stable")
    if horizon_s is None:
        horizon_s = float(events["time_s"].max()) if len(events) else 0.0
    transitions_known = bool(device_events["kind"].isin(("online", "offline")).any())
    rows: list[tuple[int, str, float, float]] = []
    for device, frame in device_events.groupby("device_id", sort=True):
        if availability is None and (transitions_known or always_online):
            for state, start, end in _availability_spans(frame, horizon_s):
                rows.append((int(device), state, start, end))
        resumed = frame[(frame["kind"] == "resumed") & (frame["duration_s"] > 0)]
        for time, pause in zip(resumed["time_s"], resumed["duration_s"]):
            rows.append((int(device), "interrupted", float(time) - float(pause), float(time)))
        interrupted = frame[frame["kind"] == "interrupted"]
        for seq, step, time in zip(interrupted["seq"], interrupted["step"], interrupted["time_s"]):
            later = frame[(frame["seq"] > seq) & (frame["step"] == step)]
            if not (later["kind"] == "resumed").any():
                rows.append((int(device), "interruption", float(time), float(time)))
    spans = work_spans(device_events)
    work = pd.DataFrame(
        {
            "device_id": spans["device_id"].astype(int),
            "state": spans["kind"],
            "start_s": spans["start_s"],
            "end_s": spans["end_s"],
        }
    )
    frames = [pd.DataFrame(rows, columns=columns), work]
    if availability is not None:
        frames.append(availability[columns])
    out = pd.concat(frames, ignore_index=True)
    return out.sort_values(["device_id", "start_s"], kind="stable").reset_index(drop=True)


def trace_availability_spans(
    scenario: dict, run_dir: Path, device_ids: Sequence[int], horizon_s: float
) -> pd.DataFrame | None:
    """``available`` / ``offline`` spans of ``device_ids`` rebuilt from the run's
    availability trace (the same seeded trace the run used: same traces
    section, fleet size, seed and horizon), or None when it cannot be rebuilt
    (e.g. a trace file whose relative path does not resolve from the run
    directory)."""
    from pydantic import ValidationError

    from fleetsim.errors import FleetsimInputError as InputError
    from fleetsim.traces.config import TracesConfig
    from fleetsim.traces.fleet_builder import build_availability

    try:
        config = TracesConfig.model_validate(scenario["traces"])
        size = int(scenario["fleet"]["size"])
        seed = int(scenario["run"]["seed"])
        run_horizon = float(scenario["run"]["max_sim_hours"]) * 3600.0
        trace = build_availability(config, size, seed, run_horizon, Path(run_dir))
    except (InputError, ValidationError, KeyError, TypeError, ValueError, OSError):
        return None
    rows = []
    for device in device_ids:
        ids = np.array([device], dtype=np.int64)
        t = 0.0
        while t < horizon_s:
            start = float(trace.next_start(ids, t)[0])
            if start > t:
                rows.append((int(device), "offline", t, min(start, horizon_s)))
            if not math.isfinite(start) or start >= horizon_s:
                break
            end = float(trace.window_end(ids, start)[0])
            rows.append((int(device), "available", start, min(end, horizon_s)))
            if end <= start:  # a zero-length window: step past it
                end = float(np.nextafter(start, np.inf))
            t = end
    return pd.DataFrame(rows, columns=["device_id", "state", "start_s", "end_s"])


def trace_phone_models(
    scenario: dict, run_dir: Path, device_ids: Sequence[int]
) -> dict[int, str]:
    """Phone model names of ``device_ids`` rebuilt from the run's scenario (the same seeded
    population the run drew: traces section, fleet size, seed), for devices that did no
    work and so have no row in ``devices.parquet`` (refused for memory, never selected).
    Empty when the population cannot be rebuilt (e.g. a trace path that does not resolve
    from the run directory)."""
    from pydantic import ValidationError

    from fleetsim.errors import FleetsimInputError as InputError
    from fleetsim.traces.config import TracesConfig
    from fleetsim.traces.fleet_builder import build_devices

    try:
        config = TracesConfig.model_validate(scenario["traces"])
        size = int(scenario["fleet"]["size"])
        seed = int(scenario["run"]["seed"])
        horizon = float(scenario["run"]["max_sim_hours"]) * 3600.0
        table, _ = build_devices(config, size, seed, horizon, Path(run_dir))
    except (InputError, ValidationError, KeyError, TypeError, ValueError, OSError):
        return {}
    return {
        int(d): table.phone_models[int(table.phone_model_index[int(d)])]
        for d in device_ids
        if 0 <= int(d) < len(table)
    }


def sample_devices(events: pd.DataFrame, sample: int, seed: int = 0) -> list[int]:
    """Up to ``sample`` device ids among those with events, drawn from the
    ``("analysis", "timeline_sample")`` stream of ``seed`` and sorted."""
    candidates = np.sort(events.loc[events["device_id"] >= 0, "device_id"].unique())
    if candidates.size <= sample:
        return [int(d) for d in candidates]
    chosen = stream(seed, "analysis", "timeline_sample").choice(
        candidates, size=sample, replace=False
    )
    return sorted(int(d) for d in chosen)


def timeline_figure(
    runset: RunSet,
    run: str | None = None,
    device_ids: Sequence[int] | None = None,
    sample: int = 12,
    seed: int = 0,
    time_range_s: tuple[float, float] | None = None,
    path: Path | str | None = None,
    formats: Sequence[str] = ("png",),
) -> Figure:
    """Gantt chart of a sample of devices of one run: offline / available /
    interrupted / download / compute / upload spans over simulated time, with
    step commits as vertical lines (rollbacks dashed).  Devices are named with their
    phone model on the y axis ("device 3 (Pixel 7)"); the title names the model(s)."""
    run = _one_run(runset, run)
    events = runset.events[runset.events["run"] == run]
    summary = runset.summary[runset.summary["run"] == run].iloc[0]
    horizon = float(summary["simulated_seconds"])
    if not math.isfinite(horizon) or horizon <= 0:
        horizon = float(events["time_s"].max()) if len(events) else 1.0
    if device_ids is None:
        device_ids = sample_devices(events, sample, seed)
    device_ids = list(device_ids)
    always_online = str(summary.get("traces.availability.kind", "")) == "always_online"
    recorded = bool(events["kind"].isin(("online", "offline")).any())
    rebuilt = None
    if not (always_online or recorded) and run in runset.scenarios:
        rebuilt = trace_availability_spans(
            runset.scenarios[run], runset.run_dirs[run], device_ids, horizon
        )
    availability_known = always_online or recorded or rebuilt is not None
    spans = device_spans(
        events[events["device_id"].isin(device_ids)],
        horizon,
        always_online=always_online or recorded,
        availability=rebuilt,
    )
    unit, scale = _time_unit(horizon)

    figure = Figure(figsize=(11.0, 1.2 + 0.38 * max(len(device_ids), 1)), layout="constrained")
    ax = figure.subplots()
    for row, device in enumerate(device_ids):
        mine = spans[spans["device_id"] == device]
        for state in TIMELINE_STATES:
            part = mine[mine["state"] == state]
            if part.empty:
                continue
            # Background states fill the row; work spans are drawn thinner on top.
            height = 0.8 if state in ("offline", "available") else 0.5
            collection = ax.broken_barh(
                list(zip(part["start_s"] / scale, (part["end_s"] - part["start_s"]) / scale)),
                (row - height / 2, height),
                facecolors=_STATE_COLOURS[state],
                edgecolor="none",
            )
            collection.set_gid(state)
            collection.set_label(f"_{state}")
        lost = mine[mine["state"] == "interruption"]
        if len(lost):
            ax.plot(
                lost["start_s"] / scale,
                np.full(len(lost), row),
                linestyle="none",
                marker="x",
                color=_STATE_COLOURS["interrupted"],
                gid="interruption",
                label="_interruption",
            )
    server = events[events["device_id"] < 0]
    commits = server.loc[server["kind"] == "step_commit", "time_s"].to_numpy(dtype=float)
    if commits.size == 0:  # older recorders: commit times from the steps table
        steps = runset.steps[(runset.steps["run"] == run) & runset.steps["committed"]]
        commits = steps["sim_time_s"].to_numpy(dtype=float)
    rollbacks = server.loc[server["kind"] == "step_rollback", "time_s"].to_numpy(dtype=float)
    top = max(len(device_ids), 1) - 0.5
    if commits.size:
        ax.vlines(
            commits / scale, -0.5, top, colors="0.35", linewidth=0.5, alpha=0.6, gid="step_commit"
        )
    if rollbacks.size:
        ax.vlines(
            rollbacks / scale,
            -0.5,
            top,
            colors="#e41a1c",
            linewidth=0.5,
            linestyles="dashed",
            alpha=0.6,
            gid="step_rollback",
        )
    ax.set_yticks(range(len(device_ids)))
    phones = runset.devices[runset.devices["run"] == run].set_index("device_id")
    phone_of = phones["phone_model"].to_dict() if "phone_model" in phones else {}
    unnamed = [d for d in device_ids if d not in phone_of]
    if unnamed and run in runset.scenarios:
        phone_of.update(trace_phone_models(runset.scenarios[run], runset.run_dirs[run], unnamed))
    ax.set_yticklabels(
        [f"device {d} ({phone_of[d]})" if d in phone_of else f"device {d}" for d in device_ids],
        fontsize=8,
    )
    ax.set_ylim(-0.6, top + 0.1)
    if time_range_s is not None:
        ax.set_xlim(time_range_s[0] / scale, time_range_s[1] / scale)
    else:
        ax.set_xlim(0, horizon / scale)
    ax.set_xlabel(f"simulated time ({unit})")
    shown = TIMELINE_STATES if availability_known else TIMELINE_STATES[2:]
    handles = [Patch(color=_STATE_COLOURS[s], label=s) for s in shown]
    handles.append(Patch(color="0.35", label="step commit"))
    if rollbacks.size:
        handles.append(Patch(color="#e41a1c", label="step rollback", fill=False))
    ax.legend(
        handles=handles,
        loc="upper center",
        bbox_to_anchor=(0.5, -0.12 - 0.3 / max(len(device_ids), 1)),
        ncol=len(handles),
        fontsize=8,
        frameon=False,
    )
    note = "" if availability_known else "; availability not recorded, only pauses shown"
    ax.set_title(f"{len(device_ids)} sampled devices{note}", fontsize=9)
    titled(figure, f"device timelines of {run}", runset.summary[runset.summary["run"] == run])
    return save_figure(figure, path, formats=formats)
