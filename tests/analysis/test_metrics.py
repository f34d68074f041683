"""Metrics on synthetic runs whose schedules are computed by hand.

Default synthetic run: devices compute 4, 6 and 10 s; download 2 s, upload 1 s;
every step therefore lasts 2 + 10 + 1 = 13 s and commits at 13, 26, 39, 52 s;
the run ends 10 s after the last commit (62 s).
"""

import math

import numpy as np
import pytest

from fleetsim.analysis.load import load_runs
from fleetsim.analysis.metrics import (
    BREAKDOWN_PARTS,
    UTILISATION_SHARES,
    breakdown_shares,
    step_breakdown,
    time_to_accuracy,
    time_to_accuracy_runs,
    time_to_accuracy_table,
    utilisation,
)
from fleetsim.errors import FleetsimInputError


def test_time_to_accuracy_by_hand(make_run) -> None:
    runs = load_runs([make_run(name="a", accuracies=(0.3, 0.5, 0.45, 0.7))])
    reached = time_to_accuracy(runs.steps, [0.3, 0.45, 0.5, 0.6, 0.7, 0.8])
    assert reached == {0.3: 13.0, 0.45: 26.0, 0.5: 26.0, 0.6: 52.0, 0.7: 52.0, 0.8: None}


def test_time_to_accuracy_skips_unevaluated_steps_and_counts_repeats(make_run) -> None:
    # step 1 is not evaluated; step 1 also has a variance repeat: the first attempt rolls back
    # at 26 s and the repeat (everyone computes and uploads again) commits at 26 + 11 = 37 s.
    runs = load_runs([make_run(name="a", accuracies=(0.2, math.nan, 0.6, 0.55), repeat_steps=(1,))])
    reached = time_to_accuracy(runs.steps, [0.2, 0.55, 0.6])
    assert reached == {0.2: 13.0, 0.55: 50.0, 0.6: 50.0}


def test_systems_only_never_reaches_anything(make_run) -> None:
    runs = load_runs([make_run(name="s", accuracies=None)])
    assert time_to_accuracy(runs.steps, [0.1]) == {0.1: None}


def test_targets_are_fractions(make_run) -> None:
    runs = load_runs([make_run(name="a")])
    with pytest.raises(FleetsimInputError, match=r"outside \(0, 1\]"):
        time_to_accuracy(runs.steps, [60])


def test_time_to_accuracy_table_censored_median_over_seeds(make_run) -> None:
    # slowest device computes 10, 12, 14 s → steps of 13, 15, 17 s → 0.5 reached at step 1:
    # 26, 30, 34 s.  A second group (v=5) reaches 0.5 in one seed out of two, a third (v=7)
    # in one of three.
    dirs = []
    for seed, slow in enumerate((10.0, 12.0, 14.0)):
        devices = (("pixel7", "npu", 4.0), ("pixel7", "npu", 6.0), ("a14", "cpu", slow))
        dirs.append(
            make_run(name=f"v2-s{seed}", seed=seed, devices=devices, accuracies=(0.3, 0.5, 0.6))
        )
    dirs.append(make_run(name="v5-s0", units_per_device=5, accuracies=(0.3, 0.5, 0.6)))
    dirs.append(make_run(name="v5-s1", seed=1, units_per_device=5, accuracies=(0.3, 0.4, 0.4)))
    for seed, accuracies in enumerate(((0.3, 0.5, 0.6), (0.3, 0.4, 0.4), (0.1, 0.2, 0.2))):
        dirs.append(
            make_run(name=f"v7-s{seed}", seed=seed, units_per_device=7, accuracies=accuracies)
        )
    runs = load_runs(dirs)
    table = time_to_accuracy_table(runs, [0.5, 0.9], by="protocol.perturbations_per_device")
    table = table.set_index(["protocol.perturbations_per_device", "target"])
    # all three reached: the median is the middle time, as np.median says
    row = table.loc[(2, 0.5)]
    assert (row["runs"], row["reached"], row["median_s"]) == (3, 3, np.median([26, 30, 34]))
    assert row["median_h"] == pytest.approx(30.0 / 3600)
    assert 0.0 < row["ci_low_s"] <= 30.0 <= row["ci_high_s"]
    # one of two reached (at 26 s), the other ran to its end without: S(26) = 1/2 → 26 s
    row = table.loc[(5, 0.5)]
    assert (row["runs"], row["reached"], row["median_s"]) == (2, 1, 26.0)
    # one of three reached: more than half never did → not reached, not "26 s"
    row = table.loc[(7, 0.5)]
    assert (row["runs"], row["reached"]) == (3, 1) and row["median_s"] == math.inf
    for v in (2, 5, 7):
        row = table.loc[(v, 0.9)]
        assert row["reached"] == 0 and row["median_s"] == math.inf
    per_run = time_to_accuracy_runs(runs, [0.5])
    ends = dict(zip(runs.summary["run"], runs.summary["simulated_seconds"]))
    assert (per_run["end_s"] == per_run["run"].map(ends)).all()


