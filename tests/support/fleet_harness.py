"""A real Fleet on a hand-made device table, driven by the real protocols, with a
small deterministic numerics engine that records what it was asked to compute."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Optional

import numpy as np
import simpy
from fleet_helpers import constant_unit_seconds, cpu_backend, make_table

from fleetsim.fleet.config import FleetConfig
from fleetsim.fleet.fleet import Fleet
from fleetsim.fleet.work import TaskKind
from fleetsim.numerics.base import (
    EvalResult,
    GradientWork,
    ModelFacts,
    NumericsEngine,
    StepEstimate,
)
from fleetsim.policies.config import PolicyConfig
from fleetsim.policies.registry import make_cohort_selector, make_policy
from fleetsim.protocols.config import ProtocolConfig
from fleetsim.protocols.registry import make_server
from fleetsim.protocols.server import ServerContext
from fleetsim.record.recorder import Recorder
from fleetsim.traces.base import AlwaysOnline, AvailabilityTrace, DeviceTable

FACTS = ModelFacts(name="fake", n_params=1_000_000, trainable_params=1000, n_layers=2,
                   hidden_size=16, flops_per_token=2e6, seq_len=16, batch_size=8)


@dataclass
class FakeEngine(NumericsEngine):
    """Counts work; variance follows a script so the gate can be tested."""

    clients: int = 8
    batches: int = 3
    variance_script: list[float] = field(default_factory=list)
    calls: list[tuple[str, int, list[GradientWork]]] = field(default_factory=list)
    applied: list[tuple[int, float]] = field(default_factory=list)
    evals: int = 0

    def facts(self) -> ModelFacts:
        return FACTS

    def num_clients(self) -> int:
        return self.clients

    def batches_per_client(self, client_id: int) -> int:
        return self.batches

    def forward_gradient(self, step, work, previous=None) -> StepEstimate:
        self.calls.append(("fg", step, list(work)))
        n = sum(len(w.perturbations) for w in work) + (previous.n_perturbations if previous else 0)
        var = self.variance_script.pop(0) if self.variance_script else 0.0
        return StepEstimate(step=step, n_perturbations=n, n_devices=len(work),
                            loss=1.0 / (step + 1), variance=var)

    def backprop_gradient(self, step, work) -> StepEstimate:
        self.calls.append(("bp", step, list(work)))
        return StepEstimate(step=step, n_perturbations=len(work), n_devices=len(work), loss=0.5)

    def local_train(
        self, step, device_id, client_id, batch_indices, lr, source_step=None
    ) -> StepEstimate:
        self.calls.append(("lt", step, []))
        return StepEstimate(step=step, n_perturbations=len(batch_indices), n_devices=1, loss=0.4)

    def average(self, estimates) -> StepEstimate:
        n = sum(e.n_perturbations for e in estimates)
        return StepEstimate(step=estimates[0].step, n_perturbations=n,
                            n_devices=sum(e.n_devices for e in estimates), loss=0.3)

    def apply(self, estimate, lr) -> None:
        self.applied.append((estimate.step, lr))

    def evaluate(self) -> EvalResult:
        self.evals += 1
        return EvalResult(accuracy=min(0.1 * self.evals, 1.0), loss=1.0, n_examples=10)

    def state_dict(self) -> dict:
        return {"applied": list(self.applied)}

    def load_state_dict(self, state: dict) -> None:
        self.applied = list(state["applied"])


@dataclass
class Harness:
    env: simpy.Environment
    fleet: Fleet
    engine: FakeEngine
    recorder: Recorder
    protocol: object

    def run(self):
        self.env.run(until=self.env.process(self.protocol.run()))
        return self


def build(
    n: int = 8,
    unit_s: Optional[np.ndarray] = None,
    availability: Optional[AvailabilityTrace] = None,
    protocol: Optional[dict] = None,
    policy: Optional[dict] = None,
    engine: Optional[FakeEngine] = None,
    fleet: Optional[dict] = None,
    table: Optional[DeviceTable] = None,
    seed: int = 0,
    memory: Optional[dict] = None,
) -> Harness:
    env = simpy.Environment()
    recorder = Recorder()
    table = table or make_table(n, uplink_bps=8e6, downlink_bps=8e6)
    unit = np.ones(n) if unit_s is None else np.asarray(unit_s, dtype=float)
    fcfg = FleetConfig(size=n, **(fleet or {}))
    fl = Fleet(env, table, availability or AlwaysOnline(n), fcfg, seed, recorder.events, FACTS,
               unit_seconds_fn=constant_unit_seconds(unit), choose_backend_fn=cpu_backend)
    eng = engine or FakeEngine()
    pcfg = ProtocolConfig(**(protocol or {}))
    pol = PolicyConfig(**(policy or {}))
    ctx = ServerContext(
        env=env, fleet=fl, engine=eng, policy=make_policy(pol), cohort=make_cohort_selector(pol),
        config=pcfg, recorder=recorder, seed=seed,
        memory_bytes=memory or {TaskKind.FORWARD_GRADIENT: 1, TaskKind.BACKPROP: 1},
        max_sim_seconds=math.inf,
    )
    return Harness(env, fl, eng, recorder, make_server(ctx))


