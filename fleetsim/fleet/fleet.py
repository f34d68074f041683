r"""The fleet: owner of every device's state on the SimPy clock.

The server talks to devices only through :class:`Fleet`: it asks who is online,
until when, who can hold a job and what a unit would cost (vectorised numpy over the
whole fleet, :class:`~fleetsim.traces.window_cursor.AvailabilityCursor`), and it
``dispatch``\ es and ``cancel``\ s tasks.  Only devices with work take SimPy events.
A task that nothing can interrupt runs on one timer (:mod:`fleetsim.fleet.timer_path`);
otherwise the device becomes a process that runs its queue of tasks through the
lifecycle in :mod:`fleetsim.fleet.lifecycle` (download → compute → upload, with
interruption, where the clock advances for a device).  Per-device accounting is the
:class:`~fleetsim.fleet.ledger.DeviceLedger`'s; the run directory's
``devices.parquet`` is built by the recorder from :meth:`Fleet.device_columns`.

Ending a run.  Timers of interrupted or cancelled phases stay in SimPy's queue
(SimPy cannot withdraw a scheduled timeout); they fire with no effect.  Run the
simulation until the server's own process ends (``env.run(until=server)``), not
until the queue is empty, or the clock will stop at the last stale timer.
:meth:`Fleet.stop_in_flight` ends what is still out when a stop rule fires.

Determinism.  Dispatches and cancels made within one simulated instant are
collected and applied together, sorted by ``(device_id, step)``, in one callback
at that instant; device processes therefore start, and log their events, in an
order that does not depend on the order in which the protocol or policy issued
the calls.  Compute noise comes from ``rng.stream(seed, "noise", "compute",
device_id, step, n)`` where ``n`` counts earlier tasks of the same device and
step, so no draw depends on any other device.
"""

from __future__ import annotations

import operator
from collections import deque
from typing import Optional

import numpy as np
import simpy

from fleetsim.fleet import lifecycle, timer_path
from fleetsim.fleet.admission import look_up_batch
from fleetsim.fleet.config import FleetConfig
from fleetsim.fleet.device_state import (
    ChooseBackendFn,
    DeviceState,
    Job,
    UnitSecondsFn,
)
from fleetsim.fleet.energy import PowerTable
from fleetsim.fleet.job_charges import charge_partial_phase
from fleetsim.fleet.task_end import finish
from fleetsim.fleet.work import ReceiptStatus, Task, TaskKind, WorkReceipt
from fleetsim.record.events import EventLog
from fleetsim.traces.base import AvailabilityTrace, DeviceTable
from fleetsim.traces.window_cursor import online_seconds
from fleetsim.workload import BACKENDS, ModelFacts

#: The order a dispatch batch starts in: by device, then step, then dispatch call.
_DISPATCH_ORDER = operator.attrgetter("task.device_id", "task.step", "seq")


