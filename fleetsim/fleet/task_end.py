"""How a task ends on its device, whatever ended it: its figures go to the device's
ledger, the device stops counting it as held, and its :class:`WorkReceipt` goes back to
the server (the task's event fires with it).  Units: simulated seconds, bytes, joules.
"""

from __future__ import annotations

from fleetsim.fleet.device_state import DeviceState, Job
from fleetsim.fleet.work import ReceiptStatus, WorkReceipt


def finish(fleet: DeviceState, job: Job, status: ReceiptStatus) -> None:
    """End ``job`` with ``status`` now (see the module docstring)."""
    d, task = job.task.device_id, job.task
    job.ended = True
    if job.units_delivered == 0:
        job.wasted_s = job.busy_s
    fleet.ledger.record(job)
    fleet.release(job)
    # Positional, in WorkReceipt's field order (a third of the keyword call's cost on the
    # per-task path; tests/fleet/test_receipts.py checks it).
    receipt = WorkReceipt(
        d, task.step, status, task.units, job.units_done, job.units_delivered,
        job.t_assigned, fleet.env.now, job.bytes_down, job.bytes_up, job.backend, task.tags,
        job.busy_s, job.compute_s, job.network_s, job.interrupted_s, job.wasted_s,
        job.units_lost, job.energy_j,
    )
    job.event.succeed(receipt)
