"""The life of one task on one device, as SimPy generator processes.

::

    offline ─┐
    available → downloading → computing → uploading → available
                   └───────── interrupted (availability ends) ─────────┘

:func:`run_job` is the process: download → compute → upload, each phase spending
simulated time against the device's availability window.  The functions here own no
state: the device's state lives on the :class:`~fleetsim.fleet.device_state.DeviceState` (its
window cursor, thermal history, queue) and the task's on its :class:`Job`; finished
tasks go to the fleet's :class:`~fleetsim.fleet.ledger.DeviceLedger`.  Nothing here
computes gradients.

Exactness.  A device's availability is checked against the *actual* end of its
current window for every phase, so a phone that goes offline mid-task is
interrupted at that instant (never "finishes" because it was online at the start
and at the predicted end).  Windows are half-open ``[start, end)``: a phase that
would end exactly at ``end`` completes; the device is offline at ``end``.

Interruption semantics (``FleetConfig.interruption``):

* ``pause`` (FLASH): the phase in progress is suspended and resumes where it
  stopped when the device's next window starts (transfers keep the bytes already
  sent; the unit in progress keeps its elapsed compute).  A device that never
  comes back ends the task with what it delivered so far (nothing).
* ``lose`` (real world): the phase in progress is lost.  Lost in the download:
  the task ends with nothing.  Lost in compute: the unit in progress is lost, and
  the task stops computing.  Units finished before the interruption (or whose
  upload was lost) are uploaded when the device is next available if
  ``Task.deliver_partial`` (the protocol's choice), else lost too.  On a
  repeating trace (``AvailabilityTrace.period_s``) the upload is given up, and
  the units lost, once its retries have failed for a whole period: no window of
  the pattern is long enough for it.

Deadlines (``Task.deadline_s``) cut compute only: at the deadline the unit in
progress is abandoned and the finished units are uploaded (the protocol decides
what late work is worth; set the deadline earlier by the predicted upload time
to have work arrive in time).  A download or upload in progress completes.  A
device with no finished unit at its deadline ends the task *at* the deadline with
an EXPIRED receipt: a server timer set for the same instant finds that receipt
already triggered.  Cancelling (``cancel``) credits the units finished before the
cancel as computed (and lost), like an interruption.

Ending a run.  Timers of interrupted or cancelled phases stay in SimPy's queue
(SimPy cannot withdraw a scheduled timeout); they fire with no effect.  Run the
simulation until the server's own process ends (``env.run(until=server)``), not
until the queue is empty, or the clock will stop at the last stale timer.
"""

from __future__ import annotations

from typing import Optional

import numpy as np
import simpy

from fleetsim.fleet.device_state import DeviceState, Job
from fleetsim.fleet.ledger import BACKEND_INDEX
from fleetsim.fleet.work import ReceiptStatus, WorkReceipt
from fleetsim.rng import stream

# Outcomes of one phase (transfer or compute span).
_DONE = "done"
_LOST = "lost"  # interrupted under "lose" semantics
_GONE = "gone"  # the device never comes online again
_EXPIRED = "expired"  # the deadline cut compute


def run_job(fleet: DeviceState, job: Job):
    env, task, d = fleet.env, job.task, job.task.device_id
    try:
        if not admit(fleet, job):
            return
        fleet.log.add(env.now, d, "assign", task.step, units=task.units, detail=job.backend)
        # Download.
        if task.download_bytes > 0:
            seconds = fleet.transfer_seconds_one(d, task.download_bytes, "download")
            outcome = yield from active(fleet, job, "download", seconds)
            if outcome != _DONE:
                end_without_delivery(fleet, job, outcome)
                return
            job.bytes_down = int(task.download_bytes)
            if seconds <= 0:
                charge_untimed_transfer(fleet, job, "download", job.bytes_down)
            fleet.log.add(env.now, d, "download", task.step, job.bytes_down, seconds)
        # Compute.
        outcome = yield from compute(fleet, job)
        if outcome == _GONE:
            end_without_delivery(fleet, job, _GONE)
            return
        if outcome == _LOST and not (task.deliver_partial and job.units_done > 0):
            end_without_delivery(fleet, job, _LOST)
            return
        if job.units_done == 0:
            end_without_delivery(fleet, job, _EXPIRED)
            return
        # Upload (after a "lose" interruption: once the device is back).
        yield from upload(fleet, job, resume_first=(outcome == _LOST))
    except simpy.Interrupt:
        phase = job.phase or "between phases"
        charge_partial_phase(fleet, job)
        fleet.log.add(env.now, d, "cancelled", task.step, units=job.units_done, detail=phase)
        job.units_lost += job.units_done - job.units_delivered
        finish(fleet, job, ReceiptStatus.CANCELLED)


