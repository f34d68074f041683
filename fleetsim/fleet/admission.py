"""Whether and how a task starts on its device: admission (online, RAM, a usable backend),
the batch lookups behind it, and the plan of a task nothing can interrupt.

:func:`admit` is the first thing a task does on either path (the device
process of :mod:`fleetsim.fleet.lifecycle`, the one timer of
:mod:`fleetsim.fleet.timer_path`); a task
it refuses ends at once, REFUSED, with a ``refuse_*`` event.  :func:`look_up_batch` reads
what admission and planning need for a whole dispatch batch at once (issue 25).
Nothing here advances the clock.
"""

from __future__ import annotations

import math
from typing import Optional

import numpy as np

from fleetsim.fleet.device_state import DeviceState, Job
from fleetsim.fleet.ledger import BACKEND_INDEX
from fleetsim.fleet.task_end import finish
from fleetsim.fleet.work import ReceiptStatus


def straight_through_plan(
    fleet: DeviceState, job: Job
) -> Optional[tuple[float, float, float, int]]:
    """``(download s, compute span s, upload s, upload bytes)`` when the admitted task will
    run download → compute → upload without interruption, else None (the general path).

    It will when compute time is exact (no noise, no thermal model), there is no deadline,
    and the whole task ends within the device's current window.  The window test is the
    general path's phase by phase (``now + seconds <= window end``, with ``now`` summed as
    SimPy sums it): the phase ends only grow, so the last one decides.  Also prepares the
    compute span for a cancel (:func:`charge_partial_phase`), as :func:`compute` does."""
    task = job.task
    if task.deadline_s is not None or not fleet.exact_compute:
        return None
    d = task.device_id
    now = fleet.env.now
    base_s = job.unit_s
    if job.device_facts is not None:
        setup_s, down_s, up_s, payload = job.device_facts[3:7]
    else:
        down_s = (fleet.transfer_seconds_one(d, task.download_bytes, "download")
                  if task.download_bytes > 0 else 0.0)
        setup_s = fleet.setup_seconds(task)
        payload = int(task.upload_bytes(task.units))  # a pure function of the units (Task)
        up_s = fleet.transfer_seconds_one(d, payload, "upload")
    span = base_s * task.units + setup_s
    end = now + down_s if down_s > 0 else now
    end = end + span
    if up_s > 0:
        end = end + up_s
    if not end <= job.window_end:
        return None
    prepare_compute_span(job, base_s, setup_s)
    return down_s, span, up_s, payload


def prepare_compute_span(job: Job, unit_s: float, setup_s: float) -> None:
    """The compute span's unit end offsets (seconds from its start; the setup forwards
    charged to the first unit), as :func:`fleetsim.fleet.lifecycle.compute` prepares
    them, for a cancel that charges part of the span
    (:func:`fleetsim.fleet.job_charges.charge_partial_phase`)."""
    task = job.task
    job.span_cum = (unit_s * np.arange(1, task.units + 1) + setup_s) if setup_s else None
    job.span_unit_s = unit_s


def look_up_batch(fleet: DeviceState, jobs: list[Job]) -> None:
    """For tasks that may start now (a dispatch batch): look up, vectorised over the batch,
    each device's availability now (``job.online_hint`` / ``window_end`` / ``hint_time``)
    and the time-independent facts :func:`admit` and :func:`straight_through_plan` read
    (``job.device_facts``).  The values are those the per-task lookups give, element by
    element (the same float operations), so a task is admitted and planned the same either
    way; this only moves the lookups out of the per-task path (issue 25's profile)."""
    if not jobs:
        return
    now = fleet.env.now
    tasks = [job.task for job in jobs]
    ids = np.fromiter((task.device_id for task in tasks), dtype=np.int64, count=len(tasks))
    online, end = fleet.cursor.state(ids, now)
    ram = fleet.table.usable_ram_bytes[ids].tolist()
    keys = {(task.kind, task.inferences_per_unit, task.setup_inferences) for task in tasks}
    if len(keys) == 1:  # one kind of task (a cohort's): no per-group index lists
        (kind, per_unit, setup), = keys
        backend = [str(b) for b in fleet.backend_array(kind)[ids].tolist()]
        unit_s = fleet.unit_array(kind, per_unit)[ids].tolist()
        setup_s = (fleet.unit_array(kind, setup)[ids].tolist() if setup > 0
                   else [0.0] * len(tasks))
    else:
        backend, unit_s, setup_s = [None] * len(tasks), [None] * len(tasks), [0.0] * len(tasks)
        groups: dict[tuple, list[int]] = {}
        for i, task in enumerate(tasks):
            groups.setdefault((task.kind, task.inferences_per_unit, task.setup_inferences),
                              []).append(i)
        for (kind, per_unit, setup), members in groups.items():
            sel = ids[members]
            for i, b, u in zip(members, fleet.backend_array(kind)[sel].tolist(),
                               fleet.unit_array(kind, per_unit)[sel].tolist()):
                backend[i], unit_s[i] = str(b), u
            if setup > 0:
                for i, v in zip(members, fleet.unit_array(kind, setup)[sel].tolist()):
                    setup_s[i] = v
    payload = [int(task.upload_bytes(task.units)) for task in tasks]  # pure in the units
    down_bytes = [task.download_bytes if task.download_bytes > 0 else 0 for task in tasks]
    down_s = fleet.transfer_seconds(ids, np.array(down_bytes, dtype=np.float64),
                                    "download").tolist()
    up_s = fleet.transfer_seconds(ids, np.array(payload, dtype=np.float64), "upload").tolist()
    down_w = fleet.down_radio_watts[ids].tolist()
    up_w = fleet.up_radio_watts[ids].tolist()
    plans = _start_plans(fleet, tasks, now, online, end, ram, backend, unit_s, setup_s,
                         down_s, up_s, down_bytes)
    for job, on, e, facts, plan in zip(jobs, online.tolist(), end.tolist(),
                                       zip(ram, backend, unit_s, setup_s, down_s, up_s,
                                           payload, down_w, up_w), plans):
        job.online_hint, job.window_end, job.hint_time = on, e, now
        job.device_facts = facts
        job.start_plan = plan


