"""Study (b): end to end — FwdLLM against the backprop baselines (FwdLLM Fig. 10).

Setting "paper" (``scenario.yaml``): the paper's closed-form profile (100 identical,
always-online phones with FwdLLM's per-batch DistilBERT constants, uplink-only 10 Mibit/s),
each arm charged for DistilBERT with its paper's PEFT and layout: FwdLLM one perturbation
per client per batch over the whole cohort with a dense upload; Adapter-BP, BitFit-BP,
Full-BP and FedAdapter 10 clients a step (or round); plus ``fedsgd_same_peft``, FedSGD
(backprop) on FwdLLM's own learning PEFT and charged as Adapter-BP, which separates "forward
gradient against backprop" from "which PEFT".  all-MiniLM-L6-v2 on AG News supplies the
learning signal (the scale-down is on the page).  Plain SGD; every arm evaluated on one
simulated-time grid; a run stops at the first evaluation reaching 0.8 or at the common
budget of 30 simulated minutes.

Stages, each a sweep run through ``fleetsim sweep``'s machinery (resumable):

* ``--tune``: ``sweep_paper_tune.yaml``, each arm's rate on the validation split (seed 0);
* ``--setting paper`` (the default): ``sweep_paper.yaml``, the arms at their chosen rates ×
  seeds 0–9 on the test split (the page checks each ran at its chosen rate);
  ``--setting fleet`` / ``fleet_llama7b``: ``sweep_fleet[_llama7b].yaml``, the same arms
  and rates on the realistic fleet (``scenario_fleet.yaml``), charged for DistilBERT or
  for LLaMA-2-7B INT4;
* ``--scale``: ``sweep_paper_scale.yaml``, FwdLLM at 100 and at 1,000 clients for six steps
  × three seeds: simulated seconds per step and held-out loss per step at both scales.

Stages that ran before (their sweep folder exists) are analysed with the one run now.
``--publish`` copies the per-run table to ``docs/results/end_to_end/runs.csv`` and renders
``docs/results/end_to_end.md`` from it (:func:`render`);
``tests/analysis/test_results_pages.py`` renders it again.  ``--quick`` runs the
``*_quick.yaml`` smoke sweeps of the three settings through the same reducers (CI).

    python analysis/end_to_end/run.py --tune --backend ray --max-parallel 2
    python analysis/end_to_end/run.py --backend ray --max-parallel 2
    python analysis/end_to_end/run.py --setting fleet --setting fleet_llama7b --backend ray
    python analysis/end_to_end/run.py --scale --publish
    python analysis/end_to_end/run.py --quick
"""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from fleetsim.analysis.discipline import check_eval_grids, choose_settings, validation_scores
from fleetsim.analysis.load import load_runs
from fleetsim.analysis.pages import write_page, write_runs_table
from fleetsim.analysis.plots import save_figure
from fleetsim.analysis.stats import (
    censored_median,
    mean_confidence_interval,
    paired_first_verdict,
    paired_ratio_interval,
)
from fleetsim.analysis.study import (
    StudyRuns,
    check_discipline,
    per_run_table,
    run_study,
    study_arguments,
    study_entry,
)
from fleetsim.errors import FleetsimInputError

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
RESULTS = REPO / "docs" / "results"
PAGE, TABLE = RESULTS / "end_to_end.md", RESULTS / "end_to_end" / "runs.csv"
#: the arm every other is compared with, paired by seed
REFERENCE_ARM = "fwdllm"
#: FwdLLM Fig. 10 (DistilBERT on AG News, closed formula): minutes to 0.88 accuracy.
PAPER_MINUTES = {"fwdllm": 25.2, "fedadapter": 30.6, "adapter_bp": 92.8, "bitfit_bp": 103.9,
                 "full_bp": 418.9}
#: What each arm is, for the page: (paper name, layout, PEFT it learns on / is charged for).
ARMS = {
    "fwdllm": ("FwdLLM", "all 100 clients a step, 1 perturbation each, dense upload",
               "learns on LoRA r4 (query/value, top layer) + head; charged for width-48 "
               "adapters on all 6 layers + head (450,340)"),
    "fedsgd_same_peft": ("FedSGD, a control", "10 clients a step, backprop",
                         "FwdLLM's learning PEFT; charged as Adapter-BP"),
    "adapter_bp": ("Adapter-BP", "10 clients a step, backprop",
                   "width-48 adapters on all 6 layers + head (learned and charged)"),
    "bitfit_bp": ("BitFit-BP", "10 clients a step, backprop", "biases + head"),
    "full_bp": ("Full-BP", "10 clients a step, backprop", "every parameter"),
    "fedadapter": ("FedAdapter", "10 clients a round, each one local epoch of SGD (its "
                   "batches, at most protocol.batches_per_round = 15; a client holds about "
                   "58 items, 8 batches, here), FedAvg with server rate 1",
                   "width-48 adapters on the top 2 layers + head"),
}
SETTINGS = ("paper", "fleet", "fleet_llama7b")
TARGETS_KEY = "run.targets"