def admit(fleet: DeviceState, job: Job) -> bool:
    task, d, now = job.task, job.task.device_id, fleet.env.now
    if job.online_hint is None or job.hint_time != now:
        online, end = fleet.cursor.state(np.array([d], dtype=np.int64), now)
        job.online_hint, job.window_end = bool(online[0]), float(end[0])
    if not job.online_hint:
        return refuse(fleet, job, "refuse_offline")
    available = int(fleet.table.usable_ram_bytes[d])
    if available < task.memory_bytes:
        return refuse(fleet, job, "refuse_memory",
                      f"needed={int(task.memory_bytes)} available={available}")
    job.backend = str(fleet.backend_array(task.kind)[d])
    unit_s = float(fleet.unit_array(task.kind, task.inferences_per_unit)[d])
    if job.backend not in fleet.compute_watts or not np.isfinite(unit_s) or unit_s < 0:
        return refuse(fleet, job, "refuse_backend", f"backend={job.backend!r} unit_s={unit_s}")
    fleet.ledger.last_backend[d] = BACKEND_INDEX[job.backend]
    return True


def abandon_unit_in_progress(fleet: DeviceState, job: Job, elapsed_s: float, why: str) -> None:
    """The unit being computed is given up after ``elapsed_s`` seconds (a deadline, or an
    interruption under 'lose'): its time is wasted and, if it had started, it is lost work."""
    job.wasted_s += elapsed_s
    if elapsed_s > 0:
        job.units_lost += 1
        fleet.log.add(fleet.env.now, job.task.device_id, "lost_work", job.task.step,
                      duration_s=elapsed_s, units=1, detail=why)


def refuse(fleet: DeviceState, job: Job, kind: str, detail: str = "") -> bool:
    """The device cannot take the task (offline, too little RAM, no usable backend): log
    ``kind`` and end the task REFUSED.  Returns False (for :func:`admit`)."""
    fleet.log.add(fleet.env.now, job.task.device_id, kind, job.task.step, detail=detail)
    finish(fleet, job, ReceiptStatus.REFUSED)
    return False


def spend(fleet: DeviceState, job: Job, phase: str, seconds: float) -> None:
    """Account ``seconds`` of active ``phase`` time to the job (the device's columns are
    updated once, when the task ends)."""
    if seconds <= 0:
        return
    d = job.task.device_id
    job.busy_s += seconds
    if phase == "compute":
        joules = fleet.compute_watts[job.backend] * seconds
        job.compute_s += seconds
        job.compute_j += joules
    else:
        watts = fleet.up_radio_watts[d] if phase == "upload" else fleet.down_radio_watts[d]
        joules = float(watts) * seconds
        job.network_s += seconds
        job.radio_j += joules
    job.energy_j += joules


def charge_untimed_transfer(fleet: DeviceState, job: Job, direction: str, payload: int) -> None:
    """Radio energy of ``payload`` bytes moved in no simulated time (``fleet.transfers:
    uplink_only`` downloads, every transfer under ``none``, an infinite link): the
    per-byte term of the Huang et al. (MobiSys 2012) model, α_dir × bytes, which a timed
    transfer charges through its power × seconds (α·throughput·t = α·bytes); the base
    power β is charged for a transfer's duration, here none.  The clock may ignore a
    transfer; the energy ledger never ignores its bytes."""
    if payload <= 0:
        return
    d = job.task.device_id
    per_byte = (fleet.up_radio_j_per_byte if direction == "upload"
                else fleet.down_radio_j_per_byte)[d]
    joules = float(per_byte) * int(payload)
    job.radio_j += joules
    job.energy_j += joules


