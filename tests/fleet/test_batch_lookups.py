"""A dispatch batch's lookups (``admission.look_up_batch``, issue 25) equal the per-task
ones element by element, for batches of one kind of task and of several (kinds, forwards
per unit, setup forwards), integer and fractional payloads, on devices with their own
links, RAM and speeds."""

from __future__ import annotations

import numpy as np
import simpy
from fleet_helpers import intervals, make_fleet, make_table

from fleetsim.fleet import admission
from fleetsim.fleet.device_state import Job
from fleetsim.fleet.work import Task, TaskKind

N = 12


def _unit_seconds(table, device_ids, backends, facts, kind, inferences_per_unit):
    ids = np.asarray(device_ids)
    factor = 3.0 if kind == TaskKind.BACKPROP.value else 1.0
    return (0.1 + 0.013 * ids) * inferences_per_unit * factor


def _backend(table, device_ids, kind, preference="auto"):
    names = np.array(["npu", "gpu", "cpu"], dtype=object)
    pick = np.asarray(device_ids) % 3
    return names[np.where(kind == TaskKind.BACKPROP.value, 2, pick)]


def _fleet():
    rng = np.random.default_rng(5)
    table = make_table(N, uplink_bps=rng.uniform(1e5, 1e7, N),
                       downlink_bps=rng.uniform(1e6, 5e7, N),
                       usable_ram=rng.integers(1 << 30, 6 << 30, N))
    env, fleet, _ = make_fleet(table, intervals([[(0.0, 1e6)]] * N))
    fleet._unit_seconds_fn, fleet._choose_backend_fn = _unit_seconds, _backend
    return env, fleet


def _tasks(mixed: bool) -> list[Task]:
    tasks = []
    for d in range(N):
        kind = TaskKind.BACKPROP if mixed and d % 2 else TaskKind.FORWARD_GRADIENT
        tasks.append(Task(step=3, device_id=d, units=1 + d % 4, kind=kind,
                          download_bytes=(0, 1_000, 2_500.5)[d % 3] if mixed else 4_096,
                          upload_bytes=lambda units, d=d: 100 * units + d,
                          inferences_per_unit=(2.0, 1.0)[d % 2] if mixed else 2.0,
                          setup_inferences=(0.0, 1.0, 0.0)[d % 3] if mixed else 0.0))
    return tasks


def _per_task(fleet, task: Task) -> tuple:
    d = task.device_id
    payload = int(task.upload_bytes(task.units))
    down = (fleet.transfer_seconds_one(d, task.download_bytes, "download")
            if task.download_bytes > 0 else 0.0)
    return (int(fleet.table.usable_ram_bytes[d]), str(fleet.backend_array(task.kind)[d]),
            float(fleet.unit_array(task.kind, task.inferences_per_unit)[d]),
            fleet.setup_seconds(task), down, fleet.transfer_seconds_one(d, payload, "upload"),
            payload, float(fleet.down_radio_watts[d]), float(fleet.up_radio_watts[d]))


def test_batch_lookups_equal_per_task_lookups():
    for mixed in (False, True):
        env, fleet = _fleet()
        env.run(until=10.0)
        jobs = [Job(task, simpy.Event(env), i, env.now) for i, task in enumerate(_tasks(mixed))]
        admission.look_up_batch(fleet, jobs)
        for job in jobs:
            assert job.hint_time == 10.0 and job.online_hint is True
            assert job.window_end == 1e6
            expected = _per_task(fleet, job.task)
            assert job.device_facts == expected, (mixed, job.task.device_id)
            assert all(type(a) is type(b) for a, b in zip(job.device_facts, expected))


def test_idle_ids_fits_and_can_hold_equal_their_definitions():
    """``idle_ids(m)`` is the devices online, holding no task and with usable RAM of at least
    ``m``, ascending, computed here from the windows and the table; ``idle_ids()`` the idle
    ones; ``can_hold`` and ``fits_mask`` the RAM test; none changes the fleet's state."""
    gib = 1 << 30
    ram = np.array([1, 2, 3, 4, 5, 6, 2, 3, 4, 5, 1, 6], dtype=np.int64) * gib
    ram[3] += 12_345  # not a whole GiB
    # windows: long ones, some starting late (offline first), some ending at 15 s
    windows = [[(0.0, 1e6)] if d % 4 == 0 else
               [(50.0, 1e6)] if d % 4 == 1 else
               [(0.0, 15.0), (400.0, 1e6)] if d % 4 == 2 else
               [(0.0, 1e6)] for d in range(N)]
    env, fleet, _ = make_fleet(make_table(N, usable_ram=ram), intervals(windows), unit_s=100.0)
    busy_devices = {0, 7, 11}

    def online_at(t: float) -> np.ndarray:
        return np.array([any(s <= t < e for s, e in w) for w in windows])

    sizes = [0, 1, gib, 2 * gib, int(ram[3]), int(ram[3]) + 1, 6 * gib, 6 * gib + 1]

    def check(busy: set[int]):
        t = env.now
        online = online_at(t)
        np.testing.assert_array_equal(online, fleet.availability.is_available(np.arange(N), t))
        idle = online & ~np.isin(np.arange(N), sorted(busy))
        np.testing.assert_array_equal(fleet.idle_mask(), idle)
        np.testing.assert_array_equal(fleet.idle_ids(), np.flatnonzero(idle))
        for m in sizes:
            fits = ram >= m
            got = fleet.idle_ids(m)
            np.testing.assert_array_equal(got, np.flatnonzero(idle & fits), err_msg=str(m))
            assert got.dtype.kind == "i"
            np.testing.assert_array_equal(fleet.fits_mask(m), fits)
            ids = np.array([11, 3, 0, 3, 7, 10])
            np.testing.assert_array_equal(fleet.can_hold(ids, m), fits[ids])
            np.testing.assert_array_equal(fleet.can_hold(np.array([], dtype=np.int64), m), [])
        # the idle mask is fresh: changing it changes nothing the fleet keeps
        fleet.idle_mask()[:] = True
        np.testing.assert_array_equal(fleet.idle_mask(), idle)
        np.testing.assert_array_equal(fleet.available_ids(), np.flatnonzero(online))
        np.testing.assert_array_equal(fleet.busy_ids(), sorted(busy))

    env.run(until=10.0)
    check(set())
    events = {}

    def server():
        for d in sorted(busy_devices):
            events[d] = fleet.dispatch(Task(step=0, device_id=d, units=5))
        check(busy_devices)  # dispatched this instant: busy at once
        yield env.timeout(10.0)  # t = 20: devices 2, 6, 10 went offline at 15
        check(busy_devices)
        fleet.cancel(7, 0)
        check(busy_devices - {7})  # withdrawn: idle from this instant
        yield env.timeout(40.0)  # t = 60: devices 1, 5, 9 came online at 50
        check(busy_devices - {7})

    env.run(until=env.process(server()))
    env.run(until=1_000.0)  # every task ended; devices 2, 6, 10 back online at 400
    assert all(event.triggered for event in events.values())
    check(set())
