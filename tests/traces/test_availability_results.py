"""analysis/availability/run.py: the table's figures from a hand-made run directory."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pandas as pd
import pytest

RUN = Path(__file__).resolve().parents[2] / "analysis" / "availability" / "run.py"


def _module():
    spec = importlib.util.spec_from_file_location("availability_run", RUN)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_run_metrics_by_hand(tmp_path):
    # step 0: devices 1, 2, 3; device 2 interrupted once (two events), device 3 never uploads
    # step 1: devices 1, 2
    rows = [
        (0.0, 1, "assign", 0, 0.0), (0.0, 2, "assign", 0, 0.0), (0.0, 3, "assign", 0, 0.0),
        (10.0, 1, "download", 0, 10.0), (70.0, 1, "compute", 0, 60.0),
        (80.0, 1, "upload", 0, 10.0),
        (20.0, 2, "download", 0, 20.0), (30.0, 2, "interrupted", 0, 0.0),
        (50.0, 2, "interrupted", 0, 0.0), (200.0, 2, "compute", 0, 100.0),
        (230.0, 2, "upload", 0, 30.0),
        (5.0, 3, "download", 0, 5.0), (6.0, 3, "interrupted", 0, 0.0),
        (300.0, -1, "step_commit", 0, 0.0),
        (300.0, 1, "assign", 1, 0.0), (300.0, 2, "assign", 1, 0.0),
        (420.0, 1, "upload", 1, 120.0), (480.0, 2, "upload", 1, 180.0),
        (500.0, -1, "step_commit", 1, 0.0),
    ]
    ev = pd.DataFrame(rows, columns=["time_s", "device_id", "kind", "step", "duration_s"])
    ev.to_parquet(tmp_path / "events.parquet")
    pd.DataFrame(
        {"step": [0, 1], "committed": [True, True], "step_seconds": [300.0, 200.0]}
    ).to_parquet(tmp_path / "steps.parquet")
    got = _module().run_metrics(tmp_path)
    assert got["tasks"] == 5
    # busy minutes per task: (1,0) 80 s, (2,0) 150 s, (3,0) 5 s, (1,1) 120 s, (2,1) 180 s
    assert got["task_busy_min_median"] == pytest.approx(120.0 / 60.0)
    assert got["interrupted_share"] == pytest.approx(2 / 5)  # (2,0) and (3,0)
    # straggler wait: step 0 commit 300 - median upload of (80, 230) = 145; step 1: 500 - 450
    assert got["straggler_wait_s_mean"] == pytest.approx((145.0 + 50.0) / 2)
    assert got["step_s_median"] == pytest.approx(250.0)
    assert got["steps"] == 2 and got["sim_hours"] == pytest.approx(500.0 / 3600.0)