# ------------------------------------------------------------------ per-run rows
def arm_of(run_id: str) -> str:
    """The arm of a run id ``arm=<arm>[+<rate>]__...`` (the tuning sweep names its arms
    ``<arm>+<rate>``), with or without its sweep folder in front (``fleet/arm=...``)."""
    name = run_id.rsplit("/", 1)[-1]
    if not name.startswith("arm="):
        raise FleetsimInputError(f"{run_id}: not a run of an arms: sweep")
    return name[len("arm="):].split("__", 1)[0].split("+", 1)[0]


def _rate(summary: pd.DataFrame) -> pd.Series:
    """The tuned learning rate of each run: FedAdapter's client rate, else protocol.lr."""
    client = summary.get("protocol.client_lr")
    rate = pd.to_numeric(summary["protocol.lr"], errors="coerce")
    if client is not None:
        fedavg = summary["protocol.name"].isin(["fedadapter", "fedavg"])
        rate = rate.where(~fedavg, pd.to_numeric(client, errors="coerce"))
    return rate


def _step_facts(steps: pd.DataFrame, reached_s: float) -> tuple[float, float]:
    """(simulated seconds per committed step, committed steps when ``reached_s`` was
    reached) of one run's steps table.

    Seconds per step: the median gap between successive commits (the first from t = 0),
    so waits for a cohort and attempts that delivered nothing count, as they do in the
    time to target.  Steps: read from the evaluation row at ``reached_s`` (an evaluation
    on the time grid, attempt -1, records the steps committed so far; a per-step
    evaluation sits on the row of the step it follows, numbered from 0); NaN when not
    reached."""
    committed = steps[(steps["attempt"] >= 0) & steps["committed"].astype(bool)]
    times = np.sort(committed["sim_time_s"].to_numpy(dtype=float))
    per_step = float(np.median(np.diff(np.r_[0.0, times]))) if times.size else math.nan
    if not math.isfinite(reached_s):
        return per_step, math.nan
    evaluated = steps[steps["accuracy"].notna()
                      & np.isclose(steps["sim_time_s"].to_numpy(float), reached_s)]
    if evaluated.empty:
        raise FleetsimInputError(f"no evaluation at {reached_s} s, where the target was reached")
    row = evaluated.iloc[0]
    return per_step, float(row["step"] + (0 if int(row["attempt"]) < 0 else 1))


def run_rows(run_dirs: list[Path], stage: str, setting: str = "paper") -> pd.DataFrame:
    """The per-run rows of one stage (issue 23, rule 5): provenance, ``stage``,
    ``setting`` (:data:`SETTINGS`), ``arm``, ``method`` (the paper's name fleetsim gives
    the run), ``lr``, ``clients``, seed, end, ``budget_s`` (``run.max_sim_hours`` in
    seconds), seconds to each target (test split), ``best_val_accuracy``, ``s_per_step`` (simulated
    seconds a committed step takes), ``steps_to_<t>`` (committed steps when the highest
    target was first reached; NaN when not), ``host_s``; tuning rows add ``first_val_s``
    (simulated seconds to the highest target on the validation split within the budget)."""
    runset = load_runs(run_dirs)
    summary = runset.summary
    targets = [float(t) for t in json.loads(summary[TARGETS_KEY].iloc[0])] \
        if TARGETS_KEY in summary and summary[TARGETS_KEY].notna().all() else []
    rows = per_run_table(run_dirs, ["run.seed"], targets)
    facts = summary.set_index("run")
    rows.insert(3, "stage", stage)
    rows.insert(4, "setting", setting)
    rows.insert(5, "arm", rows["run"].map(arm_of))
    rows.insert(6, "method", rows["run"].map(facts["method"]))
    rows.insert(7, "lr", rows["run"].map(_rate(summary).set_axis(summary["run"])))
    rows.insert(8, "clients", rows["run"].map(facts["protocol.devices_per_step"]).astype(int))
    rows = rows.rename(columns={"run.seed": "seed"})
    top = max(targets) if targets else math.nan
    per_step, to_top = [], []
    for run in rows["run"]:
        reached = float(rows.loc[rows["run"] == run, f"tta_{top:g}_s"].iloc[0]) \
            if targets else math.nan
        a, b = _step_facts(runset.steps[runset.steps["run"] == run], reached)
        per_step.append(a)
        to_top.append(b)
    rows["s_per_step"] = per_step
    if targets:
        rows[f"steps_to_{top:g}"] = to_top
    rows["host_s"] = rows["run"].map(facts["host_seconds"].astype(float))
    rows["budget_s"] = rows["run"].map(facts["run.max_sim_hours"].astype(float) * 3600.0)
    if stage == "tune" and targets:
        budget = float(summary["run.max_sim_hours"].astype(float).max()) * 3600.0
        scores = validation_scores(runset, [], target=top, budget_s=budget)
        rows["first_val_s"] = rows["run"].map(scores.set_index("run")["first_s"])
    if stage == "scale":
        loss0 = pd.to_numeric(facts["initial_eval_loss"], errors="coerce")
        evaluated = runset.steps[runset.steps["eval_loss"].notna()].sort_values("sim_time_s")
        last = evaluated.groupby("run").last()
        # a per-step evaluation sits on the row of step k (numbered from 0: k + 1 steps
        # seen); one on the time grid (attempt -1) records the steps committed so far
        seen = last["step"] + (last["attempt"] >= 0).astype(int)
        rows["eval_loss_start"] = rows["run"].map(loss0)
        rows["eval_loss_end"] = rows["run"].map(last["eval_loss"])
        rows["eval_after_steps"] = rows["run"].map(seen)
    # Settings share run ids (arm=fwdllm__run.seed=0 in each): a run is named with its
    # sweep folder (fleet/arm=fwdllm__run.seed=0), so the table's run column is unique.
    folder = {d.name: d.parent.name for d in map(Path, run_dirs)}
    rows["run"] = [f"{folder[name]}/{name}" for name in rows["run"]]
    return rows


