"""The lifecycle's straight-through path (issue 25) changes nothing a run records: with it
and without it (every task on the general phase-by-phase path), a churning fleet with
cancels, deadlines, setup forwards and free transfers gives the same events, receipts and
device totals.  And frozen_heap freezes only for the block it wraps."""

from __future__ import annotations

import gc

import numpy as np
import pytest

from fleetsim.fleet import Task, admission, lifecycle, timer_path
from fleetsim.fleet.heap import YOUNG_OBJECTS, frozen_heap
from fleetsim.record.recorder import devices_frame
from fleetsim.rng import stream
from tests.support.fleet_helpers import intervals, make_fleet, make_table

N = 400


def _windows(seed: int) -> list[list[tuple[float, float]]]:
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(N):
        cuts = np.sort(rng.uniform(0.0, 86_400.0, size=8))
        out.append([(float(a), float(b)) for a, b in zip(cuts[0::2], cuts[1::2])])
    return out


def _run(straight: bool, monkeypatch, interruption: str, transfers: str,
         batch_plans: bool = True) -> tuple:
    if not straight:
        monkeypatch.setattr(lifecycle, "straight_through_plan", lambda fleet, job: None)
    if not batch_plans:  # every task admitted and planned on its own (begin_on_timer)
        monkeypatch.setattr(admission, "_start_plans",
                            lambda fleet, tasks, *args: [None] * len(tasks))
    rng = np.random.default_rng(3)
    table = make_table(N, uplink_bps=rng.uniform(1e5, 1e7, N),
                       downlink_bps=rng.uniform(1e6, 5e7, N))
    env, fleet, log = make_fleet(table, intervals(_windows(1), period_s=86_400.0),
                                 unit_s=rng.uniform(0.5, 20.0, N), seed=5,
                                 interruption=interruption, transfers=transfers)
    env.run(until=36_000.0)
    receipts = []

    def server():
        for r in range(40):
            idle = fleet.idle_ids()
            chosen = stream(5, "test", r).choice(idle, size=min(60, len(idle)), replace=False)
            events = [fleet.dispatch(Task(
                step=r, device_id=int(d), units=1 + int(d) % 9,
                download_bytes=0 if d % 4 == 0 else 2_000_000,
                upload_bytes=lambda units: 16 + 12 * units,
                setup_inferences=1.0 if d % 2 else 0.0,
                deadline_s=env.now + 40.0 if d % 5 == 0 else None)) for d in chosen]
            yield env.all_of(events) | env.timeout(150.0)
            for d, event in zip(chosen, events):
                if not event.triggered:
                    fleet.cancel(int(d), r)
            yield env.all_of(events)
            receipts.extend(event.value for event in events)

    env.run(until=env.process(server()))
    # A last round cut by the end of the run: stop_in_flight ends tasks in every phase.
    idle = fleet.idle_ids()
    for d in stream(5, "test", "last").choice(idle, size=min(60, len(idle)), replace=False):
        fleet.dispatch(Task(step=40, device_id=int(d), units=3, download_bytes=2_000_000,
                            upload_bytes=lambda units: 16 + 12 * units))
    env.run(until=env.now + 3.0)
    receipts.extend(sorted(fleet.stop_in_flight(), key=lambda r: r.device_id))
    return (log.to_frame(), devices_frame(fleet.device_columns(env.now)), receipts,
            fleet.energy_totals())


@pytest.mark.parametrize("interruption,transfers",
                         [("pause", "both"), ("lose", "uplink_only"), ("pause", "none")])
def test_batch_start_plans_start_tasks_as_one_by_one_admission_does(
    monkeypatch, interruption, transfers
):
    """A dispatch batch's start plans (admission._start_plans, used by Fleet._flush) start
    each task as admit + straight_through_plan + begin_on_timer would: the same log, row
    for row in the same order, the same totals and receipts."""
    batch = _run(True, monkeypatch, interruption, transfers)
    one_by_one = _run(True, monkeypatch, interruption, transfers, batch_plans=False)
    assert batch[0].equals(one_by_one[0])
    assert batch[1].equals(one_by_one[1])
    assert batch[2] == one_by_one[2]
    assert batch[3] == one_by_one[3]
    # and the plans were used: most tasks started from them
    used = []
    monkeypatch.undo()
    original = timer_path.begin_planned
    monkeypatch.setattr(timer_path, "begin_planned",
                        lambda fleet, job: (used.append(job), original(fleet, job))[1])
    _run(True, monkeypatch, interruption, transfers)
    assert len(used) > 500


def _rows_sorted(log):
    rows = log.drop(columns="seq")
    return rows.sort_values(list(rows.columns), kind="stable").reset_index(drop=True)


@pytest.mark.parametrize("interruption,transfers",
                         [("pause", "both"), ("lose", "both"), ("lose", "uplink_only"),
                          ("pause", "none")])
def test_straight_through_path_records_what_the_general_path_records(
    monkeypatch, interruption, transfers
):
    fast = _run(True, monkeypatch, interruption, transfers)
    general = _run(False, monkeypatch, interruption, transfers)
    # The same rows; the order of rows at one instant may differ (a task on one timer
    # logs its phase events when the timer fires), so compare the rows sorted, and check
    # that each log is in time order.
    for log in (fast[0], general[0]):
        assert (log["time_s"].diff().dropna() >= 0).all()
    assert _rows_sorted(fast[0]).equals(_rows_sorted(general[0]))
    assert fast[1].equals(general[1])
    assert fast[2] == general[2]
    assert fast[3] == general[3]
    # the comparison is not empty: work was delivered, cancelled and cut by deadlines
    kinds = set(fast[0]["kind"])
    assert {"upload", "cancelled", "interrupted", "unfinished"} <= kinds
    cut = fast[0][fast[0]["kind"] == "unfinished"]["detail"]
    cut_in = {"phase=download", "phase=compute"} if transfers == "both" else {"phase=compute"}
    assert cut_in <= {d.split()[0] for d in cut}
    assert sum(r.status.value == "delivered" for r in fast[2]) > 100


def test_frozen_heap_freezes_for_the_block_only():
    # A frozen object that is dropped leaves the permanent generation (reference counting
    # still frees it), so the count may fall inside the block; it never grows there.
    assert gc.get_freeze_count() == 0
    with frozen_heap():
        frozen = gc.get_freeze_count()
        assert frozen > 0
        with frozen_heap():  # nested: no second freeze
            assert 0 < gc.get_freeze_count() <= frozen
        assert 0 < gc.get_freeze_count() <= frozen
    assert gc.get_freeze_count() == 0


def test_frozen_heap_raises_the_young_threshold_for_the_block_only():
    before = gc.get_threshold()
    try:
        gc.set_threshold(700, 9, 11)
        with frozen_heap():
            assert gc.get_threshold() == (YOUNG_OBJECTS, 9, 11)
            with frozen_heap():
                assert gc.get_threshold() == (YOUNG_OBJECTS, 9, 11)
        assert gc.get_threshold() == (700, 9, 11)
        gc.set_threshold(YOUNG_OBJECTS * 2, 10, 10)  # a caller's larger one is kept
        with frozen_heap():
            assert gc.get_threshold() == (YOUNG_OBJECTS * 2, 10, 10)
        assert gc.get_threshold() == (YOUNG_OBJECTS * 2, 10, 10)
        gc.set_threshold(0, 10, 10)  # collection turned off by the caller stays off
        with frozen_heap():
            assert gc.get_threshold() == (0, 10, 10)
        assert gc.get_threshold() == (0, 10, 10)
    finally:
        gc.set_threshold(*before)
