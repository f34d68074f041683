"""Checkpoint and exact resume of a single run.

SimPy processes are Python generators and cannot be pickled, so a checkpoint
does not freeze the interpreter; it makes the run *re-derivable*:

* the simulated side (clock, every device's state, pending events, policy
  decisions, random streams) is a deterministic function of the scenario, the
  seed and the numbers the numerics engine returned;
* so a checkpoint stores those numbers (a **journal** of every engine call's
  result, in order) plus the engine's state (trainable weights, optimiser state,
  previous gradient) at the checkpoint.

``fleetsim run --resume RUN_DIR`` rebuilds the run, replays the simulated side
with a :class:`JournalEngine` that answers from the journal without computing
(and without touching θ), loads the stored engine state the moment the journal
runs out, and continues live.  The replay costs only simulated-side host time;
the result is byte-identical ``steps.parquet`` and ``events.parquet``.

Checkpoints are pickles written atomically (temporary name, fsync, rename) —
they are local, trusted files the run itself wrote; never load one you did not
produce.
"""

from __future__ import annotations

import copy
import pickle
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

from fleetsim.numerics.base import EvalResult, ModelFacts, NumericsEngine, StepEstimate
from fleetsim.record.atomic import atomic_path

CHECKPOINT_NAME = "checkpoint.pkl"
FORMAT_VERSION = 1


@dataclass
class Checkpoint:
    scenario_raw: dict  # the merged scenario mapping (with --set applied)
    scenario_path: str
    base_dir: str
    run_dir: str
    committed_steps: int
    journal: list[tuple[str, Any]]
    engine_state: dict
    sim_time_s: float
    version: int = FORMAT_VERSION
    extra: dict = field(default_factory=dict)


def write_checkpoint(run_dir: Path, ckpt: Checkpoint) -> Path:
    path = Path(run_dir) / CHECKPOINT_NAME
    with atomic_path(path) as tmp, open(tmp, "wb") as fh:
        pickle.dump(ckpt, fh, protocol=pickle.HIGHEST_PROTOCOL)
    return path


def read_checkpoint(run_dir: Path) -> Checkpoint:
    from fleetsim.errors import FleetsimInputError

    path = Path(run_dir) / CHECKPOINT_NAME
    if not path.is_file():
        raise FleetsimInputError(
            f"--resume {run_dir}: no {CHECKPOINT_NAME} there (set output.checkpoint_every_steps "
            "to write checkpoints)"
        )
    try:
        with open(path, "rb") as fh:
            ckpt = pickle.load(fh)  # our own file, written atomically by write_checkpoint
    except (pickle.UnpicklingError, EOFError, AttributeError, ImportError) as exc:
        raise FleetsimInputError(f"--resume {run_dir}: {path.name} is unreadable: {exc}") from None
    if not isinstance(ckpt, Checkpoint) or ckpt.version != FORMAT_VERSION:
        raise FleetsimInputError(f"--resume {run_dir}: {path.name} is not a fleetsim checkpoint")
    return ckpt


def _scalars(est: StepEstimate) -> StepEstimate:
    """A copy without the engine-owned tensor (what the protocol may look at)."""
    return StepEstimate(
        step=est.step, n_perturbations=est.n_perturbations, n_devices=est.n_devices,
        loss=est.loss, variance=est.variance, handle=None,
        extra={k: v for k, v in est.extra.items() if isinstance(v, (int, float, str, list))},
    )


class JournalEngine(NumericsEngine):
    """Wraps the real engine: records every call's result (live mode), or answers
    from a journal without computing (replay mode) and switches to live — after
    loading the checkpointed engine state — when the journal is exhausted."""

    def __init__(
        self,
        inner: NumericsEngine,
        replay: Optional[list[tuple[str, Any]]] = None,
        state_at_end: Optional[dict] = None,
    ) -> None:
        self.inner = inner
        self.systems_only = inner.systems_only
        self.journal: list[tuple[str, Any]] = []
        self._replay = list(replay or [])
        self._cursor = 0
        self._state_at_end = state_at_end
        if not self._replay and state_at_end is not None:
            inner.load_state_dict(state_at_end)

    @property
    def replaying(self) -> bool:
        return self._cursor < len(self._replay)

    def _answer(self, kind: str) -> Any:
        recorded_kind, value = self._replay[self._cursor]
        if recorded_kind != kind:
            raise RuntimeError(
                f"resume diverged: the run asked the engine for {kind!r} where the journal "
                f"has {recorded_kind!r} (call {self._cursor}); was the scenario changed?"
            )
        self._cursor += 1
        self.journal.append((kind, value))
        if not self.replaying and self._state_at_end is not None:
            self.inner.load_state_dict(self._state_at_end)
            self._state_at_end = None
        return copy.deepcopy(value)

    def _call(self, kind: str, fn, *args) -> Any:
        if self.replaying:
            return self._answer(kind)
        result = fn(*args)
        if isinstance(result, StepEstimate):
            self.journal.append((kind, _scalars(result)))
        elif isinstance(result, EvalResult):
            self.journal.append((kind, copy.deepcopy(result)))
        else:
            self.journal.append((kind, None))
        return result

    # static facts pass straight through
    def facts(self) -> ModelFacts:
        return self.inner.facts()

    def num_clients(self) -> int:
        return self.inner.num_clients()

    def batches_per_client(self, client_id: int) -> int:
        return self.inner.batches_per_client(client_id)

    def describe(self) -> dict:
        return self.inner.describe()

    def forward_gradient(self, step, work, previous=None):
        return self._call("forward_gradient", self.inner.forward_gradient, step, work, previous)

    def backprop_gradient(self, step, work):
        return self._call("backprop_gradient", self.inner.backprop_gradient, step, work)

    def local_train(self, step, device_id, client_id, batch_indices, lr, source_step=None):
        return self._call(
            "local_train", self.inner.local_train, step, device_id, client_id, batch_indices, lr,
            source_step,
        )

    def retain_steps(self, max_staleness: int) -> None:
        self.inner.retain_steps(max_staleness)

    def average(self, estimates):
        return self._call("average", self.inner.average, estimates)

    def apply(self, estimate, lr):
        return self._call("apply", self.inner.apply, estimate, lr)

    def evaluate(self):
        return self._call("evaluate", self.inner.evaluate)

    def state_dict(self) -> dict:
        return self.inner.state_dict()

    def load_state_dict(self, state: dict) -> None:
        self.inner.load_state_dict(state)