def test_utilisation_shares_by_hand_and_sum_to_one(make_run) -> None:
    # device 2 goes offline for 5 s during step 2 (so that step lasts 18 s; run ends at 67 s)
    runs = load_runs([make_run(name="a", offline_device=2, offline_step=2)])
    table = utilisation(runs)
    shares = table[list(UTILISATION_SHARES)].sum(axis=1).to_numpy()
    np.testing.assert_allclose(shares, 1.0)
    assert set(table["level"]) == {"fleet", "phone_model", "backend"}
    fleet = table[table["level"] == "fleet"].iloc[0]
    horizon = 67.0
    busy = 4 * (3 + 4) + 4 * (3 + 6) + 4 * (3 + 10)  # download + upload + compute per step
    assert fleet["devices"] == 3
    assert fleet["used"] == pytest.approx(busy / (3 * horizon))
    assert fleet["offline"] == pytest.approx(5.0 / (3 * horizon))
    assert fleet["wasted"] == 0.0
    assert fleet["coverage"] == pytest.approx(1.0)
    assert fleet["compute_of_busy"] == pytest.approx(80.0 / busy)
    cpu = table[(table["level"] == "backend") & (table["group"] == "cpu")].iloc[0]
    assert cpu["devices"] == 1
    assert cpu["offline"] == pytest.approx(5.0 / horizon)


def test_utilisation_counts_wasted_time(make_run) -> None:
    import pandas as pd

    run = make_run(name="a")
    devices = pd.read_parquet(run / "devices.parquet")
    devices.loc[0, "wasted_s"] = 7.0
    devices.to_parquet(run / "devices.parquet")
    table = utilisation(load_runs([run]))
    pixel = table[table["group"] == "pixel7"].iloc[0]
    assert pixel["wasted"] == pytest.approx(7.0 / (2 * 62.0))
    assert pixel["used"] == pytest.approx((28.0 + 36.0 - 7.0) / (2 * 62.0))


def test_step_breakdown_median_and_last_device(make_run) -> None:
    runs = load_runs([make_run(name="a")])
    median = step_breakdown(runs.events, runs.steps)
    assert len(median) == 4
    first = median.iloc[0]
    # median device computes 6 s: 2 + 6 + 1 = 9 s, then waits 4 s for the 13 s straggler
    assert (first["download"], first["compute"], first["upload"]) == (2.0, 6.0, 1.0)
    assert (first["straggler_wait"], first["variance_repeats"], first["other"]) == (4.0, 0, 0)
    assert first["reference_device"] == 1
    last = step_breakdown(runs.events, runs.steps, reference="last").iloc[0]
    assert (last["compute"], last["straggler_wait"], last["reference_device"]) == (10.0, 0.0, 2)
    with pytest.raises(FleetsimInputError, match="median, last"):
        step_breakdown(runs.events, runs.steps, reference="mean")


def test_step_breakdown_repeats_and_interruptions(make_run) -> None:
    runs = load_runs([make_run(name="a", repeat_steps=(1,), offline_device=2, offline_step=2)])
    table = step_breakdown(runs.events, runs.steps, reference="last").set_index("step")
    repeated = table.loc[1]
    # rollback at 26 s (13 s after the step start); repeat: compute 10 + upload 1 → commit 37 s
    assert repeated["variance_repeats"] == 13.0
    assert (repeated["download"], repeated["compute"], repeated["upload"]) == (0.0, 10.0, 1.0)
    assert repeated["attempts"] == 2 and repeated["total_s"] == 24.0
    interrupted = table.loc[2]
    # the straggler is offline 5 s between its download and its compute
    assert (interrupted["download"], interrupted["compute"], interrupted["other"]) == (2, 10, 5)
    parts = table[list(BREAKDOWN_PARTS)].sum(axis=1)
    np.testing.assert_allclose(parts, table["total_s"])
    shares = breakdown_shares(table.reset_index())
    np.testing.assert_allclose(shares[list(BREAKDOWN_PARTS)].sum(axis=1), 1.0)
