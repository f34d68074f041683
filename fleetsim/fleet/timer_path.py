"""A task that runs straight through on one timer instead of a SimPy process (issue 25).

Most tasks of a large fleet start online, need no deadline, have exact compute times and
end inside the device's current window (:func:`fleetsim.fleet.admission.straight_through_plan`).
Their whole life is known when they start: download ends at ``t1``, compute at ``t2``,
upload at ``t3``.  Such a task needs no process and no timer per phase: one SimPy timeout
at ``t3`` applies the three phases, in order, with the same charges and the same logged
events (at ``t1``, ``t2`` and ``t3``) as the phase-by-phase path would.  That is two SimPy
events per task (the timer and the receipt) instead of six (process start, three timers,
the receipt, process end).

A cancel or the end of the run before ``t3`` first applies the phases that ended by then
(:func:`apply_due_phases`), then charges the phase in progress as the general path's
interrupt handler does (:func:`fleetsim.fleet.job_charges.charge_partial_phase`).  The
timer of such a task stays in SimPy's queue and fires with no effect.

Event-log order.  Phase events are logged when the timer fires (or at the cancel), with
their own times, so the log is appended out of time order; :class:`~fleetsim.record.events.EventLog`
orders rows by time when it is written.  Every time, charge, receipt and device total is
the general path's (``tests/fleet/test_straight_through.py``).
"""

from __future__ import annotations

from fleetsim.fleet import admission
from fleetsim.fleet.device_state import DeviceState, Job
from fleetsim.fleet.job_charges import charge_partial_phase, charge_untimed_transfer, spend
from fleetsim.fleet.ledger import BACKEND_INDEX
from fleetsim.fleet.task_end import finish
from fleetsim.fleet.work import ReceiptStatus

#: The outcomes of :func:`begin_on_timer`.
REFUSED, ON_TIMER, GENERAL = "refused", "on_timer", "general"

_PHASE_IN_PROGRESS = ("download", "compute", "upload")


def begin_on_timer(fleet: DeviceState, job: Job) -> str:
    """Start ``job`` now: admit it and, when it runs straight through, log its assignment
    and set ``job.timer_plan``.  Returns :data:`REFUSED` (the task has ended, its receipt
    sent), :data:`ON_TIMER` (the caller schedules :func:`timer_end` at ``plan[3]`` and
    calls :func:`complete` then) or :data:`GENERAL` (run it as a process,
    :func:`fleetsim.fleet.lifecycle.run_job`; nothing was logged or charged)."""
    if not admission.admit(fleet, job):
        return REFUSED
    plan = admission.straight_through_plan(fleet, job)
    if plan is None:
        return GENERAL
    down_s, span, up_s, payload = plan
    t0 = fleet.env.now
    # Phase ends as SimPy would sum them (now + delay, phase by phase), so that every
    # logged time equals the general path's to the bit.
    t1 = t0 + down_s if job.task.download_bytes > 0 and down_s > 0 else t0
    t2 = t1 + span
    t3 = t2 + up_s if up_s > 0 else t2
    _start(fleet, job, t0, t1, t2, t3, down_s, span, up_s, payload)
    return ON_TIMER


def begin_planned(fleet: DeviceState, job: Job) -> None:
    """:func:`begin_on_timer` for a task of a dispatch batch that the batch's lookups
    found will be admitted and run straight through (``job.start_plan``, at its
    ``hint_time``, which must be now): admission's and the plan's effects on the job, then
    the same start.  The caller schedules :func:`timer_end` as for :data:`ON_TIMER`."""
    t1, t2, t3, span = job.start_plan
    task, facts = job.task, job.device_facts
    job.backend, unit_s, setup_s = facts[1], facts[2], facts[3]
    job.unit_s = unit_s
    fleet.ledger.last_backend[task.device_id] = BACKEND_INDEX[job.backend]
    admission.prepare_compute_span(job, unit_s, setup_s)
    _start(fleet, job, fleet.env.now, t1, t2, t3, facts[4], span, facts[5], facts[6])


def _start(fleet: DeviceState, job: Job, t0: float, t1: float, t2: float, t3: float,
           down_s: float, span: float, up_s: float, payload: int) -> None:
    """Log the admitted task's assignment and set its plan (phase ends ``t0`` to ``t3``)."""
    task = job.task
    d = int(task.device_id)
    fleet.log.add_rows(((float(t0), d, "assign", int(task.step), 0, 0.0, int(task.units),
                         job.backend, -1),))
    job.timer_plan = (t0, t1, t2, t3, down_s, span, up_s, payload)
    job.phases_applied = 0
    if task.download_bytes > 0 and down_s <= 0:
        # A download in no simulated time (uplink_only, none): done at the start.
        job.bytes_down = int(task.download_bytes)
        charge_untimed_transfer(fleet, job, "download", job.bytes_down)
        fleet.log.add(t0, d, "download", task.step, job.bytes_down, down_s)