def infeasible_rows(runs: list, folder: str, stage: str, setting: str, like: pd.DataFrame,
                    methods: dict[str, str]) -> pd.DataFrame:
    """Rows, in ``like``'s columns, for the runs no phone of the fleet could hold
    (:class:`fleetsim.analysis.study.InfeasibleRun`): they never reach a target, at any
    horizon (the fleet's RAM does not change), so they end at the common budget with no
    step; ``stopped_by`` is ``infeasible: <what the job needs, the most any phone has>``.
    ``folder``: their sweep folder's name (runs are named ``<folder>/<run id>``, as
    :func:`run_rows` names them); ``methods``: arm → the paper's name (from the arm's runs
    that did start)."""
    rows = []
    for run in runs:
        sc, arm = run.scenario, arm_of(run.run_id)
        protocol = sc["protocol"]
        client = protocol["name"] in ("fedadapter", "fedavg")
        budget = float(sc["run"]["max_sim_hours"]) * 3600.0
        row = {column: math.nan for column in like.columns}
        row.update({
            "run": f"{folder}/{run.run_id}", "commit": run.commit,
            "scenario_hash": run.scenario_hash,
            "stage": stage, "setting": setting, "arm": arm,
            "method": methods.get(arm, ARMS.get(arm, (arm,))[0]),
            "lr": float(protocol["client_lr"] if client else protocol["lr"]),
            "clients": int(protocol["devices_per_step"]), "seed": int(sc["run"]["seed"]),
            "end_s": budget, "budget_s": budget, "steps": 0, "host_s": run.host_seconds,
            "stopped_by": "infeasible: " + run.error.split("hold the job: ", 1)[-1],
        })
        for column in like.columns:
            if column.startswith("tta_") or column == "first_val_s":  # never reached
                row[column] = math.inf
        rows.append(row)
    return pd.DataFrame(rows, columns=like.columns)


# ------------------------------------------------------------------ tuning
def tuning_selection(table: pd.DataFrame):
    """Each arm's chosen rate from the tuning rows of a per-run table
    (:func:`fleetsim.analysis.discipline.choose_settings` by time to the validation
    target); None without tuning rows."""
    tune = table[table["stage"] == "tune"] if "stage" in table.columns else table.iloc[:0]
    if tune.empty:
        return None
    frame = pd.DataFrame({"run": tune["run"], "arm": tune["arm"], "lr": tune["lr"],
                          "score": tune["best_val_accuracy"].fillna(-math.inf),
                          "first_s": tune["first_val_s"].astype(float)})
    return choose_settings(frame, ["arm"], ["lr"], by_time=True)


def chosen_rates(table: pd.DataFrame) -> dict[str, float]:
    """arm → the rate the tuning stage chose (empty without tuning rows)."""
    selection = tuning_selection(table)
    if selection is None:
        return {}
    grid = selection.grid
    return {str(a): float(r) for a, r in zip(grid.loc[grid["chosen"], "arm"],
                                              grid.loc[grid["chosen"], "lr"])}


# ------------------------------------------------------------------ the page
#: What each setting's clock is, for the page.
SETTING_WORDS = {
    "paper": "FwdLLM's closed-form profile: 100 identical, always-online phones with the "
             "paper's per-batch DistilBERT constants (NPU for perturbed inference, CPU for "
             "backprop), uplink-only 10 Mibit/s, each arm charged for DistilBERT with its "
             "paper's PEFT (`fleet.cost_model`)",
    "fleet": "a realistic fleet (`scenario_fleet.yaml`): 200 phones of the 2024 market-share "
             "catalogue from 21:00 with their own NPU/CPU latency, RAM admission, diurnal "
             "charging windows fitted on FLASH and measured FLASH Wi-Fi both ways, "
             "availability-aware cohorts, interrupted work paused; each arm charged for "
             "DistilBERT with its paper's PEFT and run at the rate chosen on the paper "
             "profile",
    "fleet_llama7b": "the same fleet with the phones charged for LLaMA-2-7B INT4 (its "
                     "latency, memory and payload; the learning signal unchanged)",
}


