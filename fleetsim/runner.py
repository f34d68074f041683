"""Build a run from a scenario and drive it to the end on the SimPy clock.

scenario → (DeviceTable, AvailabilityTrace) from traces, NumericsEngine,
Fleet, policy, protocol, Recorder → run → run directory.

The set-up before the clock starts (data plan, engine, checks, fleet and protocol) is in
:mod:`fleetsim.run_setup`; its names are re-exported here.
"""

from __future__ import annotations

import contextlib
import os
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Optional

import simpy

from fleetsim.callback_registry import scenario_callbacks
from fleetsim.callbacks import (
    Checkpointer,
    FinalEvaluation,
    ProgressBar,
    RunCallback,
    RunState,
    StepDelay,
)
from fleetsim.cost_model import charged_peft_given, model_labels
from fleetsim.errors import FleetsimInputError, RunStopped
from fleetsim.fleet.heap import frozen_heap
from fleetsim.numerics.errors import NumericalFault
from fleetsim.numerics.journal import JournalEngine
from fleetsim.policies.registry import make_policy
from fleetsim.protocols.registry import method_label, protocol_class
from fleetsim.record import rundir
from fleetsim.record import status as run_status
from fleetsim.record.checkpoint import (
    Checkpoint,
    check_belongs,
    check_inputs,
    input_digests,
    read_checkpoint,
)
from fleetsim.record.provenance import code_provenance
from fleetsim.record.recorder import Recorder, devices_frame
from fleetsim.record.summary import build_summary
from fleetsim.run_setup import (
    BuiltRun,
    build_engine_for,
    build_run,
    check_data,
    check_feasible,
    data_plan_for,
    input_files,
    validate_loaded,
)
from fleetsim.scenario.loader import LoadedScenario, load_scenario
from fleetsim.scenario.schema import fill_output_dir


def run_dir_for(loaded: LoadedScenario, run_dir: Optional[Path]) -> Path:
    """The run directory: ``run_dir`` (``--out``) when given, else ``output.dir`` with
    ``{name}`` and ``{seed}`` filled in.  A filled-in placeholder never leaves the folder
    ``output.dir`` names: ``run.name`` is one folder name (the schema refuses '/', '..')
    and this is checked again here for names that bypass the schema."""
    if run_dir is not None:
        return Path(run_dir)
    sc = loaded.scenario
    name = sc.run.name
    if name in (".", "..") or "/" in name or "\\" in name or "\0" in name:
        raise FleetsimInputError(
            f"{loaded.path}: run.name: {name!r} would write outside output.dir; use one "
            "folder name (no '/', no '..')"
        )
    try:  # the schema made this check already (fleetsim validate refuses the same)
        return Path(fill_output_dir(sc.output.dir, name, sc.run.seed))
    except ValueError as exc:
        raise FleetsimInputError(f"{loaded.path}: {exc}") from None


def prepare_output(
    loaded: LoadedScenario, out: Path, digest: str, replace: bool = False
) -> None:
    """Before anything is built: refuse a run directory that cannot hold this run.

    * ``out`` is a file, or lies below one, or cannot be created or written: exit 2
      naming ``output.dir`` (found in seconds, not after the simulation);
    * ``out`` holds outputs of a run and ``output.overwrite`` is false: refused;
    * ``out`` holds a run of a *different* resolved scenario (``scenario_hash``; e.g. the
      same scenario with ``--set protocol.lr=0.02``): refused unless ``replace``
      (``fleetsim run --replace``) — runs never share or silently replace a directory.
    Nothing is removed here; :func:`fleetsim.record.rundir.begin_run` does that once the
    run is built."""
    sc = loaded.scenario
    if out.exists() and not out.is_dir():
        raise FleetsimInputError(f"output.dir: {out} exists and is not a directory")
    present = rundir.owned_outputs_present(out)
    if present and not sc.output.overwrite:
        raise FleetsimInputError(
            f"output.dir: {out} already holds a run and output.overwrite is false; "
            "choose another directory or set output.overwrite: true"
        )
    if present and not replace:
        previous = rundir.run_dir_state(out).scenario_hash
        if previous != digest:
            what = (f"scenario {previous[:12]}" if previous else "an unidentified run")
            raise FleetsimInputError(
                f"output.dir: {out} holds {what}, not this resolved scenario ({digest[:12]}); "
                "give the run another directory (--out, output.dir, run.name) or pass --replace "
                "to remove that run and write this one"
            )
    # Writable? Create the folder and a probe file now, not after the simulation.
    try:
        out.mkdir(parents=True, exist_ok=True)
        probe = out / f".fleetsim-write-probe-{os.getpid()}"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as exc:
        raise FleetsimInputError(
            f"output.dir: cannot write the run directory {out}: {exc.strerror or exc}"
        ) from None


