"""The fleet engine: device lifecycles on the SimPy clock.

Lifecycle of one task on one device (``dispatch``)::

    offline ─┐
    available → downloading → computing → uploading → available
                   └───────── interrupted (availability ends) ─────────┘

Only devices with work are SimPy processes; every question about idle devices
(who is online, until when, who can hold a job) is answered with numpy over the
whole fleet (:class:`~fleetsim.fleet.availability.AvailabilityCursor`).

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

Determinism.  Dispatches and cancels made within one simulated instant are
collected and applied together, sorted by ``(device_id, step)``, in one callback
at that instant; device processes therefore start, and log their events, in an
order that does not depend on the order in which the protocol or policy issued
the calls.  Compute noise comes from ``rng.stream(seed, "noise", "compute",
device_id, step, n)`` where ``n`` counts earlier tasks of the same device and
step, so no draw depends on any other device.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Optional

import numpy as np
import pandas as pd
import simpy

from fleetsim.errors import FleetsimInputError
from fleetsim.fleet.availability import AvailabilityCursor, online_seconds
from fleetsim.fleet.config import FleetConfig
from fleetsim.fleet.energy import BACKENDS, PowerTable
from fleetsim.fleet.work import ReceiptStatus, Task, TaskKind, WorkReceipt
from fleetsim.numerics.base import ModelFacts
from fleetsim.record.events import EventLog
from fleetsim.record.schema import DEVICE_COLUMNS
from fleetsim.rng import stream
from fleetsim.traces.base import AvailabilityTrace, DeviceTable

#: ``(table, device_ids, backends, facts, kind, inferences_per_unit) -> seconds per unit``
UnitSecondsFn = Callable[..., np.ndarray]
#: ``(table, device_ids, kind, preference) -> backend name per device``
ChooseBackendFn = Callable[..., np.ndarray]

# Outcomes of one phase (transfer or compute span).
_DONE = "done"
_LOST = "lost"  # interrupted under "lose" semantics
_GONE = "gone"  # the device never comes online again
_EXPIRED = "expired"  # the deadline cut compute

_BACKEND_INDEX = {name: i for i, name in enumerate(BACKENDS)}


def _default_unit_seconds(*args, **kwargs) -> np.ndarray:
    from fleetsim.traces import latency  # lazily: the traces package is optional for tests

    return latency.unit_seconds(*args, **kwargs)


def _default_choose_backend(*args, **kwargs) -> np.ndarray:
    from fleetsim.traces import latency

    return latency.choose_backend(*args, **kwargs)


@dataclass
class _Job:
    """One task on its way through a device (engine-private bookkeeping)."""

    task: Task
    event: simpy.Event
    seq: int  # dispatch call index: only breaks ties between tasks of one (device, step)
    t_assigned: float
    cancelled: bool = False
    released: bool = False  # no longer counted busy (finished, or cancelled by the server)
    backend: str = ""
    window_end: float = 0.0  # end of the device's current availability window
    online_hint: Optional[bool] = None  # availability looked up in the dispatch batch...
    hint_time: float = -np.inf  # ...at this time (used only if the task starts then)
    phase: str = ""  # phase in progress: "download" | "compute" | "upload" | "paused"
    phase_start: float = 0.0
    units_done: int = 0
    units_delivered: int = 0
    units_lost: int = 0
    bytes_down: int = 0
    bytes_up: int = 0
    busy_s: float = 0.0
    compute_s: float = 0.0
    network_s: float = 0.0
    interrupted_s: float = 0.0
    wasted_s: float = 0.0  # wasted busy time in a task that still delivered something
    energy_j: float = 0.0
    compute_j: float = 0.0
    radio_j: float = 0.0
    # The compute span in progress: end offsets of its units (or the equal unit time).
    span_cum: Optional[np.ndarray] = field(default=None, repr=False)
    span_unit_s: float = 0.0
    noise: Optional[np.ndarray] = field(default=None, repr=False)


class Fleet:
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
        n = len(table)
        if availability.num_devices != n:
            raise ValueError(
                f"availability trace covers {availability.num_devices} devices, "
                f"device table has {n}"
            )
        if config.size != n:
            raise ValueError(f"fleet.size is {config.size} but the device table has {n} devices")
        self.env = env
        self.table = table
        self.availability = availability
        self.config = config
        self.seed = int(seed)
        self.log = log
        self.facts = facts
        self._unit_seconds_fn = unit_seconds_fn or _default_unit_seconds
        self._choose_backend_fn = choose_backend_fn or _default_choose_backend
        self.power = power or PowerTable.load(config.energy)
        self.cursor = AvailabilityCursor(availability)

        up_j, down_j, base_w = self.power.radio_arrays(list(table.network_types))
        net = np.asarray(table.network_type_index, dtype=np.int64)
        # Huang et al. model: radio power while transferring = alpha × throughput + beta,
        # i.e. J per byte × bytes per second + base watts, per device and direction.
        self._up_radio_w = up_j[net] * (table.uplink_bps / 8.0) + base_w[net]
        self._down_radio_w = down_j[net] * (table.downlink_bps / 8.0) + base_w[net]
        self._compute_w = {b: self.power.compute_watts(b) for b in BACKENDS}
        for name in ("uplink_bps", "downlink_bps"):
            rates = np.asarray(getattr(table, name), dtype=np.float64)
            # +inf is allowed: an uplink-only profile makes downloads free (the paper's model).
            ok = ~np.isnan(rates) & (rates > 0)
            if not np.all(ok):
                bad = int(np.flatnonzero(~ok)[0])
                raise FleetsimInputError(
                    f"device table ({table.source or 'synthesised'}): {name} must be > 0 bit/s "
                    f"(or inf for free transfers) for every device; device {bad} has "
                    f"{rates[bad]!r}"
                )

        # Per-device accounting (columnar: a million devices cost a few arrays).
        self._busy_count = np.zeros(n, dtype=np.int32)
        self._tasks = np.zeros(n, dtype=np.int64)
        self._busy_s = np.zeros(n)
        self._compute_s = np.zeros(n)
        self._network_s = np.zeros(n)
        self._interrupted_s = np.zeros(n)
        self._wasted_s = np.zeros(n)
        self._delivered = np.zeros(n, dtype=np.int64)
        self._units_lost = np.zeros(n, dtype=np.int64)
        self._bytes_up = np.zeros(n, dtype=np.int64)
        self._bytes_down = np.zeros(n, dtype=np.int64)
        self._compute_j = np.zeros(n)
        self._radio_j = np.zeros(n)
        self._last_backend = np.full(n, -1, dtype=np.int8)

        self._ledger: list[tuple] = []  # finished tasks not yet added to the columns above
        self._queues: dict[int, deque[_Job]] = {}  # devices with a process: tasks not started
        self._current: dict[int, _Job] = {}
        self._procs: dict[int, simpy.Process] = {}
        self._pending: list[_Job] = []
        self._pending_cancels: list[tuple[int, int]] = []
        self._flush_scheduled = False
        self._dispatch_seq = 0
        self._tasks_per_step: dict[tuple[int, int], int] = {}
        # Thermal state, only for devices that computed: start of the current sustained load
        # and end of the last compute span.
        self._load_start: dict[int, float] = {}
        self._load_end: dict[int, float] = {}
        self._backend_cache: dict[str, np.ndarray] = {}
        self._unit_cache: dict[tuple[str, float], np.ndarray] = {}

    # ------------------------------------------------------------------ queries (vectorised)

    @property
    def num_devices(self) -> int:
        return len(self.table)

    def available_ids(self) -> np.ndarray:
        """Devices online now (busy or not)."""
        return self.cursor.available_ids(self.env.now)

    def idle_ids(self) -> np.ndarray:
        """Devices online now with no task assigned."""
        mask = self.cursor.available_mask(self.env.now)
        return np.flatnonzero(mask & (self._busy_count == 0))

    def busy_ids(self) -> np.ndarray:
        """Devices holding at least one task (including tasks dispatched this instant)."""
        return np.flatnonzero(self._busy_count > 0)

    def window_end(self, ids: np.ndarray) -> np.ndarray:
        """End of each device's current availability window (now where offline; inf where
        it never goes offline)."""
        _, end = self.cursor.state(np.asarray(ids, dtype=np.int64), self.env.now)
        return end

    def backends(self, ids: np.ndarray, kind: TaskKind) -> np.ndarray:
        """The backend each device uses for ``kind`` under the configured preference."""
        return self._backend_array(kind)[np.asarray(ids, dtype=np.int64)]

    def predict_unit_seconds(
        self, ids: np.ndarray, kind: TaskKind, inferences_per_unit: float
    ) -> np.ndarray:
        """Nominal seconds per unit of work (no noise, no thermal slow-down): what a policy
        may know.  NaN where the device has no usable backend."""
        return self._unit_array(kind, inferences_per_unit)[np.asarray(ids, dtype=np.int64)]

    def predict_transfer_seconds(
        self, ids: np.ndarray, download_bytes: int | np.ndarray, upload_bytes: int | np.ndarray
    ) -> np.ndarray:
        """Seconds to download then upload the given payloads (bytes: one for all devices, or
        one per device), as configured: downloads take no time under ``transfers:
        uplink_only``, nothing does under ``none``."""
        ids = np.asarray(ids, dtype=np.int64)
        down = self._transfer_seconds(ids, download_bytes, "download")
        up = self._transfer_seconds(ids, upload_bytes, "upload")
        return down + up

    def can_hold(self, ids: np.ndarray, memory_bytes: int) -> np.ndarray:
        """Whether each device's usable RAM holds a job needing ``memory_bytes``."""
        ids = np.asarray(ids, dtype=np.int64)
        return self.table.usable_ram_bytes[ids] >= int(memory_bytes)

    # ------------------------------------------------------------------ server actions

    def dispatch(self, task: Task) -> simpy.Event:
        """Give ``task`` to its device.  The returned event fires with a
        :class:`WorkReceipt` when the device delivered, or when the task ended without
        delivery (refused, interrupted with nothing to send, expired, cancelled).

        A device that already holds a task queues this one behind it."""
        d = int(task.device_id)
        if not 0 <= d < self.num_devices:
            raise ValueError(f"task device_id {d} outside the fleet (0..{self.num_devices - 1})")
        if task.units < 1:
            raise ValueError(f"task units must be >= 1, got {task.units}")
        job = _Job(
            task=task, event=self.env.event(), seq=self._dispatch_seq, t_assigned=self.env.now
        )
        self._dispatch_seq += 1
        self._pending.append(job)
        self._busy_count[d] += 1
        self._tasks[d] += 1
        self._schedule_flush()
        return job.event

    def cancel(self, device_id: int, step: int) -> None:
        """Withdraw the device's task(s) of ``step`` dispatched so far (e.g. after an early
        commit).  The task's event fires with a CANCELLED receipt; its busy time is wasted."""
        d, s = int(device_id), int(step)
        for job in self._pending:
            if job.task.device_id == d and job.task.step == s:
                job.cancelled = True
                self._release(job)
        # The device is free for the server from this instant: its withdrawn work ends in this
        # instant's flush, before anything dispatched now starts on it.
        for job in self._queues.get(d, ()):
            if job.task.step == s:
                self._release(job)
        current = self._current.get(d)
        if current is not None and current.task.step == s:
            self._release(current)
        self._pending_cancels.append((d, s))
        self._schedule_flush()

    def _release(self, job: _Job) -> None:
        if not job.released:
            job.released = True
            self._busy_count[job.task.device_id] -= 1

    def mark_unused(self, receipt: WorkReceipt) -> None:
        """The server dropped this delivered work (late, rejected): count its busy time as
        wasted in the device totals."""
        if receipt.units_delivered > 0:
            self._wasted_s[receipt.device_id] += receipt.busy_s - receipt.wasted_s

    # ------------------------------------------------------------------ results

    def device_totals(self, end_time: float) -> pd.DataFrame:
        """One row per device that was given work, with the columns of ``DEVICE_COLUMNS``.

        Idle and offline time cover ``[0, end_time]`` and come from the availability trace
        (vectorised over devices); busy time is what the device spent downloading,
        computing and uploading."""
        self._apply_ledger()
        ids = np.flatnonzero(self._tasks > 0)
        online = online_seconds(self.availability, ids, float(end_time))
        busy = self._busy_s[ids]
        backend_names = np.array(list(BACKENDS) + [""], dtype=object)
        last_backend = self._last_backend[ids].astype(np.int64)
        last_backend[last_backend < 0] = len(BACKENDS)
        phone_names = np.array(self.table.phone_models, dtype=object)
        columns = {
            "device_id": ids,
            "phone_model": phone_names[self.table.phone_model_index[ids]],
            "backend": backend_names[last_backend],
            "busy_s": busy,
            "compute_s": self._compute_s[ids],
            "network_s": self._network_s[ids],
            "idle_s": np.maximum(online - busy, 0.0),
            "offline_s": np.maximum(float(end_time) - online, 0.0),
            "interrupted_s": self._interrupted_s[ids],
            "wasted_s": self._wasted_s[ids],
            "tasks": self._tasks[ids],
            "perturbations": self._delivered[ids],
            "units_lost": self._units_lost[ids],
            "bytes_up": self._bytes_up[ids],
            "bytes_down": self._bytes_down[ids],
            "energy_j": self._compute_j[ids] + self._radio_j[ids],
        }
        return pd.DataFrame(
            {name: pd.Series(columns[name], dtype=dtype) for name, dtype in DEVICE_COLUMNS.items()}
        )

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
                self._charge_partial_phase(job)
            job.units_lost += job.units_done - job.units_delivered
            if job.cancelled or (d, step) in withdrawn:
                self.log.add(now, d, "cancelled", step, units=job.units_done, detail=phase)
                self._finish(job, ReceiptStatus.CANCELLED)
                continue
            self.log.add(now, d, "unfinished", step, units=job.units_done,
                         detail=f"phase={phase} assigned={job.task.units}")
            self._finish(job, ReceiptStatus.CANCELLED)
            unfinished.append(job.event.value)
        self._current.clear()
        self._queues.clear()
        return unfinished

    def energy_totals(self) -> dict[str, float]:
        """Run totals in joules: compute, radio and their sum."""
        self._apply_ledger()
        compute = float(self._compute_j.sum())
        radio = float(self._radio_j.sum())
        return {"compute_j": compute, "radio_j": radio, "total_j": compute + radio}

    def run_totals(self) -> dict[str, float]:
        """Run totals of the per-device accounting (sums over all devices)."""
        self._apply_ledger()
        return {
            "busy_s": float(self._busy_s.sum()),
            "compute_s": float(self._compute_s.sum()),
            "network_s": float(self._network_s.sum()),
            "interrupted_s": float(self._interrupted_s.sum()),
            "wasted_s": float(self._wasted_s.sum()),
            "tasks": int(self._tasks.sum()),
            "perturbations": int(self._delivered.sum()),
            "units_lost": int(self._units_lost.sum()),
            "bytes_up": int(self._bytes_up.sum()),
            "bytes_down": int(self._bytes_down.sum()),
            **self.energy_totals(),
        }

    # ------------------------------------------------------------------ internals: lookups

    def _apply_ledger(self) -> None:
        if not self._ledger:
            return
        rows = np.array(self._ledger, dtype=np.float64)
        self._ledger = []
        ids = rows[:, 0].astype(np.int64)
        float_columns = (
            self._busy_s,
            self._compute_s,
            self._network_s,
            self._interrupted_s,
            self._wasted_s,
            self._compute_j,
            self._radio_j,
        )
        for i, column in enumerate(float_columns, start=1):
            np.add.at(column, ids, rows[:, i])
        int_columns = (self._delivered, self._units_lost, self._bytes_up, self._bytes_down)
        for i, column in enumerate(int_columns, start=1 + len(float_columns)):
            np.add.at(column, ids, rows[:, i].astype(np.int64))

    def _backend_array(self, kind: TaskKind) -> np.ndarray:
        key = kind.value if isinstance(kind, TaskKind) else TaskKind(kind).value
        cached = self._backend_cache.get(key)
        if cached is None:
            cached = np.asarray(
                self._choose_backend_fn(
                    self.table, self.table.device_ids, key, self.config.backend
                ),
                dtype=object,
            )
            self._backend_cache[key] = cached
        return cached

    def _unit_array(self, kind: TaskKind, inferences_per_unit: float) -> np.ndarray:
        kind_name = kind.value if isinstance(kind, TaskKind) else TaskKind(kind).value
        key = (kind_name, float(inferences_per_unit))
        cached = self._unit_cache.get(key)
        if cached is None:
            backends = self._backend_array(kind)
            cached = np.asarray(
                self._unit_seconds_fn(
                    self.table,
                    self.table.device_ids,
                    backends,
                    self.facts,
                    key[0],
                    key[1],
                ),
                dtype=np.float64,
            )
            self._unit_cache[key] = cached
        return cached

    def _transfer_seconds(
        self, ids: np.ndarray, payload: int | np.ndarray, direction: str
    ) -> np.ndarray:
        mode = self.config.transfers
        if mode == "none" or (mode == "uplink_only" and direction == "download"):
            return np.zeros(len(ids))
        payload = np.broadcast_to(np.asarray(payload, dtype=np.float64), (len(ids),))
        bps = self.table.uplink_bps if direction == "upload" else self.table.downlink_bps
        rate = bps[ids]
        with np.errstate(divide="ignore", invalid="ignore"):
            seconds = np.where(rate > 0, payload * 8.0 / rate, np.inf)
        return np.where(payload > 0, seconds, 0.0)

    def _transfer_seconds_one(self, d: int, payload: int, direction: str) -> float:
        mode = self.config.transfers
        if payload <= 0 or mode == "none" or (mode == "uplink_only" and direction == "download"):
            return 0.0
        bps = self.table.uplink_bps if direction == "upload" else self.table.downlink_bps
        return payload * 8.0 / float(bps[d])

    # ------------------------------------------------------------------ internals: batching

    def _schedule_flush(self) -> None:
        if not self._flush_scheduled:
            self._flush_scheduled = True
            self.env.timeout(0).callbacks.append(self._flush)

    def _flush(self, _event: simpy.Event) -> None:
        """Apply this instant's cancels then dispatches, sorted by (device, step)."""
        self._flush_scheduled = False
        cancels = sorted(set(self._pending_cancels))
        jobs = sorted(self._pending, key=lambda j: (j.task.device_id, j.task.step, j.seq))
        self._pending_cancels = []
        self._pending = []
        for d, s in cancels:
            self._apply_cancel(d, s)
        starting = [j for j in jobs if not j.cancelled and j.task.device_id not in self._queues]
        if starting:
            ids = np.array([j.task.device_id for j in starting], dtype=np.int64)
            online, end = self.cursor.state(ids, self.env.now)
            for job, on, e in zip(starting, online, end):
                job.online_hint = bool(on)
                job.window_end = float(e)
                job.hint_time = self.env.now
        for job in jobs:
            d = job.task.device_id
            if job.cancelled:
                self.log.add(self.env.now, d, "cancelled", job.task.step, detail="before start")
                self._finish(job, ReceiptStatus.CANCELLED)
                continue
            queue = self._queues.get(d)
            if queue is None:
                queue = self._queues[d] = deque()
                queue.append(job)
                self._procs[d] = self.env.process(self._device_loop(d))
            else:
                queue.append(job)

    def _apply_cancel(self, d: int, step: int) -> None:
        queue = self._queues.get(d)
        if queue:
            for job in [j for j in queue if j.task.step == step]:
                queue.remove(job)
                self.log.add(self.env.now, d, "cancelled", step, detail="queued")
                self._finish(job, ReceiptStatus.CANCELLED)
        current = self._current.get(d)
        if current is not None and current.task.step == step and not current.cancelled:
            current.cancelled = True
            self._procs[d].interrupt(current)

    # ------------------------------------------------------------------ internals: devices

    def _device_loop(self, d: int):
        queue = self._queues[d]
        while queue:
            job = queue.popleft()
            self._current[d] = job
            yield from self._run_job(job)
            del self._current[d]
        del self._queues[d]
        del self._procs[d]

    def _run_job(self, job: _Job):
        env, task, d = self.env, job.task, job.task.device_id
        try:
            if not self._admit(job):
                return
            self.log.add(env.now, d, "assign", task.step, units=task.units, detail=job.backend)
            # Download.
            if task.download_bytes > 0:
                seconds = self._transfer_seconds_one(d, task.download_bytes, "download")
                outcome = yield from self._active(job, "download", seconds)
                if outcome != _DONE:
                    self._end_without_delivery(job, outcome)
                    return
                job.bytes_down = int(task.download_bytes)
                self.log.add(env.now, d, "download", task.step, job.bytes_down, seconds)
            # Compute.
            outcome = yield from self._compute(job)
            if outcome == _GONE:
                self._end_without_delivery(job, _GONE)
                return
            if outcome == _LOST and not (task.deliver_partial and job.units_done > 0):
                self._end_without_delivery(job, _LOST)
                return
            if job.units_done == 0:
                self._end_without_delivery(job, _EXPIRED)
                return
            # Upload (after a "lose" interruption: once the device is back).
            yield from self._upload(job, resume_first=(outcome == _LOST))
        except simpy.Interrupt:
            phase = job.phase or "between phases"
            self._charge_partial_phase(job)
            self.log.add(env.now, d, "cancelled", task.step, units=job.units_done, detail=phase)
            job.units_lost += job.units_done - job.units_delivered
            self._finish(job, ReceiptStatus.CANCELLED)

    def _admit(self, job: _Job) -> bool:
        task, d, now = job.task, job.task.device_id, self.env.now
        if job.online_hint is None or job.hint_time != now:
            online, end = self.cursor.state(np.array([d], dtype=np.int64), now)
            job.online_hint, job.window_end = bool(online[0]), float(end[0])
        if not job.online_hint:
            self.log.add(now, d, "refuse_offline", task.step)
            self._finish(job, ReceiptStatus.REFUSED)
            return False
        available = int(self.table.usable_ram_bytes[d])
        if available < task.memory_bytes:
            self.log.add(
                now,
                d,
                "refuse_memory",
                task.step,
                detail=f"needed={int(task.memory_bytes)} available={available}",
            )
            self._finish(job, ReceiptStatus.REFUSED)
            return False
        job.backend = str(self._backend_array(task.kind)[d])
        unit_s = float(self._unit_array(task.kind, task.inferences_per_unit)[d])
        if job.backend not in self._compute_w or not np.isfinite(unit_s) or unit_s < 0:
            self.log.add(
                now,
                d,
                "refuse_backend",
                task.step,
                detail=f"backend={job.backend!r} unit_s={unit_s}",
            )
            self._finish(job, ReceiptStatus.REFUSED)
            return False
        self._last_backend[d] = _BACKEND_INDEX[job.backend]
        return True

    def _spend(self, job: _Job, phase: str, seconds: float) -> None:
        """Account ``seconds`` of active ``phase`` time to the job (the device's columns are
        updated once, when the task ends)."""
        if seconds <= 0:
            return
        d = job.task.device_id
        job.busy_s += seconds
        if phase == "compute":
            joules = self._compute_w[job.backend] * seconds
            job.compute_s += seconds
            job.compute_j += joules
        else:
            watts = self._up_radio_w[d] if phase == "upload" else self._down_radio_w[d]
            joules = float(watts) * seconds
            job.network_s += seconds
            job.radio_j += joules
        job.energy_j += joules

    def _charge_partial_phase(self, job: _Job) -> None:
        """On cancellation: account the part of the phase in progress that elapsed."""
        elapsed = self.env.now - job.phase_start
        if job.phase == "paused":
            job.interrupted_s += elapsed
        elif job.phase in ("download", "compute", "upload"):
            self._spend(job, job.phase, elapsed)
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
                self.log.add(
                    self.env.now,
                    job.task.device_id,
                    "compute",
                    job.task.step,
                    duration_s=finished_at,
                    units=finished,
                )
            if elapsed > finished_at:
                job.units_lost += 1
        job.phase = ""

    def _timeout_until(self, t: float) -> simpy.Timeout:
        """A timeout firing at exactly ``t`` (a window boundary or deadline): ``now + (t -
        now)`` can miss ``t`` by an ulp, which would put the event on the wrong side of a
        half-open boundary or of a server timer set for the same instant."""
        now = self.env.now
        delay = t - now
        for _ in range(4):
            if now + delay == t:
                break
            delay = float(np.nextafter(delay, np.inf if now + delay < t else -np.inf))
        return self.env.timeout(max(delay, 0.0))

    def _wait_online(self, job: _Job):
        """Suspend until the device's next window; False if it never comes back."""
        d, now = job.task.device_id, self.env.now
        back = self.cursor.next_start(d, now)
        if not np.isfinite(back):
            return False
        job.phase, job.phase_start = "paused", now
        yield self._timeout_until(back)
        job.phase = ""
        job.interrupted_s += back - now
        online, end = self.cursor.state(np.array([d], dtype=np.int64), self.env.now)
        job.window_end = float(end[0])
        self.log.add(self.env.now, d, "resumed", job.task.step, duration_s=back - now)
        return True

    def _active(self, job: _Job, phase: str, seconds: float):
        """Spend ``seconds`` of transfer time, honouring the availability window."""
        env, d = self.env, job.task.device_id
        remaining = seconds
        while remaining > 0:
            now = env.now
            if now + remaining <= job.window_end:
                job.phase, job.phase_start = phase, now
                yield env.timeout(remaining)
                job.phase = ""
                self._spend(job, phase, remaining)
                return _DONE
            run = job.window_end - now
            if run > 0:
                job.phase, job.phase_start = phase, now
                yield self._timeout_until(job.window_end)
                job.phase = ""
                self._spend(job, phase, run)
                remaining -= run
            self.log.add(env.now, d, "interrupted", job.task.step, duration_s=run, detail=phase)
            if self.config.interruption == "lose":
                job.wasted_s += seconds - remaining  # the lost transfer's elapsed time
                return _LOST
            back = yield from self._wait_online(job)
            if not back:
                return _GONE
        return _DONE

    def _unit_times(self, job: _Job) -> np.ndarray:
        """Nominal × noise seconds of every unit of the task (drawn once per task)."""
        task, d = job.task, job.task.device_id
        base = float(self._unit_array(task.kind, task.inferences_per_unit)[d])
        sigma = self.config.compute_noise_sigma
        if sigma <= 0 or task.units == 0:
            return np.full(task.units, base)
        key = (d, task.step)
        nth = self._tasks_per_step.get(key, 0)
        self._tasks_per_step[key] = nth + 1
        rng = stream(self.seed, "noise", "compute", d, task.step, nth)
        # Mean-one multiplier: the noise-free prediction is unbiased.
        return base * rng.lognormal(mean=-0.5 * sigma * sigma, sigma=sigma, size=task.units)

    def _thermal_adjust(self, d: int, now: float, times: np.ndarray, first_started: bool):
        """Slow the units that start after the device has been hot for ``onset_s``."""
        cfg = self.config.thermal
        if not cfg.enabled:
            return times
        last_end = self._load_end.get(d)
        if last_end is None or now - last_end >= cfg.cooldown_s:
            self._load_start[d] = now
        hot_at = self._load_start[d] + cfg.onset_s
        starts = now + np.concatenate(([0.0], np.cumsum(times)[:-1]))
        slow = starts >= hot_at
        if first_started:
            slow[0] = False  # the unit in progress keeps the speed it started with
        if slow.any():
            times = times.copy()
            times[slow] *= cfg.slowdown
        return times

    def _compute(self, job: _Job):
        env, task, d = self.env, job.task, job.task.device_id
        base_s = float(self._unit_array(task.kind, task.inferences_per_unit)[d])
        exact = self.config.compute_noise_sigma <= 0 and not self.config.thermal.enabled
        times = None if exact else self._unit_times(job)
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
                span = base_s * left
                if now + span <= min(job.window_end, deadline):
                    job.phase, job.phase_start = "compute", now
                    job.span_cum, job.span_unit_s = None, base_s
                    yield env.timeout(span)
                    job.phase = ""
                    self._spend(job, "compute", span)
                    job.units_done = task.units
                    self.log.add(env.now, d, "compute", task.step, duration_s=span, units=left)
                    return _DONE
                times = np.full(task.units, base_s)
            seg = times[job.units_done :].copy()
            if head_remaining is not None:
                seg[0] = head_remaining
            seg = self._thermal_adjust(d, now, seg, head_remaining is not None)
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
                self._spend(job, "compute", span)
                job.units_done += fit
                self._load_end[d] = env.now
                self.log.add(env.now, d, "compute", task.step, duration_s=span, units=fit)
                return _DONE
            span = limit - now
            if span > 0:
                job.phase, job.phase_start = "compute", now
                yield self._timeout_until(limit)
                job.phase = ""
                self._spend(job, "compute", span)
            self._load_end[d] = env.now
            job.units_done += fit
            into_unit = span - (float(cum[fit - 1]) if fit else 0.0)
            if fit:
                self.log.add(
                    env.now, d, "compute", task.step, duration_s=span - into_unit, units=fit
                )
            if deadline <= job.window_end:
                # The deadline cut the unit in progress: it is abandoned.
                job.wasted_s += into_unit
                if into_unit > 0:
                    self.log.add(
                        env.now,
                        d,
                        "lost_work",
                        task.step,
                        duration_s=into_unit,
                        units=1,
                        detail="deadline",
                    )
                    job.units_lost += 1
                return _EXPIRED
            self.log.add(env.now, d, "interrupted", task.step, duration_s=span, detail="compute")
            if self.config.interruption == "lose":
                job.wasted_s += into_unit
                if into_unit > 0:
                    job.units_lost += 1
                    self.log.add(
                        env.now,
                        d,
                        "lost_work",
                        task.step,
                        duration_s=into_unit,
                        units=1,
                        detail="compute",
                    )
                return _LOST
            head_remaining = float(seg[fit]) - into_unit
            back = yield from self._wait_online(job)
            if not back:
                return _GONE
        return _DONE

    def _upload(self, job: _Job, resume_first: bool):
        env, task, d = self.env, job.task, job.task.device_id
        payload = int(task.upload_bytes(job.units_done))
        seconds = self._transfer_seconds_one(d, payload, "upload")
        period = self.availability.period_s
        first_loss: Optional[float] = None
        while True:
            if resume_first:
                back = yield from self._wait_online(job)
                if not back:
                    self._end_without_delivery(job, _GONE)
                    return
            outcome = yield from self._active(job, "upload", seconds)
            if outcome == _DONE:
                break
            if outcome == _GONE or not task.deliver_partial:
                self._end_without_delivery(job, outcome)
                return
            # "lose": the upload is lost (its elapsed time counted as wasted by _active); the
            # units stay on the phone and go up again, whole payload, when the device is back.
            # On a repeating trace, a period of failed retries has tried every window: none
            # is long enough, and retrying for ever would hold the device (and the run).
            if first_loss is None:
                first_loss = env.now
            elif period and env.now - first_loss >= period:
                self._end_without_delivery(job, _LOST)
                return
            resume_first = True
        job.bytes_up = payload
        job.units_delivered = job.units_done
        self.log.add(env.now, d, "upload", task.step, payload, seconds, units=job.units_done)
        status = (
            ReceiptStatus.DELIVERED if job.units_delivered == task.units else ReceiptStatus.PARTIAL
        )
        self._finish(job, status)

    def _end_without_delivery(self, job: _Job, outcome: str) -> None:
        d, task = job.task.device_id, job.task
        undelivered = job.units_done - job.units_delivered
        if undelivered > 0:
            job.units_lost += undelivered
            self.log.add(self.env.now, d, "lost_work", task.step, units=undelivered, detail=outcome)
        status = ReceiptStatus.EXPIRED if outcome == _EXPIRED else ReceiptStatus.INTERRUPTED
        self._finish(job, status)

    def _finish(self, job: _Job, status: ReceiptStatus) -> None:
        d, task = job.task.device_id, job.task
        if job.units_delivered == 0:
            job.wasted_s = job.busy_s
        # Device columns are updated in bulk (numpy scalar updates cost more than the rest
        # of the bookkeeping); see _apply_ledger.
        self._ledger.append(
            (
                d,
                job.busy_s,
                job.compute_s,
                job.network_s,
                job.interrupted_s,
                job.wasted_s,
                job.compute_j,
                job.radio_j,
                job.units_delivered,
                job.units_lost,
                job.bytes_up,
                job.bytes_down,
            )
        )
        self._release(job)
        receipt = WorkReceipt(
            device_id=d,
            step=task.step,
            status=status,
            units_assigned=task.units,
            units_done=job.units_done,
            units_delivered=job.units_delivered,
            t_assigned=job.t_assigned,
            t_finished=self.env.now,
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