class Fleet(DeviceState):
    """All devices of a run, on one SimPy environment.

    ``unit_seconds_fn`` / ``choose_backend_fn`` default to
    ``fleetsim.traces.latency.unit_seconds`` / ``choose_backend`` (imported lazily);
    tests inject their own.
    """

    def __init__(
        self,
        env: simpy.Environment,
        table: DeviceTable,
        availability: AvailabilityTrace,
        config: FleetConfig,
        seed: int,
        log: EventLog,
        facts: ModelFacts,
        unit_seconds_fn: Optional[UnitSecondsFn] = None,
        choose_backend_fn: Optional[ChooseBackendFn] = None,
        power: Optional[PowerTable] = None,
    ) -> None:
        super().__init__(env, table, availability, config, seed, log, facts,
                         unit_seconds_fn, choose_backend_fn, power)
        self._queues: dict[int, deque[Job]] = {}  # devices with a process: tasks not started
        self._current: dict[int, Job] = {}
        self._procs: dict[int, simpy.Process] = {}
        self._pending: list[Job] = []
        self._pending_cancels: list[tuple[int, int]] = []
        self._flush_scheduled = False
        self._dispatch_seq = 0
        self._num_devices = len(table)
        self._fits_cache: dict[int, np.ndarray] = {}

    # ------------------------------------------------------------------ queries (vectorised)

    def available_ids(self) -> np.ndarray:
        """Devices online now (busy or not)."""
        return self.cursor.available_ids(self.env.now)

    def idle_ids(self, memory_bytes: int = 0) -> np.ndarray:
        """Devices online now with no task assigned, ascending; with ``memory_bytes``, only
        those whose usable RAM holds a job that size (:meth:`can_hold`), in the same pass."""
        mask = self.idle_mask()
        if memory_bytes:
            mask &= self.fits_mask(memory_bytes)
        return np.flatnonzero(mask)

    def idle_mask(self) -> np.ndarray:
        """bool ``[n]``, a fresh array: online now with no task assigned."""
        return self.cursor.available_mask(self.env.now) & (self.busy_counts() == 0)

    def fits_mask(self, memory_bytes: int) -> np.ndarray:
        """bool ``[n]``: whether each device's usable RAM holds a job needing
        ``memory_bytes`` (static: computed once per size; do not modify)."""
        key = int(memory_bytes)
        mask = self._fits_cache.get(key)
        if mask is None:
            mask = self._fits_cache[key] = self.table.usable_ram_bytes >= key
            mask.flags.writeable = False  # shared by every caller
        return mask

    def busy_ids(self) -> np.ndarray:
        """Devices holding at least one task (including tasks dispatched this instant)."""
        return np.flatnonzero(self.busy_counts() > 0)

    def window_end(self, ids: np.ndarray) -> np.ndarray:
        """End of each device's current availability window (now where offline; inf where
        it never goes offline)."""
        _, end = self.cursor.state(np.asarray(ids, dtype=np.int64), self.env.now)
        return end

    def backends(self, ids: np.ndarray, kind: TaskKind) -> np.ndarray:
        """The backend each device uses for ``kind`` under the configured preference."""
        return self.backend_array(kind)[np.asarray(ids, dtype=np.int64)]

    def predict_unit_seconds(
        self, ids: np.ndarray, kind: TaskKind, inferences_per_unit: float
    ) -> np.ndarray:
        """Nominal seconds per unit of work (no noise, no thermal slow-down): what a policy
        may know.  NaN where the device has no usable backend."""
        return self.unit_array(kind, inferences_per_unit)[np.asarray(ids, dtype=np.int64)]

    def predict_setup_seconds(
        self, ids: np.ndarray, kind: TaskKind, setup_inferences: float
    ) -> np.ndarray:
        """Nominal seconds of the forwards a task runs once before its first unit
        (:attr:`fleetsim.fleet.work.Task.setup_inferences`); zeros when there are none."""
        ids = np.asarray(ids, dtype=np.int64)
        if setup_inferences <= 0:
            return np.zeros(len(ids))
        return self.unit_array(kind, setup_inferences)[ids]

    def predict_transfer_seconds(
        self, ids: np.ndarray, download_bytes: int | np.ndarray, upload_bytes: int | np.ndarray
    ) -> np.ndarray:
        """Seconds to download then upload the given payloads (bytes: one for all devices, or
        one per device), as configured: downloads take no time under ``transfers:
        uplink_only``, nothing does under ``none``."""
        ids = np.asarray(ids, dtype=np.int64)
        down = self.transfer_seconds(ids, download_bytes, "download")
        up = self.transfer_seconds(ids, upload_bytes, "upload")
        return down + up

    def can_hold(self, ids: np.ndarray, memory_bytes: int) -> np.ndarray:
        """Whether each device's usable RAM holds a job needing ``memory_bytes``."""
        return self.fits_mask(memory_bytes)[np.asarray(ids, dtype=np.int64)]

    # ------------------------------------------------------------------ server actions

    def dispatch(self, task: Task) -> simpy.Event:
        """Give ``task`` to its device.  The returned event fires with a
        :class:`WorkReceipt` when the device delivered, or when the task ended without
        delivery (refused, interrupted with nothing to send, expired, cancelled).

        A device that already holds a task queues this one behind it."""
        d = int(task.device_id)
        if not 0 <= d < self._num_devices:
            raise ValueError(f"task device_id {d} outside the fleet (0..{self._num_devices - 1})")
        if task.units < 1:
            raise ValueError(f"task units must be >= 1, got {task.units}")
        env = self.env
        event = simpy.Event(env)
        self._pending.append(Job(task, event, self._dispatch_seq, env.now))
        self._dispatch_seq += 1
        self._taken.append(d)
        self.ledger.dispatched.append(d)
        if not self._flush_scheduled:
            self._schedule_flush()
        return event

    def cancel(self, device_id: int, step: int) -> None:
        """Withdraw the device's task(s) of ``step`` dispatched so far (e.g. after an early
        commit).  The task's event fires with a CANCELLED receipt; its busy time is wasted."""
        d, s = int(device_id), int(step)
        for job in self._pending:
            if job.task.device_id == d and job.task.step == s:
                job.cancelled = True
                self.release(job)
        # The device is free for the server from this instant: its withdrawn work ends in this
        # instant's flush, before anything dispatched now starts on it.
        for job in self._queues.get(d, ()):
            if job.task.step == s:
                self.release(job)
        current = self._current.get(d)
        if current is not None and current.task.step == s:
            self.release(current)
        self._pending_cancels.append((d, s))
        self._schedule_flush()

    def mark_unused(self, receipt: WorkReceipt) -> None:
        """The server dropped this delivered work (late, rejected): count its busy time as
        wasted in the device totals."""
        if receipt.units_delivered > 0:
            self.ledger.add_wasted(receipt.device_id, receipt.busy_s - receipt.wasted_s)

    # ------------------------------------------------------------------ results

    def device_columns(self, end_time: float) -> dict[str, np.ndarray]:
        """Per-device totals of every device that was given work, as arrays keyed by the
        ``devices.parquet`` column names (the recorder makes the table).

        Idle and offline time cover ``[0, end_time]`` and come from the availability trace
        (vectorised over devices); busy time is what the device spent downloading,
        computing and uploading."""
        ledger = self.ledger
        ids = np.flatnonzero(ledger.tasks > 0)
        online = online_seconds(self.availability, ids, float(end_time))
        busy = ledger.column("busy_s")[ids]
        backend_names = np.array(list(BACKENDS) + [""], dtype=object)
        last_backend = ledger.last_backend[ids].astype(np.int64)
        last_backend[last_backend < 0] = len(BACKENDS)
        phone_names = np.array(self.table.phone_models, dtype=object)
        return {
            "device_id": ids,
            "phone_model": phone_names[self.table.phone_model_index[ids]],
            "backend": backend_names[last_backend],
            "busy_s": busy,
            "compute_s": ledger.column("compute_s")[ids],
            "network_s": ledger.column("network_s")[ids],
            "idle_s": np.maximum(online - busy, 0.0),
            "offline_s": np.maximum(float(end_time) - online, 0.0),
            "interrupted_s": ledger.column("interrupted_s")[ids],
            "wasted_s": ledger.column("wasted_s")[ids],
            "tasks": ledger.tasks[ids],
            "perturbations": ledger.column("units_delivered")[ids],
            "units_lost": ledger.column("units_lost")[ids],
            "bytes_up": ledger.column("bytes_up")[ids],
            "bytes_down": ledger.column("bytes_down")[ids],
            "energy_j": ledger.column("compute_j")[ids] + ledger.column("radio_j")[ids],
        }

    def stop_in_flight(self) -> list[WorkReceipt]:
        """At the end of a run (a stop rule fired with work still out): end every task that
        is queued, waiting to start or in progress, without delivery, at ``env.now``.

        The phase in progress is charged up to now (busy, energy, or suspended time for a
        paused task), so the device totals cover exactly ``[0, now]``; units finished but
        not uploaded count as lost.  Each task gets one event: ``unfinished`` (detail: the
        phase it was in, or ``queued``), or ``cancelled`` when the server had already
        withdrawn it.  Returns the receipts of the ``unfinished`` tasks (status CANCELLED).
        The fleet must not be simulated further afterwards."""
        withdrawn = set(self._pending_cancels)
        jobs = list(self._current.values())
        current = {id(j) for j in jobs}
        jobs += [j for q in self._queues.values() for j in q if id(j) not in current]
        jobs += self._pending
        jobs.sort(key=lambda j: (j.task.device_id, j.task.step, j.seq))
        self._pending, self._pending_cancels = [], []
        unfinished = []
        now = self.env.now
        for job in jobs:
            d, step = job.task.device_id, job.task.step
            phase = job.phase or ("queued" if id(job) not in current else "between phases")
            if id(job) in current:
                if job.timer_plan is not None:
                    timer_path.apply_due_phases(self, job, now)
                    phase = job.phase or "between phases"
                charge_partial_phase(self, job)
            job.units_lost += job.units_done - job.units_delivered
            if job.cancelled or (d, step) in withdrawn:
                self.log.add(now, d, "cancelled", step, units=job.units_done, detail=phase)
                finish(self, job, ReceiptStatus.CANCELLED)
                continue
            self.log.add(now, d, "unfinished", step, units=job.units_done,
                         detail=f"phase={phase} assigned={job.task.units}")
            finish(self, job, ReceiptStatus.CANCELLED)
            unfinished.append(job.event.value)
        self._current.clear()
        self._queues.clear()
        return unfinished

    def energy_totals(self) -> dict[str, float]:
        """Run totals in joules: compute, radio and their sum."""
        return self.ledger.energy_totals()

    def run_totals(self) -> dict[str, float]:
        """Run totals of the per-device accounting (sums over all devices)."""
        return self.ledger.run_totals()

    # ------------------------------------------------------------------ internals: batching

    def _schedule_flush(self) -> None:
        if not self._flush_scheduled:
            self._flush_scheduled = True
            self.env.timeout(0).callbacks.append(self._flush)

    def _flush(self, _event: simpy.Event) -> None:
        """Apply this instant's cancels then dispatches, sorted by (device, step)."""
        self._flush_scheduled = False
        cancels = sorted(set(self._pending_cancels))
        jobs = sorted(self._pending, key=_DISPATCH_ORDER)
        self._pending_cancels = []
        self._pending = []
        for d, s in cancels:
            self._apply_cancel(d, s)
        look_up_batch(
            self, [j for j in jobs if not j.cancelled and j.task.device_id not in self._queues]
        )
        for job in jobs:
            d = job.task.device_id
            if job.cancelled:
                self.log.add(self.env.now, d, "cancelled", job.task.step, detail="before start")
                finish(self, job, ReceiptStatus.CANCELLED)
                continue
            queue = self._queues.get(d)
            if queue is not None:
                queue.append(job)
            elif job.start_plan is not None and job.hint_time == self.env.now:
                # Looked up in this batch: admitted and straight through (most tasks).
                timer_path.begin_planned(self, job)
                self._queues[d] = deque()
                self._start_timer(d, job)
            else:
                queue = self._queues[d] = deque()
                queue.append(job)
                self._start_queue(d)

    def _apply_cancel(self, d: int, step: int) -> None:
        queue = self._queues.get(d)
        if queue:
            for job in [j for j in queue if j.task.step == step]:
                queue.remove(job)
                self.log.add(self.env.now, d, "cancelled", step, detail="queued")
                finish(self, job, ReceiptStatus.CANCELLED)
        current = self._current.get(d)
        if current is not None and current.task.step == step and not current.cancelled:
            current.cancelled = True
            if current.timer_plan is None:
                self._procs[d].interrupt(current)
                return
            timer_path.cancel(self, current)
            del self._current[d]
            self._start_queue(d)

    # ------------------------------------------------------------------ internals: devices

    def _start_queue(self, d: int) -> None:
        """Start the device's queued tasks: each one that runs straight through on one
        timer (:mod:`fleetsim.fleet.timer_path`), the rest, from the first that does not,
        in a device process.  A refused task ends at once and the next one starts."""
        queue = self._queues[d]
        while queue:
            job = queue[0]
            how = timer_path.begin_on_timer(self, job)
            if how == timer_path.GENERAL:
                self._procs[d] = self.env.process(self._device_loop(d))
                return
            queue.popleft()
            if how == timer_path.ON_TIMER:
                self._start_timer(d, job)
                return
        del self._queues[d]

    def _start_timer(self, d: int, job: Job) -> None:
        self._current[d] = job
        timer = lifecycle.timeout_until(self, timer_path.timer_end(job), value=job)
        timer.callbacks.append(self._timer_fired)

    def _timer_fired(self, timer: simpy.Timeout) -> None:
        job = timer.value
        if job.ended:  # cancelled, or ended by stop_in_flight: a stale timer
            return
        timer_path.complete(self, job)
        d = job.task.device_id
        del self._current[d]
        if self._queues[d]:
            self._start_queue(d)
        else:  # nothing queued behind it (most tasks): what _start_queue would do
            del self._queues[d]

    def _device_loop(self, d: int):
        queue = self._queues[d]
        while queue:
            job = queue.popleft()
            self._current[d] = job
            yield from lifecycle.run_job(self, job)
            del self._current[d]
        del self._queues[d]
        del self._procs[d]