def run_title(summary: dict) -> str:
    """The heading of a run's figures: run, protocol/policy, seed and the model(s)."""
    method = summary.get("method") or summary["protocol"]
    title = (f"{summary['scenario_name']} ({method}/{summary['policy']}, "
             f"seed {summary['seed']})")
    label = summary.get("model_label") or summary.get("charged_model")
    return f"{title}\n{label}" if label else title


def run_callbacks(sc, progress: Optional[bool]) -> list[RunCallback]:
    """The callbacks of a run, in the order they are called: progress bar (when shown),
    the test step delay (when its environment variable is set), checkpoints (when
    ``output.checkpoint_every_steps`` or ``output.checkpoint_every_minutes``), the final
    evaluation, then the scenario's trackers and user callbacks
    (:func:`fleetsim.callback_registry.scenario_callbacks`)."""
    # Built first: a plug-in that fails to load is refused before a progress bar is drawn.
    requested = scenario_callbacks(sc.output)  # output.trackers, output.callbacks
    callbacks: list[RunCallback] = []
    if sc.run.progress if progress is None else progress:
        callbacks.append(ProgressBar(sc.protocol.max_steps, sc.run.name))
    delay = StepDelay.from_environment()
    if delay is not None:
        callbacks.append(delay)
    if sc.output.checkpoint_every_steps or sc.output.checkpoint_every_minutes:
        callbacks.append(Checkpointer(sc.output.checkpoint_every_steps,
                                      sc.output.checkpoint_every_minutes))
    callbacks.append(FinalEvaluation())
    callbacks.extend(requested)
    return callbacks


def _finish_instant(env: simpy.Environment, server: simpy.Process, horizon_s: float) -> None:
    """After the horizon fired: process the events due at exactly ``horizon_s`` (work ending
    then is on time; ``finished()`` starts nothing new).  Bounded: zero-delay polls end."""
    for _ in range(1_000_000):
        if server.triggered or env.peek() > horizon_s:
            return
        env.step()


@contextlib.contextmanager
def stop_on_signals() -> Iterator[Callable[[], bool]]:
    """Within the block, the first SIGINT/SIGTERM asks the run to stop after the step in
    progress (status ``stop_requested``, outputs written); a second one aborts
    (KeyboardInterrupt).  Yields the ``stop_requested`` callable for :func:`run_loaded`.
    Outside the main thread signals cannot be caught: the callable then stays False."""
    requested = threading.Event()
    if threading.current_thread() is not threading.main_thread():
        yield requested.is_set
        return

    def handler(signum: int, frame: object) -> None:
        if requested.is_set():
            raise KeyboardInterrupt
        requested.set()
        print("fleetsim: stop requested: ending after the step in progress "
              "(press Ctrl-C again to abort without outputs)", file=sys.stderr)

    previous = {sig: signal.signal(sig, handler) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield requested.is_set
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)


