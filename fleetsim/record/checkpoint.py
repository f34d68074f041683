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
with a :class:`~fleetsim.numerics.journal.JournalEngine` that answers from the journal
without computing
(and without touching θ), loads the stored engine state the moment the journal
runs out, and continues live.  The replay costs only simulated-side host time;
the result is byte-identical ``steps.parquet`` and ``events.parquet``.

Checkpoints are pickles written atomically (temporary name, fsync, rename) —
they are local, trusted files the run itself wrote; never load one you did not
produce.
"""

from __future__ import annotations

import pickle
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

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
