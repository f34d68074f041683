"""What a device's life needs from the fleet, one floor below both: the per-device state
(:class:`DeviceState`: clock, device table, availability cursor, power figures, ledger,
event log, thermal and noise bookkeeping), the unit-time and transfer-time helpers every
phase charges with, and :class:`Job`, one task on its way through a device.

:class:`~fleetsim.fleet.fleet.Fleet` (dispatch, cancel, queries for the server) is a
:class:`DeviceState`; :mod:`fleetsim.fleet.lifecycle` (download → compute → upload)
reads and writes only what is here, so neither module imports the other.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Optional

import numpy as np
import simpy

from fleetsim.errors import FleetsimInputError
from fleetsim.fleet.config import FleetConfig
from fleetsim.fleet.energy import PowerTable
from fleetsim.fleet.ledger import DeviceLedger
from fleetsim.fleet.work import Task, TaskKind
from fleetsim.record.events import EventLog
from fleetsim.traces.base import AvailabilityTrace, DeviceTable
from fleetsim.traces.window_cursor import AvailabilityCursor
from fleetsim.workload import BACKENDS, ModelFacts

#: ``(table, device_ids, backends, facts, kind, inferences_per_unit) -> seconds per unit``
UnitSecondsFn = Callable[..., np.ndarray]
#: ``(table, device_ids, kind, preference) -> backend name per device``
ChooseBackendFn = Callable[..., np.ndarray]

def _default_unit_seconds(*args, **kwargs) -> np.ndarray:
    from fleetsim.traces import latency  # lazily: the traces package is optional for tests

    return latency.unit_seconds(*args, **kwargs)


def _default_choose_backend(*args, **kwargs) -> np.ndarray:
    from fleetsim.traces import latency

    return latency.choose_backend(*args, **kwargs)



@dataclass(slots=True)
class Job:
    """One task on its way through a device: its phase, progress and accounting so far."""

    task: Task
    event: simpy.Event
    seq: int  # dispatch call index: only breaks ties between tasks of one (device, step)
    t_assigned: float
    cancelled: bool = False
    released: bool = False  # no longer counted busy (finished, or cancelled by the server)
    backend: str = ""
    unit_s: float = 0.0  # nominal seconds per unit on this device (set on admission)
    window_end: float = 0.0  # end of the device's current availability window
    online_hint: Optional[bool] = None  # availability looked up in the dispatch batch...
    hint_time: float = -np.inf  # ...at this time (used only if the task starts then)
    # What admission and the timer path read per device, looked up for the whole dispatch
    # batch (admission.look_up_batch): usable RAM bytes, backend, nominal seconds per unit,
    # setup seconds, download seconds, upload seconds, upload bytes, download and upload
    # radio watts.  Time-independent.
    device_facts: Optional[tuple] = field(default=None, repr=False)
    # The batch's verdict at hint_time: (t1, t2, t3, compute span) when the task will be
    # admitted and run straight through on one timer, else None (admission._start_plans).
    start_plan: Optional[tuple] = field(default=None, repr=False)
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
    # A task run on one timer (timer_path.begin_on_timer): its phase ends (t0, t1, t2, t3),
    # phase seconds (download, compute, upload) and upload bytes, and how many of its
    # phases have been applied to the accounting so far.
    timer_plan: Optional[tuple] = field(default=None, repr=False)
    phases_applied: int = 0
    ended: bool = False  # the receipt has been sent (task_end.finish)


class DeviceState:
    """Every device's state on one SimPy environment, with the cached per-device lookups
    (backend, seconds per unit, transfer seconds) the lifecycle charges with.

    ``unit_seconds_fn`` / ``choose_backend_fn`` default to
    ``fleetsim.traces.latency.unit_seconds`` / ``choose_backend`` (imported lazily)."""

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
        # Compute times are the nominal ones (no noise draw, no thermal slow-down): the
        # lifecycle may plan a task's phases at its start.
        self.exact_compute = config.compute_noise_sigma <= 0 and not config.thermal.enabled

        up_j, down_j, base_w = self.power.radio_arrays(list(table.network_types))
        net = np.asarray(table.network_type_index, dtype=np.int64)
        # Huang et al. model: radio power while transferring = alpha × throughput + beta,
        # i.e. J per byte × bytes per second + base watts, per device and direction.
        self.up_radio_watts = up_j[net] * (table.uplink_bps / 8.0) + base_w[net]
        self.down_radio_watts = down_j[net] * (table.downlink_bps / 8.0) + base_w[net]
        # The per-byte term alone, for bytes moved in no simulated time (fleet.transfers
        # uplink_only / none, an infinite link): the energy follows the bytes, not the clock.
        self.up_radio_j_per_byte = up_j[net]
        self.down_radio_j_per_byte = down_j[net]
        self.compute_watts = {b: self.power.compute_watts(b) for b in BACKENDS}
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

        self.ledger = DeviceLedger(n)
        # Tasks held per device (queued, running or about to start); a task withdrawn by
        # the server stops counting at once (see cancel).
        self._busy_count = np.zeros(n, dtype=np.int32)
        # Changes not yet added to it (a list append per task instead of a numpy scalar
        # update, issue 25's profile): devices that took a task, devices that released one.
        # busy_counts() folds them in before any read.
        self._taken: list[int] = []
        self._released: list[int] = []
        self.tasks_per_step: dict[tuple[int, int], int] = {}
        # Thermal state, only for devices that computed: start of the current sustained load
        # and end of the last compute span.
        self.load_start: dict[int, float] = {}
        self.load_end: dict[int, float] = {}
        # Keyed both by the normalised kind name and by the key as the caller gave it.
        self._backend_cache: dict = {}
        self._unit_cache: dict = {}

    @property
    def num_devices(self) -> int:
        return len(self.table)

    def setup_seconds(self, task: Task) -> float:
        """Nominal seconds of ``task``'s setup forwards on its device (0 when none)."""
        if task.setup_inferences <= 0:
            return 0.0
        return float(self.unit_array(task.kind, task.setup_inferences)[task.device_id])

    def release(self, job: Job) -> None:
        if not job.released:
            job.released = True
            self._released.append(job.task.device_id)

    def busy_counts(self) -> np.ndarray:
        """Tasks each device holds now (queued, running or dispatched this instant; a task
        the server withdrew stops counting at once): shape ``(n,)``."""
        # np.add.at with an array of ones, not the scalar 1: numpy's fast path (~20x).
        if self._taken:
            np.add.at(self._busy_count, np.array(self._taken, dtype=np.int64),
                      np.ones(len(self._taken), dtype=np.int32))
            self._taken = []
        if self._released:
            np.subtract.at(self._busy_count, np.array(self._released, dtype=np.int64),
                           np.ones(len(self._released), dtype=np.int32))
            self._released = []
        return self._busy_count

    # ------------------------------------------------------------------ lookups (cached)

    def backend_array(self, kind: TaskKind) -> np.ndarray:
        # Looked up per task: the key as given first (a dict hit, no enum property access).
        cached = self._backend_cache.get(kind)
        if cached is not None:
            return cached
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
        self._backend_cache[kind] = cached
        return cached

    def unit_array(self, kind: TaskKind, inferences_per_unit: float) -> np.ndarray:
        cached = self._unit_cache.get((kind, inferences_per_unit))
        if cached is not None:
            return cached
        kind_name = kind.value if isinstance(kind, TaskKind) else TaskKind(kind).value
        key = (kind_name, float(inferences_per_unit))
        cached = self._unit_cache.get(key)
        if cached is None:
            backends = self.backend_array(kind)
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
        self._unit_cache[(kind, inferences_per_unit)] = cached
        return cached

    def transfer_seconds(
        self, ids: np.ndarray, payload: int | np.ndarray, direction: str
    ) -> np.ndarray:
        """Seconds to move ``payload`` bytes (one for all, or one per device) to or from
        each device as configured (``direction``: ``"download"`` | ``"upload"``): the
        element-wise twin of :meth:`transfer_seconds_one`."""
        mode = self.config.transfers
        if mode == "none" or (mode == "uplink_only" and direction == "download"):
            return np.zeros(len(ids))
        payload = np.broadcast_to(np.asarray(payload, dtype=np.float64), (len(ids),))
        bps = self.table.uplink_bps if direction == "upload" else self.table.downlink_bps
        rate = bps[ids]
        with np.errstate(divide="ignore", invalid="ignore"):
            seconds = np.where(rate > 0, payload * 8.0 / rate, np.inf)
        return np.where(payload > 0, seconds, 0.0)

    def transfer_seconds_one(self, d: int, payload: int, direction: str) -> float:
        mode = self.config.transfers
        if payload <= 0 or mode == "none" or (mode == "uplink_only" and direction == "download"):
            return 0.0
        bps = self.table.uplink_bps if direction == "upload" else self.table.downlink_bps
        return payload * 8.0 / float(bps[d])