def run_loaded(
    loaded: LoadedScenario,
    run_dir: Optional[Path] = None,
    progress: Optional[bool] = None,
    resume: Optional[Checkpoint] = None,
    stop_requested: Optional[Callable[[], bool]] = None,
    replace: bool = False,
) -> Path:
    """Simulate ``loaded`` into a run directory (returned).  The directory is checked
    before anything is built (:func:`prepare_output`; ``replace`` lets a run of another
    scenario replace the one there), reads as incomplete while the run writes it and
    complete once every output is written (:mod:`fleetsim.record.rundir`).  The run ends
    at the first stop rule that fires (protocol.rounds, protocol.max_steps,
    run.max_sim_hours — even in the middle of a step —, ``stop_requested()`` turning true,
    nobody left to come online, a numerical fault); summary.json says which
    (``stopped_by``) and how the run ended (``status``, see fleetsim.record.status).
    Raises RunStopped after writing the outputs when a numerical fault stopped the run,
    FleetsimInputError for bad input."""
    sc = loaded.scenario
    host_start = time.perf_counter()
    out = run_dir_for(loaded, run_dir)
    digest = rundir.scenario_hash(sc.model_dump(mode="json"))
    if resume is None:
        prepare_output(loaded, out, digest, replace)
    protocol_class(sc.protocol.name)  # fail fast on an unknown protocol name
    make_policy(sc.policy)

    plan = data_plan_for(loaded)  # with check_data's check, before any model is loaded
    engine = JournalEngine(
        build_engine_for(loaded, plan),
        replay=resume.journal if resume else None,
        state_at_end=resume.engine_state if resume else None,
    )
    recorder = Recorder(record_events=sc.output.events)
    run = RunState(loaded=loaded, run_dir=out, engine=engine, recorder=recorder,
                   scenario_hash=digest)
    callbacks = run_callbacks(sc, progress)

    replay_checked = [resume is None or bool(resume.extra)]

    def after_step(row: dict) -> None:
        if not replay_checked[0] and row["committed"] and not engine.replaying:
            # The journal of a step-boundary checkpoint ends with the step it was written
            # at: ending anywhere else, it does not fit the stored engine state.
            replay_checked[0] = True
            if int(row["step"]) + 1 != resume.committed_steps:
                raise FleetsimInputError(
                    f"--resume {out}: the checkpoint's journal ends at step "
                    f"{int(row['step']) + 1}, its engine state is of step "
                    f"{resume.committed_steps}; refusing to resume from it"
                )
        for callback in callbacks:
            callback.after_central_iteration(run, row)

    built = build_run(loaded, engine, recorder, after_step, stop_requested)
    env, fleet, server, horizon_s = built.env, built.fleet, built.protocol, built.horizon_s
    run.server, run.env = server, env
    run.inputs = resume.inputs if resume is not None else input_digests(input_files(loaded))
    # All checked: mark the directory as being written and remove the outputs of the run it
    # held before (a resume keeps its checkpoint); until finish_run it reads as incomplete.
    rundir.begin_run(out, digest, keep_checkpoint=resume is not None)
    for callback in callbacks:
        callback.on_train_begin(run)
    process = env.process(server.run())
    try:
        # Until the server ends or the horizon (even mid-step), then what is due then.
        with frozen_heap():  # garbage collections skip the heap built before the clock started
            env.run(until=env.any_of([process, env.timeout(horizon_s)]))
            _finish_instant(env, process, horizon_s)
    except NumericalFault as exc:
        # Stop cleanly: log it; the checkpointer keeps the last good state; outputs follow.
        run.fault = exc
        recorder.events.add(env.now, -1, "numerical_fault", step=server.step, detail=str(exc))
    except OSError as exc:  # a checkpoint could not be written (disk full, folder gone)
        raise _write_failed(out, exc) from None
    end = float(env.now)
    run.clock_stopped_by_horizon = run.fault is None and not process.triggered
    if run.fault is not None:
        stopped_by = "numerical_fault"
    elif run.clock_stopped_by_horizon:
        stopped_by = "max_sim_hours"
    else:
        stopped_by = server.stop_reason()
        if stopped_by == "no_devices_online" and env.now < horizon_s:
            # The server proved nobody eligible comes online before the horizon: the run
            # covered the time up to it, as one stopped by the horizon does (issue 22 kind 7).
            env.run(until=horizon_s)
            _finish_instant(env, process, horizon_s)
            end = float(env.now)
    # Work still out when a stop rule fired is recorded as unfinished (never committed) and
    # charged up to now, so the device totals cover exactly [0, end].
    unfinished = fleet.stop_in_flight()
    for callback in callbacks:
        callback.on_train_end(run)
    fault = run.fault
    divergence = run_status.first_divergence(engine.journal)
    status, status_detail = run_status.decide(
        stopped_by, int(server.step), divergence, fault, sc.run.max_sim_hours, len(unfinished)
    )
    recorder.events.add(end, -1, "run_stopped", step=server.step,
                        detail=f"status={status} stopped_by={stopped_by}")
    devices = devices_frame(fleet.device_columns(end))
    steps = recorder.steps_frame()
    facts = built.facts
    labels = {
        # the method as its paper names it (FedAdam, Adapter-BP, FwdLLM (seed-only upload))
        "method": method_label(sc.protocol, sc.numerics.server_optimizer.name),
        "systems_only": bool(engine.systems_only),
        "mode": "systems-only (no gradients computed)" if engine.systems_only else "full numerics",
        "availability_label": getattr(built.availability, "label", ""),
        "device_source": getattr(built.table, "source", ""),
        # The two models of a run, each with its trainable count: the one the phones are
        # charged for (fleet.cost_model, else the learning model: payloads, latency, memory)
        # and the one whose forward gradients are computed (numerics).
        "charged_trainable_params": int(facts.trainable_params),
        "learned_trainable_params": int(engine.facts().trainable_params),
        # names, label, PEFTs
        **model_labels(facts, engine.facts(), charged_peft_given(sc), engine.systems_only),
        "numerics": engine.describe(),
        **code_provenance(),  # fleetsim_version, git_commit, git_dirty
        "scenario_hash": digest,
        **server.schedule_labels(),  # what protocol.lr_schedule planned with
        **server.initial_evaluation_fields(),  # initial_accuracy, initial_eval_loss (t = 0)
    }
    summary = build_summary(
        sc, steps, devices, end_s=end, rounds=server.round, committed_steps=server.step,
        final_evaluation_finite=run_status.last_evaluation_finite(engine.journal),
        host_seconds=time.perf_counter() - host_start, status=status, stopped_by=stopped_by,
        status_detail=status_detail,
        diverged_at_step=divergence.step if divergence is not None else (
            int(getattr(fault, "step", server.step)) if fault is not None else None),
        unfinished=unfinished, labels=labels,
    )
    try:
        recorder.write(
            out,
            devices,
            summary,
            loaded.resolved_yaml(),
        )
        rundir.finish_run(out, digest, summary)  # last: the directory now reads complete
    except OSError as exc:
        raise _write_failed(out, exc) from None
    if sc.output.convergence_png:  # a figure of the finished run, drawn from its files
        from fleetsim.analysis.plots import write_run_convergence

        try:
            write_run_convergence(out, run_title(summary))
        except OSError as exc:
            raise _write_failed(out, exc) from None
    for callback in callbacks:
        callback.on_outputs_written(run, summary)
    if fault is not None:
        raise RunStopped(
            f"run stopped at step {server.step} by a numerical fault: {fault}; outputs and "
            f"the last checkpoint are in {out} (set numerics.on_nonfinite: skip to skip such "
            "estimates instead)"
        )
    return out


