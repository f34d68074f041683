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

import math
from typing import Optional

import numpy as np
import simpy

from fleetsim.fleet.admission import admit, straight_through_plan
from fleetsim.fleet.device_state import DeviceState, Job
from fleetsim.fleet.job_charges import (
    abandon_unit_in_progress,
    charge_partial_phase,
    charge_untimed_transfer,
    spend,
)
from fleetsim.fleet.task_end import finish
from fleetsim.fleet.unit_times import thermal_adjust, unit_times
from fleetsim.fleet.work import ReceiptStatus

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
        plan = straight_through_plan(fleet, job)
        if plan is not None:
            # The common case, flat: no nested phase generators (bench/fleet.py, issue 25).
            # Same timeouts, accounting and events, in the same order, as the general path
            # below takes when nothing interrupts the task.
            down_s, span, up_s, payload = plan
            if task.download_bytes > 0:
                if down_s > 0:
                    job.phase, job.phase_start = "download", env.now
                    yield env.timeout(down_s)
                    job.phase = ""
                    spend(fleet, job, "download", down_s)
                job.bytes_down = int(task.download_bytes)
                if down_s <= 0:
                    charge_untimed_transfer(fleet, job, "download", job.bytes_down)
                fleet.log.add(env.now, d, "download", task.step, job.bytes_down, down_s)
            job.phase, job.phase_start = "compute", env.now
            yield env.timeout(span)
            job.phase = ""
            spend(fleet, job, "compute", span)
            job.units_done = task.units
            fleet.log.add(env.now, d, "compute", task.step, duration_s=span, units=task.units)
            if up_s > 0:
                job.phase, job.phase_start = "upload", env.now
                yield env.timeout(up_s)
                job.phase = ""
                spend(fleet, job, "upload", up_s)
            job.bytes_up = payload
            if up_s <= 0:
                charge_untimed_transfer(fleet, job, "upload", payload)
            job.units_delivered = job.units_done
            fleet.log.add(env.now, d, "upload", task.step, payload, up_s, units=job.units_done)
            finish(fleet, job, ReceiptStatus.DELIVERED)
            return
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


def timeout_until(fleet: DeviceState, t: float, value: object = None) -> simpy.Timeout:
    """A timeout firing at exactly ``t`` (a window boundary or deadline), with ``value``:
    ``now + (t - now)`` can miss ``t`` by an ulp, which would put the event on the wrong
    side of a half-open boundary or of a server timer set for the same instant."""
    now = fleet.env.now
    delay = t - now
    for _ in range(4):
        if now + delay == t:
            break
        # math.nextafter: the same IEEE step as numpy's, without a numpy scalar call
        delay = math.nextafter(delay, math.inf if now + delay < t else -math.inf)
    return fleet.env.timeout(delay if delay > 0.0 else 0.0, value)


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


def compute(fleet: DeviceState, job: Job):
    env, task, d = fleet.env, job.task, job.task.device_id
    base_s = job.unit_s
    times = None if fleet.exact_compute else unit_times(fleet, job)
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
