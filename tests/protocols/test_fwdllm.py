"""FwdLLM on the clock: steps, rounds, variance gate, commit rules, payloads."""

from __future__ import annotations

import numpy as np
import pandas as pd
from fleet_harness import FakeEngine, build

from fleetsim.protocols.server import SEED_RECORD_BYTES
from fleetsim.traces.base import IntervalAvailability


def steps(h) -> pd.DataFrame:
    return h.recorder.steps_frame()


def events(h) -> pd.DataFrame:
    return h.recorder.events.to_frame()


def test_uniform_rounds_and_batches():
    h = build(n=8, protocol={"devices_per_step": 4, "perturbations_per_device": 3, "rounds": 2},
              engine=FakeEngine(batches=3)).run()
    fg = [c for c in h.engine.calls if c[0] == "fg"]
    assert len(fg) == 6  # 2 rounds × 3 batches
    for i, (_, step, work) in enumerate(fg):
        assert step == i
        assert len(work) == 4
        assert all(len(w.perturbations) == 3 for w in work)
        assert all(w.batch_index == i % 3 for w in work)
        assert all(w.client_id == w.device_id % 8 for w in work)
    # perturbation indices unique within (step, device)
    assert all(w.perturbations == (0, 1, 2) for _, _, work in fg for w in work)
    s = steps(h)
    assert s["committed"].all() and s["step"].tolist() == list(range(6))
    assert s["accuracy"].notna().sum() == 2  # evaluated at each round end
    assert h.engine.evals == 3  # the initial model before step 0 (issue 24), each round end


def test_step_time_is_slowest_device_plus_transfers():
    # unit times 1..4 s, 2 units each, central differences charged by the unit time itself
    unit = np.array([1.0, 2.0, 3.0, 4.0])
    h = build(n=4, unit_s=unit, protocol={"devices_per_step": 4, "perturbations_per_device": 2,
                                          "rounds": 1, "batches_per_round": 1}).run()
    s = steps(h)
    dense = 1000 * 4  # trainable params × fp32
    transfer = dense * 8 / 8e6  # up and down at 8 Mbit/s
    assert np.isclose(s["step_seconds"].iloc[0], 2 * 4.0 + 2 * transfer)
    assert s["bytes_up"].iloc[0] == 4 * dense and s["bytes_down"].iloc[0] == 4 * dense


def test_seed_upload_payload_scales_with_units():
    h = build(n=4, protocol={"devices_per_step": 4, "perturbations_per_device": 5, "rounds": 1,
                             "batches_per_round": 1, "upload": "seeds"}).run()
    assert steps(h)["bytes_up"].iloc[0] == 4 * 5 * SEED_RECORD_BYTES


def test_variance_gate_rolls_back_and_pools():
    eng = FakeEngine(batches=1, variance_script=[0.9, 0.5, 0.05])
    h = build(n=4, engine=eng, protocol={"devices_per_step": 4, "rounds": 1,
                                         "variance": {"enabled": True, "threshold": 0.1}}).run()
    s = steps(h)
    assert s["attempt"].tolist() == [0, 1, 2]
    assert s["committed"].tolist() == [False, False, True]
    assert s["perturbations"].tolist() == [4, 8, 12]  # pooled over attempts
    ev = events(h)
    assert (ev["kind"] == "step_rollback").sum() == 2
    assert len(eng.applied) == 1
    # fresh perturbation indices on the repeat, same batch
    works = [c[2] for c in eng.calls]
    assert works[1][0].perturbations == (1,) and works[2][0].perturbations == (2,)
    assert {w.batch_index for ws in works for w in ws} == {0}


def test_variance_gate_cap():
    eng = FakeEngine(batches=1, variance_script=[0.9] * 10)
    h = build(n=2, engine=eng, protocol={"devices_per_step": 2, "rounds": 1, "variance": {
        "enabled": True, "threshold": 0.1, "max_repeats": 2}}).run()
    assert steps(h)["committed"].tolist() == [False, False, True]


def test_deadline_drops_late_work():
    unit = np.array([1.0, 1.0, 100.0, 100.0])
    h = build(n=4, unit_s=unit, protocol={
        "devices_per_step": 4, "rounds": 1, "batches_per_round": 1,
        "commit": {"mode": "deadline", "deadline_s": 10.0}}).run()
    s = steps(h)
    assert s["devices"].iloc[0] == 2
    assert np.isclose(s["step_seconds"].iloc[0], 10.0)
    ev = events(h)
    assert set(ev.loc[ev["kind"] == "dropped", "device_id"]) == {2, 3}


def test_overcommit_commits_when_enough_arrived():
    unit = np.array([1.0, 2.0, 3.0, 50.0, 60.0])
    h = build(n=5, unit_s=unit, protocol={"devices_per_step": 3, "rounds": 1,
                                          "batches_per_round": 1},
              policy={"name": "overcommit", "overcommit_factor": 1.67}).run()
    s = steps(h)
    assert s["devices"].iloc[0] == 3
    assert s["step_seconds"].iloc[0] < 10


def test_carry_keeps_late_work_for_next_step():
    unit = np.array([1.0, 1.0, 10.5])
    h = build(n=3, unit_s=unit, protocol={
        "devices_per_step": 3, "rounds": 1, "batches_per_round": 3,
        "commit": {"mode": "deadline", "deadline_s": 10.0, "late_work": "carry"}},
        engine=FakeEngine(batches=3)).run()
    fg = [c for c in h.engine.calls if c[0] == "fg"]
    assert {w.device_id for w in fg[0][2]} == {0, 1}
    # the slow device's step-0 work arrives during step 1 and is used there
    assert 2 in {w.device_id for w in fg[1][2]}