def timer_end(job: Job) -> float:
    """When the task's timer fires: the end of its upload (simulated seconds)."""
    return job.timer_plan[3]


def apply_due_phases(fleet: DeviceState, job: Job, now: float) -> None:
    """Apply, in order, the phases of a timer task that ended at or before ``now`` (as the
    general path's phase timers would have by then), and leave ``job.phase`` /
    ``job.phase_start`` on the phase in progress.  Phase ends at ``now`` count as ended:
    a timer set earlier fires before a callback scheduled at the same instant."""
    t0, t1, t2, t3, down_s, span, up_s, payload = job.timer_plan
    task, d = job.task, job.task.device_id
    if job.phases_applied == 0 and t1 <= now:
        if task.download_bytes > 0 and down_s > 0:
            spend(fleet, job, "download", down_s)
            job.bytes_down = int(task.download_bytes)
            fleet.log.add(t1, d, "download", task.step, job.bytes_down, down_s)
        job.phases_applied = 1
    if job.phases_applied == 1 and t2 <= now:
        spend(fleet, job, "compute", span)
        job.units_done = task.units
        fleet.log.add(t2, d, "compute", task.step, duration_s=span, units=task.units)
        job.phases_applied = 2
    if job.phases_applied == 2 and t3 <= now:
        spend(fleet, job, "upload", up_s)
        job.bytes_up = payload
        if up_s <= 0:
            charge_untimed_transfer(fleet, job, "upload", payload)
        job.units_delivered = job.units_done
        fleet.log.add(t3, d, "upload", task.step, payload, up_s, units=job.units_done)
        job.phases_applied = 3
    if job.phases_applied < 3:
        job.phase = _PHASE_IN_PROGRESS[job.phases_applied]
        job.phase_start = (t0, t1, t2)[job.phases_applied]
    else:
        job.phase = ""


def complete(fleet: DeviceState, job: Job) -> None:
    """The timer fired: apply every phase and send the DELIVERED receipt."""
    if job.phases_applied == 0:
        _apply_all_phases(fleet, job)
    else:  # a checkpoint or an inspection applied some phases already
        apply_due_phases(fleet, job, job.timer_plan[3])
    finish(fleet, job, ReceiptStatus.DELIVERED)


def _apply_all_phases(fleet: DeviceState, job: Job) -> None:
    """:func:`apply_due_phases` at ``t3`` with no phase applied yet, in one pass: the same
    charges added in the same order (so every total is the same to the bit) and the same
    three rows logged in one call.  This is the end of most tasks of a large fleet
    (``bench/fleet.py``), where the calls of the phase-by-phase version cost more than the
    arithmetic."""
    t0, t1, t2, t3, down_s, span, up_s, payload = job.timer_plan
    task = job.task
    d, step, units = int(task.device_id), int(task.step), int(task.units)
    facts = job.device_facts
    busy, energy, network, radio = job.busy_s, job.energy_j, job.network_s, job.radio_j
    # The download and upload charges below are spend()'s transfer branch written out twice
    # on purpose: a helper call per phase is what this pass exists to save.
    if task.download_bytes > 0 and down_s > 0:
        watts = facts[7] if facts is not None else float(fleet.down_radio_watts[d])
        joules = watts * down_s
        busy += down_s
        network += down_s
        radio += joules
        energy += joules
        job.bytes_down = int(task.download_bytes)
        download = (t1, d, "download", step, job.bytes_down, down_s, 0, "", -1)
    else:
        download = None
    if span > 0:
        joules = fleet.compute_watts[job.backend] * span
        busy += span
        job.compute_s += span
        job.compute_j += joules
        energy += joules
    if up_s > 0:
        watts = facts[8] if facts is not None else float(fleet.up_radio_watts[d])
        joules = watts * up_s
        busy += up_s
        network += up_s
        radio += joules
        energy += joules
    job.busy_s, job.energy_j, job.network_s, job.radio_j = busy, energy, network, radio
    if up_s <= 0:
        charge_untimed_transfer(fleet, job, "upload", payload)
    job.bytes_up = payload
    job.units_done = job.units_delivered = units
    compute = (t2, d, "compute", step, 0, span, units, "", -1)
    upload = (t3, d, "upload", step, payload, up_s, units, "", -1)
    fleet.log.add_rows((download, compute, upload) if download else (compute, upload))
    job.phases_applied = 3
    job.phase = ""


def cancel(fleet: DeviceState, job: Job) -> None:
    """The server withdrew the task now: what the general path's interrupt handler does
    (charge the phase in progress, log ``cancelled``, send the CANCELLED receipt)."""
    now = fleet.env.now
    apply_due_phases(fleet, job, now)
    phase = job.phase or "between phases"
    charge_partial_phase(fleet, job)
    fleet.log.add(now, job.task.device_id, "cancelled", job.task.step, units=job.units_done,
                  detail=phase)
    job.units_lost += job.units_done - job.units_delivered
    finish(fleet, job, ReceiptStatus.CANCELLED)
