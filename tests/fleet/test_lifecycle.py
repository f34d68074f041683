"""Device lifecycle: interruptions under both semantics in every phase, refusals,
availability boundaries, deadlines, cancellation."""

from __future__ import annotations

import numpy as np
import pytest
from fleet_helpers import intervals, kinds, make_fleet, make_table, run_task

from fleetsim.fleet.work import ReceiptStatus, Task
from fleetsim.record.recorder import devices_frame
from fleetsim.traces.base import AlwaysOnline

# Bandwidth 8 bit/s in these tests: one byte takes exactly one second each way.


def upload_one_byte(units: int) -> int:
    return 1


# --------------------------------------------------------------------------- download


def test_interrupted_mid_download_pause_resumes_where_it_stopped():
    env, fleet, log = make_fleet(
        make_table(1), intervals([[(0.0, 1.0), (3.0, 100.0)]]), unit_s=0.5, interruption="pause"
    )
    task = Task(step=0, device_id=0, units=2, download_bytes=2, upload_bytes=upload_one_byte)
    receipt = run_task(env, fleet, task)
    # download 1 s, offline 1..3, download 1 s more, 2 units x 0.5 s, upload 1 s.
    assert receipt.status == ReceiptStatus.DELIVERED
    assert receipt.t_finished == pytest.approx(6.0)
    assert receipt.interrupted_s == pytest.approx(2.0)
    assert receipt.busy_s == pytest.approx(4.0)
    assert receipt.network_s == pytest.approx(2.0 + 1.0)
    assert receipt.units_delivered == 2
    events = log.to_frame()
    interrupted = events[events.kind == "interrupted"]
    assert list(interrupted.detail) == ["download"]
    assert list(interrupted.time_s) == [1.0]
    assert list(events[events.kind == "resumed"].time_s) == [3.0]


def test_interrupted_mid_download_lose_ends_task_with_nothing():
    env, fleet, log = make_fleet(
        make_table(1), intervals([[(0.0, 1.0), (3.0, 100.0)]]), unit_s=0.5, interruption="lose"
    )
    task = Task(step=0, device_id=0, units=2, download_bytes=2, upload_bytes=upload_one_byte)
    receipt = run_task(env, fleet, task)
    assert receipt.status == ReceiptStatus.INTERRUPTED
    assert receipt.t_finished == pytest.approx(1.0)
    assert receipt.units_done == 0 and receipt.units_delivered == 0
    assert receipt.wasted_s == pytest.approx(1.0) == receipt.busy_s
    assert "resumed" not in kinds(log)


# --------------------------------------------------------------------------- compute


def test_interrupted_mid_compute_pause_keeps_the_unit_in_progress():
    env, fleet, log = make_fleet(
        make_table(1), intervals([[(0.0, 1.25), (3.0, 100.0)]]), unit_s=0.5, interruption="pause"
    )
    task = Task(step=0, device_id=0, units=4, upload_bytes=upload_one_byte)
    receipt = run_task(env, fleet, task)
    # 2 units by 1.0, 0.25 s into the third at 1.25; resume at 3.0: 0.25 + 0.5 -> 3.75; upload 1 s.
    assert receipt.status == ReceiptStatus.DELIVERED
    assert receipt.t_finished == pytest.approx(4.75)
    assert receipt.compute_s == pytest.approx(2.0)
    assert receipt.units_lost == 0
    events = log.to_frame()
    compute = events[events.kind == "compute"]
    assert list(compute.units) == [2, 2]
    assert list(events[events.kind == "interrupted"].detail) == ["compute"]


def test_interrupted_mid_compute_lose_delivers_finished_units_when_back():
    env, fleet, log = make_fleet(
        make_table(1), intervals([[(0.0, 1.25), (3.0, 100.0)]]), unit_s=0.5, interruption="lose"
    )
    task = Task(step=0, device_id=0, units=4, upload_bytes=lambda units: units)
    receipt = run_task(env, fleet, task)
    # Unit 3 is lost at 1.25; the 2 finished units go up when the device is back (2 bytes, 2 s).
    assert receipt.status == ReceiptStatus.PARTIAL
    assert receipt.units_done == 2 and receipt.units_delivered == 2
    assert receipt.units_lost == 1
    assert receipt.bytes_up == 2
    assert receipt.t_finished == pytest.approx(5.0)
    assert receipt.wasted_s == pytest.approx(0.25)
    lost = log.to_frame().query("kind == 'lost_work'")
    assert list(lost.units) == [1] and list(lost.duration_s) == [0.25]


def test_interrupted_mid_compute_lose_without_partial_delivery_loses_everything():
    env, fleet, _ = make_fleet(
        make_table(1), intervals([[(0.0, 1.25), (3.0, 100.0)]]), unit_s=0.5, interruption="lose"
    )
    task = Task(step=0, device_id=0, units=4, upload_bytes=upload_one_byte, deliver_partial=False)
    receipt = run_task(env, fleet, task)
    assert receipt.status == ReceiptStatus.INTERRUPTED
    assert receipt.t_finished == pytest.approx(1.25)
    assert receipt.units_done == 2 and receipt.units_delivered == 0
    assert receipt.units_lost == 3  # two finished + the one in progress
    assert receipt.wasted_s == pytest.approx(1.25)