#: How the answer names each setting.
SETTING_SHORT = {
    "paper": "on the paper profile, scaled down (FwdLLM over 100 clients on a top-layer LoRA "
             "of MiniLM; the baselines on their own PEFT; target 0.8)",
    "fleet": "on the realistic fleet",
    "fleet_llama7b": "on the realistic fleet charged for LLaMA-2-7B INT4",
}


def _num(x: float, digits: int = 3) -> str:
    """``digits`` significant digits; a number of more digits than that in full with
    thousands separators (21,530, not 2.153e+04); "—" for NaN, "∞" for infinity."""
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "—"
    if math.isinf(x):
        return "∞"
    shown = f"{x:.{digits}g}"
    # decided after rounding: 999.7 at three digits is 1,000, not 1e+03
    return f"{x:,.0f}" if abs(float(shown)) >= 10 ** digits else shown


def _refusal(reasons: pd.Series) -> str:
    """One phrase for the infeasible runs of an arm, from their ``stopped_by``: what the
    job needs and the range of the most RAM any phone of each run's fleet has."""
    found = reasons.str.extract(r"(?P<kind>\w+) of (?P<model>\S+) \((?P<dtype>\w+)[^)]*\) "
                                r"needs (?P<need>\d+) MiB, the largest usable RAM in the "
                                r"fleet is (?P<best>\d+) MiB")
    if found.isna().any().any():
        return "; ".join(sorted(set(reasons.str[len("infeasible: "):])))
    need = sorted(set(found["need"].astype(int)))
    best = found["best"].astype(int)
    model = Path(found["model"].iloc[0]).name
    needs = " or ".join(f"{n:,}" for n in need)
    most = (f"{best.min():,} MiB" if best.min() == best.max()
            else f"{best.min():,}–{best.max():,} MiB, by seed")
    return (f"{found['kind'].iloc[0]} of {model} ({found['dtype'].iloc[0]}) needs {needs} MiB "
            f"of usable RAM; the most any phone of the fleet has is {most}")


def _arms(table: pd.DataFrame) -> list[str]:
    order = [a for a in ARMS if a in set(table["arm"])]
    return order + [a for a in dict.fromkeys(table["arm"]) if a not in order]


def _settings(table: pd.DataFrame) -> list[str]:
    present = set(table["setting"]) if "setting" in table.columns else {"paper"}
    return [s for s in SETTINGS if s in present] + sorted(present - set(SETTINGS))


def _targets(table: pd.DataFrame) -> list[float]:
    return sorted(float(c[len("tta_"):-2]) for c in table.columns
                  if c.startswith("tta_") and c.endswith("_s") and table[c].notna().any())


def _km_minutes(mine: pd.DataFrame, target: float) -> str:
    times = mine[f"tta_{target:g}_s"].to_numpy(dtype=float)
    km = censored_median(times[np.isfinite(times)] / 60.0,
                         mine.loc[~np.isfinite(times), "end_s"].to_numpy(float) / 60.0)
    if math.isinf(km.median):
        return km.label
    return f"{_num(km.median)} [{_num(km.low)}, {_num(km.high)}] ({km.reached}/{km.runs})"


def _steps_median(mine: pd.DataFrame, target: float):
    """Kaplan-Meier median committed steps to ``target`` over the runs (a run that never
    reached it censored at the steps it committed), as the minutes are."""
    steps = mine[f"steps_to_{target:g}"].to_numpy(dtype=float)
    hit = np.isfinite(steps)
    # a run no phone could hold never reaches it at any number of steps: censored at ∞,
    # as its minutes are at the common budget (it stays at risk throughout)
    never = mine["stopped_by"].astype(str).str.startswith("infeasible").to_numpy()
    censor = np.where(never, math.inf, mine["steps"].to_numpy(dtype=float))
    return censored_median(steps[hit], censor[~hit])


def _median_steps(mine: pd.DataFrame, target: float) -> float:
    """:func:`_steps_median`'s median; NaN when not reached by half of the runs."""
    median = _steps_median(mine, target).median
    return median if math.isfinite(median) else math.nan


def _steps_cell(mine: pd.DataFrame, target: float) -> str:
    km = _steps_median(mine, target)
    if not math.isfinite(km.median):
        return km.label
    return f"{_num(km.median, 4)} ({km.reached}/{km.runs})"


def verdicts(final: pd.DataFrame) -> dict[str, str]:
    """Paired-by-seed verdicts on reaching the highest target first, within one setting:
    each arm against FwdLLM (runs that ended without it censored at their end)."""
    top = max(_targets(final))
    column = f"tta_{top:g}_s"
    reference = final[final["arm"] == REFERENCE_ARM].set_index("seed")
    out = {}
    for arm in _arms(final):
        if arm == REFERENCE_ARM:
            continue
        other = final[final["arm"] == arm].set_index("seed")
        seeds = sorted(set(other.index) & set(reference.index))
        a, b = reference.loc[seeds], other.loc[seeds]
        out[arm] = paired_first_verdict(
            "FwdLLM", a[column].to_numpy(float), a["end_s"].to_numpy(float),
            f"{ARMS.get(arm, (arm,))[0]} (`{arm}`)", b[column].to_numpy(float),
            b["end_s"].to_numpy(float), f"{top:g}").text
    return out


