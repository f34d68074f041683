"""Small fleets built directly from the trace contracts (no dependency on fleetsim.traces
models), with injectable per-unit times; shared by the fleet and protocol tests."""

from __future__ import annotations

from typing import Optional

import numpy as np
import simpy

from fleetsim.fleet.config import FleetConfig
from fleetsim.fleet.fleet import Fleet
from fleetsim.numerics.base import ModelFacts
from fleetsim.record.events import EventLog
from fleetsim.traces.base import AvailabilityTrace, DeviceTable, IntervalAvailability

FACTS = ModelFacts(
    name="test-model",
    n_params=1_000_000,
    trainable_params=450_340,
    n_layers=2,
    hidden_size=64,
    flops_per_token=2e6,
    seq_len=128,
    batch_size=8,
)


def make_table(
    n: int,
    uplink_bps: float | np.ndarray = 8.0,
    downlink_bps: float | np.ndarray = 8.0,
    usable_ram: int | np.ndarray = 4 << 30,
    network_types: Optional[list[str]] = None,
    network_type_index: Optional[np.ndarray] = None,
) -> DeviceTable:
    network_types = network_types or ["wifi"]
    return DeviceTable(
        phone_model_index=np.zeros(n, dtype=np.int32),
        phone_models=["Test Phone"],
        ram_bytes=np.full(n, 8 << 30, dtype=np.int64),
        usable_ram_bytes=np.broadcast_to(np.asarray(usable_ram, dtype=np.int64), (n,)).copy(),
        network_type_index=(
            np.zeros(n, dtype=np.int16) if network_type_index is None else network_type_index
        ),
        network_types=network_types,
        uplink_bps=np.broadcast_to(np.asarray(uplink_bps, dtype=np.float64), (n,)).copy(),
        downlink_bps=np.broadcast_to(np.asarray(downlink_bps, dtype=np.float64), (n,)).copy(),
        ref_forward_s={"cpu": np.ones(n)},
        source="test",
    )


def intervals(per_device: list[list[tuple[float, float]]], period_s=None) -> IntervalAvailability:
    offsets = np.zeros(len(per_device) + 1, dtype=np.int64)
    offsets[1:] = np.cumsum([len(w) for w in per_device])
    starts = np.array([s for w in per_device for s, _ in w], dtype=np.float64)
    ends = np.array([e for w in per_device for _, e in w], dtype=np.float64)
    return IntervalAvailability(offsets, starts, ends, period_s=period_s)


def constant_unit_seconds(seconds: float | np.ndarray):
    """A unit-time function: ``seconds`` per unit (per device when an array)."""

    def unit_seconds(table, device_ids, backends, facts, kind, inferences_per_unit):
        values = np.broadcast_to(np.asarray(seconds, dtype=np.float64), (len(table),))
        return values[np.asarray(device_ids)]

    return unit_seconds


def cpu_backend(table, device_ids, kind, preference="auto"):
    return np.full(len(device_ids), "cpu", dtype=object)


def make_fleet(
    table: DeviceTable,
    availability: AvailabilityTrace,
    unit_s: float | np.ndarray = 0.5,
    seed: int = 0,
    env: Optional[simpy.Environment] = None,
    **config,
) -> tuple[simpy.Environment, Fleet, EventLog]:
    env = env or simpy.Environment()
    log = EventLog()
    cfg = FleetConfig(size=len(table), **config)
    fleet = Fleet(
        env,
        table,
        availability,
        cfg,
        seed,
        log,
        FACTS,
        unit_seconds_fn=constant_unit_seconds(unit_s),
        choose_backend_fn=cpu_backend,
    )
    return env, fleet, log


def run_task(env: simpy.Environment, fleet: Fleet, task, at: float = 0.0):
    """Dispatch ``task`` at simulated time ``at``, run to the end, return the receipt."""
    box = {}

    def server():
        if at > env.now:
            yield env.timeout(at - env.now)
        box["receipt"] = yield fleet.dispatch(task)

    env.process(server())
    env.run()
    return box["receipt"]


def kinds(log: EventLog) -> list[str]:
    return list(log.to_frame()["kind"])
