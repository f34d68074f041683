"""What a task is charged on its device: busy time and energy of each phase, the part of a
phase cut by a cancel, bytes moved in no simulated time, and a unit given up part-way.

The lifecycle (:mod:`fleetsim.fleet.lifecycle`) calls these as the clock advances; they
add to the task's :class:`~fleetsim.fleet.device_state.Job`, and the device's columns are
updated once, when the task ends (:class:`~fleetsim.fleet.ledger.DeviceLedger`).  Units:
simulated seconds, joules, bytes.  Energy model: compute watts per backend and the radio
model of Huang et al. (MobiSys 2012), :mod:`fleetsim.fleet.energy`.
"""

from __future__ import annotations

import numpy as np

from fleetsim.fleet.device_state import DeviceState, Job


def abandon_unit_in_progress(fleet: DeviceState, job: Job, elapsed_s: float, why: str) -> None:
    """The unit being computed is given up after ``elapsed_s`` seconds (a deadline, or an
    interruption under 'lose'): its time is wasted and, if it had started, it is lost work."""
    job.wasted_s += elapsed_s
    if elapsed_s > 0:
        job.units_lost += 1
        fleet.log.add(fleet.env.now, job.task.device_id, "lost_work", job.task.step,
                      duration_s=elapsed_s, units=1, detail=why)


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
