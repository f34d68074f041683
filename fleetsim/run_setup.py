"""A run's set-up, before the clock starts: the data plan (one pass), the numerics engine,
the checks that need the data or the built fleet, and the fleet, protocol and memory needs
(:class:`BuiltRun`) that ``run`` and ``validate`` share.  :mod:`fleetsim.runner` drives the
built run; it re-exports these names.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import simpy

from fleetsim.cost_model import charge_engine
from fleetsim.errors import InfeasibleRunError
from fleetsim.fleet.energy import PowerTable
from fleetsim.fleet.fleet import Fleet
from fleetsim.fleet.work import TaskKind
from fleetsim.policies.registry import make_cohort_selector, make_policy, policy_class
from fleetsim.protocols.registry import make_server, protocol_class
from fleetsim.protocols.server import ServerContext, StepServer
from fleetsim.record.recorder import Recorder
from fleetsim.scenario.loader import LoadedScenario
from fleetsim.traces import build_devices
from fleetsim.traces.base import AvailabilityTrace, DeviceTable
from fleetsim.traces.memory import job_memory_bytes
from fleetsim.traces.shift import shift_start


def data_plan_for(loaded: LoadedScenario, systems_only: Optional[bool] = None):
    """The run's data plan in one pass (:func:`fleetsim.numerics.data.build_data_plan`):
    the dataset loaded, split and partitioned once, after :func:`check_data`'s check
    (runs that compute gradients refuse clients without examples).  ``systems_only``
    (default: ``numerics.engine`` is none): only the batch counts are built."""
    from fleetsim.numerics.data import build_data_plan

    sc = loaded.scenario
    if systems_only is None:
        systems_only = sc.numerics.engine == "none"
    return build_data_plan(
        sc.data, sc.fleet.size, sc.run.seed, loaded.base_dir, with_batches=not systems_only,
        check_clients=sc.numerics.engine != "none",
    )


def build_engine_for(loaded: LoadedScenario, plan=None):
    """The numerics engine of a scenario (systems-only when numerics.engine is none);
    ``plan``: the run's data plan (:func:`data_plan_for`), else the engine builds it."""
    from fleetsim.numerics.engine import build_engine

    sc = loaded.scenario
    return build_engine(
        sc.model, sc.peft, sc.data, sc.numerics, n_clients=sc.fleet.size, seed=sc.run.seed,
        base_dir=loaded.base_dir, plan=plan,
    )


def check_feasible(
    loaded: LoadedScenario, fleet: Fleet, protocol: StepServer, memory_bytes: int
) -> None:
    """Contradictions that show only once the fleet is built: exit 2 before simulating."""
    import numpy as np

    sc = loaded.scenario
    ids = np.arange(fleet.num_devices, dtype=np.int64)
    fits = fleet.can_hold(ids, memory_bytes)
    if not fits.any():
        best = int(np.max(fleet.table.usable_ram_bytes))
        # the phones are charged for fleet.cost_model when there is one: name that model
        cost = sc.fleet.cost_model
        charged = (f"{cost.name_or_path} ({cost.dtype}; fleet.cost_model)" if cost is not None
                   else sc.model.name_or_path)
        raise InfeasibleRunError(
            f"{loaded.path}: traces: no device can hold the job: {protocol.task_kind.value} of "
            f"{charged} needs {memory_bytes / 2**20:.0f} MiB, the largest usable "
            f"RAM in the fleet is {best / 2**20:.0f} MiB (traces.usable_ram_fraction="
            f"{sc.traces.usable_ram_fraction}); use a smaller model/PEFT/batch or another "
            "population"
        )
    policy = policy_class(sc.policy.name)
    deadline = policy.planning_deadline(sc.policy, sc.protocol.commit.deadline_s)
    if deadline is not None:
        held = ids[fits]
        one_unit = fleet.predict_unit_seconds(
            held, protocol.task_kind, protocol.inferences_per_unit()
        ) + fleet.predict_setup_seconds(
            held, protocol.task_kind, protocol.setup_inferences_per_task()
        ) + fleet.predict_transfer_seconds(held, protocol.download_bytes(), protocol.upload_fn()(1))
        fastest = float(np.min(one_unit))
        if fastest > deadline:
            key = ("protocol.commit.deadline_s" if deadline == sc.protocol.commit.deadline_s
                   else "policy.deadline_s")
            raise InfeasibleRunError(
                f"{loaded.path}: {key}: no device can meet the deadline of {deadline:g} s: the "
                f"fastest device needs {fastest:.3g} s for one unit with its transfers"
            )


def check_data(loaded: LoadedScenario) -> None:
    """Exit 2 before simulating when gradients are computed and the training set has
    fewer examples than the fleet has clients (some would hold none).  Systems-only
    runs (numerics.engine: none) compute nothing and accept empty clients."""
    sc = loaded.scenario
    if sc.numerics.engine == "none":
        return
    from fleetsim.numerics.partition import check_examples_per_client

    check_examples_per_client(sc.data, sc.fleet.size, sc.run.seed, loaded.base_dir)


