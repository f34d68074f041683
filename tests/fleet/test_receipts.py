"""A receipt carries the finished task's own figures, each under its own name.

``task_end.finish`` builds the :class:`WorkReceipt` positionally (it is on every task's
path, issue 25); a field order that drifted from the dataclass would swap figures
silently.  Every field gets a distinct value here, so any swap fails."""

from __future__ import annotations

import dataclasses

import simpy
from fleet_helpers import intervals, make_fleet, make_table

from fleetsim.fleet import task_end
from fleetsim.fleet.device_state import Job
from fleetsim.fleet.work import ReceiptStatus, Task, WorkReceipt


def test_finish_puts_each_figure_under_its_name():
    env, fleet, _ = make_fleet(make_table(3), intervals([[(0.0, 100.0)]] * 3), unit_s=0.5)
    env.run(until=7.0)
    task = Task(step=11, device_id=2, units=13, tags={"batch": 5})
    job = Job(task, simpy.Event(env), 0, 1.5)
    figures = dict(units_done=12, units_delivered=10, bytes_down=1_001, bytes_up=2_002,
                   backend="npu", busy_s=3.25, compute_s=2.125, network_s=1.0625,
                   interrupted_s=0.75, units_lost=2, energy_j=9.5)
    for name, value in figures.items():
        setattr(job, name, value)
    job.wasted_s = 0.375
    task_end.finish(fleet, job, ReceiptStatus.PARTIAL)
    receipt = job.event.value
    expected = dict(figures, device_id=2, step=11, status=ReceiptStatus.PARTIAL,
                    units_assigned=13, t_assigned=1.5, t_finished=7.0, tags={"batch": 5},
                    wasted_s=0.375)
    assert {f.name for f in dataclasses.fields(WorkReceipt)} == set(expected)
    assert dataclasses.asdict(receipt) == expected