def charge_partial_phase(fleet: DeviceState, job: Job) -> None:
    """On cancellation: account the part of the phase in progress that elapsed."""
    elapsed = fleet.env.now - job.phase_start
    if job.phase == "paused":
        job.interrupted_s += elapsed
    elif job.phase in ("download", "compute", "upload"):
        spend(fleet, job, job.phase, elapsed)
    if job.phase == "compute":
        # Credit the units the span finished before the cancel; the one in progress is
        # lost work too.
        if job.span_cum is not None:
            finished = int(np.searchsorted(job.span_cum, elapsed, side="right"))
            finished_at = float(job.span_cum[finished - 1]) if finished else 0.0
        else:
            finished = int(elapsed // job.span_unit_s) if job.span_unit_s > 0 else 0
            finished = min(finished, job.task.units - job.units_done)
            finished_at = finished * job.span_unit_s
        job.units_done += finished
        if finished:
            fleet.log.add(
                fleet.env.now,
                job.task.device_id,
                "compute",
                job.task.step,
                duration_s=finished_at,
                units=finished,
            )
        if elapsed > finished_at:
            job.units_lost += 1
    job.phase = ""


def timeout_until(fleet: DeviceState, t: float) -> simpy.Timeout:
    """A timeout firing at exactly ``t`` (a window boundary or deadline): ``now + (t -
    now)`` can miss ``t`` by an ulp, which would put the event on the wrong side of a
    half-open boundary or of a server timer set for the same instant."""
    now = fleet.env.now
    delay = t - now
    for _ in range(4):
        if now + delay == t:
            break
        delay = float(np.nextafter(delay, np.inf if now + delay < t else -np.inf))
    return fleet.env.timeout(max(delay, 0.0))


def wait_online(fleet: DeviceState, job: Job):
    """Suspend until the device's next window; False if it never comes back."""
    d, now = job.task.device_id, fleet.env.now
    back = fleet.cursor.next_start(d, now)
    if not np.isfinite(back):
        return False
    job.phase, job.phase_start = "paused", now
    yield timeout_until(fleet, back)
    job.phase = ""
    job.interrupted_s += back - now
    online, end = fleet.cursor.state(np.array([d], dtype=np.int64), fleet.env.now)
    job.window_end = float(end[0])
    fleet.log.add(fleet.env.now, d, "resumed", job.task.step, duration_s=back - now)
    return True


def active(fleet: DeviceState, job: Job, phase: str, seconds: float):
    """Spend ``seconds`` of transfer time, honouring the availability window."""
    env, d = fleet.env, job.task.device_id
    remaining = seconds
    while remaining > 0:
        now = env.now
        if now + remaining <= job.window_end:
            job.phase, job.phase_start = phase, now
            yield env.timeout(remaining)
            job.phase = ""
            spend(fleet, job, phase, remaining)
            return _DONE
        run = job.window_end - now
        if run > 0:
            job.phase, job.phase_start = phase, now
            yield timeout_until(fleet, job.window_end)
            job.phase = ""
            spend(fleet, job, phase, run)
            remaining -= run
        fleet.log.add(env.now, d, "interrupted", job.task.step, duration_s=run, detail=phase)
        if fleet.config.interruption == "lose":
            job.wasted_s += seconds - remaining  # the lost transfer's elapsed time
            return _LOST
        back = yield from wait_online(fleet, job)
        if not back:
            return _GONE
    return _DONE


def unit_times(fleet: DeviceState, job: Job) -> np.ndarray:
    """Nominal × noise seconds of every unit of the task (drawn once per task); the first
    unit also carries the task's setup forwards (:attr:`Task.setup_inferences`)."""
    task, d = job.task, job.task.device_id
    base = float(fleet.unit_array(task.kind, task.inferences_per_unit)[d])
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


def compute(fleet: DeviceState, job: Job):
    env, task, d = fleet.env, job.task, job.task.device_id
    base_s = float(fleet.unit_array(task.kind, task.inferences_per_unit)[d])
    exact = fleet.config.compute_noise_sigma <= 0 and not fleet.config.thermal.enabled
    times = None if exact else unit_times(fleet, job)
    head_remaining: Optional[float] = None
    deadline = task.deadline_s if task.deadline_s is not None else np.inf
    while job.units_done < task.units:
        now = env.now
        if now >= deadline:
            return _EXPIRED
        if times is None:
            # Fast path (no noise, no thermal model): equal units, one timeout if they
            # all fit in the window and before the deadline.
            left = task.units - job.units_done
            setup_s = fleet.setup_seconds(task) if job.units_done == 0 else 0.0
            span = base_s * left + setup_s
            if now + span <= min(job.window_end, deadline):
                job.phase, job.phase_start = "compute", now
                # a cancel mid-span credits the units finished (the first one longer by
                # the setup forwards)
                job.span_cum = (base_s * np.arange(1, left + 1) + setup_s) if setup_s else None
                job.span_unit_s = base_s
                yield env.timeout(span)
                job.phase = ""
                spend(fleet, job, "compute", span)
                job.units_done = task.units
                fleet.log.add(env.now, d, "compute", task.step, duration_s=span, units=left)
                return _DONE
            times = unit_times(fleet, job)  # noise-free here: equal units after the setup
        seg = times[job.units_done :].copy()
        if head_remaining is not None:
            seg[0] = head_remaining
        seg = thermal_adjust(fleet, d, now, seg, head_remaining is not None)
        cum = np.cumsum(seg)
        limit = min(job.window_end, deadline)
        # Units whose end falls at or before the limit complete (half-open windows).
        fit = int(np.searchsorted(now + cum, limit, side="right"))
        job.span_cum = cum
        if fit == len(seg):
            span = float(cum[-1])
            job.phase, job.phase_start = "compute", now
            yield env.timeout(span)
            job.phase = ""
            spend(fleet, job, "compute", span)
            job.units_done += fit
            fleet.load_end[d] = env.now
            fleet.log.add(env.now, d, "compute", task.step, duration_s=span, units=fit)
            return _DONE
        span = limit - now
        if span > 0:
            job.phase, job.phase_start = "compute", now
            yield timeout_until(fleet, limit)
            job.phase = ""
            spend(fleet, job, "compute", span)
        fleet.load_end[d] = env.now
        job.units_done += fit
        into_unit = span - (float(cum[fit - 1]) if fit else 0.0)
        if fit:
            fleet.log.add(
                env.now, d, "compute", task.step, duration_s=span - into_unit, units=fit
            )
        if deadline <= job.window_end:
            # The deadline cut the unit in progress: it is abandoned.
            abandon_unit_in_progress(fleet, job, into_unit, "deadline")
            return _EXPIRED
        fleet.log.add(env.now, d, "interrupted", task.step, duration_s=span, detail="compute")
        if fleet.config.interruption == "lose":
            abandon_unit_in_progress(fleet, job, into_unit, "compute")
            return _LOST
        head_remaining = float(seg[fit]) - into_unit
        back = yield from wait_online(fleet, job)
        if not back:
            return _GONE
    return _DONE


def upload(fleet: DeviceState, job: Job, resume_first: bool):
    env, task, d = fleet.env, job.task, job.task.device_id
    payload = int(task.upload_bytes(job.units_done))
    seconds = fleet.transfer_seconds_one(d, payload, "upload")
    period = fleet.availability.period_s
    first_loss: Optional[float] = None
    while True:
        if resume_first:
            back = yield from wait_online(fleet, job)
            if not back:
                end_without_delivery(fleet, job, _GONE)
                return
        outcome = yield from active(fleet, job, "upload", seconds)
        if outcome == _DONE:
            break
        if outcome == _GONE or not task.deliver_partial:
            end_without_delivery(fleet, job, outcome)
            return
        # "lose": the upload is lost (its elapsed time counted as wasted by _active); the
        # units stay on the phone and go up again, whole payload, when the device is back.
        # On a repeating trace, a period of failed retries has tried every window: none
        # is long enough, and retrying for ever would hold the device (and the run).
        if first_loss is None:
            first_loss = env.now
        elif period and env.now - first_loss >= period:
            end_without_delivery(fleet, job, _LOST)
            return
        resume_first = True
    job.bytes_up = payload
    if seconds <= 0:
        charge_untimed_transfer(fleet, job, "upload", payload)
    job.units_delivered = job.units_done
    fleet.log.add(env.now, d, "upload", task.step, payload, seconds, units=job.units_done)
    status = (
        ReceiptStatus.DELIVERED if job.units_delivered == task.units else ReceiptStatus.PARTIAL
    )
    finish(fleet, job, status)


def end_without_delivery(fleet: DeviceState, job: Job, outcome: str) -> None:
    d, task = job.task.device_id, job.task
    undelivered = job.units_done - job.units_delivered
    if undelivered > 0:
        job.units_lost += undelivered
        fleet.log.add(fleet.env.now, d, "lost_work", task.step, units=undelivered, detail=outcome)
    status = ReceiptStatus.EXPIRED if outcome == _EXPIRED else ReceiptStatus.INTERRUPTED
    finish(fleet, job, status)


def finish(fleet: DeviceState, job: Job, status: ReceiptStatus) -> None:
    d, task = job.task.device_id, job.task
    if job.units_delivered == 0:
        job.wasted_s = job.busy_s
    fleet.ledger.record(job)
    fleet.release(job)
    receipt = WorkReceipt(
        device_id=d,
        step=task.step,
        status=status,
        units_assigned=task.units,
        units_done=job.units_done,
        units_delivered=job.units_delivered,
        t_assigned=job.t_assigned,
        t_finished=fleet.env.now,
        bytes_down=job.bytes_down,
        bytes_up=job.bytes_up,
        backend=job.backend,
        tags=task.tags,
        busy_s=job.busy_s,
        compute_s=job.compute_s,
        network_s=job.network_s,
        interrupted_s=job.interrupted_s,
        wasted_s=job.wasted_s,
        units_lost=job.units_lost,
        energy_j=job.energy_j,
    )
    job.event.succeed(receipt)