def test_churn_pause_resumes_after_window():
    # device 1 is offline between t=1 and t=20: its compute pauses and resumes
    avail = IntervalAvailability(
        offsets=np.array([0, 1, 3]), starts=np.array([0.0, 0.0, 20.0]),
        ends=np.array([1e9, 1.0, 1e9]))
    h = build(n=2, unit_s=np.array([1.0, 2.0]), availability=avail,
              protocol={"devices_per_step": 2, "rounds": 1, "batches_per_round": 1},
              fleet={"interruption": "pause"}).run()
    s = steps(h)
    assert s["devices"].iloc[0] == 2
    assert s["sim_time_s"].iloc[0] > 20.0
    kinds = events(h).query("device_id == 1")["kind"].tolist()
    assert "interrupted" in kinds and "resumed" in kinds


def test_fedsgd_and_fedavg_and_kseed_run():
    h = build(n=4, protocol={"name": "fedsgd", "devices_per_step": 4, "rounds": 1},
              engine=FakeEngine(batches=2)).run()
    assert [c[0] for c in h.engine.calls] == ["bp", "bp"]
    h = build(n=4, protocol={"name": "fedavg", "devices_per_step": 4, "rounds": 2,
                             "local_epochs": 2}, engine=FakeEngine(batches=3)).run()
    assert sum(c[0] == "lt" for c in h.engine.calls) == 8
    assert steps(h)["step"].tolist() == [1, 2] or len(steps(h)) == 2
    h = build(n=4, protocol={"name": "kseed", "devices_per_step": 4, "rounds": 1,
                             "perturbations_per_device": 4}, engine=FakeEngine(batches=1)).run()
    s = steps(h)
    assert s["bytes_up"].iloc[0] == 4 * 4 * 8  # FedKSeed's pool: (4-byte index, fp32) pairs
    h = build(n=4, protocol={"name": "kseed", "seed_pool": None, "devices_per_step": 4,
                             "rounds": 1, "perturbations_per_device": 4},
              engine=FakeEngine(batches=1)).run()
    assert steps(h)["bytes_up"].iloc[0] == 4 * 4 * SEED_RECORD_BYTES


def test_memory_refusal_logged_for_backprop():
    from fleetsim.fleet.work import TaskKind

    h = build(n=4, protocol={"name": "fedsgd", "devices_per_step": 4, "rounds": 1},
              engine=FakeEngine(batches=1),
              memory={TaskKind.FORWARD_GRADIENT: 1, TaskKind.BACKPROP: 100 * 2**30})
    h.run()
    ev = events(h)
    assert (ev["kind"] == "refuse_memory").sum() == 4  # once per device
    assert h.engine.calls == [] and len(steps(h)) == 0
    assert "needed" in ev.loc[ev["kind"] == "refuse_memory", "detail"].iloc[0]


def test_same_seed_same_events_whatever_policy_order():
    a = build(n=8, protocol={"devices_per_step": 5, "rounds": 2}, seed=3).run()
    b = build(n=8, protocol={"devices_per_step": 5, "rounds": 2}, seed=3).run()
    pd.testing.assert_frame_equal(events(a), events(b))
    c = build(n=8, protocol={"devices_per_step": 5, "rounds": 2}, seed=4).run()
    assert not events(a).equals(events(c))


def test_variance_gate_with_one_perturbation_asks_for_more_then_logs():
    # One device, one perturbation: FwdLLM's statistic needs one forward gradient per half.
    # The first attempt cannot be checked (too_few): it is rolled back for more; the second
    # (two pooled) is checked against the threshold like any other.
    eng = FakeEngine(batches=1, variance_script=[float("nan"), 0.05])
    h = build(n=1, engine=eng, protocol={"devices_per_step": 1, "rounds": 1, "variance": {
        "enabled": True, "threshold": 0.1, "max_repeats": 3}}).run()
    s = steps(h)
    assert s["variance_gate"].tolist() == ["too_few", "passed"]
    assert s["committed"].tolist() == [False, True]
    assert s["perturbations"].tolist() == [1, 2]
    # no repeat left: committed, flagged in steps.parquet and logged
    eng = FakeEngine(batches=1, variance_script=[float("nan")])
    h = build(n=1, engine=eng, protocol={"devices_per_step": 1, "rounds": 1, "variance": {
        "enabled": True, "threshold": 0.1, "max_repeats": 0}}).run()
    s = steps(h)
    assert s["variance_gate"].tolist() == ["too_few"] and s["committed"].tolist() == [True]
    ev = events(h)
    unchecked = ev[ev["kind"] == "variance_unchecked"]
    assert len(unchecked) == 1 and "gate=too_few perturbations=1" in unchecked["detail"].iloc[0]


def test_variance_gate_outcomes_in_steps_table():
    eng = FakeEngine(batches=1, variance_script=[0.9, 0.5, float("nan")])
    h = build(n=2, engine=eng, protocol={"devices_per_step": 2, "rounds": 1, "variance": {
        "enabled": True, "threshold": 0.1, "max_repeats": 1}}).run()
    assert steps(h)["variance_gate"].tolist() == ["rolled_back", "over_threshold"]
    # a NaN statistic over two or more perturbations (systems-only numerics): not computed
    h = build(n=2, engine=FakeEngine(batches=1, variance_script=[float("nan")]), protocol={
        "devices_per_step": 2, "rounds": 1, "variance": {"enabled": True}}).run()
    assert steps(h)["variance_gate"].tolist() == ["not_computed"]
    assert (events(h)["kind"] == "variance_unchecked").sum() == 1
    h = build(n=2, engine=FakeEngine(batches=1), protocol={"devices_per_step": 2, "rounds": 1})
    assert steps(h.run())["variance_gate"].tolist() == ["off"]