# --------------------------------------------------------------------------- upload


def test_interrupted_mid_upload_pause_sends_only_the_rest():
    env, fleet, _ = make_fleet(
        make_table(1), intervals([[(0.0, 1.0), (3.0, 100.0)]]), unit_s=0.25, interruption="pause"
    )
    receipt = run_task(env, fleet, Task(step=0, device_id=0, units=2, upload_bytes=upload_one_byte))
    # compute 0.5, upload 0.5..1.0 (half), resume at 3.0 for 0.5 s.
    assert receipt.status == ReceiptStatus.DELIVERED
    assert receipt.t_finished == pytest.approx(3.5)
    assert receipt.network_s == pytest.approx(1.0)
    assert receipt.wasted_s == 0.0


def test_interrupted_mid_upload_lose_restarts_the_upload():
    env, fleet, _ = make_fleet(
        make_table(1), intervals([[(0.0, 1.0), (3.0, 100.0)]]), unit_s=0.25, interruption="lose"
    )
    receipt = run_task(env, fleet, Task(step=0, device_id=0, units=2, upload_bytes=upload_one_byte))
    assert receipt.status == ReceiptStatus.DELIVERED
    assert receipt.t_finished == pytest.approx(4.0)
    assert receipt.network_s == pytest.approx(1.5)
    assert receipt.wasted_s == pytest.approx(0.5)


def test_lose_gives_up_an_upload_no_window_of_a_repeating_trace_can_hold():
    # 1 s upload; windows of 0.9 s and 0.6 s repeating every 5 s: every retry is lost
    env, fleet, log = make_fleet(
        make_table(1), intervals([[(0.0, 0.9), (3.0, 3.6)]], period_s=5.0), unit_s=0.25,
        interruption="lose",
    )
    receipt = run_task(env, fleet, Task(step=0, device_id=0, units=2, upload_bytes=upload_one_byte))
    # lost at 0.9 (first loss), 3.6, 5.9: a period after the first loss, given up
    assert receipt.status == ReceiptStatus.INTERRUPTED
    assert receipt.t_finished == pytest.approx(5.9)
    assert receipt.units_lost == 2 and receipt.units_delivered == 0
    assert kinds(log).count("resumed") == 2
    assert env.now == pytest.approx(5.9)  # the run ends: nothing keeps retrying


def test_device_that_never_returns_ends_the_task():
    env, fleet, _ = make_fleet(
        make_table(1), intervals([[(0.0, 1.0)]]), unit_s=0.5, interruption="pause"
    )
    receipt = run_task(env, fleet, Task(step=0, device_id=0, units=4, upload_bytes=upload_one_byte))
    assert receipt.status == ReceiptStatus.INTERRUPTED
    assert receipt.t_finished == pytest.approx(1.0)
    assert receipt.units_lost == 2


# --------------------------------------------------------------------------- refusals, boundaries


def test_device_offline_at_assignment_is_refused():
    env, fleet, log = make_fleet(make_table(1), intervals([[(5.0, 10.0)]]))
    receipt = run_task(env, fleet, Task(step=3, device_id=0, units=1))
    assert receipt.status == ReceiptStatus.REFUSED
    assert receipt.t_finished == 0.0
    assert kinds(log) == ["refuse_offline"]


def test_memory_refusal_records_needed_and_available_bytes():
    env, fleet, log = make_fleet(make_table(2, usable_ram=np.array([1000, 5000])), AlwaysOnline(2))
    assert list(fleet.can_hold(np.array([0, 1]), 2000)) == [False, True]
    receipt = run_task(env, fleet, Task(step=0, device_id=0, units=1, memory_bytes=2000))
    assert receipt.status == ReceiptStatus.REFUSED
    events = log.to_frame()
    assert list(events.kind) == ["refuse_memory"]
    assert events.detail[0] == "needed=2000 available=1000"


def test_window_starting_exactly_at_dispatch_is_online():
    env, fleet, _ = make_fleet(make_table(1), intervals([[(2.0, 10.0)]]), unit_s=0.5)
    receipt = run_task(env, fleet, Task(step=0, device_id=0, units=1), at=2.0)
    assert receipt.status == ReceiptStatus.DELIVERED


def test_window_ending_exactly_at_dispatch_is_offline():
    env, fleet, _ = make_fleet(make_table(1), intervals([[(0.0, 2.0), (5.0, 9.0)]]), unit_s=0.5)
    receipt = run_task(env, fleet, Task(step=0, device_id=0, units=1), at=2.0)
    assert receipt.status == ReceiptStatus.REFUSED


