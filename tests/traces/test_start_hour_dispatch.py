"""Issue 22 kind 7 in small: measured charging windows seen from 03:00 and 15:00.  No task
is dispatched to an offline phone: every ``assign`` in events.parquet happens inside an
availability window of its device (checked in the trace's own frame, from the windows
themselves), and the run reaches its rounds instead of stalling."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from fleetsim.runner import run_scenario, validate_loaded
from fleetsim.scenario.loader import load_scenario

ROOT = Path(__file__).resolve().parents[2]
WINDOWS = ROOT / ".." / "shared" / "device_data" / "flash_ready_windows" / "ready_strict.json"


@pytest.mark.parametrize("start_hour", [3.0, 15.0])
def test_no_task_goes_to_an_offline_phone(tmp_path, start_hour):
    if not WINDOWS.is_file():
        pytest.skip("shared measured windows not present")
    overrides = [
        "fleet.size=2000", "protocol.devices_per_step=130", "protocol.rounds=40",
        "traces.availability.kind=flash_windows", f"traces.availability.path={WINDOWS}",
        f"run.start_hour={start_hour}", "run.max_sim_hours=48", "run.progress=false",
        "output.convergence_png=false",
    ]
    scenario = ROOT / "scenarios" / "systems_only_1m.yaml"
    out = run_scenario(scenario, overrides, run_dir=tmp_path / "run")
    events = pd.read_parquet(out / "events.parquet")
    summary = json.loads((out / "summary.json").read_text())
    assigns = events[events["kind"] == "assign"]
    assert len(assigns) > 100
    built = validate_loaded(load_scenario(scenario, overrides))
    inner = built.availability.inner  # the measured windows, in the trace's own frame
    off = start_hour * 3600.0
    p = inner.period_s
    for d, t in zip(assigns["device_id"].to_numpy(), assigns["time_s"].to_numpy()):
        # the trace instant of the dispatch, reduced into the period the windows live in
        u = float(t) + off
        k = np.floor(u / p) if p else 0.0
        lo, hi = inner.offsets[d], inner.offsets[d + 1]
        s, e = inner.starts[lo:hi], inner.ends[lo:hi]
        inside = False
        for kk in (k - 1, k):  # a window of the previous period may run across its end
            inside |= bool(np.any((s + kk * p <= u) & (u < e + kk * p)))
        # a window reaching the period's end continues into the first one of the next
        inside |= bool(len(s) and s[0] <= 0.0 and np.any(e >= p) and u - k * p < e[0])
        assert inside, f"device {d} got a task at t={t!r} (trace {u!r}) while offline"
    assert summary["rounds"] == 40, summary["status_detail"]
