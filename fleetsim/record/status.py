"""How a run ended: the stop rule that fired, the run's status and its exit code.

``summary.json`` carries ``status`` (one of :data:`STATUSES`), ``stopped_by`` (one
of :data:`STOP_RULES`) and ``status_detail`` (one sentence); ``fleetsim run`` exits
with the status's code and, for every status but ``completed`` and
``horizon_reached``, prints ``status_detail`` as one line on stderr.  The README's
"Stop rules and run statuses" section is this module in prose.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Optional

import pandas as pd

#: status -> (exit code of ``fleetsim run``, meaning).  Precedence when several apply:
#: diverged, stop_requested, no_progress, then horizon_reached / completed.
STATUSES: dict[str, tuple[int, str]] = {
    "completed": (0, "the protocol's own end: protocol.rounds or protocol.max_steps reached, "
                     "or the highest target with run.stop_at_target"),
    "horizon_reached": (0, "run.max_sim_hours stopped the clock (at least one step committed); "
                           "work in flight was recorded as unfinished"),
    "diverged": (3, "the model became non-finite (a numerical fault, or an evaluation with a "
                    "non-finite loss or parameters); its accuracy is not counted"),
    "no_progress": (4, "no step was committed: nobody was online before the horizon, or no "
                       "work could be delivered before a stop rule fired"),
    "stop_requested": (130, "the user asked the run to stop (Ctrl-C / SIGTERM); outputs written"),
}

#: stop rule -> what fired it
STOP_RULES: dict[str, str] = {
    "rounds": "protocol.rounds: every round ran",
    "max_steps": "protocol.max_steps: that many steps committed",
    "targets_reached": ("run.stop_at_target: an evaluation reached the highest of run.targets "
                        "(on the split run.stop_split names)"),
    "max_sim_hours": "run.max_sim_hours: the simulated clock reached the horizon",
    "stop_request": "a stop request from the user (Ctrl-C / SIGTERM)",
    "numerical_fault": "a non-finite loss or estimate with numerics.on_nonfinite: stop",
    "no_devices_online": "no eligible device will come online before the horizon",
}


def exit_code(status: str) -> int:
    """Exit code of ``fleetsim run`` for a ``summary.json`` status (0 for unknown ones,
    e.g. from older run directories)."""
    return STATUSES.get(status, (0, ""))[0]


def finite_accuracy(steps: pd.DataFrame) -> pd.Series:
    """The ``accuracy`` column with every value that is not backed by a finite
    evaluation loss set to NaN (an accuracy computed from non-finite logits is noise;
    run directories written before evaluate() refused them hold such values)."""
    acc = steps["accuracy"].astype("float64")
    loss = steps["eval_loss"].astype("float64")
    return acc.where(loss.map(math.isfinite).astype(bool) & acc.notna())


@dataclass
class Divergence:
    """The first evaluation of a non-finite model: ``step`` is the index of the step whose
    update produced it (None: the initial model)."""

    step: Optional[int]
    evaluation: int  # 0-based index among the run's evaluations


def first_divergence(journal: list[tuple[str, Any]]) -> Optional[Divergence]:
    """Scan a :class:`~fleetsim.numerics.journal.JournalEngine` journal (every engine call's
    result, in order): the first evaluation of a non-empty held-out set whose loss is not
    finite, located by the number of ``apply`` calls before it."""
    applies = 0
    evaluations = 0
    for kind, value in journal:
        if kind == "apply":
            applies += 1
        elif kind == "evaluate":
            if value is not None and value.n_examples > 0 and not math.isfinite(value.loss):
                return Divergence(applies - 1 if applies else None, evaluations)
            evaluations += 1
    return None


def last_evaluation_finite(journal: list[tuple[str, Any]]) -> bool:
    """Whether the run's last evaluation (of a non-empty held-out set) was finite; True when
    there was none."""
    for kind, value in reversed(journal):
        if kind == "evaluate" and value is not None and value.n_examples > 0:
            return math.isfinite(value.loss)
    return True


def decide(
    stopped_by: str,
    committed_steps: int,
    divergence: Optional[Divergence],
    fault: Optional[BaseException],
    horizon_hours: float,
    unfinished_tasks: int,
) -> tuple[str, str]:
    """``(status, status_detail)`` of a run from what stopped it and what it achieved."""
    if fault is not None or divergence is not None:
        where = []
        if divergence is not None:
            at = ("the initial model" if divergence.step is None
                  else f"the model after step {divergence.step}")
            where.append(f"{at} evaluated to a non-finite loss (its accuracy is not counted)")
        if fault is not None:
            where.append(f"numerical fault: {fault}")
        return "diverged", "; ".join(where)
    if stopped_by == "stop_request":
        return "stop_requested", (
            f"stopped on request after {committed_steps} committed step(s); "
            f"{unfinished_tasks} task(s) in flight recorded as unfinished"
        )
    if committed_steps == 0:
        if stopped_by == "no_devices_online":
            why = (f"no eligible device came online before the horizon "
                   f"(run.max_sim_hours={horizon_hours:g})")
        elif stopped_by == "max_sim_hours":
            why = (f"the horizon (run.max_sim_hours={horizon_hours:g}) came before any step "
                   f"could commit; {unfinished_tasks} task(s) were still in flight (check "
                   "bandwidths, unit times and availability)")
        else:
            why = (f"the run ended ({STOP_RULES.get(stopped_by, stopped_by)}) without any "
                   "delivered work")
        return "no_progress", f"no step committed: {why}"
    if stopped_by == "max_sim_hours":
        return "horizon_reached", (
            f"stopped at the horizon (run.max_sim_hours={horizon_hours:g}) after "
            f"{committed_steps} committed step(s); {unfinished_tasks} task(s) in flight "
            "recorded as unfinished"
        )
    return "completed", f"completed: {STOP_RULES.get(stopped_by, stopped_by)}"