def answer(table: pd.DataFrame) -> str:
    """The page's answer, in words, from the table alone: per setting, the rankings against
    FwdLLM that are established and those that are not."""
    final = table[table["stage"] == "final"]
    if final.empty:
        return "No test runs yet."
    parts = []
    for setting in _settings(final):
        said = verdicts(final[final["setting"] == setting])
        established = [v for v in said.values() if not v.startswith("not established")]
        rest = [a for a, v in said.items() if v.startswith("not established")]
        where = SETTING_SHORT.get(setting, setting)
        text = f"{where}: " + ("; ".join(established) if established
                                 else "no ranking against FwdLLM is established")
        if rest and established:
            text += f"; against {', '.join(f'`{a}`' for a in rest)}: not established"
        parts.append(text)
    return "Time to the highest target, paired by seed, " + " — ".join(parts) + "."


def _setting_section(final: pd.DataFrame, setting: str) -> list[str]:
    targets = _targets(final)
    top = max(targets)
    seeds = sorted(int(s) for s in final["seed"].unique())
    lines = [f"## Setting `{setting}`", "", f"Clock: {SETTING_WORDS.get(setting, setting)}. "
             f"{len(final)} runs: {len(_arms(final))} arms × seeds {seeds[0]}–{seeds[-1]}; "
             f"common budget {final['budget_s'].max() / 3600:.3g} simulated hour(s).", "",
             "| arm | method | rate | simulated s per step (median) | steps committed "
             f"(median, range) | steps to {top:g} | s per step × steps, min | ÷ FwdLLM: "
             "s per step, steps | " + " | ".join(f"minutes to {t:g}" for t in targets)
             + " | paper: minutes to 0.88 | paper: steps implied |",
             "|---|---|---|---|---|---|---|---|" + "---|" * len(targets) + "---|---|"]
    reference = final[final["arm"] == REFERENCE_ARM]
    ref_step = float(reference["s_per_step"].median()) if len(reference) else math.nan
    ref_steps = _median_steps(reference, top) if len(reference) else math.nan
    for arm in _arms(final):
        mine = final[final["arm"] == arm]
        per_step = float(mine["s_per_step"].median())
        paper = PAPER_MINUTES.get(arm) if setting == "paper" else None
        rates = ", ".join(f"{r:g}" for r in sorted(set(mine["lr"].astype(float))))
        steps = _median_steps(mine, top)
        product = per_step * steps / 60.0
        committed = mine["steps"].to_numpy(dtype=float)
        steps_ratio = (f"{_num(steps / ref_steps)}×"
                       if math.isfinite(steps) and math.isfinite(ref_steps) else "—")
        lines.append(
            f"| {arm} | {mine['method'].iloc[0]} | {rates} | {_num(per_step, 4)} | "
            f"{_num(float(np.median(committed)), 4)} ({_num(committed.min(), 4)}–"
            f"{_num(committed.max(), 4)}) | "
            f"{_steps_cell(mine, top)} | {_num(product)} | "
            f"{_num(per_step / ref_step)}{'×' if math.isfinite(per_step) else ''}, "
            f"{steps_ratio} | "
            + " | ".join(_km_minutes(mine, t) for t in targets)
            + f" | {_num(paper) if paper else '—'} | "
            + (f"{_num(paper * 60.0 / per_step, 4)}" if paper else "—") + " |")
    refused = final[final["stopped_by"].astype(str).str.startswith("infeasible")]
    for arm, part in refused.groupby("arm", sort=False):
        lines += ["", f"`{arm}` could not start in {len(part)} of "
                  f"{int((final['arm'] == arm).sum())} runs (seed"
                  + ("s " if len(part) > 1 else " ")
                  + ", ".join(str(int(s)) for s in sorted(part["seed"]))
                  + f"): no phone can hold its job ({_refusal(part['stopped_by'])}). Those "
                  "runs count as never reaching a target."]
    lines += ["", f"Which arm reaches {top:g} first, against FwdLLM:", ""]
    lines += [f"* {v}" for v in verdicts(final).values()]
    lines += ["", f"![held-out accuracy over simulated minutes, {setting}]"
              f"(end_to_end/curves_{setting}.png)", ""]
    return lines


