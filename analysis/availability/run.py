"""Availability models compared on the same fleet and seed (docs/results/availability.md).

Runs ``analysis/availability/scenario.yaml`` (300 phones, systems-only) under
``traces.availability.kind`` = diurnal_model (the old default), empirical (measured FLASH
windows, ``../shared/device_data/flash_ready_windows/ready_strict.json``) and diurnal_windows
(the model fitted on them), in two settings, and writes ``analysis/availability/results.{csv,md}``:

* ``short tasks``: the scenario as it is (phones charged for the all-MiniLM learning model:
  tasks of seconds to minutes), pause semantics;
* ``long tasks``: the phones are charged for TinyLlama-1.1B with int8 weights
  (``fleet.cost_model``, ``scenarios/models/tinyllama-1.1b``), so a task lasts tens of minutes
  as a billion-parameter model on a phone would, under ``fleet.interruption`` = pause and lose.

Columns:

* ``tasks``: assigned tasks (``assign`` events); ``task_busy_min_median``: median minutes a
  task spends downloading, computing and uploading (the sum of those events' durations, pauses
  excluded); ``interrupted_share``: share of tasks with at least one ``interrupted`` event
  (availability ended mid-way: download, compute or upload);
* ``straggler_wait_s`` (mean, p90 over committed steps): commit time minus the time of the
  step's median finished upload — how long the server waits for its slower half;
* ``step_s_median``: median ``step_seconds``; ``sim_hours``: simulated hours of the run.

The overlay PNGs in ``docs/results/`` come from ``fleetsim traces sample`` and ``fleetsim
traces inspect --overlay`` (commands in ``docs/results/availability.md``).

    .venv/bin/python analysis/availability/run.py      # about a minute on 2 cores
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import pandas as pd

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
SCENARIO = HERE / "scenario.yaml"
MEASURED = ROOT / ".." / "shared" / "device_data" / "flash_ready_windows" / "ready_strict.json"
MODELS = {
    "diurnal_model (old)": ["traces.availability.kind=diurnal_model"],
    "empirical (measured)": [
        "traces.availability.kind=empirical",
        f"traces.availability.path={MEASURED.resolve()}",
    ],
    "diurnal_windows (fitted)": ["traces.availability.kind=diurnal_windows"],
}
#: (setting, overrides): the scenario as it is, and the phones charged for a ~1B model
SETTINGS = {
    ("short tasks", "pause"): [],
    ("long tasks", "pause"): [
        "fleet.cost_model.name_or_path=../../scenarios/models/tinyllama-1.1b",
        "fleet.cost_model.dtype=int8",
    ],
    ("long tasks", "lose"): [
        "fleet.cost_model.name_or_path=../../scenarios/models/tinyllama-1.1b",
        "fleet.cost_model.dtype=int8",
        "fleet.interruption=lose",
    ],
}


def run_metrics(run_dir: Path) -> dict:
    """The table's figures for one run directory (module docstring)."""
    ev = pd.read_parquet(run_dir / "events.parquet")
    steps = pd.read_parquet(run_dir / "steps.parquet")
    tasks = ev[ev["kind"] == "assign"][["device_id", "step"]].drop_duplicates()
    work = ev[ev["kind"].isin(["download", "compute", "upload"])]
    busy = work.groupby(["device_id", "step"])["duration_s"].sum() / 60.0
    hit = ev[ev["kind"] == "interrupted"][["device_id", "step"]].drop_duplicates()
    hit = tasks.merge(hit, on=["device_id", "step"], how="inner")
    up = ev[ev["kind"] == "upload"].groupby("step")["time_s"].median()
    commit = ev[ev["kind"] == "step_commit"].groupby("step")["time_s"].max()
    wait = (commit - up).dropna()
    return {
        "tasks": int(len(tasks)),
        "task_busy_min_median": float(busy.median()) if len(busy) else float("nan"),
        "interrupted_share": float(len(hit) / max(len(tasks), 1)),
        "straggler_wait_s_mean": float(wait.mean()) if len(wait) else float("nan"),
        "straggler_wait_s_p90": float(np.quantile(wait, 0.9)) if len(wait) else float("nan"),
        "step_s_median": float(steps.loc[steps["committed"], "step_seconds"].median()),
        "steps": int(steps["committed"].sum()),
        "sim_hours": float(ev["time_s"].max() / 3600.0),
    }


def markdown(table: pd.DataFrame) -> str:
    """A Markdown table (numbers to 3 significant decimals)."""
    def cell(v) -> str:
        return f"{v:.3f}" if isinstance(v, float) else str(v)

    lines = ["| " + " | ".join(table.columns) + " |", "|" + "---|" * len(table.columns)]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in table.itertuples(False)]
    return "\n".join(lines) + "\n"


def main() -> None:
    from fleetsim.runner import run_loaded
    from fleetsim.scenario.loader import load_scenario

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=HERE)
    args = ap.parse_args()
    rows = []
    for (setting, interruption), extra in SETTINGS.items():
        for name, overrides in MODELS.items():
            loaded = load_scenario(str(SCENARIO), overrides + extra)
            slug = f"{setting.split()[0]}-{interruption}-{name.split()[0]}"
            run_dir = run_loaded(loaded, args.out / "runs" / slug, progress=False)
            rows.append(
                {"tasks_setting": setting, "interruption": interruption, "availability": name,
                 **run_metrics(Path(run_dir))}
            )
    table = pd.DataFrame(rows)
    table.to_csv(args.out / "results.csv", index=False)
    parts = []
    for (setting, interruption), sub in table.groupby(["tasks_setting", "interruption"],
                                                       sort=False):
        parts.append(f"### {setting}, interruption: {interruption}\n\n"
                     + markdown(sub.drop(columns=["tasks_setting", "interruption"])))
    (args.out / "results.md").write_text("\n".join(parts))
    print(table.to_string(index=False))


if __name__ == "__main__":
    main()
