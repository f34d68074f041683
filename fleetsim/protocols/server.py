"""The server's step machinery, shared by every protocol (Flower's ``Server`` to the
protocol's ``Strategy``).

:class:`StepServer` owns the server's state on the SimPy clock (committed steps,
rounds, work carried past a commit, which θ each device holds) and does what every
protocol needs done the same way: pick eligible devices (online, not busy with
carried work, RAM that holds the job: refusals logged once), select a cohort, build
the :class:`~fleetsim.policies.base.FleetView` a policy sees, dispatch an allocation
and wait per the commit rule (barrier, deadline, quorum; late work dropped or
carried), turn receipts into numerics work at their own step (staleness), record
step rows and evaluations.  What differs between protocols (what a device is asked,
how estimates are aggregated, the payloads, the round loop) is the
:class:`~fleetsim.protocols.base.Protocol`'s, called through its hooks.

It knows the fleet only through :class:`~fleetsim.fleet.fleet.Fleet`'s small API,
the numerics only through :class:`~fleetsim.numerics.base.NumericsEngine`, and load
allocation only through :class:`~fleetsim.policies.base.AllocationPolicy`; it never
reads trace files and never imports torch.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Generator
from dataclasses import dataclass, field
from typing import Any, Optional

import numpy as np

from fleetsim.fleet.work import Task, TaskKind, WorkReceipt
from fleetsim.numerics_api import EvalResult, NumericsEngine
from fleetsim.policies.base import (
    Allocation,
    AllocationPolicy,
    CohortSelector,
    FleetView,
)
from fleetsim.protocols import payload
from fleetsim.protocols.base import Protocol
from fleetsim.protocols.carried import CarriedWork
from fleetsim.protocols.config import ProtocolConfig
from fleetsim.protocols.model_sync import FP32, SEED_RECORD_BYTES, ModelSync
from fleetsim.protocols.schedule import RunSchedule
from fleetsim.protocols.step_rows import StepOutcome, StepRecords
from fleetsim.record.recorder import Recorder
from fleetsim.rng import stream

__all__ = ["SEED_RECORD_BYTES", "ServerContext", "StepOutcome", "StepServer"]


@dataclass
class ServerContext:
    """Everything the server needs, built by the runner."""

    env: Any  # simpy.Environment
    fleet: Any  # fleetsim.fleet.fleet.Fleet
    engine: NumericsEngine
    policy: AllocationPolicy
    cohort: CohortSelector
    config: ProtocolConfig
    recorder: Recorder
    seed: int
    memory_bytes: dict[TaskKind, int]
    max_sim_seconds: float = math.inf
    overcommit_factor: float = 1.0
    on_step: Optional[Callable[[dict], None]] = None  # progress callback
    stop_requested: Callable[[], bool] = field(default=lambda: False)
    # run.stop_at_target: stop once an evaluation reaches this accuracy (inf: never), read
    # on the validation split when run.stop_split is "validation"
    stop_accuracy: float = math.inf
    stop_on_validation: bool = False


class StepServer(RunSchedule, CarriedWork, StepRecords):
    """The server of one run: its state and step machinery, driving one protocol."""

    #: set when the protocol's loop ended early on its own (e.g. "no_devices_online")
    gave_up: Optional[str] = None

    def __init__(self, ctx: ServerContext, protocol: Protocol) -> None:
        self.ctx = ctx
        self.cfg = ctx.config
        self.protocol = protocol
        self.step = 0  # committed steps so far
        self.round = 0
        self.last_eval: Optional[EvalResult] = None
        # the evaluation of the model before the first step (t = 0); None: systems-only
        self.initial_evaluation: Optional[EvalResult] = None
        self.stopped_at_target = False  # finished() returned True for run.stop_at_target
        # (device, step, pending dispatch event) carried past a commit
        self._carried: list[tuple[int, int, Any]] = []
        # step -> device -> next perturbation index (steps that can still receive work)
        self._next_k: dict[int, dict[int, int]] = {}
        self.history: list[tuple[float, int]] = []
        # Devices whose memory refusal was logged (bool per device, made on first use).
        self._refused: Optional[np.ndarray] = None
        self._eligible: Optional[np.ndarray] = None
        self.sync = ModelSync(ctx.fleet.num_devices)  # which θ each device holds
        # (units, staleness) of the receipts turned into work since the last step row.
        self._used_staleness: list[tuple[int, int]] = []
        # (step, when its first attempt was dispatched): the start of the step's wall time
        self._step_start: tuple[int, float] = (-1, 0.0)
        if self.cfg.commit.late_work == "carry":
            ctx.engine.retain_steps(self.cfg.commit.max_staleness)
        protocol.check(self)
        self._plan: Optional[tuple[Optional[int], str]] = None
        if self.cfg.lr_schedule == "linear":
            self.planned_steps()  # refuse an unknowable schedule before the clock starts

    # ------------------------------------------------------------------ the process
    def run(self) -> Generator:
        """The server's SimPy process: the protocol's loop, then what every run does at
        its end (withdraw carried work; evaluate the final model when the run stopped
        between evaluations)."""
        if self.cfg.eval_every_s and not self.engine.systems_only:
            self.env.process(self._evaluation_grid(float(self.cfg.eval_every_s)))
        elif not self.engine.systems_only:
            self._evaluate_initial_model()
        yield from self.protocol.run(self)
        self.drop_carried()
        rows = self.ctx.recorder.step_rows
        if (rows and not self.engine.systems_only and not self.cfg.eval_every_s
                and math.isnan(rows[-1]["accuracy"])):
            self.ctx.recorder.attach_evaluation(self.evaluate())

    # ------------------------------------------------------------------ the protocol's hooks
    @property
    def task_kind(self) -> TaskKind:
        return self.protocol.task_kind

    def inferences_per_unit(self) -> float:
        return self.protocol.inferences_per_unit()

    def setup_inferences_per_task(self) -> float:
        return self.protocol.setup_inferences_per_task()

    def download_payload(self, device_ids: np.ndarray) -> np.ndarray:
        return self.protocol.download_payload(self, np.asarray(device_ids, dtype=np.int64))

    def upload_fn(self) -> Callable[[int], int]:
        return self.protocol.upload_fn(self)

    def dense_upload(self) -> Callable[[int], int]:
        """:func:`fleetsim.protocols.payload.dense_upload`."""
        return payload.dense_upload(self)

    @staticmethod
    def seed_upload() -> Callable[[int], int]:
        """:func:`fleetsim.protocols.payload.seed_upload`."""
        return payload.seed_upload()

    def state(self) -> dict:
        """Protocol state for checkpoints (SimPy processes themselves are not stored)."""
        return {"step": self.step, "round": self.round, "history": list(self.history)}

    # ------------------------------------------------------------------ helpers
    @property
    def env(self):
        return self.ctx.env

    @property
    def fleet(self):
        return self.ctx.fleet

    @property
    def engine(self) -> NumericsEngine:
        return self.ctx.engine

    def client_of(self, device_id: int) -> int:
        return int(device_id) % self.engine.num_clients()

    def trainable_bytes(self) -> int:
        return int(self.engine.facts().trainable_params) * FP32

    # ------------------------------------------------------------------ payload rules
    # Written once; each protocol's download_payload / upload_fn picks among them.

    def dense_download(self, device_ids: np.ndarray) -> np.ndarray:
        """:func:`fleetsim.protocols.payload.dense_download`."""
        return payload.dense_download(self, device_ids)

    def seed_download(self, device_ids: np.ndarray) -> np.ndarray:
        """:func:`fleetsim.protocols.payload.seed_download`."""
        return payload.seed_download(self, device_ids)

    def download_bytes(self) -> int:
        """The download of a device that holds θ of the previous step (none before the first
        step): what feasibility checks assume for a typical device."""
        held = int(self.sync.held[0])
        self.sync.held[0] = self.step - 1
        try:
            return int(self.download_payload(np.zeros(1, dtype=np.int64))[0])
        finally:
            self.sync.held[0] = held

    def note_commit(self, pairs: int) -> None:
        """The current step committed an update of ``pairs`` (seed, scalar) pairs (the
        estimate's perturbations): what a lagging device replays later."""
        self.sync.note_commit(self.step, pairs)

    def view(self, device_ids: np.ndarray, purpose: str) -> FleetView:
        """Predictions a policy may use, for ``device_ids`` at the current time."""
        ids = np.asarray(device_ids, dtype=np.int64)
        fleet = self.fleet
        kind = self.task_kind
        return FleetView(
            now=float(self.env.now),
            device_ids=ids,
            unit_seconds=fleet.predict_unit_seconds(ids, kind, self.inferences_per_unit()),
            transfer_seconds=fleet.predict_transfer_seconds(
                ids, self.download_payload(ids), self.upload_fn()(1)
            ),
            setup_seconds=fleet.predict_setup_seconds(ids, kind,
                                                      self.setup_inferences_per_task()),
            window_end=fleet.window_end(ids),
            rng=stream(self.ctx.seed, "policy", purpose, self.round, self.step),
        )

    def candidates(self) -> np.ndarray:
        """Devices online now, not busy with carried work, and able to hold the job
        (ascending ids).

        The server knows each phone's RAM: a device that cannot hold the job is
        never assigned it; its refusal is logged once (needed vs available bytes)."""
        idle = self.fleet.idle_mask()
        need = int(self.ctx.memory_bytes.get(self.task_kind, 0))
        if not need:
            return np.flatnonzero(idle)
        fits = self.fleet.fits_mask(need)
        if self._refused is None:
            self._refused = np.zeros(self.fleet.num_devices, dtype=bool)
        # One pass over the fleet for the devices to log (a million-phone fleet: no set
        # lookups per unfit device and round).
        fresh = np.flatnonzero(idle & ~fits & ~self._refused)
        if len(fresh):
            self._log_memory_refusals(fresh, need)
        return np.flatnonzero(idle & fits)

    def _log_memory_refusals(self, ids: np.ndarray, need: int) -> None:
        self._refused[ids] = True
        usable = self.fleet.table.usable_ram_bytes
        for d in ids.tolist():
            self.ctx.recorder.events.add(
                self.env.now, d, "refuse_memory", step=self.step,
                detail=f"needed={need} available={int(usable[d])} kind={self.task_kind.value}",
            )

    def select_cohort(self, size: int, expected_round_s: float) -> Generator:
        """Pick a round's cohort among online devices, waiting while none is online."""
        while True:
            ids = self.candidates()
            if len(ids):
                view = self.view(ids, "cohort")
                return self.ctx.cohort.select(view, size, expected_round_s)
            wait = self._seconds_until_someone_online()
            if not math.isfinite(wait) or self.env.now + wait > self.ctx.max_sim_seconds:
                return np.zeros(0, dtype=np.int64)
            yield self.env.timeout(wait)

    def eligible_ids(self) -> np.ndarray:
        """Devices whose RAM can hold this protocol's job (static; cached)."""
        if self._eligible is None:
            ids = np.arange(self.fleet.num_devices, dtype=np.int64)
            need = int(self.ctx.memory_bytes.get(self.task_kind, 0))
            self._eligible = ids[self.fleet.can_hold(ids, need)] if need else ids
        return self._eligible

    def _seconds_until_someone_online(self) -> float:
        # One vectorised query over the eligible fleet (cheap even at a million devices).
        ids = self.eligible_ids()
        if len(ids) == 0:
            return math.inf
        starts = self.fleet.availability.next_start(ids, float(self.env.now))
        nxt = float(starts.min())
        if not math.isfinite(nxt):
            return math.inf
        # Someone eligible is online but busy with carried work: poll at a coarse interval.
        return nxt - float(self.env.now) if nxt > self.env.now else 1.0

    def perturbation_indices(
        self, device_id: int, units: int, step: Optional[int] = None
    ) -> tuple[int, ...]:
        """The next ``units`` perturbation indices of ``device_id`` for ``step`` (default:
        the current step); variance repeats of a step get fresh indices.  Counters of steps
        more than ``protocol.commit.max_staleness`` behind the current step are released;
        asking for such a step raises ValueError (its work is dropped as stale first)."""
        s = self.step if step is None else int(step)
        # Work of a step more than max_staleness steps old is dropped before it gets here
        # (to_work), so that step's counters can never be asked again: forget them, so
        # this state stays bounded by max_staleness + 1 steps' devices over a long run.
        floor = self.step - int(self.cfg.commit.max_staleness)
        if s < floor:
            raise ValueError(f"perturbation indices of step {s} asked at step {self.step}: "
                             "older than protocol.commit.max_staleness, its work is dropped")
        if self._next_k and min(self._next_k) < floor:
            for old in [k for k in self._next_k if k < floor]:
                del self._next_k[old]
        per_device = self._next_k.setdefault(s, {})
        k0 = per_device.get(int(device_id), 0)
        per_device[int(device_id)] = k0 + int(units)
        return tuple(range(k0, k0 + int(units)))

    # ------------------------------------------------------------------ one step
    def execute(
        self, allocation: Allocation, batch_index: int, attempt: int, units_label: str = ""
    ) -> Generator:
        """Dispatch the allocation, wait per the commit rule, return a StepOutcome."""
        env = self.env
        commit = self.cfg.commit
        started = float(env.now)
        if self._step_start[0] != self.step:
            self._step_start = (self.step, started)
        events: dict[int, Any] = {}
        upload = self.upload_fn()
        downloads = self.download_payload(allocation.device_ids)
        deadline_rel = allocation.deadline_s or commit.deadline_s
        if commit.mode == "barrier" and allocation.deadline_s is None:
            deadline_rel = None
        for dev, units, down in zip(
            allocation.device_ids.tolist(), allocation.quotas.tolist(), downloads.tolist()
        ):
            if units <= 0:
                continue
            task = Task(
                step=self.step,
                device_id=int(dev),
                units=int(units),
                kind=self.task_kind,
                download_bytes=int(down),
                upload_bytes=upload,
                inferences_per_unit=self.inferences_per_unit(),
                setup_inferences=self.setup_inferences_per_task(),
                memory_bytes=self.ctx.memory_bytes.get(self.task_kind, 0),
                # Devices cut their compute only when the policy planned for a deadline;
                # a commit deadline alone leaves late work to the late_work rule.
                deadline_s=None if allocation.deadline_s is None
                else started + allocation.deadline_s,
                tags={"batch_index": batch_index, "attempt": attempt},
            )
            events[int(dev)] = self.fleet.dispatch(task)
        assigned = int(sum(int(q) for q in allocation.quotas.tolist() if q > 0))
        need = allocation.commit_units
        if commit.mode == "quorum":
            q = int(math.ceil(commit.quorum_fraction * assigned))
            need = q if need is None else min(need, q)
        receipts: list[WorkReceipt] = []
        pending = dict(events)
        timer = env.timeout(deadline_rel) if deadline_rel is not None else None
        # One shared wake-up event instead of an AnyOf over every pending task per arrival
        # (that was quadratic in the cohort: 1,000 devices meant 1,000 AnyOfs of 1,000).
        wake = env.event()
        tally = {"left": len(pending), "units": 0}

        def arrived(ev: Any) -> None:
            tally["left"] -= 1
            tally["units"] += ev.value.units_delivered if ev.ok else 0
            enough = need is not None and tally["units"] >= need
            if not wake.triggered and (tally["left"] == 0 or enough):
                wake.succeed()

        for ev in pending.values():
            if ev.callbacks is None:  # already processed
                arrived(ev)
            else:
                ev.callbacks.append(arrived)

        # Carried work is used in this step's estimate, so its units count towards the
        # commit rule as they arrive (FedBuff commits once K updates are buffered, stale or
        # not); otherwise a step whose stragglers are carried turns into a barrier over the
        # devices left, and over-commit loses its margin.
        def carried_arrived(ev: Any) -> None:
            tally["units"] += ev.value.units_delivered if ev.ok else 0
            if not wake.triggered and need is not None and tally["units"] >= need:
                wake.succeed()

        if need is not None:
            for _, step, ev in self._carried:
                if not self._usable_staleness(self.step - step):
                    continue
                if ev.callbacks is None:
                    carried_arrived(ev)
                else:
                    ev.callbacks.append(carried_arrived)
        if pending:
            yield env.any_of([wake] + ([timer] if timer is not None else []))
        for dev in sorted(pending):
            ev = pending[dev]
            if ev.triggered:
                receipts.append(ev.value)
                del pending[dev]
        late: list[WorkReceipt] = []
        # Work carried from earlier steps that arrived meanwhile; work still in flight that
        # is already older than max_staleness could never be used: withdraw it.
        still = []
        for item in self._carried:
            dev, step, ev = item
            if ev.triggered:
                late.append(ev.value)
            elif self.step - step >= commit.max_staleness:
                self.fleet.cancel(dev, step)
                self.ctx.recorder.events.add(env.now, dev, "dropped", step=step, detail="stale")
            else:
                still.append(item)
        self._carried = still
        for dev in sorted(pending):
            if commit.late_work == "carry" and commit.max_staleness > 0:
                self._carried.append((dev, self.step, pending[dev]))
            else:
                self.fleet.cancel(dev, self.step)
                self.ctx.recorder.events.add(env.now, dev, "dropped", step=self.step)
        self.sync.note_downloads(receipts + late)
        return StepOutcome(receipts, late, started, float(env.now), assigned)