def _scale_section(scale: pd.DataFrame) -> list[str]:
    """The scale-down check: per-step quantities at 100 and 1,000 clients."""
    if scale.empty:
        return ["## Scale-down check", "", "Not run yet (`--scale`).", ""]
    scale = scale.assign(drop=(scale["eval_loss_start"] - scale["eval_loss_end"])
                         / scale["eval_after_steps"])
    lines = ["## Scale-down check: per-step quantities at 100 and 1,000 clients", "",
             f"FwdLLM at {', '.join(f'{r:g}' for r in sorted(set(scale['lr'])))} for "
             f"{int(scale['eval_after_steps'].max())} steps from the same start, seeds "
             + ", ".join(str(int(s)) for s in sorted(scale["seed"].unique()))
             + " (each phone holds a uniform sample of 8 training items, one batch, at "
             "both scales, so only the cohort differs; at 1,000 phones the samples overlap, "
             "as 8,000 exceeds the training items); held-out loss on 1,000 test items.", "",
             "| clients | runs | simulated s per step | held-out loss drop per step "
             "[95 % interval] |", "|---|---|---|---|"]
    for clients, part in scale.groupby("clients"):
        mean, low, high, _ = mean_confidence_interval(part["drop"].to_numpy(float))
        per_step = sorted({round(float(v), 9) for v in part["s_per_step"]})
        lines.append(f"| {int(clients):,} | {len(part)} | "
                     + ", ".join(f"{v:.6g}" for v in per_step)
                     + f" | {_num(mean)} [{_num(low)}, {_num(high)}] |")
    sizes = sorted(scale["clients"].unique())
    small = scale[scale["clients"] == sizes[0]].set_index("seed")
    large = scale[scale["clients"] == sizes[-1]].set_index("seed")
    seeds = sorted(set(small.index) & set(large.index))
    ratio = paired_ratio_interval(large.loc[seeds, "drop"], small.loc[seeds, "drop"])
    lines += ["", f"Learning per step at {int(sizes[-1]):,} clients is {_num(ratio.ratio)}× "
              f"that at {int(sizes[0]):,} [{_num(ratio.low)}, {_num(ratio.high)}], "
              f"{ratio.n} paired seeds (geometric mean of the per-seed ratios, 95 % "
              "interval; a seed whose loss did not drop at one scale has no ratio and is "
              "left out). The time per step does not depend on the cohort on this profile "
              "(every phone works in parallel and uploads on its own link). Where the "
              "interval excludes 1 the learning per step does, and FwdLLM's steps to the "
              "target above are those of the scaled-down cohort, not the paper's.", ""]
    return lines


def _tuning_section(table: pd.DataFrame, final: pd.DataFrame) -> list[str]:
    selection = tuning_selection(table)
    if selection is None:
        return ["## Tuning", "", "No tuning runs in the table.", ""]
    tune = table[table["stage"] == "tune"]
    lines = ["## Tuning: each arm's learning rate on the validation split", "",
             "Plain SGD, each arm's rate from its own grid (sweep_paper_tune.yaml; "
             "FedAdapter's is its clients' local rate), seed 0, paper profile, on 5 % of "
             "the training items carved off as a validation split; a tuning run stops when "
             "its validation accuracy reaches the highest target, so the test split "
             "decides nothing, else at the tuning budget of "
             + ", ".join(f"{b / 60:.3g}" for b in sorted(set(tune["budget_s"])))
             + " simulated minutes (a rate slower than that is never an arm's fastest; an "
             "arm none of whose rates reached the target is chosen by its validation "
             "accuracy). Chosen by: most tuning seeds reaching it within the budget, "
             "then the smallest median simulated time to it, then the best mean validation "
             "accuracy; ties to the smaller rate.", "",
             selection.markdown().split("\n\n", 1)[1].rstrip("\n"), ""]
    grid = selection.grid
    for arm, part in grid.groupby("arm", sort=False):
        rates = sorted(float(v) for v in part["lr"])
        chosen = float(part.loc[part["chosen"], "lr"].iloc[0])
        edge = (" (at the end of its grid: a rate beyond it was not tried)"
                if chosen in (rates[0], rates[-1]) else "")
        ran = sorted({float(v) for v in final.loc[final["arm"] == arm, "lr"]})
        if ran == [chosen]:
            tail = "its test runs ran at it"
        elif not ran:
            tail = "no test runs yet"
        else:
            tail = (f"its test runs ran at {', '.join(f'{r:g}' for r in ran)}, so its "
                    "numbers above are provisional")
        lines.append(f"* `{arm}`: grid {', '.join(f'{r:g}' for r in rates)}; chosen "
                     f"{chosen:g}{edge}; {tail}.")
    return lines + [""]