@dataclass
class BuiltRun:
    """Everything :func:`build_run` assembles before the clock starts."""

    env: simpy.Environment
    table: DeviceTable
    availability: AvailabilityTrace
    fleet: Fleet
    protocol: object
    facts: object
    memory: dict
    horizon_s: float


def build_run(
    loaded: LoadedScenario,
    engine,
    recorder: Recorder,
    on_step: Optional[Callable[[dict], None]] = None,
    stop_requested: Optional[Callable[[], bool]] = None,
) -> BuiltRun:
    """Fleet (device table + availability from the scenario's trace files), protocol
    and memory needs of a run, then :func:`check_feasible`: what ``run`` does before
    the clock starts, shared with ``validate``.  Raises FleetsimInputError."""
    sc = loaded.scenario
    engine = charge_engine(sc, engine, loaded.base_dir)  # fleet.cost_model, if any
    facts = engine.facts()
    horizon_s = sc.run.max_sim_hours * 3600.0
    start_s = sc.run.start_hour * 3600.0  # run.start_hour: time of day at simulated time 0
    table, availability = build_devices(
        sc.traces, sc.fleet.size, sc.run.seed, horizon_s + start_s, loaded.base_dir
    )
    availability = shift_start(availability, sc.run.start_hour)
    env = simpy.Environment()
    fleet = Fleet(env, table, availability, sc.fleet, sc.run.seed, recorder.events, facts,
                  power=PowerTable.load(sc.fleet.energy, loaded.base_dir))
    # the PEFT's layout travels in facts.peft (activations from its lowest trainable layer
    # up); how a phone computes a forward-gradient unit is the protocol's phone_estimator
    memory = {
        TaskKind.FORWARD_GRADIENT: job_memory_bytes(
            facts, "forward_gradient", sc.protocol.phone_estimator),
        TaskKind.BACKPROP: job_memory_bytes(facts, "backprop"),
    }
    ctx = ServerContext(
        env=env,
        fleet=fleet,
        engine=engine,
        policy=make_policy(sc.policy),
        cohort=make_cohort_selector(sc.policy),
        config=sc.protocol,
        recorder=recorder,
        seed=sc.run.seed,
        memory_bytes=memory,
        max_sim_seconds=horizon_s,
        on_step=on_step,
        stop_requested=stop_requested or (lambda: False),
        stop_accuracy=max(sc.run.targets) if sc.run.stop_at_target else math.inf,
        stop_on_validation=sc.run.stop_split == "validation",
    )
    protocol = make_server(ctx)
    check_feasible(loaded, fleet, protocol, memory[protocol.task_kind])
    return BuiltRun(env, table, availability, fleet, protocol, facts, memory, horizon_s)


def validate_loaded(loaded: LoadedScenario) -> BuiltRun:
    """``fleetsim validate``: load every file the scenario names (traces, catalogue,
    population, power table, dataset) with the loaders ``run`` uses and make the same
    checks (:func:`check_data`, :func:`check_feasible`), without loading model weights:
    the numerics side is the systems-only engine (model facts from the architecture on
    the meta device).  Raises FleetsimInputError for what ``run`` would refuse."""
    from fleetsim.numerics.engine import build_engine

    sc = loaded.scenario
    protocol_class(sc.protocol.name)
    make_policy(sc.policy)
    plan = data_plan_for(loaded, systems_only=True)  # with check_data's check
    engine = build_engine(
        sc.model, sc.peft, sc.data, sc.numerics.model_copy(update={"engine": "none"}),
        n_clients=sc.fleet.size, seed=sc.run.seed, base_dir=loaded.base_dir, plan=plan,
    )
    return build_run(loaded, engine, Recorder(record_events=False))


def input_files(loaded: LoadedScenario) -> list[Path]:
    """Every input *file* the resolved scenario names (trace, catalogue, population, power
    table, local data files, ...): each string value that, resolved against the scenario's
    folder, is a regular file.  Their SHA-256 go into checkpoints (a resume refuses when
    one changed).  Folders (model weights, datasets) are not hashed."""
    data = loaded.scenario.model_dump(mode="json")
    data.pop("description", None)
    data.pop("output", None)
    found: set[Path] = set()

    def walk(value: object) -> None:
        if isinstance(value, dict):
            for v in value.values():
                walk(v)
        elif isinstance(value, list):
            for v in value:
                walk(v)
        elif isinstance(value, str) and value and len(value) < 4096 and "\n" not in value:
            p = Path(value).expanduser()
            p = p if p.is_absolute() else Path(loaded.base_dir) / p
            try:
                if p.is_file():
                    found.add(p.resolve())
            except OSError:
                return

    walk(data)
    return sorted(found)
