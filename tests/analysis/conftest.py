"""Fixtures of small synthetic run directories with exactly the files a recorder writes.

The synthetic run is a hand-checkable synchronous schedule: every step starts
when the previous one commits; each device downloads for ``download_s``,
computes for its own ``compute_s`` and uploads for ``upload_s``; the step
commits when the last upload lands.  An optional variance repeat makes the
devices compute and upload once more before the commit, and an optional
offline window makes one device interrupted in one step.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd
import pytest
import yaml

from fleetsim.record.events import EventLog
from fleetsim.record.schema import DEVICE_COLUMNS, STEP_COLUMNS


@dataclass
class SyntheticRun:
    name: str = "run"
    protocol: str = "fwdllm"
    policy: str = "uniform"
    seed: int = 0
    # (phone_model, backend, compute seconds per attempt)
    devices: Sequence[tuple[str, str, float]] = (
        ("pixel7", "npu", 4.0),
        ("pixel7", "npu", 6.0),
        ("galaxy_a14", "cpu", 10.0),
    )
    download_s: float = 2.0
    upload_s: float = 1.0
    # accuracy evaluated after each committed step (NaN = not evaluated); None = systems-only
    accuracies: Sequence[float] | None = (0.3, 0.5, 0.45, 0.7)
    repeat_steps: Sequence[int] = ()  # steps that have one rolled-back attempt
    units_per_device: int = 2
    extra_params: dict = field(default_factory=dict)
    # device index that is offline for ``offline_s`` after its download in step ``offline_step``
    offline_device: int | None = None
    offline_step: int = 0
    offline_s: float = 5.0
    offline_phase: str = "compute"  # or "download": goes offline halfway through the download
    record_availability: bool = True  # log online/offline transitions
    trailing_idle_s: float = 10.0
    # the initial model's evaluation at t = 0 (summary.json initial_accuracy, as runs
    # write it since issue 24); None = none (runs written before)
    initial_accuracy: float | None = None
    summary_extra: dict = field(default_factory=dict)  # more summary.json keys


def _go_offline(
    log: EventLog,
    spec: SyntheticRun,
    time: float,
    device: int,
    step: int,
    phase: str,
    active_s: float,
) -> None:
    if spec.record_availability:
        log.add(time, device, "offline", step=step)
    log.add(time, device, "interrupted", step=step, duration_s=active_s, detail=phase)
    if spec.record_availability:
        log.add(time + spec.offline_s, device, "online", step=step)
    log.add(time + spec.offline_s, device, "resumed", step=step, duration_s=spec.offline_s)


def write_run(root: Path, spec: SyntheticRun) -> Path:
    run_dir = root / spec.name
    run_dir.mkdir(parents=True)
    log = EventLog()
    systems_only = spec.accuracies is None
    n_steps = 4 if systems_only else len(spec.accuracies)
    step_rows: list[dict] = []
    per_device = {
        i: {
            "busy": 0.0,
            "compute": 0.0,
            "network": 0.0,
            "offline": 0.0,
            "interrupted": 0.0,
            "units": 0,
            "up": 0,
            "down": 0,
        }
        for i in range(len(spec.devices))
    }
    t = 0.0
    for step in range(n_steps):
        log.add(t, -1, "step_start", step=step)
        attempts = 2 if step in spec.repeat_steps else 1
        ends = []
        for i in range(len(spec.devices)):
            log.add(t, i, "assign", step=step, units=spec.units_per_device)
            offline_here = spec.offline_device == i and spec.offline_step == step
            cursor = t
            if offline_here and spec.offline_phase == "download":
                # The fleet's convention: "interrupted" carries the active time of the piece it
                # cut, "resumed" the pause, and the transfer's event its total active time.
                cursor += spec.download_s / 2
                _go_offline(log, spec, cursor, i, step, "download", spec.download_s / 2)
                cursor += spec.offline_s + spec.download_s / 2
            else:
                cursor += spec.download_s
            log.add(
                cursor, i, "download", step=step, payload_bytes=1000, duration_s=spec.download_s
            )
            per_device[i]["down"] += 1000
            per_device[i]["network"] += spec.download_s
            if offline_here and spec.offline_phase == "compute":
                _go_offline(log, spec, cursor, i, step, "compute", 0.0)
                cursor += spec.offline_s
            if offline_here:
                per_device[i]["offline"] += spec.offline_s
                per_device[i]["interrupted"] += spec.offline_s
            ends.append(cursor)
        attempt_rows = []
        for attempt in range(attempts):
            for i, (_model, _backend, compute_s) in enumerate(spec.devices):
                cursor = ends[i] + compute_s
                log.add(
                    cursor,
                    i,
                    "compute",
                    step=step,
                    duration_s=compute_s,
                    units=spec.units_per_device,
                )
                cursor += spec.upload_s
                log.add(cursor, i, "upload", step=step, payload_bytes=200, duration_s=spec.upload_s)
                per_device[i]["compute"] += compute_s
                per_device[i]["network"] += spec.upload_s
                per_device[i]["units"] += spec.units_per_device
                per_device[i]["up"] += 200
                ends[i] = cursor
            t_end = max(ends)
            last = attempt == attempts - 1
            log.add(t_end, -1, "step_commit" if last else "step_rollback", step=step)
            accuracy = math.nan
            if last and not systems_only:
                accuracy = spec.accuracies[step]
                if not math.isnan(accuracy):
                    log.add(t_end, -1, "evaluate", step=step, detail=f"{accuracy}")
            attempt_rows.append(
                {
                    "sim_time_s": t_end,
                    "round": step,
                    "step": step,
                    "attempt": attempt,
                    "committed": last,
                    "devices": len(spec.devices),
                    "perturbations": len(spec.devices) * spec.units_per_device * (attempt + 1),
                    "loss": math.nan if systems_only else 2.0 / (step + 1),
                    "accuracy": accuracy,
                    "eval_loss": math.nan if math.isnan(accuracy) else 1.0 - accuracy,
                    "variance": 0.1,
                    "lr": 0.01,
                    "bytes_up": 200 * len(spec.devices),
                    "bytes_down": 1000 * len(spec.devices) if attempt == 0 else 0,
                    "step_seconds": t_end - t,
                    "step_start_s": t,
                    "variance_gate": "passed" if last else "rolled_back",
                    "stale_units": 0,  # all work fresh
                    "staleness_max": 0,
                    "staleness_mean": 0.0,
                }
            )
            if not last:  # the repeat is requested at the rollback: everyone restarts then
                ends = [t_end] * len(spec.devices)
        step_rows.extend(attempt_rows)
        t = max(ends)
    horizon = t + spec.trailing_idle_s
    events = log.to_frame()
    events.to_parquet(run_dir / "events.parquet")
    pd.DataFrame(step_rows, columns=list(STEP_COLUMNS)).astype(STEP_COLUMNS).to_parquet(
        run_dir / "steps.parquet"
    )
    device_rows = []
    for i, (model, backend, _c) in enumerate(spec.devices):
        d = per_device[i]
        busy = d["compute"] + d["network"]
        device_rows.append(
            {
                "device_id": i,
                "phone_model": model,
                "backend": backend,
                "busy_s": busy,
                "compute_s": d["compute"],
                "network_s": d["network"],
                "idle_s": horizon - busy - d["offline"],
                "offline_s": d["offline"],
                "interrupted_s": d["interrupted"],
                "wasted_s": 0.0,
                "tasks": n_steps,
                "perturbations": d["units"],
                "units_lost": 0,
                "bytes_up": d["up"],
                "bytes_down": d["down"],
                "energy_j": 2.0 * busy,
            }
        )
    pd.DataFrame(device_rows).astype(DEVICE_COLUMNS).to_parquet(run_dir / "devices.parquet")
    scenario = {
        "name": spec.name,
        "fleet": {"devices": len(spec.devices)},
        "traces": {
            "availability": {
                "kind": "always_online" if spec.offline_device is None else "diurnal_model"
            }
        },
        "numerics": {"engine": "none" if systems_only else "torch"},
        "protocol": {
            "name": spec.protocol,
            "lr": 0.01,
            "perturbations_per_device": spec.units_per_device,
        },
        "policy": {"name": spec.policy},
        "run": {"seed": spec.seed, "max_steps": n_steps},
        "output": {"dir": "runs"},
    }
    for key, value in spec.extra_params.items():
        section, _, leaf = key.partition(".")
        scenario.setdefault(section, {})[leaf] = value
    (run_dir / "scenario.yaml").write_text(yaml.safe_dump(scenario))
    final = (
        None
        if systems_only
        else next((a for a in reversed(spec.accuracies) if not math.isnan(a)), None)
    )
    summary = {
        "final_accuracy": final,
        "simulated_seconds": horizon,
        "rounds": n_steps,
        "steps": n_steps,
        "host_seconds": 0.1,
        "time_to_target": {"0.6": None},
        "systems_only": systems_only,
        "protocol": spec.protocol,
        "policy": spec.policy,
        "seed": spec.seed,
        "scenario_name": spec.name,
        "availability_label": "always online",
        "total_perturbations": int(sum(d["units"] for d in per_device.values())),
        "bytes_up": int(sum(d["up"] for d in per_device.values())),
        "bytes_down": int(sum(d["down"] for d in per_device.values())),
        "energy_j": float(sum(r["energy_j"] for r in device_rows)),
        **({} if spec.initial_accuracy is None else {
            "initial_accuracy": spec.initial_accuracy,
            "initial_eval_loss": 1.0 - spec.initial_accuracy}),
        **spec.summary_extra,
    }
    (run_dir / "summary.json").write_text(json.dumps(summary))
    (run_dir / "convergence.png").write_bytes(b"")
    return run_dir


@pytest.fixture
def make_run(tmp_path: Path) -> Callable[..., Path]:
    """``make_run(name=..., accuracies=..., ...)`` writes a synthetic run directory under
    ``tmp_path/runs`` (keyword arguments are the fields of :class:`SyntheticRun`)."""

    def factory(**kwargs) -> Path:
        return write_run(tmp_path / "runs", SyntheticRun(**kwargs))

    return factory


@pytest.fixture
def write_synthetic_run() -> Callable[..., Path]:
    """``write_synthetic_run(root, **fields)``: a synthetic run directory ``root/<name>``."""

    def write(root: Path, **kwargs) -> Path:
        return write_run(Path(root), SyntheticRun(**kwargs))

    return write