def render(table: pd.DataFrame) -> str:
    """docs/results/end_to_end.md from its per-run table (pure)."""
    final = table[table["stage"] == "final"].reset_index(drop=True)
    scale = table[table["stage"] == "scale"].reset_index(drop=True)
    lines = [
        "# (b) End to end: FwdLLM against the backprop baselines (Fig. 10)", "",
        "<!-- Written by analysis/end_to_end/run.py --publish from end_to_end/runs.csv; "
        "tests/analysis/test_results_pages.py renders it again. Do not edit by hand. -->", "",
        f"**Answer.** {answer(table)}", "",
        "| | |", "|---|---|",
        "| learning signal | all-MiniLM-L6-v2 (the encoder fleetsim ships, standing in "
        "for DistilBERT) on AG News: the 7,600 items of its test file split 80/20 by the "
        "run seed (standing in for the 120,000-item train split), 5 % of the training "
        "part carved off for validation, 32 tokens, batches of 8, 100 clients holding an "
        "iid share each; plain SGD |",
        f"| runs | {len(final)} test runs in {len(_settings(final)) if len(final) else 0} "
        "setting(s) (paired: a seed is the same split, partition and fleet for every arm); "
        f"{int((table['stage'] == 'tune').sum())} tuning runs; {len(scale)} scale-check "
        "runs |",
        f"| host time | {table['host_s'].sum() / 60.0:.1f} min summed over the runs "
        "(2-core host) |",
        f"| commit | {', '.join(sorted(set(table['commit'])))} |", "",
        "**Scaled down, and by how much.** The paper runs FwdLLM over 1,000 clients with "
        "adapters on every layer of DistilBERT; on this host that is hours per run. Here "
        "FwdLLM's cohort is 100 clients (10× fewer perturbations a step) and it learns on "
        "a top-layer LoRA of the stand-in encoder (7,684 trainable), while the phones are "
        "charged for the paper's adapters (450,340). The baselines learn on their own "
        "method's PEFT. `fedsgd_same_peft` is backprop on FwdLLM's learning PEFT and "
        "clock of Adapter-BP, so FwdLLM against it is forward gradient against backprop "
        "on equal terms. The check at the bottom measures what the cohort's scale-down "
        "does to the per-step quantities.", "",
        "Arms:", "",
        *[f"* `{arm}` ({ARMS[arm][0]}): {ARMS[arm][1]}; {ARMS[arm][2]}."
          for arm in _arms(table) if arm in ARMS], "",
    ]
    if len(final):
        top = max(_targets(final))
        lines += [
            "Every arm is evaluated on one simulated-time grid (every 5 simulated seconds "
            "from t = 0, 200 held-out test items) and stops at the first evaluation "
            f"reaching {top:g}, else at its setting's common budget. Minutes: the "
            "Kaplan–Meier median over seeds, runs that never reached the target censored "
            "at their end, 95 % log-log interval, (reached/runs). Steps: the median "
            "committed steps (FedAdapter: rounds) at the first evaluation reaching it, "
            "the Kaplan–Meier median over seeds as for the minutes (a run that never "
            "reached it censored at the steps it committed). Steps committed: over the "
            "whole run (to the target or the budget). Simulated s per step: the "
            "median gap between commits, the median over the runs that committed a step "
            "(a fleet's long stalls, a step waiting hours for a "
            "phone that went offline mid-task, show in the steps committed, not here). "
            "Simulated s per step × steps is the decomposition of the minutes (the grid "
            "rounds the time up to the next evaluation); \"÷ FwdLLM\" divides each factor "
            "by FwdLLM's (a FedAdapter step is a round: one local epoch per client). Paper: FwdLLM "
            "Fig. 10's minutes to 0.88 and the steps they imply at the same per-step cost. "
            "Verdicts: paired by seed; a pair's order is known when one arm reached the "
            "target before the other's run ended; the ratio of times when every pair "
            "reached it; established only with at least 10 pairs and an interval excluding "
            "1 (or 1/2 for shares).",
            ""]
        for setting in _settings(final):
            lines += _setting_section(final[final["setting"] == setting], setting)
    lines += _tuning_section(table, final)
    lines += _scale_section(scale)
    missing = [s for s in SETTINGS if s not in set(final.get("setting", []))]
    if missing:
        lines += ["## Not in this study yet", "",
                  "Settings without test runs in the table: "
                  + ", ".join(f"`{s}` ({SETTING_WORDS[s]})" for s in missing)
                  + ". Their ten-seed sweeps (`sweep_<setting>.yaml`: the same arms at the "
                  "rates tuned on the paper profile; `run.py --setting <setting>`) have not "
                  "run yet; only their smoke tests (`--quick`) have.", ""]
    return "\n".join(lines)


def curves_figure(run_dirs: list[Path], table: pd.DataFrame, path: Path) -> Figure:
    """Held-out accuracy against simulated minutes (log scale), one line per run,
    coloured by arm."""
    figure = Figure(figsize=(8.0, 4.6), layout="constrained")
    ax = figure.subplots()
    arm_of_run = dict(zip(table["run"], table["arm"]))
    colours = {a: f"C{i % 10}" for i, a in enumerate(_arms(table))}
    seen: set[str] = set()
    for run_dir in run_dirs:
        arm = arm_of_run.get(f"{run_dir.parent.name}/{run_dir.name}")
        if arm is None:
            continue
        steps = pd.read_parquet(run_dir / "steps.parquet", columns=["sim_time_s", "accuracy"])
        steps = steps[steps["accuracy"].notna() & (steps["sim_time_s"] > 0)]
        ax.plot(steps["sim_time_s"] / 60.0, steps["accuracy"], color=colours[arm], alpha=0.6,
                lw=1, label=None if arm in seen else arm)
        seen.add(arm)
    for target in _targets(table):
        ax.axhline(target, color="grey", lw=0.6, linestyle=":")
    ax.set_xscale("log")
    ax.set_xlabel("simulated minutes (log scale)")
    ax.set_ylabel("held-out accuracy")
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=7)
    return save_figure(figure, path)