def _start_plans(fleet: DeviceState, tasks: list, now: float, online: np.ndarray,
                 window_end: np.ndarray, ram: list, backend: list, unit_s: list,
                 setup_s: list, down_s: list, up_s: list, down_bytes: list) -> list:
    """Per task of a dispatch batch starting now: ``(t1, t2, t3, compute span)`` when
    :func:`admit` will admit it and :func:`straight_through_plan` will plan it (the phase
    ends :func:`fleetsim.fleet.timer_path.begin_on_timer` would compute), else None.  The
    same decisions and the same float operations as theirs, element-wise over the batch;
    valid at ``now`` only."""
    if not fleet.exact_compute:
        return [None] * len(tasks)
    units = np.fromiter((task.units for task in tasks), dtype=np.float64, count=len(tasks))
    unit = np.array(unit_s, dtype=np.float64)
    down = np.array(down_s, dtype=np.float64)
    up = np.array(up_s, dtype=np.float64)
    span = unit * units + np.array(setup_s, dtype=np.float64)
    # straight_through_plan's window test, then begin_on_timer's phase ends
    last = np.where(down > 0, now + down, now) + span
    last = np.where(up > 0, last + up, last)
    t1 = np.where((np.array(down_bytes) > 0) & (down > 0), now + down, now)
    t2 = t1 + span
    t3 = np.where(up > 0, t2 + up, t2)
    with np.errstate(invalid="ignore"):
        ok = online & (last <= window_end) & np.isfinite(unit) & (unit >= 0)
    watts = fleet.compute_watts
    return [
        (a, b, c, s) if go and task.deadline_s is None and held >= task.memory_bytes
        and name in watts else None
        for go, task, held, name, a, b, c, s in zip(
            ok.tolist(), tasks, ram, backend, t1.tolist(), t2.tolist(), t3.tolist(),
            span.tolist())
    ]


def admit(fleet: DeviceState, job: Job) -> bool:
    task, d, now = job.task, job.task.device_id, fleet.env.now
    if job.online_hint is None or job.hint_time != now:
        online, end = fleet.cursor.state(np.array([d], dtype=np.int64), now)
        job.online_hint, job.window_end = bool(online[0]), float(end[0])
    if not job.online_hint:
        return refuse(fleet, job, "refuse_offline")
    facts = job.device_facts
    available = int(fleet.table.usable_ram_bytes[d]) if facts is None else facts[0]
    if available < task.memory_bytes:
        return refuse(fleet, job, "refuse_memory",
                      f"needed={int(task.memory_bytes)} available={available}")
    if facts is None:
        job.backend = str(fleet.backend_array(task.kind)[d])
        job.unit_s = float(fleet.unit_array(task.kind, task.inferences_per_unit)[d])
    else:
        job.backend, job.unit_s = facts[1], facts[2]
    unit_s = job.unit_s
    if job.backend not in fleet.compute_watts or not math.isfinite(unit_s) or unit_s < 0:
        return refuse(fleet, job, "refuse_backend", f"backend={job.backend!r} unit_s={unit_s}")
    fleet.ledger.last_backend[d] = BACKEND_INDEX[job.backend]
    return True


def refuse(fleet: DeviceState, job: Job, kind: str, detail: str = "") -> bool:
    """The device cannot take the task (offline, too little RAM, no usable backend): log
    ``kind`` and end the task REFUSED.  Returns False (for :func:`admit`)."""
    fleet.log.add(fleet.env.now, job.task.device_id, kind, job.task.step, detail=detail)
    finish(fleet, job, ReceiptStatus.REFUSED)
    return False
