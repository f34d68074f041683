"""Cross-cutting work around a run, as small callbacks (the shape pfl-research uses).

The runner calls every callback at four points: :meth:`RunCallback.on_train_begin`
once the run is built, :meth:`RunCallback.after_central_iteration` after each server
step row (committed or a variance repeat), :meth:`RunCallback.on_train_end`
when the clock has stopped, before the outputs are written, and
:meth:`RunCallback.on_outputs_written` once they are.  Progress display,
checkpoints and the final evaluation are callbacks; the run loop knows none of them.
Experiment trackers (``output.trackers``) and user callbacks (``output.callbacks``, the
``fleetsim.callbacks`` entry-point group) follow them: :mod:`fleetsim.callback_registry`.
"""

from __future__ import annotations

import math
import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

from fleetsim.record.checkpoint import Checkpoint, write_checkpoint

#: Host clock of time-based checkpoints (a name of its own so a test can replace it).
_host_clock = time.monotonic


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
    #: fleetsim.record.rundir.scenario_hash of the scenario (stored in checkpoints)
    scenario_hash: str = ""
    #: SHA-256 of each input file the scenario names (stored in checkpoints)
    inputs: dict = field(default_factory=dict)


class RunCallback:
    """Base: every hook does nothing."""

    def on_train_begin(self, run: RunState) -> None:
        return None

    def after_central_iteration(self, run: RunState, row: dict) -> None:
        """After the server recorded a step row (``row``: a steps.parquet row as a dict)."""
        return None

    def on_train_end(self, run: RunState) -> None:
        return None

    def on_outputs_written(self, run: RunState, summary: dict) -> None:
        """After the run directory's tables, summary.json (``summary``) and figures were
        written (also when a numerical fault stopped the run)."""
        return None


class ProgressBar(RunCallback):
    """tqdm bar over committed steps: simulated time, steps committed so far, loss and
    the latest evaluated accuracy ("acc –" until the first evaluation) on stderr."""

    def __init__(self, total: Optional[int], label: str) -> None:
        from tqdm import tqdm

        self.bar = tqdm(total=total, desc=label, unit="step", file=sys.stderr,
                        dynamic_ncols=True, leave=True)
        self.acc = math.nan

    def on_train_begin(self, run: RunState) -> None:
        # The steps the run takes when nothing ends it early (StepServer.step_plan), not
        # protocol.max_steps alone, which the rounds may never reach.
        plan = getattr(run.server, "step_plan", None)
        planned = plan()[0] if plan is not None else None
        if planned is not None:
            self.bar.total = planned
            self.bar.refresh()

    def after_central_iteration(self, run: RunState, row: dict) -> None:
        if row["committed"]:
            self.bar.update(1)
        if not math.isnan(row["accuracy"]):
            self.acc = row["accuracy"]
        hours = row["sim_time_s"] / 3600
        # row["step"] counts the steps committed before this row: a committed row's step
        # is one more (the step 1 just committed, not 0)
        done = int(row["step"]) + (1 if row["committed"] else 0)
        acc = "–" if math.isnan(self.acc) else f"{self.acc:.3f}"
        self.bar.set_postfix_str(
            f"sim {hours:.2f} h | step {done} | loss {row['loss']:.4f} | acc {acc}",
            refresh=False,
        )

    def on_train_end(self, run: RunState) -> None:
        self.bar.close()


class Checkpointer(RunCallback):
    """A checkpoint every ``every`` committed steps (0: none by count), at the first
    committed step after each ``every_minutes`` of host time since the last one (0: none
    by time; the default scenario writes one every 10 minutes), and one of the last good
    state when a numerical fault stopped the run (see :mod:`fleetsim.record.checkpoint`).
    Never while the resume replays the journal (that state is already on disk)."""

    def __init__(self, every: int, every_minutes: float = 0.0) -> None:
        self.every = int(every)
        self.every_s = float(every_minutes) * 60.0
        self._last = _host_clock()

    def _write(self, run: RunState, committed: int, sim_time_s: float, extra: dict) -> None:
        loaded = run.loaded
        write_checkpoint(run.run_dir, Checkpoint(
            scenario_raw=loaded.raw, scenario_path=str(loaded.path),
            base_dir=str(loaded.base_dir), run_dir=str(Path(run.run_dir).resolve()),
            committed_steps=committed, journal=list(run.engine.journal),
            engine_state=run.engine.portable_state_dict(), sim_time_s=sim_time_s,
            scenario_hash=run.scenario_hash, inputs=dict(run.inputs), extra=extra,
        ))
        self._last = _host_clock()

    def on_train_begin(self, run: RunState) -> None:
        self._last = _host_clock()

    def after_central_iteration(self, run: RunState, row: dict) -> None:
        if not row["committed"] or run.engine.replaying:
            return
        by_count = self.every > 0 and (row["step"] + 1) % self.every == 0
        by_time = self.every_s > 0 and _host_clock() - self._last >= self.every_s
        if by_count or by_time:
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
