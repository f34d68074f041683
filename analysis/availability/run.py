"""Availability models compared on the same fleet and seed (docs/results/availability.md).

Runs ``analysis/availability/scenario.yaml`` (300 phones, systems-only, pause semantics) under
``traces.availability.kind`` = diurnal_model (the old default), empirical (measured FLASH
windows, ``../shared/device_data/flash_ready_windows/ready_strict.json``) and diurnal_windows
(the model fitted on them), and writes ``analysis/availability/results.{csv,md}``:

* ``tasks``: assigned tasks (``assign`` events); ``interrupted_share``: share of them with at
  least one ``interrupted`` event (availability ended mid-way: download, compute or upload);
* ``straggler_wait_s`` (mean, p90 over committed steps): commit time minus the time of the
  step's median finished upload — how long the server waits for its slower half;
* ``step_s_median``: median ``step_seconds``; ``sim_hours``: simulated hours of the run.

Also writes the overlay PNG ``docs/results/availability_overlay.png`` (measured windows vs the
diurnal_windows and diurnal_model windows of 300 devices over 4 days, from ``traces sample``).

    .venv/bin/python analysis/availability/run.py
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


def run_metrics(run_dir: Path) -> dict:
    """The table's figures for one run directory (module docstring)."""
    ev = pd.read_parquet(run_dir / "events.parquet")
    steps = pd.read_parquet(run_dir / "steps.parquet")
    tasks = ev[ev["kind"] == "assign"][["device_id", "step"]].drop_duplicates()
    hit = ev[ev["kind"] == "interrupted"][["device_id", "step"]].drop_duplicates()
    hit = tasks.merge(hit, on=["device_id", "step"], how="inner")
    up = ev[ev["kind"] == "upload"].groupby("step")["time_s"].median()
    commit = ev[ev["kind"] == "step_commit"].groupby("step")["time_s"].max()
    wait = (commit - up).dropna()
    return {
        "tasks": int(len(tasks)),
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
    for name, overrides in MODELS.items():
        loaded = load_scenario(str(SCENARIO), overrides)
        slug = name.split()[0]
        run_dir = run_loaded(loaded, args.out / "runs" / slug, progress=False)
        rows.append({"availability": name, **run_metrics(Path(run_dir))})
    table = pd.DataFrame(rows)
    table.to_csv(args.out / "results.csv", index=False)
    (args.out / "results.md").write_text(markdown(table))
    print(table.to_string(index=False))


if __name__ == "__main__":
    main()