def test_compute_ending_exactly_at_window_end_completes_and_upload_is_interrupted():
    env, fleet, log = make_fleet(
        make_table(1), intervals([[(0.0, 1.0), (2.0, 9.0)]]), unit_s=0.25, interruption="pause"
    )
    receipt = run_task(env, fleet, Task(step=0, device_id=0, units=4, upload_bytes=upload_one_byte))
    events = log.to_frame()
    compute = events[events.kind == "compute"]
    assert list(compute.units) == [4] and list(compute.time_s) == [1.0]
    interrupted = events[events.kind == "interrupted"]
    assert list(interrupted.detail) == ["upload"] and list(interrupted.duration_s) == [0.0]
    assert receipt.t_finished == pytest.approx(3.0)
    assert receipt.status == ReceiptStatus.DELIVERED


def test_stale_window_after_a_large_clock_jump():
    windows = [[(0.0, 1.0), (2.0, 3.0), (10.0, 20.0)], [(0.0, 50.0)]]
    env, fleet, _ = make_fleet(make_table(2), intervals(windows), unit_s=0.5)
    assert list(fleet.available_ids()) == [0, 1]
    env.run(until=12.0)
    assert list(fleet.available_ids()) == [0, 1]
    assert list(fleet.window_end(np.array([0, 1]))) == [20.0, 50.0]
    env.run(until=25.0)
    assert list(fleet.available_ids()) == [1]
    assert list(fleet.window_end(np.array([0]))) == [25.0]


# --------------------------------------------------------------------------- deadlines, cancel


def test_deadline_cuts_compute_and_uploads_finished_units():
    env, fleet, log = make_fleet(make_table(1), AlwaysOnline(1), unit_s=0.5)
    task = Task(step=0, device_id=0, units=10, upload_bytes=lambda u: u, deadline_s=1.75)
    receipt = run_task(env, fleet, task)
    assert receipt.status == ReceiptStatus.PARTIAL
    assert receipt.units_delivered == 3 and receipt.units_lost == 1
    assert receipt.t_finished == pytest.approx(1.75 + 3.0)
    assert receipt.wasted_s == pytest.approx(0.25)
    assert "lost_work" in kinds(log)


def test_deadline_before_any_unit_expires():
    env, fleet, _ = make_fleet(make_table(1), AlwaysOnline(1), unit_s=0.5)
    task = Task(step=0, device_id=0, units=2, download_bytes=4, deadline_s=2.0)
    receipt = run_task(env, fleet, task)
    assert receipt.status == ReceiptStatus.EXPIRED
    assert receipt.t_finished == pytest.approx(4.0)
    assert receipt.wasted_s == pytest.approx(4.0)


def test_cancel_mid_compute_and_queued_task():
    env, fleet, log = make_fleet(make_table(1), AlwaysOnline(1), unit_s=1.0)
    out = {}

    def server():
        first = fleet.dispatch(Task(step=0, device_id=0, units=5, upload_bytes=upload_one_byte))
        second = fleet.dispatch(Task(step=1, device_id=0, units=1, upload_bytes=upload_one_byte))
        assert list(fleet.busy_ids()) == [0]
        yield env.timeout(2.5)
        fleet.cancel(0, 0)
        out["first"] = yield first
        out["second"] = yield second

    env.process(server())
    env.run()
    first, second = out["first"], out["second"]
    assert first.status == ReceiptStatus.CANCELLED
    assert first.t_finished == pytest.approx(2.5)
    assert first.busy_s == pytest.approx(2.5) == first.wasted_s
    assert first.units_done == 2 and first.units_lost == 3  # 2 finished + 1 in progress
    cancelled = log.to_frame().query("kind == 'cancelled'")
    assert list(cancelled.detail) == ["compute"] and list(cancelled.units) == [2]
    # The queued task starts once the device is free.
    assert second.status == ReceiptStatus.DELIVERED
    assert second.t_assigned == 0.0 and second.t_finished == pytest.approx(2.5 + 1.0 + 1.0)
    assert len(fleet.busy_ids()) == 0
    totals = devices_frame(fleet.device_columns(env.now))
    assert totals.wasted_s[0] == pytest.approx(2.5)
    assert totals.tasks[0] == 2


def test_cancel_in_the_same_instant_as_dispatch():
    env, fleet, log = make_fleet(make_table(1), AlwaysOnline(1), unit_s=1.0)
    out = {}

    def server():
        event = fleet.dispatch(Task(step=0, device_id=0, units=5))
        fleet.cancel(0, 0)
        out["r"] = yield event

    env.process(server())
    env.run()
    assert out["r"].status == ReceiptStatus.CANCELLED and out["r"].busy_s == 0.0
    assert kinds(log) == ["cancelled"]


def test_dispatch_rejects_bad_tasks():
    _, fleet, _ = make_fleet(make_table(2), AlwaysOnline(2))
    with pytest.raises(ValueError, match="outside the fleet"):
        fleet.dispatch(Task(step=0, device_id=2, units=1))
    with pytest.raises(ValueError, match="units must be >= 1"):
        fleet.dispatch(Task(step=0, device_id=0, units=0))
