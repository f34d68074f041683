"""The study discipline the tools enforce (issue 23, rules 1–3).

* **Equal horizons** (:func:`check_horizons`, :func:`require_equal_horizons`).  Arms of one
  comparison must run to the target or to one common simulated-time budget — never to a
  common step count when their step times differ (v = 1 stopping at 12 s and v = 50 at
  617 s decides "which v is faster to 95 %" by construction).  The rule, per run: it either
  **reached every target** (its highest target: the answer is known whenever it ended), or
  its simulated end (``summary.json`` ``simulated_seconds``) is at least
  ``(1 - tolerance) × B``, where the common budget ``B`` is the latest end of *any* run of
  the comparison (a run that stopped at the target ends early legitimately; one that did
  not must have had as much simulated time as the longest run, else a smaller v that
  stopped at 12 s "loses" to a v whose target time lies after that end).  With no targets
  (systems-only comparisons) every run must end within the tolerance of ``B``.  The
  default tolerance, 1 %, covers the last step that straddles ``run.max_sim_hours``; a run
  stopped by ``protocol.max_steps`` or ``protocol.rounds`` well before the others fails
  it.
* **Equal evaluation** (:func:`check_eval_grids`).  Every arm is evaluated on the same
  simulated-time grid (``protocol.eval_every_s``) or, for all of them, at the same step
  interval; a noisy running maximum favours the arm evaluated most often, so arms with
  different grids are refused.
* **Tuned arms** (:func:`select_by_validation`).  Each arm's learning rate (and optimiser
  where the method allows it) is picked from a stated grid by the validation split, and
  the chosen runs' *test* numbers are what a page reports.

Errors are :class:`~fleetsim.errors.FleetsimInputError` (exit code 2, one line naming
the runs and what differs).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd

from fleetsim.analysis.load import RunSet
from fleetsim.errors import FleetsimInputError

#: Relative tolerance on a run's simulated end against the common budget: the step that
#: commits across ``run.max_sim_hours`` may end a little after it, a run that was stopped
#: by a step count ends far before it.
HORIZON_TOLERANCE = 0.01

#: The validation metric in ``steps.parquet`` (accuracy on the validation split; the
#: ``accuracy`` column is the held-out test split, never used to tune).
VALIDATION_COLUMN = "val_accuracy"

#: Scenario keys that fix where a run is evaluated.
EVAL_GRID_KEYS = ("protocol.eval_every_s", "protocol.eval_every_steps")


@dataclass
class HorizonCheck:
    """The outcome of :func:`check_horizons`.

    ``ends`` has one row per run: ``run``, ``end_s`` (simulated seconds), ``reached``
    (every target reached) and ``ok`` (the rule holds for this run).  ``budget_s`` is the
    common budget B: the latest simulated end of any run (NaN without runs)."""

    ends: pd.DataFrame
    budget_s: float
    tolerance: float

    @property
    def ok(self) -> bool:
        return bool(self.ends["ok"].all())

    def message(self) -> str:
        """One line naming the runs that ended short of the budget (empty when ok)."""
        short = self.ends[~self.ends["ok"]]
        if short.empty:
            return ""
        listed = ", ".join(f"{r} ({e / 3600:.4g} h)" for r, e in zip(short["run"], short["end_s"]))
        return (
            f"unequal horizons: {len(short)} run(s) ended without reaching every target before "
            f"the common simulated-time budget {self.budget_s / 3600:.4g} h "
            f"(tolerance {self.tolerance:.0%}): {listed}; run every arm to the target or to one "
            "run.max_sim_hours (not to a common step count)"
        )


def _highest_accuracy(runset: RunSet) -> pd.Series:
    steps = runset.steps
    finite = steps[np.isfinite(steps["accuracy"].to_numpy(dtype=float))]
    best = finite.groupby("run")["accuracy"].max()
    return best.reindex(runset.summary["run"]).fillna(-math.inf)


def check_horizons(
    runset: RunSet, targets: Sequence[float] = (), tolerance: float = HORIZON_TOLERANCE
) -> HorizonCheck:
    """Apply the equal-horizon rule (module docstring) to every run of ``runset``.

    ``targets`` are accuracies in (0, 1]; a run reached every target when its highest
    finite evaluated accuracy is at least ``max(targets)``.  Returns the per-run verdicts;
    raises nothing (see :func:`require_equal_horizons`)."""
    if not 0 <= tolerance < 1:
        raise FleetsimInputError(f"horizon tolerance {tolerance}: must be in [0, 1)")
    summary = runset.summary
    ends = pd.to_numeric(summary["simulated_seconds"], errors="coerce").to_numpy(dtype=float)
    if targets:
        reached = (_highest_accuracy(runset).to_numpy(dtype=float) >= max(targets) - 1e-12)
    else:
        reached = np.zeros(len(summary), dtype=bool)
    budget = float(np.nanmax(ends)) if len(ends) else math.nan
    ok = reached | (ends >= (1.0 - tolerance) * budget)
    frame = pd.DataFrame(
        {"run": summary["run"].to_numpy(), "end_s": ends, "reached": reached, "ok": ok}
    )
    return HorizonCheck(ends=frame, budget_s=budget, tolerance=tolerance)


def require_equal_horizons(
    runset: RunSet, targets: Sequence[float] = (), tolerance: float = HORIZON_TOLERANCE
) -> HorizonCheck:
    """:func:`check_horizons`, raising :class:`FleetsimInputError` (one line) when a run
    ended short of the common budget without reaching every target."""
    check = check_horizons(runset, targets, tolerance)
    if not check.ok:
        raise FleetsimInputError(check.message())
    return check


def eval_grids(runset: RunSet) -> pd.DataFrame:
    """Per run: ``run`` and the evaluation keys of :data:`EVAL_GRID_KEYS` (0 where the
    scenario does not set one: the schema's default)."""
    summary = runset.summary
    frame = pd.DataFrame({"run": summary["run"].to_numpy()})
    for key in EVAL_GRID_KEYS:
        values = summary[key] if key in summary.columns else pd.Series(0, index=summary.index)
        frame[key] = pd.to_numeric(values, errors="coerce").fillna(0).to_numpy(dtype=float)
    return frame


def evaluated_points(runset: RunSet, run: str) -> tuple[str, list[float]]:
    """Where one run was evaluated, as recorded in its steps table: ``("time", [simulated
    seconds])`` for the rows of a ``protocol.eval_every_s`` grid (attempt −1), else
    ``("step", [committed-step indices])`` of the committed rows that carry an
    evaluation, without the run's last committed row (the final model's evaluation every
    run gets at its end)."""
    steps = runset.steps[runset.steps["run"] == run]
    evaluated = steps[steps["accuracy"].notna() | steps["eval_loss"].notna()]
    grid = evaluated[evaluated["attempt"] < 0]
    if len(grid):
        return "time", sorted(grid["sim_time_s"].astype(float))
    committed = steps[steps["committed"]].sort_values(["sim_time_s", "step"], kind="stable")
    if committed.empty:
        return "step", []
    last = int(committed["step"].iloc[-1])
    points = evaluated[evaluated["committed"] & (evaluated["step"] != last)]["step"]
    return "step", sorted(int(s) for s in points)


def check_eval_grids(runset: RunSet) -> pd.DataFrame:
    """Refuse (:class:`FleetsimInputError`, one line) a comparison whose runs are evaluated
    on different grids: different ``protocol.eval_every_s`` or, without a time grid,
    different ``protocol.eval_every_steps`` (0, evaluation at each round end, counts as
    its own grid) — and, from the steps tables, runs whose recorded evaluation points
    (:func:`evaluated_points`) differ over the range every run covers (a protocol that
    evaluates every round whatever ``eval_every_steps`` says is caught here).  Returns
    :func:`eval_grids`."""
    grids = eval_grids(runset)
    distinct = grids.drop_duplicates(subset=list(EVAL_GRID_KEYS))
    if len(distinct) > 1:
        listed = "; ".join(
            ", ".join(f"{k}={row[k]:g}" for k in EVAL_GRID_KEYS) + f" ({row['run']})"
            for _, row in distinct.iterrows()
        )
        raise FleetsimInputError(
            f"unequal evaluation: runs are evaluated on different grids ({listed}); set one "
            "protocol.eval_every_s for every arm"
        )
    points = {run: evaluated_points(runset, run) for run in grids["run"]}
    kinds = {kind for kind, _ in points.values()}
    if len(kinds) > 1:
        raise FleetsimInputError(
            "unequal evaluation: some runs were evaluated on a time grid, others at steps ("
            + ", ".join(f"{run}: {kind}" for run, (kind, _) in points.items()) + ")"
        )
    covered = min((max(p) for _, p in points.values() if p), default=None)
    if covered is not None:
        shared = {run: [x for x in p if x <= covered] for run, (_, p) in points.items()}
        first_run, first = next(iter(shared.items()))
        for run, pts in shared.items():
            if pts != first:
                raise FleetsimInputError(
                    f"unequal evaluation: {run} was evaluated at {_points_text(pts)}, "
                    f"{first_run} at {_points_text(first)} (up to {covered:g}, the range every "
                    f"run covers); set one protocol.eval_every_s for every arm"
                )
    return grids


def _points_text(points: Sequence[float], shown: int = 6) -> str:
    text = ", ".join(f"{p:g}" for p in points[:shown])
    return f"[{text}{', …' if len(points) > shown else ''}]"


@dataclass
class Selection:
    """The outcome of :func:`select_by_validation`.

    ``grid`` has one row per (arm, candidate setting): the arm keys, the tuned keys,
    ``runs``, ``validation`` (the criterion: mean over seeds of each run's best validation
    accuracy up to the budget) and ``chosen`` (bool).  ``chosen_runs`` are the run ids of
    the chosen settings, in summary order."""

    grid: pd.DataFrame
    chosen_runs: list[str]
    criterion: str

    def markdown(self) -> str:
        """The grid and the choice for a results page: the criterion, then one row per
        candidate (arm keys, tuned keys, runs, validation score to 4 digits, "chosen")."""
        from fleetsim.analysis.tables import markdown_table

        shown = self.grid.copy()
        shown["validation"] = [f"{v:.4f}" for v in shown["validation"]]
        if "median_s" in shown.columns:
            shown["reached"] = [f"{int(k)} of {int(n)}"
                                for k, n in zip(shown["reached"], shown["runs"])]
            shown["median_s"] = [f"{v / 60:.3g}" if math.isfinite(v) else "not reached"
                                 for v in shown["median_s"]]
            shown = shown.rename(columns={"median_s": "median minutes to target"})
        shown["chosen"] = ["chosen" if c else "" for c in shown["chosen"]]
        return f"Chosen by {self.criterion}.\n\n" + markdown_table(shown)


def _evaluated_within(runset: RunSet, column: str, budget_s: float) -> pd.DataFrame:
    """The step rows with a finite ``column`` evaluated at or before ``budget_s``."""
    steps = runset.steps
    if column not in steps.columns:
        raise FleetsimInputError(
            f"steps.parquet has no {column!r} column: the runs were not evaluated on a "
            "validation split (set numerics.data.validation_fraction)"
        )
    values = steps[column].to_numpy(dtype=float)
    return steps[np.isfinite(values) & (steps["sim_time_s"].to_numpy(dtype=float) <= budget_s)]


def _first_at_or_above(runset: RunSet, column: str, target: float,
                       budget_s: float) -> pd.Series:
    """Per run (summary order): the simulated seconds of the first evaluation whose
    ``column`` reaches ``target`` at or before ``budget_s``; inf when none did."""
    inside = _evaluated_within(runset, column, budget_s)
    hits = inside[inside[column].to_numpy(dtype=float) >= target]
    first = hits.groupby("run")["sim_time_s"].min()
    return first.reindex(runset.summary["run"]).fillna(math.inf)


def _validation_at_budget(runset: RunSet, column: str, budget_s: float) -> pd.Series:
    best = _evaluated_within(runset, column, budget_s).groupby("run")[column].max()
    return best.reindex(runset.summary["run"])


def select_by_validation(
    runset: RunSet,
    arm_keys: Sequence[str],
    tuned_keys: Sequence[str] = ("protocol.lr",),
    column: str = VALIDATION_COLUMN,
    budget_s: float = math.inf,
    target: float | None = None,
) -> Selection:
    """Pick each arm's setting of ``tuned_keys`` (e.g. ``protocol.lr``) from the sweep's
    grid by the validation split.

    With ``target`` (a time-to-accuracy study, whose tuning runs stop on the validation
    split: ``run.stop_split: validation``), the criterion is how soon each candidate
    reaches ``target`` on the validation split: most runs (seeds) reaching it at or
    before ``budget_s`` first, then the smallest median simulated time to it (a run that
    never reached it counts as infinitely late), then the highest mean best validation
    accuracy, then the smallest tuned values.  The grid then has ``reached`` and
    ``median_s`` columns beside ``validation``.

    Criterion: for each run, the best validation accuracy (``column`` of
    ``steps.parquet``) evaluated at or before ``budget_s`` simulated seconds; per
    candidate, the mean of that over its runs (seeds); the candidate with the highest mean
    wins, ties (within 1e-12) go to the smallest tuned values, compared in the order of
    ``tuned_keys`` (``("protocol.lr",)``: the smaller learning rate; with an optimiser key
    as well, e.g. ``("protocol.lr", "numerics.server_optimizer.name")``, the smaller
    learning rate first).
    A run that never evaluated validation accuracy scores −inf.  The test split never
    enters the choice.

    Raises :class:`FleetsimInputError` when a key is not a scenario column of the runs or
    an arm has no candidate."""
    summary = runset.summary
    for key in [*arm_keys, *tuned_keys]:
        if key not in summary.columns:
            raise FleetsimInputError(
                f"selection key {key!r} is not a scenario key of the runs; known: "
                + ", ".join(runset.param_columns)
            )
    frame = validation_scores(runset, [*arm_keys, *tuned_keys], column, budget_s, target)
    selection = choose_settings(frame, arm_keys, tuned_keys, by_time=target is not None)
    criterion = (
        f"most seeds reaching {column} {target:g}"
        + (f" at or before {budget_s / 3600:g} h simulated" if math.isfinite(budget_s) else "")
        + f", then the smallest median simulated time to it, then the best mean {column}; "
        f"ties to the smaller {', '.join(tuned_keys)}"
        if target is not None
        else f"best {column} at or before {budget_s / 3600:g} h simulated, mean over seeds; "
        f"ties to the smaller {', '.join(tuned_keys)}"
        if math.isfinite(budget_s)
        else f"best {column} over the run, mean over seeds; ties to the smaller "
        f"{', '.join(tuned_keys)}"
    )
    return Selection(grid=selection.grid, chosen_runs=selection.chosen_runs,
                     criterion=criterion)


def validation_scores(runset: RunSet, keys: Sequence[str], column: str = VALIDATION_COLUMN,
                      budget_s: float = math.inf, target: float | None = None) -> pd.DataFrame:
    """One row per run (summary order): ``run``, ``keys`` (scenario columns), ``score``
    (best ``column`` at or before ``budget_s``; -inf when never evaluated) and, with
    ``target``, ``first_s`` (simulated seconds of the first evaluation reaching it at or
    before ``budget_s``; inf when none): the per-run table :func:`choose_settings` reads."""
    frame = runset.summary[["run", *keys]].copy()
    frame["score"] = _validation_at_budget(runset, column, budget_s).fillna(-math.inf).to_numpy()
    if target is not None:
        frame["first_s"] = _first_at_or_above(runset, column, target, budget_s).to_numpy()
    return frame.reset_index(drop=True)


def choose_settings(frame: pd.DataFrame, arm_keys: Sequence[str],
                    tuned_keys: Sequence[str], by_time: bool = False) -> Selection:
    """The choice of :func:`select_by_validation` from its per-run scores, so a results
    page can recompute it from a committed per-run table.

    ``frame``: one row per tuning run with ``run``, the arm and tuned keys, ``score`` (the
    run's best validation accuracy within the budget; -inf when none) and, with
    ``by_time``, ``first_s`` (simulated seconds to the validation target; inf when not
    reached).  Returns the :class:`Selection` with an empty ``criterion``."""
    aggregations = {"runs": ("run", "size"), "validation": ("score", "mean")}
    if by_time:
        aggregations.update(reached=("first_s", lambda v: int(np.isfinite(v).sum())),
                            median_s=("first_s", "median"))
    candidates = (
        frame.groupby([*arm_keys, *tuned_keys], dropna=False, sort=True)
        .agg(**aggregations)
        .reset_index()
    )
    candidates["chosen"] = False
    for _, part in candidates.groupby(list(arm_keys), dropna=False, sort=False):
        if by_time:
            order = part.assign(_reached=-part["reached"], _score=-part["validation"])
            pick = order.sort_values(["_reached", "median_s", "_score", *tuned_keys],
                                     kind="stable").index[0]
        else:
            best = part["validation"].max()
            tied = part[part["validation"] >= best - 1e-12]
            pick = tied.sort_values(list(tuned_keys), kind="stable").index[0]
        candidates.loc[pick, "chosen"] = True
    chosen = candidates[candidates["chosen"]]
    keyed = frame.merge(chosen[[*arm_keys, *tuned_keys]], on=[*arm_keys, *tuned_keys])
    chosen_ids = set(keyed["run"])
    return Selection(grid=candidates,
                     chosen_runs=[r for r in frame["run"] if r in chosen_ids], criterion="")


__all__ = [
    "EVAL_GRID_KEYS",
    "HORIZON_TOLERANCE",
    "HorizonCheck",
    "Selection",
    "VALIDATION_COLUMN",
    "check_eval_grids",
    "check_horizons",
    "choose_settings",
    "eval_grids",
    "require_equal_horizons",
    "select_by_validation",
    "validation_scores",
]