# ------------------------------------------------------------------ running
def analyse(stages: dict[tuple[str, str], StudyRuns], figures: Path, mark: bool
            ) -> pd.DataFrame:
    """The per-run table of every (stage, setting) run (``figures/runs.csv``), the page
    rendered from it (``figures/page.md``) and each setting's accuracy curves.  The test
    runs of one setting must share the evaluation grid and horizon (issue 23, rules 1-2)
    unless ``mark``; tuning runs stop on the validation split, so only the grid rule
    applies to them."""
    figures.mkdir(parents=True, exist_ok=True)
    tables = []
    for (stage, setting), runs in stages.items():
        rows = run_rows(runs.run_dirs, stage, setting)
        if runs.infeasible:
            methods = dict(zip(rows["arm"], rows["method"]))
            for done in tables:
                methods = {**dict(zip(done["arm"], done["method"])), **methods}
            rows = pd.concat([rows, infeasible_rows(runs.infeasible, runs.out_dir.name, stage,
                                                    setting, rows, methods)],
                             ignore_index=True)
        if stage == "final":
            check_discipline(runs.run_dirs, _targets(rows), mark)
        elif stage == "tune":
            check_eval_grids(load_runs(runs.run_dirs))
        tables.append(rows)
    table = pd.concat(tables, ignore_index=True)
    write_runs_table(table, figures / "runs.csv")
    write_page(figures / "runs.csv", figures / "page.md", render)
    for (stage, setting), runs in stages.items():
        if stage == "final":
            mine = table[(table["stage"] == "final") & (table["setting"] == setting)]
            curves_figure(runs.run_dirs, mine, figures / f"curves_{setting}.png")
    return table


def quick(args, out: Path) -> None:
    """The smoke test: each setting's quick sweep through :func:`run_rows` and the page."""
    figures = out / "figures-quick"
    for setting in SETTINGS:
        runs = run_study(HERE / f"sweep_{setting}_quick.yaml", out / "runs" / f"{setting}_quick",
                         args.set, args.fresh, args.backend, args.max_parallel,
                         allow_infeasible=True)
        check_discipline(runs.run_dirs, [], True)
        rows = run_rows(runs.run_dirs, "final", setting)
        if runs.infeasible:
            rows = pd.concat([rows, infeasible_rows(runs.infeasible, runs.out_dir.name, "final",
                                                    setting, rows, {})], ignore_index=True)
        write_runs_table(rows, figures / f"runs_{setting}.csv")
        write_page(figures / f"runs_{setting}.csv", figures / f"page_{setting}.md", render)
    print(f"figures and tables in {figures}")


def main(argv: list[str] | None = None) -> None:
    parser = study_arguments(__doc__.splitlines()[0])
    parser.add_argument("--tune", action="store_true",
                        help="run the tuning stage (sweep_paper_tune.yaml); the test runs "
                        "are analysed with it only where they have run")
    parser.add_argument("--scale", action="store_true",
                        help="run the scale-down check (sweep_paper_scale.yaml) too")
    parser.add_argument("--setting", action="append", choices=SETTINGS, default=None,
                        help="run this setting's test sweep (sweep_<setting>.yaml; "
                        "repeatable; default: paper); settings run before are analysed too")
    parser.add_argument("--publish", action="store_true",
                        help="copy runs.csv and the curves to docs/results/ and render the page")
    args = parser.parse_args(argv)
    out = args.out or HERE
    if args.quick:
        quick(args, out)
        return
    runs_dir = out / "runs"

    def stage(sweep: str, folder: str, seeds=None) -> StudyRuns:
        return run_study(HERE / sweep, runs_dir / folder, args.set, args.fresh, args.backend,
                         args.max_parallel, seeds=seeds, allow_infeasible=True)

    def ran(folder: str) -> bool:
        return (runs_dir / folder / "sweep_index.parquet").is_file()

    stages: dict[tuple[str, str], StudyRuns] = {}
    if args.tune or ran("paper_tune"):
        stages[("tune", "paper")] = stage("sweep_paper_tune.yaml", "paper_tune")
    wanted = args.setting or ([] if args.tune else ["paper"])
    for setting in SETTINGS:
        if setting in wanted or ran(setting):
            stages[("final", setting)] = stage(f"sweep_{setting}.yaml", setting, args.seeds)
    if args.scale or ran("paper_scale"):
        stages[("scale", "paper")] = stage("sweep_paper_scale.yaml", "paper_scale")
    figures = out / "figures"
    table = analyse(stages, figures, args.allow_unequal_horizons)
    if ("tune", "paper") in stages:
        rates = ", ".join(f"{a} {r:g}" for a, r in chosen_rates(table).items())
        print(f"chosen rates (validation split): {rates}")
    if args.publish:
        TABLE.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(figures / "runs.csv", TABLE)
        for picture in figures.glob("curves_*.png"):
            shutil.copyfile(picture, TABLE.parent / picture.name)
        print(f"published {write_page(TABLE, PAGE, render)}")
    print(f"figures and tables in {figures}")


if __name__ == "__main__":
    raise SystemExit(study_entry(main))
