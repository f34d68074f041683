"""Carried work keeps its step (staleness), and a device withdrawn at a commit is free."""

from __future__ import annotations

import numpy as np
from fleet_harness import FakeEngine, build
from fleet_helpers import make_table
from scipy.stats import binomtest


def test_carried_work_keeps_the_step_it_was_computed_for():
    # Device 3 takes 2.5 steps' time: its work for step s arrives during step s + 2.
    unit = np.array([1.0, 1.0, 1.0, 2.5])
    h = build(n=4, unit_s=unit, fleet={"transfers": "none"},
              protocol={"devices_per_step": 4, "perturbations_per_device": 1, "rounds": 1,
                        "batches_per_round": 6,
                        "commit": {"mode": "deadline", "deadline_s": 1.0, "late_work": "carry",
                                   "max_staleness": 3}},
              engine=FakeEngine(batches=6)).run()
    fg = [c for c in h.engine.calls if c[0] == "fg"]
    stale = [(step, w) for _, step, work in fg for w in work if w.step != step]
    assert stale, "no carried work reached the engine"
    for step, w in stale:
        assert w.device_id == 3 and w.step < step and w.weight == 1.0
    events = h.recorder.events.to_frame()
    receipts = events[events.kind == "receipt"]
    applied = receipts["detail"].str.extract(r"applied_step=(\d+)")[0].astype(int)
    assert (receipts["staleness"] == applied - receipts["step"]).all()
    assert (events.loc[events.kind != "receipt", "staleness"].isin([-1, 0, 1, 2, 3])).all()
    steps = h.recorder.steps_frame()
    # per-step staleness agrees with the receipts used at that step
    by_step = receipts.assign(applied=applied).groupby("applied")
    for row in steps.itertuples():
        got = by_step.get_group(row.step) if row.step in by_step.groups else None
        expected_max = int(got["staleness"].max()) if got is not None else 0
        assert row.staleness_max == expected_max
        stale_units = int(got.loc[got.staleness > 0, "units"].sum()) if got is not None else 0
        assert row.stale_units == stale_units


def test_inverse_sqrt_weighting_and_max_staleness():
    unit = np.array([1.0, 1.0, 1.0, 3.5])
    h = build(n=4, unit_s=unit, fleet={"transfers": "none"},
              protocol={"devices_per_step": 4, "perturbations_per_device": 1, "rounds": 1,
                        "batches_per_round": 8,
                        "commit": {"mode": "deadline", "deadline_s": 1.0, "late_work": "carry",
                                   "max_staleness": 2, "staleness_weighting": "inverse_sqrt"}},
              engine=FakeEngine(batches=8)).run()
    fg = [c for c in h.engine.calls if c[0] == "fg"]
    for _, step, work in fg:
        for w in work:
            s = step - (w.step if w.step is not None else step)
            assert s <= 2
            assert abs(w.weight - 1 / np.sqrt(1 + s)) < 1e-12
    events = h.recorder.events.to_frame()
    # device 3's work needs 4 steps: older than max_staleness, withdrawn as stale
    dropped = events[(events.kind == "dropped") & (events.detail == "stale")]
    assert len(dropped) and set(dropped["device_id"]) == {3}


def test_a_device_withdrawn_at_commit_is_eligible_for_the_next_step():
    # Quorum commit: the slow device 3 is withdrawn at every commit; it must be asked again
    # at the very next step (it was left marked busy and skipped).
    h = build(n=4, unit_s=np.array([1.0, 1.0, 1.0, 10.0]), fleet={"transfers": "none"},
              protocol={"devices_per_step": 4, "perturbations_per_device": 1, "rounds": 1,
                        "batches_per_round": 4,
                        "commit": {"mode": "quorum", "quorum_fraction": 0.75}},
              engine=FakeEngine(batches=4)).run()
    events = h.recorder.events.to_frame()
    assigned = events[(events.kind == "assign") & (events.device_id == 3)]
    assert sorted(assigned["step"]) == [0, 1, 2, 3]
    assert (events[(events.kind == "cancelled") & (events.device_id == 3)]["step"]
            .tolist() == [0, 1, 2, 3])


def test_cohort_mix_matches_the_fleet_under_early_commits():
    n = 100
    slow = np.zeros(n, dtype=bool)
    slow[::2] = True
    table = make_table(n, uplink_bps=8e6, downlink_bps=8e6)
    table.phone_model_index = slow.astype(np.int32)
    table.phone_models = ["Fast Phone", "Slow Phone"]
    h = build(n=n, table=table, unit_s=np.where(slow, 20.0, 1.0), fleet={"transfers": "none"},
              protocol={"devices_per_step": 40, "perturbations_per_device": 1, "rounds": 40,
                        "batches_per_round": 1,
                        "commit": {"mode": "quorum", "quorum_fraction": 0.5}},
              engine=FakeEngine(batches=1)).run()
    events = h.recorder.events.to_frame()
    picked = events[events.kind == "assign"]["device_id"].to_numpy()
    assert len(picked) == 40 * 40
    k = int(slow[picked].sum())
    # Slow phones are half the fleet and nothing else biases a random cohort.
    assert binomtest(k, len(picked), 0.5).pvalue > 1e-3, k


def test_carried_units_count_towards_the_commit_rule():
    # Device 0 takes 1 s a unit, device 1 takes 1.5 s; quorum of half the assigned units.
    # Step 0 commits at t=1 with device 0's unit and carries device 1's.  Step 1 asks only
    # device 0 (device 1 is busy with carried work): device 1's unit arriving at t=1.5 is
    # used in step 1's estimate, so it counts towards step 1's quorum: commit at 1.5, not 2.
    h = build(n=2, unit_s=np.array([1.0, 1.5]), fleet={"transfers": "none"},
              protocol={"devices_per_step": 2, "perturbations_per_device": 1, "rounds": 1,
                        "batches_per_round": 2,
                        "commit": {"mode": "quorum", "quorum_fraction": 0.5,
                                   "late_work": "carry"}},
              engine=FakeEngine(batches=2)).run()
    steps = h.recorder.steps_frame()
    assert steps["sim_time_s"].tolist() == [1.0, 1.5]
    assert steps["stale_units"].tolist() == [0, 1]


def test_a_cohort_busy_with_carried_work_is_waited_for_not_polled(monkeypatch):
    # One phone, 1 s a unit, a 0.5 s deadline with carry: at the deadline nothing arrived and
    # the only cohort device is busy with carried work.  The server waits for that work
    # (t = 1) instead of polling in tiny steps (it used to retry every microsecond).
    from fleetsim.protocols.fwdllm import FwdLLMProtocol

    calls = {"n": 0}
    original = FwdLLMProtocol.allocate

    def counting(self, server, cohort):
        calls["n"] += 1
        return original(self, server, cohort)

    monkeypatch.setattr(FwdLLMProtocol, "allocate", counting)
    h = build(n=1, unit_s=np.array([1.0]), fleet={"transfers": "none"},
              protocol={"devices_per_step": 1, "perturbations_per_device": 1, "rounds": 1,
                        "batches_per_round": 2,
                        "commit": {"mode": "deadline", "deadline_s": 0.5,
                                   "late_work": "carry"}},
              engine=FakeEngine(batches=2)).run()
    assert calls["n"] < 20
    steps = h.recorder.steps_frame()
    committed = steps[steps.committed]
    assert len(committed) == 2 and committed["stale_units"].sum() >= 1
