"""Seconds of each unit of a task on its device, when they are not all the nominal time.

The nominal time per unit is the latency model's (:mod:`fleetsim.traces.latency`, cached
on :class:`~fleetsim.fleet.device_state.DeviceState`).  ``fleet.compute_noise_sigma``
multiplies each unit by a mean-one log-normal draw from the named stream
``rng.stream(seed, "noise", "compute", device, step, n)``, so no draw depends on another
device; ``fleet.thermal`` slows the units that start after the device has been under
sustained load for ``onset_s`` (:class:`~fleetsim.fleet.config.ThermalConfig` gives the
source of its defaults).  Units: simulated seconds.
"""

from __future__ import annotations

import numpy as np

from fleetsim.fleet.device_state import DeviceState, Job
from fleetsim.rng import stream


def unit_times(fleet: DeviceState, job: Job) -> np.ndarray:
    """Nominal × noise seconds of every unit of the task (drawn once per task); the first
    unit also carries the task's setup forwards (:attr:`Task.setup_inferences`)."""
    task, d = job.task, job.task.device_id
    base = job.unit_s  # the nominal time per unit, looked up on admission
    sigma = fleet.config.compute_noise_sigma
    if sigma <= 0 or task.units == 0:
        times = np.full(task.units, base)
    else:
        key = (d, task.step)
        nth = fleet.tasks_per_step.get(key, 0)
        fleet.tasks_per_step[key] = nth + 1
        rng = stream(fleet.seed, "noise", "compute", d, task.step, nth)
        # Mean-one multiplier: the noise-free prediction is unbiased.
        times = base * rng.lognormal(mean=-0.5 * sigma * sigma, sigma=sigma, size=task.units)
    if task.units:
        times[0] += fleet.setup_seconds(task)  # the setup forwards (noise-free), before unit 0
    return times


def thermal_adjust(fleet: DeviceState, d: int, now: float, times: np.ndarray, first_started: bool):
    """Slow the units that start after the device has been hot for ``onset_s``."""
    cfg = fleet.config.thermal
    if not cfg.enabled:
        return times
    last_end = fleet.load_end.get(d)
    if last_end is None or now - last_end >= cfg.cooldown_s:
        fleet.load_start[d] = now
    hot_at = fleet.load_start[d] + cfg.onset_s
    starts = now + np.concatenate(([0.0], np.cumsum(times)[:-1]))
    slow = starts >= hot_at
    if first_started:
        slow[0] = False  # the unit in progress keeps the speed it started with
    if slow.any():
        times = times.copy()
        times[slow] *= cfg.slowdown
    return times
