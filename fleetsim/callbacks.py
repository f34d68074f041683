"""Cross-cutting work around a run, as small callbacks (the shape pfl-research uses).

The runner calls every callback at three points: :meth:`RunCallback.on_train_begin`
once the run is built, :meth:`RunCallback.after_central_iteration` after each server
step row (committed or a variance repeat), and :meth:`RunCallback.on_train_end`
when the clock has stopped, before the outputs are written.  Progress display,
checkpoints and the final evaluation are callbacks; the run loop knows none of them.
"""

from __future__ import annotations

import math
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

from fleetsim.record.checkpoint import Checkpoint, write_checkpoint


@dataclass
class RunState:
    """What callbacks may look at: the run being simulated and how it stands."""

    loaded: Any  # fleetsim.scenario.loader.LoadedScenario
    run_dir: Path
    engine: Any  # fleetsim.numerics.journal.JournalEngine
    recorder: Any  # fleetsim.record.recorder.Recorder
    server: Any = None  # fleetsim.protocols.server.StepServer, once built
    env: Any = None  # simpy.Environment, once built
    #: set by the runner before on_train_end
    fault: Optional[BaseException] = None
    clock_stopped_by_horizon: bool = False


class RunCallback:
    """Base: every hook does nothing."""

    def on_train_begin(self, run: RunState) -> None:
        return None

    def after_central_iteration(self, run: RunState, row: dict) -> None:
        """After the server recorded a step row (``row``: a steps.parquet row as a dict)."""
        return None

    def on_train_end(self, run: RunState) -> None:
        return None


class ProgressBar(RunCallback):
    """tqdm bar over committed steps: simulated time, step, loss, accuracy (stderr)."""

    def __init__(self, total: Optional[int], label: str) -> None:
        from tqdm import tqdm

        self.bar = tqdm(total=total, desc=label, unit="step", file=sys.stderr,
                        dynamic_ncols=True, leave=True)
        self.acc = math.nan

    def after_central_iteration(self, run: RunState, row: dict) -> None:
        if row["committed"]:
            self.bar.update(1)
        if not math.isnan(row["accuracy"]):
            self.acc = row["accuracy"]
        hours = row["sim_time_s"] / 3600
        self.bar.set_postfix_str(
            f"sim {hours:.2f} h | step {row['step']} | loss {row['loss']:.4f} | acc {self.acc:.3f}",
            refresh=False,
        )

    def on_train_end(self, run: RunState) -> None:
        self.bar.close()


class Checkpointer(RunCallback):
    """A checkpoint every ``every`` committed steps, and one of the last good state when
    a numerical fault stopped the run (see :mod:`fleetsim.record.checkpoint`)."""

    def __init__(self, every: int) -> None:
        self.every = int(every)

    def _write(self, run: RunState, committed: int, sim_time_s: float, extra: dict) -> None:
        loaded = run.loaded
        write_checkpoint(run.run_dir, Checkpoint(
            scenario_raw=loaded.raw, scenario_path=str(loaded.path),
            base_dir=str(loaded.base_dir), run_dir=str(run.run_dir),
            committed_steps=committed, journal=list(run.engine.journal),
            engine_state=run.engine.state_dict(), sim_time_s=sim_time_s, extra=extra,
        ))

    def after_central_iteration(self, run: RunState, row: dict) -> None:
        if row["committed"] and (row["step"] + 1) % self.every == 0 and not run.engine.replaying:
            self._write(run, int(row["step"]) + 1, float(row["sim_time_s"]), {})

    def on_train_end(self, run: RunState) -> None:
        if run.fault is not None:
            self._write(run, run.server.step, float(run.env.now),
                        {"stopped_by": str(run.fault)})


class FinalEvaluation(RunCallback):
    """When the horizon stopped the clock between evaluations, evaluate the final model
    (the server does so itself when its own loop ends between evaluations)."""

    def on_train_end(self, run: RunState) -> None:
        rows = run.recorder.step_rows
        if (run.fault is None and run.clock_stopped_by_horizon and rows
                and not run.server.cfg.eval_every_s  # a time grid evaluates at its own times
                and not run.engine.systems_only and math.isnan(rows[-1]["accuracy"])
                and math.isnan(rows[-1]["eval_loss"])):
            run.recorder.attach_evaluation(run.server.evaluate())


class StepDelay(RunCallback):
    """Sleep ``seconds`` of host time after each step row: lets a test kill a run between
    checkpoints (set by the environment variable ``FLEETSIM_TEST_STEP_DELAY_S``)."""

    ENV = "FLEETSIM_TEST_STEP_DELAY_S"

    def __init__(self, seconds: float) -> None:
        self.seconds = float(seconds)

    @classmethod
    def from_environment(cls) -> Optional[StepDelay]:
        seconds = float(os.environ.get(cls.ENV, "0") or 0)
        return cls(seconds) if seconds > 0 else None

    def after_central_iteration(self, run: RunState, row: dict) -> None:
        time.sleep(self.seconds)
