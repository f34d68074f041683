"""The step breakdown spans every attempt of a step (variance repeats and their transfers),
checked against a hand count on a real fleet and server (fake numerics)."""

from __future__ import annotations

import numpy as np
import pytest
from fleet_harness import FakeEngine, build

from fleetsim.analysis.metrics import BREAKDOWN_PARTS, breakdown_shares, step_breakdown


def test_breakdown_of_a_three_attempt_step_sums_to_its_wall_time():
    # 4 phones, 1 s per perturbation, 4,000-byte dense θ/update at 8 Mbit/s (0.004 s each
    # way).  The gate rolls the step back twice.  Attempt 0: download + compute + upload
    # = 1.008 s; attempts 1 and 2: the phones hold θ of the step, compute + upload =
    # 1.004 s each.  Commit at 3.016 s.
    eng = FakeEngine(batches=1, variance_script=[0.9, 0.9, 0.05])
    h = build(n=4, engine=eng, protocol={"devices_per_step": 4, "rounds": 1, "variance": {
        "enabled": True, "threshold": 0.1, "max_repeats": 5}}).run()
    steps = h.recorder.steps_frame()
    assert steps["committed"].tolist() == [False, False, True]
    assert steps["step_start_s"].tolist() == [0.0, 0.0, 0.0]
    transfer = 4000 * 8 / 8e6
    assert steps["sim_time_s"].iloc[-1] == pytest.approx(3 + 4 * transfer)
    table = step_breakdown(h.recorder.events.to_frame(), steps)
    assert len(table) == 1
    row = table.iloc[0]
    assert row["start_s"] == 0.0 and row["attempts"] == 3
    assert row["total_s"] == pytest.approx(3 + 4 * transfer)
    assert row["variance_repeats"] == pytest.approx(2 + 3 * transfer)  # attempts 0 and 1
    assert row["download"] == 0.0  # the committed attempt downloads nothing
    assert row["compute"] == pytest.approx(1.0)
    assert row["upload"] == pytest.approx(transfer)
    assert row["straggler_wait"] == pytest.approx(0.0, abs=1e-12)
    assert sum(row[p] for p in BREAKDOWN_PARTS) == pytest.approx(row["total_s"])
    # every attempt's bytes: one download per phone (attempt 0), three uploads per phone
    assert row["bytes_down"] == 4 * 4000 and row["bytes_up"] == 3 * 4 * 4000
    shares = breakdown_shares(table).iloc[0]
    assert shares["variance_repeats"] == pytest.approx((2 + 3 * transfer) / (3 + 4 * transfer))
    assert np.isclose(sum(shares[p] for p in BREAKDOWN_PARTS), 1.0)


def test_breakdown_of_older_tables_without_step_start():
    # Tables written before step_start_s: the earliest attempt start among the step's rows.
    eng = FakeEngine(batches=1, variance_script=[0.9, 0.05])
    h = build(n=2, engine=eng, protocol={"devices_per_step": 2, "rounds": 1, "variance": {
        "enabled": True, "threshold": 0.1}}).run()
    steps = h.recorder.steps_frame().drop(columns=["step_start_s"])
    row = step_breakdown(h.recorder.events.to_frame(), steps).iloc[0]
    assert row["start_s"] == 0.0
    assert row["total_s"] == pytest.approx(steps["sim_time_s"].iloc[-1])