def _write_failed(out: Path, exc: OSError) -> FleetsimInputError:
    """One line for an output write that failed during or after the run (disk full, the
    folder removed or made read-only): the directory stays marked incomplete and the last
    checkpoint, if any, is kept for ``--resume``."""
    from fleetsim.record.checkpoint import checkpoint_path

    kept = checkpoint_path(out)
    tail = (f"the last checkpoint is kept: free space and `fleetsim run --resume {out}`"
            if kept.is_file() else "no checkpoint had been written yet")
    return FleetsimInputError(
        f"output.dir: writing the run directory {out} failed: {exc.strerror or exc}"
        f"{f' ({exc.filename})' if getattr(exc, 'filename', None) else ''}; the directory is "
        f"marked incomplete; {tail}"
    )


def resume_run(
    run_dir: Path,
    progress: Optional[bool] = None,
    stop_requested: Optional[Callable[[], bool]] = None,
) -> Path:
    """Continue a run from its last checkpoint (see fleetsim.record.checkpoint).  Refuses
    (FleetsimInputError) a checkpoint that does not match its checksum, one written for
    another run directory or scenario, a run whose input files changed since, and a
    directory that already holds the finished run."""
    from fleetsim.scenario.loader import validate_raw

    run_dir = Path(run_dir)
    state = rundir.run_dir_state(run_dir)
    if state.complete:  # before the checkpoint: a finished run usually keeps none
        raise FleetsimInputError(
            f"--resume {run_dir}: the run in {run_dir} has finished (status {state.status}); "
            "there is nothing to resume"
        )
    if not run_dir.is_dir() or not any(run_dir.iterdir()):
        # no run ever wrote here: asking for checkpoint options would send the user
        # looking for a run that never started
        what = "no such folder" if not run_dir.is_dir() else "an empty folder"
        raise FleetsimInputError(
            f"--resume {run_dir}: {what}, not a run directory; --resume continues a run "
            "that wrote checkpoints there (fleetsim run SCENARIO first)"
        )
    ckpt = read_checkpoint(run_dir)
    loaded = validate_raw(ckpt.scenario_raw, Path(ckpt.scenario_path), Path(ckpt.base_dir))
    check_belongs(ckpt, run_dir, rundir.scenario_hash(loaded.scenario.model_dump(mode="json")))
    if state.scenario_hash is not None and state.scenario_hash != ckpt.scenario_hash:
        raise FleetsimInputError(
            f"--resume {run_dir}: the run being written there is scenario "
            f"{state.scenario_hash[:12]}, the checkpoint "
            f"holds scenario {ckpt.scenario_hash[:12]}; refusing to resume from it"
        )
    check_inputs(ckpt, run_dir)
    return run_loaded(loaded, run_dir, progress, resume=ckpt, stop_requested=stop_requested)


def run_scenario(
    scenario_path: Path | str,
    overrides: Sequence[str] = (),
    run_dir: Optional[Path] = None,
    progress: Optional[bool] = False,
    replace: bool = False,
) -> Path:
    """Run one scenario file; returns the run directory (``replace``: see
    :func:`prepare_output`)."""
    return run_loaded(load_scenario(scenario_path, list(overrides)), run_dir, progress,
                      replace=replace)


__all__ = [
    "BuiltRun", "build_engine_for", "build_run", "check_data", "check_feasible",
    "data_plan_for", "prepare_output", "resume_run", "run_dir_for", "run_loaded",
    "run_scenario", "run_title", "stop_on_signals", "validate_loaded",
]
